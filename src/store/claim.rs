//! One serving relay per database: the claim `chat-server` holds on its database for as
//! long as it runs. Without it a second relay started on the same database would number
//! the same rooms from its own memory, and the two would store entries under each
//! other's sequence numbers. The second one stops at start-up with one line instead.
//!
//! The claim is taken by the serving process only: the `registration-token` commands
//! work beside a running relay. It goes with the process however that ends (locks on the
//! data directory and a file in it for SQLite, an advisory lock held by a connection of
//! its own for PostgreSQL, which a relay that hangs loses after 10 s of silence), so
//! a relay killed with SIGKILL can be started again at once. PostgreSQL's lock goes with
//! its connection too (a restart of PostgreSQL): the relay takes it again as soon as it
//! can, and stops ([`Claim::lost`]) if another relay has it by then; meanwhile its writes
//! are fenced off ([`Fence`]), so that none lands behind the back of a relay that took
//! the claim.
//!
//! A relay started with `--standby` waits for the claim instead of stopping: it takes
//! over, reading the database afresh, as soon as the serving relay goes.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::time::{Duration, Instant};

pub use super::postgres::Fence;
use super::{StoreError, postgres, postgres_url};

/// The name of the file an SQLite relay locks in its `--data-dir`.
pub const LOCK_FILE: &str = "relay.lock";

/// Held for as long as the relay serves; dropping it lets another relay start.
#[must_use = "the claim ends when it is dropped"]
pub struct Claim {
    held: Held,
    fence: Fence,
}

/// What holds the lock.
enum Held {
    Files(#[expect(dead_code, reason = "held for their locks")] Vec<File>),
    /// The task that holds the lock, and takes it again; it ends only when it is lost.
    Postgres(tokio::task::JoinHandle<String>),
}

/// Claims the database `chat-server` serves: PostgreSQL at `database`, or the SQLite
/// database in `data_dir`. Fails with [`StoreError::InUse`] when another relay has it,
/// or with `standby` waits until it has gone. A `shared` claim (PostgreSQL only: relays
/// serving one database together, `--nats`) is held beside the other relays' shared
/// claims, and keeps out only a relay serving alone, as that one keeps them out. For PostgreSQL this must run inside a
/// tokio runtime, which drives the connection that holds the lock.
pub async fn claim(
    database: Option<&str>,
    data_dir: &Path,
    standby: bool,
    shared: bool,
) -> Result<Claim, StoreError> {
    let fence = Fence::new(shared);
    let held = match database {
        Some(url) => {
            Held::Postgres(postgres::claim(&postgres_url(url)?, standby, fence.clone()).await?)
        }
        None => Held::Files(lock_file(data_dir, standby).await?),
    };
    Ok(Claim { held, fence })
}

impl Claim {
    /// What the store's writes check, for PostgreSQL (see [`Fence`]); `None` for
    /// SQLite, whose lock cannot be lost while the process lives.
    pub fn fence(&self) -> Option<Fence> {
        match self.held {
            Held::Files(_) => None,
            Held::Postgres(_) => Some(self.fence.clone()),
        }
    }

