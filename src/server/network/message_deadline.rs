//! A request body whose messages, once started, must arrive within a deadline.
//!
//! tonic buffers a request message until its last byte arrives, so a client that starts
//! a message and stalls holds that memory for as long as it likes. This body follows
//! gRPC's framing (a flag byte and a 4-byte big-endian length before each message) and
//! ends the body with DEADLINE_EXCEEDED when a started message is not complete within
//! `--request-timeout-ms`. Only time spent waiting for the client counts: while the
//! handler is not reading (a chat session that has enough frames in flight, say), the
//! clock stops.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;

/// gRPC's length prefix: a compression flag and a big-endian u32.
const PREFIX_LEN: usize = 5;

pub(super) struct MessageDeadline {
    inner: Body,
    timeout: Duration,
    framing: Framing,
    /// What is left of `timeout` for the message under way.
    left: Duration,
    /// Since when the handler has been waiting for the client's next bytes.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl MessageDeadline {
    pub(super) fn new(inner: Body, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            framing: Framing::default(),
            left: timeout,
            waiting_since: None,
            timer: None,
            expired: false,
        }
    }

    fn stop_waiting(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.left = self.left.saturating_sub(since.elapsed());
        }
    }
}

impl HttpBody for MessageDeadline {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.stop_waiting();
                if let Some(Ok(frame)) = &frame
                    && let Some(data) = frame.data_ref()
                {
                    this.framing.advance(data);
                    if !this.framing.in_message() {
                        this.left = this.timeout;
                    }
                }
                this.timer = None;
                Poll::Ready(frame)
            }
            Poll::Pending if !this.framing.in_message() => {
                this.stop_waiting();
                this.timer = None;
                Poll::Pending
            }
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let deadline = since + this.left;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.expired = true;
                Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                    "a request message started arriving and was not complete within {} ms \
                     (--request-timeout-ms); send each message without pausing",
                    this.timeout.as_millis()
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where the body is in gRPC's framing.
#[derive(Debug, Default)]
struct Framing {
    prefix: [u8; PREFIX_LEN],
    /// Bytes of the prefix of the next message read so far.
    prefix_read: usize,
    /// Bytes of the current message still to come.
    body_left: usize,
}

impl Framing {
    fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_left > 0 {
                let taken = self.body_left.min(data.len());
                self.body_left -= taken;
                data = &data[taken..];
                continue;
            }
            let taken = (PREFIX_LEN - self.prefix_read).min(data.len());
            self.prefix[self.prefix_read..self.prefix_read + taken].copy_from_slice(&data[..taken]);
            self.prefix_read += taken;
            data = &data[taken..];
            if self.prefix_read == PREFIX_LEN {
                self.prefix_read = 0;
                let [_, length @ ..] = self.prefix;
                self.body_left = u32::from_be_bytes(length) as usize;
            }
        }
    }

    /// Whether a message has started and is not complete.
    fn in_message(&self) -> bool {
        self.prefix_read > 0 || self.body_left > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_follows_messages_split_anywhere() {
        let mut framing = Framing::default();
        // Two messages of 3 and 0 bytes, and the start of a third, cut at odd places.
        let bytes = [0, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0];
        framing.advance(&bytes[..2]);
        assert!(framing.in_message());
        framing.advance(&bytes[2..7]);
        assert!(framing.in_message());
        framing.advance(&bytes[7..8]);
        assert!(!framing.in_message());
        framing.advance(&bytes[8..13]);
        assert!(!framing.in_message());
        framing.advance(&bytes[13..]);
        assert!(framing.in_message());
        // The rest of its prefix: 9 bytes.
        framing.advance(&[0, 0, 9]);
        assert!(framing.in_message());
        framing.advance(&[7; 8]);
        assert!(framing.in_message());
        framing.advance(&[7]);
        assert!(!framing.in_message());
    }
}
