"""The exact bytes that bind keys, messages and signatures to their context (the encodings,
signed byte strings, OAEP labels, Merkle leaves and associated data of docs/PROTOCOL.md),
and the RSA operations over them: RSA-PSS signatures, chain keys wrapped with RSA-OAEP
under a prekey, public keys in their wire form."""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .protocol import (
    CHAIN_KEY_BYTES,
    COPY_LABEL_TAG,
    COPY_LEAF_TAG,
    DISTRIBUTION_TAG,
    IDENTITY_TAG,
    INVITATION_TAG,
    LOGIN_TAG,
    MAX_PEER_KEY_BITS,
    MESSAGE_AD_TAG,
    MESSAGE_SIGNATURE_TAG,
    MIN_PEER_KEY_BITS,
    PREKEY_TAG,
    PSS_SALT_BYTES,
    REMOVAL_TAG,
)


# ---------------------------------------------------------------------------------------
# Encodings: str(x), bytes(x), u16be, u32be, u64be
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


def enc_u32(n: int) -> bytes:
    """``u32be(n)``: 4 bytes, big-endian."""
    return struct.pack(">I", n)


def enc_u64(n: int) -> bytes:
    """``u64be(n)``: 8 bytes, big-endian."""
    return struct.pack(">Q", n)


# ---------------------------------------------------------------------------------------
# The byte strings
# ---------------------------------------------------------------------------------------


def identity_signed_bytes(user: str, signing_public_der: bytes, encryption_public_der: bytes) -> bytes:
    """What ``PublicIdentity.signature`` signs ("chat.v1/identity")."""
    return IDENTITY_TAG + enc_str(user) + enc_bytes(signing_public_der) + enc_bytes(encryption_public_der)


def login_signed_bytes(user: str, challenge: bytes) -> bytes:
    """What ``LoginRequest.signature`` signs ("chat.v1/login")."""
    return LOGIN_TAG + enc_str(user) + enc_bytes(challenge)


def prekey_signed_bytes(user: str, device: int, prekey_id: int, created_at_ms: int, public_der: bytes) -> bytes:
    """What ``SignedPrekey.signature`` signs ("chat.v2/prekey")."""
    return (
        PREKEY_TAG
        + enc_str(user)
        + enc_u32(device)
        + enc_u64(prekey_id)
        + enc_u64(created_at_ms)
        + enc_bytes(public_der)
    )


def message_ad(room: str, sender: str, device: int, key_id: int, iteration: int) -> bytes:
    """AES-256-GCM associated data of a message ("chat.v2/message")."""
    return MESSAGE_AD_TAG + enc_str(room) + enc_str(sender) + enc_u32(device) + enc_u64(key_id) + enc_u32(iteration)


def message_signed_bytes(
    room: str, sender: str, device: int, key_id: int, iteration: int, ciphertext: bytes
) -> bytes:
    """What ``SealedMessage.signature`` (Ed25519) signs ("chat.v2/message-signature")."""
    return (
        MESSAGE_SIGNATURE_TAG
        + enc_str(room)
        + enc_str(sender)
        + enc_u32(device)
        + enc_u64(key_id)
        + enc_u32(iteration)
        + enc_bytes(ciphertext)
    )


def copy_label(
    room: str, sender: str, sender_device: int, recipient: str, recipient_device: int, key_id: int, prekey_id: int
) -> bytes:
    """The RSA-OAEP label of a wrapped chain key ("chat.v2/sender-key")."""
    return (
        COPY_LABEL_TAG
        + enc_str(room)
        + enc_str(sender)
        + enc_u32(sender_device)
        + enc_str(recipient)
        + enc_u32(recipient_device)
        + enc_u64(key_id)
        + enc_u64(prekey_id)
    )


def copy_leaf(recipient: str, recipient_device: int, prekey_id: int, wrapped: bytes) -> bytes:
    """A leaf of a distribution's Merkle tree ("chat.v2/sender-key-copy")."""
    return COPY_LEAF_TAG + enc_str(recipient) + enc_u32(recipient_device) + enc_u64(prekey_id) + enc_bytes(wrapped)


def distribution_signed_bytes(
    room: str,
    sender: str,
    sender_device: int,
    key_id: int,
    iteration: int,
    signing_public_key: bytes,
    copy_count: int,
    merkle_root: bytes,
) -> bytes:
    """What ``DistributeSenderKey.signature`` signs ("chat.v2/sender-key-distribution")."""
    if len(merkle_root) != 32:
        raise ValueError("a Merkle root is 32 bytes")
    return (
        DISTRIBUTION_TAG
        + enc_str(room)
        + enc_str(sender)
        + enc_u32(sender_device)
        + enc_u64(key_id)
        + enc_u32(iteration)
        + enc_bytes(signing_public_key)
        + enc_u32(copy_count)
        + bytes(merkle_root)
    )


def invitation_signed_bytes(room: str, owner: str, invitee: str, invitee_fingerprint: bytes, issued_at_ms: int) -> bytes:
    """What ``Invitation.signature`` signs ("chat.v2/invitation"); the fingerprint raw."""
    if len(invitee_fingerprint) != 32:
        raise ValueError("a fingerprint is 32 bytes")
    return (
        INVITATION_TAG
        + enc_str(room)
        + enc_str(owner)
        + enc_str(invitee)
        + bytes(invitee_fingerprint)
        + enc_u64(issued_at_ms)
    )


def removal_signed_bytes(room: str, owner: str, member: str, issued_at_ms: int) -> bytes:
    """What ``Removal.signature`` signs ("chat.v2/removal")."""
    return REMOVAL_TAG + enc_str(room) + enc_str(owner) + enc_str(member) + enc_u64(issued_at_ms)


# ---------------------------------------------------------------------------------------
# RSA-PSS and RSA-OAEP
# ---------------------------------------------------------------------------------------


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_BYTES)


def sign(signing_key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt."""
    return signing_key.sign(data, _pss(), hashes.SHA256())


def verify_signature(signing_public_key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is a valid RSA-PSS signature (salt 32) of ``data``; never raises."""
    try:
        signing_public_key.verify(bytes(signature), data, _pss(), hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def wrap_chain_key(prekey: rsa.RSAPublicKey, chain_key: bytes, label: bytes) -> bytes:
    """RSA-OAEP (SHA-256, MGF1-SHA-256) of a 32-byte chain key under a prekey, with the
    copy label."""
    return prekey.encrypt(bytes(chain_key), _oaep(label))


def unwrap_chain_key(prekey: rsa.RSAPrivateKey, wrapped: bytes, label: bytes) -> bytes:
    """Inverse of :func:`wrap_chain_key`; ``ValueError`` if it does not open or is not
    32 bytes."""
    chain_key = prekey.decrypt(bytes(wrapped), _oaep(label))
    if len(chain_key) != CHAIN_KEY_BYTES:
        raise ValueError(f"unwrapped key is {len(chain_key)} bytes, not {CHAIN_KEY_BYTES}")
    return chain_key


def public_key_der(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bytes:
    """The wire form of a public key: DER X.509 SubjectPublicKeyInfo."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


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
