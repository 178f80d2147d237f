//! The store's one writer: a thread that commits the hub's ops in batches.
//!
//! Group commit: while one transaction waits for its fsync, the ops that arrive queue up,
//! and the next transaction takes them all (up to `max_batch`), so a busy relay pays one
//! fsync per batch rather than per message. Once a batch is durable its outcome goes to
//! the [`Committed`] callback (the hub answers and fans it out); if the commit fails,
//! nothing of it is acknowledged. A failed batch of messages and sender keys alone
//! leaves the hub as it was: its senders send again once the store works. One that
//! held a room, member or invitation leaves the hub ahead of the store, so the writer
//! refuses everything until the store answers again, then has the hub read it anew
//! ([`Recovered`]).
//!
//! The writer also prunes what the retention policy no longer keeps, and runs the
//! relay's other housekeeping (reclaiming what nobody uses), at start-up and every
//! minute.
//!
//! With relays sharing one database (`follow`), it also delivers what the others
//! committed, in order with its own commits.
//!
//! It knows the hub only through `hub::op` and the callbacks, and the [`Writer`] guard
//! that owns the thread stops it when dropped, so it never outlives the server that
//! started it, however that server ends.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod follow;

pub(crate) use follow::{Bells, Follow};

use std::collections::BTreeMap;

use super::hub::{Batch, Command, Failure, Op, numbered};
use crate::store::{StoragePolicy, Store, StoreError, StoredRoom};

/// How often the retention policy is applied.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What the writer runs after each pruning, with the store.
pub(crate) type Housekeeping = Box<dyn FnMut(&dyn Store) + Send>;

/// Where each batch's outcome goes, in commit order: every op with what its changes did,
/// or, when the transaction failed, every op with the failure.
pub(crate) type Committed = Box<dyn Fn(Batch, Option<Failure<'_>>) + Send>;

/// What the writer calls once the store answers again after a failure, with the rooms
/// as stored (see [`Hub::recovered`](super::hub::Hub::recovered)).
pub(crate) type Recovered = Box<dyn Fn(Vec<StoredRoom>) + Send>;

/// The first wait before asking a failed store again, doubled while it keeps failing.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// What the writer thread works with.
pub(crate) struct WriterSetup {
    pub store: Arc<dyn Store>,
    pub max_batch: usize,
    pub policy: StoragePolicy,
    pub committed: Committed,
    pub recovered: Recovered,
    pub housekeeping: Housekeeping,
    /// With relays sharing the database: how to follow the others.
    pub follow: Option<Follow>,
}

/// Owns the writer thread: [`Writer::stop`] commits what is in flight and waits for it;
/// dropping the guard without stopping (an early return, a panic) still tells the
/// thread to commit what it has and end.
pub(crate) struct Writer {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread on `commands`; `sender` is a sender of the same channel.
    pub(crate) fn spawn(
        setup: WriterSetup,
        sender: Sender<Command>,
        commands: Receiver<Command>,
    ) -> std::io::Result<Self> {
        let thread = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || {
                let mut setup = setup;
                setup.max_batch = setup.max_batch.max(1);
                run(&mut setup, &commands)
            })?;
        Ok(Self {
            commands: sender,
            thread: Some(thread),
        })
    }

    /// Commits what has been handed over, then waits for the thread to end.
    pub(crate) async fn stop(mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Not joined here: a drop may run on a runtime thread, which must not block on
        // a transaction.
        if self.thread.is_some() {
            let _ = self.commands.send(Command::Stop);
        }
    }
}

/// Whether the writer goes on after a step.
enum Next {
    Continue,
    Stop,
}

