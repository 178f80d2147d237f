//! Durable delivery: what the relay acknowledged is stored, members who were away catch
//! up, and neither a crash nor a restart loses or repeats a message.
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::PATIENCE;
use common::process::{
    BURST, ClientProcess, ServerProcess, burst_lines, burst_to_a_busy_reader_and_an_away_one,
    catch_up, join_and_go_away, rust_client, send_burst, sequence_faults, wait_for_line,
};
use e2ee_chat::bench::{self, Load};
use e2ee_chat::client::{ChatSession, ClientError, Contacts, Event, RotationPolicy};
use e2ee_chat::proto::{JoinRoom, PublicIdentity, SignedPrekey};
use e2ee_chat::server::Limits;
use e2ee_chat::store::{
    Applied, Change, Dormant, Entry, LogEntry, Pruned, RegistrationToken, SqliteStore,
    StoragePolicy, Store, StoreError, StoredRoom,
};
use tokio::time::Instant;

/// A member driven step by step, recording what it shows.
struct Chatter {
    user: String,
    room: String,
    url: String,
    session: ChatSession,
    /// Messages shown, in order: (seq, sender, text).
    shown: Vec<(u64, String, String)>,
    /// Everything else that happened.
    events: Vec<Event>,
    caught_up: bool,
    connected: bool,
}

impl Chatter {
    /// Logs in and joins `room`, catching up from `after_seq` if it is a member.
    async fn join(url: &str, user: &str, room: &str, after_seq: Option<u64>) -> Self {
        Self::join_all(url, user, &[room], after_seq).await
    }

    /// Logs in and joins all of `rooms` on one stream.
    async fn join_all(url: &str, user: &str, rooms: &[&str], after_seq: Option<u64>) -> Self {
        Self::join_rotating(url, user, rooms, after_seq, RotationPolicy::default()).await
    }

    /// Logs in and joins all of `rooms`, rotating our sender key as `rotation` says.
    async fn join_rotating(
        url: &str,
        user: &str,
        rooms: &[&str],
        after_seq: Option<u64>,
        rotation: RotationPolicy,
    ) -> Self {
        let room = rooms[0];
        let session = Self::open_rotating(url, user, rooms, after_seq, rotation)
            .await
            .unwrap();
        Self {
            user: user.to_owned(),
            room: room.to_owned(),
            url: url.to_owned(),
            session,
            shown: Vec::new(),
            events: Vec::new(),
            caught_up: false,
            connected: true,
        }
    }

    async fn open(
        url: &str,
        user: &str,
        rooms: &[&str],
        after_seq: Option<u64>,
    ) -> Result<ChatSession, ClientError> {
        Self::open_rotating(url, user, rooms, after_seq, RotationPolicy::default()).await
    }

    async fn open_rotating(
        url: &str,
        user: &str,
        rooms: &[&str],
        after_seq: Option<u64>,
        rotation: RotationPolicy,
    ) -> Result<ChatSession, ClientError> {
        let (channel, credentials) = common::log_in(url, user).await?;
        let joins = rooms
            .iter()
            .map(|room| JoinRoom {
                room: (*room).to_owned(),
                create_private: false,
                after_seq,
            })
            .collect();
        let identity = common::identity(user);
        let (session, _) = ChatSession::open(
            channel,
            identity,
            &credentials,
            joins,
            Contacts::in_memory(),
            common::prekeys(user),
            rotation,
        )
        .await?;
        Ok(session)
    }

    async fn say(&mut self, text: &str) {
        self.session.send_text(&self.room, text).await.unwrap();
    }

    async fn say_in(&mut self, room: &str, text: &str) {
        self.session.send_text(room, text).await.unwrap();
    }

    /// Applies frames until none has come for `quiet`, or the stream ends.
    async fn pump(&mut self, quiet: Duration) {
        while self.connected {
            match tokio::time::timeout(quiet, self.session.next_frame()).await {
                Err(_) => return,
                Ok(Ok(Some(frame))) => {
                    for event in self.session.handle(frame).await.unwrap() {
                        self.record(event);
                    }
                }
                Ok(_) => self.connected = false,
            }
        }
    }

