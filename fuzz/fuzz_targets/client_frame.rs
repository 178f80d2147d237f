//! Bytes from a client, decoded as a `chat.v1.ClientFrame` and checked by the relay as
//! its session reader does (`server::frame::check`): never a panic; a refusal is always
//! INVALID_ARGUMENT with a message; what passes is well formed.
#![no_main]

use e2ee_chat::proto::ClientFrame;
use e2ee_chat::protocol::{NONCE_LEN, TAG_LEN, validate_room, validate_user};
use e2ee_chat::server::frame::{Request, check};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = ClientFrame::decode(data) else {
        return;
    };
    let request_id = frame.request_id;
    match check(frame) {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(!status.message().is_empty());
        }
        Ok(request) => {
            assert_ne!(request_id, 0);
            let room = match &request {
                Request::Join { room, .. } | Request::Leave { room } => room,
                Request::History { room, limit } => {
                    assert!((1..=100).contains(limit));
                    room
                }
                Request::Invite { room, user } | Request::Kick { room, user } => {
                    assert!(validate_user(user).is_ok());
                    room
                }
                Request::Send { room, sealed } => {
                    assert_eq!(sealed.nonce.len(), NONCE_LEN);
                    assert!(sealed.ciphertext.len() >= TAG_LEN);
                    assert!((256..=512).contains(&sealed.signature.len()));
                    room
                }
                Request::Distribute { room, keys, .. } => {
                    assert!(!keys.is_empty());
                    for key in keys {
                        assert!(validate_user(&key.recipient).is_ok());
                        assert!((256..=512).contains(&key.wrapped_key.len()));
                    }
                    room
                }
            };
            assert!(validate_room(room).is_ok());
        }
    }
});
