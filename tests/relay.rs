//! The relay and the client library together, over real gRPC on loopback.

mod common;

use common::{
    Member, PATIENCE, RawClient, RecordingProxy, TestServer, contains, room_keys,
    unknown_key_message,
};
use e2ee_chat::client::Event;
use e2ee_chat::proto::{
    ClientFrame, LeaveReason, MessageDelivery, SealedMessage, SendMessage, ServerFrame,
    client_frame, server_frame,
};
use e2ee_chat::server::Limits;
use tonic::Code;

fn texts(messages: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut pairs: Vec<(&str, &str)> = messages
        .iter()
        .map(|(sender, text)| (sender.as_str(), text.as_str()))
        .collect();
    pairs.sort();
    pairs
}

#[tokio::test]
async fn three_members_read_each_other_including_right_after_a_join() {
    let server = TestServer::start().await;
    let mut alice = Member::join(&server, "alice", "lobby").await;
    let mut bob = Member::join(&server, "bob", "lobby").await;
    alice.sees_join("bob").await;
    let mut carol = Member::join(&server, "carol", "lobby").await;
    // Sent the moment carol is in, before alice or bob may have handed her their keys.
    alice.send("hello carol, from alice").await;
    bob.send("hello carol, from bob").await;
    carol.send("hi all, carol here").await;

    assert_eq!(
        texts(&carol.messages(2).await),
        [
            ("alice", "hello carol, from alice"),
            ("bob", "hello carol, from bob")
        ]
    );
    assert_eq!(
        texts(&alice.messages(2).await),
        [
            ("bob", "hello carol, from bob"),
            ("carol", "hi all, carol here")
        ]
    );
    assert_eq!(
        texts(&bob.messages(2).await),
        [
            ("alice", "hello carol, from alice"),
            ("carol", "hi all, carol here")
        ]
    );
    assert_eq!(carol.members().await, ["alice", "bob"]);

    // Nobody sees a message twice, or their own.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for member in [&mut alice, &mut bob, &mut carol] {
        let extra: Vec<Event> = member
            .drain_events()
            .into_iter()
            .filter(|event| matches!(event, Event::Message { .. }))
            .collect();
        assert!(extra.is_empty(), "{}: {extra:?}", member.name);
    }
}

#[tokio::test]
async fn messages_arrive_in_the_order_they_were_sent() {
    let server = TestServer::start().await;
    let alice = Member::join(&server, "alice", "ordered").await;
    let mut bob = Member::join(&server, "bob", "ordered").await;
    for n in 0..50 {
        alice.send(&format!("message {n}")).await;
    }
    let received = bob.messages(50).await;
    let expected: Vec<(String, String)> = (0..50)
        .map(|n| ("alice".to_owned(), format!("message {n}")))
        .collect();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn the_wire_never_carries_a_plaintext() {
    let server = TestServer::start().await;
    let proxy = RecordingProxy::start(server.addr).await;
    let mut alice = Member::join_via(&proxy.url, "alice", "wiretap-room").await;
    let mut bob = Member::join_via(&proxy.url, "bob", "wiretap-room").await;
    alice.sees_join("bob").await;
    let marker = "MARKER-7f3a9c-do-not-leak";
    alice.send(&format!("alice says {marker}")).await;
    bob.send(&format!("bob says {marker}")).await;
    assert_eq!(bob.messages(1).await[0].1, format!("alice says {marker}"));
    assert_eq!(alice.messages(1).await[0].1, format!("bob says {marker}"));

    let wire = proxy.bytes();
    assert!(
        wire.len() > 2_000,
        "the proxy saw only {} bytes",
        wire.len()
    );
    // The recording does hold what travels in the clear: the room name.
    assert!(contains(&wire, b"wiretap-room"));
    assert!(
        !contains(&wire, marker.as_bytes()),
        "the marker crossed the wire in the clear"
    );
    assert!(!contains(&wire, b"alice says"));
}

#[tokio::test]
async fn a_member_who_left_cannot_read_what_is_said_after() {
    let server = TestServer::start().await;
    let mut alice = Member::join(&server, "alice", "lobby").await;
    let mut bob = Member::join(&server, "bob", "lobby").await;
    let mut carol = Member::join(&server, "carol", "lobby").await;
    alice.send("before bob left").await;
    assert_eq!(bob.messages(1).await[0].1, "before bob left");
    assert_eq!(carol.messages(1).await[0].1, "before bob left");

    bob.leave();
    bob.wait_for(|event| matches!(event, Event::Left { .. }))
        .await;
    for member in [&mut alice, &mut carol] {
        member
            .wait_for(|event| {
                matches!(event, Event::MemberLeft { user, reason: LeaveReason::Left, .. } if user == "bob")
            })
            .await;
    }
    bob.drain_frames();
    carol.drain_frames();
    alice.send("after bob left").await;
    assert_eq!(carol.messages(1).await[0].1, "after bob left");

    // The relay does not send it to bob...
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        bob.drain_frames()
            .iter()
            .all(|frame| !matches!(frame.kind, Some(server_frame::Kind::Message(_)))),
        "bob received a message after leaving"
    );
    // ...and a relay that did could not make bob read it: alice rotated her key.
    let delivery = carol
        .drain_frames()
        .into_iter()
        .find(|frame| matches!(frame.kind, Some(server_frame::Kind::Message(_))))
        .expect("carol received alice's message");
    let events = bob.inject(delivery).await;
    assert!(
        !events
            .iter()
            .any(|event| matches!(event, Event::Message { .. })),
        "bob decrypted a message sent after he left: {events:?}"
    );
}

