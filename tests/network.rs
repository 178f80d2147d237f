//! What a peer gets before it logs in, and what it can hold: deadlines and caps on
//! connections, on the RPCs that need no login, and on request messages. Real relays on
//! 127.0.0.1:0, real TCP; where tonic's client would never misbehave, raw HTTP/2.
//!
//! Deadlines here are a second or less so the suite stays fast; the tests wait up to
//! `PATIENCE` for what must happen, and never assert how fast.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::raw_h2::{RawH2, final_status, prefix};
use common::{PATIENCE, TestServer, identity};
use e2ee_chat::client::{self, Credentials};
use e2ee_chat::server::{Limits, NetworkLimits};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const LOGIN: &str = "/chat.v2.AuthService/Login";
const KEY_EXCHANGE: &str = "/chat.v2.ChatService/KeyExchange";

/// Another "host": Linux routes all of 127.0.0.0/8 to loopback.
const OTHER_HOST: &str = "127.0.0.2";

fn with_network(network: NetworkLimits) -> Limits {
    Limits {
        network,
        ..Limits::default()
    }
}

/// A channel to `server` from the local address `from`.
async fn channel_from(server: &TestServer, from: &str) -> Result<Channel, tonic::transport::Error> {
    let from: IpAddr = from.parse().unwrap();
    Endpoint::from_shared(server.url.clone())
        .unwrap()
        .local_address(Some(from))
        .connect()
        .await
}

/// Logs in as `user` from the local address `from`, keeping the channel.
async fn log_in_from(
    server: &TestServer,
    from: &str,
    user: &str,
) -> Result<(Channel, Credentials), String> {
    let channel = channel_from(server, from)
        .await
        .map_err(|error| error.to_string())?;
    let credentials = client::login(channel.clone(), &identity(user), user)
        .await
        .map_err(|error| error.to_string())?;
    Ok((channel, credentials))
}

/// A TCP connection from 127.0.0.1 that never sends a byte.
async fn silent_socket(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Waits until the server has closed `socket`, reading what it sent first (an HTTP/2
/// server speaks first: its SETTINGS).
async fn closed(mut socket: TcpStream) {
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        while let Ok(1..) = socket.read(&mut buffer).await {}
    })
    .await
    .expect("the server kept a silent connection open");
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_handshake_deadline_and_others_get_in() {
    let server = TestServer::with_limits(Limits {
        max_connections: 8,
        network: NetworkLimits {
            max_connections_per_ip: 4,
            handshake_timeout_ms: 1_000,
            ..NetworkLimits::DEFAULT
        },
        ..Limits::default()
    })
    .await;
    // Keys are made before the sockets open, so that logging in is quick.
    identity("carol");
    identity("dave");

    // More silent sockets than one address may hold.
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(silent_socket(server.addr).await);
    }
    // Another host is served meanwhile.
    log_in_from(&server, OTHER_HOST, "carol").await.unwrap();

    for socket in silent {
        closed(socket).await;
    }
    // Their places are free again.
    log_in_from(&server, "127.0.0.1", "dave").await.unwrap();
}

#[tokio::test]
async fn a_connection_without_rpcs_is_closed_after_the_idle_timeout() {
    let server = TestServer::with_limits(with_network(NetworkLimits {
        idle_timeout_ms: 300,
        ..NetworkLimits::DEFAULT
    }))
    .await;
    let mut connection = RawH2::connect(server.addr).await;

    // A health Watch stream keeps the connection busy for several idle timeouts...
    let mut watch = connection
        .call("/grpc.health.v1.Health/Watch", &[], &prefix(0))
        .await;
    watch.body.send_data(bytes::Bytes::new(), true).unwrap();
    let response = tokio::time::timeout(PATIENCE, watch.response)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tonic::Status::from_header_map(response.headers()).is_none(),
        "{response:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    assert!(
        !connection.connection.is_finished(),
        "closed while a stream was open"
    );

    // ...and once it ends, the connection is closed.
    drop((response, watch.body));
    connection.closed().await;
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let server = TestServer::with_limits(with_network(NetworkLimits {
        max_connections_per_ip: 2,
        ..NetworkLimits::DEFAULT
    }))
    .await;
    let _alice = log_in_from(&server, "127.0.0.1", "alice").await.unwrap();
    let _bob = log_in_from(&server, "127.0.0.1", "bob").await.unwrap();

    log_in_from(&server, "127.0.0.1", "carol")
        .await
        .expect_err("a third connection from one address was served");
    log_in_from(&server, OTHER_HOST, "carol").await.unwrap();
}

