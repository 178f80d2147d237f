//! The JSON envelope: the plaintext that a client encrypts into every message.
//!
//! It is serialized with serde_json. Unknown fields are ignored so that later versions
//! can add some; an unknown `type` decodes as [`MessageKind::Unknown`] so that an old
//! client can say it cannot show a message instead of failing.

use serde::{Deserialize, Serialize};

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A text message for the room.
    Text,
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
}

/// Why a decrypted plaintext is not a usable envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the message is not a valid JSON envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the message uses envelope version {0}, this client understands version 1")]
    Version(u32),
}

impl Envelope {
    /// The envelope version this code writes and reads.
    pub const VERSION: u32 = 1;

    /// A text message sent now.
    pub fn text(sender: &str, text: &str) -> Self {
        let sent_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        Self {
            version: Self::VERSION,
            kind: MessageKind::Text,
            sender: sender.to_owned(),
            text: text.to_owned(),
            sent_at_ms,
        }
    }

    /// The bytes to encrypt.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope of strings and integers always serializes")
    }

    /// Parses decrypted bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope: Self = serde_json::from_slice(bytes)?;
        if envelope.version != Self::VERSION {
            return Err(EnvelopeError::Version(envelope.version));
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
