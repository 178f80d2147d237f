#!/usr/bin/env python3
"""A command-line client for the chat.v2 end-to-end encrypted relay: the entry point.

The client itself is the package ``e2ee_chat`` next to this file (its docstring lists the
modules); this script only runs :func:`e2ee_chat.cli.main`.

Usage::

    chat_client.py --server http://127.0.0.1:5555 --user NAME --room ROOM \\
                   --home DIR [--key-bits 2048|3072|4096] [--ca-cert FILE]
"""

from e2ee_chat.cli import main

if __name__ == "__main__":
    main()