fn run(setup: &mut WriterSetup, commands: &Receiver<Command>) {
    let mut next_prune = Instant::now();
    let mut next_check = Instant::now() + follow::HEAD_CHECK;
    // How long to wait before asking the store again, after a failure: grows while the
    // store keeps failing right after it answered, so that a disk that is still full
    // does not end every session every half second.
    let mut retry = FIRST_RETRY;
    loop {
        let now = Instant::now();
        if now >= next_prune {
            prune(&*setup.store, &setup.policy);
            (setup.housekeeping)(&*setup.store);
            next_prune = now + PRUNE_EVERY;
        }
        let mut wake = next_prune;
        if setup.follow.is_some() {
            if now >= next_check {
                follow_others(setup, Heed::Heads);
                next_check = now + follow::HEAD_CHECK;
            }
            wake = wake.min(next_check);
        }
        // Doorbells that wait are answered a few at a time, between batches.
        let bells = setup
            .follow
            .as_ref()
            .is_some_and(|follow| follow.bells.any());
        let received = match bells {
            true => commands.try_recv().map_err(|error| match error {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            }),
            false => commands.recv_timeout(wake.saturating_duration_since(now)),
        };
        let first = match received {
            Ok(Command::Commit(op)) => *op,
            Ok(Command::Doorbells) => {
                follow_others(setup, Heed::Bells);
                continue;
            }
            Err(RecvTimeoutError::Timeout) if bells => {
                follow_others(setup, Heed::Bells);
                continue;
            }
            Ok(Command::Resync) => {
                follow_others(setup, Heed::Everything);
                continue;
            }
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => continue,
        };
        let mut batch = vec![first];
        let mut stop = false;
        let mut then = None;
        while batch.len() < setup.max_batch {
            match commands.try_recv() {
                Ok(Command::Commit(op)) => batch.push(*op),
                Ok(Command::Stop) => {
                    stop = true;
                    break;
                }
                Ok(other) => {
                    then = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        match commit(setup, batch) {
            Ok(()) => retry = FIRST_RETRY,
            Err((_, lasting)) if stop || !lasting => {}
            Err((error, _)) => {
                if let Next::Stop = recover(setup, commands, error, retry) {
                    return;
                }
                retry = (retry * 2).min(LAST_RETRY);
                // Recovery read every room anew.
                then = None;
            }
        }
        if stop {
            return;
        }
        match then {
            Some(Command::Doorbells) => follow_others(setup, Heed::Bells),
            Some(Command::Resync) => follow_others(setup, Heed::Everything),
            _ => {}
        }
    }
}

/// What another relay's commits call for.
enum Heed {
    Bells,
    Heads,
    Everything,
}

/// Delivers what other relays committed that `heed` points at; a store that cannot be
/// read now is asked again at the next doorbell or head check.
fn follow_others(setup: &WriterSetup, heed: Heed) {
    let Some(follow) = &setup.follow else {
        return;
    };
    let store = &*setup.store;
    let done = match heed {
        Heed::Bells => follow.answer_bells(store),
        Heed::Heads => follow.check(store, false),
        Heed::Everything => follow.check(store, true),
    };
    if let Err(error) = done {
        tracing::warn!(%error, "cannot read what the other relays committed; trying again shortly");
    }
}

/// Commits a batch in one transaction and hands the outcome on; a failure comes back
/// with whether it was lasting ([`Failure::lasting`]).
fn commit(setup: &WriterSetup, mut batch: Vec<Op>) -> Result<(), (StoreError, bool)> {
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
        setup.store.commit(&changes, &setup.policy)
    };
    tracing::debug!(ops = batch.len(), changes = changes.len(), elapsed = ?started.elapsed(), "committed");
    match result {
        Ok(applied) => {
            let mut applied = applied.into_iter();
            let done: Batch = batch
                .into_iter()
                .zip(counts)
                .map(|(op, count)| (op, applied.by_ref().take(count).collect()))
                .collect();
            let Some(follow) = &setup.follow else {
                (setup.committed)(done, None);
                return Ok(());
            };
            // Each room's first own entry.
            let mut firsts: BTreeMap<String, u64> = BTreeMap::new();
            for (op, applied) in &done {
                if let (Some(room), Some(seq)) = (op.effect.numbered_room(), numbered(applied)) {
                    let first = firsts.entry(room.to_owned()).or_insert(seq);
                    *first = (*first).min(seq);
                }
            }
            let before = follow.before_own(&*setup.store, &firsts);
            (setup.committed)(done, None);
            follow.ring(&changes, firsts.into_keys());
            // Had what came before not been delivered, the members would miss it: they
            // are sent away to catch up from the store, as after a failure.
            before.map_err(|error| (error, true))
        }
        Err(error) => {
            let failed = batch.into_iter().map(|op| (op, Vec::new())).collect();
            // A relay that lost its claim may be behind another relay's writes.
            let lasting = Failure::is_lasting(&changes) || matches!(error, StoreError::ClaimLost);
            let failure = Failure {
                error: &error,
                lasting,
            };
            (setup.committed)(failed, Some(failure));
            Err((error, lasting))
        }
    }
}

/// After a failed commit: refuses what still arrives (it was numbered before the hub
/// knew of the failure, against a state the store does not have) until the store
/// answers again, then hands the stored rooms to the hub.
fn recover(
    setup: &WriterSetup,
    commands: &Receiver<Command>,
    mut error: StoreError,
    first_wait: Duration,
) -> Next {
    let mut wait = first_wait;
    loop {
        let until = Instant::now() + wait;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match commands.recv_timeout(left) {
                Ok(Command::Commit(op)) => refuse(setup, *op, &error),
                // The rooms are read anew once the store answers.
                Ok(Command::Doorbells | Command::Resync) => {}
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return Next::Stop,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        // An empty commit asks the store for a transaction: a database that went away
        // fails it, as a disk that is still full fails the next real one.
        let answer = setup
            .store
            .commit(&[], &setup.policy)
            .and_then(|_| setup.store.rooms());
        match answer {
            Ok(rooms) => {
                // Whatever arrived meanwhile goes the way of the failed batch.
                while let Ok(command) = commands.try_recv() {
                    match command {
                        Command::Commit(op) => refuse(setup, *op, &error),
                        Command::Doorbells | Command::Resync => {}
                        Command::Stop => return Next::Stop,
                    }
                }
                (setup.recovered)(rooms);
                return Next::Continue;
            }
            Err(again) => {
                tracing::warn!(error = %again, retry_in = ?wait, "the store still fails");
                error = again;
                wait = (wait * 2).min(LAST_RETRY);
            }
        }
    }
}

/// Answers an op that arrived while the store was failing as if its commit had failed.
fn refuse(setup: &WriterSetup, op: Op, error: &StoreError) {
    let failure = Failure {
        error,
        lasting: true,
    };
    (setup.committed)(vec![(op, Vec::new())], Some(failure));
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{self, RecvTimeoutError};

    use super::*;
    use crate::server::hub::Effect;
    use crate::store::{Change, SqliteStore};

    const PATIENCE: Duration = Duration::from_secs(10);

    #[test]
    fn dropping_the_guard_commits_what_is_in_flight_and_ends_the_thread() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let (outcomes, outcome) = mpsc::channel();
        let setup = WriterSetup {
            store: store.clone(),
            max_batch: 16,
            policy: StoragePolicy::UNLIMITED,
            // The callback goes with the thread: once it ends, `outcome` disconnects.
            committed: Box::new(move |batch, failure| {
                let _ = outcomes.send((batch.len(), failure.is_none()));
            }),
            recovered: Box::new(|_| {}),
            housekeeping: Box::new(|_| {}),
            follow: None,
        };
        let (sender, commands) = mpsc::channel();
        let writer = Writer::spawn(setup, sender.clone(), commands).unwrap();
        let op = Op {
            changes: vec![Change::CreateRoom {
                room: "lobby".to_owned(),
                owner: None,
            }],
            effect: Effect::Nothing,
            _permit: None,
        };
        sender.send(Command::Commit(Box::new(op))).unwrap();

        // Whoever else holds a sender (the hub does) no longer keeps the thread alive.
        drop(writer);
        assert_eq!(outcome.recv_timeout(PATIENCE), Ok((1, true)));
        assert_eq!(
            outcome.recv_timeout(PATIENCE),
            Err(RecvTimeoutError::Disconnected)
        );
        let rooms = store.rooms().unwrap();
        assert_eq!(rooms.len(), 1, "the op in flight was committed");
        assert_eq!(rooms[0].name, "lobby");
    }
}
