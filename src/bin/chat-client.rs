//! `chat-client`: chat in one room from the command line, end-to-end encrypted.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use e2ee_chat::client::{self, ChatSession, ClientError, Contacts, Event, home};
use e2ee_chat::crypto::{ALLOWED_KEY_BITS, DEFAULT_KEY_BITS, Identity};
use e2ee_chat::proto::{JoinRoom, LeaveReason};
use e2ee_chat::protocol::{validate_room, validate_user};
use tokio::sync::mpsc;

/// How long the client waits, at the end, for the server to acknowledge what it sent.
const CLOSING_TIMEOUT: Duration = Duration::from_secs(15);

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
  /leave           leave the room and exit
  /quit            disconnect and exit (you stay a member until then)
  /help            list the commands

Keys: the first time you meet someone, their keys are pinned in HOME/USER/contacts.json.
If the server later presents other keys for them, nothing is sent to or accepted from
them until you run /trust NAME (or chat-client trust NAME).

At end of input the client leaves the room and exits 0 once the server has acknowledged
every message; otherwise it exits non-zero with a one-line error.";

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
    /// Where your keys and pinned contacts are kept: HOME/USER/signing.pem and
    /// encryption.pem (PKCS#8 PEM, mode 0600), HOME/USER/contacts.json.
    #[arg(long, global = true, env = "CHAT_HOME", default_value_os_t = home::default_home())]
    home: PathBuf,
    /// Size of new identity keys in bits (2048, 3072 or 4096); existing keys are kept.
    #[arg(long, global = true, env = "CHAT_KEY_BITS", default_value_t = DEFAULT_KEY_BITS, value_parser = key_bits)]
    key_bits: usize,
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
    /// Leave the room (end of input or /leave), then exit.
    Leave,
    /// Exit without leaving (/quit).
    Quit,
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
    let credentials = client::login(channel.clone(), identity, user)
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

async fn chat(
    args: &Args,
    user: &str,
    identity: Arc<Identity>,
    contacts: Contacts,
) -> Result<(), String> {
    validate_room(&args.room).map_err(|error| error.to_string())?;
    let channel = client::connect(&args.server, args.ca_cert.as_deref())
        .await
        .map_err(describe)?;
    let credentials = client::login(channel.clone(), &identity, user)
        .await
        .map_err(describe)?;
    if credentials.registered {
        eprintln!(
            "registered {user} on the server with fingerprint {}",
            identity.fingerprint()
        );
    }
    let join = JoinRoom {
        room: args.room.clone(),
        create_private: args.private,
        after_seq: None,
    };
    let (mut session, notices) = ChatSession::join(channel, identity, &credentials, join, contacts)
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

    let mut lines = spawn_stdin_reader();
    let mut ending: Option<Ending> = None;
    let mut leave_sent = false;
    let mut refused = 0usize;
    let closing_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(closing_deadline);

    loop {
        if let Some(end) = ending
            && session.unanswered() == 0
        {
            if end == Ending::Quit || leave_sent {
                break;
            }
            session.leave().await.map_err(describe)?;
            leave_sent = true;
        }
        tokio::select! {
            frame = session.next_frame() => {
                let frame = frame
                    .map_err(|error| lost_connection(&session, error))?
                    .ok_or_else(|| lost_connection(&session, ClientError::Disconnected))?;
                for event in session.handle(frame).await.map_err(describe)? {
                    match &event {
                        Event::Refused { .. } => refused += 1,
                        Event::Removed { room } => {
                            return Err(format!("the owner of {room} removed you from it"));
                        }
                        _ => {}
                    }
                    show(&event);
                }
            }
            line = lines.recv(), if ending.is_none() => {
                let command = match line {
                    Some(line) => on_line(&mut session, &line).await?,
                    None => Some(Ending::Leave),
                };
                if let Some(end) = command {
                    ending = Some(end);
                    closing_deadline.as_mut().reset(tokio::time::Instant::now() + CLOSING_TIMEOUT);
                }
            }
            () = &mut closing_deadline => {
                return Err(format!(
                    "timed out after {CLOSING_TIMEOUT:?} waiting for the server to acknowledge {} frame(s)",
                    session.unanswered()
                ));
            }
        }
    }
    if session.undecryptable() > 0 {
        eprintln!(
            "warning: {} message(s) could not be decrypted: their sender key never arrived",
            session.undecryptable()
        );
    }
    if refused > 0 {
        return Err(format!("{refused} message(s) were refused by the server"));
    }
    Ok(())
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

fn lost_connection(session: &ChatSession, error: ClientError) -> String {
    let unanswered = session.unanswered();
    let mut message = format!("lost the connection to the server: {}", describe(error));
    if unanswered > 0 {
        message.push_str(&format!("; {unanswered} frame(s) were not acknowledged"));
    }
    message
}

/// Carries out one line of input; returns how to end the session if it asks to.
async fn on_line(session: &mut ChatSession, line: &str) -> Result<Option<Ending>, String> {
    let text = match line.trim() {
        "" => return Ok(None),
        "/leave" => return Ok(Some(Ending::Leave)),
        "/quit" => return Ok(Some(Ending::Quit)),
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
                LeaveReason::Left => "left",
                LeaveReason::Kicked => "was removed by the owner from",
                LeaveReason::TooSlow => "was dropped by the server (too slow) from",
                LeaveReason::Disconnected | LeaveReason::Unspecified => "disconnected from",
            };
            eprintln!("* {user} {how} {room}; your sender key was rotated");
        }
        Event::Refused { message, code, .. } => {
            eprintln!(
                "warning: the server refused a message: {}: {message}",
                client::code_name(*code)
            );
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
        // Shown by the next version of this client.
        Event::Delivered { .. } | Event::CaughtUp { .. } | Event::History { .. } => {}
    }
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
    use super::one_line;

    #[test]
    fn one_line_escapes_what_could_forge_or_split_a_line() {
        assert_eq!(one_line("plain ünïcödé 'text'"), "plain ünïcödé 'text'");
        assert_eq!(one_line("a\nb"), "a\\u{a}b");
        assert_eq!(one_line("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(one_line("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(one_line("x\u{2028}y"), "x\\u{2028}y");
    }
}
