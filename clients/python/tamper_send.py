"""A test tool, not a client: logs in, publishes a prekey, joins a room as a member,
hands the others its sender key, sends one message with a single ciphertext bit flipped
after it was signed (as an attacker on the wire would), then the same text untouched
(the next iteration of the chain), and leaves. A correct client shows only the second
and warns about the first: its Ed25519 signature does not verify, so nothing is derived
or decrypted for it.

Usage: tamper_send.py HOST:PORT USER ROOM TEXT [--home DIR]

Without --home the identity and prekey (2048-bit keys) are made in a temporary
directory and forgotten; the first login registers USER to it.
"""

import argparse
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

from e2ee_chat.raw import RawSession


def main() -> int:
    parser = argparse.ArgumentParser(prog="tamper_send.py")
    parser.add_argument("address", metavar="HOST:PORT")
    parser.add_argument("user")
    parser.add_argument("room")
    parser.add_argument("text")
    parser.add_argument("--home", type=Path, help="keep the identity there (default: a temporary one)")
    args = parser.parse_args()
    with TemporaryDirectory() as temporary:
        home = args.home if args.home is not None else Path(temporary)
        session = RawSession(args.address, args.user, args.room, home)
        session.join()
        session.hand_out_new_key()
        tampered = session.state.seal_text(args.text)  # signed over the genuine ciphertext
        flipped = bytearray(tampered.sealed.ciphertext)
        flipped[0] ^= 0x01
        tampered.sealed.ciphertext = bytes(flipped)
        session.answer(send=tampered)
        session.answer(send=session.state.seal_text(args.text))
        session.close(leave=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
