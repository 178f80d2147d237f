//! `chat-client`: chat in one room from the command line, end-to-end encrypted.

mod tui;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clap::{Parser, Subcommand};
use e2ee_chat::client::prekeys::{PrekeyPolicy, PrekeyRing};
use e2ee_chat::client::{
    self, ChatSession, ClientError, Contacts, Credentials, Event, HistoryMessage, RotationPolicy,
    SharedPrekeys, home, progress,
};
use e2ee_chat::crypto::{ALLOWED_KEY_BITS, DEFAULT_KEY_BITS, Identity};
use e2ee_chat::proto::{JoinRoom, LeaveReason, ServerFrame};
use e2ee_chat::protocol::{MAX_HISTORY_MESSAGES, now_ms, utc_time, validate_room, validate_user};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

/// How long the client waits, at the end, for the server to acknowledge what it sent
/// (reconnecting if need be).
const CLOSING_TIMEOUT: Duration = Duration::from_secs(15);

/// How often a running client checks whether its prekey is due for renewal, and
/// whether retired ones are due for erasure.
const PREKEY_CHECK: Duration = Duration::from_secs(60 * 60);

/// The wait before the first attempt to reconnect; it doubles after every failed
/// attempt, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// How long a login may take before the attempt counts as failed.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames applied in a row before the progress is saved: a burst (a catch-up) costs one
/// write, not one per message.
const MAX_BATCH: usize = 256;

/// How many messages `/history` shows without a number.
const DEFAULT_HISTORY: u32 = 20;

