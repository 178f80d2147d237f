//! `chat-client`: chat from the command line, end-to-end encrypted, in one or more rooms
//! on one session: line by line for scripts and pipes, full-screen on a terminal.
//!
//! - `main.rs`: the options, the key-management commands, logging in.
//! - [`chat`]: the session's life: frames, input, reconnecting, receipts, progress.
//! - [`commands`]: what a line of input asks for.
//! - [`ui`]: what the loop needs from an interface; [`lines`] is the line interface
//!   (stdout for messages, stderr for the rest), [`full_screen`] the full-screen one,
//!   drawn by [`tui`] (the screen's model, view and keys, no I/O).
//! - [`render`]: the texts both interfaces show.

mod chat;
mod commands;
mod full_screen;
mod lines;
mod render;
mod tui;
mod ui;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clap::{Parser, Subcommand};
use e2ee_chat::client::prekeys::{PrekeyPolicy, PrekeyRing};
use e2ee_chat::client::{
    self, ClientError, Contacts, Credentials, Relays, RotationPolicy, SharedPrekeys, home,
};
use e2ee_chat::crypto::{ALLOWED_KEY_BITS, DEFAULT_KEY_BITS, Identity};
use e2ee_chat::protocol::{now_ms, validate_user};
use tonic::transport::Channel;

/// How long a login may take before the attempt counts as failed.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

const HELP_AFTER: &str = "\
Input and output:
  stdin   one line = one message; lines starting with / are commands
          (start a message with // to send a line beginning with /)
  stdout  one line per message received: [ROOM] SENDER: TEXT
  stderr  everything else; a line containing \"joined ROOM\" once it can send

Rooms: --room takes several rooms (repeated, or a comma list), all on one session; the
first is the current room. Lines without a command go to the current room.
  /switch ROOM     make ROOM the current room
  /msg ROOM TEXT   send one message to ROOM
  /join ROOM       join ROOM too (creating it open if it does not exist)
  /part [ROOM]     leave ROOM (default: the current room) for good; same as /leave
  /rooms           list the rooms of this session

Commands (on the current room unless a ROOM is given):
  /who [ROOM]      list the members
  /fingerprint     show your fingerprint
  /verify NAME     show the safety number you share with NAME, to compare out of band
  /verify NAME confirm   mark NAME verified once the numbers match
  /trust NAME      accept the new keys the server presents for NAME
  /invite NAME     let NAME join this private room (owner only)
  /kick NAME       remove NAME from this private room (owner only)
  /pending         list the messages sent but not yet acknowledged by the server
  /receipts [ROOM] who received and who read your latest messages
  /history [ROOM] [N]  show the room's last N messages (1 to 100, default 20) on stderr:
                   history [ROOM] SENDER (YYYY-MM-DD HH:MM:SS UTC): TEXT
  /leave [ROOM]    leave the room for good; once no room is left, exit
  /quit            disconnect and exit; you stay a member (as at end of input)
  /help            list the commands

Full screen: on a terminal (or with --tui) the client shows the rooms with their unread
counts, the messages with their times, the members and the state of the connection;
the input line is never overwritten. Keys: Enter sends, Up/Down recall earlier lines,
Ctrl-N/Ctrl-P or Alt-1..9 switch rooms, PageUp/PageDown scroll, Ctrl-C quits (after
the server has acknowledged what you sent). Your messages show … (pending), ✓ (stored
by the server), ✓✓ N/M (delivered to N of the M members it was sent to), read N/M.

Receipts: the client tells the room, end-to-end encrypted, how far it has received
and read (read: shown on the screen, or printed to a terminal); --no-receipts stops
that. Others' receipts are shown either way.

Keys: the first time you meet someone, their keys are pinned in HOME/USER/contacts.json.
If the server later presents other keys for them, nothing is sent to or accepted from
them until you run /trust NAME (or chat-client trust NAME).

Delivery: the server keeps what is said in the room for its members. End of input and
/quit only disconnect: you stay a member until /leave (or the owner removes you), and
the next run in the room first shows, on stdout, what was said meanwhile. Where you
were is saved per server and room in HOME/USER/progress.json. If the connection is
lost, the client reconnects by itself (waiting 0.5 s, doubling up to 10 s after each
round through the --server list; the next relay of a round after 0.5 s) and sends
again the messages the server had not acknowledged; a message the server refused is
reported as: failed to send \"TEXT\": CODE: reason. One session per user: starting the
client again elsewhere as the same user ends this one (it exits, and does not fight
back).

Several relays: --server a,b (or --server twice) names relays of one deployment (they
share its database). The client starts with the first; if a relay cannot be reached, or
drops the connection (a transport error, UNAVAILABLE), it goes on to the next in the
list (after the last, the first again), with the same waits, logs in there, rejoins
every room from where it was and sends again what was not acknowledged. Each
(re)connection says \"connected to URL\" or \"reconnected to URL\" on stderr. The first
URL names the deployment: progress is saved under it whichever relay is in use, so list
a deployment's relays first-URL-first everywhere (a home used with --server a alone goes
on with --server a,b).

At end of input the client exits 0 once the server has acknowledged every message;
otherwise (a message refused or not sent, or 15 s without a further acknowledgement) it lists the
messages not acknowledged and exits non-zero with a one-line error. A line typed after
/join waits for the join; after /part (or /leave) the room is gone at once. If the owner
removes you from your current room, there is no current room until you /switch: no
line meant for it goes to another.";

