//! Test harness: a real relay on 127.0.0.1:0, real clients over real gRPC.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use e2ee_chat::client::prekeys::PrekeyRing;
use e2ee_chat::client::{
    self, AuthorizedClient, ChatSession, ClientError, Contacts, Credentials, Event, RoomKeys,
    RotationPolicy, SharedPrekeys,
};
use e2ee_chat::crypto::{Identity, SafetyNumber, VerifiedIdentity};
use e2ee_chat::proto::{
    ClientFrame, JoinRoom, PublicIdentity, SealedMessage, ServerFrame, client_frame, server_frame,
};
use e2ee_chat::server::{self, Limits, ServerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, ServerTlsConfig};

/// How long a test waits for something that should happen in milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A relay running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with_limits(Limits::default()).await
    }

    pub async fn with_limits(limits: Limits) -> Self {
        Self::serving(limits, None).await
    }

    /// A relay keeping its state in `data_dir`, as `chat-server` does.
    pub async fn on_disk(data_dir: &std::path::Path, limits: Limits) -> Self {
        let store = e2ee_chat::store::SqliteStore::open(data_dir).unwrap();
        let config = server::Config {
            store: Arc::new(store),
            ..server::Config::ephemeral(limits)
        };
        Self::serving_config(config).await
    }

    /// A relay serving TLS with `tls`, whose `url` is `https://localhost:PORT`.
    pub async fn with_tls(tls: ServerTlsConfig) -> Self {
        Self::serving(Limits::default(), Some(tls)).await
    }

    async fn serving(limits: Limits, tls: Option<ServerTlsConfig>) -> Self {
        let config = server::Config {
            tls,
            ..server::Config::ephemeral(limits)
        };
        Self::serving_config(config).await
    }

    /// A relay with this configuration (TLS aside: its `url` is plaintext unless set).
    pub async fn serving_config(config: server::Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = match config.tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, config, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            url,
            stop: Some(stop),
            task,
        }
    }

    pub async fn channel(&self) -> Channel {
        client::connect(&self.url, None).await.unwrap()
    }

    /// A channel whose streams grant the relay only `window` bytes at a time: once its
    /// user stops reading, the relay can send it nothing more.
    pub async fn narrow_channel(&self, window: u32) -> Channel {
        tonic::transport::Endpoint::from_shared(self.url.clone())
            .unwrap()
            .initial_stream_window_size(window)
            .connect()
            .await
            .unwrap()
    }

    /// Triggers a graceful shutdown and waits for the server to return.
    pub async fn shut_down(mut self) -> Result<(), ServerError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the server did not shut down in time")
            .unwrap()
    }
}

/// A 2048-bit identity per user name, generated once per test binary.
pub fn identity(user: &str) -> Arc<Identity> {
    static IDENTITIES: OnceLock<Mutex<HashMap<String, Arc<Identity>>>> = OnceLock::new();
    let mut known = IDENTITIES.get_or_init(Default::default).lock().unwrap();
    known
        .entry(user.to_owned())
        .or_insert_with(|| Arc::new(Identity::generate(2048).unwrap()))
        .clone()
}

/// A 2048-bit prekey ring per user name, in memory, made once per test binary: every
/// session of a user in a test opens what was wrapped for its earlier ones.
pub fn prekeys(user: &str) -> SharedPrekeys {
    static PREKEYS: OnceLock<Mutex<HashMap<String, SharedPrekeys>>> = OnceLock::new();
    let mut known = PREKEYS.get_or_init(Default::default).lock().unwrap();
    known
        .entry(user.to_owned())
        .or_insert_with(|| {
            let ring = PrekeyRing::in_memory(2048, e2ee_chat::protocol::now_ms()).unwrap();
            Arc::new(std::sync::RwLock::new(ring))
        })
        .clone()
}

/// Logs in to the relay at `url` as `user` with its test identity.
pub async fn log_in(url: &str, user: &str) -> Result<(Channel, Credentials), ClientError> {
    let channel = client::connect(url, None).await?;
    let credentials = client::login(channel.clone(), &identity(user), user).await?;
    Ok((channel, credentials))
}

/// A well-behaved member, its session driven by a task as a chat program would.
pub struct Member {
    pub name: String,
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    frames: mpsc::UnboundedReceiver<ServerFrame>,
    task: JoinHandle<Result<(), ClientError>>,
}

enum Command {
    Send(String, oneshot::Sender<u64>),
    Leave,
    Invite(String),
    Kick(String),
    Trust(String, oneshot::Sender<Result<Vec<Event>, ClientError>>),
    SafetyNumber(String, oneshot::Sender<Result<SafetyNumber, ClientError>>),
    Inject(Box<ServerFrame>, oneshot::Sender<Vec<Event>>),
    Members(oneshot::Sender<Vec<String>>),
}

