//! One client's `Chat` stream, read frame by frame: each frame is checked, carried out
//! on the [`Hub`], and answered.

use std::sync::Arc;

use tonic::{Code, Status, Streaming};

use super::hub::{Hub, SessionId};
use crate::proto::{
    ClientFrame, DistributeSenderKey, Rejection, SealedMessage, SendMessage, client_frame,
    server_frame,
};
use crate::protocol::{
    MAX_WRAPPED_KEY_LEN, MIN_WRAPPED_KEY_LEN, NONCE_LEN, TAG_LEN, validate_room, validate_user,
};

/// Reads the session's frames until the client ends the stream or breaks the protocol.
pub(crate) async fn run(hub: Arc<Hub>, id: SessionId, mut frames: Streaming<ClientFrame>) {
    let _close = CloseOnDrop { hub: &hub, id };
    loop {
        match frames.message().await {
            Ok(Some(frame)) => handle(&hub, id, frame),
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
        // tonic's decoder refuses an over-long frame before reading it.
        Code::OutOfRange | Code::ResourceExhausted => Some(Status::resource_exhausted(format!(
            "frame too large: {}; send smaller messages",
            status.message()
        ))),
        // tonic reports bytes that are not a protobuf message as INTERNAL; the fault
        // is the client's.
        Code::Internal => Some(Status::invalid_argument(format!(
            "could not decode a chat.v1.ClientFrame: {}",
            status.message()
        ))),
        _ => None,
    }
}

fn handle(hub: &Hub, id: SessionId, frame: ClientFrame) {
    let request_id = frame.request_id;
    if let Err(status) = carry_out(hub, id, frame) {
        tracing::debug!(session = id, request_id, code = ?status.code(), "frame rejected");
        let rejection = Rejection {
            code: status.code() as i32,
            message: status.message().to_owned(),
        };
        hub.reply(id, request_id, server_frame::Kind::Rejection(rejection));
    }
}

fn carry_out(hub: &Hub, id: SessionId, frame: ClientFrame) -> Result<(), Status> {
    use client_frame::Kind;

    let request_id = frame.request_id;
    if request_id == 0 {
        return Err(Status::invalid_argument("request_id must be non-zero"));
    }
    match frame.kind {
        None => Err(Status::invalid_argument(
            "the frame has no kind; set one of join, leave, send or distribute_key",
        )),
        Some(Kind::Join(join)) => {
            check_room(&join.room)?;
            hub.join(id, request_id, &join.room)
        }
        Some(Kind::Leave(leave)) => {
            check_room(&leave.room)?;
            hub.leave(id, request_id, &leave.room)
        }
        Some(Kind::Send(SendMessage { room, sealed })) => {
            check_room(&room)?;
            let sealed = check_sealed(sealed)?;
            hub.send(id, request_id, &room, sealed)
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
            hub.distribute(id, request_id, &room, key_id, keys)
        }
    }
}

fn check_room(room: &str) -> Result<(), Status> {
    validate_room(room).map_err(|error| Status::invalid_argument(error.to_string()))
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
    Ok(sealed)
}
