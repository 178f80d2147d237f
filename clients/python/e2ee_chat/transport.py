"""The relay over gRPC: server URLs, the channel (plaintext or TLS), the login (a signed
challenge for a session token), the metadata that carries the token, and how an RPC
error is named."""

from __future__ import annotations

import ipaddress
import urllib.parse
from pathlib import Path
from typing import Iterable, Optional, Sequence

import grpc

from .binding import login_signed_bytes
from .errors import ClientError
from .identity import Identity
from .proto import pb, pb_grpc
from .protocol import LOGIN_TRIES, MAX_INBOUND_FRAME_BYTES, RPC_TIMEOUT_SECONDS


# ---------------------------------------------------------------------------------------
# Transport helpers
# ---------------------------------------------------------------------------------------


def parse_server_url(url: str) -> tuple[str, bool]:
    """``http://HOST:PORT`` -> (gRPC target, use TLS). Raises :class:`ClientError`."""
    if "://" not in url:
        raise ClientError(f'invalid server URL "{url}": missing scheme; use http://HOST:PORT')
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        raise ClientError(f'invalid server URL "{url}": unsupported scheme {parsed.scheme!r}; use http://HOST:PORT')
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError as exc:
        raise ClientError(f'invalid server URL "{url}": {exc}') from exc
    if not host:
        raise ClientError(f'invalid server URL "{url}": missing host; use http://HOST:PORT')
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.username:
        raise ClientError(f'invalid server URL "{url}": only http://HOST:PORT is supported')
    if port is None:
        port = 443 if scheme == "https" else 80
    host_part = f"[{host}]" if ":" in host else host
    return f"{host_part}:{port}", scheme == "https"


def server_list(values: Iterable[str]) -> list[str]:
    """The URLs of ``--server`` values, each a comma list (``a,b``), in order. An empty
    item stays, to be reported as a bad URL rather than skipped silently."""
    return [url for value in values for url in value.split(",")]


class Relays:
    """The relays of one deployment (they share its database, so any of them serves any
    user), in the order given, and the one in use.

    The first URL names the deployment: the progress is saved under it whichever relay
    is in use, so that a client that failed over, or one started with more relays than
    before, finds where it was (as the Rust client does)."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ClientError("no server URL given")
        self.urls = list(urls)
        self._current = 0

    def check(self) -> list[tuple[str, str, bool]]:
        """Each URL with its gRPC target and whether it is TLS; :class:`ClientError` for
        the first bad one, so that all are checked before the first is tried."""
        return [(url, *parse_server_url(url)) for url in self.urls]

    @property
    def deployment(self) -> str:
        return self.urls[0]

    @property
    def current(self) -> str:
        return self.urls[self._current]

    def move_on(self) -> None:
        """The next relay takes the current one's place; after the last, the first."""
        self._current = (self._current + 1) % len(self.urls)

    @property
    def at_first(self) -> bool:
        """Whether the relay in use is the first: a new round through the list."""
        return self._current == 0


#: The wait before trying a relay again, and its most after doubling.
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 10.0


class Backoff:
    """How long to wait before trying the relay just moved on to, as the Rust client
    does: 0.5 s before each relay of a round through the list, and before each new round
    (back at the first) 0.5 s, doubling up to 10 s. With one relay every attempt is a
    round. So one relay down costs its members half a second, not a wait that grew while
    the others were tried."""

    def __init__(self) -> None:
        self._next_round = FIRST_RETRY_SECONDS

    def before(self, relays: Relays) -> float:
        if not relays.at_first:
            return FIRST_RETRY_SECONDS
        delay = self._next_round
        self._next_round = min(delay * 2, MAX_RETRY_SECONDS)
        return delay


#: How a call ends when the relay itself is down or going away (not a refusal of ours):
#: another relay of the deployment may serve where this one cannot.
RELAY_DOWN_CODES = frozenset(
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED]
)


def is_relay_down(error: Optional[BaseException]) -> bool:
    """Whether a call or stream ended because of the relay, not because of us: a
    transport error, UNAVAILABLE, or a stream that just ended (``None``)."""
    if error is None:
        return True
    if isinstance(error, grpc.RpcError):
        return hasattr(error, "code") and error.code() in RELAY_DOWN_CODES
    return not isinstance(error, ClientError)


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (a plaintext relay there is on this machine)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_INBOUND_FRAME_BYTES),
    ("grpc.max_send_message_length", MAX_INBOUND_FRAME_BYTES),
    # A relay that hangs answers no ping: the connection is dropped and the client moves
    # on to another relay (as the Rust client: a ping every 15 s, 10 s to answer).
    ("grpc.keepalive_time_ms", 15_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def open_channel(server: str, ca_cert: Optional[Path] = None) -> grpc.Channel:
    """A channel to ``http://`` (plaintext) or ``https://`` (TLS, checked against the
    system's roots or the PEM certificates in ``ca_cert``)."""
    target, tls = parse_server_url(server)
    if not tls:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    roots = None
    if ca_cert is not None:
        try:
            roots = Path(ca_cert).read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read the CA certificate {ca_cert}: {exc.strerror or exc}") from exc
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


def login(
    channel: grpc.Channel,
    identity: Identity,
    timeout: float = RPC_TIMEOUT_SECONDS,
    registration_token: str = "",
) -> pb.LoginResponse:
    """``CreateChallenge`` then ``Login`` with the signed challenge (and the operator's
    registration token, for a relay that registers new names only with one). Raises
    ``grpc.RpcError``; ALREADY_EXISTS means the user name (or a name differing only in
    letter case) is registered to other keys, or the keys to another user."""
    auth = pb_grpc.AuthServiceStub(channel)
    # A challenge is good only at the relay process that issued it: one restarted between
    # the two calls refuses it as UNAUTHENTICATED. A second try with a fresh challenge
    # tells that apart from a refusal that stands.
    for tries_left in reversed(range(LOGIN_TRIES)):
        challenge = auth.CreateChallenge(pb.CreateChallengeRequest(user=identity.user), timeout=timeout).challenge
        request = pb.LoginRequest(
            identity=identity.public_identity(),
            challenge=challenge,
            signature=identity.sign(login_signed_bytes(identity.user, challenge)),
            registration_token=registration_token,
        )
        try:
            return auth.Login(request, timeout=timeout)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED or tries_left == 0:
                raise
    raise AssertionError("unreachable: the last try returns or raises")


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The request metadata every ``ChatService`` RPC carries."""
    return (("authorization", f"Bearer {token}"),)


_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def status_name(code: int) -> str:
    return _STATUS_NAMES.get(code, f"code {code}")


def describe_rpc_error(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else None
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {details}" if details else name
