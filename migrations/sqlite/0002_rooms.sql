-- Rooms and their logs.
--
-- Every u64 of the protocol (sequence numbers, key ids, message counters) is stored in
-- an INTEGER, which SQLite keeps as a signed 64-bit number: the store casts `u64 as
-- i64` on the way in and `i64 as u64` on the way out, which keeps every bit. Key ids
-- are random 64-bit numbers, so about half of them are stored negative; they are only
-- ever compared for equality. Sequence numbers are ordered, so the store refuses to
-- store one above i64::MAX rather than let it sort before 0.

-- Rooms: every room the relay knows, with its owner (NULL for an open room, which
-- anyone may join) and the highest sequence number used in it, from which numbering
-- resumes after a restart even when the entries under it were pruned.
CREATE TABLE rooms (
    name       TEXT PRIMARY KEY NOT NULL,
    owner      TEXT,
    last_seq   INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
) STRICT;

-- Invitations: who may join which private room.
CREATE TABLE invitations (
    room TEXT NOT NULL REFERENCES rooms (name),
    user TEXT NOT NULL,
    PRIMARY KEY (room, user)
) STRICT, WITHOUT ROWID;

-- Members: who is in which room, and the sequence number each joined at: a member
-- may read the entries after it.
CREATE TABLE members (
    room       TEXT NOT NULL REFERENCES rooms (name),
    user       TEXT NOT NULL,
    joined_seq INTEGER NOT NULL,
    PRIMARY KEY (room, user)
) STRICT, WITHOUT ROWID;

-- Messages: each room's sealed messages under their sequence numbers. `sealed` is the
-- protobuf chat.v1.SealedMessage exactly as the sender sealed it; `key_id` and
-- `counter` are copied out of it so that a resent message (same sender, key id and
-- counter) is recognised by the UNIQUE constraint and not stored twice. `stored_ms`
-- (Unix epoch) is when the relay stored it, for pruning by age.
CREATE TABLE messages (
    room      TEXT NOT NULL REFERENCES rooms (name),
    seq       INTEGER NOT NULL,
    sender    TEXT NOT NULL,
    key_id    INTEGER NOT NULL,
    counter   INTEGER NOT NULL,
    sealed    BLOB NOT NULL,
    stored_ms INTEGER NOT NULL,
    PRIMARY KEY (room, seq),
    UNIQUE (room, sender, key_id, counter)
) STRICT;

-- Pruning by age finds the old messages without reading every row.
CREATE INDEX messages_by_age ON messages (stored_ms);

-- Sender keys: the keys each sender wrapped for the members of a room, one row per
-- recipient, all rows of one distribution under the same sequence number.
-- `wrapped_key` and `signature` are as the sender sent them (see
-- chat.v1.WrappedSenderKey); the relay cannot unwrap them.
CREATE TABLE sender_keys (
    room        TEXT NOT NULL REFERENCES rooms (name),
    seq         INTEGER NOT NULL,
    sender      TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    key_id      INTEGER NOT NULL,
    wrapped_key BLOB NOT NULL,
    signature   BLOB NOT NULL,
    stored_ms   INTEGER NOT NULL,
    PRIMARY KEY (room, seq, recipient)
) STRICT;

-- The keys of one recipient in a room, by sender and then in sequence order: the
-- keys in force at a point (the latest per sender), catching up, pruning (the latest
-- per sender and recipient), and forgetting a member's keys.
CREATE INDEX sender_keys_by_recipient ON sender_keys (room, recipient, sender, seq);

-- The latest copy of one sender's key for one recipient, by key id: the keys that
-- the messages of a room's history were sealed with.
CREATE INDEX sender_keys_by_key_id ON sender_keys (room, recipient, sender, key_id, seq);
