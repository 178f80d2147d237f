//! Memory of a relay holding many idle clients: `chat-server` runs as a child process so
//! that its resident set is its own, and N real clients connect, join rooms of ten, and
//! then only answer what the relay sends them.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::BenchError;
use crate::client::RotationPolicy;

/// Members per room of the idle clients.
const ROOM_SIZE: usize = 10;

/// The relay's memory, in KiB, before and with the idle clients.
#[derive(Debug, Clone)]
pub struct IdleReport {
    pub clients: usize,
    pub rss_before_kib: u64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

struct ChildServer(Child);

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `server_binary` on 127.0.0.1:0, connects `clients` idle clients, and reads
/// the server's memory from /proc.
pub async fn measure_idle(server_binary: &Path, clients: usize) -> Result<IdleReport, BenchError> {
    let data_dir = std::env::temp_dir().join(format!("chat-bench-idle-{}", std::process::id()));
    let mut child = Command::new(server_binary)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        // Every simulated user connects and registers from 127.0.0.1.
        .args(["--registrations-per-ip-per-hour", &u32::MAX.to_string()])
        .arg("--max-connections-per-ip")
        .arg((clients + 1).to_string())
        .env("RUST_LOG", "warn,chat_server=info")
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let server = ChildServer(child);
    let url = tokio::task::spawn_blocking(move || listening_url(stderr))
        .await
        .map_err(|error| BenchError::Unexpected(error.to_string()))??;
    let pid = server.0.id();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before_kib = memory_kib(pid, "VmRSS")?;

    let identities = super::bench_identities(clients).await?;
    let mut readers = Vec::with_capacity(clients);
    for (index, identity) in identities.into_iter().enumerate() {
        let room = format!("idle-{}", index / ROOM_SIZE);
        let mut session = super::join_room(
            &url,
            identity,
            &format!("idle-{index}"),
            &room,
            RotationPolicy::default(),
        )
        .await?;
        readers.push(tokio::spawn(async move {
            while let Ok(Some(events)) = session.next_events().await {
                drop(events);
            }
        }));
    }
    // Let the last key distributions settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = IdleReport {
        clients,
        rss_before_kib,
        rss_kib: memory_kib(pid, "VmRSS")?,
        peak_rss_kib: memory_kib(pid, "VmHWM")?,
    };
    for reader in readers {
        reader.abort();
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(report)
}

fn listening_url(stderr: impl std::io::Read) -> Result<String, BenchError> {
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if let Some(rest) = line.split("listening on ").nth(1) {
            let address = rest.split_whitespace().next().unwrap_or_default();
            return Ok(format!("http://{address}"));
        }
    }
    Err(BenchError::Unexpected(
        "chat-server exited before listening".into(),
    ))
}

/// A `/proc/PID/status` memory field, in KiB.
fn memory_kib(pid: u32, field: &str) -> Result<u64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| BenchError::Unexpected(format!("no {field} in /proc/{pid}/status")))
}
