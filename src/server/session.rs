//! One client's session, read frame by frame: each frame is checked by
//! [`frame::check`], carried out on the [`Hub`], and answered. The frames come from a
//! `Chat` stream, or from `SendFrame` calls for a session opened with `OpenSession`
//! (see `web_session`).
//!
//! A session may have [`MAX_IN_FLIGHT`] frames waiting for the store; beyond that its
//! stream is not read until some are committed, so a fast sender is slowed down rather
//! than buffered without bound.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Status};

use super::catch_up;
use super::frame::{self, ValidFrame};
use super::hub::{Hub, JoinRequest, SessionId, rejection};
use super::network::decode_fault;
use super::relay::Relay;
use super::signed_membership;
use crate::proto::{ClientFrame, server_frame};

/// Frames of one session that may wait for the store at once.
const MAX_IN_FLIGHT: usize = 64;

/// Reads the session's frames until the client ends the stream or breaks the protocol.
pub(crate) async fn run(
    relay: Arc<Relay>,
    id: SessionId,
    mut frames: impl Stream<Item = Result<ClientFrame, Status>> + Unpin,
) {
    let hub = &relay.hub;
    let _close = CloseOnDrop { hub, id };
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        match frames.next().await {
            Some(Ok(frame)) => {
                // The decoder allows a `SendFrameRequest`'s few bytes more.
                if let Err(status) = relay.check_frame_size(&frame) {
                    hub.end_session(id, status);
                    return;
                }
                handle(&relay, id, frame, permit)
            }
            None => return,
            Some(Err(status)) => {
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
        _ => decode_fault(status, "a chat.v2.ClientFrame"),
    }
}

fn handle(relay: &Arc<Relay>, id: SessionId, frame: ClientFrame, permit: OwnedSemaphorePermit) {
    let request_id = frame.request_id;
    if let Err(status) = carry_out(relay, id, frame, permit) {
        tracing::debug!(session = id, request_id, code = ?status.code(), "frame rejected");
        let rejection = server_frame::Kind::Rejection(rejection(&status));
        relay.hub.reply(id, request_id, rejection);
    }
}

fn carry_out(
    relay: &Arc<Relay>,
    id: SessionId,
    frame: ClientFrame,
    permit: OwnedSemaphorePermit,
) -> Result<(), Status> {
    let hub = &relay.hub;
    let request_id = frame.request_id;
    match frame::check(frame)? {
        ValidFrame::Join {
            room,
            create_private,
            after_seq,
        } => {
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
        ValidFrame::History { room, limit } => {
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
        ValidFrame::Invite { room, invitation } => {
            let caller = hub.user(id)?;
            signed_membership::check_invitation(&relay.accounts, &caller, &invitation)?;
            hub.invite(id, request_id, &room, invitation, permit)?;
            Ok(())
        }
        ValidFrame::Kick { room, removal } => {
            let caller = hub.user(id)?;
            signed_membership::check_removal(&relay.accounts, &caller, &removal)?;
            hub.kick(id, request_id, &room, removal, permit)?;
            Ok(())
        }
        ValidFrame::Leave { room } => Ok(hub.leave(id, request_id, &room, permit)?),
        ValidFrame::Send { room, sealed } => Ok(hub.send(id, request_id, &room, sealed, permit)?),
        ValidFrame::DistributeKey { room, key_id, keys } => {
            hub.distribute(id, request_id, &room, key_id, keys, permit)?;
            Ok(())
        }
    }
}
