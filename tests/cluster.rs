//! Three relays serving one chat (`chat-server --database postgres://... --nats URL`),
//! end to end: the real binary and real clients, against the throwaway PostgreSQL of
//! `scripts/start-postgres.sh` and NATS of `scripts/start-nats.sh`. The members of a
//! room are spread over the relays; under load, a relay killed, NATS restarted or
//! PostgreSQL gone away cost them a reconnect or a delay, never a message, and every
//! member shows every message once, in order.
mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::nats::Nats;
use common::postgres::{cut_off, fresh_database, let_back};
use common::process::{
    ClientProcess, ServerProcess, message_line, next_lines, rust_client, sequence_faults,
    wait_for_line,
};
use common::{RawClient, unknown_key_message};
use e2ee_chat::proto::{SealedMessage, SendMessage, client_frame, server_frame};
use e2ee_chat::store::Store;

/// Three relays on one database and one NATS.
struct Cluster {
    relays: Vec<ServerProcess>,
    _nats_url: String,
}

impl Cluster {
    fn start(database: &str, nats: &Nats, dir: &Path) -> Self {
        let relays = ["a", "b", "c"]
            .iter()
            .map(|name| {
                ServerProcess::start_with_args(
                    &dir.join(name),
                    &[
                        OsStr::new("--database"),
                        OsStr::new(database),
                        OsStr::new("--nats"),
                        OsStr::new(nats.url()),
                    ],
                )
            })
            .collect();
        Self {
            relays,
            _nats_url: nats.url().to_owned(),
        }
    }

