//! The store's one writer: a thread that commits the hub's ops in batches.
//!
//! Group commit: while one transaction waits for its fsync, the ops that arrive queue up,
//! and the next transaction takes them all (up to `max_batch`), so a busy relay pays one
//! fsync per batch rather than per message. Once a batch is durable the hub answers and
//! fans it out ([`Hub::committed`]); if the commit fails, nothing of it is acknowledged,
//! and a batch of entries alone is simply sent again by the clients once the store
//! works again.
//!
//! The writer also prunes what the retention policy no longer keeps, and runs the
//! relay's other housekeeping (reclaiming what nobody uses), at start-up and every
//! minute.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::hub::{Command, Failure, Hub, Op};
use crate::store::{Change, StoragePolicy, Store};

/// How often the retention policy is applied.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What the writer runs after each pruning, with the store.
pub(crate) type Housekeeping = Box<dyn FnMut(&dyn Store) + Send>;

/// Starts the writer thread.
pub(crate) fn spawn(
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    commands: Receiver<Command>,
    max_batch: usize,
    policy: StoragePolicy,
    mut housekeeping: Housekeeping,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("store-writer".to_owned())
        .spawn(move || {
            run(
                &*store,
                &hub,
                &commands,
                max_batch.max(1),
                &policy,
                &mut *housekeeping,
            )
        })
}

fn run(
    store: &dyn Store,
    hub: &Hub,
    commands: &Receiver<Command>,
    max_batch: usize,
    policy: &StoragePolicy,
    housekeeping: &mut dyn FnMut(&dyn Store),
) {
    let mut next_prune = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_prune {
            prune(store, policy);
            housekeeping(store);
            next_prune = now + PRUNE_EVERY;
        }
        let first = match commands.recv_timeout(next_prune.saturating_duration_since(now)) {
            Ok(Command::Commit(op)) => *op,
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => continue,
        };
        let mut batch = vec![first];
        let mut stop = false;
        while batch.len() < max_batch {
            match commands.try_recv() {
                Ok(Command::Commit(op)) => batch.push(*op),
                Ok(Command::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        commit(store, hub, batch, policy);
        if stop {
            return;
        }
    }
}

/// Commits a batch in one transaction and hands the outcome to the hub.
fn commit(store: &dyn Store, hub: &Hub, mut batch: Vec<Op>, policy: &StoragePolicy) {
    let started = Instant::now();
    let mut changes = Vec::new();
    let mut counts = Vec::with_capacity(batch.len());
    for op in &mut batch {
        counts.push(op.changes.len());
        changes.append(&mut op.changes);
    }
    let result = if changes.is_empty() {
        Ok(Vec::new())
    } else {
        store.commit(&changes, policy)
    };
    tracing::debug!(ops = batch.len(), changes = changes.len(), elapsed = ?started.elapsed(), "committed");
    match result {
        Ok(applied) => {
            let mut applied = applied.into_iter();
            let done = batch
                .into_iter()
                .zip(counts)
                .map(|(op, count)| (op, applied.by_ref().take(count).collect()))
                .collect();
            hub.committed(done, None);
        }
        Err(error) => {
            let failed = batch.into_iter().map(|op| (op, Vec::new())).collect();
            let lasting = changes.iter().any(|change| !is_entry(change));
            hub.committed(
                failed,
                Some(Failure {
                    error: &error,
                    lasting,
                }),
            );
        }
    }
}

/// Whether `change` is an entry of a room's log or a note of use. The hub keeps nothing
/// of one that failed but a used-up sequence number: its sender is told UNAVAILABLE and
/// sends it again once the store is back (a PostgreSQL server restarting, say). A room,
/// member or invitation that failed is in the hub's memory already, which then no
/// longer matches the store.
fn is_entry(change: &Change) -> bool {
    matches!(
        change,
        Change::AppendMessage { .. } | Change::AppendSenderKeys { .. } | Change::Seen { .. }
    )
}

fn prune(store: &dyn Store, policy: &StoragePolicy) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    match store.prune(policy, now) {
        Ok(pruned) if pruned.messages > 0 || pruned.sender_keys > 0 => {
            tracing::info!(
                messages = pruned.messages,
                sender_keys = pruned.sender_keys,
                "pruned what the retention policy no longer keeps"
            );
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "pruning failed; will try again"),
    }
}
