//! Bytes in the store's BLOB columns (a damaged or tampered database), decoded as the
//! store does (`store::decode_message`, `store::decode_identity`): never a panic; a
//! bad row is an error that names it; a good one keeps every byte.
#![no_main]

use e2ee_chat::store::{StoreError, decode_identity, decode_message};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, stored)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        match decode_message("#room", 7, "alice".to_owned(), bytes::Bytes::copy_from_slice(stored)) {
            Ok(message) => {
                assert_eq!((message.room.as_str(), message.seq), ("#room", 7));
                assert_eq!(message.sender, "alice");
                let sealed = message.sealed.expect("a decoded message has its sealed part");
                // What members are handed decodes as stored.
                let again = decode_message("#room", 7, "alice".to_owned(), sealed.encode_to_vec().into());
                assert_eq!(again.unwrap().sealed.unwrap(), sealed);
            }
            Err(error) => assert!(
                matches!(&error, StoreError::CorruptEntry { room, seq: 7, .. } if room == "#room"),
                "{error}"
            ),
        }
    } else {
        match decode_identity("alice".to_owned(), stored) {
            Ok(identity) => assert_eq!(identity.user, "alice"),
            Err(error) => assert!(
                matches!(&error, StoreError::Corrupt { user, .. } if user == "alice"),
                "{error}"
            ),
        }
    }
});
