//! What the relay keeps across restarts, behind one narrow interface: [`Store`].
//!
//! The registered identities, the rooms with their members and invitations, and each
//! room's log: the sealed messages and the wrapped sender keys, each under the room's
//! sequence number. [`SqliteStore`] keeps them in an embedded SQLite database under the
//! data directory (the default), or in memory for tests and benchmarks;
//! [`PostgresStore`] in a PostgreSQL database (`--database postgres://...`). Both behave
//! alike, down to the tests they pass (`tests.rs`); nothing outside this module knows
//! which one it has. Only ciphertext, public keys and metadata are stored, never a
//! plaintext or an unwrapped key. [`decode_message`] and [`decode_identity`] turn the
//! stored bytes back into what they were; a corrupt entry is an error, never a panic.

pub mod claim;
pub mod copy;
mod postgres;
mod shared;
mod sqlite;
mod tally;

pub use postgres::PostgresStore;
pub use shared::{decode_identity, decode_message};
pub use sqlite::{DATABASE_FILE, SqliteStore};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::{
    LeaveReason, MessageDelivery, PublicIdentity, SealedMessage, SenderKeyDelivery, SignedPrekey,
};

/// Opens the relay's store: the PostgreSQL database at `database` (a `postgres://` or
/// `postgresql://` URL), or without one the SQLite database in `data_dir`. A serving
/// relay passes the `fence` of its claim. It blocks until the schema is up to date:
/// call it outside async tasks.
pub fn open(
    database: Option<&str>,
    data_dir: &Path,
    fence: Option<claim::Fence>,
) -> Result<Arc<dyn Store>, StoreError> {
    match database {
        None => Ok(Arc::new(SqliteStore::open(data_dir)?)),
        Some(url) => Ok(Arc::new(PostgresStore::open(&postgres_url(url)?, fence)?)),
    }
}

/// `database` if it is a PostgreSQL URL, the only kind `--database` takes, with its
/// scheme in lower case (a URL's scheme is case-insensitive; the driver's parser is not).
fn postgres_url(database: &str) -> Result<String, StoreError> {
    if let Some((scheme, rest)) = database.split_once("://")
        && ["postgres", "postgresql"].contains(&scheme.to_ascii_lowercase().as_str())
    {
        return Ok(format!("{}://{rest}", scheme.to_ascii_lowercase()));
    }
    // Only a URL's scheme is named: the rest, or a value that is not a URL at all
    // (PostgreSQL's own `key=value` form), may hold a password.
    let scheme = database
        .split_once("://")
        .map(|(scheme, _)| scheme)
        .filter(|scheme| {
            !scheme.is_empty()
                && scheme.len() <= 32
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        });
    Err(StoreError::UnknownDatabase {
        scheme: match scheme {
            Some(scheme) => format!("{scheme}://"),
            None => "something that is not a URL".to_owned(),
        },
    })
}

/// Why the store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error(
        "--database must be a PostgreSQL URL, postgres://USER:PASSWORD@HOST:PORT/DATABASE or \
         postgresql://..., or left out for the SQLite database in --data-dir; it is {scheme}"
    )]
    UnknownDatabase { scheme: String },
    #[error(
        "another chat-server is serving {database}: one relay per database (stop it first, or \
         give this one its own --data-dir or --database)"
    )]
    InUse { database: String },
    #[error(
        "the database needs schema version {found}, newer than this server knows ({known}); run a newer chat-server"
    )]
    TooNew { found: i64, known: i64 },
    #[error("the database failed: {0}")]
    Database(String),
    /// The database aborted a transaction for another's (a deadlock between relays
    /// sharing it): trying it again may well succeed.
    #[error("the database aborted a write for another's: {0}")]
    Contended(String),
    #[error(
        "this relay does not hold its claim on the database now (its connection holding it \
         ended, or another relay took it): it writes nothing until it holds it again"
    )]
    ClaimLost,
    #[error("the stored identity of {user:?} is unreadable: {reason}")]
    Corrupt { user: String, reason: String },
    #[error("the registration token is not valid: unknown, used up or expired")]
    RegistrationToken,
    #[error(
        "entry {seq} of room {room:?} in the database is unreadable ({reason}); restore the database from a backup, or delete the room"
    )]
    CorruptEntry {
        room: String,
        seq: u64,
        reason: String,
    },
}

