"""The command line: the options and their environment variables, and :func:`main`, which
runs a :class:`~e2ee_chat.session.ChatClient` and turns a
:class:`~e2ee_chat.errors.ClientError` into one ``chat_client: error: ...`` line and exit
status 1."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from .errors import ClientError
from .protocol import DEFAULT_KEY_BITS, KEY_BITS_ALLOWED
from .rooms import room_list
from .session import ChatClient
from .transport import server_list

PROG = "chat_client"


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def default_home() -> str:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return str(base / "e2ee-chat")


#: Values of a yes/no environment variable that mean no (as clap's falsey values).
_FALSEY = frozenset(["", "0", "n", "no", "f", "false", "off"])


def env_flag(name: str) -> bool:
    """A yes/no environment variable: set to anything but a falsey value means yes."""
    return os.environ.get(name, "").strip().lower() not in _FALSEY


EPILOG = (
    "Several rooms: --room a,b --room c joins them all on one stream; the first is the "
    "current room. stdin: a plain line = one message to the current room; /msg ROOM TEXT, "
    "/switch ROOM, /join ROOM, /part [ROOM] (= /leave [ROOM], for good), /who [ROOM], "
    "/history [ROOM] [N], /invite NAME, /kick NAME (current room), /receipts, /pending, "
    "/fingerprint, /verify, /trust, /quit, /help; // sends a leading /. Once no room is "
    "left the client ends as at end of input. stdout: [ROOM] SENDER: TEXT per received "
    "message. stderr: everything else."
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other error
        self.exit(2, f"{PROG}: error: {message}\n")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    env = os.environ
    parser = _Parser(
        prog=PROG,
        description="Chat in one or several rooms of an end-to-end encrypted relay.",
        epilog=EPILOG,
    )
    parser.add_argument("--server", action="append", metavar="URL[,URL...]",
                        help="the relay's URL, http:// or https:// (default: http://127.0.0.1:5555); "
                        "several relays of one deployment: a comma list, or the option repeated: "
                        "the client starts with the first and fails over to the next when one "
                        "cannot be reached or drops the connection; progress is saved under the "
                        "first URL whichever relay serves [env CHAT_SERVER, a comma list too]")
    parser.add_argument("--user", default=env.get("CHAT_USER"), help="your user name [env CHAT_USER]")
    parser.add_argument("--room", action="append", metavar="ROOM[,ROOM...]",
                        help="a room to join, or a comma list of them; may be given more than once, "
                        "all joined on one stream, the first being the current room "
                        "(default: lobby) [env CHAT_ROOM, a comma list too]")
    parser.add_argument("--home", default=env.get("CHAT_HOME") or default_home(),
                        help="where your keys, pinned contacts and progress (the last message "
                        "seen per server, the first --server URL, and room) are kept [env CHAT_HOME]")
    parser.add_argument("--key-bits", default=env.get("CHAT_KEY_BITS", str(DEFAULT_KEY_BITS)),
                        help="size of new identity keys: 2048, 3072 or 4096 [env CHAT_KEY_BITS]")
    parser.add_argument("--private", action="store_true",
                        help="create each room of --room private, owned by you, if it does not exist")
    parser.add_argument("--no-receipts", action="store_true", default=env_flag("CHAT_NO_RECEIPTS"),
                        help="send no receipts (how far you got in a room); others' are still "
                        "counted [env CHAT_NO_RECEIPTS]")
    parser.add_argument("--ca-cert", default=env.get("CHAT_CA_CERT") or None,
                        help="PEM file of the CA certificates to trust for an https:// relay "
                        "(default: the system's) [env CHAT_CA_CERT]")
    parser.add_argument("--registration-token", default=env.get("CHAT_REGISTRATION_TOKEN", ""),
                        help="a registration token from the relay's operator, for the first login "
                        "of --user on a relay that registers new names only with one "
                        "[env CHAT_REGISTRATION_TOKEN]")
    args = parser.parse_args(argv)
    args.rooms = room_list(args.room if args.room else [env.get("CHAT_ROOM") or "lobby"])
    args.servers = server_list(args.server if args.server else [env.get("CHAT_SERVER") or "http://127.0.0.1:5555"])
    if not args.user:
        parser.error("--user is required (or set CHAT_USER)")
    bits = str(args.key_bits).strip()
    if not bits.isdigit() or int(bits) not in KEY_BITS_ALLOWED:
        parser.error(f"invalid --key-bits {bits!r}: must be 2048, 3072 or 4096")
    args.key_bits = int(bits)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8", errors="replace")  # type: ignore[union-attr]
    client = ChatClient(
        args.servers,
        args.user,
        args.rooms,
        Path(args.home).expanduser(),
        args.key_bits,
        Path(args.ca_cert).expanduser() if args.ca_cert else None,
        private=args.private,
        registration_token=args.registration_token,
        receipts=not args.no_receipts,
    )
    try:
        code = client.run()
    except ClientError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    # Daemon threads may sit in a blocking stdin read or inside gRPC; do not wait for them.
    os._exit(code)