    /// Applies frames until `done` holds.
    async fn pump_until(&mut self, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{} waited in vain; shown {:?}, events {:?}",
                self.user,
                self.shown,
                self.events
            );
            self.pump(Duration::from_millis(20)).await;
        }
    }

    fn record(&mut self, event: Event) {
        match event {
            Event::Message {
                seq, sender, text, ..
            } => self.shown.push((seq, sender, text)),
            Event::CaughtUp { .. } => self.caught_up = true,
            Event::Warning(warning) => panic!("{}: unexpected warning: {warning}", self.user),
            Event::Refused { message, .. } => panic!("{}: refused: {message}", self.user),
            other => self.events.push(other),
        }
    }

    /// Comes back on a new stream (logging in again), retrying while the server is away.
    async fn reconnect(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let attempt = async {
                let (channel, credentials) = common::log_in(&self.url, &self.user).await?;
                self.session.reconnect(channel, &credentials).await
            };
            match attempt.await {
                Ok(events) => {
                    for event in events {
                        self.record(event);
                    }
                    self.connected = true;
                    self.caught_up = false;
                    return;
                }
                Err(error) => {
                    assert!(Instant::now() < deadline, "{}: {error}", self.user);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Waits until `user` is a member, so that it has our key.
    async fn sees_member(&mut self, user: &str) {
        self.pump_until(|me| me.session.members(&me.room).iter().any(|m| m == user))
            .await;
    }

    fn texts(&self) -> Vec<&str> {
        self.shown
            .iter()
            .map(|(_, _, text)| text.as_str())
            .collect()
    }

    /// Each message shown once, each sender's in increasing sequence order. (Across
    /// senders a message that waited for its sender's key may come after later ones.)
    fn assert_once_in_order(&self) {
        let mut texts = HashSet::new();
        let mut last = std::collections::HashMap::new();
        for (seq, sender, _) in &self.shown {
            let previous = last.insert(sender, *seq).unwrap_or(0);
            assert!(previous < *seq, "{}: {:?}", self.user, self.shown);
        }
        for (_, _, text) in &self.shown {
            assert!(texts.insert(text), "{} showed {text:?} twice", self.user);
        }
    }
}

#[tokio::test]
async fn an_offline_member_reads_what_it_missed_in_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::on_disk(dir.path(), Limits::default()).await;
    let mut alice = Chatter::join(&server.url, "alice", "lobby", None).await;
    let mut bob = Chatter::join(&server.url, "bob", "lobby", None).await;
    alice.sees_member("bob").await;
    alice.say("before").await;
    bob.pump_until(|bob| bob.shown.len() == 1).await;
    let saved = bob.session.last_seq("lobby");
    drop(bob);

    for text in ["one", "two", "three"] {
        alice.say(text).await;
    }
    alice
        .pump_until(|alice| alice.session.pending().is_empty())
        .await;
    let mut bob = Chatter::join(&server.url, "bob", "lobby", Some(saved)).await;
    bob.pump_until(|bob| bob.caught_up).await;
    assert_eq!(bob.texts(), ["one", "two", "three"]);
    bob.assert_once_in_order();
    assert!(
        bob.shown
            .iter()
            .all(|(seq, sender, _)| *seq > saved && sender == "alice")
    );

    // bob stayed a member all along: nobody saw him leave, nobody rotated for him.
    alice.pump(Duration::from_millis(100)).await;
    assert!(
        !alice
            .events
            .iter()
            .any(|event| matches!(event, Event::MemberLeft { .. })),
        "{:?}",
        alice.events
    );
    alice.say("live again").await;
    bob.pump_until(|bob| bob.shown.len() == 4).await;
    assert_eq!(bob.texts()[3], "live again");
}

#[tokio::test]
async fn history_shows_the_latest_messages_own_ones_included_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::on_disk(dir.path(), Limits::default()).await;
    let mut alice = Chatter::join(&server.url, "alice", "lobby", None).await;
    let mut bob = Chatter::join(&server.url, "bob", "lobby", None).await;
    alice.sees_member("bob").await;
    for n in 1..=4 {
        alice.say(&format!("alice {n}")).await;
    }
    bob.pump_until(|bob| bob.shown.len() == 4).await;
    for n in 1..=2 {
        bob.say(&format!("bob {n}")).await;
    }
    bob.pump_until(|bob| bob.session.pending().is_empty()).await;
    // A newcomer is handed bob's key from his next message on: that handout must not
    // cost bob his own earlier messages in history.
    let _carol = Chatter::join(&server.url, "carol", "lobby", None).await;
    bob.sees_member("carol").await;
    bob.pump(Duration::from_millis(200)).await;
    for n in 3..=4 {
        bob.say(&format!("bob {n}")).await;
    }
    bob.pump_until(|bob| bob.session.pending().is_empty()).await;
    let saved = bob.session.last_seq("lobby");
    drop(bob);

    // A restarted client has none of its old keys; the relay has them, wrapped for it.
    let mut bob = Chatter::join(&server.url, "bob", "lobby", Some(saved)).await;
    bob.pump_until(|bob| bob.caught_up).await;
    bob.session.history("lobby", 5).await.unwrap();
    bob.pump_until(|bob| {
        bob.events
            .iter()
            .any(|event| matches!(event, Event::History { .. }))
    })
    .await;
    let Some(Event::History { messages, .. }) = bob
        .events
        .iter()
        .find(|event| matches!(event, Event::History { .. }))
    else {
        unreachable!()
    };
    let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["alice 4", "bob 1", "bob 2", "bob 3", "bob 4"]);
    assert!(bob.shown.is_empty(), "history is not shown as new messages");
}

