"""A test tool, not a client: logs in, joins a room as a member, gives the others its
signed sender key, sends one message with a single ciphertext bit flipped after it was
signed (as an attacker on the wire would), then the same text untouched, and leaves. A
correct client shows only the second and warns about the first: its signature does not
verify.

Usage: tamper_send.py HOST:PORT USER ROOM TEXT [--home DIR]

Without --home the identity (2048-bit keys) is made in a temporary directory and
forgotten; the first login registers USER to it.
"""

import argparse
import queue
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import grpc

from e2ee_chat.home import load_or_create_identity
from e2ee_chat.proto import pb, pb_grpc
from e2ee_chat.room import RoomState
from e2ee_chat.transport import auth_metadata, login


def main() -> int:
    parser = argparse.ArgumentParser(prog="tamper_send.py")
    parser.add_argument("address", metavar="HOST:PORT")
    parser.add_argument("user")
    parser.add_argument("room")
    parser.add_argument("text")
    parser.add_argument("--home", type=Path, help="keep the identity there (default: a temporary one)")
    args = parser.parse_args()
    with TemporaryDirectory() as temporary, grpc.insecure_channel(args.address) as channel:
        home = args.home if args.home is not None else Path(temporary)
        identity = load_or_create_identity(home, args.user, 2048)
        token = login(channel, identity, timeout=10).session_token
        stub = pb_grpc.ChatServiceStub(channel)

        frames: "queue.Queue[pb.ClientFrame | None]" = queue.Queue()
        responses = stub.Chat(iter(frames.get, None), metadata=auth_metadata(token))
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

        state = RoomState(args.room, identity)
        joined = answer(join=pb.JoinRoom(room=args.room)).joined
        for distribution in state.on_joined(joined):
            answer(distribute_key=distribution)
        tampered, _ = state.seal_text(args.text)  # signed over the genuine ciphertext
        flipped = bytearray(tampered.sealed.ciphertext)
        flipped[0] ^= 0x01
        tampered.sealed.ciphertext = bytes(flipped)
        answer(send=tampered)
        genuine, _ = state.seal_text(args.text)
        answer(send=genuine)
        answer(leave=pb.LeaveRoom(room=args.room))
        frames.put(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
