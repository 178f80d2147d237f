"""Sender keys (docs/PROTOCOL.md, "Sender keys"): the HMAC-SHA256 chain, each message's
AES-256-GCM key and nonce from HKDF-SHA256, Ed25519 signatures verified strictly, this
client's own ratcheting key with its hand-out point (:class:`OwnSenderKey`), and another
member's key as a reader follows it, with the bounded store of skipped keys
(:class:`PeerSenderKey`). No I/O.

Erasure: Python cannot overwrite immutable ``bytes`` in place, so "erase" here means
that every reference to a used message key or a passed chain key is dropped at once (the
chain attribute is rebound, a kept key popped from its dict), leaving it to the garbage
collector; nothing is ever written to disk."""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import time
from typing import Callable, Optional

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .binding import message_ad, message_signed_bytes
from .protocol import (
    CHAIN_KEY_BYTES,
    DEVICE,
    ED25519_PUBLIC_BYTES,
    ED25519_SIGNATURE_BYTES,
    MAX_FORWARD_JUMP,
    MAX_ITERATION,
    MAX_SKIPPED_KEYS,
    MESSAGE_KEY_BYTES,
    MESSAGE_KEY_INFO,
    NONCE_BYTES,
    TAG_BYTES,
)


# ---------------------------------------------------------------------------------------
# The chain
# ---------------------------------------------------------------------------------------


def next_chain_key(chain_key: bytes) -> bytes:
    """``chain_key_(i+1) = HMAC-SHA256(chain_key_i, 0x02)``."""
    return hmac.new(chain_key, b"\x02", hashlib.sha256).digest()


def message_key_and_nonce(chain_key: bytes) -> tuple[bytes, bytes]:
    """``seed = HMAC-SHA256(chain_key_i, 0x01)``; HKDF-SHA256 (no salt, info
    "chat.v2/message-key", 44 bytes) gives the AES-256-GCM key and the 96-bit nonce."""
    seed = hmac.new(chain_key, b"\x01", hashlib.sha256).digest()
    okm = HKDF(
        algorithm=hashes.SHA256(), length=MESSAGE_KEY_BYTES + NONCE_BYTES, salt=None, info=MESSAGE_KEY_INFO
    ).derive(seed)
    return okm[:MESSAGE_KEY_BYTES], okm[MESSAGE_KEY_BYTES:]


def step(chain_key: bytes) -> tuple[bytes, bytes, bytes]:
    """``(message_key_i, nonce_i, chain_key_(i+1))``."""
    message_key, nonce = message_key_and_nonce(chain_key)
    return message_key, nonce, next_chain_key(chain_key)


# ---------------------------------------------------------------------------------------
# Ed25519, verified strictly (as ed25519-dalek's verify_strict)
# ---------------------------------------------------------------------------------------

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decompress(encoding: bytes) -> Optional[tuple[int, int]]:
    """The affine point an encoding names, or None if it names none."""
    y = int.from_bytes(encoding, "little")
    sign = y >> 255
    y = (y & ((1 << 255) - 1)) % _P
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x2 = u * pow(v, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = (_P - x) % _P
    return x, y


def _add(p: tuple[int, int], q: tuple[int, int]) -> tuple[int, int]:
    """Complete twisted Edwards addition (a = -1)."""
    (x1, y1), (x2, y2) = p, q
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + y1 * x2) * pow((1 + t) % _P, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow((1 - t) % _P, _P - 2, _P) % _P
    return x3, y3


def is_small_order(encoding: bytes) -> bool:
    """True for an encoding of a point of small order (8 times it is the identity), and
    for one that names no point at all (refused as well)."""
    point = _decompress(encoding)
    if point is None:
        return True
    for _ in range(3):
        point = _add(point, point)
    return point == (0, 1)


def verify_strict(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """RFC 8032 Ed25519, refusing what ed25519-dalek's ``verify_strict`` refuses: a
    signature not 64 bytes, ``S`` not below the group order, ``R`` or the public key of
    small order. Never raises."""
    if len(public_key) != ED25519_PUBLIC_BYTES or len(signature) != ED25519_SIGNATURE_BYTES:
        return False
    if int.from_bytes(signature[32:], "little") >= _L:
        return False
    if is_small_order(public_key) or is_small_order(signature[:32]):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), bytes(data))
    except (InvalidSignature, ValueError):
        return False
    return True


