//! The command-line contract of `chat-server` and `chat-client`, with the real binaries.

mod common;

use std::process::Command;

use common::process::{
    ClientProcess, NOBODY_LISTENS, ServerProcess, Takeover,
    a_relay_killed_mid_conversation_the_clients_fail_over, assert_one_line_error, fail_over,
    run_client, rust_client, the_first_relay_down_the_client_chats_through_the_next, wait_for_line,
};

#[test]
fn three_people_chat_through_the_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let mut alice =
        ClientProcess::joined(rust_client(&server.url, "alice", "lobby", &home), "lobby");
    let mut bob = ClientProcess::joined(rust_client(&server.url, "bob", "lobby", &home), "lobby");
    wait_for_line(&alice.stderr, "bob joined lobby");
    let mut carol =
        ClientProcess::joined(rust_client(&server.url, "carol", "lobby", &home), "lobby");

    alice.say("hello, this is alice");
    bob.expect_stdout("[lobby] alice: hello, this is alice");
    carol.expect_stdout("[lobby] alice: hello, this is alice");
    carol.say("carol here: 'quotes', \"doubles\" and ünïcödé");
    alice.expect_stdout("[lobby] carol: carol here: 'quotes', \"doubles\" and ünïcödé");
    bob.expect_stdout("[lobby] carol: carol here: 'quotes', \"doubles\" and ünïcödé");
    bob.say("//slash is not a command");
    bob.say("/who");
    wait_for_line(&bob.stderr, "members of lobby: you, alice, carol");
    alice.expect_stdout("[lobby] bob: /slash is not a command");

    // Only /leave ends a membership (end of input just disconnects).
    bob.say("/leave");
    let (status, stdout, stderr) = bob.finish();
    assert!(status.success(), "{stderr:?}");
    assert!(stdout.is_empty(), "{stdout:?}");
    wait_for_line(&alice.stderr, "bob left lobby");
    let (status, stdout, _) = alice.finish();
    assert!(status.success());
    assert!(stdout.is_empty(), "{stdout:?}");
    let (status, stdout, _) = carol.finish();
    assert!(status.success());
    assert_eq!(stdout, ["[lobby] bob: /slash is not a command"]);
}

#[test]
fn piped_input_is_sent_and_acknowledged_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let bob = ClientProcess::joined(rust_client(&server.url, "bob", "lobby", &home), "lobby");
    let input: String = (1..=20).map(|n| format!("line {n}\n")).collect();
    let (status, stdout, stderr) = run_client(
        &mut rust_client(&server.url, "alice", "lobby", &home),
        &input,
    );
    assert!(status.success(), "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("generating 2048-bit RSA keys"), "{stderr}");
    assert!(stderr.contains("registered alice"), "{stderr}");
    assert!(stderr.contains("pinned the keys of bob"), "{stderr}");
    assert!(stderr.contains("joined lobby"), "{stderr}");
    for n in 1..=20 {
        bob.expect_stdout(&format!("[lobby] alice: line {n}"));
    }
    use std::os::unix::fs::PermissionsExt;
    for file in ["signing.pem", "encryption.pem", "contacts.json"] {
        let path = home.join("alice").join(file);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600,
            "{file}"
        );
    }

    // The second run reuses the key instead of generating one.
    let (status, _, stderr) = run_client(
        &mut rust_client(&server.url, "alice", "lobby", &home),
        "again\n",
    );
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("generating"), "{stderr}");
    assert!(!stderr.contains("registered"), "{stderr}");
    assert!(!stderr.contains("pinned"), "{stderr}");
    bob.expect_stdout("[lobby] alice: again");
}

