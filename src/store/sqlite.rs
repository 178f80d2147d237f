//! A [`Store`] in an embedded SQLite database, `chat.sqlite3` in the data directory.
//!
//! WAL journal, `synchronous = FULL`: a change is on disk when `register`, `commit` or
//! `prune` returns. The WAL is copied back into the database by a thread of its own
//! (`checkpoint`), not by the commit that fills it. The schema is created and upgraded
//! by the numbered migrations in `migrations/sqlite/`, run at start-up;
//! `PRAGMA user_version` records how far a database has come.
//!
//! What rooms and users store is counted as it changes (`usage`, with the arithmetic in
//! `shared`), so quotas cost no scan; reclaiming finds what nobody used from when each
//! room and user was last used.
//!
//! Two connections: a writer (`register`, `commit`, `prune`, the registration tokens)
//! and a reader (everything else), each behind its own lock. With WAL a reader sees the last committed state
//! without waiting for a writer, so catching a member up is never stuck behind the
//! fsync of the next commit. Each read runs in one read transaction, so the several
//! queries of one call see one state. An in-memory database is private to its
//! connection, so there the two roles share a single connection.

mod checkpoint;
mod tally;
mod usage;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prost::Message;
use rusqlite::{Connection, Params, Row, Transaction, TransactionBehavior, params};

use super::copy;
use super::shared::{
    self, bits, decode_identity, decode_message, from_bits, in_sequence, millis, new_token, now_ms,
    pending, saturating, stored_change, stored_seq, token_id, tokens_named,
};
use super::tally::Tally;
use super::{
    Applied, Change, Dormant, Entry, LogEntry, Pruned, RegistrationToken, StoragePolicy, Store,
    StoreError, StoredRoom, WrappedKey,
};
use crate::proto::{
    MessageDelivery, PublicIdentity, SealedMessage, SenderKeyDelivery, SignedPrekey,
};

/// The database's file name in the data directory.
pub const DATABASE_FILE: &str = "chat.sqlite3";

/// The migrations, in order: the schema version after each is its position + 1.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_identities.sql"),
    include_str!("../../migrations/sqlite/0002_rooms.sql"),
    include_str!("../../migrations/sqlite/0003_usage.sql"),
    include_str!("../../migrations/sqlite/0004_protocol_v2.sql"),
    include_str!("../../migrations/sqlite/0005_room_events.sql"),
];

/// How many prepared statements each connection keeps: more than the store has, so
/// none is ever prepared twice (the default, 16, is fewer).
const STATEMENT_CACHE: usize = 64;

/// The writer's page cache, in KiB (negative, as `PRAGMA cache_size` takes KiB).
const WRITER_CACHE_KIB: i64 = -32 * 1024;

/// Forgets the sender keys of room `?1` that are superseded (their sender gave the
/// same recipient a later one) and that no stored message was sealed with: the key in
/// force for each sender and recipient stays, and so does every key a remaining
/// message needs.
const PRUNE_SENDER_KEYS: &str = "DELETE FROM sender_keys AS old \
     WHERE room = ?1 AND superseded_seq IS NOT NULL \
     AND NOT EXISTS (SELECT 1 FROM messages \
      WHERE room = ?1 AND sender = old.sender AND key_id = old.key_id) \
     RETURNING sender, length(wrapped_key) + length(signature)";

/// Marks the keys a sender gave one recipient before the one just stored (`?4`) as
/// superseded by it, the first time.
const SUPERSEDE_KEYS: &str = "UPDATE sender_keys SET superseded_seq = ?4 \
     WHERE room = ?1 AND sender = ?2 AND recipient = ?3 AND seq < ?4 \
     AND superseded_seq IS NULL";

/// Forgets the keys a sender gave one recipient before the one just stored (`?4`) that
/// no stored message was sealed with: a member distributing keys over and over cannot
/// grow the store. (An earlier copy of the same key stays while messages were sealed
/// with it: a member catching up from before the new copy needs it for them.)
const DROP_SUPERSEDED_KEYS: &str = "DELETE FROM sender_keys AS old \
     WHERE room = ?1 AND sender = ?2 AND recipient = ?3 AND seq < ?4 \
     AND NOT EXISTS (SELECT 1 FROM messages \
      WHERE room = ?1 AND sender = ?2 AND key_id = old.key_id) \
     RETURNING sender, length(wrapped_key) + length(signature)";

/// The columns [`message`] reads, in its order.
macro_rules! message_columns {
    () => {
        "seq, sender, sealed"
    };
}

/// The columns [`sender_key`] reads, in its order.
macro_rules! key_columns {
    () => {
        "seq, sender, key_id, wrapped_key, signature"
    };
}