/// Chat in rooms of an end-to-end encrypted relay: messages are encrypted for each
/// room's members and signed before they leave this machine.
///
/// Without a command, logs in and chats in the --room rooms. The commands manage trust in other
/// users' keys.
#[derive(Debug, Parser)]
#[command(name = "chat-client", version, after_long_help = HELP_AFTER)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The relay's URL: https://HOST:PORT for TLS, or http://HOST:PORT for plaintext
    /// (only safe to a relay on this machine). Several relays of one deployment: repeat
    /// it or give a comma list; the client starts with the first and fails over to the
    /// next when one cannot be reached or drops the connection. The first URL names the
    /// deployment: progress is saved under it whichever relay is in use.
    #[arg(
        long,
        global = true,
        env = "CHAT_SERVER",
        value_name = "URL[,URL...]",
        default_value = "http://127.0.0.1:5555",
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// Trust the CA certificate(s) in this PEM file for an https:// server, instead of
    /// the public web roots built in; for a self-signed or private-CA server certificate.
    #[arg(long, global = true, env = "CHAT_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Your user name: 1 to 32 characters from A-Z a-z 0-9 _ . - (required). The first
    /// login registers it on the server to your keys.
    #[arg(long, global = true, env = "CHAT_USER")]
    user: Option<String>,
    /// The rooms to join, each 1 to 64 characters from A-Z a-z 0-9 _ . # -; repeat it
    /// or give a comma list. The first is the current room.
    #[arg(
        long,
        env = "CHAT_ROOM",
        default_value = "lobby",
        value_delimiter = ','
    )]
    room: Vec<String>,
    /// Create the --room rooms private if they do not exist: only you and the users you
    /// /invite can join them.
    #[arg(long, env = "CHAT_PRIVATE")]
    private: bool,
    /// The full-screen interface even if stdin or stdout is not a terminal.
    #[arg(long, env = "CHAT_TUI", conflicts_with = "no_tui")]
    tui: bool,
    /// Lines on stdin and stdout even on a terminal (the script interface).
    #[arg(long, env = "CHAT_NO_TUI")]
    no_tui: bool,
    /// Do not send receipts: the rooms are not told how far you have received and read.
    #[arg(long, env = "CHAT_NO_RECEIPTS")]
    no_receipts: bool,
    /// Where your keys, pinned contacts and progress are kept: HOME/USER/signing.pem and
    /// encryption.pem (PKCS#8 PEM, mode 0600), HOME/USER/prekeys.json and
    /// prekey-ID.pem (your prekeys, mode 0600), HOME/USER/contacts.json, and HOME/USER/progress.json (the last message seen
    /// per server and room, the server being the first --server URL).
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

pub(crate) fn describe(error: ClientError) -> String {
    client::error_chain(&error)
}

async fn run(args: Args) -> Result<(), String> {
    let connects = matches!(args.command, None | Some(Command::Trust { .. }));
    // Every URL is checked before keys are made or any relay is tried: a typo in the
    // last one would otherwise show only the day the others are down.
    let relays = connects.then(|| relays(&args)).transpose()?;
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
    match (&args.command, relays) {
        (None, Some(relays)) => {
            chat::chat(&args, relays, &user, Arc::new(identity), contacts).await
        }
        (Some(Command::Fingerprint), _) => {
            println!("{user}: {}", identity.fingerprint());
            Ok(())
        }
        (Some(Command::Verify { name, confirm }), _) => {
            verify(&identity, &user, contacts, name, *confirm)
        }
        (Some(Command::Trust { name }), Some(mut relays)) => {
            trust(&args, &mut relays, &user, &identity, contacts, name).await
        }
        (None | Some(Command::Trust { .. }), None) => {
            unreachable!("the relays are checked for every command that connects")
        }
    }
}

/// The relays of `--server`, each URL checked, with a warning for each that is
/// plaintext beyond this machine.
fn relays(args: &Args) -> Result<Relays, String> {
    let relays = Relays::new(args.server.clone(), args.ca_cert.as_deref()).map_err(describe)?;
    for url in relays.urls() {
        if client::is_plaintext_beyond_loopback(url) {
            eprintln!(
                "warning: {url} is plaintext: your session token and who you talk to cross the \
                 network in clear (messages stay end-to-end encrypted); use https://"
            );
        }
    }
    Ok(relays)
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
    relays: &mut Relays,
    user: &str,
    identity: &Identity,
    mut contacts: Contacts,
    name: &str,
) -> Result<(), String> {
    validate_user(name).map_err(|error| error.to_string())?;
    let (channel, credentials) = log_in_anywhere(args, relays, identity, user)
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
pub(crate) fn load_prekeys(
    args: &Args,
    user: &str,
    identity: &Identity,
) -> Result<SharedPrekeys, String> {
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

/// Logs in at the current relay or, if it is down, at the next ones in turn, each tried
/// once; says on stderr which one it is.
pub(crate) async fn log_in_anywhere(
    args: &Args,
    relays: &mut Relays,
    identity: &Identity,
    user: &str,
) -> Result<(Channel, Credentials), ClientError> {
    let mut untried = relays.urls().len() - 1;
    loop {
        match log_in(args, relays.current(), identity, user).await {
            Ok(session) => {
                eprintln!("connected to {}", relays.current());
                return Ok(session);
            }
            Err(error) if error.relay_down() && untried > 0 => {
                let down = relays.current().to_owned();
                relays.move_on();
                untried -= 1;
                eprintln!(
                    "cannot use {down}: {}; trying {}",
                    describe(error),
                    relays.current()
                );
            }
            Err(error) => return Err(error),
        }
    }
}

/// Connects to the relay at `url` and logs in.
pub(crate) async fn log_in(
    args: &Args,
    url: &str,
    identity: &Identity,
    user: &str,
) -> Result<(Channel, Credentials), ClientError> {
    let channel = client::connect(url, args.ca_cert.as_deref()).await?;
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
