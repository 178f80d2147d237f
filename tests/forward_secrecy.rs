//! Forward secrecy against a later theft (issue 12, part 5), with real key material, a
//! real relay on disk, and a clock the test controls for the prekeys: whoever copies a
//! member's home directory and the relay's database at time T opens, with everything in
//! those copies, what the member received inside the window (a prekey's 7 days as the
//! current one plus the 14 days it is kept after), and nothing from before it.

mod common;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::{PATIENCE, TestServer};
use e2ee_chat::client::home::{contacts_path, load_or_create_identity};
use e2ee_chat::client::prekeys::{PrekeyPolicy, PrekeyRing};
use e2ee_chat::client::{self, ChatSession, Contacts, Event, RotationPolicy};
use e2ee_chat::proto::JoinRoom;
use e2ee_chat::protocol::now_ms;
use e2ee_chat::server::Limits;
use e2ee_chat::store::DATABASE_FILE;
use tokio::time::Instant;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;
const BITS: usize = 2048;

/// bob, from the files of `home` as chat-client keeps them, at the time `now_ms`.
async fn bob(url: &str, home: &Path, now_ms: u64) -> ChatSession {
    member(url, home, "bob", now_ms, RotationPolicy::default()).await
}

/// `user`, from the files of `home`, at the time `now_ms`, rotating on `rotation`.
async fn member(
    url: &str,
    home: &Path,
    user: &str,
    now_ms: u64,
    rotation: RotationPolicy,
) -> ChatSession {
    let (identity, _) = load_or_create_identity(home, user, BITS, |_| {}).unwrap();
    let identity = Arc::new(identity);
    let (prekeys, _) =
        PrekeyRing::load(home, user, BITS, PrekeyPolicy::default(), now_ms, || {}).unwrap();
    let channel = client::connect(url, None).await.unwrap();
    let credentials = client::login(channel.clone(), &identity, user)
        .await
        .unwrap();
    let join = JoinRoom {
        room: "lobby".to_owned(),
        create_private: false,
        after_seq: None,
    };
    let (session, _) = ChatSession::join(
        channel,
        identity,
        &credentials,
        join,
        Contacts::open(&contacts_path(home, user)).unwrap(),
        Arc::new(RwLock::new(prekeys)),
        rotation,
    )
    .await
    .unwrap();
    session
}

/// Applies bob's frames until `done` says so with the events so far.
async fn pump_until(
    session: &mut ChatSession,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + PATIENCE;
    let mut events = Vec::new();
    while !done(&events) {
        assert!(
            Instant::now() < deadline,
            "waited in vain; events {events:?}"
        );
        if let Ok(frame) =
            tokio::time::timeout(Duration::from_millis(20), session.next_frame()).await
        {
            let frame = frame.unwrap().expect("the relay ended the stream");
            events.extend(session.handle(frame).await.unwrap());
        }
    }
    events
}

/// Until the relay answered every frame bob sent.
async fn settle(session: &mut ChatSession) {
    let deadline = Instant::now() + PATIENCE;
    while session.unanswered() > 0 {
        assert!(Instant::now() < deadline, "the relay did not answer");
        if let Ok(frame) =
            tokio::time::timeout(Duration::from_millis(20), session.next_frame()).await
        {
            let frame = frame.unwrap().expect("the relay ended the stream");
            session.handle(frame).await.unwrap();
        }
    }
}

