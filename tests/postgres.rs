//! The relay on PostgreSQL (`chat-server --database postgres://...`), end to end: the
//! real binary and real clients, against the throwaway server `scripts/start-postgres.sh`
//! starts (one database per test). What it stores survives a restart of the relay, and
//! a database that goes away costs clients an UNAVAILABLE, not the relay.
mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::postgres::{as_superuser, cut_off, fresh_database, let_back, superuser_value};
use common::process::{
    ClientProcess, ServerProcess, Takeover, catch_up, fail_over, join_and_go_away, message_line,
    rust_client, wait_for_line,
};
use common::{RawClient, unknown_key_message};
use e2ee_chat::proto::{SealedMessage, SendMessage, client_frame, server_frame};
use e2ee_chat::store::{PostgresStore, Store};

/// `chat-server --database URL`, with a data directory it must not need.
fn relay_on(url: &str, dir: &tempfile::TempDir) -> ServerProcess {
    ServerProcess::start_with_args(
        &dir.path().join("data"),
        &[OsStr::new("--database"), OsStr::new(url)],
    )
}

#[test]
fn a_chat_on_postgres_survives_a_restart_of_the_relay() {
    let url = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut server = relay_on(&url, &dir);
    let room = "lobby";
    // carol joins and goes away; alice and bob chat.
    join_and_go_away(rust_client(&server.url, "carol", room, &home));
    let mut bob = ClientProcess::joined(rust_client(&server.url, "bob", room, &home), room);
    let mut alice = ClientProcess::joined(rust_client(&server.url, "alice", room, &home), room);
    alice.say("hello bob");
    bob.expect_stdout(&message_line(room, "alice", "hello bob"));
    bob.say("hello alice");
    alice.expect_stdout(&message_line(room, "bob", "hello alice"));
    // A client exits 0 only once the relay acknowledged (stored) all it sent.
    for client in [alice, bob] {
        let (status, _, stderr) = client.finish();
        assert!(status.success(), "{stderr:?}");
    }

    // Killed outright: what was acknowledged is in PostgreSQL, not in the relay.
    server.kill_and_restart();
    assert!(!dir.path().join("data").exists(), "SQLite was used");
    let away = catch_up(rust_client(&server.url, "carol", room, &home), room);
    assert_eq!(
        away,
        [
            message_line(room, "alice", "hello bob"),
            message_line(room, "bob", "hello alice")
        ]
    );
    // The relay goes on where it was: a new message reaches a member catching up.
    let mut alice = ClientProcess::joined(rust_client(&server.url, "alice", room, &home), room);
    alice.say("still here");
    let (status, _, stderr) = alice.finish();
    assert!(status.success(), "{stderr:?}");
    let later = catch_up(rust_client(&server.url, "carol", room, &home), room);
    assert_eq!(later, [message_line(room, "alice", "still here")]);
}

/// A message of alice's under a key nobody holds, the `iteration`th of its chain.
fn message(iteration: u32) -> client_frame::Kind {
    client_frame::Kind::Send(SendMessage {
        room: "lobby".into(),
        sealed: Some(SealedMessage {
            iteration,
            ..unknown_key_message()
        }),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_gone_away_is_unavailable_to_clients_and_the_relay_recovers() {
    // The harness blocks: never on one of the runtime's workers.
    let url = tokio::task::spawn_blocking(fresh_database).await.unwrap();
    let database = url.rsplit_once('/').unwrap().1.to_owned();
    let dir = tempfile::tempdir().unwrap();
    let server = relay_on(&url, &dir);
    let mut alice = RawClient::open_url(&server.url, "alice").await;
    alice.join("lobby").await;
    alice.send(2, message(0)).await;
    assert!(matches!(
        alice.answer(2).await.kind,
        Some(server_frame::Kind::Ack(_))
    ));

    // Every connection cut and none let in: to the relay, a database that stopped.
    let cutting = database.clone();
    tokio::task::spawn_blocking(move || cut_off(&cutting))
        .await
        .unwrap();
    alice.send(3, message(1)).await;
    match alice.answer(3).await.kind {
        Some(server_frame::Kind::Rejection(rejection)) => {
            assert_eq!(rejection.code, tonic::Code::Unavailable as i32);
            assert!(
                rejection.message.contains("nothing was stored"),
                "{rejection:?}"
            );
        }
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }

    // Back: once the relay holds its claim on the database again (it writes nothing
    // before), the same message, sent again, is stored; the relay never stopped.
    let back = database.clone();
    tokio::task::spawn_blocking(move || let_back(&back))
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        wait_for_line(&server.stderr, "holding the claim on the database again")
    });
    // Another relay could have served the database meanwhile: the relay ends the
    // session at its first write, reads its rooms anew, and takes writes again.
    alice.send(4, message(1)).await;
    let ended = alice.final_status().await;
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("lost its claim"), "{ended:?}");
    tokio::task::block_in_place(|| {
        wait_for_line(&server.stderr, "the store answers again; accepting changes")
    });
    let mut alice = RawClient::open_url(&server.url, "alice").await;
    alice.join("lobby").await;
    alice.send(5, message(1)).await;
    let answer = alice.answer(5).await.kind;
    assert!(
        matches!(answer, Some(server_frame::Kind::Ack(_))),
        "{answer:?}"
    );
    // Stored are the two acknowledged messages, nothing of the refused attempt.
    let rooms = tokio::task::spawn_blocking(move || PostgresStore::open(&url, None)?.rooms())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rooms[0].messages, 2, "{rooms:?}");
}