/// The relay's database.
pub struct SqliteStore {
    /// For `register`, `commit` and `prune`.
    writer: Arc<Mutex<Connection>>,
    /// For the reads; the writer itself for a database in memory.
    reader: Arc<Mutex<Connection>>,
    /// Told of each commit, to checkpoint off the commit path; none in memory.
    checkpoints: Option<checkpoint::Checkpoints>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `dir` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DATABASE_FILE);
        let fail = |error: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            reason: error.to_string(),
        };
        create_private(&path).map_err(|error| StoreError::Open {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        let mut writer = Connection::open(&path).map_err(fail)?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| writer.pragma_update(None, "synchronous", "FULL"))
            // A batch of 1024 messages dirties more pages than the default 2 MiB of
            // cache holds: SQLite then spills them to the WAL before the commit, and
            // reads back what it evicted. Taken only as the database grows.
            .and_then(|()| writer.pragma_update(None, "cache_size", WRITER_CACHE_KIB))
            .and_then(|()| {
                writer.pragma_update(None, "wal_autocheckpoint", checkpoint::BACKSTOP_PAGES)
            })
            .and_then(|()| configure(&writer))
            .map_err(fail)?;
        migrate(&mut writer).map_err(|error| match error {
            StoreError::Database(reason) => StoreError::Open {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })?;
        // Opened after the migrations, so it never sees a schema half made; query_only
        // makes a write slipped into a read method fail instead of bypassing the writer.
        let reader = Connection::open(&path).map_err(fail)?;
        configure(&reader)
            .and_then(|()| reader.pragma_update(None, "query_only", true))
            .map_err(fail)?;
        let checkpoints =
            checkpoint::Checkpoints::start(&path).map_err(|reason| StoreError::Open {
                path: path.display().to_string(),
                reason,
            })?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            checkpoints: Some(checkpoints),
        })
    }

    /// A database in memory, gone with the process (tests, benchmarks).
    pub fn in_memory() -> Result<Self, StoreError> {
        let mut connection = Connection::open_in_memory().map_err(database)?;
        configure(&connection).map_err(database)?;
        migrate(&mut connection)?;
        // A second `:memory:` connection would be a second, empty database.
        let connection = Arc::new(Mutex::new(connection));
        Ok(Self {
            writer: Arc::clone(&connection),
            reader: connection,
            checkpoints: None,
        })
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        lock(&self.writer)
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        lock(&self.reader)
    }
}

/// What every connection needs, whatever its role.
fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // Statement journals (the pages as a statement or savepoint found them) spilled to
    // a temporary file beyond 64 KiB: about 30 writes per message in a batch of 1024
    // while each message had a savepoint. One is never read after its transaction
    // ends, so memory is as durable (the WAL and its fsync are what a crash recovers
    // from).
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    connection.busy_timeout(Duration::from_secs(5))
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A statement that panicked left no transaction open: the `Transaction` dropped
    // while unwinding rolled it back.
    connection.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The index in [`MIGRATIONS`] of 0004, which forgets what chat.v1 clients sealed.
const PROTOCOL_V2_MIGRATION: usize = 3;

/// Runs the migrations the database has not had yet, each in its own transaction.
/// `PRAGMA user_version`, in the database's header, is the schema-version record: it is
/// where every database made so far keeps it.
fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(database)?;
    for index in pending(version, MIGRATIONS)? {
        let migration = MIGRATIONS[index];
        let transaction = connection.transaction().map_err(database)?;
        if index == PROTOCOL_V2_MIGRATION {
            let count = |table: &str| -> Result<i64, StoreError> {
                transaction
                    .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                        row.get(0)
                    })
                    .map_err(database)
            };
            let (messages, sender_keys) = (count("messages")?, count("sender_keys")?);
            tracing::info!(
                messages,
                sender_keys,
                "upgrading the database to protocol chat.v2: stored messages and sender keys \
                 of chat.v1 clients are forgotten (no v2 client can open them); identities, \
                 rooms and members stay"
            );
        }
        transaction.execute_batch(migration).map_err(database)?;
        transaction
            .pragma_update(None, "user_version", index as i64 + 1)
            .map_err(database)?;
        transaction.commit().map_err(database)?;
    }
    Ok(())
}

fn database(error: rusqlite::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

/// The error of `operation`, named so that a log line says what did not happen.
fn failed(operation: impl Display) -> impl Fn(rusqlite::Error) -> StoreError {
    move |error| StoreError::Database(format!("{operation}: {error}"))
}

/// Runs one statement (prepared once per connection) and says how many rows it changed.
fn execute(
    connection: &Connection,
    sql: &str,
    params: impl Params,
    operation: impl Display,
) -> Result<u64, StoreError> {
    connection
        .prepare_cached(sql)
        .and_then(|mut statement| statement.execute(params))
        .map(|changed| changed as u64)
        .map_err(failed(operation))
}

/// Why a row could not be read: SQLite failed (named with the operation by
/// [`select`]), or a stored value does not decode.
enum RowError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for RowError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sql(error)
    }
}

/// Runs one query (prepared once per connection) and reads every row it returns.
fn select<T>(
    connection: &Connection,
    sql: &str,
    params: impl Params,
    operation: impl Display,
    mut read: impl FnMut(&Row<'_>) -> Result<T, RowError>,
) -> Result<Vec<T>, StoreError> {
    let fail = failed(operation);
    let mut statement = connection.prepare_cached(sql).map_err(&fail)?;
    let mut rows = statement.query(params).map_err(&fail)?;
    let mut selected = Vec::new();
    while let Some(row) = rows.next().map_err(&fail)? {
        selected.push(read(row).map_err(|error| match error {
            RowError::Sql(error) => fail(error),
            RowError::Store(error) => error,
        })?);
    }
    Ok(selected)
}

/// A row of [`message_columns`] as the message it is.
fn message(room: &str, row: &Row<'_>) -> Result<MessageDelivery, RowError> {
    decode_message(room, from_bits(row.get(0)?), row.get(1)?, row.get(2)?).map_err(RowError::Store)
}

/// A row of [`key_columns`] as the sender key it is.
fn sender_key(room: &str, row: &Row<'_>) -> Result<SenderKeyDelivery, RowError> {
    copy::delivery(
        room,
        row.get(1)?,
        from_bits(row.get(0)?),
        &row.get::<_, Vec<u8>>(3)?,
        row.get::<_, Vec<u8>>(4)?.into(),
    )
    .map_err(RowError::Store)
}

/// One read transaction, for the several queries of one read to see one state.
fn read(connection: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    connection
        .transaction_with_behavior(TransactionBehavior::Deferred)
        .map_err(failed("begin a read"))
}

/// A write transaction that holds the write lock from the start, so it cannot fail
/// half-way for another writer (SQLite cannot upgrade a read transaction that another
/// connection has written behind).
fn write(connection: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed("begin a write"))
}