#[test]
fn clear_errors_for_a_bad_url_an_unreachable_server_and_a_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();

    let (status, _, stderr) = run_client(&mut rust_client("not a url", "alice", "lobby", home), "");
    assert_one_line_error("chat-client", status, &stderr, "invalid server URL");

    let (status, _, stderr) = run_client(
        &mut rust_client("ftp://127.0.0.1:5555", "alice", "lobby", home),
        "",
    );
    assert_one_line_error("chat-client", status, &stderr, "unsupported scheme");

    // Port 1 on loopback: nothing listens there.
    let (status, _, stderr) = run_client(
        &mut rust_client("http://127.0.0.1:1", "alice", "lobby", home),
        "",
    );
    assert_one_line_error(
        "chat-client",
        status,
        &stderr,
        "cannot connect to http://127.0.0.1:1",
    );

    std::fs::create_dir_all(home.join("mallory")).unwrap();
    for file in ["signing.pem", "encryption.pem"] {
        let key = home.join("mallory").join(file);
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nnot base64\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (status, _, stderr) = run_client(
        &mut rust_client("http://127.0.0.1:1", "mallory", "lobby", home),
        "",
    );
    assert_one_line_error("chat-client", status, &stderr, "cannot read identity key");

    std::fs::create_dir_all(home.join("dir").join("signing.pem")).unwrap();
    let (status, _, stderr) = run_client(
        &mut rust_client("http://127.0.0.1:1", "dir", "lobby", home),
        "",
    );
    assert_one_line_error("chat-client", status, &stderr, "cannot read identity key");

    let (status, _, stderr) = run_client(
        &mut rust_client("http://127.0.0.1:1", "bad/name", "lobby", home),
        "",
    );
    assert_one_line_error("chat-client", status, &stderr, "user name");
}

#[test]
fn server_refuses_an_unusable_data_dir_and_a_taken_address() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: cannot use data directory"),
        "{stderr}"
    );

    let server = ServerProcess::start(&dir.path().join("data"));
    let taken = server.url.trim_start_matches("http://");
    let output = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", taken, "--data-dir"])
        .arg(dir.path().join("data2"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("error: cannot listen on {taken}")),
        "{stderr}"
    );
}

#[test]
fn sigterm_shuts_the_server_down_and_tells_the_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"));
    let client = ClientProcess::joined(
        rust_client(&server.url, "alice", "lobby", &dir.path().join("home")),
        "lobby",
    );
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    wait_for_line(&server.stderr, "stopped");
    // The client says why, and tries to come back; with nothing left to deliver, the
    // end of its input ends it normally.
    let told = wait_for_line(&client.stderr, "shutting down");
    assert!(
        told.last().unwrap().contains("lost the connection"),
        "{told:?}"
    );
    let (status, _, stderr) = client.finish();
    assert!(status.success(), "{stderr:?}");
}

#[test]
fn help_documents_the_flags() {
    let server = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&server.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--max-frame-bytes",
        "--outbound-queue",
        "--token-ttl-secs",
        "--max-connections-per-ip",
        "--handshake-timeout-ms",
        "--idle-timeout-ms",
        "--request-timeout-ms",
        "--max-unauthenticated-per-connection",
        "--max-unauthenticated-per-ip",
        "--max-unauthenticated",
        "--max-unauthenticated-streams",
        "CHAT_LISTEN",
        "CHAT_MAX_CONNECTIONS_PER_IP",
    ] {
        assert!(help.contains(flag), "chat-server --help lacks {flag}");
    }
    let client = Command::new(env!("CARGO_BIN_EXE_chat-client"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&client.stdout);
    for flag in [
        "--server",
        "--user",
        "--room",
        "--home",
        "--key-bits",
        "--private",
        "/invite NAME",
        "/trust NAME",
        "/verify NAME",
        "fingerprint",
        "CHAT_USER",
        "[ROOM] SENDER: TEXT",
        "--server <URL[,URL...]>",
        "The first URL names the deployment",
    ] {
        assert!(help.contains(flag), "chat-client --help lacks {flag}");
    }
}