/// Runs `chat-server --database database`, which must stop with one line of error (no
/// panic); returns that line.
fn stops_with_one_line(database: &str, dir: &Path) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database",
            database,
            "--data-dir",
        ])
        .arg(dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn a_database_it_cannot_use_stops_the_relay_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |database: &str| stops_with_one_line(database, dir.path());
    // Nothing listens on port 1 of the loopback: refused at once.
    let unreachable = run("postgres://relay:s3cret@127.0.0.1:1/chat");
    assert!(
        unreachable.contains("cannot open the database postgres://127.0.0.1:1/chat"),
        "{unreachable}"
    );
    assert!(unreachable.contains("refused"), "{unreachable}");
    let other = run("mysql://relay:s3cret@127.0.0.1/chat");
    assert!(
        other.contains("postgres://") && other.contains("postgresql://"),
        "{other}"
    );
    // PostgreSQL's own key=value form is not taken, and its password not repeated.
    let key_value = run("password=s3cret host=127.0.0.1 dbname=chat");
    assert!(key_value.contains("not a URL"), "{key_value}");
    for stderr in [unreachable, other, key_value] {
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}

#[test]
fn a_second_relay_on_one_database_stops_with_one_line_and_starts_once_the_first_is_gone() {
    let url = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let sqlite_dir = dir.path().join("sqlite");
    let second = |args: &[&OsStr]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("another chat-server is serving"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    let on_postgres = [OsStr::new("--database"), OsStr::new(&url)];
    let on_sqlite = [OsStr::new("--data-dir"), sqlite_dir.as_os_str()];

    let mut first = relay_on(&url, &dir);
    let mut first_on_sqlite = ServerProcess::start_with_args(&sqlite_dir, &[]);
    second(&on_postgres);
    second(&on_sqlite);
    // The claim goes with the process, however it ends.
    first.kill_and_restart();
    first_on_sqlite.kill_and_restart();
    second(&on_postgres);
    second(&on_sqlite);

    // PostgreSQL ends the session holding the lock (as a restart of PostgreSQL would):
    // the relay takes it again, and a relay started after that is still refused.
    let database = url.rsplit_once('/').unwrap().1;
    as_superuser(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_locks JOIN pg_database d ON d.oid = \
         pg_locks.database WHERE locktype = 'advisory' AND d.datname = '{database}'"
    ));
    common::process::wait_for_line(&first.stderr, "holding the claim on the database again");
    second(&on_postgres);
}

#[test]
fn a_relay_standing_by_on_postgres_takes_over_from_a_killed_one_and_the_clients_lose_nothing() {
    let url = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    fail_over(
        relay_on(&url, &dir),
        dir.path(),
        rust_client,
        Takeover::StandingBy,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_whose_claim_a_standby_took_writes_nothing_more_and_stops() {
    let url = tokio::task::spawn_blocking(fresh_database).await.unwrap();
    let database = url.rsplit_once('/').unwrap().1.to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut first = relay_on(&url, &dir);
    let standby = first.standby_on(&common::process::free_loopback_addr());
    let mut alice = RawClient::open_url(&first.url, "alice").await;
    alice.join("lobby").await;
    alice.send(2, message(0)).await;
    assert!(matches!(
        alice.answer(2).await.kind,
        Some(server_frame::Kind::Ack(_))
    ));

    // PostgreSQL ends the session holding the first relay's claim, and only that one:
    // its other connections, which write, live on. The relay standing by takes the
    // claim while the first is still waiting to take it back.
    let cut = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_locks JOIN pg_database d ON d.oid = \
         pg_locks.database WHERE locktype = 'advisory' AND granted AND d.datname = '{database}'"
    );
    tokio::task::spawn_blocking(move || as_superuser(&cut))
        .await
        .unwrap();
    let second = tokio::task::spawn_blocking(move || standby.listening())
        .await
        .unwrap();

    // The first relay may still take frames, but it stores nothing behind the back of
    // the relay that now serves the database: it ends the session (at its next write, or
    // as it stops on seeing the claim taken), so that the client moves on and sends
    // there what was not acknowledged.
    alice.send(3, message(1)).await;
    let ended = alice.final_status().await;
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(
        ended.message().contains("lost its claim") || ended.message().contains("shutting down"),
        "{ended:?}"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = first.wait_for_exit();
        (
            status,
            wait_for_line(&first.stderr, "another chat-server took"),
        )
    })
    .await
    .unwrap();
    assert!(!status.0.success(), "{:?}", status.1);

    // The one that serves has the acknowledged message, and only that one.
    let mut bob = RawClient::open_url(&second.url, "bob").await;
    bob.join("lobby").await;
    let rooms = tokio::task::spawn_blocking(move || PostgresStore::open(&url, None)?.rooms())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rooms[0].messages, 1, "{rooms:?}");
}

