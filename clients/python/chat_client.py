#!/usr/bin/env python3
"""A command-line client for the chat.v1 end-to-end encrypted relay.

Written from docs/PROTOCOL.md and proto/chat/v1/chat.proto alone, to show that they are
enough to build a compatible client. The file has three layers:

* the protocol and crypto (names, key encodings, signed byte strings, OAEP labels,
  associated data, the JSON envelope, the replay window, identities and
  :class:`RoomState`), which do no I/O and can be used from tests without the CLI;
* the files of a user's home: the two identity keys and the pinned contacts;
* the CLI (:class:`ChatClient` and :func:`main`), which logs in and drives one room over
  gRPC with the same command line and stdin/stdout/stderr contract as the Rust
  ``chat-client``.

Usage::

    chat_client.py --server http://127.0.0.1:5555 --user NAME --room ROOM \\
                   --home DIR [--key-bits 2048|3072|4096] [--ca-cert FILE]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import ipaddress
import json
import os
import queue
import re
import secrets
import stat
import struct
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

# gRPC core logs some connection failures (a refused TLS handshake) on stderr by itself;
# this client reports them in its own one error line. GRPC_VERBOSITY=INFO shows them again.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# The generated stubs live next to this file (clients/python/generated), made by setup.sh.
sys.path.insert(0, str(Path(__file__).resolve().parent / "generated"))

import grpc  # noqa: E402
from cryptography.exceptions import InvalidSignature, InvalidTag  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from chat.v1 import chat_pb2 as pb  # noqa: E402
from chat.v1 import chat_pb2_grpc as pb_grpc  # noqa: E402

PROG = "chat_client"

# ---------------------------------------------------------------------------------------
# Constants from PROTOCOL.md
# ---------------------------------------------------------------------------------------

SENDER_KEY_LABEL_PREFIX = b"chat.v1/sender-key"
MESSAGE_AD_PREFIX = b"chat.v1/message"
IDENTITY_SIGNATURE_PREFIX = b"chat.v1/identity"
LOGIN_SIGNATURE_PREFIX = b"chat.v1/login"
MESSAGE_SIGNATURE_PREFIX = b"chat.v1/message-signature"
SENDER_KEY_SIGNATURE_PREFIX = b"chat.v1/sender-key-signature"
FINGERPRINT_PREFIX = b"chat.v1/fingerprint"
SAFETY_NUMBER_PREFIX = b"chat.v1/safety-number"
SENDER_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
#: RSA-PSS salt length of every signature.
PSS_SALT_BYTES = 32
#: Recipients per DistributeSenderKey frame, so a frame stays under the relay's limit.
MAX_KEYS_PER_DISTRIBUTION = 32
#: A key seals at most this many messages; then its owner rotates.
MAX_MESSAGES_PER_KEY = 1 << 24
#: Largest JSON envelope (the sealed plaintext) a client sends.
MAX_ENVELOPE_BYTES = 32 * 1024
#: Width of the replay window (as in IPsec).
REPLAY_WINDOW = 64
#: Messages kept while their sender's key has not arrived (like the Rust client).
MAX_PENDING_MESSAGES = 1024
#: Sender key ids remembered per sender, never to be accepted again (like the Rust client).
ACCEPTED_KEY_IDS_KEPT = 256
#: Frames from the relay can be this large (a Joined lists every member's key).
MAX_INBOUND_FRAME_BYTES = 4 * 1024 * 1024
ENVELOPE_VERSION = 1
KEY_BITS_ALLOWED = (2048, 3072, 4096)
DEFAULT_KEY_BITS = 3072
MIN_PEER_KEY_BITS = 2048
MAX_PEER_KEY_BITS = 4096
#: Seconds to wait for a unary RPC (CreateChallenge, Login).
RPC_TIMEOUT_SECONDS = 30
#: Logins tried before a refusal stands: the second one with a fresh challenge.
LOGIN_TRIES = 2

_USER_RE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
_ROOM_RE = re.compile(r"[A-Za-z0-9_.#\-]{1,64}")

# ---------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------


def is_valid_user_name(name: str) -> bool:
    """1 to 32 of ``A-Z a-z 0-9 _ . -``; the relay and every client refuse anything else."""
    return isinstance(name, str) and _USER_RE.fullmatch(name) is not None


def is_valid_room_name(name: str) -> bool:
    """1 to 64 of ``A-Z a-z 0-9 _ . # -``."""
    return isinstance(name, str) and _ROOM_RE.fullmatch(name) is not None


# ---------------------------------------------------------------------------------------
# Byte encodings that bind keys, messages and signatures to their context
# ---------------------------------------------------------------------------------------


def enc_str(text: str) -> bytes:
    """``str(x)`` of PROTOCOL.md: ``u16be(len) || UTF-8``."""
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("field too long for a u16 length prefix")
    return struct.pack(">H", len(data)) + data


def enc_bytes(data: bytes) -> bytes:
    """``bytes(x)`` of PROTOCOL.md: ``u32be(len) || x``."""
    data = bytes(data)
    if len(data) > 0xFFFFFFFF:
        raise ValueError("field too long for a u32 length prefix")
    return struct.pack(">I", len(data)) + data


def enc_u64(n: int) -> bytes:
    """``u64be(n)``: 8 bytes, big-endian."""
    return struct.pack(">Q", n)


# Kept under its old name: the README documents it.
_u16_prefixed = enc_str


def sender_key_label(room: str, sender: str, recipient: str, key_id: int) -> bytes:
    """The OAEP label: binds a wrapped key to its room, owner, recipient and id.

    Without it a relay could present alice's key to bob as carol's, or move it to
    another room.
    """
    return (
        SENDER_KEY_LABEL_PREFIX
        + enc_str(room)
        + enc_str(sender)
        + enc_str(recipient)
        + enc_u64(key_id)
    )


def message_ad(room: str, sender: str, key_id: int, counter: int) -> bytes:
    """AES-GCM associated data: a message cannot be moved to another room, sender,
    key or counter without its tag failing."""
    return MESSAGE_AD_PREFIX + enc_str(room) + enc_str(sender) + enc_u64(key_id) + enc_u64(counter)


def identity_signed_bytes(user: str, signing_public_der: bytes, encryption_public_der: bytes) -> bytes:
    """What ``PublicIdentity.signature`` signs."""
    return (
        IDENTITY_SIGNATURE_PREFIX
        + enc_str(user)
        + enc_bytes(signing_public_der)
        + enc_bytes(encryption_public_der)
    )


def login_signed_bytes(user: str, challenge: bytes) -> bytes:
    """What ``LoginRequest.signature`` signs."""
    return LOGIN_SIGNATURE_PREFIX + enc_str(user) + enc_bytes(challenge)


def message_signed_bytes(
    room: str, sender: str, key_id: int, counter: int, nonce: bytes, ciphertext: bytes
) -> bytes:
    """What ``SealedMessage.signature`` signs."""
    return (
        MESSAGE_SIGNATURE_PREFIX
        + enc_str(room)
        + enc_str(sender)
        + enc_u64(key_id)
        + enc_u64(counter)
        + enc_bytes(nonce)
        + enc_bytes(ciphertext)
    )


def sender_key_signed_bytes(room: str, sender: str, recipient: str, key_id: int, wrapped_key: bytes) -> bytes:
    """What ``WrappedSenderKey.signature`` (delivered as ``SenderKeyDelivery.signature``) signs."""
    return (
        SENDER_KEY_SIGNATURE_PREFIX
        + enc_str(room)
        + enc_str(sender)
        + enc_str(recipient)
        + enc_u64(key_id)
        + enc_bytes(wrapped_key)
    )


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_BYTES)


