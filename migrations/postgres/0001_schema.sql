-- The relay's schema on PostgreSQL: the same tables, columns and meanings as the SQLite
-- schema reaches after migrations/sqlite/0001 to 0004 (see them for what each column
-- is for), in PostgreSQL's types: TEXT, BIGINT for every u64 of the protocol (stored as
-- its bits, as on SQLite), BYTEA for what clients sent. "user" is quoted: it is a
-- reserved word here. Text is compared byte by byte (COLLATE "C"), as SQLite does, so that
-- names sort the same whatever the database's locale.

CREATE TABLE identities (
    "user"           TEXT COLLATE "C" PRIMARY KEY,
    identity         BYTEA NOT NULL,
    registered_at_ms BIGINT NOT NULL,
    message_count    BIGINT NOT NULL DEFAULT 0,
    stored_bytes     BIGINT NOT NULL DEFAULT 0,
    seen_ms          BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE rooms (
    name          TEXT COLLATE "C" PRIMARY KEY,
    owner         TEXT COLLATE "C",
    last_seq      BIGINT NOT NULL DEFAULT 0,
    created_ms    BIGINT NOT NULL,
    message_count BIGINT NOT NULL DEFAULT 0,
    message_bytes BIGINT NOT NULL DEFAULT 0,
    used_ms       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX rooms_by_owner ON rooms (owner);

CREATE TABLE invitations (
    room       TEXT COLLATE "C" NOT NULL REFERENCES rooms (name),
    "user"     TEXT COLLATE "C" NOT NULL,
    invitation BYTEA,
    PRIMARY KEY (room, "user")
);
CREATE INDEX invitations_by_user ON invitations ("user");

CREATE TABLE members (
    room       TEXT COLLATE "C" NOT NULL REFERENCES rooms (name),
    "user"     TEXT COLLATE "C" NOT NULL,
    joined_seq BIGINT NOT NULL,
    PRIMARY KEY (room, "user")
);
CREATE INDEX members_by_user ON members ("user");

CREATE TABLE removals (
    room    TEXT COLLATE "C" NOT NULL REFERENCES rooms (name),
    "user"  TEXT COLLATE "C" NOT NULL,
    removal BYTEA NOT NULL,
    PRIMARY KEY (room, "user")
);

-- `id` is the order messages were stored in, as SQLite's rowid is: the whole store
-- forgets its oldest first, and messages of one commit share their `stored_ms`.
CREATE TABLE messages (
    id        BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    room      TEXT COLLATE "C" NOT NULL REFERENCES rooms (name),
    seq       BIGINT NOT NULL,
    sender    TEXT COLLATE "C" NOT NULL,
    key_id    BIGINT NOT NULL,
    iteration BIGINT NOT NULL,
    sealed    BYTEA NOT NULL,
    stored_ms BIGINT NOT NULL,
    PRIMARY KEY (room, seq),
    UNIQUE (room, sender, key_id, iteration)
);
CREATE INDEX messages_by_age ON messages (stored_ms, id);

CREATE TABLE sender_keys (
    room           TEXT COLLATE "C" NOT NULL REFERENCES rooms (name),
    seq            BIGINT NOT NULL,
    sender         TEXT COLLATE "C" NOT NULL,
    recipient      TEXT COLLATE "C" NOT NULL,
    key_id         BIGINT NOT NULL,
    wrapped_key    BYTEA NOT NULL,
    signature      BYTEA NOT NULL,
    stored_ms      BIGINT NOT NULL,
    superseded_seq BIGINT,
    PRIMARY KEY (room, seq, recipient)
);
CREATE INDEX sender_keys_by_recipient ON sender_keys (room, recipient, sender, seq);
CREATE INDEX sender_keys_by_key_id ON sender_keys (room, recipient, sender, key_id, seq);
CREATE INDEX sender_keys_by_sender ON sender_keys (sender);
CREATE INDEX sender_keys_superseded ON sender_keys (room) WHERE superseded_seq IS NOT NULL;

CREATE TABLE usage (
    id           BIGINT PRIMARY KEY CHECK (id = 1),
    stored_bytes BIGINT NOT NULL
);
INSERT INTO usage (id, stored_bytes) VALUES (1, 0);

CREATE TABLE registration_tokens (
    token_sha256 BYTEA PRIMARY KEY,
    uses_left    BIGINT,
    expires_ms   BIGINT,
    created_ms   BIGINT NOT NULL,
    used         BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE prekeys (
    "user"        TEXT COLLATE "C" NOT NULL,
    device        BIGINT NOT NULL,
    prekey_id     BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    public_key    BYTEA NOT NULL,
    signature     BYTEA NOT NULL,
    PRIMARY KEY ("user", device)
);
