"""Who a user is: fingerprints and safety numbers, this user's :class:`Identity` (a
signing key pair and a different encryption key pair) and another user's
:class:`PeerIdentity`, checked before it is used."""

from __future__ import annotations

import dataclasses
import hashlib

from cryptography.hazmat.primitives.asymmetric import rsa

from .binding import (
    enc_bytes,
    enc_str,
    identity_signed_bytes,
    parse_public_key,
    public_key_der,
    sign,
    verify_signature,
)
from .envelope import escape_text
from .proto import pb
from .protocol import DEFAULT_KEY_BITS, FINGERPRINT_PREFIX, SAFETY_NUMBER_PREFIX, is_valid_user_name


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
