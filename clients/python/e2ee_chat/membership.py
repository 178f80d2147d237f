"""Private rooms (docs/PROTOCOL.md, "Private rooms"): the owner's signed invitations and
removals, made and checked, and which members a client admits: those the pinned owner
invited with the keys the relay presents, and whose invitation no removal voids
(:class:`PrivateRoomRules`). No I/O."""

from __future__ import annotations

import collections
from typing import Optional

from cryptography.hazmat.primitives.asymmetric import rsa

from .binding import invitation_signed_bytes, removal_signed_bytes, verify_signature
from .identity import Identity
from .proto import pb
from .protocol import FINGERPRINT_BYTES, MAX_INVITATIONS_KEPT, MAX_REMOVALS_KEPT, is_valid_user_name


def sign_invitation(owner: Identity, room: str, invitee: str, invitee_fingerprint: bytes, issued_at_ms: int) -> pb.Invitation:
    signature = owner.sign(invitation_signed_bytes(room, owner.user, invitee, invitee_fingerprint, issued_at_ms))
    return pb.Invitation(
        room=room,
        owner=owner.user,
        invitee=invitee,
        invitee_fingerprint=invitee_fingerprint,
        issued_at_ms=issued_at_ms,
        signature=signature,
    )


def sign_removal(owner: Identity, room: str, member: str, issued_at_ms: int) -> pb.Removal:
    signature = owner.sign(removal_signed_bytes(room, owner.user, member, issued_at_ms))
    return pb.Removal(room=room, owner=owner.user, member=member, issued_at_ms=issued_at_ms, signature=signature)


def invitation_verifies(invitation: pb.Invitation, owner_key: rsa.RSAPublicKey) -> bool:
    if len(invitation.invitee_fingerprint) != FINGERPRINT_BYTES:
        return False
    try:
        data = invitation_signed_bytes(
            invitation.room, invitation.owner, invitation.invitee, invitation.invitee_fingerprint, invitation.issued_at_ms
        )
    except ValueError:
        return False
    return verify_signature(owner_key, invitation.signature, data)


def removal_verifies(removal: pb.Removal, owner_key: rsa.RSAPublicKey) -> bool:
    try:
        data = removal_signed_bytes(removal.room, removal.owner, removal.member, removal.issued_at_ms)
    except ValueError:
        return False
    return verify_signature(owner_key, removal.signature, data)


class PrivateRoomRules:
    """What a member of a private room knows of its membership: the pinned owner, the
    owner's keys once known, and the invitations and removals learnt (at most 4,096 of
    each, the oldest go first). Only those of this room and the pinned owner are kept."""

    def __init__(self, room: str, owner: str) -> None:
        self.room = room
        self.owner = owner
        #: The owner's signing key, once known (pinned identity, or our own).
        self.owner_key: Optional[rsa.RSAPublicKey] = None
        self.invitations: collections.deque[pb.Invitation] = collections.deque(maxlen=MAX_INVITATIONS_KEPT)
        self.removals: collections.deque[pb.Removal] = collections.deque(maxlen=MAX_REMOVALS_KEPT)

    def learn_invitation(self, invitation: pb.Invitation) -> None:
        if invitation.room == self.room and invitation.owner == self.owner:
            self.invitations.append(invitation)

    def learn_removal(self, removal: pb.Removal) -> None:
        if removal.room == self.room and removal.owner == self.owner:
            self.removals.append(removal)

    def admits(self, user: str, fingerprint: bytes) -> tuple[bool, str]:
        """Whether ``user``, presented with keys of ``fingerprint``, is a member for this
        client; and if not, why (for the warning)."""
        if not is_valid_user_name(self.owner):
            return False, f"the owner's name {self.owner!r} is not a valid user name"
        if self.owner_key is None:
            return False, f"the keys of the room's owner {self.owner} are unknown"
        if user == self.owner:
            return True, ""
        best: Optional[pb.Invitation] = None
        for invitation in self.invitations:
            if invitation.invitee != user or bytes(invitation.invitee_fingerprint) != fingerprint:
                continue
            if best is not None and invitation.issued_at_ms <= best.issued_at_ms:
                continue
            if invitation_verifies(invitation, self.owner_key):
                best = invitation
        if best is None:
            return False, (
                f"no invitation of these keys by the owner {self.owner} verifies (the server may be adding "
                f"members on its own; if the owner did invite them before protocol v2, or with other keys, "
                f"ask the owner to invite them again)"
            )
        for removal in self.removals:
            if (
                removal.member == user
                and removal.issued_at_ms >= best.issued_at_ms
                and removal_verifies(removal, self.owner_key)
            ):
                return False, f"the owner {self.owner} removed them"
        return True, ""