def valid_ed25519_public_key(public_key: bytes) -> bool:
    """A 32-byte encoding of a point that is not of small order."""
    return len(public_key) == ED25519_PUBLIC_BYTES and not is_small_order(public_key)


# ---------------------------------------------------------------------------------------
# Our own sender key
# ---------------------------------------------------------------------------------------


class OwnSenderKey:
    """This client's sender key for one room: a random key id, the chain at the next
    iteration to seal, a fresh Ed25519 key pair, and the chain key at the **hand-out
    point** (the oldest message the relay has not acknowledged, or the next one): a
    newcomer gets the chain from there. Chain keys before the hand-out point are erased."""

    def __init__(
        self,
        key_id: int,
        chain_key: bytes,
        signing_seed: bytes,
        iteration: int = 0,
        created_at_ms: Optional[int] = None,
    ) -> None:
        if len(chain_key) != CHAIN_KEY_BYTES:
            raise ValueError("a chain key is 32 bytes")
        self.key_id = key_id
        self._signing_key = Ed25519PrivateKey.from_private_bytes(bytes(signing_seed))
        self.signing_public_key = self._signing_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._chain_key = bytes(chain_key)
        self.next_iteration = iteration
        self._handout_chain_key = bytes(chain_key)
        self.handout_iteration = iteration
        self.created_at_ms = created_at_ms if created_at_ms is not None else time.time_ns() // 1_000_000
        #: Messages sealed under this key.
        self.sealed = 0

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom, now_ms: Optional[int] = None) -> "OwnSenderKey":
        return cls(
            key_id=int.from_bytes(rng(8), "big"),
            chain_key=rng(CHAIN_KEY_BYTES),
            signing_seed=rng(32),
            created_at_ms=now_ms,
        )

    def handout(self) -> tuple[int, bytes]:
        """``(iteration, chain key)`` at the hand-out point: what a distribution wraps."""
        return self.handout_iteration, self._handout_chain_key

    def seal(self, room: str, sender: str, plaintext: bytes) -> tuple[int, bytes, bytes]:
        """Seals the next message: ``(iteration, ciphertext with tag, Ed25519
        signature)``. The chain moves on and the message key is dropped."""
        iteration = self.next_iteration
        if iteration > MAX_ITERATION:
            raise ValueError("this sender key's chain is exhausted; rotate it")
        message_key, nonce, self._chain_key = step(self._chain_key)
        ad = message_ad(room, sender, DEVICE, self.key_id, iteration)
        ciphertext = AESGCM(message_key).encrypt(nonce, bytes(plaintext), ad)
        del message_key, nonce
        signature = self._signing_key.sign(message_signed_bytes(room, sender, DEVICE, self.key_id, iteration, ciphertext))
        self.next_iteration = iteration + 1
        self.sealed += 1
        return iteration, ciphertext, signature

    def skip(self, count: int) -> None:
        """Moves the chain ``count`` iterations on without sealing anything (a test tool
        uses it). Iterations skipped while everything was acknowledged move the hand-out
        point along, as if acknowledged."""
        all_acknowledged = self.handout_iteration == self.next_iteration
        for _ in range(count):
            self._chain_key = next_chain_key(self._chain_key)
        self.next_iteration += count
        if all_acknowledged:
            self.handout_iteration = self.next_iteration
            self._handout_chain_key = self._chain_key

    def acknowledged(self, iteration: int) -> None:
        """The relay acknowledged our message at ``iteration``: if the hand-out point was
        at or below it, move it to ``min(iteration + 1, next)`` and erase the chain keys
        before it."""
        if self.handout_iteration > iteration:
            return
        target = min(iteration + 1, self.next_iteration)
        chain_key = self._handout_chain_key
        for _ in range(target - self.handout_iteration):
            chain_key = next_chain_key(chain_key)
        self._handout_chain_key = chain_key
        self.handout_iteration = target

    def due_for_rotation(self, now_ms: int, max_messages: int, max_age_ms: int) -> bool:
        """The schedule: ``max_messages`` sealed, or ``max_age_ms`` old."""
        return self.sealed >= max_messages or now_ms - self.created_at_ms >= max_age_ms


