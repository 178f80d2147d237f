//! A soak through the real binaries: `chat-client`s chatting in one room while the
//! `chat-server` process is killed (SIGKILL) and started again on the same address and
//! data directory, over and over. The clients come back by themselves; nothing they had
//! acknowledged may be lost, shown twice or shown out of order.
mod common;

use std::time::Duration;

use common::process::{
    ClientProcess, ServerProcess, catch_up, message_line, numbered_text, rust_client,
    sequence_faults, wait_for_line,
};

const ROOM: &str = "soak";
const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
/// dave's place in `USERS`: his client is suspended for a while (`DAVE_SUSPENDED`).
const DAVE: usize = 3;

/// Messages each client sends, one per round.
const ROUNDS: usize = 150;

/// Between rounds: a steady pace, as people typing (or scripts posting), not a burst.
const PACE: Duration = Duration::from_millis(50);

/// The rounds after which the relay is killed and started again. Some kills come long
/// after the last one (about 1.5 s: the clients are back and settled), some soon after
/// it (0.3 to 0.5 s: the clients are logging in again, sending again what was pending,
/// catching up); the last one right after the last round.
const KILLED_AFTER: [usize; 9] = [20, 30, 55, 62, 90, 99, 120, 126, 149];

/// dave's client is suspended (SIGSTOP) over these rounds, through several restarts:
/// when it runs again, it has hundreds of the others' messages to catch up on (more than
/// the client applies in one batch) and a hundred of its own to send again.
const DAVE_SUSPENDED: std::ops::Range<usize> = 20..120;

/// What `user` says in `round`.
fn said(user: &str, round: usize) -> String {
    numbered_text(user, round, 0)
}

#[test]
fn clients_chatting_through_repeated_relay_crashes_get_every_message_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"));
    let home = dir.path().join("home");
    let url = server.url.clone();

    // Everyone is a member, and has everyone's key, before anyone speaks.
    let mut clients: Vec<ClientProcess> = Vec::new();
    for user in USERS {
        let client = ClientProcess::joined(rust_client(&url, user, ROOM, &home), ROOM);
        for earlier in &clients {
            wait_for_line(&earlier.stderr, &format!("{user} joined {ROOM}"));
        }
        clients.push(client);
    }

    // Each kill comes right after a round was typed, so messages are in flight (sent,
    // not acknowledged, some being committed) when the relay dies.
    for round in 0..ROUNDS {
        if round == DAVE_SUSPENDED.start {
            clients[DAVE].pause();
        } else if round == DAVE_SUSPENDED.end {
            clients[DAVE].resume();
        }
        for (client, user) in clients.iter_mut().zip(USERS) {
            client.say(&said(user, round));
        }
        if KILLED_AFTER.contains(&round) {
            server.kill_and_restart();
        }
        std::thread::sleep(PACE);
    }

    // End of input: each client exits 0 only once the relay has acknowledged (stored)
    // every one of its messages, reconnecting and sending again as it needs to.
    for client in &mut clients {
        client.close_stdin();
    }
    let mut shown = Vec::new();
    let mut faults = Vec::new();
    for (client, user) in clients.into_iter().zip(USERS) {
        let (status, stdout, stderr) = client.finish();
        assert!(status.success(), "{user}: {status:?}; stderr: {stderr:#?}");
        assert!(
            stderr.iter().any(|line| line.contains("reconnected")),
            "{user} never lost its connection to the relay: {stderr:#?}"
        );
        // A dropped or undecryptable message, a refusal, something not delivered.
        let troubled = stderr
            .into_iter()
            .filter(|line| line.starts_with("warning") || line.contains("failed to send"));
        faults.extend(troubled.map(|line| format!("{user} said: {line}")));
        shown.push(stdout);
    }
    // A client that ended may not have received the others' last messages yet: it is
    // still a member, and its next run catches up on them, where the last one ended.
    for (shown, user) in shown.iter_mut().zip(USERS) {
        shown.extend(catch_up(rust_client(&url, user, ROOM, &home), ROOM));
    }

    for (shown, reader) in shown.iter().zip(USERS) {
        for sender in USERS.iter().filter(|sender| **sender != reader) {
            let prefix = message_line(ROOM, sender, "");
            let from_sender: Vec<String> = shown
                .iter()
                .filter(|line| line.starts_with(&prefix))
                .cloned()
                .collect();
            let expected: Vec<String> = (0..ROUNDS)
                .map(|round| message_line(ROOM, sender, &said(sender, round)))
                .collect();
            if let Some(fault) = sequence_faults(&from_sender, &expected) {
                faults.push(format!("{reader} from {sender}: {fault}"));
            }
        }
        let others: Vec<&String> = shown
            .iter()
            .filter(|line| {
                !USERS.iter().any(|sender| {
                    *sender != reader && line.starts_with(&message_line(ROOM, sender, ""))
                })
            })
            .collect();
        if !others.is_empty() {
            faults.push(format!(
                "{reader} printed what nobody else said: {others:?}"
            ));
        }
    }
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}
