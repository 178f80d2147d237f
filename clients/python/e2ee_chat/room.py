"""The end-to-end state of one room, with no I/O: sender keys and their replay windows,
the members and whether their keys are trusted, sealing and opening messages, sequence
numbers for the catch-up, and the history (:class:`RoomState`); and the messages it
hands out to show (:class:`ReceivedMessage`, :class:`HistoryMessage`)."""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Callable, Iterable, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .binding import (
    message_ad,
    message_signed_bytes,
    sender_key_signed_bytes,
    unwrap_sender_key,
    verify_signature,
    wrap_sender_key,
)
from .envelope import (
    Envelope,
    EnvelopeError,
    decode_envelope,
    encode_envelope,
    escape_text,
    format_line,
)
from .identity import Identity, IdentityError, PeerIdentity
from .proto import pb
from .protocol import (
    ACCEPTED_KEY_IDS_KEPT,
    MAX_ENVELOPE_BYTES,
    MAX_KEYS_PER_DISTRIBUTION,
    MAX_MESSAGES_PER_KEY,
    MAX_PENDING_MESSAGES,
    NONCE_BYTES,
    REPLAY_WINDOW,
    SENDER_KEY_BYTES,
    TAG_BYTES,
    is_valid_room_name,
    is_valid_user_name,
)


# ---------------------------------------------------------------------------------------
# Sender keys and the replay window
# ---------------------------------------------------------------------------------------


