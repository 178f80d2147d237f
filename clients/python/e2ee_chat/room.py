"""The end-to-end state of one room, with no I/O (:class:`RoomState`): the members, their
prekeys and whether their keys are trusted (and, in a private room, admitted by the
owner); our own ratcheting sender key and its distributions; the members' sender keys,
checked (Merkle path and RSA-PSS signature before any RSA decryption) and followed
(Ed25519 signature before anything is derived); messages waiting for a key; sequence
numbers for the catch-up; and the history. Also the messages it hands out to show
(:class:`ReceivedMessage`, :class:`HistoryMessage`)."""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Callable, Iterable, Optional, Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from .binding import copy_label, copy_leaf, distribution_signed_bytes, unwrap_chain_key, verify_signature, wrap_chain_key
from .envelope import (
    RECEIPT,
    TEXT,
    Envelope,
    EnvelopeError,
    decode_envelope,
    encode_envelope,
    encode_receipt,
    escape_text,
    format_line,
)
from .group import BadTag, OpenError, OwnSenderKey, PeerSenderKey, Repeated, TooFarAhead, valid_ed25519_public_key
from .identity import Identity, IdentityError, PeerIdentity
from .membership import PrivateRoomRules
from .merkle import audit_path, leaf_hash, root, root_from_path
from .prekeys import PeerPrekey, PrekeyError, check_prekey
from .proto import pb
from .protocol import (
    ACCEPTED_KEY_IDS_KEPT,
    DEVICE,
    ED25519_PUBLIC_BYTES,
    ED25519_SIGNATURE_BYTES,
    MAX_COPIES_PER_DISTRIBUTION,
    MAX_ENVELOPE_BYTES,
    MAX_PENDING_MESSAGES,
    MAX_REMEMBERED_SENDERS,
    MERKLE_HASH_BYTES,
    ROTATE_AFTER_MESSAGES,
    ROTATE_AFTER_MS,
    TAG_BYTES,
    is_valid_room_name,
    is_valid_user_name,
)


class OwnPrekeys(Protocol):
    """What a room needs of this device's prekeys (:class:`~.prekeys.PrekeyStore`)."""

    def private_key(self, prekey_id: int) -> Optional[rsa.RSAPrivateKey]: ...

    @property
    def current(self): ...  # .prekey_id, .private_key


class OwnerPins(Protocol):
    """Where the owner of each private room is pinned (:class:`~.home.ContactBook`)."""

    def pinned_owner(self, room: str) -> Optional[str]: ...

    def pin_owner(self, room: str, owner: str) -> str: ...


