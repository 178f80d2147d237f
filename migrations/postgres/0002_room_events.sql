-- Each room's joinings and leavings, as migrations/sqlite/0005_room_events.sql.
CREATE TABLE room_events (
    room   TEXT COLLATE "C" NOT NULL REFERENCES rooms (name),
    seq    BIGINT NOT NULL,
    "user" TEXT COLLATE "C" NOT NULL,
    reason INTEGER NOT NULL,
    PRIMARY KEY (room, seq)
);
