//! What a relay (or anyone between it and the client) sends a client, applied to the
//! client's end-to-end state of a room (`client::RoomKeys`) as its session does.
//!
//! bob is in a room with alice. The input is a program: each step delivers one of
//! alice's genuine sender keys or messages (as made by alice's own `RoomKeys`), a
//! mutated copy of one, an arbitrary `ServerFrame`, or a membership change. Whatever
//! the order or the damage: no panic; every message bob shows is one alice sealed,
//! with her name; and none is shown twice (replays are refused).
#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use e2ee_chat::client::{RoomEvent, RoomKeys};
use e2ee_chat::crypto::{Identity, VerifiedIdentity};
use e2ee_chat::proto::{
    MessageDelivery, SenderKeyDelivery, ServerFrame, server_frame,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

const ROOM: &str = "#room";

/// alice's side, made once: her identity, and what she sent bob under two keys; and
/// bob's state with alice a member, before and after taking her first key (the RSA
/// unwrap costs milliseconds: runs start from either, cloned).
struct Alice {
    verified: VerifiedIdentity,
    fresh: RoomKeys,
    with_first_key: RoomKeys,
    keys: Vec<SenderKeyDelivery>,
    messages: Vec<MessageDelivery>,
    texts: HashSet<String>,
}

static ALICE: LazyLock<Alice> = LazyLock::new(|| {
    let alice = Arc::new(Identity::generate(2048).unwrap());
    let bob = Arc::new(Identity::generate(2048).unwrap());
    let public = alice.publish("alice").unwrap();
    let mut room = RoomKeys::new(ROOM, "alice", alice).unwrap();
    let bob_public = VerifiedIdentity::verify(&bob.publish("bob").unwrap()).unwrap();
    room.insert_member(bob_public, true);
    let (mut keys, mut messages, mut texts) = (Vec::new(), Vec::new(), HashSet::new());
    let mut seq = 0;
    for round in 0..2 {
        let distributions = if round == 0 {
            room.distribute_to(&["bob"]).unwrap()
        } else {
            room.rotate().unwrap()
        };
        for distribution in distributions {
            for wrapped in distribution.keys.into_iter().filter(|k| k.recipient == "bob") {
                seq += 1;
                keys.push(SenderKeyDelivery {
                    room: ROOM.into(),
                    sender: "alice".into(),
                    key_id: distribution.key_id,
                    wrapped_key: wrapped.wrapped_key,
                    signature: wrapped.signature,
                    seq,
                });
            }
        }
        for n in 0..3 {
            let text = format!("message {n} under key {round}");
            let (_, send) = room.seal_text(&text).unwrap();
            seq += 1;
            messages.push(MessageDelivery {
                room: ROOM.into(),
                sender: "alice".into(),
                sealed: send.sealed,
                seq,
            });
            texts.insert(text);
        }
    }
    let mut fresh = RoomKeys::new(ROOM, "bob", bob).unwrap();
    fresh.insert_member(VerifiedIdentity::verify(&public).unwrap(), true);
    let mut with_first_key = fresh.clone();
    let taken = with_first_key.accept_sender_key(keys[0].clone());
    assert!(taken.is_empty(), "{taken:?}");
    Alice {
        verified: VerifiedIdentity::verify(&public).unwrap(),
        fresh,
        with_first_key,
        keys,
        messages,
        texts,
    }
});

/// Reads the program's next byte.
fn next(input: &mut &[u8]) -> Option<u8> {
    let (&byte, rest) = input.split_first()?;
    *input = rest;
    Some(byte)
}

/// Reads a length byte and that many bytes.
fn chunk<'a>(input: &mut &'a [u8]) -> &'a [u8] {
    let len = usize::from(next(input).unwrap_or(0)).min(input.len());
    let (taken, rest) = input.split_at(len);
    *input = rest;
    taken
}

/// Overwrites bytes of `field` at a position the program picks.
fn damage(field: &mut bytes::Bytes, input: &mut &[u8]) {
    let mut changed = field.to_vec();
    if changed.is_empty() {
        return;
    }
    let at = usize::from(next(input).unwrap_or(0)) % changed.len();
    changed[at] ^= next(input).unwrap_or(1).max(1);
    *field = changed.into();
}

