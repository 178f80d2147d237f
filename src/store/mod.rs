//! What the relay keeps across restarts, behind one narrow interface: [`Store`].
//!
//! The registered identities, the rooms with their members and invitations, and each
//! room's log: the sealed messages and the wrapped sender keys, each under the room's
//! sequence number. [`SqliteStore`] keeps them in an embedded SQLite database under the
//! data directory, or in memory for tests and benchmarks. Nothing outside this module
//! knows it is SQLite. Only ciphertext, public keys and metadata are stored, never a
//! plaintext or an unwrapped key. [`decode_message`] and [`decode_identity`] turn the
//! stored bytes back into what they were; a corrupt entry is an error, never a panic.

mod sqlite;

pub use sqlite::{DATABASE_FILE, SqliteStore, decode_identity, decode_message};

use std::time::Duration;

use crate::proto::{MessageDelivery, PublicIdentity, SealedMessage, SenderKeyDelivery};

/// Why the store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error(
        "the database needs schema version {found}, newer than this server knows ({known}); run a newer chat-server"
    )]
    TooNew { found: i64, known: i64 },
    #[error("the database failed: {0}")]
    Database(String),
    #[error("the stored identity of {user:?} is unreadable: {reason}")]
    Corrupt { user: String, reason: String },
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
    /// Lets `user` join the private `room`.
    Invite { room: String, user: String },
    /// Withdraws an invitation (nothing if there is none).
    Uninvite { room: String, user: String },
    /// `user` joined `room` at sequence number `seq`: it may read the entries after it.
    AddMember {
        room: String,
        user: String,
        seq: u64,
    },
    /// `user` left or was removed from `room` at `seq`; the sender keys wrapped for it
    /// there are forgotten.
    RemoveMember {
        room: String,
        user: String,
        seq: u64,
    },
    /// A sealed message `sender` sent to `room`, stored under `seq`. A message with the
    /// same sender, key id and counter as one already stored is not stored again
    /// ([`Applied::Duplicate`]): a client resending what it could not see acknowledged
    /// must not make it appear twice.
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
    /// Forgets the `count` oldest messages of `room` (the room holds more than it may).
    TrimMessages { room: String, count: u64 },
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
    /// The message was stored before, under this sequence number; nothing changed.
    Duplicate {
        seq: u64,
    },
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
    /// Users invited to a private room, sorted.
    pub invited: Vec<String>,
    /// How many messages the room holds.
    pub messages: u64,
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

/// How long entries are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages older than this are forgotten; `None` keeps them however old.
    pub max_age: Option<Duration>,
    /// Each room keeps at most this many messages, the latest.
    pub max_messages_per_room: u64,
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
/// commit that returned before it was called). Sequence numbers are given by the
/// caller; the store keeps the highest used per room.
pub trait Store: Send + Sync {
    /// Every registered identity.
    fn identities(&self) -> Result<Vec<PublicIdentity>, StoreError>;

    /// Records the first registration of `identity.user`; returns once it is durable.
    /// Registering a name twice is an error: the caller checks first.
    fn register(&self, identity: &PublicIdentity) -> Result<(), StoreError>;

    /// Every room, with its members and invitations.
    fn rooms(&self) -> Result<Vec<StoredRoom>, StoreError>;

    /// Applies `changes` in order, all or none, in one durable transaction (one fsync
    /// for the lot), and says what each did.
    fn commit(&self, changes: &[Change]) -> Result<Vec<Applied>, StoreError>;

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

    /// For each other sender of `room`, the latest sender key wrapped for `member` with
    /// `seq <= at`, in sequence order: the keys in force at `at`.
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

    /// Forgets the messages `retention` no longer keeps (as of `now`, since the Unix
    /// epoch), and the sender keys no remaining message needs, keeping for each sender
    /// and recipient the latest key (the one in force).
    fn prune(&self, retention: &Retention, now: Duration) -> Result<Pruned, StoreError>;
}
