//! Python against the Rust relay and client: grpcurl-style probing of reflection and
//! health, and a Python client written from docs/PROTOCOL.md and the proto alone.
//!
//! `clients/python/setup.sh` makes the virtualenv and the stubs on first use.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::process::{
    ClientProcess, NOBODY_LISTENS, ServerProcess,
    a_relay_killed_mid_conversation_the_clients_fail_over, assert_one_line_error,
    burst_to_a_busy_reader_and_an_away_one, chat_client, join_and_go_away, run_client, rust_client,
    the_first_relay_down_the_client_chats_through_the_next, wait_for_line,
};

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join("python")
}

/// The virtualenv's interpreter, once `setup.sh` has made everything the tests need.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let status = Command::new("bash")
            .arg(python_dir().join("setup.sh"))
            .status()
            .expect("cannot run bash");
        assert!(status.success(), "clients/python/setup.sh failed");
        python_dir().join(".venv").join("bin").join("python")
    })
}

#[test]
fn grpcurl_style_probe_lists_describes_and_checks_health() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let output = Command::new(python())
        .arg(python_dir().join("probe.py"))
        .arg(server.url.trim_start_matches("http://"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    for (version, itself) in [
        ("v1", "grpc.reflection.v1.ServerReflection"),
        ("v1alpha", "grpc.reflection.v1alpha.ServerReflection"),
    ] {
        let listed = &report["list"][version];
        assert_eq!(
            *listed,
            serde_json::json!([
                "chat.v2.AuthService",
                "chat.v2.ChatService",
                "grpc.health.v1.Health",
                itself
            ]),
            "{version}"
        );
        let methods = &report["describe"][version]["methods"];
        assert_eq!(report["describe"][version]["file"], "chat/v2/chat.proto");
        assert_eq!(
            methods["KeyExchange"]["input"],
            "chat.v2.KeyExchangeRequest"
        );
        assert_eq!(
            methods["KeyExchange"]["output"],
            "chat.v2.KeyExchangeResponse"
        );
        assert_eq!(methods["KeyExchange"]["client_streaming"], false);
        assert_eq!(methods["KeyExchange"]["server_streaming"], false);
        assert_eq!(methods["Chat"]["input"], "chat.v2.ClientFrame");
        assert_eq!(methods["Chat"]["output"], "chat.v2.ServerFrame");
        assert_eq!(methods["Chat"]["client_streaming"], true);
        assert_eq!(methods["Chat"]["server_streaming"], true);
        // GetIdentity is gone: KeyExchange replaced it.
        assert!(methods.get("GetIdentity").is_none(), "{methods}");
    }
    assert_eq!(report["health"][""], "SERVING");
    assert_eq!(report["health"]["chat.v2.ChatService"], "SERVING");
    // chat.v1 is no longer served: an old client's first call says so.
    assert_eq!(report["chat_v1"], "UNIMPLEMENTED");
}

fn python_client(url: &str, user: &str, room: &str, home: &Path) -> Command {
    let script = python_dir().join("chat_client.py");
    chat_client(python(), &[script.as_os_str()], url, user, room, home)
}

#[test]
fn python_and_rust_users_read_each_other_including_a_newcomer() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let mut bob = ClientProcess::joined(rust_client(&server.url, "bob", "lobby", &home), "lobby");
    let mut alice =
        ClientProcess::joined(python_client(&server.url, "alice", "lobby", &home), "lobby");
    wait_for_line(&bob.stderr, "alice joined lobby");

    alice.say("hello from Python: ünïcödé 'quotes' \"doubles\"");
    bob.expect_stdout("[lobby] alice: hello from Python: ünïcödé 'quotes' \"doubles\"");
    bob.say("hello from Rust\ttabbed");
    alice.expect_stdout("[lobby] bob: hello from Rust\\u{9}tabbed");

    let mut carol =
        ClientProcess::joined(python_client(&server.url, "carol", "lobby", &home), "lobby");
    bob.say("right after carol joined");
    carol.expect_stdout("[lobby] bob: right after carol joined");
    alice.expect_stdout("[lobby] bob: right after carol joined");
    carol.say("carol, in Python too");
    bob.expect_stdout("[lobby] carol: carol, in Python too");
    alice.expect_stdout("[lobby] carol: carol, in Python too");

    for client in [alice, bob, carol] {
        let (status, stdout, stderr) = client.finish();
        assert!(status.success(), "{stderr:?}");
        assert!(stdout.is_empty(), "{stdout:?}");
    }
}