#[tokio::test]
async fn a_room_keeps_only_its_latest_messages() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_messages_per_room: 3,
        ..Limits::default()
    };
    let server = common::TestServer::on_disk(dir.path(), limits).await;
    let mut alice = Chatter::join(&server.url, "alice", "lobby", None).await;
    let bob = Chatter::join(&server.url, "bob", "lobby", None).await;
    let saved = bob.session.last_seq("lobby");
    drop(bob);
    for n in 1..=6 {
        alice.say(&format!("message {n}")).await;
    }
    alice
        .pump_until(|alice| alice.session.pending().is_empty())
        .await;
    let mut bob = Chatter::join(&server.url, "bob", "lobby", Some(saved)).await;
    bob.pump_until(|bob| bob.caught_up).await;
    assert_eq!(bob.texts(), ["message 4", "message 5", "message 6"]);
}

#[tokio::test]
async fn fifty_clients_in_five_rooms_get_every_message_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::on_disk(dir.path(), Limits::default()).await;
    let load = Load {
        clients: 50,
        rooms: 5,
        messages: 200,
        size: 64,
        rate: None,
        // Each client rotates its sender key twice under load, as Megolm's schedule would.
        rotation: RotationPolicy {
            messages: 100,
            ..RotationPolicy::default()
        },
    };
    // The driver counts every message per sender and recipient, in order, and fails on
    // a loss, a repeat, or a sequence number that does not increase.
    let measured = bench::measure_e2ee(&server.url, &load).await.unwrap();
    assert_eq!(measured.delivered, 50 * 9 * 200);
}

/// Sends `count` numbered messages without waiting for their acknowledgements.
async fn say_many(chatter: &mut Chatter, from: usize, count: usize) {
    for n in from..from + count {
        let text = format!("{} {n}", chatter.user);
        chatter.say(&text).await;
    }
}

#[tokio::test]
async fn a_server_killed_mid_load_loses_nothing_acknowledged_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data);
    let url = server.url.clone();
    let mut members = Vec::new();
    for user in ["alice", "bob", "carol"] {
        members.push(Chatter::join(&url, user, "crash", None).await);
    }
    for member in &mut members {
        member.pump(Duration::from_millis(50)).await;
    }

    // Everyone sends while the others read; the server dies with messages in flight.
    for round in 0..4 {
        for member in &mut members {
            say_many(member, round * 10, 10).await;
        }
        for member in &mut members {
            member.pump(Duration::from_millis(5)).await;
        }
    }
    server.kill();
    for member in &mut members {
        member.pump(Duration::from_millis(50)).await;
        assert!(!member.connected, "{} did not notice", member.user);
    }
    // What each had acknowledged when the server died must survive.
    let acknowledged: Vec<Vec<String>> = members
        .iter()
        .map(|member| {
            let pending: HashSet<&str> = member.session.pending().into_iter().collect();
            (0..40)
                .map(|n| format!("{} {n}", member.user))
                .filter(|text| !pending.contains(text.as_str()))
                .collect()
        })
        .collect();
    assert!(
        acknowledged.iter().any(|texts| !texts.is_empty()),
        "nothing was acknowledged before the kill"
    );

    let server = ServerProcess::listening(&data, &server.addr.to_string(), &[], &[]);
    // alice and bob reconnect and send again what was not acknowledged; carol's client
    // restarts from scratch, with only the sequence number it saved.
    let mut carol = members.pop().unwrap();
    let carol_saved = carol.session.last_seq(&carol.room);
    let carol_shown = std::mem::take(&mut carol.shown);
    drop(carol);
    for member in &mut members {
        member.reconnect().await;
    }
    let mut carol = Chatter::join(&server.url, "carol", "crash", Some(carol_saved)).await;
    carol.shown = carol_shown;
    members.push(carol);
    for member in &mut members {
        say_many(member, 40, 5).await;
    }

    // Everyone ends up with every message the others had acknowledged, exactly once.
    let deadline = Instant::now() + PATIENCE * 3;
    loop {
        for member in &mut members {
            member.pump(Duration::from_millis(20)).await;
        }
        // What alice and bob said after coming back counts too: it goes out once
        // their new key is acknowledged, which takes them a read of the relay's answer.
        let complete = members.iter().enumerate().all(|(me, member)| {
            member.session.pending().is_empty()
                && acknowledged
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != me)
                    .flat_map(|(_, texts)| texts)
                    .all(|text| member.texts().contains(&text.as_str()))
                && ["alice", "bob"]
                    .iter()
                    .filter(|sender| **sender != member.user)
                    .flat_map(|sender| (40..45).map(move |n| format!("{sender} {n}")))
                    .all(|text| member.texts().contains(&text.as_str()))
        });
        if complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}",
            members
                .iter()
                .map(|m| (&m.user, m.texts(), m.session.pending()))
                .collect::<Vec<_>>()
        );
    }
    for member in &members {
        member.assert_once_in_order();
    }
    // alice and bob resent what was pending: all 45 of theirs reached the others.
    for (me, member) in members.iter().enumerate() {
        for sender in ["alice", "bob"].iter().filter(|s| **s != member.user) {
            let from: Vec<&(u64, String, String)> = member
                .shown
                .iter()
                .filter(|(_, s, _)| s == sender)
                .collect();
            assert_eq!(
                from.len(),
                45,
                "{} from {sender}: {from:?} ({me})",
                member.user
            );
        }
    }
}

