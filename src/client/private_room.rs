//! Membership of a private room as its owner signed it, not as the relay announces it.
//!
//! A relay that could add a member to a private room would receive every sender key
//! handed to that member. So a member pins the room's owner the first time it joins
//! (in `contacts.json`), collects the owner's signed invitations and removals the
//! relay passes on, and hands its sender key only to a member whose invitation verifies
//! against the pinned owner's keys and that no later removal voids.

use crate::crypto::{self, VerifiedIdentity};
use crate::proto;

/// Signed invitations and removals kept per room; a relay sending more cannot grow
/// them further (the relay's own cap on a room's members is lower).
const MAX_SIGNED: usize = 4096;

/// What the owner of one private room signed.
#[derive(Debug)]
pub(super) struct OwnerSigned {
    room: String,
    /// The owner pinned for the room.
    owner: String,
    /// The owner's keys, once the owner was seen with the keys pinned for it.
    owner_keys: Option<VerifiedIdentity>,
    /// Not yet verified: that needs the invitee's keys.
    invitations: Vec<crypto::Invitation>,
    removals: Vec<crypto::Removal>,
}

/// Why a member of a private room gets no key from us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The owner's keys are not known (or not the pinned ones): nothing can verify.
    OwnerUnknown,
    /// No invitation of these keys under this name verifies.
    NotInvited,
    /// The owner removed them after their last invitation.
    Removed,
}

impl OwnerSigned {
    /// The private `room` owned by `owner` (the pinned owner).
    pub fn new(room: &str, owner: &str) -> Self {
        Self {
            room: room.to_owned(),
            owner: owner.to_owned(),
            owner_keys: None,
            invitations: Vec::new(),
            removals: Vec::new(),
        }
    }

    /// The pinned owner.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Takes the owner's keys, as pinned and trusted.
    pub fn set_owner_keys(&mut self, owner: VerifiedIdentity) {
        if owner.user == self.owner {
            self.owner_keys = Some(owner);
        }
    }

    /// Whether `identity` is the pinned owner with its trusted keys.
    pub fn is_owner(&self, identity: &VerifiedIdentity) -> bool {
        self.owner_keys.as_ref().is_some_and(|owner| {
            owner.fingerprint == identity.fingerprint && owner.user == identity.user
        })
    }

    /// Keeps an invitation the relay passed on, to be verified when its invitee shows up.
    pub fn learn_invitation(&mut self, invitation: &proto::Invitation) {
        if invitation.room != self.room || invitation.owner != self.owner {
            return;
        }
        if let Ok(invitation) = crypto::Invitation::from_wire(invitation) {
            if self.invitations.len() >= MAX_SIGNED {
                self.invitations.remove(0);
            }
            self.invitations.push(invitation);
        }
    }

    /// Keeps a removal the relay passed on.
    pub fn learn_removal(&mut self, removal: &proto::Removal) {
        if removal.room != self.room || removal.owner != self.owner {
            return;
        }
        if self.removals.len() >= MAX_SIGNED {
            self.removals.remove(0);
        }
        self.removals.push(crypto::Removal::from_wire(removal));
    }

    /// Whether our sender key may go to `member`: the owner itself, or someone the owner
    /// invited with exactly these keys and did not remove since.
    pub fn admits(&self, member: &VerifiedIdentity) -> Result<(), Refusal> {
        let owner = self.owner_keys.as_ref().ok_or(Refusal::OwnerUnknown)?;
        if self.is_owner(member) {
            return Ok(());
        }
        let latest = self
            .invitations
            .iter()
            .filter(|invitation| invitation.invitee == member.user)
            .filter(|invitation| invitation.verify(&self.room, owner, member).is_ok())
            .max_by_key(|invitation| invitation.issued_at_ms)
            .ok_or(Refusal::NotInvited)?;
        let removed = self
            .removals
            .iter()
            .filter(|removal| removal.voids(latest))
            .any(|removal| removal.verify(&self.room, owner).is_ok());
        if removed {
            Err(Refusal::Removed)
        } else {
            Ok(())
        }
    }
}

