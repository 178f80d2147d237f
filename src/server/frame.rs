//! The relay's checks of one client frame: everything that can be judged from the frame
//! alone (the request id, names, lengths, ranges), before the hub judges what needs its
//! state (membership, ownership, limits).
//!
//! [`check`] is the only implementation of these checks: the frame reader runs every
//! frame through it, and the `client_frame` fuzz target drives it with arbitrary bytes.

use std::collections::HashSet;

use tonic::Status;

use crate::crypto::binding::chain_key_copy_leaf;
use crate::crypto::group::{SIGNATURE_LEN, SIGNING_PUBLIC_KEY_LEN};
use crate::crypto::merkle::{self, Hash};
use crate::proto::{
    ClientFrame, DistributeSenderKey, DistributionHeader, GetHistory, Invitation, InviteMember,
    JoinRoom, KickMember, LeaveRoom, Removal, SealedMessage, SendMessage, WrappedChainKey,
    client_frame,
};
use crate::protocol::{
    DEVICE, MAX_COPIES_PER_DISTRIBUTION, MAX_HISTORY_MESSAGES, MAX_SIGNATURE_LEN,
    MAX_WRAPPED_KEY_LEN, MIN_SIGNATURE_LEN, MIN_WRAPPED_KEY_LEN, TAG_LEN, validate_room,
    validate_user,
};
use crate::store::{WrappedKey, copy};

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
    /// At least one copy, each (recipient, device) once; `keys` holds each recipient's
    /// copy as the relay stores it: its `SenderKeyDelivery` without room, sender, seq and
    /// signature, which the relay fills in when it delivers it.
    DistributeKey {
        room: String,
        key_id: u64,
        keys: Vec<WrappedKey>,
    },
    /// The owner's signed invitation, for `room`; its signature and fingerprint are the
    /// session's to check (they need the registered identities).
    Invite {
        room: String,
        invitation: Invitation,
    },
    /// The owner's signed removal, for `room`.
    Kick {
        room: String,
        removal: Removal,
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
        Some(Kind::Invite(InviteMember { room, invitation })) => {
            check_room(&room)?;
            let invitation = invitation
                .ok_or_else(|| Status::invalid_argument("invite.invitation is missing"))?;
            if invitation.room != room {
                return Err(Status::invalid_argument(
                    "invite.invitation is for another room than invite.room",
                ));
            }
            check_user(&invitation.owner)?;
            check_user(&invitation.invitee)?;
            if invitation.invitee_fingerprint.len() != 32 {
                return Err(Status::invalid_argument(
                    "invite.invitation.invitee_fingerprint must be the 32 bytes of a fingerprint",
                ));
            }
            check_signature(&invitation.signature, "invite.invitation.signature")?;
            Ok(ValidFrame::Invite { room, invitation })
        }
        Some(Kind::Kick(KickMember { room, removal })) => {
            check_room(&room)?;
            let removal =
                removal.ok_or_else(|| Status::invalid_argument("kick.removal is missing"))?;
            if removal.room != room {
                return Err(Status::invalid_argument(
                    "kick.removal is for another room than kick.room",
                ));
            }
            check_user(&removal.owner)?;
            check_user(&removal.member)?;
            check_signature(&removal.signature, "kick.removal.signature")?;
            Ok(ValidFrame::Kick { room, removal })
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
        Some(Kind::DistributeKey(DistributeSenderKey {
            room,
            header,
            copies,
            signature,
        })) => {
            check_room(&room)?;
            let header = check_header(header)?;
            check_copies(&copies)?;
            check_signature(&signature, "distribute_key.signature")?;
            let key_id = header.key_id;
            Ok(ValidFrame::DistributeKey {
                room,
                key_id,
                keys: stored_copies(&header, copies, &signature),
            })
        }
    }
}

fn check_room(room: &str) -> Result<(), Status> {
    validate_room(room).map_err(|error| Status::invalid_argument(error.to_string()))
}

fn check_user(user: &str) -> Result<(), Status> {
    validate_user(user).map_err(|error| Status::invalid_argument(error.to_string()))
}