/// Raises the room's last sequence number to `seq`, or for 0 takes the room's next,
/// and notes that the room was used at `now_ms`; an unknown room is an error. Returns
/// the number used.
fn use_seq(
    transaction: &Transaction<'_>,
    room: &str,
    seq: u64,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let seq = stored_seq(seq)?;
    if seq == 0 {
        let next = select(
            transaction,
            "UPDATE rooms SET last_seq = last_seq + 1, used_ms = max(used_ms, ?2) \
             WHERE name = ?1 RETURNING last_seq",
            params![room, now_ms],
            format_args!("number an entry of room {room:?}"),
            |row| Ok(row.get::<_, i64>(0)?),
        )?;
        return next.first().copied().ok_or_else(|| {
            StoreError::Database(format!(
                "an entry is for room {room:?}, which does not exist"
            ))
        });
    }
    let changed = execute(
        transaction,
        "UPDATE rooms SET last_seq = max(last_seq, ?2), used_ms = max(used_ms, ?3) \
         WHERE name = ?1",
        params![room, seq, now_ms],
        format_args!("use sequence number {seq} in room {room:?}"),
    )?;
    if changed == 0 {
        return Err(StoreError::Database(format!(
            "sequence number {seq} is for room {room:?}, which does not exist"
        )));
    }
    Ok(seq)
}

/// Applies one change of a [`Store::commit`] other than a message (`append_message`);
/// `now_ms` is the commit's time.
fn apply(
    transaction: &Transaction<'_>,
    change: &Change,
    now_ms: i64,
) -> Result<Applied, StoreError> {
    match change {
        Change::CreateRoom { room, owner } => {
            execute(
                transaction,
                "INSERT INTO rooms (name, owner, last_seq, created_ms, used_ms) \
                 VALUES (?1, ?2, 0, ?3, ?3)",
                params![room, owner, now_ms],
                format_args!("create room {room:?}"),
            )?;
        }
        Change::DeleteRoom { room } => {
            let operation = format!("delete room {room:?}");
            usage::delete_keys(
                transaction,
                "DELETE FROM sender_keys WHERE room = ?1 \
                 RETURNING sender, length(wrapped_key) + length(signature)",
                [room],
                &operation,
            )?;
            usage::delete_messages(
                transaction,
                "DELETE FROM messages WHERE room = ?1 RETURNING room, sender, length(sealed)",
                [room],
                &operation,
            )?;
            // What refers to the room first: the foreign keys would refuse otherwise.
            for sql in [
                "DELETE FROM members WHERE room = ?1",
                "DELETE FROM invitations WHERE room = ?1",
                "DELETE FROM removals WHERE room = ?1",
                "DELETE FROM room_events WHERE room = ?1",
                "DELETE FROM rooms WHERE name = ?1",
            ] {
                execute(transaction, sql, [room], &operation)?;
            }
        }
        Change::Invite {
            room,
            user,
            invitation,
        } => {
            // A new invitation replaces the old, and lifts the removal it follows.
            execute(
                transaction,
                "INSERT INTO invitations (room, user, invitation) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO UPDATE SET invitation = excluded.invitation",
                rusqlite::params![room, user, invitation.as_ref()],
                format_args!("invite {user:?} to room {room:?}"),
            )?;
            execute(
                transaction,
                "DELETE FROM removals WHERE room = ?1 AND user = ?2",
                [room, user],
                format_args!("lift the removal of {user:?} from room {room:?}"),
            )?;
        }
        Change::RecordRemoval {
            room,
            user,
            removal,
        } => {
            execute(
                transaction,
                "INSERT INTO removals (room, user, removal) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO UPDATE SET removal = excluded.removal",
                rusqlite::params![room, user, removal.as_ref()],
                format_args!("record the removal of {user:?} from room {room:?}"),
            )?;
        }
        Change::Uninvite { room, user } => {
            execute(
                transaction,
                "DELETE FROM invitations WHERE room = ?1 AND user = ?2",
                [room, user],
                format_args!("withdraw the invitation of {user:?} to room {room:?}"),
            )?;
        }
        Change::AddMember {
            room,
            user,
            seq: given,
        } => {
            let seq = use_seq(transaction, room, *given, now_ms)?;
            // A member added twice is an error, not a move of its joined_seq: that
            // would hide from it what it may read.
            execute(
                transaction,
                "INSERT INTO members (room, user, joined_seq) VALUES (?1, ?2, ?3)",
                params![room, user, seq],
                format_args!("add member {user:?} to room {room:?}"),
            )?;
            execute(
                transaction,
                "INSERT INTO room_events (room, seq, user, reason) VALUES (?1, ?2, ?3, 0)",
                params![room, seq, user],
                format_args!("note that {user:?} joined room {room:?}"),
            )?;
            return Ok(shared::numbered(stored_seq(*given)?, from_bits(seq)));
        }
        Change::RemoveMember {
            room,
            user,
            seq: given,
            reason,
        } => {
            let seq = use_seq(transaction, room, *given, now_ms)?;
            execute(
                transaction,
                "INSERT INTO room_events (room, seq, user, reason) VALUES (?1, ?2, ?3, ?4)",
                params![room, seq, user, *reason as i32],
                format_args!("note that {user:?} left room {room:?}"),
            )?;
            let operation = format!("remove member {user:?} from room {room:?}");
            execute(
                transaction,
                "DELETE FROM members WHERE room = ?1 AND user = ?2",
                [room, user],
                &operation,
            )?;
            usage::delete_keys(
                transaction,
                "DELETE FROM sender_keys WHERE room = ?1 AND recipient = ?2 \
                 RETURNING sender, length(wrapped_key) + length(signature)",
                [room, user],
                &operation,
            )?;
            return Ok(shared::numbered(stored_seq(*given)?, from_bits(seq)));
        }
        // Messages are counted by a tally, in `commit`.
        Change::AppendMessage { .. } => unreachable!("commit appends messages itself"),
        Change::AppendSenderKeys {
            room,
            seq: given,
            sender,
            key_id,
            keys,
        } => {
            let seq = use_seq(transaction, room, *given, now_ms)?;
            let mut bytes = 0;
            for key in keys {
                let what = format!(
                    "the sender key {seq} of {sender:?} for {:?} in room {room:?}",
                    key.recipient
                );
                execute(
                    transaction,
                    "INSERT INTO sender_keys \
                     (room, seq, sender, recipient, key_id, wrapped_key, signature, stored_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        room,
                        seq,
                        sender,
                        key.recipient,
                        bits(*key_id),
                        key.wrapped_key.as_ref(),
                        key.signature.as_ref(),
                        now_ms
                    ],
                    format_args!("append {what}"),
                )?;
                bytes += key.wrapped_key.len() + key.signature.len();
                let earlier = params![room, sender, key.recipient, seq];
                execute(
                    transaction,
                    SUPERSEDE_KEYS,
                    earlier,
                    format_args!("mark the keys before {what} superseded"),
                )?;
                usage::delete_keys(
                    transaction,
                    DROP_SUPERSEDED_KEYS,
                    earlier,
                    format_args!("drop the keys {what} supersedes"),
                )?;
            }
            usage::stored_keys(transaction, sender, bytes)?;
            return Ok(shared::numbered(stored_seq(*given)?, from_bits(seq)));
        }
        Change::Seen { user } => {
            execute(
                transaction,
                "UPDATE identities SET seen_ms = max(seen_ms, ?2) WHERE user = ?1",
                params![user, now_ms],
                format_args!("note that {user:?} was seen"),
            )?;
        }
        Change::DeleteIdentity { user } => {
            let operation = format!("delete the identity of {user:?}");
            // The keys wrapped for it went when its memberships ended.
            usage::delete_keys(
                transaction,
                "DELETE FROM sender_keys WHERE sender = ?1 \
                 RETURNING sender, length(wrapped_key) + length(signature)",
                [user],
                &operation,
            )?;
            for sql in [
                "DELETE FROM invitations WHERE user = ?1",
                "DELETE FROM removals WHERE user = ?1",
                "DELETE FROM prekeys WHERE user = ?1",
                "DELETE FROM members WHERE user = ?1",
                "DELETE FROM identities WHERE user = ?1",
            ] {
                execute(transaction, sql, [user], &operation)?;
            }
        }
    }
    Ok(Applied::Done)
}

