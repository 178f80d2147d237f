//! The relay: a tonic gRPC server that routes ciphertext between the members of each
//! room and never sees a key or a plaintext.
//!
//! - [`serve`] runs `chat.v2.AuthService` and `chat.v2.ChatService` with gRPC
//!   reflection (v1 and v1alpha) and `grpc.health.v1.Health`, until a shutdown signal.
//! - `accounts`: registered identities, login challenges and session tokens.
//! - `auth`: the login RPCs, and the interceptor that requires a token for the rest.
//! - `hub`: the shared state (sessions, rooms) and sequence numbers; `hub::committed`
//!   answers and fans out what the writer committed.
//! - `room`: one room's members, numbered like its log.
//! - `writer`: the thread that commits the hub's changes to the store in batches.
//! - `catch_up`: a returning member's missed entries, and history, read from the store.
//! - `session`: reads one client's frames and carries them out on the hub.
//! - `web`: gRPC-Web, CORS and the web client's files, for browsers ([`WebOptions`]).
//! - `web_session`: sessions for browsers, opened with `OpenSession` and fed by
//!   `SendFrame`.
//! - [`frame`]: the relay's checks of one client frame, which need nothing but the frame
//!   (public so that the fuzz targets drive the same code).
//! - `outbound`: the bounded queue of frames to one client.
//! - [`tls`]: the certificate and key the relay serves TLS with.
//! - `network`: bounds on connections and on what needs no login ([`NetworkLimits`]).

mod accounts;
mod auth;
mod catch_up;
pub mod frame;
mod hub;
mod key_directory;
mod network;
mod outbound;
pub mod registration;
mod relay;
mod room;
mod service;
mod session;
mod signed_membership;
pub mod tls;
mod web;
mod web_session;
mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

pub use network::NetworkLimits;
pub use outbound::Outbound;
pub use registration::{RegistrationMode, RegistrationPolicy};
pub use web::WebOptions;

use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::auth_service_server::AuthServiceServer;
use crate::proto::chat_service_server::ChatServiceServer;
use crate::store::{Change, SqliteStore, StoragePolicy, Store, StoreError};
use accounts::Accounts;
use auth::{Login, require_token};
use hub::Hub;
use key_directory::KeyDirectory;
use relay::Relay;
use service::ChatRelay;