impl Chatter {
    /// Applies frames until the relay refuses something; returns its code and message.
    async fn next_refusal(&mut self) -> (tonic::Code, String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(Instant::now() < deadline, "no refusal");
            let frame = self.session.next_frame().await.unwrap().unwrap();
            for event in self.session.handle(frame).await.unwrap() {
                match event {
                    Event::Refused { code, message, .. } => return (code, message),
                    Event::Delivered { .. } => {
                        panic!("acknowledged a message that was not stored")
                    }
                    _ => {}
                }
            }
        }
    }
}

/// What alice's session reported of her messages.
#[derive(Default)]
struct Log {
    /// The sequence numbers of those acknowledged.
    delivered: Vec<u64>,
    /// The texts of those refused.
    refused: Vec<String>,
    warnings: Vec<String>,
}

impl Log {
    /// Applies alice's frames until all her messages are answered.
    async fn settle(&mut self, alice: &mut Chatter) {
        let deadline = Instant::now() + PATIENCE;
        while !alice.session.pending().is_empty() {
            assert!(
                Instant::now() < deadline,
                "alice waited in vain: {:?}",
                self.warnings
            );
            let Ok(frame) =
                tokio::time::timeout(Duration::from_millis(20), alice.session.next_frame()).await
            else {
                continue;
            };
            for event in alice.session.handle(frame.unwrap().unwrap()).await.unwrap() {
                match event {
                    Event::Delivered { seq, .. } => self.delivered.push(seq),
                    // Refused with the batch that held the key: not stored, and the
                    // user is told so (the relay could not store anything just then).
                    Event::Refused { text, .. } => self.refused.push(text),
                    Event::Warning(warning) => self.warnings.push(warning),
                    _ => {}
                }
            }
        }
    }
}

/// A store whose commits can be made to fail, as a full disk would make them.
struct FailingStore {
    inner: SqliteStore,
    failing: AtomicBool,
    /// Fails the next commit that stores a sender key distribution, once: a database
    /// down just while a key is handed out, and back for the messages that follow.
    fail_next_sender_keys: AtomicBool,
}

impl FailingStore {
    /// A relay on a store in `dir` that works until it is told to fail.
    async fn serving(dir: &std::path::Path) -> (Arc<Self>, common::TestServer) {
        let store = Arc::new(Self {
            inner: SqliteStore::open(dir).unwrap(),
            failing: AtomicBool::new(false),
            fail_next_sender_keys: AtomicBool::new(false),
        });
        let config = e2ee_chat::server::Config {
            store: store.clone(),
            ..e2ee_chat::server::Config::ephemeral(Limits::default())
        };
        (store, common::TestServer::serving_config(config).await)
    }
}