impl Member {
    /// Joins `room` through `server` and starts answering the relay.
    pub async fn join(server: &TestServer, user: &str, room: &str) -> Self {
        Self::join_via(&server.url, user, room).await
    }

    pub async fn join_via(url: &str, user: &str, room: &str) -> Self {
        Self::join_on(client::connect(url, None).await.unwrap(), user, room).await
    }

    /// Joins `room` over a channel the test opened itself (over TLS, say).
    pub async fn join_on(channel: Channel, user: &str, room: &str) -> Self {
        let (member, notices) =
            Self::try_join_on(channel, user, room, false, Contacts::in_memory())
                .await
                .unwrap();
        assert!(
            notices
                .iter()
                .all(|notice| matches!(notice, Event::Pinned { .. } | Event::Joined { .. })),
            "{notices:?}"
        );
        member
    }

    /// Logs in and joins, with the given pinned contacts; also returns what the join
    /// told the user.
    pub async fn try_join(
        url: &str,
        user: &str,
        room: &str,
        create_private: bool,
        contacts: Contacts,
    ) -> Result<(Self, Vec<Event>), ClientError> {
        let channel = client::connect(url, None).await?;
        Self::try_join_on(channel, user, room, create_private, contacts).await
    }

    /// The same, over a channel the test opened itself.
    pub async fn try_join_on(
        channel: Channel,
        user: &str,
        room: &str,
        create_private: bool,
        contacts: Contacts,
    ) -> Result<(Self, Vec<Event>), ClientError> {
        let credentials = client::login(channel.clone(), &identity(user), user).await?;
        let join = JoinRoom {
            room: room.to_owned(),
            create_private,
            after_seq: None,
        };
        let (session, notices) = ChatSession::join(
            channel,
            identity(user),
            &credentials,
            join,
            contacts,
            prekeys(user),
            RotationPolicy::default(),
        )
        .await?;
        Ok((Self::start(user, room, session), notices))
    }

    fn start(user: &str, room: &str, session: ChatSession) -> Self {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let (frame_tx, frames) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(
            session,
            room.to_owned(),
            command_rx,
            event_tx,
            frame_tx,
        ));
        Self {
            name: user.to_owned(),
            commands,
            events,
            frames,
            task,
        }
    }

    pub async fn send(&self, text: &str) -> u64 {
        let (reply, id) = oneshot::channel();
        self.commands
            .send(Command::Send(text.to_owned(), reply))
            .unwrap();
        id.await.expect("the member's session ended")
    }

    pub fn leave(&self) {
        self.commands.send(Command::Leave).unwrap();
    }

    pub fn invite(&self, user: &str) {
        self.commands
            .send(Command::Invite(user.to_owned()))
            .unwrap();
    }

    pub fn kick(&self, user: &str) {
        self.commands.send(Command::Kick(user.to_owned())).unwrap();
    }

    pub async fn trust(&self, user: &str) -> Result<Vec<Event>, ClientError> {
        let (reply, events) = oneshot::channel();
        self.commands
            .send(Command::Trust(user.to_owned(), reply))
            .unwrap();
        events.await.unwrap()
    }

    pub async fn safety_number(&self, user: &str) -> Result<SafetyNumber, ClientError> {
        let (reply, number) = oneshot::channel();
        self.commands
            .send(Command::SafetyNumber(user.to_owned(), reply))
            .unwrap();
        number.await.unwrap()
    }

    /// Applies a frame as if the relay had sent it (a relay that lies or tampers).
    pub async fn inject(&self, frame: ServerFrame) -> Vec<Event> {
        let (reply, events) = oneshot::channel();
        self.commands
            .send(Command::Inject(Box::new(frame), reply))
            .unwrap();
        events.await.unwrap()
    }

    pub async fn members(&self) -> Vec<String> {
        let (reply, members) = oneshot::channel();
        self.commands.send(Command::Members(reply)).unwrap();
        members.await.unwrap()
    }

    /// Waits for an event matching `wanted` and returns it with every event before it.
    pub async fn wait_for(&mut self, mut wanted: impl FnMut(&Event) -> bool) -> Vec<Event> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    let done = wanted(&event);
                    seen.push(event);
                    if done {
                        return seen;
                    }
                }
                Ok(None) => panic!("{}'s session ended; events so far: {seen:?}", self.name),
                Err(_) => panic!("{} waited in vain; events so far: {seen:?}", self.name),
            }
        }
    }

    /// Waits for `count` messages and returns them as (sender, text).
    pub async fn messages(&mut self, count: usize) -> Vec<(String, String)> {
        let mut messages = Vec::new();
        while messages.len() < count {
            let events = self
                .wait_for(|event| matches!(event, Event::Message { .. }))
                .await;
            for event in events {
                if let Event::Message { sender, text, .. } = event {
                    messages.push((sender, text));
                }
            }
        }
        messages
    }

    /// Waits until `user` joined this member's room.
    pub async fn sees_join(&mut self, user: &str) {
        self.wait_for(|event| matches!(event, Event::MemberJoined { user: u, .. } if u == user))
            .await;
    }

    /// Every event so far, without waiting.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }

    /// Every raw frame received so far, without waiting.
    pub fn drain_frames(&mut self) -> Vec<ServerFrame> {
        std::iter::from_fn(|| self.frames.try_recv().ok()).collect()
    }

    /// Ends the session and returns how it ended.
    pub async fn quit(self) -> Result<(), ClientError> {
        drop(self.commands);
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap()
    }

    /// Waits for the relay to end the session, and returns the error it ended with.
    pub async fn ended(self) -> ClientError {
        let result = tokio::time::timeout(PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap();
        result.expect_err("the session should have been ended by the relay")
    }
}

