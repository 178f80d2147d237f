"""The CLI session: :class:`ChatClient` logs in, joins one or several rooms on one Chat
stream and drives them, reading stdin (messages and the in-chat commands) and writing the
received messages on stdout and everything else on stderr, as the Rust ``chat-client``
does (PROTOCOL.md, "The command-line clients' output", "Several rooms on one stream")."""

from __future__ import annotations

import collections
import dataclasses
import queue
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import grpc

from .envelope import escape_text
from .errors import ClientError, RelayDown
from .home import (
    ContactBook,
    ContactsError,
    ProgressError,
    contacts_path,
    forget_room,
    load_last_seq,
    load_or_create_identity,
    progress_path,
    save_last_seqs,
)
from .identity import Identity, IdentityError, PeerIdentity, format_fingerprint, safety_number
from .membership import sign_invitation, sign_removal
from .prekeys import PrekeyStore, now_ms
from .proto import pb, pb_grpc
from .protocol import (
    MAX_KEY_EXCHANGE_USERS,
    PREKEY_MAINTENANCE_SECONDS,
    RPC_TIMEOUT_SECONDS,
    is_valid_room_name,
    is_valid_user_name,
)
from .room import Member, MessageTooLong, ReceivedMessage, RoomState
from .rooms import JoinedRoom
from .transport import (
    Backoff,
    Relays,
    auth_metadata,
    describe_rpc_error,
    is_loopback_host,
    is_relay_down,
    login,
    open_channel,
    status_name,
)


# ---------------------------------------------------------------------------------------
# The CLI session
# ---------------------------------------------------------------------------------------

HELP_TEXT = """commands:
  a plain line         a message to the current room (the first one, or /switch)
  /msg ROOM TEXT       one message to ROOM
  /switch ROOM         make ROOM the current room
  /join ROOM           join ROOM too, on the same stream (catching up from where you were)
  /part [ROOM]         leave ROOM (default: the current room) for good; /leave [ROOM] too
  /who [ROOM]          list the members of ROOM (default: the current room)
  /fingerprint         show your own fingerprint
  /verify NAME         show the safety number to compare with NAME out of band
  /verify NAME confirm mark NAME's keys verified (after comparing the safety number)
  /trust NAME          accept the new keys the relay presents for NAME
  /invite NAME         let NAME join the current room, if private (owner only)
  /kick NAME           remove NAME from the current room, if private (owner only)
  /pending             list the messages sent but not yet acknowledged by the relay
  /receipts            how far your last messages in the current room got (delivered, read)
  /history [ROOM] [N]  show ROOM's last N messages (1 to 100, default 20) on stderr:
                       history [ROOM] SENDER (YYYY-MM-DD HH:MM:SS UTC): TEXT
  /quit                disconnect and exit; you stay a member (as at end of input)
  /help                show this list
start a message with // to send a line that begins with /
end of input and /quit only disconnect: the next run in a room first shows what was
said meanwhile (where you were is saved in HOME/USER/progress.json); once you have
left every room, the client ends as at end of input"""

#: How many messages /history shows without a number, and the most it may ask for.
DEFAULT_HISTORY = 20
MAX_HISTORY = 100
#: Seconds to wait, at the end, for the relay to answer what was sent.
CLOSING_TIMEOUT_SECONDS = 15
#: The wait before the first attempt to reconnect, doubling after each failed one up to
#: the second (as the Rust client).
#: What is sent again, once, on the next stream when the last one ended before the relay
#: answered it (PROTOCOL.md, "Resending is safe"); joins, leaves and history are asked
#: afresh instead.
_RESENT = ("message", "key distribution", "receipt", "/invite", "/kick")


def history_limit(argument: Optional[str]) -> int:
    """The number of messages ``/history`` asks for: 20 without an argument, else 1 to
    100; ``ValueError`` otherwise."""
    if argument is None:
        return DEFAULT_HISTORY
    if re.fullmatch(r"[0-9]{1,3}", argument) is None or not 1 <= int(argument) <= MAX_HISTORY:
        raise ValueError(f"the number of messages must be 1 to {MAX_HISTORY}")
    return int(argument)


def history_arguments(args: list[str], joined: Callable[[str], bool]) -> tuple[Optional[str], Optional[str]]:
    """``/history [ROOM] [N]`` -> (ROOM or None, N or None). A lone argument is the room
    if it names a room ``joined`` in this session (room names may be digits), else N;
    ``ValueError`` for more than two."""
    if len(args) > 2:
        raise ValueError("usage: /history [ROOM] [N]")
    if len(args) == 2:
        return args[0], args[1]
    if len(args) == 1 and joined(args[0]):
        return args[0], None
    return None, (args[0] if args else None)


def pending_lines(texts: list[str], rooms: Optional[list[str]] = None) -> list[str]:
    """What ``/pending`` prints: the messages not acknowledged yet, one line each, each
    after its room when ``rooms`` are given (a session in several rooms)."""
    if not texts:
        return ["no message is waiting for the relay's acknowledgement"]
    where = [f"[{room}] " for room in rooms] if rooms is not None else [""] * len(texts)
    return [f"{len(texts)} message(s) sent but not acknowledged yet:"] + [
        f'  {room}"{escape_text(text)}"' for room, text in zip(where, texts)
    ]


@dataclasses.dataclass
class Request:
    """A frame sent and not answered yet: what it was and for which room.

    ``what`` is one of ``join``, ``message``, ``receipt``, ``key distribution``,
    ``history``, ``leave``, ``/invite``, ``/kick``."""

    what: str
    room: str
    #: A message's text; the user named by /invite or /kick.
    text: str = ""
    #: (key_id, iteration) of a message or receipt: the hand-out point moves on its ack.
    sealed: Optional[tuple[int, int]] = None
    #: Who held our key when a text was sealed: its receipts count against them.
    sealed_for: tuple[str, ...] = ()
    #: The frame as sent: after a reconnection the very same frame goes again.
    frame: Optional[pb.ClientFrame] = None


_CLOSE = object()  # ends the request iterator (half-closes the stream)
#: The events the relay sends on its own, each naming its room in ``room``.
_ROOM_EVENTS = ("member_joined", "member_left", "message", "sender_key", "caught_up")


