//! Browsers' sessions: `OpenSession` and `SendFrame` over gRPC-Web on HTTP/1.1, against
//! a real relay on loopback, beside native `Chat` streams; and what the relay serves to
//! a browser that is not gRPC (the web client's page, CORS).

mod common;

use std::time::Duration;

use common::{RawClient, TestServer, final_status, log_in, unknown_key_message};
use e2ee_chat::client::{BearerToken, Credentials};
use e2ee_chat::proto::chat_service_client::ChatServiceClient;
use e2ee_chat::proto::{
    ClientFrame, GetHistory, JoinRoom, OpenSessionRequest, SealedMessage, SendFrameRequest,
    SendMessage, ServerFrame, client_frame, server_frame,
};
use e2ee_chat::server::Limits;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Streaming};
use tonic_web::{GrpcWebCall, GrpcWebClientLayer, GrpcWebClientService};
use tower::Layer;

const PATIENCE: Duration = Duration::from_secs(10);

type HttpClient =
    Client<hyper_util::client::legacy::connect::HttpConnector, GrpcWebCall<tonic::body::Body>>;
type WebClient =
    ChatServiceClient<InterceptedService<GrpcWebClientService<HttpClient>, BearerToken>>;

/// A browser's view of the relay: gRPC-Web over HTTP/1.1, as `user`.
async fn web_client(server: &TestServer, user: &str) -> WebClient {
    let (_, credentials) = log_in(&server.url, user).await.unwrap();
    web_client_with(server, &credentials, Http::One)
}

/// The HTTP version a browser speaks to the relay: 1.1 over plaintext, 2 (here without
/// TLS, as a proxy in front may) where it negotiated it.
#[derive(Clone, Copy)]
enum Http {
    One,
    Two,
}

fn web_client_with(server: &TestServer, credentials: &Credentials, http: Http) -> WebClient {
    let http: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(matches!(http, Http::Two))
        .build_http();
    let grpc_web = GrpcWebClientLayer::new().layer(http);
    ChatServiceClient::with_origin(credentials.authorize(grpc_web), server.url.parse().unwrap())
}

/// An open browser session: its id, its frames, and the number of the last frame sent.
struct WebSession {
    client: WebClient,
    id: Vec<u8>,
    frames: Streaming<ServerFrame>,
    sent: u64,
}

