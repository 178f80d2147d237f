//! A [`Store`] in a PostgreSQL database (`chat-server --database postgres://...`).
//!
//! The schema is `migrations/postgres/`, applied at start-up in one transaction and
//! recorded in the `schema_version` table. It mirrors the SQLite schema table for table,
//! and every method does what [`super::SqliteStore`]'s does (the shared decisions are in
//! `shared`); `apply` owns a commit's changes and the usage counters.
//!
//! The bridge: the trait is synchronous and the driver (`tokio-postgres`, pooled by
//! `deadpool-postgres`) is async, so the store owns a small tokio runtime of its own
//! (one worker, which drives the pooled connections) and each method blocks its caller
//! on its future there ([`Bridge::run`]). The callers are the writer's std thread and
//! `spawn_blocking` threads, where blocking is what they are for. A call made from a
//! task of the relay's multi-thread runtime (start-up's reads in `serve`, a
//! registration, a prekey) first leaves the async context with `block_in_place`, which
//! hands the worker's other tasks to the other workers: so no call ever blocks inside an
//! async task, nor inside the runtime that drives the connections.
//!
//! Writes (`commit`, `register`, `prune`, the tokens, prekeys) take one lock, as SQLite's
//! single writer does, so they apply in the order the relay made them; reads run in
//! read-only REPEATABLE READ transactions, one snapshot per call, beside them. A lost
//! connection fails the call that used it (the writer answers UNAVAILABLE, nothing
//! acknowledged) and the pool opens a new one for the next.

mod apply;
mod reach;
mod shared_commit;
mod tally;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use prost::Message;
use tokio::runtime::RuntimeFlavor;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{IsolationLevel, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use reach::{Reach, reach};

use super::copy;
use super::shared::{
    self, bits, decode_identity, decode_message, from_bits, in_sequence, millis, new_token, now_ms,
    pending, saturating, token_digest, token_id, tokens_named,
};
use super::tally::Tally;
use super::{
    Change, Dormant, Entry, LogEntry, Pruned, RegistrationToken, StoragePolicy, Store, StoreError,
    StoredRoom, WrappedKey,
};
use crate::proto::{MessageDelivery, PublicIdentity, SenderKeyDelivery, SignedPrekey};
use shared_commit::Checked;

/// The migrations, in order: the schema version after each is its position + 1.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_schema.sql"),
    include_str!("../../migrations/postgres/0002_room_events.sql"),
];

/// Connections the pool keeps: the writer, and catch-ups reading beside it.
const POOL_SIZE: usize = 8;

/// How long opening a connection may take before the call fails (the database is
/// down or unreachable): a commit waits no longer than this to be told UNAVAILABLE.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest one read or one commit may take (a full batch takes well under a second).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The relay's database on a PostgreSQL server.
pub struct PostgresStore {
    pool: Pool,
    /// The claim this store's writes are fenced by, for a serving relay.
    fence: Option<Fence>,
    /// Held by every write: one writer at a time, as with SQLite.
    writes: Mutex<()>,
    /// Last, so the pool's connections are dropped before their runtime is.
    bridge: Bridge,
}

/// The store's own runtime, on which the synchronous methods run their queries.
struct Bridge(Option<tokio::runtime::Runtime>);

impl Bridge {
    /// Runs `future` to completion on the store's runtime, blocking the calling thread.
    fn run<F: Future>(&self, future: F) -> F::Output {
        let runtime = self
            .0
            .as_ref()
            .expect("the runtime lives as long as the store");
        match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
            // A multi-thread runtime's worker hands its other tasks to the rest first;
            // on one of its spawn_blocking threads this just runs the closure.
            Ok(RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| runtime.block_on(future))
            }
            // No runtime (the writer's thread, a test), or a current-thread runtime's
            // spawn_blocking thread: block right away. (A current-thread runtime's own
            // task cannot hand its thread away: the relay never runs on one.)
            _ => runtime.block_on(future),
        }
    }
}