#[tokio::test]
async fn a_login_declaring_a_huge_message_is_refused_at_once() {
    let server = TestServer::start().await;
    let mut connection = RawH2::connect(server.addr).await;
    // It declares 4,000,000 bytes and sends a little: the relay must not wait for the
    // rest, nor set memory aside for it.
    let mut bytes = prefix(4_000_000);
    bytes.extend_from_slice(&[0; 3_000]);
    let call = connection.call(LOGIN, &[], &bytes).await;
    let (code, message) = final_status(call).await;
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("too large"), "{message}");
}

#[tokio::test]
async fn a_stalled_login_is_ended_and_others_are_served() {
    let server = TestServer::with_limits(with_network(NetworkLimits {
        request_timeout_ms: 500,
        ..NetworkLimits::DEFAULT
    }))
    .await;
    identity("alice");
    let mut connection = RawH2::connect(server.addr).await;
    // 10 bytes of a 100-byte message, then nothing.
    let mut bytes = prefix(100);
    bytes.extend_from_slice(&[0; 10]);
    let stalled = connection.call(LOGIN, &[], &bytes).await;

    common::log_in(&server.url, "alice").await.unwrap();

    let (code, message) = final_status(stalled).await;
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    assert!(message.contains("--request-timeout-ms"), "{message}");
    common::log_in(&server.url, "alice").await.unwrap();
}

#[tokio::test]
async fn a_stalled_chat_frame_ends_its_session() {
    let server = TestServer::with_limits(with_network(NetworkLimits {
        request_timeout_ms: 500,
        ..NetworkLimits::DEFAULT
    }))
    .await;
    let authorization = format!("Bearer {}", token(&server, "alice").await);
    let mut connection = RawH2::connect(server.addr).await;
    let mut bytes = prefix(100);
    bytes.extend_from_slice(&[0; 10]);
    let stalled = connection
        .call(
            "/chat.v2.ChatService/Chat",
            &[("authorization", &authorization)],
            &bytes,
        )
        .await;

    let (code, message) = final_status(stalled).await;
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    // The relay goes on: the same user opens a new session.
    let mut bob = common::Member::join(&server, "bob", "lobby").await;
    let alice = common::Member::join(&server, "alice", "lobby").await;
    alice.send("still here").await;
    assert_eq!(bob.messages(1).await[0].1, "still here");
}

/// Logs in as `user` by hand and returns the session token.
async fn token(server: &TestServer, user: &str) -> String {
    use e2ee_chat::proto::auth_service_client::AuthServiceClient;
    use e2ee_chat::proto::{CreateChallengeRequest, LoginRequest};

    let mut auth = AuthServiceClient::new(server.channel().await);
    let challenge = auth
        .create_challenge(CreateChallengeRequest { user: user.into() })
        .await
        .unwrap()
        .into_inner()
        .challenge;
    let keys = identity(user);
    let login = LoginRequest {
        identity: Some(keys.publish(user).unwrap()),
        signature: keys.sign_login(user, &challenge).unwrap().into(),
        challenge,
        ..Default::default()
    };
    auth.login(login).await.unwrap().into_inner().session_token
}

/// A unary call to `path` whose request is `bytes`, not a protobuf message.
async fn send_undecodable(
    server: &TestServer,
    path: &'static str,
    bytes: Vec<u8>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(bytes), path, common::RawBytes)
        .await
        .expect_err("undecodable bytes were accepted")
}

#[tokio::test]
async fn undecodable_logins_and_challenges_get_invalid_argument() {
    let server = TestServer::start().await;
    // Field 1 as a varint, cut off in the middle.
    for path in [LOGIN, "/chat.v2.AuthService/CreateChallenge"] {
        let status = send_undecodable(&server, path, vec![0x08, 0xff]).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(status.message().contains("could not decode"), "{status:?}");
        assert!(status.message().contains(path), "{status:?}");
    }
    // A real login still works.
    common::log_in(&server.url, "alice").await.unwrap();
}

