//! What the relay reads back from its database (protocol v2): arbitrary bytes as the
//! stored BLOB of a message, of a recipient's copy of a sender key, or of an identity,
//! decoded by the functions the store reads every row with (`store::decode_message`,
//! `store::copy::delivery`, `store::decode_identity`); and key distributions the relay
//! accepts (`server::frame::check`), stored one copy per recipient (`store::copy::encode`)
//! and read back.
//!
//! A corrupt entry must be a `StoreError` naming it (never a panic); one that decodes
//! must say what the row says, survive encoding again, and be something a client can
//! take apart (`crypto::group::wire::delivered_copy`, the Merkle path) without panicking.
//! A copy the relay stored reads back as the copy it was, at its place among the
//! distribution's copies, with a path that leads to the root the sender signed.

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use e2ee_chat::crypto::binding::chain_key_copy_leaf;
use e2ee_chat::crypto::group::wire::delivered_copy;
use e2ee_chat::crypto::merkle::{self, Hash};
use e2ee_chat::proto::{
    ClientFrame, DistributeSenderKey, DistributionHeader, PublicIdentity, SealedMessage,
    SenderKeyDelivery, WrappedChainKey, client_frame,
};
use e2ee_chat::protocol::{DEVICE, MAX_WRAPPED_KEY_LEN, MIN_SIGNATURE_LEN, MIN_WRAPPED_KEY_LEN};
use e2ee_chat::server::frame::{ValidFrame, check};
use e2ee_chat::store::{StoreError, copy, decode_identity, decode_message};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The most copies of one distribution built here: each recipient's audit path costs
/// hashes over all the leaves.
const MAX_COPIES: usize = 32;

#[derive(Arbitrary, Debug)]
enum Row {
    Message {
        room: String,
        seq: u64,
        sender: String,
        sealed: Vec<u8>,
    },
    /// A row of the sender keys: a recipient's copy as stored, and the distribution's
    /// signature kept beside it.
    SenderKey {
        room: String,
        seq: u64,
        sender: String,
        stored: Vec<u8>,
        signature: Vec<u8>,
    },
    Identity {
        user: String,
        identity: Vec<u8>,
    },
    /// A distribution a client could send, as the relay's checks store it.
    Distribution(Distribution),
}

#[derive(Arbitrary, Debug)]
struct Distribution {
    key_id: u64,
    iteration: u32,
    signing_key: [u8; 32],
    /// Per copy: its recipient (a number, made a valid name), its prekey, the length and
    /// first byte of its wrapped key.
    copies: Vec<(u8, u64, u16, u8)>,
    seq: u64,
    signature_len: u16,
}

