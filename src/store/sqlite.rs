//! A [`Store`] in an embedded SQLite database, `chat.sqlite3` in the data directory.
//!
//! WAL journal, `synchronous = FULL`: a change is on disk when `register`, `commit` or
//! `prune` returns. The schema is created and upgraded by the numbered migrations in
//! `migrations/`, run at start-up; `PRAGMA user_version` records how far a database has
//! come.
//!
//! Two connections: a writer (`register`, `commit`, `prune`) and a reader (everything
//! else), each behind its own lock. With WAL a reader sees the last committed state
//! without waiting for a writer, so catching a member up is never stuck behind the
//! fsync of the next commit. Each read runs in one read transaction, so the several
//! queries of one call see one state. An in-memory database is private to its
//! connection, so there the two roles share a single connection.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use rusqlite::{Connection, Params, Row, Transaction, TransactionBehavior, params};

use super::{Applied, Change, Entry, Pruned, Retention, Store, StoreError, StoredRoom};
use crate::proto::{MessageDelivery, PublicIdentity, SealedMessage, SenderKeyDelivery};

/// The database's file name in the data directory.
pub const DATABASE_FILE: &str = "chat.sqlite3";

/// The migrations, in order: the schema version after each is its position + 1.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_identities.sql"),
    include_str!("../../migrations/0002_rooms.sql"),
];

/// How many prepared statements each connection keeps: more than the store has, so
/// none is ever prepared twice (the default, 16, is fewer).
const STATEMENT_CACHE: usize = 64;

/// Forgets the `?2` oldest messages of room `?1`. The subquery walks the (room, seq)
/// primary key from the oldest and stops after `?2` rows, and the deletion looks each
/// up by key: the work grows with what is deleted, not with the room.
const TRIM_MESSAGES: &str = "DELETE FROM messages WHERE room = ?1 AND seq IN \
     (SELECT seq FROM messages WHERE room = ?1 ORDER BY seq LIMIT ?2)";

/// Forgets the sender keys of room `?1` below sequence number `?2` (the oldest message
/// kept), but the latest one below it for each sender and recipient: the key in force
/// there, which the messages from `?2` on may still be sealed with. A key rotated
/// before `?2` is superseded there, so no remaining message needs the one before it.
const PRUNE_SENDER_KEYS: &str = "DELETE FROM sender_keys AS old \
     WHERE room = ?1 AND seq < \
     (SELECT MAX(seq) FROM sender_keys \
      WHERE room = ?1 AND recipient = old.recipient AND sender = old.sender) \
     AND NOT EXISTS (SELECT 1 FROM messages \
      WHERE room = ?1 AND sender = old.sender AND key_id = old.key_id)";

/// Forgets the keys a sender gave one recipient before the one just stored (`?4`) that
/// no stored message was sealed with: a member distributing keys over and over cannot
/// grow the store.
const DROP_SUPERSEDED_KEYS: &str = "DELETE FROM sender_keys AS old \
     WHERE room = ?1 AND sender = ?2 AND recipient = ?3 AND seq < ?4 \
     AND NOT EXISTS (SELECT 1 FROM messages \
      WHERE room = ?1 AND sender = ?2 AND key_id = old.key_id)";

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
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `dir` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DATABASE_FILE);
        let fail = |error: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            reason: error.to_string(),
        };
        let mut writer = Connection::open(&path).map_err(fail)?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| writer.pragma_update(None, "synchronous", "FULL"))
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
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
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
    connection.busy_timeout(Duration::from_secs(5))
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A statement that panicked left no transaction open: the `Transaction` dropped
    // while unwinding rolled it back.
    connection.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the migrations the database has not had yet, each in its own transaction.
fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let version: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(database)?;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let transaction = connection.transaction().map_err(database)?;
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

/// A key id or message counter, in an INTEGER column. They are only compared for
/// equality, so the cast keeps every bit and nothing else: a random key id above
/// `i64::MAX` is stored negative and read back as it was.
fn bits(value: u64) -> i64 {
    value as i64
}

/// The inverse of [`bits`], also for the sequence numbers read back.
fn from_bits(value: i64) -> u64 {
    value as u64
}

/// A sequence number to store. Sequence numbers are ordered in SQL, where one above
/// `i64::MAX` stored as its bits would sort before 0, so it is refused.
fn stored_seq(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| {
        StoreError::Database(format!(
            "sequence number {seq} is beyond the highest the store can order, {}",
            i64::MAX
        ))
    })
}

