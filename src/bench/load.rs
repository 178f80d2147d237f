//! The load: every client sends its messages to its room while reading everyone else's,
//! and checks that it gets each message of its room exactly once and in order.
//!
//! The same driver runs two kinds of client: [`E2eeClient`], the real client library
//! (sealing and opening every message), and [`PlainClient`], which puts the text in the
//! frame as is, for the baseline relay.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Barrier, Notify, mpsc};
use tokio::time::Instant;
use tonic::Streaming;

use super::BenchError;
use crate::client::{self, AuthorizedClient, ChatSession, Event};
use crate::crypto::group::SIGNATURE_LEN;
use crate::proto::{
    ClientFrame, JoinRoom, SealedMessage, SendMessage, ServerFrame, client_frame, server_frame,
};
use crate::protocol::DEVICE;

/// Message frames a recipient may have queued at the relay, summed over its room's
/// senders. The relay disconnects a client that falls 1024 frames behind; an open loop
/// that sends as fast as acknowledgements come back would get slow readers disconnected
/// instead of measuring throughput.
const RECIPIENT_BACKLOG: u64 = 512;

/// A client the driver can load.
pub trait LoadClient: Send {
    /// Sends one text to the room.
    fn send(&mut self, text: String) -> impl Future<Output = Result<(), BenchError>> + Send;
    /// The next frame from the relay. Cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<ServerFrame, BenchError>> + Send;
    /// Applies a frame; returns the texts it delivered.
    fn process(
        &mut self,
        frame: ServerFrame,
    ) -> impl Future<Output = Result<Vec<String>, BenchError>> + Send;
    /// Sent messages not acknowledged yet.
    fn in_flight(&self) -> usize;
}

/// The real client: every message sealed and opened, and the relay's sequence numbers
/// checked to increase from each sender. (Not across senders: a message that waited for
/// its sender's key is shown after later ones from others.)
pub struct E2eeClient {
    session: ChatSession,
    /// The one room the client is in.
    room: String,
    last_seq: HashMap<String, u64>,
}

impl E2eeClient {
    pub fn new(session: ChatSession, room: &str) -> Self {
        Self {
            session,
            room: room.to_owned(),
            last_seq: HashMap::new(),
        }
    }
}

impl LoadClient for E2eeClient {
    async fn send(&mut self, text: String) -> Result<(), BenchError> {
        self.session.send_text(&self.room, &text).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<ServerFrame, BenchError> {
        self.session.next_frame().await?.ok_or(BenchError::Closed)
    }

    async fn process(&mut self, frame: ServerFrame) -> Result<Vec<String>, BenchError> {
        let mut texts = Vec::new();
        for event in self.session.handle(frame).await? {
            match event {
                Event::Message {
                    text, seq, sender, ..
                } => {
                    let last = self.last_seq.entry(sender).or_default();
                    if seq <= *last {
                        return Err(BenchError::Unexpected(format!(
                            "message number {seq} came after number {last} from its sender"
                        )));
                    }
                    *last = seq;
                    texts.push(text);
                }
                Event::Warning(warning) => return Err(BenchError::Unexpected(warning)),
                Event::Refused { message, .. } => return Err(BenchError::Unexpected(message)),
                _ => {}
            }
        }
        Ok(texts)
    }

    fn in_flight(&self) -> usize {
        self.session.unanswered()
    }
}

/// A client that sends its text in the clear, for the baseline relay.
pub struct PlainClient {
    room: String,
    frames: mpsc::Sender<ClientFrame>,
    incoming: Streaming<ServerFrame>,
    last_request_id: u64,
    in_flight: usize,
}

impl PlainClient {
    /// Opens a stream as the client's user and joins `room`.
    pub async fn join(mut client: AuthorizedClient, room: &str) -> Result<Self, BenchError> {
        let join = JoinRoom {
            room: room.to_owned(),
            create_private: false,
            ..Default::default()
        };
        let (frames, mut incoming) = client::open_stream(&mut client, join).await?;
        incoming.message().await?.ok_or(BenchError::Closed)?;
        Ok(Self {
            room: room.to_owned(),
            frames,
            incoming,
            last_request_id: 1,
            in_flight: 0,
        })
    }
}

impl LoadClient for PlainClient {
    async fn send(&mut self, text: String) -> Result<(), BenchError> {
        self.last_request_id += 1;
        let frame = ClientFrame {
            request_id: self.last_request_id,
            kind: Some(client_frame::Kind::Send(SendMessage {
                room: self.room.clone(),
                sealed: Some(SealedMessage {
                    // A well-formed frame, so the real relay takes it too; numbered, or
                    // the relay would take each for a resend of the first.
                    iteration: self.last_request_id as u32,
                    device: DEVICE,
                    ciphertext: text.into_bytes().into(),
                    signature: vec![0; SIGNATURE_LEN].into(),
                    ..SealedMessage::default()
                }),
            })),
        };
        self.frames
            .send(frame)
            .await
            .map_err(|_| BenchError::Closed)?;
        self.in_flight += 1;
        Ok(())
    }

