//! Membership the relay cannot forge in private rooms (protocol v2): the owner signs each
//! invitation and each removal with its identity (RSA-PSS), and a member hands its sender
//! key to a newcomer only once it has checked the newcomer's invitation against the
//! owner it pinned for the room.
//!
//! An invitation names the invitee's keys (their fingerprint), so a relay that
//! registered keys of its own under the invitee's name cannot use it either.

use super::binding::{invitation_signed_bytes, removal_signed_bytes};
use super::{CryptoError, Fingerprint, Identity, VerifiedIdentity};
use crate::proto;

/// An owner's invitation of one user, with the keys the owner saw for them, to a
/// private room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invitation {
    pub room: String,
    pub owner: String,
    pub invitee: String,
    pub invitee_fingerprint: Fingerprint,
    /// When the owner made it, in Unix milliseconds.
    pub issued_at_ms: u64,
    /// RSA-PSS by the owner's identity over
    /// [`invitation_signed_bytes`](super::binding::invitation_signed_bytes).
    pub signature: Vec<u8>,
}

impl Invitation {
    /// `owner` (the holder of `identity`) invites `invitee` to `room`.
    pub fn sign(
        identity: &Identity,
        room: &str,
        owner: &str,
        invitee: &VerifiedIdentity,
        issued_at_ms: u64,
    ) -> Result<Self, CryptoError> {
        let signed = invitation_signed_bytes(
            room,
            owner,
            &invitee.user,
            invitee.fingerprint.as_bytes(),
            issued_at_ms,
        );
        Ok(Self {
            room: room.to_owned(),
            owner: owner.to_owned(),
            invitee: invitee.user.clone(),
            invitee_fingerprint: invitee.fingerprint,
            issued_at_ms,
            signature: identity.sign(&signed)?,
        })
    }

    /// Checks that `owner`, the room's pinned owner, invited exactly `invitee` (these
    /// keys under this name) to `room`.
    pub fn verify(
        &self,
        room: &str,
        owner: &VerifiedIdentity,
        invitee: &VerifiedIdentity,
    ) -> Result<(), CryptoError> {
        if self.room != room
            || self.owner != owner.user
            || self.invitee != invitee.user
            || self.invitee_fingerprint != invitee.fingerprint
        {
            return Err(CryptoError::BadSignature);
        }
        let signed = invitation_signed_bytes(
            &self.room,
            &self.owner,
            &self.invitee,
            self.invitee_fingerprint.as_bytes(),
            self.issued_at_ms,
        );
        owner.signing.verify(&signed, &self.signature)
    }
}

impl Invitation {
    /// As it travels in chat.v2 frames.
    pub fn to_wire(&self) -> proto::Invitation {
        proto::Invitation {
            room: self.room.clone(),
            owner: self.owner.clone(),
            invitee: self.invitee.clone(),
            invitee_fingerprint: self.invitee_fingerprint.as_bytes().to_vec().into(),
            issued_at_ms: self.issued_at_ms,
            signature: self.signature.clone().into(),
        }
    }

    /// As received; one whose fingerprint is not 32 bytes cannot verify.
    pub fn from_wire(wire: &proto::Invitation) -> Result<Self, CryptoError> {
        let fingerprint: [u8; 32] = wire
            .invitee_fingerprint
            .as_ref()
            .try_into()
            .map_err(|_| CryptoError::BadSignature)?;
        Ok(Self {
            room: wire.room.clone(),
            owner: wire.owner.clone(),
            invitee: wire.invitee.clone(),
            invitee_fingerprint: Fingerprint::from_bytes(fingerprint),
            issued_at_ms: wire.issued_at_ms,
            signature: wire.signature.to_vec(),
        })
    }
}

/// An owner's removal of a member (or of an invitation) from a private room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub room: String,
    pub owner: String,
    pub member: String,
    /// When the owner made it, in Unix milliseconds: it voids the member's invitations
    /// issued before.
    pub issued_at_ms: u64,
    /// RSA-PSS by the owner's identity over
    /// [`removal_signed_bytes`](super::binding::removal_signed_bytes).
    pub signature: Vec<u8>,
}

