"""The rules of chat.v1 that every layer shares: the constants and limits of
docs/PROTOCOL.md, and which user and room names are valid."""

from __future__ import annotations

import re


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
