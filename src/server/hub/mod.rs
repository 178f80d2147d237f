//! The relay's shared state: open sessions and rooms, and the order of everything that
//! happens in a room.
//!
//! Everything sits behind one mutex that is never held across an `.await`. A frame that
//! changes a room is checked and numbered under the lock (its room's next sequence
//! number) and handed, as an [`Op`], to the store's writer (`writer`), which commits ops
//! in batches. Only once an op is committed does [`Hub::committed`] answer the client
//! and fan the entry out, so nobody ever sees what a crash could take back, and every
//! member receives the entries of a room in sequence order.
//!
//! Membership outlives sessions: a session *attaches* to the rooms its user is a member
//! of (`JoinRoom`), and a member that comes back catches up (`catch_up`) on what it
//! missed while live entries for it wait in a buffer.
//!
//! Live frames go to each session's bounded [`Outbound`] queue with `try_send`, so one
//! slow client can never stall the others: a session whose queue is full is
//! disconnected with RESOURCE_EXHAUSTED, and catches up when it comes back.
//!
//! The hub's operations, by family: `sessions` (open, close, end, queue frames),
//! `membership` (join, leave, invite, kick, what a session may read), `log` (messages
//! and sender keys), `committed` (what happens once the store has them), `reclaim`
//! (what nobody uses); `op` is what goes to the writer, and `error` the hub's refusals
//! ([`HubError`]), which become gRPC codes there and nowhere else.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

mod committed;
mod error;
mod log;
mod membership;
mod op;
mod peers;
mod reclaim;
mod sessions;

pub(crate) use error::{HubError, rejection};
pub(crate) use op::{Batch, Command, Doorbell, Effect, Failure, Follower, Op, numbered};

use super::Limits;
use super::network::connection::ConnectionHandle;
use super::outbound::{Closer, Outbound, OutboundHandle, Refusal, outbound};
use super::room::{Member, Room};
use prost::Message;

use crate::proto::{
    Ack, CaughtUp, Invitation, Joined, LeaveReason, PublicIdentity, Removal, SealedMessage,
    ServerFrame, server_frame::Kind,
};
use crate::store::{Change, StoreError, StoredRoom, WrappedKey};

/// What a `JoinRoom` asks for.
pub(crate) struct JoinRequest<'a> {
    pub room: &'a str,
    pub create_private: bool,
    pub after_seq: Option<u64>,
}

/// Identifies one `Chat` stream for the life of the server.
pub(crate) type SessionId = u64;

/// A member coming back to a room: what its catch-up needs.
pub(crate) struct CatchUp {
    pub session: SessionId,
    pub room: String,
    pub user: String,
    /// What the client says it has; `None` for nothing in particular.
    pub after: Option<u64>,
    /// The last committed sequence number when it attached: the catch-up reads up to
    /// it, and live entries after it wait in the session's buffer.
    pub head: u64,
    /// The answer to send first (without `former_members`, which needs the store).
    pub joined: Joined,
    pub request_id: u64,
    pub frames: OutboundHandle,
    /// How long to wait for the client to take a frame before giving up on it.
    pub patience: Duration,
}

/// The state shared by every RPC of the relay.
pub(crate) struct Hub {
    state: Mutex<State>,
    limits: Limits,
    writer: Sender<Command>,
    /// Where the sessions this relay opens are announced to relays sharing its
    /// database (user, when it opened in µs since the Unix epoch), if any.
    peers: OnceLock<UnboundedSender<(String, u64)>>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<SessionId, Session>,
    /// User name → its open session.
    online: HashMap<String, SessionId>,
    rooms: HashMap<String, Room>,
    /// User name → the rooms it is a member of.
    memberships: HashMap<String, BTreeSet<String>>,
    /// User name → the private rooms it owns.
    owned: HashMap<String, BTreeSet<String>>,
    next_session_id: SessionId,
    shutting_down: bool,
    /// Why the store failed, once it has: nothing more is accepted that would need it.
    store_failed: Option<String>,
    /// Sessions whose queue overflowed during the current operation.
    overflowed: Vec<SessionId>,
    /// Users whose session ended during the current operation: they were seen.
    departed: Vec<String>,
    /// Users who opened or ended a session since the last reclaiming: whatever the
    /// store says yet, they are in use.
    seen_lately: HashSet<String>,
    /// Users whose identity is being deleted: no session opens for them meanwhile.
    reclaiming: HashSet<String>,
    /// Where to run what waits (closing a connection after a grace period); the hub is
    /// also called from the store's writer thread.
    runtime: Option<tokio::runtime::Handle>,
    /// Live frames one room of a catching-up session may have waiting, and their bytes.
    max_waiting: usize,
    max_waiting_bytes: usize,
    /// How long a session may leave queued frames untaken.
    stall_timeout: Duration,
}

