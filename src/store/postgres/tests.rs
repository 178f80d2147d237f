//! What only the PostgreSQL backend has: its schema-version table, a server that is
//! unreachable at start-up, and one that goes away and comes back. What every backend
//! does alike is tested in `store/tests.rs`.

use super::*;
use crate::store::tests::postgres_server::{as_superuser, fresh_database};
use crate::store::tests::{CommitUnlimited, K1, create, send};

/// The name of the database at `url`.
fn name(url: &str) -> &str {
    url.rsplit_once('/').unwrap().1
}

#[test]
fn the_schema_version_is_recorded_and_a_newer_one_refused() {
    let url = fresh_database();
    let store = PostgresStore::open(&url, None).unwrap();
    assert_eq!(
        store.test_query("SELECT CAST(version AS TEXT) FROM schema_version"),
        [[MIGRATIONS.len().to_string()]]
    );
    drop(store);
    // Opening again applies nothing: the schema is recognised as it is.
    let store = PostgresStore::open(&url, None).unwrap();
    store.test_execute("UPDATE schema_version SET version = 99");
    drop(store);
    let error = PostgresStore::open(&url, None).err().unwrap();
    assert!(
        matches!(error, StoreError::TooNew { found: 99, known } if known == MIGRATIONS.len() as i64),
        "{error}"
    );
    assert!(error.to_string().contains("newer"), "{error}");
}

#[test]
fn an_unreachable_server_is_one_clear_line_without_the_password() {
    // Port 1 on the loopback: nothing listens there, so the connection is refused at once.
    let error = PostgresStore::open("postgres://relay:s3cret@127.0.0.1:1/chat", None)
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(matches!(error, StoreError::Open { .. }), "{message}");
    assert!(message.contains("postgres://127.0.0.1:1/chat"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn a_commit_while_the_database_is_away_fails_whole_and_the_store_recovers() {
    let url = fresh_database();
    let database = name(&url);
    let store = PostgresStore::open(&url, None).unwrap();
    store.commit_unlimited(&[create("lobby", None)]).unwrap();
    // Every connection to the database cut, and no new one let in: to the store, the
    // same as a server that stopped.
    as_superuser(&format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
    ));
    let error = store
        .commit_unlimited(&[send("lobby", 1, "alice", K1, 0)])
        .unwrap_err();
    assert!(matches!(error, StoreError::Database(_)), "{error}");
    assert!(store.rooms().is_err());
    as_superuser(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"));
    // The pool connects again by itself; the failed commit left nothing.
    assert_eq!(store.rooms().unwrap()[0].last_seq, 0);
    store
        .commit_unlimited(&[send("lobby", 2, "alice", K1, 0)])
        .unwrap();
    let room = &store.rooms().unwrap()[0];
    assert_eq!((room.last_seq, room.messages), (2, 1));
}
