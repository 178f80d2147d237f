//! `chat-client`: chat in one room from the command line, end-to-end encrypted.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use e2ee_chat::client::{self, ChatSession, ClientError, Event, home};
use e2ee_chat::crypto::{ALLOWED_KEY_BITS, DEFAULT_KEY_BITS};
use e2ee_chat::proto::LeaveReason;
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

Commands: /who lists the members, /leave leaves the room and exits, /quit disconnects
and exits, /help lists the commands.

At end of input the client leaves the room and exits 0 once the server has acknowledged
every message; otherwise it exits non-zero with a one-line error.";

/// Chat in one room of an end-to-end encrypted relay: messages are encrypted for the
/// room's members before they leave this machine.
#[derive(Debug, Parser)]
#[command(name = "chat-client", version, after_long_help = HELP_AFTER)]
struct Args {
    /// The relay's URL: https://HOST:PORT for TLS, or http://HOST:PORT for plaintext
    /// (only safe to a relay on this machine).
    #[arg(long, env = "CHAT_SERVER", default_value = "http://127.0.0.1:5555")]
    server: String,
    /// Trust the CA certificate(s) in this PEM file for an https:// server, instead of
    /// the public web roots built in; for a self-signed or private-CA server certificate.
    #[arg(long, env = "CHAT_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Your user name: 1 to 32 characters from A-Z a-z 0-9 _ . -
    #[arg(long, env = "CHAT_USER")]
    user: String,
    /// The room to join: 1 to 64 characters from A-Z a-z 0-9 _ . # -
    #[arg(long, env = "CHAT_ROOM", default_value = "lobby")]
    room: String,
    /// Where identity keys are kept: HOME/USER/identity.pem (PKCS#8 PEM, mode 0600).
    #[arg(long, env = "CHAT_HOME", default_value_os_t = home::default_home())]
    home: PathBuf,
    /// Size of a new identity key in bits (2048, 3072 or 4096); an existing key is kept.
    #[arg(long, env = "CHAT_KEY_BITS", default_value_t = DEFAULT_KEY_BITS, value_parser = key_bits)]
    key_bits: usize,
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
    validate_user(&args.user).map_err(|error| error.to_string())?;
    validate_room(&args.room).map_err(|error| error.to_string())?;
    let identity = Arc::new(load_or_create_identity(&args)?);
    let channel = client::connect(&args.server, args.ca_cert.as_deref())
        .await
        .map_err(describe)?;
    let (mut session, warnings) = ChatSession::join(channel, identity, &args.user, &args.room)
        .await
        .map_err(describe)?;
    for warning in warnings {
        show(&warning);
    }
    eprintln!(
        "joined {} as {} ({})",
        args.room,
        args.user,
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
                    if matches!(event, Event::Refused { .. }) {
                        refused += 1;
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

fn load_or_create_identity(args: &Args) -> Result<e2ee_chat::crypto::IdentityKey, String> {
    let path = home::identity_path(&args.home, &args.user);
    if let Some(identity) = home::load_identity(&path).map_err(describe)? {
        return Ok(identity);
    }
    eprintln!(
        "generating a {}-bit RSA identity key for {} in {} (this takes a few seconds)...",
        args.key_bits,
        args.user,
        path.display()
    );
    home::create_identity(&path, args.key_bits).map_err(describe)
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
        "/who" => {
            eprintln!("{}", members_line(session));
            return Ok(None);
        }
        "/leave" => return Ok(Some(Ending::Leave)),
        "/quit" => return Ok(Some(Ending::Quit)),
        "/help" => {
            eprintln!("{HELP_AFTER}");
            return Ok(None);
        }
        _ if line.starts_with("//") => &line[1..],
        command if command.starts_with('/') => {
            eprintln!("unknown command {command}; type /help for the list");
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
        Event::Warning(text) => eprintln!("warning: {text}"),
        Event::Delivered { .. } => {}
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
