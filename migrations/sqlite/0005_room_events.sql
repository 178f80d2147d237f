-- Each room's joinings and leavings, numbered in its log like its messages: a relay
-- that shares the database with others replays them, in order with the messages, to
-- learn who receives what (docs/DEPLOY.md, "Several relays"). `reason` is 0 for a
-- joining, else the chat.v2.LeaveReason of a leaving. Forgotten with the room.
CREATE TABLE room_events (
    room   TEXT NOT NULL REFERENCES rooms (name),
    seq    INTEGER NOT NULL,
    user   TEXT NOT NULL,
    reason INTEGER NOT NULL,
    PRIMARY KEY (room, seq)
);
