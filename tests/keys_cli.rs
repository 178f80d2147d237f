//! Identities, key trust and private rooms through the real `chat-client` and
//! `chat-server` binaries.

mod common;

use std::path::Path;
use std::process::Command;

use common::process::{ClientProcess, ServerProcess, rust_client, wait_for_line};

/// `chat-client --home HOME --user USER ARGS...`, run to completion.
fn client_command(url: &str, home: &Path, user: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_chat-client"))
        .args([
            "--server",
            url,
            "--key-bits",
            "2048",
            "--user",
            user,
            "--home",
        ])
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn safety_number(stdout: &str) -> String {
    stdout.rsplit(": ").next().unwrap().trim().replace(' ', "")
}

#[test]
fn names_are_taken_keys_are_pinned_verified_and_trusted_anew() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let (alice_home, bob_home) = (dir.path().join("alice"), dir.path().join("bob"));
    let alice = ClientProcess::joined(
        rust_client(&server.url, "alice", "lobby", &alice_home),
        "lobby",
    );
    let bob = ClientProcess::joined(rust_client(&server.url, "bob", "lobby", &bob_home), "lobby");
    wait_for_line(&alice.stderr, "pinned the keys of bob");

    // Someone else's keys cannot log in as alice.
    let (ok, _, stderr) = client_command(&server.url, &dir.path().join("eve"), "alice", &[]);
    assert!(!ok);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("chat-client: error: ") && last.contains("is taken"),
        "{stderr}"
    );

    // Both sides compute the same safety number from their own pins.
    let (ok, alice_says, stderr) =
        client_command(&server.url, &alice_home, "alice", &["verify", "bob"]);
    assert!(ok, "{stderr}");
    let (ok, bob_says, stderr) =
        client_command(&server.url, &bob_home, "bob", &["verify", "alice"]);
    assert!(ok, "{stderr}");
    assert_eq!(safety_number(&alice_says), safety_number(&bob_says));
    assert_eq!(safety_number(&alice_says).len(), 60);
    let (ok, _, _) = client_command(
        &server.url,
        &alice_home,
        "alice",
        &["verify", "bob", "--confirm"],
    );
    assert!(ok);
    let pins = std::fs::read_to_string(alice_home.join("alice").join("contacts.json")).unwrap();
    assert!(pins.contains("\"verified\": true"), "{pins}");
    let (ok, _, stderr) = client_command(&server.url, &alice_home, "alice", &["verify", "nobody"]);
    assert!(
        !ok && stderr.contains("no keys are pinned for nobody"),
        "{stderr}"
    );

    let (ok, _, stderr) = client_command(&server.url, &alice_home, "alcie", &["fingerprint"]);
    assert!(!ok && stderr.contains("no identity for alcie"), "{stderr}");
    assert!(
        !alice_home.join("alcie").exists(),
        "a typo made an identity"
    );
    let (ok, fingerprint, _) = client_command(&server.url, &alice_home, "alice", &["fingerprint"]);
    assert!(ok);
    assert!(fingerprint.starts_with("alice: "), "{fingerprint}");
    assert_eq!(fingerprint.trim().len(), "alice: ".len() + 16 * 4 + 15);
    for client in [alice, bob] {
        assert!(client.finish().0.success());
    }

    // The server loses its data (a fresh data directory), and bob comes back with new
    // keys: alice is warned, and nothing she sends is for the new keys...
    drop(server);
    let server = ServerProcess::start(&dir.path().join("data-lost"));
    let new_bob_home = dir.path().join("bob-new");
    let mut bob = ClientProcess::joined(
        rust_client(&server.url, "bob", "lobby", &new_bob_home),
        "lobby",
    );
    let mut alice = ClientProcess::start(rust_client(&server.url, "alice", "lobby", &alice_home));
    let warned = wait_for_line(&alice.stderr, "joined lobby");
    assert!(
        warned
            .iter()
            .any(|line| line.contains("NEW KEYS for bob") && line.contains("VERIFIED")),
        "{warned:?}"
    );
    alice.say("not for the new keys");
    bob.say("hello from new bob");
    wait_for_line(&alice.stderr, "dropped a message from bob");
    // ...until she accepts them.
    alice.say("/trust bob");
    wait_for_line(&alice.stderr, "now trusting the keys of bob");
    bob.say("can you read me now");
    alice.expect_stdout("[lobby] bob: can you read me now");
    alice.say("yes");
    bob.expect_stdout("[lobby] alice: yes");
    let (status, _, stderr) = alice.finish();
    assert!(status.success(), "{stderr:?}");
    let (status, stdout, _) = bob.finish();
    assert!(status.success());
    // "yes" was read above; what alice sent before trusting bob's keys never is.
    assert!(stdout.is_empty(), "bob read {stdout:?}");

    // The offline command pins what the server now has, so the next session is quiet.
    let (ok, stdout, stderr) = client_command(&server.url, &alice_home, "alice", &["trust", "bob"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("now trusting bob: "), "{stdout}");
}