const HELP_AFTER: &str = "\
Input and output:
  stdin   one line = one message; lines starting with / are commands
          (start a message with // to send a line beginning with /)
  stdout  one line per message received: [ROOM] SENDER: TEXT
  stderr  everything else; a line containing \"joined ROOM\" once it can send

Commands:
  /who             list the members
  /fingerprint     show your fingerprint
  /verify NAME     show the safety number you share with NAME, to compare out of band
  /verify NAME confirm   mark NAME verified once the numbers match
  /trust NAME      accept the new keys the server presents for NAME
  /invite NAME     let NAME join this private room (owner only)
  /kick NAME       remove NAME from this private room (owner only)
  /pending         list the messages sent but not yet acknowledged by the server
  /history [N]     show the room's last N messages (1 to 100, default 20) on stderr:
                   history [ROOM] SENDER (YYYY-MM-DD HH:MM:SS UTC): TEXT
  /leave           leave the room for good and exit
  /quit            disconnect and exit; you stay a member (as at end of input)
  /help            list the commands

Keys: the first time you meet someone, their keys are pinned in HOME/USER/contacts.json.
If the server later presents other keys for them, nothing is sent to or accepted from
them until you run /trust NAME (or chat-client trust NAME).

Delivery: the server keeps what is said in the room for its members. End of input and
/quit only disconnect: you stay a member until /leave (or the owner removes you), and
the next run in the room first shows, on stdout, what was said meanwhile. Where you
were is saved per server and room in HOME/USER/progress.json. If the connection is
lost, the client reconnects by itself (waiting 0.5 s, doubling up to 10 s) and sends
again the messages the server had not acknowledged; a message the server refused is
reported as: failed to send \"TEXT\": CODE: reason. One session per user: starting the
client again elsewhere as the same user ends this one (it exits, and does not fight
back).

At end of input the client exits 0 once the server has acknowledged every message;
otherwise (a message refused, or not acknowledged within 15 s) it lists the messages
not delivered and exits non-zero with a one-line error.";

/// Chat in one room of an end-to-end encrypted relay: messages are encrypted for the
/// room's members and signed before they leave this machine.
///
/// Without a command, logs in and chats in --room. The commands manage trust in other
/// users' keys.
#[derive(Debug, Parser)]
#[command(name = "chat-client", version, after_long_help = HELP_AFTER)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The relay's URL: https://HOST:PORT for TLS, or http://HOST:PORT for plaintext
    /// (only safe to a relay on this machine).
    #[arg(
        long,
        global = true,
        env = "CHAT_SERVER",
        default_value = "http://127.0.0.1:5555"
    )]
    server: String,
    /// Trust the CA certificate(s) in this PEM file for an https:// server, instead of
    /// the public web roots built in; for a self-signed or private-CA server certificate.
    #[arg(long, global = true, env = "CHAT_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Your user name: 1 to 32 characters from A-Z a-z 0-9 _ . - (required). The first
    /// login registers it on the server to your keys.
    #[arg(long, global = true, env = "CHAT_USER")]
    user: Option<String>,
    /// The room to join: 1 to 64 characters from A-Z a-z 0-9 _ . # -
    #[arg(long, env = "CHAT_ROOM", default_value = "lobby")]
    room: String,
    /// Create the room private if it does not exist: only you and the users you /invite
    /// can join it.
    #[arg(long, env = "CHAT_PRIVATE")]
    private: bool,
    /// Where your keys, pinned contacts and progress are kept: HOME/USER/signing.pem and
    /// encryption.pem (PKCS#8 PEM, mode 0600), HOME/USER/prekeys.json and
    /// prekey-ID.pem (your prekeys, mode 0600), HOME/USER/contacts.json, and HOME/USER/progress.json (the last message seen
    /// per server and room).
    #[arg(long, global = true, env = "CHAT_HOME", default_value_os_t = home::default_home())]
    home: PathBuf,
    /// A registration token from the server's operator, for the first login of --user
    /// on a server that registers new names only with one.
    #[arg(
        long,
        global = true,
        env = "CHAT_REGISTRATION_TOKEN",
        value_name = "TOKEN"
    )]
    registration_token: Option<String>,
    /// Size of new identity keys in bits (2048, 3072 or 4096); existing keys are kept.
    #[arg(long, global = true, env = "CHAT_KEY_BITS", default_value_t = DEFAULT_KEY_BITS, value_parser = key_bits)]
    key_bits: usize,
    /// Replace your sender key in the room after this many messages (as well as whenever
    /// someone leaves or is removed, or you trust new keys).
    #[arg(long, env = "CHAT_ROTATE_AFTER_MESSAGES", default_value_t = RotationPolicy::default().messages, value_parser = clap::value_parser!(u32).range(1..))]
    rotate_after_messages: u32,
    /// Replace your sender key in the room after this many days, whichever comes first.
    #[arg(long, env = "CHAT_ROTATE_AFTER_DAYS", default_value_t = RotationPolicy::default().age_ms / DAY_MS, value_parser = clap::value_parser!(u64).range(1..=365))]
    rotate_after_days: u64,
    /// Make a new prekey (what others wrap their sender keys for you under) after this
    /// many days.
    #[arg(long, env = "CHAT_PREKEY_DAYS", default_value_t = PrekeyPolicy::default().rotate_after_ms / DAY_MS, value_parser = clap::value_parser!(u64).range(1..=365))]
    prekey_days: u64,
    /// Erase a replaced prekey this many days later. Together with --prekey-days this is
    /// the forward-secrecy window: what was sent to you longer ago than their sum cannot be
    /// read with the files in HOME/USER, even by someone who steals them.
    #[arg(long, env = "CHAT_PREKEY_KEEP_DAYS", default_value_t = PrekeyPolicy::default().keep_retired_ms / DAY_MS, value_parser = clap::value_parser!(u64).range(1..=365))]
    prekey_keep_days: u64,
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

impl Args {
    fn rotation(&self) -> RotationPolicy {
        RotationPolicy {
            messages: self.rotate_after_messages,
            age_ms: self.rotate_after_days * DAY_MS,
        }
    }

    fn prekey_policy(&self) -> PrekeyPolicy {
        PrekeyPolicy {
            rotate_after_ms: self.prekey_days * DAY_MS,
            keep_retired_ms: self.prekey_keep_days * DAY_MS,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print your fingerprint (the SHA-256 of your two public keys), for others to check.
    Fingerprint,
    /// Print the safety number you share with NAME, from the keys pinned for NAME.
    /// Compare it with NAME out of band (in person, on a call); it is the same on both
    /// sides.
    Verify {
        /// The contact.
        name: String,
        /// Mark NAME as verified: you compared the numbers and they match.
        #[arg(long)]
        confirm: bool,
    },
    /// Accept the keys the server now has for NAME: logs in, fetches them and pins them.
    /// Do this only once you know NAME really changed keys.
    Trust {
        /// The contact.
        name: String,
    },
}

fn key_bits(text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|bits| ALLOWED_KEY_BITS.contains(bits))
        .ok_or_else(|| "must be 2048, 3072 or 4096".to_owned())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
    };
    let result = runtime.block_on(run(args));
    // The stdin reader thread may be blocked in read(); do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("chat-client: error: {message}");
    ExitCode::FAILURE
}

