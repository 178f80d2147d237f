//! What members who push the relay's limits, or stop reading, cannot do to the others:
//! lose stored messages, fill the disk, hand a returning member a stale key, or hold
//! the relay's memory. Over real gRPC, with raw frames where a real client would not
//! misbehave.

mod common;

use std::time::Duration;

use common::process::ServerProcess;
use common::{Member, PATIENCE, RawClient, TestServer};
use e2ee_chat::client::{Contacts, Event};
use e2ee_chat::proto::{
    DistributeSenderKey, DistributionHeader, GetHistory, JoinRoom, SealedMessage, SendMessage,
    ServerFrame, WrappedChainKey, client_frame, history_entry, server_frame,
};
use e2ee_chat::server::Limits;
use e2ee_chat::store::DATABASE_FILE;
use tonic::Code;

/// A well-formed sealed message under `key_id` (the relay cannot tell it from a real
/// one), with `size` bytes of ciphertext.
fn sealed(key_id: u64, iteration: u64, size: usize) -> SealedMessage {
    SealedMessage {
        key_id,
        iteration: iteration as u32,
        device: 1,
        ciphertext: vec![iteration as u8; size].into(),
        signature: vec![9; 64].into(),
    }
}

fn send(room: &str, sealed: SealedMessage) -> client_frame::Kind {
    client_frame::Kind::Send(SendMessage {
        room: room.into(),
        sealed: Some(sealed),
    })
}

fn distribute(room: &str, key_id: u64, recipients: &[&str]) -> client_frame::Kind {
    client_frame::Kind::DistributeKey(DistributeSenderKey {
        room: room.into(),
        header: Some(DistributionHeader {
            key_id,
            iteration: 0,
            device: 1,
            signing_public_key: vec![3; 32].into(),
        }),
        copies: recipients
            .iter()
            .map(|recipient| WrappedChainKey {
                recipient: (*recipient).into(),
                device: 1,
                prekey_id: 5,
                wrapped: vec![1; 256].into(),
            })
            .collect(),
        signature: vec![2; 256].into(),
    })
}

/// Sends `kind` and returns the answer's kind.
async fn ask(
    client: &mut RawClient,
    request_id: u64,
    kind: client_frame::Kind,
) -> server_frame::Kind {
    client.send(request_id, kind).await;
    client.answer(request_id).await.kind.unwrap()
}

/// The sequence number of an `Ack`.
fn acked(answer: server_frame::Kind) -> u64 {
    match answer {
        server_frame::Kind::Ack(ack) => ack.seq,
        other => panic!("expected an Ack, got {other:?}"),
    }
}