/// A copy of the relay's database as it is now (SQLite's `VACUUM INTO`, a consistent
/// snapshot while the relay runs), and of bob's home directory.
fn steal(relay_dir: &Path, home: &Path, into: &Path) {
    let relay_copy = into.join("relay");
    std::fs::create_dir_all(&relay_copy).unwrap();
    let database = rusqlite::Connection::open(relay_dir.join(DATABASE_FILE)).unwrap();
    database
        .execute(
            "VACUUM INTO ?1",
            [relay_copy.join(DATABASE_FILE).to_str().unwrap()],
        )
        .unwrap();
    copy_dir(home, &into.join("home"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Everything the copies in `stolen` open at `now_ms`: a relay on the copied database,
/// and bob's client on his copied files, asking for the room's whole history.
async fn what_the_copies_open(stolen: &Path, now_ms: u64) -> Vec<String> {
    let relay = TestServer::on_disk(&stolen.join("relay"), Limits::default()).await;
    let mut bob = bob(&relay.url, &stolen.join("home"), now_ms).await;
    bob.history("lobby", 100).await.unwrap();
    let events = pump_until(&mut bob, |events| {
        events
            .iter()
            .any(|event| matches!(event, Event::History { .. }))
    })
    .await;
    let Some(Event::History { messages, .. }) = events
        .into_iter()
        .find(|event| matches!(event, Event::History { .. }))
    else {
        unreachable!()
    };
    messages.into_iter().map(|message| message.text).collect()
}

#[tokio::test]
async fn stolen_files_open_what_is_inside_the_window_and_nothing_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let relay_dir = dir.path().join("relay");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&relay_dir).unwrap();
    let server = TestServer::on_disk(&relay_dir, Limits::default()).await;
    let day_0 = now_ms();

    let mut bob = bob(&server.url, &home, day_0).await;
    // alice replaces her sender key with every message (on schedule), as a busy sender
    // would over days: each new key must reach bob under his prekey of the day.
    let every_message = RotationPolicy {
        messages: 1,
        ..RotationPolicy::default()
    };
    let alice_home = dir.path().join("alice-home");
    let mut alice = member(&server.url, &alice_home, "alice", day_0, every_message).await;
    pump_until(&mut bob, |events| {
        events
            .iter()
            .any(|event| matches!(event, Event::MemberJoined { user, .. } if user == "alice"))
    })
    .await;
    bob.send_text("lobby", "bob on day 0").await.unwrap();
    settle(&mut bob).await;
    for text in ["alice on day 0", "alice on day 0, again"] {
        alice.send_text("lobby", text).await.unwrap();
    }
    settle(&mut alice).await;
    bob_reads(&mut bob, "alice on day 0, again").await;

    // Day 8: bob's client renews its prekey (and hands its sender key out anew under
    // the members' current prekeys, its own included).
    assert_eq!(bob.renew_prekeys(day_0 + 8 * DAY_MS).await.unwrap(), 0);
    bob.send_text("lobby", "bob on day 8").await.unwrap();
    settle(&mut bob).await;
    alice.send_text("lobby", "alice on day 8").await.unwrap();
    settle(&mut alice).await;
    bob_reads(&mut bob, "alice on day 8").await;

    // A theft on day 8 opens everything: the first prekey is retired, not yet erased.
    let early = tempfile::tempdir().unwrap();
    steal(&relay_dir, &home, early.path());
    assert_eq!(
        what_the_copies_open(early.path(), day_0 + 8 * DAY_MS).await,
        [
            "bob on day 0",
            "alice on day 0",
            "alice on day 0, again",
            "bob on day 8",
            "alice on day 8"
        ]
    );

    // Day 22: the first prekey has been retired for 14 days and is erased.
    let day_22 = day_0 + 22 * DAY_MS + 1;
    assert_eq!(bob.renew_prekeys(day_22).await.unwrap(), 1);
    settle(&mut bob).await;
    let late = tempfile::tempdir().unwrap();
    steal(&relay_dir, &home, late.path());
    // The relay still has the day-0 messages and their keys, wrapped under the erased
    // prekey: nothing in the copies unwraps them.
    assert_eq!(
        what_the_copies_open(late.path(), day_22).await,
        ["bob on day 8", "alice on day 8"]
    );
}

/// Until bob shows `text`.
async fn bob_reads(bob: &mut ChatSession, text: &str) {
    pump_until(bob, |events| {
        events
            .iter()
            .any(|event| matches!(event, Event::Message { text: shown, .. } if shown == text))
    })
    .await;
}
