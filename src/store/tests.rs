//! The store's behaviour, the same on every backend: each case runs on SQLite (in
//! memory and in a file) and on a real PostgreSQL server (`postgres_server` starts one
//! per test process and gives each case a database of its own).

pub(crate) mod postgres_server;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

use super::*;
use crate::proto::{DistributionHeader, PublicIdentity, SealedMessage, WrappedChainKey};
use crate::store::shared::{TOKEN_LEN, millis};

/// A store under test, with a way to look at its tables.
pub(super) trait TestStore: Store {
    /// Every row `sql` returns, each column as text (`CAST(... AS TEXT)` where needed).
    fn query(&self, sql: &str) -> Vec<Vec<String>>;
    /// Runs `sql`, to damage what is stored.
    fn execute_sql(&self, sql: &str);
    /// An SQL literal of four bytes that decode as no protobuf message.
    fn garbage(&self) -> &'static str;
}

impl TestStore for SqliteStore {
    fn query(&self, sql: &str) -> Vec<Vec<String>> {
        self.test_query(sql)
    }

    fn execute_sql(&self, sql: &str) {
        self.test_execute(sql);
    }

    fn garbage(&self) -> &'static str {
        "x'ffffffff'"
    }
}

impl TestStore for PostgresStore {
    fn query(&self, sql: &str) -> Vec<Vec<String>> {
        self.test_query(sql)
    }

    fn execute_sql(&self, sql: &str) {
        self.test_execute(sql);
    }

    fn garbage(&self) -> &'static str {
        r"'\xffffffff'::BYTEA"
    }
}

/// Where a case's database is: each `open` is a store on the same database.
pub(super) trait Backend {
    fn open(&self) -> Arc<dyn TestStore>;
}

/// A SQLite database in a file of its own.
struct SqliteFile(tempfile::TempDir);

impl Backend for SqliteFile {
    fn open(&self) -> Arc<dyn TestStore> {
        Arc::new(SqliteStore::open(self.0.path()).unwrap())
    }
}

/// A database of its own on the test PostgreSQL server.
struct Postgres(String);

impl Backend for Postgres {
    fn open(&self) -> Arc<dyn TestStore> {
        Arc::new(PostgresStore::open(&self.0, None).unwrap())
    }
}

fn sqlite_file() -> SqliteFile {
    SqliteFile(tempfile::tempdir().unwrap())
}

fn postgres() -> Postgres {
    Postgres(postgres_server::fresh_database())
}

