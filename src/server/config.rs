//! The relay's configuration: the bounds on what peers may do ([`Limits`]), what
//! [`serve`](super::serve) is given ([`Config`]), and the data directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::ServerTlsConfig;

use super::error::ServerError;
use super::network::NetworkLimits;
use super::registration::RegistrationPolicy;
use super::web::WebOptions;
use crate::store::{SqliteStore, StoragePolicy, Store};

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
    /// messages of the whole server are deleted (the database's own overhead comes on top).
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

pub(super) fn days(count: u64) -> Duration {
    Duration::from_secs(count.saturating_mul(86_400))
}

pub(super) fn positive_u64(text: &str) -> Result<u64, String> {
    positive(text).map(|value| value as u64)
}

/// Parses a limit, which must be at least 1.
pub(super) fn positive(text: &str) -> Result<usize, String> {
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
    /// The NATS server through which relays sharing the store tell each other what
    /// they commit (`--nats`); `None` for a relay serving its store alone.
    pub nats: Option<String>,
}

impl Config {
    /// A plaintext relay that keeps its state in memory (tests, benchmarks).
    pub fn ephemeral(limits: Limits) -> Self {
        Self {
            limits,
            tls: None,
            store: Arc::new(SqliteStore::in_memory().expect("an in-memory SQLite database opens")),
            web: WebOptions::default(),
            nats: None,
        }
    }
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