fn describe(error: ClientError) -> String {
    client::error_chain(&error)
}

/// What ends the session once everything sent has been answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Disconnect, staying a member (end of input or /quit).
    Disconnect,
    /// Leave the room for good (/leave), then exit.
    Leave,
}

async fn run(args: Args) -> Result<(), String> {
    let connects = matches!(args.command, None | Some(Command::Trust { .. }));
    if connects && client::is_plaintext_beyond_loopback(&args.server) {
        eprintln!(
            "warning: {} is plaintext: your session token and who you talk to cross the \
             network in clear (messages stay end-to-end encrypted); use https://",
            args.server
        );
    }
    let user = args
        .user
        .clone()
        .ok_or("--user is required (or set CHAT_USER)")?;
    validate_user(&user).map_err(|error| error.to_string())?;
    let offline = matches!(
        args.command,
        Some(Command::Fingerprint | Command::Verify { .. })
    );
    if offline && !home::has_identity(&args.home, &user) {
        return Err(format!(
            "there is no identity for {user} in {}: check --user and --home, or chat once to \
             make one",
            args.home.display()
        ));
    }
    let identity = load_or_create_identity(&args, &user)?;
    let contacts = Contacts::open(&home::contacts_path(&args.home, &user)).map_err(describe)?;
    match &args.command {
        None => chat(&args, &user, Arc::new(identity), contacts).await,
        Some(Command::Fingerprint) => {
            println!("{user}: {}", identity.fingerprint());
            Ok(())
        }
        Some(Command::Verify { name, confirm }) => {
            verify(&identity, &user, contacts, name, *confirm)
        }
        Some(Command::Trust { name }) => trust(&args, &user, &identity, contacts, name).await,
    }
}

fn verify(
    identity: &Identity,
    user: &str,
    mut contacts: Contacts,
    name: &str,
    confirm: bool,
) -> Result<(), String> {
    validate_user(name).map_err(|error| error.to_string())?;
    let number = client::safety_number(identity, user, &contacts, name).map_err(describe)?;
    println!("safety number of {user} and {name}: {number}");
    if confirm {
        contacts.mark_verified(name).map_err(describe)?;
        eprintln!("marked {name} as verified");
    } else {
        eprintln!(
            "compare it with {name} out of band; if it matches, run: chat-client verify {name} --confirm"
        );
    }
    Ok(())
}

async fn trust(
    args: &Args,
    user: &str,
    identity: &Identity,
    mut contacts: Contacts,
    name: &str,
) -> Result<(), String> {
    validate_user(name).map_err(|error| error.to_string())?;
    let channel = client::connect(&args.server, args.ca_cert.as_deref())
        .await
        .map_err(describe)?;
    let credentials =
        client::login_with_token(channel.clone(), identity, user, registration_token(args))
            .await
            .map_err(describe)?;
    let mut chat = credentials.chat_client(channel);
    let presented = client::fetch_identity(&mut chat, name)
        .await
        .map_err(describe)?;
    contacts
        .trust(name, &presented.fingerprint)
        .map_err(describe)?;
    println!("now trusting {name}: {}", presented.fingerprint);
    Ok(())
}

/// The device's prekeys, made the first time and renewed on their schedule (what bounds
/// how much a later theft of the home directory reads).
fn load_prekeys(args: &Args, user: &str, identity: &Identity) -> Result<SharedPrekeys, String> {
    let bits = identity.encryption_key().bits();
    let (ring, maintenance) = PrekeyRing::load(
        &args.home,
        user,
        bits,
        args.prekey_policy(),
        now_ms(),
        || eprintln!("making a {bits}-bit prekey for {user} (this takes a few seconds)..."),
    )
    .map_err(describe)?;
    if maintenance.erased > 0 {
        eprintln!(
            "erased {} prekey(s) older than the forward-secrecy window",
            maintenance.erased
        );
    }
    Ok(Arc::new(RwLock::new(ring)))
}

