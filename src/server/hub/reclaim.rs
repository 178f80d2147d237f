//! Reclaiming what nobody uses: identities and rooms idle for `--reclaim-after-days`,
//! as the store finds them ([`Store::dormant`](crate::store::Store::dormant)).
//!
//! A reclaimed identity leaves each of its rooms as a member that leaves does (the
//! others are told, with `LEAVE_REASON_RECLAIMED`, and rotate their keys) and loses its
//! invitations; the caller then deletes it from the store and the accounts, so that its
//! name is free, and calls [`Hub::reclaimed`]: meanwhile no session opens for it. A
//! reclaimed room is deleted with its members, invitations and whatever entries
//! retention left. What someone may still need is never reclaimed: a user with a
//! session, or one since the last reclaiming (the store may not have that yet), with
//! messages still stored, or owning a room; a room with a member attached or a change on
//! its way to the store.

use super::{Effect, Hub, State};
use crate::proto::LeaveReason;
use crate::store::{Change, Dormant};

impl Hub {
    /// Reclaims what `dormant` lists and may still be reclaimed now; returns the users
    /// whose identities the caller must now delete.
    pub(crate) fn reclaim(&self, dormant: &Dormant) -> Vec<String> {
        self.operate(|state| {
            let seen_lately = std::mem::take(&mut state.seen_lately);
            if state.shutting_down || state.writable().is_err() {
                return Vec::new();
            }
            // Those online are in use: the store learns it now, so that a crash cannot
            // leave it believing a session that lasted long was the last use.
            let online: Vec<Change> = state
                .online
                .keys()
                .map(|user| Change::Seen { user: user.clone() })
                .collect();
            if !online.is_empty() {
                let _ = self.submit(state, online, Effect::Nothing, None);
            }
            for room in &dormant.rooms {
                if state.room_is_idle(room) {
                    tracing::info!(room, "reclaiming a room nobody used");
                    self.delete_room(state, room);
                }
            }
            let mut reclaimed = Vec::new();
            for user in &dormant.users {
                if state.online.contains_key(user)
                    || seen_lately.contains(user)
                    || state.owned.contains_key(user)
                {
                    continue;
                }
                self.reclaim_user(state, user);
                state.reclaiming.insert(user.clone());
                reclaimed.push(user.clone());
            }
            reclaimed
        })
    }

    /// The identities of `users` are deleted: sessions may open under their names again
    /// (for whoever registers them next).
    pub(crate) fn reclaimed(&self, users: &[String]) {
        let mut state = self.lock();
        for user in users {
            state.reclaiming.remove(user);
        }
    }

    /// Ends the memberships and invitations of `user`.
    fn reclaim_user(&self, state: &mut State, user: &str) {
        let rooms: Vec<String> = state
            .memberships
            .get(user)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default();
        for room in rooms {
            let effect = state.start_leaving(&room, user, None, None, LeaveReason::Reclaimed, None);
            let changes = vec![Change::RemoveMember {
                room,
                user: user.to_owned(),
                seq: 0,
                reason: LeaveReason::Reclaimed,
            }];
            let _ = self.submit(state, changes, effect, None);
        }
        for found in state.rooms.values_mut() {
            found.invited.remove(user);
            found.removals.remove(user);
        }
    }

    /// Forgets `room` and everything in it.
    fn delete_room(&self, state: &mut State, room: &str) {
        if let Some(found) = state.rooms.get(room) {
            let members: Vec<String> = found.members.keys().cloned().collect();
            for user in members {
                if let Some(rooms) = state.memberships.get_mut(&user) {
                    rooms.remove(room);
                    if rooms.is_empty() {
                        state.memberships.remove(&user);
                    }
                }
            }
        }
        state.remove_room(room);
        let changes = vec![Change::DeleteRoom {
            room: room.to_owned(),
        }];
        let _ = self.submit(state, changes, Effect::Nothing, None);
    }
}

impl State {
    /// Whether nothing is happening in `room`: no session on it, nothing on its way to
    /// the store.
    fn room_is_idle(&self, room: &str) -> bool {
        let Some(found) = self.rooms.get(room) else {
            return false;
        };
        found.in_flight == 0
            && !self
                .sessions
                .values()
                .any(|session| session.rooms.contains_key(room))
    }
}