/// Waits until a line containing each of `needles` went by, in any order; returns every
/// line read.
fn wait_for_lines(lines: &std::sync::mpsc::Receiver<String>, needles: &[&str]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for needle in needles {
        if !seen.iter().any(|line| line.contains(needle)) {
            seen.extend(wait_for_line(lines, needle));
        }
    }
    seen
}

/// One Python client in several rooms on one stream, each Rust member alone in its room
/// (the Rust client has one room per run): a plain line goes to the current room, `/msg`
/// to another, `/switch` changes the current room; each Rust member gets exactly its
/// room's messages and the Python client prints both rooms' with their prefix. A later
/// `/join` catches up from the saved progress, a refused one is only reported, and
/// `/part` leaves for good: the member left behind sees it.
#[test]
fn a_python_client_chats_in_several_rooms_on_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let url = server.url.as_str();
    // alice was in gamma before, and saved where she was; erin speaks there meanwhile.
    join_and_go_away(python_client(url, "alice", "gamma", &home));
    let (status, _, stderr) = run_client(
        &mut rust_client(url, "erin", "gamma", &home),
        "said while alice was away\n",
    );
    assert!(status.success(), "{stderr}");
    // dave's private room, which alice was not invited to.
    let mut private = rust_client(url, "dave", "club", &home);
    private.arg("--private");
    join_and_go_away(private);

    let mut bob = ClientProcess::joined(rust_client(url, "bob", "alpha", &home), "alpha");
    let mut carol = ClientProcess::joined(rust_client(url, "carol", "beta", &home), "beta");
    let mut erin = ClientProcess::joined(rust_client(url, "erin", "gamma", &home), "gamma");
    let mut alice = ClientProcess::start(python_client(url, "alice", "alpha,beta", &home));
    wait_for_lines(&alice.stderr, &["joined alpha", "joined beta"]);
    wait_for_line(&bob.stderr, "alice joined alpha");
    wait_for_line(&carol.stderr, "alice joined beta");

    alice.say("to alpha, the current room");
    bob.expect_stdout("[alpha] alice: to alpha, the current room");
    alice.say("/msg beta to beta by name");
    carol.expect_stdout("[beta] alice: to beta by name");
    alice.say("/switch beta");
    alice.say("to beta, now the current room");
    carol.expect_stdout("[beta] alice: to beta, now the current room");
    bob.say("from bob in alpha");
    alice.expect_stdout("[alpha] bob: from bob in alpha");
    carol.say("from carol in beta");
    alice.expect_stdout("[beta] carol: from carol in beta");

    // A refused /join is reported, and the session goes on.
    alice.say("/join club");
    let refused = wait_for_line(&alice.stderr, "cannot join club");
    assert!(
        refused.last().unwrap().contains("PERMISSION_DENIED"),
        "{refused:?}"
    );
    alice.say("/msg alpha still here");
    bob.expect_stdout("[alpha] alice: still here");

    // A later /join on the same stream catches up from where alice was.
    alice.say("/join gamma");
    alice.say("/msg gamma back in gamma");
    alice.expect_stdout("[gamma] erin: said while alice was away");
    wait_for_lines(&alice.stderr, &["caught up on gamma", "joined gamma"]);
    erin.expect_stdout("[gamma] alice: back in gamma");
    erin.say("welcome back");
    alice.expect_stdout("[gamma] erin: welcome back");

    // /part leaves the current room (beta) for good; alpha, the first left, is current.
    alice.say("/part");
    wait_for_line(&carol.stderr, "alice left beta");
    wait_for_line(&alice.stderr, "left beta");
    alice.say("after leaving beta");
    bob.expect_stdout("[alpha] alice: after leaving beta");
    carol.say("alice is gone");

    // Each Rust member got exactly its room's messages; alice nothing of beta after it.
    for client in [bob, carol, erin] {
        let (status, stdout, stderr) = client.finish();
        assert!(status.success(), "{stderr:?}");
        assert!(stdout.is_empty(), "{stdout:?}");
    }
    let (status, stdout, stderr) = alice.finish();
    assert!(status.success(), "{stderr:?}");
    assert!(stdout.is_empty(), "{stdout:?}");
    let progress = std::fs::read_to_string(home.join("alice").join("progress.json")).unwrap();
    let progress: serde_json::Value = serde_json::from_str(&progress).unwrap();
    let rooms = progress["servers"][url].as_object().unwrap();
    let mut names: Vec<&str> = rooms.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["alpha", "gamma"], "beta is forgotten once left");
}