    /// The relays' URLs for a client, starting with relay `first`'s.
    fn urls_from(&self, first: usize) -> String {
        (0..self.relays.len())
            .map(|n| self.relays[(first + n) % self.relays.len()].url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What happens to the deployment half-way through alice's messages.
enum Fault {
    /// Her relay is killed with SIGKILL.
    KillRelay,
    /// NATS stops, and comes back after a few messages.
    RestartNats,
    /// Someone on NATS rings forged doorbells: one that says the room goes far beyond
    /// what is stored, and thousands for rooms that do not exist.
    ForgedDoorbells,
}

/// Publishes `payloads` on `subject` of the NATS server at `url`, as any client of it
/// can, and waits until the server has them all.
fn publish_on_nats(url: &str, subject: &str, payloads: &[String]) {
    use std::io::{BufRead, BufReader, Write};
    let address = url.trim_start_matches("nats://");
    let stream = std::net::TcpStream::connect(address).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO"), "{line}");
    let mut out = std::io::BufWriter::new(stream);
    out.write_all(b"CONNECT {\"verbose\":false}\r\n").unwrap();
    for payload in payloads {
        write!(out, "PUB {subject} {}\r\n{payload}\r\n", payload.len()).unwrap();
    }
    out.write_all(b"PING\r\n").unwrap();
    out.flush().unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "PONG");
}

/// carol on relay c, bob on b and alice on a join one room, and all three talk at
/// once: 30 messages each, `fault` striking after the 10th of each. Every one shows
/// every message of the two others once, each sender's in order.
fn chat_through(fault: Fault) {
    let database = fresh_database();
    let mut nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(&database, &nats, dir.path());
    let home = dir.path().join("home");
    let room = "lobby";
    let names = ["alice", "bob", "carol"];
    let mut members: Vec<ClientProcess> = names
        .iter()
        .enumerate()
        .rev()
        .map(|(relay, name)| {
            ClientProcess::joined(
                rust_client(&cluster.urls_from(relay), name, room, &home),
                room,
            )
        })
        .collect();
    members.reverse();
    let text = |name: &str, n: usize| format!("{name} says {n}");
    let said = |name: &str| -> Vec<String> {
        (0..30)
            .map(|n| message_line(room, name, &text(name, n)))
            .collect()
    };
    let say = |members: &mut Vec<ClientProcess>, range: std::ops::Range<usize>| {
        for n in range {
            for (member, name) in members.iter_mut().zip(names) {
                member.say(&text(name, n));
            }
        }
    };
    say(&mut members, 0..10);
    // Through the other relays, as through one.
    let mut shown: Vec<Vec<String>> = members.iter().map(|m| next_lines(&m.stdout, 20)).collect();
    say(&mut members, 10..20);
    match fault {
        Fault::KillRelay => {
            cluster.relays[0].kill();
            say(&mut members, 20..30);
            let reconnected = format!("reconnected to {}", cluster.relays[1].url);
            wait_for_line(&members[0].stderr, &reconnected);
        }
        Fault::RestartNats => {
            nats.stop();
            say(&mut members, 20..25);
            nats.restart();
            say(&mut members, 25..30);
        }
        Fault::ForgedDoorbells => {
            let mut forged = vec![
                r#"{"relay":"forger","room":"lobby","up_to":18446744073709551615,"changed":true}"#
                    .to_owned(),
            ];
            forged.extend(
                (0..5000).map(|n| {
                    format!(r#"{{"relay":"forger","room":"no room {n}","changed":false}}"#)
                }),
            );
            forged.push("not even json".to_owned());
            publish_on_nats(nats.url(), "chat.v2.relays.doorbells", &forged);
            say(&mut members, 20..30);
        }
    }
    for (at, member) in members.iter().enumerate() {
        // Until the last line of each of the others, in whichever order they come.
        let mut awaited: Vec<String> = (0..names.len())
            .filter(|other| *other != at)
            .map(|other| said(names[other]).pop().unwrap())
            .collect();
        while !awaited.is_empty() {
            let line = next_lines(&member.stdout, 1).remove(0);
            awaited.retain(|last| *last != line);
            shown[at].push(line);
        }
    }
    for ((member, mut shown), name) in members.into_iter().zip(shown).zip(names) {
        let (status, rest, stderr) = member.finish();
        assert!(status.success(), "{name}: {stderr:?}");
        shown.extend(rest);
        for other in names.iter().filter(|other| **other != name) {
            let prefix = message_line(room, other, "");
            let from_other: Vec<String> = shown
                .iter()
                .filter(|line| line.starts_with(&prefix))
                .cloned()
                .collect();
            assert_eq!(
                sequence_faults(&from_other, &said(other)),
                None,
                "{name} of {other}: {from_other:?}"
            );
        }
    }
}

#[test]
fn members_on_three_relays_see_every_message_once_in_order_when_one_relay_is_killed() {
    chat_through(Fault::KillRelay);
}

#[test]
fn members_on_three_relays_see_every_message_once_in_order_when_nats_restarts() {
    chat_through(Fault::RestartNats);
}

#[test]
fn members_on_three_relays_see_every_message_once_in_order_whatever_doorbells_are_forged() {
    chat_through(Fault::ForgedDoorbells);
}

#[test]
fn a_second_session_of_a_user_on_another_relay_ends_the_first_with_aborted() {
    let database = fresh_database();
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&database, &nats, dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut first = RawClient::open_url(&cluster.relays[0].url, "alice").await;
        first.join("lobby").await;
        let _second = RawClient::open_url(&cluster.relays[1].url, "alice").await;
        let ended = first.final_status().await;
        assert_eq!(ended.code(), tonic::Code::Aborted, "{ended:?}");
    });
}

/// A message of `user`'s under a key nobody holds, the `iteration`th of its chain.
fn message(iteration: u32) -> client_frame::Kind {
    client_frame::Kind::Send(SendMessage {
        room: "lobby".into(),
        sealed: Some(SealedMessage {
            iteration,
            ..unknown_key_message()
        }),
    })
}

#[test]
fn with_postgres_gone_senders_get_unavailable_and_the_relays_recover_by_themselves() {
    let url = fresh_database();
    let database = url.rsplit_once('/').unwrap().1.to_owned();
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&url, &nats, dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = (&cluster.relays[0], &cluster.relays[1]);
    runtime.block_on(async {
        let mut alice = RawClient::open_url(&a.url, "alice").await;
        alice.join("lobby").await;
        let mut bob = RawClient::open_url(&b.url, "bob").await;
        bob.join("lobby").await;
        alice.send(2, message(0)).await;
        assert!(matches!(
            alice.answer(2).await.kind,
            Some(server_frame::Kind::Ack(_))
        ));
        let delivered = bob
            .next_of(|kind| matches!(kind, server_frame::Kind::Message(_)))
            .await;
        assert!(
            matches!(delivered.kind, Some(server_frame::Kind::Message(_))),
            "{delivered:?}"
        );

        let cutting = database.clone();
        tokio::task::spawn_blocking(move || cut_off(&cutting))
            .await
            .unwrap();
        alice.send(3, message(1)).await;
        match alice.answer(3).await.kind {
            Some(server_frame::Kind::Rejection(rejection)) => {
                assert_eq!(
                    rejection.code,
                    tonic::Code::Unavailable as i32,
                    "{rejection:?}"
                );
            }
            other => panic!("expected UNAVAILABLE, never an acknowledgement: got {other:?}"),
        }
        let back = database.clone();
        tokio::task::spawn_blocking(move || let_back(&back))
            .await
            .unwrap();
    });
    // Nobody restarts them: each takes its claim again, and at its first write (a
    // session opened is one) ends its sessions once and reads its rooms anew, so that
    // its clients catch up from what is stored.
    for relay in &cluster.relays {
        wait_for_line(&relay.stderr, "holding the claim on the database again");
        let url = relay.url.clone();
        runtime.block_on(async {
            // A relay whose writes failed while the database was away recovered
            // already, and keeps this session.
            let mut probe = RawClient::open_url(&url, "dave").await;
            let patience = std::time::Duration::from_secs(3);
            if let Ok(ended) = tokio::time::timeout(patience, probe.final_status()).await {
                assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
            }
        });
        wait_for_line(&relay.stderr, "the store answers again; accepting changes");
    }
    runtime.block_on(async {
        let mut alice = RawClient::open_url(&a.url, "alice").await;
        alice.join("lobby").await;
        let mut bob = RawClient::open_url(&b.url, "bob").await;
        bob.join("lobby").await;
        alice.send(3, message(1)).await;
        let answer = alice.answer(3).await.kind;
        assert!(
            matches!(answer, Some(server_frame::Kind::Ack(_))),
            "{answer:?}"
        );
        // Across relays again, through the database and NATS.
        let delivered = bob
            .next_of(|kind| matches!(kind, server_frame::Kind::Message(_)))
            .await;
        assert!(
            matches!(delivered.kind, Some(server_frame::Kind::Message(ref m)) if m.sender == "alice"),
            "{delivered:?}"
        );
    });
    // Stored are the two acknowledged messages, nothing of the refused attempt.
    let rooms = e2ee_chat::store::PostgresStore::open(&url, None)
        .unwrap()
        .rooms()
        .unwrap();
    assert_eq!(rooms[0].messages, 2, "{rooms:?}");
}