#[tokio::test]
async fn tampered_messages_are_dropped_with_a_warning() {
    let server = TestServer::start().await;
    let mut bob = Member::join(&server, "bob", "lobby").await;
    // mallory is a member who sends a correctly keyed message with one bit flipped.
    let mut mallory = RawClient::open(&server, "mallory").await;
    let members = mallory.join("lobby").await;
    let mut keys = room_keys("lobby", "mallory", members);
    let distribution = keys
        .distribute(&e2ee_chat::client::KeyHandout::Everyone)
        .unwrap()
        .remove(0);
    mallory
        .send(2, client_frame::Kind::DistributeKey(distribution))
        .await;
    let (_, mut tampered) = keys.seal_text("you will never see this").unwrap();
    let sealed = tampered.sealed.as_mut().unwrap();
    let mut ciphertext = sealed.ciphertext.to_vec();
    ciphertext[0] ^= 0x01;
    sealed.ciphertext = ciphertext.into();
    mallory.send(3, client_frame::Kind::Send(tampered)).await;
    // (A message that verifies and then fails AES-GCM would need the sender key's own
    // signing key: only its sender can make one, and `crypto::group`'s tests cover it.)
    let (_, genuine) = keys.seal_text("but you will see this").unwrap();
    mallory.send(5, client_frame::Kind::Send(genuine)).await;

    let events = bob
        .wait_for(|event| matches!(event, Event::Message { .. }))
        .await;
    // (A raw client publishes no prekey: bob says it gets no key from him.)
    let warnings: Vec<&String> = events
        .iter()
        .filter_map(|event| match event {
            Event::Warning(text) if !text.contains("no prekey") => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert!(warnings[0].contains("mallory") && warnings[0].contains("signature does not verify"));
    assert!(
        matches!(events.last(), Some(Event::Message { text, .. }) if text == "but you will see this")
    );

    // A relay that tampers is caught by the signature.
    let (_, sealed) = keys.seal_text("relay-tampered").unwrap();
    let mut sealed = sealed.sealed.unwrap();
    sealed.iteration += 1;
    let forged = ServerFrame {
        request_id: 0,
        kind: Some(server_frame::Kind::Message(MessageDelivery {
            room: "lobby".into(),
            sender: "mallory".into(),
            sealed: Some(sealed),
            seq: 0,
        })),
    };
    let events = bob.inject(forged).await;
    assert!(
        matches!(&events[..], [Event::Warning(text)] if text.contains("signature does not verify")),
        "{events:?}"
    );
}

#[tokio::test]
async fn an_oversized_frame_ends_that_stream_only() {
    let limits = Limits {
        max_frame_bytes: 8 * 1024,
        ..Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let alice = Member::join(&server, "alice", "lobby").await;
    let mut bob = Member::join(&server, "bob", "lobby").await;
    let mut big = RawClient::member(&server, "big", "lobby").await;
    let oversized = SendMessage {
        room: "lobby".into(),
        sealed: Some(SealedMessage {
            ciphertext: vec![0; 9 * 1024].into(),
            ..unknown_key_message()
        }),
    };
    big.send(2, client_frame::Kind::Send(oversized)).await;
    let status = big.final_status().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    alice.send("still here").await;
    assert_eq!(bob.messages(1).await[0].1, "still here");
}

/// Bytes that are not a protobuf message, sent on the `Chat` method.
async fn send_garbage(server: &TestServer, user: &str) -> tonic::Status {
    let (channel, credentials) = common::log_in(&server.url, user).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(credentials.authorize(channel));
    grpc.ready().await.unwrap();
    // Field 1 as a varint, cut off in the middle.
    let frames = tokio_stream::iter(vec![vec![0x08, 0xff]]);
    let request = tonic::Request::new(frames);
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/chat.v2.ChatService/Chat");
    let response = grpc.streaming(request, path, common::RawBytes).await;
    let mut stream = match response {
        Ok(response) => response.into_inner(),
        Err(status) => return status,
    };
    tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn undecodable_bytes_end_that_stream_with_invalid_argument() {
    let server = TestServer::start().await;
    let alice = Member::join(&server, "alice", "lobby").await;
    let mut bob = Member::join(&server, "bob", "lobby").await;
    let status = send_garbage(&server, "garbage").await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("could not decode"), "{status:?}");
    alice.send("unaffected").await;
    assert_eq!(bob.messages(1).await[0].1, "unaffected");
}

#[tokio::test]
async fn malformed_frames_are_refused_one_by_one_and_the_stream_goes_on() {
    let server = TestServer::start().await;
    let mut raw = RawClient::member(&server, "sloppy", "lobby").await;

    let mut refusals = Vec::new();
    let bad_frames = [
        ClientFrame {
            request_id: 7,
            kind: None,
        },
        ClientFrame {
            request_id: 8,
            kind: Some(client_frame::Kind::Send(SendMessage {
                room: "lobby".into(),
                sealed: Some(SealedMessage {
                    key_id: 1,
                    iteration: 0,
                    device: 1,
                    ciphertext: vec![0; 32].into(),
                    signature: vec![0; 5].into(),
                }),
            })),
        },
        ClientFrame {
            request_id: 9,
            kind: Some(client_frame::Kind::Send(SendMessage {
                room: "bad room/name".into(),
                sealed: None,
            })),
        },
        ClientFrame {
            request_id: 10,
            kind: Some(client_frame::Kind::Send(SendMessage {
                room: "lobby".into(),
                sealed: None,
            })),
        },
        ClientFrame {
            request_id: 12,
            kind: Some(client_frame::Kind::DistributeKey(
                e2ee_chat::proto::DistributeSenderKey {
                    room: "lobby".into(),
                    header: Some(e2ee_chat::proto::DistributionHeader {
                        key_id: 1,
                        iteration: 0,
                        device: 1,
                        signing_public_key: vec![0; 32].into(),
                    }),
                    copies: vec![
                        e2ee_chat::proto::WrappedChainKey {
                            recipient: "victim".into(),
                            device: 1,
                            prekey_id: 1,
                            wrapped: vec![0; 256].into(),
                        };
                        2
                    ],
                    signature: vec![0; 256].into(),
                },
            )),
        },
    ];
    for frame in bad_frames {
        let id = frame.request_id;
        raw.send_frame(frame).await;
        match raw.answer(id).await.kind {
            Some(server_frame::Kind::Rejection(rejection)) => refusals.push(rejection),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    assert!(
        refusals
            .iter()
            .all(|r| r.code == Code::InvalidArgument as i32),
        "{refusals:?}"
    );
    assert!(refusals[0].message.contains("no kind"));
    assert!(refusals[1].message.contains("signature is 5 bytes"));
    assert!(refusals[2].message.contains("room name"));
    assert!(refusals[3].message.contains("sealed is missing"));
    assert!(
        refusals[4].message.contains("\"victim\" twice"),
        "{refusals:?}"
    );

    // request_id 0 cannot be answered by id, but is still refused, and the stream lives.
    raw.send(
        0,
        client_frame::Kind::Leave(e2ee_chat::proto::LeaveRoom {
            room: "lobby".into(),
        }),
    )
    .await;
    let frame = raw.answer(0).await;
    assert!(
        matches!(frame.kind, Some(server_frame::Kind::Rejection(r)) if r.message.contains("non-zero"))
    );
    raw.send(
        11,
        client_frame::Kind::Leave(e2ee_chat::proto::LeaveRoom {
            room: "lobby".into(),
        }),
    )
    .await;
    assert!(matches!(
        raw.answer(11).await.kind,
        Some(server_frame::Kind::Ack(_))
    ));
}

#[tokio::test]
async fn a_client_that_never_reads_does_not_hold_up_the_others() {
    let limits = Limits {
        outbound_queue: 64,
        ..Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let mut alice = Member::join(&server, "alice", "lobby").await;
    let mut bob = Member::join(&server, "bob", "lobby").await;
    // stuck joins and then never reads a frame again.
    let mut stuck = RawClient::member(&server, "stuck", "lobby").await;
    alice.sees_join("stuck").await;

    // Batches small enough for bob's queue: only a client that does not read falls behind.
    let text = "x".repeat(4_000);
    for _batch in 0..30 {
        for _ in 0..20 {
            alice.send(&text).await;
        }
        assert_eq!(bob.messages(20).await.len(), 20);
    }
    let status = stuck.final_status().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("fast enough"), "{status:?}");
    // It stays a member, to catch up when it reads again; nobody had to rotate.
    assert_eq!(alice.members().await, ["bob", "stuck"]);
    assert!(
        !alice
            .drain_events()
            .iter()
            .any(|event| matches!(event, Event::MemberLeft { .. }))
    );
}

#[tokio::test]
async fn only_members_send_to_or_hear_from_a_room() {
    let server = TestServer::start().await;
    let alice = Member::join(&server, "alice", "private").await;
    let mut bob = Member::join(&server, "bob", "private").await;
    let mut outsider = RawClient::member(&server, "outsider", "elsewhere").await;

    let intrusion = SendMessage {
        room: "private".into(),
        sealed: Some(unknown_key_message()),
    };
    outsider.send(2, client_frame::Kind::Send(intrusion)).await;
    match outsider.answer(2).await.kind {
        Some(server_frame::Kind::Rejection(rejection)) => {
            assert_eq!(rejection.code, Code::PermissionDenied as i32);
            assert!(rejection.message.contains("not a member"));
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    alice.send("members only").await;
    assert_eq!(bob.messages(1).await[0].1, "members only");
    // The outsider's stream carried nothing of the room.
    outsider
        .send(
            3,
            client_frame::Kind::Leave(e2ee_chat::proto::LeaveRoom {
                room: "elsewhere".into(),
            }),
        )
        .await;
    let mut seen = Vec::new();
    loop {
        let frame = outsider.incoming.message().await.unwrap().unwrap();
        if frame.request_id == 3 {
            break;
        }
        seen.push(frame);
    }
    assert!(seen.is_empty(), "the outsider received {seen:?}");
}

/// One reflection request and its answer, in one version of the reflection protocol
/// (`v1` or `v1alpha`): `$request` is a `MessageRequest` variant, `$answer` the
/// `MessageResponse` variant expected back, and the macro yields its content.
macro_rules! reflect {
    ($version:ident, $server:expr, $request:ident($argument:expr), $answer:ident) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

        let mut client = ServerReflectionClient::new($server.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::$request($argument)),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        match responses.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::$answer(answer)) => answer,
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

/// What `grpcurl list` asks.
macro_rules! list_services {
    ($version:ident, $server:expr) => {
        reflect!(
            $version,
            $server,
            ListServices(String::new()),
            ListServicesResponse
        )
        .service
        .into_iter()
        .map(|service| service.name)
        .collect::<Vec<String>>()
    };
}

#[tokio::test]
async fn health_and_reflection_answer() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "chat.v2.ChatService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }

    let v1 = list_services!(v1, server);
    let v1alpha = list_services!(v1alpha, server);
    for (services, itself) in [
        (&v1, "grpc.reflection.v1.ServerReflection"),
        (&v1alpha, "grpc.reflection.v1alpha.ServerReflection"),
    ] {
        for expected in ["chat.v2.ChatService", "grpc.health.v1.Health", itself] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
    }
    assert!(
        describe_v1(&server, "chat.v2.ChatService")
            .await
            .contains(&"ChatService".to_owned())
    );
}

/// What `grpcurl describe SYMBOL` asks: the file that defines it, whose service names
/// this returns.
async fn describe_v1(server: &TestServer, symbol: &str) -> Vec<String> {
    use prost::Message;

    let files = reflect!(
        v1,
        server,
        FileContainingSymbol(symbol.to_owned()),
        FileDescriptorResponse
    );
    files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(&bytes[..]).unwrap())
        .flat_map(|file| {
            file.service
                .into_iter()
                .map(|service| service.name().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn shutdown_ends_every_session_with_unavailable() {
    let server = TestServer::start().await;
    let alice = Member::join(&server, "alice", "lobby").await;
    let bob = Member::join(&server, "bob", "lobby").await;
    server.shut_down().await.unwrap();
    for member in [alice, bob] {
        match member.ended().await {
            e2ee_chat::client::ClientError::Ended(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(status.message().contains("shutting down"));
            }
            other => panic!("unexpected end: {other:?}"),
        }
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let _alice = Member::join(&server, "alice", "lobby").await;
    let bob = Member::join(&server, "bob", "lobby").await;

    let refused = common::log_in(&server.url, "carol")
        .await
        .expect_err("a third connection was served");
    assert!(
        matches!(
            refused,
            e2ee_chat::client::ClientError::Unreachable { .. }
                | e2ee_chat::client::ClientError::ClosedAtOnce { .. }
                | e2ee_chat::client::ClientError::Refused(_)
        ),
        "{refused:?}"
    );

    bob.quit().await.unwrap();
    // bob's connection closes shortly after his session: then carol gets in.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match common::log_in(&server.url, "carol").await {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < deadline => {}
            Err(error) => panic!("carol never got in: {error}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "carol never got in");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A small deterministic generator, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, max: u64) -> bytes::Bytes {
        let len = self.below(max + 1);
        (0..len)
            .map(|_| self.next() as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    fn name(&mut self) -> String {
        let names = [
            "lobby",
            "alice",
            "",
            "x".repeat(80).leak(),
            "a/b",
            "other",
            "ünï",
            "bob",
        ];
        names[self.below(names.len() as u64) as usize].to_owned()
    }
}

#[tokio::test]
async fn random_frames_get_answers_and_never_disturb_the_others() {
    use e2ee_chat::proto::{
        DistributeSenderKey, DistributionHeader, Invitation, InviteMember, JoinRoom, KickMember,
        LeaveRoom, Removal, WrappedChainKey,
    };

    let server = TestServer::start().await;
    let alice = Member::join(&server, "alice", "lobby").await;
    let mut bob = Member::join(&server, "bob", "lobby").await;
    let mut fuzzer = RawClient::open(&server, "fuzzer").await;
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    for request_id in 1..=300u64 {
        let kind = match random.below(7) {
            0 => Some(client_frame::Kind::Join(JoinRoom {
                create_private: random.below(2) == 0,
                room: random.name(),
                after_seq: None,
            })),
            1 => Some(client_frame::Kind::Leave(LeaveRoom {
                room: random.name(),
            })),
            2 => Some(client_frame::Kind::Send(SendMessage {
                room: random.name(),
                sealed: (random.below(4) > 0).then(|| SealedMessage {
                    key_id: random.next(),
                    iteration: random.next() as u32,
                    device: random.below(3) as u32,
                    ciphertext: random.bytes(64),
                    signature: random.bytes(80),
                }),
            })),
            3 => Some(client_frame::Kind::DistributeKey(DistributeSenderKey {
                room: random.name(),
                header: (random.below(4) > 0).then(|| DistributionHeader {
                    key_id: random.next(),
                    iteration: random.next() as u32,
                    device: random.below(3) as u32,
                    signing_public_key: random.bytes(40),
                }),
                copies: (0..random.below(3))
                    .map(|_| WrappedChainKey {
                        recipient: random.name(),
                        device: random.below(3) as u32,
                        prekey_id: random.next(),
                        wrapped: random.bytes(600),
                    })
                    .collect(),
                signature: random.bytes(300),
            })),
            4 => {
                let room = random.name();
                Some(client_frame::Kind::Invite(InviteMember {
                    invitation: (random.below(4) > 0).then(|| Invitation {
                        room: room.clone(),
                        owner: random.name(),
                        invitee: random.name(),
                        invitee_fingerprint: random.bytes(40),
                        issued_at_ms: random.next(),
                        signature: random.bytes(300),
                    }),
                    room,
                }))
            }
            5 => {
                let room = random.name();
                Some(client_frame::Kind::Kick(KickMember {
                    removal: (random.below(4) > 0).then(|| Removal {
                        room: room.clone(),
                        owner: random.name(),
                        member: random.name(),
                        issued_at_ms: random.next(),
                        signature: random.bytes(300),
                    }),
                    room,
                }))
            }
            _ => None,
        };
        fuzzer.send_frame(ClientFrame { request_id, kind }).await;
        let answer = fuzzer.answer(request_id).await;
        assert!(
            matches!(
                answer.kind,
                Some(
                    server_frame::Kind::Ack(_)
                        | server_frame::Kind::Joined(_)
                        | server_frame::Kind::Rejection(_)
                )
            ),
            "frame {request_id}: {answer:?}"
        );
    }
    alice.send("still fine").await;
    let events = bob
        .wait_for(|event| matches!(event, Event::Message { .. }))
        .await;
    assert!(matches!(events.last(), Some(Event::Message { text, .. }) if text == "still fine"));
}

/// A member that had no prekey when a sender handed its key out (upgraded from v1, not
/// yet on a v2 client) is told of it and gets the key with the sender's next message once
/// it has published one, rather than at the sender's next rotation. (The directory is
/// asked again at most every 30 seconds.)
#[tokio::test]
async fn a_member_without_a_prekey_gets_the_key_once_it_publishes_one() {
    use e2ee_chat::proto::{SignedPrekey, server_frame};

    let server = TestServer::start().await;
    let mut alice = Member::join(&server, "alice", "lobby").await;
    // dave joins without publishing a prekey.
    let mut dave = RawClient::open(&server, "dave").await;
    dave.join("lobby").await;
    alice
        .wait_for(|event| {
            matches!(event, Event::Warning(text)
                if text.contains("dave gets no key") && text.contains("no prekey"))
        })
        .await;

    let signed = common::prekeys("dave")
        .read()
        .unwrap()
        .current()
        .sign(&common::identity("dave"), "dave", 1)
        .unwrap();
    let prekey = SignedPrekey {
        device: signed.device,
        prekey_id: signed.id,
        created_at_ms: signed.created_at_ms,
        public_key: signed.public_key.into(),
        signature: signed.signature.into(),
    };
    e2ee_chat::client::key_exchange(&mut dave.client, Some(prekey), None, &[])
        .await
        .unwrap();
    alice.send("after dave's prekey").await;

    // dave's stream: alice's key for him, then her message.
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let frame = tokio::time::timeout(PATIENCE, dave.incoming.message())
            .await
            .expect("dave waited in vain")
            .unwrap()
            .unwrap();
        match frame.kind {
            Some(server_frame::Kind::Message(message)) => {
                kinds.push(format!("message {}", message.sealed.unwrap().iteration))
            }
            Some(server_frame::Kind::SenderKey(key)) => {
                assert_eq!(key.sender, "alice");
                kinds.push(format!("key from {}", key.header.unwrap().iteration));
            }
            _ => {}
        }
    }
    assert_eq!(kinds, ["key from 0", "message 0"]);
}
