//! What `chat-bench` measures: real clients with real crypto through the relay, then the
//! same load of plaintext clients through [`PlainRelay`], a minimal broadcast relay, so
//! that the two can be compared as a ratio measured in one run on one machine.
//!
//! Both runs check what they deliver: every member must get every message of its room
//! exactly once and in order, or the run fails.

mod baseline;
mod idle;
mod load;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;

use tokio::sync::{Barrier, Notify, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use baseline::PlainRelay;
pub use idle::{IdleReport, measure_idle};
pub use load::{E2eeClient, LoadClient, PlainClient};

use crate::client::prekeys::PrekeyRing;
use crate::client::{self, BearerToken, ChatSession, ClientError, Contacts, RotationPolicy, login};
use crate::crypto::Identity;
use crate::proto::JoinRoom;
use crate::proto::chat_service_client::ChatServiceClient;
use crate::server::{self, Limits, ServerError};
use crate::store::SqliteStore;
use load::{Outcome, Plan, drive};

/// The size of the benchmark's RSA keys (identities and prekeys).
const BENCH_KEY_BITS: usize = 2048;

/// How long a run may take before it counts as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("gRPC: {}: {}", client::code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("cannot start a relay: {0}")]
    Io(#[from] std::io::Error),
    #[error("the relay closed a stream")]
    Closed,
    #[error("the run did not finish within {RUN_TIMEOUT:?}")]
    Timeout,
    #[error("{0}")]
    Unexpected(String),
}

/// The shape of a load.
#[derive(Debug, Clone)]
pub struct Load {
    pub clients: usize,
    pub rooms: usize,
    /// Messages each client sends.
    pub messages: u64,
    /// Bytes of text per message.
    pub size: usize,
    /// Messages per second across all clients; as fast as possible if `None`.
    pub rate: Option<f64>,
    /// When the end-to-end encrypted clients replace their sender keys on schedule.
    pub rotation: RotationPolicy,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Messages received, summed over all recipients.
    pub delivered: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Measurement {
    pub fn msgs_per_sec(&self) -> f64 {
        self.delivered as f64 / self.seconds
    }
}

/// A relay running in this process until its handle is dropped.
pub struct LocalRelay {
    pub url: String,
    _stop: oneshot::Sender<()>,
    _data_dir: Option<DataDir>,
}

/// A fresh data directory under the system's temporary directory, deleted on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn create() -> Result<Self, BenchError> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "chat-bench-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        server::prepare_data_dir(&path)?;
        Ok(Self(path))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the real relay on 127.0.0.1:0, keeping its state on disk in a temporary data
/// directory as `chat-server` does (every acknowledgement waits for an fsync). Every
/// simulated user connects and registers from 127.0.0.1, so the limits per address
/// are lifted.
pub async fn start_relay(mut limits: Limits) -> Result<LocalRelay, BenchError> {
    limits.registration.registrations_per_ip_per_hour = u32::MAX;
    limits.network.max_connections_per_ip = limits.max_connections;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let data_dir = DataDir::create()?;
    let store = SqliteStore::open(&data_dir.0).map_err(ServerError::from)?;
    let config = server::Config {
        store: Arc::new(store),
        ..server::Config::ephemeral(limits)
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, config, async {
        let _ = stopped.await;
    }));
    Ok(LocalRelay {
        url,
        _stop: stop,
        _data_dir: Some(data_dir),
    })
}

/// Starts the baseline relay on 127.0.0.1:0.
pub async fn start_plain_relay() -> Result<LocalRelay, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        Server::builder()
            .add_service(PlainRelay::default().service())
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    Ok(LocalRelay {
        url,
        _stop: stop,
        _data_dir: None,
    })
}

/// The relay client `index` uses of the comma-separated relays in `urls`: clients are
/// spread over the relays of a cluster in turn, so that each room has members on each.
fn relay_of(urls: &str, index: usize) -> &str {
    let relays: Vec<&str> = urls.split(',').collect();
    relays[index % relays.len()]
}

/// Runs `load` with real clients through the relay at `url` (or the relays, separated
/// by commas, in turn).
pub async fn measure_e2ee(url: &str, load: &Load) -> Result<Measurement, BenchError> {
    let identities = bench_identities(load.clients).await?;
    let mut clients = Vec::with_capacity(load.clients);
    for (index, identity) in identities.into_iter().enumerate() {
        let session = join_room(
            relay_of(url, index),
            identity,
            &user_name(index),
            &room_name(index, load),
            load.rotation,
        )
        .await?;
        clients.push(E2eeClient::new(session, &room_name(index, load)));
    }
    measure(clients, load).await
}

/// Whether the relay a plaintext load runs through wants a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// Ours: log in as each user.
    Required,
    /// The baseline: it takes the token as the user's name.
    None,
}

