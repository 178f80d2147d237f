//! The relay's checks of one client frame: everything that can be judged from the frame
//! alone (the request id, names, lengths, ranges), before the hub judges what needs its
//! state (membership, ownership, limits).
//!
//! [`check`] is the only implementation of these checks: the frame reader runs every
//! frame through it, and the `client_frame` fuzz target drives it with arbitrary bytes.

use std::collections::HashSet;

use tonic::Status;

use crate::proto::{
    ClientFrame, DistributeSenderKey, GetHistory, InviteMember, JoinRoom, KickMember, LeaveRoom,
    SealedMessage, SendMessage, WrappedSenderKey, client_frame,
};
use crate::protocol::{
    MAX_HISTORY_MESSAGES, MAX_SIGNATURE_LEN, MAX_WRAPPED_KEY_LEN, MIN_SIGNATURE_LEN,
    MIN_WRAPPED_KEY_LEN, NONCE_LEN, TAG_LEN, validate_room, validate_user,
};
use crate::store::WrappedKey;

/// What a client frame that passed [`check`] asks for: every name valid, every length in
/// range, nothing missing.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidFrame {
    Join {
        room: String,
        create_private: bool,
        after_seq: Option<u64>,
    },
    Leave {
        room: String,
    },
    Send {
        room: String,
        sealed: SealedMessage,
    },
    /// At least one key; recipients valid user names, each named once.
    DistributeKey {
        room: String,
        key_id: u64,
        keys: Vec<WrappedKey>,
    },
    Invite {
        room: String,
        user: String,
    },
    Kick {
        room: String,
        user: String,
    },
    /// `limit` is 1 to 100, the most messages the relay answers with.
    History {
        room: String,
        limit: u32,
    },
}

/// The relay's checks of one client frame. A frame that fails them is answered with the
/// returned status, always INVALID_ARGUMENT, whose message says what was wrong.
pub fn check(frame: ClientFrame) -> Result<ValidFrame, Status> {
    use client_frame::Kind;

    if frame.request_id == 0 {
        return Err(Status::invalid_argument("request_id must be non-zero"));
    }
    match frame.kind {
        None => Err(Status::invalid_argument(
            "the frame has no kind; set one of join, leave, send, distribute_key, invite, kick \
             or history",
        )),
        Some(Kind::Join(JoinRoom {
            room,
            create_private,
            after_seq,
        })) => {
            check_room(&room)?;
            Ok(ValidFrame::Join {
                room,
                create_private,
                after_seq,
            })
        }
        Some(Kind::History(GetHistory { room, limit })) => {
            check_room(&room)?;
            if !(1..=MAX_HISTORY_MESSAGES).contains(&limit) {
                return Err(Status::invalid_argument(format!(
                    "history.limit is {limit}; ask for 1 to {MAX_HISTORY_MESSAGES} messages"
                )));
            }
            Ok(ValidFrame::History { room, limit })
        }
        Some(Kind::Invite(InviteMember { room, user })) => {
            check_room(&room)?;
            check_user(&user)?;
            Ok(ValidFrame::Invite { room, user })
        }
        Some(Kind::Kick(KickMember { room, user })) => {
            check_room(&room)?;
            check_user(&user)?;
            Ok(ValidFrame::Kick { room, user })
        }
        Some(Kind::Leave(LeaveRoom { room })) => {
            check_room(&room)?;
            Ok(ValidFrame::Leave { room })
        }
        Some(Kind::Send(SendMessage { room, sealed })) => {
            check_room(&room)?;
            let sealed = check_sealed(sealed)?;
            Ok(ValidFrame::Send { room, sealed })
        }
        Some(Kind::DistributeKey(DistributeSenderKey { room, key_id, keys })) => {
            check_room(&room)?;
            check_wrapped_keys(&keys)?;
            let keys = keys
                .into_iter()
                .map(|wrapped| WrappedKey {
                    recipient: wrapped.recipient,
                    wrapped_key: wrapped.wrapped_key,
                    signature: wrapped.signature,
                })
                .collect();
            Ok(ValidFrame::DistributeKey { room, key_id, keys })
        }
    }
}

fn check_room(room: &str) -> Result<(), Status> {
    validate_room(room).map_err(|error| Status::invalid_argument(error.to_string()))
}

