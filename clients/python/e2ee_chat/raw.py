"""A bare session for test tools (tamper_send.py, out_of_order_send.py): logs in,
publishes a prekey, opens the Chat stream, joins a room, and sends frames one at a time,
waiting for each answer. It is a member like any client, but it shows nothing and
handles no event: it only sends what a tool makes with its :class:`~.room.RoomState`."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Optional

import grpc

from .home import load_or_create_identity
from .prekeys import PrekeyStore
from .proto import pb, pb_grpc
from .room import RoomState
from .transport import CHANNEL_OPTIONS, auth_metadata, login


class RawSession:
    """One user on one Chat stream of a plaintext relay at ``address`` (HOST:PORT), with
    its identity and prekeys in ``home`` (2048-bit keys when new)."""

    def __init__(self, address: str, user: str, room: str, home: Path) -> None:
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.identity = load_or_create_identity(home, user, 2048)
        self.prekeys = PrekeyStore(home, self.identity)
        self.prekeys.maintain()
        self.token = login(self.channel, self.identity, timeout=10).session_token
        self.stub = pb_grpc.ChatServiceStub(self.channel)
        self.stub.KeyExchange(
            pb.KeyExchangeRequest(publish=self.prekeys.signed_current()),
            metadata=auth_metadata(self.token),
            timeout=10,
        )
        self.room = room
        self.state = RoomState(room, self.identity, self.prekeys)
        self._frames: "queue.Queue[Optional[pb.ClientFrame]]" = queue.Queue()
        self._responses = self.stub.Chat(iter(self._frames.get, None), metadata=auth_metadata(self.token))
        self._next_id = 1

    def send(self, **kind: object) -> int:
        """Sends one frame; returns its request id."""
        request_id = self._next_id
        self._next_id += 1
        self._frames.put(pb.ClientFrame(request_id=request_id, **kind))
        return request_id

    def wait(self, request_id: int) -> pb.ServerFrame:
        """The answer to ``request_id`` (events before it are skipped); SystemExit on a
        rejection or the end of the stream."""
        for frame in self._responses:
            if frame.request_id == request_id:
                if frame.WhichOneof("kind") == "rejection":
                    raise SystemExit(f"refused: {frame.rejection.message}")
                return frame
        raise SystemExit("the relay closed the stream")

    def answer(self, **kind: object) -> pb.ServerFrame:
        return self.wait(self.send(**kind))

    def join(self) -> pb.Joined:
        """Joins the room and fetches its members' prekeys (no key handed out yet)."""
        joined = self.answer(join=pb.JoinRoom(room=self.room)).joined
        self.state.on_joined(joined)
        self.fetch_prekeys()
        return joined

    def fetch_prekeys(self) -> None:
        members = self.state.current_members()
        if not members:
            return
        response = self.stub.KeyExchange(
            pb.KeyExchangeRequest(room=self.room), metadata=auth_metadata(self.token), timeout=10
        )
        self.state.take_bundles(response.bundles, fresh_for=members)

    def hand_out_new_key(self) -> None:
        """A new sender key for every member, each frame acknowledged."""
        for distribution in self.state.rotate():
            self.answer(distribute_key=distribution)

    def close(self, leave: bool = False) -> None:
        if leave:
            self.answer(leave=pb.LeaveRoom(room=self.room))
        self._frames.put(None)
        self.channel.close()