def sign(signing_key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt."""
    return signing_key.sign(data, _pss(), hashes.SHA256())


def verify_signature(signing_public_key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is a valid RSA-PSS signature of ``data``; never raises."""
    try:
        signing_public_key.verify(bytes(signature), data, _pss(), hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=label
    )


def wrap_sender_key(
    recipient_key: rsa.RSAPublicKey,
    key: bytes,
    room: str,
    sender: str,
    recipient: str,
    key_id: int,
) -> bytes:
    """RSA-OAEP(SHA-256) of the raw 32-byte sender key under the recipient's encryption key."""
    return recipient_key.encrypt(key, _oaep(sender_key_label(room, sender, recipient, key_id)))


def unwrap_sender_key(
    own_key: rsa.RSAPrivateKey,
    wrapped: bytes,
    room: str,
    sender: str,
    recipient: str,
    key_id: int,
) -> bytes:
    """Inverse of :func:`wrap_sender_key`; raises ``ValueError`` if it does not open
    or is not 32 bytes."""
    key = own_key.decrypt(wrapped, _oaep(sender_key_label(room, sender, recipient, key_id)))
    if len(key) != SENDER_KEY_BYTES:
        raise ValueError(f"unwrapped key is {len(key)} bytes, not {SENDER_KEY_BYTES}")
    return key


def public_key_der(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bytes:
    """The wire form of a public key: DER X.509 SubjectPublicKeyInfo."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def parse_public_key(der: bytes) -> rsa.RSAPublicKey:
    """Parses a peer's public key; ``ValueError`` unless it is RSA of 2048..4096 bits."""
    try:
        key = serialization.load_der_public_key(bytes(der))
    except Exception as exc:  # noqa: BLE001 - cryptography raises several kinds
        raise ValueError(f"not a DER SubjectPublicKeyInfo ({exc})") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA key")
    if not MIN_PEER_KEY_BITS <= key.key_size <= MAX_PEER_KEY_BITS:
        raise ValueError(f"{key.key_size}-bit key is outside 2048..4096 bits")
    return key


# ---------------------------------------------------------------------------------------
# Fingerprints and safety numbers
# ---------------------------------------------------------------------------------------


def fingerprint(signing_public_der: bytes, encryption_public_der: bytes) -> bytes:
    """The 32-byte fingerprint of an identity (both public keys, DER)."""
    return hashlib.sha256(
        FINGERPRINT_PREFIX + enc_bytes(signing_public_der) + enc_bytes(encryption_public_der)
    ).digest()


def format_fingerprint(fp: bytes) -> str:
    """As the Rust client shows it: 64 upper-case hex digits in 16 groups of 4."""
    digits = fp.hex().upper()
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _safety_half(user: str, fp: bytes) -> str:
    h = hashlib.sha256(SAFETY_NUMBER_PREFIX + enc_str(user) + fp).digest()
    return "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(user_a: str, fp_a: bytes, user_b: str, fp_b: bytes) -> str:
    """The safety number of a pair of users: 60 digits in 12 groups of 5, the same
    whichever of the two computes it."""
    halves = sorted([_safety_half(user_a, fp_a), _safety_half(user_b, fp_b)])
    digits = "".join(halves)
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))


# ---------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------


class IdentityError(ValueError):
    """A public identity that must not be used (bad name, bad key, bad signature)."""


def _same_key(a: rsa.RSAPublicKey, b: rsa.RSAPublicKey) -> bool:
    return a.public_numbers().n == b.public_numbers().n


class Identity:
    """This user's identity: a signing key pair (RSA-PSS) and a different encryption
    key pair (RSA-OAEP), bound to the user name by a self-signature."""

    def __init__(self, user: str, signing_key: rsa.RSAPrivateKey, encryption_key: rsa.RSAPrivateKey) -> None:
        if not is_valid_user_name(user):
            raise ValueError(f"invalid user name {user!r}")
        if _same_key(signing_key.public_key(), encryption_key.public_key()):
            raise ValueError("the signing and encryption keys are the same key")
        self.user = user
        self.signing_key = signing_key
        self.encryption_key = encryption_key
        self.signing_public_der = public_key_der(signing_key)
        self.encryption_public_der = public_key_der(encryption_key)
        self.fingerprint = fingerprint(self.signing_public_der, self.encryption_public_der)
        self._signature = self.sign(
            identity_signed_bytes(user, self.signing_public_der, self.encryption_public_der)
        )

    @classmethod
    def generate(cls, user: str, bits: int = DEFAULT_KEY_BITS) -> "Identity":
        return cls(
            user,
            rsa.generate_private_key(public_exponent=65537, key_size=bits),
            rsa.generate_private_key(public_exponent=65537, key_size=bits),
        )

    def sign(self, data: bytes) -> bytes:
        return sign(self.signing_key, data)

    def public_identity(self) -> pb.PublicIdentity:
        """The self-signed ``PublicIdentity`` sent at login."""
        return pb.PublicIdentity(
            user=self.user,
            signing_public_key=self.signing_public_der,
            encryption_public_key=self.encryption_public_der,
            signature=self._signature,
        )


@dataclasses.dataclass(frozen=True)
class PeerIdentity:
    """Another user's public identity, checked: keys parse, differ, and the
    self-signature verifies."""

    user: str
    signing_key: rsa.RSAPublicKey
    encryption_key: rsa.RSAPublicKey
    fingerprint: bytes

    @classmethod
    def from_public(cls, identity: pb.PublicIdentity) -> "PeerIdentity":
        """Checks a ``PublicIdentity`` from the relay; raises :class:`IdentityError`."""
        user = identity.user
        if not is_valid_user_name(user):
            raise IdentityError(f"invalid user name {escape_text(user)!r}")
        try:
            signing_key = parse_public_key(identity.signing_public_key)
        except ValueError as exc:
            raise IdentityError(f"unusable signing key ({exc})") from exc
        try:
            encryption_key = parse_public_key(identity.encryption_public_key)
        except ValueError as exc:
            raise IdentityError(f"unusable encryption key ({exc})") from exc
        if _same_key(signing_key, encryption_key):
            raise IdentityError("its signing and encryption keys are the same key")
        signed = identity_signed_bytes(user, identity.signing_public_key, identity.encryption_public_key)
        if not verify_signature(signing_key, identity.signature, signed):
            raise IdentityError("its signature does not verify")
        return cls(
            user=user,
            signing_key=signing_key,
            encryption_key=encryption_key,
            fingerprint=fingerprint(identity.signing_public_key, identity.encryption_public_key),
        )

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()


# ---------------------------------------------------------------------------------------
# The JSON envelope and how a text is shown
# ---------------------------------------------------------------------------------------