/// A sequence number bound or a count in a query. No stored sequence number is above
/// `i64::MAX`, so a larger bound (a caller may ask for everything up to `u64::MAX`)
/// means the same as `i64::MAX`.
fn saturating(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch.
fn millis(since_epoch: Duration) -> i64 {
    saturating(since_epoch.as_millis())
}

/// The wall clock, in milliseconds since the Unix epoch (0 for a clock before it).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
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

/// The message `sender` sent to `room` under `seq`, from the `sealed` BLOB it is stored
/// as: how the store reads every message it hands out. A BLOB that does not decode is a
/// [`StoreError::CorruptEntry`] naming the entry.
pub fn decode_message(
    room: &str,
    seq: u64,
    sender: String,
    sealed: Vec<u8>,
) -> Result<MessageDelivery, StoreError> {
    // From `Bytes`, the ciphertext and signature are slices of it, not copies.
    let sealed = SealedMessage::decode(bytes::Bytes::from(sealed)).map_err(|error| {
        StoreError::CorruptEntry {
            room: room.to_owned(),
            seq,
            reason: format!("the sealed message of {sender:?} does not decode: {error}"),
        }
    })?;
    Ok(MessageDelivery {
        room: room.to_owned(),
        sender,
        sealed: Some(sealed),
        seq,
    })
}

/// The identity registered under `user`, from the BLOB it is stored as: how the store
/// reads every identity. One that does not decode, or names another user, is a
/// [`StoreError::Corrupt`].
pub fn decode_identity(user: String, stored: &[u8]) -> Result<PublicIdentity, StoreError> {
    let identity = PublicIdentity::decode(stored).map_err(|error| StoreError::Corrupt {
        user: user.clone(),
        reason: error.to_string(),
    })?;
    if identity.user != user {
        return Err(StoreError::Corrupt {
            user,
            reason: format!("it names {:?}", identity.user),
        });
    }
    Ok(identity)
}

/// A row of [`key_columns`] as the sender key it is.
fn sender_key(room: &str, row: &Row<'_>) -> Result<SenderKeyDelivery, RowError> {
    Ok(SenderKeyDelivery {
        room: room.to_owned(),
        seq: from_bits(row.get(0)?),
        sender: row.get(1)?,
        key_id: from_bits(row.get(2)?),
        wrapped_key: row.get::<_, Vec<u8>>(3)?.into(),
        signature: row.get::<_, Vec<u8>>(4)?.into(),
    })
}

/// `keys` and `messages` (each in sequence order) merged in sequence order, at most
/// `limit`. A key comes before a message under the same number, as a key is needed
/// before the messages sealed with it.
fn in_sequence(mut keys: Vec<Entry>, messages: Vec<Entry>, limit: usize) -> Vec<Entry> {
    keys.extend(messages);
    // Stable: the keys stay before the messages under equal numbers.
    keys.sort_by_key(Entry::seq);
    keys.truncate(limit);
    keys
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

/// Raises the room's last sequence number to `seq`; an unknown room is an error.
fn use_seq(transaction: &Transaction<'_>, room: &str, seq: u64) -> Result<i64, StoreError> {
    let seq = stored_seq(seq)?;
    let changed = execute(
        transaction,
        "UPDATE rooms SET last_seq = max(last_seq, ?2) WHERE name = ?1",
        params![room, seq],
        format_args!("use sequence number {seq} in room {room:?}"),
    )?;
    if changed == 0 {
        return Err(StoreError::Database(format!(
            "sequence number {seq} is for room {room:?}, which does not exist"
        )));
    }
    Ok(seq)
}

/// Applies one change of a [`Store::commit`]; `now_ms` is the commit's time.
fn apply(
    transaction: &Transaction<'_>,
    change: &Change,
    now_ms: i64,
) -> Result<Applied, StoreError> {
    match change {
        Change::CreateRoom { room, owner } => {
            execute(
                transaction,
                "INSERT INTO rooms (name, owner, last_seq, created_ms) VALUES (?1, ?2, 0, ?3)",
                params![room, owner, now_ms],
                format_args!("create room {room:?}"),
            )?;
        }
        Change::DeleteRoom { room } => {
            // What refers to the room first: the foreign keys would refuse otherwise.
            for sql in [
                "DELETE FROM sender_keys WHERE room = ?1",
                "DELETE FROM messages WHERE room = ?1",
                "DELETE FROM members WHERE room = ?1",
                "DELETE FROM invitations WHERE room = ?1",
                "DELETE FROM rooms WHERE name = ?1",
            ] {
                execute(
                    transaction,
                    sql,
                    [room],
                    format_args!("delete room {room:?}"),
                )?;
            }
        }
        Change::Invite { room, user } => {
            // Inviting twice is inviting, as withdrawing twice is withdrawing.
            execute(
                transaction,
                "INSERT INTO invitations (room, user) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                [room, user],
                format_args!("invite {user:?} to room {room:?}"),
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
        Change::AddMember { room, user, seq } => {
            let seq = use_seq(transaction, room, *seq)?;
            // A member added twice is an error, not a move of its joined_seq: that
            // would hide from it what it may read.
            execute(
                transaction,
                "INSERT INTO members (room, user, joined_seq) VALUES (?1, ?2, ?3)",
                params![room, user, seq],
                format_args!("add member {user:?} to room {room:?}"),
            )?;
        }
        Change::RemoveMember { room, user, seq } => {
            use_seq(transaction, room, *seq)?;
            let operation = format!("remove member {user:?} from room {room:?}");
            execute(
                transaction,
                "DELETE FROM members WHERE room = ?1 AND user = ?2",
                [room, user],
                &operation,
            )?;
            execute(
                transaction,
                "DELETE FROM sender_keys WHERE room = ?1 AND recipient = ?2",
                [room, user],
                &operation,
            )?;
        }
        Change::AppendMessage {
            room,
            seq,
            sender,
            sealed,
        } => {
            let stored = stored_seq(*seq)?;
            let (key_id, counter) = (bits(sealed.key_id), bits(sealed.counter));
            let operation = format!("append message {seq} of {sender:?} to room {room:?}");
            // Only the (room, sender, key_id, counter) rule may skip the row: a
            // sequence number used twice is still an error.
            let inserted = execute(
                transaction,
                "INSERT INTO messages (room, seq, sender, key_id, counter, sealed, stored_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (room, sender, key_id, counter) DO NOTHING",
                params![
                    room,
                    stored,
                    sender,
                    key_id,
                    counter,
                    sealed.encode_to_vec(),
                    now_ms
                ],
                &operation,
            )?;
            if inserted == 0 {
                let first = select(
                    transaction,
                    "SELECT seq FROM messages \
                     WHERE room = ?1 AND sender = ?2 AND key_id = ?3 AND counter = ?4",
                    params![room, sender, key_id, counter],
                    &operation,
                    |row| Ok(from_bits(row.get(0)?)),
                )?;
                // The number was handed out (and maybe seen as the head by a client
                // catching up), so it is used up even though nothing was stored.
                use_seq(transaction, room, *seq)?;
                return match first.first() {
                    Some(&seq) => Ok(Applied::Duplicate { seq }),
                    None => Err(StoreError::Database(format!(
                        "{operation}: skipped as a duplicate, but there is no first copy"
                    ))),
                };
            }
            use_seq(transaction, room, *seq)?;
        }
        Change::AppendSenderKeys {
            room,
            seq,
            sender,
            key_id,
            keys,
        } => {
            let seq = use_seq(transaction, room, *seq)?;
            for key in keys {
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
                    format_args!(
                        "append the sender key {seq} of {sender:?} for {:?} to room {room:?}",
                        key.recipient
                    ),
                )?;
                execute(
                    transaction,
                    DROP_SUPERSEDED_KEYS,
                    params![room, sender, key.recipient, seq],
                    format_args!(
                        "drop the superseded sender keys of {sender:?} for {:?} in room {room:?}",
                        key.recipient
                    ),
                )?;
            }
        }
        Change::TrimMessages { room, count } => {
            execute(
                transaction,
                TRIM_MESSAGES,
                params![room, saturating(*count)],
                format_args!("trim {count} messages from room {room:?}"),
            )?;
        }
    }
    Ok(Applied::Done)
}

/// Forgets the messages of `room` beyond the latest `keep`, then the sender keys no
/// remaining message needs; adds what it forgot to `pruned`.
fn prune_room(
    transaction: &Transaction<'_>,
    room: &str,
    keep: u64,
    pruned: &mut Pruned,
) -> Result<(), StoreError> {
    let operation = format!("prune room {room:?}");
    // The newest message beyond the limit: walks `keep` entries of the index, not the
    // room.
    let beyond = select(
        transaction,
        "SELECT seq FROM messages WHERE room = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2",
        params![room, saturating(keep)],
        &operation,
        |row| Ok(row.get::<_, i64>(0)?),
    )?;
    if let Some(&newest) = beyond.first() {
        pruned.messages += execute(
            transaction,
            "DELETE FROM messages WHERE room = ?1 AND seq <= ?2",
            params![room, newest],
            &operation,
        )?;
    }
    pruned.sender_keys += execute(transaction, PRUNE_SENDER_KEYS, [room], &operation)?;
    Ok(())
}

impl Store for SqliteStore {
    fn identities(&self) -> Result<Vec<PublicIdentity>, StoreError> {
        let connection = self.reader();
        let mut statement = connection
            .prepare("SELECT user, identity FROM identities ORDER BY user")
            .map_err(database)?;
        let rows = statement
            .query_map([], |row| {
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

    fn register(&self, identity: &PublicIdentity) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "INSERT INTO identities (user, identity, registered_at_ms) VALUES (?1, ?2, ?3)",
                params![identity.user, identity.encode_to_vec(), now_ms()],
            )
            .map(drop)
            .map_err(database)
    }

    fn rooms(&self) -> Result<Vec<StoredRoom>, StoreError> {
        let mut connection = self.reader();
        let transaction = read(&mut connection)?;
        let mut rooms = select(
            &transaction,
            "SELECT name, owner, last_seq FROM rooms ORDER BY name",
            [],
            "read the rooms",
            |row| {
                Ok(StoredRoom {
                    name: row.get(0)?,
                    owner: row.get(1)?,
                    last_seq: from_bits(row.get(2)?),
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
            "SELECT room, user, joined_seq FROM members ORDER BY room, user",
            [],
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
        for (name, user) in select(
            &transaction,
            "SELECT room, user FROM invitations ORDER BY room, user",
            [],
            "read the invitations to the rooms",
            |row| Ok((row.get::<_, String>(0)?, row.get(1)?)),
        )? {
            if let Some(at) = room(&name) {
                rooms[at].invited.push(user);
            }
        }
        for (name, count) in select(
            &transaction,
            "SELECT room, COUNT(*) FROM messages GROUP BY room",
            [],
            "count the messages of the rooms",
            |row| Ok((row.get::<_, String>(0)?, from_bits(row.get(1)?))),
        )? {
            if let Some(at) = room(&name) {
                rooms[at].messages = count;
            }
        }
        Ok(rooms)
    }

    fn commit(&self, changes: &[Change]) -> Result<Vec<Applied>, StoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let now_ms = now_ms();
        let mut connection = self.writer();
        let transaction = write(&mut connection)?;
        // On an error the transaction is dropped, which rolls it all back.
        let applied = changes
            .iter()
            .map(|change| apply(&transaction, change, now_ms))
            .collect::<Result<Vec<_>, _>>()?;
        transaction.commit().map_err(failed("commit"))?;
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

    fn keys_in_force(&self, room: &str, member: &str, at: u64) -> Result<Vec<Entry>, StoreError> {
        let mut connection = self.reader();
        let transaction = read(&mut connection)?;
        // With a single max() SQLite takes the bare columns from the row holding the
        // maximum: per sender, the latest key. Without the index named, SQLite walks
        // the keys of every recipient up to `at` by the primary key.
        select(
            &transaction,
            concat!(
                "SELECT ",
                key_columns!(),
                ", max(seq) FROM sender_keys INDEXED BY sender_keys_by_recipient \
                 WHERE room = ?1 AND recipient = ?2 AND sender != ?2 AND seq <= ?3 \
                 GROUP BY sender ORDER BY seq"
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

    fn prune(&self, retention: &Retention, now: Duration) -> Result<Pruned, StoreError> {
        let mut connection = self.writer();
        let transaction = write(&mut connection)?;
        let mut pruned = Pruned::default();
        if let Some(max_age) = retention.max_age {
            pruned.messages += execute(
                &transaction,
                "DELETE FROM messages WHERE stored_ms < ?1",
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
            prune_room(
                &transaction,
                &room,
                retention.max_messages_per_room,
                &mut pruned,
            )?;
        }
        transaction.commit().map_err(failed("commit the pruning"))?;
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WrappedKey;

    fn identity(user: &str) -> PublicIdentity {
        PublicIdentity {
            user: user.to_owned(),
            encryption_public_key: vec![1; 8].into(),
            signing_public_key: vec![2; 8].into(),
            signature: vec![3; 8].into(),
        }
    }

    /// Runs `test` against a database in memory and one on disk: both must behave the
    /// same.
    fn on_each_store(test: impl Fn(&SqliteStore)) {
        test(&SqliteStore::in_memory().unwrap());
        let dir = tempfile::tempdir().unwrap();
        test(&SqliteStore::open(dir.path()).unwrap());
    }

    // Key ids above i64::MAX, as random ones often are: they must come back unchanged.
    const K1: u64 = u64::MAX - 1;
    const K2: u64 = u64::MAX - 2;
    const K3: u64 = 3;

    fn sealed(key_id: u64, counter: u64) -> SealedMessage {
        SealedMessage {
            key_id,
            counter,
            nonce: vec![counter as u8; 12].into(),
            ciphertext: format!("ciphertext {key_id}/{counter}").into_bytes().into(),
            signature: vec![9; 16].into(),
        }
    }

    fn create(room: &str, owner: Option<&str>) -> Change {
        Change::CreateRoom {
            room: room.to_owned(),
            owner: owner.map(str::to_owned),
        }
    }

    fn join(room: &str, user: &str, seq: u64) -> Change {
        Change::AddMember {
            room: room.to_owned(),
            user: user.to_owned(),
            seq,
        }
    }

    fn send(room: &str, seq: u64, sender: &str, key_id: u64, counter: u64) -> Change {
        Change::AppendMessage {
            room: room.to_owned(),
            seq,
            sender: sender.to_owned(),
            sealed: sealed(key_id, counter),
        }
    }

    fn wrap(room: &str, seq: u64, sender: &str, key_id: u64, recipients: &[&str]) -> Change {
        Change::AppendSenderKeys {
            room: room.to_owned(),
            seq,
            sender: sender.to_owned(),
            key_id,
            keys: recipients
                .iter()
                .map(|recipient| WrappedKey {
                    recipient: (*recipient).to_owned(),
                    wrapped_key: format!("{key_id} for {recipient}").into_bytes().into(),
                    signature: format!("signed by {sender}").into_bytes().into(),
                })
                .collect(),
        }
    }

    /// Entries as short lines, easy to compare: "seq message sender key_id/counter" or
    /// "seq key sender key_id for recipient", after checking that every other field is
    /// what [`send`] and [`wrap`] stored.
    fn lines(room: &str, entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|entry| match entry {
                Entry::Message(message) => {
                    let stored = message.sealed.as_ref().unwrap();
                    assert_eq!(message.room, room);
                    assert_eq!(*stored, sealed(stored.key_id, stored.counter));
                    format!(
                        "{} message {} {}/{}",
                        message.seq, message.sender, stored.key_id, stored.counter
                    )
                }
                Entry::SenderKey(key) => {
                    assert_eq!(key.room, room);
                    let signature = format!("signed by {}", key.sender);
                    assert_eq!(key.signature, signature.as_bytes());
                    let wrapped = String::from_utf8(key.wrapped_key.to_vec()).unwrap();
                    let recipient = wrapped
                        .strip_prefix(&format!("{} for ", key.key_id))
                        .unwrap();
                    format!(
                        "{} key {} {} for {recipient}",
                        key.seq, key.sender, key.key_id
                    )
                }
            })
            .collect()
    }

    fn count(store: &SqliteStore, table: &str, room: &str) -> i64 {
        store
            .reader()
            .query_row(
                &format!("SELECT COUNT(*) FROM {table} WHERE room = ?1"),
                [room],
                |row| row.get(0),
            )
            .unwrap()
    }

    #[test]
    fn registrations_survive_reopening_and_are_not_duplicated() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.register(&identity("alice")).unwrap();
        store.register(&identity("bob")).unwrap();
        assert!(store.register(&identity("alice")).is_err());
        drop(store);
        let reopened = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.identities().unwrap(),
            [identity("alice"), identity("bob")]
        );
    }

    #[test]
    fn a_database_from_a_newer_server_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path()).unwrap());
        let connection = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        connection.pragma_update(None, "user_version", 99).unwrap();
        drop(connection);
        let error = SqliteStore::open(dir.path()).err().unwrap().to_string();
        assert!(error.contains("newer"), "{error}");
    }

    #[test]
    fn garbage_in_place_of_the_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DATABASE_FILE), vec![7u8; 4096]).unwrap();
        let error = SqliteStore::open(dir.path()).err().unwrap().to_string();
        assert!(error.contains("chat.sqlite3"), "{error}");
    }

    #[test]
    fn a_database_of_the_first_schema_is_upgraded_keeping_its_identities() {
        let dir = tempfile::tempdir().unwrap();
        let connection = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        connection.execute_batch(MIGRATIONS[0]).unwrap();
        connection.pragma_update(None, "user_version", 1).unwrap();
        connection
            .execute(
                "INSERT INTO identities VALUES ('alice', ?1, 0)",
                [identity("alice").encode_to_vec()],
            )
            .unwrap();
        drop(connection);
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.identities().unwrap(), [identity("alice")]);
        store.commit(&[create("lobby", None)]).unwrap();
        assert_eq!(store.rooms().unwrap()[0].name, "lobby");
    }

    #[test]
    fn rooms_and_their_logs_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let applied = store
            .commit(&[
                create("lobby", None),
                create("secret", Some("alice")),
                Change::Invite {
                    room: "secret".into(),
                    user: "carol".into(),
                },
                Change::Invite {
                    room: "secret".into(),
                    user: "bob".into(),
                },
                join("secret", "alice", 1),
                join("secret", "bob", 2),
                Change::Uninvite {
                    room: "secret".into(),
                    user: "bob".into(),
                },
                wrap("secret", 3, "alice", K1, &["alice", "bob"]),
                send("secret", 4, "alice", K1, 0),
                join("lobby", "bob", 7),
            ])
            .unwrap();
        assert_eq!(applied, [Applied::Done; 10]);
        let rooms = store.rooms().unwrap();
        let before = store.entries_after("secret", "bob", 0, 10, 10).unwrap();
        assert_eq!(
            lines("secret", &before),
            [
                format!("3 key alice {K1} for bob"),
                format!("4 message alice {K1}/0")
            ]
        );
        drop(store);

        let reopened = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(reopened.rooms().unwrap(), rooms);
        assert_eq!(
            rooms,
            [
                StoredRoom {
                    name: "lobby".into(),
                    owner: None,
                    last_seq: 7,
                    members: vec![("bob".into(), 7)],
                    invited: vec![],
                    messages: 0,
                },
                StoredRoom {
                    name: "secret".into(),
                    owner: Some("alice".into()),
                    last_seq: 4,
                    members: vec![("alice".into(), 1), ("bob".into(), 2)],
                    invited: vec!["carol".into()],
                    messages: 1,
                },
            ]
        );
        assert_eq!(
            reopened.entries_after("secret", "bob", 0, 10, 10).unwrap(),
            before
        );
    }

    #[test]
    fn a_batch_with_a_failing_change_leaves_nothing() {
        on_each_store(|store| {
            store
                .commit(&[create("lobby", None), join("lobby", "alice", 1)])
                .unwrap();
            let before = store.rooms().unwrap();
            let error = store
                .commit(&[
                    create("other", None),
                    join("lobby", "bob", 2),
                    wrap("lobby", 3, "bob", K1, &["alice"]),
                    send("lobby", 4, "bob", K1, 0),
                    create("lobby", None),
                ])
                .unwrap_err();
            assert!(matches!(error, StoreError::Database(_)), "{error}");
            assert!(
                error.to_string().contains("create room \"lobby\""),
                "{error}"
            );
            assert_eq!(store.rooms().unwrap(), before);
            assert_eq!(
                store.entries_after("lobby", "alice", 0, 10, 10).unwrap(),
                []
            );
            // Nothing of the failed batch stays open or half done: the next one works.
            store.commit(&[join("lobby", "bob", 2)]).unwrap();
            assert_eq!(store.rooms().unwrap()[0].members.len(), 2);
        });
    }

    #[test]
    fn a_change_to_an_unknown_room_is_refused() {
        on_each_store(|store| {
            for change in [
                join("nowhere", "alice", 1),
                send("nowhere", 1, "alice", K1, 0),
            ] {
                let error = store.commit(&[change]).unwrap_err().to_string();
                assert!(error.contains("\"nowhere\""), "{error}");
            }
            assert_eq!(store.rooms().unwrap(), []);
        });
    }

    #[test]
    fn a_sequence_number_beyond_i64_is_refused_and_a_bound_beyond_it_reads_all() {
        on_each_store(|store| {
            store.commit(&[create("lobby", None)]).unwrap();
            let error = store
                .commit(&[send("lobby", u64::MAX, "alice", K1, 0)])
                .unwrap_err()
                .to_string();
            assert!(error.contains("beyond"), "{error}");
            store.commit(&[send("lobby", 5, "alice", K1, 0)]).unwrap();
            let all = store.entries_after("lobby", "bob", 0, u64::MAX, usize::MAX);
            assert_eq!(
                lines("lobby", &all.unwrap()),
                [format!("5 message alice {K1}/0")]
            );
        });
    }

    #[test]
    fn a_resent_message_is_a_duplicate_of_the_first_and_stored_once() {
        on_each_store(|store| {
            store
                .commit(&[create("lobby", None), send("lobby", 1, "alice", K1, 0)])
                .unwrap();
            // Same sender, key id and counter, even with another ciphertext.
            let mut resent = send("lobby", 2, "alice", K1, 0);
            if let Change::AppendMessage { sealed, .. } = &mut resent {
                sealed.ciphertext = b"other".to_vec().into();
            }
            assert_eq!(
                store.commit(&[resent]).unwrap(),
                [Applied::Duplicate { seq: 1 }]
            );
            // Within one batch too; another sender or key id is not a duplicate.
            assert_eq!(
                store
                    .commit(&[
                        send("lobby", 2, "alice", K1, 1),
                        send("lobby", 3, "alice", K1, 1),
                        send("lobby", 3, "bob", K1, 1),
                        send("lobby", 4, "alice", K2, 1),
                    ])
                    .unwrap(),
                [
                    Applied::Done,
                    Applied::Duplicate { seq: 2 },
                    Applied::Done,
                    Applied::Done
                ]
            );
            let entries = store.entries_after("lobby", "carol", 0, 10, 10).unwrap();
            assert_eq!(
                lines("lobby", &entries),
                [
                    format!("1 message alice {K1}/0"),
                    format!("2 message alice {K1}/1"),
                    format!("3 message bob {K1}/1"),
                    format!("4 message alice {K2}/1"),
                ]
            );
            let room = &store.rooms().unwrap()[0];
            assert_eq!((room.last_seq, room.messages), (4, 4));
            // A duplicate stores nothing, but its number is used up: a client may
            // have seen it as the room's head, so it must never be reused.
            assert_eq!(
                store.commit(&[send("lobby", 9, "bob", K1, 1)]).unwrap(),
                [Applied::Duplicate { seq: 3 }]
            );
            assert_eq!(store.rooms().unwrap()[0].last_seq, 9);
            assert_eq!(store.rooms().unwrap()[0].messages, 4);
            // A sequence number used twice is not a duplicate but an error.
            assert!(store.commit(&[send("lobby", 4, "bob", K3, 0)]).is_err());
        });
    }

    /// alice, bob and carol in a room: messages, keys and self-wrapped copies.
    fn busy_room(store: &SqliteStore) {
        store
            .commit(&[
                create("r", None),
                join("r", "alice", 1),
                join("r", "bob", 2),
                join("r", "carol", 3),
                wrap("r", 4, "alice", K1, &["alice", "bob", "carol"]),
                send("r", 5, "alice", K1, 0),
                wrap("r", 6, "bob", K2, &["bob", "alice", "carol"]),
                send("r", 7, "bob", K2, 0),
                wrap("r", 8, "carol", K3, &["alice"]),
                send("r", 9, "carol", K3, 0),
                send("r", 10, "alice", K1, 1),
            ])
            .unwrap();
    }

    #[test]
    fn entries_after_are_the_others_messages_and_the_keys_for_the_member() {
        on_each_store(|store| {
            busy_room(store);
            let all = store.entries_after("r", "bob", 0, 10, 100).unwrap();
            // Not bob's messages, not its own key copy, not carol's key for alice.
            assert_eq!(
                lines("r", &all),
                [
                    format!("4 key alice {K1} for bob"),
                    format!("5 message alice {K1}/0"),
                    format!("9 message carol {K3}/0"),
                    format!("10 message alice {K1}/1"),
                ]
            );
            // `after` excluded, `up_to` included.
            let middle = store.entries_after("r", "bob", 4, 9, 100).unwrap();
            assert_eq!(lines("r", &middle), lines("r", &all[1..3]));
            // At most `limit`, the first ones.
            let first = store.entries_after("r", "bob", 0, 10, 2).unwrap();
            assert_eq!(first, all[..2]);
            assert_eq!(store.entries_after("r", "bob", 0, 10, 0).unwrap(), []);
            assert_eq!(store.entries_after("r", "bob", 10, 20, 10).unwrap(), []);
            let alice = store.entries_after("r", "alice", 0, 10, 100).unwrap();
            assert_eq!(
                lines("r", &alice),
                [
                    format!("6 key bob {K2} for alice"),
                    format!("7 message bob {K2}/0"),
                    format!("8 key carol {K3} for alice"),
                    format!("9 message carol {K3}/0"),
                ]
            );
            assert_eq!(
                store.entries_after("elsewhere", "bob", 0, 10, 10).unwrap(),
                []
            );
        });
    }

    #[test]
    fn senders_between_are_sorted_and_bounded() {
        on_each_store(|store| {
            busy_room(store);
            assert_eq!(
                store.senders_between("r", 0, 10).unwrap(),
                ["alice", "bob", "carol"]
            );
            assert_eq!(store.senders_between("r", 5, 9).unwrap(), ["bob", "carol"]);
            assert_eq!(store.senders_between("r", 10, 20).unwrap(), [""; 0]);
        });
    }

    #[test]
    fn keys_no_message_was_sealed_with_are_dropped_when_superseded() {
        on_each_store(|store| {
            busy_room(store);
            let before = count(store, "sender_keys", "r");
            // alice distributes a hundred keys to bob and carol and never uses them.
            for n in 0..100 {
                store
                    .commit(&[wrap("r", 11 + n, "alice", 1_000 + n, &["bob", "carol"])])
                    .unwrap();
            }
            assert_eq!(count(store, "sender_keys", "r"), before + 2);
            // K1, which alice's messages were sealed with, is still there for history.
            let history = lines("r", &store.history("r", "bob", 0, 10).unwrap());
            assert!(
                history.contains(&format!("4 key alice {K1} for bob")),
                "{history:?}"
            );
        });
    }

    #[test]
    fn keys_in_force_are_the_latest_per_other_sender_at_or_before_the_point() {
        on_each_store(|store| {
            busy_room(store);
            store
                .commit(&[
                    wrap("r", 11, "alice", K3, &["bob", "alice"]),
                    wrap("r", 12, "carol", K2, &["bob"]),
                ])
                .unwrap();
            let at = |seq| lines("r", &store.keys_in_force("r", "bob", seq).unwrap());
            assert_eq!(at(3), [""; 0]);
            assert_eq!(at(4), [format!("4 key alice {K1} for bob")]);
            // bob's own key is not one it needs.
            assert_eq!(at(10), [format!("4 key alice {K1} for bob")]);
            assert_eq!(at(11), [format!("11 key alice {K3} for bob")]);
            assert_eq!(
                at(12),
                [
                    format!("11 key alice {K3} for bob"),
                    format!("12 key carol {K2} for bob")
                ]
            );
            assert_eq!(at(u64::MAX), at(12));
        });
    }

    #[test]
    fn history_has_everyones_latest_messages_and_the_keys_they_were_sealed_with() {
        on_each_store(|store| {
            busy_room(store);
            // bob's key K2 copied for bob again, later: the latest copy counts.
            store.commit(&[wrap("r", 11, "bob", K2, &["bob"])]).unwrap();
            let history = store.history("r", "bob", 0, 100).unwrap();
            assert_eq!(
                lines("r", &history),
                [
                    format!("4 key alice {K1} for bob"),
                    format!("5 message alice {K1}/0"),
                    format!("7 message bob {K2}/0"),
                    format!("9 message carol {K3}/0"),
                    format!("10 message alice {K1}/1"),
                    format!("11 key bob {K2} for bob"),
                ]
            );
            // The latest `limit`, and only the keys those need.
            let latest = store.history("r", "bob", 0, 2).unwrap();
            assert_eq!(
                lines("r", &latest),
                [
                    format!("4 key alice {K1} for bob"),
                    format!("9 message carol {K3}/0"),
                    format!("10 message alice {K1}/1"),
                ]
            );
            // Only after `since`, but the key wherever it is.
            let since = store.history("r", "alice", 9, 100).unwrap();
            assert_eq!(
                lines("r", &since),
                [
                    format!("4 key alice {K1} for alice"),
                    format!("10 message alice {K1}/1"),
                ]
            );
            assert_eq!(store.history("r", "bob", 10, 100).unwrap(), []);
            assert_eq!(store.history("r", "bob", 0, 0).unwrap(), []);
        });
    }

    #[test]
    fn a_removed_member_loses_the_keys_wrapped_for_it_and_only_those() {
        on_each_store(|store| {
            busy_room(store);
            store
                .commit(&[Change::RemoveMember {
                    room: "r".into(),
                    user: "bob".into(),
                    seq: 11,
                }])
                .unwrap();
            assert_eq!(store.keys_in_force("r", "bob", 11).unwrap(), []);
            assert_eq!(
                store
                    .entries_after("r", "bob", 0, 11, 100)
                    .unwrap()
                    .iter()
                    .filter(|entry| matches!(entry, Entry::SenderKey(_)))
                    .count(),
                0
            );
            // The keys bob sent stay: its messages remain readable.
            assert_eq!(
                lines("r", &store.keys_in_force("r", "alice", 11).unwrap()),
                [
                    format!("6 key bob {K2} for alice"),
                    format!("8 key carol {K3} for alice")
                ]
            );
            let room = &store.rooms().unwrap()[0];
            assert_eq!(room.last_seq, 11);
            assert_eq!(
                room.members,
                [("alice".to_owned(), 1), ("carol".to_owned(), 3)]
            );
        });
    }

    #[test]
    fn a_deleted_room_is_forgotten_entirely() {
        on_each_store(|store| {
            busy_room(store);
            store
                .commit(&[
                    create("kept", Some("dave")),
                    join("kept", "dave", 1),
                    Change::Invite {
                        room: "r".into(),
                        user: "erin".into(),
                    },
                    Change::DeleteRoom { room: "r".into() },
                ])
                .unwrap();
            for table in ["invitations", "members", "messages", "sender_keys"] {
                assert_eq!(count(store, table, "r"), 0, "{table}");
            }
            let rooms = store.rooms().unwrap();
            assert_eq!(rooms.len(), 1);
            assert_eq!(rooms[0].name, "kept");
            // The name is free again, for a room starting from nothing.
            store.commit(&[create("r", None)]).unwrap();
            let rooms = store.rooms().unwrap();
            assert_eq!((rooms[1].name.as_str(), rooms[1].last_seq), ("r", 0));
            assert_eq!(store.history("r", "alice", 0, 100).unwrap(), []);
        });
    }

    #[test]
    fn trimming_forgets_exactly_the_oldest_messages() {
        on_each_store(|store| {
            busy_room(store);
            store
                .commit(&[Change::TrimMessages {
                    room: "r".into(),
                    count: 2,
                }])
                .unwrap();
            assert_eq!(
                store.senders_between("r", 0, 10).unwrap(),
                ["alice", "carol"]
            );
            assert_eq!(
                lines("r", &store.entries_after("r", "dave", 0, 10, 100).unwrap()),
                [
                    format!("9 message carol {K3}/0"),
                    format!("10 message alice {K1}/1")
                ]
            );
            let room = &store.rooms().unwrap()[0];
            assert_eq!((room.messages, room.last_seq), (2, 10));
            // Trimming is not pruning: the keys stay.
            assert_eq!(count(store, "sender_keys", "r"), 7);
            store
                .commit(&[Change::TrimMessages {
                    room: "r".into(),
                    count: 5,
                }])
                .unwrap();
            assert_eq!(store.rooms().unwrap()[0].messages, 0);
        });
    }

    #[test]
    fn trimming_reads_only_what_it_deletes() {
        let store = SqliteStore::in_memory().unwrap();
        let plan = store
            .reader()
            .prepare(&format!("EXPLAIN QUERY PLAN {TRIM_MESSAGES}"))
            .unwrap()
            .query_map(["r", "2"], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert!(
            plan.iter().all(|step| !step.starts_with("SCAN")),
            "{plan:?}"
        );
    }

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn since_epoch() -> Duration {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
    }

    #[test]
    fn pruning_by_age_forgets_old_messages_and_keeps_the_keys_in_force() {
        on_each_store(|store| {
            busy_room(store);
            store
                .commit(&[wrap("r", 11, "alice", K2, &["bob"])])
                .unwrap();
            let retention = Retention {
                max_age: Some(DAY),
                max_messages_per_room: 100,
            };
            // Nothing is a day old yet.
            assert_eq!(
                store.prune(&retention, since_epoch()).unwrap(),
                Pruned::default()
            );
            let pruned = store.prune(&retention, since_epoch() + 2 * DAY).unwrap();
            // Only alice's first key for bob is superseded (by the one at 11).
            assert_eq!(
                pruned,
                Pruned {
                    messages: 4,
                    sender_keys: 1
                }
            );
            let room = &store.rooms().unwrap()[0];
            assert_eq!((room.messages, room.last_seq), (0, 11));
            assert_eq!(
                lines("r", &store.keys_in_force("r", "bob", 11).unwrap()),
                [format!("11 key alice {K2} for bob")]
            );
            assert_eq!(
                lines("r", &store.keys_in_force("r", "carol", 11).unwrap()),
                [
                    format!("4 key alice {K1} for carol"),
                    format!("6 key bob {K2} for carol")
                ]
            );
            assert_eq!(count(store, "sender_keys", "r"), 7);
        });
    }

    #[test]
    fn pruning_by_count_keeps_the_latest_messages_and_the_keys_they_need() {
        on_each_store(|store| {
            store
                .commit(&[
                    create("r", None),
                    join("r", "alice", 1),
                    join("r", "bob", 2),
                    wrap("r", 3, "alice", K1, &["alice", "bob"]),
                    send("r", 4, "alice", K1, 0),
                    send("r", 5, "alice", K1, 1),
                    send("r", 6, "alice", K1, 2),
                    wrap("r", 7, "alice", K2, &["alice", "bob"]),
                    send("r", 8, "alice", K2, 0),
                    wrap("r", 9, "bob", K3, &["alice", "bob"]),
                    send("r", 10, "bob", K3, 0),
                ])
                .unwrap();
            let keep = |max_messages_per_room| Retention {
                max_age: None,
                max_messages_per_room,
            };
            // Message 6 is still sealed with K1, rotated at 7: K1 stays although a
            // later key of alice's is in force.
            assert_eq!(
                store.prune(&keep(3), since_epoch()).unwrap(),
                Pruned {
                    messages: 2,
                    sender_keys: 0
                }
            );
            assert_eq!(
                lines("r", &store.history("r", "bob", 0, 100).unwrap()),
                [
                    format!("3 key alice {K1} for bob"),
                    format!("6 message alice {K1}/2"),
                    format!("7 key alice {K2} for bob"),
                    format!("8 message alice {K2}/0"),
                    format!("9 key bob {K3} for bob"),
                    format!("10 message bob {K3}/0"),
                ]
            );
            // Now no message needs K1.
            assert_eq!(
                store.prune(&keep(1), since_epoch()).unwrap(),
                Pruned {
                    messages: 2,
                    sender_keys: 2
                }
            );
            assert_eq!(
                lines("r", &store.entries_after("r", "alice", 0, 10, 100).unwrap()),
                [
                    format!("9 key bob {K3} for alice"),
                    format!("10 message bob {K3}/0")
                ]
            );
            assert_eq!(
                lines("r", &store.keys_in_force("r", "bob", 10).unwrap()),
                [format!("7 key alice {K2} for bob")]
            );
            assert_eq!(
                store.prune(&keep(1), since_epoch()).unwrap(),
                Pruned::default()
            );
            // A room whose messages are all gone keeps only its keys in force.
            assert_eq!(
                store.prune(&keep(0), since_epoch()).unwrap(),
                Pruned {
                    messages: 1,
                    sender_keys: 0
                }
            );
            assert_eq!(count(store, "sender_keys", "r"), 4);
            assert_eq!(store.rooms().unwrap()[0].last_seq, 10);
        });
    }

    #[test]
    fn an_unreadable_stored_message_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .commit(&[create("lobby", None), send("lobby", 1, "alice", K1, 0)])
            .unwrap();
        let connection = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        connection
            .execute("UPDATE messages SET sealed = x'ffffffff'", [])
            .unwrap();
        drop(connection);
        for result in [
            store.entries_after("lobby", "bob", 0, 1, 10),
            store.history("lobby", "bob", 0, 10),
        ] {
            let error = result.unwrap_err();
            assert!(
                matches!(&error, StoreError::CorruptEntry { room, seq: 1, .. } if room == "lobby"),
                "{error}"
            );
            assert!(error.to_string().contains("backup"), "{error}");
        }
    }

    #[test]
    fn a_commit_is_read_at_once_through_the_other_connection() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert!(!Arc::ptr_eq(&store.reader, &store.writer));
        for seq in 1..=3 {
            let mut changes = vec![send("lobby", seq, "alice", K1, seq)];
            if seq == 1 {
                changes.insert(0, create("lobby", None));
            }
            store.commit(&changes).unwrap();
            assert_eq!(store.rooms().unwrap()[0].last_seq, seq);
        }
        assert!(store.reader().execute("DELETE FROM messages", []).is_err());
    }
}
