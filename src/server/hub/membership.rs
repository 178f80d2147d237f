//! Membership: joining (or coming back to) a room, leaving, invitations and kicks in
//! private rooms, and what a session may read of a room.

use super::*;

impl Hub {
    /// Joins the session's user to a room (creating it), or attaches the session to a
    /// room its user is a member of. A first join is answered once committed; a member
    /// coming back gets a [`CatchUp`] to run.
    pub(crate) fn join(
        &self,
        id: SessionId,
        request_id: u64,
        request: JoinRequest<'_>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Option<CatchUp>, HubError> {
        let room = request.room;
        self.operate(|state| {
            let session = state.session(id)?;
            let user = session.user.clone();
            let newcomer = session.identity.clone();
            if session.rooms.contains_key(room) {
                return Err(HubError::AlreadyOnStream {
                    room: room.to_owned(),
                });
            }
            if let Some(existing) = state.rooms.get(room)
                && existing.is_active_member(&user)
            {
                return Ok(Some(state.attach(id, request_id, room, request.after_seq)));
            }
            state.writable()?;
            let memberships = state.memberships.get(&user).map_or(0, BTreeSet::len);
            if memberships >= self.limits.max_rooms_per_user {
                return Err(HubError::TooManyMemberships { count: memberships });
            }
            let mut changes = Vec::new();
            match state.rooms.get(room) {
                None if state.rooms.len() >= self.limits.max_rooms => {
                    return Err(HubError::TooManyRooms {
                        max: self.limits.max_rooms,
                    });
                }
                None => {
                    let owner = request.create_private.then(|| user.clone());
                    if owner.is_some() {
                        let owned = state.owned.get(&user).map_or(0, BTreeSet::len);
                        if owned >= self.limits.max_owned_rooms {
                            return Err(HubError::TooManyOwned { count: owned });
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
                    return Err(HubError::Private {
                        room: room.to_owned(),
                    });
                }
                Some(existing) if existing.owner.is_none() && request.create_private => {
                    return Err(HubError::OpenRoomExists {
                        room: room.to_owned(),
                    });
                }
                Some(existing) if existing.active_members() >= self.limits.max_room_members => {
                    return Err(HubError::RoomFull {
                        room: room.to_owned(),
                        max: self.limits.max_room_members,
                    });
                }
                Some(_) => {}
            }
            let joined = state.rooms.get_mut(room).expect("present or just created");
            joined
                .members
                .insert(user.clone(), Member::joining(newcomer));
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
                seq: 0,
            });
            let effect = Effect::Joined {
                session: id,
                request_id,
                room: room.to_owned(),
                user,
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
    ) -> Result<(), HubError> {
        self.operate(|state| {
            let user = state.attached_member(id, room)?;
            state.writable()?;
            if let Some(session) = state.sessions.get_mut(&id) {
                session.rooms.remove(room);
            }
            let effect = state.start_leaving(
                room,
                &user,
                Some((id, request_id)),
                None,
                LeaveReason::Left,
                None,
            );
            let changes = vec![Change::RemoveMember {
                room: room.to_owned(),
                user,
                seq: 0,
                reason: LeaveReason::Left,
            }];
            self.submit(state, changes, effect, Some(permit))
        })
    }

    /// Lets the invitee of `invitation` (signed by the session's user, checked by the
    /// caller) join the private `room` it owns. A new invitation of the same user
    /// replaces the old, and lifts its removal.
    pub(crate) fn invite(
        &self,
        id: SessionId,
        request_id: u64,
        room: &str,
        invitation: Invitation,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), HubError> {
        self.operate(|state| {
            let owner = state.session(id)?.user.clone();
            state.writable()?;
            let room_state = state.owned_room(room, &owner)?;
            let user = invitation.invitee.clone();
            if !room_state.invited.contains_key(&user)
                && room_state.invited.len() >= self.limits.max_room_members
            {
                return Err(HubError::TooManyInvitations {
                    room: room.to_owned(),
                    max: self.limits.max_room_members,
                });
            }
            let mut changes = Vec::new();
            if user != owner {
                room_state.removals.remove(&user);
                changes.push(Change::Invite {
                    room: room.to_owned(),
                    user: user.clone(),
                    invitation: invitation.encode_to_vec().into(),
                });
                room_state.invited.insert(user.clone(), Some(invitation));
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
        removal: Removal,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), HubError> {
        self.operate(|state| {
            let owner = state.session(id)?.user.clone();
            state.writable()?;
            let room_state = state.owned_room(room, &owner)?;
            let user = removal.member.as_str();
            if user == owner {
                return Err(HubError::KickSelf);
            }
            let was_invited = room_state.invited.remove(user).is_some();
            let is_member = room_state.is_active_member(user);
            if !was_invited && !is_member {
                return Err(HubError::NeitherMemberNorInvited {
                    user: user.to_owned(),
                    room: room.to_owned(),
                });
            }
            tracing::info!(owner, room, user, "kicked");
            room_state.removals.insert(user.to_owned(), removal.clone());
            let mut changes = vec![
                Change::Uninvite {
                    room: room.to_owned(),
                    user: user.to_owned(),
                },
                Change::RecordRemoval {
                    room: room.to_owned(),
                    user: user.to_owned(),
                    removal: removal.encode_to_vec().into(),
                },
            ];
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
                let removed = HubError::Removed {
                    room: room.to_owned(),
                };
                state.remove_session(kicked, Some(removed.into()));
            }
            let user = user.to_owned();
            let effect = state.start_leaving(
                room,
                &user,
                Some((id, request_id)),
                removed,
                LeaveReason::Kicked,
                Some(removal),
            );
            changes.push(Change::RemoveMember {
                room: room.to_owned(),
                user: user.to_owned(),
                seq: 0,
                reason: LeaveReason::Kicked,
            });
            self.submit(state, changes, effect, Some(permit))
        })
    }

    /// The other active members of `room`, sorted, for `user`, who must be one.
    pub(crate) fn other_members(&self, room: &str, user: &str) -> Result<Vec<String>, HubError> {
        let state = self.lock();
        let found = state.rooms.get(room).ok_or_else(|| HubError::NoRoom {
            room: room.to_owned(),
        })?;
        if !found.is_active_member(user) {
            return Err(HubError::NotMember {
                room: room.to_owned(),
            });
        }
        Ok(found
            .members
            .iter()
            .filter(|(name, member)| *name != user && member.is_active())
            .map(|(name, _)| name.clone())
            .collect())
    }

    /// The session's user and the sequence number it joined `room` at, for a history
    /// request.
    pub(crate) fn history_scope(
        &self,
        id: SessionId,
        room: &str,
    ) -> Result<(String, u64), HubError> {
        let state = self.lock();
        let user = state.attached_member(id, room)?;
        if let Some(Attachment::Joining) = state.sessions[&id].rooms.get(room) {
            return Err(HubError::StillJoining {
                room: room.to_owned(),
            });
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
}

impl State {
    /// The session's user, if this stream joined `room` and the user is still a member.
    pub(super) fn attached_member(&self, id: SessionId, room: &str) -> Result<String, HubError> {
        let session = self.session(id)?;
        let member = self
            .rooms
            .get(room)
            .is_some_and(|found| found.is_active_member(&session.user));
        if session.rooms.contains_key(room) && member {
            Ok(session.user.clone())
        } else {
            Err(HubError::NotJoinedHere {
                room: room.to_owned(),
            })
        }
    }

    /// Attaches the session to a room its user is a member of, to catch up from
    /// `after` (or from now).
    pub(super) fn attach(
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
        let joined_seq = found
            .members
            .get(&user)
            .map_or(head, |m| m.joined_seq.min(head));
        let members = found.members_at(head, &user);
        let (invitations, removals) = found.signed_membership(&members);
        let joined = Joined {
            room: room.to_owned(),
            members,
            private_room: found.owner.is_some(),
            owner: found.owner.clone().unwrap_or_default(),
            last_seq: head,
            resumed: true,
            former_members: Vec::new(),
            invitations,
            removals,
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

    /// Starts the leaving of `user` from `room`; it stops being an active member now
    /// and is removed once that is committed.
    pub(super) fn start_leaving(
        &mut self,
        room: &str,
        user: &str,
        reply: Option<(SessionId, u64)>,
        removed: Option<SessionId>,
        reason: LeaveReason,
        removal: Option<Removal>,
    ) -> Effect {
        let found = self.rooms.get_mut(room).expect("a member's room exists");
        if let Some(member) = found.members.get_mut(user) {
            member.leaving = true;
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
            reason,
            removal,
        }
    }

    /// The private `room`, if `owner` owns it.
    pub(super) fn owned_room(&mut self, room: &str, owner: &str) -> Result<&mut Room, HubError> {
        let Some(found) = self.rooms.get_mut(room) else {
            return Err(HubError::NoRoom {
                room: room.to_owned(),
            });
        };
        match &found.owner {
            None => Err(HubError::NotPrivate {
                room: room.to_owned(),
            }),
            Some(actual) if actual != owner => Err(HubError::NotOwner {
                room: room.to_owned(),
                owner: actual.clone(),
            }),
            Some(_) => Ok(found),
        }
    }

    pub(super) fn remove_room(&mut self, room: &str) {
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
}