#[test]
fn a_relay_that_hangs_loses_its_claim_to_the_stand_by_and_stops_when_it_wakes() {
    let url = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let mut first = relay_on(&url, &dir);
    let standby = first.standby_on(&common::process::free_loopback_addr());
    // Frozen, the relay still holds its session, and so the claim, but says nothing:
    // PostgreSQL ends the silent session, and the stand-by takes over.
    first.freeze();
    let second = standby.listening();
    first.resume();
    let said = wait_for_line(&first.stderr, "another chat-server took");
    assert!(!first.wait_for_exit().success(), "{said:?}");
    // The one that serves does.
    let home = dir.path().join("home");
    join_and_go_away(rust_client(&second.url, "bob", "lobby", &home));
}

/// Makes the test server serve TLS as well (once per test process), with a new
/// self-signed certificate for 127.0.0.1; returns that certificate's PEM file, the one
/// CA a relay must trust to reach it.
fn tls_on_the_test_server() -> &'static Path {
    static CERTIFICATE: OnceLock<PathBuf> = OnceLock::new();
    CERTIFICATE.get_or_init(|| {
        let data = PathBuf::from(superuser_value("SHOW data_directory"));
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .unwrap();
        let (cert, key) = (data.join("test-tls.crt"), data.join("test-tls.key"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        // The server runs as the owner of its data (`postgres` when the tests run as
        // root) and reads its key only if nobody else can.
        let owner = std::fs::metadata(&data).unwrap();
        for file in [&cert, &key] {
            std::os::unix::fs::chown(file, Some(owner.uid()), Some(owner.gid())).unwrap();
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        for setting in [
            format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
            "ALTER SYSTEM SET ssl = on".to_owned(),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            as_superuser(&setting);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while superuser_value("SHOW ssl") != "on" {
            assert!(
                Instant::now() < deadline,
                "the test server did not turn TLS on"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cert
    })
}

#[test]
fn a_relay_reaches_postgres_over_tls_only_with_its_certificate_checked() {
    let certificate = tls_on_the_test_server();
    let url = fresh_database();
    let database = url.rsplit_once('/').unwrap().1.to_owned();
    let dir = tempfile::tempdir().unwrap();

    // Checked against the CA it was given: the relay serves, every connection encrypted.
    let encrypted = format!(
        "{url}?sslmode=require&sslrootcert={}",
        certificate.display()
    );
    let server = relay_on(&encrypted, &dir);
    let home = dir.path().join("home");
    join_and_go_away(rust_client(&server.url, "bob", "lobby", &home));
    let connections = |ssl: &str| -> u64 {
        superuser_value(&format!(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE datname = '{database}' AND {ssl}"
        ))
        .parse()
        .unwrap()
    };
    // The claim's connection and at least one of the pool's.
    assert!(connections("ssl") >= 2, "{}", connections("ssl"));
    assert_eq!(connections("NOT ssl"), 0);
    drop(server);

    // Not checked, not used: without the CA (against the web's roots), or with a CA
    // file that is not there, the relay stops with one line.
    for (database, expected) in [
        (format!("{url}?sslmode=require"), "certificate"),
        (
            format!("{url}?sslmode=require&sslrootcert=/nonexistent/ca.pem"),
            "/nonexistent/ca.pem",
        ),
        (
            format!("{url}?sslrootcert={}", certificate.display()),
            "sslmode=require",
        ),
    ] {
        let stderr = stops_with_one_line(&database, dir.path());
        assert!(stderr.to_lowercase().contains(expected), "{stderr}");
    }
}