    async fn recv(&mut self) -> Result<ServerFrame, BenchError> {
        self.incoming.message().await?.ok_or(BenchError::Closed)
    }

    async fn process(&mut self, frame: ServerFrame) -> Result<Vec<String>, BenchError> {
        match frame.kind {
            Some(server_frame::Kind::Ack(_)) => {
                self.in_flight -= 1;
                Ok(Vec::new())
            }
            Some(server_frame::Kind::Rejection(rejection)) => {
                Err(BenchError::Unexpected(rejection.message))
            }
            Some(server_frame::Kind::Message(delivery)) => {
                let sealed = delivery.sealed.unwrap_or_default();
                let text = String::from_utf8(sealed.ciphertext.to_vec())
                    .map_err(|_| BenchError::Unexpected("a message that is not UTF-8".into()))?;
                Ok(vec![text])
            }
            _ => Ok(Vec::new()),
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

/// What every client of a run shares.
pub struct Plan {
    /// Index of each client's room.
    pub room_of: Vec<usize>,
    pub messages: u64,
    pub size: usize,
    /// Messages per second per client, if paced.
    pub per_client_rate: Option<f64>,
    /// Released once every client has finished its warm-up.
    pub start: Barrier,
    /// When the barrier released the clients.
    pub started: Arc<OnceLock<Instant>>,
    /// Times in messages are measured from here.
    pub epoch: Instant,
    /// `received[recipient][sender]`: how many of `sender`'s messages `recipient` has.
    pub received: Vec<Vec<AtomicU64>>,
    /// Per sender: signalled when one of its messages is received.
    pub progress: Vec<Notify>,
}

impl Plan {
    fn peers(&self, me: usize) -> usize {
        self.room_of
            .iter()
            .filter(|room| **room == self.room_of[me])
            .count()
            - 1
    }
}

/// What one client saw.
pub struct Outcome {
    pub received: u64,
    pub latencies_us: Vec<u64>,
    pub finished: Instant,
}

/// Runs one client through warm-up (which proves every key is in place), the barrier,
/// and the measured load.
pub async fn drive<C: LoadClient>(
    mut client: C,
    me: usize,
    plan: Arc<Plan>,
) -> Result<Outcome, BenchError> {
    let peers = plan.peers(me);
    let mut warmup = format!("warmup:{me}:");
    warmup.extend(std::iter::repeat_n(
        'x',
        plan.size.saturating_sub(warmup.len()),
    ));
    client.send(warmup).await?;
    let mut warmed = 0;
    while warmed < peers {
        let frame = client.recv().await?;
        for text in client.process(frame).await? {
            if !text.starts_with("warmup:") {
                return Err(BenchError::Unexpected(format!(
                    "client {me} got {text:?} during warm-up"
                )));
            }
            warmed += 1;
        }
    }
    if plan.start.wait().await.is_leader() {
        let _ = plan.started.set(Instant::now());
    }

    let expected = peers as u64 * plan.messages;
    // Each sender stays at most `window` messages ahead of its slowest peer.
    let window = (RECIPIENT_BACKLOG / peers as u64).max(1);
    let my_peers: Vec<usize> = (0..plan.room_of.len())
        .filter(|other| *other != me && plan.room_of[*other] == plan.room_of[me])
        .collect();
    let slowest_peer_has = |plan: &Plan| {
        my_peers
            .iter()
            .map(|peer| plan.received[*peer][me].load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    };
    let mut next_from: HashMap<usize, u64> = HashMap::new();
    let mut latencies_us = Vec::with_capacity(expected as usize);
    let mut sent = 0u64;
    // Each client's sends are offset by its share of the period, so that a fixed rate
    // arrives as a steady stream, as from people typing, rather than in bursts of every
    // client at once.
    let clients = plan.room_of.len() as f64;
    let mut pace = plan.per_client_rate.map(|rate| {
        let period = Duration::from_secs_f64(1.0 / rate);
        let offset = period.mul_f64(me as f64 / clients);
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    while sent < plan.messages || (latencies_us.len() as u64) < expected || client.in_flight() > 0 {
        let may_send =
            sent < plan.messages && sent.saturating_sub(slowest_peer_has(&plan)) < window;
        let waiting_for_peers = sent < plan.messages && !may_send;
        let next_tick = async {
            match pace.as_mut() {
                Some(interval) => {
                    interval.tick().await;
                }
                None => std::future::ready(()).await,
            }
        };
        tokio::select! {
            frame = client.recv() => {
                let frame = frame?;
                let now = plan.epoch.elapsed().as_micros() as u64;
                for text in client.process(frame).await? {
                    let (sender, seq, sent_us) = parse(&text)?;
                    if plan.room_of.get(sender) != Some(&plan.room_of[me]) || sender == me {
                        return Err(BenchError::Unexpected(format!("client {me} got a message from {sender}")));
                    }
                    let next = next_from.entry(sender).or_default();
                    if seq != *next {
                        return Err(BenchError::Unexpected(format!(
                            "client {me} got message {seq} of client {sender} when {next} was due: \
                             lost, repeated or out of order"
                        )));
                    }
                    *next += 1;
                    latencies_us.push(now.saturating_sub(sent_us));
                    plan.received[me][sender].fetch_add(1, Ordering::Release);
                    plan.progress[sender].notify_one();
                }
            }
            () = next_tick, if may_send => {
                let sent_us = plan.epoch.elapsed().as_micros() as u64;
                client.send(message_text(me, sent, sent_us, plan.size)).await?;
                sent += 1;
            }
            () = plan.progress[me].notified(), if waiting_for_peers => {}
        }
    }
    Ok(Outcome {
        received: latencies_us.len() as u64,
        latencies_us,
        finished: Instant::now(),
    })
}

/// `sender:seq:sent_us:` padded with `x` to `size` bytes.
fn message_text(sender: usize, seq: u64, sent_us: u64, size: usize) -> String {
    let mut text = format!("{sender}:{seq}:{sent_us}:");
    if text.len() < size {
        text.extend(std::iter::repeat_n('x', size - text.len()));
    }
    text
}

fn parse(text: &str) -> Result<(usize, u64, u64), BenchError> {
    let mut fields = text.splitn(4, ':');
    let mut next = || fields.next().and_then(|field| field.parse::<u64>().ok());
    match (next(), next(), next()) {
        (Some(sender), Some(seq), Some(sent_us)) => Ok((sender as usize, seq, sent_us)),
        _ => Err(BenchError::Unexpected(format!(
            "unparsable message {text:?}"
        ))),
    }
}