class ChatClient:
    """Drives one or several rooms over one Chat stream.

    Two threads only feed ``self.events`` (stdin lines, server frames); all state lives
    in the thread running :meth:`run`, so nothing needs a lock.

    Membership outlives the stream: end of input and /quit only disconnect, and the
    next run joins each room with the last sequence number processed there
    (``progress.json``) to catch up on what was said meanwhile. Only /part or /leave
    (or a kick) ends a membership. Request ids count up over the whole stream; every
    per-room thing (end-to-end state, progress, catch-up, receipts, leaving) lives in
    the room's :class:`~.rooms.JoinedRoom`; pinned contacts are shared by all rooms.
    """

    def __init__(
        self,
        server: str | Sequence[str],
        user: str,
        rooms: str | Sequence[str],
        home: Path,
        key_bits: int,
        ca_cert: Optional[Path] = None,
        private: bool = False,
        registration_token: str = "",
        receipts: bool = True,
    ) -> None:
        #: The relays of ``--server``; checked in :meth:`run`, before any key is made.
        self.relays = Relays([server] if isinstance(server, str) else list(server))
        self.private = private
        self.registration_token = registration_token
        self.user = user
        #: The rooms of the command line, in order: the first is the current one.
        self.room_names = [rooms] if isinstance(rooms, str) else list(rooms)
        self.home = home
        self.key_bits = key_bits
        self.ca_cert = ca_cert
        self.send_receipts = receipts
        self.events: queue.Queue[tuple] = queue.Queue()
        #: What goes on the current stream; each stream has its own.
        self.outbound: queue.Queue[object] = queue.Queue()
        self.next_request_id = 1
        #: request_id -> the frame, for every frame not answered yet, in the order sent.
        self.requests: dict[int, Request] = {}
        self.prekeys: Optional[PrekeyStore] = None
        self.token: Optional[str] = None
        self.stub: Optional[pb_grpc.ChatServiceStub] = None
        self.next_maintenance = time.monotonic() + PREKEY_MAINTENANCE_SECONDS
        self.identity: Optional[Identity] = None
        self.contacts: Optional[ContactBook] = None
        #: The rooms joined or being joined, in the order asked for; a room left (or
        #: removed from, or whose join was refused) is no longer here.
        self.rooms: dict[str, JoinedRoom] = {}
        #: Where a plain line goes.
        self.current: Optional[str] = None
        #: Rooms left or removed from in this session: the relay's last frames of them
        #: are ignored silently.
        self.gone: set[str] = set()
        #: Lines are prefixed with their room once the session has several.
        self.several_rooms = len(self.room_names) > 1
        #: Whether what is printed on stdout is in front of a person (read receipts).
        self.stdout_is_terminal = False
        self.backlog: collections.deque[tuple] = collections.deque()
        self.finishing: Optional[str] = None  # "quit" once input ended or no room is left
        #: When the relay must have answered everything, once finishing.
        self.closing_deadline: Optional[float] = None
        self.any_joined = False
        self.closing = False
        self.call = None
        self.channel: Optional[grpc.Channel] = None
        #: Set when a refusal that does not end the session happened: the exit is 1.
        self.failed = False
        #: Messages the relay refused.
        self.refused = 0
        #: The last room the owner removed us from, if that left us in no room.
        self.removed_from: Optional[str] = None
        #: Where the last sequence number processed per room is saved.
        self.progress: Optional[Path] = None
        #: Per room, what the last stream left unanswered, sent again once the room is
        #: joined on the next one (before our new key).
        self.resend: dict[str, list[Request]] = {}

    # -- output -----------------------------------------------------------------------

    @staticmethod
    def info(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        self.info(f"warning: {message}")

    def _in(self, room: str) -> str:
        """`` in ROOM`` for lines about one room's messages, once there are several."""
        return f" in {room}" if self.several_rooms else ""

    def _received(self, room: JoinedRoom, message: ReceivedMessage) -> None:
        """One stdout line per text; a receipt is counted, never shown nor warned about;
        other kinds only get a note on stderr (like the Rust client), so stdout stays
        exactly the received texts."""
        if message.is_receipt:
            envelope = message.envelope
            assert envelope.delivered_through is not None and envelope.read_through is not None
            room.receipts.note(message.sender, envelope.delivered_through, envelope.read_through)
            return
        if not message.showable:
            self.warn(f"[{message.room}] {message.sender} sent a kind of message this version cannot show")
            return
        sys.stdout.write(message.line() + "\n")
        sys.stdout.flush()
        room.schedule.text_processed()
        if self.stdout_is_terminal:  # written to a pipe or a file, it is only delivered
            room.schedule.text_shown(message.seq)

    # -- setup ------------------------------------------------------------------------

    def run(self) -> int:
        """Connects, logs in, joins, chats until stdin ends, a command ends it or no
        room is left; returns the exit status."""
        for url, target, tls in self.relays.check():  # a bad URL is reported before any key is made
            if not tls and not is_loopback_host(target.rsplit(":", 1)[0]):
                self.warn(
                    f"{url} is plaintext to another machine: user and room names, what you "
                    f"send when, and your session token cross the network in clear (messages stay "
                    f"end-to-end encrypted); use https:// unless a TLS proxy is on the path"
                )
        if not is_valid_user_name(self.user):
            raise ClientError(
                f'user name "{self.user}" is invalid; use 1 to 32 of letters, digits and _ . -'
            )
        for name in self.room_names:
            self._check_room_name(name)
        if not self.room_names:
            raise ClientError("no room to join")
        self.identity = load_or_create_identity(self.home, self.user, self.key_bits, self.info)
        try:
            self.contacts = ContactBook(contacts_path(self.home, self.user))
        except ContactsError as exc:
            raise ClientError(f"{exc}; fix or move the file (it holds the keys you pinned)") from exc
        self.progress = progress_path(self.home, self.user)
        saved = {name: self._saved_seq(name) for name in self.room_names}
        self.prekeys = PrekeyStore(self.home, self.identity, log=self.info)
        self.prekeys.maintain()
        for name in self.room_names:
            self.rooms[name] = self._new_room(name, saved[name], at_start=True)
        self.current = self.room_names[0]
        self.stdout_is_terminal = sys.stdout.isatty()
        try:
            return self._session()
        finally:
            self._save_progress()
            for room in self.rooms.values():
                self._warn_undecrypted(room)
            if self.channel is not None:
                self.channel.close()

    @staticmethod
    def _check_room_name(name: str) -> None:
        if not is_valid_room_name(name):
            raise ClientError(
                f'room name "{name}" is invalid; use 1 to 64 of letters, digits and _ . # -'
            )

    def _saved_seq(self, name: str) -> Optional[int]:
        """The last sequence number processed in ``name``, as saved; ClientError if the
        file cannot be read."""
        assert self.progress is not None
        try:
            return load_last_seq(self.progress, self._deployment(), name)
        except ProgressError as exc:
            raise ClientError(str(exc)) from exc

    def _new_room(self, name: str, after_seq: Optional[int], at_start: bool) -> JoinedRoom:
        assert self.identity is not None and self.prekeys is not None
        state = RoomState(
            name,
            self.identity,
            self.prekeys,
            warn=self.warn,
            trust=self._check_trust,
            owners=self.contacts,
        )
        # --private is for the rooms of the command line; /join makes an open room.
        return JoinedRoom(state, after_seq, at_start=at_start, create_private=self.private and at_start)

    def _warn_undecrypted(self, room: JoinedRoom) -> None:
        if room.state.pending:
            self.warn(
                f"{len(room.state.pending)} message(s){self._in(room.name)} could not be decrypted: "
                f"their sender key never arrived"
            )

    def _deployment(self) -> str:
        """What the progress is saved under, whichever relay is in use."""
        return self.relays.deployment

    def _login(self) -> str:
        assert self.identity is not None and self.channel is not None
        server = self.relays.current
        try:
            response = login(self.channel, self.identity, registration_token=self.registration_token)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                details = describe_rpc_error(exc)
                if "CERTIFICATE_VERIFY_FAILED" in details:
                    hint = "" if self.ca_cert else " (for a self-signed certificate or a private CA, pass --ca-cert FILE)"
                    raise ClientError(
                        f"cannot connect to {server}: the server's certificate is not trusted{hint}: {details}"
                    ) from exc
                if server.lower().startswith("http://") and "Socket closed" in details:
                    details += " (if the relay serves TLS, use https://)"
                raise RelayDown(f"cannot connect to {server}: {details}") from exc
            if code == grpc.StatusCode.ALREADY_EXISTS:
                raise ClientError(f"cannot log in as {self.user}: {describe_rpc_error(exc)}") from exc
            raise ClientError(f"the relay refused the login of {self.user}: {describe_rpc_error(exc)}") from exc
        if response.registered:
            self.info(f"registered {self.user} on the relay with your keys")
        return response.session_token

    def _session(self) -> int:
        for untried in reversed(range(len(self.relays.urls))):
            try:
                self._connect()
                break
            except RelayDown as exc:
                if not untried:
                    raise
                down = self.relays.current
                self.relays.move_on()
                self.info(f"cannot use {down}: {exc}; trying {self.relays.current}")
        self.info(f"connected to {self.relays.current}")
        for room in list(self.rooms.values()):  # all on this one stream
            self._send_join(room)
        threading.Thread(target=self._read_stdin, name="stdin", daemon=True).start()
        return self._event_loop()

    def _connect(self) -> None:
        """Logs in at the current relay, publishes our prekey and opens the Chat stream,
        on a stream of its own; :class:`RelayDown` if the relay is not there."""
        if self.channel is not None:
            self.channel.close()
        self.channel = open_channel(self.relays.current, self.ca_cert)
        self.token = self._login()
        self.stub = pb_grpc.ChatServiceStub(self.channel)
        self._publish_prekey(fatal=True)
        # A fresh queue: the last stream's request iterator, told to end, may still be
        # waiting on its own.
        self.outbound.put(_CLOSE)
        self.outbound = queue.Queue()
        self.next_request_id = 1
        self.call = self.stub.Chat(self._requests(self.outbound), metadata=auth_metadata(self.token))
        # Each stream has its reader: the last one's ends with its stream.
        threading.Thread(target=self._read_responses, args=(self.call,), name="responses", daemon=True).start()

    def _send_join(self, room: JoinedRoom) -> None:
        join = pb.JoinRoom(room=room.name, create_private=room.create_private)
        if room.after_seq is not None:
            join.after_seq = room.after_seq  # come back and catch up from there
        self._send_frame(Request("join", room.name), join=join)

    # -- the key directory ------------------------------------------------------------

    def _key_exchange(self, what: str, publish: Optional[pb.SignedPrekey] = None, room: str = "",
                      users: tuple[str, ...] | list[str] = (), fatal: bool = False) -> Optional[pb.KeyExchangeResponse]:
        """One ``KeyExchange``; None (with a warning) if it fails: the client goes on.
        ``fatal``: a :class:`ClientError` instead (:class:`RelayDown` if the relay went)."""
        assert self.stub is not None and self.token is not None
        request = pb.KeyExchangeRequest(room=room, users=list(users))
        if publish is not None:
            request.publish.CopyFrom(publish)
        try:
            return self.stub.KeyExchange(request, metadata=auth_metadata(self.token), timeout=RPC_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            if fatal:
                error = RelayDown if is_relay_down(exc) else ClientError
                raise error(f"the key directory refused {what}: {describe_rpc_error(exc)}") from exc
            self.warn(f"the key directory refused {what}: {describe_rpc_error(exc)}")
            return None

    def _publish_prekey(self, fatal: bool = False) -> None:
        """Publishes the current prekey (the same signed message until it changes);
        ``fatal`` at the start of a stream: without it nobody could hand us a key."""
        assert self.prekeys is not None
        self._key_exchange("to publish your prekey", publish=self.prekeys.signed_current(), fatal=fatal)

    def _fetch_prekeys(self, room: JoinedRoom, names: list[str]) -> None:
        """Fetches the bundles of ``names`` for ``room``, at most 256 per call."""
        for start in range(0, len(names), MAX_KEY_EXCHANGE_USERS):
            chunk = names[start : start + MAX_KEY_EXCHANGE_USERS]
            response = self._key_exchange(f"the keys of {', '.join(chunk)}", users=chunk)
            if response is not None:
                room.state.take_bundles(response.bundles)

    def _handout_new_key(self, room: JoinedRoom) -> list[int]:
        """A new sender key for everyone in ``room``, wrapped under the members' current
        prekeys, fetched afresh (the room's, then one by one those it did not list)."""
        state = room.state
        members = state.current_members()
        what = f"the keys of {room.name}'s members"
        response = self._key_exchange(what, room=room.name) if members else None
        covered = state.take_bundles(response.bundles if response is not None else [], fresh_for=members)
        missing = [n for n in state.current_members() if n not in covered]
        if missing:
            self._fetch_prekeys(room, missing)
        return self._send_distributions(room, state.rotate())

    def _maintain_prekeys(self) -> None:
        """Every hour: rotate and erase prekeys; a new one is published at once, and a
        new sender key is handed to everyone, in every room, under their current prekeys."""
        assert self.prekeys is not None
        self.next_maintenance = time.monotonic() + PREKEY_MAINTENANCE_SECONDS
        try:
            made = self.prekeys.maintain()
        except ClientError as exc:
            self.warn(str(exc))
            return
        if made:
            self._publish_prekey()
            for room in list(self.rooms.values()):
                if room.joined and not room.leaving:
                    self._handout_new_key(room)

    # -- key pinning ------------------------------------------------------------------

    def _check_trust(self, peer: PeerIdentity) -> bool:
        """Trust on first use: pins an unknown user; refuses keys that differ from the
        pinned ones, loudly. One contact book for every room."""
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

    @staticmethod
    def _requests(outbound: queue.Queue[object]) -> Iterator[pb.ClientFrame]:
        """The request side of one stream: whatever the main thread queues, in order."""
        while True:
            frame = outbound.get()
            if frame is _CLOSE:
                return
            yield frame

    def _read_responses(self, call: object) -> None:
        try:
            for frame in call:  # type: ignore[attr-defined]
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

    def _send_frame(self, request: Request, **kind: object) -> int:
        request_id = self.next_request_id  # unique within the stream, whatever the room
        self.next_request_id += 1
        request.frame = pb.ClientFrame(request_id=request_id, **kind)
        self.requests[request_id] = request
        self.outbound.put(request.frame)
        return request_id

    def _send_distributions(self, room: JoinedRoom, frames: list[pb.DistributeSenderKey]) -> list[int]:
        sent = [self._send_frame(Request("key distribution", room.name), distribute_key=f) for f in frames]
        room.unanswered_distributions.update(sent)
        return sent

    def _send_sealed(self, room: JoinedRoom, seal: Callable[[], pb.SendMessage], request: Request) -> Optional[int]:
        """Seals with ``seal`` (after a new key, when the schedule says so) and sends; or,
        while a handout of our key is unanswered, holds the message (``request``) until
        the relay took the key (:meth:`_release_held`)."""
        if room.state.rotation_due():  # the schedule: a new key, sent before the message
            self._handout_new_key(room)
        if room.unanswered_distributions:
            if request.what == "message":  # a receipt held would be stale: a new one comes
                room.held.append(request)
            return None
        try:
            message = seal()
        except MessageTooLong as exc:
            self.info(f"not sent: {exc}")
            return None
        request.sealed = (message.sealed.key_id, message.sealed.iteration)
        request.sealed_for = room.state.sealed_for()  # after any new key: who holds this one
        return self._send_frame(request, send=message)

    def _release_held(self, room: JoinedRoom) -> None:
        """Once the relay took every handout of our key: the messages held meanwhile,
        sealed now, in the order typed."""
        while room.held and not room.unanswered_distributions:
            self._send_text(room, room.held.pop(0).text)

    def _send_text(self, room: JoinedRoom, text: str) -> None:
        self._send_sealed(room, lambda: room.state.seal_text(text), Request("message", room.name, text=text))

    def _send_receipts(self) -> None:
        """A receipt for each room where one is due (PROTOCOL.md, "Receipts"): none with
        --no-receipts, none once the session is ending."""
        if not self.send_receipts or self.finishing is not None:
            return
        for room in list(self.rooms.values()):
            if room.receipt_due():
                delivered, read = room.state.last_seq, room.schedule.read_through
                self._send_sealed(room, lambda: room.state.seal_receipt(delivered, read), Request("receipt", room.name))

    def _send_due_leaves(self) -> None:
        """Sends the leave of each room being left once everything sent to it is
        answered, so that no message of ours is left waiting behind it."""
        for room in list(self.rooms.values()):
            if room.leaving and room.leave_request is None and not self._unanswered_in(room.name):
                request = Request("leave", room.name)
                room.leave_request = self._send_frame(request, leave=pb.LeaveRoom(room=room.name))

    def _unanswered_in(self, name: str) -> bool:
        return any(r.room == name for r in self.requests.values())

    # -- the main loop ----------------------------------------------------------------

    def _event_loop(self) -> int:
        while True:
            event = self._next_event()
            kind = event[0]
            if kind == "frame":
                self._on_frame(event[1])
            elif kind == "stream_end":
                ended = self._on_stream_end(event[1])
                if ended is not None:
                    return ended
            elif kind == "timer":
                if time.monotonic() >= self.next_maintenance:
                    self._maintain_prekeys()
            elif kind in ("line", "eof"):
                if self._joining():
                    self.backlog.append(event)
                else:
                    self._on_input(event)
            if self.events.empty():  # a burst (a catch-up) costs one write, not one per frame
                self._save_progress()
                self._send_receipts()
            self._send_due_leaves()
            if self._maybe_finish():
                return self._exit_status()

    def _exit_status(self) -> int:
        if self.removed_from is not None:
            raise ClientError(f"you were removed from {self.removed_from} by its owner")
        if self.refused:
            raise ClientError(f"{self.refused} message(s) were refused by the relay")
        return 1 if self.failed else 0

    def _next_event(self) -> tuple:
        """The next event; ``("timer",)`` when the prekey maintenance or a receipt is
        due; once finishing, only until the closing deadline."""
        if self.closing_deadline is None:
            wake = min([self.next_maintenance, *self._receipt_times()])
            try:
                return self.events.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                return ("timer",)
        try:
            return self.events.get(timeout=max(0.0, self.closing_deadline - time.monotonic()))
        except queue.Empty:
            raise ClientError(
                f"timed out after {CLOSING_TIMEOUT_SECONDS} s waiting for the relay to acknowledge "
                f"{len(self.requests)} frame(s){self._undelivered()}"
            ) from None

    def _receipt_times(self) -> list[float]:
        if not self.send_receipts or self.finishing is not None:
            return []
        times = (room.next_receipt_at() for room in self.rooms.values())
        return [t for t in times if t is not None]

    def _joining(self) -> bool:
        """Whether a room is still being joined: input waits until it is ready."""
        return any(not room.ready for room in self.rooms.values())

    def _undelivered(self) -> str:
        """Lists the messages not acknowledged on stderr; returns the end of the error
        line that counts them."""
        texts = self._pending_messages()
        for request in texts:
            self.info(f'not delivered: "{escape_text(request.text)}"{self._in(request.room)}')
        return f"; {len(texts)} message(s) not delivered" if texts else ""

    def _on_stream_end(self, error: Optional[BaseException]) -> Optional[int]:
        """The exit status once the stream ended, or None once on another stream."""
        if self.closing:
            return self._exit_status()
        code = error.code() if isinstance(error, grpc.RpcError) and hasattr(error, "code") else None
        if code == grpc.StatusCode.ABORTED:
            # Not reconnecting: the two sessions would take turns.
            raise ClientError(
                f"this session was closed because {self.user} opened another session on the relay "
                f"(ABORTED){self._undelivered()}"
            )
        if isinstance(error, grpc.RpcError):
            if not self.any_joined:  # the stream never opened properly
                raise ClientError(f"cannot open the chat session: {describe_rpc_error(error)}")
            reason = describe_rpc_error(error)
        elif error is not None:
            reason = str(error)
        else:
            reason = "the stream ended"
        if not is_relay_down(error):
            raise ClientError(f"lost the connection to the relay: {reason}{self._undelivered()}")
        self._reconnect(reason)
        return None

    # -- failing over -------------------------------------------------------------------

    def _reconnect(self, reason: str) -> None:
        """The relay went: on to the next one of the deployment (the same one if there is
        only one), waiting as :class:`Backoff` says between attempts; there, every room is
        joined again from where it was, and what was not answered is sent again once.
        Past the closing deadline, gives up."""
        self._save_progress()
        lost = self.relays.current
        self.relays.move_on()
        backoff = Backoff()
        delay = backoff.before(self.relays)
        self.info(
            f"lost the connection to {lost}: {reason}; {len(self._pending_messages())} message(s) pending; "
            f"reconnecting to {self.relays.current} in {delay:g} s"
        )
        while True:
            if self.closing_deadline is not None and time.monotonic() + delay >= self.closing_deadline:
                raise ClientError(
                    f"gave up: could not reconnect to the relay within {CLOSING_TIMEOUT_SECONDS} s after the "
                    f"end of input{self._undelivered()}"
                )
            time.sleep(delay)
            try:
                self._connect()
                break
            except RelayDown as exc:
                failed = self.relays.current
                self.relays.move_on()
                delay = backoff.before(self.relays)
                self.info(f"could not reconnect to {failed}: {exc}; trying {self.relays.current} in {delay:g} s")
        pending = len(self._pending_messages())
        self._rejoin()
        self.info(f"reconnected to {self.relays.current}; sending {pending} pending message(s) again")

    def _pending_messages(self) -> list[Request]:
        """Our messages the relay has not acknowledged yet, those waiting to go again
        first, and those held behind a handout of our key last."""
        held = [r for room in self.rooms.values() for r in room.held]
        return [r for r in self._unanswered() if r.what == "message"] + held

    def _unanswered(self) -> list[Request]:
        """What the relay has not answered: what waits to be sent again (it went first),
        then what went on this stream, each in the order sent."""
        waiting = [r for requests in self.resend.values() for r in requests]
        return waiting + [self.requests[i] for i in sorted(self.requests)]

    def _rejoin(self) -> None:
        """Joins every room again on the new stream, each as a client started afresh
        would, from the last seq processed there (the relay hands back the keys in force
        then); keeps for each what the last stream left unanswered, to send again."""
        # What waits from an earlier stream still goes first: this one may have ended
        # before its room was joined again.
        unanswered = self._unanswered()
        self.requests = {}
        self.resend = {}
        for request in unanswered:
            if request.what in _RESENT and request.room in self.rooms:
                # Sealed under a sender key the new room state does not hold: its ack
                # moves no hand-out point.
                request.sealed = None
                self.resend.setdefault(request.room, []).append(request)
        for name, old in list(self.rooms.items()):
            after_seq = old.state.last_seq if old.joined else old.after_seq
            room = self._new_room(name, after_seq, at_start=old.at_start)
            room.create_private = old.create_private
            room.saved_seq = old.saved_seq
            room.leaving = old.leaving
            room.held = old.held  # sent once the new stream took our key
            room.receipts, room.schedule = old.receipts, old.schedule
            self.rooms[name] = room
            self._send_join(room)

    def _send_again(self, room: JoinedRoom) -> None:
        """What the last stream left unanswered in ``room``, the very same frames in the
        order first sent, before anything new (PROTOCOL.md, "Resending is safe")."""
        for request in self.resend.pop(room.name, []):
            assert request.frame is not None
            kind = request.frame.WhichOneof("kind")
            self._send_frame(request, **{kind: getattr(request.frame, kind)})

    # -- saved progress -----------------------------------------------------------------

    def _save_progress(self) -> None:
        """Saves, in one write, the last sequence number processed in each room where it
        moved (a warning if it cannot)."""
        if self.progress is None:
            return
        moved = {
            name: room.state.last_seq
            for name, room in self.rooms.items()
            if room.joined and room.state.last_seq != room.saved_seq
        }
        if not moved:
            return
        try:
            save_last_seqs(self.progress, self._deployment(), moved)
        except (ProgressError, OSError) as exc:
            self.warn(f"cannot save progress {self.progress}: {exc}")
            return
        for name, seq in moved.items():
            self.rooms[name].saved_seq = seq

    def _forget_progress(self, name: str) -> None:
        """Out of ``name`` for good: its next join is a first join."""
        assert self.progress is not None
        try:
            forget_room(self.progress, self._deployment(), name)
        except (ProgressError, OSError) as exc:
            self.warn(f"cannot update progress {self.progress}: {exc}")

    def _maybe_finish(self) -> bool:
        """Once finishing (end of input, /quit, no room left): once every frame is
        answered and every room being left is left, close the stream. Returns True when
        the session is over."""
        if self.finishing is not None and self.closing_deadline is None:
            self.closing_deadline = time.monotonic() + CLOSING_TIMEOUT_SECONDS
        if self.finishing is None or self.requests or any(r.leaving for r in self.rooms.values()):
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

    # -- the rooms of the stream --------------------------------------------------------

    def _first_room(self) -> Optional[str]:
        """The first room still joined and not being left: the current one after a leave."""
        return next((name for name, room in self.rooms.items() if not room.leaving), None)

    def _drop_room(self, name: str, membership_ended: bool, removed: bool = False) -> None:
        """``name`` is no longer part of the session: left, removed from, or its join
        refused. Once no room is left, the session ends as at end of input. Removed from
        the current room, there is no current room until /switch: a line meant for it
        must not go to another."""
        room = self.rooms.pop(name)
        if membership_ended:
            self.gone.add(name)
            self._forget_progress(name)
            self._warn_undecrypted(room)
        if removed and self.current == name:
            self.current = None
            if self._first_room() is not None:
                self.warn(f"{name} was your current room: choose another with /switch ROOM before sending")
        elif self.current == name or (self.current is not None and self.rooms[self.current].leaving):
            self.current = self._first_room()
        if self._first_room() is None and self.finishing is None:
            self.finishing = "quit"
        self._drain_backlog()

    def _room_of(self, name: str, what: str) -> Optional[JoinedRoom]:
        """The joined room an event of the relay is about; None (a warning unless we
        just left it) if it is none of ours."""
        room = self.rooms.get(name)
        if room is not None and room.joined:
            return room
        if name not in self.gone:
            self.warn(f"ignoring {what} for {escape_text(name)!r}, a room not joined on this stream")
        return None

    # -- frames in --------------------------------------------------------------------

    def _on_frame(self, frame: pb.ServerFrame) -> None:
        which = frame.WhichOneof("kind")
        if frame.request_id != 0:
            self._on_answer(frame, which)
            return
        if which not in _ROOM_EVENTS:
            self.warn(f"ignoring an unexpected frame from the relay ({which})")
            return
        event = getattr(frame, which)
        room = self._room_of(event.room, f"a {which.replace('_', ' ')}")
        if room is None:
            return
        handler = {
            "member_joined": self._on_member_joined,
            "member_left": self._on_member_left,
            "message": self._on_message,
            "sender_key": self._on_sender_key,
            "caught_up": self._on_caught_up,
        }[which]
        handler(room, event)

    def _on_answer(self, frame: pb.ServerFrame, which: Optional[str]) -> None:
        request = self.requests.pop(frame.request_id, None)
        if request is None:
            self.warn(f"ignoring an answer to unknown request {frame.request_id}")
            return
        room = self.rooms.get(request.room)
        if request.what in ("/invite", "/kick"):
            self._on_owner_answer(request, frame, which)
        elif which == "rejection":
            self._on_rejection(request, room, frame.rejection)
        elif room is None:
            return  # the room is gone: what is left of it no longer matters
        elif request.what == "join":
            if which != "joined":
                raise ClientError(f"unexpected answer to JoinRoom: {which}")
            self._on_joined(room, frame.joined)
        elif request.what == "history":
            if which != "history":
                raise ClientError(f"unexpected answer to GetHistory: {which}")
            self._show_history(room, frame.history)
        elif which != "ack":
            raise ClientError(f"unexpected answer to a {request.what}: {which}")
        else:
            self._on_ack(request, room, frame.request_id, frame.ack)

    def _on_rejection(self, request: Request, room: Optional[JoinedRoom], rejection: pb.Rejection) -> None:
        reason = f"{status_name(rejection.code)}: {rejection.message}"
        if request.what == "join":
            if room is None or room.at_start:
                raise ClientError(f"cannot join {request.room}: {reason}")
            self.info(f"cannot join {request.room}: {reason}")  # a /join: the session goes on
            self._drop_room(request.room, membership_ended=False)
        elif request.what == "message":
            self.refused += 1
            self.info(f'failed to send "{escape_text(request.text)}"{self._in(request.room)}: {reason}')
        elif room is None:
            return  # removed from the room meanwhile: its last frames were refused
        elif request.what == "receipt":
            self.warn(f"the relay refused a receipt in {request.room}: {reason}")
        elif request.what == "history":
            self.warn(f"the relay refused to send the history{self._in(request.room)}: {reason}")
        else:
            raise ClientError(
                f"the relay refused a {request.what}{self._in(request.room)}: {reason}{self._undelivered()}"
            )

    def _on_ack(self, request: Request, room: JoinedRoom, request_id: int, ack: pb.Ack) -> None:
        # Our own entries never move last_seq: only deliveries do.
        if request.sealed is not None:
            room.acknowledged(request.sealed)
        if request.what == "message":
            room.receipts.stored(request.text, ack.seq, request.sealed_for)
        elif request.what == "key distribution":
            if room.distribution_answered(request_id):
                self._become_ready(room)
            self._release_held(room)
        elif request.what == "leave":
            self.info(f"left {room.name}")
            self._drop_room(room.name, membership_ended=True)

    def _on_owner_answer(self, request: Request, frame: pb.ServerFrame, which: Optional[str]) -> None:
        """The answer to /invite or /kick: a refusal is reported, and the session goes on."""
        command, user = request.what, request.text
        if which == "rejection":
            self.failed = True
            rejection = frame.rejection
            self.info(
                f"the relay refused {command} {user}: {status_name(rejection.code)}: {rejection.message}"
            )
        elif command == "/invite":
            self.info(f"{user} may now join {request.room}")
        else:
            self.info(f"{user} is no longer a member of {request.room} nor invited")

    def _on_joined(self, room: JoinedRoom, joined: pb.Joined) -> None:
        self.any_joined = True
        if joined.private_room:
            owner = "you" if joined.owner == self.user else escape_text(joined.owner)
            self.info(f"{room.name} is a private room owned by {owner}")
        elif room.create_private:
            self.warn(f"{room.name} is an open room: anyone can join it")
        room.state.on_joined(joined, room.after_seq)
        self._send_again(room)
        if room.on_joined(self._handout_new_key(room)):
            self._become_ready(room)

    def _become_ready(self, room: JoinedRoom) -> None:
        """Our key is with every member: announce it, and once no room is being joined,
        handle what was typed meanwhile."""
        room.ready = True
        self.info(f"joined {room.name} as {self.user} ({self._members_text(room, joined=True)})")
        self._release_held(room)
        self._drain_backlog()

    def _drain_backlog(self) -> None:
        while self.backlog and self.finishing is None and not self._joining():
            self._on_input(self.backlog.popleft())

    def _members_text(self, room: JoinedRoom, joined: bool = False) -> str:
        names = room.state.current_members()
        if not names and joined:
            return f"you are alone in {room.name}"
        untrusted = set(room.state.untrusted_members())
        shown = [f"{n} (keys changed, not trusted)" if n in untrusted else n for n in names]
        return f"members of {room.name}: " + ", ".join(["you", *shown])

    def _on_member_joined(self, room: JoinedRoom, event: pb.MemberJoined) -> None:
        if room.leave_request is not None:
            return
        invitation = event.invitation if event.HasField("invitation") else None
        name = room.state.member_joined(event.member, invitation)
        if name is None:
            return
        self.info(f"* {name} joined {room.name}")
        if room.state.members[name].prekey is None:
            self._fetch_prekeys(room, [name])
        self._send_distributions(room, room.state.handout_to(name))

    def _on_member_left(self, room: JoinedRoom, event: pb.MemberLeft) -> None:
        if room.leave_request is not None:
            return
        if event.user == self.user:
            if event.reason == pb.LEAVE_REASON_KICKED:
                self._on_removed(room)
            else:
                self.warn(f"ignoring a MemberLeft about yourself in {room.name}")
            return
        if not is_valid_user_name(event.user):
            self.warn(f"ignoring a MemberLeft for an invalid member {escape_text(event.user)!r}")
            return
        removal = event.removal if event.HasField("removal") else None
        if not room.state.member_left(event.user, removal):
            return
        self._handout_new_key(room)
        self.info(f"* {self._departure(room.name, event)}; your sender key was rotated")

    @staticmethod
    def _departure(room: str, event: pb.MemberLeft) -> str:
        if event.reason == pb.LEAVE_REASON_LEFT:
            return f"{event.user} left {room}"
        if event.reason == pb.LEAVE_REASON_KICKED:
            return f"{event.user} left {room} (removed by the owner)"
        if event.reason == pb.LEAVE_REASON_RECLAIMED:
            return f"{event.user} left {room} (unused too long, removed by the relay)"
        return f"{event.user} disconnected from {room}"

    def _on_removed(self, room: JoinedRoom) -> None:
        """The owner removed us: the room is gone from the session; the last one gone
        ends it, as at end of input, with the removal as its error."""
        self.info(f"* the owner of {room.name} removed you from it")
        self._drop_room(room.name, membership_ended=True, removed=True)
        if not self.rooms:
            self.removed_from = room.name

    def _on_message(self, room: JoinedRoom, delivery: pb.MessageDelivery) -> None:
        message = room.state.open(delivery)
        if message is not None:
            self._received(room, message)

    def _on_sender_key(self, room: JoinedRoom, delivery: pb.SenderKeyDelivery) -> None:
        for message in room.state.accept_sender_key(delivery):
            self._received(room, message)

    def _on_caught_up(self, room: JoinedRoom, _event: pb.CaughtUp) -> None:
        """Everything missed in the room has been delivered; what follows is live."""
        room.on_caught_up()
        self.info(f"caught up on {room.name}")

    def _show_history(self, room: JoinedRoom, history: pb.History) -> None:
        """The answer to /history, opened apart from the live state, on stderr."""
        if history.room != room.name:
            self.warn(f"ignoring a history of another room ({escape_text(history.room)!r})")
            return
        messages = room.state.open_history(history)
        if not messages:
            self.info(f"history [{room.name}]: no messages")
        for message in messages:
            self.info(message.line(room.name))

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
        if line.startswith("/") and not line.startswith("//"):
            self._command(line)
            return
        room = self._current_room()
        if room is not None:
            self._send_text(room, line[1:] if line.startswith("//") else line)

    def _current_room(self) -> Optional[JoinedRoom]:
        room = self.rooms.get(self.current) if self.current is not None else None
        if room is None and self.current is None and self._first_room() is not None:
            self.info("you have no current room: choose one with /switch ROOM")
            return None
        if room is None or not room.takes_input():
            self.info("you are in no room: /join ROOM")
            return None
        return room

    def _command(self, line: str) -> None:
        words = line.split()
        command, args = words[0], words[1:]
        handlers: dict[str, Callable[[list[str], str], None]] = {
            "/msg": self._cmd_msg,
            "/switch": self._cmd_switch,
            "/join": self._cmd_join,
            "/part": self._cmd_part,
            "/leave": self._cmd_part,
            "/who": self._cmd_who,
            "/history": self._cmd_history,
            "/pending": self._cmd_pending,
            "/receipts": self._cmd_receipts,
            "/fingerprint": self._cmd_fingerprint,
            "/verify": self._cmd_verify,
            "/trust": self._cmd_one_name,
            "/invite": self._cmd_one_name,
            "/kick": self._cmd_one_name,
            "/quit": self._cmd_quit,
            "/help": lambda _args, _line: self.info(HELP_TEXT),
        }
        handler = handlers.get(command)
        if handler is None:
            self.info(f"unknown command {command}; type /help for the list")
        else:
            handler(args, line)

    def _room_named(self, name: str, command: str) -> Optional[JoinedRoom]:
        """``name``, if it is a room of this session that still takes input (else says why)."""
        room = self.rooms.get(name)
        if room is not None and room.takes_input():
            return room
        if room is not None:
            self.info(f"{command}: you are leaving {name}")
        else:
            self.info(f"{command}: you are not in {escape_text(name)} (/join {escape_text(name)} first)")
        return None

    def _room_argument(self, args: list[str], command: str) -> Optional[JoinedRoom]:
        """The room a ``COMMAND [ROOM]`` acts on: ROOM, by default the current room."""
        if len(args) > 1:
            self.info(f"usage: {command} [ROOM]")
            return None
        if args:
            return self._room_named(args[0], command)
        return self._current_room()

    def _cmd_msg(self, _args: list[str], line: str) -> None:
        parts = line.split(None, 2)  # the text keeps its inner spacing
        if len(parts) < 3:
            self.info("usage: /msg ROOM TEXT")
            return
        room = self._room_named(parts[1], "/msg")
        if room is not None:
            self._send_text(room, parts[2])

    def _cmd_switch(self, args: list[str], _line: str) -> None:
        if len(args) != 1:
            self.info("usage: /switch ROOM")
            return
        room = self._room_named(args[0], "/switch")
        if room is not None:
            self.current = room.name
            self.info(f"now in {room.name}: plain lines go there")

    def _cmd_join(self, args: list[str], _line: str) -> None:
        if len(args) != 1:
            self.info("usage: /join ROOM")
            return
        name = args[0]
        if not is_valid_room_name(name):
            self.info(f"/join: invalid room name {escape_text(name)!r}; use 1 to 64 of letters, digits and _ . # -")
            return
        if name in self.rooms:
            self.info(f"/join: you are already in {name}" if not self.rooms[name].leaving else f"/join: you are leaving {name}")
            return
        try:
            after_seq = self._saved_seq(name)  # caught up from where we were, as a start would
        except ClientError as exc:
            self.info(f"cannot join {name}: {exc}")
            return
        room = self.rooms[name] = self._new_room(name, after_seq, at_start=False)
        self.several_rooms = True
        self.gone.discard(name)
        self._send_join(room)

    def _cmd_part(self, args: list[str], line: str) -> None:
        room = self._room_argument(args, line.split()[0])
        if room is None:
            return
        room.leaving = True  # the leave goes once what was sent to it is answered
        if self.current == room.name:
            self.current = self._first_room()
        if self._first_room() is None:
            self.finishing = "quit"  # the last room: end as at end of input, once left

    def _cmd_quit(self, _args: list[str], _line: str) -> None:
        self.finishing = "quit"

    def _cmd_who(self, args: list[str], _line: str) -> None:
        room = self._room_argument(args, "/who")
        if room is not None:
            self.info(self._members_text(room))

    def _cmd_history(self, args: list[str], _line: str) -> None:
        try:
            name, count = history_arguments(args, lambda n: n in self.rooms)
            limit = history_limit(count)
        except ValueError as exc:
            self.info(f"/history: {exc}")
            return
        room = self._room_named(name, "/history") if name is not None else self._current_room()
        if room is not None:
            self._send_frame(Request("history", room.name), history=pb.GetHistory(room=room.name, limit=limit))

    def _cmd_pending(self, args: list[str], _line: str) -> None:
        if args:
            self.info("usage: /pending")
            return
        texts = self._pending_messages()
        rooms = [r.room for r in texts] if self.several_rooms else None
        for line in pending_lines([r.text for r in texts], rooms):
            self.info(line)

    def _cmd_receipts(self, args: list[str], _line: str) -> None:
        if args:
            self.info("usage: /receipts")
            return
        room = self._current_room()
        if room is not None:
            for line in room.receipts.lines(room.name):
                self.info(line)

    def _cmd_fingerprint(self, _args: list[str], _line: str) -> None:
        assert self.identity is not None
        self.info(f"your fingerprint ({self.user}): {format_fingerprint(self.identity.fingerprint)}")

    def _cmd_verify(self, args: list[str], _line: str) -> None:
        if len(args) == 2 and args[1] == "confirm":
            self._confirm(args[0])
        elif len(args) == 1:
            self._safety(args[0])
        else:
            self.info("usage: /verify NAME [confirm]")

    def _cmd_one_name(self, args: list[str], line: str) -> None:
        """/trust, /invite and /kick take one user name."""
        command = line.split()[0]
        if len(args) != 1:
            self.info(f"usage: {command} NAME")
        elif command == "/trust":
            self._trust(args[0])
        else:
            room = self._current_room()
            if room is not None:
                self._owner_command(room, command, args[0])

    def _member_anywhere(self, name: str) -> Optional[Member]:
        """``name`` as a member of the current room, else of another room of ours."""
        ordered = sorted(self.rooms.values(), key=lambda r: r.name != self.current)
        for room in ordered:
            member = room.state.members.get(name)
            if member is not None and not member.former:
                return member
        return None

    def _not_a_member(self, name: str) -> None:
        where = self.current if self.current is not None and not self.several_rooms else "any of your rooms"
        self.info(f"{name} is not a member of {where}")

    def _safety(self, name: str) -> None:
        assert self.identity is not None
        member = self._member_anywhere(name)
        if member is None:
            self._not_a_member(name)
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
        assert self.contacts is not None
        member = self._member_anywhere(name)
        if member is None:
            self._not_a_member(name)
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

    def _owner_command(self, room: JoinedRoom, command: str, name: str) -> None:
        if not is_valid_user_name(name):
            self.info(f"invalid user name {escape_text(name)!r}")
            return
        assert self.identity is not None
        if name == self.user:
            self.info(f"{command}: you cannot {command[1:]} yourself")
            return
        request = Request(command, room.name, text=name)
        if command == "/invite":
            invitee = self._invitee_keys(name)
            if invitee is None:
                return
            invitation = sign_invitation(self.identity, room.name, name, invitee.fingerprint, now_ms())
            self._send_frame(request, invite=pb.InviteMember(room=room.name, invitation=invitation))
        else:
            removal = sign_removal(self.identity, room.name, name, now_ms())
            self._send_frame(request, kick=pb.KickMember(room=room.name, removal=removal))

    def _invitee_keys(self, name: str) -> Optional[PeerIdentity]:
        """The keys to invite ``name`` with: fetched from the key directory, checked, and
        compared with those pinned for it (pinned on first use); None if they changed."""
        response = self._key_exchange(f"the keys of {name}", users=[name])
        if response is None:
            return None
        bundle = next((b for b in response.bundles if b.identity.user == name), None)
        if bundle is None:
            self.info(f"/invite: the key directory has no keys for {name}")
            return None
        try:
            peer = PeerIdentity.from_public(bundle.identity)
        except IdentityError as exc:
            self.warn(f"not inviting {name}: the keys the relay presents do not verify ({exc})")
            return None
        if not self._check_trust(peer):
            self.info(f"not inviting {name}: its keys changed (compare safety numbers, then /trust {name})")
            return None
        return peer

    def _trust(self, name: str) -> None:
        """Accepts the keys presented for ``name``, pinned once for every room; each room
        where it was refused takes its held key and hands out a new one of ours."""
        assert self.contacts is not None
        member = self._member_anywhere(name)
        if member is None:
            self._not_a_member(name)
            return
        refused = [r for r in self.rooms.values() if name in r.state.untrusted_members()]
        if not refused:
            self.info(f"the keys of {name} are already trusted")
            return
        accepted = refused[0].state.members[name].identity
        try:
            self.contacts.pin(name, accepted.fingerprint_hex)
        except (OSError, ValueError) as exc:
            self.warn(f"cannot save the keys of {name} to {self.contacts.path}: {exc}")
        for room in refused:
            if room.state.members[name].identity.fingerprint != accepted.fingerprint:
                self.warn(f"not trusting {name} in {room.name}: the relay presents other keys for {name} there")
            elif room.state.trust_member(name):
                self._handout_new_key(room)
        self.info(f"now trusting the keys of {name} (fingerprint {format_fingerprint(accepted.fingerprint)})")
