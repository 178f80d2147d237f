//! What a run of messages in one commit changes in the counters, kept in memory and
//! written once at the end of the run, by either backend.
//!
//! A message used to cost ten statements: its room's sequence number and counters, its
//! sender's, the store's, each read and written for every message, and a `DELETE` for
//! every message a full room forgot. Most of a batch is messages to a few rooms from a
//! few senders, so a backend reads each room's and sender's counters once per run into a
//! [`Tally`], decides quotas and trims from it, and at the end writes what
//! [`Tally::into_writes`] says: each counter moved once, and one `DELETE` per trimmed
//! room. What it holds is exact: nothing else writes those rows while it does, because
//! every other kind of change in a batch writes the tally first and starts a new one.

use std::collections::HashMap;

use super::StoragePolicy;
use super::shared::Trim;

/// A room's counters, as read, with what this run changed.
#[derive(Debug)]
pub(super) struct RoomTally {
    last_seq: i64,
    /// Messages and bytes, this run's included: what trims are decided from.
    messages: i64,
    bytes: i64,
    /// What this run changed of them, to be written.
    message_change: i64,
    byte_change: i64,
    /// Every message up to this one is forgotten when the tally is written.
    forget_through: Option<i64>,
    /// How many those are: what the `DELETE` must find.
    forgetting: u64,
}

impl RoomTally {
    /// Whether the message `seq` is still stored at the end of this run.
    pub fn keeps(&self, seq: i64) -> bool {
        self.forget_through.is_none_or(|through| seq > through)
    }

    /// What the room must forget to take a new message of `size` bytes as well, if
    /// anything, and after which sequence number its oldest messages it still keeps
    /// start: the backend feeds the trim those, as far as it needs.
    pub fn trim_for(&self, size: i64, policy: &StoragePolicy) -> Option<(Trim, i64)> {
        let trim = Trim::for_message(self.messages, self.bytes, size, policy)?;
        Some((trim, self.forget_through.unwrap_or(-1)))
    }
}

/// What a user stores: as read (`None` for a user with no identity row, in tests of
/// the store alone, which has no quota and no counters), and what this run changed.
#[derive(Debug, Default)]
struct UserTally {
    read: Option<Option<i64>>,
    message_change: i64,
    byte_change: i64,
}

/// The counters a run of messages changed, not yet written.
#[derive(Debug, Default)]
pub(super) struct Tally {
    rooms: HashMap<String, RoomTally>,
    users: HashMap<String, UserTally>,
    /// What the store holds, once read.
    total: Option<Option<i64>>,
    /// The bytes by which this run changed it.
    total_change: i64,
    /// When the rooms were used: the commit's time.
    now_ms: i64,
}

/// What to write at the end of a run.
#[derive(Debug)]
pub(super) struct Writes {
    pub rooms: Vec<RoomWrite>,
    /// User, messages and bytes to add to its counters.
    pub users: Vec<(String, i64, i64)>,
    /// Bytes to add to the store's.
    pub total_change: i64,
}

/// One room's row to update, and what it forgot.
#[derive(Debug)]
pub(super) struct RoomWrite {
    pub room: String,
    /// Raise `last_seq` to this, and `used_ms` to `used_ms`.
    pub last_seq: i64,
    pub used_ms: i64,
    /// Add these to its counters.
    pub message_change: i64,
    pub byte_change: i64,
    /// Delete its messages up to this sequence number: there must be this many.
    pub forget: Option<(i64, u64)>,
}

impl Tally {
    pub fn new(now_ms: i64) -> Self {
        Self {
            now_ms,
            ..Self::default()
        }
    }

    /// The commit's time.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Whether `room`'s counters are read.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Takes `room`'s counters as read.
    pub fn read_room(&mut self, room: &str, last_seq: i64, messages: i64, bytes: i64) {
        self.rooms.insert(
            room.to_owned(),
            RoomTally {
                last_seq,
                messages,
                bytes,
                message_change: 0,
                byte_change: 0,
                forget_through: None,
                forgetting: 0,
            },
        );
    }

    /// The read counters of `room`.
    pub fn room(&self, room: &str) -> &RoomTally {
        &self.rooms[room]
    }

    /// The sequence number of a message to `room` (read first): `given`, which it uses
    /// up whether or not the message is stored, or for 0 the room's next, used only
    /// once a message is stored under it (`stored_message`).
    pub fn number(&mut self, room: &str, given: i64) -> i64 {
        let tally = self.rooms.get_mut(room).expect("read first");
        if given == 0 {
            return tally.last_seq + 1;
        }
        tally.last_seq = tally.last_seq.max(given);
        given
    }

