//! The bounded queue of frames waiting to be written to one client.
//!
//! The relay never blocks on a client: frames are pushed with `try_send`, and a client
//! whose queue is full is disconnected (see `Hub`). The stream handed to tonic ends
//! early with a status when the session is closed by the server.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::Status;

use crate::proto::ServerFrame;

/// The response stream of one `Chat` call.
pub struct Outbound {
    frames: mpsc::Receiver<ServerFrame>,
    closed: Option<oneshot::Receiver<Status>>,
    /// Set once the closing status has been yielded: nothing follows it.
    ended: bool,
}

/// The relay's handle on an [`Outbound`] stream.
pub(crate) struct OutboundHandle {
    pub(crate) frames: mpsc::Sender<ServerFrame>,
    pub(crate) close: oneshot::Sender<Status>,
}

/// A queue that holds at most `capacity` frames.
pub(crate) fn outbound(capacity: usize) -> (OutboundHandle, Outbound) {
    let (frames_tx, frames) = mpsc::channel(capacity);
    let (close, closed) = oneshot::channel();
    let handle = OutboundHandle {
        frames: frames_tx,
        close,
    };
    (
        handle,
        Outbound {
            frames,
            closed: Some(closed),
            ended: false,
        },
    )
}

impl Stream for Outbound {
    type Item = Result<ServerFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(closed) = self.closed.as_mut()
            && let Poll::Ready(result) = Pin::new(closed).poll(cx)
        {
            self.closed = None;
            if let Ok(status) = result {
                // Closing wins over queued frames: the client is gone for the relay.
                self.frames.close();
                self.ended = true;
                return Poll::Ready(Some(Err(status)));
            }
        }
        if self.ended {
            return Poll::Ready(None);
        }
        self.frames.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}