impl Store for FailingStore {
    fn identities(&self) -> Result<Vec<PublicIdentity>, StoreError> {
        self.inner.identities()
    }
    fn prekeys(&self) -> Result<Vec<(String, SignedPrekey)>, StoreError> {
        self.inner.prekeys()
    }
    fn identity(&self, user: &str) -> Result<Option<PublicIdentity>, StoreError> {
        self.inner.identity(user)
    }
    fn prekey(&self, user: &str) -> Result<Option<SignedPrekey>, StoreError> {
        self.inner.prekey(user)
    }
    fn save_prekey(&self, user: &str, prekey: &SignedPrekey) -> Result<(), StoreError> {
        self.inner.save_prekey(user, prekey)
    }
    fn register(&self, identity: &PublicIdentity, token: Option<&str>) -> Result<(), StoreError> {
        self.inner.register(identity, token)
    }
    fn create_registration_token(
        &self,
        uses: Option<u64>,
        expires_ms: Option<u64>,
    ) -> Result<String, StoreError> {
        self.inner.create_registration_token(uses, expires_ms)
    }
    fn registration_tokens(&self) -> Result<Vec<RegistrationToken>, StoreError> {
        self.inner.registration_tokens()
    }
    fn revoke_registration_tokens(&self, id_prefix: &str) -> Result<u64, StoreError> {
        self.inner.revoke_registration_tokens(id_prefix)
    }
    fn rooms(&self) -> Result<Vec<StoredRoom>, StoreError> {
        self.inner.rooms()
    }
    fn room(&self, name: &str) -> Result<Option<StoredRoom>, StoreError> {
        self.inner.room(name)
    }
    fn commit(
        &self,
        changes: &[Change],
        policy: &StoragePolicy,
    ) -> Result<Vec<Applied>, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Database("database or disk is full".into()));
        }
        if changes
            .iter()
            .any(|change| matches!(change, Change::AppendSenderKeys { .. }))
            && self.fail_next_sender_keys.swap(false, Ordering::SeqCst)
        {
            return Err(StoreError::Database("the database is down".into()));
        }
        self.inner.commit(changes, policy)
    }
    fn entries_after(
        &self,
        room: &str,
        member: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.entries_after(room, member, after, up_to, limit)
    }
    fn log_between(&self, room: &str, after: u64, up_to: u64) -> Result<Vec<LogEntry>, StoreError> {
        self.inner.log_between(room, after, up_to)
    }
    fn heads(&self, room: Option<&str>) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.heads(room)
    }
    fn keys_in_force(&self, room: &str, member: &str, at: u64) -> Result<Vec<Entry>, StoreError> {
        self.inner.keys_in_force(room, member, at)
    }
    fn senders_between(
        &self,
        room: &str,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.senders_between(room, after, up_to)
    }
    fn history(
        &self,
        room: &str,
        member: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.history(room, member, since, limit)
    }
    fn prune(&self, policy: &StoragePolicy, now: Duration) -> Result<Pruned, StoreError> {
        self.inner.prune(policy, now)
    }
    fn dormant(&self, since: Duration) -> Result<Dormant, StoreError> {
        self.inner.dormant(since)
    }
}

#[tokio::test]
async fn a_message_the_store_cannot_take_is_refused_never_acknowledged_and_the_relay_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (store, server) = FailingStore::serving(dir.path()).await;
    let mut alice = Chatter::join(&server.url, "alice", "lobby", None).await;
    let mut bob = Chatter::join(&server.url, "bob", "lobby", None).await;
    alice.sees_member("bob").await;
    alice.say("stored").await;
    bob.pump_until(|bob| bob.shown.len() == 1).await;
    alice
        .pump_until(|alice| alice.session.pending().is_empty())
        .await;

    store.failing.store(true, Ordering::SeqCst);
    alice
        .session
        .send_text("lobby", "lost to a full disk")
        .await
        .unwrap();
    let (code, message) = alice.next_refusal().await;
    assert_eq!(code, tonic::Code::Unavailable, "{message}");
    // What failed is the relay's to log; the client learns only that nothing was stored.
    assert!(message.contains("nothing was stored"), "{message}");
    assert!(!message.contains("disk is full"), "{message}");
    bob.pump(Duration::from_millis(200)).await;
    assert_eq!(bob.texts(), ["stored"], "nothing unstored is delivered");

    // A refused message left nothing behind: once the store takes commits again, so
    // does the relay, without a restart, and without ending anyone's session.
    store.failing.store(false, Ordering::SeqCst);
    alice.say("stored again").await;
    bob.pump_until(|bob| bob.shown.len() == 2).await;
    assert_eq!(bob.texts(), ["stored", "stored again"]);
    assert!(alice.connected && bob.connected);
}

