//! `chat-client`'s full-screen interface, the real binary in a pseudo-terminal: the test
//! types keys and reads back the screen through a terminal emulator, while line-mode
//! clients talk with it through a real relay.

mod common;

use std::time::Duration;

use common::process::{ClientProcess, PROCESS_PATIENCE, ServerProcess, rust_client, wait_for_line};
use common::pty::{TerminalClient, show};

/// The terminal the full-screen client runs in: wide enough for the room list, the
/// scrollback and the member list side by side.
const COLUMNS: u16 = 100;
const ROWS: u16 = 30;

/// The room list's columns (its last one, the separator, left out).
const ROOM_LIST_WIDTH: u16 = 17;

/// How long quitting may take: the client exits once the relay acknowledged everything.
const QUIT_PATIENCE: Duration = Duration::from_secs(5);

/// `user`'s full-screen client in `rooms` (a comma list), with the same keys, home and
/// relay as the line-mode clients of the harness.
fn full_screen_client(
    url: &str,
    user: &str,
    rooms: &str,
    home: &std::path::Path,
) -> TerminalClient {
    let mut command = rust_client(url, user, rooms, home);
    command.arg("--tui");
    TerminalClient::start(&command, COLUMNS, ROWS)
}

/// The rooms listed on the left, top to bottom, with their unread counts.
fn room_list(screen: &vt100::Screen) -> Vec<String> {
    screen
        .rows(0, ROOM_LIST_WIDTH)
        .map(|row| row.trim_end().to_owned())
        .take_while(|row| !row.is_empty())
        .collect()
}

/// The status bar (the row above the input line).
fn status_bar(screen: &vt100::Screen) -> String {
    screen.rows(0, COLUMNS).nth(usize::from(ROWS) - 2).unwrap()
}

/// The input line (the bottom row).
fn input_line(screen: &vt100::Screen) -> String {
    screen.rows(0, COLUMNS).nth(usize::from(ROWS) - 1).unwrap()
}

/// Whether a row shows `text` right after a time of day, `HH:MM `.
fn shows_timed(screen: &vt100::Screen, text: &str) -> bool {
    screen.rows(0, COLUMNS).any(|row| {
        row.match_indices(text).any(|(at, _)| {
            let before: Vec<char> = row[..at].chars().rev().take(6).collect();
            // reversed: " MM:HH"
            before.len() == 6
                && before[0] == ' '
                && before[3] == ':'
                && [1, 2, 4, 5].iter().all(|&i| before[i].is_ascii_digit())
        })
    })
}

/// Quits with `keys` and checks that the client exits 0 and gives the terminal back: off
/// the alternate screen, in the modes it was in before.
fn quit_and_check_the_terminal(client: &mut TerminalClient, keys: &str) {
    client.type_keys(keys);
    let status = client.wait_for_exit(QUIT_PATIENCE);
    let screen = client.screen();
    assert!(status.success(), "{status}; the screen:\n{}", show(&screen));
    assert!(
        !screen.alternate_screen(),
        "the client left the terminal on the alternate screen:\n{}",
        show(&screen)
    );
    let (before, after) = client.terminal_modes();
    assert!(before.is_some());
    assert_eq!(after, before, "the terminal's modes were not restored");
}

/// A line-mode client ended cleanly having printed exactly `expected` (after the lines
/// the test read already), and no receipt, as text or as a warning.
fn finish_quietly(client: ClientProcess, who: &str, expected: &[&str]) {
    let (status, stdout, stderr) = client.finish();
    assert!(status.success(), "{who}: {stderr:?}");
    assert_eq!(stdout, expected, "{who}'s stdout");
    assert!(
        !stderr.iter().any(|line| line.contains("cannot show")),
        "{who}: {stderr:?}"
    );
    assert!(
        stderr
            .iter()
            .filter(|line| line.contains("receipt"))
            .all(|line| line.starts_with("receipts [")),
        "{who} said something of a receipt unasked: {stderr:?}"
    );
}

