"""The exact bytes that bind keys, messages and signatures to their context (the encodings,
signed byte strings, OAEP labels and associated data of docs/PROTOCOL.md), and the RSA
operations over them: RSA-PSS signatures, sender keys wrapped with RSA-OAEP, public keys
in their wire form."""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .protocol import (
    IDENTITY_SIGNATURE_PREFIX,
    LOGIN_SIGNATURE_PREFIX,
    MAX_PEER_KEY_BITS,
    MESSAGE_AD_PREFIX,
    MESSAGE_SIGNATURE_PREFIX,
    MIN_PEER_KEY_BITS,
    PSS_SALT_BYTES,
    SENDER_KEY_BYTES,
    SENDER_KEY_LABEL_PREFIX,
    SENDER_KEY_SIGNATURE_PREFIX,
)


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