/// The relay refused a sender key distribution of alice's (its database was down just
/// then) but took the messages that followed: had alice gone on sealing under that key,
/// bob, who never got it, would have dropped messages the relay acknowledged. Every
/// message acknowledged to alice reaches bob, once and in order.
#[tokio::test]
async fn a_sender_key_the_store_cannot_take_is_replaced_and_no_acknowledged_message_is_unreadable()
{
    let dir = tempfile::tempdir().unwrap();
    let (store, server) = FailingStore::serving(dir.path()).await;
    let rotation = RotationPolicy {
        messages: 4,
        age_ms: u64::MAX,
    };
    let mut alice = Chatter::join_rotating(&server.url, "alice", &["lobby"], None, rotation).await;
    let mut bob = Chatter::join(&server.url, "bob", "lobby", None).await;
    alice.sees_member("bob").await;
    alice.say("first").await;
    // Held until the relay took alice's key for bob: she reads its answer.
    alice
        .pump_until(|alice| alice.session.pending().is_empty())
        .await;
    bob.pump_until(|bob| bob.texts() == ["first"]).await;

    // The key is used up within a few messages (receipts count too), so a rotation
    // comes soon, and its distribution is refused. First one message at a time, each
    // answered before the next: the messages after the refused key would be stored.
    // Then a burst, refused again: its messages are in flight or waiting when the
    // refusal comes back.
    let mut log = Log::default();
    store.fail_next_sender_keys.store(true, Ordering::SeqCst);
    let mut texts: Vec<String> = (1..=8).map(|n| format!("one by one {n}")).collect();
    for text in &texts {
        alice.say(text).await;
        log.settle(&mut alice).await;
    }
    assert!(!store.fail_next_sender_keys.load(Ordering::SeqCst));
    store.fail_next_sender_keys.store(true, Ordering::SeqCst);
    let burst: Vec<String> = (1..=12).map(|n| format!("burst {n}")).collect();
    for text in &burst {
        alice.say(text).await;
    }
    log.settle(&mut alice).await;
    assert!(!store.fail_next_sender_keys.load(Ordering::SeqCst));
    texts.extend(burst);
    let Log {
        mut delivered,
        refused,
        warnings,
    } = log;
    assert!(
        warnings
            .iter()
            .any(|warning| warning.contains("refused our sender key")),
        "no distribution was refused: {warnings:?}"
    );
    assert_eq!(delivered.len() + refused.len(), texts.len(), "{refused:?}");

    // Bob shows every message the relay acknowledged, once, in order, and nothing is
    // dropped as sealed under a key he never got.
    let mut dropped = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let Ok(frame) =
            tokio::time::timeout(Duration::from_millis(200), bob.session.next_frame()).await
        else {
            if bob.shown.len() > delivered.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "bob waited in vain: shown {:?}, dropped {dropped:?}",
                bob.shown
            );
            continue;
        };
        for event in bob.session.handle(frame.unwrap().unwrap()).await.unwrap() {
            match event {
                Event::Warning(warning) => dropped.push(warning),
                other => bob.record(other),
            }
        }
    }
    assert_eq!(dropped, Vec::<String>::new(), "bob shown {:?}", bob.shown);
    let shown_seqs: Vec<u64> = bob.shown[1..].iter().map(|(seq, _, _)| *seq).collect();
    delivered.sort_unstable();
    assert_eq!(shown_seqs, delivered);
    let expected: Vec<&str> = texts
        .iter()
        .map(String::as_str)
        .filter(|text| !refused.iter().any(|refused| refused == text))
        .collect();
    assert_eq!(bob.texts()[1..], expected[..]);
    bob.assert_once_in_order();
}