/// One change to the relay's durable state. [`Store::commit`] applies a batch of them,
/// in order, in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new room, empty, with no entries; `owner` is `None` for an open room.
    CreateRoom { room: String, owner: Option<String> },
    /// Forgets a room with its members, invitations and entries.
    DeleteRoom { room: String },
    /// Lets `user` join the private `room`, with the owner's signed invitation (an
    /// encoded `chat.v2.Invitation`); a later one replaces it.
    Invite {
        room: String,
        user: String,
        invitation: bytes::Bytes,
    },
    /// The owner's signed removal of `user` from the private `room` (an encoded
    /// `chat.v2.Removal`), kept until the user is invited again.
    RecordRemoval {
        room: String,
        user: String,
        removal: bytes::Bytes,
    },
    /// Withdraws an invitation (nothing if there is none).
    Uninvite { room: String, user: String },
    /// `user` joined `room` at sequence number `seq`: it may read the entries after it.
    AddMember {
        room: String,
        user: String,
        seq: u64,
    },
    /// `user` left or was removed from `room` at `seq`, for `reason`; the sender keys
    /// wrapped for it there are forgotten.
    RemoveMember {
        room: String,
        user: String,
        seq: u64,
        reason: LeaveReason,
    },
    /// A sealed message `sender` sent to `room`, stored under `seq`. A message with the
    /// same sender, key id and chain iteration as one already stored is not stored again
    /// ([`Applied::Duplicate`]): a client resending what it could not see acknowledged
    /// must not make it appear twice. A new message beyond a quota of the
    /// [`StoragePolicy`] is not stored ([`Applied::OverQuota`]); one that takes its
    /// room beyond the room's limits makes the room forget its oldest messages, and one
    /// that takes the store beyond its size, the store its oldest.
    AppendMessage {
        room: String,
        seq: u64,
        sender: String,
        sealed: SealedMessage,
    },
    /// Sender keys `sender` wrapped for some members of `room`, all stored under `seq`,
    /// one entry per recipient.
    AppendSenderKeys {
        room: String,
        seq: u64,
        sender: String,
        key_id: u64,
        keys: Vec<WrappedKey>,
    },
    /// `user` opened or closed a session: it is in use (see [`Store::dormant`]).
    Seen { user: String },
    /// Forgets the identity of `user`, which nobody has used for long: its name is free
    /// again. The sender keys it distributed go with it; the caller has ended its
    /// memberships and invitations first.
    DeleteIdentity { user: String },
}

/// A sender key wrapped for one recipient, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct WrappedKey {
    pub recipient: String,
    pub wrapped_key: bytes::Bytes,
    pub signature: bytes::Bytes,
}

/// What one [`Change`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// The entry was stored under this sequence number, which the store gave it: the
    /// change said `seq: 0`, "the room's next".
    Stored {
        seq: u64,
    },
    /// The message was stored before, under this sequence number; nothing changed.
    Duplicate {
        seq: u64,
    },
    /// The message was not stored: it would take its sender beyond its quota, even
    /// once its room forgot what the room's limits let go. Its sequence number is used
    /// up.
    OverQuota(Quota),
    /// Nothing was stored: its sender is not a member of the room (any more). Checked
    /// in the store only where relays share it: another may have removed the sender
    /// since this relay took the message.
    NotMember,
    /// Nothing was done: another relay sharing the store changed the room first
    /// (created it as another kind of room, or deleted it), or the same membership
    /// (the user joined, or left, through it at the same moment).
    Conflict,
}

/// A storage quota a message would have exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// What one user's stored messages and keys may take, in bytes.
    User { limit: u64 },
}

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredRoom {
    pub name: String,
    pub owner: Option<String>,
    /// The highest sequence number used in the room (0 for none).
    pub last_seq: u64,
    /// Members and the sequence number each joined at, sorted by user.
    pub members: Vec<(String, u64)>,
    /// Users invited to a private room, sorted, each with the owner's signed invitation
    /// (an encoded `chat.v2.Invitation`; `None` for one from before chat.v2).
    pub invited: Vec<(String, Option<bytes::Bytes>)>,
    /// The owner's signed removals (encoded `chat.v2.Removal`s), by user.
    pub removals: Vec<(String, bytes::Bytes)>,
    /// How many messages the room holds, and their bytes.
    pub messages: u64,
    pub message_bytes: u64,
}

