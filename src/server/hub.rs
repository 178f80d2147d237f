//! The relay's shared state: open sessions and rooms.
//!
//! Everything sits behind one mutex that is never held across an `.await`: frames are
//! handed to each session's bounded [`Outbound`] queue with `try_send`, so one slow
//! client can never stall the others. A session whose queue is full is disconnected
//! with RESOURCE_EXHAUSTED, and the rooms it was in are told it left.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::task::AbortHandle;
use tonic::Status;

use super::Limits;
use super::outbound::{Outbound, OutboundHandle, Refusal, outbound};
use crate::proto::{
    Ack, Joined, LeaveReason, MemberJoined, MemberLeft, MessageDelivery, PublicIdentity,
    SealedMessage, SenderKeyDelivery, ServerFrame, WrappedSenderKey, server_frame::Kind,
};

/// What a `JoinRoom` asks for.
pub(crate) struct JoinRequest<'a> {
    pub room: &'a str,
    pub create_private: bool,
}

/// Identifies one `Chat` stream for the life of the server.
pub(crate) type SessionId = u64;

/// The state shared by every RPC of the relay.
pub(crate) struct Hub {
    state: Mutex<State>,
    limits: Limits,
}

#[derive(Default)]
struct State {
    sessions: HashMap<SessionId, Session>,
    /// User name → its open session.
    online: HashMap<String, SessionId>,
    rooms: HashMap<String, Room>,
    /// User name → the private rooms it owns.
    owned: HashMap<String, BTreeSet<String>>,
    next_session_id: SessionId,
    shutting_down: bool,
    /// Sessions whose queue overflowed during the current operation.
    overflowed: Vec<SessionId>,
}

struct Session {
    user: String,
    /// The user's registered identity, handed to the members of its rooms.
    identity: PublicIdentity,
    frames: OutboundHandle,
    rooms: BTreeSet<String>,
    reader: Option<AbortHandle>,
}

#[derive(Default)]
struct Room {
    /// User name → session, sorted so member lists come out sorted.
    members: BTreeMap<String, SessionId>,
    /// The owner of a private room; `None` for an open room.
    owner: Option<String>,
    /// Who besides the owner may join a private room.
    invited: BTreeSet<String>,
}

impl Room {
    fn may_join(&self, user: &str) -> bool {
        match &self.owner {
            None => true,
            Some(owner) => owner == user || self.invited.contains(user),
        }
    }
}