#[tokio::test]
async fn health_watchers_beyond_their_bound_are_refused_while_logins_go_on() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let server = TestServer::with_limits(with_network(NetworkLimits {
        max_unauthenticated_streams: 2,
        ..NetworkLimits::DEFAULT
    }))
    .await;
    let watch = || HealthCheckRequest {
        service: String::new(),
    };
    // From two addresses: one address may only hold a quarter of the places.
    let mut watchers = Vec::new();
    for from in ["127.0.0.11", "127.0.0.12"] {
        let mut health = HealthClient::new(channel_from(&server, from).await.unwrap());
        let mut stream = health.watch(watch()).await.unwrap().into_inner();
        stream.message().await.unwrap().expect("a first status");
        watchers.push(stream);
    }
    let mut health = HealthClient::new(server.channel().await);
    let refused = health
        .watch(watch())
        .await
        .expect_err("a third watcher was served");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-unauthenticated-streams"),
        "{refused:?}"
    );

    common::log_in(&server.url, "alice").await.unwrap();
    // A watcher that leaves makes room.
    watchers.pop();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while health.watch(watch()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no room after a watcher left"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_watchers_never_take_the_places_of_logins_from_their_address() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let server = TestServer::with_limits(with_network(NetworkLimits {
        max_unauthenticated_per_ip: 4,
        max_unauthenticated_streams: 32,
        ..NetworkLimits::DEFAULT
    }))
    .await;
    let watch = || HealthCheckRequest {
        service: String::new(),
    };
    // A quarter of the streams' places, over two connections from one address: twice
    // what that address may have logins in progress.
    let mut watchers = Vec::new();
    for _ in 0..2 {
        let mut health = HealthClient::new(channel_from(&server, "127.0.0.9").await.unwrap());
        for _ in 0..4 {
            let mut stream = health.watch(watch()).await.unwrap().into_inner();
            stream.message().await.unwrap().expect("a first status");
            watchers.push(stream);
        }
    }
    let mut health = HealthClient::new(channel_from(&server, "127.0.0.9").await.unwrap());
    let refused = health.watch(watch()).await.expect_err("a ninth watcher");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("from this address"),
        "{refused:?}"
    );
    // Other addresses still get theirs, and the watchers' own address still logs in.
    let mut elsewhere = HealthClient::new(channel_from(&server, "127.0.0.10").await.unwrap());
    elsewhere.watch(watch()).await.unwrap();
    log_in_from(&server, "127.0.0.9", "alice").await.unwrap();
}

#[tokio::test]
async fn requests_without_a_login_are_bounded_per_connection() {
    let server = TestServer::with_limits(with_network(NetworkLimits {
        max_unauthenticated_per_connection: 2,
        ..NetworkLimits::DEFAULT
    }))
    .await;
    let mut connection = RawH2::connect(server.addr).await;
    // Two logins that never finish sending take the connection's places...
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(connection.call(LOGIN, &[], &prefix(100)).await);
    }
    let third = connection.call(LOGIN, &[], &prefix(100)).await;
    let (code, message) = final_status(third).await;
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("--max-unauthenticated-per-connection"),
        "{message}"
    );
    // ...but not those of another connection.
    common::log_in(&server.url, "alice").await.unwrap();
    drop(stalled);
}

#[tokio::test]
async fn one_login_holds_a_few_requests_at_once_however_many_connections_it_opens() {
    let server = TestServer::with_limits(with_network(NetworkLimits {
        max_requests_per_user: 3,
        request_timeout_ms: 1_000,
        ..NetworkLimits::DEFAULT
    }))
    .await;
    let authorization = format!("Bearer {}", token(&server, "alice").await);
    let metadata = [("authorization", authorization.as_str())];
    // Each connection starts a KeyExchange of 60 KiB and sends 10 bytes of it.
    let mut bytes = prefix(60 * 1024);
    bytes.extend_from_slice(&[0; 10]);
    let mut connections = Vec::new();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut connection = RawH2::connect(server.addr).await;
        stalled.push(connection.call(KEY_EXCHANGE, &metadata, &bytes).await);
        connections.push(connection);
    }
    let mut codes = Vec::new();
    for call in stalled {
        let (code, message) = final_status(call).await;
        if code == Code::ResourceExhausted {
            assert!(message.contains("--max-requests-per-user"), "{message}");
        }
        codes.push(code);
    }
    let refused = codes
        .iter()
        .filter(|code| **code == Code::ResourceExhausted);
    assert_eq!(refused.count(), 1, "{codes:?}");
    let ended = codes.iter().filter(|code| **code == Code::DeadlineExceeded);
    assert_eq!(ended.count(), 3, "{codes:?}");
    // Others were never counted with alice, and alice has her places back.
    let bob = common::Member::join(&server, "bob", "lobby").await;
    let alice = common::Member::join(&server, "alice", "lobby").await;
    bob.quit().await.unwrap();
    alice.quit().await.unwrap();
}
