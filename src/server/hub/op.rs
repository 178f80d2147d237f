//! What the hub hands the store's writer ([`Command`], [`Op`]) and what to do once an
//! op is committed ([`Effect`]). The writer imports only this, so the writer and the
//! hub never import each other.

use tokio::sync::OwnedSemaphorePermit;

use super::SessionId;
use crate::proto::{LeaveReason, Removal, SealedMessage};
use crate::store::{Applied, Change, LogEntry, StoreError, StoredRoom, WrappedKey};

/// What the hub sends its writer thread (`server::writer`), which owns the store's
/// transactions.
pub(crate) enum Command {
    Commit(Box<Op>),
    /// Other relays sharing the database rang doorbells: they wait in the writer's
    /// `Follow`, which reads what they point at.
    Doorbells,
    /// Doorbells may have been missed (the link to the other relays was down): every
    /// room is compared with the store.
    Resync,
    /// Commit what has arrived, then stop.
    Stop,
}

/// What a relay sharing its database with others tells them after each commit, for
/// each room it changed: they read what changed from the store. A hint, trusted for
/// nothing: a relay reads the room's last sequence number from the store, never from
/// a doorbell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Doorbell {
    pub room: String,
    /// What of the room is not numbered changed too: its creation or deletion, an
    /// invitation or a removal.
    pub changed: bool,
}

/// What the writer of a relay sharing its database asks of its hub to deliver what the
/// other relays committed (`writer::follow`).
pub(crate) trait Follower: Send {
    /// How far `room`'s log is delivered here; `None` for a room the hub does not hold.
    fn delivered_through(&self, room: &str) -> Option<u64>;
    /// The rooms the hub holds.
    fn room_names(&self) -> Vec<String>;
    /// Delivers entries another relay committed, all after what is delivered, in
    /// order; the room is then delivered up to `through` (numbers with nothing stored
    /// under them, such as trimmed messages, included).
    fn peers_committed(&self, room: &str, entries: Vec<LogEntry>, through: u64);
    /// Takes what is stored of a room that is not numbered, or forgets it (`None`).
    fn refresh_room(&self, room: &str, stored: Option<StoredRoom>);
}

/// A change to a room on its way to the store, and what to do once it is committed.
pub(crate) struct Op {
    pub changes: Vec<Change>,
    pub effect: Effect,
    /// Held until the op is committed: bounds what one session has in flight.
    pub _permit: Option<OwnedSemaphorePermit>,
}

/// A batch the writer carried out, in commit order: each op with what its changes did
/// (nothing, when the batch failed).
pub(crate) type Batch = Vec<(Op, Vec<Applied>)>;

/// Why a batch was not committed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failure<'a> {
    pub error: &'a StoreError,
    /// The batch held more than entries of rooms' logs and notes of use (a room, a
    /// member, an invitation), which the hub's memory already holds: it no longer
    /// matches the store until it is read anew.
    pub lasting: bool,
}

impl Failure<'_> {
    /// Whether a batch of `changes` that failed leaves the hub's memory ahead of the
    /// store. Of a failed message or sender key the hub keeps nothing but a used-up
    /// sequence number (a gap, which clients expect): its sender is told UNAVAILABLE and
    /// sends it again once the store is back.
    pub(crate) fn is_lasting(changes: &[Change]) -> bool {
        changes.iter().any(|change| {
            !matches!(
                change,
                Change::AppendMessage { .. }
                    | Change::AppendSenderKeys { .. }
                    | Change::Seen { .. }
            )
        })
    }
}

/// What to tell whom once an [`Op`] is committed. An entry's sequence number is not
/// here: the store gives it as it commits ([`numbered`]).
pub(crate) enum Effect {
    /// A first join: answer the newcomer, tell the others.
    Joined {
        session: SessionId,
        request_id: u64,
        room: String,
        user: String,
    },
    /// A member left or was removed.
    Left {
        reply: Option<(SessionId, u64)>,
        /// The session of a member removed by the owner, told with `MemberLeft` too.
        removed: Option<SessionId>,
        room: String,
        user: String,
        reason: LeaveReason,
        /// The owner's signed removal, when the owner removed the member.
        removal: Option<Removal>,
    },
    Message {
        session: SessionId,
        request_id: u64,
        room: String,
        sender: String,
        sealed: SealedMessage,
    },
    SenderKeys {
        session: SessionId,
        request_id: u64,
        room: String,
        sender: String,
        keys: Vec<WrappedKey>,
    },
    /// Only an acknowledgement (an invitation, the removal of an invitation).
    Ack { session: SessionId, request_id: u64 },
    /// Housekeeping nobody waits for.
    Nothing,
}

impl Effect {
    /// The room whose log the op adds an entry to, numbered by the store.
    pub(crate) fn numbered_room(&self) -> Option<&str> {
        match self {
            Self::Joined { room, .. }
            | Self::Left { room, .. }
            | Self::Message { room, .. }
            | Self::SenderKeys { room, .. } => Some(room),
            Self::Ack { .. } | Self::Nothing => None,
        }
    }
}

/// The sequence number the store gave the entry an op's changes added, if they did.
pub(crate) fn numbered(applied: &[Applied]) -> Option<u64> {
    applied.iter().find_map(|applied| match applied {
        Applied::Stored { seq } => Some(*seq),
        _ => None,
    })
}