class ReplayWindow:
    """Which counters under one sender key were opened: the highest, and a bitmap of the
    64 counters at and below it. Catches a relay that delivers a message twice."""

    def __init__(self) -> None:
        self.highest: Optional[int] = None
        self._bits = 0  # bit i set: counter highest - i was opened

    def would_accept(self, counter: int) -> bool:
        """True if ``counter`` was not opened yet and is inside the window."""
        if self.highest is None or counter > self.highest:
            return True
        offset = self.highest - counter
        return offset < REPLAY_WINDOW and not (self._bits >> offset) & 1

    def mark(self, counter: int) -> None:
        """Records ``counter`` as opened; call only for a message that decrypted and
        whose envelope parsed."""
        if self.highest is None:
            self.highest, self._bits = counter, 1
        elif counter > self.highest:
            shift = counter - self.highest
            self._bits = ((self._bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.highest = counter
        else:
            self._bits |= 1 << (self.highest - counter)


@dataclasses.dataclass
class OwnSenderKey:
    """This client's current sender key for a room, with its message counter."""

    key: bytes
    key_id: int
    next_counter: int = 0

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> "OwnSenderKey":
        return cls(key=rng(SENDER_KEY_BYTES), key_id=int.from_bytes(rng(8), "big"))


@dataclasses.dataclass
class PeerSenderKey:
    """Another member's current sender key, as unwrapped, with its replay window."""

    key: bytes
    key_id: int
    window: ReplayWindow = dataclasses.field(default_factory=ReplayWindow)


@dataclasses.dataclass
class Member:
    """Another member of the room, as the relay presented it.

    ``trusted`` is False when the relay presents keys that differ from the ones pinned
    for that user: then nothing is wrapped for it and nothing from it is used, until
    the user accepts the new keys (:meth:`RoomState.trust_member`).
    """

    identity: PeerIdentity
    trusted: bool = True
    #: The latest sender key delivery from an untrusted member, kept (not unwrapped)
    #: so that it can be used if the user accepts the member's new keys.
    held_key: Optional[pb.SenderKeyDelivery] = None
    #: No longer a member (``Joined.former_members``): known only to check and open the
    #: entries it left behind that the catch-up brings. Nothing is wrapped for it, it is
    #: not listed, and it is forgotten at ``CaughtUp``.
    former: bool = False


@dataclasses.dataclass(frozen=True)
class ReceivedMessage:
    """A message that opened and checked out, ready to show."""

    room: str
    sender: str
    envelope: Envelope

    @property
    def showable(self) -> bool:
        """False for a kind of message this version does not know (not a ``text``)."""
        return self.envelope.kind == "text"

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

    Inputs are the relay's events (protobuf messages); outputs are the protobuf frames to
    send (``SendMessage``, ``DistributeSenderKey``) and the messages to show. Anything
    dropped is reported through ``warn`` (by default appended to ``self.warnings``) and
    never to the relay.

    ``trust(peer)`` decides whether a member's presented keys may be used (key pinning
    lives outside, in the CLI); by default every identity that verifies is trusted.

    Delivery is durable: ``last_seq`` is the highest sequence number of the room
    processed. A message at or below it was processed already and is dropped silently;
    the caller saves it and joins with it (``JoinRoom.after_seq``) next time.
    """

    def __init__(
        self,
        room: str,
        identity: Identity,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        warn: Optional[Callable[[str], None]] = None,
        max_pending: int = MAX_PENDING_MESSAGES,
        trust: Callable[[PeerIdentity], bool] = _trust_everyone,
    ) -> None:
        if not is_valid_room_name(room):
            raise ValueError(f"invalid room name {room!r}")
        self.room = room
        self.user = identity.user
        self.identity = identity
        self._rng = rng
        self._clock_ms = clock_ms
        self._trust = trust
        self.warnings: list[str] = []
        self._warn = warn if warn is not None else self.warnings.append
        self.max_pending = max_pending
        #: Other members (current and former), with their checked identities.
        self.members: dict[str, Member] = {}
        #: Each other member's current sender key (only the current one is kept).
        self.peer_keys: dict[str, PeerSenderKey] = {}
        #: Per sender, the key ids already accepted (the last 256): never accepted again.
        #: Kept when a member leaves, so that a relay cannot bring an old key back.
        self.accepted_key_ids: dict[str, collections.deque[int]] = {}
        #: Messages whose sender's key has not arrived yet, oldest first (signatures
        #: already checked).
        self.pending: collections.deque[pb.MessageDelivery] = collections.deque()
        self.own_key = OwnSenderKey.generate(rng)
        #: The highest sequence number of the room processed (our own entries aside).
        self.last_seq = 0

    # -- distributing our key ---------------------------------------------------------

    def _wrap_for(self, recipient: str, encryption_key: rsa.RSAPublicKey) -> pb.WrappedSenderKey:
        """Our current key wrapped for ``recipient`` and signed."""
        key = self.own_key
        wrapped = wrap_sender_key(encryption_key, key.key, self.room, self.user, recipient, key.key_id)
        signature = self.identity.sign(
            sender_key_signed_bytes(self.room, self.user, recipient, key.key_id, wrapped)
        )
        return pb.WrappedSenderKey(recipient=recipient, wrapped_key=wrapped, signature=signature)

    def _distributions(self, recipients: Iterable[str]) -> list[pb.DistributeSenderKey]:
        """Wraps and signs the current key for ourselves (first: the relay keeps that
        copy for our history) and for the trusted current members among ``recipients``,
        in frames of at most 32 copies (a frame stays under 64 KiB even with 4096-bit
        keys). Always at least one frame."""
        names = sorted({n for n in recipients if self.is_current_member(n) and self.members[n].trusted})
        copies = [self._wrap_for(self.user, self.identity.encryption_key.public_key())]
        copies += [self._wrap_for(n, self.members[n].identity.encryption_key) for n in names]
        return [
            pb.DistributeSenderKey(
                room=self.room, key_id=self.own_key.key_id, keys=copies[i : i + MAX_KEYS_PER_DISTRIBUTION]
            )
            for i in range(0, len(copies), MAX_KEYS_PER_DISTRIBUTION)
        ]

    def rotate(self) -> list[pb.DistributeSenderKey]:
        """Makes a new sender key and wraps it for every current (trusted) member.

        The frames must be sent before any message sealed under the new key.
        """
        self.own_key = OwnSenderKey.generate(self._rng)
        return self._distributions(self.members)

    def _forget_keys_of(self, name: str) -> None:
        self.peer_keys.pop(name, None)
        kept = collections.deque(m for m in self.pending if m.sender != name)
        dropped = len(self.pending) - len(kept)
        self.pending = kept
        if dropped:
            self._warn(f"dropped {dropped} message(s) from {name} in {self.room}: its sender key never arrived")

    def _add_member(self, identity: pb.PublicIdentity, what: str, former: bool = False) -> Optional[str]:
        """Checks a member presented by the relay; returns its name, or None if ignored.

        Ignored (with a warning): an identity that does not verify, a member under our
        own name (never trusted, whatever its keys), and a second announcement of a
        current member (it could otherwise reset what we know of that member's keys). A
        former member becomes a current one when announced as a member; a former member
        who is a current one stays current.
        """
        if identity.user == self.user:
            self._warn(f"ignoring a member under your own name ({self.user}) in {what} of {self.room}")
            return None
        known = self.members.get(identity.user)
        if known is not None and (former or not known.former):
            if not former:
                self._warn(f"ignoring a second announcement of member {identity.user} in {what} of {self.room}")
            return None
        try:
            peer = PeerIdentity.from_public(identity)
        except IdentityError as exc:
            self._warn(f"ignoring member {escape_text(identity.user)!r} in {what} of {self.room}: {exc}")
            return None
        name = peer.user
        if known is not None:  # a former member back: it will distribute a new key
            self.peer_keys.pop(name, None)
        self.members[name] = Member(identity=peer, trusted=bool(self._trust(peer)), former=former)
        return name

    def is_current_member(self, user: str) -> bool:
        member = self.members.get(user)
        return member is not None and not member.former

    def current_members(self) -> list[str]:
        """The other members, sorted; former members are not listed."""
        return sorted(n for n, m in self.members.items() if not m.former)

    # -- membership events ------------------------------------------------------------

    def on_joined(self, joined: pb.Joined, after_seq: Optional[int] = None) -> list[pb.DistributeSenderKey]:
        """Our join was accepted (``after_seq`` is what the join asked for): note where
        the room's numbering starts, record the members (and the former members the
        catch-up needs), and give each trusted member, and ourselves, a fresh sender key.

        A fresh key on every join: it reaches whoever joined meanwhile and not whoever
        left, and a restarted client has lost its old one anyway.
        """
        self.last_seq, warning = starting_seq(joined.resumed, after_seq, joined.last_seq)
        if warning is not None:
            self._warn(f"[{self.room}] {warning}")
        for identity in joined.members:
            self._add_member(identity, "Joined")
        for identity in joined.former_members:
            self._add_member(identity, "Joined (former members)", former=True)
        return self.rotate()

    def caught_up(self) -> None:
        """The catch-up is over: forget the former members it needed."""
        for name in [n for n, m in self.members.items() if m.former]:
            del self.members[name]
            self._forget_keys_of(name)

    def member_joined(self, identity: pb.PublicIdentity) -> Optional[list[pb.DistributeSenderKey]]:
        """A newcomer: wrap our *current* key for it alone. No one rotates on a join.

        Returns None when the newcomer is ignored (its identity does not verify), else
        the distributions to send (only our own copy for a member whose keys are not
        trusted).
        """
        name = self._add_member(identity, "MemberJoined")
        if name is None:
            return None
        return self._distributions([name])

    def member_left(self, user: str) -> list[pb.DistributeSenderKey]:
        """Someone left (or was kicked): forget its keys and rotate ours, so it cannot
        read what follows.

        Returns the distributions of the new key, to send before any further message.
        """
        self.members.pop(user, None)
        self._forget_keys_of(user)
        return self.rotate()

    def trust_member(self, user: str) -> list[pb.DistributeSenderKey]:
        """The user accepted the keys presented for ``user`` (already re-pinned by the
        caller): use the sender key it sent meanwhile, and rotate our key.

        Rotating (rather than giving ``user`` the current key) means the member never
        gets a key that sealed what was said while it was not trusted. Returns the
        distributions of the new key, for every trusted member.
        """
        member = self.members.get(user)
        if member is None:
            raise KeyError(user)
        if member.trusted:
            return []
        member.trusted = True
        held, member.held_key = member.held_key, None
        if held is not None:
            self.accept_sender_key(held)
        return self.rotate()

    def untrusted_members(self) -> list[str]:
        return sorted(n for n, m in self.members.items() if not m.trusted and not m.former)

    # -- sealing ----------------------------------------------------------------------

    def seal_plaintext(self, plaintext: bytes) -> tuple[pb.SendMessage, list[pb.DistributeSenderKey]]:
        """Encrypts and signs raw envelope bytes under the current key.

        Returns the SendMessage and any key distributions that must be sent *before* it
        (when the key reached its message limit and was rotated).
        """
        distributions: list[pb.DistributeSenderKey] = []
        if self.own_key.next_counter >= MAX_MESSAGES_PER_KEY:
            distributions = self.rotate()
        key = self.own_key
        counter = key.next_counter
        nonce = self._rng(NONCE_BYTES)
        ad = message_ad(self.room, self.user, key.key_id, counter)
        ciphertext = AESGCM(key.key).encrypt(nonce, plaintext, ad)
        key.next_counter += 1
        signature = self.identity.sign(
            message_signed_bytes(self.room, self.user, key.key_id, counter, nonce, ciphertext)
        )
        sealed = pb.SealedMessage(
            key_id=key.key_id, counter=counter, nonce=nonce, ciphertext=ciphertext, signature=signature
        )
        return pb.SendMessage(room=self.room, sealed=sealed), distributions

    def seal_text(self, text: str) -> tuple[pb.SendMessage, list[pb.DistributeSenderKey]]:
        """Seals a text message; raises :class:`MessageTooLong` past 32 KiB of envelope."""
        plaintext = encode_envelope(self.user, text, self._clock_ms())
        if len(plaintext) > MAX_ENVELOPE_BYTES:
            raise MessageTooLong(
                f"the message is {len(plaintext)} bytes long; the limit is {MAX_ENVELOPE_BYTES} bytes"
            )
        return self.seal_plaintext(plaintext)

    # -- checks shared by live frames and history ---------------------------------------

    def _sender_key_verifies(self, signing_key: rsa.RSAPublicKey, delivery: pb.SenderKeyDelivery) -> bool:
        """The signature of a key wrapped for us, by its sender: checked before any unwrap."""
        signed = sender_key_signed_bytes(
            self.room, delivery.sender, self.user, delivery.key_id, delivery.wrapped_key
        )
        return verify_signature(signing_key, delivery.signature, signed)

    def _unwrap(self, delivery: pb.SenderKeyDelivery) -> bytes:
        """Unwraps a key whose signature verified; ``ValueError`` if it does not open."""
        return unwrap_sender_key(
            self.identity.encryption_key, delivery.wrapped_key, self.room, delivery.sender, self.user, delivery.key_id
        )

    @staticmethod
    def _well_formed(sealed: pb.SealedMessage) -> bool:
        return len(sealed.nonce) == NONCE_BYTES and len(sealed.ciphertext) >= TAG_BYTES

    def _message_verifies(self, signing_key: rsa.RSAPublicKey, delivery: pb.MessageDelivery) -> bool:
        """The signature of a message by its sender: checked before any decryption."""
        sealed = delivery.sealed
        signed = message_signed_bytes(
            self.room, delivery.sender, sealed.key_id, sealed.counter, sealed.nonce, sealed.ciphertext
        )
        return verify_signature(signing_key, sealed.signature, signed)

    def _decrypt(self, key: bytes, delivery: pb.MessageDelivery) -> Envelope:
        """Decrypts a message whose signature verified and parses its envelope; raises
        ``InvalidTag`` or :class:`EnvelopeError`."""
        sealed = delivery.sealed
        ad = message_ad(self.room, delivery.sender, sealed.key_id, sealed.counter)
        plaintext = AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, ad)
        return decode_envelope(plaintext, delivery.sender)

    # -- receiving keys ---------------------------------------------------------------

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

    def accept_sender_key(self, delivery: pb.SenderKeyDelivery) -> list[ReceivedMessage]:
        """Verifies, then unwraps a member's sender key and makes it that member's
        current key.

        Returns the buffered messages from that sender that now open, in arrival order.
        A key whose signature does not verify, that was accepted before, or that does
        not unwrap is dropped with a warning. The sender's current key delivered again
        (a catch-up starts with the keys in force) is ignored silently. Every key counts
        for ``last_seq``, whatever its number: the keys in force come numbered at or
        below where the catch-up starts.
        """
        if delivery.room == self.room:
            self.last_seq = max(self.last_seq, delivery.seq)
        sender = delivery.sender
        member = self._member_for(delivery.room, sender, "a sender key")
        if member is None:
            return []
        current = self.peer_keys.get(sender)
        if current is not None and current.key_id == delivery.key_id:
            return []  # known already; nothing is taken from it
        if not member.trusted:
            member.held_key = delivery
            self._warn(
                f"dropped a sender key from {sender} in {self.room}: {sender}'s keys changed "
                f"and are not trusted (/trust {sender} to accept them)"
            )
            return []
        if not self._sender_key_verifies(member.identity.signing_key, delivery):
            self._warn(
                f"dropped a sender key from {sender} in {self.room}: its signature does not verify "
                f"(tampered with, or not made by {sender})"
            )
            return []
        accepted = self.accepted_key_ids.setdefault(
            sender, collections.deque(maxlen=ACCEPTED_KEY_IDS_KEPT)
        )
        if delivery.key_id in accepted:
            self._warn(
                f"dropped a sender key from {sender} in {self.room}: key id {delivery.key_id:016x} "
                f"was already accepted once (replayed)"
            )
            return []
        try:
            key = self._unwrap(delivery)
        except ValueError:
            self._warn(f"dropped a sender key from {sender} in {self.room}: it does not unwrap")
            return []
        accepted.append(delivery.key_id)
        self.peer_keys[sender] = PeerSenderKey(key=key, key_id=delivery.key_id)
        return self._release_pending(sender)

    def _release_pending(self, sender: str) -> list[ReceivedMessage]:
        waiting = [m for m in self.pending if m.sender == sender]
        if not waiting:
            return []
        self.pending = collections.deque(m for m in self.pending if m.sender != sender)
        opened = []
        for delivery in waiting:
            message = self._open_verified(delivery)
            if message is not None:
                opened.append(message)
        return opened

    # -- opening ----------------------------------------------------------------------

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
        """False for a message at or below ``last_seq``: processed already (a catch-up
        overlapping what we saw). Moves ``last_seq``. Number 0 is a relay that does not
        number its entries: nothing to go by but the replay windows."""
        if delivery.room != self.room or delivery.seq == 0:
            return True
        if delivery.seq <= self.last_seq:
            return False
        self.last_seq = delivery.seq
        return True

    def open(self, delivery: pb.MessageDelivery) -> Optional[ReceivedMessage]:
        """Opens a delivery. Returns the message to show, or None if it was a duplicate
        (silently), dropped (with a warning) or buffered until its sender's key arrives.

        The sender's signature is checked before anything is decrypted.
        """
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
        if not self._well_formed(delivery.sealed):
            self._warn(f"dropped a malformed message from {sender} in {self.room}")
            return None
        if not self._message_verifies(member.identity.signing_key, delivery):
            self._warn(
                f"dropped a message from {sender} in {self.room}: its signature does not verify, "
                f"it was tampered with or corrupted, or not sent by {sender}"
            )
            return None
        return self._open_verified(delivery)

    def _open_verified(self, delivery: pb.MessageDelivery) -> Optional[ReceivedMessage]:
        """Opens a delivery whose signature verified."""
        sender, sealed = delivery.sender, delivery.sealed
        peer = self.peer_keys.get(sender)
        if peer is None:
            self._buffer(delivery)
            return None
        if sealed.key_id != peer.key_id:
            self._warn(f"dropped a message from {sender} in {self.room}: stale or unknown sender key")
            return None
        if not peer.window.would_accept(sealed.counter):
            self._warn(f"dropped a replayed or too old message from {sender} in {self.room}")
            return None
        try:
            envelope = self._decrypt(peer.key, delivery)
        except InvalidTag:
            self._warn(
                f"dropped a message from {sender} in {self.room}: it was tampered with or corrupted"
            )
            return None
        except EnvelopeError as exc:
            self._warn(f"dropped an invalid message from {sender} in {self.room}: {exc}")
            return None
        peer.window.mark(sealed.counter)
        return ReceivedMessage(room=self.room, sender=sender, envelope=envelope)

    # -- history ------------------------------------------------------------------------

    def _history_signers(self, former_members: Iterable[pb.PublicIdentity]) -> dict[str, rsa.RSAPublicKey]:
        """Whose entries a history may hold, with their signing keys: ourselves (our own
        key copies and messages), the trusted members, and the answer's former members
        (checked and pinned as members are; those whose keys are not trusted are left
        out)."""
        signers = {self.user: self.identity.signing_key.public_key()}
        signers.update({n: m.identity.signing_key for n, m in self.members.items() if m.trusted})
        for identity in former_members:
            if identity.user == self.user or identity.user in self.members or identity.user in signers:
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

        It works on its own keys, taken from the answer's entries, and leaves the live
        state alone (current keys, accepted key ids, replay windows, ``last_seq``):
        history is shown again, not received again. Each entry is checked against its
        sender's signing key before anything is unwrapped or decrypted, as live ones
        are.
        """
        signers = self._history_signers(history.former_members)
        keys: dict[tuple[str, int], bytes] = {}
        seen: set[tuple[str, int, int]] = set()
        messages: list[HistoryMessage] = []
        rejected_keys = unreadable = unshowable = 0
        for entry in history.entries:
            which = entry.WhichOneof("kind")
            if which == "sender_key":
                delivery = entry.sender_key
                key = self._history_key(delivery, signers.get(delivery.sender))
                if key is None:
                    rejected_keys += 1
                else:
                    keys[(delivery.sender, delivery.key_id)] = key
            elif which == "message":
                delivery = entry.message
                message = self._history_message(delivery, keys, signers.get(delivery.sender))
                sealed = delivery.sealed
                identity = (delivery.sender, sealed.key_id, sealed.counter)
                if message is None or identity in seen:  # a repeated entry is not shown twice
                    unreadable += 1
                elif message.envelope.kind != "text":
                    unshowable += 1
                else:
                    seen.add(identity)
                    messages.append(message)
        messages.sort(key=lambda m: m.seq)
        self._history_summary(rejected_keys, unreadable, unshowable)
        return messages

    def _history_key(self, delivery: pb.SenderKeyDelivery, signing_key: Optional[rsa.RSAPublicKey]) -> Optional[bytes]:
        """A sender key of a history answer, checked then unwrapped; None if unusable."""
        if signing_key is None or not self._sender_key_verifies(signing_key, delivery):
            return None
        try:
            return self._unwrap(delivery)
        except ValueError:
            return None

    def _history_message(
        self,
        delivery: pb.MessageDelivery,
        keys: dict[tuple[str, int], bytes],
        signing_key: Optional[rsa.RSAPublicKey],
    ) -> Optional[HistoryMessage]:
        """A message of a history answer, checked then opened; None if unreadable."""
        if signing_key is None or not self._well_formed(delivery.sealed):
            return None
        if not self._message_verifies(signing_key, delivery):
            return None
        key = keys.get((delivery.sender, delivery.sealed.key_id))
        if key is None:
            return None
        try:
            envelope = self._decrypt(key, delivery)
        except (InvalidTag, EnvelopeError):
            return None
        return HistoryMessage(seq=delivery.seq, sender=delivery.sender, envelope=envelope)

    def _history_summary(self, rejected_keys: int, unreadable: int, unshowable: int) -> None:
        parts = []
        if unreadable:
            parts.append(f"{unreadable} older message(s) could not be verified or decrypted")
        if unshowable:
            parts.append(f"{unshowable} message(s) of a kind this version cannot show")
        if rejected_keys:
            parts.append(
                f"{rejected_keys} sender key(s) were rejected (bad signature, unknown sender or not for you)"
            )
        if parts:
            self._warn(f"history of {self.room}: " + "; ".join(parts))
