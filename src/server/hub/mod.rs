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

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::task::AbortHandle;
use tonic::Status;

mod committed;
mod reclaim;

use super::Limits;
use super::outbound::{Closer, Outbound, OutboundHandle, Refusal, outbound};
use super::room::{Member, Room};
use super::writer::Command;
use crate::proto::{
    Ack, CaughtUp, Joined, LeaveReason, PublicIdentity, SealedMessage, ServerFrame,
    server_frame::Kind,
};
use crate::store::{Applied, Change, StoreError, StoredRoom, WrappedKey};

/// What a `JoinRoom` asks for.
pub(crate) struct JoinRequest<'a> {
    pub room: &'a str,
    pub create_private: bool,
    pub after_seq: Option<u64>,
}

/// Identifies one `Chat` stream for the life of the server.
pub(crate) type SessionId = u64;

/// A change to a room on its way to the store, and what to do once it is committed.
pub(crate) struct Op {
    pub changes: Vec<Change>,
    pub effect: Effect,
    /// Held until the op is committed: bounds what one session has in flight.
    pub _permit: Option<OwnedSemaphorePermit>,
}

/// What to tell whom once an [`Op`] is committed.
pub(crate) enum Effect {
    /// A first join: answer the newcomer, tell the others.
    Joined {
        session: SessionId,
        request_id: u64,
        room: String,
        user: String,
        seq: u64,
    },
    /// A member left or was removed.
    Left {
        reply: Option<(SessionId, u64)>,
        /// The session of a member removed by the owner, told with `MemberLeft` too.
        removed: Option<SessionId>,
        room: String,
        user: String,
        seq: u64,
        reason: LeaveReason,
    },
    Message {
        session: SessionId,
        request_id: u64,
        room: String,
        seq: u64,
        sender: String,
        sealed: SealedMessage,
    },
    SenderKeys {
        session: SessionId,
        request_id: u64,
        room: String,
        seq: u64,
        sender: String,
        key_id: u64,
        keys: Vec<WrappedKey>,
    },
    /// Only an acknowledgement (an invitation, the removal of an invitation).
    Ack { session: SessionId, request_id: u64 },
    /// Housekeeping nobody waits for.
    Nothing,
}

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
    /// Live frames one room of a catching-up session may have waiting, and their bytes.
    max_waiting: usize,
    max_waiting_bytes: usize,
    /// How long a session may leave queued frames untaken.
    stall_timeout: Duration,
}