impl Bridge {
    /// [`run`](Self::run), but a database that does not answer within
    /// [`OPERATION_TIMEOUT`] (a PostgreSQL server that hangs rather than refuses) is an
    /// error, as one that went away is, rather than a relay that hangs with it.
    fn run_within<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.run(async {
            match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
                Ok(done) => done,
                Err(_) => Err(StoreError::Database(format!(
                    "PostgreSQL did not answer within {} s",
                    OPERATION_TIMEOUT.as_secs()
                ))),
            }
        })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime (the store may
        // go with the server's last task).
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The parameters of one statement.
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A transaction, for writes or for a read's one snapshot.
type Transaction<'a> = deadpool_postgres::Transaction<'a>;

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`) and brings
    /// its schema up to date. An unreachable server is a [`StoreError::Open`] naming it
    /// (never its password). With a `fence` (a serving relay's claim), every write
    /// first checks that the claim is still this relay's.
    pub fn open(url: &str, fence: Option<Fence>) -> Result<Self, StoreError> {
        let Reach {
            config,
            tls,
            target,
        } = reach(url)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(|error| StoreError::Open {
                path: target.clone(),
                reason: format!("cannot start its runtime: {error}"),
            })?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            let _runtime = runtime.enter();
            Pool::builder(manager)
                .max_size(POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .create_timeout(Some(CONNECT_TIMEOUT))
                .wait_timeout(Some(CONNECT_TIMEOUT * 6))
                .build()
                .map_err(|error| StoreError::Open {
                    path: target.clone(),
                    reason: error.to_string(),
                })?
        };
        let store = Self {
            pool,
            fence,
            writes: Mutex::new(()),
            bridge: Bridge(Some(runtime)),
        };
        store
            .bridge
            .run_within(migrate(&store.pool))
            .map_err(|error| match error {
                StoreError::Database(reason) => StoreError::Open {
                    path: target,
                    reason,
                },
                other => other,
            })?;
        Ok(store)
    }

    /// Runs `write` in a transaction of its own, committed if it succeeds, with the
    /// write lock held.
    fn write<T>(
        &self,
        operation: &str,
        write: impl for<'t> AsyncFn(&'t Transaction<'t>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_as(Writer::Other, operation, write)
    }

    /// Runs `write` as `writer`: only the relay's writer of rooms learns that the claim
    /// was taken again ([`Fence`]), for only it has rooms in memory to read anew.
    fn write_as<T>(
        &self,
        writer: Writer,
        operation: &str,
        write: impl for<'t> AsyncFn(&'t Transaction<'t>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _writer = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        // Relays sharing the database lock rows in one order (rooms, then users, each
        // sorted), but a batch is several runs: PostgreSQL may still break a deadlock
        // between two of them by aborting one, which is then run again.
        let mut attempt = 1;
        loop {
            match self.write_once(writer, operation, &write) {
                Err(StoreError::Contended(reason)) if attempt < WRITE_ATTEMPTS => {
                    tracing::debug!(
                        reason,
                        attempt,
                        "a write contended with another relay's; again"
                    );
                    attempt += 1;
                }
                Err(StoreError::Contended(reason)) => return Err(StoreError::Database(reason)),
                done => return done,
            }
        }
    }

    fn write_once<T>(
        &self,
        writer: Writer,
        operation: &str,
        write: &impl for<'t> AsyncFn(&'t Transaction<'t>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.bridge.run_within(async {
            let mut client = connection(&self.pool).await?;
            let transaction = client
                .transaction()
                .await
                .map_err(failed(format_args!("begin to {operation}")))?;
            if let Some(fence) = &self.fence {
                fence.check(&transaction, writer).await?;
            }
            // On an error the transaction is dropped, which rolls it all back.
            let done = write(&transaction).await?;
            transaction
                .commit()
                .await
                .map_err(failed(format_args!("commit: {operation}")))?;
            Ok(done)
        })
    }

    /// Runs `read` in a read-only transaction: its queries see one state.
    fn read<T>(
        &self,
        read: impl for<'t> AsyncFnOnce(&'t Transaction<'t>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.bridge.run_within(async {
            let mut client = connection(&self.pool).await?;
            let transaction = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(failed("begin a read"))?;
            let done = read(&transaction).await?;
            // Read only: ending it any way releases the snapshot.
            transaction.commit().await.map_err(failed("end a read"))?;
            Ok(done)
        })
    }
}

/// Who writes: the relay's writer of rooms (`Store::commit`), or anything else (a
/// registration, a prekey, a token, the pruning), which has nothing in memory that a
/// claim taken again could have left stale.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    Rooms,
    Other,
}

/// How many times a write PostgreSQL aborted for another's is tried.
const WRITE_ATTEMPTS: u32 = 5;

/// The key of the advisory lock a serving relay holds on its database
/// ([`claim`](super::claim)); the migrations take another.
const RELAY_LOCK: i64 = 2026112902;

/// The key of the advisory lock every fenced write holds, shared, for its transaction:
/// a relay that takes the claim takes this one exclusively for a moment, so that it
/// waits for the writes its predecessor had under way (see [`Fence`]).
const WRITES_LOCK: i64 = 2026112903;

/// The backend process id of the session holding the claim ([`RELAY_LOCK`], `$1`), if
/// one does. (A bigint advisory lock shows its high half as `classid`, its low half as
/// `objid`.)
const CLAIM_HOLDERS: &str = "SELECT pid FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND classid::bigint = ($1::bigint >> 32) AND objid::bigint = ($1::bigint & 4294967295)";

/// How long a relay waits for the claim of one that just went.
const CLAIM_PATIENCE: Duration = Duration::from_secs(2);

/// How long a relay whose claim's connection ended waits for the lock to be free again
/// (PostgreSQL may not have noticed yet that its old session is gone), before it takes
/// the lock as another relay's.
const RECLAIM_PATIENCE: Duration = Duration::from_secs(15);

/// How long a relay standing by waits for the claim on one connection before it
/// connects again (within [`OPERATION_TIMEOUT`]); it asks every 100 ms meanwhile.
const STANDBY_PATIENCE: Duration = Duration::from_secs(20);

/// How often the connection holding the claim speaks, and how long PostgreSQL lets it
/// be silent before it ends the session (and so the claim) as a relay that stopped.
const HEARTBEAT: Duration = Duration::from_secs(2);
const SILENCE_ENDS_CLAIM: &str = "10s";

/// How long a relay standing by waits before it asks again, after a failure.
const STANDBY_POLL: Duration = Duration::from_millis(250);

/// Which server session holds a relay's claim, for its writes to check: the claim is
/// held by one connection, and the writes run on others. A relay whose claim's
/// connection ended (PostgreSQL restarted, the session was terminated, the network
/// failed) may find another relay holding it when it comes back: until then its writes
/// could land behind the other relay's back, in rooms the other numbers from what it
/// read. So every write first takes [`WRITES_LOCK`] shared and checks that the claim
/// is held by this relay's session; the relay that takes the claim waits for those
/// locks to go before it reads anything.
///
/// A claim taken *again* (its connection had ended) may have been another relay's
/// meanwhile, which wrote what this relay's memory does not hold: the first write after
/// it fails as if the claim were lost, so that the relay reads its rooms anew from the
/// database (the store's recovery) before it writes anything.
#[derive(Clone, Default)]
pub struct Fence {
    /// The backend process id of the session holding the claim; 0 while none does.
    holder: Arc<AtomicI32>,
    /// How many times the claim was taken again after its connection ended, and how
    /// many of those the writes have seen (each seen once, by a refused write).
    retaken: Arc<AtomicU64>,
    seen: Arc<AtomicU64>,
    /// The claim of one of several relays serving the database together (`--nats`):
    /// they share it, and only keep out a relay that would serve it alone.
    shared: bool,
}

impl Fence {
    /// The fence of a claim held alone, or `shared` with other relays.
    pub fn new(shared: bool) -> Self {
        Self {
            shared,
            ..Self::default()
        }
    }

    async fn check(&self, transaction: &Transaction<'_>, writer: Writer) -> Result<(), StoreError> {
        let holder = self.holder.load(Ordering::SeqCst);
        if holder == 0 {
            return Err(StoreError::ClaimLost);
        }
        let retaken = self.retaken.load(Ordering::SeqCst);
        if writer == Writer::Rooms && self.seen.swap(retaken, Ordering::SeqCst) != retaken {
            return Err(StoreError::ClaimLost);
        }
        let row = transaction
            .query_one(
                &format!(
                    "SELECT EXISTS ({CLAIM_HOLDERS} AND pid = $3) \
                     FROM (SELECT pg_advisory_xact_lock_shared($2)) AS writing"
                ),
                &[&RELAY_LOCK, &WRITES_LOCK, &holder],
            )
            .await
            .map_err(failed("check the claim on the database"))?;
        if row.get::<_, bool>(0) {
            Ok(())
        } else {
            Err(StoreError::ClaimLost)
        }
    }
}

/// Connects to the database at `url` on a connection of its own, driven by the calling
/// runtime, and takes the relay's advisory lock on it, waiting for as long as another
/// relay has it if `standby`. The returned task holds it, and takes it again whenever
/// the connection ends (PostgreSQL restarted, the session was terminated); it ends,
/// with why, only if the lock is another relay's by then. `fence` says, while it is
/// held, which session holds it.
pub(super) async fn claim(
    url: &str,
    standby: bool,
    fence: Fence,
) -> Result<tokio::task::JoinHandle<String>, StoreError> {
    let Reach {
        config,
        tls,
        target,
    } = reach(url)?;
    let mut waiting = false;
    let held = loop {
        // A server that accepts the connection and then says nothing is no better than
        // one that refuses it.
        let patience = if waiting {
            STANDBY_PATIENCE
        } else {
            CLAIM_PATIENCE
        };
        let answer = tokio::time::timeout(
            OPERATION_TIMEOUT,
            lock(&config, &tls, patience, None, &fence),
        )
        .await;
        match answer {
            Ok(Ok(Some(held))) => break held,
            Ok(Ok(None)) if standby => {}
            Ok(Ok(None)) => return Err(StoreError::InUse { database: target }),
            // Standing by, the database may come and go: it is asked again.
            Ok(Err(_)) | Err(_) if standby && waiting => {}
            Ok(Err(error)) => {
                return Err(StoreError::Open {
                    path: target,
                    reason: describe(&error),
                });
            }
            Err(_) => {
                return Err(StoreError::Open {
                    path: target,
                    reason: format!(
                        "PostgreSQL did not answer within {} s",
                        OPERATION_TIMEOUT.as_secs()
                    ),
                });
            }
        }
        if !waiting {
            tracing::info!(
                database = target,
                "standing by: another chat-server serves this database; this one takes over when it goes"
            );
            waiting = true;
        }
        tokio::time::sleep(STANDBY_POLL).await;
    };
    Ok(tokio::spawn(hold(config, tls, target, held, fence)))
}

/// A connection holding the relay's lock, and the task driving it (which ends with it).
type Held = (tokio_postgres::Client, tokio::task::JoinHandle<()>);

/// Connects and takes the lock, trying again for `patience` while another session has
/// it; `None` if it still has it then, or at once if a session other than `previous`
/// (this relay's own, ended, which PostgreSQL may not have noticed yet) has it. Once it
/// has it, it waits for the writes under way of the relay that had it before, and sets
/// `fence` to its session.
async fn lock(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    patience: Duration,
    previous: Option<i32>,
    fence: &Fence,
) -> Result<Option<Held>, tokio_postgres::Error> {
    let (client, connection) = config.connect(tls.clone()).await?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "the claim's connection failed");
        }
    });
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let take = if fence.shared {
            "SELECT pg_try_advisory_lock_shared($1)"
        } else {
            "SELECT pg_try_advisory_lock($1)"
        };
        let row = client.query_one(take, &[&RELAY_LOCK]).await?;
        if row.get::<_, bool>(0) {
            break;
        }
        // Relays sharing the claim are kept out only by one holding it alone.
        if let Some(previous) = previous.filter(|_| !fence.shared) {
            let holder = client
                .query_opt(&format!("{CLAIM_HOLDERS} LIMIT 1"), &[&RELAY_LOCK])
                .await?;
            if holder.is_some_and(|row| row.get::<_, i32>(0) != previous) {
                return Ok(None);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Silence ends the session (see `hold`); PostgreSQL before 14 does not know the
    // setting, and a stopped relay then keeps its claim until it is killed.
    if let Err(error) = client
        .batch_execute(&format!(
            "SET idle_session_timeout = '{SILENCE_ENDS_CLAIM}'"
        ))
        .await
    {
        tracing::warn!(
            error = describe(&error),
            "a relay that hangs keeps its claim (PostgreSQL 14 or later ends it)"
        );
    }
    // The writes its predecessor began before it lost the claim end (or fail) first.
    // Relays sharing the claim have no predecessor to wait for.
    if !fence.shared {
        client
            .batch_execute(&format!(
                "SELECT pg_advisory_lock({WRITES_LOCK}); SELECT pg_advisory_unlock({WRITES_LOCK})"
            ))
            .await?;
    }
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    fence.holder.store(pid, Ordering::SeqCst);
    Ok(Some((client, driver)))
}

/// Holds the claim for as long as the relay runs; returns why it was lost.
async fn hold(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    target: String,
    mut held: Held,
    fence: Fence,
) -> String {
    loop {
        let (client, mut driver) = held;
        // The heartbeat keeps the session's idle time under `idle_session_timeout`
        // (see `lock`): a relay that stops (frozen, or its machine gone) stops it, and
        // PostgreSQL ends the session, so that a stand-by can take the claim.
        loop {
            tokio::select! {
                _ = &mut driver => break,
                () = tokio::time::sleep(HEARTBEAT) => {
                    // Unanswered (a network cut off): taken for ended, as a failure
                    // ends the connection, and so `driver`.
                    if tokio::time::timeout(HEARTBEAT, client.simple_query("")).await.is_err() {
                        break;
                    }
                }
            }
        }
        let previous = fence.holder.swap(0, Ordering::SeqCst);
        // Counted before the claim can be held again, so that no write slips between.
        fence.retaken.fetch_add(1, Ordering::SeqCst);
        drop(client);
        tracing::warn!(
            database = target,
            "the connection holding this relay's claim on its database ended; taking it again"
        );
        held = loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let lock = lock(&config, &tls, RECLAIM_PATIENCE, Some(previous), &fence);
            match tokio::time::timeout(OPERATION_TIMEOUT, lock).await {
                Ok(Ok(Some(held))) => break held,
                Ok(Ok(None)) => {
                    return format!(
                        "another chat-server took {target} while this one's claim on it was \
                         lost; one relay per database, so this one stops"
                    );
                }
                // PostgreSQL is still away: so are the writes, which fail meanwhile.
                Ok(Err(error)) => {
                    tracing::debug!(
                        database = target,
                        error = describe(&error),
                        "cannot take the claim yet"
                    );
                }
                Err(_) => tracing::debug!(database = target, "PostgreSQL did not answer"),
            }
        };
        tracing::info!(database = target, "holding the claim on the database again");
    }
}

/// A pooled connection; none to be had (the server is down) is a database error.
async fn connection(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get().await.map_err(|error| {
        let why = match &error {
            deadpool_postgres::PoolError::Backend(error) => describe(error),
            other => causes(other),
        };
        StoreError::Database(format!("cannot connect to PostgreSQL: {why}"))
    })
}

/// Applies the migrations the database has not had yet, all in one transaction, and
/// records the version reached.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = connection(pool).await?;
    let transaction = client
        .transaction()
        .await
        .map_err(failed("begin the migrations"))?;
    // Two relays started at once on one database take turns. The notice that the table
    // exists, at every start, is no news.
    transaction
        .batch_execute(
            "SELECT pg_advisory_xact_lock(2026112901); \
             SET LOCAL client_min_messages = warning; \
             CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)",
        )
        .await
        .map_err(failed("read the schema version"))?;
    let version: Option<i64> = transaction
        .query_one("SELECT MAX(version) FROM schema_version", &[])
        .await
        .map_err(failed("read the schema version"))?
        .get(0);
    let pending = pending(version.unwrap_or(0), MIGRATIONS)?;
    if pending.is_empty() {
        return Ok(());
    }
    let reached = pending.end as i64;
    for index in pending {
        transaction
            .batch_execute(MIGRATIONS[index])
            .await
            .map_err(failed(format_args!("apply migration {}", index + 1)))?;
    }
    transaction
        .execute("DELETE FROM schema_version", &[])
        .await
        .and(
            transaction
                .execute(
                    "INSERT INTO schema_version (version) VALUES ($1)",
                    &[&reached],
                )
                .await,
        )
        .map_err(failed("record the schema version"))?;
    transaction
        .commit()
        .await
        .map_err(failed("commit the migrations"))
}

/// What PostgreSQL said, on one line: the server's own message for an error it
/// reported, the driver's otherwise.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => causes(error),
    }
}

/// `error` and what caused it, on one line: the driver's own message ("error connecting
/// to server") says nothing of why.
fn causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !line.ends_with(&text) {
            line = format!("{line}: {text}");
        }
        cause = error.source();
    }
    line.replace('\n', " ")
}

/// The error of `operation`, named so that a log line says what did not happen.
fn failed(operation: impl Display) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |error| {
        let message = format!("{operation}: {}", describe(&error));
        let code = error.code();
        if code == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
            || code == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
        {
            StoreError::Contended(message)
        } else {
            StoreError::Database(message)
        }
    }
}

/// Runs one statement (prepared once per connection) and says how many rows it changed.
async fn execute(
    transaction: &Transaction<'_>,
    sql: &str,
    params: Params<'_>,
    operation: impl Display,
) -> Result<u64, StoreError> {
    let fail = failed(operation);
    let statement = transaction.prepare_cached(sql).await.map_err(&fail)?;
    transaction.execute(&statement, params).await.map_err(&fail)
}

/// Runs one query (prepared once per connection) and returns its rows.
async fn select(
    transaction: &Transaction<'_>,
    sql: &str,
    params: Params<'_>,
    operation: impl Display,
) -> Result<Vec<Row>, StoreError> {
    let fail = failed(operation);
    let statement = transaction.prepare_cached(sql).await.map_err(&fail)?;
    transaction.query(&statement, params).await.map_err(&fail)
}

/// Column `index` of `row`.
fn get<'r, T: FromSql<'r>>(row: &'r Row, index: usize) -> Result<T, StoreError> {
    row.try_get(index).map_err(|error| {
        StoreError::Database(format!("an unexpected value in column {index}: {error}"))
    })
}

/// The columns [`message`] reads, in its order.
const MESSAGE_COLUMNS: &str = "seq, sender, sealed";

/// The columns [`sender_key`] reads, in its order.
const KEY_COLUMNS: &str = "seq, sender, key_id, wrapped_key, signature";

/// A row of [`MESSAGE_COLUMNS`] as the message it is.
fn message(room: &str, row: &Row) -> Result<MessageDelivery, StoreError> {
    decode_message(room, from_bits(get(row, 0)?), get(row, 1)?, get(row, 2)?)
}

/// A row of [`KEY_COLUMNS`] as the sender key it is.
fn sender_key(room: &str, row: &Row) -> Result<SenderKeyDelivery, StoreError> {
    copy::delivery(
        room,
        get(row, 1)?,
        from_bits(get(row, 0)?),
        get::<&[u8]>(row, 3)?,
        get::<Vec<u8>>(row, 4)?.into(),
    )
}

impl PostgresStore {
    /// Every registered identity, or only `user`'s.
    fn identities_named(&self, user: Option<&str>) -> Result<Vec<PublicIdentity>, StoreError> {
        self.read(async |transaction| {
            select(
                transaction,
                "SELECT \"user\", identity FROM identities \
                 WHERE $1::text IS NULL OR \"user\" = $1 ORDER BY \"user\"",
                &[&user],
                "read the identities",
            )
            .await?
            .iter()
            .map(|row| decode_identity(get(row, 0)?, get(row, 1)?))
            .collect()
        })
    }

    /// Every device's current signed prekey, or only `user`'s.
    fn prekeys_of(&self, user: Option<&str>) -> Result<Vec<(String, SignedPrekey)>, StoreError> {
        self.read(async |transaction| {
            select(
                transaction,
                "SELECT \"user\", device, prekey_id, created_at_ms, public_key, signature \
                 FROM prekeys WHERE $1::text IS NULL OR \"user\" = $1 ORDER BY \"user\", device",
                &[&user],
                "read the prekeys",
            )
            .await?
            .iter()
            .map(|row| {
                let prekey = SignedPrekey {
                    device: u32::try_from(get::<i64>(row, 1)?).unwrap_or(u32::MAX),
                    prekey_id: from_bits(get(row, 2)?),
                    created_at_ms: from_bits(get(row, 3)?),
                    public_key: get::<Vec<u8>>(row, 4)?.into(),
                    signature: get::<Vec<u8>>(row, 5)?.into(),
                };
                Ok((get(row, 0)?, prekey))
            })
            .collect()
        })
    }
}

impl PostgresStore {
    /// Every room, or only `name`, with its members and invitations.
    fn rooms_named(&self, name: Option<&str>) -> Result<Vec<StoredRoom>, StoreError> {
        self.read(async |transaction| {
            let mut rooms = select(
                transaction,
                "SELECT name, owner, last_seq, message_count, message_bytes FROM rooms \
                 WHERE $1::text IS NULL OR name = $1 ORDER BY name",
                &[&name],
                "read the rooms",
            )
            .await?
            .iter()
            .map(|row| {
                Ok(StoredRoom {
                    name: get(row, 0)?,
                    owner: get(row, 1)?,
                    last_seq: from_bits(get(row, 2)?),
                    messages: from_bits(get(row, 3)?),
                    message_bytes: from_bits(get(row, 4)?),
                    ..StoredRoom::default()
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
            let index: HashMap<String, usize> = rooms
                .iter()
                .enumerate()
                .map(|(index, room)| (room.name.clone(), index))
                .collect();
            // The foreign keys make every row below belong to a room read above.
            for row in select(
                transaction,
                "SELECT room, \"user\", joined_seq FROM members \
                 WHERE $1::text IS NULL OR room = $1 ORDER BY room, \"user\"",
                &[&name],
                "read the members of the rooms",
            )
            .await?
            {
                if let Some(&at) = index.get(get::<&str>(&row, 0)?) {
                    rooms[at]
                        .members
                        .push((get(&row, 1)?, from_bits(get(&row, 2)?)));
                }
            }
            for row in select(
                transaction,
                "SELECT room, \"user\", invitation FROM invitations \
                 WHERE $1::text IS NULL OR room = $1 ORDER BY room, \"user\"",
                &[&name],
                "read the invitations to the rooms",
            )
            .await?
            {
                if let Some(&at) = index.get(get::<&str>(&row, 0)?) {
                    let invitation = get::<Option<Vec<u8>>>(&row, 2)?;
                    rooms[at]
                        .invited
                        .push((get(&row, 1)?, invitation.map(bytes::Bytes::from)));
                }
            }
            for row in select(
                transaction,
                "SELECT room, \"user\", removal FROM removals \
                 WHERE $1::text IS NULL OR room = $1 ORDER BY room, \"user\"",
                &[&name],
                "read the removals from the rooms",
            )
            .await?
            {
                if let Some(&at) = index.get(get::<&str>(&row, 0)?) {
                    let removal = get::<Vec<u8>>(&row, 2)?;
                    rooms[at].removals.push((get(&row, 1)?, removal.into()));
                }
            }
            Ok(rooms)
        })
    }
}

impl Store for PostgresStore {
    fn identities(&self) -> Result<Vec<PublicIdentity>, StoreError> {
        self.identities_named(None)
    }

    fn identity(&self, user: &str) -> Result<Option<PublicIdentity>, StoreError> {
        Ok(self.identities_named(Some(user))?.into_iter().next())
    }

    fn prekeys(&self) -> Result<Vec<(String, SignedPrekey)>, StoreError> {
        self.prekeys_of(None)
    }

    fn prekey(&self, user: &str) -> Result<Option<SignedPrekey>, StoreError> {
        Ok(self
            .prekeys_of(Some(user))?
            .into_iter()
            .next()
            .map(|(_, prekey)| prekey))
    }

    fn save_prekey(&self, user: &str, prekey: &SignedPrekey) -> Result<(), StoreError> {
        let operation = format!("save the prekey of {user:?}");
        self.write(&operation, async |transaction| {
            execute(
                transaction,
                "INSERT INTO prekeys \
                 (\"user\", device, prekey_id, created_at_ms, public_key, signature) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (\"user\", device) DO UPDATE SET \
                 prekey_id = excluded.prekey_id, created_at_ms = excluded.created_at_ms, \
                 public_key = excluded.public_key, signature = excluded.signature",
                &[
                    &user,
                    &i64::from(prekey.device),
                    &bits(prekey.prekey_id),
                    &bits(prekey.created_at_ms),
                    &prekey.public_key.as_ref(),
                    &prekey.signature.as_ref(),
                ],
                &operation,
            )
            .await
            .map(drop)
        })
    }

    fn register(&self, identity: &PublicIdentity, token: Option<&str>) -> Result<(), StoreError> {
        let now_ms = now_ms();
        let encoded = identity.encode_to_vec();
        self.write("commit a registration", async |transaction| {
            if let Some(token) = token {
                let used = execute(
                    transaction,
                    "UPDATE registration_tokens SET uses_left = uses_left - 1, used = used + 1 \
                     WHERE token_sha256 = $1 AND (uses_left IS NULL OR uses_left > 0) \
                     AND (expires_ms IS NULL OR expires_ms > $2)",
                    &[&token_digest(token), &now_ms],
                    "use a registration token",
                )
                .await?;
                if used == 0 {
                    return Err(StoreError::RegistrationToken);
                }
            }
            execute(
                transaction,
                "INSERT INTO identities (\"user\", identity, registered_at_ms, seen_ms) \
                 VALUES ($1, $2, $3, $3)",
                &[&identity.user, &encoded, &now_ms],
                format_args!("register {:?}", identity.user),
            )
            .await
            .map(drop)
        })
    }

    fn create_registration_token(
        &self,
        uses: Option<u64>,
        expires_ms: Option<u64>,
    ) -> Result<String, StoreError> {
        let (token, digest) = new_token()?;
        let (uses, expires_ms) = (uses.map(saturating), expires_ms.map(saturating));
        self.write("create a registration token", async |transaction| {
            execute(
                transaction,
                "INSERT INTO registration_tokens \
                 (token_sha256, uses_left, expires_ms, created_ms) VALUES ($1, $2, $3, $4)",
                &[&digest, &uses, &expires_ms, &now_ms()],
                "create a registration token",
            )
            .await
        })?;
        Ok(token)
    }

    fn registration_tokens(&self) -> Result<Vec<RegistrationToken>, StoreError> {
        self.read(async |transaction| {
            select(
                transaction,
                "SELECT token_sha256, uses_left, used, expires_ms, created_ms \
                 FROM registration_tokens ORDER BY created_ms, token_sha256",
                &[],
                "read the registration tokens",
            )
            .await?
            .iter()
            .map(|row| {
                Ok(RegistrationToken {
                    id: token_id(get(row, 0)?),
                    uses_left: get::<Option<i64>>(row, 1)?.map(|n| n.max(0) as u64),
                    used: get::<i64>(row, 2)?.max(0) as u64,
                    expires_ms: get::<Option<i64>>(row, 3)?.map(|n| n.max(0) as u64),
                    created_ms: get::<i64>(row, 4)?.max(0) as u64,
                })
            })
            .collect()
        })
    }

    fn revoke_registration_tokens(&self, id_prefix: &str) -> Result<u64, StoreError> {
        self.write(
            "commit the revocation of registration tokens",
            async |transaction| {
                let digests = select(
                    transaction,
                    "SELECT token_sha256 FROM registration_tokens",
                    &[],
                    "read the registration tokens",
                )
                .await?
                .iter()
                .map(|row| get::<Vec<u8>>(row, 0))
                .collect::<Result<Vec<_>, _>>()?;
                let mut revoked = 0;
                for digest in tokens_named(&digests, id_prefix) {
                    revoked += execute(
                        transaction,
                        "DELETE FROM registration_tokens WHERE token_sha256 = $1",
                        &[digest],
                        "revoke a registration token",
                    )
                    .await?;
                }
                Ok(revoked)
            },
        )
    }

    fn rooms(&self) -> Result<Vec<StoredRoom>, StoreError> {
        self.rooms_named(None)
    }

    fn room(&self, name: &str) -> Result<Option<StoredRoom>, StoreError> {
        Ok(self.rooms_named(Some(name))?.into_iter().next())
    }

    fn commit(
        &self,
        changes: &[Change],
        policy: &StoragePolicy,
    ) -> Result<Vec<super::Applied>, StoreError> {
        if changes.is_empty() {
            // The writer's probe after a failure: a relay that lost its claim must not
            // take itself for recovered.
            if self.fence.is_some() {
                return self.write_as(Writer::Rooms, "check the claim", async |_| Ok(Vec::new()));
            }
            return Ok(Vec::new());
        }
        let now_ms = now_ms();
        let shared = self.fence.as_ref().is_some_and(|fence| fence.shared);
        self.write_as(Writer::Rooms, "commit", async |transaction| {
            let mut members = match shared {
                true => Some(shared_commit::lock_in_order(transaction, changes).await?),
                false => None,
            };
            let mut applied = Vec::with_capacity(changes.len());
            let mut tally = Tally::new(now_ms);
            for change in changes {
                // Relays sharing the database check membership here too: another may
                // have removed the sender, or a recipient, since this relay decided.
                let checked = match &mut members {
                    Some(members) => match members.check(change) {
                        Checked::Refused => {
                            applied.push(super::Applied::NotMember);
                            continue;
                        }
                        Checked::Conflict => {
                            applied.push(super::Applied::Conflict);
                            continue;
                        }
                        Checked::Narrowed(narrowed) => Some(narrowed),
                        Checked::AsIs => None,
                    },
                    None => None,
                };
                let change = checked.as_ref().unwrap_or(change);
                applied.push(match change {
                    Change::AppendMessage {
                        room,
                        seq,
                        sender,
                        sealed,
                    } => {
                        let applied = apply::append_message(
                            transaction,
                            &mut tally,
                            room,
                            *seq,
                            sender,
                            sealed,
                            policy,
                        )
                        .await?;
                        // Rare: only a store beyond its size reads (and writes) across
                        // rooms.
                        tally::read_total(transaction, &mut tally).await?;
                        if shared::store_excess(tally.total(), policy) > 0 {
                            tally::write_and_restart(transaction, &mut tally).await?;
                            let seq = shared::stored_as(applied, *seq);
                            apply::evict_oldest(transaction, policy, room, seq).await?;
                        }
                        applied
                    }
                    Change::CreateRoom { room, owner } if members.is_some() => {
                        tally::write_and_restart(transaction, &mut tally).await?;
                        let members = members.as_mut().expect("checked");
                        let owner = owner.as_deref();
                        match members
                            .create_room(transaction, room, owner, now_ms)
                            .await?
                        {
                            true => super::Applied::Done,
                            false => super::Applied::Conflict,
                        }
                    }
                    Change::DeleteRoom { room } if members.is_some() => {
                        tally::write_and_restart(transaction, &mut tally).await?;
                        let members = members.as_mut().expect("checked");
                        if members.delete_room(transaction, room).await? {
                            apply::change(transaction, change, now_ms).await?;
                        }
                        super::Applied::Done
                    }
                    // Anything else reads or writes the counters itself: the tally is
                    // written first, and a new one started after.
                    change => {
                        tally::write_and_restart(transaction, &mut tally).await?;
                        apply::change(transaction, change, now_ms).await?
                    }
                });
            }
            tally::write_and_restart(transaction, &mut tally).await?;
            Ok(applied)
        })
    }

    fn log_between(&self, room: &str, after: u64, up_to: u64) -> Result<Vec<LogEntry>, StoreError> {
        let (after, up_to) = (saturating(after), saturating(up_to));
        let operation = format!("read the log of room {room:?}");
        self.read(async |transaction| {
            let range: Params<'_> = &[&room, &after, &up_to];
            let messages = select(
                transaction,
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages \
                     WHERE room = $1 AND seq > $2 AND seq <= $3 ORDER BY seq"
                ),
                range,
                &operation,
            )
            .await?
            .iter()
            .map(|row| message(room, row))
            .collect::<Result<Vec<_>, StoreError>>()?;
            let keys = select(
                transaction,
                "SELECT seq, sender, recipient, wrapped_key, signature FROM sender_keys \
                 WHERE room = $1 AND seq > $2 AND seq <= $3 ORDER BY seq, recipient",
                range,
                &operation,
            )
            .await?
            .iter()
            .map(|row| {
                let key = WrappedKey {
                    recipient: get(row, 2)?,
                    wrapped_key: get::<Vec<u8>>(row, 3)?.into(),
                    signature: get::<Vec<u8>>(row, 4)?.into(),
                };
                Ok((from_bits(get(row, 0)?), get(row, 1)?, key))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
            let events = select(
                transaction,
                "SELECT e.seq, e.\"user\", e.reason, r.removal FROM room_events AS e \
                 LEFT JOIN removals AS r \
                  ON r.room = e.room AND r.\"user\" = e.\"user\" AND e.reason != 0 \
                 WHERE e.room = $1 AND e.seq > $2 AND e.seq <= $3 ORDER BY e.seq",
                range,
                &operation,
            )
            .await?
            .iter()
            .map(|row| {
                let removal: Option<Vec<u8>> = get(row, 3)?;
                Ok((
                    from_bits(get(row, 0)?),
                    get(row, 1)?,
                    get(row, 2)?,
                    removal.map(Into::into),
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(shared::room_log(messages, keys, events))
        })
    }

    fn heads(&self, room: Option<&str>) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(async |transaction| {
            select(
                transaction,
                "SELECT name, last_seq FROM rooms WHERE $1::text IS NULL OR name = $1 \
                 ORDER BY name",
                &[&room],
                "read the rooms' last sequence numbers",
            )
            .await?
            .iter()
            .map(|row| Ok((get(row, 0)?, from_bits(get(row, 1)?))))
            .collect()
        })
    }

    fn entries_after(
        &self,
        room: &str,
        member: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let (after, up_to, count) = (saturating(after), saturating(up_to), saturating(limit));
        let operation = format!("read the entries of room {room:?} for {member:?}");
        self.read(async |transaction| {
            let range: Params<'_> = &[&room, &member, &after, &up_to, &count];
            let messages = select(
                transaction,
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages \
                     WHERE room = $1 AND sender != $2 AND seq > $3 AND seq <= $4 \
                     ORDER BY seq LIMIT $5"
                ),
                range,
                &operation,
            )
            .await?
            .iter()
            .map(|row| Ok(Entry::Message(message(room, row)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
            let keys = select(
                transaction,
                &format!(
                    "SELECT {KEY_COLUMNS} FROM sender_keys \
                     WHERE room = $1 AND recipient = $2 AND sender != $2 AND seq > $3 \
                     AND seq <= $4 ORDER BY seq LIMIT $5"
                ),
                range,
                &operation,
            )
            .await?
            .iter()
            .map(|row| Ok(Entry::SenderKey(sender_key(room, row)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(in_sequence(keys, messages, limit))
        })
    }

    fn keys_in_force(&self, room: &str, member: &str, at: u64) -> Result<Vec<Entry>, StoreError> {
        let operation = format!("read the keys in force in room {room:?} for {member:?} at {at}");
        let at = saturating(at);
        self.read(async |transaction| {
            select(
                transaction,
                &format!(
                    "SELECT {KEY_COLUMNS} FROM sender_keys AS k \
                     WHERE room = $1 AND recipient = $2 AND sender != $2 AND seq <= $3 \
                     AND (superseded_seq IS NULL OR superseded_seq > $3 \
                      OR EXISTS (SELECT 1 FROM messages AS m WHERE m.room = $1 \
                       AND m.sender = k.sender AND m.key_id = k.key_id AND m.seq > $3)) \
                     ORDER BY seq"
                ),
                &[&room, &member, &at],
                &operation,
            )
            .await?
            .iter()
            .map(|row| Ok(Entry::SenderKey(sender_key(room, row)?)))
            .collect()
        })
    }

    fn senders_between(
        &self,
        room: &str,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<String>, StoreError> {
        let (after, up_to) = (saturating(after), saturating(up_to));
        self.read(async |transaction| {
            select(
                transaction,
                "SELECT DISTINCT sender FROM messages \
                 WHERE room = $1 AND seq > $2 AND seq <= $3 ORDER BY sender",
                &[&room, &after, &up_to],
                format_args!("read the senders of room {room:?}"),
            )
            .await?
            .iter()
            .map(|row| get(row, 0))
            .collect()
        })
    }

    fn history(
        &self,
        room: &str,
        member: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let operation = format!("read the history of room {room:?} for {member:?}");
        let (since, count) = (saturating(since), saturating(limit));
        self.read(async |transaction| {
            let mut messages = select(
                transaction,
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE room = $1 AND seq > $2 \
                     ORDER BY seq DESC LIMIT $3"
                ),
                &[&room, &since, &count],
                &operation,
            )
            .await?
            .iter()
            .map(|row| message(room, row))
            .collect::<Result<Vec<_>, StoreError>>()?;
            messages.reverse();
            let sealed_with: BTreeSet<(&str, u64)> = messages
                .iter()
                .filter_map(|message| {
                    Some((message.sender.as_str(), message.sealed.as_ref()?.key_id))
                })
                .collect();
            let mut keys = Vec::with_capacity(sealed_with.len());
            for (sender, key_id) in sealed_with {
                for row in select(
                    transaction,
                    &format!(
                        "SELECT {KEY_COLUMNS} FROM sender_keys \
                         WHERE room = $1 AND recipient = $2 AND sender = $3 AND key_id = $4 \
                         ORDER BY seq DESC LIMIT 1"
                    ),
                    &[&room, &member, &sender, &bits(key_id)],
                    &operation,
                )
                .await?
                {
                    keys.push(Entry::SenderKey(sender_key(room, &row)?));
                }
            }
            let messages = messages.into_iter().map(Entry::Message).collect();
            Ok(in_sequence(keys, messages, usize::MAX))
        })
    }

    fn prune(&self, policy: &StoragePolicy, now: Duration) -> Result<Pruned, StoreError> {
        self.write("commit the pruning", async |transaction| {
            apply::prune(transaction, policy, now).await
        })
    }

    fn dormant(&self, since: Duration) -> Result<Dormant, StoreError> {
        let since = millis(since);
        self.read(async |transaction| {
            let users = select(
                transaction,
                "SELECT \"user\" FROM identities WHERE seen_ms < $1 AND message_count = 0 \
                 AND NOT EXISTS (SELECT 1 FROM rooms WHERE owner = identities.\"user\") \
                 ORDER BY \"user\"",
                &[&since],
                "find the users nobody has used",
            )
            .await?
            .iter()
            .map(|row| get(row, 0))
            .collect::<Result<_, _>>()?;
            let rooms = select(
                transaction,
                "SELECT name FROM rooms WHERE used_ms < $1 ORDER BY name",
                &[&since],
                "find the rooms nobody has used",
            )
            .await?
            .iter()
            .map(|row| get(row, 0))
            .collect::<Result<_, _>>()?;
            Ok(Dormant { users, rooms })
        })
    }
}

#[cfg(test)]
impl PostgresStore {
    /// Every row `sql` returns, each column as text (tests check the store's figures
    /// against the rows).
    pub(crate) fn test_query(&self, sql: &str) -> Vec<Vec<String>> {
        self.bridge.run(async {
            let client = connection(&self.pool).await.unwrap();
            let rows = client.query(sql, &[]).await.unwrap();
            rows.iter()
                .map(|row| {
                    (0..row.len())
                        .map(|index| row.get::<_, Option<String>>(index).unwrap_or_default())
                        .collect()
                })
                .collect()
        })
    }

    /// Runs `sql` as it is (tests that damage what is stored).
    pub(crate) fn test_execute(&self, sql: &str) {
        self.bridge.run(async {
            let client = connection(&self.pool).await.unwrap();
            client.batch_execute(sql).await.unwrap();
        })
    }
}

#[cfg(test)]
mod tests;