async fn chat(
    args: &Args,
    user: &str,
    identity: Arc<Identity>,
    contacts: Contacts,
) -> Result<(), String> {
    validate_room(&args.room).map_err(|error| error.to_string())?;
    let progress = progress::progress_path(&args.home, user);
    let after_seq = progress::last_seq(&progress, &args.server, &args.room).map_err(describe)?;
    let (channel, credentials) = log_in(args, &identity, user).await.map_err(describe)?;
    if credentials.registered {
        eprintln!(
            "registered {user} on the server with fingerprint {}",
            identity.fingerprint()
        );
    }
    let join = JoinRoom {
        room: args.room.clone(),
        create_private: args.private,
        after_seq,
    };
    let prekeys = load_prekeys(args, user, &identity)?;
    let (session, notices) = ChatSession::join(
        channel,
        identity.clone(),
        &credentials,
        join,
        contacts,
        prekeys,
        args.rotation(),
    )
    .await
    .map_err(describe)?;
    for notice in notices {
        show(&notice);
    }
    let privacy = match session.owner() {
        Some(owner) => format!("; private, owned by {owner}"),
        None => String::new(),
    };
    eprintln!(
        "joined {} as {user} ({}{privacy})",
        args.room,
        members_line(&session)
    );
    let mut chat = Chat {
        session,
        args,
        identity,
        user,
        progress,
        saved_seq: after_seq,
        refused: 0,
        membership_ended: false,
    };
    let result = chat.run(spawn_stdin_reader()).await;
    chat.finish(result)
}

/// Connects to the server and logs in.
async fn log_in(
    args: &Args,
    identity: &Identity,
    user: &str,
) -> Result<(Channel, Credentials), ClientError> {
    let channel = client::connect(&args.server, args.ca_cert.as_deref()).await?;
    let credentials = tokio::time::timeout(
        LOGIN_TIMEOUT,
        client::login_with_token(channel.clone(), identity, user, registration_token(args)),
    )
    .await
    .map_err(|_| ClientError::NoAnswer {
        what: "the login".to_owned(),
        seconds: LOGIN_TIMEOUT.as_secs(),
    })??;
    Ok((channel, credentials))
}

fn registration_token(args: &Args) -> Option<&str> {
    args.registration_token.as_deref()
}

/// A chat in one room, and what the client keeps about it across connections.
struct Chat<'a> {
    session: ChatSession,
    args: &'a Args,
    identity: Arc<Identity>,
    user: &'a str,
    /// Where the last sequence number processed is saved.
    progress: PathBuf,
    /// What was last saved there for this room.
    saved_seq: Option<u64>,
    /// Messages the server refused.
    refused: usize,
    /// We left the room or were removed: nothing to catch up on next time.
    membership_ended: bool,
}

/// What became of the stream after some frames.
enum Stream {
    Open,
    Lost(ClientError),
}