/// What the relay allows a peer, so that no peer can grow its memory without bound.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest frame a client may send, in bytes; a larger one ends its stream with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "CHAT_MAX_FRAME_BYTES", value_parser = positive, default_value_t = Limits::DEFAULT.max_frame_bytes)]
    pub max_frame_bytes: usize,
    /// Frames queued for one client before it counts as too slow and is disconnected
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "CHAT_OUTBOUND_QUEUE", value_parser = positive, default_value_t = Limits::DEFAULT.outbound_queue)]
    pub outbound_queue: usize,
    /// Bytes queued for one client before it counts as too slow (a single frame larger
    /// than this is still delivered to an otherwise empty queue).
    #[arg(long, env = "CHAT_OUTBOUND_QUEUE_BYTES", value_parser = positive, default_value_t = Limits::DEFAULT.outbound_queue_bytes)]
    pub outbound_queue_bytes: usize,
    /// Open TCP connections at once; one more is closed as soon as it is accepted.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", value_parser = positive, default_value_t = Limits::DEFAULT.max_connections)]
    pub max_connections: usize,
    /// Sessions (connected clients) at once.
    #[arg(long, env = "CHAT_MAX_SESSIONS", value_parser = positive, default_value_t = Limits::DEFAULT.max_sessions)]
    pub max_sessions: usize,
    /// Rooms at once.
    #[arg(long, env = "CHAT_MAX_ROOMS", value_parser = positive, default_value_t = Limits::DEFAULT.max_rooms)]
    pub max_rooms: usize,
    /// Members of one room.
    #[arg(long, env = "CHAT_MAX_ROOM_MEMBERS", value_parser = positive, default_value_t = Limits::DEFAULT.max_room_members)]
    pub max_room_members: usize,
    /// Rooms one user may be a member of.
    #[arg(long, env = "CHAT_MAX_ROOMS_PER_USER", value_parser = positive, default_value_t = Limits::DEFAULT.max_rooms_per_user)]
    pub max_rooms_per_user: usize,
    /// Private rooms one user may own at once. A room is forgotten when its last member
    /// leaves.
    #[arg(long, env = "CHAT_MAX_OWNED_ROOMS", value_parser = positive, default_value_t = Limits::DEFAULT.max_owned_rooms)]
    pub max_owned_rooms: usize,
    /// Messages each room keeps; the oldest beyond are deleted as new ones arrive.
    #[arg(long, env = "CHAT_MAX_MESSAGES_PER_ROOM", value_parser = positive_u64, default_value_t = Limits::DEFAULT.max_messages_per_room)]
    pub max_messages_per_room: u64,
    /// Bytes of messages each room keeps; the oldest beyond are deleted as new ones
    /// arrive.
    #[arg(long, env = "CHAT_MAX_ROOM_BYTES", value_parser = positive_u64, default_value_t = Limits::DEFAULT.max_room_bytes)]
    pub max_room_bytes: u64,
    /// Bytes of messages and sender keys one user may have stored; a message beyond (once
    /// its room has trimmed) is refused with RESOURCE_EXHAUSTED until older ones expire.
    #[arg(long, env = "CHAT_MAX_USER_BYTES", value_parser = positive_u64, default_value_t = Limits::DEFAULT.max_user_bytes)]
    pub max_user_bytes: u64,
    /// Bytes of messages and sender keys the server stores in all; beyond, the oldest
    /// messages of the whole server are deleted (SQLite's own overhead comes on top).
    #[arg(long, env = "CHAT_MAX_STORE_BYTES", value_parser = positive_u64, default_value_t = Limits::DEFAULT.max_store_bytes)]
    pub max_store_bytes: u64,
    /// Days a message is kept; older ones are deleted (checked every minute). Members
    /// away longer miss them.
    #[arg(long, env = "CHAT_RETENTION_DAYS", value_parser = positive_u64, default_value_t = Limits::DEFAULT.retention_days)]
    pub retention_days: u64,
    /// Most changes committed to the store in one transaction (one fsync). 1 commits
    /// every message on its own: only useful to measure what group commit saves.
    #[arg(long, env = "CHAT_MAX_COMMIT_BATCH", value_parser = positive, default_value_t = Limits::DEFAULT.max_commit_batch)]
    pub max_commit_batch: usize,
    /// Seconds a client may leave frames queued for it untaken (it reads nothing, or
    /// grants no HTTP/2 window) before it is disconnected with RESOURCE_EXHAUSTED; it
    /// catches up when it comes back.
    #[arg(long, env = "CHAT_STALL_TIMEOUT_SECS", value_parser = positive_u64, default_value_t = Limits::DEFAULT.stall_timeout_secs)]
    pub stall_timeout_secs: u64,
    /// Registered identities (user names and their keys) the server keeps.
    #[arg(long, env = "CHAT_MAX_IDENTITIES", value_parser = positive, default_value_t = Limits::DEFAULT.max_identities)]
    pub max_identities: usize,
    /// How long a session token from a login is valid, in seconds (at most 30 days). An
    /// open chat stream is not cut when its token expires; new RPCs need a new login.
    #[arg(long, env = "CHAT_TOKEN_TTL_SECS", value_parser = token_ttl, default_value_t = Limits::DEFAULT.token_ttl_secs)]
    pub token_ttl_secs: u64,
    /// Days after which what nobody uses is reclaimed (checked every minute): a room in
    /// which nothing happened (no message, key, join or leave) is deleted with its
    /// members and invitations; an identity without a session for that long, that
    /// owns no room and has no message stored any more, is deleted, its memberships
    /// ended (the others are told) and its name freed. 0 never reclaims anything.
    #[arg(long, env = "CHAT_RECLAIM_AFTER_DAYS", default_value_t = Limits::DEFAULT.reclaim_after_days)]
    pub reclaim_after_days: u64,
    #[command(flatten)]
    pub registration: RegistrationPolicy,
    #[command(flatten)]
    pub network: NetworkLimits,
}

