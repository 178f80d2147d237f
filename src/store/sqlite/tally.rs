//! What a run of messages in one commit changes in the counters, kept in memory and
//! written once at the end of the run.
//!
//! A message used to cost ten statements: its room's sequence number and counters, its
//! sender's, the store's, each read and written for every message, and a `DELETE` for
//! every message a full room forgot. Most of a batch is messages to a few rooms from a
//! few senders, so [`Tally`] reads each room's and user's counters once per batch,
//! decides quotas and trims from what it holds, and writes each counter once, with one
//! `DELETE` per trimmed room ([`Tally::write`]). What it holds is exact: nothing else
//! writes those rows while it does, because every other kind of change writes the
//! tally first and starts a new one (see `SqliteStore::commit`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use rusqlite::{Transaction, params};

use super::usage::{self, FORGET_OLDEST};
use super::{execute, select};
use crate::store::shared::Trim;
use crate::store::{StoragePolicy, StoreError};

/// A room's row, as this batch has changed it so far.
#[derive(Debug)]
pub(super) struct RoomTally {
    last_seq: i64,
    messages: i64,
    bytes: i64,
    /// Every message up to this one is forgotten when the tally is written.
    forget_through: Option<i64>,
    /// How many those are: what the `DELETE` must find.
    forgetting: u64,
}

