//! The session against a scripted relay: reconnects, catch-ups, history, prekeys.
use std::sync::OnceLock;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Response;
use tonic::codegen::BoxStream;
use tonic::transport::Server;

use super::*;
use crate::client::prekeys::PrekeyRing;
use crate::client::{RoomEvent, RoomKeys};
use crate::crypto::VerifiedIdentity;
use crate::proto::chat_service_server::{ChatService, ChatServiceServer};
use crate::proto::{
    Ack, CaughtUp, DistributeSenderKey, History, HistoryEntry, KeyBundle, KeyExchangeRequest,
    KeyExchangeResponse, MessageDelivery, PublicIdentity, Rejection, SendMessage,
    SenderKeyDelivery, history_entry,
};
use crate::protocol::MAX_HISTORY_MESSAGES;
use crate::server::frame::{ValidFrame, check};
use server_frame::Kind;

const PATIENCE: Duration = Duration::from_secs(10);

fn identities() -> &'static [Arc<Identity>; 3] {
    static IDS: OnceLock<[Arc<Identity>; 3]> = OnceLock::new();
    IDS.get_or_init(|| std::array::from_fn(|_| Arc::new(Identity::generate(2048).unwrap())))
}

fn public(user: &str, index: usize) -> PublicIdentity {
    identities()[index].publish(user).unwrap()
}

/// The prekeys of the three test identities, in memory.
fn rings() -> &'static [SharedPrekeys; 3] {
    static RINGS: OnceLock<[SharedPrekeys; 3]> = OnceLock::new();
    RINGS.get_or_init(|| {
        std::array::from_fn(|_| {
            let ring = PrekeyRing::in_memory(2048, crate::protocol::now_ms()).unwrap();
            Arc::new(std::sync::RwLock::new(ring))
        })
    })
}

/// The test identity a name stands for in these tests.
fn index_of(user: &str) -> Option<usize> {
    ["alice", "bob", "carol"]
        .iter()
        .position(|name| *name == user)
}

/// What the key directory presents for `user`: its identity and signed prekey.
fn bundle(user: &str) -> Option<KeyBundle> {
    let index = index_of(user)?;
    let ring = rings()[index].read().unwrap();
    let signed = ring
        .current()
        .sign(&identities()[index], user, DEVICE)
        .unwrap();
    Some(KeyBundle {
        identity: Some(public(user, index)),
        device: DEVICE,
        prekey: Some(SignedPrekey {
            device: signed.device,
            prekey_id: signed.id,
            created_at_ms: signed.created_at_ms,
            public_key: signed.public_key.into(),
            signature: signed.signature.into(),
        }),
    })
}

/// The room keys of another member, who knows `members` and their prekeys.
fn peer(user: &str, index: usize, members: &[(&str, usize)]) -> RoomKeys {
    let mut keys = RoomKeys::new(
        "lobby",
        user,
        identities()[index].clone(),
        rings()[index].clone(),
        RotationPolicy::default(),
    )
    .unwrap();
    for (name, i) in members {
        keys.insert_member(VerifiedIdentity::verify(&public(name, *i)).unwrap(), true);
        let ring = rings()[*i].read().unwrap();
        let current = ring.current();
        keys.set_prekey(name, current.id(), current.key().public_key().clone());
    }
    keys
}

/// A relay whose every answer the test writes by hand.
struct ScriptedRelay {
    streams: mpsc::Sender<RelayStream>,
    /// The ids of the prekeys clients published, in order.
    published: Arc<std::sync::Mutex<Vec<u64>>>,
}

/// One stream a client opened on the scripted relay.
struct RelayStream {
    frames: Streaming<ClientFrame>,
    replies: mpsc::Sender<Result<ServerFrame, Status>>,
}

#[tonic::async_trait]
impl ChatService for ScriptedRelay {
    async fn key_exchange(
        &self,
        request: Request<KeyExchangeRequest>,
    ) -> Result<Response<KeyExchangeResponse>, Status> {
        let request = request.into_inner();
        if let Some(prekey) = &request.publish {
            self.published.lock().unwrap().push(prekey.prekey_id);
        }
        // The script does not follow membership: a room's bundles are those of every
        // test identity (a client takes only its members').
        let mut users = request.users.clone();
        if !request.room.is_empty() {
            users.extend(["alice", "bob", "carol"].map(str::to_owned));
        }
        let bundles = users.iter().filter_map(|user| bundle(user)).collect();
        Ok(Response::new(KeyExchangeResponse { bundles }))
    }

