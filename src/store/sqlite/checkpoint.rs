//! Checkpoints off the commit path: a thread of its own copies the WAL back into the
//! database, so that no commit waits for it.
//!
//! SQLite checkpoints on the committing connection once the WAL holds 1000 pages: the
//! commit that crosses the mark copies them all and fsyncs the database file before it
//! returns, and every message waiting for the next commit waits for that too (5 ms here,
//! every few hundred milliseconds at 1,000 messages a second: the tail of the relay's
//! latency). Here the writer only checkpoints as a backstop, when the WAL has grown far
//! beyond the mark ([`BACKSTOP_PAGES`]), and this thread runs passive checkpoints, which
//! never block the writer, after commits.
//!
//! Durability is unchanged: a commit is durable once the WAL is synced
//! (`synchronous = FULL`), whoever later copies it into the database; a crash in the
//! middle of a checkpoint leaves the WAL to recover from, as before.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The writer's own checkpoints, in pages of WAL: only when this thread falls behind.
pub(super) const BACKSTOP_PAGES: i64 = 8 * 1024;

/// The least time between two checkpoints: each fsyncs the database file, which
/// competes with the commits' own fsyncs for the disk.
const PAUSE: Duration = Duration::from_millis(50);

/// Wakes the checkpoint thread; it stops when this is dropped.
pub(super) struct Checkpoints {
    wake: SyncSender<()>,
}

impl Checkpoints {
    /// Starts the thread, with its own connection to the database at `path`.
    pub(super) fn start(path: &Path) -> Result<Self, String> {
        let connection = Connection::open(path)
            .and_then(|connection| {
                connection.busy_timeout(Duration::from_secs(5))?;
                // As the writer's: the WAL synced before it is copied, the database after.
                connection.pragma_update(None, "synchronous", "FULL")?;
                Ok(connection)
            })
            .map_err(|error| error.to_string())?;
        let (wake, woken) = sync_channel(1);
        std::thread::Builder::new()
            .name("store-checkpoint".to_owned())
            .spawn(move || run(&connection, &woken))
            .map_err(|error| error.to_string())?;
        Ok(Self { wake })
    }

    /// Says that a commit added to the WAL. Never waits.
    pub(super) fn committed(&self) {
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            // The thread is gone (it logged why): the writer's backstop still bounds the
            // WAL.
            Err(TrySendError::Disconnected(())) => {}
        }
    }
}

fn run(connection: &Connection, woken: &Receiver<()>) {
    let mut last: Option<Instant> = None;
    while woken.recv().is_ok() {
        if let Some(last) = last {
            std::thread::sleep(PAUSE.saturating_sub(last.elapsed()));
        }
        // Commits that came during the pause are covered by this checkpoint.
        let _ = woken.try_recv();
        last = Some(Instant::now());
        let checkpointed = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            row.get::<_, i64>(0)
        });
        if let Err(error) = checkpointed {
            tracing::warn!(%error, "a checkpoint failed; the next commit will try again");
        }
    }
}