#[test]
fn chat_bench_checks_every_delivery_and_ends_with_the_summary_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args([
            "--clients",
            "6",
            "--rooms",
            "2",
            "--messages",
            "20",
            "--size",
            "64",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout.lines().last().unwrap();
    let fields: Vec<(&str, &str)> = summary
        .split(' ')
        .map(|field| field.split_once('=').unwrap())
        .collect();
    let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "delivered",
            "msgs_per_sec",
            "p50_ms",
            "p99_ms",
            "baseline_msgs_per_sec",
            "ratio"
        ]
    );
    // 2 rooms of 3: each of the 6 clients gets 20 messages from each of 2 others.
    assert_eq!(fields[0].1, "240");
    for (name, value) in &fields[1..] {
        let number: f64 = value.parse().unwrap();
        assert!(number > 0.0, "{name}={value}");
    }
}

#[test]
fn a_second_session_of_a_user_takes_over_and_the_first_exits() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let first = ClientProcess::joined(rust_client(&server.url, "alice", "lobby", &home), "lobby");
    let second = ClientProcess::joined(rust_client(&server.url, "alice", "lobby", &home), "lobby");
    // The first one does not fight back: it exits with one error line.
    let said = wait_for_line(&first.stderr, "another session");
    let errors: Vec<&String> = said.iter().filter(|line| line.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{said:?}");
    assert!(errors[0].starts_with("chat-client: error: "), "{said:?}");
    let (status, _, _) = first.finish();
    assert!(!status.success());
    let (status, _, stderr) = second.finish();
    assert!(status.success(), "{stderr:?}");
}

/// The client ended non-zero, its last line saying that one message was not delivered.
fn assert_one_not_delivered(status: std::process::ExitStatus, stderr: &[String]) {
    assert!(!status.success());
    let last = stderr.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.contains("1 message(s) were not delivered"),
        "{stderr:?}"
    );
}

#[test]
fn one_session_chats_in_several_rooms_with_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let bob = ClientProcess::joined(rust_client(&server.url, "bob", "alpha", &home), "alpha");
    let mut carol = ClientProcess::joined(rust_client(&server.url, "carol", "beta", &home), "beta");
    let mut alice = ClientProcess::joined(
        rust_client(&server.url, "alice", "alpha,beta", &home),
        "alpha",
    );
    wait_for_line(&alice.stderr, "joined beta");
    wait_for_line(&carol.stderr, "alice joined beta");

    // A plain line goes to the first room; /msg to the one it names.
    alice.say("to alpha");
    bob.expect_stdout("[alpha] alice: to alpha");
    alice.say("/msg beta to beta");
    carol.expect_stdout("[beta] alice: to beta");
    carol.say("hi alice");
    alice.expect_stdout("[beta] carol: hi alice");
    // bob's client received it and said so; nobody printed or warned about a receipt.
    let line = alice.wait_for_receipt("alpha", "to alpha", "delivered to 1 of 1 (bob)");
    assert!(line.ends_with("read by 0"), "{line}");

    alice.say("/switch beta");
    wait_for_line(&alice.stderr, "current room: beta");
    alice.say("now to beta");
    carol.expect_stdout("[beta] alice: now to beta");
    alice.say("/who");
    wait_for_line(&alice.stderr, "members of beta: you, carol");
    alice.say("/who alpha");
    wait_for_line(&alice.stderr, "members of alpha: you, bob");

    // A room joined later, on the same session; one left for good.
    alice.say("/join gamma");
    wait_for_line(
        &alice.stderr,
        "joined gamma as alice (you are alone in gamma)",
    );
    alice.say("/part alpha");
    wait_for_line(&alice.stderr, "left alpha");
    wait_for_line(&bob.stderr, "alice left alpha");
    alice.say("/msg alpha too late");
    wait_for_line(&alice.stderr, "you are not in alpha in this session");
    alice.say("/rooms");
    wait_for_line(&alice.stderr, "your rooms: beta (current), gamma");

    let (status, stdout, stderr) = alice.finish();
    // The line for a room left was not sent: the exit status says so.
    assert_one_not_delivered(status, &stderr);
    assert!(
        stdout.is_empty(),
        "nothing but carol's text, read above: {stdout:?}"
    );
    assert!(
        !stderr.iter().any(|line| line.contains("cannot show")),
        "{stderr:?}"
    );

    // Coming back: each room catches up from where it was; the room left is gone.
    carol.say("while you were away");
    let alice = ClientProcess::joined(
        rust_client(&server.url, "alice", "beta,gamma", &home),
        "beta",
    );
    alice.expect_stdout("[beta] carol: while you were away");
    let progress = std::fs::read_to_string(home.join("alice").join("progress.json")).unwrap();
    assert!(!progress.contains("alpha"), "{progress}");
    assert!(progress.contains("gamma"), "{progress}");
    assert!(alice.finish().0.success());

    for client in [bob, carol] {
        let (status, stdout, stderr) = client.finish();
        assert!(status.success(), "{stderr:?}");
        assert!(
            stdout.iter().all(|line| line.contains(" alice: ")),
            "only alice's texts are shown: {stdout:?}"
        );
        assert!(
            !stderr.iter().any(|line| line.contains("cannot show")),
            "{stderr:?}"
        );
    }
}