/// Receipts between two Python members: the reader's client says how far it got (its
/// stdout is a pipe: delivered, not read), the sender's `/receipts` shows it, and neither
/// prints a receipt or warns about one.
#[test]
fn python_receipts_say_a_message_was_delivered_and_are_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let mut alice =
        ClientProcess::joined(python_client(&server.url, "alice", "lobby", &home), "lobby");
    let bob = ClientProcess::joined(python_client(&server.url, "bob", "lobby", &home), "lobby");
    wait_for_line(&alice.stderr, "bob joined lobby");

    alice.say("did you get this?");
    bob.expect_stdout("[lobby] alice: did you get this?");
    let wanted = "receipts [lobby] \"did you get this?\": delivered to 1 of 1 (bob), read by 0";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        alice.say("/receipts");
        seen.extend(wait_for_line(&alice.stderr, "receipts [lobby]"));
        if seen.last().unwrap() == wanted {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{seen:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        !seen.iter().any(|line| line.starts_with("warning")),
        "{seen:?}"
    );
    for client in [alice, bob] {
        let (status, stdout, stderr) = client.finish();
        assert!(status.success(), "{stderr:?}");
        assert!(stdout.is_empty(), "a receipt printed: {stdout:?}");
        assert!(
            !stderr.iter().any(|line| line.starts_with("warning")),
            "{stderr:?}"
        );
    }
}

#[test]
fn a_member_leaving_makes_both_languages_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let mut alice =
        ClientProcess::joined(python_client(&server.url, "alice", "lobby", &home), "lobby");
    let mut bob = ClientProcess::joined(rust_client(&server.url, "bob", "lobby", &home), "lobby");
    let mut carol =
        ClientProcess::joined(python_client(&server.url, "carol", "lobby", &home), "lobby");
    wait_for_line(&alice.stderr, "carol joined lobby");
    wait_for_line(&bob.stderr, "carol joined lobby");
    alice.say("before bob leaves");
    bob.expect_stdout("[lobby] alice: before bob leaves");
    carol.expect_stdout("[lobby] alice: before bob leaves");

    bob.say("/leave");
    let (status, _, stderr) = bob.finish();
    assert!(status.success(), "{stderr:?}");
    wait_for_line(&alice.stderr, "bob left lobby");
    wait_for_line(&carol.stderr, "bob left lobby");
    // Both Python members now seal under new keys, and still read each other.
    alice.say("after bob left");
    carol.expect_stdout("[lobby] alice: after bob left");
    carol.say("me too");
    alice.expect_stdout("[lobby] carol: me too");

    // A Rust member joining now gets the new keys.
    let dave = ClientProcess::joined(rust_client(&server.url, "dave", "lobby", &home), "lobby");
    wait_for_line(&alice.stderr, "dave joined lobby");
    alice.say("hello dave");
    dave.expect_stdout("[lobby] alice: hello dave");
    for client in [alice, carol, dave] {
        assert!(client.finish().0.success());
    }
}

#[test]
fn members_of_both_languages_catch_up_on_what_they_missed() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let mut bob = ClientProcess::joined(rust_client(&server.url, "bob", "lobby", &home), "lobby");
    let alice = ClientProcess::joined(python_client(&server.url, "alice", "lobby", &home), "lobby");
    wait_for_line(&bob.stderr, "alice joined lobby");

    // End of input only disconnects the Python member: it stays a member.
    let (status, stdout, stderr) = alice.finish();
    assert!(status.success(), "{stderr:?}");
    assert!(stdout.is_empty(), "{stdout:?}");
    // The Rust member writes while it is away, and exits once the relay has them all.
    for text in ["one", "two", "three"] {
        bob.say(text);
    }
    let (status, stdout, stderr) = bob.finish();
    assert!(status.success(), "{stderr:?}");
    assert!(stdout.is_empty(), "{stdout:?}");
    assert!(
        !stderr.iter().any(|line| line.contains("alice left")),
        "{stderr:?}"
    );

    // The Python member comes back: all three, once, in order, then the catch-up ends.
    let mut alice = ClientProcess::start(python_client(&server.url, "alice", "lobby", &home));
    let before = wait_for_line(&alice.stderr, "caught up on lobby");
    assert!(
        !before.iter().any(|line| line.starts_with("warning")),
        "{before:?}"
    );
    for text in ["one", "two", "three"] {
        alice.expect_stdout(&format!("[lobby] bob: {text}"));
    }

    // Now the Rust member is away, and the Python member writes (what is typed before
    // it has joined waits for it).
    alice.say("four");
    alice.say("five");
    let (status, stdout, stderr) = alice.finish();
    assert!(status.success(), "{stderr:?}");
    assert!(stdout.is_empty(), "shown twice: {stdout:?}");
    let progress = std::fs::read_to_string(home.join("alice").join("progress.json")).unwrap();
    assert!(progress.contains(&server.url), "{progress}");

    let bob = ClientProcess::start(rust_client(&server.url, "bob", "lobby", &home));
    wait_for_line(&bob.stderr, "caught up on lobby");
    bob.expect_stdout("[lobby] alice: four");
    bob.expect_stdout("[lobby] alice: five");
    let (status, stdout, stderr) = bob.finish();
    assert!(status.success(), "{stderr:?}");
    assert!(stdout.is_empty(), "shown twice: {stdout:?}");
}

