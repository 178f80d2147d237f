//! The bounded queue of frames waiting to be written to one client.
//!
//! The relay never blocks on a client for live traffic: frames are pushed with
//! `try_send`, and a client whose queue is full is disconnected (see `Hub`). Catch-up
//! frames, read from the store, instead wait for the client to read, leaving room for
//! live frames. The stream handed to tonic ends early with a status when the session is
//! closed by the server.
//!
//! A queue also knows how long its oldest frame has waited without the client taking
//! any ([`OutboundHandle::stalled_for`]): a client that reads nothing, or grants no
//! HTTP/2 window, is found out even when too little is sent to it to fill its queue.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::Status;

use crate::proto::ServerFrame;

/// The response stream of one `Chat` call.
pub struct Outbound {
    frames: mpsc::Receiver<ServerFrame>,
    queued_bytes: Arc<AtomicUsize>,
    progress: Arc<Progress>,
    closed: Option<oneshot::Receiver<Status>>,
    /// Set once the closing status has been yielded: nothing follows it.
    ended: bool,
}

/// The relay's handle on an [`Outbound`] stream, to queue frames.
#[derive(Clone)]
pub(crate) struct OutboundHandle {
    frames: mpsc::Sender<ServerFrame>,
    queued_bytes: Arc<AtomicUsize>,
    progress: Arc<Progress>,
    max_frames: usize,
    max_bytes: usize,
}

/// When the client last made progress, and a signal each time it does.
#[derive(Default)]
struct Progress {
    /// Milliseconds since [`EPOCH`] when the client last took a frame, or when a frame
    /// went into an empty queue: the oldest queued frame has waited since then.
    since_ms: AtomicU64,
    taken: Notify,
}

/// What [`Progress::since_ms`] counts from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    Instant::now().duration_since(*EPOCH).as_millis() as u64
}

impl Progress {
    fn touch(&self) {
        self.since_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// Ends an [`Outbound`] stream with a status, ahead of the frames still queued.
pub(crate) type Closer = oneshot::Sender<Status>;

/// Why a frame was not queued.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The client is not keeping up: the queue holds its maximum of frames or bytes.
    Full,
    /// The stream is gone.
    Closed,
    /// The client took nothing for the whole wait.
    Stalled,
}

impl OutboundHandle {
    /// Queues `frame` without waiting. A frame larger than the byte budget is still
    /// taken when nothing else is queued, so no frame is undeliverable.
    pub(crate) fn push(&self, frame: ServerFrame) -> Result<(), Refusal> {
        let size = frame.encoded_len();
        let queued = self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if queued > 0 && queued + size > self.max_bytes {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            return Err(Refusal::Full);
        }
        if queued == 0 {
            // The first frame of an empty queue: it waits from now.
            self.progress.touch();
        }
        self.frames.try_send(frame).map_err(|error| {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            match error {
                mpsc::error::TrySendError::Full(_) => Refusal::Full,
                mpsc::error::TrySendError::Closed(_) => Refusal::Closed,
            }
        })
    }

    /// Queues `frame` once at least half the queue, in frames and in bytes, is free:
    /// catch-up goes as fast as the client reads and never crowds out live frames.
    /// `Err` when the stream is gone, or when the client takes nothing for `patience`.
    pub(crate) async fn push_patiently(
        &self,
        frame: ServerFrame,
        patience: Duration,
    ) -> Result<(), Refusal> {
        let headroom = (self.max_frames / 2).max(1);
        loop {
            // Registered before looking, so that a frame taken meanwhile is not missed.
            let taken = self.progress.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            if self.frames.is_closed() {
                return Err(Refusal::Closed);
            }
            if self.frames.capacity() >= headroom
                && self.queued_bytes.load(Ordering::Relaxed) <= self.max_bytes / 2
            {
                match self.push(frame.clone()) {
                    Err(Refusal::Full) => {}
                    done => return done,
                }
            }
            if tokio::time::timeout(patience, taken).await.is_err() {
                return Err(Refusal::Stalled);
            }
        }
    }

    /// Whether the stream is gone (tonic dropped it, or its connection closed).
    pub(crate) fn is_closed(&self) -> bool {
        self.frames.is_closed()
    }

    /// How long the oldest queued frame has waited without the client taking any;
    /// `None` when nothing waits.
    pub(crate) fn stalled_for(&self) -> Option<Duration> {
        if self.queued_bytes.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let since = self.progress.since_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(now_ms().saturating_sub(since)))
    }
}