fn check_device(device: u32, what: &str) -> Result<(), Status> {
    if device == DEVICE {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{what} is {device}; every user has one device for now, device {DEVICE}"
        )))
    }
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
    check_device(sealed.device, "send.sealed.device")?;
    if sealed.ciphertext.len() < TAG_LEN {
        return Err(Status::invalid_argument(format!(
            "send.sealed.ciphertext is {} bytes; it must hold at least the {TAG_LEN}-byte tag",
            sealed.ciphertext.len()
        )));
    }
    if sealed.signature.len() != SIGNATURE_LEN {
        return Err(Status::invalid_argument(format!(
            "send.sealed.signature is {} bytes; an Ed25519 signature is {SIGNATURE_LEN}",
            sealed.signature.len()
        )));
    }
    Ok(sealed)
}

fn check_header(header: Option<DistributionHeader>) -> Result<DistributionHeader, Status> {
    let header =
        header.ok_or_else(|| Status::invalid_argument("distribute_key.header is missing"))?;
    check_device(header.device, "distribute_key.header.device")?;
    if header.signing_public_key.len() != SIGNING_PUBLIC_KEY_LEN {
        return Err(Status::invalid_argument(format!(
            "distribute_key.header.signing_public_key is {} bytes; an Ed25519 public key is \
             {SIGNING_PUBLIC_KEY_LEN}",
            header.signing_public_key.len()
        )));
    }
    Ok(header)
}

fn check_copies(copies: &[WrappedChainKey]) -> Result<(), Status> {
    if copies.is_empty() {
        return Err(Status::invalid_argument("distribute_key.copies is empty"));
    }
    if copies.len() > MAX_COPIES_PER_DISTRIBUTION {
        return Err(Status::invalid_argument(format!(
            "distribute_key has {} copies; at most {MAX_COPIES_PER_DISTRIBUTION}",
            copies.len()
        )));
    }
    let mut recipients = HashSet::new();
    for copy in copies {
        // The name first: a refusal quotes it, and only a valid one is short.
        validate_user(&copy.recipient).map_err(|error| {
            Status::invalid_argument(format!("distribute_key recipient: {error}"))
        })?;
        check_device(copy.device, "a copy's device")?;
        if !recipients.insert((&copy.recipient, copy.device)) {
            return Err(Status::invalid_argument(format!(
                "distribute_key names recipient {:?} twice",
                copy.recipient
            )));
        }
        if !(MIN_WRAPPED_KEY_LEN..=MAX_WRAPPED_KEY_LEN).contains(&copy.wrapped.len()) {
            return Err(Status::invalid_argument(format!(
                "the copy wrapped for {:?} is {} bytes; an RSA-OAEP ciphertext is \
                 {MIN_WRAPPED_KEY_LEN} to {MAX_WRAPPED_KEY_LEN} bytes",
                copy.recipient,
                copy.wrapped.len()
            )));
        }
    }
    Ok(())
}

/// Each recipient's copy as the relay stores it: what it will receive of the
/// distribution (its copy and the copy's Merkle audit path), and the signature.
fn stored_copies(
    header: &DistributionHeader,
    copies: Vec<WrappedChainKey>,
    signature: &bytes::Bytes,
) -> Vec<WrappedKey> {
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
    let count = copies.len() as u32;
    copies
        .into_iter()
        .enumerate()
        .map(|(index, copy)| {
            let recipient = copy.recipient.clone();
            let path = merkle::audit_path(&leaves, index)
                .into_iter()
                .map(|hash| bytes::Bytes::copy_from_slice(&hash))
                .collect();
            WrappedKey {
                recipient,
                wrapped_key: copy::encode(header, copy, index as u32, count, path),
                signature: signature.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn distribution(recipients: &[&str]) -> ClientFrame {
        let copies = recipients
            .iter()
            .map(|recipient| WrappedChainKey {
                recipient: (*recipient).to_owned(),
                device: DEVICE,
                prekey_id: 3,
                wrapped: vec![1; MIN_WRAPPED_KEY_LEN].into(),
            })
            .collect();
        ClientFrame {
            request_id: 1,
            kind: Some(client_frame::Kind::DistributeKey(DistributeSenderKey {
                room: "lobby".to_owned(),
                header: Some(DistributionHeader {
                    key_id: 7,
                    iteration: 0,
                    device: DEVICE,
                    signing_public_key: vec![5; SIGNING_PUBLIC_KEY_LEN].into(),
                }),
                copies,
                signature: vec![2; MIN_SIGNATURE_LEN].into(),
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
