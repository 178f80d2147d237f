"""A test tool, not a client: a sender whose messages reach the room out of order and
one too far ahead, for readers to show what PROTOCOL.md says ("Opening").

Usage: out_of_order_send.py HOST:PORT USER ROOM [--home DIR]

It logs in, publishes a prekey, joins ROOM, hands its sender key out, seals "one",
"two" and "three" (iterations 0, 1, 2) and sends them in the order three, one, two;
then moves its chain MAX_FORWARD_JUMP + 1 (25,001) iterations on without sending them
and sends "far ahead" (25,001 past the next one a reader expects: readers drop it with
a warning); then makes a new sender key, hands it out, and sends "under a new key". It
waits for each frame's acknowledgement and exits 0. Readers show three, one, two and
under a new key.

Without --home the identity and prekey (2048-bit keys) are made in a temporary
directory and forgotten.
"""

import argparse
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

from e2ee_chat.protocol import MAX_FORWARD_JUMP
from e2ee_chat.raw import RawSession


def main() -> int:
    parser = argparse.ArgumentParser(prog="out_of_order_send.py")
    parser.add_argument("address", metavar="HOST:PORT")
    parser.add_argument("user")
    parser.add_argument("room")
    parser.add_argument("--home", type=Path, help="keep the identity there (default: a temporary one)")
    args = parser.parse_args()
    with TemporaryDirectory() as temporary:
        home = args.home if args.home is not None else Path(temporary)
        session = RawSession(args.address, args.user, args.room, home)
        session.join()
        session.hand_out_new_key()
        sealed = [session.state.seal_text(text) for text in ("one", "two", "three")]
        for index in (2, 0, 1):
            session.answer(send=sealed[index])
        # The next one a reader expects is the fourth (iteration 3): skip 3 ..= 25,003,
        # so that "far ahead" (25,004) is MAX_FORWARD_JUMP + 1 past it.
        session.state.own_key.skip(MAX_FORWARD_JUMP + 1)
        session.answer(send=session.state.seal_text("far ahead"))
        session.hand_out_new_key()
        session.answer(send=session.state.seal_text("under a new key"))
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
