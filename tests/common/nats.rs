//! Throwaway NATS servers for the tests, as `postgres` is a throwaway PostgreSQL: each
//! started by `scripts/start-nats.sh` on 127.0.0.1 and a port of its own, with this test
//! process as its owner, so that it is stopped when the process exits however it ends.
//! A test may start several, stop one and start it again on the same port (a broker
//! that goes away and comes back). A server that cannot be started fails the test: the
//! tests must run wherever `cargo test` does.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long stopping a server may take: SIGTERM to its port closed and its process gone.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// A NATS server started for this test process, without authentication or JetStream.
pub struct Nats {
    url: String,
    port: u16,
    /// The server's process while it runs; `None` once stopped.
    pid: Option<u32>,
}

impl Nats {
    /// Starts a server on a free port.
    pub fn start() -> Nats {
        let (pid, url, port) = run_script(None);
        Nats {
            url,
            port,
            pid: Some(pid),
        }
    }

    /// Its URL, `nats://127.0.0.1:PORT`, the same across `restart`s.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn is_running(&self) -> bool {
        self.pid.is_some()
    }

    /// Stops the server with SIGTERM (its clients see their connection closed) and waits
    /// until its port is closed and its process gone. Does nothing if it is stopped.
    pub fn stop(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        signal(pid, "TERM");
        let deadline = Instant::now() + STOP_PATIENCE;
        while port_open(self.port) || process_alive(pid) {
            if Instant::now() > deadline {
                // Not left behind for the other tests.
                signal(pid, "KILL");
                panic!(
                    "the NATS server {pid} on port {} did not stop within {STOP_PATIENCE:?} of SIGTERM",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port and URL (stopping it first if it runs),
    /// as a broker that comes back after going away. Its clients' earlier subscriptions
    /// are gone with the old server.
    pub fn restart(&mut self) {
        self.stop();
        let (pid, url, port) = run_script(Some(self.port));
        assert_eq!(
            (url.as_str(), port),
            (self.url.as_str(), self.port),
            "restarted elsewhere"
        );
        self.pid = Some(pid);
    }
}

impl Drop for Nats {
    /// Stops the server at once, without waiting: its watcher would only stop it when
    /// the whole test process exits.
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            signal(pid, "TERM");
        }
    }
}

/// Runs `scripts/start-nats.sh` with this process as the owner, on `port` or a free one:
/// the server's PID, URL and port.
fn run_script(port: Option<u16>) -> (u32, String, u16) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/start-nats.sh");
    let mut command = Command::new("bash");
    command.arg(script).arg(std::process::id().to_string());
    if let Some(port) = port {
        command.arg(port.to_string());
    }
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("the tests need NATS: cannot run {script}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let failed = || -> ! {
        panic!(
            "the tests need NATS: {script} failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        )
    };
    if !output.status.success() {
        failed();
    }
    let pid = stdout
        .lines()
        .find_map(|line| line.strip_prefix("pid "))
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .unwrap_or_else(|| failed());
    let url = stdout.lines().last().unwrap_or_default().trim().to_owned();
    let port = url
        .strip_prefix("nats://127.0.0.1:")
        .and_then(|port| port.parse::<u16>().ok())
        .unwrap_or_else(|| failed());
    (pid, url, port)
}

/// Sends `pid` the signal named `name` (TERM, KILL) with bash's `kill`: std has no
/// signals, the crate depends on neither libc nor nix, and bash is there for the script
/// (unlike kill(1), which slim images lack).
fn signal(pid: u32, name: &str) {
    // A process already gone is not an error here.
    let _ = Command::new("bash")
        .args(["-c", r#"kill -s "$0" "$1""#, name, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Whether something accepts connections on 127.0.0.1:`port`.
fn port_open(port: u16) -> bool {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
}

/// Whether `pid` is a live process (not gone, nor a zombie not yet reaped by the
/// server's watcher, its parent).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}