_BIDI_CONTROLS = frozenset(
    [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
)


def _must_escape(ch: str) -> bool:
    cp = ord(ch)
    return cp < 0x20 or 0x7F <= cp <= 0x9F or cp in (0x2028, 0x2029) or cp in _BIDI_CONTROLS


def escape_text(text: str) -> str:
    """Escapes control characters, line separators and bidi controls as ``\\u{hex}``
    (Rust's ``char::escape_unicode``), so one message is one line that cannot drive the
    terminal and shows what it says."""
    return "".join(f"\\u{{{ord(c):x}}}" if _must_escape(c) else c for c in text)


def format_line(room: str, sender: str, text: str) -> str:
    """The stdout line for a received message (without the newline)."""
    return f"[{room}] {sender}: {escape_text(text)}"


def encode_envelope(sender: str, text: str, sent_at_ms: int) -> bytes:
    """The plaintext of a text message, compact UTF-8 JSON."""
    envelope = {
        "v": ENVELOPE_VERSION,
        "type": "text",
        "sender": sender,
        "text": text,
        "sent_at_ms": sent_at_ms,
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class EnvelopeError(ValueError):
    """The decrypted plaintext is not a valid envelope: the message is dropped."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_constant(name: str) -> object:
    raise EnvelopeError(f"{name} is not JSON")


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise EnvelopeError(f"duplicate field {key!r}")
        result[key] = value
    return result


def _check_encodable(value: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a \ud800 escape
        raise EnvelopeError(f"{field} is not valid Unicode") from exc


@dataclasses.dataclass(frozen=True)
class Envelope:
    """A decoded envelope. Only ``kind == "text"`` can be shown by this version."""

    version: int
    kind: str
    sender: str
    text: str
    sent_at_ms: int


def decode_envelope(plaintext: bytes, expected_sender: str) -> Envelope:
    """Parses and checks an envelope; raises :class:`EnvelopeError` for anything to drop.

    The ``sender`` inside must equal the delivery's, so a member cannot make its message
    appear under someone else's name within the ciphertext either. Unknown fields are
    ignored: later versions may add some.
    """
    try:
        data = json.loads(
            plaintext.decode("utf-8"),
            parse_constant=_reject_constant,
            object_pairs_hook=_no_duplicate_keys,
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise EnvelopeError(f"not UTF-8 JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EnvelopeError("not a JSON object")
    version = data.get("v")
    if not _is_int(version) or not 0 <= version < 1 << 32:
        raise EnvelopeError("missing or invalid v")
    if version != ENVELOPE_VERSION:
        raise EnvelopeError(f"unsupported envelope version {version}")
    kind, sender = data.get("type"), data.get("sender")
    if not isinstance(kind, str):
        raise EnvelopeError("missing or non-string type")
    if not isinstance(sender, str):
        raise EnvelopeError("missing or non-string sender")
    if sender != expected_sender:
        raise EnvelopeError(f"envelope claims sender {sender!r}")
    # Every field is required whatever the type (as the Rust client does); sent_at_ms
    # is an unsigned 64-bit integer.
    sent_at_ms = data.get("sent_at_ms")
    if not _is_int(sent_at_ms) or not 0 <= sent_at_ms < 1 << 64:
        raise EnvelopeError("missing or invalid sent_at_ms")
    text = data.get("text")
    if not isinstance(text, str):
        raise EnvelopeError("missing or non-string text")
    for field, value in (("type", kind), ("sender", sender), ("text", text)):
        _check_encodable(value, field)
    return Envelope(version, kind, sender, text, sent_at_ms)


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


# ---------------------------------------------------------------------------------------
# The files of a user's home: identity keys and pinned contacts
# ---------------------------------------------------------------------------------------


class ClientError(Exception):
    """A fatal error: printed as one ``chat_client: error: ...`` line, exit status 1."""


def user_dir(home: Path, user: str) -> Path:
    return home / user


def signing_key_path(home: Path, user: str) -> Path:
    return user_dir(home, user) / "signing.pem"


def encryption_key_path(home: Path, user: str) -> Path:
    return user_dir(home, user) / "encryption.pem"


def legacy_identity_path(home: Path, user: str) -> Path:
    """The single key of the previous protocol version; it becomes the encryption key."""
    return user_dir(home, user) / "identity.pem"


def contacts_path(home: Path, user: str) -> Path:
    return user_dir(home, user) / "contacts.json"


# Kept under its old name: the README documents it.
identity_path = encryption_key_path


def _make_private_dirs(directory: Path) -> None:
    """Creates ``directory`` and any missing parents with mode 0700; the user's own
    directory is set to 0700 even if it already existed."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    os.chmod(directory, 0o700)


def _write_temp_beside(path: Path, data: bytes) -> Path:
    """Writes ``data`` to a new temporary file (mode 0600) in ``path``'s directory and
    syncs it; returns its path. The caller moves it in place or removes it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _write_new_file(path: Path, data: bytes) -> bool:
    """Creates ``path`` with ``data``, mode 0600, all at once: written to a temporary
    file, then linked in place. Returns False (and writes nothing) if ``path`` already
    exists, for instance because another process made it meanwhile."""
    tmp = _write_temp_beside(path, data)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _replace_file(path: Path, data: bytes) -> None:
    """Replaces ``path`` atomically (temporary file in the same directory, fsync,
    rename), mode 0600."""
    tmp = _write_temp_beside(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_private_key(path: Path, what: str) -> rsa.RSAPrivateKey:
    """Reads a PKCS#8 PEM RSA key, refusing a file that group or others can access."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ClientError(
                f"cannot read {what} {path}: it is accessible by other users "
                f"(mode {mode:o}); run: chmod 600 {path}"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ClientError(f"cannot read {what} {path}: not an unencrypted PKCS#8 PEM key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ClientError(f"cannot read {what} {path}: not an RSA key")
    if not MIN_PEER_KEY_BITS <= key.key_size <= MAX_PEER_KEY_BITS:
        raise ClientError(f"cannot read {what} {path}: {key.key_size} bits is outside 2048..4096")
    return key


def _load_or_generate(path: Path, what: str, bits: int, user: str, log: Callable[[str], None]) -> rsa.RSAPrivateKey:
    if path.exists():
        return _load_private_key(path, what)
    log(f"generating a {bits}-bit RSA {what} for {user} in {path} (this takes a few seconds)...")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    try:
        _make_private_dirs(path.parent)
        if not _write_new_file(path, _pem(key)):  # another process made it meanwhile
            return _load_private_key(path, what)
    except OSError as exc:
        raise ClientError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc
    return key


def load_or_create_identity(
    home: Path, user: str, bits: int = DEFAULT_KEY_BITS, log: Callable[[str], None] = lambda _m: None
) -> Identity:
    """Loads HOME/USER/signing.pem and encryption.pem, making what is missing.

    - Both keys are PKCS#8 PEM, mode 0600, in a 0700 directory; a key file that other
      users can access is refused (the keys are the user's identity).
    - An old home (``identity.pem`` and no ``encryption.pem``) is migrated: the old key
      becomes the encryption key, and a new signing key of the same size is made.
    - An encryption key without a signing key gets a new signing key of its size (what
      an interrupted migration leaves). A signing key without an encryption key is
      refused: a new encryption key would not match what the relay registered.
    - New keys are ``bits`` long.
    """
    if not is_valid_user_name(user):
        raise ClientError(f'user name "{user}" is invalid; use 1 to 32 of letters, digits and _ . -')
    signing_path = signing_key_path(home, user)
    encryption_path = encryption_key_path(home, user)
    legacy_path = legacy_identity_path(home, user)

    if not encryption_path.exists() and legacy_path.exists():
        old = _load_private_key(legacy_path, "identity key")  # checks its mode first
        try:
            os.chmod(legacy_path.parent, 0o700)
            # link + unlink rather than rename: never replaces an encryption.pem that
            # another process made meanwhile.
            os.link(legacy_path, encryption_path)
            os.unlink(legacy_path)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ClientError(f"cannot migrate {legacy_path} to {encryption_path}: {exc.strerror or exc}") from exc
        else:
            log(
                f"migrated the identity of {user} to signing and encryption keys: "
                f"{legacy_path} is now {encryption_path}"
            )
        if not signing_path.exists():
            bits = old.key_size  # a signing key the size of the old identity key
    elif encryption_path.exists() and not signing_path.exists():
        bits = _load_private_key(encryption_path, "encryption key").key_size
    elif signing_path.exists() and not encryption_path.exists():
        raise ClientError(
            f"found the signing key {signing_path} but no encryption key {encryption_path}: "
            f"restore it from a backup, or delete {signing_path} to make a new identity "
            f"(the relay keeps the name {user} bound to the old keys)"
        )
    if bits not in KEY_BITS_ALLOWED:
        raise ClientError(f"invalid key size {bits}; use 2048, 3072 or 4096")

    # The encryption key first: an interruption then leaves a state handled above.
    encryption_key = _load_or_generate(encryption_path, "encryption key", bits, user, log)
    signing_key = _load_or_generate(signing_path, "signing key", bits, user, log)
    try:
        return Identity(user, signing_key, encryption_key)
    except ValueError as exc:
        raise ClientError(f"cannot use the keys of {user} in {user_dir(home, user)}: {exc}") from exc


class ContactsError(Exception):
    """contacts.json cannot be read or has a format this client does not know."""


class ContactBook:
    """The pinned keys of other users: ``HOME/USER/contacts.json``, shared with the Rust
    client::

        {"version": 1, "contacts": {"bob": {"fingerprint": "<64 lowercase hex>", "verified": false}}}

    Every change re-reads the file, changes one contact, and replaces the file
    atomically (mode 0600). Fields this client does not know are kept.
    """

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data = self._read()

    def _read(self) -> dict:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {"version": self.VERSION, "contacts": {}}
        except OSError as exc:
            raise ContactsError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ContactsError(f"cannot read {self.path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("contacts"), dict):
            raise ContactsError(f"cannot read {self.path}: not a contacts file")
        if data.get("version") != self.VERSION or isinstance(data.get("version"), bool):
            raise ContactsError(
                f"cannot read {self.path}: version {data.get('version')!r} is not supported (expected 1)"
            )
        for name, entry in data["contacts"].items():
            if not isinstance(entry, dict) or not _is_fingerprint_hex(entry.get("fingerprint")):
                raise ContactsError(f"cannot read {self.path}: the entry of {name!r} has no valid fingerprint")
        return data

    def fingerprint_of(self, user: str) -> Optional[str]:
        entry = self._data["contacts"].get(user)
        return entry["fingerprint"] if entry is not None else None

    def verified(self, user: str) -> bool:
        entry = self._data["contacts"].get(user)
        return bool(entry is not None and entry.get("verified") is True)

    def pin(self, user: str, fingerprint_hex: str) -> None:
        """Pins ``user`` to ``fingerprint_hex``, unverified, and saves the file."""
        self._update(user, fingerprint_hex, verified=False)

    def set_verified(self, user: str, fingerprint_hex: str) -> None:
        """Marks ``user`` verified, pinned to ``fingerprint_hex``, and saves the file."""
        self._update(user, fingerprint_hex, verified=True)

    def _update(self, user: str, fingerprint_hex: str, verified: bool) -> None:
        if not _is_fingerprint_hex(fingerprint_hex):
            raise ValueError("a fingerprint is 64 lowercase hex digits")
        try:
            data = self._read()  # what another process may have written meanwhile
        except ContactsError:
            data = self._data
        entry = dict(data["contacts"].get(user) or {})
        entry["fingerprint"] = fingerprint_hex
        entry["verified"] = verified
        data["contacts"][user] = entry
        self._data = data
        _make_private_dirs(self.path.parent)
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        _replace_file(self.path, text.encode("utf-8"))

    def check(self, peer: PeerIdentity) -> str:
        """``"new"`` (not pinned before: pinned now), ``"same"`` or ``"changed"``."""
        pinned = self.fingerprint_of(peer.user)
        if pinned is None:
            try:
                self._data = self._read()  # pinned by another process meanwhile?
            except ContactsError:
                pass
            pinned = self.fingerprint_of(peer.user)
        if pinned is None:
            self.pin(peer.user, peer.fingerprint_hex)
            return "new"
        return "same" if pinned == peer.fingerprint_hex else "changed"


def _is_fingerprint_hex(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


# -- saved progress: the last sequence number processed per server and room ------------

PROGRESS_VERSION = 1


class ProgressError(Exception):
    """progress.json cannot be read or has a format this client does not know."""


def progress_path(home: Path, user: str) -> Path:
    return user_dir(home, user) / "progress.json"


def _server_key(server: str) -> str:
    """The same server however its URL is written at the end (a trailing slash)."""
    return server.rstrip("/")


def _is_seq(value: object) -> bool:
    return _is_int(value) and 0 <= value < 1 << 64


def _read_progress(path: Path) -> dict[str, dict[str, int]]:
    """The ``servers`` of ``HOME/USER/progress.json`` (shared with the Rust client)::

        {"version": 1, "servers": {"http://127.0.0.1:5555": {"lobby": 42}}}

    Empty if there is no file; :class:`ProgressError` for a file others can access, or
    one that is not of this format.
    """

    def unreadable(reason: str) -> ProgressError:
        return ProgressError(
            f"cannot read saved progress {path}: {reason}; fix it, or move it away to start "
            f"from the latest messages"
        )

    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise unreadable(f"it is accessible by other users (mode {mode:o}); run: chmod 600 {path}")
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise unreadable(exc.strerror or str(exc)) from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise unreadable(f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("servers"), dict):
        raise unreadable("not a progress file")
    if not _is_int(data.get("version")) or data["version"] != PROGRESS_VERSION:
        raise unreadable(f"version {data.get('version')!r} is not the supported {PROGRESS_VERSION}")
    for server, rooms in data["servers"].items():
        if not isinstance(rooms, dict) or not all(_is_seq(seq) for seq in rooms.values()):
            raise unreadable(f"the entry of {server!r} is not rooms and sequence numbers")
    return data["servers"]


def _write_progress(path: Path, servers: dict[str, dict[str, int]]) -> None:
    """Replaces the file atomically, mode 0600, laid out as the Rust client writes it."""
    ordered = {server: dict(sorted(rooms.items())) for server, rooms in sorted(servers.items())}
    text = json.dumps({"version": PROGRESS_VERSION, "servers": ordered}, indent=2) + "\n"
    _make_private_dirs(path.parent)
    _replace_file(path, text.encode("utf-8"))


def load_last_seq(path: Path, server: str, room: str) -> Optional[int]:
    """The last sequence number saved for ``room`` on ``server``, if any."""
    return _read_progress(path).get(_server_key(server), {}).get(room)


def save_last_seq(path: Path, server: str, room: str, seq: int) -> None:
    """Saves ``seq`` for ``room`` on ``server``. The file is read again first, so the
    entries other processes wrote meanwhile are kept. Raises :class:`ProgressError` or
    ``OSError``."""
    servers = _read_progress(path)
    servers.setdefault(_server_key(server), {})[room] = seq
    _write_progress(path, servers)


def forget_room(path: Path, server: str, room: str) -> None:
    """Forgets ``room`` on ``server``: the user left it, and joining it again is a new start."""
    servers = _read_progress(path)
    rooms = servers.get(_server_key(server))
    if rooms is None or room not in rooms:
        return
    del rooms[room]
    if not rooms:
        del servers[_server_key(server)]
    _write_progress(path, servers)


# ---------------------------------------------------------------------------------------
# Transport helpers
# ---------------------------------------------------------------------------------------


def parse_server_url(url: str) -> tuple[str, bool]:
    """``http://HOST:PORT`` -> (gRPC target, use TLS). Raises :class:`ClientError`."""
    if "://" not in url:
        raise ClientError(f'invalid server URL "{url}": missing scheme; use http://HOST:PORT')
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        raise ClientError(f'invalid server URL "{url}": unsupported scheme {parsed.scheme!r}; use http://HOST:PORT')
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError as exc:
        raise ClientError(f'invalid server URL "{url}": {exc}') from exc
    if not host:
        raise ClientError(f'invalid server URL "{url}": missing host; use http://HOST:PORT')
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.username:
        raise ClientError(f'invalid server URL "{url}": only http://HOST:PORT is supported')
    if port is None:
        port = 443 if scheme == "https" else 80
    host_part = f"[{host}]" if ":" in host else host
    return f"{host_part}:{port}", scheme == "https"


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (a plaintext relay there is on this machine)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_INBOUND_FRAME_BYTES),
    ("grpc.max_send_message_length", MAX_INBOUND_FRAME_BYTES),
]


def open_channel(server: str, ca_cert: Optional[Path] = None) -> grpc.Channel:
    """A channel to ``http://`` (plaintext) or ``https://`` (TLS, checked against the
    system's roots or the PEM certificates in ``ca_cert``)."""
    target, tls = parse_server_url(server)
    if not tls:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    roots = None
    if ca_cert is not None:
        try:
            roots = Path(ca_cert).read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read the CA certificate {ca_cert}: {exc.strerror or exc}") from exc
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


def login(
    channel: grpc.Channel,
    identity: Identity,
    timeout: float = RPC_TIMEOUT_SECONDS,
    registration_token: str = "",
) -> pb.LoginResponse:
    """``CreateChallenge`` then ``Login`` with the signed challenge (and the operator's
    registration token, for a relay that registers new names only with one). Raises
    ``grpc.RpcError``; ALREADY_EXISTS means the user name (or a name differing only in
    letter case) is registered to other keys, or the keys to another user."""
    auth = pb_grpc.AuthServiceStub(channel)
    # A challenge is good only at the relay process that issued it: one restarted between
    # the two calls refuses it as UNAUTHENTICATED. A second try with a fresh challenge
    # tells that apart from a refusal that stands.
    for tries_left in reversed(range(LOGIN_TRIES)):
        challenge = auth.CreateChallenge(pb.CreateChallengeRequest(user=identity.user), timeout=timeout).challenge
        request = pb.LoginRequest(
            identity=identity.public_identity(),
            challenge=challenge,
            signature=identity.sign(login_signed_bytes(identity.user, challenge)),
            registration_token=registration_token,
        )
        try:
            return auth.Login(request, timeout=timeout)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED or tries_left == 0:
                raise
    raise AssertionError("unreachable: the last try returns or raises")


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The request metadata every ``ChatService`` RPC carries."""
    return (("authorization", f"Bearer {token}"),)


_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def status_name(code: int) -> str:
    return _STATUS_NAMES.get(code, f"code {code}")


def describe_rpc_error(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else None
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {details}" if details else name


# ---------------------------------------------------------------------------------------
# The CLI session
# ---------------------------------------------------------------------------------------

HELP_TEXT = """commands:
  /who                 list the members of the room
  /fingerprint         show your own fingerprint
  /verify NAME         show the safety number to compare with NAME out of band
  /verify NAME confirm mark NAME's keys verified (after comparing the safety number)
  /trust NAME          accept the new keys the relay presents for NAME
  /invite NAME         let NAME join this private room (owner only)
  /kick NAME           remove NAME from this private room (owner only)
  /pending             list the messages sent but not yet acknowledged by the relay
  /history [N]         show the room's last N messages (1 to 100, default 20) on stderr:
                       history [ROOM] SENDER (YYYY-MM-DD HH:MM:SS UTC): TEXT
  /leave               leave the room for good and exit
  /quit                disconnect and exit; you stay a member (as at end of input)
  /help                show this list
start a message with // to send a line that begins with /
end of input and /quit only disconnect: the next run in the room first shows what was
said meanwhile (where you were is saved in HOME/USER/progress.json)"""

#: How many messages /history shows without a number, and the most it may ask for.
DEFAULT_HISTORY = 20
MAX_HISTORY = 100
#: Seconds to wait, at the end, for the relay to answer what was sent.
CLOSING_TIMEOUT_SECONDS = 15


def history_limit(argument: Optional[str]) -> int:
    """The number of messages ``/history`` asks for: 20 without an argument, else 1 to
    100; ``ValueError`` otherwise."""
    if argument is None:
        return DEFAULT_HISTORY
    if re.fullmatch(r"[0-9]{1,3}", argument) is None or not 1 <= int(argument) <= MAX_HISTORY:
        raise ValueError(f"the number of messages must be 1 to {MAX_HISTORY}")
    return int(argument)


def pending_lines(texts: list[str]) -> list[str]:
    """What ``/pending`` prints: the messages not acknowledged yet, one line each."""
    if not texts:
        return ["no message is waiting for the relay's acknowledgement"]
    return [f"{len(texts)} message(s) sent but not acknowledged yet:"] + [
        f'  "{escape_text(text)}"' for text in texts
    ]

_CLOSE = object()  # ends the request iterator (half-closes the stream)


class ChatClient:
    """Drives one room over one Chat stream.

    Two threads only feed ``self.events`` (stdin lines, server frames); all state lives
    in the thread running :meth:`run`, so nothing needs a lock.

    Membership outlives the stream: end of input and /quit only disconnect, and the
    next run joins with the last sequence number processed (``progress.json``) to
    catch up on what was said meanwhile. Only /leave (or a kick) ends the membership.
    """

    def __init__(
        self,
        server: str,
        user: str,
        room: str,
        home: Path,
        key_bits: int,
        ca_cert: Optional[Path] = None,
        private: bool = False,
        registration_token: str = "",
    ) -> None:
        self.server = server
        self.private = private
        self.registration_token = registration_token
        self.user = user
        self.room_name = room
        self.home = home
        self.key_bits = key_bits
        self.ca_cert = ca_cert
        self.events: queue.Queue[tuple] = queue.Queue()
        self.outbound: queue.Queue[object] = queue.Queue()
        self.next_request_id = 1
        #: request_id -> what the frame was, for every frame not answered yet.
        self.unanswered: dict[int, str] = {}
        self.initial_distributions: set[int] = set()
        self.identity: Optional[Identity] = None
        self.contacts: Optional[ContactBook] = None
        self.room: Optional[RoomState] = None
        self.ready = False
        self.backlog: collections.deque[tuple] = collections.deque()
        self.finishing: Optional[str] = None  # "leave" or "quit"
        #: When the relay must have answered everything, once finishing.
        self.closing_deadline: Optional[float] = None
        self.leave_request: Optional[int] = None
        self.left = False
        self.joined_seen = False
        self.closing = False
        self.call = None
        self.channel: Optional[grpc.Channel] = None
        #: request_id -> (command, user) of /invite and /kick frames not answered yet.
        self.owner_requests: dict[int, tuple[str, str]] = {}
        #: Set when a refusal that does not end the session happened: the exit is 1.
        self.failed = False
        #: request_id -> text of our messages the relay has not acknowledged, in order.
        self.unacked: dict[int, str] = {}
        #: Messages the relay refused.
        self.refused = 0
        #: Where the last sequence number processed is saved, and what was saved there.
        self.progress: Optional[Path] = None
        self.after_seq: Optional[int] = None
        self.saved_seq: Optional[int] = None
        #: We left the room or were removed: nothing to catch up on next time.
        self.membership_ended = False

    # -- output -----------------------------------------------------------------------

    @staticmethod
    def info(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        self.info(f"warning: {message}")

    def show(self, message: ReceivedMessage) -> None:
        """One stdout line per text; other kinds only get a note on stderr (like the
        Rust client), so stdout stays exactly the received texts."""
        if not message.showable:
            self.warn(f"[{message.room}] {message.sender} sent a kind of message this version cannot show")
            return
        sys.stdout.write(message.line() + "\n")
        sys.stdout.flush()

    # -- setup ------------------------------------------------------------------------

    def run(self) -> int:
        """Connects, logs in, joins, chats until stdin ends or a command ends it;
        returns 0."""
        target, tls = parse_server_url(self.server)  # a bad URL is reported before any key is made
        if not tls and not is_loopback_host(target.rsplit(":", 1)[0]):
            self.warn(
                f"{self.server} is plaintext to another machine: user and room names, what you "
                f"send when, and your session token cross the network in clear (messages stay "
                f"end-to-end encrypted); use https:// unless a TLS proxy is on the path"
            )
        if not is_valid_user_name(self.user):
            raise ClientError(
                f'user name "{self.user}" is invalid; use 1 to 32 of letters, digits and _ . -'
            )
        if not is_valid_room_name(self.room_name):
            raise ClientError(
                f'room name "{self.room_name}" is invalid; use 1 to 64 of letters, digits and _ . # -'
            )
        self.identity = load_or_create_identity(self.home, self.user, self.key_bits, self.info)
        try:
            self.contacts = ContactBook(contacts_path(self.home, self.user))
        except ContactsError as exc:
            raise ClientError(f"{exc}; fix or move the file (it holds the keys you pinned)") from exc
        self.progress = progress_path(self.home, self.user)
        try:
            self.after_seq = self.saved_seq = load_last_seq(self.progress, self.server, self.room_name)
        except ProgressError as exc:
            raise ClientError(str(exc)) from exc
        self.room = RoomState(self.room_name, self.identity, warn=self.warn, trust=self._check_trust)
        self.channel = open_channel(self.server, self.ca_cert)
        try:
            return self._session()
        finally:
            self._settle_progress()
            if self.room.pending:
                self.warn(
                    f"{len(self.room.pending)} message(s) could not be decrypted: their sender key never arrived"
                )
            self.channel.close()

    def _login(self) -> str:
        assert self.identity is not None and self.channel is not None
        try:
            response = login(self.channel, self.identity, registration_token=self.registration_token)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                details = describe_rpc_error(exc)
                if "CERTIFICATE_VERIFY_FAILED" in details:
                    hint = "" if self.ca_cert else " (for a self-signed certificate or a private CA, pass --ca-cert FILE)"
                    raise ClientError(
                        f"cannot connect to {self.server}: the server's certificate is not trusted{hint}: {details}"
                    ) from exc
                if self.server.lower().startswith("http://") and "Socket closed" in details:
                    details += " (if the relay serves TLS, use https://)"
                raise ClientError(f"cannot connect to {self.server}: {details}") from exc
            if code == grpc.StatusCode.ALREADY_EXISTS:
                raise ClientError(f"cannot log in as {self.user}: {describe_rpc_error(exc)}") from exc
            raise ClientError(f"the relay refused the login of {self.user}: {describe_rpc_error(exc)}") from exc
        if response.registered:
            self.info(f"registered {self.user} on the relay with your keys")
        return response.session_token

    def _session(self) -> int:
        token = self._login()
        stub = pb_grpc.ChatServiceStub(self.channel)
        self.call = stub.Chat(self._requests(), metadata=auth_metadata(token))
        threading.Thread(target=self._read_responses, name="responses", daemon=True).start()
        join = pb.JoinRoom(room=self.room_name, create_private=self.private)
        if self.after_seq is not None:
            join.after_seq = self.after_seq  # come back and catch up from there
        self._send_frame("join", join=join)
        threading.Thread(target=self._read_stdin, name="stdin", daemon=True).start()
        return self._event_loop()

    # -- key pinning ------------------------------------------------------------------

    def _check_trust(self, peer: PeerIdentity) -> bool:
        """Trust on first use: pins an unknown user; refuses keys that differ from the
        pinned ones, loudly."""
        assert self.contacts is not None
        try:
            status = self.contacts.check(peer)
        except (OSError, ValueError) as exc:
            self.warn(f"cannot save the keys of {peer.user} to {self.contacts.path}: {exc}")
            return True
        if status == "new":
            self.info(
                f"pinned the keys of {peer.user} on first use (fingerprint {format_fingerprint(peer.fingerprint)})"
            )
            return True
        if status == "same":
            return True
        pinned = self.contacts.fingerprint_of(peer.user) or ""
        self.warn(
            f"!!! {peer.user}'s keys changed !!! The relay presented NEW KEYS for {peer.user} "
            f"(fingerprint {format_fingerprint(peer.fingerprint)}) that differ from the ones "
            f"pinned (fingerprint {format_fingerprint(bytes.fromhex(pinned))}). Someone may be "
            f"impersonating {peer.user}, or {peer.user} made new keys. Nothing is sent to or "
            f"accepted from {peer.user} until you compare safety numbers with {peer.user} out "
            f"of band and type /trust {peer.user}."
        )
        return False

    # -- the two feeder threads -------------------------------------------------------

    def _requests(self) -> Iterator[pb.ClientFrame]:
        """The request side of the stream: whatever the main thread queues, in order."""
        while True:
            frame = self.outbound.get()
            if frame is _CLOSE:
                return
            yield frame

    def _read_responses(self) -> None:
        try:
            for frame in self.call:
                self.events.put(("frame", frame))
            self.events.put(("stream_end", None))
        except grpc.RpcError as exc:
            self.events.put(("stream_end", exc))
        except Exception as exc:  # noqa: BLE001 - reported as a lost connection
            self.events.put(("stream_end", exc))

    def _read_stdin(self) -> None:
        stream = sys.stdin.buffer
        while True:
            raw = stream.readline()
            if not raw:
                self.events.put(("eof",))
                return
            line = raw.decode("utf-8", errors="replace")
            if line.endswith("\n"):
                line = line[:-1]
                if line.endswith("\r"):
                    line = line[:-1]
            self.events.put(("line", line))

    # -- frames out -------------------------------------------------------------------

    def _send_frame(self, what: str, **kind: object) -> int:
        request_id = self.next_request_id
        self.next_request_id += 1
        self.unanswered[request_id] = what
        self.outbound.put(pb.ClientFrame(request_id=request_id, **kind))
        return request_id

    def _send_distributions(self, frames: list[pb.DistributeSenderKey]) -> list[int]:
        return [self._send_frame("key distribution", distribute_key=f) for f in frames]

    # -- the main loop ----------------------------------------------------------------

    def _event_loop(self) -> int:
        while True:
            event = self._next_event()
            kind = event[0]
            if kind == "frame":
                self._on_frame(event[1])
            elif kind == "stream_end":
                return self._on_stream_end(event[1])
            elif kind in ("line", "eof"):
                if self.ready:
                    self._on_input(event)
                else:
                    self.backlog.append(event)
            if self.events.empty():  # a burst (a catch-up) costs one write, not one per frame
                self._save_progress()
            if self._maybe_finish():
                if self.refused:
                    raise ClientError(f"{self.refused} message(s) were refused by the relay")
                return 1 if self.failed else 0

    def _next_event(self) -> tuple:
        """The next event; once finishing, only until the closing deadline."""
        if self.closing_deadline is None:
            return self.events.get()
        try:
            return self.events.get(timeout=max(0.0, self.closing_deadline - time.monotonic()))
        except queue.Empty:
            raise ClientError(
                f"timed out after {CLOSING_TIMEOUT_SECONDS} s waiting for the relay to acknowledge "
                f"{len(self.unanswered)} frame(s){self._undelivered()}"
            ) from None

    def _undelivered(self) -> str:
        """Lists the messages not acknowledged on stderr; returns the end of the error
        line that counts them."""
        for text in self.unacked.values():
            self.info(f'not delivered: "{escape_text(text)}"')
        return f"; {len(self.unacked)} message(s) not delivered" if self.unacked else ""

    def _on_stream_end(self, error: Optional[BaseException]) -> int:
        if self.closing:
            return 0
        code = error.code() if isinstance(error, grpc.RpcError) and hasattr(error, "code") else None
        if code == grpc.StatusCode.ABORTED:
            # Not reconnecting: the two sessions would take turns.
            raise ClientError(
                f"this session was closed because {self.user} opened another session on the relay "
                f"(ABORTED){self._undelivered()}"
            )
        if isinstance(error, grpc.RpcError):
            if not self.joined_seen:  # the stream never opened properly
                raise ClientError(f"cannot open the chat session: {describe_rpc_error(error)}")
            reason = describe_rpc_error(error)
        elif error is not None:
            reason = str(error)
        else:
            reason = "the stream ended"
        raise ClientError(f"lost the connection to the relay: {reason}{self._undelivered()}")

    # -- saved progress -----------------------------------------------------------------

    def _save_progress(self) -> None:
        """Saves the last sequence number processed, if it moved (a warning if it cannot)."""
        if self.room is None or self.progress is None or not self.joined_seen or self.membership_ended:
            return
        seq = self.room.last_seq
        if seq == self.saved_seq:
            return
        try:
            save_last_seq(self.progress, self.server, self.room_name, seq)
        except (ProgressError, OSError) as exc:
            self.warn(f"cannot save progress {self.progress}: {exc}")
            return
        self.saved_seq = seq

    def _settle_progress(self) -> None:
        """At exit: saves the progress, or forgets the room once out of it."""
        if not self.membership_ended:
            self._save_progress()
            return
        assert self.progress is not None
        try:
            forget_room(self.progress, self.server, self.room_name)
        except (ProgressError, OSError) as exc:
            self.warn(f"cannot update progress {self.progress}: {exc}")

    def _maybe_finish(self) -> bool:
        """After EOF, /leave or /quit: once every frame is answered, leave (/leave only:
        end of input and /quit stay members), then close the stream. Returns True when
        the session is over."""
        if self.finishing is not None and self.closing_deadline is None:
            self.closing_deadline = time.monotonic() + CLOSING_TIMEOUT_SECONDS
        if self.finishing is None or self.unanswered:
            return False
        if self.finishing == "leave" and not self.left:
            if self.leave_request is None:
                self.leave_request = self._send_frame("leave", leave=pb.LeaveRoom(room=self.room_name))
            return False
        self._close_stream()
        return True

    def _close_stream(self) -> None:
        """Half-closes the stream and gives the relay a moment to end it cleanly."""
        self.closing = True
        self.outbound.put(_CLOSE)
        deadline = time.monotonic() + 5
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                break
            if event[0] == "stream_end":
                return
        self.call.cancel()

    # -- frames in --------------------------------------------------------------------

    def _on_frame(self, frame: pb.ServerFrame) -> None:
        which = frame.WhichOneof("kind")
        if frame.request_id != 0:
            self._on_answer(frame, which)
            return
        if self.left:  # after leaving, events for the room no longer matter
            return
        handler = {
            "member_joined": self._on_member_joined,
            "member_left": self._on_member_left,
            "message": self._on_message,
            "sender_key": self._on_sender_key,
            "caught_up": self._on_caught_up,
        }.get(which)
        if handler is None:
            self.warn(f"ignoring an unexpected frame from the relay ({which})")
            return
        handler(getattr(frame, which))

    def _on_answer(self, frame: pb.ServerFrame, which: Optional[str]) -> None:
        what = self.unanswered.pop(frame.request_id, None)
        if what is None:
            self.warn(f"ignoring an answer to unknown request {frame.request_id}")
            return
        owner_request = self.owner_requests.pop(frame.request_id, None)
        if owner_request is not None:
            self._on_owner_answer(owner_request, frame, which)
            return
        if which == "rejection":
            rejection = frame.rejection
            reason = f"{status_name(rejection.code)}: {rejection.message}"
            if what == "join":
                raise ClientError(f"cannot join {self.room_name}: {reason}")
            if what == "message":
                self.refused += 1
                text = self.unacked.pop(frame.request_id, "")
                self.info(f'failed to send "{escape_text(text)}": {reason}')
                return
            if what == "history":
                self.warn(f"the relay refused to send the history: {reason}")
                return
            raise ClientError(f"the relay refused a {what}: {reason}")
        if what == "join":
            if which != "joined":
                raise ClientError(f"unexpected answer to JoinRoom: {which}")
            self._on_joined(frame.joined)
            return
        if what == "history":
            if which != "history":
                raise ClientError(f"unexpected answer to GetHistory: {which}")
            self._show_history(frame.history)
            return
        if which != "ack":
            raise ClientError(f"unexpected answer to a {what}: {which}")
        self.unacked.pop(frame.request_id, None)  # our own entries never move last_seq
        if frame.request_id == self.leave_request:
            self.left = True
            self.membership_ended = True
            self.info(f"left {self.room_name}")
        self.initial_distributions.discard(frame.request_id)
        if not self.ready and self.joined_seen and not self.initial_distributions:
            self._become_ready()

    def _on_owner_answer(self, request: tuple[str, str], frame: pb.ServerFrame, which: Optional[str]) -> None:
        """The answer to /invite or /kick: a refusal is reported, and the session goes on."""
        command, user = request
        if which == "rejection":
            self.failed = True
            rejection = frame.rejection
            self.info(
                f"the relay refused {command} {user}: {status_name(rejection.code)}: {rejection.message}"
            )
        elif command == "/invite":
            self.info(f"{user} may now join {self.room_name}")
        else:
            self.info(f"{user} is no longer a member of {self.room_name} nor invited")

    def _on_joined(self, joined: pb.Joined) -> None:
        assert self.room is not None
        self.joined_seen = True
        if joined.private_room:
            owner = "you" if joined.owner == self.user else escape_text(joined.owner)
            self.info(f"{self.room_name} is a private room owned by {owner}")
        elif self.private:
            self.warn(f"{self.room_name} is an open room: anyone can join it")
        frames = self.room.on_joined(joined, self.after_seq)
        self.initial_distributions = set(self._send_distributions(frames))
        if not self.initial_distributions:
            self._become_ready()

    def _become_ready(self) -> None:
        """Our key is with every member: announce it and handle what was typed meanwhile."""
        self.ready = True
        self.info(f"joined {self.room_name} as {self.user} ({self._members_text(joined=True)})")
        while self.backlog and self.finishing is None:
            self._on_input(self.backlog.popleft())

    def _members_text(self, joined: bool = False) -> str:
        assert self.room is not None
        names = self.room.current_members()
        if not names and joined:
            return f"you are alone in {self.room_name}"
        untrusted = set(self.room.untrusted_members())
        shown = [f"{n} (keys changed, not trusted)" if n in untrusted else n for n in names]
        return f"members of {self.room_name}: " + ", ".join(["you", *shown])

    def _on_member_joined(self, event: pb.MemberJoined) -> None:
        assert self.room is not None
        if event.room != self.room_name or self.leave_request is not None:
            return
        frames = self.room.member_joined(event.member)
        if frames is None:
            return
        self.info(f"* {event.member.user} joined {self.room_name}")
        self._send_distributions(frames)

    def _on_member_left(self, event: pb.MemberLeft) -> None:
        assert self.room is not None
        if event.room != self.room_name or self.leave_request is not None:
            return
        if event.user == self.user:
            if event.reason == pb.LEAVE_REASON_KICKED:
                self.membership_ended = True
                raise ClientError(f"you were removed from {self.room_name} by its owner")
            self.warn(f"ignoring a MemberLeft about yourself in {self.room_name}")
            return
        if not is_valid_user_name(event.user):
            self.warn(f"ignoring a MemberLeft for an invalid member {escape_text(event.user)!r}")
            return
        if not self.room.is_current_member(event.user):
            return
        frames = self.room.member_left(event.user)
        self._send_distributions(frames)
        if event.reason == pb.LEAVE_REASON_LEFT:
            what = f"{event.user} left {self.room_name}"
        elif event.reason == pb.LEAVE_REASON_KICKED:
            what = f"{event.user} left {self.room_name} (removed by the owner)"
        elif event.reason == pb.LEAVE_REASON_TOO_SLOW:
            what = f"{event.user} disconnected from {self.room_name} (too slow)"
        elif event.reason == pb.LEAVE_REASON_RECLAIMED:
            what = f"{event.user} left {self.room_name} (unused too long, removed by the relay)"
        else:
            what = f"{event.user} disconnected from {self.room_name}"
        self.info(f"* {what}; your sender key was rotated")

    def _on_message(self, delivery: pb.MessageDelivery) -> None:
        assert self.room is not None
        message = self.room.open(delivery)
        if message is not None:
            self.show(message)

    def _on_sender_key(self, delivery: pb.SenderKeyDelivery) -> None:
        assert self.room is not None
        for message in self.room.accept_sender_key(delivery):
            self.show(message)

    def _on_caught_up(self, event: pb.CaughtUp) -> None:
        """Everything missed has been delivered; what follows is live."""
        assert self.room is not None
        if event.room != self.room_name:
            return
        self.room.caught_up()
        self.info(f"caught up on {self.room_name}")

    def _show_history(self, history: pb.History) -> None:
        """The answer to /history, opened apart from the live state, on stderr."""
        assert self.room is not None
        if history.room != self.room_name:
            self.warn(f"ignoring a history of another room ({escape_text(history.room)!r})")
            return
        messages = self.room.open_history(history)
        if not messages:
            self.info(f"history [{self.room_name}]: no messages")
        for message in messages:
            self.info(message.line(self.room_name))

    # -- input ------------------------------------------------------------------------

    def _on_input(self, event: tuple) -> None:
        if self.finishing is not None:
            return
        if event[0] == "eof":
            self.finishing = "quit"  # end of input only disconnects: we stay a member
            return
        line: str = event[1]
        if not line.strip():
            return
        if line.startswith("//"):
            self._send_text(line[1:])
        elif line.startswith("/"):
            self._command(line)
        else:
            self._send_text(line)

    def _command(self, line: str) -> None:
        words = line.split()
        command, args = words[0], words[1:]
        if command == "/who":
            self.info(self._members_text())
        elif command == "/leave":
            self.finishing = "leave"
        elif command == "/quit":
            self.finishing = "quit"
        elif command == "/help":
            self.info(HELP_TEXT)
        elif command == "/pending":
            lines = pending_lines(list(self.unacked.values())) if not args else ["usage: /pending"]
            for line in lines:
                self.info(line)
        elif command == "/history":
            if len(args) > 1:
                self.info("usage: /history [N]")
            else:
                self._history(args[0] if args else None)
        elif command == "/fingerprint":
            assert self.identity is not None
            self.info(f"your fingerprint ({self.user}): {format_fingerprint(self.identity.fingerprint)}")
        elif command == "/verify" and len(args) == 2 and args[1] == "confirm":
            self._confirm(args[0])
        elif command in ("/trust", "/verify", "/invite", "/kick"):
            if len(args) != 1:
                usage = "/verify NAME [confirm]" if command == "/verify" else f"{command} NAME"
                self.info(f"usage: {usage}")
            elif command == "/trust":
                self._trust(args[0])
            elif command == "/verify":
                self._safety(args[0])
            else:
                self._owner_command(command, args[0])
        else:
            self.info(f"unknown command {command}; type /help for the list")

    def _safety(self, name: str) -> None:
        assert self.room is not None and self.identity is not None
        member = self.room.members.get(name)
        if member is None:
            self.info(f"{name} is not a member of {self.room_name}")
            return
        number = safety_number(self.user, self.identity.fingerprint, name, member.identity.fingerprint)
        if not member.trusted:
            note = " (these keys are NOT trusted: they changed)"
        elif self.contacts is not None and self.contacts.verified(name):
            note = " (verified)"
        else:
            note = f" (compare it with {name}, then /verify {name} confirm)"
        self.info(f"safety number with {name}: {number}{note}")

    def _confirm(self, name: str) -> None:
        assert self.room is not None and self.contacts is not None
        member = self.room.members.get(name)
        if member is None:
            self.info(f"{name} is not a member of {self.room_name}")
            return
        if not member.trusted:
            self.info(f"the keys presented for {name} are not trusted; /trust {name} first")
            return
        try:
            self.contacts.set_verified(name, member.identity.fingerprint_hex)
        except (OSError, ValueError) as exc:
            self.warn(f"cannot save the contact {name} to {self.contacts.path}: {exc}")
            return
        self.info(f"the keys of {name} are now marked verified")

    def _owner_command(self, command: str, name: str) -> None:
        if not is_valid_user_name(name):
            self.info(f"invalid user name {escape_text(name)!r}")
            return
        if command == "/invite":
            request_id = self._send_frame("invite", invite=pb.InviteMember(room=self.room_name, user=name))
        else:
            request_id = self._send_frame("kick", kick=pb.KickMember(room=self.room_name, user=name))
        self.owner_requests[request_id] = (command, name)

    def _trust(self, name: str) -> None:
        assert self.room is not None and self.contacts is not None
        member = self.room.members.get(name)
        if member is None:
            self.info(f"{name} is not a member of {self.room_name}")
            return
        if member.trusted:
            self.info(f"the keys of {name} are already trusted")
            return
        try:
            self.contacts.pin(name, member.identity.fingerprint_hex)
        except (OSError, ValueError) as exc:
            self.warn(f"cannot save the keys of {name} to {self.contacts.path}: {exc}")
        self._send_distributions(self.room.trust_member(name))
        self.info(
            f"now trusting the keys of {name} (fingerprint {format_fingerprint(member.identity.fingerprint)})"
        )

    def _history(self, argument: Optional[str]) -> None:
        try:
            limit = history_limit(argument)
        except ValueError as exc:
            self.info(f"/history: {exc}")
            return
        self._send_frame("history", history=pb.GetHistory(room=self.room_name, limit=limit))

    def _send_text(self, text: str) -> None:
        assert self.room is not None
        try:
            message, distributions = self.room.seal_text(text)
        except MessageTooLong as exc:
            self.info(f"not sent: {exc}")
            return
        self._send_distributions(distributions)
        self.unacked[self._send_frame("message", send=message)] = text


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def default_home() -> str:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return str(base / "e2ee-chat")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other error
        self.exit(2, f"{PROG}: error: {message}\n")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    env = os.environ
    parser = _Parser(
        prog=PROG,
        description="Chat in one room of an end-to-end encrypted relay.",
        epilog="stdin: one line = one message; /who /fingerprint /verify /trust /invite /kick "
        "/pending /history /leave /quit /help; "
        "// sends a leading /. stdout: [ROOM] SENDER: TEXT per received message. "
        "stderr: everything else.",
    )
    parser.add_argument("--server", default=env.get("CHAT_SERVER", "http://127.0.0.1:5555"),
                        help="the relay's URL, http:// or https:// [env CHAT_SERVER]")
    parser.add_argument("--user", default=env.get("CHAT_USER"), help="your user name [env CHAT_USER]")
    parser.add_argument("--room", default=env.get("CHAT_ROOM", "lobby"), help="the room [env CHAT_ROOM]")
    parser.add_argument("--home", default=env.get("CHAT_HOME") or default_home(),
                        help="where your keys, pinned contacts and progress (the last message "
                        "seen per server and room) are kept [env CHAT_HOME]")
    parser.add_argument("--key-bits", default=env.get("CHAT_KEY_BITS", str(DEFAULT_KEY_BITS)),
                        help="size of new identity keys: 2048, 3072 or 4096 [env CHAT_KEY_BITS]")
    parser.add_argument("--private", action="store_true",
                        help="create the room private, owned by you, if it does not exist")
    parser.add_argument("--ca-cert", default=env.get("CHAT_CA_CERT") or None,
                        help="PEM file of the CA certificates to trust for an https:// relay "
                        "(default: the system's) [env CHAT_CA_CERT]")
    parser.add_argument("--registration-token", default=env.get("CHAT_REGISTRATION_TOKEN", ""),
                        help="a registration token from the relay's operator, for the first login "
                        "of --user on a relay that registers new names only with one "
                        "[env CHAT_REGISTRATION_TOKEN]")
    args = parser.parse_args(argv)
    if not args.user:
        parser.error("--user is required (or set CHAT_USER)")
    bits = str(args.key_bits).strip()
    if not bits.isdigit() or int(bits) not in KEY_BITS_ALLOWED:
        parser.error(f"invalid --key-bits {bits!r}: must be 2048, 3072 or 4096")
    args.key_bits = int(bits)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8", errors="replace")  # type: ignore[union-attr]
    client = ChatClient(
        args.server,
        args.user,
        args.room,
        Path(args.home).expanduser(),
        args.key_bits,
        Path(args.ca_cert).expanduser() if args.ca_cert else None,
        private=args.private,
        registration_token=args.registration_token,
    )
    try:
        code = client.run()
    except ClientError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    # Daemon threads may sit in a blocking stdin read or inside gRPC; do not wait for them.
    os._exit(code)


if __name__ == "__main__":
    main()
