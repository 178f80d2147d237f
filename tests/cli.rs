//! The command-line contract of `chat-server` and `chat-client`, with the real binaries.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(20);

/// Reads a pipe line by line on a thread.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
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

/// Waits for a line containing `needle`; returns every line read up to it.
fn wait_for_line(lines: &Receiver<String>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
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

fn wait_for_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
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

struct ServerProcess {
    child: Child,
    url: String,
    stderr: Receiver<String>,
}

impl ServerProcess {
    fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = lines_of(child.stderr.take().unwrap());
        let lines = wait_for_line(&stderr, "listening on ");
        let address = lines
            .last()
            .unwrap()
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        Self {
            child,
            url: format!("http://{address}"),
            stderr,
        }
    }

    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        wait_for_exit(&mut self.child)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct ClientProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl ClientProcess {
    fn start(url: &str, user: &str, room: &str, home: &Path) -> Self {
        let mut child = client_command(url, user, room, home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self {
            stdin: child.stdin.take(),
            stdout: lines_of(child.stdout.take().unwrap()),
            stderr: lines_of(child.stderr.take().unwrap()),
            child,
        }
    }

    /// Starts the client and waits until it says it joined.
    fn joined(url: &str, user: &str, room: &str, home: &Path) -> Self {
        let client = Self::start(url, user, room, home);
        wait_for_line(&client.stderr, &format!("joined {room}"));
        client
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn expect_stdout(&self, line: &str) {
        let seen = wait_for_line(&self.stdout, line);
        assert_eq!(seen, [line], "unexpected output before {line:?}");
    }

    /// Closes stdin and waits for the exit.
    fn finish(mut self) -> (ExitStatus, Vec<String>, Vec<String>) {
        drop(self.stdin.take());
        let status = wait_for_exit(&mut self.child);
        let stdout = self.stdout.try_iter().collect();
        let stderr = self.stderr.try_iter().collect();
        (status, stdout, stderr)
    }
}

fn client_command(url: &str, user: &str, room: &str, home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat-client"));
    command
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

/// Runs a client to completion with `input` on stdin.
fn run_client(command: &mut Command, input: &str) -> (ExitStatus, String, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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

/// The client failed with exactly one error line, the last one.
fn assert_one_line_error(status: ExitStatus, stderr: &str, expected: &str) {
    assert!(!status.success(), "expected a failure; stderr: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("error"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("chat-client: error: "), "{stderr}");
    assert!(last.contains(expected), "{last:?} lacks {expected:?}");
}

#[test]
fn three_people_chat_through_the_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let mut alice = ClientProcess::joined(&server.url, "alice", "lobby", &home);
    let mut bob = ClientProcess::joined(&server.url, "bob", "lobby", &home);
    wait_for_line(&alice.stderr, "bob joined lobby");
    let mut carol = ClientProcess::joined(&server.url, "carol", "lobby", &home);

    alice.say("hello, this is alice");
    bob.expect_stdout("[lobby] alice: hello, this is alice");
    carol.expect_stdout("[lobby] alice: hello, this is alice");
    carol.say("carol here: 'quotes', \"doubles\" and ünïcödé");
    alice.expect_stdout("[lobby] carol: carol here: 'quotes', \"doubles\" and ünïcödé");
    bob.expect_stdout("[lobby] carol: carol here: 'quotes', \"doubles\" and ünïcödé");
    bob.say("//slash is not a command");
    bob.say("/who");
    wait_for_line(&bob.stderr, "members of lobby: you, alice, carol");
    alice.expect_stdout("[lobby] bob: /slash is not a command");

    let (status, stdout, stderr) = bob.finish();
    assert!(status.success(), "{stderr:?}");
    assert!(stdout.is_empty(), "{stdout:?}");
    wait_for_line(&alice.stderr, "bob left lobby");
    let (status, stdout, _) = alice.finish();
    assert!(status.success());
    assert!(stdout.is_empty(), "{stdout:?}");
    let (status, stdout, _) = carol.finish();
    assert!(status.success());
    assert_eq!(stdout, ["[lobby] bob: /slash is not a command"]);
}

#[test]
fn piped_input_is_sent_and_acknowledged_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let bob = ClientProcess::joined(&server.url, "bob", "lobby", &home);
    let input: String = (1..=20).map(|n| format!("line {n}\n")).collect();
    let (status, stdout, stderr) = run_client(
        &mut client_command(&server.url, "alice", "lobby", &home),
        &input,
    );
    assert!(status.success(), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("generating a 2048-bit RSA identity key"),
        "{stderr}"
    );
    assert!(stderr.contains("joined lobby"), "{stderr}");
    for n in 1..=20 {
        bob.expect_stdout(&format!("[lobby] alice: line {n}"));
    }
    let key = home.join("alice").join("identity.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The second run reuses the key instead of generating one.
    let (status, _, stderr) = run_client(
        &mut client_command(&server.url, "alice", "lobby", &home),
        "again\n",
    );
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("generating"), "{stderr}");
    bob.expect_stdout("[lobby] alice: again");
}

#[test]
fn clear_errors_for_a_bad_url_an_unreachable_server_and_a_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();

    let (status, _, stderr) =
        run_client(&mut client_command("not a url", "alice", "lobby", home), "");
    assert_one_line_error(status, &stderr, "invalid server URL");

    let (status, _, stderr) = run_client(
        &mut client_command("ftp://127.0.0.1:5555", "alice", "lobby", home),
        "",
    );
    assert_one_line_error(status, &stderr, "unsupported scheme");

    // Port 1 on loopback: nothing listens there.
    let (status, _, stderr) = run_client(
        &mut client_command("http://127.0.0.1:1", "alice", "lobby", home),
        "",
    );
    assert_one_line_error(status, &stderr, "cannot connect to http://127.0.0.1:1");

    std::fs::create_dir_all(home.join("mallory")).unwrap();
    let key = home.join("mallory").join("identity.pem");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nnot base64\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (status, _, stderr) = run_client(
        &mut client_command("http://127.0.0.1:1", "mallory", "lobby", home),
        "",
    );
    assert_one_line_error(status, &stderr, "cannot read identity key");

    std::fs::create_dir_all(home.join("dir").join("identity.pem")).unwrap();
    let (status, _, stderr) = run_client(
        &mut client_command("http://127.0.0.1:1", "dir", "lobby", home),
        "",
    );
    assert_one_line_error(status, &stderr, "cannot read identity key");

    let (status, _, stderr) = run_client(
        &mut client_command("http://127.0.0.1:1", "bad/name", "lobby", home),
        "",
    );
    assert_one_line_error(status, &stderr, "user name");
}

#[test]
fn server_refuses_an_unusable_data_dir_and_a_taken_address() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: cannot use data directory"),
        "{stderr}"
    );

    let server = ServerProcess::start(&dir.path().join("data"));
    let taken = server.url.trim_start_matches("http://");
    let output = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", taken, "--data-dir"])
        .arg(dir.path().join("data2"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("error: cannot listen on {taken}")),
        "{stderr}"
    );
}

#[test]
fn sigterm_shuts_the_server_down_and_tells_the_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"));
    let client = ClientProcess::joined(&server.url, "alice", "lobby", &dir.path().join("home"));
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    wait_for_line(&server.stderr, "stopped");
    let (status, _, stderr) = client.finish();
    assert!(!status.success());
    let last = stderr.last().unwrap();
    assert!(
        last.contains("error: lost the connection") && last.contains("shutting down"),
        "{stderr:?}"
    );
}

#[test]
fn help_documents_the_flags() {
    let server = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&server.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--max-frame-bytes",
        "--outbound-queue",
        "CHAT_LISTEN",
    ] {
        assert!(help.contains(flag), "chat-server --help lacks {flag}");
    }
    let client = Command::new(env!("CARGO_BIN_EXE_chat-client"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&client.stdout);
    for flag in [
        "--server",
        "--user",
        "--room",
        "--home",
        "--key-bits",
        "CHAT_USER",
        "[ROOM] SENDER: TEXT",
    ] {
        assert!(help.contains(flag), "chat-client --help lacks {flag}");
    }
}