impl Refusal {
    /// A warning a person can act on.
    pub fn explain(&self, room: &str, owner: &str, user: &str) -> String {
        match self {
            Refusal::OwnerUnknown => format!(
                "[{room}] {user} gets no key from you: the keys of {owner}, the owner you pinned \
                 for this private room, are not known or not trusted, so no invitation can be \
                 checked"
            ),
            Refusal::NotInvited => format!(
                "[{room}] {user} gets no key from you: no invitation signed by {owner} names \
                 their keys. The server may be adding members on its own; if {owner} did \
                 invite {user} (before protocol v2, or with other keys), ask {owner} to \
                 /invite {user} again"
            ),
            Refusal::Removed => format!(
                "[{room}] {user} gets no key from you: {owner} removed them from this private \
                 room, yet the server lists them as a member"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Identity, Invitation, Removal};

    fn identity(user: &str) -> (Identity, VerifiedIdentity) {
        let identity = Identity::generate(2048).unwrap();
        let public = VerifiedIdentity::verify(&identity.publish(user).unwrap()).unwrap();
        (identity, public)
    }

    #[test]
    fn only_members_the_pinned_owner_invited_and_did_not_remove_are_admitted() {
        let (alice, alice_public) = identity("alice");
        let (_, bob) = identity("bob");
        let (_, carol) = identity("carol");
        let (_, relay_bob) = identity("bob");
        let mut signed = OwnerSigned::new("club", "alice");
        assert_eq!(signed.admits(&bob), Err(Refusal::OwnerUnknown));
        signed.set_owner_keys(alice_public.clone());
        assert_eq!(signed.admits(&alice_public), Ok(()));
        assert_eq!(signed.admits(&bob), Err(Refusal::NotInvited));

        signed.learn_invitation(
            &Invitation::sign(&alice, "club", "alice", &bob, 1_000)
                .unwrap()
                .to_wire(),
        );
        assert_eq!(signed.admits(&bob), Ok(()));
        // Other keys under bob's name, someone else, another room's invitation.
        assert_eq!(signed.admits(&relay_bob), Err(Refusal::NotInvited));
        assert_eq!(signed.admits(&carol), Err(Refusal::NotInvited));
        signed.learn_invitation(
            &Invitation::sign(&alice, "other", "alice", &carol, 1_000)
                .unwrap()
                .to_wire(),
        );
        assert_eq!(signed.admits(&carol), Err(Refusal::NotInvited));

        // Removed after the invitation, invited again after the removal.
        signed.learn_removal(
            &Removal::sign(&alice, "club", "alice", "bob", 2_000)
                .unwrap()
                .to_wire(),
        );
        assert_eq!(signed.admits(&bob), Err(Refusal::Removed));
        signed.learn_invitation(
            &Invitation::sign(&alice, "club", "alice", &bob, 3_000)
                .unwrap()
                .to_wire(),
        );
        assert_eq!(signed.admits(&bob), Ok(()));
    }

    #[test]
    fn what_the_relay_forges_counts_for_nothing() {
        let (alice, alice_public) = identity("alice");
        let (relay, _) = identity("relay");
        let (_, bob) = identity("bob");
        let mut signed = OwnerSigned::new("club", "alice");
        signed.set_owner_keys(alice_public);
        // An invitation "by alice" signed with the relay's key.
        signed.learn_invitation(
            &Invitation::sign(&relay, "club", "alice", &bob, 1_000)
                .unwrap()
                .to_wire(),
        );
        assert_eq!(signed.admits(&bob), Err(Refusal::NotInvited));
        // A forged removal does not void a real invitation.
        signed.learn_invitation(
            &Invitation::sign(&alice, "club", "alice", &bob, 1_000)
                .unwrap()
                .to_wire(),
        );
        signed.learn_removal(
            &Removal::sign(&relay, "club", "alice", "bob", 2_000)
                .unwrap()
                .to_wire(),
        );
        assert_eq!(signed.admits(&bob), Ok(()));
    }
}