    /// Completes, with why, if the claim is lost to another relay; never for SQLite,
    /// whose lock goes only with the process.
    pub async fn lost(&mut self) -> String {
        match &mut self.held {
            Held::Files(_) => std::future::pending().await,
            Held::Postgres(task) => match task.await {
                Ok(why) => why,
                Err(error) => format!("the task holding the claim on the database failed: {error}"),
            },
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Held::Postgres(task) = &self.held {
            // Its connection, and so the lock, goes with it.
            task.abort();
        }
    }
}

/// How long a relay waits for the lock of one that is going: a process's locks go a
/// moment after it does (and a process forked from this one holds them until it execs).
const PATIENCE: Duration = Duration::from_secs(2);

/// Locks the data directory itself and `relay.lock` in it (which relays before this one
/// lock): a lock file alone can be deleted, by a clean-up or by hand, and then a second
/// relay would lock a new one beside a first still serving. A database file that is a
/// symbolic link, or has other hard links, is refused: another directory could hold it
/// too. (A database moved out of its directory while its relay runs is not detected.)
async fn lock_file(data_dir: &Path, standby: bool) -> Result<Vec<File>, StoreError> {
    let path = data_dir.join(LOCK_FILE);
    let failed = |path: &Path, error: std::io::Error| StoreError::Open {
        path: path.display().to_string(),
        reason: error.to_string(),
    };
    let directory = File::open(data_dir).map_err(|error| failed(data_dir, error))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| failed(&path, error))?;
    check_database_file(data_dir)?;
    let files = vec![directory, file];
    let started = Instant::now();
    let mut waiting = false;
    loop {
        match lock_all(&files) {
            Ok(()) => return Ok(files),
            Err(TryLockError::WouldBlock) if standby || started.elapsed() < PATIENCE => {
                if standby && !std::mem::replace(&mut waiting, true) {
                    tracing::info!(
                        data_dir = %data_dir.display(),
                        "standing by: another chat-server serves this database; this one takes over when it goes"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::InUse {
                    database: data_dir.display().to_string(),
                });
            }
            Err(TryLockError::Error(error)) => return Err(failed(data_dir, error)),
        }
    }
}

/// Refuses a database file in `data_dir` that is a symbolic link or has other hard
/// links: another data directory could hold the same database, and its relay would lock
/// that other directory. (The file itself is not locked: a descriptor of it closed by the
/// relay would drop SQLite's own POSIX locks on it, which go with any descriptor.)
fn check_database_file(data_dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let path = data_dir.join(super::DATABASE_FILE);
    let refused = |reason: String| StoreError::Open {
        path: path.display().to_string(),
        reason,
    };
    let Ok(metadata) = std::fs::symlink_metadata(&path) else {
        return Ok(()); // none yet: the store makes it
    };
    if metadata.file_type().is_symlink() {
        return Err(refused(
            "it is a symbolic link: the relay locks its data directory, so the database must be \
             a plain file in it"
                .to_owned(),
        ));
    }
    if metadata.nlink() > 1 {
        return Err(refused(format!(
            "it has {} hard links: another data directory could serve it too; keep one",
            metadata.nlink()
        )));
    }
    Ok(())
}

/// Locks every one of `files`, or none.
fn lock_all(files: &[File]) -> Result<(), TryLockError> {
    for (taken, file) in files.iter().enumerate() {
        if let Err(error) = file.try_lock() {
            for file in &files[..taken] {
                let _ = file.unlock();
            }
            return Err(error);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_relay_on_one_data_dir_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(None, dir.path(), false, false).await.unwrap();
        let refused = claim(None, dir.path(), false, false).await.err().unwrap();
        assert!(matches!(refused, StoreError::InUse { .. }), "{refused}");
        assert!(
            refused.to_string().contains("another chat-server"),
            "{refused}"
        );
        drop(first);
        let second = claim(None, dir.path(), false, false).await.unwrap();
        // A lock file deleted (by a clean-up, by hand) does not let another relay in.
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        let refused = claim(None, dir.path(), false, false).await.err().unwrap();
        assert!(matches!(refused, StoreError::InUse { .. }), "{refused}");
        // Nor does another directory holding the same database through a link.
        let database = dir.path().join(crate::store::DATABASE_FILE);
        std::fs::write(&database, b"").unwrap();
        let linked = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&database, linked.path().join(crate::store::DATABASE_FILE))
            .unwrap();
        let refused = claim(None, linked.path(), false, false)
            .await
            .err()
            .unwrap();
        assert!(refused.to_string().contains("symbolic link"), "{refused}");
        let hard = tempfile::tempdir().unwrap();
        std::fs::hard_link(&database, hard.path().join(crate::store::DATABASE_FILE)).unwrap();
        let refused = claim(None, hard.path(), false, false).await.err().unwrap();
        assert!(refused.to_string().contains("hard links"), "{refused}");
        // And the first directory's own database, linked from elsewhere, is refused too.
        drop(second);
        let refused = claim(None, dir.path(), false, false).await.err().unwrap();
        assert!(refused.to_string().contains("hard links"), "{refused}");
        std::fs::remove_file(hard.path().join(crate::store::DATABASE_FILE)).unwrap();
        let _third = claim(None, dir.path(), false, false).await.unwrap();
    }
}
