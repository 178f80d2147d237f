"""The CLI session: :class:`ChatClient` logs in, joins one room and drives it over one
Chat stream, reading stdin (messages and the in-chat commands) and writing the received
messages on stdout and everything else on stderr, as the Rust ``chat-client`` does."""

from __future__ import annotations

import collections
import queue
import re
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import grpc

from .envelope import escape_text
from .errors import ClientError
from .home import (
    ContactBook,
    ContactsError,
    ProgressError,
    contacts_path,
    forget_room,
    load_last_seq,
    load_or_create_identity,
    progress_path,
    save_last_seq,
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
from .room import MessageTooLong, ReceivedMessage, RoomState
from .transport import (
    auth_metadata,
    describe_rpc_error,
    is_loopback_host,
    login,
    open_channel,
    parse_server_url,
    status_name,
)


# ---------------------------------------------------------------------------------------
# The CLI session
# ---------------------------------------------------------------------------------------

HELP_TEXT = """commands:
  /who                 list the members of the room
  /fingerprint         show your own fingerprint
  /verify NAME         show the safety number to compare with NAME out of band
  /verify NAME confirm mark NAME's keys verified (after comparing the safety number)
  /trust NAME          accept the new keys the relay presents for NAME
  /invite NAME         let NAME join this private room (owner only)
  /kick NAME           remove NAME from this private room (owner only)
  /pending             list the messages sent but not yet acknowledged by the relay
  /history [N]         show the room's last N messages (1 to 100, default 20) on stderr:
                       history [ROOM] SENDER (YYYY-MM-DD HH:MM:SS UTC): TEXT
  /leave               leave the room for good and exit
  /quit                disconnect and exit; you stay a member (as at end of input)
  /help                show this list
start a message with // to send a line that begins with /
end of input and /quit only disconnect: the next run in the room first shows what was
said meanwhile (where you were is saved in HOME/USER/progress.json)"""

#: How many messages /history shows without a number, and the most it may ask for.
DEFAULT_HISTORY = 20
MAX_HISTORY = 100
#: Seconds to wait, at the end, for the relay to answer what was sent.
CLOSING_TIMEOUT_SECONDS = 15


def history_limit(argument: Optional[str]) -> int:
    """The number of messages ``/history`` asks for: 20 without an argument, else 1 to
    100; ``ValueError`` otherwise."""
    if argument is None:
        return DEFAULT_HISTORY
    if re.fullmatch(r"[0-9]{1,3}", argument) is None or not 1 <= int(argument) <= MAX_HISTORY:
        raise ValueError(f"the number of messages must be 1 to {MAX_HISTORY}")
    return int(argument)


def pending_lines(texts: list[str]) -> list[str]:
    """What ``/pending`` prints: the messages not acknowledged yet, one line each."""
    if not texts:
        return ["no message is waiting for the relay's acknowledgement"]
    return [f"{len(texts)} message(s) sent but not acknowledged yet:"] + [
        f'  "{escape_text(text)}"' for text in texts
    ]

_CLOSE = object()  # ends the request iterator (half-closes the stream)


class ChatClient:
    """Drives one room over one Chat stream.

    Two threads only feed ``self.events`` (stdin lines, server frames); all state lives
    in the thread running :meth:`run`, so nothing needs a lock.

    Membership outlives the stream: end of input and /quit only disconnect, and the
    next run joins with the last sequence number processed (``progress.json``) to
    catch up on what was said meanwhile. Only /leave (or a kick) ends the membership.
    """

    def __init__(
        self,
        server: str,
        user: str,
        room: str,
        home: Path,
        key_bits: int,
        ca_cert: Optional[Path] = None,
        private: bool = False,
        registration_token: str = "",
    ) -> None:
        self.server = server
        self.private = private
        self.registration_token = registration_token
        self.user = user
        self.room_name = room
        self.home = home
        self.key_bits = key_bits
        self.ca_cert = ca_cert
        self.events: queue.Queue[tuple] = queue.Queue()
        self.outbound: queue.Queue[object] = queue.Queue()
        self.next_request_id = 1
        #: request_id -> what the frame was, for every frame not answered yet.
        self.unanswered: dict[int, str] = {}
        self.initial_distributions: set[int] = set()
        self.prekeys: Optional[PrekeyStore] = None
        self.token: Optional[str] = None
        self.stub: Optional[pb_grpc.ChatServiceStub] = None
        #: request_id -> (key_id, iteration) of our messages not acknowledged yet.
        self.sealed_by_request: dict[int, tuple[int, int]] = {}
        #: Acknowledgements that arrived before the room's CaughtUp: applied to the
        #: hand-out point only then (PROTOCOL.md's note under "From which iteration").
        self.deferred_acks: list[tuple[int, int]] = []
        self.caught_up_seen = False
        self.next_maintenance = time.monotonic() + PREKEY_MAINTENANCE_SECONDS
        self.identity: Optional[Identity] = None
        self.contacts: Optional[ContactBook] = None
        self.room: Optional[RoomState] = None
        self.ready = False
        self.backlog: collections.deque[tuple] = collections.deque()
        self.finishing: Optional[str] = None  # "leave" or "quit"
        #: When the relay must have answered everything, once finishing.
        self.closing_deadline: Optional[float] = None
        self.leave_request: Optional[int] = None
        self.left = False
        self.joined_seen = False
        self.closing = False
        self.call = None
        self.channel: Optional[grpc.Channel] = None
        #: request_id -> (command, user) of /invite and /kick frames not answered yet.
        self.owner_requests: dict[int, tuple[str, str]] = {}
        #: Set when a refusal that does not end the session happened: the exit is 1.
        self.failed = False
        #: request_id -> text of our messages the relay has not acknowledged, in order.
        self.unacked: dict[int, str] = {}
        #: Messages the relay refused.
        self.refused = 0
        #: Where the last sequence number processed is saved, and what was saved there.
        self.progress: Optional[Path] = None
        self.after_seq: Optional[int] = None
        self.saved_seq: Optional[int] = None
        #: We left the room or were removed: nothing to catch up on next time.
        self.membership_ended = False

    # -- output -----------------------------------------------------------------------

    @staticmethod
    def info(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        self.info(f"warning: {message}")

    def show(self, message: ReceivedMessage) -> None:
        """One stdout line per text; a receipt is routine traffic, never shown nor warned
        about; other kinds only get a note on stderr (like the Rust client), so stdout
        stays exactly the received texts."""
        if message.is_receipt:
            return
        if not message.showable:
            self.warn(f"[{message.room}] {message.sender} sent a kind of message this version cannot show")
            return
        sys.stdout.write(message.line() + "\n")
        sys.stdout.flush()

    # -- setup ------------------------------------------------------------------------

    def run(self) -> int:
        """Connects, logs in, joins, chats until stdin ends or a command ends it;
        returns 0."""
        target, tls = parse_server_url(self.server)  # a bad URL is reported before any key is made
        if not tls and not is_loopback_host(target.rsplit(":", 1)[0]):
            self.warn(
                f"{self.server} is plaintext to another machine: user and room names, what you "
                f"send when, and your session token cross the network in clear (messages stay "
                f"end-to-end encrypted); use https:// unless a TLS proxy is on the path"
            )
        if not is_valid_user_name(self.user):
            raise ClientError(
                f'user name "{self.user}" is invalid; use 1 to 32 of letters, digits and _ . -'
            )
        if not is_valid_room_name(self.room_name):
            raise ClientError(
                f'room name "{self.room_name}" is invalid; use 1 to 64 of letters, digits and _ . # -'
            )
        self.identity = load_or_create_identity(self.home, self.user, self.key_bits, self.info)
        try:
            self.contacts = ContactBook(contacts_path(self.home, self.user))
        except ContactsError as exc:
            raise ClientError(f"{exc}; fix or move the file (it holds the keys you pinned)") from exc
        self.progress = progress_path(self.home, self.user)
        try:
            self.after_seq = self.saved_seq = load_last_seq(self.progress, self.server, self.room_name)
        except ProgressError as exc:
            raise ClientError(str(exc)) from exc
        self.prekeys = PrekeyStore(self.home, self.identity, log=self.info)
        self.prekeys.maintain()
        self.room = RoomState(
            self.room_name,
            self.identity,
            self.prekeys,
            warn=self.warn,
            trust=self._check_trust,
            owners=self.contacts,
        )
        self.channel = open_channel(self.server, self.ca_cert)
        try:
            return self._session()
        finally:
            self._settle_progress()
            if self.room.pending:
                self.warn(
                    f"{len(self.room.pending)} message(s) could not be decrypted: their sender key never arrived"
                )
            self.channel.close()

    def _login(self) -> str:
        assert self.identity is not None and self.channel is not None
        try:
            response = login(self.channel, self.identity, registration_token=self.registration_token)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                details = describe_rpc_error(exc)
                if "CERTIFICATE_VERIFY_FAILED" in details:
                    hint = "" if self.ca_cert else " (for a self-signed certificate or a private CA, pass --ca-cert FILE)"
                    raise ClientError(
                        f"cannot connect to {self.server}: the server's certificate is not trusted{hint}: {details}"
                    ) from exc
                if self.server.lower().startswith("http://") and "Socket closed" in details:
                    details += " (if the relay serves TLS, use https://)"
                raise ClientError(f"cannot connect to {self.server}: {details}") from exc
            if code == grpc.StatusCode.ALREADY_EXISTS:
                raise ClientError(f"cannot log in as {self.user}: {describe_rpc_error(exc)}") from exc
            raise ClientError(f"the relay refused the login of {self.user}: {describe_rpc_error(exc)}") from exc
        if response.registered:
            self.info(f"registered {self.user} on the relay with your keys")
        return response.session_token

    def _session(self) -> int:
        token = self._login()
        self.token = token
        stub = pb_grpc.ChatServiceStub(self.channel)
        self.stub = stub
        self._publish_prekey(fatal=True)
        self.call = stub.Chat(self._requests(), metadata=auth_metadata(token))
        threading.Thread(target=self._read_responses, name="responses", daemon=True).start()
        join = pb.JoinRoom(room=self.room_name, create_private=self.private)
        if self.after_seq is not None:
            join.after_seq = self.after_seq  # come back and catch up from there
        self._send_frame("join", join=join)
        threading.Thread(target=self._read_stdin, name="stdin", daemon=True).start()
        return self._event_loop()

    # -- the key directory ------------------------------------------------------------

    def _key_exchange(self, what: str, publish: Optional[pb.SignedPrekey] = None, room: str = "",
                      users: tuple[str, ...] | list[str] = ()) -> Optional[pb.KeyExchangeResponse]:
        """One ``KeyExchange``; None (with a warning) if it fails: the client goes on."""
        assert self.stub is not None and self.token is not None
        request = pb.KeyExchangeRequest(room=room, users=list(users))
        if publish is not None:
            request.publish.CopyFrom(publish)
        try:
            return self.stub.KeyExchange(request, metadata=auth_metadata(self.token), timeout=RPC_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            self.warn(f"the key directory refused {what}: {describe_rpc_error(exc)}")
            return None

    def _publish_prekey(self, fatal: bool = False) -> None:
        """Publishes the current prekey (the same signed message until it changes)."""
        assert self.prekeys is not None
        if self._key_exchange("to publish your prekey", publish=self.prekeys.signed_current()) is None and fatal:
            raise ClientError("cannot publish your prekey: nobody could hand you a key")

    def _fetch_prekeys(self, names: list[str]) -> None:
        """Fetches the bundles of ``names``, at most 256 per call."""
        assert self.room is not None
        for start in range(0, len(names), MAX_KEY_EXCHANGE_USERS):
            chunk = names[start : start + MAX_KEY_EXCHANGE_USERS]
            response = self._key_exchange(f"the keys of {', '.join(chunk)}", users=chunk)
            if response is not None:
                self.room.take_bundles(response.bundles)

    def _handout_new_key(self) -> list[int]:
        """A new sender key for everyone, wrapped under the members' current prekeys,
        fetched afresh (the room's, then one by one those it did not list)."""
        assert self.room is not None
        members = self.room.current_members()
        covered: set[str] = set()
        response = self._key_exchange(f"the keys of {self.room_name}'s members", room=self.room_name) if members else None
        covered = self.room.take_bundles(response.bundles if response is not None else [], fresh_for=members)
        missing = [n for n in self.room.current_members() if n not in covered]
        if missing:
            self._fetch_prekeys(missing)
        return self._send_distributions(self.room.rotate())

    def _maintain_prekeys(self) -> None:
        """Every hour: rotate and erase prekeys; a new one is published at once, and a
        new sender key is handed to everyone under their current prekeys."""
        assert self.prekeys is not None
        self.next_maintenance = time.monotonic() + PREKEY_MAINTENANCE_SECONDS
        try:
            made = self.prekeys.maintain()
        except ClientError as exc:
            self.warn(str(exc))
            return
        if made:
            self._publish_prekey()
            if self.joined_seen and not self.left:
                self._handout_new_key()

    # -- key pinning ------------------------------------------------------------------

    def _check_trust(self, peer: PeerIdentity) -> bool:
        """Trust on first use: pins an unknown user; refuses keys that differ from the
        pinned ones, loudly."""
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

    def _requests(self) -> Iterator[pb.ClientFrame]:
        """The request side of the stream: whatever the main thread queues, in order."""
        while True:
            frame = self.outbound.get()
            if frame is _CLOSE:
                return
            yield frame

    def _read_responses(self) -> None:
        try:
            for frame in self.call:
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

    def _send_frame(self, what: str, **kind: object) -> int:
        request_id = self.next_request_id
        self.next_request_id += 1
        self.unanswered[request_id] = what
        self.outbound.put(pb.ClientFrame(request_id=request_id, **kind))
        return request_id

    def _send_distributions(self, frames: list[pb.DistributeSenderKey]) -> list[int]:
        return [self._send_frame("key distribution", distribute_key=f) for f in frames]

    # -- the main loop ----------------------------------------------------------------

    def _event_loop(self) -> int:
        while True:
            event = self._next_event()
            kind = event[0]
            if kind == "frame":
                self._on_frame(event[1])
            elif kind == "stream_end":
                return self._on_stream_end(event[1])
            elif kind == "maintenance":
                self._maintain_prekeys()
            elif kind in ("line", "eof"):
                if self.ready:
                    self._on_input(event)
                else:
                    self.backlog.append(event)
            if self.events.empty():  # a burst (a catch-up) costs one write, not one per frame
                self._save_progress()
            if self._maybe_finish():
                if self.refused:
                    raise ClientError(f"{self.refused} message(s) were refused by the relay")
                return 1 if self.failed else 0

    def _next_event(self) -> tuple:
        """The next event; once finishing, only until the closing deadline."""
        if self.closing_deadline is None:
            try:
                return self.events.get(timeout=max(0.0, self.next_maintenance - time.monotonic()))
            except queue.Empty:
                return ("maintenance",)
        try:
            return self.events.get(timeout=max(0.0, self.closing_deadline - time.monotonic()))
        except queue.Empty:
            raise ClientError(
                f"timed out after {CLOSING_TIMEOUT_SECONDS} s waiting for the relay to acknowledge "
                f"{len(self.unanswered)} frame(s){self._undelivered()}"
            ) from None

    def _undelivered(self) -> str:
        """Lists the messages not acknowledged on stderr; returns the end of the error
        line that counts them."""
        for text in self.unacked.values():
            self.info(f'not delivered: "{escape_text(text)}"')
        return f"; {len(self.unacked)} message(s) not delivered" if self.unacked else ""

    def _on_stream_end(self, error: Optional[BaseException]) -> int:
        if self.closing:
            return 0
        code = error.code() if isinstance(error, grpc.RpcError) and hasattr(error, "code") else None
        if code == grpc.StatusCode.ABORTED:
            # Not reconnecting: the two sessions would take turns.
            raise ClientError(
                f"this session was closed because {self.user} opened another session on the relay "
                f"(ABORTED){self._undelivered()}"
            )
        if isinstance(error, grpc.RpcError):
            if not self.joined_seen:  # the stream never opened properly
                raise ClientError(f"cannot open the chat session: {describe_rpc_error(error)}")
            reason = describe_rpc_error(error)
        elif error is not None:
            reason = str(error)
        else:
            reason = "the stream ended"
        raise ClientError(f"lost the connection to the relay: {reason}{self._undelivered()}")

    # -- saved progress -----------------------------------------------------------------

    def _save_progress(self) -> None:
        """Saves the last sequence number processed, if it moved (a warning if it cannot)."""
        if self.room is None or self.progress is None or not self.joined_seen or self.membership_ended:
            return
        seq = self.room.last_seq
        if seq == self.saved_seq:
            return
        try:
            save_last_seq(self.progress, self.server, self.room_name, seq)
        except (ProgressError, OSError) as exc:
            self.warn(f"cannot save progress {self.progress}: {exc}")
            return
        self.saved_seq = seq

    def _settle_progress(self) -> None:
        """At exit: saves the progress, or forgets the room once out of it."""
        if not self.membership_ended:
            self._save_progress()
            return
        assert self.progress is not None
        try:
            forget_room(self.progress, self.server, self.room_name)
        except (ProgressError, OSError) as exc:
            self.warn(f"cannot update progress {self.progress}: {exc}")

    def _maybe_finish(self) -> bool:
        """After EOF, /leave or /quit: once every frame is answered, leave (/leave only:
        end of input and /quit stay members), then close the stream. Returns True when
        the session is over."""
        if self.finishing is not None and self.closing_deadline is None:
            self.closing_deadline = time.monotonic() + CLOSING_TIMEOUT_SECONDS
        if self.finishing is None or self.unanswered:
            return False
        if self.finishing == "leave" and not self.left:
            if self.leave_request is None:
                self.leave_request = self._send_frame("leave", leave=pb.LeaveRoom(room=self.room_name))
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

    # -- frames in --------------------------------------------------------------------

    def _on_frame(self, frame: pb.ServerFrame) -> None:
        which = frame.WhichOneof("kind")
        if frame.request_id != 0:
            self._on_answer(frame, which)
            return
        if self.left:  # after leaving, events for the room no longer matter
            return
        handler = {
            "member_joined": self._on_member_joined,
            "member_left": self._on_member_left,
            "message": self._on_message,
            "sender_key": self._on_sender_key,
            "caught_up": self._on_caught_up,
        }.get(which)
        if handler is None:
            self.warn(f"ignoring an unexpected frame from the relay ({which})")
            return
        handler(getattr(frame, which))

    def _on_answer(self, frame: pb.ServerFrame, which: Optional[str]) -> None:
        what = self.unanswered.pop(frame.request_id, None)
        if what is None:
            self.warn(f"ignoring an answer to unknown request {frame.request_id}")
            return
        owner_request = self.owner_requests.pop(frame.request_id, None)
        if owner_request is not None:
            self._on_owner_answer(owner_request, frame, which)
            return
        if which == "rejection":
            rejection = frame.rejection
            reason = f"{status_name(rejection.code)}: {rejection.message}"
            if what == "join":
                raise ClientError(f"cannot join {self.room_name}: {reason}")
            if what == "message":
                self.refused += 1
                text = self.unacked.pop(frame.request_id, "")
                self.info(f'failed to send "{escape_text(text)}": {reason}')
                return
            if what == "history":
                self.warn(f"the relay refused to send the history: {reason}")
                return
            raise ClientError(f"the relay refused a {what}: {reason}")
        if what == "join":
            if which != "joined":
                raise ClientError(f"unexpected answer to JoinRoom: {which}")
            self._on_joined(frame.joined)
            return
        if what == "history":
            if which != "history":
                raise ClientError(f"unexpected answer to GetHistory: {which}")
            self._show_history(frame.history)
            return
        if which != "ack":
            raise ClientError(f"unexpected answer to a {what}: {which}")
        self.unacked.pop(frame.request_id, None)  # our own entries never move last_seq
        sealed = self.sealed_by_request.pop(frame.request_id, None)
        if sealed is not None:
            if self.caught_up_seen:
                self.room.acknowledged(*sealed)
            else:
                self.deferred_acks.append(sealed)
        if frame.request_id == self.leave_request:
            self.left = True
            self.membership_ended = True
            self.info(f"left {self.room_name}")
        self.initial_distributions.discard(frame.request_id)
        if not self.ready and self.joined_seen and not self.initial_distributions:
            self._become_ready()

    def _on_owner_answer(self, request: tuple[str, str], frame: pb.ServerFrame, which: Optional[str]) -> None:
        """The answer to /invite or /kick: a refusal is reported, and the session goes on."""
        command, user = request
        if which == "rejection":
            self.failed = True
            rejection = frame.rejection
            self.info(
                f"the relay refused {command} {user}: {status_name(rejection.code)}: {rejection.message}"
            )
        elif command == "/invite":
            self.info(f"{user} may now join {self.room_name}")
        else:
            self.info(f"{user} is no longer a member of {self.room_name} nor invited")

    def _on_joined(self, joined: pb.Joined) -> None:
        assert self.room is not None
        self.joined_seen = True
        if joined.private_room:
            owner = "you" if joined.owner == self.user else escape_text(joined.owner)
            self.info(f"{self.room_name} is a private room owned by {owner}")
        elif self.private:
            self.warn(f"{self.room_name} is an open room: anyone can join it")
        self.room.on_joined(joined, self.after_seq)
        self.initial_distributions = set(self._handout_new_key())
        if not self.initial_distributions:
            self._become_ready()

    def _become_ready(self) -> None:
        """Our key is with every member: announce it and handle what was typed meanwhile."""
        self.ready = True
        self.info(f"joined {self.room_name} as {self.user} ({self._members_text(joined=True)})")
        while self.backlog and self.finishing is None:
            self._on_input(self.backlog.popleft())

    def _members_text(self, joined: bool = False) -> str:
        assert self.room is not None
        names = self.room.current_members()
        if not names and joined:
            return f"you are alone in {self.room_name}"
        untrusted = set(self.room.untrusted_members())
        shown = [f"{n} (keys changed, not trusted)" if n in untrusted else n for n in names]
        return f"members of {self.room_name}: " + ", ".join(["you", *shown])

    def _on_member_joined(self, event: pb.MemberJoined) -> None:
        assert self.room is not None
        if event.room != self.room_name or self.leave_request is not None:
            return
        invitation = event.invitation if event.HasField("invitation") else None
        name = self.room.member_joined(event.member, invitation)
        if name is None:
            return
        self.info(f"* {name} joined {self.room_name}")
        if self.room.members[name].prekey is None:
            self._fetch_prekeys([name])
        self._send_distributions(self.room.handout_to(name))

    def _on_member_left(self, event: pb.MemberLeft) -> None:
        assert self.room is not None
        if event.room != self.room_name or self.leave_request is not None:
            return
        if event.user == self.user:
            if event.reason == pb.LEAVE_REASON_KICKED:
                self.membership_ended = True
                raise ClientError(f"you were removed from {self.room_name} by its owner")
            self.warn(f"ignoring a MemberLeft about yourself in {self.room_name}")
            return
        if not is_valid_user_name(event.user):
            self.warn(f"ignoring a MemberLeft for an invalid member {escape_text(event.user)!r}")
            return
        removal = event.removal if event.HasField("removal") else None
        if not self.room.member_left(event.user, removal):
            return
        self._handout_new_key()
        if event.reason == pb.LEAVE_REASON_LEFT:
            what = f"{event.user} left {self.room_name}"
        elif event.reason == pb.LEAVE_REASON_KICKED:
            what = f"{event.user} left {self.room_name} (removed by the owner)"
        elif event.reason == pb.LEAVE_REASON_RECLAIMED:
            what = f"{event.user} left {self.room_name} (unused too long, removed by the relay)"
        else:
            what = f"{event.user} disconnected from {self.room_name}"
        self.info(f"* {what}; your sender key was rotated")

    def _on_message(self, delivery: pb.MessageDelivery) -> None:
        assert self.room is not None
        message = self.room.open(delivery)
        if message is not None:
            self.show(message)

    def _on_sender_key(self, delivery: pb.SenderKeyDelivery) -> None:
        assert self.room is not None
        for message in self.room.accept_sender_key(delivery):
            self.show(message)

    def _on_caught_up(self, event: pb.CaughtUp) -> None:
        """Everything missed has been delivered; what follows is live."""
        assert self.room is not None
        if event.room != self.room_name:
            return
        self.room.caught_up()
        self.caught_up_seen = True
        for sealed in self.deferred_acks:
            self.room.acknowledged(*sealed)
        self.deferred_acks.clear()
        self.info(f"caught up on {self.room_name}")

    def _show_history(self, history: pb.History) -> None:
        """The answer to /history, opened apart from the live state, on stderr."""
        assert self.room is not None
        if history.room != self.room_name:
            self.warn(f"ignoring a history of another room ({escape_text(history.room)!r})")
            return
        messages = self.room.open_history(history)
        if not messages:
            self.info(f"history [{self.room_name}]: no messages")
        for message in messages:
            self.info(message.line(self.room_name))

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
        if line.startswith("//"):
            self._send_text(line[1:])
        elif line.startswith("/"):
            self._command(line)
        else:
            self._send_text(line)

    def _command(self, line: str) -> None:
        words = line.split()
        command, args = words[0], words[1:]
        if command == "/who":
            self.info(self._members_text())
        elif command == "/leave":
            self.finishing = "leave"
        elif command == "/quit":
            self.finishing = "quit"
        elif command == "/help":
            self.info(HELP_TEXT)
        elif command == "/pending":
            lines = pending_lines(list(self.unacked.values())) if not args else ["usage: /pending"]
            for line in lines:
                self.info(line)
        elif command == "/history":
            if len(args) > 1:
                self.info("usage: /history [N]")
            else:
                self._history(args[0] if args else None)
        elif command == "/fingerprint":
            assert self.identity is not None
            self.info(f"your fingerprint ({self.user}): {format_fingerprint(self.identity.fingerprint)}")
        elif command == "/verify" and len(args) == 2 and args[1] == "confirm":
            self._confirm(args[0])
        elif command in ("/trust", "/verify", "/invite", "/kick"):
            if len(args) != 1:
                usage = "/verify NAME [confirm]" if command == "/verify" else f"{command} NAME"
                self.info(f"usage: {usage}")
            elif command == "/trust":
                self._trust(args[0])
            elif command == "/verify":
                self._safety(args[0])
            else:
                self._owner_command(command, args[0])
        else:
            self.info(f"unknown command {command}; type /help for the list")

    def _safety(self, name: str) -> None:
        assert self.room is not None and self.identity is not None
        member = self.room.members.get(name)
        if member is None:
            self.info(f"{name} is not a member of {self.room_name}")
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
        assert self.room is not None and self.contacts is not None
        member = self.room.members.get(name)
        if member is None:
            self.info(f"{name} is not a member of {self.room_name}")
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

    def _owner_command(self, command: str, name: str) -> None:
        if not is_valid_user_name(name):
            self.info(f"invalid user name {escape_text(name)!r}")
            return
        assert self.identity is not None
        if name == self.user:
            self.info(f"{command}: you cannot {command[1:]} yourself")
            return
        if command == "/invite":
            invitee = self._invitee_keys(name)
            if invitee is None:
                return
            invitation = sign_invitation(self.identity, self.room_name, name, invitee.fingerprint, now_ms())
            request_id = self._send_frame(
                "invite", invite=pb.InviteMember(room=self.room_name, invitation=invitation)
            )
        else:
            removal = sign_removal(self.identity, self.room_name, name, now_ms())
            request_id = self._send_frame("kick", kick=pb.KickMember(room=self.room_name, removal=removal))
        self.owner_requests[request_id] = (command, name)

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
        assert self.room is not None and self.contacts is not None
        member = self.room.members.get(name)
        if member is None:
            self.info(f"{name} is not a member of {self.room_name}")
            return
        if member.trusted:
            self.info(f"the keys of {name} are already trusted")
            return
        try:
            self.contacts.pin(name, member.identity.fingerprint_hex)
        except (OSError, ValueError) as exc:
            self.warn(f"cannot save the keys of {name} to {self.contacts.path}: {exc}")
        if self.room.trust_member(name):
            self._handout_new_key()
        self.info(
            f"now trusting the keys of {name} (fingerprint {format_fingerprint(member.identity.fingerprint)})"
        )

    def _history(self, argument: Optional[str]) -> None:
        try:
            limit = history_limit(argument)
        except ValueError as exc:
            self.info(f"/history: {exc}")
            return
        self._send_frame("history", history=pb.GetHistory(room=self.room_name, limit=limit))

    def _send_text(self, text: str) -> None:
        assert self.room is not None
        if self.room.rotation_due():  # the schedule: a new key, sent before the message
            self._handout_new_key()
        try:
            message = self.room.seal_text(text)
        except MessageTooLong as exc:
            self.info(f"not sent: {exc}")
            return
        request_id = self._send_frame("message", send=message)
        self.unacked[request_id] = text
        self.sealed_by_request[request_id] = (message.sealed.key_id, message.sealed.iteration)
