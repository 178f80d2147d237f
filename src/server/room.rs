//! One room as the relay holds it in memory: who may join, who is a member since which
//! sequence number, and how far its log has been numbered and committed.
//!
//! Membership is numbered like the log: joining and leaving take a sequence number, so
//! that "who receives entry `seq`" has one answer however commits and sessions
//! interleave — the members that joined before `seq` and had not left by it. The store
//! gives the numbers as it commits, and the relay takes commits in order: a member
//! whose joining is not committed yet receives nothing, and one whose leaving is not
//! committed yet still receives what is committed before it.

use std::collections::BTreeMap;

use crate::proto::{Invitation, PublicIdentity, Removal};

/// A member of a room.
pub(crate) struct Member {
    /// The member's registered identity, handed to the others.
    pub identity: PublicIdentity,
    /// The sequence number of its joining ([`Member::JOINING`] until it is
    /// committed): it receives the entries after it.
    pub joined_seq: u64,
    /// Whether it asked to leave: it is removed once that is committed, and receives
    /// what is committed before.
    pub leaving: bool,
}

impl Member {
    /// The `joined_seq` of a member whose joining is not committed yet.
    pub const JOINING: u64 = u64::MAX;

    /// A member whose joining is on its way to the store.
    pub fn joining(identity: PublicIdentity) -> Self {
        Self {
            identity,
            joined_seq: Self::JOINING,
            leaving: false,
        }
    }

    /// Whether the member receives the entry numbered `seq`.
    pub fn receives(&self, seq: u64) -> bool {
        self.joined_seq < seq
    }

    /// Whether the member was one when `seq` was committed (its own joining included).
    pub fn was_member_at(&self, seq: u64) -> bool {
        self.joined_seq <= seq
    }

    /// Whether the member has not asked to leave.
    pub fn is_active(&self) -> bool {
        !self.leaving
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
    /// How many changes to the room are on their way to the store.
    pub in_flight: usize,
    /// The last sequence number committed to the store and delivered: catch-up reads
    /// up to it.
    pub committed_seq: u64,
}

impl Room {
    pub fn may_join(&self, user: &str) -> bool {
        match &self.owner {
            None => true,
            Some(owner) => owner == user || self.invited.contains_key(user),
        }
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

    fn member(joined_seq: u64, leaving: bool) -> Member {
        Member {
            identity: PublicIdentity::default(),
            joined_seq,
            leaving,
        }
    }

    #[test]
    fn a_member_receives_what_is_committed_after_its_joining_until_it_is_removed() {
        let m = member(5, false);
        assert!(!m.receives(5), "its own joining");
        assert!(m.receives(6));
        assert!(m.was_member_at(5));
        assert!(!m.was_member_at(4));
        let joining = Member::joining(PublicIdentity::default());
        assert!(!joining.receives(1_000) && !joining.was_member_at(1_000));
        assert!(
            member(5, true).receives(6),
            "until its leaving is committed"
        );
    }

    #[test]
    fn recipients_and_member_lists_follow_the_numbering() {
        let mut room = Room::default();
        room.members.insert("alice".into(), member(1, false));
        room.members.insert("bob".into(), member(3, true));
        room.members.insert("carol".into(), member(6, false));
        room.members
            .insert("dave".into(), Member::joining(PublicIdentity::default()));
        let recipients = |seq, except| room.recipients(seq, except).collect::<Vec<_>>();
        assert_eq!(recipients(4, "alice"), ["bob"]);
        assert_eq!(recipients(7, "nobody"), ["alice", "bob", "carol"]);
        assert_eq!(room.members_at(2, "alice").len(), 0);
        assert_eq!(room.active_members(), 3);
        assert!(!room.is_active_member("bob"));
    }
}