/// What a user stores, as this batch has changed it so far; `None` for a sender with
/// no identity row (tests of the store alone), which has no quota and no counters.
type UserTally = Option<(i64, i64)>;

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

    /// The row of `room`, read on first use; an unknown room is an error, as it is for
    /// any change that numbers an entry.
    pub fn room(
        &mut self,
        transaction: &Transaction<'_>,
        room: &str,
        seq: i64,
    ) -> Result<&mut RoomTally, StoreError> {
        if !self.rooms.contains_key(room) {
            let row = select(
                transaction,
                "SELECT last_seq, message_count, message_bytes FROM rooms WHERE name = ?1",
                [room],
                format_args!("read the counters of room {room:?}"),
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
            let Some(&(last_seq, messages, bytes)) = row.first() else {
                return Err(StoreError::Database(format!(
                    "sequence number {seq} is for room {room:?}, which does not exist"
                )));
            };
            self.rooms.insert(
                room.to_owned(),
                RoomTally {
                    last_seq,
                    messages,
                    bytes,
                    forget_through: None,
                    forgetting: 0,
                },
            );
        }
        let tally = self.rooms.get_mut(room).expect("inserted above");
        tally.last_seq = tally.last_seq.max(seq);
        Ok(tally)
    }

    /// What `user` stores, read on first use.
    pub fn user(
        &mut self,
        transaction: &Transaction<'_>,
        user: &str,
    ) -> Result<UserTally, StoreError> {
        match self.users.entry(user.to_owned()) {
            Entry::Occupied(entry) => Ok(*entry.get()),
            Entry::Vacant(entry) => {
                let row = select(
                    transaction,
                    "SELECT message_count, stored_bytes FROM identities WHERE user = ?1",
                    [user],
                    format_args!("read what {user:?} stores"),
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                Ok(*entry.insert(row.first().copied()))
            }
        }
    }

    /// What the whole store holds, with this run's messages.
    pub fn total(&mut self, transaction: &Transaction<'_>) -> Result<Option<i64>, StoreError> {
        if self.total.is_none() {
            let total = select(
                transaction,
                "SELECT stored_bytes FROM usage WHERE id = 1",
                [],
                "read what the store holds",
                |row| Ok(row.get::<_, i64>(0)?),
            )?;
            self.total = Some(total.first().copied());
        }
        Ok(self
            .total
            .flatten()
            .map(|total| total.saturating_add(self.total_change)))
    }

    /// Counts a message of `bytes` that `sender` stored in `room` (already read by
    /// [`Tally::room`]), and forgets what `trim` found to make room for it.
    pub fn stored_message(
        &mut self,
        transaction: &Transaction<'_>,
        room: &str,
        sender: &str,
        bytes: i64,
        trim: Option<&Trim>,
    ) -> Result<(), StoreError> {
        self.count(transaction, room, sender, 1, bytes)?;
        if let Some(trim) = trim {
            for (of, size) in trim.taken() {
                self.count(transaction, room, of, -1, -size)?;
            }
            let tally = self.rooms.get_mut(room).expect("read before");
            tally.forget_through = trim.last();
            tally.forgetting += trim.taken().len() as u64;
        }
        Ok(())
    }

    fn count(
        &mut self,
        transaction: &Transaction<'_>,
        room: &str,
        user: &str,
        messages: i64,
        bytes: i64,
    ) -> Result<(), StoreError> {
        let tally = self.rooms.get_mut(room).expect("read before");
        tally.messages += messages;
        tally.bytes += bytes;
        self.total_change += bytes;
        self.user(transaction, user)?;
        if let Some(Some((count, stored))) = self.users.get_mut(user) {
            *count += messages;
            *stored += bytes;
        }
        Ok(())
    }

    /// Writes what the run changed (see [`Tally::write`]) and starts a new run.
    pub fn write_and_restart(&mut self, transaction: &Transaction<'_>) -> Result<(), StoreError> {
        std::mem::replace(self, Self::new(self.now_ms)).write(transaction)
    }

    /// Writes what the run changed: each room's, user's and the store's counters once,
    /// and one `DELETE` of what each room forgot.
    pub fn write(self, transaction: &Transaction<'_>) -> Result<(), StoreError> {
        for (room, tally) in &self.rooms {
            if let Some(through) = tally.forget_through {
                let deleted = execute(
                    transaction,
                    FORGET_OLDEST,
                    params![room, through],
                    format_args!("trim room {room:?}"),
                )?;
                if deleted != tally.forgetting {
                    return Err(StoreError::Database(format!(
                        "trimming room {room:?} deleted {deleted} messages where {} were counted",
                        tally.forgetting
                    )));
                }
            }
            execute(
                transaction,
                "UPDATE rooms SET last_seq = max(last_seq, ?2), used_ms = max(used_ms, ?3), \
                 message_count = ?4, message_bytes = ?5 WHERE name = ?1",
                params![
                    room,
                    tally.last_seq,
                    self.now_ms,
                    tally.messages,
                    tally.bytes
                ],
                format_args!("count the messages of room {room:?}"),
            )?;
        }
        for (user, tally) in &self.users {
            if let Some((messages, bytes)) = tally {
                execute(
                    transaction,
                    "UPDATE identities SET message_count = ?2, stored_bytes = ?3 WHERE user = ?1",
                    params![user, messages, bytes],
                    format_args!("count what {user:?} stores"),
                )?;
            }
        }
        if self.total_change != 0 {
            execute(
                transaction,
                "UPDATE usage SET stored_bytes = stored_bytes + ?1 WHERE id = 1",
                [self.total_change],
                "count what the store holds",
            )?;
        }
        Ok(())
    }
}

impl RoomTally {
    /// Whether the message `seq` is still stored at the end of this run.
    pub fn keeps(&self, seq: i64) -> bool {
        self.forget_through.is_none_or(|through| seq > through)
    }

    /// What the room must forget to take a new message of `size` bytes as well, never a
    /// message at or after `keep_from`, if anything: the oldest messages it still keeps,
    /// read only as far as they would be forgotten.
    pub fn plan_trim(
        &self,
        transaction: &Transaction<'_>,
        room: &str,
        policy: &StoragePolicy,
        keep_from: u64,
        size: i64,
    ) -> Result<Option<Trim>, StoreError> {
        match Trim::for_message(self.messages, self.bytes, size, policy) {
            Some(trim) => {
                let after = self.forget_through.unwrap_or(-1);
                usage::read_trim(transaction, room, trim, after, keep_from)
            }
            None => Ok(None),
        }
    }
}
