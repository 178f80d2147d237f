//! Real processes for the tests: `chat-server` and chat clients, driven through their
//! command-line contract.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

/// How long a process test waits for a line or an exit.
pub const PROCESS_PATIENCE: Duration = Duration::from_secs(20);

/// A relay URL nobody listens on: listening on port 1 takes root, and no test does.
pub const NOBODY_LISTENS: &str = "http://127.0.0.1:1";

/// An address on loopback that nothing listens on now, for a relay started later: its
/// clients can be given its URL before it exists.
pub fn free_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Reads a pipe line by line on a thread.
pub fn lines_of(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads a pipe line by line on a thread, but only as many lines as are let through the
/// returned gate (a count at a time); once the gate is dropped, everything. The rest stays
/// in the pipe, so a writer that fills it blocks, as behind a reader that does not keep up.
pub fn gated_lines_of(
    pipe: impl std::io::Read + Send + 'static,
) -> (Receiver<String>, Sender<usize>) {
    let (tx, rx) = channel();
    let (gate, allowances) = channel::<usize>();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(pipe).lines().map_while(Result::ok);
        loop {
            let allowed = allowances.recv().unwrap_or(usize::MAX);
            for _ in 0..allowed {
                let Some(line) = lines.next() else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    });
    (rx, gate)
}

/// Waits for the next `count` lines.
pub fn next_lines(lines: &Receiver<String>, count: usize) -> Vec<String> {
    let deadline = Instant::now() + PROCESS_PATIENCE;
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.push(line),
            Err(error) => panic!(
                "{error:?} after {} of {count} lines; the last: {:?}",
                seen.len(),
                seen.last()
                    .map(|line| line.chars().take(80).collect::<String>())
            ),
        }
    }
    seen
}

/// Every line left until the pipe closes (its writer exited). Lines still in the pipe
/// when a process exits are read here, not lost as they would be by `try_iter`.
pub fn remaining_lines(lines: &Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + PROCESS_PATIENCE;
    let mut rest = Vec::new();
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        rest.push(line);
    }
    rest
}

/// Sends `signal` (a name such as `STOP`) to process `pid` with kill(1).
fn send_signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid} failed");
}

/// Waits for a line containing `needle`; returns every line read up to it.
pub fn wait_for_line(lines: &Receiver<String>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + PROCESS_PATIENCE;
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(RecvTimeoutError::Timeout) => panic!("no line with {needle:?}; got {seen:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("pipe closed before {needle:?}; got {seen:?}")
            }
        }
    }
}

pub fn wait_for_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PROCESS_PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// `http://ADDR`: a server started with TLS needs an https:// URL instead.
    pub url: String,
    pub stderr: Receiver<String>,
    data_dir: PathBuf,
    extra: Vec<OsString>,
    env: Vec<(String, String)>,
    /// What it wrote on stderr up to and including its "listening on" line.
    pub started: Vec<String>,
}

