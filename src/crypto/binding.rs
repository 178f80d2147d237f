//! What keys, messages and signatures are cryptographically bound to.
//!
//! Every encoding is a fixed ASCII domain tag followed by length-prefixed fields and
//! big-endian integers: a name is a `u16` length then its UTF-8 bytes, a byte string a
//! `u32` length then the bytes. So no two different contexts produce the same bytes:
//! a signature made for one purpose never verifies for another, and a message or a
//! wrapped key moved to another room, sender or recipient fails to decrypt.

/// What a user's signing key signs to vouch for its identity:
/// `"chat.v1/identity" || str(user) || bytes(signing_key_der) || bytes(encryption_key_der)`.
pub fn identity_signed_bytes(user: &str, signing_key: &[u8], encryption_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + signing_key.len() + encryption_key.len());
    out.extend_from_slice(b"chat.v1/identity");
    push_str(&mut out, user);
    push_bytes(&mut out, signing_key);
    push_bytes(&mut out, encryption_key);
    out
}

/// What a user signs to log in: `"chat.v1/login" || str(user) || bytes(challenge)`.
pub fn login_signed_bytes(user: &str, challenge: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + challenge.len());
    out.extend_from_slice(b"chat.v1/login");
    push_str(&mut out, user);
    push_bytes(&mut out, challenge);
    out
}

/// The AES-GCM associated data of a message sealed by protocol v2's group cipher:
/// `"chat.v2/message" || str(room) || str(sender) || u32(device) || u64(key_id) ||
/// u32(iteration)`.
pub fn group_message_associated_data(
    room: &str,
    sender: &str,
    device: u32,
    key_id: u64,
    iteration: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + room.len() + sender.len());
    out.extend_from_slice(b"chat.v2/message");
    push_message_header(&mut out, room, sender, device, key_id, iteration);
    out
}

/// What a sender key's Ed25519 key signs for each message in protocol v2:
/// `"chat.v2/message-signature" || str(room) || str(sender) || u32(device) ||
/// u64(key_id) || u32(iteration) || bytes(ciphertext)`.
pub fn group_message_signed_bytes(
    room: &str,
    sender: &str,
    device: u32,
    key_id: u64,
    iteration: u32,
    ciphertext: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + room.len() + sender.len() + ciphertext.len());
    out.extend_from_slice(b"chat.v2/message-signature");
    push_message_header(&mut out, room, sender, device, key_id, iteration);
    push_bytes(&mut out, ciphertext);
    out
}

/// What an identity signs to vouch for one of its prekeys (protocol v2):
/// `"chat.v2/prekey" || str(user) || u32(device) || u64(prekey_id) || u64(created_at_ms)
/// || bytes(prekey_der)`.
pub fn prekey_signed_bytes(
    user: &str,
    device: u32,
    prekey_id: u64,
    created_at_ms: u64,
    prekey_der: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + user.len() + prekey_der.len());
    out.extend_from_slice(b"chat.v2/prekey");
    push_str(&mut out, user);
    out.extend_from_slice(&device.to_be_bytes());
    out.extend_from_slice(&prekey_id.to_be_bytes());
    out.extend_from_slice(&created_at_ms.to_be_bytes());
    push_bytes(&mut out, prekey_der);
    out
}

/// The RSA-OAEP label of a sender key's chain key wrapped for one recipient device's
/// prekey (protocol v2): `"chat.v2/sender-key" || str(room) || str(sender) ||
/// u32(sender_device) || str(recipient) || u32(recipient_device) || u64(key_id) ||
/// u64(prekey_id)`.
pub fn chain_key_label(
    room: &str,
    sender: &str,
    sender_device: u32,
    recipient: &str,
    recipient_device: u32,
    key_id: u64,
    prekey_id: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + room.len() + sender.len() + recipient.len());
    out.extend_from_slice(b"chat.v2/sender-key");
    push_str(&mut out, room);
    push_str(&mut out, sender);
    out.extend_from_slice(&sender_device.to_be_bytes());
    push_str(&mut out, recipient);
    out.extend_from_slice(&recipient_device.to_be_bytes());
    out.extend_from_slice(&key_id.to_be_bytes());
    out.extend_from_slice(&prekey_id.to_be_bytes());
    out
}