impl Hub {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            state: Mutex::default(),
            limits,
        }
    }

    /// Opens the session of the logged-in user `identity.user`, who must have no other.
    pub(crate) fn open_session(
        &self,
        identity: PublicIdentity,
    ) -> Result<(SessionId, Outbound), Status> {
        let user = identity.user.as_str();
        let mut state = self.lock();
        if state.shutting_down {
            return Err(Status::unavailable("the server is shutting down"));
        }
        if state.online.contains_key(user) {
            return Err(Status::already_exists(format!(
                "user {user:?} already has an open session; close it first"
            )));
        }
        if state.sessions.len() >= self.limits.max_sessions {
            return Err(Status::resource_exhausted(format!(
                "the server is full ({} sessions); try again later",
                self.limits.max_sessions
            )));
        }
        state.next_session_id += 1;
        let id = state.next_session_id;
        let (frames, stream) =
            outbound(self.limits.outbound_queue, self.limits.outbound_queue_bytes);
        state.sessions.insert(
            id,
            Session {
                user: user.to_owned(),
                identity: identity.clone(),
                frames,
                rooms: BTreeSet::new(),
                reader: None,
            },
        );
        state.online.insert(user.to_owned(), id);
        tracing::info!(user, session = id, "session opened");
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

    /// Adds the session's user to a room (creating it), answers `Joined`, and tells the
    /// other members.
    pub(crate) fn join(
        &self,
        id: SessionId,
        request_id: u64,
        request: JoinRequest<'_>,
    ) -> Result<(), Status> {
        let room = request.room;
        self.operate(|state| {
            let session = state.session(id)?;
            let user = session.user.clone();
            let newcomer = session.identity.clone();
            if session.rooms.contains(room) {
                return Err(Status::already_exists(format!(
                    "you are already in room {room:?}"
                )));
            }
            if session.rooms.len() >= self.limits.max_rooms_per_session {
                return Err(Status::resource_exhausted(format!(
                    "a session may be in at most {} rooms; leave one first",
                    self.limits.max_rooms_per_session
                )));
            }
            match state.rooms.get(room) {
                None if state.rooms.len() >= self.limits.max_rooms => {
                    return Err(Status::resource_exhausted(format!(
                        "the server holds its maximum of {} rooms; try again later",
                        self.limits.max_rooms
                    )));
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
                Some(existing) if existing.members.len() >= self.limits.max_room_members => {
                    return Err(Status::resource_exhausted(format!(
                        "room {room:?} is full ({} members)",
                        self.limits.max_room_members
                    )));
                }
                _ => {}
            }
            if request.create_private && !state.rooms.contains_key(room) {
                let owned = state.owned.get(&user).map_or(0, BTreeSet::len);
                if owned >= self.limits.max_owned_rooms {
                    return Err(Status::resource_exhausted(format!(
                        "you own {owned} private rooms, the most a user may; leave one empty \
                         and disconnect to free it"
                    )));
                }
                state
                    .owned
                    .entry(user.clone())
                    .or_default()
                    .insert(room.to_owned());
            }
            let entry = state.rooms.entry(room.to_owned()).or_insert_with(|| Room {
                owner: request.create_private.then(|| user.clone()),
                ..Room::default()
            });
            let owner = entry.owner.clone();
            // The answer is queued before anyone learns of the newcomer, so it reaches
            // the newcomer ahead of the sender keys the others send it in response.
            let members = state.members_except(room, &user);
            state.deliver(
                id,
                request_id,
                Kind::Joined(Joined {
                    room: room.to_owned(),
                    members,
                    private_room: owner.is_some(),
                    owner: owner.unwrap_or_default(),
                    ..Default::default()
                }),
            );
            state.broadcast(
                room,
                &user,
                Kind::MemberJoined(MemberJoined {
                    room: room.to_owned(),
                    member: Some(newcomer),
                }),
            );
            if let Some(joined) = state.rooms.get_mut(room) {
                joined.members.insert(user.clone(), id);
            }
            if let Some(session) = state.sessions.get_mut(&id) {
                session.rooms.insert(room.to_owned());
            }
            tracing::info!(user, room, "joined");
            Ok(())
        })
    }

    /// Removes the session's user from `room`, acknowledges, and tells the others.
    pub(crate) fn leave(&self, id: SessionId, request_id: u64, room: &str) -> Result<(), Status> {
        self.operate(|state| {
            let user = state.member_of(id, room)?;
            state.remove_member(room, &user, LeaveReason::Left);
            if let Some(session) = state.sessions.get_mut(&id) {
                session.rooms.remove(room);
            }
            state.deliver(id, request_id, Kind::Ack(Ack::default()));
            Ok(())
        })
    }

    /// Lets `user` join the private `room` owned by the session's user.
    pub(crate) fn invite(
        &self,
        id: SessionId,
        request_id: u64,
        room: &str,
        user: &str,
    ) -> Result<(), Status> {
        self.operate(|state| {
            let owner = state.session(id)?.user.clone();
            let room_state = state.owned_room(room, &owner)?;
            if room_state.invited.len() >= self.limits.max_room_members {
                return Err(Status::resource_exhausted(format!(
                    "room {room:?} has its maximum of {} invitations; kick someone first",
                    self.limits.max_room_members
                )));
            }
            if user != owner {
                room_state.invited.insert(user.to_owned());
            }
            tracing::info!(owner, room, user, "invited");
            state.deliver(id, request_id, Kind::Ack(Ack::default()));
            Ok(())
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
    ) -> Result<(), Status> {
        self.operate(|state| {
            let owner = state.session(id)?.user.clone();
            let room_state = state.owned_room(room, &owner)?;
            if user == owner {
                return Err(Status::invalid_argument(
                    "you own this room and cannot kick yourself; leave it instead",
                ));
            }
            let was_invited = room_state.invited.remove(user);
            let kicked = room_state.members.get(user).copied();
            if !was_invited && kicked.is_none() {
                return Err(Status::not_found(format!(
                    "{user:?} is neither a member of nor invited to room {room:?}"
                )));
            }
            if let Some(kicked) = kicked {
                // The kicked member learns it is out from the same frame the others get.
                let removed = Kind::MemberLeft(MemberLeft {
                    room: room.to_owned(),
                    user: user.to_owned(),
                    reason: LeaveReason::Kicked.into(),
                });
                state.deliver(kicked, 0, removed);
                state.remove_member(room, user, LeaveReason::Kicked);
                if let Some(session) = state.sessions.get_mut(&kicked) {
                    session.rooms.remove(room);
                }
            }
            tracing::info!(owner, room, user, "kicked");
            state.deliver(id, request_id, Kind::Ack(Ack::default()));
            Ok(())
        })
    }

    /// Fans a sealed message out to the other members of `room`, then acknowledges.
    pub(crate) fn send(
        &self,
        id: SessionId,
        request_id: u64,
        room: &str,
        sealed: SealedMessage,
    ) -> Result<(), Status> {
        self.operate(|state| {
            let sender = state.member_of(id, room)?;
            let delivery = Kind::Message(MessageDelivery {
                room: room.to_owned(),
                sender: sender.clone(),
                sealed: Some(sealed),
                ..Default::default()
            });
            state.broadcast(room, &sender, delivery);
            state.deliver(id, request_id, Kind::Ack(Ack::default()));
            Ok(())
        })
    }

    /// Hands each wrapped key to its recipient, if a member of `room`, then acknowledges.
    pub(crate) fn distribute(
        &self,
        id: SessionId,
        request_id: u64,
        room: &str,
        key_id: u64,
        keys: Vec<WrappedSenderKey>,
    ) -> Result<(), Status> {
        self.operate(|state| {
            let sender = state.member_of(id, room)?;
            let members = state.rooms.get(room).map(|room| &room.members);
            let deliveries: Vec<(SessionId, Bytes, Bytes)> = keys
                .into_iter()
                .filter_map(|wrapped| {
                    let recipient = *members?.get(&wrapped.recipient)?;
                    (recipient != id).then_some((recipient, wrapped.wrapped_key, wrapped.signature))
                })
                .collect();
            for (recipient, wrapped_key, signature) in deliveries {
                let delivery = Kind::SenderKey(SenderKeyDelivery {
                    room: room.to_owned(),
                    sender: sender.clone(),
                    key_id,
                    wrapped_key,
                    signature,
                    ..Default::default()
                });
                state.deliver(recipient, 0, delivery);
            }
            state.deliver(id, request_id, Kind::Ack(Ack::default()));
            Ok(())
        })
    }

    /// Queues an answer for the session itself (a rejection of one of its frames).
    pub(crate) fn reply(&self, id: SessionId, request_id: u64, kind: Kind) {
        self.operate(|state| state.deliver(id, request_id, kind));
    }

    /// The client ended its session: it leaves every room.
    pub(crate) fn close_session(&self, id: SessionId) {
        self.operate(|state| state.remove_session(id, LeaveReason::Disconnected, None));
    }

    /// The server ends a session, sending `status` to the client.
    pub(crate) fn end_session(&self, id: SessionId, status: Status) {
        self.operate(|state| state.remove_session(id, LeaveReason::Disconnected, Some(status)));
    }

    /// Refuses new sessions and ends every open one with UNAVAILABLE, so that the
    /// server's graceful shutdown does not wait for clients that would never leave.
    pub(crate) fn shutdown(&self) {
        self.operate(|state| {
            state.shutting_down = true;
            let ids: Vec<SessionId> = state.sessions.keys().copied().collect();
            for id in ids {
                let status = Status::unavailable("the server is shutting down; reconnect later");
                state.remove_session(id, LeaveReason::Disconnected, Some(status));
            }
        });
    }

    /// Runs `operation` under the lock, then disconnects the sessions it overflowed.
    fn operate<R>(&self, operation: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.lock();
        let result = operation(&mut state);
        state.evict_overflowed();
        result
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No operation leaves the state half-updated at a panic point, so a poisoned
        // lock is still consistent; refusing service would help nobody.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn session(&self, id: SessionId) -> Result<&Session, Status> {
        self.sessions
            .get(&id)
            .ok_or_else(|| Status::unavailable("the session was closed"))
    }

    /// The session's user, if it is a member of `room`.
    fn member_of(&self, id: SessionId, room: &str) -> Result<String, Status> {
        let session = self.session(id)?;
        if session.rooms.contains(room) {
            Ok(session.user.clone())
        } else {
            Err(Status::permission_denied(format!(
                "you are not a member of room {room:?}; join it first"
            )))
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

    fn members_except(&self, room: &str, except: &str) -> Vec<PublicIdentity> {
        self.rooms.get(room).map_or_else(Vec::new, |room| {
            room.members
                .iter()
                .filter(|(member, _)| *member != except)
                .filter_map(|(_, id)| Some(self.sessions.get(id)?.identity.clone()))
                .collect()
        })
    }

    /// Queues a frame for one session without waiting; a full queue marks it for
    /// disconnection.
    fn deliver(&mut self, id: SessionId, request_id: u64, kind: Kind) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let frame = ServerFrame {
            request_id,
            kind: Some(kind),
        };
        if let Err(Refusal::Full) = session.frames.push(frame)
            && !self.overflowed.contains(&id)
        {
            self.overflowed.push(id);
        }
        // A closed queue means tonic dropped the stream: the reader task is ending and
        // will close the session itself.
    }

    /// Queues a frame for every member of `room` but `except`.
    fn broadcast(&mut self, room: &str, except: &str, kind: Kind) {
        let Some(members) = self.rooms.get(room) else {
            return;
        };
        let recipients: Vec<SessionId> = members
            .members
            .iter()
            .filter(|(member, _)| *member != except)
            .map(|(_, id)| *id)
            .collect();
        for id in recipients {
            self.deliver(id, 0, kind.clone());
        }
    }

    fn remove_member(&mut self, room: &str, user: &str, reason: LeaveReason) {
        let Some(members) = self.rooms.get_mut(room) else {
            return;
        };
        members.members.remove(user);
        if members.members.is_empty() {
            // An empty private room lasts while its owner is connected, so that nobody
            // else takes its name while the owner steps out.
            let owner_online = members
                .owner
                .as_ref()
                .is_some_and(|owner| self.online.contains_key(owner));
            if !owner_online {
                self.remove_room(room);
            }
            return;
        }
        let left = Kind::MemberLeft(MemberLeft {
            room: room.to_owned(),
            user: user.to_owned(),
            reason: reason.into(),
        });
        self.broadcast(room, user, left);
        tracing::info!(user, room, reason = reason.as_str_name(), "left");
    }

    fn remove_session(&mut self, id: SessionId, reason: LeaveReason, status: Option<Status>) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        if self.online.get(&session.user) == Some(&id) {
            self.online.remove(&session.user);
        }
        for room in &session.rooms {
            self.remove_member(room, &session.user, reason);
        }
        let owned = self.owned.get(&session.user).cloned().unwrap_or_default();
        for room in owned {
            if self
                .rooms
                .get(&room)
                .is_some_and(|found| found.members.is_empty())
            {
                self.remove_room(&room);
            }
        }
        if let Some(status) = status {
            tracing::info!(user = session.user, code = ?status.code(), "session ended by the server");
            let _ = session.frames.close.send(status);
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
                 on the server filled up; reconnect",
            );
            self.remove_session(id, LeaveReason::TooSlow, Some(status));
        }
    }
}
