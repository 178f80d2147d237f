//! Sessions for clients without bidirectional streams (browsers, on gRPC-Web):
//! `OpenSession` opens one and carries its server frames; `SendFrame` hands it client
//! frames, one at a time and numbered, which [`session::run`](super::session::run)
//! reads exactly as it reads a `Chat` stream.
//!
//! A session lives as long as its `OpenSession` stream: when the stream goes (the page
//! closed, the network dropped, or the relay ended the session), the session is closed
//! on the hub and its entry goes; a `SendFrame` still waiting then finds it gone.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::hub::{Hub, SessionId};
use super::outbound::Outbound;
use crate::proto::{ClientFrame, ServerFrame, SessionOpened, server_frame};

/// Frames queued for one session's reader, beyond which `SendFrame` waits: the reader
/// itself stops reading while it has many frames waiting for the store.
const QUEUED_FRAMES: usize = 16;

/// What a `SendFrameRequest` adds to its frame: the session id (2 + 16 bytes), the frame
/// number (at most 1 + 10) and the frame's own tag and length (at most 1 + 5), rounded
/// up.
pub(crate) const SEND_FRAME_OVERHEAD: usize = 64;

/// What identifies a session to `SendFrame`: random, so that one user's session ids
/// tell nothing about another's (the caller's token is checked as well).
pub(crate) type WebSessionId = [u8; 16];

/// The open `OpenSession` sessions, by id.
pub(crate) struct WebSessions {
    open: Mutex<HashMap<WebSessionId, Arc<Entry>>>,
    /// How long a `SendFrame` waits for room in its session's queue before it asks the
    /// client to send the frame again.
    queue_wait: Duration,
}

struct Entry {
    user: String,
    /// The number of the last frame queued, and the queue; one `SendFrame` at a time
    /// holds it, so that frames are queued in their numbers' order.
    inbox: tokio::sync::Mutex<Inbox>,
}

struct Inbox {
    last_number: u64,
    /// What the last frame was, so that a retry is told from a different frame sent
    /// under the same number (which would otherwise be dropped without a word).
    last_digest: [u8; 32],
    frames: mpsc::Sender<ClientFrame>,
}

fn digest(frame: &ClientFrame) -> [u8; 32] {
    Sha256::digest(frame.encode_to_vec()).into()
}

/// The reading end of a session's frames, for [`session::run`](super::session::run).
pub(crate) type WebFrames = tokio_stream::adapters::Map<
    ReceiverStream<ClientFrame>,
    fn(ClientFrame) -> Result<ClientFrame, Status>,
>;

impl WebSessions {
    pub(crate) fn new(queue_wait: Duration) -> Self {
        Self {
            open: Mutex::default(),
            queue_wait,
        }
    }

    /// Registers the hub's session `session` of `user`, whose server frames are
    /// `outbound`. Returns the stream to answer `OpenSession` with, and the frames
    /// `SendFrame` will queue.
    pub(crate) fn open(
        self: &Arc<Self>,
        hub: Arc<Hub>,
        session: SessionId,
        user: String,
        outbound: Outbound,
    ) -> Result<(WebOutbound, WebFrames), Status> {
        let mut id = WebSessionId::default();
        getrandom::fill(&mut id).map_err(|error| {
            Status::internal(format!(
                "the relay's random number generator failed: {error}"
            ))
        })?;
        let (frames, received) = mpsc::channel(QUEUED_FRAMES);
        let entry = Entry {
            user,
            inbox: tokio::sync::Mutex::new(Inbox {
                last_number: 0,
                last_digest: [0; 32],
                frames,
            }),
        };
        self.lock().insert(id, Arc::new(entry));
        let opened = ServerFrame {
            request_id: 0,
            kind: Some(server_frame::Kind::SessionOpened(SessionOpened {
                session_id: id.to_vec().into(),
            })),
        };
        let stream = WebOutbound {
            opened: Some(opened),
            frames: outbound,
            _registration: Registration {
                sessions: self.clone(),
                id,
                hub,
                session,
            },
        };
        let frames = ReceiverStream::new(received).map(Ok as fn(ClientFrame) -> _);
        Ok((stream, frames))
    }

    /// Queues frame number `number` of session `id`, which `user` must have opened.
    pub(crate) async fn send(
        &self,
        user: &str,
        id: &[u8],
        number: u64,
        frame: ClientFrame,
    ) -> Result<(), Status> {
        let not_found = || {
            Status::not_found(
                "no open session has this session_id: it ended (open a new one with \
                 OpenSession) or it is not yours",
            )
        };
        let id = WebSessionId::try_from(id).map_err(|_| {
            Status::invalid_argument(format!(
                "session_id is {} bytes; it is the 16 of SessionOpened.session_id",
                id.len()
            ))
        })?;
        let entry = self
            .lock()
            .get(&id)
            .cloned()
            .filter(|entry| entry.user == user)
            .ok_or_else(not_found)?;
        let mut inbox = entry.inbox.lock().await;
        if inbox.frames.is_closed() {
            return Err(not_found());
        }
        let expected = inbox.last_number + 1;
        let digest = digest(&frame);
        if number == inbox.last_number && number != 0 {
            if digest != inbox.last_digest {
                return Err(Status::failed_precondition(format!(
                    "frame_number {number} was already used for another frame; number \
                     this one {expected}"
                )));
            }
            // A retry of a frame whose answer was lost: it is queued already.
            return Ok(());
        }
        if number != expected {
            return Err(Status::failed_precondition(format!(
                "frame_number {number} is out of order: the session expects {expected} \
                 (send frames one at a time, numbered from 1)"
            )));
        }
        match tokio::time::timeout(self.queue_wait, inbox.frames.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(not_found()),
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "the session has many frames waiting to be stored; send frame \
                     {number} again (the same frame_number and frame)"
                )));
            }
        }
        inbox.last_number = number;
        inbox.last_digest = digest;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WebSessionId, Arc<Entry>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Closes its session when dropped: the `OpenSession` stream is gone.
struct Registration {
    sessions: Arc<WebSessions>,
    id: WebSessionId,
    hub: Arc<Hub>,
    session: SessionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // At once, even while a `SendFrame` still holds the entry (and so the queue
        // open): a frame for a page that is gone must not be carried out.
        self.hub.close_session(self.session);
        self.sessions.lock().remove(&self.id);
    }
}

/// The response stream of `OpenSession`: [`SessionOpened`], then the session's frames.
pub struct WebOutbound {
    opened: Option<ServerFrame>,
    frames: Outbound,
    _registration: Registration,
}

impl Stream for WebOutbound {
    type Item = Result<ServerFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(opened) = self.opened.take() {
            return Poll::Ready(Some(Ok(opened)));
        }
        Pin::new(&mut self.frames).poll_next(cx)
    }
}
