"""A command-line client for the chat.v2 end-to-end encrypted relay.

Written from docs/PROTOCOL.md and proto/chat/v2/chat.proto alone, to show that they are
enough to build a compatible client. The package has three layers:

* the protocol and crypto, which do no I/O and can be used from tests without the CLI:
  :mod:`.protocol` (constants, names), :mod:`.proto` (the generated messages),
  :mod:`.binding` (key encodings, signed byte strings, OAEP labels, Merkle leaves,
  associated data; RSA-PSS and RSA-OAEP), :mod:`.merkle` (the RFC 6962 tree over a
  distribution's copies), :mod:`.group` (the ratcheting sender keys: chain, message keys,
  strict Ed25519, skipped keys, the hand-out point), :mod:`.identity` (fingerprints,
  safety numbers, identities), :mod:`.membership` (owner-signed invitations and removals
  of private rooms), :mod:`.envelope` (the JSON envelope) and :mod:`.room`
  (:class:`~.room.RoomState`, one room's end-to-end state);
* the files of a user's home: :mod:`.home` (the two identity keys, the pinned contacts
  and private-room owners, the saved progress) and :mod:`.prekeys` (the device's signed
  prekeys, their rotation and erasure);
* the CLI: :mod:`.transport` (URLs, channel, login), :mod:`.session`
  (:class:`~.session.ChatClient`) and :mod:`.cli` (:func:`~.cli.main`), which log in,
  publish the prekey, and drive one room over gRPC with the same command line and
  stdin/stdout/stderr contract as the Rust ``chat-client``; :mod:`.errors` holds the fatal
  error they share. :mod:`.raw` is a bare session for the test tools.

``clients/python/chat_client.py`` is the entry point that runs :func:`.cli.main`.
"""

import os

# gRPC core logs some connection failures (a refused TLS handshake) on stderr by itself;
# this client reports them in its own one error line. GRPC_VERBOSITY=INFO shows them again.
# Set here, in the package's first module to run, so that it precedes every import of grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