/// Stores a message unless it is a resend of one stored before or it would exceed a
/// quota; the room then forgets its oldest messages beyond its limits. Either way its
/// sequence number is used up: it was handed out, and a client catching up may have
/// seen it as the room's head. The counters are kept in `tally`, written at the end of
/// the run of messages.
fn append_message(
    transaction: &Transaction<'_>,
    tally: &mut Tally,
    message: Appending<'_>,
    sealed: &SealedMessage,
    policy: &StoragePolicy,
) -> Result<Applied, StoreError> {
    let Appending { room, seq, sender } = message;
    let given = stored_seq(seq)?;
    let (key_id, iteration) = (bits(sealed.key_id), i64::from(sealed.iteration));
    tally::read_room(transaction, tally, room, given)?;
    tally::read_user(transaction, tally, sender)?;
    let stored = tally.number(room, given);
    let seq = from_bits(stored);
    let encoded = sealed.encode_to_vec();
    let size = saturating(encoded.len());
    // Everything is decided before anything changes, so a refusal has nothing to undo.
    // The sender's quota is checked once its room has made room: a member posting alone
    // in a room is trimmed like anyone else, not refused.
    let trim = match tally.room(room).trim_for(size, policy) {
        Some((trim, after)) => usage::read_trim(transaction, room, trim, after, seq)?,
        None => None,
    };
    let change = stored_change(size, trim.as_ref(), sender);
    let stored_bytes = tally.stored_bytes(sender);
    let stored_before = || -> Result<Applied, StoreError> {
        let first = select(
            transaction,
            "SELECT seq FROM messages \
             WHERE room = ?1 AND sender = ?2 AND key_id = ?3 AND iteration = ?4",
            params![room, sender, key_id, iteration],
            message,
            |row| Ok(row.get::<_, i64>(0)?),
        )?;
        Ok(match first.first() {
            Some(&first) => Applied::Duplicate {
                seq: from_bits(first),
            },
            None => Applied::Done,
        })
    };
    if let Some(quota) = shared::exceeded_quota(stored_bytes, change, policy) {
        // A resend of what is stored (and stays so) is acknowledged, whatever the quota
        // says now.
        return Ok(match stored_before()? {
            Applied::Duplicate { seq: first } if tally.room(room).keeps(bits(first)) => {
                Applied::Duplicate { seq: first }
            }
            _ => Applied::OverQuota(quota),
        });
    }
    // A resend of what is stored is not stored again (the unique index finds it, with
    // no read of its own for every message); a sequence number used twice is still an
    // error (the primary key).
    let inserted = execute(
        transaction,
        "INSERT INTO messages (room, seq, sender, key_id, iteration, sealed, stored_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (room, sender, key_id, iteration) DO NOTHING",
        params![
            room,
            stored,
            sender,
            key_id,
            iteration,
            encoded,
            tally.now_ms()
        ],
        message,
    )?;
    if inserted == 0 {
        return match stored_before()? {
            Applied::Done => Err(StoreError::Database(format!(
                "{message}: refused as a resend of a message that is not stored"
            ))),
            // Rare: a resend of a message this run forgets, which a store that forgot it
            // at once would store anew. So it is forgotten now, and the message stored.
            Applied::Duplicate { seq: first } if !tally.room(room).keeps(bits(first)) => {
                tally::write_and_restart(transaction, tally)?;
                append_message(transaction, tally, message, sealed, policy)
            }
            duplicate => Ok(duplicate),
        };
    }
    tally.stored_message(room, stored, sender, size, trim.as_ref());
    Ok(shared::numbered(given, seq))
}