/// A queue that holds at most `max_frames` frames and about `max_bytes` bytes.
pub(crate) fn outbound(max_frames: usize, max_bytes: usize) -> (OutboundHandle, Closer, Outbound) {
    let (frames_tx, frames) = mpsc::channel(max_frames);
    let (close, closed) = oneshot::channel();
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Progress::default());
    let handle = OutboundHandle {
        frames: frames_tx,
        queued_bytes: queued_bytes.clone(),
        progress: progress.clone(),
        max_frames,
        max_bytes,
    };
    (
        handle,
        close,
        Outbound {
            frames,
            queued_bytes,
            progress,
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
        let frame = self.frames.poll_recv(cx);
        if let Poll::Ready(Some(frame)) = &frame {
            self.queued_bytes
                .fetch_sub(frame.encoded_len(), Ordering::Relaxed);
            self.progress.touch();
            self.progress.taken.notify_waiters();
        }
        frame.map(|frame| frame.map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Ack, Rejection, server_frame::Kind};
    use tokio_stream::StreamExt;

    fn frame(text_len: usize) -> ServerFrame {
        ServerFrame {
            request_id: 1,
            kind: Some(Kind::Rejection(Rejection {
                code: 3,
                message: "x".repeat(text_len),
            })),
        }
    }

    #[tokio::test]
    async fn bounds_frames_and_bytes_and_frees_what_is_sent() {
        let (handle, _close, mut stream) = outbound(3, 1_000);
        // A frame over the byte budget still goes into an empty queue.
        assert!(handle.push(frame(5_000)).is_ok());
        assert!(matches!(handle.push(frame(10)), Err(Refusal::Full)));
        assert!(stream.next().await.unwrap().is_ok());
        assert!(handle.push(frame(400)).is_ok());
        assert!(handle.push(frame(400)).is_ok());
        assert!(
            matches!(handle.push(frame(400)), Err(Refusal::Full)),
            "bytes"
        );
        let small = ServerFrame {
            request_id: 2,
            kind: Some(Kind::Ack(Ack {
                ..Default::default()
            })),
        };
        assert!(handle.push(small.clone()).is_ok());
        assert!(matches!(handle.push(small), Err(Refusal::Full)), "frames");
    }

    #[tokio::test]
    async fn patient_pushes_wait_until_half_the_queue_is_free() {
        let (handle, _close, mut stream) = outbound(4, 1_000);
        for _ in 0..3 {
            handle.push(frame(1)).ok().unwrap();
        }
        let patient = handle.clone();
        let waiting = tokio::spawn(async move {
            patient
                .push_patiently(frame(2), Duration::from_secs(60))
                .await
                .is_ok()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "3 of 4 slots are taken");
        stream.next().await.unwrap().unwrap();
        stream.next().await.unwrap().unwrap();
        assert!(waiting.await.unwrap());
        let frames: Vec<_> = [stream.next().await, stream.next().await]
            .into_iter()
            .map(|frame| frame.unwrap().unwrap().encoded_len())
            .collect();
        assert_eq!(frames[1], frame(2).encoded_len(), "queued last");
    }

    #[tokio::test]
    async fn closing_ends_the_stream_with_the_status_first() {
        let (handle, close, mut stream) = outbound(4, 1_000);
        handle.push(frame(1)).ok().unwrap();
        close.send(Status::resource_exhausted("too slow")).unwrap();
        let first = stream.next().await.unwrap();
        assert_eq!(first.unwrap_err().code(), tonic::Code::ResourceExhausted);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_nobody_takes_from_counts_as_stalled() {
        let (handle, _close, mut stream) = outbound(4, 1_000);
        assert!(handle.stalled_for().is_none(), "nothing waits");
        handle.push(frame(1)).ok().unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(handle.stalled_for().unwrap() >= Duration::from_secs(5));
        // Taking a frame is progress, even with others still queued.
        handle.push(frame(1)).ok().unwrap();
        stream.next().await.unwrap().unwrap();
        assert!(handle.stalled_for().unwrap() < Duration::from_secs(1));
        stream.next().await.unwrap().unwrap();
        assert!(handle.stalled_for().is_none());
        // A patient push gives up when nothing is taken for its whole patience.
        for _ in 0..3 {
            handle.push(frame(1)).ok().unwrap();
        }
        let refused = handle
            .push_patiently(frame(1), Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(refused, Refusal::Stalled), "{refused:?}");
    }
}