    async fn chat(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<BoxStream<ServerFrame>>, Status> {
        let (replies, outbound) = mpsc::channel(64);
        let stream = RelayStream {
            frames: request.into_inner(),
            replies,
        };
        let _ = self.streams.send(stream).await;
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }
}

impl RelayStream {
    async fn frame(&mut self) -> ClientFrame {
        tokio::time::timeout(PATIENCE, self.frames.message())
            .await
            .expect("a frame in time")
            .unwrap()
            .expect("the stream is open")
    }

    async fn send(&self, request_id: u64, kind: Kind) {
        let frame = ServerFrame {
            request_id,
            kind: Some(kind),
        };
        self.replies.send(Ok(frame)).await.unwrap();
    }
}

/// Starts a scripted relay; returns a channel to it and the streams opened on it.
async fn start_relay() -> (Channel, mpsc::Receiver<RelayStream>) {
    let (channel, accepted, _) = start_recording_relay().await;
    (channel, accepted)
}

/// [`start_relay`], with the log of the prekeys published to it.
async fn start_recording_relay() -> (
    Channel,
    mpsc::Receiver<RelayStream>,
    Arc<std::sync::Mutex<Vec<u64>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (streams, accepted) = mpsc::channel(4);
    let published = Arc::default();
    let relay = ScriptedRelay {
        streams,
        published: Arc::clone(&published),
    };
    tokio::spawn(
        Server::builder()
            .add_service(ChatServiceServer::new(relay))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = super::super::connect(&url, None).await.unwrap();
    (channel, accepted, published)
}

/// Takes the next stream opened, reads its join and answers with `joined`.
async fn answer_join(
    accepted: &mut mpsc::Receiver<RelayStream>,
    joined: Joined,
) -> (RelayStream, ClientFrame) {
    let mut stream = tokio::time::timeout(PATIENCE, accepted.recv())
        .await
        .unwrap()
        .unwrap();
    let join = stream.frame().await;
    stream.send(join.request_id, Kind::Joined(joined)).await;
    (stream, join)
}

/// alice joins lobby through the scripted relay, which answers with `joined`.
async fn join_alice(
    channel: Channel,
    accepted: &mut mpsc::Receiver<RelayStream>,
    after_seq: Option<u64>,
    joined: Joined,
) -> (ChatSession, Vec<Event>, RelayStream, ClientFrame) {
    join_alice_with(channel, accepted, after_seq, joined, rings()[0].clone()).await
}

/// [`join_alice`], with the prekeys `prekeys`.
async fn join_alice_with(
    channel: Channel,
    accepted: &mut mpsc::Receiver<RelayStream>,
    after_seq: Option<u64>,
    joined: Joined,
    prekeys: SharedPrekeys,
) -> (ChatSession, Vec<Event>, RelayStream, ClientFrame) {
    let join = JoinRoom {
        room: "lobby".into(),
        create_private: false,
        after_seq,
    };
    let credentials = Credentials::for_tests("alice");
    let session = ChatSession::join(
        channel,
        identities()[0].clone(),
        &credentials,
        join,
        Contacts::in_memory(),
        prekeys,
        RotationPolicy::default(),
    );
    let (session, (stream, join)) = tokio::join!(session, answer_join(accepted, joined));
    let (session, events) = session.unwrap();
    (session, events, stream, join)
}

fn joined(members: Vec<PublicIdentity>, last_seq: u64, resumed: bool) -> Joined {
    Joined {
        room: "lobby".into(),
        members,
        last_seq,
        resumed,
        ..Default::default()
    }
}

async fn events(session: &mut ChatSession) -> Vec<Event> {
    tokio::time::timeout(PATIENCE, session.next_events())
        .await
        .expect("a frame in time")
        .unwrap()
        .expect("the stream is open")
}

fn distribution(frame: &ClientFrame) -> &DistributeSenderKey {
    match &frame.kind {
        Some(client_frame::Kind::DistributeKey(distribution)) => distribution,
        other => panic!("not a key distribution: {other:?}"),
    }
}

fn sent(frame: &ClientFrame) -> &SendMessage {
    match &frame.kind {
        Some(client_frame::Kind::Send(send)) => send,
        other => panic!("not a message: {other:?}"),
    }
}

fn recipients(distribution: &DistributeSenderKey) -> Vec<&str> {
    distribution
        .copies
        .iter()
        .map(|copy| copy.recipient.as_str())
        .collect()
}

fn key_id(distribution: &DistributeSenderKey) -> u64 {
    distribution.header.as_ref().unwrap().key_id
}

/// What the relay delivers to `recipient` of `sender`'s distribution: its copy, as
/// the relay's own frame checks store it.
fn key_for(
    distribution: &DistributeSenderKey,
    sender: &str,
    recipient: &str,
    seq: u64,
) -> SenderKeyDelivery {
    let frame = ClientFrame {
        request_id: 1,
        kind: Some(client_frame::Kind::DistributeKey(distribution.clone())),
    };
    let Ok(ValidFrame::DistributeKey { keys, .. }) = check(frame) else {
        panic!("the relay would refuse this distribution");
    };
    let stored = keys
        .into_iter()
        .find(|key| key.recipient == recipient)
        .unwrap();
    crate::store::copy::delivery(
        &distribution.room,
        sender.to_owned(),
        seq,
        &stored.wrapped_key,
        stored.signature,
    )
    .unwrap()
}

fn message_from(send: &SendMessage, sender: &str, seq: u64) -> MessageDelivery {
    MessageDelivery {
        room: send.room.clone(),
        sender: sender.to_owned(),
        sealed: send.sealed.clone(),
        seq,
    }
}

#[tokio::test]
async fn a_reconnect_sends_unacknowledged_messages_again_as_sealed_then_rotates() {
    let (channel, mut accepted) = start_relay().await;
    let first = joined(vec![public("bob", 1)], 5, false);
    let (mut alice, shown, mut stream, _) =
        join_alice(channel.clone(), &mut accepted, None, first).await;
    assert!(
        matches!(&shown[..], [Event::Pinned { user, .. }, Event::Joined { room }] if user == "bob" && room == "lobby"),
        "{shown:?}"
    );
    assert_eq!(alice.last_seq("lobby"), 5);
    let first_key_frame = stream.frame().await;
    let first_key = distribution(&first_key_frame);
    assert_eq!(recipients(first_key), ["alice", "bob"]);
    // Messages wait until the relay took the key they are sealed under.
    stream
        .send(first_key_frame.request_id, Kind::Ack(Ack { seq: 6 }))
        .await;
    assert_eq!(events(&mut alice).await, []);

    let one = alice.send_text("lobby", "one").await.unwrap();
    alice.send_text("lobby", "two").await.unwrap();
    let one_frame = stream.frame().await;
    let two_frame = stream.frame().await;
    assert_eq!(one_frame.request_id, one);
    stream.send(one, Kind::Ack(Ack { seq: 7 })).await;
    assert_eq!(
        events(&mut alice).await,
        [Event::Delivered {
            room: "lobby".into(),
            request_id: one,
            seq: 7
        }]
    );
    assert_eq!(alice.pending(), ["two"]);

    // The relay goes away; alice writes on.
    drop(stream);
    let lost = tokio::time::timeout(PATIENCE, alice.next_frame()).await;
    assert!(matches!(lost, Ok(Ok(None) | Err(_))), "{lost:?}");
    alice.send_text("lobby", "three").await.unwrap();
    assert_eq!(alice.pending(), ["two", "three"]);

    // carol joined meanwhile.
    let members = vec![public("bob", 1), public("carol", 2)];
    let credentials = Credentials::for_tests("alice");
    let (reconnected, (mut stream, join)) = tokio::join!(
        alice.reconnect(channel, &credentials),
        answer_join(&mut accepted, joined(members, 9, true))
    );
    let shown = reconnected.unwrap();
    assert!(
        shown.contains(&Event::MemberJoined {
            room: "lobby".into(),
            user: "carol".into()
        }),
        "{shown:?}"
    );
    match join.kind {
        Some(client_frame::Kind::Join(join)) => assert_eq!(join.after_seq, Some(5)),
        other => panic!("{other:?}"),
    }
    assert_eq!(join.request_id, JOIN_REQUEST_ID);
    // "two" and "three" again, under the key they were sealed with, before a newer
    // key: never a newer key before an older message. Exactly as sealed and signed
    // the first time: the relay recognises a repeat.
    let old_key = first_key;
    let two_again = stream.frame().await;
    assert_eq!(two_again.kind, two_frame.kind);
    let three = stream.frame().await;
    assert_eq!(
        sent(&three).sealed.as_ref().unwrap().key_id,
        key_id(first_key)
    );
    // Then a fresh key.
    let rotation = stream.frame().await;
    let rotation = distribution(&rotation);
    assert_ne!(key_id(rotation), key_id(first_key));
    assert_eq!(recipients(rotation), ["alice", "bob", "carol"]);

    // bob can read what was sent again (carol joined after it was written).
    let mut bob = peer("bob", 1, &[("alice", 0)]);
    assert!(
        bob.accept_sender_key(key_for(old_key, "alice", "bob", 10))
            .is_empty()
    );
    let opened = bob.open(message_from(sent(&two_again), "alice", 11));
    assert!(
        matches!(&opened[..], [RoomEvent::Message { text, .. }] if text == "two"),
        "{opened:?}"
    );

    // The answers come under the new request ids.
    stream
        .send(two_again.request_id, Kind::Ack(Ack { seq: 8 }))
        .await;
    assert_eq!(
        events(&mut alice).await,
        [Event::Delivered {
            room: "lobby".into(),
            request_id: two_again.request_id,
            seq: 8
        }]
    );
    assert_eq!(alice.pending(), ["three"]);
    let refusal = Rejection {
        code: Code::ResourceExhausted as i32,
        message: "slow down".into(),
    };
    stream
        .send(three.request_id, Kind::Rejection(refusal))
        .await;
    let refused = events(&mut alice).await;
    assert!(
        matches!(&refused[..], [Event::Refused { text, code: Code::ResourceExhausted, .. }] if text == "three"),
        "{refused:?}"
    );
    assert!(alice.pending().is_empty());
}

#[tokio::test]
async fn a_renewed_prekey_is_published_and_our_key_handed_out_under_it() {
    use crate::client::prekeys::PrekeyPolicy;

    let (channel, mut accepted, published) = start_recording_relay().await;
    let home = tempfile::tempdir().unwrap();
    let policy = PrekeyPolicy {
        rotate_after_ms: 1_000,
        keep_retired_ms: 1_000,
    };
    let (ring, _) = PrekeyRing::load(home.path(), "alice", 2048, policy, 0, || {}).unwrap();
    let first = ring.current().id();
    let ring: SharedPrekeys = Arc::new(std::sync::RwLock::new(ring));
    let members = joined(vec![public("bob", 1)], 0, false);
    let (mut alice, _, mut stream, _) =
        join_alice_with(channel, &mut accepted, None, members, ring.clone()).await;
    let handed = stream.frame().await;
    assert_eq!(*published.lock().unwrap(), [first]);

    // Not due yet: nothing changes.
    assert_eq!(alice.renew_prekeys(900).await.unwrap(), 0);
    assert_eq!(*published.lock().unwrap(), [first]);

    // Due: a new prekey is published, and a new sender key handed out, our own copy
    // wrapped under the new prekey.
    assert_eq!(alice.renew_prekeys(1_000).await.unwrap(), 0);
    let second = ring.read().unwrap().current().id();
    assert_ne!(second, first);
    assert_eq!(*published.lock().unwrap(), [first, second]);
    let rotation = stream.frame().await;
    let rotation = distribution(&rotation);
    assert_ne!(key_id(rotation), key_id(distribution(&handed)));
    assert_eq!(recipients(rotation), ["alice", "bob"]);
    assert_eq!(rotation.copies[0].prekey_id, second);

    // The first is kept until a second after its retirement, then erased.
    assert!(ring.read().unwrap().get(first).is_some());
    assert_eq!(alice.renew_prekeys(2_000).await.unwrap(), 1);
    assert!(ring.read().unwrap().get(first).is_none());
}

#[tokio::test]
async fn a_catch_up_skips_what_was_shown_and_reads_former_members_until_caught_up() {
    let (channel, mut accepted) = start_relay().await;
    let mut bob = peer("bob", 1, &[("alice", 0)]);
    let mut carol = peer("carol", 2, &[("alice", 0)]);
    let bob_key = bob.distribute(&KeyHandout::Everyone).unwrap();
    let carol_key = carol.distribute(&KeyHandout::Everyone).unwrap();
    let (_, shown_before) = bob.seal_text("shown before").unwrap();
    let (_, from_carol) = carol.seal_text("carol, before leaving").unwrap();
    let (_, from_bob) = bob.seal_text("bob, while alice was away").unwrap();
    let (_, too_late) = carol.seal_text("after the catch-up").unwrap();

    let mut resumed = joined(vec![public("bob", 1)], 12, true);
    resumed.former_members = vec![public("carol", 2)];
    let (mut alice, shown, mut stream, join) =
        join_alice(channel, &mut accepted, Some(10), resumed).await;
    match join.kind {
        Some(client_frame::Kind::Join(join)) => assert_eq!(join.after_seq, Some(10)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        shown.len(),
        3,
        "bob and carol pinned, then joined: {shown:?}"
    );
    assert_eq!(alice.last_seq("lobby"), 10);
    assert_eq!(alice.members("lobby"), ["bob"]);
    let own = stream.frame().await;
    assert_eq!(
        recipients(distribution(&own)),
        ["alice", "bob"],
        "nothing for a former member"
    );

    let script = [
        Kind::SenderKey(key_for(&bob_key[0], "bob", "alice", 4)),
        Kind::SenderKey(key_for(&carol_key[0], "carol", "alice", 9)),
        Kind::Message(message_from(&shown_before, "bob", 10)),
        Kind::Message(message_from(&from_carol, "carol", 11)),
        Kind::Message(message_from(&from_bob, "bob", 12)),
        Kind::CaughtUp(CaughtUp {
            room: "lobby".into(),
            seq: 12,
        }),
        Kind::SenderKey(key_for(&bob_key[0], "bob", "alice", 4)),
        Kind::Message(message_from(&too_late, "carol", 13)),
    ];
    let mut seen = Vec::new();
    for kind in script {
        stream.send(0, kind).await;
        seen.push(events(&mut alice).await);
    }
    let texts: Vec<(u64, &str)> = seen
        .iter()
        .flatten()
        .filter_map(|event| match event {
            Event::Message { seq, text, .. } => Some((*seq, text.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        texts,
        [
            (11, "carol, before leaving"),
            (12, "bob, while alice was away")
        ]
    );
    assert!(seen[..3].iter().all(Vec::is_empty), "{seen:?}");
    assert_eq!(
        seen[5],
        [Event::CaughtUp {
            room: "lobby".into(),
            seq: 12
        }]
    );
    assert!(seen[6].is_empty(), "the key in force again: {:?}", seen[6]);
    assert!(
        matches!(&seen[7][..], [Event::Warning(w)] if w.contains("not a member")),
        "{:?}",
        seen[7]
    );
    assert_eq!(alice.last_seq("lobby"), 13);
}

#[tokio::test]
async fn history_comes_as_one_event_with_our_own_messages() {
    let (channel, mut accepted) = start_relay().await;
    let (mut alice, _, mut stream, _) = join_alice(
        channel,
        &mut accepted,
        None,
        joined(vec![public("bob", 1)], 0, false),
    )
    .await;
    let own_key = stream.frame().await;
    stream
        .send(own_key.request_id, Kind::Ack(Ack { seq: 1 }))
        .await;
    assert_eq!(events(&mut alice).await, []);
    alice.send_text("lobby", "mine").await.unwrap();
    let mine = stream.frame().await;
    let mut bob = peer("bob", 1, &[("alice", 0)]);
    let bob_key = bob.distribute(&KeyHandout::Everyone).unwrap();
    let (_, his) = bob.seal_text("his").unwrap();

    let request_id = alice.history("lobby", 500).await.unwrap();
    let asked = stream.frame().await;
    assert_eq!(asked.request_id, request_id);
    match asked.kind {
        Some(client_frame::Kind::History(history)) => {
            assert_eq!(history.limit, MAX_HISTORY_MESSAGES)
        }
        other => panic!("{other:?}"),
    }
    let entry = |kind| HistoryEntry { kind: Some(kind) };
    let answer = History {
        room: "lobby".into(),
        entries: vec![
            entry(history_entry::Kind::SenderKey(key_for(
                distribution(&own_key),
                "alice",
                "alice",
                1,
            ))),
            entry(history_entry::Kind::SenderKey(key_for(
                &bob_key[0],
                "bob",
                "alice",
                2,
            ))),
            entry(history_entry::Kind::Message(message_from(
                sent(&mine),
                "alice",
                3,
            ))),
            entry(history_entry::Kind::Message(message_from(&his, "bob", 4))),
        ],
        former_members: Vec::new(),
    };
    stream.send(request_id, Kind::History(answer)).await;
    let shown = events(&mut alice).await;
    let [Event::History { room, messages }] = &shown[..] else {
        panic!("{shown:?}");
    };
    assert_eq!(room, "lobby");
    let read: Vec<(u64, &str, &str)> = messages
        .iter()
        .map(|m| (m.seq, m.sender.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(read, [(3, "alice", "mine"), (4, "bob", "his")]);
    assert!(messages.iter().all(|m| m.sent_at_ms > 0));
    assert_eq!(alice.last_seq("lobby"), 0, "history is not progress");
    assert_eq!(alice.pending(), ["mine"]);
}

#[tokio::test]
async fn a_leave_held_behind_a_refused_key_goes_after_the_messages_sealed_again() {
    let (channel, mut accepted) = start_relay().await;
    let first = joined(vec![public("bob", 1)], 5, false);
    let (mut alice, _, mut stream, _) = join_alice(channel, &mut accepted, None, first).await;
    let first_key = stream.frame().await;
    // Said, then left, while the relay has not taken the key yet: both wait.
    alice.send_text("lobby", "bye for now").await.unwrap();
    alice.leave("lobby").await.unwrap();
    let refusal = Rejection {
        code: Code::Unavailable as i32,
        message: "the database is away".into(),
    };
    stream
        .send(first_key.request_id, Kind::Rejection(refusal))
        .await;
    let warned = events(&mut alice).await;
    assert!(
        matches!(&warned[..], [Event::Warning(warning)] if warning.contains("refused our sender key")),
        "{warned:?}"
    );
    // A new key, then the message sealed under it, then the leave: it was not dropped
    // with the frames sealed under the refused key.
    let second_key = stream.frame().await;
    assert_ne!(
        key_id(distribution(&second_key)),
        key_id(distribution(&first_key))
    );
    stream
        .send(second_key.request_id, Kind::Ack(Ack { seq: 6 }))
        .await;
    assert_eq!(events(&mut alice).await, []);
    let message = stream.frame().await;
    assert_eq!(
        sent(&message).sealed.as_ref().unwrap().key_id,
        key_id(distribution(&second_key))
    );
    let leave = stream.frame().await;
    assert!(
        matches!(leave.kind, Some(client_frame::Kind::Leave(_))),
        "{leave:?}"
    );
    // Refused too (the database still away): still a member, and told so.
    let refusal = Rejection {
        code: Code::Unavailable as i32,
        message: "the database is away".into(),
    };
    stream
        .send(message.request_id, Kind::Ack(Ack { seq: 7 }))
        .await;
    stream
        .send(leave.request_id, Kind::Rejection(refusal))
        .await;
    let mut told = Vec::new();
    while !told
        .iter()
        .any(|event| matches!(event, Event::LeaveRefused { .. }))
    {
        told.extend(events(&mut alice).await);
    }
    assert!(!alice.state("lobby").unwrap().is_leaving(), "{told:?}");
}