impl Chat<'_> {
    /// Chats until the input ends (or /quit, /leave) and everything sent is answered.
    async fn run(&mut self, mut lines: mpsc::Receiver<String>) -> Result<(), String> {
        let mut ending: Option<Ending> = None;
        let mut leave_sent = false;
        let mut connected = true;
        let mut backoff = Backoff::default();
        let retry = tokio::time::sleep(Duration::MAX);
        tokio::pin!(retry);
        let closing_deadline = tokio::time::sleep(Duration::MAX);
        tokio::pin!(closing_deadline);
        let mut prekey_check = tokio::time::interval(PREKEY_CHECK);
        // The first tick is immediate: the prekeys were just checked at start-up.
        prekey_check.tick().await;

        loop {
            if let Some(end) = ending
                && self.is_settled(end, connected)
            {
                if end == Ending::Disconnect || self.membership_ended {
                    return Ok(());
                }
                if !leave_sent {
                    match self.session.leave().await {
                        Ok(_) => leave_sent = true,
                        // The lost stream shows below; the leave is sent after reconnecting.
                        Err(ClientError::Disconnected) => {}
                        Err(error) => return Err(describe(error)),
                    }
                }
            }
            tokio::select! {
                frame = self.session.next_frame(), if connected => {
                    let stream = match frame {
                        Ok(Some(frame)) => self.on_frames(frame).await?,
                        Ok(None) => Stream::Lost(ClientError::Disconnected),
                        Err(error) => Stream::Lost(error),
                    };
                    if let Stream::Lost(error) = stream {
                        connected = false;
                        self.save_progress();
                        if let ClientError::Ended(status) = &error
                            && matches!(status.code(), Code::Aborted | Code::PermissionDenied)
                        {
                            // Another session of ours took over, or we were removed:
                            // coming back by ourselves would only undo it.
                            return Err(format!(
                                "the server closed this session: {}",
                                describe(error)
                            ));
                        }
                        let delay = backoff.next_delay();
                        eprintln!(
                            "lost the connection to the server: {}; {} message(s) pending; \
                             reconnecting in {delay:?}",
                            describe(error),
                            self.session.pending().len()
                        );
                        retry.as_mut().reset(Instant::now() + delay);
                    }
                }
                line = lines.recv(), if ending.is_none() => {
                    let command = match line {
                        Some(line) => on_line(&mut self.session, &line).await?,
                        None => Some(Ending::Disconnect),
                    };
                    if let Some(end) = command {
                        ending = Some(end);
                        closing_deadline.as_mut().reset(Instant::now() + CLOSING_TIMEOUT);
                    }
                }
                () = &mut retry, if !connected => {
                    // Past the closing deadline, a slow attempt is not waited for.
                    let attempt = tokio::select! {
                        attempt = self.reconnect() => attempt,
                        () = &mut closing_deadline => return Err(self.closing_timeout(false)),
                    };
                    match attempt {
                        Ok(()) => {
                            connected = true;
                            backoff = Backoff::default();
                        }
                        Err(error) if is_permanent(&error) => {
                            let error = describe(error.into_inner());
                            return Err(format!("cannot reconnect: {error}"));
                        }
                        Err(error) => {
                            let delay = backoff.next_delay();
                            eprintln!(
                                "could not reconnect: {}; trying again in {delay:?}",
                                describe(error.into_inner())
                            );
                            retry.as_mut().reset(Instant::now() + delay);
                        }
                    }
                }
                _ = prekey_check.tick(), if connected && ending.is_none() => {
                    match self.session.renew_prekeys(now_ms()).await {
                        Ok(0) => {}
                        Ok(erased) => eprintln!(
                            "erased {erased} prekey(s) older than the forward-secrecy window"
                        ),
                        // A lost stream shows below; the next check tries again.
                        Err(error) => eprintln!("warning: could not renew prekeys: {}", describe(error)),
                    }
                }
                () = &mut closing_deadline => return Err(self.closing_timeout(connected)),
            }
        }
    }

    /// The error when the closing deadline passed.
    fn closing_timeout(&self, connected: bool) -> String {
        if connected {
            format!(
                "timed out after {CLOSING_TIMEOUT:?} waiting for the server to acknowledge {} \
                 frame(s)",
                self.session.unanswered()
            )
        } else {
            format!(
                "gave up: could not reconnect to the server within {CLOSING_TIMEOUT:?} after \
                 the end of input"
            )
        }
    }

    /// Whether the session can end as `end` asks: everything answered; or, offline and
    /// only disconnecting, no message left unacknowledged (what else was unanswered died
    /// with the stream and is not needed any more).
    fn is_settled(&self, end: Ending, connected: bool) -> bool {
        if connected {
            self.session.unanswered() == 0
        } else {
            end == Ending::Disconnect && self.session.pending().is_empty()
        }
    }

    /// Applies `first` and the frames that have already arrived after it, then saves
    /// the progress once for all of them.
    async fn on_frames(&mut self, first: ServerFrame) -> Result<Stream, String> {
        let mut frame = first;
        let mut stream = Stream::Open;
        for applied in 1..=MAX_BATCH {
            self.on_frame(frame).await?;
            // A frame read now would have to be applied before the progress is saved
            // past it: stop reading once the batch is full.
            if applied == MAX_BATCH {
                break;
            }
            // Only what is ready now: a zero timeout polls the (cancel-safe) read once.
            match tokio::time::timeout(Duration::ZERO, self.session.next_frame()).await {
                Ok(Ok(Some(next))) => frame = next,
                Ok(Ok(None)) => {
                    stream = Stream::Lost(ClientError::Disconnected);
                    break;
                }
                Ok(Err(error)) => {
                    stream = Stream::Lost(error);
                    break;
                }
                Err(_) => break,
            }
        }
        self.save_progress();
        Ok(stream)
    }

    async fn on_frame(&mut self, frame: ServerFrame) -> Result<(), String> {
        for event in self.session.handle(frame).await.map_err(describe)? {
            show(&event);
            match event {
                Event::Refused { .. } => self.refused += 1,
                Event::Left { .. } => self.membership_ended = true,
                Event::Removed { room } => {
                    self.membership_ended = true;
                    return Err(format!("the owner of {room} removed you from it"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Logs in again and takes the session to a new stream.
    async fn reconnect(&mut self) -> Result<(), Attempt> {
        let (channel, credentials) = log_in(self.args, &self.identity, self.user)
            .await
            .map_err(Attempt::Login)?;
        let events = self
            .session
            .reconnect(channel, &credentials)
            .await
            .map_err(Attempt::Join)?;
        for event in &events {
            show(event);
        }
        eprintln!(
            "reconnected; resent {} pending message(s)",
            self.session.pending().len()
        );
        Ok(())
    }

    /// Saves the last sequence number processed, if it moved.
    fn save_progress(&mut self) {
        let seq = self.session.last_seq();
        if self.saved_seq == Some(seq) {
            return;
        }
        let room = self.session.room();
        match progress::save_last_seq(&self.progress, &self.args.server, room, seq) {
            Ok(()) => self.saved_seq = Some(seq),
            Err(error) => eprintln!("warning: {}", describe(error)),
        }
    }

    /// Saves (or, out of the room, forgets) the progress and reports what was left
    /// undone; then the result of the chat.
    fn finish(&mut self, result: Result<(), String>) -> Result<(), String> {
        if self.membership_ended {
            let forgotten =
                progress::forget_room(&self.progress, &self.args.server, self.session.room());
            if let Err(error) = forgotten {
                eprintln!("warning: {}", describe(error));
            }
        } else {
            self.save_progress();
        }
        if self.session.undecryptable() > 0 {
            eprintln!(
                "warning: {} message(s) could not be decrypted: their sender key never arrived",
                self.session.undecryptable()
            );
        }
        for text in self.session.pending() {
            eprintln!("not delivered: \"{}\"", one_line(text));
        }
        result?;
        if self.refused > 0 {
            return Err(format!(
                "{} message(s) were refused by the server",
                self.refused
            ));
        }
        Ok(())
    }
}

/// A failed reconnection attempt, by the step that failed.
#[derive(Debug)]
enum Attempt {
    Login(ClientError),
    Join(ClientError),
}

impl Attempt {
    fn into_inner(self) -> ClientError {
        match self {
            Self::Login(error) | Self::Join(error) => error,
        }
    }
}

/// Whether retrying cannot help: the server refused the login or the room, or
/// something is wrong on this machine. Lost connections, timeouts and a busy or
/// restarting server are worth another try.
fn is_permanent(attempt: &Attempt) -> bool {
    let (error, permanent_codes): (&ClientError, &[Code]) = match attempt {
        Attempt::Login(error) => (
            error,
            &[
                Code::Unauthenticated,
                Code::InvalidArgument,
                Code::PermissionDenied,
            ],
        ),
        Attempt::Join(error) => (
            error,
            &[
                Code::PermissionDenied,
                Code::NotFound,
                Code::InvalidArgument,
                Code::FailedPrecondition,
            ],
        ),
    };
    match error {
        ClientError::Unreachable { .. }
        | ClientError::ClosedAtOnce { .. }
        | ClientError::Disconnected
        | ClientError::NoAnswer { .. } => false,
        ClientError::Refused(status) | ClientError::Ended(status) => {
            permanent_codes.contains(&status.code())
        }
        _ => true,
    }
}

/// The waits between reconnection attempts: 0.5 s, doubling up to 10 s.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST_RETRY }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(MAX_RETRY);
        delay
    }
}

fn load_or_create_identity(args: &Args, user: &str) -> Result<Identity, String> {
    let (identity, provenance) =
        home::load_or_create_identity(&args.home, user, args.key_bits, |path| {
            eprintln!(
                "generating {}-bit RSA keys for {user} in {} (this takes a few seconds)...",
                args.key_bits,
                path.display()
            );
        })
        .map_err(describe)?;
    if provenance == home::Provenance::Migrated {
        eprintln!(
            "upgraded the identity of {user}: its key is now the encryption key, and a new \
             signing key was made; on a server that knew the old key, log in under a new name"
        );
    }
    Ok(identity)
}

/// Carries out one line of input; returns how to end the session if it asks to.
async fn on_line(session: &mut ChatSession, line: &str) -> Result<Option<Ending>, String> {
    let text = match line.trim() {
        "" => return Ok(None),
        "/leave" => return Ok(Some(Ending::Leave)),
        "/quit" => return Ok(Some(Ending::Disconnect)),
        _ if line.starts_with("//") => &line[1..],
        command if command.starts_with('/') => {
            if let Err(error) = on_command(session, command).await {
                eprintln!("{command}: {}", describe(error));
            }
            return Ok(None);
        }
        _ => line,
    };
    match session.send_text(text).await {
        Ok(_) => Ok(None),
        Err(error @ ClientError::MessageTooLong { .. }) => {
            eprintln!("not sent: {error}");
            Ok(None)
        }
        Err(error) => Err(describe(error)),
    }
}

/// Carries out a command other than /leave and /quit; errors are the command's own.
async fn on_command(session: &mut ChatSession, command: &str) -> Result<(), ClientError> {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words[..] {
        ["/who"] => eprintln!("{}", members_line(session)),
        ["/help"] => eprintln!("{HELP_AFTER}"),
        ["/fingerprint"] => eprintln!("your fingerprint: {}", session.fingerprint()),
        ["/verify", name] => {
            let number = session.safety_number(name)?;
            eprintln!(
                "safety number with {name}: {number}\ncompare it with {name} out of band; if it \
                 matches, type /verify {name} confirm"
            );
        }
        ["/verify", name, "confirm"] => {
            session.mark_verified(name)?;
            eprintln!("marked {name} as verified");
        }
        ["/trust", name] => {
            for event in session.trust(name).await? {
                show(&event);
            }
        }
        ["/invite", name] => {
            session.invite(name).await?;
        }
        ["/kick", name] => {
            session.kick(name).await?;
        }
        ["/pending"] => {
            for line in pending_lines(&session.pending()) {
                eprintln!("{line}");
            }
        }
        ["/history", ref count @ ..] if count.len() <= 1 => {
            match history_limit(count.first().copied()) {
                Ok(limit) => {
                    session.history(limit).await?;
                }
                Err(error) => eprintln!("{command}: {error}"),
            }
        }
        _ => eprintln!("unknown command or wrong arguments: {command}; type /help for the list"),
    }
    Ok(())
}

fn members_line(session: &ChatSession) -> String {
    let members = session.members();
    if members.is_empty() {
        format!("you are alone in {}", session.room())
    } else {
        format!("members of {}: you, {}", session.room(), members.join(", "))
    }
}

fn show(event: &Event) {
    match event {
        Event::Message {
            room, sender, text, ..
        } => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "[{room}] {sender}: {}", one_line(text));
            let _ = stdout.flush();
        }
        Event::MemberJoined { room, user } => eprintln!("* {user} joined {room}"),
        Event::MemberLeft { room, user, reason } => {
            let how = match reason {
                LeaveReason::Left | LeaveReason::Unspecified => "left",
                LeaveReason::Kicked => "was removed by the owner from",
                LeaveReason::Reclaimed => "went unused too long and was removed by the server from",
            };
            eprintln!("* {user} {how} {room}; your sender key was rotated");
        }
        Event::Refused {
            message,
            code,
            text,
            ..
        } => eprintln!(
            "failed to send \"{}\": {}: {message}",
            one_line(text),
            client::code_name(*code)
        ),
        Event::CaughtUp { room, .. } => eprintln!("caught up on {room}"),
        Event::History { room, messages } => {
            if messages.is_empty() {
                eprintln!("history [{room}]: no messages");
            }
            for message in messages {
                eprintln!("{}", history_line(room, message));
            }
        }
        Event::Left { room } => eprintln!("left {room}"),
        Event::Removed { room } => eprintln!("* the owner removed you from {room}"),
        Event::Pinned { user, fingerprint } => eprintln!(
            "* pinned the keys of {user} (fingerprint {fingerprint}); compare your safety \
             number with /verify {user}"
        ),
        Event::KeysChanged {
            room,
            user,
            pinned,
            presented,
            was_verified,
        } => eprintln!(
            "WARNING: the server presented NEW KEYS for {user} in {room}{}: pinned {pinned}, \
             presented {presented}. Nothing is sent to or accepted from {user} until you check \
             the safety number with {user} (/verify {user}) and run /trust {user}. If {user} \
             did not change keys, someone may be impersonating them.",
            if *was_verified {
                ", whom you had VERIFIED"
            } else {
                ""
            }
        ),
        Event::Notice(text) => eprintln!("* {text}"),
        Event::Warning(text) => eprintln!("warning: {text}"),
        Event::Delivered { .. } => {}
    }
}

/// What `/pending` prints.
fn pending_lines(pending: &[&str]) -> Vec<String> {
    if pending.is_empty() {
        return vec!["no message is waiting for the server's acknowledgement".to_owned()];
    }
    let mut lines = vec![format!(
        "{} message(s) sent but not acknowledged yet:",
        pending.len()
    )];
    lines.extend(
        pending
            .iter()
            .map(|text| format!("  \"{}\"", one_line(text))),
    );
    lines
}

/// The number of messages `/history` asks for: `DEFAULT_HISTORY` without an argument,
/// else 1 to `MAX_HISTORY_MESSAGES`.
fn history_limit(argument: Option<&str>) -> Result<u32, String> {
    let Some(argument) = argument else {
        return Ok(DEFAULT_HISTORY);
    };
    argument
        .parse::<u32>()
        .ok()
        .filter(|limit| (1..=MAX_HISTORY_MESSAGES).contains(limit))
        .ok_or_else(|| format!("the number of messages must be 1 to {MAX_HISTORY_MESSAGES}"))
}

/// One message of the history, for stderr.
fn history_line(room: &str, message: &HistoryMessage) -> String {
    format!(
        "history [{room}] {} ({}): {}",
        message.sender,
        utc_time(message.sent_at_ms),
        one_line(&message.text)
    )
}

/// The text with control characters, line and paragraph separators and bidirectional
/// controls escaped, so a message is always one line, shows what it says, and cannot
/// drive the terminal.
fn one_line(text: &str) -> String {
    let needs_escape = |c: char| {
        c.is_control()
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}'
            )
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        if needs_escape(c) {
            line.extend(c.escape_unicode());
        } else {
            line.push(c);
        }
    }
    line
}