# ---------------------------------------------------------------------------------------
# Another member's sender key, as a reader follows it
# ---------------------------------------------------------------------------------------


class OpenError(Exception):
    """A message that does not open; ``str()`` says why, for the warning."""


class Repeated(OpenError):
    """No kept key for an iteration below the next one: opened already, dropped to keep
    others, or before the hand-out point."""


class TooFarAhead(OpenError):
    """More than MAX_FORWARD_JUMP iterations past the next one expected."""


class BadTag(OpenError):
    """The AES-GCM tag does not verify."""


class PeerSenderKey:
    """A member's current sender key: its id, its Ed25519 public key, the chain at the
    next iteration not derived, and the (key, nonce) of the iterations jumped over that
    are kept for late messages (at most MAX_SKIPPED_KEYS, the lowest go first)."""

    def __init__(
        self,
        key_id: int,
        signing_public_key: bytes,
        chain_key: bytes,
        iteration: int,
        max_forward_jump: int = MAX_FORWARD_JUMP,
        max_skipped_keys: int = MAX_SKIPPED_KEYS,
    ) -> None:
        if len(chain_key) != CHAIN_KEY_BYTES:
            raise ValueError("a chain key is 32 bytes")
        if not valid_ed25519_public_key(signing_public_key):
            raise ValueError("not a valid Ed25519 public key")
        self.key_id = key_id
        self.signing_public_key = bytes(signing_public_key)
        self._chain_key = bytes(chain_key)
        self.next_iteration = iteration
        self._kept: collections.OrderedDict[int, tuple[bytes, bytes]] = collections.OrderedDict()
        self.max_forward_jump = max_forward_jump
        self.max_skipped_keys = max_skipped_keys

    @property
    def kept_count(self) -> int:
        return len(self._kept)

    def verifies(self, room: str, sender: str, key_id: int, iteration: int, ciphertext: bytes, signature: bytes) -> bool:
        """The message's Ed25519 signature (strict), over the string rebuilt from the
        delivery's room and sender, device 1 and the sealed fields. Derives nothing."""
        signed = message_signed_bytes(room, sender, DEVICE, key_id, iteration, ciphertext)
        return verify_strict(self.signing_public_key, signature, signed)

    def open(self, room: str, sender: str, iteration: int, ciphertext: bytes) -> bytes:
        """Opens a message whose signature verified; raises an :class:`OpenError`. Moves
        the chain only if the message opens."""
        if len(ciphertext) < TAG_BYTES:
            raise BadTag("its ciphertext is shorter than a tag")
        ad = message_ad(room, sender, DEVICE, self.key_id, iteration)
        if iteration < self.next_iteration:
            kept = self._kept.get(iteration)
            if kept is None:
                raise Repeated(f"iteration {iteration} was opened already or is no longer kept")
            try:
                plaintext = AESGCM(kept[0]).decrypt(kept[1], bytes(ciphertext), ad)
            except InvalidTag as exc:
                raise BadTag("its tag does not verify") from exc
            del self._kept[iteration]
            return plaintext
        jump = iteration - self.next_iteration
        if jump > self.max_forward_jump:
            raise TooFarAhead(
                f"iteration {iteration} is {jump} past the next one expected ({self.next_iteration}), "
                f"more than {self.max_forward_jump} ahead"
            )
        # Derive on a copy of the chain; keep only the skipped keys that would be kept.
        chain_key = self._chain_key
        skipped: list[tuple[int, tuple[bytes, bytes]]] = []
        first_kept = iteration - self.max_skipped_keys
        for j in range(self.next_iteration, iteration):
            if j >= first_kept:
                skipped.append((j, message_key_and_nonce(chain_key)))
            chain_key = next_chain_key(chain_key)
        message_key, nonce, after = step(chain_key)
        try:
            plaintext = AESGCM(message_key).decrypt(nonce, bytes(ciphertext), ad)
        except InvalidTag as exc:
            raise BadTag("its tag does not verify") from exc
        del message_key, nonce
        self._chain_key = after
        self.next_iteration = iteration + 1
        for j, kept in skipped:
            self._kept[j] = kept
        while len(self._kept) > self.max_skipped_keys:
            self._kept.popitem(last=False)  # the lowest iteration: inserted in order
        return plaintext
