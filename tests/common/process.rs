//! Real processes for the tests: `chat-server` and chat clients, driven through their
//! command-line contract.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long a process test waits for a line or an exit.
pub const PROCESS_PATIENCE: Duration = Duration::from_secs(20);

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
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = lines_of(child.stderr.take().unwrap());
        let lines = wait_for_line(&stderr, "listening on ");
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
        Self {
            child,
            addr,
            url: format!("http://{addr}"),
            stderr,
        }
    }

    /// Kills the server with SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn terminate(&mut self) -> ExitStatus {
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

/// A chat client process (of any language) with piped stdin, stdout and stderr.
pub struct ClientProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
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
            child,
        }
    }

    /// Starts the client and waits until it says it joined `room`.
    pub fn joined(command: Command, room: &str) -> Self {
        let client = Self::start(command);
        wait_for_line(&client.stderr, &format!("joined {room}"));
        client
    }

    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn expect_stdout(&self, line: &str) {
        let seen = wait_for_line(&self.stdout, line);
        assert_eq!(seen, [line], "unexpected output before {line:?}");
    }

    /// Closes stdin and waits for the exit.
    pub fn finish(mut self) -> (ExitStatus, Vec<String>, Vec<String>) {
        drop(self.stdin.take());
        let status = wait_for_exit(&mut self.child);
        let stdout = self.stdout.try_iter().collect();
        let stderr = self.stderr.try_iter().collect();
        (status, stdout, stderr)
    }
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
