"""Receipts (PROTOCOL.md, "Receipts"), no I/O: what the other members of one room told us
of how far they got, and the states of our own messages it gives (:class:`ReceiptBook`,
with the ``/receipts`` lines); and when this client sends a receipt of its own
(:class:`ReceiptSchedule`)."""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Callable, Optional

from .envelope import escape_text

#: At most one receipt per room this often, carrying the latest numbers.
RECEIPT_INTERVAL_SECONDS = 2.0
#: How many of our latest acknowledged messages per room ``/receipts`` reports on.
RECENT_MESSAGES_KEPT = 10


@dataclasses.dataclass(frozen=True)
class OwnMessage:
    """One of our texts the relay acknowledged: stored under ``seq``, sealed for the
    members in ``sealed_for`` (those holding our key when we sent it)."""

    text: str
    seq: int
    sealed_for: tuple[str, ...]


def _names(names: list[str]) -> str:
    return f" ({', '.join(names)})" if names else ""


class ReceiptBook:
    """Per member of one room, the highest ``delivered_through`` and ``read_through``
    seen; and our latest acknowledged texts, whose states they give."""

    def __init__(self, kept: int = RECENT_MESSAGES_KEPT) -> None:
        #: member -> (delivered_through, read_through), each the highest seen.
        self.progress: dict[str, tuple[int, int]] = {}
        self.sent: collections.deque[OwnMessage] = collections.deque(maxlen=kept)

    def note(self, member: str, delivered_through: int, read_through: int) -> None:
        """A receipt of ``member``: a lower number than one already seen changes nothing,
        and a ``read_through`` above its ``delivered_through`` counts as the latter."""
        read_through = min(read_through, delivered_through)
        delivered, read = self.progress.get(member, (0, 0))
        self.progress[member] = (max(delivered, delivered_through), max(read, read_through))

    def stored(self, text: str, seq: int, sealed_for: tuple[str, ...]) -> None:
        """The relay acknowledged one of our texts under ``seq``."""
        self.sent.append(OwnMessage(text, seq, sealed_for))

    def delivered_to(self, message: OwnMessage) -> list[str]:
        """Those it was sealed for whose ``delivered_through`` reached it."""
        return [m for m in message.sealed_for if self.progress.get(m, (0, 0))[0] >= message.seq]

    def read_by(self, message: OwnMessage) -> list[str]:
        """Those it was sealed for whose ``read_through`` reached it."""
        return [m for m in message.sealed_for if self.progress.get(m, (0, 0))[1] >= message.seq]

    def line(self, room: str, message: OwnMessage) -> str:
        """``receipts [ROOM] "TEXT": delivered to 2 of 3 (bob, carol), read by 1 (bob)``."""
        delivered, read = self.delivered_to(message), self.read_by(message)
        return (
            f'receipts [{room}] "{escape_text(message.text)}": delivered to {len(delivered)} of '
            f"{len(message.sealed_for)}{_names(delivered)}, read by {len(read)}{_names(read)}"
        )

    def lines(self, room: str) -> list[str]:
        """What ``/receipts`` prints: one line per recent acknowledged text, oldest first."""
        if not self.sent:
            return [f"receipts [{room}]: none of your messages here has been acknowledged yet"]
        return [self.line(room, message) for message in self.sent]


class ReceiptSchedule:
    """When this client sends its receipt for one room: only once it has processed a
    text from another member, or shown one (never because of a receipt, so receipts
    never answer receipts), and at most once every :data:`RECEIPT_INTERVAL_SECONDS`.
    Whether the room is caught up, and whether receipts are sent at all, is the
    caller's to check."""

    def __init__(
        self,
        interval: float = RECEIPT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self._clock = clock
        #: Something moved since our last receipt.
        self.wanted = False
        #: The highest seq of a text shown to the person (stdout being a terminal).
        self.read_through = 0
        self.last_sent: Optional[float] = None

    def text_processed(self) -> None:
        """A text from another member was processed: ``delivered_through`` moved."""
        self.wanted = True

    def text_shown(self, seq: int) -> None:
        """A text was put in front of the person: ``read_through`` moves."""
        if seq > self.read_through:
            self.read_through = seq
            self.wanted = True

    def due_at(self) -> Optional[float]:
        """When the next receipt may go (on the schedule's clock), or None if none is wanted."""
        if not self.wanted:
            return None
        return self._clock() if self.last_sent is None else self.last_sent + self.interval

    def take(self) -> bool:
        """True (and the schedule restarts) if a receipt is wanted and may go now."""
        due = self.due_at()
        now = self._clock()
        if due is None or now < due:
            return False
        self.wanted = False
        self.last_sent = now
        return True