impl ServerProcess {
    /// Starts `chat-server` on 127.0.0.1:0 and waits until it listens.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[], &[])
    }

    /// The same, with `extra` arguments (such as --tls-cert and --tls-key).
    pub fn start_with_args(data_dir: &Path, extra: &[&OsStr]) -> Self {
        Self::start_with(data_dir, extra, &[])
    }

    /// The same, with `extra` arguments and environment variables for the server.
    pub fn start_with(data_dir: &Path, extra: &[&OsStr], env: &[(&str, &str)]) -> Self {
        Self::listening(data_dir, "127.0.0.1:0", extra, env)
    }

    /// Starts `chat-server` on `listen` (such as the address of a killed one).
    pub fn listening(
        data_dir: &Path,
        listen: &str,
        extra: &[&OsStr],
        env: &[(&str, &str)],
    ) -> Self {
        Starting::spawn(data_dir, listen, extra, env).listening()
    }

    /// Starts `chat-server --standby` on `listen` beside this one, on the same data
    /// directory (or database), arguments and environment; waits until it says it
    /// stands by.
    pub fn standby_on(&self, listen: &str) -> Starting {
        let mut extra: Vec<&OsStr> = self.extra.iter().map(OsString::as_os_str).collect();
        extra.push(OsStr::new("--standby"));
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let standby = Starting::spawn(&self.data_dir, listen, &extra, &env);
        let said = wait_for_line(&standby.stderr, "standing by");
        assert!(
            std::net::TcpStream::connect(listen).is_err(),
            "a relay standing by listens: {said:?}"
        );
        standby
    }

    /// Kills the server with SIGKILL and starts it again: see [`restart`](Self::restart).
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    /// Starts a killed server again on the same address, with the same data directory,
    /// arguments and environment; waits until it listens.
    pub fn restart(&mut self) {
        let restarted = self.another_on(&self.addr.to_string());
        // Drops the old child, already reaped: killing it again does nothing.
        *self = restarted;
    }

    /// Another relay on `listen`, with this one's data directory, arguments and
    /// environment; waits until it listens. Started on the data directory of a killed
    /// relay, it stands for the other relays of a deployment that share one database.
    pub fn another_on(&self, listen: &str) -> Self {
        let extra: Vec<&OsStr> = self.extra.iter().map(OsString::as_os_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        Self::listening(&self.data_dir, listen, &extra, &env)
    }

    /// Kills the server with SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Freezes the server (SIGSTOP), as a hung process or machine: it answers nothing
    /// and closes nothing until [`resume`](Self::resume).
    pub fn freeze(&self) {
        send_signal(self.child.id(), "STOP");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn resume(&self) {
        send_signal(self.child.id(), "CONT");
    }

    /// Waits for the server to exit by itself.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        wait_for_exit(&mut self.child)
    }

    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        wait_for_exit(&mut self.child)
    }
}

/// A `chat-server` process that does not listen yet (one standing by, above all).
pub struct Starting {
    child: Option<Child>,
    pub stderr: Receiver<String>,
    data_dir: PathBuf,
    extra: Vec<OsString>,
    env: Vec<(String, String)>,
}

impl Starting {
    fn spawn(data_dir: &Path, listen: &str, extra: &[&OsStr], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self {
            stderr: lines_of(child.stderr.take().unwrap()),
            child: Some(child),
            data_dir: data_dir.to_owned(),
            extra: extra.iter().map(|arg| arg.to_os_string()).collect(),
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        }
    }