/// One entry of a room's log, as a member receives it (its `seq` set).
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Message(MessageDelivery),
    SenderKey(SenderKeyDelivery),
}

impl Entry {
    pub fn seq(&self) -> u64 {
        match self {
            Self::Message(message) => message.seq,
            Self::SenderKey(key) => key.seq,
        }
    }

    pub fn sender(&self) -> &str {
        match self {
            Self::Message(message) => &message.sender,
            Self::SenderKey(key) => &key.sender,
        }
    }
}

/// One entry of a room's log as a relay reads it, to deliver what another relay sharing the
/// database committed ([`Store::log_between`]), for its own members.
#[derive(Debug, Clone, PartialEq)]
pub enum LogEntry {
    Message(MessageDelivery),
    /// Sender keys `sender` wrapped for members of the room, all under `seq`, the
    /// sender's own copy included.
    SenderKeys {
        seq: u64,
        sender: String,
        keys: Vec<WrappedKey>,
    },
    Joined {
        seq: u64,
        user: String,
    },
    Left {
        seq: u64,
        user: String,
        reason: LeaveReason,
        /// The owner's signed removal (an encoded `chat.v2.Removal`) of a member it
        /// removed, if it is still kept.
        removal: Option<bytes::Bytes>,
    },
}

impl LogEntry {
    pub fn seq(&self) -> u64 {
        match self {
            Self::Message(message) => message.seq,
            Self::SenderKeys { seq, .. } | Self::Joined { seq, .. } | Self::Left { seq, .. } => {
                *seq
            }
        }
    }
}

/// What the store keeps, and what it refuses to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoragePolicy {
    /// Messages older than this are forgotten; `None` keeps them however old.
    pub max_age: Option<Duration>,
    /// Each room keeps at most this many messages, the latest: a new one beyond makes
    /// it forget the oldest.
    pub max_messages_per_room: u64,
    /// Each room keeps at most this many bytes of messages, the latest, likewise.
    pub max_room_bytes: u64,
    /// A new message is refused when its sender's stored messages and sender keys
    /// would take more bytes than this (once its room has trimmed).
    pub max_user_bytes: u64,
    /// Everything stored takes at most this many bytes: beyond, the oldest messages of
    /// the whole store are forgotten first.
    pub max_store_bytes: u64,
}

impl StoragePolicy {
    /// Keeps everything, refuses nothing (tests).
    pub const UNLIMITED: Self = Self {
        max_age: None,
        max_messages_per_room: u64::MAX,
        max_room_bytes: u64::MAX,
        max_user_bytes: u64::MAX,
        max_store_bytes: u64::MAX,
    };
}

/// What nobody has used since a point in time, as [`Store::dormant`] finds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dormant {
    /// Users with no session since then, no stored message, and no room they own.
    pub users: Vec<String>,
    /// Rooms in which nothing happened since then (no entry, no join, no leave).
    pub rooms: Vec<String>,
}

/// A registration token as listed (its secret is not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationToken {
    /// The first 8 hex digits of the token's SHA-256: enough to name it.
    pub id: String,
    /// Registrations it still allows; `None` for unlimited.
    pub uses_left: Option<u64>,
    /// Registrations it was used for.
    pub used: u64,
    /// When it expires, in ms since the Unix epoch; `None` for never.
    pub expires_ms: Option<u64>,
    pub created_ms: u64,
}

/// What [`Store::prune`] forgot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub messages: u64,
    pub sender_keys: u64,
}

/// The relay's durable state.
///
/// Every method returns once its effect is durable (or, for reads, reflects every
/// commit that returned before it was called). A change that numbers an entry of a
/// room's log (a message, sender keys, a joining or a leaving) either gives its
/// sequence number, or gives 0 and the store numbers it, the room's next, in the
/// transaction that stores it: so relays sharing a database never use a number twice
/// or leave one out. The store keeps the highest used per room.
pub trait Store: Send + Sync {
    /// Every registered identity.
    fn identities(&self) -> Result<Vec<PublicIdentity>, StoreError>;

    /// The identity registered under `user`, if any.
    fn identity(&self, user: &str) -> Result<Option<PublicIdentity>, StoreError>;