#[test]
fn no_receipts_keeps_what_was_received_and_read_to_oneself() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let mut quiet = rust_client(&server.url, "bob", "lobby", &home);
    quiet.arg("--no-receipts");
    let mut bob = ClientProcess::joined(quiet, "lobby");
    let carol = ClientProcess::joined(rust_client(&server.url, "carol", "lobby", &home), "lobby");
    let mut alice =
        ClientProcess::joined(rust_client(&server.url, "alice", "lobby", &home), "lobby");
    wait_for_line(&bob.stderr, "alice joined lobby");
    wait_for_line(&carol.stderr, "alice joined lobby");
    alice.say("who got this?");
    bob.expect_stdout("[lobby] alice: who got this?");
    carol.expect_stdout("[lobby] alice: who got this?");
    let line = alice.wait_for_receipt("lobby", "who got this?", "delivered to 1 of 2");
    assert!(line.contains("(carol)"), "{line}");
    // Well past the receipts' batching interval, bob's client still said nothing.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let line = alice.wait_for_receipt("lobby", "who got this?", "delivered to 1 of 2");
    assert!(!line.contains("bob"), "{line}");
    // bob still sees the others' receipts for his own messages.
    bob.say("and this?");
    bob.wait_for_receipt("lobby", "and this?", "delivered to 2 of 2 (alice, carol)");
    for client in [alice, bob, carol] {
        assert!(client.finish().0.success());
    }
}

#[test]
fn a_script_that_joins_then_switches_writes_in_the_room_it_joined() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let first = ClientProcess::joined(rust_client(&server.url, "bob", "first", &home), "first");
    let mut second =
        ClientProcess::joined(rust_client(&server.url, "dave", "second", &home), "second");
    // Each line acts only once the one before is done: the switch finds the room joined,
    // and the line after /part cannot go to the room being left.
    let input = "/join second\n/switch second\nhello second\n/part\nback in first\n/part\n";
    let (status, stdout, stderr) = run_client(
        &mut rust_client(&server.url, "alice", "first", &home),
        input,
    );
    assert!(status.success(), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("current room: second"), "{stderr}");
    second.expect_stdout("[second] alice: hello second");
    wait_for_line(&second.stderr, "alice left second");
    first.expect_stdout("[first] alice: back in first");
    second.close_stdin();
    let (_, stdout, _) = second.finish();
    assert!(stdout.is_empty(), "only its room's line: {stdout:?}");
    assert!(first.finish().0.success());
}

