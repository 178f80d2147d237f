//! What other relays sharing the database did: the entries they committed to a room's
//! log, delivered here in sequence order for this relay's members, the rooms they made,
//! changed (an owner's invitations and removals) or deleted, and the sessions they
//! opened, which end this relay's session of the same user.
//!
//! The store's writer (`writer::follow`) reads what they committed and calls these in commit
//! order, so a member receives every entry of its rooms once and in order, whichever
//! relay committed it.

use super::*;
use crate::proto::{MemberJoined, MemberLeft, MessageDelivery};
use crate::store::LogEntry;

impl Hub {
    /// How far `room`'s log is delivered here; `None` for a room this relay does not
    /// hold.
    pub(crate) fn delivered_through(&self, room: &str) -> Option<u64> {
        self.lock().rooms.get(room).map(|found| found.committed_seq)
    }

    /// The rooms this relay holds.
    pub(crate) fn room_names(&self) -> Vec<String> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// Delivers the entries another relay committed to `room`, all after what is
    /// delivered here, in order; `room` is then delivered up to `through`.
    pub(crate) fn peers_committed(
        &self,
        room: &str,
        entries: Vec<LogEntry>,
        through: u64,
        identity: &dyn Fn(&str) -> Option<PublicIdentity>,
    ) {
        self.operate(|state| {
            for entry in entries {
                state.deliver_peers_entry(room, entry, identity);
            }
            if let Some(found) = state.rooms.get_mut(room) {
                found.committed_seq = found.committed_seq.max(through);
            }
        });
    }

    /// Takes what is stored of `name` that is not numbered (its owner, invitations and
    /// removals; all of it for a room new here), or forgets a room the store no longer
    /// has (`None`).
    pub(crate) fn refresh_room(
        &self,
        name: &str,
        stored: Option<StoredRoom>,
        identity: &dyn Fn(&str) -> Option<PublicIdentity>,
    ) {
        self.operate(|state| match stored {
            None => {
                let nobody_here = state
                    .rooms
                    .get(name)
                    .is_some_and(|found| found.members.is_empty() && found.in_flight == 0);
                if nobody_here {
                    state.remove_room(name);
                }
            }
            Some(stored) if !state.rooms.contains_key(name) => {
                let deletions = state.insert_room(stored, identity);
                // Another relay deletes the room it left empty.
                drop(deletions);
            }
            Some(stored) => {
                let found = state.rooms.get_mut(name).expect("checked");
                let (invited, removals) = decoded_membership(stored.invited, stored.removals);
                found.invited = invited;
                found.removals = removals;
            }
        });
    }

    /// A session of `user` opened on another relay at `opened_us`: one session per
    /// user, the newer one wins, as on one relay (of two opened at once, this one if
    /// not `theirs_wins_a_tie`).
    pub(crate) fn opened_elsewhere(&self, user: &str, opened_us: u64, theirs_wins_a_tie: bool) {
        self.operate(|state| {
            let older = state.online.get(user).copied().filter(|id| {
                let ours = state.sessions[id].opened_us;
                ours < opened_us || (ours == opened_us && theirs_wins_a_tie)
            });
            if let Some(id) = older {
                state.remove_session(id, Some(HubError::Replaced.into()));
            }
        });
    }
}

impl State {
    fn deliver_peers_entry(
        &mut self,
        room: &str,
        entry: LogEntry,
        identity: &dyn Fn(&str) -> Option<PublicIdentity>,
    ) {
        let seq = entry.seq();
        let Some(found) = self.rooms.get_mut(room) else {
            return;
        };
        if seq <= found.committed_seq {
            return;
        }
        found.committed_seq = seq;
        match entry {
            LogEntry::Message(message) => {
                let sender = message.sender.clone();
                let delivery = Kind::Message(MessageDelivery {
                    room: room.to_owned(),
                    ..message
                });
                self.fan_out(room, seq, &sender, &delivery);
            }
            LogEntry::SenderKeys { sender, keys, .. } => {
                self.deliver_keys(room, seq, &sender, keys);
            }
            LogEntry::Joined { user, .. } => {
                let Some(newcomer) = identity(&user) else {
                    tracing::warn!(user, room, "a member joined elsewhere is not registered");
                    return;
                };
                found.members.insert(
                    user.clone(),
                    Member {
                        identity: newcomer.clone(),
                        joined_seq: seq,
                        leaving: false,
                    },
                );
                let invitation = found.invitation_of(&user);
                self.memberships
                    .entry(user.clone())
                    .or_default()
                    .insert(room.to_owned());
                let announcement = Kind::MemberJoined(MemberJoined {
                    room: room.to_owned(),
                    member: Some(newcomer),
                    invitation,
                });
                self.fan_out(room, seq, &user, &announcement);
            }
            LogEntry::Left {
                user,
                reason,
                removal,
                ..
            } => {
                let removal = removal.and_then(|bytes| Removal::decode(bytes).ok());
                if let Some(removal) = &removal {
                    found.removals.insert(user.clone(), removal.clone());
                    found.invited.remove(&user);
                }
                let left = Kind::MemberLeft(MemberLeft {
                    room: room.to_owned(),
                    user: user.clone(),
                    reason: reason.into(),
                    removal,
                });
                // A member removed by its owner elsewhere while its session is here.
                let here = self.online.get(&user).copied();
                if let Some(id) = here
                    && let Some(session) = self.sessions.get_mut(&id)
                    && session.rooms.remove(room).is_some()
                {
                    self.deliver(id, 0, left.clone());
                }
                self.fan_out(room, seq, &user, &left);
                let found = self.rooms.get_mut(room).expect("checked above");
                found.members.remove(&user);
                let empty = found.members.is_empty() && found.in_flight == 0;
                if let Some(rooms) = self.memberships.get_mut(&user) {
                    rooms.remove(room);
                    if rooms.is_empty() {
                        self.memberships.remove(&user);
                    }
                }
                if empty {
                    self.remove_room(room);
                }
            }
        }
    }
}

/// A stored room's invitations and removals, decoded.
pub(super) fn decoded_membership(
    invited: Vec<(String, Option<bytes::Bytes>)>,
    removals: Vec<(String, bytes::Bytes)>,
) -> (
    std::collections::BTreeMap<String, Option<Invitation>>,
    std::collections::BTreeMap<String, Removal>,
) {
    // An entry that does not decode (it cannot: a relay encoded it) counts as unsigned,
    // which members ask the owner to sign anew.
    let invited = invited
        .into_iter()
        .map(|(user, invitation)| {
            let invitation = invitation.and_then(|bytes| Invitation::decode(bytes).ok());
            (user, invitation)
        })
        .collect();
    let removals = removals
        .into_iter()
        .filter_map(|(user, removal)| Some((user, Removal::decode(removal).ok()?)))
        .collect();
    (invited, removals)
}