/// Defines one test per case and backend: `reopening` cases take a [`Backend`] (they
/// open its database more than once), the others a store. SQLite's in-memory
/// database cannot be reopened, so only the others run on it too.
macro_rules! on_every_backend {
    (reopening: [$($reopening:ident),* $(,)?], once: [$($once:ident),* $(,)?] $(,)?) => {
        mod sqlite_file {
            use super::Backend as _;
            $(#[test] fn $reopening() { super::$reopening(&super::sqlite_file()) })*
            $(#[test] fn $once() { super::$once(&*super::sqlite_file().open()) })*
        }
        mod sqlite_memory {
            $(#[test] fn $once() { super::$once(&super::SqliteStore::in_memory().unwrap()) })*
        }
        mod postgres {
            use super::Backend as _;
            $(#[test] fn $reopening() { super::$reopening(&super::postgres()) })*
            $(#[test] fn $once() { super::$once(&*super::postgres().open()) })*
        }
    };
}

/// Commits without any quota or room limit: what most tests need.
pub(super) trait CommitUnlimited {
    fn commit_unlimited(&self, changes: &[Change]) -> Result<Vec<Applied>, StoreError>;
}

impl<S: Store + ?Sized> CommitUnlimited for S {
    fn commit_unlimited(&self, changes: &[Change]) -> Result<Vec<Applied>, StoreError> {
        self.commit(changes, &StoragePolicy::UNLIMITED)
    }
}

pub(super) fn identity(user: &str) -> PublicIdentity {
    PublicIdentity {
        user: user.to_owned(),
        encryption_public_key: vec![1; 8].into(),
        signing_public_key: vec![2; 8].into(),
        signature: vec![3; 8].into(),
    }
}

// Key ids above i64::MAX, as random ones often are: they must come back unchanged.
pub(super) const K1: u64 = u64::MAX - 1;
pub(super) const K2: u64 = u64::MAX - 2;
pub(super) const K3: u64 = 3;

pub(super) fn sealed(key_id: u64, counter: u64) -> SealedMessage {
    SealedMessage {
        key_id,
        iteration: counter as u32,
        device: 1,
        ciphertext: format!("ciphertext {key_id}/{counter}").into_bytes().into(),
        signature: vec![9; 16].into(),
    }
}

pub(super) fn create(room: &str, owner: Option<&str>) -> Change {
    Change::CreateRoom {
        room: room.to_owned(),
        owner: owner.map(str::to_owned),
    }
}

pub(super) fn join(room: &str, user: &str, seq: u64) -> Change {
    Change::AddMember {
        room: room.to_owned(),
        user: user.to_owned(),
        seq,
    }
}

pub(super) fn send(room: &str, seq: u64, sender: &str, key_id: u64, counter: u64) -> Change {
    Change::AppendMessage {
        room: room.to_owned(),
        seq,
        sender: sender.to_owned(),
        sealed: sealed(key_id, counter),
    }
}

pub(super) fn wrap(room: &str, seq: u64, sender: &str, key_id: u64, recipients: &[&str]) -> Change {
    Change::AppendSenderKeys {
        room: room.to_owned(),
        seq,
        sender: sender.to_owned(),
        key_id,
        keys: recipients
            .iter()
            .map(|recipient| WrappedKey {
                recipient: (*recipient).to_owned(),
                wrapped_key: crate::store::copy::encode(
                    &DistributionHeader {
                        key_id,
                        ..Default::default()
                    },
                    WrappedChainKey {
                        recipient: (*recipient).to_owned(),
                        wrapped: format!("{key_id} for {recipient}").into_bytes().into(),
                        ..Default::default()
                    },
                    0,
                    1,
                    Vec::new(),
                ),
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
                assert_eq!(*stored, sealed(stored.key_id, stored.iteration.into()));
                format!(
                    "{} message {} {}/{}",
                    message.seq, message.sender, stored.key_id, stored.iteration
                )
            }
            Entry::SenderKey(key) => {
                assert_eq!(key.room, room);
                let signature = format!("signed by {}", key.sender);
                assert_eq!(key.signature, signature.as_bytes());
                let key_id = key.header.as_ref().unwrap().key_id;
                let wrapped =
                    String::from_utf8(key.copy.as_ref().unwrap().wrapped.to_vec()).unwrap();
                let recipient = wrapped.strip_prefix(&format!("{key_id} for ")).unwrap();
                format!("{} key {} {key_id} for {recipient}", key.seq, key.sender)
            }
        })
        .collect()
}

/// Checks every usage counter against the rows it counts.
pub(super) fn assert_usage_is_exact(store: &dyn TestStore) {
    let query = |sql: &str| store.query(sql);
    assert_eq!(
        query(
            "SELECT name, CAST(message_count AS TEXT), CAST(message_bytes AS TEXT) FROM rooms \
             ORDER BY name"
        ),
        query(
            "SELECT name, CAST(COUNT(seq) AS TEXT), \
             CAST(COALESCE(SUM(length(sealed)), 0) AS TEXT) FROM rooms \
             LEFT JOIN messages ON room = name GROUP BY name ORDER BY name"
        ),
        "rooms"
    );
    assert_eq!(
        query(
            "SELECT \"user\", CAST(message_count AS TEXT), CAST(stored_bytes AS TEXT) \
             FROM identities ORDER BY \"user\""
        ),
        query(
            "SELECT \"user\", \
             CAST((SELECT COUNT(*) FROM messages WHERE sender = \"user\") AS TEXT), \
             CAST((SELECT COALESCE(SUM(length(sealed)), 0) FROM messages \
                   WHERE sender = \"user\") \
             + (SELECT COALESCE(SUM(length(wrapped_key) + length(signature)), 0) \
                FROM sender_keys WHERE sender = \"user\") AS TEXT) \
             FROM identities ORDER BY \"user\""
        ),
        "identities"
    );
    assert_eq!(
        query("SELECT CAST(stored_bytes AS TEXT) FROM usage"),
        query(
            "SELECT CAST((SELECT COALESCE(SUM(length(sealed)), 0) FROM messages) \
             + (SELECT COALESCE(SUM(length(wrapped_key) + length(signature)), 0) \
                FROM sender_keys) AS TEXT)"
        ),
        "total"
    );
}

/// The rows of `table` in `room`.
pub(super) fn count(store: &dyn TestStore, table: &str, room: &str) -> i64 {
    store.query(&format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM {table} WHERE room = '{room}'"
    ))[0][0]
        .parse()
        .unwrap()
}

fn registrations_survive_reopening_and_are_not_duplicated(backend: &dyn Backend) {
    let store = backend.open();
    store.register(&identity("alice"), None).unwrap();
    store.register(&identity("bob"), None).unwrap();
    assert!(store.register(&identity("alice"), None).is_err());
    drop(store);
    let reopened = backend.open();
    assert_eq!(
        reopened.identities().unwrap(),
        [identity("alice"), identity("bob")]
    );
}

fn rooms_and_their_logs_survive_reopening(backend: &dyn Backend) {
    let store = backend.open();
    let applied = store
        .commit_unlimited(&[
            create("lobby", None),
            create("secret", Some("alice")),
            Change::Invite {
                room: "secret".into(),
                user: "carol".into(),
                invitation: bytes::Bytes::from_static(b"signed"),
            },
            Change::Invite {
                room: "secret".into(),
                user: "bob".into(),
                invitation: bytes::Bytes::from_static(b"signed"),
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

    let reopened = backend.open();
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
                removals: vec![],
                messages: 0,
                message_bytes: 0,
            },
            StoredRoom {
                name: "secret".into(),
                owner: Some("alice".into()),
                last_seq: 4,
                members: vec![("alice".into(), 1), ("bob".into(), 2)],
                invited: vec![("carol".into(), Some(bytes::Bytes::from_static(b"signed")))],
                removals: vec![],
                messages: 1,
                message_bytes: size_of(K1, 0),
            },
        ]
    );
    assert_eq!(
        reopened.entries_after("secret", "bob", 0, 10, 10).unwrap(),
        before
    );
}

fn a_batch_with_a_failing_change_leaves_nothing(store: &dyn TestStore) {
    {
        store
            .commit_unlimited(&[create("lobby", None), join("lobby", "alice", 1)])
            .unwrap();
        let before = store.rooms().unwrap();
        let error = store
            .commit_unlimited(&[
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
        store.commit_unlimited(&[join("lobby", "bob", 2)]).unwrap();
        assert_eq!(store.rooms().unwrap()[0].members.len(), 2);
    }
}

fn a_change_to_an_unknown_room_is_refused(store: &dyn TestStore) {
    {
        for change in [
            join("nowhere", "alice", 1),
            send("nowhere", 1, "alice", K1, 0),
        ] {
            let error = store.commit_unlimited(&[change]).unwrap_err().to_string();
            assert!(error.contains("\"nowhere\""), "{error}");
        }
        assert_eq!(store.rooms().unwrap(), []);
    }
}

fn a_sequence_number_beyond_i64_is_refused_and_a_bound_beyond_it_reads_all(store: &dyn TestStore) {
    {
        store.commit_unlimited(&[create("lobby", None)]).unwrap();
        let error = store
            .commit_unlimited(&[send("lobby", u64::MAX, "alice", K1, 0)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("beyond"), "{error}");
        store
            .commit_unlimited(&[send("lobby", 5, "alice", K1, 0)])
            .unwrap();
        let all = store.entries_after("lobby", "bob", 0, u64::MAX, usize::MAX);
        assert_eq!(
            lines("lobby", &all.unwrap()),
            [format!("5 message alice {K1}/0")]
        );
    }
}

fn a_resent_message_is_a_duplicate_of_the_first_and_stored_once(store: &dyn TestStore) {
    {
        store
            .commit_unlimited(&[create("lobby", None), send("lobby", 1, "alice", K1, 0)])
            .unwrap();
        // Same sender, key id and counter, even with another ciphertext.
        let mut resent = send("lobby", 2, "alice", K1, 0);
        if let Change::AppendMessage { sealed, .. } = &mut resent {
            sealed.ciphertext = b"other".to_vec().into();
        }
        assert_eq!(
            store.commit_unlimited(&[resent]).unwrap(),
            [Applied::Duplicate { seq: 1 }]
        );
        // Within one batch too; another sender or key id is not a duplicate.
        assert_eq!(
            store
                .commit_unlimited(&[
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
            store
                .commit_unlimited(&[send("lobby", 9, "bob", K1, 1)])
                .unwrap(),
            [Applied::Duplicate { seq: 3 }]
        );
        assert_eq!(store.rooms().unwrap()[0].last_seq, 9);
        assert_eq!(store.rooms().unwrap()[0].messages, 4);
        // A sequence number used twice is not a duplicate but an error.
        assert!(
            store
                .commit_unlimited(&[send("lobby", 4, "bob", K3, 0)])
                .is_err()
        );
        assert_usage_is_exact(store);
    }
}

/// alice, bob and carol in a room: messages, keys and self-wrapped copies.
fn busy_room(store: &dyn TestStore) {
    store
        .commit_unlimited(&[
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

fn entries_after_are_the_others_messages_and_the_keys_for_the_member(store: &dyn TestStore) {
    {
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
    }
}

fn senders_between_are_sorted_and_bounded(store: &dyn TestStore) {
    {
        busy_room(store);
        assert_eq!(
            store.senders_between("r", 0, 10).unwrap(),
            ["alice", "bob", "carol"]
        );
        assert_eq!(store.senders_between("r", 5, 9).unwrap(), ["bob", "carol"]);
        assert_eq!(store.senders_between("r", 10, 20).unwrap(), [""; 0]);
    }
}

fn keys_no_message_was_sealed_with_are_dropped_when_superseded(store: &dyn TestStore) {
    {
        busy_room(store);
        let before = count(store, "sender_keys", "r");
        // alice distributes a hundred keys to bob and carol and never uses them.
        for n in 0..100 {
            store
                .commit_unlimited(&[wrap("r", 11 + n, "alice", 1_000 + n, &["bob", "carol"])])
                .unwrap();
        }
        assert_eq!(count(store, "sender_keys", "r"), before + 2);
        // K1, which alice's messages were sealed with, is still there for history.
        let history = lines("r", &store.history("r", "bob", 0, 10).unwrap());
        assert!(
            history.contains(&format!("4 key alice {K1} for bob")),
            "{history:?}"
        );
        assert_usage_is_exact(store);
    }
}

fn keys_in_force_are_the_latest_per_other_sender_at_or_before_the_point(store: &dyn TestStore) {
    {
        busy_room(store);
        store
            .commit_unlimited(&[
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
    }
}

fn history_has_everyones_latest_messages_and_the_keys_they_were_sealed_with(store: &dyn TestStore) {
    {
        busy_room(store);
        // bob's key K2 copied for bob again, later: the latest copy counts.
        store
            .commit_unlimited(&[wrap("r", 11, "bob", K2, &["bob"])])
            .unwrap();
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
    }
}

fn a_removed_member_loses_the_keys_wrapped_for_it_and_only_those(store: &dyn TestStore) {
    {
        busy_room(store);
        store
            .commit_unlimited(&[Change::RemoveMember {
                room: "r".into(),
                user: "bob".into(),
                seq: 11,
                reason: LeaveReason::Left,
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
        assert_usage_is_exact(store);
    }
}

fn a_deleted_room_is_forgotten_entirely(store: &dyn TestStore) {
    {
        busy_room(store);
        store
            .commit_unlimited(&[
                create("kept", Some("dave")),
                join("kept", "dave", 1),
                Change::Invite {
                    room: "r".into(),
                    user: "erin".into(),
                    invitation: bytes::Bytes::from_static(b"signed"),
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
        store.commit_unlimited(&[create("r", None)]).unwrap();
        let rooms = store.rooms().unwrap();
        assert_eq!((rooms[1].name.as_str(), rooms[1].last_seq), ("r", 0));
        assert_eq!(store.history("r", "alice", 0, 100).unwrap(), []);
        assert_usage_is_exact(store);
    }
}

/// A policy that keeps `messages` messages and `bytes` bytes per room, and refuses
/// nothing.
fn room_limits(messages: u64, bytes: u64) -> StoragePolicy {
    StoragePolicy {
        max_messages_per_room: messages,
        max_room_bytes: bytes,
        ..StoragePolicy::UNLIMITED
    }
}

fn size_of(key_id: u64, counter: u64) -> u64 {
    sealed(key_id, counter).encoded_len() as u64
}

fn a_room_beyond_its_limits_forgets_exactly_its_oldest_messages(store: &dyn TestStore) {
    {
        busy_room(store);
        // Four messages are stored; a room of three keeps the latest three.
        let policy = room_limits(3, u64::MAX);
        assert_eq!(
            store
                .commit(&[send("r", 11, "bob", K2, 1)], &policy)
                .unwrap(),
            [Applied::Done]
        );
        assert_eq!(
            lines("r", &store.entries_after("r", "dave", 0, 11, 100).unwrap()),
            [
                format!("9 message carol {K3}/0"),
                format!("10 message alice {K1}/1"),
                format!("11 message bob {K2}/1"),
            ]
        );
        let room = &store.rooms().unwrap()[0];
        assert_eq!((room.messages, room.last_seq), (3, 11));
        // Trimming is not pruning: the keys stay.
        assert_eq!(count(store, "sender_keys", "r"), 7);
        // By bytes: room for two messages only.
        let two = size_of(K2, 1) + size_of(K1, 2);
        store
            .commit(&[send("r", 12, "alice", K1, 2)], &room_limits(100, two))
            .unwrap();
        assert_eq!(
            lines("r", &store.entries_after("r", "dave", 0, 12, 100).unwrap()),
            [
                format!("11 message bob {K2}/1"),
                format!("12 message alice {K1}/2"),
            ]
        );
        // A message alone over the room's bytes is still kept: the newest never goes.
        store
            .commit(&[send("r", 13, "carol", K3, 1)], &room_limits(100, 1))
            .unwrap();
        assert_eq!(store.rooms().unwrap()[0].messages, 1);
        assert_usage_is_exact(store);
    }
}

fn one_batch_of_many_messages_trims_counts_and_recognises_resends_as_one_at_a_time(
    store: &dyn TestStore,
) {
    {
        store.register(&identity("alice"), None).unwrap();
        store.register(&identity("bob"), None).unwrap();
        store
            .commit_unlimited(&[create("r", None), create("s", None)])
            .unwrap();
        let policy = room_limits(3, u64::MAX);
        // Two rooms, two senders, a join in the middle (which writes what the batch
        // counted so far, forgetting message 1), a resend of a message still kept, one
        // of a message the batch has yet to forget (2), and one of a message it forgot (1).
        let applied = store
            .commit(
                &[
                    send("r", 1, "alice", K1, 0),
                    send("s", 1, "bob", K2, 0),
                    send("r", 2, "bob", K2, 1),
                    send("r", 3, "alice", K1, 1),
                    send("r", 4, "alice", K1, 2),
                    join("r", "carol", 5),
                    send("r", 6, "bob", K2, 2),
                    send("r", 7, "alice", K1, 2),
                    send("s", 2, "alice", K1, 3),
                    send("r", 8, "alice", K1, 4),
                    send("r", 9, "bob", K2, 1),
                    send("r", 10, "alice", K1, 0),
                ],
                &policy,
            )
            .unwrap();
        assert_eq!(
            applied,
            [
                Applied::Done,
                Applied::Done,
                Applied::Done,
                Applied::Done,
                Applied::Done,
                Applied::Done,
                Applied::Done,
                Applied::Duplicate { seq: 4 },
                Applied::Done,
                Applied::Done,
                // Forgotten by this batch: stored anew, as one batch a message.
                Applied::Done,
                Applied::Done,
            ]
        );
        assert_eq!(
            lines("r", &store.entries_after("r", "dave", 0, 10, 100).unwrap()),
            [
                format!("8 message alice {K1}/4"),
                format!("9 message bob {K2}/1"),
                format!("10 message alice {K1}/0"),
            ]
        );
        let rooms = store.rooms().unwrap();
        assert_eq!((rooms[0].messages, rooms[0].last_seq), (3, 10));
        assert_eq!((rooms[1].messages, rooms[1].last_seq), (2, 2));
        assert_usage_is_exact(store);
        // The next batch goes on from what this one wrote.
        store
            .commit(&[send("r", 11, "bob", K2, 3)], &policy)
            .unwrap();
        assert_eq!(
            lines("r", &store.entries_after("r", "dave", 0, 11, 100).unwrap()),
            [
                format!("9 message bob {K2}/1"),
                format!("10 message alice {K1}/0"),
                format!("11 message bob {K2}/3"),
            ]
        );
        assert_usage_is_exact(store);
    }
}

fn a_resent_message_at_a_full_room_deletes_nothing(store: &dyn TestStore) {
    {
        store.commit_unlimited(&[create("r", None)]).unwrap();
        let policy = room_limits(5, u64::MAX);
        for counter in 0..5 {
            store
                .commit(&[send("r", counter + 1, "alice", K1, counter)], &policy)
                .unwrap();
        }
        // The fifth, resent three times (its acknowledgement was lost).
        for seq in 6..9 {
            assert_eq!(
                store
                    .commit(&[send("r", seq, "alice", K1, 4)], &policy)
                    .unwrap(),
                [Applied::Duplicate { seq: 5 }]
            );
        }
        let kept = store.entries_after("r", "bob", 0, 10, 100).unwrap();
        assert_eq!(
            lines("r", &kept),
            (0..5)
                .map(|n| format!("{} message alice {K1}/{n}", n + 1))
                .collect::<Vec<_>>()
        );
        assert_eq!(store.rooms().unwrap()[0].messages, 5);
        assert_usage_is_exact(store);
    }
}

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

pub(super) fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

fn pruning_by_age_forgets_old_messages_and_keeps_the_keys_in_force(store: &dyn TestStore) {
    {
        busy_room(store);
        store
            .commit_unlimited(&[wrap("r", 11, "alice", K2, &["bob"])])
            .unwrap();
        let retention = StoragePolicy {
            max_age: Some(DAY),
            max_messages_per_room: 100,
            ..StoragePolicy::UNLIMITED
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
        assert_usage_is_exact(store);
    }
}

fn pruning_by_count_keeps_the_latest_messages_and_the_keys_they_need(store: &dyn TestStore) {
    {
        store
            .commit_unlimited(&[
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
        let keep = |max_messages_per_room| StoragePolicy {
            max_messages_per_room,
            ..StoragePolicy::UNLIMITED
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
        assert_usage_is_exact(store);
    }
}

fn an_unreadable_stored_message_is_an_error_naming_it(store: &dyn TestStore) {
    store
        .commit_unlimited(&[create("lobby", None), send("lobby", 1, "alice", K1, 0)])
        .unwrap();
    store.execute_sql(&format!("UPDATE messages SET sealed = {}", store.garbage()));
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

fn a_key_superseded_before_the_point_is_not_in_force_there_even_once_dropped(
    store: &dyn TestStore,
) {
    {
        busy_room(store);
        // alice rotates twice without sending: K2 at 11, K3 at 12. K2 sealed nothing,
        // so it is dropped when K3 supersedes it.
        store
            .commit_unlimited(&[
                wrap("r", 11, "alice", K2, &["bob"]),
                wrap("r", 12, "alice", K3, &["bob"]),
            ])
            .unwrap();
        let at = |seq| lines("r", &store.keys_in_force("r", "bob", seq).unwrap());
        // At 11 alice's key in force was K2, which opens nothing: K1, superseded there,
        // must not come back as if it were in force (the client would take it for a
        // replay of an old key).
        assert_eq!(at(11), [""; 0]);
        assert_eq!(at(10), [format!("4 key alice {K1} for bob")]);
        assert_eq!(at(12), [format!("12 key alice {K3} for bob")]);
        // A message sealed with K1 after the point (sent before alice saw her own
        // rotation) still needs it.
        store
            .commit_unlimited(&[send("r", 13, "alice", K1, 2)])
            .unwrap();
        assert_eq!(
            at(12),
            [
                format!("4 key alice {K1} for bob"),
                format!("12 key alice {K3} for bob")
            ]
        );
        assert_usage_is_exact(store);
    }
}

fn a_message_beyond_its_senders_quota_is_refused_and_its_number_used_up(store: &dyn TestStore) {
    {
        store.register(&identity("alice"), None).unwrap();
        store.register(&identity("bob"), None).unwrap();
        store
            .commit_unlimited(&[create("r", None), create("s", None)])
            .unwrap();
        let two = size_of(K1, 0) + size_of(K1, 1);
        let user_quota = StoragePolicy {
            max_user_bytes: two,
            ..StoragePolicy::UNLIMITED
        };
        let applied = store
            .commit(
                &[
                    send("r", 1, "alice", K1, 0),
                    send("s", 1, "alice", K1, 1),
                    send("r", 2, "alice", K1, 2),
                    send("r", 3, "bob", K1, 0),
                    // A resend of what is stored is still acknowledged.
                    send("s", 2, "alice", K1, 1),
                ],
                &user_quota,
            )
            .unwrap();
        assert_eq!(
            applied,
            [
                Applied::Done,
                Applied::Done,
                Applied::OverQuota(Quota::User { limit: two }),
                Applied::Done,
                Applied::Duplicate { seq: 1 },
            ]
        );
        let rooms = store.rooms().unwrap();
        assert_eq!((rooms[0].messages, rooms[0].last_seq), (2, 3));
        assert_eq!((rooms[1].messages, rooms[1].last_seq), (1, 2));
        // A refused message left nothing behind, not even what its room trimmed.
        assert_usage_is_exact(store);
    }
}

fn a_member_posting_alone_is_trimmed_by_its_room_not_refused(store: &dyn TestStore) {
    {
        store.register(&identity("alice"), None).unwrap();
        store.commit_unlimited(&[create("r", None)]).unwrap();
        // The room keeps two of alice's messages, which is also all her quota allows.
        let two = size_of(K1, 1) + size_of(K1, 2);
        let policy = StoragePolicy {
            max_room_bytes: two,
            max_user_bytes: two,
            ..StoragePolicy::UNLIMITED
        };
        for counter in 1..=5 {
            let applied = store
                .commit(&[send("r", counter, "alice", K1, counter)], &policy)
                .unwrap();
            assert_eq!(applied, [Applied::Done], "message {counter}");
        }
        assert_eq!(
            lines("r", &store.entries_after("r", "bob", 0, 10, 10).unwrap()),
            [
                format!("4 message alice {K1}/4"),
                format!("5 message alice {K1}/5")
            ]
        );
        assert_usage_is_exact(store);
    }
}

fn a_full_store_forgets_its_oldest_messages_whatever_their_room(store: &dyn TestStore) {
    {
        store
            .commit_unlimited(&[create("old", None), create("new", None)])
            .unwrap();
        let three = size_of(K1, 1) + size_of(K1, 2) + size_of(K1, 3);
        let policy = StoragePolicy {
            max_store_bytes: three,
            ..StoragePolicy::UNLIMITED
        };
        for counter in 1..=2 {
            store
                .commit(&[send("old", counter, "alice", K1, counter)], &policy)
                .unwrap();
        }
        for counter in 3..=5 {
            let applied = store
                .commit(&[send("new", counter, "bob", K1, counter)], &policy)
                .unwrap();
            assert_eq!(applied, [Applied::Done]);
        }
        assert_eq!(store.entries_after("old", "carol", 0, 10, 10).unwrap(), []);
        assert_eq!(
            lines(
                "new",
                &store.entries_after("new", "carol", 0, 10, 10).unwrap()
            ),
            [
                format!("3 message bob {K1}/3"),
                format!("4 message bob {K1}/4"),
                format!("5 message bob {K1}/5")
            ]
        );
        assert_usage_is_exact(store);
    }
}

fn a_resent_key_keeps_the_first_copy_messages_after_it_need(store: &dyn TestStore) {
    {
        store
            .commit_unlimited(&[
                create("r", None),
                wrap("r", 3, "alice", K1, &["bob"]),
                wrap("r", 5, "alice", K2, &["bob"]),
                send("r", 6, "alice", K2, 0),
                send("r", 7, "alice", K2, 1),
                // The distribution of K2 again, as a client resends what it could not
                // see acknowledged.
                wrap("r", 8, "alice", K2, &["bob"]),
            ])
            .unwrap();
        // bob, back from 4, needs K2 before the messages at 6 and 7 (K1 sealed nothing
        // and went when K2 came).
        let mut caught_up = store.keys_in_force("r", "bob", 4).unwrap();
        caught_up.extend(store.entries_after("r", "bob", 4, 8, 10).unwrap());
        assert_eq!(
            lines("r", &caught_up),
            [
                format!("5 key alice {K2} for bob"),
                format!("6 message alice {K2}/0"),
                format!("7 message alice {K2}/1"),
                format!("8 key alice {K2} for bob"),
            ]
        );
        assert_usage_is_exact(store);
    }
}

fn dormant_users_and_rooms_are_those_nobody_used_and_nothing_needs(store: &dyn TestStore) {
    {
        for user in ["alice", "bob", "carol", "dave"] {
            store.register(&identity(user), None).unwrap();
        }
        store
            .commit_unlimited(&[
                create("open", None),
                join("open", "bob", 1),
                send("open", 2, "bob", K1, 0),
                create("owned", Some("carol")),
                join("owned", "carol", 1),
            ])
            .unwrap();
        let later = since_epoch() + DAY;
        // alice and dave did nothing; bob has a message stored; carol owns a room.
        let dormant = store.dormant(later).unwrap();
        assert_eq!(dormant.users, ["alice", "dave"]);
        assert_eq!(dormant.rooms, ["open", "owned"]);
        assert_eq!(
            store.dormant(since_epoch() - DAY).unwrap(),
            Dormant::default()
        );
        // A session ending is a use.
        std::thread::sleep(Duration::from_millis(5));
        let just_before = since_epoch();
        std::thread::sleep(Duration::from_millis(5));
        store
            .commit_unlimited(&[Change::Seen {
                user: "dave".into(),
            }])
            .unwrap();
        assert_eq!(store.dormant(just_before).unwrap().users, ["alice"]);
        assert_eq!(store.dormant(later).unwrap().users, ["alice", "dave"]);
    }
}

fn a_deleted_identity_takes_its_keys_invitations_and_name_with_it(store: &dyn TestStore) {
    {
        for user in ["alice", "bob"] {
            store.register(&identity(user), None).unwrap();
        }
        store
            .commit_unlimited(&[
                create("r", Some("bob")),
                join("r", "bob", 1),
                join("r", "alice", 2),
                wrap("r", 3, "alice", K1, &["bob", "alice"]),
                wrap("r", 4, "bob", K2, &["alice"]),
                Change::Invite {
                    room: "r".into(),
                    user: "alice".into(),
                    invitation: bytes::Bytes::from_static(b"signed"),
                },
                Change::RemoveMember {
                    room: "r".into(),
                    user: "alice".into(),
                    seq: 5,
                    reason: LeaveReason::Reclaimed,
                },
                Change::DeleteIdentity {
                    user: "alice".into(),
                },
            ])
            .unwrap();
        assert_eq!(
            store
                .identities()
                .unwrap()
                .iter()
                .map(|identity| identity.user.as_str())
                .collect::<Vec<_>>(),
            ["bob"]
        );
        assert_eq!(count(store, "sender_keys", "r"), 0);
        assert_eq!(count(store, "invitations", "r"), 0);
        assert_usage_is_exact(store);
        // The name can be registered again.
        store.register(&identity("alice"), None).unwrap();
    }
}

fn registration_tokens_are_used_up_expire_and_can_be_revoked(store: &dyn TestStore) {
    {
        let twice = store.create_registration_token(Some(2), None).unwrap();
        let expired = store
            .create_registration_token(None, Some(millis(since_epoch()) as u64 - 1))
            .unwrap();
        let forever = store.create_registration_token(None, None).unwrap();
        assert_eq!(twice.len(), 2 * TOKEN_LEN);
        store.register(&identity("a"), Some(&twice)).unwrap();
        store.register(&identity("b"), Some(&twice)).unwrap();
        for (user, token) in [("c", twice.as_str()), ("d", &expired), ("e", "made-up")] {
            assert!(
                matches!(
                    store.register(&identity(user), Some(token)),
                    Err(StoreError::RegistrationToken)
                ),
                "{user}"
            );
        }
        store.register(&identity("f"), Some(&forever)).unwrap();
        let listed = store.registration_tokens().unwrap();
        assert_eq!(listed.len(), 3);
        let used: Vec<(Option<u64>, u64)> = listed
            .iter()
            .map(|token| (token.uses_left, token.used))
            .collect();
        assert!(used.contains(&(Some(0), 2)), "{used:?}");
        assert!(used.contains(&(None, 1)), "{used:?}");
        // Nothing of the secret is listed.
        assert!(listed.iter().all(|token| !forever.contains(&token.id)));
        let forever_id = listed
            .iter()
            .find(|token| token.uses_left.is_none() && token.used == 1)
            .unwrap()
            .id
            .clone();
        assert_eq!(store.revoke_registration_tokens("").unwrap(), 0);
        assert_eq!(store.revoke_registration_tokens(&forever_id).unwrap(), 1);
        assert!(store.register(&identity("g"), Some(&forever)).is_err());
        // A refused token registers nothing.
        assert_eq!(store.identities().unwrap().len(), 3);
    }
}

/// A change the store numbers (`seq: 0`).
fn numbered(change: Change) -> Change {
    match change {
        Change::AddMember { room, user, .. } => Change::AddMember { room, user, seq: 0 },
        Change::AppendMessage {
            room,
            sender,
            sealed,
            ..
        } => Change::AppendMessage {
            room,
            seq: 0,
            sender,
            sealed,
        },
        Change::AppendSenderKeys {
            room,
            sender,
            key_id,
            keys,
            ..
        } => Change::AppendSenderKeys {
            room,
            seq: 0,
            sender,
            key_id,
            keys,
        },
        other => other,
    }
}

fn stores_sharing_a_database_number_a_rooms_log_once_and_replay_it_in_order(backend: &dyn Backend) {
    let (a, b) = (backend.open(), backend.open());
    let applied = a
        .commit_unlimited(&[create("r", Some("alice")), numbered(join("r", "alice", 0))])
        .unwrap();
    assert_eq!(applied, [Applied::Done, Applied::Stored { seq: 1 }]);
    let joined = b
        .commit_unlimited(&[numbered(join("r", "bob", 0))])
        .unwrap();
    assert_eq!(joined, [Applied::Stored { seq: 2 }]);
    // Two writers at once, each numbering its own: every number once, none left out.
    let write = |store: Arc<dyn TestStore>, sender: &'static str, key_id: u64| {
        std::thread::spawn(move || {
            let mut seqs = Vec::new();
            for iteration in 0..25 {
                let mut changes = vec![numbered(send("r", 0, sender, key_id, iteration * 2))];
                changes.push(numbered(send("r", 0, sender, key_id, iteration * 2 + 1)));
                for applied in store.commit_unlimited(&changes).unwrap() {
                    match applied {
                        Applied::Stored { seq } => seqs.push(seq),
                        other => panic!("expected a number, got {other:?}"),
                    }
                }
            }
            seqs
        })
    };
    let (from_a, from_b) = (write(a.clone(), "alice", K1), write(b.clone(), "bob", K2));
    let (from_a, from_b) = (from_a.join().unwrap(), from_b.join().unwrap());
    assert!(
        from_a.is_sorted() && from_b.is_sorted(),
        "{from_a:?} {from_b:?}"
    );
    let mut all: Vec<u64> = from_a.into_iter().chain(from_b).collect();
    all.sort_unstable();
    assert_eq!(all, (3..=102).collect::<Vec<_>>());
    // A resend takes no number.
    let resent = a
        .commit_unlimited(&[numbered(send("r", 0, "alice", K1, 0))])
        .unwrap();
    assert!(
        matches!(resent[..], [Applied::Duplicate { .. }]),
        "{resent:?}"
    );
    let keys = b
        .commit_unlimited(&[numbered(wrap("r", 0, "bob", K2, &["alice", "bob"]))])
        .unwrap();
    assert_eq!(keys, [Applied::Stored { seq: 103 }]);
    let removal = bytes::Bytes::from_static(b"signed removal");
    let kicked = a
        .commit_unlimited(&[
            Change::RecordRemoval {
                room: "r".into(),
                user: "bob".into(),
                removal: removal.clone(),
            },
            Change::RemoveMember {
                room: "r".into(),
                user: "bob".into(),
                seq: 0,
                reason: LeaveReason::Kicked,
            },
        ])
        .unwrap();
    assert_eq!(kicked, [Applied::Done, Applied::Stored { seq: 104 }]);
    assert_eq!(b.heads(None).unwrap(), [("r".to_owned(), 104)]);
    assert_eq!(b.heads(Some("r")).unwrap(), [("r".to_owned(), 104)]);
    assert_eq!(b.heads(Some("nowhere")).unwrap(), []);

    // What another relay replays: every entry, in order, whoever committed it.
    let log = b.log_between("r", 0, 104).unwrap();
    assert_eq!(
        log.iter().map(LogEntry::seq).collect::<Vec<_>>(),
        (1..=104).collect::<Vec<_>>()
    );
    assert_eq!(
        log[..2],
        [
            LogEntry::Joined {
                seq: 1,
                user: "alice".into()
            },
            LogEntry::Joined {
                seq: 2,
                user: "bob".into()
            }
        ]
    );
    match &log[102] {
        LogEntry::SenderKeys { seq, sender, keys } => {
            assert_eq!((*seq, sender.as_str()), (103, "bob"));
            let recipients: Vec<&str> = keys.iter().map(|key| key.recipient.as_str()).collect();
            // bob's own copy went with his membership.
            assert_eq!(recipients, ["alice"]);
        }
        other => panic!("expected bob's keys, got {other:?}"),
    }
    assert_eq!(
        log[103],
        LogEntry::Left {
            seq: 104,
            user: "bob".into(),
            reason: LeaveReason::Kicked,
            removal: Some(removal),
        }
    );
    // Bounded at both ends, as `entries_after`.
    assert_eq!(a.log_between("r", 100, 102).unwrap(), log[100..102]);
    assert_eq!(a.log_between("r", 104, 200).unwrap(), []);
    assert_eq!(
        a.room("r").unwrap().map(|room| room.members),
        Some(vec![("alice".to_owned(), 1)])
    );
    assert_eq!(a.room("nowhere").unwrap(), None);
}

on_every_backend! {
    reopening: [
        stores_sharing_a_database_number_a_rooms_log_once_and_replay_it_in_order,
        registrations_survive_reopening_and_are_not_duplicated,
        rooms_and_their_logs_survive_reopening,
    ],
    once: [
        a_batch_with_a_failing_change_leaves_nothing,
        a_change_to_an_unknown_room_is_refused,
        a_sequence_number_beyond_i64_is_refused_and_a_bound_beyond_it_reads_all,
        a_resent_message_is_a_duplicate_of_the_first_and_stored_once,
        entries_after_are_the_others_messages_and_the_keys_for_the_member,
        senders_between_are_sorted_and_bounded,
        keys_no_message_was_sealed_with_are_dropped_when_superseded,
        keys_in_force_are_the_latest_per_other_sender_at_or_before_the_point,
        history_has_everyones_latest_messages_and_the_keys_they_were_sealed_with,
        a_removed_member_loses_the_keys_wrapped_for_it_and_only_those,
        a_deleted_room_is_forgotten_entirely,
        a_room_beyond_its_limits_forgets_exactly_its_oldest_messages,
        a_resent_message_at_a_full_room_deletes_nothing,
        one_batch_of_many_messages_trims_counts_and_recognises_resends_as_one_at_a_time,
        pruning_by_age_forgets_old_messages_and_keeps_the_keys_in_force,
        pruning_by_count_keeps_the_latest_messages_and_the_keys_they_need,
        an_unreadable_stored_message_is_an_error_naming_it,
        a_key_superseded_before_the_point_is_not_in_force_there_even_once_dropped,
        a_message_beyond_its_senders_quota_is_refused_and_its_number_used_up,
        a_member_posting_alone_is_trimmed_by_its_room_not_refused,
        a_full_store_forgets_its_oldest_messages_whatever_their_room,
        a_resent_key_keeps_the_first_copy_messages_after_it_need,
        dormant_users_and_rooms_are_those_nobody_used_and_nothing_needs,
        a_deleted_identity_takes_its_keys_invitations_and_name_with_it,
        registration_tokens_are_used_up_expire_and_can_be_revoked,
    ],
}

#[test]
fn a_postgres_url_is_taken_whatever_the_case_of_its_scheme_and_nothing_else_is() {
    assert_eq!(
        super::postgres_url("POSTGRES://u:pw@h/db").unwrap(),
        "postgres://u:pw@h/db"
    );
    assert_eq!(
        super::postgres_url("PostgreSQL://h/db").unwrap(),
        "postgresql://h/db"
    );
    for other in ["mysql://u:pw@h/db", "postgres:/h", "host=h password=pw"] {
        let error = super::postgres_url(other).err().unwrap().to_string();
        assert!(!error.contains("pw"), "{error}");
    }
}
