//! What keys and messages are cryptographically bound to.
//!
//! Both encodings are a fixed ASCII domain tag followed by length-prefixed fields
//! (a big-endian `u16` length, then the UTF-8 bytes) and big-endian integers, so no
//! two different contexts produce the same bytes, and a message or a wrapped key moved
//! to another room, sender or recipient fails to decrypt.

/// The AES-GCM associated data of a message:
/// `"chat.v1/message" || str(room) || str(sender) || u64(key_id) || u64(counter)`.
pub fn message_associated_data(room: &str, sender: &str, key_id: u64, counter: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + room.len() + sender.len());
    out.extend_from_slice(b"chat.v1/message");
    push_str(&mut out, room);
    push_str(&mut out, sender);
    out.extend_from_slice(&key_id.to_be_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    out
}

/// The RSA-OAEP label of a wrapped sender key:
/// `"chat.v1/sender-key" || str(room) || str(sender) || str(recipient) || u64(key_id)`.
pub fn sender_key_label(room: &str, sender: &str, recipient: &str, key_id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + room.len() + sender.len() + recipient.len());
    out.extend_from_slice(b"chat.v1/sender-key");
    push_str(&mut out, room);
    push_str(&mut out, sender);
    push_str(&mut out, recipient);
    out.extend_from_slice(&key_id.to_be_bytes());
    out
}

fn push_str(out: &mut Vec<u8>, field: &str) {
    let len = u16::try_from(field.len()).expect("names are validated to at most 64 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn associated_data_is_the_documented_bytes() {
        let mut expected = b"chat.v1/message".to_vec();
        expected.extend_from_slice(b"\x00\x05lobby\x00\x05alice");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(
            message_associated_data("lobby", "alice", 0x102, 7),
            expected
        );
    }

    #[test]
    fn label_is_the_documented_bytes() {
        let mut expected = b"chat.v1/sender-key".to_vec();
        expected.extend_from_slice(b"\x00\x01r\x00\x01a\x00\x01b");
        expected.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(sender_key_label("r", "a", "b", u64::MAX), expected);
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        assert_ne!(
            message_associated_data("ab", "c", 1, 1),
            message_associated_data("a", "bc", 1, 1)
        );
    }
}