#[tokio::test]
async fn a_join_the_store_cannot_take_is_undone_once_the_store_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, server) = FailingStore::serving(dir.path()).await;
    let mut alice = Chatter::join(&server.url, "alice", "lobby", None).await;

    // The relay's memory holds bob as a member already; the store does not.
    store.failing.store(true, Ordering::SeqCst);
    assert!(
        Chatter::open(&server.url, "bob", &["lobby"], None)
            .await
            .is_err()
    );
    alice
        .session
        .send_text("lobby", "while the store fails")
        .await
        .unwrap();
    let (code, message) = alice.next_refusal().await;
    assert_eq!(code, tonic::Code::Unavailable, "{message}");

    // Once the store takes writes again the relay reads its rooms anew, and ends every
    // session with UNAVAILABLE so that each comes back to what is stored.
    store.failing.store(false, Ordering::SeqCst);
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match alice.session.next_frame().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without a status"),
                Err(ClientError::Ended(status)) => return status,
                Err(other) => panic!("{other}"),
            }
        }
    })
    .await
    .expect("the relay never recovered");
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("reconnect"), "{ended:?}");
    alice.reconnect().await;
    let mut bob = Chatter::join(&server.url, "bob", "lobby", None).await;
    alice.sees_member("bob").await;
    alice.say("after the store came back").await;
    bob.pump_until(|bob| bob.shown.len() == 1).await;
    assert_eq!(bob.texts(), ["after the store came back"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leave_the_store_cannot_take_is_said_and_fails_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let (store, server) = FailingStore::serving(dir.path()).await;
    let (url, home) = (server.url.clone(), dir.path().join("home"));
    // The client process blocks its caller: never on one of the runtime's workers.
    let alice = tokio::task::block_in_place(|| {
        ClientProcess::joined(rust_client(&url, "alice", "lobby", &home), "lobby")
    });
    store.failing.store(true, Ordering::SeqCst);
    let (status, stderr) = tokio::task::block_in_place(move || {
        let mut alice = alice;
        alice.say("/part lobby");
        wait_for_line(&alice.stderr, "not left lobby");
        let (status, _, stderr) = alice.finish();
        (status, stderr)
    });
    assert!(!status.success(), "{stderr:?}");
    let last = stderr.last().unwrap();
    assert!(
        last.contains("did not let you leave lobby") && last.contains("still a member"),
        "{stderr:?}"
    );
}

#[test]
fn a_bad_data_dir_stops_the_server_with_one_line() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let run = |data: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .output()
            .unwrap()
    };
    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("chat.sqlite3"), vec![7u8; 8192]).unwrap();
    let output = run(&garbage);
    let stderr = String::from_utf8_lossy(&output.stderr);
    common::process::assert_one_line_error(
        "chat-server",
        output.status,
        &stderr,
        "cannot open the database",
    );

    let read_only = dir.path().join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o500)).unwrap();
    // Permissions do not stop root; the check only means something for other users.
    let probe = read_only.join("probe");
    if std::fs::write(&probe, b"").is_err() {
        let output = run(&read_only);
        let stderr = String::from_utf8_lossy(&output.stderr);
        common::process::assert_one_line_error(
            "chat-server",
            output.status,
            &stderr,
            "cannot use data directory",
        );
    }
}

#[tokio::test]
async fn a_catch_up_never_reaches_back_before_the_members_joining() {
    let server = common::TestServer::start().await;
    let mut alice = Chatter::join(&server.url, "alice", "lobby", None).await;
    alice.say("said before carol came").await;
    alice
        .pump_until(|alice| alice.session.pending().is_empty())
        .await;
    let carol = Chatter::join(&server.url, "carol", "lobby", None).await;
    drop(carol);
    alice.sees_member("carol").await;
    alice.say("said to carol").await;
    alice
        .pump_until(|alice| alice.session.pending().is_empty())
        .await;
    // carol asks for everything from the start of the room: she gets what came after
    // her joining, nothing before.
    let mut carol = Chatter::join(&server.url, "carol", "lobby", Some(0)).await;
    carol.pump_until(|carol| carol.caught_up).await;
    assert_eq!(carol.texts(), ["said to carol"]);
}

/// What `chat-client` may show again after a SIGKILL: the batch it was printing, whose
/// progress it had not saved yet (its `MAX_BATCH`).
const CLIENT_BATCH: usize = 256;

#[test]
fn a_burst_past_the_clients_batch_reaches_a_busy_live_reader_and_a_returning_one_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let faults = burst_to_a_busy_reader_and_an_away_one(&server.url, &home, "burst", rust_client);
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

/// Long enough that the HTTP/2 window the client grants the relay (2 MiB), with what
/// the relay queues for it, holds a few hundred of the burst's messages, not all 700:
/// a reader that stopped reading has then not received the end of its catch-up. (And
/// the stdout pipe, 64 KiB on Linux, holds only a few lines.)
const LONG_LINE_PADDING: usize = 10_000;

/// How many lines the test reads from a reader's catch-up before stopping it: past the
/// first batch, so the first run crosses a batch boundary.
const READ_BEFORE_STOPPING: usize = 300;

