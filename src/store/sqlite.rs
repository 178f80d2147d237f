//! A [`Store`] in an embedded SQLite database, `chat.sqlite3` in the data directory.
//!
//! WAL journal, `synchronous = FULL`: a registration is on disk when `register` returns.
//! The schema is created and upgraded by the numbered migrations in `migrations/`, run
//! at start-up; `PRAGMA user_version` records how far a database has come.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use rusqlite::{Connection, params};

use std::time::Duration;

use super::{Applied, Change, Entry, Pruned, Retention, Store, StoreError, StoredRoom};
use crate::proto::PublicIdentity;

/// The database's file name in the data directory.
pub const DATABASE_FILE: &str = "chat.sqlite3";

/// The migrations, in order: the schema version after each is its position + 1.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_identities.sql"),
    include_str!("../../migrations/0002_rooms.sql"),
];

/// The relay's database.
pub struct SqliteStore {
    connection: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `dir` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DATABASE_FILE);
        let fail = |error: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            reason: error.to_string(),
        };
        let mut connection = Connection::open(&path).map_err(fail)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| connection.pragma_update(None, "synchronous", "FULL"))
            .and_then(|()| connection.pragma_update(None, "foreign_keys", "ON"))
            .and_then(|()| connection.busy_timeout(std::time::Duration::from_secs(5)))
            .map_err(fail)?;
        migrate(&mut connection).map_err(|error| match error {
            StoreError::Database(reason) => StoreError::Open {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })?;
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    /// A database in memory, gone with the process (tests, benchmarks).
    pub fn in_memory() -> Result<Self, StoreError> {
        let mut connection = Connection::open_in_memory().map_err(database)?;
        migrate(&mut connection)?;
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        // A statement that panicked left no transaction open: SQLite rolls it back.
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
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

impl Store for SqliteStore {
    fn identities(&self) -> Result<Vec<PublicIdentity>, StoreError> {
        let connection = self.connection();
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
            let (user, bytes) = row.map_err(database)?;
            let identity =
                PublicIdentity::decode(bytes.as_slice()).map_err(|error| StoreError::Corrupt {
                    user: user.clone(),
                    reason: error.to_string(),
                })?;
            if identity.user != user {
                return Err(StoreError::Corrupt {
                    user,
                    reason: format!("it names {:?}", identity.user),
                });
            }
            identities.push(identity);
        }
        Ok(identities)
    }

    fn register(&self, identity: &PublicIdentity) -> Result<(), StoreError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        self.connection()
            .execute(
                "INSERT INTO identities (user, identity, registered_at_ms) VALUES (?1, ?2, ?3)",
                params![identity.user, identity.encode_to_vec(), now],
            )
            .map(drop)
            .map_err(database)
    }

    fn rooms(&self) -> Result<Vec<StoredRoom>, StoreError> {
        unimplemented!("WIP")
    }

    fn commit(&self, _changes: &[Change]) -> Result<Vec<Applied>, StoreError> {
        unimplemented!("WIP")
    }

    fn entries_after(
        &self,
        _room: &str,
        _member: &str,
        _after: u64,
        _up_to: u64,
        _limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        unimplemented!("WIP")
    }

    fn keys_in_force(
        &self,
        _room: &str,
        _member: &str,
        _at: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        unimplemented!("WIP")
    }

    fn senders_between(
        &self,
        _room: &str,
        _after: u64,
        _up_to: u64,
    ) -> Result<Vec<String>, StoreError> {
        unimplemented!("WIP")
    }

    fn history(
        &self,
        _room: &str,
        _member: &str,
        _since: u64,
        _limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        unimplemented!("WIP")
    }

    fn prune(&self, _retention: &Retention, _now: Duration) -> Result<Pruned, StoreError> {
        unimplemented!("WIP")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(user: &str) -> PublicIdentity {
        PublicIdentity {
            user: user.to_owned(),
            encryption_public_key: vec![1; 8].into(),
            signing_public_key: vec![2; 8].into(),
            signature: vec![3; 8].into(),
        }
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
        let version: i64 = store
            .connection()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, 2);
    }
}