async fn drive(
    mut session: ChatSession,
    room: String,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    frames: mpsc::UnboundedSender<ServerFrame>,
) -> Result<(), ClientError> {
    loop {
        tokio::select! {
            frame = session.next_frame() => {
                let Some(frame) = frame? else { return Err(ClientError::Disconnected) };
                let _ = frames.send(frame.clone());
                for event in session.handle(frame).await? {
                    let _ = events.send(event);
                }
            }
            command = commands.recv() => match command {
                Some(Command::Send(text, reply)) => {
                    let _ = reply.send(session.send_text(&room, &text).await?);
                }
                Some(Command::Leave) => {
                    session.leave(&room).await?;
                }
                Some(Command::Invite(user)) => {
                    session.invite(&room, &user).await?;
                }
                Some(Command::Kick(user)) => {
                    session.kick(&room, &user).await?;
                }
                Some(Command::Trust(user, reply)) => {
                    let _ = reply.send(session.trust(&user).await);
                }
                Some(Command::SafetyNumber(user, reply)) => {
                    let _ = reply.send(session.safety_number(&user));
                }
                Some(Command::Inject(frame, reply)) => {
                    let _ = reply.send(session.handle(*frame).await?);
                }
                Some(Command::Members(reply)) => {
                    let _ = reply.send(session.members(&room));
                }
                None => return Ok(()),
            },
        }
    }
}

/// A client that speaks raw frames: for peers that misbehave or never read.
pub struct RawClient {
    pub frames: mpsc::Sender<ClientFrame>,
    pub incoming: Streaming<ServerFrame>,
    pub client: AuthorizedClient,
}

impl RawClient {
    /// Logs in as `user` and opens its `Chat` stream, without joining.
    pub async fn open(server: &TestServer, user: &str) -> Self {
        Self::open_url(&server.url, user).await
    }

    /// Logs in as `user`, opens its `Chat` stream and joins `room`.
    pub async fn member(server: &TestServer, user: &str, room: &str) -> Self {
        let mut client = Self::open(server, user).await;
        client.join(room).await;
        client
    }

    /// Logs in as `user` and opens its `Chat` stream, with the relay at `url`.
    pub async fn open_url(url: &str, user: &str) -> Self {
        Self::open_on(client::connect(url, None).await.unwrap(), user).await
    }

    /// The same, over a channel the test opened itself (with a small HTTP/2 window, say).
    pub async fn open_on(channel: Channel, user: &str) -> Self {
        let credentials = client::login(channel.clone(), &identity(user), user)
            .await
            .unwrap();
        let mut client = credentials.chat_client(channel);
        let (frames, outbound) = mpsc::channel(1024);
        let request = tonic::Request::new(ReceiverStream::new(outbound));
        let incoming = client.chat(request).await.unwrap().into_inner();
        Self {
            frames,
            incoming,
            client,
        }
    }

    /// Joins `room` and returns the `Joined` answer's members.
    pub async fn join(&mut self, room: &str) -> Vec<PublicIdentity> {
        self.send(
            1,
            client_frame::Kind::Join(JoinRoom {
                room: room.to_owned(),
                create_private: false,
                after_seq: None,
            }),
        )
        .await;
        match self.answer(1).await.kind {
            Some(server_frame::Kind::Joined(joined)) => joined.members,
            other => panic!("expected Joined, got {other:?}"),
        }
    }

    pub async fn send(&self, request_id: u64, kind: client_frame::Kind) {
        self.send_frame(ClientFrame {
            request_id,
            kind: Some(kind),
        })
        .await;
    }

    pub async fn send_frame(&self, frame: ClientFrame) {
        self.frames.send(frame).await.unwrap();
    }