/// Names the appending of a message in an error message; formatted only if there is
/// one (this is per message).
#[derive(Clone, Copy)]
struct Appending<'a> {
    room: &'a str,
    seq: u64,
    sender: &'a str,
}

impl Display for Appending<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { room, seq, sender } = self;
        write!(f, "append message {seq} of {sender:?} to room {room:?}")
    }
}

/// Forgets the messages of `room` beyond what `policy` lets a room keep, then the
/// sender keys no remaining message needs; adds what it forgot to `pruned`.
fn prune_room(
    transaction: &Transaction<'_>,
    room: &str,
    policy: &StoragePolicy,
    pruned: &mut Pruned,
) -> Result<(), StoreError> {
    pruned.messages += usage::trim_room(transaction, room, policy, u64::MAX)?;
    pruned.sender_keys += usage::delete_keys(
        transaction,
        PRUNE_SENDER_KEYS,
        [room],
        format_args!("prune the sender keys of room {room:?}"),
    )?;
    Ok(())
}

impl SqliteStore {
    /// Every registered identity, or only `user`'s.
    fn identities_named(&self, user: Option<&str>) -> Result<Vec<PublicIdentity>, StoreError> {
        let connection = self.reader();
        let mut statement = connection
            .prepare_cached(
                "SELECT user, identity FROM identities WHERE ?1 IS NULL OR user = ?1 ORDER BY user",
            )
            .map_err(database)?;
        let rows = statement
            .query_map([user], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
            })
            .map_err(database)?;
        let mut identities = Vec::new();
        for row in rows {
            let (user, stored) = row.map_err(database)?;
            identities.push(decode_identity(user, &stored)?);
        }
        Ok(identities)
    }

    /// Every device's current signed prekey, or only `user`'s.
    fn prekeys_of(&self, user: Option<&str>) -> Result<Vec<(String, SignedPrekey)>, StoreError> {
        let connection = self.reader();
        select(
            &connection,
            "SELECT user, device, prekey_id, created_at_ms, public_key, signature FROM prekeys \
             WHERE ?1 IS NULL OR user = ?1 ORDER BY user, device",
            [user],
            "read the prekeys",
            |row| {
                let prekey = SignedPrekey {
                    device: u32::try_from(row.get::<_, i64>(1)?).unwrap_or(u32::MAX),
                    prekey_id: from_bits(row.get(2)?),
                    created_at_ms: from_bits(row.get(3)?),
                    public_key: row.get::<_, Vec<u8>>(4)?.into(),
                    signature: row.get::<_, Vec<u8>>(5)?.into(),
                };
                Ok((row.get(0)?, prekey))
            },
        )
    }
}

impl SqliteStore {
    /// Every room, or only `name`, with its members and invitations.
    fn rooms_named(&self, name: Option<&str>) -> Result<Vec<StoredRoom>, StoreError> {
        let mut connection = self.reader();
        let transaction = read(&mut connection)?;
        let mut rooms = select(
            &transaction,
            "SELECT name, owner, last_seq, message_count, message_bytes FROM rooms \
             WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
            [name],
            "read the rooms",
            |row| {
                Ok(StoredRoom {
                    name: row.get(0)?,
                    owner: row.get(1)?,
                    last_seq: from_bits(row.get(2)?),
                    messages: from_bits(row.get(3)?),
                    message_bytes: from_bits(row.get(4)?),
                    ..StoredRoom::default()
                })
            },
        )?;
        let index: HashMap<String, usize> = rooms
            .iter()
            .enumerate()
            .map(|(index, room)| (room.name.clone(), index))
            .collect();
        // The foreign keys make every row below belong to a room read above.
        let room = |name: &str| index.get(name).copied();
        for (name, user, joined) in select(
            &transaction,
            "SELECT room, user, joined_seq FROM members WHERE ?1 IS NULL OR room = ?1 \
             ORDER BY room, user",
            [name],
            "read the members of the rooms",
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get(1)?,
                    from_bits(row.get(2)?),
                ))
            },
        )? {
            if let Some(at) = room(&name) {
                rooms[at].members.push((user, joined));
            }
        }
        for (name, user, invitation) in select(
            &transaction,
            "SELECT room, user, invitation FROM invitations WHERE ?1 IS NULL OR room = ?1 \
             ORDER BY room, user",
            [name],
            "read the invitations to the rooms",
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get(1)?,
                    row.get::<_, Option<Vec<u8>>>(2)?,
                ))
            },
        )? {
            if let Some(at) = room(&name) {
                rooms[at]
                    .invited
                    .push((user, invitation.map(bytes::Bytes::from)));
            }
        }
        for (name, user, removal) in select(
            &transaction,
            "SELECT room, user, removal FROM removals WHERE ?1 IS NULL OR room = ?1 \
             ORDER BY room, user",
            [name],
            "read the removals from the rooms",
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                ))
            },
        )? {
            if let Some(at) = room(&name) {
                rooms[at].removals.push((user, removal.into()));
            }
        }
        Ok(rooms)
    }
}