#[test]
fn a_reader_killed_or_ended_mid_catch_up_loses_nothing_when_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let room = "resume";
    join_and_go_away(rust_client(&server.url, "dave", room, &home));
    join_and_go_away(rust_client(&server.url, "erin", room, &home));
    send_burst(
        rust_client(&server.url, "alice", room, &home),
        "alice",
        LONG_LINE_PADDING,
    );
    let expected = burst_lines(room, "alice", LONG_LINE_PADDING);

    // erin is killed (SIGKILL) in the middle of her catch-up. The client saves its
    // progress once per batch of frames, so the batch she was printing was not saved
    // and shows again next time (as documented); but nothing may be skipped, and each
    // run shows what it shows in order.
    let erin = ClientProcess::start_holding_stdout(rust_client(&server.url, "erin", room, &home));
    let mut first_run = erin.stdout_lines(READ_BEFORE_STOPPING);
    first_run.extend(erin.kill());
    assert!(first_run.len() < BURST, "erin was not killed mid-catch-up");
    let mut faults = Vec::new();
    faults.extend(
        sequence_faults(&first_run, &expected[..first_run.len()])
            .map(|f| format!("erin, first run: {f}")),
    );
    let second_run = catch_up(rust_client(&server.url, "erin", room, &home), room);
    let resumed_at = second_run
        .first()
        .and_then(|first| expected.iter().position(|line| line == first))
        .unwrap_or(BURST);
    if resumed_at > first_run.len() {
        faults.push(format!(
            "erin skipped from message {} to {resumed_at}",
            first_run.len()
        ));
    } else if first_run.len() - resumed_at > CLIENT_BATCH {
        faults.push(format!(
            "erin showed {} messages again: more than the batch she was killed in",
            first_run.len() - resumed_at
        ));
    }
    faults.extend(
        sequence_faults(&second_run, &expected[resumed_at.min(BURST)..])
            .map(|f| format!("erin, second run: {f}")),
    );

    // dave ends gracefully (end of input) part-way through his catch-up, saving what he
    // processed; the next run goes on from there: each message once, in order, across
    // the two runs. Ended while connected, a client first waits for the relay to
    // acknowledge its key, which comes after whatever catch-up was already queued; so
    // that it ends part-way, the relay dies while dave's output is held: he cannot have
    // received more than the stream's window beyond what he printed, and, offline with
    // nothing of his own to deliver, he ends at once.
    let dave = ClientProcess::start_holding_stdout(rust_client(&server.url, "dave", room, &home));
    let mut first_run = dave.stdout_lines(READ_BEFORE_STOPPING);
    server.kill();
    let (status, rest, stderr) = dave.finish();
    assert!(status.success(), "{stderr:?}");
    first_run.extend(rest);
    assert!(first_run.len() < BURST, "dave did not stop mid-catch-up");
    server.restart();
    let mut both_runs = first_run;
    both_runs.extend(catch_up(
        rust_client(&server.url, "dave", room, &home),
        room,
    ));
    faults.extend(sequence_faults(&both_runs, &expected).map(|f| format!("dave, both runs: {f}")));
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

#[tokio::test]
async fn a_session_in_two_rooms_comes_back_to_both_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data);
    let url = server.url.clone();
    let mut bob = Chatter::join(&url, "bob", "alpha", None).await;
    let mut carol = Chatter::join(&url, "carol", "beta", None).await;
    let mut alice = Chatter::join_all(&url, "alice", &["alpha", "beta"], None).await;
    bob.pump_until(|bob| bob.session.members("alpha").contains(&"alice".to_owned()))
        .await;
    carol
        .pump_until(|carol| carol.session.members("beta").contains(&"alice".to_owned()))
        .await;

    // Both rooms have messages in flight when the relay dies, and more are written
    // while it is away.
    for n in 0..10 {
        alice.say_in("alpha", &format!("alpha {n}")).await;
        alice.say_in("beta", &format!("beta {n}")).await;
    }
    alice.pump(Duration::from_millis(5)).await;
    server.kill();
    for chatter in [&mut alice, &mut bob, &mut carol] {
        chatter.pump(Duration::from_millis(50)).await;
        assert!(!chatter.connected, "{} did not notice", chatter.user);
    }
    for n in 10..15 {
        alice.say_in("alpha", &format!("alpha {n}")).await;
        alice.say_in("beta", &format!("beta {n}")).await;
    }

    let _server = ServerProcess::listening(&data, &server.addr.to_string(), &[], &[]);
    for chatter in [&mut bob, &mut carol, &mut alice] {
        chatter.reconnect().await;
    }
    let want = |room: &str| -> Vec<String> { (0..15).map(|n| format!("{room} {n}")).collect() };
    let deadline = Instant::now() + PATIENCE;
    while alice.session.unanswered() > 0
        || bob.texts() != want("alpha")
        || carol.texts() != want("beta")
    {
        assert!(
            Instant::now() < deadline,
            "bob {:?}, carol {:?}, alice pending {:?}",
            bob.texts(),
            carol.texts(),
            alice.session.pending()
        );
        for chatter in [&mut alice, &mut bob, &mut carol] {
            chatter.pump(Duration::from_millis(20)).await;
        }
    }
    // Each room got its own messages, each once and in order, and nothing of the other.
    bob.assert_once_in_order();
    carol.assert_once_in_order();
    assert_eq!(alice.session.rooms(), ["alpha", "beta"]);
}