/// One leaf of a key distribution's Merkle tree, a recipient device's copy (protocol v2):
/// `"chat.v2/sender-key-copy" || str(recipient) || u32(device) || u64(prekey_id) ||
/// bytes(wrapped)`.
pub fn chain_key_copy_leaf(
    recipient: &str,
    device: u32,
    prekey_id: u64,
    wrapped: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + recipient.len() + wrapped.len());
    out.extend_from_slice(b"chat.v2/sender-key-copy");
    push_str(&mut out, recipient);
    out.extend_from_slice(&device.to_be_bytes());
    out.extend_from_slice(&prekey_id.to_be_bytes());
    push_bytes(&mut out, wrapped);
    out
}

/// What a sender's identity signs, once, for a sender key it hands out (protocol v2):
/// `"chat.v2/sender-key-distribution" || str(room) || str(sender) || u32(device) ||
/// u64(key_id) || u32(iteration) || bytes(ed25519_public_key) || u32(copy_count) ||
/// merkle_root` (the 32 raw bytes of the root over the copies' leaves).
#[allow(clippy::too_many_arguments)]
pub fn distribution_signed_bytes(
    room: &str,
    sender: &str,
    device: u32,
    key_id: u64,
    iteration: u32,
    signing_key: &[u8],
    copy_count: u32,
    merkle_root: &[u8; 32],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + room.len() + sender.len());
    out.extend_from_slice(b"chat.v2/sender-key-distribution");
    push_message_header(&mut out, room, sender, device, key_id, iteration);
    push_bytes(&mut out, signing_key);
    out.extend_from_slice(&copy_count.to_be_bytes());
    out.extend_from_slice(merkle_root);
    out
}

/// What a private room's owner signs to invite a user, with the keys it saw for them
/// (protocol v2): `"chat.v2/invitation" || str(room) || str(owner) || str(invitee) ||
/// invitee_fingerprint || u64(issued_at_ms)` (the fingerprint's 32 raw bytes).
pub fn invitation_signed_bytes(
    room: &str,
    owner: &str,
    invitee: &str,
    invitee_fingerprint: &[u8; 32],
    issued_at_ms: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + room.len() + owner.len() + invitee.len());
    out.extend_from_slice(b"chat.v2/invitation");
    push_str(&mut out, room);
    push_str(&mut out, owner);
    push_str(&mut out, invitee);
    out.extend_from_slice(invitee_fingerprint);
    out.extend_from_slice(&issued_at_ms.to_be_bytes());
    out
}

/// What a private room's owner signs to remove a member or an invitation (protocol v2):
/// `"chat.v2/removal" || str(room) || str(owner) || str(member) || u64(issued_at_ms)`.
pub fn removal_signed_bytes(room: &str, owner: &str, member: &str, issued_at_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + room.len() + owner.len() + member.len());
    out.extend_from_slice(b"chat.v2/removal");
    push_str(&mut out, room);
    push_str(&mut out, owner);
    push_str(&mut out, member);
    out.extend_from_slice(&issued_at_ms.to_be_bytes());
    out
}

fn push_message_header(
    out: &mut Vec<u8>,
    room: &str,
    sender: &str,
    device: u32,
    key_id: u64,
    iteration: u32,
) {
    push_str(out, room);
    push_str(out, sender);
    out.extend_from_slice(&device.to_be_bytes());
    out.extend_from_slice(&key_id.to_be_bytes());
    out.extend_from_slice(&iteration.to_be_bytes());
}

/// What a fingerprint is the SHA-256 of:
/// `"chat.v1/fingerprint" || bytes(signing_key_der) || bytes(encryption_key_der)`.
pub fn fingerprint_input(signing_key: &[u8], encryption_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + signing_key.len() + encryption_key.len());
    out.extend_from_slice(b"chat.v1/fingerprint");
    push_bytes(&mut out, signing_key);
    push_bytes(&mut out, encryption_key);
    out
}

/// What one user's half of a safety number is the SHA-256 of:
/// `"chat.v1/safety-number" || str(user) || fingerprint` (the 32 raw bytes).
pub fn safety_number_input(user: &str, fingerprint: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"chat.v1/safety-number");
    push_str(&mut out, user);
    out.extend_from_slice(fingerprint);
    out
}

