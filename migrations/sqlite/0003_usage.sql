-- What each room and user stores, when each was last used, which keys are superseded,
-- and registration tokens.
--
-- The counters are kept by the store in the same transaction as the rows they count,
-- so quotas are checked against exact figures without summing tables on every write.
-- Sizes count the bytes clients sent that the relay keeps (the sealed message; the
-- wrapped key and its signature), not SQLite's own overhead.

-- Per room: its messages and their bytes (what --max-messages-per-room and
-- --max-room-bytes trim), and when anything last happened in it (a message, a key, a
-- join or a leave), for reclaiming rooms nobody uses.
ALTER TABLE rooms ADD COLUMN message_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN message_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN used_ms INTEGER NOT NULL DEFAULT 0;
-- Nothing says how recently rooms and users were used before this upgrade: they count
-- as used at it, so that none is reclaimed for want of a record.
UPDATE rooms SET used_ms = CAST(unixepoch('subsec') * 1000 AS INTEGER);
UPDATE rooms SET message_count = totals.messages, message_bytes = totals.bytes
FROM (SELECT room, COUNT(*) AS messages, SUM(length(sealed)) AS bytes
      FROM messages GROUP BY room) AS totals
WHERE rooms.name = totals.room;

-- Who owns private rooms: reclaiming never takes the name of a room's owner.
CREATE INDEX rooms_by_owner ON rooms (owner);

-- Per user: the messages it sent that are stored, and the bytes of those and of the
-- sender keys it distributed (what --max-user-bytes limits); when it last logged in
-- or ended a session, for reclaiming identities nobody uses.
ALTER TABLE identities ADD COLUMN message_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE identities ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE identities ADD COLUMN seen_ms INTEGER NOT NULL DEFAULT 0;
UPDATE identities SET seen_ms = CAST(unixepoch('subsec') * 1000 AS INTEGER);
UPDATE identities SET message_count = totals.messages, stored_bytes = totals.bytes
FROM (SELECT sender, COUNT(*) AS messages, SUM(length(sealed)) AS bytes
      FROM messages GROUP BY sender) AS totals
WHERE identities.user = totals.sender;
UPDATE identities SET stored_bytes = stored_bytes + keys.bytes
FROM (SELECT sender, SUM(length(wrapped_key) + length(signature)) AS bytes
      FROM sender_keys GROUP BY sender) AS keys
WHERE identities.user = keys.sender;

-- Everything stored, for --max-store-bytes: one row.
CREATE TABLE usage (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    stored_bytes INTEGER NOT NULL
) STRICT;
INSERT INTO usage (id, stored_bytes) VALUES (1,
    (SELECT COALESCE(SUM(length(sealed)), 0) FROM messages)
  + (SELECT COALESCE(SUM(length(wrapped_key) + length(signature)), 0) FROM sender_keys));

-- A sender key is superseded once its sender gives the same recipient a later one:
-- `superseded_seq` is the sequence number of the first such key (NULL while it is
-- the latest). A member catching up from a point needs the keys not yet superseded
-- there, and the older ones only if a message after that point was sealed with them.
ALTER TABLE sender_keys ADD COLUMN superseded_seq INTEGER;
UPDATE sender_keys SET superseded_seq = (
    SELECT MIN(later.seq) FROM sender_keys AS later
    WHERE later.room = sender_keys.room AND later.sender = sender_keys.sender
      AND later.recipient = sender_keys.recipient AND later.seq > sender_keys.seq);

-- What one user distributed or belongs to, to forget it when its identity is reclaimed.
CREATE INDEX sender_keys_by_sender ON sender_keys (sender);
CREATE INDEX members_by_user ON members (user);
CREATE INDEX invitations_by_user ON invitations (user);

-- The superseded keys of a room, which pruning looks through every minute.
CREATE INDEX sender_keys_superseded ON sender_keys (room) WHERE superseded_seq IS NOT NULL;

-- Registration tokens (chat-server registration-token ...), for --registration token:
-- only the SHA-256 of a token is kept. `uses_left` NULL is unlimited; `expires_ms` NULL
-- never expires.
CREATE TABLE registration_tokens (
    token_sha256 BLOB PRIMARY KEY NOT NULL,
    uses_left    INTEGER,
    expires_ms   INTEGER,
    created_ms   INTEGER NOT NULL,
    used         INTEGER NOT NULL DEFAULT 0
) STRICT;
