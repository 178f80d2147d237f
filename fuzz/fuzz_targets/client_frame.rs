//! What a client sends the relay: arbitrary bytes decoded as a `chat.v2.ClientFrame`
//! and, when they decode, through the relay's checks of a frame (`server::frame::check`,
//! the function the frame reader runs every frame through).
//!
//! A refusal must be INVALID_ARGUMENT with a short message for a person; a frame that
//! passes must carry only what the later stages rely on.

#![no_main]

use e2ee_chat::crypto::group::SIGNATURE_LEN;
use e2ee_chat::proto::ClientFrame;
use e2ee_chat::protocol::{
    DEVICE, MAX_COPIES_PER_DISTRIBUTION, MAX_SIGNATURE_LEN, MAX_WRAPPED_KEY_LEN, MIN_SIGNATURE_LEN,
    MIN_WRAPPED_KEY_LEN, TAG_LEN, validate_room, validate_user,
};
use e2ee_chat::server::frame::{ValidFrame, check};
use e2ee_chat::store::copy;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tonic::Code;

/// A refusal is read by a person and sent back on the client's own stream: it says what
/// was wrong in a line or two, it does not echo a frame's worth of bytes back.
const MAX_REFUSAL_LEN: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = ClientFrame::decode(data) else {
        return;
    };
    let request_id = frame.request_id;
    let verdict = check(frame.clone());
    match &verdict {
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(!status.message().is_empty(), "a refusal without a reason");
            assert!(
                status.message().len() <= MAX_REFUSAL_LEN,
                "a refusal of {} bytes: {:.200}",
                status.message().len(),
                status.message()
            );
        }
        Ok(valid) => {
            assert_ne!(request_id, 0);
            holds_for_the_hub(valid);
        }
    }
    // The same frame always gets the same answer.
    let again = check(frame).map_err(|status| (status.code(), status.message().to_owned()));
    let verdict = verdict.map_err(|status| (status.code(), status.message().to_owned()));
    assert_eq!(again, verdict);
});

/// What the hub and the store take for granted of a checked frame.
fn holds_for_the_hub(valid: &ValidFrame) {
    let room = match valid {
        ValidFrame::Join { room, .. } | ValidFrame::Leave { room } => room,
        ValidFrame::History { room, limit } => {
            assert!((1..=100).contains(limit), "history limit {limit}");
            room
        }
        ValidFrame::Invite { room, invitation } => {
            assert_eq!(&invitation.room, room);
            assert_eq!(validate_user(&invitation.owner), Ok(()));
            assert_eq!(validate_user(&invitation.invitee), Ok(()));
            assert_eq!(invitation.invitee_fingerprint.len(), 32);
            room
        }
        ValidFrame::Kick { room, removal } => {
            assert_eq!(&removal.room, room);
            assert_eq!(validate_user(&removal.owner), Ok(()));
            assert_eq!(validate_user(&removal.member), Ok(()));
            room
        }
        ValidFrame::Send { room, sealed } => {
            assert_eq!(sealed.device, DEVICE);
            assert!(sealed.ciphertext.len() >= TAG_LEN);
            assert_eq!(sealed.signature.len(), SIGNATURE_LEN);
            room
        }
        ValidFrame::DistributeKey { room, keys, .. } => {
            assert!(!keys.is_empty() && keys.len() <= MAX_COPIES_PER_DISTRIBUTION);
            let mut recipients = std::collections::HashSet::new();
            for key in keys {
                assert_eq!(validate_user(&key.recipient), Ok(()));
                assert!(
                    recipients.insert(&key.recipient),
                    "{:?} twice",
                    key.recipient
                );
                assert!((MIN_SIGNATURE_LEN..=MAX_SIGNATURE_LEN).contains(&key.signature.len()));
                // What the relay stores decodes as the copy it hands out.
                let delivered = copy::delivery(
                    room,
                    "sender".into(),
                    1,
                    &key.wrapped_key,
                    key.signature.clone(),
                )
                .expect("a stored copy decodes");
                let copy = delivered.copy.expect("the copy");
                assert_eq!(copy.recipient, key.recipient);
                assert!((MIN_WRAPPED_KEY_LEN..=MAX_WRAPPED_KEY_LEN).contains(&copy.wrapped.len()));
                assert!(delivered.index < delivered.count);
            }
            room
        }
    };
    assert_eq!(validate_room(room), Ok(()));
}
