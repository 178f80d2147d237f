"""The plaintext of a message: the JSON envelope of a text or a receipt (encoded and
padded to a multiple of 256 bytes, then decoded and checked on receipt), and how a
received text is shown on one line, escaped."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from .protocol import ENVELOPE_VERSION

#: The two kinds of envelope this version knows; any other is not shown (a warning).
TEXT = "text"
RECEIPT = "receipt"
#: Integers of the envelope are unsigned 64-bit (``v`` aside, 32-bit).
_U64_END = 1 << 64


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


#: Every sealed envelope is padded to a multiple of this many bytes (PROTOCOL.md, "Padding").
PAD_MULTIPLE = 256
#: What the ``"pad"`` field adds besides its spaces: ``,"pad":"`` and ``"``.
PAD_FIELD_BYTES = len(',"pad":""')


def pad_spaces(unpadded_length: int) -> int:
    """How many spaces ``"pad"`` holds for an envelope ``unpadded_length`` bytes long
    without it: ``(256 - (L + 9) mod 256) mod 256``."""
    return (PAD_MULTIPLE - (unpadded_length + PAD_FIELD_BYTES) % PAD_MULTIPLE) % PAD_MULTIPLE


def pad_envelope(unpadded: bytes) -> bytes:
    """Adds ``,"pad":"<spaces>"`` before the closing ``}`` of a serialized (non-empty)
    JSON object, so that the relay cannot tell a short text from a receipt, nor a text's
    length to the byte: the result is a multiple of 256 bytes long."""
    if not unpadded.endswith(b"}") or unpadded == b"{}":
        raise ValueError("only a non-empty JSON object can be padded")
    spaces = b" " * pad_spaces(len(unpadded))
    return unpadded[:-1] + b',"pad":"' + spaces + b'"}'


def _serialize(envelope: dict[str, object]) -> bytes:
    """Compact UTF-8 JSON, padded."""
    return pad_envelope(json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def encode_envelope(sender: str, text: str, sent_at_ms: int) -> bytes:
    """The plaintext of a text message: compact UTF-8 JSON, padded."""
    return _serialize({
        "v": ENVELOPE_VERSION,
        "type": TEXT,
        "sender": sender,
        "text": text,
        "sent_at_ms": sent_at_ms,
    })


def encode_receipt(sender: str, sent_at_ms: int, delivered_through: int, read_through: int) -> bytes:
    """The plaintext of a receipt: how far ``sender`` got in the room (PROTOCOL.md,
    "Receipts"); ``read_through`` is never written above ``delivered_through``."""
    return _serialize({
        "v": ENVELOPE_VERSION,
        "type": RECEIPT,
        "sender": sender,
        "text": "",
        "sent_at_ms": sent_at_ms,
        "delivered_through": delivered_through,
        "read_through": min(read_through, delivered_through),
    })


class EnvelopeError(ValueError):
    """The decrypted plaintext is not a valid envelope: the message is dropped."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_u64(value: object) -> bool:
    return _is_int(value) and 0 <= value < _U64_END  # type: ignore[operator]


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
    """A decoded envelope. Only ``kind == "text"`` is shown; a ``"receipt"`` carries
    ``delivered_through`` and ``read_through`` (None for any other kind)."""

    version: int
    kind: str
    sender: str
    text: str
    sent_at_ms: int
    delivered_through: Optional[int] = None
    read_through: Optional[int] = None


def decode_envelope(plaintext: bytes, expected_sender: str) -> Envelope:
    """Parses and checks an envelope; raises :class:`EnvelopeError` for anything to drop.

    The ``sender`` inside must equal the delivery's, so a member cannot make its message
    appear under someone else's name within the ciphertext either. Unknown fields are
    ignored: later versions may add some, and ``pad`` is one. An envelope of any length
    is accepted, padded or not.
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
    if not _is_u64(sent_at_ms):
        raise EnvelopeError("missing or invalid sent_at_ms")
    text = data.get("text")
    if not isinstance(text, str):
        raise EnvelopeError("missing or non-string text")
    for field, value in (("type", kind), ("sender", sender), ("text", text)):
        _check_encodable(value, field)
    if kind != RECEIPT:
        return Envelope(version, kind, sender, text, sent_at_ms)
    delivered, read = data.get("delivered_through"), data.get("read_through")
    if not _is_u64(delivered):
        raise EnvelopeError("a receipt with a missing or invalid delivered_through")
    if not _is_u64(read):
        raise EnvelopeError("a receipt with a missing or invalid read_through")
    return Envelope(version, kind, sender, text, sent_at_ms, delivered, read)