#[test]
fn python_members_read_a_burst_of_700_from_rust_once_in_order_live_and_after_being_away() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let faults = burst_to_a_busy_reader_and_an_away_one(&server.url, &home, "burst", python_client);
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

#[test]
fn a_python_session_replaced_by_another_one_exits_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let first = ClientProcess::joined(python_client(&server.url, "alice", "lobby", &home), "lobby");
    // The same user (same home, so the same keys) opens another session, in Rust.
    let second = ClientProcess::joined(rust_client(&server.url, "alice", "lobby", &home), "lobby");
    // Waited for before closing its input, which would end it cleanly.
    let mut stderr = wait_for_line(&first.stderr, "chat_client: error");
    let (status, _, rest) = first.finish();
    stderr.extend(rest);
    assert_one_line_error(
        "chat_client",
        status,
        &stderr.join("\n"),
        "opened another session",
    );
    assert!(second.finish().0.success());
}

#[test]
fn tampered_messages_are_refused_across_languages() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let address = server.url.trim_start_matches("http://");

    // Python tampers, Rust reads.
    let bob = ClientProcess::joined(rust_client(&server.url, "bob", "lobby", &home), "lobby");
    let status = Command::new(python())
        .arg(python_dir().join("tamper_send.py"))
        .args([address, "mallory", "lobby", "the genuine one"])
        .status()
        .unwrap();
    assert!(status.success());
    bob.expect_stdout("[lobby] mallory: the genuine one");
    // Flipped after signing: the signature check drops it before any decryption.
    let warnings = wait_for_line(&bob.stderr, "signature does not verify");
    assert!(warnings.last().unwrap().contains("mallory"), "{warnings:?}");

    // Rust tampers, Python reads.
    let carol = ClientProcess::joined(python_client(&server.url, "carol", "other", &home), "other");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use e2ee_chat::proto::client_frame::Kind;
        let mut mallory = common::RawClient::open_url(&server.url, "eve").await;
        mallory.join("other").await;
        let mut keys = common::room_keys_from_directory(
            &mut mallory,
            "other",
            "eve",
            e2ee_chat::client::RotationPolicy::default(),
        )
        .await;
        let distribution = keys
            .distribute(&e2ee_chat::client::KeyHandout::Everyone)
            .unwrap()
            .remove(0);
        mallory.send(2, Kind::DistributeKey(distribution)).await;
        let (_, mut tampered) = keys.seal_text("the genuine one").unwrap();
        let sealed = tampered.sealed.as_mut().unwrap();
        let mut ciphertext = sealed.ciphertext.to_vec();
        ciphertext[0] ^= 0x01;
        sealed.ciphertext = ciphertext.into();
        mallory.send(3, Kind::Send(tampered)).await;
        let (_, genuine) = keys.seal_text("the genuine one").unwrap();
        mallory.send(4, Kind::Send(genuine)).await;
        for id in 2..=4 {
            mallory.answer(id).await;
        }
    });
    carol.expect_stdout("[other] eve: the genuine one");
    let warnings = wait_for_line(&carol.stderr, "signature does not verify");
    let warning = warnings.last().unwrap();
    assert!(
        warning.starts_with("warning:") && warning.contains("eve"),
        "{warnings:?}"
    );
    assert!(bob.finish().0.success());
    assert!(carol.finish().0.success());
}