#[test]
fn a_private_room_through_the_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let mut private = rust_client(&server.url, "alice", "#team", &home);
    private.arg("--private");
    let mut alice = ClientProcess::joined(private, "#team");

    let (ok, _, stderr) = client_command(&server.url, &home, "bob", &["--room", "#team"]);
    assert!(!ok);
    assert!(
        stderr.lines().last().unwrap().contains("PERMISSION_DENIED"),
        "{stderr}"
    );
    alice.say("/invite bob");
    wait_for_line(&alice.stderr, "invited bob to #team");
    let bob = ClientProcess::joined(rust_client(&server.url, "bob", "#team", &home), "#team");
    alice.say("welcome");
    bob.expect_stdout("[#team] alice: welcome");
    alice.say("/kick bob");
    wait_for_line(&alice.stderr, "bob was removed by the owner from #team");
    // Removed from its only room, bob's client ends by itself, whatever its input does.
    wait_for_line(&bob.stderr, "the owner removed you from #team");
    let (status, _, stderr) = bob.finish();
    assert!(!status.success());
    assert!(
        stderr
            .last()
            .unwrap()
            .contains("the owner of #team removed you"),
        "{stderr:?}"
    );
    alice.say("/kick bob");
    wait_for_line(&alice.stderr, "NOT_FOUND");
    assert!(alice.finish().0.success());
}

#[test]
fn the_server_never_logs_a_token() {
    use e2ee_chat::proto::auth_service_client::AuthServiceClient;
    use e2ee_chat::proto::chat_service_client::ChatServiceClient;
    use e2ee_chat::proto::{CreateChallengeRequest, KeyExchangeRequest, LoginRequest};

    let dir = tempfile::tempdir().unwrap();
    let mut server =
        ServerProcess::start_with(&dir.path().join("data"), &[], &[("RUST_LOG", "trace")]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let token = runtime.block_on(async {
        let channel = e2ee_chat::client::connect(&server.url, None).await.unwrap();
        let mut auth = AuthServiceClient::new(channel.clone());
        let challenge = auth
            .create_challenge(CreateChallengeRequest {
                user: "alice".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .challenge;
        let keys = common::identity("alice");
        let token = auth
            .login(LoginRequest {
                identity: Some(keys.publish("alice").unwrap()),
                signature: keys.sign_login("alice", &challenge).unwrap().into(),
                challenge,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .session_token;
        let mut request = tonic::Request::new(KeyExchangeRequest {
            users: vec!["alice".into()],
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        ChatServiceClient::new(channel)
            .key_exchange(request)
            .await
            .unwrap();
        token
    });
    // Everything the server wrote, at its most verbose, until it exited.
    assert!(server.terminate().success());
    let lines: Vec<String> = server.stderr.iter().collect();
    assert!(
        lines.iter().any(|line| line.contains("logged in")),
        "the server logged nothing useful: {lines:?}"
    );
    let leaks: Vec<&String> = lines.iter().filter(|line| line.contains(&token)).collect();
    assert!(leaks.is_empty(), "the token was logged: {leaks:?}");
}

#[test]
fn a_restart_keeps_every_name_bound_to_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data);
    let home = dir.path().join("home");
    let alice = ClientProcess::joined(rust_client(&server.url, "alice", "lobby", &home), "lobby");
    assert!(alice.finish().0.success());
    drop(server);

    // Killed and started again on the same data directory: alice is still alice, and
    // nobody else's keys can take her name.
    let server = ServerProcess::start(&data);
    let (ok, _, stderr) = client_command(&server.url, &dir.path().join("eve"), "alice", &[]);
    assert!(!ok);
    assert!(stderr.contains("is taken"), "{stderr}");
    let mut alice = ClientProcess::start(rust_client(&server.url, "alice", "lobby", &home));
    let joined = wait_for_line(&alice.stderr, "joined lobby");
    assert!(
        !joined.iter().any(|line| line.contains("registered")),
        "alice was registered anew: {joined:?}"
    );
    alice.say("still me");
    assert!(alice.finish().0.success());
}

#[test]
fn a_database_that_is_not_one_stops_the_server_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("data").join("chat.sqlite3"),
        vec![7u8; 4096],
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("chat-server: error: cannot open the database")
            && last.contains("chat.sqlite3"),
        "{stderr}"
    );
}

#[test]
fn a_server_that_registers_only_with_tokens_takes_each_token_as_often_as_it_allows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server =
        ServerProcess::start_with_args(&data, &["--registration".as_ref(), "token".as_ref()]);
    let token_command = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["registration-token"])
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    // Made while the server runs, on its data directory.
    let token = token_command(&["create", "--uses", "1"]);
    assert_eq!(token.len(), 32, "{token}");

    let (ok, _, stderr) = client_command(
        &server.url,
        &dir.path().join("a"),
        "alice",
        &["--room", "lobby"],
    );
    assert!(!ok);
    assert!(stderr.contains("registration token"), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|line| line.contains("error")).count(),
        1,
        "{stderr}"
    );

    let with_token = ["--registration-token", token.as_str()];
    let alice = ClientProcess::joined(
        {
            let mut command = rust_client(&server.url, "alice", "lobby", &dir.path().join("a"));
            command.args(with_token);
            command
        },
        "lobby",
    );
    assert!(alice.finish().0.success());
    // Used up: bob cannot register with it, and alice needs it no more.
    let (ok, _, stderr) = client_command(&server.url, &dir.path().join("b"), "bob", &with_token);
    assert!(!ok);
    assert!(stderr.contains("not valid"), "{stderr}");
    let alice = ClientProcess::joined(
        rust_client(&server.url, "alice", "lobby", &dir.path().join("a")),
        "lobby",
    );
    assert!(alice.finish().0.success());

    let listed = token_command(&["list"]);
    assert!(listed.contains("uses left: 0  used: 1"), "{listed}");
    let id = listed.split_whitespace().next().unwrap();
    token_command(&["revoke", id]);
    assert_eq!(token_command(&["list"]), "");
}

