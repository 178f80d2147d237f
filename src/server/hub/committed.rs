//! What happens once the writer has committed a batch: each op's client is answered,
//! and each entry goes to the members that receive it — at once to a live session, into
//! its buffer to one still catching up. If the commit failed, each client is told that
//! nothing of its frame was stored.

use std::sync::mpsc::Sender;

use super::op::numbered;
use super::{Attachment, Command, Effect, HubError, Op, SessionId, State, rejection};
use crate::proto::{
    Ack, CaughtUp, Joined, MemberJoined, MemberLeft, MessageDelivery, ServerFrame,
    server_frame::Kind,
};
use crate::server::room::Member;
use crate::store::{Applied, Change, WrappedKey, copy};

impl State {
    /// Carries out what a committed op calls for.
    pub(super) fn apply(&mut self, effect: Effect, applied: &[Applied], writer: &Sender<Command>) {
        match effect {
            Effect::Joined {
                session,
                request_id,
                room,
                user,
            } => {
                let Some(seq) = numbered(applied) else {
                    // Another relay changed the room first: the joining is undone here,
                    // and the room read anew when that relay's doorbell comes.
                    self.undo_joining(session, &room, &user);
                    let changed = HubError::RoomChanged { room };
                    self.refuse(session, request_id, changed);
                    return;
                };
                self.advance(&room, seq);
                let Some(found) = self.rooms.get_mut(&room) else {
                    return;
                };
                if let Some(member) = found.members.get_mut(&user)
                    && member.joined_seq == Member::JOINING
                {
                    member.joined_seq = seq;
                }
                let members = found.members_at(seq, &user);
                let (invitations, removals) = found.signed_membership(&members);
                let joined = Joined {
                    room: room.clone(),
                    members,
                    private_room: found.owner.is_some(),
                    owner: found.owner.clone().unwrap_or_default(),
                    last_seq: seq,
                    resumed: false,
                    former_members: Vec::new(),
                    invitations,
                    removals,
                };
                let newcomer = found.members.get(&user).map(|m| m.identity.clone());
                let invitation = found.invitation_of(&user);
                let attached = self
                    .sessions
                    .get_mut(&session)
                    .and_then(|s| s.rooms.get_mut(&room))
                    .map(|attachment| *attachment = Attachment::Live)
                    .is_some();
                if attached {
                    self.deliver(session, request_id, Kind::Joined(joined));
                    let caught_up = Kind::CaughtUp(CaughtUp {
                        room: room.clone(),
                        seq,
                    });
                    self.deliver(session, 0, caught_up);
                } else {
                    let left = HubError::LeftWhileJoining { room: room.clone() };
                    self.refuse(session, request_id, left);
                }
                let announcement = Kind::MemberJoined(MemberJoined {
                    room: room.clone(),
                    member: newcomer,
                    invitation,
                });
                self.fan_out(&room, seq, &user, &announcement);
                tracing::info!(user, room, seq, "joined");
            }
            Effect::Left {
                reply,
                removed,
                room,
                user,
                reason,
                removal,
            } => {
                let Some(seq) = numbered(applied) else {
                    // Left through another relay at the same moment: gone all the same.
                    if let Some(found) = self.rooms.get_mut(&room)
                        && found.members.get(&user).is_some_and(|m| m.leaving)
                    {
                        found.members.remove(&user);
                    }
                    if let Some((session, request_id)) = reply {
                        self.deliver(session, request_id, Kind::Ack(Ack::default()));
                    }
                    return;
                };
                self.advance(&room, seq);
                let left = Kind::MemberLeft(MemberLeft {
                    room: room.clone(),
                    user: user.clone(),
                    reason: reason.into(),
                    removal,
                });
                if let Some(removed) = removed {
                    self.deliver(removed, 0, left.clone());
                }
                self.fan_out(&room, seq, &user, &left);
                if let Some((session, request_id)) = reply {
                    self.deliver(session, request_id, Kind::Ack(Ack::default()));
                }
                tracing::info!(user, room, reason = reason.as_str_name(), "left");
                let empty = self.rooms.get_mut(&room).is_some_and(|found| {
                    // Unless the user joined again since: that is a new membership.
                    if found.members.get(&user).is_some_and(|m| m.leaving) {
                        found.members.remove(&user);
                    }
                    found.members.is_empty()
                });
                if empty {
                    self.remove_room(&room);
                    let op = Op {
                        changes: vec![Change::DeleteRoom { room }],
                        effect: Effect::Nothing,
                        _permit: None,
                    };
                    // If the writer is gone, the empty room is deleted from memory and
                    // comes back empty at the next start; nothing is lost.
                    let _ = writer.send(Command::Commit(Box::new(op)));
                }
            }
            Effect::Message {
                session,
                request_id,
                room,
                sender,
                sealed,
            } => {
                let stored_seq = match applied.first() {
                    // Resent after a lost acknowledgement: the members have it.
                    Some(Applied::Duplicate { seq: first }) => *first,
                    Some(Applied::OverQuota(quota)) => {
                        tracing::info!(user = sender, room, ?quota, "message over a quota");
                        self.refuse(session, request_id, HubError::over_quota(*quota));
                        return;
                    }
                    Some(Applied::Stored { seq }) => {
                        let seq = *seq;
                        self.advance(&room, seq);
                        let delivery = Kind::Message(MessageDelivery {
                            room: room.clone(),
                            sender: sender.clone(),
                            sealed: Some(sealed),
                            seq,
                        });
                        self.fan_out(&room, seq, &sender, &delivery);
                        seq
                    }
                    Some(Applied::NotMember | Applied::Conflict) => {
                        let refused = HubError::NotMember { room };
                        self.refuse(session, request_id, refused);
                        return;
                    }
                    Some(Applied::Done) | None => return,
                };
                self.acknowledge(session, &room, request_id, stored_seq);
            }
            Effect::SenderKeys {
                session,
                request_id,
                room,
                sender,
                keys,
            } => {
                let Some(seq) = numbered(applied) else {
                    // Removed on another relay meanwhile (the store found it).
                    let refused = HubError::NotMember { room };
                    self.refuse(session, request_id, refused);
                    return;
                };
                self.advance(&room, seq);
                self.deliver_keys(&room, seq, &sender, keys);
                self.acknowledge(session, &room, request_id, seq);
            }
            Effect::Ack {
                session,
                request_id,
            } => self.deliver(session, request_id, Kind::Ack(Ack::default())),
            Effect::Nothing => {}
        }
    }