    /// Whether what `user` stores is read.
    pub fn has_user(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|tally| tally.read.is_some())
    }

    /// Takes what `user` stores as read (`None`: it has no identity row).
    pub fn read_user(&mut self, user: &str, stored_bytes: Option<i64>) {
        self.users.entry(user.to_owned()).or_default().read = Some(stored_bytes);
    }

    /// What `user` stores with this run's changes, if it has counters (read first).
    pub fn stored_bytes(&self, user: &str) -> Option<i64> {
        let tally = &self.users[user];
        tally
            .read
            .flatten()
            .map(|bytes| bytes.saturating_add(tally.byte_change))
    }

    /// Whether what the whole store holds is read.
    pub fn has_total(&self) -> bool {
        self.total.is_some()
    }

    pub fn read_total(&mut self, total: Option<i64>) {
        self.total = Some(total);
    }

    /// What the whole store holds, with this run's messages (read first).
    pub fn total(&self) -> Option<i64> {
        self.total
            .flatten()
            .map(|total| total.saturating_add(self.total_change))
    }

    /// Counts a message of `bytes` that `sender` stored in `room` (read first) under `seq`, and
    /// forgets what `trim` found to make room for it.
    pub fn stored_message(
        &mut self,
        room: &str,
        seq: i64,
        sender: &str,
        bytes: i64,
        trim: Option<&Trim>,
    ) {
        let tally = self.rooms.get_mut(room).expect("read first");
        tally.last_seq = tally.last_seq.max(seq);
        self.count(room, sender, 1, bytes);
        if let Some(trim) = trim {
            for (of, size) in trim.taken() {
                self.count(room, of, -1, -size);
            }
            let tally = self.rooms.get_mut(room).expect("read first");
            tally.forget_through = trim.last();
            tally.forgetting += trim.taken().len() as u64;
        }
    }

    fn count(&mut self, room: &str, user: &str, messages: i64, bytes: i64) {
        let tally = self.rooms.get_mut(room).expect("read first");
        tally.messages += messages;
        tally.bytes += bytes;
        tally.message_change += messages;
        tally.byte_change += bytes;
        self.total_change += bytes;
        let user = self.users.entry(user.to_owned()).or_default();
        user.message_change += messages;
        user.byte_change += bytes;
    }

    /// What to write: each room's, user's and the store's counters moved once, and
    /// what each room forgot.
    pub fn into_writes(self) -> Writes {
        let used_ms = self.now_ms;
        // Sorted, so that relays sharing a database lock rows in one order.
        let mut rooms: Vec<_> = self.rooms.into_iter().collect();
        rooms.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut users: Vec<_> = self.users.into_iter().collect();
        users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Writes {
            rooms: rooms
                .into_iter()
                .map(|(room, tally)| RoomWrite {
                    room,
                    last_seq: tally.last_seq,
                    used_ms,
                    message_change: tally.message_change,
                    byte_change: tally.byte_change,
                    forget: tally
                        .forget_through
                        .map(|through| (through, tally.forgetting)),
                })
                .collect(),
            users: users
                .into_iter()
                .filter(|(_, tally)| tally.message_change != 0 || tally.byte_change != 0)
                .map(|(user, tally)| (user, tally.message_change, tally.byte_change))
                .collect(),
            total_change: self.total_change,
        }
    }
}

impl RoomWrite {
    /// An error unless `deleted`, the messages its `DELETE` found, are the ones counted.
    pub fn check_forgotten(&self, deleted: u64) -> Result<(), super::StoreError> {
        match self.forget {
            Some((_, counted)) if counted != deleted => Err(super::StoreError::Database(format!(
                "trimming room {:?} deleted {deleted} messages where {counted} were counted",
                self.room
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_moves_each_counter_by_what_it_stored_and_forgot() {
        let policy = StoragePolicy {
            max_messages_per_room: 2,
            ..StoragePolicy::UNLIMITED
        };
        let mut tally = Tally::new(7);
        tally.read_room("r", 3, 2, 20);
        tally.read_user("alice", Some(100));
        assert_eq!(tally.number("r", 5), 5);
        assert_eq!(
            tally.room("r").last_seq,
            5,
            "a given number is used up at once"
        );
        let (mut trim, after) = tally.room("r").trim_for(10, &policy).unwrap();
        assert_eq!(after, -1);
        assert!(trim.take(1, "bob".to_owned(), 12));
        let trim = trim.found();
        tally.stored_message("r", 5, "alice", 10, trim.as_ref());
        assert_eq!(tally.stored_bytes("alice"), Some(110));
        assert!(!tally.room("r").keeps(1));
        assert!(tally.room("r").keeps(2));
        // The next message's trim starts after what this run forgets.
        assert_eq!(tally.number("r", 6), 6);
        assert_eq!(tally.room("r").trim_for(10, &policy).unwrap().1, 1);
        let writes = tally.into_writes();
        assert_eq!(writes.total_change, -2);
        let room = &writes.rooms[0];
        assert_eq!(
            (
                room.last_seq,
                room.used_ms,
                room.message_change,
                room.byte_change
            ),
            (6, 7, 0, -2)
        );
        assert_eq!(room.forget, Some((1, 1)));
        assert!(room.check_forgotten(1).is_ok());
        assert!(room.check_forgotten(2).is_err());
        assert_eq!(
            writes.users,
            [("alice".to_owned(), 1, 10), ("bob".to_owned(), -1, -12)]
        );
    }

    #[test]
    fn a_number_the_store_gives_is_used_only_by_a_message_stored_under_it() {
        let mut tally = Tally::new(7);
        tally.read_room("r", 3, 0, 0);
        assert_eq!(tally.number("r", 0), 4);
        // Refused or a resend: the next message gets the same number.
        assert_eq!(tally.number("r", 0), 4);
        tally.stored_message("r", 4, "alice", 10, None);
        assert_eq!(tally.number("r", 0), 5);
        assert_eq!(tally.into_writes().rooms[0].last_seq, 4);
    }
}