#[test]
fn the_python_clients_own_checks_of_the_spec_pass() {
    // Byte strings, safety numbers and home files, checked against docs/PROTOCOL.md's
    // examples from the Python side.
    let output = Command::new(python())
        .args(["-m", "unittest", "-q", "test_chat_client"])
        .current_dir(python_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Out of order and far ahead, Rust sending and Python reading: a relay (here, a sender
/// sending its frames out of order) delivers a chain's messages 3, 1, 2; then one 25,001
/// messages past the next one expected, further than a reader follows; then, under a new
/// sender key, one more.
#[test]
fn python_reads_messages_out_of_order_and_drops_one_too_far_ahead() {
    reads_out_of_order_and_drops_one_too_far_ahead(python_client);
}

/// The same scenario read by the Rust client, which checks the sending side of the test.
#[test]
fn rust_reads_messages_out_of_order_and_drops_one_too_far_ahead() {
    reads_out_of_order_and_drops_one_too_far_ahead(rust_client);
}

/// Python sending, Rust reading: the same scenario from `out_of_order_send.py`.
#[test]
fn rust_reads_python_messages_out_of_order_and_drops_one_too_far_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let carol = ClientProcess::joined(rust_client(&server.url, "carol", "lobby", &home), "lobby");
    let status = Command::new(python())
        .arg(python_dir().join("out_of_order_send.py"))
        .args([server.url.trim_start_matches("http://"), "dave", "lobby"])
        .status()
        .unwrap();
    assert!(status.success());
    for text in ["three", "one", "two", "under a new key"] {
        carol.expect_stdout(&format!("[lobby] dave: {text}"));
    }
    let warnings = wait_for_line(&carol.stderr, "ahead");
    assert!(warnings.last().unwrap().contains("dave"), "{warnings:?}");
    let (status, stdout, _) = carol.finish();
    assert!(status.success());
    assert!(stdout.is_empty(), "{stdout:?}");
}

fn reads_out_of_order_and_drops_one_too_far_ahead(reader: fn(&str, &str, &str, &Path) -> Command) {
    use e2ee_chat::client::{KeyHandout, RotationPolicy};
    use e2ee_chat::crypto::group::MAX_FORWARD_JUMP;
    use e2ee_chat::proto::client_frame::Kind;

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let carol = ClientProcess::joined(reader(&server.url, "carol", "lobby", &home), "lobby");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut dave = common::RawClient::open_url(&server.url, "dave").await;
        dave.join("lobby").await;
        let never = RotationPolicy {
            messages: u32::MAX,
            age_ms: u64::MAX,
        };
        let mut keys = common::room_keys_from_directory(&mut dave, "lobby", "dave", never).await;
        let mut request_id = 1;
        let mut send = |kind| {
            request_id += 1;
            (request_id, kind)
        };
        let mut frames = Vec::new();
        for distribution in keys.distribute(&KeyHandout::Everyone).unwrap() {
            frames.push(send(Kind::DistributeKey(distribution)));
        }
        let sealed: Vec<_> = ["one", "two", "three"]
            .into_iter()
            .map(|text| keys.seal_text(text).unwrap().1)
            .collect();
        for index in [2, 0, 1] {
            frames.push(send(Kind::Send(sealed[index].clone())));
        }
        // The next one expected is the fourth: this one is MAX_FORWARD_JUMP + 1 past it.
        for _ in 0..=MAX_FORWARD_JUMP {
            keys.seal_text("never sent").unwrap();
        }
        frames.push(send(Kind::Send(keys.seal_text("far ahead").unwrap().1)));
        let handout = keys.rotate().unwrap();
        for distribution in keys.distribute(&handout).unwrap() {
            frames.push(send(Kind::DistributeKey(distribution)));
        }
        frames.push(send(Kind::Send(
            keys.seal_text("under a new key").unwrap().1,
        )));
        for (id, kind) in frames {
            dave.send(id, kind).await;
            dave.answer(id).await;
        }
    });
    for text in ["three", "one", "two", "under a new key"] {
        carol.expect_stdout(&format!("[lobby] dave: {text}"));
    }
    let warnings = wait_for_line(&carol.stderr, "ahead");
    let warning = warnings.last().unwrap();
    assert!(
        warning.starts_with("warning:") && warning.contains("dave"),
        "{warnings:?}"
    );
    let (status, stdout, _) = carol.finish();
    assert!(status.success());
    assert!(stdout.is_empty(), "{stdout:?}");
}

#[test]
fn the_first_relay_down_a_python_client_chats_through_the_next_and_keeps_its_progress() {
    let dir = tempfile::tempdir().unwrap();
    the_first_relay_down_the_client_chats_through_the_next(dir.path(), python_client);
}

#[test]
fn a_relay_killed_mid_conversation_python_clients_fail_over_and_lose_nothing() {
    a_relay_killed_mid_conversation_the_clients_fail_over(python_client);
}

#[test]
fn a_bad_url_anywhere_in_a_python_clients_list_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let relays = format!("{NOBODY_LISTENS},ftp://127.0.0.1:5555");
    let (status, _, stderr) = run_client(
        &mut python_client(&relays, "alice", "lobby", dir.path()),
        "",
    );
    assert_one_line_error(
        "chat_client",
        status,
        &stderr,
        "invalid server URL \"ftp://127.0.0.1:5555\"",
    );
    assert!(!stderr.contains("cannot use"), "{stderr}");
}