impl Store for SqliteStore {
    fn identities(&self) -> Result<Vec<PublicIdentity>, StoreError> {
        self.identities_named(None)
    }

    fn identity(&self, user: &str) -> Result<Option<PublicIdentity>, StoreError> {
        Ok(self.identities_named(Some(user))?.into_iter().next())
    }

    fn prekeys(&self) -> Result<Vec<(String, SignedPrekey)>, StoreError> {
        self.prekeys_of(None)
    }

    fn prekey(&self, user: &str) -> Result<Option<SignedPrekey>, StoreError> {
        Ok(self
            .prekeys_of(Some(user))?
            .into_iter()
            .next()
            .map(|(_, prekey)| prekey))
    }

    fn save_prekey(&self, user: &str, prekey: &SignedPrekey) -> Result<(), StoreError> {
        let mut connection = self.writer();
        let transaction = write(&mut connection)?;
        execute(
            &transaction,
            "INSERT INTO prekeys (user, device, prekey_id, created_at_ms, public_key, signature) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO UPDATE SET \
             prekey_id = excluded.prekey_id, created_at_ms = excluded.created_at_ms, \
             public_key = excluded.public_key, signature = excluded.signature",
            params![
                user,
                i64::from(prekey.device),
                bits(prekey.prekey_id),
                bits(prekey.created_at_ms),
                prekey.public_key.as_ref(),
                prekey.signature.as_ref()
            ],
            format_args!("save the prekey of {user:?}"),
        )?;
        transaction
            .commit()
            .map_err(failed(format_args!("save the prekey of {user:?}")))
    }

    fn register(&self, identity: &PublicIdentity, token: Option<&str>) -> Result<(), StoreError> {
        let now_ms = now_ms();
        let mut connection = self.writer();
        let transaction = write(&mut connection)?;
        if let Some(token) = token {
            let used = execute(
                &transaction,
                "UPDATE registration_tokens SET uses_left = uses_left - 1, used = used + 1 \
                 WHERE token_sha256 = ?1 AND (uses_left IS NULL OR uses_left > 0) \
                 AND (expires_ms IS NULL OR expires_ms > ?2)",
                params![super::shared::token_digest(token), now_ms],
                "use a registration token",
            )?;
            if used == 0 {
                return Err(StoreError::RegistrationToken);
            }
        }
        execute(
            &transaction,
            "INSERT INTO identities (user, identity, registered_at_ms, seen_ms) \
             VALUES (?1, ?2, ?3, ?3)",
            params![identity.user, identity.encode_to_vec(), now_ms],
            format_args!("register {:?}", identity.user),
        )?;
        transaction
            .commit()
            .map_err(failed("commit a registration"))
    }

    fn create_registration_token(
        &self,
        uses: Option<u64>,
        expires_ms: Option<u64>,
    ) -> Result<String, StoreError> {
        let (token, digest) = new_token()?;
        let connection = self.writer();
        execute(
            &connection,
            "INSERT INTO registration_tokens (token_sha256, uses_left, expires_ms, created_ms) \
             VALUES (?1, ?2, ?3, ?4)",
            params![
                digest,
                uses.map(saturating),
                expires_ms.map(saturating),
                now_ms()
            ],
            "create a registration token",
        )?;
        Ok(token)
    }

    fn registration_tokens(&self) -> Result<Vec<RegistrationToken>, StoreError> {
        select(
            &self.reader(),
            "SELECT token_sha256, uses_left, used, expires_ms, created_ms \
             FROM registration_tokens ORDER BY created_ms, token_sha256",
            [],
            "read the registration tokens",
            |row| {
                let digest: Vec<u8> = row.get(0)?;
                Ok(RegistrationToken {
                    id: token_id(&digest),
                    uses_left: row.get::<_, Option<i64>>(1)?.map(|n| n.max(0) as u64),
                    used: row.get::<_, i64>(2)?.max(0) as u64,
                    expires_ms: row.get::<_, Option<i64>>(3)?.map(|n| n.max(0) as u64),
                    created_ms: row.get::<_, i64>(4)?.max(0) as u64,
                })
            },
        )
    }

    fn revoke_registration_tokens(&self, id_prefix: &str) -> Result<u64, StoreError> {
        let mut connection = self.writer();
        let transaction = write(&mut connection)?;
        let digests = select(
            &transaction,
            "SELECT token_sha256 FROM registration_tokens",
            [],
            "read the registration tokens",
            |row| Ok(row.get::<_, Vec<u8>>(0)?),
        )?;
        let mut revoked = 0;
        for digest in tokens_named(&digests, id_prefix) {
            revoked += execute(
                &transaction,
                "DELETE FROM registration_tokens WHERE token_sha256 = ?1",
                [digest],
                "revoke a registration token",
            )?;
        }
        transaction
            .commit()
            .map_err(failed("commit the revocation of registration tokens"))?;
        Ok(revoked)
    }

