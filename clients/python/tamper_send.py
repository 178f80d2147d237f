"""A test tool, not a client: joins a room as a member, gives the others its sender key,
sends one message with a single ciphertext bit flipped, then the same text untouched,
and leaves. A correct client shows only the second and warns about the first.

Usage: tamper_send.py HOST:PORT USER ROOM TEXT
"""

import queue
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import grpc

from chat_client import RoomState, load_or_create_identity, pb, pb_grpc, public_key_der


def main() -> int:
    address, user, room, text = sys.argv[1:5]
    with TemporaryDirectory() as home, grpc.insecure_channel(address) as channel:
        identity = load_or_create_identity(Path(home), user, 2048)
        stub = pb_grpc.ChatServiceStub(channel)
        me = pb.PublicIdentity(user=user, encryption_public_key=public_key_der(identity))
        stub.KeyExchange(pb.KeyExchangeRequest(identity=me, room=room), timeout=10)

        frames: "queue.Queue[pb.ClientFrame | None]" = queue.Queue()
        responses = stub.Chat(iter(frames.get, None), metadata=(("chat-user", user),))
        request_ids = iter(range(1, 1_000_000))

        def answer(**kind) -> pb.ServerFrame:
            request_id = next(request_ids)
            frames.put(pb.ClientFrame(request_id=request_id, **kind))
            for frame in responses:
                if frame.request_id == request_id:
                    if frame.WhichOneof("kind") == "rejection":
                        raise SystemExit(f"refused: {frame.rejection.message}")
                    return frame
            raise SystemExit("the relay closed the stream")

        state = RoomState(room, user, identity)
        joined = answer(join=pb.JoinRoom(room=room)).joined
        for distribution in state.on_joined(joined):
            answer(distribute_key=distribution)
        tampered, _ = state.seal_text(text)
        flipped = bytearray(tampered.sealed.ciphertext)
        flipped[0] ^= 0x01
        tampered.sealed.ciphertext = bytes(flipped)
        answer(send=tampered)
        genuine, _ = state.seal_text(text)
        answer(send=genuine)
        answer(leave=pb.LeaveRoom(room=room))
        frames.put(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
