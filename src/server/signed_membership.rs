//! The relay's checks of a private room owner's signed invitations and removals
//! (chat.v2): the signature is the caller's, over what the frame says, and an invitation
//! names the invitee's registered keys. Members check them again against the owner they
//! pinned: these checks only keep what cannot verify from being stored and handed out.

use tonic::Status;

use super::accounts::Accounts;
use crate::crypto::{self, VerifiedIdentity};
use crate::proto::{Invitation, Removal};

/// Checks that `caller` signed `invitation` and that it names the invitee's registered
/// keys.
pub(crate) fn check_invitation(
    accounts: &Accounts,
    caller: &str,
    invitation: &Invitation,
) -> Result<(), Status> {
    let owner = signer(accounts, caller, &invitation.owner, "an invitation")?;
    let invitee = registered(accounts, &invitation.invitee).ok_or_else(|| {
        Status::not_found(format!(
            "no user named {:?} is registered; they must log in once first",
            invitation.invitee
        ))
    })?;
    let signed = crypto::Invitation::from_wire(invitation)
        .map_err(|_| Status::invalid_argument("a fingerprint is 32 bytes"))?;
    if signed.invitee_fingerprint != invitee.fingerprint {
        return Err(Status::invalid_argument(format!(
            "the invitation names other keys than {:?}'s registered ones; fetch them with \
             KeyExchange and sign again",
            invitation.invitee
        )));
    }
    signed
        .verify(&invitation.room, &owner, &invitee)
        .map_err(|_| Status::invalid_argument("the invitation's signature does not verify"))
}

/// Checks that `caller` signed `removal`.
pub(crate) fn check_removal(
    accounts: &Accounts,
    caller: &str,
    removal: &Removal,
) -> Result<(), Status> {
    let owner = signer(accounts, caller, &removal.owner, "a removal")?;
    let signed = crypto::Removal::from_wire(removal);
    signed
        .verify(&removal.room, &owner)
        .map_err(|_| Status::invalid_argument("the removal's signature does not verify"))
}

/// The caller's identity, if the frame names it as the signer.
fn signer(
    accounts: &Accounts,
    caller: &str,
    named: &str,
    what: &str,
) -> Result<VerifiedIdentity, Status> {
    if named != caller {
        return Err(Status::invalid_argument(format!(
            "{what} must be signed by you, the room's owner, and name you as its owner"
        )));
    }
    registered(accounts, caller)
        .ok_or_else(|| Status::unauthenticated("the token's user is not registered"))
}

fn registered(accounts: &Accounts, user: &str) -> Option<VerifiedIdentity> {
    // Registered identities were verified at login; this only parses them again.
    VerifiedIdentity::verify(&accounts.identity(user)?).ok()
}
