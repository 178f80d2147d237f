//! One room as the relay holds it in memory: who may join, who is a member since which
//! sequence number, and how far its log has been numbered and committed.
//!
//! Membership is numbered like the log: joining and leaving take a sequence number, so
//! that "who receives entry `seq`" has one answer however commits and sessions
//! interleave — the members that joined before `seq` and had not left by it.

use std::collections::BTreeMap;

use crate::proto::{Invitation, PublicIdentity, Removal};

/// A member of a room.
pub(crate) struct Member {
    /// The member's registered identity, handed to the others.
    pub identity: PublicIdentity,
    /// The sequence number of its joining: it receives the entries after it.
    pub joined_seq: u64,
    /// The sequence number of its leaving, once asked for; it is removed when that is
    /// committed, and receives the entries before it until then.
    pub left_seq: Option<u64>,
}

impl Member {
    /// Whether the member receives the entry numbered `seq`.
    pub fn receives(&self, seq: u64) -> bool {
        self.joined_seq < seq && self.left_seq.is_none_or(|left| seq < left)
    }

    /// Whether the member was one when `seq` was committed (its own joining included).
    pub fn was_member_at(&self, seq: u64) -> bool {
        self.joined_seq <= seq && self.left_seq.is_none_or(|left| seq < left)
    }

    /// Whether the member has not asked to leave.
    pub fn is_active(&self) -> bool {
        self.left_seq.is_none()
    }
}

#[derive(Default)]
pub(crate) struct Room {
    /// The owner of a private room; `None` for an open room.
    pub owner: Option<String>,
    /// Who besides the owner may join a private room, with the owner's signed
    /// invitation (`None` for one made before chat.v2, which the owner must sign anew).
    /// Kept while the user is a member: members check it before handing it their keys.
    pub invited: BTreeMap<String, Option<Invitation>>,
    /// The owner's latest signed removal of each user it removed and did not invite
    /// again: handed to members, so that an older invitation cannot be replayed to them.
    pub removals: BTreeMap<String, Removal>,
    /// User name → member, sorted so member lists come out sorted.
    pub members: BTreeMap<String, Member>,
    /// The last sequence number handed out.
    pub assigned_seq: u64,
    /// The last sequence number committed to the store: catch-up reads up to it.
    pub committed_seq: u64,
}

impl Room {
    pub fn may_join(&self, user: &str) -> bool {
        match &self.owner {
            None => true,
            Some(owner) => owner == user || self.invited.contains_key(user),
        }
    }

    /// Takes the next sequence number.
    pub fn next_seq(&mut self) -> u64 {
        self.assigned_seq += 1;
        self.assigned_seq
    }

    /// Whether `user` is a member that has not asked to leave.
    pub fn is_active_member(&self, user: &str) -> bool {
        self.members.get(user).is_some_and(Member::is_active)
    }

    /// Members that have not asked to leave.
    pub fn active_members(&self) -> usize {
        self.members.values().filter(|m| m.is_active()).count()
    }

    /// The identities of the members at `seq` other than `except`, sorted by name.
    pub fn members_at(&self, seq: u64, except: &str) -> Vec<PublicIdentity> {
        self.members
            .iter()
            .filter(|(user, member)| *user != except && member.was_member_at(seq))
            .map(|(_, member)| member.identity.clone())
            .collect()
    }

    /// What a member of a private room checks before handing its keys to the others:
    /// the signed invitations of `members`, and every removal.
    pub fn signed_membership(&self, members: &[PublicIdentity]) -> (Vec<Invitation>, Vec<Removal>) {
        if self.owner.is_none() {
            return (Vec::new(), Vec::new());
        }
        let invitations = members
            .iter()
            .filter_map(|member| self.invited.get(&member.user).cloned().flatten())
            .collect();
        (invitations, self.removals.values().cloned().collect())
    }

    /// The owner's invitation of `user`, if it signed one.
    pub fn invitation_of(&self, user: &str) -> Option<Invitation> {
        self.invited.get(user).cloned().flatten()
    }

    /// The members other than `except` that receive the entry numbered `seq`.
    pub fn recipients<'a>(&'a self, seq: u64, except: &'a str) -> impl Iterator<Item = &'a str> {
        self.members
            .iter()
            .filter(move |(user, member)| *user != except && member.receives(seq))
            .map(|(user, _)| user.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(joined_seq: u64, left_seq: Option<u64>) -> Member {
        Member {
            identity: PublicIdentity::default(),
            joined_seq,
            left_seq,
        }
    }

    #[test]
    fn a_member_receives_what_falls_between_its_joining_and_its_leaving() {
        let m = member(5, Some(9));
        assert!(!m.receives(5), "its own joining");
        assert!(m.receives(6));
        assert!(m.receives(8));
        assert!(!m.receives(9), "its own leaving");
        assert!(m.was_member_at(5));
        assert!(!m.was_member_at(4));
        assert!(member(5, None).receives(1_000));
    }

    #[test]
    fn recipients_and_member_lists_follow_the_numbering() {
        let mut room = Room::default();
        room.members.insert("alice".into(), member(1, None));
        room.members.insert("bob".into(), member(3, Some(7)));
        room.members.insert("carol".into(), member(6, None));
        let recipients = |seq, except| room.recipients(seq, except).collect::<Vec<_>>();
        assert_eq!(recipients(4, "alice"), ["bob"]);
        assert_eq!(recipients(7, "nobody"), ["alice", "carol"]);
        assert_eq!(room.members_at(2, "alice").len(), 0);
        assert_eq!(room.active_members(), 2);
        assert!(!room.is_active_member("bob"));
    }
}
