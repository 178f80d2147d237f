-- Registered identities: who may log in under which name.
-- `identity` is the protobuf chat.v1.PublicIdentity as first published (both public
-- keys and the identity signature), as the relay hands it to others.
CREATE TABLE identities (
    user             TEXT PRIMARY KEY NOT NULL,
    identity         BLOB NOT NULL,
    registered_at_ms INTEGER NOT NULL
) STRICT;