    fn rooms(&self) -> Result<Vec<StoredRoom>, StoreError> {
        self.rooms_named(None)
    }

    fn room(&self, name: &str) -> Result<Option<StoredRoom>, StoreError> {
        Ok(self.rooms_named(Some(name))?.into_iter().next())
    }

    fn commit(
        &self,
        changes: &[Change],
        policy: &StoragePolicy,
    ) -> Result<Vec<Applied>, StoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let now_ms = now_ms();
        let mut connection = self.writer();
        let transaction = write(&mut connection)?;
        // On an error the transaction is dropped, which rolls it all back.
        let mut applied = Vec::with_capacity(changes.len());
        let mut tally = Tally::new(now_ms);
        for change in changes {
            applied.push(match change {
                Change::AppendMessage {
                    room,
                    seq,
                    sender,
                    sealed,
                } => {
                    let message = Appending {
                        room,
                        seq: *seq,
                        sender,
                    };
                    let applied =
                        append_message(&transaction, &mut tally, message, sealed, policy)?;
                    // Rare: only a store beyond its size reads (and writes) across rooms.
                    tally::read_total(&transaction, &mut tally)?;
                    if shared::store_excess(tally.total(), policy) > 0 {
                        tally::write_and_restart(&transaction, &mut tally)?;
                        usage::evict_oldest(
                            &transaction,
                            policy,
                            room,
                            shared::stored_as(applied, *seq),
                        )?;
                    }
                    applied
                }
                // Anything else reads or writes the counters itself: the tally is
                // written first, and a new one started after.
                change => {
                    tally::write_and_restart(&transaction, &mut tally)?;
                    apply(&transaction, change, now_ms)?
                }
            });
        }
        tally::write_and_restart(&transaction, &mut tally)?;
        transaction.commit().map_err(failed("commit"))?;
        drop(connection);
        if let Some(checkpoints) = &self.checkpoints {
            checkpoints.committed();
        }
        Ok(applied)
    }

    fn entries_after(
        &self,
        room: &str,
        member: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut connection = self.reader();
        let transaction = read(&mut connection)?;
        let range = params![
            room,
            member,
            saturating(after),
            saturating(up_to),
            saturating(limit)
        ];
        let operation = format!("read the entries of room {room:?} for {member:?}");
        let messages = select(
            &transaction,
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE room = ?1 AND sender != ?2 AND seq > ?3 AND seq <= ?4 \
                 ORDER BY seq LIMIT ?5"
            ),
            range,
            &operation,
            |row| Ok(Entry::Message(message(room, row)?)),
        )?;
        let keys = select(
            &transaction,
            concat!(
                "SELECT ",
                key_columns!(),
                " FROM sender_keys \
                 WHERE room = ?1 AND recipient = ?2 AND sender != ?2 AND seq > ?3 AND seq <= ?4 \
                 ORDER BY seq LIMIT ?5"
            ),
            range,
            &operation,
            |row| Ok(Entry::SenderKey(sender_key(room, row)?)),
        )?;
        Ok(in_sequence(keys, messages, limit))
    }

    fn log_between(&self, room: &str, after: u64, up_to: u64) -> Result<Vec<LogEntry>, StoreError> {
        let mut connection = self.reader();
        let transaction = read(&mut connection)?;
        let range = params![room, saturating(after), saturating(up_to)];
        let operation = format!("read the log of room {room:?}");
        let messages = select(
            &transaction,
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE room = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq"
            ),
            range,
            &operation,
            |row| message(room, row),
        )?;
        let keys = select(
            &transaction,
            "SELECT seq, sender, recipient, wrapped_key, signature FROM sender_keys \
             WHERE room = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq, recipient",
            range,
            &operation,
            |row| {
                let key = WrappedKey {
                    recipient: row.get(2)?,
                    wrapped_key: row.get::<_, Vec<u8>>(3)?.into(),
                    signature: row.get::<_, Vec<u8>>(4)?.into(),
                };
                Ok((from_bits(row.get(0)?), row.get(1)?, key))
            },
        )?;
        let events = select(
            &transaction,
            "SELECT e.seq, e.user, e.reason, r.removal FROM room_events AS e \
             LEFT JOIN removals AS r ON r.room = e.room AND r.user = e.user AND e.reason != 0 \
             WHERE e.room = ?1 AND e.seq > ?2 AND e.seq <= ?3 ORDER BY e.seq",
            range,
            &operation,
            |row| {
                let removal: Option<Vec<u8>> = row.get(3)?;
                Ok((
                    from_bits(row.get(0)?),
                    row.get(1)?,
                    row.get(2)?,
                    removal.map(Into::into),
                ))
            },
        )?;
        Ok(shared::room_log(messages, keys, events))
    }

    fn heads(&self, room: Option<&str>) -> Result<Vec<(String, u64)>, StoreError> {
        let mut connection = self.reader();
        let transaction = read(&mut connection)?;
        select(
            &transaction,
            "SELECT name, last_seq FROM rooms WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
            [room],
            "read the rooms' last sequence numbers",
            |row| Ok((row.get(0)?, from_bits(row.get(1)?))),
        )
    }

    fn keys_in_force(&self, room: &str, member: &str, at: u64) -> Result<Vec<Entry>, StoreError> {
        let mut connection = self.reader();
        let transaction = read(&mut connection)?;
        // Without the index named, SQLite walks the keys of every recipient up to `at`
        // by the primary key. An older key is looked for among the messages after `at`
        // through their (room, sender, key_id, iteration) index.
        select(
            &transaction,
            concat!(
                "SELECT ",
                key_columns!(),
                " FROM sender_keys AS key INDEXED BY sender_keys_by_recipient \
                 WHERE room = ?1 AND recipient = ?2 AND sender != ?2 AND seq <= ?3 \
                 AND (superseded_seq IS NULL OR superseded_seq > ?3 \
                  OR EXISTS (SELECT 1 FROM messages WHERE room = ?1 \
                   AND sender = key.sender AND key_id = key.key_id AND +seq > ?3)) \
                 ORDER BY seq"
            ),
            params![room, member, saturating(at)],
            format_args!("read the keys in force in room {room:?} for {member:?} at {at}"),
            |row| Ok(Entry::SenderKey(sender_key(room, row)?)),
        )
    }

    fn senders_between(
        &self,
        room: &str,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<String>, StoreError> {
        let mut connection = self.reader();
        let transaction = read(&mut connection)?;
        select(
            &transaction,
            "SELECT DISTINCT sender FROM messages WHERE room = ?1 AND seq > ?2 AND seq <= ?3 \
             ORDER BY sender",
            params![room, saturating(after), saturating(up_to)],
            format_args!("read the senders of room {room:?}"),
            |row| Ok(row.get(0)?),
        )
    }

    fn history(
        &self,
        room: &str,
        member: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut connection = self.reader();
        let transaction = read(&mut connection)?;
        let operation = format!("read the history of room {room:?} for {member:?}");
        let mut messages = select(
            &transaction,
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE room = ?1 AND seq > ?2 ORDER BY seq DESC LIMIT ?3"
            ),
            params![room, saturating(since), saturating(limit)],
            &operation,
            |row| message(room, row),
        )?;
        messages.reverse();
        let sealed_with: BTreeSet<(&str, u64)> = messages
            .iter()
            .filter_map(|message| Some((message.sender.as_str(), message.sealed.as_ref()?.key_id)))
            .collect();
        let mut keys = Vec::with_capacity(sealed_with.len());
        for (sender, key_id) in sealed_with {
            keys.extend(select(
                &transaction,
                concat!(
                    "SELECT ",
                    key_columns!(),
                    " FROM sender_keys \
                     WHERE room = ?1 AND recipient = ?2 AND sender = ?3 AND key_id = ?4 \
                     ORDER BY seq DESC LIMIT 1"
                ),
                params![room, member, sender, bits(key_id)],
                &operation,
                |row| Ok(Entry::SenderKey(sender_key(room, row)?)),
            )?);
        }
        let messages = messages.into_iter().map(Entry::Message).collect();
        Ok(in_sequence(keys, messages, usize::MAX))
    }

    fn prune(&self, policy: &StoragePolicy, now: Duration) -> Result<Pruned, StoreError> {
        let mut connection = self.writer();
        let transaction = write(&mut connection)?;
        let mut pruned = Pruned::default();
        if let Some(max_age) = policy.max_age {
            pruned.messages += usage::delete_messages(
                &transaction,
                "DELETE FROM messages WHERE stored_ms < ?1 \
                 RETURNING room, sender, length(sealed)",
                [millis(now.saturating_sub(max_age))],
                "prune the messages older than the retention",
            )?;
        }
        let rooms = select(
            &transaction,
            "SELECT name FROM rooms",
            [],
            "read the rooms to prune",
            |row| Ok(row.get::<_, String>(0)?),
        )?;
        for room in rooms {
            prune_room(&transaction, &room, policy, &mut pruned)?;
        }
        transaction.commit().map_err(failed("commit the pruning"))?;
        Ok(pruned)
    }

    fn dormant(&self, since: Duration) -> Result<Dormant, StoreError> {
        let mut connection = self.reader();
        let transaction = read(&mut connection)?;
        let since = millis(since);
        let users = select(
            &transaction,
            "SELECT user FROM identities WHERE seen_ms < ?1 AND message_count = 0 \
             AND NOT EXISTS (SELECT 1 FROM rooms WHERE owner = identities.user) \
             ORDER BY user",
            [since],
            "find the users nobody has used",
            |row| Ok(row.get(0)?),
        )?;
        let rooms = select(
            &transaction,
            "SELECT name FROM rooms WHERE used_ms < ?1 ORDER BY name",
            [since],
            "find the rooms nobody has used",
            |row| Ok(row.get(0)?),
        )?;
        Ok(Dormant { users, rooms })
    }
}

/// Creates the database file, empty and readable by the server's user alone, if it does
/// not exist: SQLite then gives its WAL and shared-memory files the same mode. What is
/// stored is ciphertext, but names, rooms and who talks to whom are nobody else's
/// business on a shared machine.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;

    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map(drop)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
impl SqliteStore {
    /// Every row `sql` returns, each column as text (tests check the store's figures
    /// against the rows).
    pub(crate) fn test_query(&self, sql: &str) -> Vec<Vec<String>> {
        let reader = self.reader();
        let mut statement = reader.prepare(sql).unwrap();
        let columns = statement.column_count();
        statement
            .query_map([], |row| {
                (0..columns)
                    .map(|index| Ok(row.get::<_, Option<String>>(index)?.unwrap_or_default()))
                    .collect()
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Runs `sql` as it is (tests that damage what is stored).
    pub(crate) fn test_execute(&self, sql: &str) {
        self.writer().execute_batch(sql).unwrap();
    }
}