impl Removal {
    pub fn sign(
        identity: &Identity,
        room: &str,
        owner: &str,
        member: &str,
        issued_at_ms: u64,
    ) -> Result<Self, CryptoError> {
        let signed = removal_signed_bytes(room, owner, member, issued_at_ms);
        Ok(Self {
            room: room.to_owned(),
            owner: owner.to_owned(),
            member: member.to_owned(),
            issued_at_ms,
            signature: identity.sign(&signed)?,
        })
    }

    /// Checks that `owner`, the room's pinned owner, removed `member` from `room`.
    pub fn verify(&self, room: &str, owner: &VerifiedIdentity) -> Result<(), CryptoError> {
        if self.room != room || self.owner != owner.user {
            return Err(CryptoError::BadSignature);
        }
        let signed = removal_signed_bytes(&self.room, &self.owner, &self.member, self.issued_at_ms);
        owner.signing.verify(&signed, &self.signature)
    }

    /// As it travels in chat.v2 frames.
    pub fn to_wire(&self) -> proto::Removal {
        proto::Removal {
            room: self.room.clone(),
            owner: self.owner.clone(),
            member: self.member.clone(),
            issued_at_ms: self.issued_at_ms,
            signature: self.signature.clone().into(),
        }
    }

    /// As received.
    pub fn from_wire(wire: &proto::Removal) -> Self {
        Self {
            room: wire.room.clone(),
            owner: wire.owner.clone(),
            member: wire.member.clone(),
            issued_at_ms: wire.issued_at_ms,
            signature: wire.signature.to_vec(),
        }
    }

    /// Whether this removal voids `invitation` (the same member, invited before it).
    pub fn voids(&self, invitation: &Invitation) -> bool {
        self.room == invitation.room
            && self.member == invitation.invitee
            && self.issued_at_ms >= invitation.issued_at_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(user: &str) -> (Identity, VerifiedIdentity) {
        let identity = Identity::generate(2048).unwrap();
        let public = VerifiedIdentity::verify(&identity.publish(user).unwrap()).unwrap();
        (identity, public)
    }

    #[test]
    fn only_the_owner_s_invitation_of_these_keys_to_this_room_verifies() {
        let (alice, alice_public) = identity("alice");
        let (_, bob_public) = identity("bob");
        let (mallory, mallory_public) = identity("mallory");
        let invitation = Invitation::sign(&alice, "club", "alice", &bob_public, 1_000).unwrap();
        invitation
            .verify("club", &alice_public, &bob_public)
            .unwrap();

        // The relay's own keys under bob's name, another room, another owner.
        let (_, impostor) = identity("bob");
        assert!(invitation.verify("club", &alice_public, &impostor).is_err());
        assert!(
            invitation
                .verify("other", &alice_public, &bob_public)
                .is_err()
        );
        assert!(
            invitation
                .verify("club", &mallory_public, &bob_public)
                .is_err()
        );
        // Made by someone else than the owner it names; or edited.
        let forged = Invitation::sign(&mallory, "club", "alice", &bob_public, 1_000).unwrap();
        assert!(matches!(
            forged.verify("club", &alice_public, &bob_public),
            Err(CryptoError::BadSignature)
        ));
        let mut later = invitation.clone();
        later.issued_at_ms += 1;
        assert!(later.verify("club", &alice_public, &bob_public).is_err());
    }

    #[test]
    fn a_removal_verifies_as_the_owner_s_and_voids_earlier_invitations_only() {
        let (alice, alice_public) = identity("alice");
        let (mallory, _) = identity("mallory");
        let (_, bob_public) = identity("bob");
        let invited = Invitation::sign(&alice, "club", "alice", &bob_public, 1_000).unwrap();
        let removed = Removal::sign(&alice, "club", "alice", "bob", 2_000).unwrap();
        removed.verify("club", &alice_public).unwrap();
        assert!(removed.voids(&invited));
        let invited_again = Invitation::sign(&alice, "club", "alice", &bob_public, 3_000).unwrap();
        assert!(!removed.voids(&invited_again));

        let forged = Removal::sign(&mallory, "club", "alice", "bob", 2_000).unwrap();
        assert!(forged.verify("club", &alice_public).is_err());
        let mut other_member = removed.clone();
        other_member.member = "carol".into();
        assert!(other_member.verify("club", &alice_public).is_err());
        assert!(removed.verify("other", &alice_public).is_err());
    }
}
