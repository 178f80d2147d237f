//! The PostgreSQL server the store's tests run against: started once per test process
//! by `scripts/start-postgres.sh` (which stops it when the process exits), with one
//! fresh database per test. A server that cannot be started fails the tests: they must
//! run wherever `cargo test` does.

use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server's URL (its `postgres` database), or why it could not be started.
fn server() -> &'static str {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    let started = SERVER.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/start-postgres.sh");
        let output = Command::new("bash")
            .arg(script)
            .arg(std::process::id().to_string())
            .output()
            .map_err(|error| format!("cannot run {script}: {error}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        match stdout.lines().last() {
            Some(url) if output.status.success() && url.starts_with("postgres://") => {
                Ok(url.to_owned())
            }
            _ => Err(format!(
                "{script} failed ({}): {}{}",
                output.status,
                stdout,
                String::from_utf8_lossy(&output.stderr)
            )),
        }
    });
    match started {
        Ok(url) => url,
        Err(error) => panic!("the tests need PostgreSQL: {error}"),
    }
}

/// The URL of a new, empty database on the test server.
pub(crate) fn fresh_database() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!("case_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    as_superuser(&format!("CREATE DATABASE {name}"));
    let server = server();
    let base = server.rsplit_once('/').expect("a URL with a database").0;
    format!("{base}/{name}")
}

/// Runs `work` on a connection to the test server as its superuser.
fn as_superuser_on<T>(work: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(server(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to the test PostgreSQL: {error}"));
        let connection = tokio::spawn(connection);
        let done = work(&client).await;
        drop(client);
        let _ = connection.await;
        done
    })
}

/// Runs `sql` on the test server as its superuser, outside any transaction.
pub(crate) fn as_superuser(sql: &str) {
    as_superuser_on(async |client| {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
    });
}

/// Cuts every connection to `database` and lets no new one in: to whoever uses it, a
/// server that stopped, until [`let_back`].
pub(crate) fn cut_off(database: &str) {
    as_superuser(&format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
    ));
}

/// Lets connections to `database` in again after [`cut_off`].
pub(crate) fn let_back(database: &str) {
    as_superuser(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"));
}

/// The first column of the first row `sql` returns, as text, run as the test server's
/// superuser.
#[allow(
    dead_code,
    reason = "tests/postgres.rs uses it, the store's tests do not"
)]
pub(crate) fn superuser_value(sql: &str) -> String {
    as_superuser_on(async |client| {
        let rows = client
            .simple_query(sql)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
        rows.iter()
            .find_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some(row.get(0).unwrap_or_default().to_owned())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{sql}: no row"))
    })
}