struct Session {
    user: String,
    /// When it opened, in µs since the Unix epoch: of two sessions of one user on
    /// relays sharing a database, the newer stays.
    opened_us: u64,
    /// The user's registered identity, handed to the members of its rooms.
    identity: PublicIdentity,
    frames: OutboundHandle,
    close: Option<Closer>,
    /// The rooms this stream joined, and how far each is.
    rooms: HashMap<String, Attachment>,
    reader: Option<AbortHandle>,
    /// The connection the stream came on, to cut off a client that stops reading.
    connection: Option<ConnectionHandle>,
}

/// How far a session is with one room.
enum Attachment {
    /// A first join, waiting for its commit.
    Joining,
    /// Reading what it missed from the store; live frames wait here, in order.
    CatchingUp(Vec<ServerFrame>),
    Live,
}

impl Hub {
    /// The hub of a relay whose store holds `rooms`; `identity` finds a member's
    /// registered identity. Ops go to `writer`.
    pub(crate) fn new(
        limits: Limits,
        rooms: Vec<StoredRoom>,
        identity: &dyn Fn(&str) -> Option<PublicIdentity>,
        writer: Sender<Command>,
    ) -> Self {
        // Half the outbound queue: catch-up leaves that much free (see
        // `push_patiently`), so what waited fits when the catch-up ends.
        let mut state = State {
            max_waiting: (limits.outbound_queue / 2).saturating_sub(1).max(1),
            max_waiting_bytes: limits.outbound_queue_bytes / 2,
            stall_timeout: Duration::from_secs(limits.stall_timeout_secs),
            runtime: tokio::runtime::Handle::try_current().ok(),
            ..State::default()
        };
        for deletion in state.load(rooms, identity) {
            let _ = writer.send(Command::Commit(Box::new(deletion)));
        }
        Self {
            state: Mutex::new(state),
            limits,
            writer,
            peers: OnceLock::new(),
        }
    }

    /// Applies what the writer committed (or failed to), in commit order: answers the
    /// clients and fans each entry out to the members that receive it.
    pub(crate) fn committed(&self, batch: Batch, failure: Option<Failure<'_>>) {
        self.operate(|state| {
            match failure {
                Some(Failure {
                    error,
                    lasting: true,
                }) if state.store_failed.is_none() => {
                    tracing::error!(%error, "the store failed; refusing changes until it answers again");
                    state.store_failed = Some(error.to_string());
                }
                Some(Failure {
                    error,
                    lasting: false,
                }) => {
                    tracing::warn!(%error, "the store failed; the senders are told to send again");
                }
                _ => {}
            }
            if let Some(Failure {
                error: StoreError::ClaimLost,
                ..
            }) = failure
            {
                // Another relay may serve the database now: every session ends, before
                // any refusal, so that each client moves on and sends again what was not
                // acknowledged.
                let ids: Vec<SessionId> = state.sessions.keys().copied().collect();
                for id in ids {
                    state.remove_session(id, Some(HubError::ClaimLost.into()));
                }
            }
            for (op, applied) in batch {
                if let Some(room) = op.effect.numbered_room().and_then(|room| state.rooms.get_mut(room)) {
                    room.in_flight = room.in_flight.saturating_sub(1);
                }
                match failure {
                    None => state.apply(op.effect, &applied, &self.writer),
                    Some(_) => state.fail(op.effect),
                }
            }
        });
    }