class MemoryOwnerPins:
    """Owner pins kept in memory (tests, tools)."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}

    def pinned_owner(self, room: str) -> Optional[str]:
        return self.owners.get(room)

    def pin_owner(self, room: str, owner: str) -> str:
        return self.owners.setdefault(room, owner)


@dataclasses.dataclass
class Member:
    """Another member of the room, as the relay presented it and this client checked it.

    ``trusted`` is False when the relay presents keys that differ from the ones pinned
    for that user: then nothing is wrapped for it and nothing from it is used, until the
    user accepts the new keys (:meth:`RoomState.trust_member`).
    """

    identity: PeerIdentity
    trusted: bool = True
    #: The latest sender key delivery of an untrusted member (signature checked, not
    #: unwrapped), taken if the user accepts the member's new keys.
    held_key: Optional[pb.SenderKeyDelivery] = None
    #: No longer a member (``Joined.former_members``, ``History.former_members``):
    #: known only to check and open the entries it left behind; forgotten at CaughtUp.
    former: bool = False
    #: Its device's current prekey, checked against its identity; None until fetched.
    prekey: Optional[PeerPrekey] = None


@dataclasses.dataclass(frozen=True)
class ReceivedMessage:
    """A message that opened and checked out: a text to show, a receipt to count, or a
    kind this version does not know. ``seq`` is its number in the room (0 from a relay
    that does not number entries)."""

    room: str
    sender: str
    envelope: Envelope
    seq: int = 0

    @property
    def showable(self) -> bool:
        """True for a ``text``: the only kind printed."""
        return self.envelope.kind == TEXT

    @property
    def is_receipt(self) -> bool:
        """A receipt: never shown, never warned about."""
        return self.envelope.kind == RECEIPT

    @property
    def text(self) -> str:
        return self.envelope.text

    def line(self) -> str:
        """The stdout line, ``[ROOM] SENDER: TEXT``, escaped (for a showable message)."""
        return format_line(self.room, self.sender, self.envelope.text)


@dataclasses.dataclass(frozen=True)
class HistoryMessage:
    """A message of a ``History`` answer that verified and opened."""

    seq: int
    sender: str
    envelope: Envelope

    @property
    def text(self) -> str:
        return self.envelope.text

    def line(self, room: str) -> str:
        """The stderr line: ``history [ROOM] SENDER (YYYY-MM-DD HH:MM:SS UTC): TEXT``."""
        return history_line(room, self.sender, self.envelope.sent_at_ms, self.envelope.text)


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """The proleptic Gregorian (year, month, day) ``days`` after 1970-01-01 (Howard
    Hinnant's ``civil_from_days``, as the Rust client uses; any size of number)."""
    z = days + 719_468
    era, day_of_era = divmod(z, 146_097)
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    return year_of_era + era * 400 + (month <= 2), month, day


def utc_time(ms: int) -> str:
    """Milliseconds since the Unix epoch as ``YYYY-MM-DD HH:MM:SS UTC``, whatever a
    sender claims (no overflow)."""
    seconds = ms // 1000
    days, second_of_day = divmod(seconds, 86_400)
    year, month, day = _civil_from_days(days)
    hours, rest = divmod(second_of_day, 3600)
    return f"{year:04d}-{month:02d}-{day:02d} {hours:02d}:{rest // 60:02d}:{rest % 60:02d} UTC"


def history_line(room: str, sender: str, sent_at_ms: int, text: str) -> str:
    """One message of the history, for stderr, escaped like a live one."""
    return f"history [{room}] {sender} ({utc_time(sent_at_ms)}): {escape_text(text)}"


def starting_seq(resumed: bool, after_seq: Optional[int], latest: int) -> tuple[int, Optional[str]]:
    """Where to start counting a room's sequence numbers after a ``Joined`` that reports
    ``resumed`` and the room's ``latest`` number, given the ``after_seq`` asked for; and
    what to warn about (as the Rust client does)."""
    if after_seq is not None and resumed:
        if after_seq <= latest:
            return after_seq, None
        return latest, (
            f"this client has seen the room up to message number {after_seq}, but the relay's "
            f"latest is {latest}: the relay seems restored from an older backup; continuing "
            f"from {latest}"
        )
    if after_seq:
        return latest, (
            "the relay no longer counted you as a member, so you joined again: what was said "
            "while you were away is not available"
        )
    return latest, None


class MessageTooLong(ValueError):
    """The envelope would exceed :data:`MAX_ENVELOPE_BYTES`; nothing was sent."""


# ---------------------------------------------------------------------------------------
# RoomState: the end-to-end state of one room, no I/O
# ---------------------------------------------------------------------------------------


def _trust_everyone(_peer: PeerIdentity) -> bool:
    return True


class RoomState:
    """Everything end-to-end about one room for one user, and nothing about transport.

    Inputs are the relay's events (protobuf messages) and the key bundles the caller
    fetched (:meth:`take_bundles`); outputs are the frames to send (``SendMessage``,
    ``DistributeSenderKey``) and the messages to show. Anything dropped is reported
    through ``warn`` (by default appended to ``self.warnings``), never to the relay.

    ``trust(peer)`` decides whether a member's presented keys may be used (key pinning
    lives outside, in the CLI). ``owners`` pins the owner of a private room.

    The caller fetches the members' prekeys (``KeyExchange``) before every handout of a
    new key (:meth:`rotate`): on ``joined``, ``member_left``, a trust change, a new
    prekey of ours, and when :meth:`rotation_due`; and the newcomer's before
    :meth:`handout_to`.
    """

    def __init__(
        self,
        room: str,
        identity: Identity,
        prekeys: OwnPrekeys,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        warn: Optional[Callable[[str], None]] = None,
        max_pending: int = MAX_PENDING_MESSAGES,
        trust: Callable[[PeerIdentity], bool] = _trust_everyone,
        owners: Optional[OwnerPins] = None,
        rotate_after_messages: int = ROTATE_AFTER_MESSAGES,
        rotate_after_ms: int = ROTATE_AFTER_MS,
    ) -> None:
        if not is_valid_room_name(room):
            raise ValueError(f"invalid room name {room!r}")
        self.room = room
        self.user = identity.user
        self.identity = identity
        self.prekeys = prekeys
        self._rng = rng
        self._clock_ms = clock_ms
        self._trust = trust
        self.owners: OwnerPins = owners if owners is not None else MemoryOwnerPins()
        self.rotate_after_messages = rotate_after_messages
        self.rotate_after_ms = rotate_after_ms
        self.warnings: list[str] = []
        self._warn = warn if warn is not None else self.warnings.append
        self.max_pending = max_pending
        #: Other members (current and former), with their checked identities.
        self.members: dict[str, Member] = {}
        #: Each other member's current sender key (only the current one is kept).
        self.peer_keys: dict[str, PeerSenderKey] = {}
        #: Per sender, the key ids already accepted (the last 256, for 4,096 senders):
        #: never accepted again. Kept when a member leaves.
        self.accepted_key_ids: collections.OrderedDict[str, collections.deque[int]] = collections.OrderedDict()
        #: Messages whose sender's key has not arrived yet, oldest first (unchecked:
        #: the Ed25519 key comes with the sender key).
        self.pending: collections.deque[pb.MessageDelivery] = collections.deque()
        self.own_key = OwnSenderKey.generate(rng, clock_ms())
        #: The highest sequence number of the room processed (our own entries aside).
        self.last_seq = 0
        #: In a private room: the pinned owner, its keys, invitations and removals.
        self.private: Optional[PrivateRoomRules] = None
        #: We were removed from the room: no key goes out any more.
        self.out = False
        #: The members our current key was handed to: those a message sealed now is for
        #: (what its receipts are counted against).
        self.key_holders: set[str] = set()

    # -- members ------------------------------------------------------------------------

    def is_current_member(self, user: str) -> bool:
        member = self.members.get(user)
        return member is not None and not member.former

    def current_members(self) -> list[str]:
        """The other members, sorted; former members are not listed."""
        return sorted(n for n, m in self.members.items() if not m.former)

    def untrusted_members(self) -> list[str]:
        return sorted(n for n, m in self.members.items() if not m.trusted and not m.former)

    def members_without_prekey(self) -> list[str]:
        return sorted(n for n, m in self.members.items() if not m.former and m.prekey is None)

    def _check_identity(self, identity: pb.PublicIdentity, what: str) -> Optional[PeerIdentity]:
        if identity.user == self.user:
            self._warn(f"ignoring a member under your own name ({self.user}) in {what} of {self.room}")
            return None
        try:
            return PeerIdentity.from_public(identity)
        except IdentityError as exc:
            self._warn(f"ignoring member {escape_text(identity.user)!r} in {what} of {self.room}: {exc}")
            return None

    def _admitted(self, peer: PeerIdentity, what: str) -> bool:
        """In a private room: whether the pinned owner admits ``peer`` (with a warning if not)."""
        if self.private is None:
            return True
        admitted, why = self.private.admits(peer.user, peer.fingerprint)
        if not admitted:
            self._warn(
                f"not admitting {peer.user} ({what}) to the private room {self.room}: {why}; "
                f"{peer.user} gets no key from you and is not heard"
            )
        return admitted

    def _add_member(self, identity: pb.PublicIdentity, what: str, former: bool = False) -> Optional[str]:
        """Checks a member presented by the relay; returns its name, or None if ignored.

        Ignored (with a warning): an identity that does not verify, a member under our
        own name, a second announcement of a current member, and in a private room a
        member the pinned owner does not admit. A former member becomes a current one
        when announced as a member.
        """
        known = self.members.get(identity.user)
        if known is not None and (former or not known.former):
            if not former:
                self._warn(f"ignoring a second announcement of member {identity.user} in {what} of {self.room}")
            return None
        peer = self._check_identity(identity, what)
        if peer is None:
            return None
        trusted = bool(self._trust(peer))
        if not former and not self._admitted(peer, what):
            return None
        if known is not None:  # a former member back: it will distribute a new key
            self.peer_keys.pop(peer.user, None)
        self.members[peer.user] = Member(identity=peer, trusted=trusted, former=former)
        return peer.user

    def _forget_keys_of(self, name: str) -> None:
        self.peer_keys.pop(name, None)
        kept = collections.deque(m for m in self.pending if m.sender != name)
        dropped = len(self.pending) - len(kept)
        self.pending = kept
        if dropped:
            self._warn(f"dropped {dropped} message(s) from {name} in {self.room}: its sender key never arrived")

    # -- private rooms ------------------------------------------------------------------

    def _setup_private(self, joined: pb.Joined) -> None:
        """Pins the owner on the first ``joined`` of a private room; a later one that
        calls the room open or names another owner changes nothing (with a warning)."""
        pinned = self.owners.pinned_owner(self.room)
        if joined.private_room:
            if pinned is None:
                pinned = self.owners.pin_owner(self.room, joined.owner)
            if joined.owner != pinned:
                self._warn(
                    f"the relay says {self.room} is owned by {escape_text(joined.owner)!r}, but its pinned "
                    f"owner is {pinned}: keeping {pinned}'s rule"
                )
        elif pinned is not None:
            self._warn(f"the relay calls {self.room} open, but it is a private room owned by {pinned}: keeping its rule")
        if pinned is None:
            self.private = None
            return
        rules = PrivateRoomRules(self.room, pinned)
        for invitation in joined.invitations:
            rules.learn_invitation(invitation)
        for removal in joined.removals:
            rules.learn_removal(removal)
        if pinned == self.user:
            rules.owner_key = self.identity.signing_key.public_key()
        else:
            for identity in list(joined.members) + list(joined.former_members):
                if identity.user == pinned:
                    self._take_owner_keys(rules, identity)
            if rules.owner_key is None:
                self._warn(
                    f"the keys of {pinned}, the owner of {self.room}, are unknown: your key goes to nobody "
                    f"in {self.room} for now"
                )
        self.private = rules

    def _take_owner_keys(self, rules: PrivateRoomRules, identity: pb.PublicIdentity) -> None:
        try:
            peer = PeerIdentity.from_public(identity)
        except IdentityError:
            return
        if self._trust(peer):
            rules.owner_key = peer.signing_key

    # -- membership events --------------------------------------------------------------

    def on_joined(self, joined: pb.Joined, after_seq: Optional[int] = None) -> None:
        """Our join was accepted (``after_seq`` is what the join asked for): note where
        the numbering starts, pin the owner of a private room, record the members it
        admits and the former members the catch-up needs. The caller then fetches the
        room's prekeys and calls :meth:`rotate`: a new key on every join."""
        self.last_seq, warning = starting_seq(joined.resumed, after_seq, joined.last_seq)
        if warning is not None:
            self._warn(f"[{self.room}] {warning}")
        self._setup_private(joined)
        present = set()
        for identity in joined.members:
            present.add(identity.user)
            self._add_member(identity, "Joined")
        for name in [n for n, m in self.members.items() if not m.former and n not in present]:
            del self.members[name]  # gone while we were away: forgotten
            self._forget_keys_of(name)
        for identity in joined.former_members:
            self._add_member(identity, "Joined (former members)", former=True)

    def caught_up(self) -> None:
        """The catch-up is over: forget the former members it needed."""
        for name in [n for n, m in self.members.items() if m.former]:
            del self.members[name]
            self._forget_keys_of(name)

    def member_joined(self, identity: pb.PublicIdentity, invitation: Optional[pb.Invitation] = None) -> Optional[str]:
        """A newcomer; returns its name, or None when it is ignored or not admitted. The
        caller fetches its prekey if unknown and calls :meth:`handout_to`."""
        if self.private is not None:
            if invitation is not None:
                self.private.learn_invitation(invitation)
            if identity.user == self.private.owner and self.private.owner_key is None:
                self._take_owner_keys(self.private, identity)
        return self._add_member(identity, "MemberJoined")

    def member_left(self, user: str, removal: Optional[pb.Removal] = None) -> bool:
        """Someone left (or was kicked or reclaimed): forget its keys and waiting
        messages. True if it was a current member: then the caller fetches the prekeys
        and rotates (:meth:`rotate`)."""
        if self.private is not None and removal is not None:
            self.private.learn_removal(removal)
        if not self.is_current_member(user):
            return False
        del self.members[user]
        self._forget_keys_of(user)
        return True

    def trust_member(self, user: str) -> bool:
        """The user accepted the keys presented for ``user`` (re-pinned by the caller):
        take the sender key it kept aside. True if something changed: then the caller
        fetches the prekeys and rotates, so the accepted keys never read what was sent
        while they were refused."""
        member = self.members.get(user)
        if member is None:
            raise KeyError(user)
        if member.trusted:
            return False
        member.trusted = True
        held, member.held_key = member.held_key, None
        if held is not None:
            self.accept_sender_key(held)
        return True

    # -- prekeys ------------------------------------------------------------------------

    def take_bundles(self, bundles: Iterable[pb.KeyBundle], fresh_for: Iterable[str] = ()) -> set[str]:
        """Takes the members' prekeys from ``KeyExchange`` bundles: the identity must be
        the one this client uses for the member, the prekey must verify against it.
        Members in ``fresh_for`` lose a prekey kept from earlier first (a handout of a
        new key wraps only under prekeys fetched afresh). Returns the names covered."""
        for name in fresh_for:
            member = self.members.get(name)
            if member is not None:
                member.prekey = None
        covered = set()
        for bundle in bundles:
            name = bundle.identity.user
            member = self.members.get(name)
            if member is None or member.former or bundle.device != DEVICE:
                continue
            covered.add(name)
            try:
                peer = PeerIdentity.from_public(bundle.identity)
            except IdentityError as exc:
                self._warn(f"ignoring the key bundle of {name}: {exc}")
                continue
            if peer.fingerprint != member.identity.fingerprint:
                self._warn(f"ignoring the key bundle of {name}: its identity is not the one {name} joined with")
                continue
            if not bundle.HasField("prekey"):
                member.prekey = None
                continue
            try:
                member.prekey = check_prekey(member.identity, bundle.prekey)
            except PrekeyError as exc:
                member.prekey = None
                self._warn(f"the prekey of {name} is unusable: {exc}")
        return covered

    # -- handing our key out ------------------------------------------------------------

    def _recipients(self, names: Iterable[str]) -> list[Member]:
        """The trusted current members among ``names`` that have a verified prekey;
        those without one are named in a warning."""
        out = []
        for name in sorted(set(names)):
            member = self.members.get(name)
            if member is None or member.former or not member.trusted or name == self.user:
                continue
            if member.prekey is None:
                self._warn(f"{name} has no verified prekey: {name} gets no key from you for now")
                continue
            out.append(member)
        return out

    def _wrap(self, recipient: str, prekey_id: int, prekey: rsa.RSAPublicKey, chain_key: bytes) -> pb.WrappedChainKey:
        label = copy_label(self.room, self.user, DEVICE, recipient, DEVICE, self.own_key.key_id, prekey_id)
        return pb.WrappedChainKey(
            recipient=recipient, device=DEVICE, prekey_id=prekey_id, wrapped=wrap_chain_key(prekey, chain_key, label)
        )

    def _distributions(self, recipients: list[Member], own_copy: bool) -> list[pb.DistributeSenderKey]:
        """Our current key from its hand-out point, wrapped for each of ``recipients``
        (and for ourselves first if ``own_copy``), in frames of at most 96 copies, each
        frame with its Merkle tree and one RSA-PSS signature over its root."""
        if self.out:
            return []
        iteration, chain_key = self.own_key.handout()
        copies = []
        if own_copy:
            current = self.prekeys.current
            copies.append(self._wrap(self.user, current.prekey_id, current.private_key.public_key(), chain_key))
        for member in recipients:
            assert member.prekey is not None
            copies.append(self._wrap(member.identity.user, member.prekey.prekey_id, member.prekey.public_key, chain_key))
        header = pb.DistributionHeader(
            key_id=self.own_key.key_id,
            iteration=iteration,
            device=DEVICE,
            signing_public_key=self.own_key.signing_public_key,
        )
        frames = []
        for start in range(0, len(copies), MAX_COPIES_PER_DISTRIBUTION):
            chunk = copies[start : start + MAX_COPIES_PER_DISTRIBUTION]
            tree_root = root([leaf_hash(copy_leaf(c.recipient, c.device, c.prekey_id, c.wrapped)) for c in chunk])
            signature = self.identity.sign(
                distribution_signed_bytes(
                    self.room, self.user, DEVICE, header.key_id, header.iteration,
                    header.signing_public_key, len(chunk), tree_root,
                )
            )
            frames.append(pb.DistributeSenderKey(room=self.room, header=header, copies=chunk, signature=signature))
        return frames

    def rotate(self) -> list[pb.DistributeSenderKey]:
        """Makes a new sender key and hands it to every trusted current member with a
        verified prekey, and to ourselves (for the history). The frames go before any
        message sealed under the new key."""
        self.own_key = OwnSenderKey.generate(self._rng, self._clock_ms())
        recipients = self._recipients(self.members)
        frames = self._distributions(recipients, own_copy=True)
        self.key_holders = {m.identity.user for m in recipients} if frames else set()
        return frames

    def handout_to(self, name: str) -> list[pb.DistributeSenderKey]:
        """Our *current* key, from its hand-out point, for a newcomer only (no one
        rotates on a join). Nothing if it is not trusted or has no prekey."""
        recipients = self._recipients([name])
        frames = self._distributions(recipients, own_copy=False) if recipients else []
        if frames:
            self.key_holders.add(name)
        return frames

    def sealed_for(self) -> tuple[str, ...]:
        """Who a message sealed now is for: the trusted current members holding our
        current key (not those who join later), sorted."""
        return tuple(sorted(n for n in self.key_holders if self.is_current_member(n) and self.members[n].trusted))

    def acknowledged(self, key_id: int, iteration: int) -> None:
        """The relay acknowledged our message ``iteration`` of key ``key_id``: the
        hand-out point moves past it."""
        if self.own_key.key_id == key_id:
            self.own_key.acknowledged(iteration)

    # -- sealing ------------------------------------------------------------------------

    def rotation_due(self) -> bool:
        """The schedule: the current key sealed its share of messages, or is too old."""
        return self.own_key.due_for_rotation(self._clock_ms(), self.rotate_after_messages, self.rotate_after_ms)

    def seal_plaintext(self, plaintext: bytes) -> pb.SendMessage:
        """Seals raw envelope bytes under the current key (the caller rotates first
        when :meth:`rotation_due`)."""
        iteration, ciphertext, signature = self.own_key.seal(self.room, self.user, plaintext)
        sealed = pb.SealedMessage(
            key_id=self.own_key.key_id, iteration=iteration, device=DEVICE, ciphertext=ciphertext, signature=signature
        )
        return pb.SendMessage(room=self.room, sealed=sealed)

    def seal_text(self, text: str) -> pb.SendMessage:
        """Seals a text message; raises :class:`MessageTooLong` past 32 KiB of envelope."""
        plaintext = encode_envelope(self.user, text, self._clock_ms())
        if len(plaintext) > MAX_ENVELOPE_BYTES:
            raise MessageTooLong(
                f"the message is {len(plaintext)} bytes long; the limit is {MAX_ENVELOPE_BYTES} bytes"
            )
        return self.seal_plaintext(plaintext)

    def seal_receipt(self, delivered_through: int, read_through: int) -> pb.SendMessage:
        """Seals a receipt: how far this user got in the room (PROTOCOL.md, "Receipts")."""
        return self.seal_plaintext(encode_receipt(self.user, self._clock_ms(), delivered_through, read_through))

    # -- checks shared by live frames and history ---------------------------------------

    def _distribution_verifies(self, signing_key: rsa.RSAPublicKey, delivery: pb.SenderKeyDelivery) -> bool:
        """Step 3 of "Receiving a sender key": header and copy present, sizes, the
        Merkle path to a root, and the sender's RSA-PSS signature over it. Before any
        RSA decryption."""
        if not delivery.HasField("header") or not delivery.HasField("copy"):
            return False
        header, copy = delivery.header, delivery.copy
        if len(header.signing_public_key) != ED25519_PUBLIC_BYTES:
            return False
        if any(len(p) != MERKLE_HASH_BYTES for p in delivery.path):
            return False
        leaf = leaf_hash(copy_leaf(copy.recipient, copy.device, copy.prekey_id, copy.wrapped))
        tree_root = root_from_path(leaf, delivery.index, delivery.count, list(delivery.path))
        if tree_root is None:
            return False
        signed = distribution_signed_bytes(
            delivery.room, delivery.sender, header.device, header.key_id, header.iteration,
            header.signing_public_key, delivery.count, tree_root,
        )
        return verify_signature(signing_key, delivery.signature, signed)

    def _unwrap(self, delivery: pb.SenderKeyDelivery) -> tuple[Optional[PeerSenderKey], str]:
        """Steps 6 and 7: our own copy, under a prekey we hold, unwrapped; the key, or
        None and why."""
        header, copy = delivery.header, delivery.copy
        private = self.prekeys.private_key(copy.prekey_id)
        if private is None:
            return None, "it is wrapped under a prekey this device no longer has"
        if copy.recipient != self.user or copy.device != DEVICE:
            return None, "it does not unwrap"
        label = copy_label(delivery.room, delivery.sender, header.device, self.user, DEVICE, header.key_id, copy.prekey_id)
        try:
            chain_key = unwrap_chain_key(private, copy.wrapped, label)
            key = PeerSenderKey(header.key_id, header.signing_public_key, chain_key, header.iteration)
        except ValueError:
            return None, "it does not unwrap"
        return key, ""

    # -- receiving keys -----------------------------------------------------------------

    def _member_for(self, room: str, sender: str, what: str) -> Optional[Member]:
        """The member a delivery claims to come from, or None (with a warning)."""
        if room != self.room:
            self._warn(f"dropped {what} for another room ({escape_text(room)!r})")
            return None
        if not is_valid_user_name(sender) or sender == self.user:
            self._warn(f"dropped {what} from an invalid sender {escape_text(sender)!r}")
            return None
        member = self.members.get(sender)
        if member is None:
            self._warn(f"dropped {what} from {sender}, who is not a member of {self.room}")
            return None
        return member

    def _accepted(self, sender: str) -> collections.deque[int]:
        ids = self.accepted_key_ids.get(sender)
        if ids is None:
            ids = self.accepted_key_ids[sender] = collections.deque(maxlen=ACCEPTED_KEY_IDS_KEPT)
            while len(self.accepted_key_ids) > MAX_REMEMBERED_SENDERS:
                self.accepted_key_ids.popitem(last=False)
        else:
            self.accepted_key_ids.move_to_end(sender)
        return ids

    def accept_sender_key(self, delivery: pb.SenderKeyDelivery) -> list[ReceivedMessage]:
        """A member's sender key, in the order of "Receiving a sender key": member,
        current id (ignored silently), Merkle path and signature, trust, replay, prekey,
        unwrap; then it becomes the sender's current key. Returns the waiting messages
        of that sender that now open."""
        if delivery.room == self.room:
            self.last_seq = max(self.last_seq, delivery.seq)
        sender = delivery.sender
        member = self._member_for(delivery.room, sender, "a sender key")
        if member is None:
            return []
        current = self.peer_keys.get(sender)
        if current is not None and delivery.HasField("header") and current.key_id == delivery.header.key_id:
            return []  # known already; nothing is taken from it
        if not self._distribution_verifies(member.identity.signing_key, delivery):
            self._warn(
                f"dropped a sender key from {sender} in {self.room}: its signature does not verify "
                f"(tampered with, or not made by {sender})"
            )
            return []
        if not member.trusted:
            member.held_key = delivery
            self._warn(
                f"kept aside a sender key from {sender} in {self.room}: {sender}'s keys changed "
                f"and are not trusted (/trust {sender} to accept them)"
            )
            return []
        key_id = delivery.header.key_id
        accepted = self._accepted(sender)
        if key_id in accepted:
            self._warn(
                f"dropped a sender key from {sender} in {self.room}: key id {key_id:016x} "
                f"was already accepted once (replayed)"
            )
            return []
        key, why = self._unwrap(delivery)
        if key is None:
            self._warn(f"dropped a sender key from {sender} in {self.room}: {why}")
            return []
        accepted.append(key_id)
        self.peer_keys[sender] = key
        return self._release_pending(sender)

    def _release_pending(self, sender: str) -> list[ReceivedMessage]:
        waiting = [m for m in self.pending if m.sender == sender]
        if not waiting:
            return []
        self.pending = collections.deque(m for m in self.pending if m.sender != sender)
        opened = []
        for delivery in waiting:
            message = self._open_with_key(delivery)
            if message is not None:
                opened.append(message)
        return opened

    # -- opening ------------------------------------------------------------------------

    def _buffer(self, delivery: pb.MessageDelivery) -> None:
        if self.max_pending <= 0:
            self._warn(f"dropped a message from {delivery.sender}: its sender key has not arrived")
            return
        if len(self.pending) >= self.max_pending:
            oldest = self.pending.popleft()
            self._warn(
                f"dropped a message from {oldest.sender} in {self.room}: "
                f"too many messages waiting for their sender's key"
            )
        self.pending.append(delivery)

    def _is_new(self, delivery: pb.MessageDelivery) -> bool:
        """False for a message at or below ``last_seq``: processed already. Moves
        ``last_seq``. Number 0 is a relay that does not number its entries."""
        if delivery.room != self.room or delivery.seq == 0:
            return True
        if delivery.seq <= self.last_seq:
            return False
        self.last_seq = delivery.seq
        return True

    def open(self, delivery: pb.MessageDelivery) -> Optional[ReceivedMessage]:
        """Opens a delivery. Returns the message to show, or None if it was a duplicate
        (silently), dropped (with a warning) or kept until its sender's key arrives."""
        if not self._is_new(delivery):
            return None
        sender = delivery.sender
        member = self._member_for(delivery.room, sender, "a message")
        if member is None:
            return None
        if not member.trusted:
            self._warn(
                f"dropped a message from {sender} in {self.room}: {sender}'s keys changed "
                f"and are not trusted (/trust {sender} to accept them)"
            )
            return None
        if sender not in self.peer_keys:
            self._buffer(delivery)
            return None
        return self._open_with_key(delivery)

    def _open_with_key(self, delivery: pb.MessageDelivery) -> Optional[ReceivedMessage]:
        """Steps 1 to 6 of "Opening", once the sender's key is known."""
        sender = delivery.sender
        key = self.peer_keys[sender]
        envelope = self._open_sealed(key, delivery, live=True)
        if envelope is None:
            return None
        return ReceivedMessage(room=self.room, sender=sender, envelope=envelope, seq=delivery.seq)

    def _open_sealed(self, key: PeerSenderKey, delivery: pb.MessageDelivery, live: bool) -> Optional[Envelope]:
        sender, sealed = delivery.sender, delivery.sealed
        warn = self._warn if live else (lambda _m: None)
        if sealed.key_id != key.key_id:
            warn(
                f"dropped a message from {sender} in {self.room}: it is under a sender key that is not "
                f"{sender}'s current one (stale or replayed, or its sender key never arrived)"
            )
            return None
        if (
            len(sealed.signature) != ED25519_SIGNATURE_BYTES
            or sealed.device != DEVICE
            or not key.verifies(delivery.room, sender, sealed.key_id, sealed.iteration, sealed.ciphertext, sealed.signature)
        ):
            warn(
                f"dropped a message from {sender} in {self.room}: its signature does not verify "
                f"(tampered with or corrupted, or not sent by {sender})"
            )
            return None
        try:
            plaintext = key.open(delivery.room, sender, sealed.iteration, sealed.ciphertext)
        except TooFarAhead as exc:
            warn(f"dropped a message from {sender} in {self.room}: it is too far ahead ({exc}); it is lost")
            return None
        except Repeated as exc:
            warn(f"dropped a repeated message from {sender} in {self.room}: {exc}")
            return None
        except BadTag:
            warn(
                f"dropped a message from {sender} in {self.room}: it was tampered with or corrupted, or is "
                f"claimed for the wrong room, sender, key or iteration"
            )
            return None
        try:
            return decode_envelope(plaintext, sender)
        except EnvelopeError as exc:
            warn(f"dropped an invalid message from {sender} in {self.room}: {exc}")
            return None

    # -- history ------------------------------------------------------------------------

    def _history_signers(self, former_members: Iterable[pb.PublicIdentity]) -> dict[str, rsa.RSAPublicKey]:
        """Whose entries a history may hold, with their signing keys: ourselves, the
        trusted members, and the answer's former members (checked and pinned as members
        are; those whose keys are not trusted are left out)."""
        signers = {self.user: self.identity.signing_key.public_key()}
        signers.update({n: m.identity.signing_key for n, m in self.members.items() if m.trusted})
        for identity in former_members:
            if identity.user == self.user or identity.user in signers or identity.user in self.members:
                continue
            try:
                peer = PeerIdentity.from_public(identity)
            except IdentityError as exc:
                self._warn(f"ignoring former member {escape_text(identity.user)!r} in the history of {self.room}: {exc}")
                continue
            if self._trust(peer):
                signers[peer.user] = peer.signing_key
        return signers

    def open_history(self, history: pb.History) -> list[HistoryMessage]:
        """Opens a ``History`` answer: its text messages in sequence order, with at most
        one warning summing up what could not be read.

        It works on keys of its own, taken from the answer, and leaves the live state
        alone. Each (sender, key id) is unwrapped at most once; every copy is checked
        (path and signature) before it is unwrapped, every message (Ed25519) before
        anything is derived.
        """
        signers = self._history_signers(history.former_members)
        keys: dict[tuple[str, int], PeerSenderKey] = {}
        tried: set[tuple[str, int]] = set()
        messages: list[HistoryMessage] = []
        rejected_keys = unreadable = unshowable = 0
        for entry in history.entries:
            which = entry.WhichOneof("kind")
            if which == "sender_key":
                delivery = entry.sender_key
                if delivery.room != self.room or not delivery.HasField("header"):
                    rejected_keys += 1
                    continue
                ident = (delivery.sender, delivery.header.key_id)
                if ident in tried:
                    continue
                signing_key = signers.get(delivery.sender)
                if signing_key is None or not self._distribution_verifies(signing_key, delivery):
                    rejected_keys += 1
                    continue
                tried.add(ident)
                key, _why = self._unwrap(delivery)
                if key is None:
                    rejected_keys += 1
                else:
                    keys[ident] = key
            elif which == "message":
                delivery = entry.message
                key = keys.get((delivery.sender, delivery.sealed.key_id))
                envelope = None
                if key is not None and delivery.room == self.room and delivery.sender in signers:
                    envelope = self._open_sealed(key, delivery, live=False)
                if envelope is None:
                    unreadable += 1
                elif envelope.kind == RECEIPT:
                    continue  # routine traffic, never part of the history shown
                elif envelope.kind != TEXT:
                    unshowable += 1
                else:
                    messages.append(HistoryMessage(seq=delivery.seq, sender=delivery.sender, envelope=envelope))
        messages.sort(key=lambda m: m.seq)
        self._history_summary(rejected_keys, unreadable, unshowable)
        return messages

    def _history_summary(self, rejected_keys: int, unreadable: int, unshowable: int) -> None:
        parts = []
        if unreadable:
            parts.append(f"{unreadable} older message(s) could not be verified or decrypted")
        if unshowable:
            parts.append(f"{unshowable} message(s) of a kind this version cannot show")
        if rejected_keys:
            parts.append(
                f"{rejected_keys} sender key(s) were rejected (bad signature, unknown sender, erased prekey "
                f"or not for you)"
            )
        if parts:
            self._warn(f"history of {self.room}: " + "; ".join(parts))
