//! PostgreSQL's side of a commit's [`Tally`]: reading the counters it starts from, once
//! per run, and writing what it changed (as SQLite's `sqlite/tally.rs`).

use super::{Transaction, execute, get, select};
use crate::store::StoreError;
use crate::store::tally::Tally;

/// Reads `room`'s counters into `tally` unless it has them, and locks its row until the
/// commit: relays sharing the database number its entries one at a time. An unknown
/// room is an error, as it is for any change that numbers an entry (`seq`).
pub(super) async fn read_room(
    transaction: &Transaction<'_>,
    tally: &mut Tally,
    room: &str,
    seq: i64,
) -> Result<(), StoreError> {
    if tally.has_room(room) {
        return Ok(());
    }
    let rows = select(
        transaction,
        "SELECT last_seq, message_count, message_bytes FROM rooms WHERE name = $1 FOR UPDATE",
        &[&room],
        format_args!("read the counters of room {room:?}"),
    )
    .await?;
    let Some(row) = rows.first() else {
        return Err(StoreError::Database(format!(
            "sequence number {seq} is for room {room:?}, which does not exist"
        )));
    };
    tally.read_room(room, get(row, 0)?, get(row, 1)?, get(row, 2)?);
    Ok(())
}

/// Reads what `user` stores into `tally` unless it has it.
pub(super) async fn read_user(
    transaction: &Transaction<'_>,
    tally: &mut Tally,
    user: &str,
) -> Result<(), StoreError> {
    if tally.has_user(user) {
        return Ok(());
    }
    let rows = select(
        transaction,
        "SELECT stored_bytes FROM identities WHERE \"user\" = $1",
        &[&user],
        format_args!("read what {user:?} stores"),
    )
    .await?;
    let stored = rows.first().map(|row| get::<i64>(row, 0)).transpose()?;
    tally.read_user(user, stored);
    Ok(())
}

/// Reads what the whole store holds into `tally` unless it has it.
pub(super) async fn read_total(
    transaction: &Transaction<'_>,
    tally: &mut Tally,
) -> Result<(), StoreError> {
    if tally.has_total() {
        return Ok(());
    }
    let rows = select(
        transaction,
        "SELECT stored_bytes FROM usage WHERE id = 1",
        &[],
        "read what the store holds",
    )
    .await?;
    let total = rows.first().map(|row| get::<i64>(row, 0)).transpose()?;
    tally.read_total(total);
    Ok(())
}

/// Writes what the run in `tally` changed, and starts a new run.
pub(super) async fn write_and_restart(
    transaction: &Transaction<'_>,
    tally: &mut Tally,
) -> Result<(), StoreError> {
    let writes = std::mem::replace(tally, Tally::new(tally.now_ms())).into_writes();
    for room in &writes.rooms {
        if let Some((through, _)) = room.forget {
            let deleted = execute(
                transaction,
                "DELETE FROM messages WHERE room = $1 AND seq <= $2",
                &[&room.room, &through],
                format_args!("trim room {:?}", room.room),
            )
            .await?;
            room.check_forgotten(deleted)?;
        }
        execute(
            transaction,
            "UPDATE rooms SET last_seq = GREATEST(last_seq, $2), \
             used_ms = GREATEST(used_ms, $3), message_count = message_count + $4, \
             message_bytes = message_bytes + $5 WHERE name = $1",
            &[
                &room.room,
                &room.last_seq,
                &room.used_ms,
                &room.message_change,
                &room.byte_change,
            ],
            format_args!("count the messages of room {:?}", room.room),
        )
        .await?;
    }
    for (user, messages, bytes) in &writes.users {
        execute(
            transaction,
            "UPDATE identities SET message_count = message_count + $2, \
             stored_bytes = stored_bytes + $3 WHERE \"user\" = $1",
            &[user, messages, bytes],
            format_args!("count what {user:?} stores"),
        )
        .await?;
    }
    if writes.total_change != 0 {
        execute(
            transaction,
            "UPDATE usage SET stored_bytes = stored_bytes + $1 WHERE id = 1",
            &[&writes.total_change],
            "count what the store holds",
        )
        .await?;
    }
    Ok(())
}
