//! What each room and user stores, kept as counters in the same transaction as the rows
//! they count: a user's quota is checked against exact figures, and a room, or the whole
//! store, beyond its limits forgets its oldest messages, without summing a table on every
//! write.
//!
//! Every statement that deletes messages or sender keys returns what it deleted
//! (`RETURNING`), and the counters are brought down by exactly that; a room's trim for a
//! new message is counted from what the same transaction read of them just before.

use std::fmt::Display;

use rusqlite::{Params, Transaction, params};

use super::{execute, saturating, select};
use crate::store::shared::{self, Trim, Usage};
use crate::store::{StoragePolicy, StoreError};

/// The oldest messages of room `?1` after `?2` and before `?3`, a page at a time: it
/// walks the (room, seq) primary key from the oldest.
pub(super) const OLDEST_MESSAGES: &str = "SELECT seq, sender, length(sealed) FROM messages \
     WHERE room = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq LIMIT 64";

/// [`OLDEST_MESSAGES`], the oldest only: what a full room forgets for each message it
/// stores. (Not `LIMIT ?4`: SQLite plans with a bound LIMIT's value, so it prepares
/// such a statement again each time the value is bound.)
pub(super) const OLDEST_MESSAGE: &str = "SELECT seq, sender, length(sealed) FROM messages \
     WHERE room = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq LIMIT 1";

/// Forgets the messages of room `?1` up to `?2`, looking them up by the primary key: the
/// work grows with what is deleted, not with the room.
pub(super) const DELETE_OLDEST: &str = "DELETE FROM messages WHERE room = ?1 AND seq <= ?2 \
     RETURNING room, sender, length(sealed)";

/// Adds `?2` messages and `?3` bytes to room `?1`'s counters.
const COUNT_ROOM: &str = "UPDATE rooms SET message_count = message_count + ?2, \
     message_bytes = message_bytes + ?3 WHERE name = ?1";

/// Adds `?2` messages and `?3` bytes to what user `?1` stores.
const COUNT_USER: &str = "UPDATE identities SET message_count = message_count + ?2, \
     stored_bytes = stored_bytes + ?3 WHERE user = ?1";

/// Adds `?1` bytes to what the store holds.
const COUNT_STORE: &str = "UPDATE usage SET stored_bytes = stored_bytes + ?1 WHERE id = 1";

/// [`DELETE_OLDEST`] for a caller that knows already what it deletes.
pub(super) const FORGET_OLDEST: &str = "DELETE FROM messages WHERE room = ?1 AND seq <= ?2";

/// Writes the changes to the counters.
fn apply(usage: Usage, transaction: &Transaction<'_>) -> Result<(), StoreError> {
    for (room, (messages, bytes)) in usage.rooms {
        execute(
            transaction,
            COUNT_ROOM,
            params![room, messages, bytes],
            format_args!("count the messages of room {room:?}"),
        )?;
    }
    for (user, (messages, bytes)) in usage.users {
        execute(
            transaction,
            COUNT_USER,
            params![user, messages, bytes],
            format_args!("count what {user:?} stores"),
        )?;
    }
    if usage.total != 0 {
        execute(
            transaction,
            COUNT_STORE,
            [usage.total],
            "count what the store holds",
        )?;
    }
    Ok(())
}

/// Counts a sender key just stored, `bytes` for all its recipients.
pub(super) fn stored_keys(
    transaction: &Transaction<'_>,
    sender: &str,
    bytes: usize,
) -> Result<(), StoreError> {
    let mut usage = Usage::default();
    usage.key(1, sender, saturating(bytes));
    apply(usage, transaction)
}