/// Reads stdin on a plain thread (tokio's stdin would hold up the exit), one line at a
/// time, invalid UTF-8 replaced.
fn spawn_stdin_reader() -> mpsc::Receiver<String> {
    let (lines_tx, lines) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match stdin.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer);
                    let line = line.trim_end_matches(['\n', '\r']).to_owned();
                    if lines_tx.blocking_send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_what_could_forge_or_split_a_line() {
        assert_eq!(one_line("plain ünïcödé 'text'"), "plain ünïcödé 'text'");
        assert_eq!(one_line("a\nb"), "a\\u{a}b");
        assert_eq!(one_line("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(one_line("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(one_line("x\u{2028}y"), "x\\u{2028}y");
    }

    #[test]
    fn history_lines_show_the_time_in_utc_and_escape_the_text() {
        let message = HistoryMessage {
            seq: 7,
            sender: "alice".into(),
            text: "two\nlines".into(),
            sent_at_ms: 1_700_000_000_000,
        };
        assert_eq!(
            history_line("lobby", &message),
            "history [lobby] alice (2023-11-14 22:13:20 UTC): two\\u{a}lines"
        );
    }

    #[test]
    fn history_takes_1_to_100_messages_and_20_by_default() {
        assert_eq!(history_limit(None), Ok(20));
        assert_eq!(history_limit(Some("1")), Ok(1));
        assert_eq!(history_limit(Some("100")), Ok(100));
        for wrong in ["0", "101", "-3", "ten", ""] {
            assert!(history_limit(Some(wrong)).is_err(), "{wrong}");
        }
    }

    #[test]
    fn pending_lists_each_text_on_one_line() {
        assert_eq!(pending_lines(&[]).len(), 1);
        assert_eq!(
            pending_lines(&["hi", "a\nb"]),
            [
                "2 message(s) sent but not acknowledged yet:",
                "  \"hi\"",
                "  \"a\\u{a}b\"",
            ]
        );
    }

    #[test]
    fn reconnecting_waits_half_a_second_doubling_up_to_ten() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..7)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    }

    #[test]
    fn only_refusals_that_retrying_cannot_change_are_permanent() {
        let refused = |code| ClientError::Refused(tonic::Status::new(code, "no"));
        assert!(is_permanent(&Attempt::Login(refused(
            Code::Unauthenticated
        ))));
        assert!(is_permanent(&Attempt::Login(ClientError::NameTaken {
            user: "alice".into(),
            reason: "taken".into()
        })));
        assert!(is_permanent(&Attempt::Join(refused(
            Code::PermissionDenied
        ))));
        assert!(!is_permanent(&Attempt::Login(refused(Code::Unavailable))));
        assert!(!is_permanent(&Attempt::Join(refused(Code::AlreadyExists))));
        assert!(!is_permanent(&Attempt::Join(refused(
            Code::Unauthenticated
        ))));
        assert!(!is_permanent(&Attempt::Join(ClientError::Ended(
            tonic::Status::unavailable("shutting down")
        ))));
        assert!(!is_permanent(&Attempt::Login(ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "refused".into()
        })));
        assert!(!is_permanent(&Attempt::Join(ClientError::Disconnected)));
    }
}
