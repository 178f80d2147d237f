//! What only the PostgreSQL backend has: its schema-version table, a server that is
//! unreachable at start-up, and one that goes away and comes back. What every backend
//! does alike is tested in `store/tests.rs`.

use super::*;
use crate::store::Applied;
use crate::store::tests::postgres_server::{cut_off, fresh_database, let_back};
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
    cut_off(database);
    let error = store
        .commit_unlimited(&[send("lobby", 1, "alice", K1, 0)])
        .unwrap_err();
    assert!(matches!(error, StoreError::Database(_)), "{error}");
    assert!(store.rooms().is_err());
    let_back(database);
    // The pool connects again by itself; the failed commit left nothing.
    assert_eq!(store.rooms().unwrap()[0].last_seq, 0);
    store
        .commit_unlimited(&[send("lobby", 2, "alice", K1, 0)])
        .unwrap();
    let room = &store.rooms().unwrap()[0];
    assert_eq!((room.last_seq, room.messages), (2, 1));
}

#[test]
fn relays_sharing_the_database_store_nothing_from_a_sender_another_removed() {
    let url = fresh_database();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Two relays' shared claims, as `chat-server --nats` takes them.
    let claims: Vec<_> = (0..2)
        .map(|_| {
            runtime
                .block_on(crate::store::claim::claim(
                    Some(&url),
                    dir.path(),
                    false,
                    true,
                ))
                .unwrap()
        })
        .collect();
    let store = |claim: &crate::store::claim::Claim| {
        let (url, fence) = (url.clone(), claim.fence());
        std::thread::spawn(move || PostgresStore::open(&url, fence).unwrap())
            .join()
            .unwrap()
    };
    let (a, b) = (store(&claims[0]), store(&claims[1]));
    let join = |user: &str| Change::AddMember {
        room: "r".into(),
        user: user.into(),
        seq: 0,
    };
    a.commit_unlimited(&[create("r", None), join("alice"), join("bob")])
        .unwrap();
    // Relay a removes bob; relay b, not told yet, takes a message of bob's, and alice's
    // sender keys for both of them.
    a.commit_unlimited(&[Change::RemoveMember {
        room: "r".into(),
        user: "bob".into(),
        seq: 0,
        reason: crate::proto::LeaveReason::Kicked,
    }])
    .unwrap();
    // Numbered by the store: `send` with seq 0.
    let from_bob = send("r", 0, "bob", K1, 0);
    let keys = |recipients: &[&str]| Change::AppendSenderKeys {
        room: "r".into(),
        seq: 0,
        sender: "alice".into(),
        key_id: 7,
        keys: recipients
            .iter()
            .map(|recipient| WrappedKey {
                recipient: (*recipient).to_owned(),
                wrapped_key: bytes::Bytes::from_static(b"wrapped"),
                signature: bytes::Bytes::from_static(b"signed"),
            })
            .collect(),
    };
    let applied = b
        .commit_unlimited(&[
            from_bob,
            keys(&["alice", "bob"]),
            join("bob"),
            keys(&["bob"]),
        ])
        .unwrap();
    // bob's message is refused; alice's first keys go to alice only; once bob joins
    // again (in the same batch), a key for him is kept.
    assert_eq!(
        applied,
        [
            Applied::NotMember,
            Applied::Stored { seq: 4 },
            Applied::Stored { seq: 5 },
            Applied::Stored { seq: 6 },
        ]
    );
    assert_eq!(
        b.test_query("SELECT CAST(seq AS TEXT), recipient FROM sender_keys ORDER BY seq"),
        [["4", "alice"], ["6", "bob"]]
    );
    assert_eq!(
        b.test_query("SELECT seq FROM messages"),
        Vec::<Vec<String>>::new()
    );
    // Two relays creating one room at once, each for a user joining it: the same kind
    // of room is one room; for another kind, nothing of the joining is done.
    b.commit_unlimited(&[create("r", None), join("carol")])
        .unwrap();
    let other_kind = b
        .commit_unlimited(&[create("r", Some("dave")), join("dave")])
        .unwrap();
    assert_eq!(other_kind, [Applied::Conflict, Applied::Conflict]);
    // A relay that saw the room empty deletes it only if nobody joined it since.
    let delete = Change::DeleteRoom { room: "r".into() };
    assert_eq!(a.commit_unlimited(&[delete]).unwrap(), [Applied::Done]);
    let members = a.room("r").unwrap().map(|room| room.members.len());
    assert_eq!(members, Some(3), "alice, bob and carol are still members");
    // A joining of a room another relay deleted meanwhile is not done either.
    let gone = b
        .commit_unlimited(&[Change::AddMember {
            room: "elsewhere".into(),
            user: "carol".into(),
            seq: 0,
        }])
        .unwrap();
    assert_eq!(gone, [Applied::Conflict]);
    // A user joining, or leaving, through two relays at once: the second is not done.
    let twice = b.commit_unlimited(&[join("carol")]).unwrap();
    assert_eq!(twice, [Applied::Conflict]);
    let leave = |user: &str| Change::RemoveMember {
        room: "r".into(),
        user: user.into(),
        seq: 0,
        reason: crate::proto::LeaveReason::Left,
    };
    let left = b
        .commit_unlimited(&[leave("carol"), leave("carol")])
        .unwrap();
    assert_eq!(left, [Applied::Stored { seq: 8 }, Applied::Conflict]);
}
