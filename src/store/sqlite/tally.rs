//! SQLite's side of a commit's [`Tally`]: reading the counters it starts from, once per
//! run, and writing what it changed.

use rusqlite::{Transaction, params};

use super::usage::FORGET_OLDEST;
use super::{execute, select};
use crate::store::StoreError;
use crate::store::tally::Tally;

/// Reads `room`'s counters into `tally` unless it has them; an unknown room is an
/// error, as it is for any change that numbers an entry (`seq`).
pub(super) fn read_room(
    transaction: &Transaction<'_>,
    tally: &mut Tally,
    room: &str,
    seq: i64,
) -> Result<(), StoreError> {
    if tally.has_room(room) {
        return Ok(());
    }
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
    tally.read_room(room, last_seq, messages, bytes);
    Ok(())
}

/// Reads what `user` stores into `tally` unless it has it.
pub(super) fn read_user(
    transaction: &Transaction<'_>,
    tally: &mut Tally,
    user: &str,
) -> Result<(), StoreError> {
    if tally.has_user(user) {
        return Ok(());
    }
    let row = select(
        transaction,
        "SELECT stored_bytes FROM identities WHERE user = ?1",
        [user],
        format_args!("read what {user:?} stores"),
        |row| Ok(row.get::<_, i64>(0)?),
    )?;
    tally.read_user(user, row.first().copied());
    Ok(())
}

/// Reads what the whole store holds into `tally` unless it has it.
pub(super) fn read_total(
    transaction: &Transaction<'_>,
    tally: &mut Tally,
) -> Result<(), StoreError> {
    if tally.has_total() {
        return Ok(());
    }
    let total = select(
        transaction,
        "SELECT stored_bytes FROM usage WHERE id = 1",
        [],
        "read what the store holds",
        |row| Ok(row.get::<_, i64>(0)?),
    )?;
    tally.read_total(total.first().copied());
    Ok(())
}

/// Writes what the run in `tally` changed, and starts a new run.
pub(super) fn write_and_restart(
    transaction: &Transaction<'_>,
    tally: &mut Tally,
) -> Result<(), StoreError> {
    let writes = std::mem::replace(tally, Tally::new(tally.now_ms())).into_writes();
    for room in &writes.rooms {
        if let Some((through, _)) = room.forget {
            let deleted = execute(
                transaction,
                FORGET_OLDEST,
                params![room.room, through],
                format_args!("trim room {:?}", room.room),
            )?;
            room.check_forgotten(deleted)?;
        }
        execute(
            transaction,
            "UPDATE rooms SET last_seq = max(last_seq, ?2), used_ms = max(used_ms, ?3), \
             message_count = message_count + ?4, message_bytes = message_bytes + ?5 \
             WHERE name = ?1",
            params![
                room.room,
                room.last_seq,
                room.used_ms,
                room.message_change,
                room.byte_change
            ],
            format_args!("count the messages of room {:?}", room.room),
        )?;
    }
    for (user, messages, bytes) in &writes.users {
        execute(
            transaction,
            "UPDATE identities SET message_count = message_count + ?2, \
             stored_bytes = stored_bytes + ?3 WHERE user = ?1",
            params![user, messages, bytes],
            format_args!("count what {user:?} stores"),
        )?;
    }
    if writes.total_change != 0 {
        execute(
            transaction,
            "UPDATE usage SET stored_bytes = stored_bytes + ?1 WHERE id = 1",
            [writes.total_change],
            "count what the store holds",
        )?;
    }
    Ok(())
}
