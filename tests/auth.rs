//! Identity, login and key trust over real gRPC: who may log in under a name, what a
//! token admits, private rooms, and a relay that lies about keys.

mod common;

use std::time::Duration;

use common::malicious::KeySwappingRelay;
use common::restarted::RestartedRelay;
use common::{Member, TestServer, identity, log_in};
use e2ee_chat::client::{ClientError, Contacts, Event};
use e2ee_chat::crypto::{EncryptionKey, Identity, SigningKey};
use e2ee_chat::proto::auth_service_client::AuthServiceClient;
use e2ee_chat::proto::chat_service_client::ChatServiceClient;
use e2ee_chat::proto::{
    ClientFrame, CreateChallengeRequest, KeyExchangeRequest, LeaveReason, LoginRequest,
    PublicIdentity, client_frame,
};
use e2ee_chat::server::Limits;
use tonic::{Code, Request};

fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Logs in as `user` with `key_owner`'s keys, the raw way; returns the token.
async fn raw_login(
    server: &TestServer,
    user: &str,
    key_owner: &str,
) -> Result<String, tonic::Status> {
    login_publishing(server, user, &identity(key_owner), |_| {}).await
}

/// Logs in as `user` with `keys`, their published identity changed by `edit` first.
async fn login_publishing(
    server: &TestServer,
    user: &str,
    keys: &Identity,
    edit: impl FnOnce(&mut PublicIdentity),
) -> Result<String, tonic::Status> {
    let mut auth = AuthServiceClient::new(server.channel().await);
    let challenge = auth
        .create_challenge(CreateChallengeRequest { user: user.into() })
        .await?
        .into_inner()
        .challenge;
    let mut published = keys.publish(user).unwrap();
    edit(&mut published);
    let login = LoginRequest {
        identity: Some(published),
        signature: keys.sign_login(user, &challenge).unwrap().into(),
        challenge,
        ..Default::default()
    };
    Ok(auth.login(login).await?.into_inner().session_token)
}

#[tokio::test]
async fn the_first_login_registers_a_name_and_other_keys_cannot_take_it() {
    let server = TestServer::start().await;
    let (_, first) = log_in(&server.url, "alice").await.unwrap();
    assert!(first.registered);
    let (_, again) = log_in(&server.url, "alice").await.unwrap();
    assert!(
        !again.registered,
        "a second login with the same keys is just a login"
    );

    let status = raw_login(&server, "alice", "eve").await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("taken"), "{status:?}");

    let channel = server.channel().await;
    let error = e2ee_chat::client::login(channel, &identity("eve"), "alice")
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::NameTaken { .. }), "{error:?}");
    assert!(error.to_string().contains("is taken"), "{error}");
}