fuzz_target!(|data: &[u8]| {
    let alice = &*ALICE;
    let Some((&start, mut input)) = data.split_first() else {
        return;
    };
    let mut bob = if start % 2 == 0 {
        alice.fresh.clone()
    } else {
        alice.with_first_key.clone()
    };
    let alice_verified = &alice.verified;
    let mut shown = HashSet::new();
    // Each change of membership makes bob sign a new key for the others (an RSA
    // signature, milliseconds): a few per run find what they can find.
    let mut changes = 0;
    let mut steps = 0;
    while let Some(op) = next(&mut input) {
        steps += 1;
        if steps > 32 {
            break;
        }
        let pick = usize::from(next(&mut input).unwrap_or(0));
        let op = match op % 8 {
            5..=7 if changes >= 2 => op % 5,
            5..=7 => {
                changes += 1;
                op % 8
            }
            other => other,
        };
        let events = match op {
            0 => bob.accept_sender_key(alice.keys[pick % alice.keys.len()].clone()),
            1 => bob.open(alice.messages[pick % alice.messages.len()].clone()),
            2 => {
                let mut key = alice.keys[pick % alice.keys.len()].clone();
                match next(&mut input).unwrap_or(0) % 4 {
                    0 => damage(&mut key.wrapped_key, &mut input),
                    1 => damage(&mut key.signature, &mut input),
                    2 => key.key_id ^= 1 << (pick % 64),
                    _ => key.sender = String::from_utf8_lossy(chunk(&mut input)).into_owned(),
                }
                bob.accept_sender_key(key)
            }
            3 => {
                let mut message = alice.messages[pick % alice.messages.len()].clone();
                let sealed = message.sealed.as_mut().unwrap();
                match next(&mut input).unwrap_or(0) % 5 {
                    0 => damage(&mut sealed.ciphertext, &mut input),
                    1 => damage(&mut sealed.nonce, &mut input),
                    2 => damage(&mut sealed.signature, &mut input),
                    3 => sealed.counter ^= 1 << (pick % 64),
                    _ => message.seq = u64::from(next(&mut input).unwrap_or(0)),
                }
                bob.open(message)
            }
            4 => match ServerFrame::decode(chunk(&mut input)) {
                Ok(frame) => apply(&mut bob, frame),
                Err(_) => Vec::new(),
            },
            5 => bob.member_left("alice").map(|(_, events)| events).unwrap_or_default(),
            6 => {
                // alice "joins again": a relay faking a leave and a join.
                let _ = bob.member_joined(alice_verified.clone(), true);
                Vec::new()
            }
            _ => bob.remove_member("alice"),
        };
        for event in events {
            if let RoomEvent::Message { sender, text, .. } = event {
                assert_eq!(sender, "alice");
                assert!(alice.texts.contains(&text), "a forged message was shown: {text:?}");
                assert!(shown.insert(text.clone()), "{text:?} was shown twice");
            }
        }
    }
});

/// An arbitrary frame, applied as the client's session applies it.
fn apply(bob: &mut RoomKeys, frame: ServerFrame) -> Vec<RoomEvent> {
    use server_frame::Kind;
    match frame.kind {
        Some(Kind::SenderKey(key)) => bob.accept_sender_key(key),
        Some(Kind::Message(message)) => bob.open(message),
        Some(Kind::MemberJoined(joined)) => {
            if let Some(member) = joined.member
                && let Ok(verified) = bob.vet(&member)
            {
                let _ = bob.member_joined(verified, true);
            }
            Vec::new()
        }
        Some(Kind::MemberLeft(left)) => bob
            .member_left(&left.user)
            .map(|(_, events)| events)
            .unwrap_or_default(),
        Some(Kind::History(history)) => {
            let former: Vec<VerifiedIdentity> = history
                .former_members
                .iter()
                .filter_map(|member| bob.vet(member).ok())
                .collect();
            // History is shown again, not received: check it, do not count it.
            for event in bob.open_history(history.entries, &former) {
                if let RoomEvent::Message { sender, text, .. } = event {
                    assert_eq!(sender, "alice");
                    assert!(ALICE.texts.contains(&text), "a forged message in history: {text:?}");
                }
            }
            Vec::new()
        }
        _ => Vec::new(),
    }
}
