//! The JSON envelope: the plaintext that a client encrypts into every message.
//!
//! It is serialized with serde_json. Unknown fields are ignored so that later versions
//! can add some; an unknown `type` decodes as [`MessageKind::Unknown`] so that an old
//! client can say it cannot show a message instead of failing.
//!
//! Every envelope is padded to a multiple of [`PAD_TO`] bytes before it is sealed, so
//! that the relay cannot tell a receipt from a short text, nor a text's exact length.

use serde::{Deserialize, Serialize};

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A text message for the room.
    Text,
    /// How far a member has received and read the room: never shown as a message.
    Receipt,
    /// A type this version does not know.
    #[serde(other)]
    Unknown,
}

/// The plaintext of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The envelope format version: 1.
    #[serde(rename = "v")]
    pub version: u32,
    /// What the message is.
    #[serde(rename = "type")]
    pub kind: MessageKind,
    /// The sender's user name; a recipient checks it against the sender the relay names.
    pub sender: String,
    /// The text, as typed.
    pub text: String,
    /// When it was sent, in milliseconds since the Unix epoch, by the sender's clock.
    pub sent_at_ms: u64,
    /// A receipt's highest sequence number of the room received (required in one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_through: Option<u64>,
    /// A receipt's highest sequence number of the room shown to the person (required
    /// in one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_through: Option<u64>,
}

/// Envelopes are padded to a multiple of this many bytes.
pub const PAD_TO: usize = 256;

/// Why a decrypted plaintext is not a usable envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the message is not a valid JSON envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the message uses envelope version {0}, this client understands version 1")]
    Version(u32),
    #[error("the receipt lacks delivered_through or read_through")]
    IncompleteReceipt,
}

impl Envelope {
    /// The envelope version this code writes and reads.
    pub const VERSION: u32 = 1;

    /// A text message sent now.
    pub fn text(sender: &str, text: &str) -> Self {
        Self {
            version: Self::VERSION,
            kind: MessageKind::Text,
            sender: sender.to_owned(),
            text: text.to_owned(),
            sent_at_ms: crate::protocol::now_ms(),
            delivered_through: None,
            read_through: None,
        }
    }

    /// A receipt sent now: `sender` has received the room up to `delivered_through` and
    /// shown it up to `read_through`.
    pub fn receipt(sender: &str, delivered_through: u64, read_through: u64) -> Self {
        Self {
            kind: MessageKind::Receipt,
            text: String::new(),
            delivered_through: Some(delivered_through),
            read_through: Some(read_through.min(delivered_through)),
            ..Self::text(sender, "")
        }
    }

    /// The bytes to encrypt, padded to a multiple of [`PAD_TO`] bytes with a `pad` field
    /// of spaces.
    pub fn to_json(&self) -> Vec<u8> {
        const PAD_FIELD: &[u8] = b",\"pad\":\"";
        let mut json = serde_json::to_vec(self)
            .expect("an envelope of strings and integers always serializes");
        // `,"pad":"` and the closing quote: 9 bytes besides the spaces.
        let spaces = (PAD_TO - (json.len() + PAD_FIELD.len() + 1) % PAD_TO) % PAD_TO;
        let closing = json.pop();
        debug_assert_eq!(closing, Some(b'}'));
        json.extend_from_slice(PAD_FIELD);
        json.resize(json.len() + spaces, b' ');
        json.extend_from_slice(b"\"}");
        json
    }

    /// Parses decrypted bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope: Self = serde_json::from_slice(bytes)?;
        if envelope.version != Self::VERSION {
            return Err(EnvelopeError::Version(envelope.version));
        }
        if envelope.kind == MessageKind::Receipt
            && (envelope.delivered_through.is_none() || envelope.read_through.is_none())
        {
            return Err(EnvelopeError::IncompleteReceipt);
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let envelope = Envelope::text("alice", "héllo \"world\"\n");
        assert_eq!(Envelope::from_json(&envelope.to_json()).unwrap(), envelope);
    }

    #[test]
    fn has_the_documented_field_names() {
        let json: serde_json::Value =
            serde_json::from_slice(&Envelope::text("bob", "hi").to_json()).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["type"], "text");
        assert_eq!(json["sender"], "bob");
        assert_eq!(json["text"], "hi");
        assert!(json["sent_at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }

    #[test]
    fn pads_every_envelope_to_a_multiple_of_256_bytes() {
        for text in ["", "hi", &"x".repeat(200), &"é".repeat(300)] {
            let envelope = Envelope::text("alice", text);
            let json = envelope.to_json();
            assert_eq!(json.len() % PAD_TO, 0, "{} bytes", json.len());
            assert_eq!(Envelope::from_json(&json).unwrap(), envelope);
        }
        let receipt = Envelope::receipt("bob", 42, 40);
        assert_eq!(receipt.to_json().len(), PAD_TO);
        assert_eq!(Envelope::text("bob", "ok").to_json().len(), PAD_TO);
    }

    #[test]
    fn receipts_carry_both_numbers_and_never_read_past_delivered() {
        let json: serde_json::Value =
            serde_json::from_slice(&Envelope::receipt("bob", 42, 50).to_json()).unwrap();
        assert_eq!(json["type"], "receipt");
        assert_eq!(json["text"], "");
        assert_eq!(json["delivered_through"], 42);
        assert_eq!(json["read_through"], 42);
        let incomplete = br#"{"v":1,"type":"receipt","sender":"b","text":"","sent_at_ms":0,"delivered_through":3}"#;
        assert!(matches!(
            Envelope::from_json(incomplete),
            Err(EnvelopeError::IncompleteReceipt)
        ));
        let wrong_type = br#"{"v":1,"type":"receipt","sender":"b","text":"","sent_at_ms":0,"delivered_through":3,"read_through":1.0}"#;
        assert!(Envelope::from_json(wrong_type).is_err());
    }

    #[test]
    fn tolerates_new_fields_and_types() {
        let parsed = Envelope::from_json(
            br#"{"v":1,"type":"reaction","sender":"bob","text":"+1","sent_at_ms":5,"emoji":"x"}"#,
        )
        .unwrap();
        assert_eq!(parsed.kind, MessageKind::Unknown);
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        assert!(matches!(
            Envelope::from_json(br#"{"v":2,"type":"text","sender":"b","text":"","sent_at_ms":0}"#),
            Err(EnvelopeError::Version(2))
        ));
        assert!(matches!(
            Envelope::from_json(b"\xff\x00"),
            Err(EnvelopeError::Json(_))
        ));
    }
}
