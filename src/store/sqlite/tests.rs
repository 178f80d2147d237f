//! What only the SQLite backend has: its file and its permissions, the upgrade of
//! databases made by earlier versions, its query plans, its two connections. What
//! every backend does alike is tested in `store/tests.rs`.

use super::*;
use crate::store::tests::{
    CommitUnlimited, K1, assert_usage_is_exact, create, identity, send, since_epoch,
};

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
fn the_database_and_its_journal_are_the_servers_alone() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.commit_unlimited(&[create("lobby", None)]).unwrap();
    for file in [DATABASE_FILE, "chat.sqlite3-wal", "chat.sqlite3-shm"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
    drop(store);
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
    store.commit_unlimited(&[create("lobby", None)]).unwrap();
    assert_eq!(store.rooms().unwrap()[0].name, "lobby");
}

#[test]
fn trimming_reads_only_what_it_deletes() {
    let store = SqliteStore::in_memory().unwrap();
    for sql in [
        usage::OLDEST_MESSAGES,
        usage::OLDEST_MESSAGE,
        usage::DELETE_OLDEST,
    ] {
        let plan = store
            .reader()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(
                rusqlite::params_from_iter(["r", "2", "3"].iter().take(sql.matches('?').count())),
                |row| row.get::<_, String>(3),
            )
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert!(
            plan.iter().all(|step| !step.starts_with("SCAN")),
            "{sql}: {plan:?}"
        );
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
        store.commit_unlimited(&changes).unwrap();
        assert_eq!(store.rooms().unwrap()[0].last_seq, seq);
    }
    assert!(store.reader().execute("DELETE FROM messages", []).is_err());
}

#[test]
fn catching_up_and_reclaiming_use_indexes_not_scans() {
    let store = SqliteStore::in_memory().unwrap();
    let plan = |sql: &str, params: usize| -> Vec<String> {
        store
            .reader()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(
                rusqlite::params_from_iter(["r", "bob", "3", "x", "y"].iter().take(params)),
                |row| row.get::<_, String>(3),
            )
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    for (sql, params) in [
        (PRUNE_SENDER_KEYS, 1),
        ("DELETE FROM sender_keys WHERE sender = ?1", 1),
        ("DELETE FROM members WHERE user = ?1", 1),
        ("DELETE FROM invitations WHERE user = ?1", 1),
        (usage::OLDEST_IN_STORE, 2),
    ] {
        let steps = plan(sql, params);
        // Walking the age index from the oldest, and stopping, is what eviction wants.
        let indexed = |step: &String| !step.starts_with("SCAN") || step.contains("messages_by_age");
        assert!(steps.iter().all(indexed), "{sql}: {steps:?}");
    }
}

#[test]
fn a_database_of_the_second_schema_is_upgraded_with_exact_usage() {
    let dir = tempfile::tempdir().unwrap();
    let connection = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    connection.execute_batch(MIGRATIONS[0]).unwrap();
    connection.execute_batch(MIGRATIONS[1]).unwrap();
    connection.pragma_update(None, "user_version", 2).unwrap();
    connection
        .execute_batch(
            "INSERT INTO identities VALUES ('alice', x'00', 5), ('bob', x'00', 6);
             INSERT INTO rooms (name, owner, last_seq, created_ms) VALUES ('r', NULL, 4, 7);
             INSERT INTO messages VALUES ('r', 1, 'alice', 1, 0, x'0102', 100);
             INSERT INTO messages VALUES ('r', 3, 'alice', 2, 0, x'010203', 300);
             INSERT INTO sender_keys VALUES ('r', 2, 'alice', 'bob', 1, x'09', x'0909', 200);
             INSERT INTO sender_keys VALUES ('r', 4, 'alice', 'bob', 2, x'09', x'0909', 400);",
        )
        .unwrap();
    drop(connection);
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_usage_is_exact(&store);
    // chat.v2 (0004) forgets what chat.v1 clients sealed, which no v2 client can open:
    // the room, its number and the identities stay, with usage counted exactly.
    let room = &store.rooms().unwrap()[0];
    assert_eq!(
        (room.messages, room.message_bytes, room.last_seq),
        (0, 0, 4)
    );
    let keys: i64 = store
        .reader()
        .query_row("SELECT COUNT(*) FROM sender_keys", [], |row| row.get(0))
        .unwrap();
    assert_eq!(keys, 0);
    let used: i64 = store
        .reader()
        .query_row("SELECT used_ms FROM rooms", [], |row| row.get(0))
        .unwrap();
    // Nothing recorded when rooms and users were last used: the upgrade counts as a use,
    // so that nothing is reclaimed for want of a record.
    let upgraded = millis(since_epoch()) - 60_000;
    assert!(used > upgraded, "{used}");
    let seen: i64 = store
        .reader()
        .query_row("SELECT MIN(seen_ms) FROM identities", [], |row| row.get(0))
        .unwrap();
    assert!(seen > upgraded, "{seen}");
}