impl WebSession {
    async fn open(mut client: WebClient) -> Self {
        let mut frames = client
            .open_session(OpenSessionRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = next(&mut frames).await;
        assert_eq!(first.request_id, 0);
        let Some(server_frame::Kind::SessionOpened(opened)) = first.kind else {
            panic!("the first frame is not SessionOpened: {first:?}");
        };
        assert_eq!(opened.session_id.len(), 16);
        Self {
            client,
            id: opened.session_id.to_vec(),
            frames,
            sent: 0,
        }
    }

    async fn send(&mut self, frame: ClientFrame) {
        self.sent += 1;
        let number = self.sent;
        self.send_numbered(number, frame).await.unwrap();
    }

    async fn send_numbered(
        &mut self,
        number: u64,
        frame: ClientFrame,
    ) -> Result<(), tonic::Status> {
        self.client
            .send_frame(SendFrameRequest {
                session_id: self.id.clone().into(),
                frame_number: number,
                frame: Some(frame),
            })
            .await
            .map(|_| ())
    }

    /// The next frame answering `request_id`, skipping events.
    async fn answer(&mut self, request_id: u64) -> ServerFrame {
        loop {
            let frame = next(&mut self.frames).await;
            if frame.request_id == request_id {
                return frame;
            }
        }
    }
}

async fn next(frames: &mut Streaming<ServerFrame>) -> ServerFrame {
    tokio::time::timeout(PATIENCE, frames.message())
        .await
        .expect("no frame in time")
        .unwrap()
        .expect("the stream ended")
}

fn join(request_id: u64, room: &str) -> ClientFrame {
    ClientFrame {
        request_id,
        kind: Some(client_frame::Kind::Join(JoinRoom {
            room: room.to_owned(),
            create_private: false,
            after_seq: None,
        })),
    }
}

fn history(request_id: u64, room: &str) -> ClientFrame {
    ClientFrame {
        request_id,
        kind: Some(client_frame::Kind::History(GetHistory {
            room: room.to_owned(),
            limit: 10,
        })),
    }
}

#[tokio::test]
async fn a_browser_session_over_grpc_web_meets_a_chat_stream() {
    let server = TestServer::start().await;
    let mut bob = RawClient::member(&server, "bob", "lobby").await;
    let mut alice = WebSession::open(web_client(&server, "alice").await).await;

    alice.send(join(1, "lobby")).await;
    let joined = alice.answer(1).await;
    let Some(server_frame::Kind::Joined(joined)) = joined.kind else {
        panic!("expected Joined, got {joined:?}");
    };
    let members: Vec<_> = joined.members.iter().map(|m| m.user.as_str()).collect();
    assert!(members.contains(&"bob"), "{members:?}");

    // bob, on his native stream, hears of her.
    let seen = tokio::time::timeout(PATIENCE, async {
        loop {
            let frame = bob.incoming.message().await.unwrap().unwrap();
            if let Some(server_frame::Kind::MemberJoined(joined)) = frame.kind {
                return joined.member.unwrap().user;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(seen, "alice");

    // Each frame gets its answer on her stream (a history is read from the store, so
    // it may come after a later frame's answer).
    alice.send(history(2, "lobby")).await;
    alice.send(history(3, "nowhere")).await;
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 2 {
        let frame = next(&mut alice.frames).await;
        if frame.request_id != 0 {
            answers.insert(frame.request_id, frame.kind);
        }
    }
    assert!(matches!(answers[&2], Some(server_frame::Kind::History(_))));
    assert!(matches!(
        answers[&3],
        Some(server_frame::Kind::Rejection(_))
    ));
}

#[tokio::test]
async fn grpc_web_over_http2_opens_a_session_too() {
    let server = TestServer::start().await;
    let (_, credentials) = log_in(&server.url, "alice").await.unwrap();
    let client = web_client_with(&server, &credentials, Http::Two);
    let mut alice = WebSession::open(client).await;
    alice.send(join(1, "lobby")).await;
    assert!(matches!(
        alice.answer(1).await.kind,
        Some(server_frame::Kind::Joined(_))
    ));
}

#[tokio::test]
async fn frames_are_numbered_and_a_retry_is_queued_once() {
    let server = TestServer::start().await;
    let mut alice = WebSession::open(web_client(&server, "alice").await).await;
    alice.send(join(1, "lobby")).await;
    // The same number again: a retry after a lost answer, accepted and not queued.
    alice.send_numbered(1, join(1, "lobby")).await.unwrap();
    let skipped = alice
        .send_numbered(5, history(9, "lobby"))
        .await
        .unwrap_err();
    assert_eq!(skipped.code(), Code::FailedPrecondition, "{skipped:?}");
    assert!(skipped.message().contains("expects 2"), "{skipped:?}");
    // The same number for another frame is a client's mistake, not a retry.
    let reused = alice
        .send_numbered(1, history(7, "lobby"))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition, "{reused:?}");
    assert!(reused.message().contains("already used"), "{reused:?}");
    alice.send_numbered(2, history(2, "lobby")).await.unwrap();

    // Once 1 and 2 are answered (in either order: 2 may be refused while the join is
    // stored), a third frame; every answer until its own is counted. Had the retry been
    // queued, request 1 would have a second answer among them.
    let mut answered = Vec::new();
    while !(answered.contains(&1) && answered.contains(&2)) {
        let frame = next(&mut alice.frames).await;
        if frame.request_id != 0 {
            answered.push(frame.request_id);
        }
    }
    alice.send_numbered(3, history(3, "lobby")).await.unwrap();
    while !answered.contains(&3) {
        let frame = next(&mut alice.frames).await;
        if frame.request_id != 0 {
            answered.push(frame.request_id);
        }
    }
    answered.sort();
    assert_eq!(answered, [1, 2, 3]);
}

#[tokio::test]
async fn a_session_is_only_its_users() {
    let server = TestServer::start().await;
    let alice = WebSession::open(web_client(&server, "alice").await).await;
    let mut mallory = web_client(&server, "mallory").await;
    let status = mallory
        .send_frame(SendFrameRequest {
            session_id: alice.id.clone().into(),
            frame_number: 1,
            frame: Some(join(1, "lobby")),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let no_frame = SendFrameRequest {
        session_id: alice.id.clone().into(),
        frame_number: 1,
        frame: None,
    };
    let status = alice.client.clone().send_frame(no_frame).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let short_id = SendFrameRequest {
        session_id: alice.id[..5].to_vec().into(),
        frame_number: 1,
        frame: Some(join(1, "lobby")),
    };
    let status = alice.client.clone().send_frame(short_id).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("16"), "{status:?}");
}

#[tokio::test]
async fn a_new_session_ends_the_browsers_with_aborted() {
    let server = TestServer::start().await;
    let mut alice = WebSession::open(web_client(&server, "alice").await).await;
    let _native = RawClient::open(&server, "alice").await;
    let status = final_status(&mut alice.frames).await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    let late = alice.send_numbered(1, join(1, "lobby")).await.unwrap_err();
    assert_eq!(late.code(), Code::NotFound, "{late:?}");
}

#[tokio::test]
async fn a_closed_page_ends_its_session() {
    let server = TestServer::start().await;
    let client = web_client(&server, "alice").await;
    let alice = WebSession::open(client.clone()).await;
    let id = alice.id.clone();
    drop(alice.frames);
    let mut client = client;
    let gone = tokio::time::timeout(PATIENCE, async {
        loop {
            let attempt = client
                .send_frame(SendFrameRequest {
                    session_id: id.clone().into(),
                    frame_number: 1,
                    frame: Some(join(1, "lobby")),
                })
                .await;
            match attempt {
                Err(status) if status.code() == Code::NotFound => return,
                // Queued before the relay noticed; the next number is still refused
                // once the session is gone.
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "the session outlived its stream");
}

/// One HTTP/1.1 exchange on a fresh connection; the response's head and body.
async fn http(server: &TestServer, request: &str) -> String {
    let address = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A `SendMessage` frame whose encoding is exactly `len` bytes.
fn frame_of_len(len: usize) -> ClientFrame {
    (0..len)
        .map(|n| ClientFrame {
            request_id: 5,
            kind: Some(client_frame::Kind::Send(SendMessage {
                room: "lobby".into(),
                sealed: Some(SealedMessage {
                    ciphertext: vec![0; n].into(),
                    ..unknown_key_message()
                }),
            })),
        })
        .find(|frame| frame.encoded_len() == len)
        .expect("a length every frame size reaches")
}

#[tokio::test]
async fn send_frame_takes_frames_up_to_the_limit_chat_does() {
    let limit = 4096;
    let server = TestServer::with_limits(Limits {
        max_frame_bytes: limit,
        ..Limits::default()
    })
    .await;
    let mut alice = WebSession::open(web_client(&server, "alice").await).await;
    alice.send(frame_of_len(limit)).await;
    let over = alice
        .send_numbered(2, frame_of_len(limit + 1))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert!(over.message().contains("--max-frame-bytes"), "{over:?}");

    let mut bob = RawClient::open(&server, "bob").await;
    bob.send_frame(frame_of_len(limit)).await;
    bob.answer(5).await;
    bob.send_frame(frame_of_len(limit + 1)).await;
    let ended = final_status(&mut bob.incoming).await;
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
}

const GET_PAGE: &str = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// A relay serving the web client in `web_dir` and answering CORS for `web_origins`.
async fn serving_web(web_dir: &std::path::Path, web_origins: &[&str]) -> TestServer {
    TestServer::serving_config(e2ee_chat::server::Config {
        web: e2ee_chat::server::WebOptions {
            web_dir: Some(web_dir.to_owned()),
            web_origins: web_origins.iter().map(|o| o.parse().unwrap()).collect(),
        },
        ..e2ee_chat::server::Config::ephemeral(Default::default())
    })
    .await
}

#[tokio::test]
async fn a_browser_that_asks_for_a_page_gets_one_with_a_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<title>chat</title>").unwrap();
    std::fs::write(dir.path().join(".env"), "SECRET=1").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("hostname"), "elsewhere").unwrap();
    std::fs::write(outside.path().join("page.html"), "elsewhere").unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("etc")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("page.html"),
        dir.path().join("linked.html"),
    )
    .unwrap();
    let server = serving_web(dir.path(), &["https://chat.example.org"]).await;
    let page = http(&server, GET_PAGE).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>chat</title>"), "{page}");
    assert!(
        page.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
    let outside = http(
        &server,
        "GET /../../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(outside.starts_with("HTTP/1.1 404"), "{outside}");
    // Only the client's own files: no dotfile, nothing behind a symbolic link, no
    // error for a name the file system would refuse.
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    for path in [
        "/.env",
        "/etc/hostname",
        "/linked.html",
        &format!("/{}", "a".repeat(6000)),
    ] {
        let answer = http(&server, &get(path)).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
    }

    let preflight = |origin: &str| {
        format!(
            "OPTIONS /chat.v2.ChatService/SendFrame HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: authorization,content-type,x-grpc-web\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let named = http(&server, &preflight("https://chat.example.org")).await;
    assert!(
        named.contains("access-control-allow-origin: https://chat.example.org"),
        "{named}"
    );
    let other = http(&server, &preflight("https://evil.example")).await;
    assert!(!other.contains("access-control-allow-origin"), "{other}");
}

#[tokio::test]
async fn without_a_built_client_the_page_says_how_to_build_it() {
    let empty = tempfile::tempdir().unwrap();
    let server = serving_web(empty.path(), &[]).await;
    let page = http(&server, GET_PAGE).await;
    assert!(page.starts_with("HTTP/1.1 404"), "{page}");
    assert!(page.contains("scripts/build-web.sh"), "{page}");
}