fuzz_target!(|row: Row| match row {
    Row::Message {
        room,
        seq,
        sender,
        sealed,
    } => match decode_message(&room, seq, sender.clone(), sealed) {
        Ok(message) => {
            assert_eq!((message.room.as_str(), message.seq), (room.as_str(), seq));
            assert_eq!(message.sender, sender);
            let sealed = message
                .sealed
                .expect("a decoded message has its sealed part");
            let again = SealedMessage::decode(sealed.encode_to_vec().as_slice()).unwrap();
            assert_eq!(again, sealed);
        }
        Err(error) => is_corrupt_entry(error, &room, seq),
    },
    Row::SenderKey {
        room,
        seq,
        sender,
        stored,
        signature,
    } => match copy::delivery(
        &room,
        sender.clone(),
        seq,
        &stored,
        signature.clone().into()
    ) {
        Ok(delivery) => {
            // What the row says, whatever the stored bytes claim.
            assert_eq!((delivery.room.as_str(), delivery.seq), (room.as_str(), seq));
            assert_eq!(delivery.sender, sender);
            assert_eq!(delivery.signature.as_ref(), signature.as_slice());
            assert_eq!(
                copy::key_id(&delivery),
                delivery.header.as_ref().map_or(0, |header| header.key_id)
            );
            let again = SenderKeyDelivery::decode(delivery.encode_to_vec().as_slice()).unwrap();
            assert_eq!(again, delivery);
            // Stored again without what the relay fills in, it reads back the same.
            let restored = SenderKeyDelivery {
                room: String::new(),
                sender: String::new(),
                seq: 0,
                signature: Bytes::new(),
                ..delivery.clone()
            };
            let reread = copy::delivery(
                &room,
                sender,
                seq,
                &restored.encode_to_vec(),
                signature.into(),
            )
            .expect("a copy that decoded decodes again");
            assert_eq!(reread, delivery);
            taken_apart(&delivery);
        }
        Err(error) => is_corrupt_entry(error, &room, seq),
    },
    Row::Identity { user, identity } => match decode_identity(user.clone(), &identity) {
        Ok(decoded) => {
            assert_eq!(decoded.user, user);
            let again = PublicIdentity::decode(decoded.encode_to_vec().as_slice()).unwrap();
            assert_eq!(again, decoded);
        }
        Err(StoreError::Corrupt {
            user: named,
            reason,
        }) => {
            assert_eq!(named, user);
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("a corrupt identity is not Corrupt: {other:?}"),
    },
    Row::Distribution(distribution) => stored_and_read_back(distribution),
});

fn is_corrupt_entry(error: StoreError, room: &str, seq: u64) {
    match error {
        StoreError::CorruptEntry {
            room: named,
            seq: numbered,
            reason,
        } => {
            assert_eq!((named.as_str(), numbered), (room, seq));
            assert!(!reason.is_empty());
        }
        other => panic!("a corrupt entry is not a CorruptEntry: {other:?}"),
    }
}

/// What a client does with a delivered copy before any signature check: its parts, then
/// the root its Merkle path leads to. A misshapen copy is refused, never a panic.
fn taken_apart(delivery: &SenderKeyDelivery) {
    let Ok(copy) = delivered_copy(delivery) else {
        return;
    };
    assert_eq!((copy.index, copy.count), (delivery.index, delivery.count));
    assert_eq!(copy.path.len(), delivery.path.len());
    let leaf = merkle::leaf_hash(&chain_key_copy_leaf(
        &copy.copy.recipient,
        copy.copy.device,
        copy.copy.prekey_id,
        &copy.copy.wrapped,
    ));
    let _ = merkle::root_from_path(leaf, copy.index as usize, copy.count as usize, &copy.path);
}

/// A distribution the relay accepts is stored one copy per recipient; each reads back
/// as the copy it was, and its path leads to the root over all the copies.
fn stored_and_read_back(distribution: Distribution) {
    let header = DistributionHeader {
        key_id: distribution.key_id,
        iteration: distribution.iteration,
        device: DEVICE,
        signing_public_key: Bytes::copy_from_slice(&distribution.signing_key),
    };
    let mut recipients = std::collections::HashSet::new();
    let copies: Vec<WrappedChainKey> = distribution
        .copies
        .iter()
        .filter(|(recipient, ..)| recipients.insert(*recipient))
        .take(MAX_COPIES)
        .map(|&(recipient, prekey_id, len, first)| {
            let span = (MAX_WRAPPED_KEY_LEN - MIN_WRAPPED_KEY_LEN + 1) as u16;
            let len = MIN_WRAPPED_KEY_LEN + usize::from(len % span);
            let mut wrapped = vec![recipient; len];
            wrapped[0] = first;
            WrappedChainKey {
                recipient: format!("user{recipient}"),
                device: DEVICE,
                prekey_id,
                wrapped: wrapped.into(),
            }
        })
        .collect();
    let signature_len = MIN_SIGNATURE_LEN + usize::from(distribution.signature_len % 257);
    let frame = ClientFrame {
        request_id: 1,
        kind: Some(client_frame::Kind::DistributeKey(DistributeSenderKey {
            room: "lobby".to_owned(),
            header: Some(header.clone()),
            copies: copies.clone(),
            signature: vec![7; signature_len].into(),
        })),
    };
    let verdict = check(frame);
    if copies.is_empty() {
        assert!(verdict.is_err(), "a distribution without copies passed");
        return;
    }
    let Ok(ValidFrame::DistributeKey { room, key_id, keys }) = verdict else {
        panic!("a well-formed distribution was refused: {verdict:?}");
    };
    assert_eq!((room.as_str(), key_id), ("lobby", distribution.key_id));
    assert_eq!(keys.len(), copies.len());
    let leaves: Vec<Hash> = copies
        .iter()
        .map(|copy| {
            merkle::leaf_hash(&chain_key_copy_leaf(
                &copy.recipient,
                copy.device,
                copy.prekey_id,
                &copy.wrapped,
            ))
        })
        .collect();
    let root = merkle::root(&leaves).expect("a root over some leaves");
    for (index, (key, sent)) in keys.into_iter().zip(&copies).enumerate() {
        assert_eq!(key.recipient, sent.recipient);
        let delivery = copy::delivery(
            "lobby",
            "sender".to_owned(),
            distribution.seq,
            &key.wrapped_key,
            key.signature.clone(),
        )
        .expect("a copy the relay stored decodes");
        assert_eq!(delivery.signature.len(), signature_len);
        assert_eq!(delivery.header.as_ref(), Some(&header));
        assert_eq!(delivery.copy.as_ref(), Some(sent));
        assert_eq!(delivery.index as usize, index);
        assert_eq!(delivery.count as usize, copies.len());
        assert_eq!(copy::key_id(&delivery), distribution.key_id);
        let delivered = delivered_copy(&delivery).expect("a stored copy is well-formed");
        let reached = merkle::root_from_path(
            leaves[index],
            delivered.index as usize,
            delivered.count as usize,
            &delivered.path,
        );
        assert_eq!(reached, Some(root), "copy {index}'s path leads elsewhere");
    }
}