#[tokio::test]
async fn a_challenge_is_single_use_bound_to_its_user_and_must_be_signed() {
    let server = TestServer::start().await;
    let mut auth = AuthServiceClient::new(server.channel().await);
    let keys = identity("alice");
    let challenge = || async {
        AuthServiceClient::new(server.channel().await)
            .create_challenge(CreateChallengeRequest {
                user: "alice".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .challenge
    };

    // Signed by the wrong key.
    let fresh = challenge().await;
    let forged = LoginRequest {
        identity: Some(keys.publish("alice").unwrap()),
        signature: identity("eve").sign_login("alice", &fresh).unwrap().into(),
        challenge: fresh,
        ..Default::default()
    };
    let status = auth.login(forged).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A good answer works once.
    let fresh = challenge().await;
    let login = LoginRequest {
        identity: Some(keys.publish("alice").unwrap()),
        signature: keys.sign_login("alice", &fresh).unwrap().into(),
        challenge: fresh,
        ..Default::default()
    };
    auth.login(login.clone()).await.unwrap();
    let status = auth.login(login).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "replayed: {status:?}");
    assert!(status.message().contains("challenge"), "{status:?}");

    // A challenge issued for bob does not log alice in.
    let for_bob = AuthServiceClient::new(server.channel().await)
        .create_challenge(CreateChallengeRequest { user: "bob".into() })
        .await
        .unwrap()
        .into_inner()
        .challenge;
    let login = LoginRequest {
        identity: Some(keys.publish("alice").unwrap()),
        signature: keys.sign_login("alice", &for_bob).unwrap().into(),
        challenge: for_bob,
        ..Default::default()
    };
    assert_eq!(
        auth.login(login).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // An identity whose self-signature does not cover its name.
    let fresh = AuthServiceClient::new(server.channel().await)
        .create_challenge(CreateChallengeRequest {
            user: "alice2".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .challenge;
    let mut renamed = identity("carol").publish("carol").unwrap();
    renamed.user = "alice2".into();
    let login = LoginRequest {
        identity: Some(renamed),
        signature: identity("carol")
            .sign_login("alice2", &fresh)
            .unwrap()
            .into(),
        challenge: fresh,
        ..Default::default()
    };
    assert_eq!(
        auth.login(login).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn chat_service_needs_a_valid_unexpired_token() {
    let limits = Limits {
        token_ttl_secs: 1,
        ..Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let mut chat = ChatServiceClient::new(server.channel().await);
    let lookup = || KeyExchangeRequest {
        users: vec!["alice".into()],
        ..Default::default()
    };

    let status = chat.key_exchange(lookup()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "missing: {status:?}");
    let status = chat
        .key_exchange(authorized(lookup(), &"0".repeat(64)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "forged: {status:?}");
    let mut not_bearer = Request::new(lookup());
    not_bearer
        .metadata_mut()
        .insert("authorization", "Basic YWxpY2U6".parse().unwrap());
    assert_eq!(
        chat.key_exchange(not_bearer).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let (_frames, outbound) = tokio::sync::mpsc::channel::<ClientFrame>(1);
    let status = chat
        .chat(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "stream: {status:?}");

    let token = raw_login(&server, "alice", "alice").await.unwrap();
    let bundles = chat
        .key_exchange(authorized(lookup(), &token))
        .await
        .unwrap()
        .into_inner()
        .bundles;
    let found = bundles[0].identity.clone().unwrap();
    let expected = identity("alice").publish("alice").unwrap();
    assert_eq!(found.user, "alice");
    assert_eq!(found.signing_public_key, expected.signing_public_key);
    assert_eq!(found.encryption_public_key, expected.encryption_public_key);
    assert_eq!(bundles[0].device, 1);
    assert!(bundles[0].prekey.is_none(), "alice published no prekey");
    let status = chat
        .key_exchange(authorized(
            KeyExchangeRequest {
                users: vec!["nobody".into()],
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let status = chat
        .key_exchange(authorized(lookup(), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "expired: {status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
}

/// `user`'s invitation of itself to `room`, signed with its own keys: what an outsider
/// may try.
fn self_invitation(room: &str, user: &str) -> e2ee_chat::proto::Invitation {
    let keys = identity(user);
    let public = e2ee_chat::crypto::VerifiedIdentity::verify(&keys.publish(user).unwrap()).unwrap();
    let signed = e2ee_chat::crypto::Invitation::sign(&keys, room, user, &public, 1).unwrap();
    e2ee_chat::proto::Invitation {
        room: signed.room,
        owner: signed.owner,
        invitee: signed.invitee,
        invitee_fingerprint: signed.invitee_fingerprint.as_bytes().to_vec().into(),
        issued_at_ms: signed.issued_at_ms,
        signature: signed.signature.into(),
    }
}

#[tokio::test]
async fn private_rooms_admit_only_the_owner_and_invited_users() {
    let server = TestServer::start().await;
    let join_private = |user: &'static str| {
        let url = server.url.clone();
        async move { Member::try_join(&url, user, "#plans", true, Contacts::in_memory()).await }
    };
    let (mut alice, _) = join_private("alice").await.unwrap();
    // carol is registered but not invited.
    log_in(&server.url, "carol").await.unwrap();
    let refused = join_private("carol").await.err().unwrap();
    assert!(
        matches!(&refused, ClientError::Refused(status) if status.code() == Code::PermissionDenied),
        "{refused:?}"
    );
    // Nor can an outsider post to it or hear it.
    let mut outsider = common::RawClient::open(&server, "dave").await;
    outsider
        .send(
            2,
            client_frame::Kind::Invite(e2ee_chat::proto::InviteMember {
                room: "#plans".into(),
                invitation: Some(self_invitation("#plans", "dave")),
            }),
        )
        .await;
    match outsider.answer(2).await.kind {
        Some(e2ee_chat::proto::server_frame::Kind::Rejection(rejection)) => {
            assert_eq!(
                rejection.code,
                Code::PermissionDenied as i32,
                "{rejection:?}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    log_in(&server.url, "bob").await.unwrap();
    alice.invite("bob");
    alice
        .wait_for(|event| matches!(event, Event::Notice(text) if text.contains("invited bob")))
        .await;
    let (mut bob, _) = join_private("bob").await.unwrap();
    alice.sees_join("bob").await;
    alice.send("for members only").await;
    assert_eq!(
        bob.messages(1).await,
        [("alice".to_owned(), "for members only".to_owned())]
    );

    // Only the owner invites and kicks.
    bob.invite("carol");
    bob.wait_for(
        |event| matches!(event, Event::Warning(text) if text.contains("PERMISSION_DENIED")),
    )
    .await;

    alice.kick("bob");
    bob.wait_for(|event| matches!(event, Event::Removed { .. }))
        .await;
    alice
        .wait_for(|event| {
            matches!(event, Event::MemberLeft { user, reason: LeaveReason::Kicked, .. } if user == "bob")
        })
        .await;
    // bob's old keys do not open what alice says next; the relay does not even send it.
    alice.send("after bob").await;
    alice
        .wait_for(|event| matches!(event, Event::Delivered { .. }))
        .await;
    use e2ee_chat::proto::server_frame::Kind;
    let frames = bob.drain_frames();
    let kicked = frames
        .iter()
        .position(|frame| matches!(frame.kind, Some(Kind::MemberLeft(_))))
        .expect("bob was told");
    assert!(
        !frames[kicked..]
            .iter()
            .any(|frame| matches!(frame.kind, Some(Kind::Message(_)))),
        "{frames:?}"
    );
    drop(bob);
    let refused = join_private("bob").await.err().unwrap();
    assert!(
        matches!(&refused, ClientError::Refused(status) if status.code() == Code::PermissionDenied),
        "bob was kicked, his invitation with him: {refused:?}"
    );

    // An open room cannot be taken private, and has nobody to invite or kick.
    let open = Member::join(&server, "erin", "lobby").await;
    let refused = Member::try_join(&server.url, "frank", "lobby", true, Contacts::in_memory())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&refused, ClientError::Refused(status) if status.code() == Code::AlreadyExists),
        "{refused:?}"
    );
    let mut open = open;
    open.invite("alice");
    open.wait_for(
        |event| matches!(event, Event::Warning(text) if text.contains("FAILED_PRECONDITION")),
    )
    .await;
}

#[tokio::test]
async fn a_relay_that_swaps_keys_is_caught_and_learns_nothing() {
    let server = TestServer::start().await;
    let home = tempfile::tempdir().unwrap();
    let pins = home.path().join("alice").join("contacts.json");

    // Through the honest relay, alice meets bob and pins his keys; their safety numbers
    // agree.
    let alice_joins = |url: String| {
        let pins = pins.clone();
        async move {
            Member::try_join(
                &url,
                "alice",
                "lobby",
                false,
                Contacts::open(&pins).unwrap(),
            )
            .await
            .unwrap()
        }
    };
    let (mut alice, _) = alice_joins(server.url.clone()).await;
    let bob = Member::join(&server, "bob", "lobby").await;
    alice
        .wait_for(|event| matches!(event, Event::Pinned { user, .. } if user == "bob"))
        .await;
    let honest = alice.safety_number("bob").await.unwrap();
    assert_eq!(honest, bob.safety_number("alice").await.unwrap());
    alice.quit().await.unwrap();

    // Then alice comes back through a relay that presents mallory's keys as bob's,
    // properly self-signed under bob's name.
    let impostor = identity("mallory").publish("bob").unwrap();
    let evil = KeySwappingRelay::start(&server.url, "bob", impostor).await;
    let (mut alice, notices) = alice_joins(evil.url.clone()).await;
    let mallory = identity("mallory").fingerprint();
    assert!(
        notices.iter().any(|notice| matches!(
            notice,
            Event::KeysChanged { user, presented, .. } if user == "bob" && *presented == mallory
        )),
        "alice was not told: {notices:?}"
    );
    alice.send("for bob's eyes only").await;
    alice
        .wait_for(|event| matches!(event, Event::Delivered { .. }))
        .await;

    // alice wrapped her key for nobody, so neither the impostor nor anyone holding
    // mallory's keys can read what she sent.
    let sent = evil.sent();
    assert!(
        sent.iter()
            .any(|frame| matches!(frame.kind, Some(client_frame::Kind::Send(_)))),
        "{sent:?}"
    );
    let wrapped_for_bob = sent.iter().any(|frame| {
        matches!(&frame.kind, Some(client_frame::Kind::DistributeKey(distribution))
            if distribution.copies.iter().any(|copy| copy.recipient == "bob"))
    });
    assert!(
        !wrapped_for_bob,
        "alice gave the impostor her key: {sent:?}"
    );

    // What the real bob sends does not verify against the impostor's keys either, and
    // the safety numbers now differ, for the two of them to notice.
    bob.send("it is really me").await;
    alice
        .wait_for(|event| matches!(event, Event::Warning(text) if text.contains("bob")))
        .await;
    let now = alice.safety_number("bob").await.unwrap();
    assert_ne!(now, bob.safety_number("alice").await.unwrap());
    assert_ne!(now, honest);
}

#[tokio::test]
async fn a_replayed_message_is_shown_once_and_late_ones_within_the_window_still_are() {
    use e2ee_chat::proto::{MessageDelivery, ServerFrame, server_frame};

    let server = TestServer::start().await;
    let mut bob = Member::join(&server, "bob", "lobby").await;
    let mut dave = common::RawClient::open(&server, "dave").await;
    let members = dave.join("lobby").await;
    let mut keys = common::room_keys("lobby", "dave", members);
    let distribution = keys
        .distribute(&e2ee_chat::client::KeyHandout::Everyone)
        .unwrap()
        .remove(0);
    dave.send(2, client_frame::Kind::DistributeKey(distribution))
        .await;
    dave.answer(2).await;
    bob.sees_join("dave").await;

    // A relay holding three of dave's messages delivers them out of order, then one again.
    let deliveries: Vec<ServerFrame> = ["one", "two", "three"]
        .into_iter()
        .map(|text| {
            let (_, send) = keys.seal_text(text).unwrap();
            ServerFrame {
                request_id: 0,
                kind: Some(server_frame::Kind::Message(MessageDelivery {
                    room: "lobby".into(),
                    sender: "dave".into(),
                    sealed: send.sealed,
                    seq: 0,
                })),
            }
        })
        .collect();
    // Wait until bob holds dave's key: a message through the relay proves it.
    let (_, hello) = keys.seal_text("hello").unwrap();
    dave.send(3, client_frame::Kind::Send(hello)).await;
    assert_eq!(bob.messages(1).await[0].1, "hello");

    let mut shown = Vec::new();
    for index in [2, 0, 1, 0, 2] {
        for event in bob.inject(deliveries[index].clone()).await {
            match event {
                Event::Message { text, .. } => shown.push(text),
                Event::Warning(warning) => {
                    assert!(warning.contains("repeated"), "{warning}");
                    shown.push("(dropped)".to_owned());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(shown, ["three", "one", "two", "(dropped)", "(dropped)"]);
}

#[tokio::test]
async fn asking_for_challenges_never_crowds_out_a_login() {
    let server = TestServer::start().await;
    let mut auth = AuthServiceClient::new(server.channel().await);
    let ask = || CreateChallengeRequest {
        user: "alice".into(),
    };
    let mine = auth.create_challenge(ask()).await.unwrap().into_inner();
    // Someone else asks for many challenges in alice's name.
    for _ in 0..50 {
        auth.create_challenge(ask()).await.unwrap();
    }
    let keys = identity("alice");
    let login = LoginRequest {
        identity: Some(keys.publish("alice").unwrap()),
        signature: keys.sign_login("alice", &mine.challenge).unwrap().into(),
        challenge: mine.challenge,
        ..Default::default()
    };
    auth.login(login).await.unwrap();
}

#[tokio::test]
async fn a_login_that_straddles_a_relay_restart_asks_for_a_new_challenge_once() {
    let before = TestServer::start().await;
    let after = TestServer::start().await;

    // The relay restarted between the challenge and the login: the restarted relay does
    // not know the challenge, and a fresh one logs in.
    let relay = RestartedRelay::start(&before.url, &after.url, 1).await;
    let channel = e2ee_chat::client::connect(&relay.url, None).await.unwrap();
    let credentials = e2ee_chat::client::login(channel, &identity("alice"), "alice")
        .await
        .unwrap();
    assert_eq!(relay.challenges(), 2);
    let mut chat = credentials.chat_client(after.channel().await);
    let request = KeyExchangeRequest {
        users: vec!["alice".into()],
        ..Default::default()
    };
    chat.key_exchange(request).await.unwrap();

    // A refusal that stands is not tried over and over: two challenges, then the error.
    let relay = RestartedRelay::start(&before.url, &after.url, usize::MAX).await;
    let channel = e2ee_chat::client::connect(&relay.url, None).await.unwrap();
    let error = e2ee_chat::client::login(channel, &identity("bob"), "bob")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientError::Refused(status) if status.code() == Code::Unauthenticated),
        "{error:?}"
    );
    assert_eq!(relay.challenges(), 2);
}

#[tokio::test]
async fn a_room_lasts_until_its_last_member_leaves_and_owners_are_bounded() {
    let limits = Limits {
        max_owned_rooms: 2,
        ..Limits::default()
    };
    let server = TestServer::with_limits(limits).await;
    let mut owner = common::RawClient::open(&server, "owner").await;
    let mut request_id = 1;
    let mut frame = |kind: client_frame::Kind| {
        request_id += 1;
        (request_id, kind)
    };
    let join = |room: &str, create_private: bool| {
        client_frame::Kind::Join(e2ee_chat::proto::JoinRoom {
            room: room.into(),
            create_private,
            after_seq: None,
        })
    };
    use e2ee_chat::proto::server_frame::Kind;
    for room in ["#a", "#b"] {
        let (id, join) = frame(join(room, true));
        owner.send(id, join).await;
        assert!(matches!(owner.answer(id).await.kind, Some(Kind::Joined(_))));
    }
    // The owner cannot hoard more than its share...
    let (id, third) = frame(join("#c", true));
    owner.send(id, third).await;
    match owner.answer(id).await.kind {
        Some(Kind::Rejection(rejection)) => {
            assert_eq!(
                rejection.code,
                Code::ResourceExhausted as i32,
                "{rejection:?}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // ...and its rooms outlive its session: nobody else takes the names.
    drop(owner);
    let refused = Member::try_join(&server.url, "squatter", "#a", false, Contacts::in_memory())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&refused, ClientError::Refused(status) if status.code() == Code::PermissionDenied),
        "{refused:?}"
    );
    // Once its last member leaves, a room is forgotten and its name free again.
    let mut owner = common::RawClient::open(&server, "owner").await;
    let (id, back) = frame(join("#a", false));
    owner.send(id, back).await;
    match owner.answer(id).await.kind {
        Some(Kind::Joined(joined)) => assert!(joined.resumed && joined.private_room),
        other => panic!("expected Joined, got {other:?}"),
    }
    let (id, leave) = frame(client_frame::Kind::Leave(e2ee_chat::proto::LeaveRoom {
        room: "#a".into(),
    }));
    owner.send(id, leave).await;
    assert!(matches!(owner.answer(id).await.kind, Some(Kind::Ack(_))));
    let (newcomer, _) =
        Member::try_join(&server.url, "newcomer", "#a", true, Contacts::in_memory())
            .await
            .unwrap();
    newcomer.quit().await.unwrap();
    let (id, third) = frame(join("#c", true));
    owner.send(id, third).await;
    assert!(matches!(owner.answer(id).await.kind, Some(Kind::Joined(_))));
}

#[tokio::test]
async fn names_are_one_whatever_their_case_and_keys_belong_to_one_user() {
    let server = TestServer::start().await;
    raw_login(&server, "victim", "victim").await.unwrap();
    let status = raw_login(&server, "Victim", "mallory").await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("letter case"), "{status:?}");
    // Nor can anyone register another name with keys already registered.
    let status = raw_login(&server, "victim2", "victim").await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("keys"), "{status:?}");
    // The registered user logs in as ever.
    raw_login(&server, "victim", "victim").await.unwrap();
}

/// The same RSA public key, as an X.509 SubjectPublicKeyInfo under RSASSA-PSS's object
/// identifier (no parameters) instead of rsaEncryption's (NULL parameters): other bytes,
/// which a parser of SPKIs takes for the same key.
fn under_the_pss_oid(canonical: &[u8]) -> Vec<u8> {
    const RSA_ENCRYPTION: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    const RSASSA_PSS: &[u8] = &[
        0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
    ];
    // A 2048- to 4096-bit key's SPKI is a SEQUENCE with a two-byte length.
    assert_eq!(&canonical[..2], &[0x30, 0x82]);
    assert_eq!(&canonical[4..4 + RSA_ENCRYPTION.len()], RSA_ENCRYPTION);
    let body = &canonical[4 + RSA_ENCRYPTION.len()..];
    let length = u16::try_from(RSASSA_PSS.len() + body.len()).unwrap();
    let mut other = vec![0x30, 0x82];
    other.extend_from_slice(&length.to_be_bytes());
    other.extend_from_slice(RSASSA_PSS);
    other.extend_from_slice(body);
    other
}

/// Logs in as `user` with `keys`, publishing its encryption key in the other encoding.
async fn login_with_recoded_key(
    server: &TestServer,
    user: &str,
    keys: &Identity,
) -> Result<String, tonic::Status> {
    login_publishing(server, user, keys, |published| {
        let recoded = under_the_pss_oid(&published.encryption_public_key);
        assert_ne!(recoded, published.encryption_public_key.to_vec());
        published.encryption_public_key = recoded.into();
    })
    .await
}

#[tokio::test]
async fn a_registered_key_in_another_encoding_is_still_that_key() {
    let server = TestServer::start().await;
    raw_login(&server, "victim", "victim").await.unwrap();
    let victim = identity("victim");
    let mallory = identity("mallory");
    // The other encoding is a valid one: a key of one's own registers in it.
    let fresh = Identity::new(
        SigningKey::from_pkcs8_pem(&mallory.signing_key().to_pkcs8_pem()).unwrap(),
        EncryptionKey::generate(2048).unwrap(),
    );
    login_with_recoded_key(&server, "mallory", &fresh)
        .await
        .unwrap();
    // The victim's encryption key in that encoding, beside a signing key of mallory's
    // own (which signs the login), is still the victim's key.
    let victims_key =
        EncryptionKey::from_pkcs8_pem(&victim.encryption_key().to_pkcs8_pem()).unwrap();
    let borrowed = Identity::new(SigningKey::generate(2048).unwrap(), victims_key);
    let status = login_with_recoded_key(&server, "mallory2", &borrowed)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("keys"), "{status:?}");
}

#[tokio::test]
async fn registrations_from_one_address_are_limited_and_logins_are_not() {
    let mut limits = Limits::default();
    limits.registration.registrations_per_ip_per_hour = 2;
    let server = TestServer::with_limits(limits).await;
    raw_login(&server, "first", "first").await.unwrap();
    raw_login(&server, "second", "second").await.unwrap();
    let status = raw_login(&server, "third", "third").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("an hour"), "{status:?}");
    for _ in 0..5 {
        raw_login(&server, "first", "first").await.unwrap();
    }
}

#[tokio::test]
async fn closed_registration_admits_only_registered_users() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::on_disk(dir.path(), Limits::default()).await;
    raw_login(&server, "old-timer", "old-timer").await.unwrap();
    server.shut_down().await.unwrap();
    let mut limits = Limits::default();
    limits.registration.registration = e2ee_chat::server::RegistrationMode::Closed;
    let server = TestServer::on_disk(dir.path(), limits).await;
    let status = raw_login(&server, "newcomer", "newcomer")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("no new names"), "{status:?}");
    raw_login(&server, "old-timer", "old-timer").await.unwrap();
}

/// A prekey must be a key of its own: keys wrapped under the identity's encryption key
/// would stay readable for as long as the identity lives (found by the outside attack).
/// (Its creation time is the publisher's own business: a client's clock may be ahead.)
#[tokio::test]
async fn a_prekey_that_is_the_identity_key_is_refused() {
    use e2ee_chat::crypto::Prekey;
    use e2ee_chat::proto::SignedPrekey;

    let server = TestServer::start().await;
    let (channel, credentials) = log_in(&server.url, "alice").await.unwrap();
    let mut chat = credentials.chat_client(channel);
    let alice = identity("alice");
    let now = e2ee_chat::protocol::now_ms();
    let publish = |prekey: Prekey| {
        let signed = prekey.sign(&alice, "alice", 1).unwrap();
        KeyExchangeRequest {
            publish: Some(SignedPrekey {
                device: signed.device,
                prekey_id: signed.id,
                created_at_ms: signed.created_at_ms,
                public_key: signed.public_key.into(),
                signature: signed.signature.into(),
            }),
            ..Default::default()
        }
    };
    let own_key = EncryptionKey::from_pkcs8_pem(&alice.encryption_key().to_pkcs8_pem()).unwrap();
    let status = chat
        .key_exchange(publish(Prekey::new(7, now, own_key)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("encryption key"), "{status:?}");

    chat.key_exchange(publish(Prekey::generate(2048, now).unwrap()))
        .await
        .unwrap();
}