fn push_bytes(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).expect("frames are far smaller than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

fn push_str(out: &mut Vec<u8>, field: &str) {
    let len = u16::try_from(field.len()).expect("names are validated to at most 64 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::crypto::merkle;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The v2 vectors of docs/PROTOCOL.md, computed independently in Python.
    #[test]
    fn v2_membership_strings_are_the_documented_bytes() {
        assert_eq!(
            hex(&invitation_signed_bytes(
                "club",
                "alice",
                "bob",
                &[0xab; 32],
                1_700_000_000_000
            )),
            "636861742e76322f696e7669746174696f6e0004636c75620005616c6963650003626f62abababab\
             abababababababababababababababababababababababababababab0000018bcfe56800"
        );
        assert_eq!(
            hex(&removal_signed_bytes(
                "club",
                "alice",
                "bob",
                1_700_000_000_001
            )),
            "636861742e76322f72656d6f76616c0004636c75620005616c6963650003626f620000018bcfe56801"
        );
    }

    /// The v2 vectors of docs/PROTOCOL.md, computed independently in Python.
    #[test]
    fn v2_strings_are_the_documented_bytes() {
        const KEY_ID: u64 = 0x0102030405060708;
        const PREKEY_ID: u64 = 0x1112131415161718;
        assert_eq!(
            hex(&group_message_associated_data(
                "lobby", "alice", 1, KEY_ID, 2
            )),
            "636861742e76322f6d65737361676500056c6f6262790005616c696365000000010102030405060708\
             00000002"
        );
        assert_eq!(
            hex(&group_message_signed_bytes(
                "lobby",
                "alice",
                1,
                KEY_ID,
                2,
                &[0xca, 0xfe]
            )),
            "636861742e76322f6d6573736167652d7369676e617475726500056c6f6262790005616c69636500\
             00000101020304050607080000000200000002cafe"
        );
        assert_eq!(
            hex(&prekey_signed_bytes(
                "bob",
                2,
                PREKEY_ID,
                1_700_000_000_000,
                &[0x30, 0x00]
            )),
            "636861742e76322f7072656b65790003626f620000000211121314151617180000018bcfe5680000\
             0000023000"
        );
        assert_eq!(
            hex(&chain_key_label(
                "lobby", "alice", 1, "bob", 2, KEY_ID, PREKEY_ID
            )),
            "636861742e76322f73656e6465722d6b657900056c6f6262790005616c696365000000010003626f\
             620000000201020304050607081112131415161718"
        );
        let bob = chain_key_copy_leaf("bob", 2, PREKEY_ID, &[0xaa, 0xbb]);
        assert_eq!(
            hex(&bob),
            "636861742e76322f73656e6465722d6b65792d636f70790003626f620000000211121314151617180\
             0000002aabb"
        );
        let carol = chain_key_copy_leaf("carol", 1, PREKEY_ID, &[0xcc]);
        let leaves = [merkle::leaf_hash(&bob), merkle::leaf_hash(&carol)];
        let root = merkle::root(&leaves).unwrap();
        assert_eq!(
            hex(&root),
            "d66ca0ae624c0b369c9e5cd0e3b2372e6abd28218fd8d905c9f22d10ca656822"
        );
        assert_eq!(
            hex(&distribution_signed_bytes(
                "lobby",
                "alice",
                1,
                KEY_ID,
                3,
                &[0x11; 32],
                2,
                &root
            )),
            "636861742e76322f73656e6465722d6b65792d646973747269627574696f6e00056c6f626279000561\
             6c6963650000000101020304050607080000000300000020111111111111111111111111111111111\
             111111111111111111111111111111100000002d66ca0ae624c0b369c9e5cd0e3b2372e6abd28218f\
             d8d905c9f22d10ca656822"
        );
    }

    #[test]
    fn signed_bytes_are_the_documented_bytes() {
        let mut expected = b"chat.v1/login".to_vec();
        expected.extend_from_slice(b"\x00\x03bob\x00\x00\x00\x02\xca\xfe");
        assert_eq!(login_signed_bytes("bob", &[0xca, 0xfe]), expected);

        let mut expected = b"chat.v1/identity".to_vec();
        expected.extend_from_slice(b"\x00\x01u\x00\x00\x00\x01s\x00\x00\x00\x01e");
        assert_eq!(identity_signed_bytes("u", b"s", b"e"), expected);
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        assert_ne!(
            group_message_associated_data("ab", "c", 1, 1, 1),
            group_message_associated_data("a", "bc", 1, 1, 1)
        );
    }
}