/// Runs `load` with plaintext clients (no sealing, no opening) through the relay at `url`
/// (or the relays, separated by commas, in turn):
/// the baseline relay, or the real one to tell its cost from the clients'.
pub async fn measure_plain(
    url: &str,
    load: &Load,
    login: Login,
) -> Result<Measurement, BenchError> {
    let identities: Vec<Option<Arc<Identity>>> = match login {
        Login::Required => bench_identities(load.clients)
            .await?
            .into_iter()
            .map(Some)
            .collect(),
        Login::None => vec![None; load.clients],
    };
    let mut clients = Vec::with_capacity(load.clients);
    for (index, identity) in identities.into_iter().enumerate() {
        let channel = client::connect(relay_of(url, index), None).await?;
        let (user, room) = (user_name(index), room_name(index, load));
        let chat = match identity {
            Some(identity) => self::login(channel.clone(), &identity, &user)
                .await?
                .chat_client(channel),
            None => ChatServiceClient::with_interceptor(channel, BearerToken::new(&user)?),
        };
        clients.push(PlainClient::join(chat, &room).await?);
    }
    measure(clients, load).await
}

/// An identity for each of `count` simulated users (the relay refuses keys registered
/// to another user), made on every core and kept for the process's later runs: RSA key
/// generation takes a tenth of a second per identity.
async fn bench_identities(count: usize) -> Result<Vec<Arc<Identity>>, BenchError> {
    static MADE: tokio::sync::Mutex<Vec<Arc<Identity>>> = tokio::sync::Mutex::const_new(Vec::new());
    let mut made = MADE.lock().await;
    let mut making = JoinSet::new();
    for _ in made.len()..count {
        making.spawn_blocking(|| Identity::generate(BENCH_KEY_BITS));
    }
    while let Some(generated) = making.join_next().await {
        let identity = generated
            .map_err(|error| BenchError::Unexpected(error.to_string()))?
            .map_err(ClientError::from)?;
        made.push(Arc::new(identity));
    }
    Ok(made[..count].to_vec())
}

/// Logs in to the relay at `url` as `user` and joins `room`, pinning nothing to disk.
async fn join_room(
    url: &str,
    identity: Arc<Identity>,
    user: &str,
    room: &str,
    rotation: RotationPolicy,
) -> Result<ChatSession, BenchError> {
    let channel = client::connect(url, None).await?;
    let credentials = login(channel.clone(), &identity, user).await?;
    let join = JoinRoom {
        room: room.to_owned(),
        create_private: false,
        ..Default::default()
    };
    let prekeys = Arc::new(RwLock::new(PrekeyRing::in_memory(
        BENCH_KEY_BITS,
        crate::protocol::now_ms(),
    )?));
    let (session, _) = ChatSession::join(
        channel,
        identity,
        &credentials,
        join,
        Contacts::in_memory(),
        prekeys,
        rotation,
    )
    .await?;
    Ok(session)
}

fn user_name(index: usize) -> String {
    format!("bench-{index}")
}

fn room_name(index: usize, load: &Load) -> String {
    format!("bench-room-{}", index % load.rooms)
}

async fn measure<C: LoadClient + 'static>(
    clients: Vec<C>,
    load: &Load,
) -> Result<Measurement, BenchError> {
    let started = Arc::new(OnceLock::new());
    let plan = Arc::new(Plan {
        room_of: (0..load.clients).map(|index| index % load.rooms).collect(),
        messages: load.messages,
        size: load.size,
        per_client_rate: load.rate.map(|rate| rate / load.clients as f64),
        start: Barrier::new(load.clients),
        started: started.clone(),
        epoch: Instant::now(),
        received: (0..load.clients)
            .map(|_| (0..load.clients).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        progress: (0..load.clients).map(|_| Notify::new()).collect(),
    });
    let mut tasks = JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        tasks.spawn(drive(client, index, plan.clone()));
    }
    // The first client that fails fails the run: the others would wait for it forever.
    let outcomes = tokio::time::timeout(RUN_TIMEOUT, async {
        let mut outcomes = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            outcomes.push(joined.map_err(|error| BenchError::Unexpected(error.to_string()))??);
        }
        Ok::<Vec<Outcome>, BenchError>(outcomes)
    })
    .await
    .map_err(|_| BenchError::Timeout)??;

    let expected: u64 = (0..load.clients)
        .map(|index| {
            (plan
                .room_of
                .iter()
                .filter(|room| **room == plan.room_of[index])
                .count() as u64
                - 1)
                * load.messages
        })
        .sum();
    let delivered: u64 = outcomes.iter().map(|outcome| outcome.received).sum();
    if delivered != expected {
        return Err(BenchError::Unexpected(format!(
            "delivered {delivered} messages, expected {expected}"
        )));
    }
    let start = *started
        .get()
        .ok_or_else(|| BenchError::Unexpected("no client started".into()))?;
    let finished = outcomes
        .iter()
        .map(|outcome| outcome.finished)
        .max()
        .unwrap_or(start);
    let mut latencies: Vec<u64> = outcomes
        .into_iter()
        .flat_map(|outcome| outcome.latencies_us)
        .collect();
    latencies.sort_unstable();
    let percentile = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    Ok(Measurement {
        delivered,
        seconds: finished.duration_since(start).as_secs_f64().max(1e-9),
        p50_ms: percentile(50),
        p99_ms: percentile(99),
    })
}