impl Limits {
    /// The limits of a server started without flags.
    pub const DEFAULT: Self = Self {
        max_frame_bytes: 64 * 1024,
        outbound_queue: 1024,
        outbound_queue_bytes: 1024 * 1024,
        max_connections: 10_000,
        max_sessions: 10_000,
        max_rooms: 10_000,
        max_room_members: 1_000,
        max_rooms_per_user: 32,
        max_owned_rooms: 32,
        max_messages_per_room: 10_000,
        max_room_bytes: 64 * 1024 * 1024,
        max_user_bytes: 64 * 1024 * 1024,
        max_store_bytes: 8 * 1024 * 1024 * 1024,
        retention_days: 30,
        max_commit_batch: 1024,
        stall_timeout_secs: 30,
        max_identities: 100_000,
        token_ttl_secs: 12 * 60 * 60,
        reclaim_after_days: 180,
        registration: RegistrationPolicy::DEFAULT,
        network: NetworkLimits::DEFAULT,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Limits {
    /// What the store keeps and refuses.
    pub fn storage(&self) -> StoragePolicy {
        StoragePolicy {
            max_age: Some(days(self.retention_days)),
            max_messages_per_room: self.max_messages_per_room,
            max_room_bytes: self.max_room_bytes,
            max_user_bytes: self.max_user_bytes,
            max_store_bytes: self.max_store_bytes,
        }
    }
}

fn days(count: u64) -> Duration {
    Duration::from_secs(count.saturating_mul(86_400))
}

fn positive_u64(text: &str) -> Result<u64, String> {
    positive(text).map(|value| value as u64)
}

/// Parses a limit, which must be at least 1.
fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(value) => Ok(value),
        Err(error) => Err(error.to_string()),
    }
}

/// The longest token lifetime: 30 days. A session outlives its token anyway.
const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 60 * 60;

/// Parses a token lifetime in seconds: 1 to 30 days' worth.
fn token_ttl(text: &str) -> Result<u64, String> {
    match positive(text)? as u64 {
        secs if secs > MAX_TOKEN_TTL_SECS => {
            Err(format!("must be at most {MAX_TOKEN_TTL_SECS} (30 days)"))
        }
        secs => Ok(secs),
    }
}

/// How a relay runs: its limits, its TLS identity, where it keeps what must last.
pub struct Config {
    pub limits: Limits,
    /// `None` serves plaintext.
    pub tls: Option<ServerTlsConfig>,
    pub store: Arc<dyn Store>,
    pub web: WebOptions,
}

