"""The rules of chat.v2 that every layer shares: the constants and limits of
docs/PROTOCOL.md, and which user and room names are valid."""

from __future__ import annotations

import re


# ---------------------------------------------------------------------------------------
# Domain tags (PROTOCOL.md, "Signed and bound byte strings"). Four keep their v1 names.
# ---------------------------------------------------------------------------------------

IDENTITY_TAG = b"chat.v1/identity"
LOGIN_TAG = b"chat.v1/login"
FINGERPRINT_TAG = b"chat.v1/fingerprint"
SAFETY_NUMBER_TAG = b"chat.v1/safety-number"
PREKEY_TAG = b"chat.v2/prekey"
MESSAGE_KEY_INFO = b"chat.v2/message-key"
MESSAGE_AD_TAG = b"chat.v2/message"
MESSAGE_SIGNATURE_TAG = b"chat.v2/message-signature"
COPY_LABEL_TAG = b"chat.v2/sender-key"
COPY_LEAF_TAG = b"chat.v2/sender-key-copy"
DISTRIBUTION_TAG = b"chat.v2/sender-key-distribution"
INVITATION_TAG = b"chat.v2/invitation"
REMOVAL_TAG = b"chat.v2/removal"

# Old names, kept for code that imported them.
IDENTITY_SIGNATURE_PREFIX = IDENTITY_TAG
LOGIN_SIGNATURE_PREFIX = LOGIN_TAG
FINGERPRINT_PREFIX = FINGERPRINT_TAG
SAFETY_NUMBER_PREFIX = SAFETY_NUMBER_TAG

# ---------------------------------------------------------------------------------------
# Sizes and limits
# ---------------------------------------------------------------------------------------

#: The only device of a user, for now.
DEVICE = 1
#: A sender key's chain key, and what an unwrapped copy must be.
CHAIN_KEY_BYTES = 32
SENDER_KEY_BYTES = CHAIN_KEY_BYTES
#: AES-256-GCM key and nonce derived per message; the tag appended to a ciphertext.
MESSAGE_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
ED25519_PUBLIC_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
MERKLE_HASH_BYTES = 32
FINGERPRINT_BYTES = 32
#: RSA-PSS salt length of every signature.
PSS_SALT_BYTES = 32
#: A chain iteration is a u32.
MAX_ITERATION = (1 << 32) - 1
#: Copies per DistributeSenderKey frame (MAX_COPIES_PER_DISTRIBUTION).
MAX_COPIES_PER_DISTRIBUTION = 96
#: A reader follows a chain at most this far ahead of the next iteration it expects.
MAX_FORWARD_JUMP = 25_000
#: Keys of skipped iterations kept per sender key.
MAX_SKIPPED_KEYS = 2_000
#: The default rotation schedule (RotationPolicy::default()): 1,000 messages or 7 days.
ROTATE_AFTER_MESSAGES = 1_000
ROTATE_AFTER_MS = 7 * 24 * 3600 * 1000
#: The prekey schedule (PrekeyPolicy::default()): a new one after 7 days, the retired
#: one erased 14 days after it was replaced; checked at start-up and every hour.
PREKEY_ROTATE_MS = 7 * 24 * 3600 * 1000
PREKEY_KEEP_MS = 14 * 24 * 3600 * 1000
PREKEY_MAINTENANCE_SECONDS = 3600
#: Users per KeyExchange request.
MAX_KEY_EXCHANGE_USERS = 256
#: Largest JSON envelope (the sealed plaintext) a client sends.
MAX_ENVELOPE_BYTES = 32 * 1024
#: Messages kept while their sender's key has not arrived (MAX_WAITING_MESSAGES).
MAX_PENDING_MESSAGES = 1024
#: Sender key ids remembered per sender, never to be accepted again (REMEMBERED_KEY_IDS),
#: for at most this many senders.
ACCEPTED_KEY_IDS_KEPT = 256
MAX_REMEMBERED_SENDERS = 4096
#: Invitations and removals kept per private room.
MAX_INVITATIONS_KEPT = 4096
MAX_REMOVALS_KEPT = 4096
#: Frames from the relay can be this large (a Joined lists every member's key).
MAX_INBOUND_FRAME_BYTES = 4 * 1024 * 1024
ENVELOPE_VERSION = 1
KEY_BITS_ALLOWED = (2048, 3072, 4096)
DEFAULT_KEY_BITS = 3072
MIN_PEER_KEY_BITS = 2048
MAX_PEER_KEY_BITS = 4096
#: Seconds to wait for a unary RPC (CreateChallenge, Login, KeyExchange).
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