/// A database a chat.v1 relay left (schema 3) is upgraded as the server starts: what v1
/// clients sealed is forgotten with one line saying how much, the rest stays.
#[test]
fn a_chat_v1_database_is_upgraded_with_one_line_saying_what_it_forgot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let database = rusqlite::Connection::open(data.join("chat.sqlite3")).unwrap();
    for migration in [
        include_str!("../migrations/sqlite/0001_identities.sql"),
        include_str!("../migrations/sqlite/0002_rooms.sql"),
        include_str!("../migrations/sqlite/0003_usage.sql"),
    ] {
        database.execute_batch(migration).unwrap();
    }
    database.pragma_update(None, "user_version", 3).unwrap();
    let alice = common::identity("alice").publish("alice").unwrap();
    database
        .execute(
            "INSERT INTO identities (user, identity, registered_at_ms, seen_ms)
             VALUES ('alice', ?1, 5, 4102444800000)",
            [prost::Message::encode_to_vec(&alice)],
        )
        .unwrap();
    database
        .execute_batch(
            "INSERT INTO rooms (name, owner, last_seq, created_ms, used_ms)
                 VALUES ('r', NULL, 3, 7, 4102444800000);
             INSERT INTO members (room, user, joined_seq) VALUES ('r', 'alice', 0);
             INSERT INTO messages (room, seq, sender, key_id, counter, sealed, stored_ms)
                 VALUES ('r', 1, 'alice', 1, 0, x'0102', 100), ('r', 3, 'alice', 1, 1, x'03', 300);
             INSERT INTO sender_keys (room, seq, sender, recipient, key_id, wrapped_key,
                 signature, stored_ms) VALUES ('r', 2, 'alice', 'alice', 1, x'09', x'0909', 200);",
        )
        .unwrap();
    drop(database);

    let server = ServerProcess::start(&data);
    let line = server
        .started
        .iter()
        .find(|line| line.contains("protocol chat.v2"))
        .unwrap_or_else(|| panic!("{:?}", server.started));
    assert!(
        line.contains("messages=2") && line.contains("sender_keys=1"),
        "{line}"
    );
    drop(server);
    let database = rusqlite::Connection::open(data.join("chat.sqlite3")).unwrap();
    let (messages, members): (i64, i64) = database
        .query_row(
            "SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM members)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((messages, members), (0, 1));
}