impl Config {
    /// A plaintext relay that keeps its state in memory (tests, benchmarks).
    pub fn ephemeral(limits: Limits) -> Self {
        Self {
            limits,
            tls: None,
            store: Arc::new(SqliteStore::in_memory().expect("an in-memory SQLite database opens")),
            web: WebOptions::default(),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use the TLS {what} {path}: {reason}")]
    Tls {
        /// "certificate" or "private key".
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the operating system's random number generator failed: {0}")]
    Rng(getrandom::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored identity of {user:?} does not verify: {reason}")]
    BadStoredIdentity { user: String, reason: String },
    #[error("cannot set up gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot start the store's writer thread: {0}")]
    Writer(std::io::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Creates the data directory (mode 0700) if needed and checks that it is writable.
pub fn prepare_data_dir(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    let fail = |source| ServerError::DataDir {
        path: path.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(fail)?;
    let metadata = std::fs::metadata(path).map_err(fail)?;
    if !metadata.is_dir() {
        return Err(fail(std::io::Error::other("not a directory")));
    }
    if metadata.permissions().mode() & 0o200 == 0 {
        return Err(fail(std::io::Error::from(
            std::io::ErrorKind::PermissionDenied,
        )));
    }
    let probe = path.join(".write-test");
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

/// Serves the relay on `listener` until `shutdown` completes, then ends every session
/// with UNAVAILABLE and returns once the connections have closed. With `tls` (see
/// [`tls::load`]) every connection is TLS; without it, plaintext HTTP/2.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Config {
        limits,
        tls,
        store,
        web,
    } = config;
    let accounts = Arc::new(Accounts::new(&limits, store.clone())?);
    let keys = Arc::new(KeyDirectory::new(store.clone())?);
    let (commands, received) = std::sync::mpsc::channel();
    let hub = Arc::new(Hub::new(
        limits.clone(),
        store.rooms()?,
        |user| accounts.identity(user),
        commands,
    ));
    let reclaim_after = days(limits.reclaim_after_days);
    let reclaim = {
        let (hub, accounts, keys) = (hub.clone(), accounts.clone(), keys.clone());
        let policy = limits.storage();
        let never = limits.reclaim_after_days == 0;
        Box::new(move |store: &dyn Store| {
            if never {
                return;
            }
            let since = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_sub(reclaim_after);
            let dormant = match store.dormant(since) {
                Ok(dormant) => dormant,
                Err(error) => {
                    tracing::warn!(%error, "cannot look for what nobody uses");
                    return;
                }
            };
            // The writer's own thread: nothing else commits while the identities go, and
            // a name is free only once its identity is deleted.
            let users = hub.reclaim(&dormant);
            for user in &users {
                let delete = [Change::DeleteIdentity { user: user.clone() }];
                match store.commit(&delete, &policy) {
                    Ok(_) => {
                        accounts.forget(user);
                        keys.forget(user);
                    }
                    Err(error) => tracing::warn!(user, %error, "cannot delete an unused identity"),
                }
            }
            hub.reclaimed(&users);
        })
    };
    let writer = writer::spawn(
        store.clone(),
        hub.clone(),
        received,
        limits.max_commit_batch,
        limits.storage(),
        reclaim,
    )
    .map_err(ServerError::Writer)?;
    tokio::spawn(end_stalled_sessions(Arc::downgrade(&hub)));
    let relay = Arc::new(Relay {
        hub: hub.clone(),
        accounts: accounts.clone(),
        keys,
        store,
    });
    let stopping_hub = hub.clone();

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ChatServiceServer<ChatRelay>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()?
        .max_decoding_message_size(network::MAX_REFLECTION_REQUEST_BYTES);
    let reflection_v1alpha = reflection()
        .build_v1alpha()?
        .max_decoding_message_size(network::MAX_REFLECTION_REQUEST_BYTES);
    let health_service =
        health_service.max_decoding_message_size(network::MAX_HEALTH_REQUEST_BYTES);
    let chat = InterceptedService::new(
        ChatServiceServer::new(ChatRelay::new(relay))
            .max_decoding_message_size(limits.max_frame_bytes),
        require_token(
            accounts.clone(),
            network::UserRequests::new(limits.network.max_requests_per_user),
        ),
    );
    let login = AuthServiceServer::new(Login::new(accounts))
        .max_decoding_message_size(network::MAX_AUTH_REQUEST_BYTES);

    let stop = async move {
        shutdown.await;
        tracing::info!("shutting down: ending every session");
        health
            .set_not_serving::<ChatServiceServer<ChatRelay>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        stopping_hub.shutdown();
    };
    let incoming = network::admit(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        limits.max_connections,
        &limits.network,
    );
    // tonic wraps each connection from `incoming` in its TLS acceptor, so a connection
    // still counts against the limits, and its handshake deadline runs, while it
    // handshakes.
    let client_dir = web.client_dir();
    match &client_dir {
        Some(dir) => tracing::info!(dir = %dir.display(), "serving the web client at /"),
        None => tracing::info!(
            "no web client to serve at / (build it with scripts/build-web.sh, or give \
             --web-dir); native and gRPC-Web clients are served"
        ),
    }
    let mut routes = Routes::builder();
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(login)
        .add_service(chat);
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    // Browsers speak gRPC-Web, over HTTP/1.1 as well as HTTP/2; tonic-web translates it
    // before the relay's bounds see the request, so both kinds are bounded alike.
    builder
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .layer(web::cors(&web))
        .layer(web::FilesLayer::new(client_dir.as_deref()))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(network::BoundsLayer::new(&limits.network))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    // Everything acknowledged is committed already; this commits what is in flight.
    hub.stop_writer();
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    Ok(())
}

/// Looks every second for sessions whose client stopped taking its frames, for as long
/// as the hub lives.
async fn end_stalled_sessions(hub: std::sync::Weak<Hub>) {
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every_second.tick().await;
        match hub.upgrade() {
            Some(hub) => hub.end_stalled(),
            None => return,
        }
    }
}

/// Concurrent RPCs on one HTTP/2 connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
