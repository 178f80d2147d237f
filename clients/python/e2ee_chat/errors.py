"""The one fatal error of the client, :class:`ClientError`: raised by home, transport and
session, reported by cli."""


class ClientError(Exception):
    """A fatal error: printed as one ``chat_client: error: ...`` line, exit status 1."""


class RelayDown(ClientError):
    """The relay could not be reached, or went away: fatal only if no other relay of the
    deployment serves either."""