struct Session {
    user: String,
    /// The user's registered identity, handed to the members of its rooms.
    identity: PublicIdentity,
    frames: OutboundHandle,
    close: Option<Closer>,
    /// The rooms this stream joined, and how far each is.
    rooms: HashMap<String, Attachment>,
    reader: Option<AbortHandle>,
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
        identity: impl Fn(&str) -> Option<PublicIdentity>,
        writer: Sender<Command>,
    ) -> Self {
        // Half the outbound queue: catch-up leaves that much free (see
        // `push_patiently`), so what waited fits when the catch-up ends.
        let mut state = State {
            max_waiting: (limits.outbound_queue / 2).saturating_sub(1).max(1),
            max_waiting_bytes: limits.outbound_queue_bytes / 2,
            stall_timeout: Duration::from_secs(limits.stall_timeout_secs),
            ..State::default()
        };
        for stored in rooms {
            let mut room = Room {
                owner: stored.owner.clone(),
                invited: stored.invited.into_iter().collect(),
                assigned_seq: stored.last_seq,
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
                state
                    .memberships
                    .entry(user.clone())
                    .or_default()
                    .insert(stored.name.clone());
                room.members.insert(
                    user,
                    Member {
                        identity,
                        joined_seq,
                        left_seq: None,
                    },
                );
            }
            if room.members.is_empty() {
                // Left empty by a shutdown before its deletion was committed.
                let op = Op {
                    changes: vec![Change::DeleteRoom { room: stored.name }],
                    effect: Effect::Nothing,
                    _permit: None,
                };
                let _ = writer.send(Command::Commit(Box::new(op)));
                continue;
            }
            if let Some(owner) = &stored.owner {
                state
                    .owned
                    .entry(owner.clone())
                    .or_default()
                    .insert(stored.name.clone());
            }
            state.rooms.insert(stored.name, room);
        }
        Self {
            state: Mutex::new(state),
            limits,
            writer,
        }
    }

    /// Opens the session of the logged-in user `identity.user`, closing any other it has.
    pub(crate) fn open_session(
        &self,
        identity: PublicIdentity,
    ) -> Result<(SessionId, Outbound), Status> {
        let user = identity.user.as_str();
        let mut state = self.lock();
        if state.shutting_down {
            return Err(Status::unavailable("the server is shutting down"));
        }
        if let Some(&previous) = state.online.get(user) {
            // The newer one wins: the older is most likely a connection that died without
            // the relay noticing yet, and its user should not wait for it to time out.
            let status = Status::aborted(
                "you opened another session elsewhere; this one is closed (only one session \
                 per user at a time)",
            );
            state.remove_session(previous, Some(status));
        }
        if state.sessions.len() >= self.limits.max_sessions {
            return Err(Status::resource_exhausted(format!(
                "the server is full ({} sessions); try again later",
                self.limits.max_sessions
            )));
        }
        state.next_session_id += 1;
        let id = state.next_session_id;
        let (frames, close, stream) =
            outbound(self.limits.outbound_queue, self.limits.outbound_queue_bytes);
        state.sessions.insert(
            id,
            Session {
                user: user.to_owned(),
                identity: identity.clone(),
                frames,
                close: Some(close),
                rooms: HashMap::new(),
                reader: None,
            },
        );
        state.online.insert(user.to_owned(), id);
        tracing::info!(user, session = id, "session opened");
        self.note_seen(&mut state, user.to_owned());
        Ok((id, stream))
    }

    /// Remembers the task reading the session's frames, to stop it if the session is
    /// closed by the server.
    pub(crate) fn set_reader(&self, id: SessionId, reader: AbortHandle) {
        match self.lock().sessions.get_mut(&id) {
            Some(session) => session.reader = Some(reader),
            None => reader.abort(),
        }
    }

    /// Whether the session is still open.
    pub(crate) fn is_open(&self, id: SessionId) -> bool {
        self.lock().sessions.contains_key(&id)
    }

    /// Joins the session's user to a room (creating it), or attaches the session to a
    /// room its user is a member of. A first join is answered once committed; a member
    /// coming back gets a [`CatchUp`] to run.
    pub(crate) fn join(
        &self,
        id: SessionId,
        request_id: u64,
        request: JoinRequest<'_>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Option<CatchUp>, Status> {
        let room = request.room;
        self.operate(|state| {
            let session = state.session(id)?;
            let user = session.user.clone();
            let newcomer = session.identity.clone();
            if session.rooms.contains_key(room) {
                return Err(Status::already_exists(format!(
                    "you are already in room {room:?} on this stream"
                )));
            }
            if let Some(existing) = state.rooms.get(room)
                && existing.is_active_member(&user)
            {
                return Ok(Some(state.attach(id, request_id, room, request.after_seq)));
            }
            state.writable()?;
            let memberships = state.memberships.get(&user).map_or(0, BTreeSet::len);
            if memberships >= self.limits.max_rooms_per_user {
                return Err(Status::resource_exhausted(format!(
                    "you are a member of {memberships} rooms, the most a user may; leave one \
                     first"
                )));
            }
            let mut changes = Vec::new();
            match state.rooms.get(room) {
                None if state.rooms.len() >= self.limits.max_rooms => {
                    return Err(Status::resource_exhausted(format!(
                        "the server holds its maximum of {} rooms; try again later",
                        self.limits.max_rooms
                    )));
                }
                None => {
                    let owner = request.create_private.then(|| user.clone());
                    if owner.is_some() {
                        let owned = state.owned.get(&user).map_or(0, BTreeSet::len);
                        if owned >= self.limits.max_owned_rooms {
                            return Err(Status::resource_exhausted(format!(
                                "you own {owned} private rooms, the most a user may; a room is \
                                 freed when its last member leaves"
                            )));
                        }
                        state
                            .owned
                            .entry(user.clone())
                            .or_default()
                            .insert(room.to_owned());
                    }
                    changes.push(Change::CreateRoom {
                        room: room.to_owned(),
                        owner: owner.clone(),
                    });
                    state.rooms.insert(
                        room.to_owned(),
                        Room {
                            owner,
                            ..Room::default()
                        },
                    );
                }
                Some(existing) if !existing.may_join(&user) => {
                    return Err(Status::permission_denied(format!(
                        "room {room:?} is private; ask its owner to invite you"
                    )));
                }
                Some(existing) if existing.owner.is_none() && request.create_private => {
                    return Err(Status::already_exists(format!(
                        "room {room:?} already exists and is open to anyone; choose another \
                         name for a private room"
                    )));
                }
                Some(existing) if existing.active_members() >= self.limits.max_room_members => {
                    return Err(Status::resource_exhausted(format!(
                        "room {room:?} is full ({} members)",
                        self.limits.max_room_members
                    )));
                }
                Some(_) => {}
            }
            let joined = state.rooms.get_mut(room).expect("present or just created");
            let seq = joined.next_seq();
            joined.members.insert(
                user.clone(),
                Member {
                    identity: newcomer,
                    joined_seq: seq,
                    left_seq: None,
                },
            );
            state
                .memberships
                .entry(user.clone())
                .or_default()
                .insert(room.to_owned());
            if let Some(session) = state.sessions.get_mut(&id) {
                session.rooms.insert(room.to_owned(), Attachment::Joining);
            }
            changes.push(Change::AddMember {
                room: room.to_owned(),
                user: user.clone(),
                seq,
            });
            let effect = Effect::Joined {
                session: id,
                request_id,
                room: room.to_owned(),
                user,
                seq,
            };
            self.submit(state, changes, effect, Some(permit))?;
            Ok(None)
        })
    }

    /// The catch-up of `room` is over: tells the session, hands it the live frames that
    /// waited, and from now on delivers to it directly.
    pub(crate) fn finish_catch_up(&self, id: SessionId, room: &str, seq: u64) {
        self.operate(|state| {
            let Some(session) = state.sessions.get_mut(&id) else {
                return;
            };
            // Not if the session left the room (or was removed) meanwhile.
            let Some(attachment) = session.rooms.get_mut(room) else {
                return;
            };
            let Attachment::CatchingUp(waiting) = std::mem::replace(attachment, Attachment::Live)
            else {
                return;
            };
            let caught_up = Kind::CaughtUp(CaughtUp {
                room: room.to_owned(),
                seq,
            });
            state.deliver(id, 0, caught_up);
            for frame in waiting {
                state.push(id, frame);
            }
        });
    }

    /// Removes the session's user from `room` for good.
    pub(crate) fn leave(
        &self,
        id: SessionId,
        request_id: u64,
        room: &str,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Status> {
        self.operate(|state| {
            let user = state.attached_member(id, room)?;
            state.writable()?;
            if let Some(session) = state.sessions.get_mut(&id) {
                session.rooms.remove(room);
            }
            let effect =
                state.start_leaving(room, &user, Some((id, request_id)), None, LeaveReason::Left);
            let changes = vec![Change::RemoveMember {
                room: room.to_owned(),
                user,
                seq: effect.seq(),
            }];
            self.submit(state, changes, effect, Some(permit))
        })
    }

    /// Lets `user` join the private `room` owned by the session's user.
    pub(crate) fn invite(
        &self,
        id: SessionId,
        request_id: u64,
        room: &str,
        user: &str,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Status> {
        self.operate(|state| {
            let owner = state.session(id)?.user.clone();
            state.writable()?;
            let room_state = state.owned_room(room, &owner)?;
            if room_state.invited.len() >= self.limits.max_room_members {
                return Err(Status::resource_exhausted(format!(
                    "room {room:?} has its maximum of {} invitations; kick someone first",
                    self.limits.max_room_members
                )));
            }
            let mut changes = Vec::new();
            if user != owner && room_state.invited.insert(user.to_owned()) {
                changes.push(Change::Invite {
                    room: room.to_owned(),
                    user: user.to_owned(),
                });
            }
            tracing::info!(owner, room, user, "invited");
            let effect = Effect::Ack {
                session: id,
                request_id,
            };
            self.submit(state, changes, effect, Some(permit))
        })
    }

    /// Removes `user` from the private `room` owned by the session's user, members and
    /// invitations alike.
    pub(crate) fn kick(
        &self,
        id: SessionId,
        request_id: u64,
        room: &str,
        user: &str,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Status> {
        self.operate(|state| {
            let owner = state.session(id)?.user.clone();
            state.writable()?;
            let room_state = state.owned_room(room, &owner)?;
            if user == owner {
                return Err(Status::invalid_argument(
                    "you own this room and cannot kick yourself; leave it instead",
                ));
            }
            let was_invited = room_state.invited.remove(user);
            let is_member = room_state.is_active_member(user);
            if !was_invited && !is_member {
                return Err(Status::not_found(format!(
                    "{user:?} is neither a member of nor invited to room {room:?}"
                )));
            }
            tracing::info!(owner, room, user, "kicked");
            let mut changes = vec![Change::Uninvite {
                room: room.to_owned(),
                user: user.to_owned(),
            }];
            if !is_member {
                let effect = Effect::Ack {
                    session: id,
                    request_id,
                };
                return self.submit(state, changes, effect, Some(permit));
            }
            // The kicked member's frames for the room are refused from now on.
            let removed = state.online.get(user).copied();
            let mut catching_up = false;
            if let Some(session) = removed.and_then(|kicked| state.sessions.get_mut(&kicked)) {
                catching_up = matches!(session.rooms.remove(room), Some(Attachment::CatchingUp(_)));
            }
            if let (true, Some(kicked)) = (catching_up, removed) {
                // Its catch-up is still sending what came before: rather than tell it
                // out of order, end the session; it learns when it joins again.
                let status =
                    Status::permission_denied(format!("the owner removed you from room {room:?}"));
                state.remove_session(kicked, Some(status));
            }
            let effect = state.start_leaving(
                room,
                user,
                Some((id, request_id)),
                removed,
                LeaveReason::Kicked,
            );
            changes.push(Change::RemoveMember {
                room: room.to_owned(),
                user: user.to_owned(),
                seq: effect.seq(),
            });
            self.submit(state, changes, effect, Some(permit))
        })
    }

    /// Stores a sealed message for the other members of `room`; they get it, and the
    /// sender its acknowledgement, once it is committed.
    pub(crate) fn send(
        &self,
        id: SessionId,
        request_id: u64,
        room: &str,
        sealed: SealedMessage,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Status> {
        self.operate(|state| {
            let sender = state.attached_member(id, room)?;
            state.writable()?;
            let room_state = state.rooms.get_mut(room).expect("a member's room exists");
            let seq = room_state.next_seq();
            // The store trims the room, once it knows whether this is a resend.
            let changes = vec![Change::AppendMessage {
                room: room.to_owned(),
                seq,
                sender: sender.clone(),
                sealed: sealed.clone(),
            }];
            let effect = Effect::Message {
                session: id,
                request_id,
                room: room.to_owned(),
                seq,
                sender,
                sealed,
            };
            self.submit(state, changes, effect, Some(permit))
        })
    }

    /// Stores the wrapped keys meant for members of `room` (and the sender's own copy);
    /// each recipient gets its own, and the sender its acknowledgement, once committed.
    pub(crate) fn distribute(
        &self,
        id: SessionId,
        request_id: u64,
        room: &str,
        key_id: u64,
        keys: Vec<WrappedKey>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Status> {
        self.operate(|state| {
            let sender = state.attached_member(id, room)?;
            state.writable()?;
            let room_state = state.rooms.get_mut(room).expect("a member's room exists");
            let keys: Vec<WrappedKey> = keys
                .into_iter()
                .filter(|key| room_state.is_active_member(&key.recipient))
                .collect();
            if keys.is_empty() {
                state.deliver(id, request_id, Kind::Ack(Ack::default()));
                return Ok(());
            }
            let seq = room_state.next_seq();
            let changes = vec![Change::AppendSenderKeys {
                room: room.to_owned(),
                seq,
                sender: sender.clone(),
                key_id,
                keys: keys.clone(),
            }];
            let effect = Effect::SenderKeys {
                session: id,
                request_id,
                room: room.to_owned(),
                seq,
                sender,
                key_id,
                keys,
            };
            self.submit(state, changes, effect, Some(permit))
        })
    }

    /// The session's user and the sequence number it joined `room` at, for a history
    /// request.
    pub(crate) fn history_scope(&self, id: SessionId, room: &str) -> Result<(String, u64), Status> {
        let state = self.lock();
        let user = state.attached_member(id, room)?;
        if let Some(Attachment::Joining) = state.sessions[&id].rooms.get(room) {
            return Err(Status::failed_precondition(format!(
                "you are still joining room {room:?}; ask for its history once joined"
            )));
        }
        let joined_seq = state.rooms[room].members[&user].joined_seq;
        Ok((user, joined_seq))
    }

    /// Whether the session is still catching up on `room` (it did not leave meanwhile).
    pub(crate) fn is_catching_up(&self, id: SessionId, room: &str) -> bool {
        self.lock()
            .sessions
            .get(&id)
            .and_then(|session| session.rooms.get(room))
            .is_some_and(|attachment| matches!(attachment, Attachment::CatchingUp(_)))
    }

    /// The users who are active members of `room` now.
    pub(crate) fn active_members(&self, room: &str) -> BTreeSet<String> {
        self.lock()
            .rooms
            .get(room)
            .map_or_else(BTreeSet::new, |room| {
                room.members
                    .iter()
                    .filter(|(_, member)| member.is_active())
                    .map(|(user, _)| user.clone())
                    .collect()
            })
    }

    /// Applies what the writer committed (or failed to), in commit order: answers the
    /// clients and fans each entry out to the members that receive it.
    pub(crate) fn committed(&self, batch: Vec<(Op, Vec<Applied>)>, failure: Option<&StoreError>) {
        self.operate(|state| {
            if let Some(error) = failure
                && state.store_failed.is_none()
            {
                tracing::error!(%error, "the store failed; refusing changes until restarted");
                state.store_failed = Some(error.to_string());
            }
            for (op, applied) in batch {
                match failure {
                    None => state.apply(op.effect, &applied, &self.writer),
                    Some(error) => state.fail(op.effect, error),
                }
            }
        });
    }

    /// Tells the writer to commit what it has and stop.
    pub(crate) fn stop_writer(&self) {
        let _ = self.writer.send(Command::Stop);
    }

    /// Queues an answer for the session itself (a rejection of one of its frames).
    pub(crate) fn reply(&self, id: SessionId, request_id: u64, kind: Kind) {
        self.operate(|state| state.deliver(id, request_id, kind));
    }

    /// The client ended its session. Its user stays a member of its rooms.
    pub(crate) fn close_session(&self, id: SessionId) {
        self.operate(|state| state.remove_session(id, None));
    }

    /// The server ends a session, sending `status` to the client.
    pub(crate) fn end_session(&self, id: SessionId, status: Status) {
        self.operate(|state| state.remove_session(id, Some(status)));
    }

    /// Ends the sessions whose client has taken nothing from its queue for the stall
    /// timeout: it reads nothing, or grants no HTTP/2 window.
    pub(crate) fn end_stalled(&self) {
        self.operate(|state| {
            let timeout = state.stall_timeout;
            let stalled: Vec<SessionId> = state
                .sessions
                .iter()
                .filter(|(_, session)| session.frames.stalled_for().is_some_and(|t| t >= timeout))
                .map(|(&id, _)| id)
                .collect();
            for id in stalled {
                let status = Status::resource_exhausted(format!(
                    "disconnected: your client read nothing for {} s while frames waited for \
                     it; reconnect to catch up",
                    timeout.as_secs()
                ));
                state.remove_session(id, Some(status));
            }
        });
    }

    /// Refuses new sessions and ends every open one with UNAVAILABLE, so that the
    /// server's graceful shutdown does not wait for clients that would never leave.
    pub(crate) fn shutdown(&self) {
        self.operate(|state| {
            state.shutting_down = true;
            let ids: Vec<SessionId> = state.sessions.keys().copied().collect();
            for id in ids {
                let status = Status::unavailable("the server is shutting down; reconnect later");
                state.remove_session(id, Some(status));
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
    ) -> Result<(), Status> {
        let op = Op {
            changes,
            effect,
            _permit: permit,
        };
        self.writer
            .send(Command::Commit(Box::new(op)))
            .map_err(|_| {
                state.store_failed = Some("the writer stopped".to_owned());
                Status::unavailable("the server is not storing anything any more; try again later")
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

impl Effect {
    /// The sequence number of a leaving (0 for other effects).
    fn seq(&self) -> u64 {
        match self {
            Self::Left { seq, .. } => *seq,
            _ => 0,
        }
    }
}

impl State {
    fn session(&self, id: SessionId) -> Result<&Session, Status> {
        self.sessions
            .get(&id)
            .ok_or_else(|| Status::unavailable("the session was closed"))
    }

    fn writable(&self) -> Result<(), Status> {
        match &self.store_failed {
            None => Ok(()),
            Some(error) => Err(Status::unavailable(format!(
                "the server cannot store anything ({error}); nothing was stored; try again \
                 after the server has been restarted"
            ))),
        }
    }

    /// The session's user, if this stream joined `room` and the user is still a member.
    fn attached_member(&self, id: SessionId, room: &str) -> Result<String, Status> {
        let session = self.session(id)?;
        let member = self
            .rooms
            .get(room)
            .is_some_and(|found| found.is_active_member(&session.user));
        if session.rooms.contains_key(room) && member {
            Ok(session.user.clone())
        } else {
            Err(Status::permission_denied(format!(
                "you are not a member of room {room:?} on this stream; join it first"
            )))
        }
    }

    /// Attaches the session to a room its user is a member of, to catch up from
    /// `after` (or from now).
    fn attach(
        &mut self,
        id: SessionId,
        request_id: u64,
        room: &str,
        after: Option<u64>,
    ) -> CatchUp {
        let session = self.sessions.get_mut(&id).expect("checked by the caller");
        session
            .rooms
            .insert(room.to_owned(), Attachment::CatchingUp(Vec::new()));
        let user = session.user.clone();
        let frames = session.frames.clone();
        let found = &self.rooms[room];
        let head = found.committed_seq;
        let patience = self.stall_timeout;
        // Never before the member joined, whatever the client asks.
        let joined_seq = found.members.get(&user).map_or(head, |m| m.joined_seq);
        let joined = Joined {
            room: room.to_owned(),
            members: found.members_at(head, &user),
            private_room: found.owner.is_some(),
            owner: found.owner.clone().unwrap_or_default(),
            last_seq: head,
            resumed: true,
            former_members: Vec::new(),
        };
        tracing::info!(user, room, after, head, "catching up");
        CatchUp {
            session: id,
            room: room.to_owned(),
            user,
            after: after.map(|after| after.max(joined_seq)),
            head,
            joined,
            request_id,
            frames,
            patience,
        }
    }

    /// Numbers the leaving of `user` from `room`; it stops being an active member now
    /// and is removed once that is committed.
    fn start_leaving(
        &mut self,
        room: &str,
        user: &str,
        reply: Option<(SessionId, u64)>,
        removed: Option<SessionId>,
        reason: LeaveReason,
    ) -> Effect {
        let found = self.rooms.get_mut(room).expect("a member's room exists");
        let seq = found.next_seq();
        if let Some(member) = found.members.get_mut(user) {
            member.left_seq = Some(seq);
        }
        if let Some(rooms) = self.memberships.get_mut(user) {
            rooms.remove(room);
            if rooms.is_empty() {
                self.memberships.remove(user);
            }
        }
        Effect::Left {
            reply,
            removed,
            room: room.to_owned(),
            user: user.to_owned(),
            seq,
            reason,
        }
    }

    /// The private `room`, if `owner` owns it.
    fn owned_room(&mut self, room: &str, owner: &str) -> Result<&mut Room, Status> {
        let Some(found) = self.rooms.get_mut(room) else {
            return Err(Status::not_found(format!("there is no room {room:?}")));
        };
        match &found.owner {
            None => Err(Status::failed_precondition(format!(
                "room {room:?} is open to anyone: there is nobody to invite or kick"
            ))),
            Some(actual) if actual != owner => Err(Status::permission_denied(format!(
                "only the owner of room {room:?} ({actual}) can invite or kick"
            ))),
            Some(_) => Ok(found),
        }
    }

    /// Queues a frame for one session without waiting; a full queue marks it for
    /// disconnection.
    fn deliver(&mut self, id: SessionId, request_id: u64, kind: Kind) {
        self.push(
            id,
            ServerFrame {
                request_id,
                kind: Some(kind),
            },
        );
    }

    fn push(&mut self, id: SessionId, frame: ServerFrame) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        if let Err(Refusal::Full) = session.frames.push(frame)
            && !self.overflowed.contains(&id)
        {
            self.overflowed.push(id);
        }
        // A closed queue means tonic dropped the stream: the reader task is ending and
        // will close the session itself.
    }

    fn remove_session(&mut self, id: SessionId, status: Option<Status>) {
        let Some(mut session) = self.sessions.remove(&id) else {
            return;
        };
        if self.online.get(&session.user) == Some(&id) {
            self.online.remove(&session.user);
        }
        self.departed.push(session.user.clone());
        if let Some(status) = status {
            tracing::info!(user = session.user, code = ?status.code(), "session ended by the server");
            if let Some(close) = session.close.take() {
                let _ = close.send(status);
            }
            if let Some(reader) = session.reader {
                reader.abort();
            }
        } else {
            tracing::info!(user = session.user, "session closed");
        }
    }

    fn remove_room(&mut self, room: &str) {
        let Some(removed) = self.rooms.remove(room) else {
            return;
        };
        if let Some(owner) = removed.owner
            && let Some(owned) = self.owned.get_mut(&owner)
        {
            owned.remove(room);
            if owned.is_empty() {
                self.owned.remove(&owner);
            }
        }
    }

    fn evict_overflowed(&mut self) {
        while let Some(id) = self.overflowed.pop() {
            let status = Status::resource_exhausted(
                "disconnected: your client did not read its messages fast enough and its queue \
                 on the server filled up; reconnect to catch up",
            );
            self.remove_session(id, Some(status));
        }
    }
}