    /// Tells the client whose op could not be committed; nothing of it happened.
    pub(super) fn fail(&mut self, effect: Effect) {
        let reply = match effect {
            Effect::Joined {
                session,
                request_id,
                room,
                ..
            } => {
                if let Some(found) = self.sessions.get_mut(&session) {
                    found.rooms.remove(&room);
                }
                Some((session, request_id))
            }
            Effect::Left { reply, .. } => reply,
            Effect::Message {
                session,
                request_id,
                ..
            }
            | Effect::SenderKeys {
                session,
                request_id,
                ..
            }
            | Effect::Ack {
                session,
                request_id,
            } => Some((session, request_id)),
            Effect::Nothing => None,
        };
        if let Some((session, request_id)) = reply {
            // What failed is in the relay's log; the client learns only that nothing was
            // stored (the database's own words name its tables and state).
            self.refuse(session, request_id, HubError::NotStored);
        }
    }

    /// Tells the client that its frame `request_id` was refused, and why.
    fn refuse(&mut self, session: SessionId, request_id: u64, error: HubError) {
        self.deliver(
            session,
            request_id,
            Kind::Rejection(rejection(&error.into())),
        );
    }

    /// Forgets a joining that was not stored: `user`'s membership of `room` while it
    /// is not committed, the session's attachment, and the room itself if nobody else
    /// is in it.
    fn undo_joining(&mut self, session: SessionId, room: &str, user: &str) {
        if let Some(found) = self.sessions.get_mut(&session) {
            found.rooms.remove(room);
        }
        let Some(found) = self.rooms.get_mut(room) else {
            return;
        };
        if found
            .members
            .get(user)
            .is_some_and(|member| member.joined_seq == Member::JOINING)
        {
            found.members.remove(user);
            if let Some(rooms) = self.memberships.get_mut(user) {
                rooms.remove(room);
                if rooms.is_empty() {
                    self.memberships.remove(user);
                }
            }
        }
        if found.members.is_empty() && found.in_flight == 0 {
            self.remove_room(room);
        }
    }