#[tokio::test]
async fn a_message_resent_at_the_rooms_cap_deletes_no_stored_message() {
    let limits = Limits {
        max_messages_per_room: 5,
        ..Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let mut alice = RawClient::member(&server, "alice", "lobby").await;
    let mut seqs = Vec::new();
    for counter in 0..5 {
        seqs.push(acked(
            ask(
                &mut alice,
                10 + counter,
                send("lobby", sealed(7, counter, 32)),
            )
            .await,
        ));
    }
    // The fifth, resent three times as a client does when acknowledgements are lost:
    // each is acknowledged with the number it was first stored under.
    for resend in 0..3 {
        let seq = acked(ask(&mut alice, 20 + resend, send("lobby", sealed(7, 4, 32))).await);
        assert_eq!(seq, seqs[4]);
    }
    let history = client_frame::Kind::History(GetHistory {
        room: "lobby".into(),
        limit: 100,
    });
    let server_frame::Kind::History(history) = ask(&mut alice, 30, history).await else {
        panic!("expected History");
    };
    let counters: Vec<u32> = history
        .entries
        .iter()
        .filter_map(|entry| match &entry.kind {
            Some(history_entry::Kind::Message(message)) => {
                Some(message.sealed.as_ref().unwrap().iteration)
            }
            _ => None,
        })
        .collect();
    assert_eq!(counters, [0, 1, 2, 3, 4], "all five are still stored");
}

#[tokio::test]
async fn a_returning_member_is_never_handed_a_key_superseded_where_it_left_off() {
    let server = TestServer::start().await;
    let mut alice = RawClient::member(&server, "alice", "lobby").await;
    let _bob_away = RawClient::member(&server, "bob", "lobby").await;
    const K1: u64 = 0x1111;
    const K2: u64 = 0x2222;
    const K3: u64 = 0x3333;
    acked(ask(&mut alice, 10, distribute("lobby", K1, &["bob"])).await);
    acked(ask(&mut alice, 11, send("lobby", sealed(K1, 0, 32))).await);
    // Two rotations with nothing sent under the first (as when members come and go).
    let bob_left_off = acked(ask(&mut alice, 12, distribute("lobby", K2, &["bob"])).await);
    acked(ask(&mut alice, 13, distribute("lobby", K3, &["bob"])).await);

    // bob comes back from where it left off: K1 was superseded there.
    let mut bob = RawClient::open(&server, "bob").await;
    let join = client_frame::Kind::Join(JoinRoom {
        room: "lobby".into(),
        create_private: false,
        after_seq: Some(bob_left_off),
    });
    bob.send(1, join).await;
    let caught_up = frames_until_caught_up(&mut bob).await;
    let keys: Vec<u64> = caught_up
        .iter()
        .filter_map(|frame| match &frame.kind {
            Some(server_frame::Kind::SenderKey(key)) => key.header.as_ref().map(|h| h.key_id),
            _ => None,
        })
        .collect();
    assert_eq!(keys, [K3], "the keys sent before CaughtUp");
}

/// Reads frames until `CaughtUp`.
async fn frames_until_caught_up(client: &mut RawClient) -> Vec<ServerFrame> {
    tokio::time::timeout(PATIENCE, async {
        let mut frames = Vec::new();
        loop {
            let frame = client
                .incoming
                .message()
                .await
                .unwrap()
                .expect("stream ended");
            let done = matches!(frame.kind, Some(server_frame::Kind::CaughtUp(_)));
            frames.push(frame);
            if done {
                return frames;
            }
        }
    })
    .await
    .expect("no CaughtUp")
}

#[tokio::test]
async fn a_member_over_its_storage_quota_is_refused_and_others_are_not() {
    let limits = Limits {
        max_user_bytes: 2_000,
        ..Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let mut alice = RawClient::member(&server, "alice", "lobby").await;
    let mut bob = RawClient::member(&server, "bob", "lobby").await;
    let mut refusal = None;
    for counter in 0..10 {
        match ask(
            &mut alice,
            10 + counter,
            send("lobby", sealed(7, counter, 600)),
        )
        .await
        {
            server_frame::Kind::Ack(_) => assert!(counter < 3, "{counter} messages fit"),
            server_frame::Kind::Rejection(rejection) => {
                refusal = Some(rejection);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let refusal = refusal.expect("the quota was never reached");
    assert_eq!(refusal.code, Code::ResourceExhausted as i32, "{refusal:?}");
    assert!(refusal.message.contains("try again later"), "{refusal:?}");
    // A resend of what is stored is still acknowledged, and bob is not affected.
    acked(ask(&mut alice, 30, send("lobby", sealed(7, 0, 600))).await);
    acked(ask(&mut bob, 31, send("lobby", sealed(8, 0, 600))).await);
}

#[tokio::test]
async fn a_full_store_forgets_its_oldest_messages_and_goes_on() {
    let limits = Limits {
        max_store_bytes: 2_400,
        ..Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let mut alice = RawClient::member(&server, "alice", "old").await;
    for counter in 0..3 {
        acked(
            ask(
                &mut alice,
                10 + counter,
                send("old", sealed(7, counter, 600)),
            )
            .await,
        );
    }
    // Others fill the store: nobody is refused, the oldest messages go.
    let mut bob = RawClient::member(&server, "bob", "new").await;
    for counter in 0..5 {
        acked(ask(&mut bob, 10 + counter, send("new", sealed(8, counter, 600))).await);
    }
    let stored = |history: server_frame::Kind| match history {
        server_frame::Kind::History(history) => history.entries.len(),
        other => panic!("expected History, got {other:?}"),
    };
    let history = |room: &str| {
        client_frame::Kind::History(GetHistory {
            room: room.into(),
            limit: 100,
        })
    };
    assert_eq!(stored(ask(&mut alice, 30, history("old")).await), 0);
    assert_eq!(
        stored(ask(&mut bob, 30, history("new")).await),
        3,
        "about 690 bytes each"
    );
}

#[tokio::test]
async fn a_catch_up_to_a_client_that_stops_reading_is_ended() {
    let limits = Limits {
        outbound_queue: 16,
        stall_timeout_secs: 1,
        ..Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let mut alice = RawClient::member(&server, "alice", "lobby").await;
    let bob = RawClient::member(&server, "bob", "lobby").await;
    drop(bob);
    for counter in 0..200 {
        acked(
            ask(
                &mut alice,
                10 + counter,
                send("lobby", sealed(7, counter, 200)),
            )
            .await,
        );
    }
    // bob comes back for everything, reads the answer to its join, then stops reading
    // (and so stops granting HTTP/2 window).
    let mut bob = RawClient::open_on(server.narrow_channel(1024).await, "bob").await;
    let join = client_frame::Kind::Join(JoinRoom {
        room: "lobby".into(),
        create_private: false,
        after_seq: Some(0),
    });
    bob.send(1, join).await;
    bob.answer(1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // When it reads again, the relay has given up on it: the stream ends before the
    // catch-up does, and it may come back for the rest.
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match bob.incoming.message().await {
                Ok(Some(frame)) => assert!(
                    !matches!(frame.kind, Some(server_frame::Kind::CaughtUp(_))),
                    "the catch-up went on"
                ),
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the stream never ended");
    let status = ended.expect("the stream ended without a status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("read nothing"), "{status:?}");
}

#[tokio::test]
async fn a_live_client_that_stops_reading_is_ended_even_with_little_queued() {
    let limits = Limits {
        stall_timeout_secs: 1,
        ..Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let mut alice = RawClient::member(&server, "alice", "lobby").await;
    let mut bob = RawClient::open_on(server.narrow_channel(1024).await, "bob").await;
    bob.join("lobby").await;
    // A few frames, far from filling bob's queue; bob reads none of them, and grants no
    // HTTP/2 window for more than the first.
    for counter in 0..10 {
        acked(
            ask(
                &mut alice,
                10 + counter,
                send("lobby", sealed(7, counter, 32)),
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = bob.final_status().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("read nothing"), "{status:?}");
}

#[tokio::test]
async fn what_nobody_uses_is_reclaimed_and_names_are_freed() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());
    let mut alice = Member::join_via(&server.url, "alice", "lobby").await;
    let bob = Member::join_via(&server.url, "bob", "lobby").await;
    alice.sees_join("bob").await;
    let carol = Member::join_via(&server.url, "carol", "#quiet").await;
    for member in [alice, bob, carol] {
        member.quit().await.unwrap();
    }
    // As if a year had passed for bob and for #quiet, and not for the others.
    server.terminate();
    let database = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    database
        .execute_batch(
            "UPDATE identities SET seen_ms = 0 WHERE user = 'bob';
             UPDATE rooms SET used_ms = 0 WHERE name = '#quiet';",
        )
        .unwrap();
    drop(database);
    // What nobody uses is reclaimed as the server starts (and every minute after).
    let server = ServerProcess::start(dir.path());
    common::process::wait_for_line(&server.stderr, "reclaimed");

    // bob's name is free: someone else may register it, with other keys.
    let mallory = common::identity("mallory");
    let channel = e2ee_chat::client::connect(&server.url, None).await.unwrap();
    let credentials = e2ee_chat::client::login(channel, &mallory, "bob")
        .await
        .unwrap();
    assert!(credentials.registered);
    // alice is still a member of the lobby, and bob no longer is.
    let mut alice = RawClient::open_url(&server.url, "alice").await;
    let join = |room: &str| {
        client_frame::Kind::Join(JoinRoom {
            room: room.into(),
            create_private: false,
            after_seq: Some(0),
        })
    };
    let server_frame::Kind::Joined(joined) = ask(&mut alice, 1, join("lobby")).await else {
        panic!("expected Joined");
    };
    assert!(joined.resumed);
    assert!(joined.members.is_empty(), "{:?}", joined.members);
    // #quiet is gone: carol joins it afresh.
    let mut carol = RawClient::open_url(&server.url, "carol").await;
    let server_frame::Kind::Joined(joined) = ask(&mut carol, 1, join("#quiet")).await else {
        panic!("expected Joined");
    };
    assert!(!joined.resumed, "{joined:?}");
}

/// Issue 12, part 4: a relay that lets a user of its own into a private room (here its
/// operator, writing an invitation into the database) gets that user every frame of the
/// room, and still no sender key: members hand their keys only to those whose
/// invitation, signed by the owner they pinned, names their keys.
#[tokio::test]
async fn a_member_the_relay_adds_to_a_private_room_gets_no_sender_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());
    // bob and the relay's accomplice register their names, as anyone may.
    common::log_in(&server.url, "bob").await.unwrap();
    common::log_in(&server.url, "mallory").await.unwrap();
    let (mut alice, _) =
        Member::try_join(&server.url, "alice", "club", true, Contacts::in_memory())
            .await
            .unwrap();
    alice.invite("bob");
    alice
        .wait_for(|event| matches!(event, Event::Notice(text) if text.contains("invited bob")))
        .await;
    let bob = Member::join_via(&server.url, "bob", "club").await;
    alice.sees_join("bob").await;
    for member in [alice, bob] {
        member.quit().await.unwrap();
    }

    server.terminate();
    let database = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    database
        .execute(
            "INSERT INTO invitations (room, user) VALUES ('club', 'mallory')",
            [],
        )
        .unwrap();
    drop(database);
    let server = ServerProcess::start(dir.path());

    let mut alice = Member::join_via(&server.url, "alice", "club").await;
    let mut bob = Member::join_via(&server.url, "bob", "club").await;
    let mut mallory = Member::join_via(&server.url, "mallory", "club").await;
    for member in [&mut alice, &mut bob] {
        member
            .wait_for(|event| {
                matches!(event, Event::Warning(text)
                    if text.contains("mallory gets no key") && text.contains("no invitation"))
            })
            .await;
    }
    alice.send("for alice's and bob's eyes only").await;
    bob.send("only for alice").await;
    assert_eq!(
        bob.messages(1).await,
        [(
            "alice".to_owned(),
            "for alice's and bob's eyes only".to_owned()
        )]
    );
    assert_eq!(
        alice.messages(1).await,
        [("bob".to_owned(), "only for alice".to_owned())]
    );

    // The relay treats mallory as a member: she gets both messages' frames...
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut frames = Vec::new();
    loop {
        frames.extend(mallory.drain_frames());
        let messages = frames
            .iter()
            .filter(|frame| matches!(frame.kind, Some(server_frame::Kind::Message(_))))
            .count();
        if messages == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{frames:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and no sender key, so she opens nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    frames.extend(mallory.drain_frames());
    let keys: Vec<_> = frames
        .iter()
        .filter(|frame| matches!(frame.kind, Some(server_frame::Kind::SenderKey(_))))
        .collect();
    assert!(keys.is_empty(), "{keys:?}");
    let opened: Vec<_> = mallory
        .drain_events()
        .into_iter()
        .filter(|event| matches!(event, Event::Message { .. }))
        .collect();
    assert!(opened.is_empty(), "{opened:?}");
}

/// An acknowledgement waits for a catch-up as the live entries it holds back do: a
/// client hands its key to a member who joined from its oldest unacknowledged message
/// on, so it must never hear that a message was stored before it hears of a join the
/// relay ordered before that message (found by review: the acknowledgement overtook the
/// held-back join, and the newcomer got a chain past a message it then received).
#[tokio::test]
async fn an_acknowledgement_never_overtakes_a_join_held_back_by_a_catch_up() {
    const K1: u64 = 0x1111;
    const K2: u64 = 0x2222;
    let server = TestServer::start().await;
    let mut alice = RawClient::member(&server, "alice", "lobby").await;
    drop(RawClient::member(&server, "bob", "lobby").await);
    acked(ask(&mut alice, 10, distribute("lobby", K1, &["bob"])).await);
    for iteration in 0..1500 {
        acked(
            ask(
                &mut alice,
                11 + iteration,
                send("lobby", sealed(K1, iteration, 200)),
            )
            .await,
        );
    }

    // bob comes back from the start over a narrow window and reads nothing yet: its
    // catch-up stalls, and live entries wait behind it.
    let mut bob = RawClient::open_on(server.narrow_channel(16 * 1024).await, "bob").await;
    let join = client_frame::Kind::Join(JoinRoom {
        room: "lobby".into(),
        create_private: false,
        after_seq: Some(0),
    });
    bob.send(1, join).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(RawClient::member(&server, "carol", "lobby").await);
    bob.send(2, distribute("lobby", K2, &["alice"])).await;
    bob.send(3, send("lobby", sealed(K2, 0, 32))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut frames = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while !frames
            .iter()
            .any(|frame: &ServerFrame| frame.request_id == 3)
        {
            frames.push(bob.incoming.message().await.unwrap().unwrap());
        }
    })
    .await
    .expect("bob's message was never acknowledged");
    let position = |wanted: &dyn Fn(&ServerFrame) -> bool| frames.iter().position(wanted);
    let carol_joined = position(&|frame| {
        matches!(&frame.kind, Some(server_frame::Kind::MemberJoined(joined))
            if joined.member.as_ref().is_some_and(|member| member.user == "carol"))
    })
    .expect("bob hears of carol");
    let caught_up =
        position(&|frame| matches!(frame.kind, Some(server_frame::Kind::CaughtUp(_)))).unwrap();
    let acknowledged = position(&|frame| frame.request_id == 3).unwrap();
    assert!(caught_up < carol_joined && carol_joined < acknowledged);
}
