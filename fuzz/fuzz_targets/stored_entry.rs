//! What the relay reads back from its database: arbitrary bytes as the stored BLOB of a
//! message or of an identity, decoded by the functions the store reads every row with
//! (`store::decode_message`, `store::decode_identity`).
//!
//! A corrupt entry must be a `StoreError` naming it (never a panic); one that decodes
//! must say what the row says and survive encoding again.

#![no_main]

use arbitrary::Arbitrary;
use e2ee_chat::proto::{PublicIdentity, SealedMessage};
use e2ee_chat::store::{StoreError, decode_identity, decode_message};
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[derive(Arbitrary, Debug)]
enum Row {
    Message {
        room: String,
        seq: u64,
        sender: String,
        sealed: Vec<u8>,
    },
    Identity {
        user: String,
        identity: Vec<u8>,
    },
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
        Err(StoreError::CorruptEntry {
            room: named,
            seq: numbered,
            reason,
        }) => {
            assert_eq!((named.as_str(), numbered), (room.as_str(), seq));
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("a corrupt message is not a CorruptEntry: {other:?}"),
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
});
