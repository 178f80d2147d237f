-- Protocol v2 (chat.v2): signed prekeys, owner-signed invitations and removals, and
-- sealed messages numbered by their sender key's chain iteration.
--
-- A chat.v2 client cannot open what chat.v1 clients sealed (other ciphers, keys wrapped
-- under the identities' encryption keys), so the stored messages and sender keys of v1
-- are forgotten; rooms, members, invitations and identities stay. The relay says at
-- start-up how many entries this upgrade forgot.

DELETE FROM messages;
DELETE FROM sender_keys;
UPDATE rooms SET message_count = 0, message_bytes = 0;
UPDATE identities SET message_count = 0, stored_bytes = 0;
UPDATE usage SET stored_bytes = 0;

-- A message is recognised as resent by its sender, key id and chain iteration.
ALTER TABLE messages RENAME COLUMN counter TO iteration;

-- The owner's signed invitation (an encoded chat.v2.Invitation), kept while the user
-- is invited, which it stays as a member: members hand their keys only to members whose
-- invitation they verified. NULL for invitations from before v2: the owner signs them
-- anew.
ALTER TABLE invitations ADD COLUMN invitation BLOB;

-- The owner's latest signed removal of each user from each private room (an encoded
-- chat.v2.Removal): it voids the invitations issued before it, and is handed to
-- members so that a relay cannot quietly let the user back in on an old invitation.
CREATE TABLE removals (
    room    TEXT NOT NULL REFERENCES rooms (name),
    user    TEXT NOT NULL,
    removal BLOB NOT NULL,
    PRIMARY KEY (room, user)
) STRICT, WITHOUT ROWID;

-- Each device's current signed prekey (chat.v2.SignedPrekey, field by field); a new one
-- replaces the old.
CREATE TABLE prekeys (
    user          TEXT NOT NULL,
    device        INTEGER NOT NULL,
    prekey_id     INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    public_key    BLOB NOT NULL,
    signature     BLOB NOT NULL,
    PRIMARY KEY (user, device)
) STRICT, WITHOUT ROWID;
