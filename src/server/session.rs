//! One client's `Chat` stream, read frame by frame: each frame is checked, carried out
//! on the [`Hub`], and answered.
//!
//! A session may have [`MAX_IN_FLIGHT`] frames waiting for the store; beyond that its
//! stream is not read until some are committed, so a fast sender is slowed down rather
//! than buffered without bound.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status, Streaming};

use super::accounts::Accounts;
use super::catch_up::{self, MAX_HISTORY_MESSAGES};
use super::hub::{Hub, JoinRequest, SessionId};
use super::network::decode_fault;
use crate::proto::{
    ClientFrame, DistributeSenderKey, GetHistory, InviteMember, JoinRoom, KickMember, Rejection,
    SealedMessage, SendMessage, client_frame, server_frame,
};
use crate::protocol::{
    MAX_SIGNATURE_LEN, MAX_WRAPPED_KEY_LEN, MIN_SIGNATURE_LEN, MIN_WRAPPED_KEY_LEN, NONCE_LEN,
    TAG_LEN, validate_room, validate_user,
};
use crate::store::{Store, WrappedKey};

/// Frames of one session that may wait for the store at once.
const MAX_IN_FLIGHT: usize = 64;

/// What a session's frames act on.
pub(crate) struct Relay {
    pub hub: Arc<Hub>,
    pub accounts: Arc<Accounts>,
    pub store: Arc<dyn Store>,
}

/// Reads the session's frames until the client ends the stream or breaks the protocol.
pub(crate) async fn run(relay: Arc<Relay>, id: SessionId, mut frames: Streaming<ClientFrame>) {
    let hub = &relay.hub;
    let _close = CloseOnDrop { hub, id };
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        match frames.message().await {
            Ok(Some(frame)) => handle(&relay, id, frame, permit),
            Ok(None) => return,
            Err(status) => {
                if let Some(status) = protocol_violation(&status) {
                    hub.end_session(id, status);
                }
                return;
            }
        }
        if !hub.is_open(id) {
            return;
        }
    }
}

/// Closes the session however the reader ends, even when it is aborted.
struct CloseOnDrop<'a> {
    hub: &'a Hub,
    id: SessionId,
}

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.hub.close_session(self.id);
    }
}

/// The status to end the stream with when reading failed because of what the client
/// sent; `None` when the client just went away.
fn protocol_violation(status: &Status) -> Option<Status> {
    match status.code() {
        // A frame that started and stalled (see `network::message_deadline`).
        Code::DeadlineExceeded => Some(Status::deadline_exceeded(status.message())),
        // tonic's decoder refuses a compressed frame that inflates beyond the limit.
        Code::ResourceExhausted => Some(Status::resource_exhausted(format!(
            "frame too large: {}; send smaller messages",
            status.message()
        ))),
        _ => decode_fault(status, "a chat.v1.ClientFrame"),
    }
}

fn handle(relay: &Arc<Relay>, id: SessionId, frame: ClientFrame, permit: OwnedSemaphorePermit) {
    let request_id = frame.request_id;
    if let Err(status) = carry_out(relay, id, frame, permit) {
        tracing::debug!(session = id, request_id, code = ?status.code(), "frame rejected");
        let rejection = Rejection {
            code: status.code() as i32,
            message: status.message().to_owned(),
        };
        relay
            .hub
            .reply(id, request_id, server_frame::Kind::Rejection(rejection));
    }
}

fn carry_out(
    relay: &Arc<Relay>,
    id: SessionId,
    frame: ClientFrame,
    permit: OwnedSemaphorePermit,
) -> Result<(), Status> {
    use client_frame::Kind;

    let hub = &relay.hub;
    let request_id = frame.request_id;
    if request_id == 0 {
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
            let request = JoinRequest {
                room: &room,
                create_private,
                after_seq,
            };
            if let Some(catching_up) = hub.join(id, request_id, request, permit)? {
                tokio::spawn(catch_up::run(relay.clone(), catching_up));
            }
            Ok(())
        }
        Some(Kind::History(GetHistory { room, limit })) => {
            check_room(&room)?;
            if !(1..=MAX_HISTORY_MESSAGES).contains(&limit) {
                return Err(Status::invalid_argument(format!(
                    "history.limit is {limit}; ask for 1 to {MAX_HISTORY_MESSAGES} messages"
                )));
            }
            let (user, since) = hub.history_scope(id, &room)?;
            tokio::spawn(catch_up::history(
                relay.clone(),
                id,
                request_id,
                room,
                user,
                since,
                limit,
                permit,
            ));
            Ok(())
        }
        Some(Kind::Invite(InviteMember { room, user })) => {
            check_room(&room)?;
            check_user(&user)?;
            if relay.accounts.identity(&user).is_none() {
                return Err(Status::not_found(format!(
                    "no user named {user:?} is registered; they must log in once first"
                )));
            }
            hub.invite(id, request_id, &room, &user, permit)
        }
        Some(Kind::Kick(KickMember { room, user })) => {
            check_room(&room)?;
            check_user(&user)?;
            hub.kick(id, request_id, &room, &user, permit)
        }
        Some(Kind::Leave(leave)) => {
            check_room(&leave.room)?;
            hub.leave(id, request_id, &leave.room, permit)
        }
        Some(Kind::Send(SendMessage { room, sealed })) => {
            check_room(&room)?;
            let sealed = check_sealed(sealed)?;
            hub.send(id, request_id, &room, sealed, permit)
        }
        Some(Kind::DistributeKey(DistributeSenderKey { room, key_id, keys })) => {
            check_room(&room)?;
            if keys.is_empty() {
                return Err(Status::invalid_argument("distribute_key.keys is empty"));
            }
            let mut recipients = std::collections::HashSet::new();
            for wrapped in &keys {
                if !recipients.insert(&wrapped.recipient) {
                    return Err(Status::invalid_argument(format!(
                        "distribute_key names recipient {:?} twice",
                        wrapped.recipient
                    )));
                }
                validate_user(&wrapped.recipient).map_err(|error| {
                    Status::invalid_argument(format!("distribute_key recipient: {error}"))
                })?;
                check_signature(
                    &wrapped.signature,
                    &format!(
                        "the signature of the key wrapped for {:?}",
                        wrapped.recipient
                    ),
                )?;
                if !(MIN_WRAPPED_KEY_LEN..=MAX_WRAPPED_KEY_LEN).contains(&wrapped.wrapped_key.len())
                {
                    return Err(Status::invalid_argument(format!(
                        "the key wrapped for {:?} is {} bytes; an RSA-OAEP ciphertext is \
                         {MIN_WRAPPED_KEY_LEN} to {MAX_WRAPPED_KEY_LEN} bytes",
                        wrapped.recipient,
                        wrapped.wrapped_key.len()
                    )));
                }
            }
            let keys = keys
                .into_iter()
                .map(|wrapped| WrappedKey {
                    recipient: wrapped.recipient,
                    wrapped_key: wrapped.wrapped_key,
                    signature: wrapped.signature,
                })
                .collect();
            hub.distribute(id, request_id, &room, key_id, keys, permit)
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