#[test]
fn removed_from_the_current_room_a_line_is_sent_nowhere_until_a_switch() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let mut owner = rust_client(&server.url, "alice", "#team", &home);
    owner.arg("--private");
    let mut alice = ClientProcess::joined(owner, "#team");
    let bob = ClientProcess::joined(rust_client(&server.url, "bob", "open", &home), "open");
    // carol registers, then the owner invites her.
    let registered =
        ClientProcess::joined(rust_client(&server.url, "carol", "open", &home), "open");
    assert!(registered.finish().0.success());
    alice.say("/invite carol");
    wait_for_line(&alice.stderr, "invited carol to #team");
    let mut carol = ClientProcess::joined(
        rust_client(&server.url, "carol", "#team,open", &home),
        "#team",
    );
    // Joined to both (the relay may answer the two joins in either order).
    carol.say("/rooms");
    let rooms = wait_for_line(&carol.stderr, "your rooms:");
    assert!(
        rooms.last().unwrap().ends_with("#team (current), open"),
        "{rooms:?}"
    );
    alice.say("/kick carol");
    wait_for_line(&carol.stderr, "the owner removed you from #team");
    wait_for_line(&carol.stderr, "#team was your current room");
    carol.say("meant for the team");
    wait_for_line(&carol.stderr, "you have no current room");
    carol.say("/switch open");
    carol.say("now for open");
    bob.expect_stdout("[open] carol: now for open");
    let (status, _, stderr) = carol.finish();
    // The line that went nowhere counts as not delivered.
    assert_one_not_delivered(status, &stderr);
    let (_, stdout, _) = bob.finish();
    assert!(
        stdout.is_empty(),
        "bob never saw the team's line: {stdout:?}"
    );
    assert!(alice.finish().0.success());
}

#[test]
fn the_first_relay_down_the_client_chats_through_the_next_and_keeps_its_progress() {
    let dir = tempfile::tempdir().unwrap();
    let server = the_first_relay_down_the_client_chats_through_the_next(dir.path(), rust_client);

    // Every command that talks to a relay takes the list.
    let (status, stdout, stderr) = run_client(
        Command::new(env!("CARGO_BIN_EXE_chat-client")).args([
            "--server",
            NOBODY_LISTENS,
            "--server",
            &server.url,
            "--user",
            "alice",
            "--home",
            dir.path().join("home").to_str().unwrap(),
            "trust",
            "bob",
        ]),
        "",
    );
    assert!(status.success(), "{stderr}");
    assert!(stdout.starts_with("now trusting bob"), "{stdout}");
}

#[test]
fn a_relay_killed_mid_conversation_the_clients_fail_over_and_lose_nothing() {
    a_relay_killed_mid_conversation_the_clients_fail_over(rust_client);
}

#[test]
fn a_relay_standing_by_stops_cleanly_when_asked_to() {
    let dir = tempfile::tempdir().unwrap();
    let first = ServerProcess::start(&dir.path().join("data"));
    let standby = first.standby_on(&common::process::free_loopback_addr());
    let (status, said) = standby.terminate();
    assert!(status.success(), "{said:?}");
    assert!(
        said.iter()
            .any(|line| line.contains("stopped while standing by")),
        "{said:?}"
    );
}

#[test]
fn a_relay_standing_by_takes_over_from_a_killed_one_and_the_clients_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first = ServerProcess::start(&dir.path().join("data"));
    fail_over(first, dir.path(), rust_client, Takeover::StandingBy);
}

#[test]
fn a_bad_url_anywhere_in_the_list_is_one_error_line_before_any_relay_is_tried() {
    let dir = tempfile::tempdir().unwrap();
    for (relays, named) in [
        (
            format!("{NOBODY_LISTENS},ftp://127.0.0.1:5555"),
            "\"ftp://127.0.0.1:5555\"",
        ),
        (format!("{NOBODY_LISTENS},,{NOBODY_LISTENS}"), "\"\""),
    ] {
        let (status, _, stderr) =
            run_client(&mut rust_client(&relays, "alice", "lobby", dir.path()), "");
        assert_one_line_error(
            "chat-client",
            status,
            &stderr,
            &format!("invalid server URL {named}"),
        );
        assert!(!stderr.contains("cannot use"), "{stderr}");
        assert!(!stderr.contains("generating"), "no key was made: {stderr}");
    }
}