    /// Stops it with SIGTERM, waits for its exit, and returns what else it said.
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let mut child = self.child.take().unwrap();
        send_signal(child.id(), "TERM");
        let status = wait_for_exit(&mut child);
        (status, remaining_lines(&self.stderr))
    }

    /// Waits until it listens.
    pub fn listening(mut self) -> ServerProcess {
        let lines = wait_for_line(&self.stderr, "listening on ");
        let addr: SocketAddr = lines
            .last()
            .unwrap()
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        ServerProcess {
            child: self.child.take().unwrap(),
            addr,
            url: format!("http://{addr}"),
            started: lines,
            stderr: std::mem::replace(&mut self.stderr, std::sync::mpsc::channel().1),
            data_dir: std::mem::take(&mut self.data_dir),
            extra: std::mem::take(&mut self.extra),
            env: std::mem::take(&mut self.env),
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A chat client process (of any language) with piped stdin, stdout and stderr.
pub struct ClientProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
    /// Set while stdout is read only as far as the test asks.
    stdout_gate: Option<Sender<usize>>,
}

/// Spawns `command` with stdin, stdout and stderr piped.
pub fn spawn_piped(command: &mut Command) -> Child {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

impl ClientProcess {
    pub fn start(mut command: Command) -> Self {
        let mut child = spawn_piped(&mut command);
        Self {
            stdin: child.stdin.take(),
            stdout: lines_of(child.stdout.take().unwrap()),
            stderr: lines_of(child.stderr.take().unwrap()),
            stdout_gate: None,
            child,
        }
    }

    /// Starts the client with its stdout read only as far as [`stdout_lines`] asks, until
    /// [`release_stdout`]: past a pipeful (64 KiB on Linux) it blocks in the middle of
    /// what it is printing, like a client whose reader fell behind.
    ///
    /// [`stdout_lines`]: Self::stdout_lines
    /// [`release_stdout`]: Self::release_stdout
    pub fn start_holding_stdout(mut command: Command) -> Self {
        let mut child = spawn_piped(&mut command);
        let (stdout, gate) = gated_lines_of(child.stdout.take().unwrap());
        Self {
            stdin: child.stdin.take(),
            stdout,
            stderr: lines_of(child.stderr.take().unwrap()),
            stdout_gate: Some(gate),
            child,
        }
    }

    /// Reads stdout freely from now on.
    pub fn release_stdout(&mut self) {
        self.stdout_gate = None;
    }

    /// Starts the client and waits until it says it joined `room`.
    pub fn joined(command: Command, room: &str) -> Self {
        let client = Self::start(command);
        wait_for_line(&client.stderr, &format!("joined {room}"));
        client
    }

    /// Suspends the process (SIGSTOP), as Ctrl-Z in a terminal would: it reads nothing
    /// from the relay until [`resume`](Self::resume), so what is sent meanwhile piles up.
    pub fn pause(&self) {
        send_signal(self.child.id(), "STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        send_signal(self.child.id(), "CONT");
    }

    /// Closes stdin: end of input, without waiting for the exit.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits for the next `count` lines on stdout (letting them through if it is held).
    pub fn stdout_lines(&self, count: usize) -> Vec<String> {
        if let Some(gate) = &self.stdout_gate {
            gate.send(count).unwrap();
        }
        next_lines(&self.stdout, count)
    }

    /// Kills the process with SIGKILL: no chance to save anything. Returns the stdout
    /// lines not read yet, those it wrote before it died included.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.release_stdout();
        remaining_lines(&self.stdout)
    }

    /// Asks for the receipts of our messages in `room` (`/receipts ROOM`) until the line
    /// about `text` contains `wanted` (receipts come in batches, a second or two after
    /// the message); returns that line.
    pub fn wait_for_receipt(&mut self, room: &str, text: &str, wanted: &str) -> String {
        let about = format!("receipts [{room}] \"{text}\": ");
        let mut last = String::new();
        for _ in 0..40 {
            self.say(&format!("/receipts {room}"));
            let lines = wait_for_line(&self.stderr, &format!("receipts [{room}]"));
            last = lines.last().unwrap().clone();
            if last.starts_with(&about) && last.contains(wanted) {
                return last;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        panic!("no receipt of {text:?} in {room} says {wanted:?}; the last: {last:?}");
    }

    /// Types `line` into the client. A client that exited instead fails the test with
    /// its status and what it said on stderr.
    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        if let Err(error) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            let status = wait_for_exit(&mut self.child);
            let stderr = remaining_lines(&self.stderr);
            panic!(
                "could not type {line:?} ({error}): the client ended, {status}; stderr: {stderr:#?}"
            );
        }
    }

    pub fn expect_stdout(&self, line: &str) {
        let seen = wait_for_line(&self.stdout, line);
        assert_eq!(seen, [line], "unexpected output before {line:?}");
    }

    /// Closes stdin and waits for the exit; returns the status and the stdout and stderr
    /// lines not read yet.
    pub fn finish(mut self) -> (ExitStatus, Vec<String>, Vec<String>) {
        self.release_stdout();
        self.close_stdin();
        let status = wait_for_exit(&mut self.child);
        let stdout = remaining_lines(&self.stdout);
        let stderr = remaining_lines(&self.stderr);
        (status, stdout, stderr)
    }
}

impl Drop for ClientProcess {
    /// A test that failed half-way leaves no client behind, not even a suspended one.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to completion with `input` on stdin; returns the status, stdout and
/// stderr.
pub fn run_client(command: &mut Command, input: &str) -> (ExitStatus, String, String) {
    let mut child = spawn_piped(command);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `program` (after `leading` arguments) run as a chat client with the command-line
/// contract: `--server URL --user USER --room ROOM --key-bits 2048 --home HOME`.
pub fn chat_client(
    program: impl AsRef<OsStr>,
    leading: &[&OsStr],
    url: &str,
    user: &str,
    room: &str,
    home: &Path,
) -> Command {
    let mut command = Command::new(program);
    command
        .args(leading)
        .args([
            "--server",
            url,
            "--user",
            user,
            "--room",
            room,
            "--key-bits",
            "2048",
            "--home",
        ])
        .arg(home);
    command
}

/// The Rust `chat-client` for `user` in `room`.
pub fn rust_client(url: &str, user: &str, room: &str, home: &Path) -> Command {
    chat_client(
        env!("CARGO_BIN_EXE_chat-client"),
        &[],
        url,
        user,
        room,
        home,
    )
}

/// Messages in a burst: more frames than two of `chat-client`'s batches (it applies at
/// most 256 frames in a row before saving its progress), so that a burst, or a catch-up
/// on one, crosses at least two batch boundaries.
pub const BURST: usize = 700;

/// `sender`'s `n`th numbered message (`alice-0007`), made `padding` characters longer.
pub fn numbered_text(sender: &str, n: usize, padding: usize) -> String {
    format!("{sender}-{n:04}{}", "~".repeat(padding))
}

/// The line a client prints on stdout for a message.
pub fn message_line(room: &str, sender: &str, text: &str) -> String {
    format!("[{room}] {sender}: {text}")
}

/// What a reader in `room` prints for each message of `sender`'s burst, in order.
pub fn burst_lines(room: &str, sender: &str, padding: usize) -> Vec<String> {
    (0..BURST)
        .map(|n| message_line(room, sender, &numbered_text(sender, n, padding)))
        .collect()
}

/// Pipes `sender`'s burst into its client, `command`, to the end; a client exits 0 only
/// once the relay has acknowledged (stored) every message.
pub fn send_burst(mut command: Command, sender: &str, padding: usize) {
    let input: String = (0..BURST)
        .map(|n| numbered_text(sender, n, padding) + "\n")
        .collect();
    let (status, stdout, stderr) = run_client(&mut command, &input);
    assert!(status.success(), "{sender}: {stderr}");
    assert!(stdout.is_empty(), "{sender}: {stdout}");
}

/// Runs a client to its exit with nothing to say: its user joins the room (if it was
/// not a member yet), saves its progress and goes away, staying a member.
pub fn join_and_go_away(mut command: Command) {
    let (status, stdout, stderr) = run_client(&mut command, "");
    assert!(status.success(), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}

/// Starts a member's client, waits until it caught up on `room`, and ends it; returns
/// everything it printed on stdout.
pub fn catch_up(command: Command, room: &str) -> Vec<String> {
    let client = ClientProcess::start(command);
    wait_for_line(&client.stderr, &format!("caught up on {room}"));
    let (status, stdout, stderr) = client.finish();
    assert!(status.success(), "{stderr:?}");
    stdout
}

/// alice sends a burst to `room` while bob, connected, reads nothing (a suspended
/// terminal) and carol is away; then bob reads it all at once and carol catches up from
/// her saved progress. `reader` makes bob's and carol's clients (alice's is always the
/// Rust one). Returns what kept either from printing the burst exactly once, in order.
pub fn burst_to_a_busy_reader_and_an_away_one(
    url: &str,
    home: &Path,
    room: &str,
    reader: fn(&str, &str, &str, &Path) -> Command,
) -> Vec<String> {
    join_and_go_away(reader(url, "carol", room, home));
    let bob = ClientProcess::joined(reader(url, "bob", room, home), room);
    bob.pause();
    send_burst(rust_client(url, "alice", room, home), "alice", 0);
    bob.resume();
    let expected = burst_lines(room, "alice", 0);

    let mut shown = wait_for_line(&bob.stdout, expected.last().unwrap());
    let (status, rest, stderr) = bob.finish();
    assert!(status.success(), "{stderr:?}");
    shown.extend(rest);
    let mut faults = Vec::new();
    faults.extend(sequence_faults(&shown, &expected).map(|f| format!("bob, live: {f}")));
    let shown = catch_up(reader(url, "carol", room, home), room);
    faults.extend(sequence_faults(&shown, &expected).map(|f| format!("carol, away: {f}")));
    faults
}

/// What keeps `shown` from being exactly `expected`, in order: lines missing, repeated,
/// not expected at all, or out of order; `None` when it is exactly that. Short enough
/// for a failure message however many lines there are.
pub fn sequence_faults(shown: &[String], expected: &[String]) -> Option<String> {
    if shown == expected {
        return None;
    }
    let position: HashMap<&str, usize> = expected
        .iter()
        .enumerate()
        .map(|(index, line)| (line.as_str(), index))
        .collect();
    let mut times_shown = vec![0usize; expected.len()];
    let mut unexpected = Vec::new();
    let mut out_of_order = None;
    let mut previous = None;
    for (at, line) in shown.iter().enumerate() {
        let Some(&index) = position.get(line.as_str()) else {
            unexpected.push(line.as_str());
            continue;
        };
        times_shown[index] += 1;
        if let Some(before) = previous
            && before >= index
            && out_of_order.is_none()
        {
            out_of_order = Some(format!(
                "line {at} is expected line {index}, after expected line {before}"
            ));
        }
        previous = Some(index);
    }
    let numbered = |wanted: fn(usize) -> bool| -> Vec<usize> {
        let indices = times_shown.iter().enumerate();
        indices
            .filter(|(_, n)| wanted(**n))
            .map(|(index, _)| index)
            .collect()
    };
    Some(format!(
        "{} lines shown, {} expected; missing (0-based) {:?}; repeated {:?}; {} unexpected {:?}; \
         first out of order: {}",
        shown.len(),
        expected.len(),
        numbered(|n| n == 0),
        numbered(|n| n > 1),
        unexpected.len(),
        unexpected
            .iter()
            .take(3)
            .map(|line| line.chars().take(60).collect::<String>())
            .collect::<Vec<_>>(),
        out_of_order.as_deref().unwrap_or("none"),
    ))
}

/// `program` failed with exactly one error line, the last one, containing `expected`.
pub fn assert_one_line_error(program: &str, status: ExitStatus, stderr: &str, expected: &str) {
    assert!(!status.success(), "expected a failure; stderr: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("error"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with(&format!("{program}: error: ")), "{stderr}");
    assert!(last.contains(expected), "{last:?} lacks {expected:?}");
}

/// `client` (Rust or another language), given a relay nobody listens on before a live
/// one, chats through the live one; a home that knew only the live relay's URL, given
/// it first in a list, goes on from its saved progress. Returns the live relay, whose
/// data is in `dir`/data (homes in `dir`/home).
pub fn the_first_relay_down_the_client_chats_through_the_next(
    dir: &Path,
    client: fn(&str, &str, &str, &Path) -> Command,
) -> ServerProcess {
    let server = ServerProcess::start(&dir.join("data"));
    let home = dir.join("home");
    // bob's progress is saved under the only URL he knew.
    join_and_go_away(client(&server.url, "bob", "lobby", &home));

    let relays = format!("{NOBODY_LISTENS},{}", server.url);
    let mut alice = ClientProcess::start(client(&relays, "alice", "lobby", &home));
    let said = wait_for_line(&alice.stderr, "joined lobby");
    let connected: Vec<&String> = said
        .iter()
        .filter(|line| line.starts_with("connected to "))
        .collect();
    assert_eq!(
        connected,
        [&format!("connected to {}", server.url)],
        "{said:?}"
    );
    assert!(
        said.iter().any(|line| line.contains(NOBODY_LISTENS)),
        "{said:?}"
    );
    alice.say("through the second relay");
    let (status, _, stderr) = alice.finish();
    assert!(status.success(), "{stderr:?}");

    let relays = format!("{},{NOBODY_LISTENS}", server.url);
    assert_eq!(
        catch_up(client(&relays, "bob", "lobby", &home), "lobby"),
        [message_line("lobby", "alice", "through the second relay")]
    );
    server
}

/// [`fail_over`] to a relay started once the first is killed, on SQLite.
pub fn a_relay_killed_mid_conversation_the_clients_fail_over(
    client: fn(&str, &str, &str, &Path) -> Command,
) {
    let dir = tempfile::tempdir().unwrap();
    let first = ServerProcess::start(&dir.path().join("data"));
    fail_over(first, dir.path(), client, Takeover::StartedAfter);
}

/// How the second relay of [`fail_over`] comes to serve.
pub enum Takeover {
    /// It is started once the first is killed, as an operator would.
    StartedAfter,
    /// It stands by from the start (`--standby`), and takes over by itself.
    StandingBy,
}

/// alice and bob, `client`s given two relays of one deployment, chat through `first`;
/// it is killed (SIGKILL) with messages in flight, and the second, on the same data,
/// serves ([`Takeover`]): both fail over to it, and bob shows every message of alice's
/// once, in order; his progress stays under the first relay's URL. Homes in `dir`.
pub fn fail_over(
    mut first: ServerProcess,
    dir: &Path,
    client: fn(&str, &str, &str, &Path) -> Command,
    takeover: Takeover,
) {
    // The second relay does not exist yet; the clients know its URL all the same.
    let second_addr = free_loopback_addr();
    let second_url = format!("http://{second_addr}");
    let standby = match takeover {
        Takeover::StartedAfter => None,
        Takeover::StandingBy => Some(first.standby_on(&second_addr)),
    };
    let relays = format!("{},{second_url}", first.url);
    let home = dir.join("home");
    let bob = ClientProcess::joined(client(&relays, "bob", "lobby", &home), "lobby");
    let mut alice = ClientProcess::joined(client(&relays, "alice", "lobby", &home), "lobby");
    let text = |n: usize| format!("message {n}");
    let expected: Vec<String> = (0..15)
        .map(|n| message_line("lobby", "alice", &text(n)))
        .collect();

    for n in 0..5 {
        alice.say(&text(n));
    }
    let mut shown = next_lines(&bob.stdout, 5);
    // Some of these are in flight when the relay dies: they are sent again, once.
    for n in 5..10 {
        alice.say(&text(n));
    }
    first.kill();
    // Relays of one deployment share their database: here, the killed one's.
    let _second = match standby {
        None => first.another_on(&second_addr),
        Some(standby) => standby.listening(),
    };
    for n in 10..15 {
        alice.say(&text(n));
    }
    let reconnected = format!("reconnected to {second_url}");
    wait_for_line(&alice.stderr, &reconnected);
    wait_for_line(&bob.stderr, &reconnected);
    shown.extend(wait_for_line(&bob.stdout, expected.last().unwrap()));
    let (status, _, stderr) = alice.finish();
    assert!(status.success(), "{stderr:?}");
    let (status, rest, stderr) = bob.finish();
    assert!(status.success(), "{stderr:?}");
    shown.extend(rest);
    assert_eq!(sequence_faults(&shown, &expected), None);

    // Where bob got to is kept under the deployment's first URL, whichever relay served.
    let progress = std::fs::read_to_string(home.join("bob").join("progress.json")).unwrap();
    assert!(progress.contains(&first.url), "{progress}");
    assert!(!progress.contains(&second_url), "{progress}");
}