    /// The next frame answering `request_id`, skipping events.
    pub async fn answer(&mut self, request_id: u64) -> ServerFrame {
        self.next_where(|frame| frame.request_id == request_id)
            .await
    }

    /// The next frame whose kind `wanted` takes, skipping others.
    pub async fn next_of(&mut self, wanted: impl Fn(&server_frame::Kind) -> bool) -> ServerFrame {
        self.next_where(|frame| frame.kind.as_ref().is_some_and(&wanted))
            .await
    }

    /// The next frame `wanted` takes, skipping others.
    async fn next_where(&mut self, wanted: impl Fn(&ServerFrame) -> bool) -> ServerFrame {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let frame = self
                    .incoming
                    .message()
                    .await
                    .unwrap()
                    .expect("stream ended");
                if wanted(&frame) {
                    return frame;
                }
            }
        })
        .await
        .expect("no such frame")
    }

    /// Reads until the relay ends the stream, and returns the status it ended with.
    pub async fn final_status(&mut self) -> tonic::Status {
        final_status(&mut self.incoming).await
    }
}

/// Reads `incoming` until the relay ends it, and returns the status it ended with.
pub async fn final_status(incoming: &mut Streaming<ServerFrame>) -> tonic::Status {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match incoming.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without an error status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream did not end")
}

/// `user` presenting the keys of `key_owner`'s test identity, self-signed by them.
pub fn public_identity(user: &str, key_owner: &str) -> PublicIdentity {
    identity(key_owner).publish(user).unwrap()
}

/// Room keys for a raw client, as a real member would hold them, trusting every member.
pub fn room_keys(room: &str, user: &str, members: Vec<PublicIdentity>) -> RoomKeys {
    let mut keys = RoomKeys::new(
        room,
        user,
        identity(user),
        prekeys(user),
        RotationPolicy::default(),
    )
    .unwrap();
    for member in members {
        let name = member.user.clone();
        keys.insert_member(VerifiedIdentity::verify(&member).unwrap(), true);
        // The prekeys of the tests' own clients; a member from elsewhere gets nothing.
        let ring = prekeys(&name);
        let ring = ring.read().unwrap();
        let current = ring.current();
        keys.set_prekey(&name, current.id(), current.key().public_key().clone());
    }
    keys
}

/// Room keys for a raw client whose fellow members are other processes: their keys and
/// current prekeys come from the relay's key directory, as a real client's do.
pub async fn room_keys_from_directory(
    raw: &mut RawClient,
    room: &str,
    user: &str,
    rotation: RotationPolicy,
) -> RoomKeys {
    let mut keys = RoomKeys::new(room, user, identity(user), prekeys(user), rotation).unwrap();
    let bundles = client::key_exchange(&mut raw.client, None, Some(room), &[])
        .await
        .unwrap();
    for bundle in bundles {
        let name = bundle.identity.user.clone();
        keys.insert_member(bundle.identity, true);
        let (id, prekey) = bundle.prekey.expect("every member has published a prekey");
        keys.set_prekey(&name, id, prekey);
    }
    keys
}

/// A TCP proxy on 127.0.0.1:0 that records every byte it forwards, both ways.
pub struct RecordingProxy {
    pub url: String,
    pub recorded: Arc<Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let log = recorded.clone();
        tokio::spawn(async move {
            while let Ok((downstream, _)) = listener.accept().await {
                let upstream = TcpStream::connect(upstream).await.unwrap();
                let (down_read, down_write) = downstream.into_split();
                let (up_read, up_write) = upstream.into_split();
                tokio::spawn(pump(down_read, up_write, log.clone()));
                tokio::spawn(pump(up_read, down_write, log.clone()));
            }
        });
        Self { url, recorded }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.recorded.lock().unwrap().clone()
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    log: Arc<Mutex<Vec<u8>>>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                log.lock().unwrap().extend_from_slice(&buffer[..n]);
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A codec that sends and receives messages as raw bytes: for requests that are not
/// what the method expects.
#[derive(Default)]
pub struct RawBytes;

impl tonic::codec::Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = bytes::Buf::copy_to_bytes(src, bytes::Buf::remaining(src));
        Ok(Some(bytes.to_vec()))
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
pub mod malicious;
pub mod nats;
/// The test PostgreSQL server: the same harness as the store's own tests.
#[path = "../../src/store/tests/postgres_server.rs"]
pub mod postgres;
pub mod process;
pub mod pty;
pub mod raw_h2;
pub mod restarted;

/// A well-formed sealed message under a key nobody holds.
pub fn unknown_key_message() -> SealedMessage {
    SealedMessage {
        key_id: 1,
        iteration: 0,
        device: 1,
        ciphertext: vec![0; 32].into(),
        signature: vec![0; 64].into(),
    }
}
