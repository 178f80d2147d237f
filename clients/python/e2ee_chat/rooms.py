"""The rooms of one Chat stream (PROTOCOL.md, "Several rooms on one stream"): the
``--room`` lists (:func:`room_list`), and :class:`JoinedRoom`, what the session keeps of
one room besides its end-to-end state (:class:`~.room.RoomState`): where it asked to
catch up from and what it saved, its join and catch-up, the acknowledgements held back
until it is caught up, leaving it, and its receipts. No I/O."""

from __future__ import annotations

from typing import Iterable, Optional

from .receipts import ReceiptBook, ReceiptSchedule
from .room import RoomState


def room_list(values: Iterable[str]) -> list[str]:
    """The rooms named by ``--room`` values, each a comma list (``a,b``), in order and
    each once: joining a room twice on one stream would only be refused."""
    rooms: list[str] = []
    for value in values:
        for name in value.split(","):
            if name not in rooms:
                rooms.append(name)
    return rooms


class JoinedRoom:
    """One room joined (or being joined) on the stream.

    ``at_start`` rooms come from the command line: a refused join of one is fatal, while
    a refused ``/join`` is only reported. A room is *ready* once its ``Joined`` arrived
    and the relay acknowledged the first handout of our key: then ``joined ROOM`` is
    printed, and input typed meanwhile is handled.
    """

    def __init__(self, state: RoomState, after_seq: Optional[int], *, at_start: bool, create_private: bool) -> None:
        self.state = state
        self.name = state.room
        #: What the join asks to catch up from (the saved progress), and what is saved now.
        self.after_seq = after_seq
        self.saved_seq = after_seq
        self.at_start = at_start
        self.create_private = create_private
        self.joined = False
        self.ready = False
        #: Request ids of the first handout of our key, not acknowledged yet.
        self.initial_distributions: set[int] = set()
        #: Request ids of every handout of our key not acknowledged yet: while there is
        #: one, our messages and receipts wait in ``held`` (a message sealed under a key
        #: the relay refused to store would be stored, acknowledged, and unreadable).
        self.unanswered_distributions: set[int] = set()
        self.held: list = []
        self.caught_up = False
        #: (key_id, iteration) of our messages acknowledged before CaughtUp: applied to
        #: the hand-out point only then (PROTOCOL.md's note under "From which iteration").
        self.deferred_acks: list[tuple[int, int]] = []
        #: /part or /leave asked for it: nothing more is sent to it but the leave, once
        #: what was sent before is answered.
        self.leaving = False
        self.leave_request: Optional[int] = None
        self.receipts = ReceiptBook()
        self.schedule = ReceiptSchedule()

    def on_joined(self, distributions: list[int]) -> bool:
        """The join was answered and our key handed out in ``distributions``; True if
        the room is ready at once (nobody to hand it to)."""
        self.joined = True
        self.initial_distributions = set(distributions)
        return not self.initial_distributions

    def distribution_answered(self, request_id: int) -> bool:
        """A handout was acknowledged; True if the room just became ready."""
        self.initial_distributions.discard(request_id)
        self.unanswered_distributions.discard(request_id)
        return self.joined and not self.ready and not self.initial_distributions

    def acknowledged(self, sealed: tuple[int, int]) -> None:
        """The relay stored our message (``key_id``, ``iteration``): the hand-out point
        moves past it, once the room is caught up."""
        if self.caught_up:
            self.state.acknowledged(*sealed)
        else:
            self.deferred_acks.append(sealed)

    def on_caught_up(self) -> None:
        """Everything missed was delivered: forget the former members, apply the
        acknowledgements held back."""
        self.state.caught_up()
        self.caught_up = True
        for sealed in self.deferred_acks:
            self.state.acknowledged(*sealed)
        self.deferred_acks.clear()

    def takes_input(self) -> bool:
        """Whether messages and commands may still go to this room."""
        return self.ready and not self.leaving

    def receipt_due(self) -> bool:
        """Whether a receipt goes now: none while catching up (one after ``caught_up``),
        none once leaving, and at most one every two seconds."""
        return self.caught_up and not self.leaving and self.schedule.take()

    def next_receipt_at(self) -> Optional[float]:
        """When a receipt wanted for this room may go (monotonic clock), if one is."""
        if not self.caught_up or self.leaving:
            return None
        return self.schedule.due_at()