    /// Every device's current signed prekey, with its user.
    fn prekeys(&self) -> Result<Vec<(String, SignedPrekey)>, StoreError>;

    /// `user`'s device's current signed prekey, if it has one.
    fn prekey(&self, user: &str) -> Result<Option<SignedPrekey>, StoreError>;

    /// Keeps `prekey` as the current one of `user`'s device (replacing the one it had);
    /// returns once it is durable.
    fn save_prekey(&self, user: &str, prekey: &SignedPrekey) -> Result<(), StoreError>;

    /// Records the first registration of `identity.user`; returns once it is durable.
    /// Registering a name twice is an error: the caller checks first. With a
    /// `token` (a registration token as the client sent it), the registration uses
    /// it up, in the same transaction, or fails with
    /// [`StoreError::RegistrationToken`].
    fn register(&self, identity: &PublicIdentity, token: Option<&str>) -> Result<(), StoreError>;

    /// Makes a registration token allowing `uses` registrations (`None`: any number)
    /// until `expires_ms` (`None`: never); returns the token, a secret shown once.
    fn create_registration_token(
        &self,
        uses: Option<u64>,
        expires_ms: Option<u64>,
    ) -> Result<String, StoreError>;

    /// Every registration token, oldest first.
    fn registration_tokens(&self) -> Result<Vec<RegistrationToken>, StoreError>;

    /// Deletes the registration tokens whose id starts with `id_prefix`; returns how
    /// many.
    fn revoke_registration_tokens(&self, id_prefix: &str) -> Result<u64, StoreError>;

    /// Every room, with its members and invitations.
    fn rooms(&self) -> Result<Vec<StoredRoom>, StoreError>;

    /// The room `name`, with its members and invitations, if there is one.
    fn room(&self, name: &str) -> Result<Option<StoredRoom>, StoreError>;

    /// Applies `changes` in order, all or none, in one durable transaction (one fsync
    /// for the lot), within `policy`, and says what each did.
    fn commit(
        &self,
        changes: &[Change],
        policy: &StoragePolicy,
    ) -> Result<Vec<Applied>, StoreError>;

    /// The entries of `room` meant for `member` with `after < seq <= up_to`, in sequence
    /// order, at most `limit`: the messages of the others, and the sender keys the
    /// others wrapped for `member`.
    fn entries_after(
        &self,
        room: &str,
        member: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// Every entry of `room`'s log with `after < seq <= up_to`, in sequence order: the
    /// messages, the sender keys with all their recipients, the joinings and the
    /// leavings: what a relay sharing the database with others delivers of theirs.
    fn log_between(&self, room: &str, after: u64, up_to: u64) -> Result<Vec<LogEntry>, StoreError>;

    /// Every room (or only `room`, if it exists) with the highest sequence number used
    /// in it.
    fn heads(&self, room: Option<&str>) -> Result<Vec<(String, u64)>, StoreError>;

    /// The sender keys the others wrapped for `member` in `room` with `seq <= at` that
    /// it may need after `at`, in sequence order: for each other sender, the key in
    /// force at `at` (not yet superseded there by a later one, which would come after
    /// `at` itself), and any older key a message after `at` was still sealed with.
    fn keys_in_force(&self, room: &str, member: &str, at: u64) -> Result<Vec<Entry>, StoreError>;

    /// The users who sent messages to `room` with `after < seq <= up_to`, sorted.
    fn senders_between(
        &self,
        room: &str,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<String>, StoreError>;

    /// The latest `limit` messages of `room` with `seq > since` (from anyone, `member`
    /// included), and before them the sender keys wrapped for `member` that they were
    /// sealed with (the latest entry for each sender and key id, wherever it is), all
    /// in sequence order.
    fn history(
        &self,
        room: &str,
        member: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// Forgets the messages `policy` no longer keeps (as of `now`, since the Unix
    /// epoch), and the sender keys no remaining message needs, keeping for each sender
    /// and recipient the latest key (the one in force).
    fn prune(&self, policy: &StoragePolicy, now: Duration) -> Result<Pruned, StoreError>;

    /// The users and rooms nobody has used since `since` (since the Unix epoch), which
    /// the relay may reclaim.
    fn dormant(&self, since: Duration) -> Result<Dormant, StoreError>;
}

#[cfg(test)]
mod tests;