#[test]
fn full_screen_chats_in_two_rooms_shows_receipts_and_gives_the_terminal_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let mut bob = ClientProcess::joined(rust_client(&server.url, "bob", "alpha", &home), "alpha");
    let mut carol = ClientProcess::joined(rust_client(&server.url, "carol", "beta", &home), "beta");
    let mut alice = full_screen_client(&server.url, "alice", "alpha,beta", &home);

    // Both rooms listed, the first shown, connected.
    alice.wait_for_screen("both rooms, connected", PROCESS_PATIENCE, |screen| {
        room_list(screen) == ["alpha", "beta"]
            && status_bar(screen).contains("alice · alpha · connected")
            && input_line(screen).starts_with("[alpha] > ")
    });
    wait_for_line(&bob.stderr, "alice joined alpha");
    wait_for_line(&carol.stderr, "alice joined beta");

    // Enter sends the line to the room shown; bob's receipt shows on alice's line.
    alice.type_keys("hello from the tui\r");
    bob.expect_stdout("[alpha] alice: hello from the tui");
    alice.wait_for_screen("alice's line with its time", PROCESS_PATIENCE, |screen| {
        shows_timed(screen, "alice: hello from the tui")
    });
    alice.wait_for_text("alice: hello from the tui ✓✓ 1/1", PROCESS_PATIENCE);

    bob.say("hi alice");
    alice.wait_for_screen("bob's line with its time", PROCESS_PATIENCE, |screen| {
        shows_timed(screen, "bob: hi alice")
    });

    // A text in the room not shown counts as unread; it is received, not read.
    carol.say("psst");
    let screen = alice.wait_for_screen("beta's unread count", PROCESS_PATIENCE, |screen| {
        room_list(screen) == ["alpha", "beta (1)"]
    });
    assert!(!screen.contents().contains("psst"), "{}", show(&screen));
    let line = carol.wait_for_receipt("beta", "psst", "delivered to 1 of 1 (alice)");
    assert!(line.ends_with("read by 0"), "{line}");

    // Ctrl-N shows beta: carol's text, no unread count any more, and it is read.
    alice.type_keys("\x0e");
    let screen = alice.wait_for_screen("beta shown", PROCESS_PATIENCE, |screen| {
        status_bar(screen).contains("alice · beta · connected")
            && input_line(screen).starts_with("[beta] > ")
            && shows_timed(screen, "carol: psst")
    });
    assert_eq!(room_list(&screen), ["alpha", "beta"], "{}", show(&screen));
    assert!(!screen.contents().contains("beta (1)"), "{}", show(&screen));
    carol.wait_for_receipt("beta", "psst", "read by 1 (alice)");

    quit_and_check_the_terminal(&mut alice, "/quit\r");
    finish_quietly(bob, "bob", &[]);
    finish_quietly(carol, "carol", &[]);
}

#[test]
fn a_line_client_learns_what_the_full_screen_read_and_prints_no_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let mut bob = ClientProcess::joined(rust_client(&server.url, "bob", "lobby", &home), "lobby");
    let mut alice = full_screen_client(&server.url, "alice", "lobby", &home);
    alice.wait_for_screen("lobby, connected", PROCESS_PATIENCE, |screen| {
        room_list(screen) == ["lobby"] && status_bar(screen).contains("alice · lobby · connected")
    });
    wait_for_line(&bob.stderr, "alice joined lobby");

    bob.say("seen?");
    alice.wait_for_screen("bob's line with its time", PROCESS_PATIENCE, |screen| {
        shows_timed(screen, "bob: seen?")
    });
    alice.type_keys("yes\r");
    bob.expect_stdout("[lobby] alice: yes");
    bob.wait_for_receipt(
        "lobby",
        "seen?",
        "delivered to 1 of 1 (alice), read by 1 (alice)",
    );
    alice.wait_for_text("alice: yes ✓✓ 1/1", PROCESS_PATIENCE);

    // Ctrl-C quits too.
    quit_and_check_the_terminal(&mut alice, "\x03");
    finish_quietly(bob, "bob", &[]);
}

#[test]
fn a_long_multi_line_paste_is_one_message_and_ctrl_c_still_quits() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let bob = ClientProcess::joined(rust_client(&server.url, "bob", "lobby", &home), "lobby");
    let mut alice = full_screen_client(&server.url, "alice", "lobby", &home);
    alice.wait_for_screen("lobby, connected", PROCESS_PATIENCE, |screen| {
        status_bar(screen).contains("alice · lobby · connected")
    });
    // Pasted in one piece (bracketed paste), 3,000 characters over three lines: more
    // than the 1 KiB the terminal is read by at a time, and no line break sends it.
    let body = "p".repeat(1_000);
    alice.type_keys(&format!("\x1b[200~{body}\n{body}\r\n{body}\x1b[201~\r"));
    bob.expect_stdout(&format!("[lobby] alice: {body} {body} {body}"));
    quit_and_check_the_terminal(&mut alice, "\x03");
    finish_quietly(bob, "bob", &[]);
}