    /// The store answers again after a failure: what the relay had in memory of its
    /// rooms may hold changes that were never stored, so it is read anew, and every
    /// session ends with UNAVAILABLE; its client reconnects and catches up from what is
    /// stored. Changes are accepted again.
    pub(crate) fn recovered(
        &self,
        rooms: Vec<StoredRoom>,
        identity: &dyn Fn(&str) -> Option<PublicIdentity>,
    ) {
        self.operate(|state| {
            let ids: Vec<SessionId> = state.sessions.keys().copied().collect();
            for id in ids {
                state.remove_session(id, Some(HubError::StoreRecovered.into()));
            }
            for deletion in state.load(rooms, identity) {
                let _ = self.writer.send(Command::Commit(Box::new(deletion)));
            }
            if let Some(reason) = state.store_failed.take() {
                tracing::info!(reason, "the store answers again; accepting changes");
            }
        });
    }

    /// Hands `op` to the writer.
    fn submit(
        &self,
        state: &mut State,
        changes: Vec<Change>,
        effect: Effect,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), HubError> {
        if let Some(room) = effect
            .numbered_room()
            .and_then(|room| state.rooms.get_mut(room))
        {
            room.in_flight += 1;
        }
        let op = Op {
            changes,
            effect,
            _permit: permit,
        };
        self.writer
            .send(Command::Commit(Box::new(op)))
            .map_err(|_| {
                state.store_failed = Some("the writer stopped".to_owned());
                HubError::WriterStopped
            })
    }

    /// Runs `operation` under the lock, then disconnects the sessions it overflowed and
    /// notes when the users whose sessions ended were last seen.
    fn operate<R>(&self, operation: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.lock();
        let result = operation(&mut state);
        state.evict_overflowed();
        for user in std::mem::take(&mut state.departed) {
            self.note_seen(&mut state, user);
        }
        result
    }

    /// Records that `user` used the relay now, for reclaiming what nobody uses.
    fn note_seen(&self, state: &mut State, user: String) {
        // Nobody waits for it; if the store has failed it is refused like the rest.
        let _ = self.submit(state, vec![Change::Seen { user }], Effect::Nothing, None);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No operation leaves the state half-updated at a panic point, so a poisoned
        // lock is still consistent; refusing service would help nobody.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Takes the rooms as stored, replacing what the state knew of rooms; returns the
    /// deletions of rooms left empty, for the writer.
    fn load(
        &mut self,
        rooms: Vec<StoredRoom>,
        identity: &dyn Fn(&str) -> Option<PublicIdentity>,
    ) -> Vec<Op> {
        self.rooms.clear();
        self.memberships.clear();
        self.owned.clear();
        rooms
            .into_iter()
            .filter_map(|stored| self.insert_room(stored, identity))
            .collect()
    }

    /// Takes one room as stored; returns its deletion if it has no member left.
    fn insert_room(
        &mut self,
        stored: StoredRoom,
        identity: &dyn Fn(&str) -> Option<PublicIdentity>,
    ) -> Option<Op> {
        let (invited, removals) = peers::decoded_membership(stored.invited, stored.removals);
        let mut room = Room {
            owner: stored.owner.clone(),
            invited,
            removals,
            committed_seq: stored.last_seq,
            ..Room::default()
        };
        for (user, joined_seq) in stored.members {
            let Some(identity) = identity(&user) else {
                tracing::warn!(
                    user,
                    room = stored.name,
                    "a stored member is not registered; dropped"
                );
                continue;
            };
            self.memberships
                .entry(user.clone())
                .or_default()
                .insert(stored.name.clone());
            room.members.insert(
                user,
                Member {
                    identity,
                    joined_seq,
                    leaving: false,
                },
            );
        }
        if room.members.is_empty() {
            // Left empty by a shutdown before its deletion was committed.
            return Some(Op {
                changes: vec![Change::DeleteRoom { room: stored.name }],
                effect: Effect::Nothing,
                _permit: None,
            });
        }
        if let Some(owner) = &stored.owner {
            self.owned
                .entry(owner.clone())
                .or_default()
                .insert(stored.name.clone());
        }
        self.rooms.insert(stored.name, room);
        None
    }

    fn writable(&self) -> Result<(), HubError> {
        match &self.store_failed {
            None => Ok(()),
            Some(_) => Err(HubError::StoreFailed),
        }
    }
}