fn check_user(user: &str) -> Result<(), Status> {
    validate_user(user).map_err(|error| Status::invalid_argument(error.to_string()))
}

/// The relay cannot check signatures it has no reason to trust, but it refuses what
/// cannot be one, so clients are not handed garbage to verify.
fn check_signature(signature: &[u8], what: &str) -> Result<(), Status> {
    if (MIN_SIGNATURE_LEN..=MAX_SIGNATURE_LEN).contains(&signature.len()) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{what} is {} bytes; an RSA-PSS signature is {MIN_SIGNATURE_LEN} to \
             {MAX_SIGNATURE_LEN} bytes",
            signature.len()
        )))
    }
}

fn check_sealed(sealed: Option<SealedMessage>) -> Result<SealedMessage, Status> {
    let sealed = sealed.ok_or_else(|| Status::invalid_argument("send.sealed is missing"))?;
    if sealed.nonce.len() != NONCE_LEN {
        return Err(Status::invalid_argument(format!(
            "send.sealed.nonce is {} bytes; AES-GCM nonces are {NONCE_LEN}",
            sealed.nonce.len()
        )));
    }
    if sealed.ciphertext.len() < TAG_LEN {
        return Err(Status::invalid_argument(format!(
            "send.sealed.ciphertext is {} bytes; it must hold at least the {TAG_LEN}-byte tag",
            sealed.ciphertext.len()
        )));
    }
    check_signature(&sealed.signature, "send.sealed.signature")?;
    Ok(sealed)
}

fn check_wrapped_keys(keys: &[WrappedSenderKey]) -> Result<(), Status> {
    if keys.is_empty() {
        return Err(Status::invalid_argument("distribute_key.keys is empty"));
    }
    let mut recipients = HashSet::new();
    for wrapped in keys {
        // The name first: a refusal quotes it, and only a valid one is short.
        validate_user(&wrapped.recipient).map_err(|error| {
            Status::invalid_argument(format!("distribute_key recipient: {error}"))
        })?;
        if !recipients.insert(&wrapped.recipient) {
            return Err(Status::invalid_argument(format!(
                "distribute_key names recipient {:?} twice",
                wrapped.recipient
            )));
        }
        check_signature(
            &wrapped.signature,
            &format!(
                "the signature of the key wrapped for {:?}",
                wrapped.recipient
            ),
        )?;
        if !(MIN_WRAPPED_KEY_LEN..=MAX_WRAPPED_KEY_LEN).contains(&wrapped.wrapped_key.len()) {
            return Err(Status::invalid_argument(format!(
                "the key wrapped for {:?} is {} bytes; an RSA-OAEP ciphertext is \
                 {MIN_WRAPPED_KEY_LEN} to {MAX_WRAPPED_KEY_LEN} bytes",
                wrapped.recipient,
                wrapped.wrapped_key.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn distribution(recipients: &[&str]) -> ClientFrame {
        let keys = recipients
            .iter()
            .map(|recipient| WrappedSenderKey {
                recipient: (*recipient).to_owned(),
                wrapped_key: vec![1; MIN_WRAPPED_KEY_LEN].into(),
                signature: vec![2; MIN_SIGNATURE_LEN].into(),
            })
            .collect();
        ClientFrame {
            request_id: 1,
            kind: Some(client_frame::Kind::DistributeKey(DistributeSenderKey {
                room: "lobby".to_owned(),
                key_id: 7,
                keys,
            })),
        }
    }

    #[test]
    fn a_distribution_to_valid_recipients_passes_once_each() {
        let Ok(ValidFrame::DistributeKey { keys, .. }) = check(distribution(&["bob", "carol"]))
        else {
            panic!("refused");
        };
        assert_eq!(keys.len(), 2);
        let status = check(distribution(&["bob", "bob"])).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("\"bob\" twice"), "{status:?}");
    }

    /// A name named twice used to be quoted whole, escaped: 20 000 control characters
    /// came back as a 100 kB refusal.
    #[test]
    fn a_refusal_never_quotes_a_long_name_back() {
        let long = "\u{1}".repeat(20_000);
        let status = check(distribution(&[&long, &long])).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().len() < 200,
            "{} bytes",
            status.message().len()
        );
        assert!(status.message().contains("longer than 32"), "{status:?}");
    }
}