    /// Records that `room` is committed up to `seq`.
    fn advance(&mut self, room: &str, seq: u64) {
        if let Some(found) = self.rooms.get_mut(room) {
            found.committed_seq = found.committed_seq.max(seq);
        }
    }

    /// Delivers the entry numbered `seq` to every member of `room` that receives it but
    /// `except`.
    pub(super) fn fan_out(&mut self, room: &str, seq: u64, except: &str, kind: &Kind) {
        let Some(found) = self.rooms.get(room) else {
            return;
        };
        // The recipients' sessions in one pass, rather than each recipient's name copied
        // and looked up again: this runs for every message, under the lock.
        let online = &self.online;
        let sessions: Vec<SessionId> = found
            .recipients(seq, except)
            .filter_map(|user| online.get(user).copied())
            .collect();
        for id in sessions {
            self.deliver_to(id, room, kind.clone());
        }
    }

    /// Delivers the sender keys `sender` distributed in `room` under `seq`, each to its
    /// recipient.
    pub(super) fn deliver_keys(
        &mut self,
        room: &str,
        seq: u64,
        sender: &str,
        keys: Vec<WrappedKey>,
    ) {
        for key in keys {
            // The sender's own copy is for its history only.
            if key.recipient == sender {
                continue;
            }
            // A relay encoded the copy itself.
            let Ok(delivery) = copy::delivery(
                room,
                sender.to_owned(),
                seq,
                &key.wrapped_key,
                key.signature,
            ) else {
                continue;
            };
            self.deliver_entry(room, seq, &key.recipient, Kind::SenderKey(delivery));
        }
    }

    /// Delivers an entry of `room` to `user` if it receives it and has a session on the
    /// room: at once when live, after its catch-up otherwise.
    fn deliver_entry(&mut self, room: &str, seq: u64, user: &str, kind: Kind) {
        let receives = self
            .rooms
            .get(room)
            .and_then(|found| found.members.get(user))
            .is_some_and(|member| member.receives(seq));
        let Some(&id) = self.online.get(user) else {
            return;
        };
        if !receives {
            return;
        }
        self.deliver_to(id, room, kind);
    }

    /// Delivers an entry of `room` to the session `id` of a member that receives it.
    fn deliver_to(&mut self, id: SessionId, room: &str, kind: Kind) {
        let frame = ServerFrame {
            request_id: 0,
            kind: Some(kind),
        };
        let limit = self.max_waiting;
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        match session.rooms.get_mut(room) {
            Some(Attachment::Live) => self.push(id, frame),
            Some(Attachment::CatchingUp(waiting)) => {
                waiting.push(frame);
                let bytes: usize = waiting.iter().map(prost::Message::encoded_len).sum();
                let too_much = waiting.len() > limit || bytes > self.max_waiting_bytes;
                if too_much && !self.overflowed.contains(&id) {
                    self.overflowed.push(id);
                }
            }
            Some(Attachment::Joining) | None => {}
        }
    }
}

impl State {
    /// Acknowledges the entry `seq` the session stored in `room`. A session still
    /// catching up on the room gets it after the entries that wait for the catch-up to
    /// end, in order: a client takes an acknowledgement to mean that it has been sent
    /// every entry before (the joins its key is owed to, above all), and hands its key
    /// to a member who joined from its oldest unacknowledged message on.
    fn acknowledge(&mut self, id: SessionId, room: &str, request_id: u64, seq: u64) {
        let kind = Kind::Ack(Ack { seq });
        let waiting = self
            .sessions
            .get_mut(&id)
            .and_then(|session| session.rooms.get_mut(room));
        match waiting {
            Some(Attachment::CatchingUp(waiting)) => waiting.push(ServerFrame {
                request_id,
                kind: Some(kind),
            }),
            _ => self.deliver(id, request_id, kind),
        }
    }
}