/// Runs a `DELETE FROM messages ... RETURNING room, sender, length(sealed)` and counts
/// what it forgot; returns how many messages.
pub(super) fn delete_messages(
    transaction: &Transaction<'_>,
    sql: &str,
    params: impl Params,
    operation: impl Display,
) -> Result<u64, StoreError> {
    let deleted = select(transaction, sql, params, operation, |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    let mut usage = Usage::default();
    for (room, sender, bytes) in &deleted {
        usage.message(-1, room, sender, *bytes);
    }
    apply(usage, transaction)?;
    Ok(deleted.len() as u64)
}

/// Runs a `DELETE FROM sender_keys ... RETURNING sender, length(wrapped_key) +
/// length(signature)` and counts what it forgot; returns how many rows.
pub(super) fn delete_keys(
    transaction: &Transaction<'_>,
    sql: &str,
    params: impl Params,
    operation: impl Display,
) -> Result<u64, StoreError> {
    let deleted = select(transaction, sql, params, operation, |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    let mut usage = Usage::default();
    for (sender, bytes) in &deleted {
        usage.key(-1, sender, *bytes);
    }
    apply(usage, transaction)?;
    Ok(deleted.len() as u64)
}

/// The oldest messages of the whole store, a page at a time: the age index.
pub(super) const OLDEST_IN_STORE: &str = "SELECT rowid, length(sealed) FROM messages \
     WHERE NOT (room = ?1 AND seq = ?2) ORDER BY stored_ms LIMIT 64";

/// While the store holds more than `policy` lets it, forgets its oldest messages,
/// whichever room they are in, never message `seq` of `room` (the one just stored);
/// returns how many.
pub(super) fn evict_oldest(
    transaction: &Transaction<'_>,
    policy: &StoragePolicy,
    room: &str,
    seq: u64,
) -> Result<u64, StoreError> {
    let operation = "make room in the store";
    let total = select(
        transaction,
        "SELECT stored_bytes FROM usage WHERE id = 1",
        [],
        operation,
        |row| Ok(row.get::<_, i64>(0)?),
    )?;
    let mut excess = shared::store_excess(total.first().copied(), policy);
    let mut evicted = 0;
    while excess > 0 {
        let page = select(
            transaction,
            OLDEST_IN_STORE,
            params![room, saturating(seq)],
            operation,
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
        )?;
        if page.is_empty() {
            break;
        }
        for (rowid, size) in page {
            evicted += delete_messages(
                transaction,
                "DELETE FROM messages WHERE rowid = ?1 RETURNING room, sender, length(sealed)",
                [rowid],
                operation,
            )?;
            excess = excess.saturating_sub(size.max(0) as u64);
            if excess == 0 {
                break;
            }
        }
    }
    Ok(evicted)
}

/// Names a trimming in an error message; formatted only if there is one.
#[derive(Clone, Copy)]
struct Trimming<'a>(&'a str);

impl Display for Trimming<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "trim room {:?}", self.0)
    }
}

/// What `room` must forget to hold no more than `policy` lets a room keep, never a
/// message at or after `keep_from`; `None` when it is within its limits or holds nothing
/// it may forget. Changes nothing: it reads the room's oldest messages only as far as they
/// would be deleted.
pub(super) fn plan_trim(
    transaction: &Transaction<'_>,
    room: &str,
    policy: &StoragePolicy,
    keep_from: u64,
) -> Result<Option<Trim>, StoreError> {
    let operation = Trimming(room);
    let counts = select(
        transaction,
        "SELECT message_count, message_bytes FROM rooms WHERE name = ?1",
        [room],
        operation,
        |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
    )?;
    let Some(&(count, bytes)) = counts.first() else {
        return Ok(None);
    };
    match Trim::new(count, bytes, policy) {
        Some(trim) => read_trim(transaction, room, trim, -1, keep_from),
        None => Ok(None),
    }
}

/// Feeds `trim` the oldest messages of `room` after `after` and before `keep_from`, as
/// far as it needs; the trim, if it found anything to forget.
pub(super) fn read_trim(
    transaction: &Transaction<'_>,
    room: &str,
    mut trim: Trim,
    mut after: i64,
    keep_from: u64,
) -> Result<Option<Trim>, StoreError> {
    // The oldest messages, one page at a time, until enough are found; one alone when
    // it may be enough, as for a full room that forgets one message for each it stores.
    'pages: loop {
        let page = select(
            transaction,
            if trim.wants_one() {
                OLDEST_MESSAGE
            } else {
                OLDEST_MESSAGES
            },
            params![room, after, saturating(keep_from)],
            Trimming(room),
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            },
        )?;
        if page.is_empty() {
            break;
        }
        for (seq, sender, size) in page {
            after = seq;
            if trim.take(seq, sender, size) {
                break 'pages;
            }
        }
    }
    Ok(trim.found())
}

/// Makes `room` forget its oldest messages until it holds no more than `policy` lets
/// a room keep, never a message at or after `keep_from`; returns how many it forgot.
pub(super) fn trim_room(
    transaction: &Transaction<'_>,
    room: &str,
    policy: &StoragePolicy,
    keep_from: u64,
) -> Result<u64, StoreError> {
    match plan_trim(transaction, room, policy, keep_from)? {
        Some(trim) => delete_messages(
            transaction,
            DELETE_OLDEST,
            params![room, trim.last()],
            Trimming(room),
        ),
        None => Ok(0),
    }
}
