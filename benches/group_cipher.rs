//! Protocol v2's group cipher against Matrix's Megolm (vodozemac), in one run: sealing
//! and opening a 256-byte message. Both sign every message with Ed25519; Megolm encrypts
//! with AES-256-CBC and HMAC-SHA256, ours with AES-256-GCM under a key used once.
//! Run with `cargo bench --bench group_cipher`; docs/BENCHMARKS.md reports the ratios.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use e2ee_chat::crypto::group::distribution::{Recipient, SignedDistribution};
use e2ee_chat::crypto::group::{MessageContext, OwnSenderKey, PeerSenderKey};
use e2ee_chat::crypto::{Identity, Prekey};
use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig};

const CONTEXT: MessageContext<'static> = MessageContext {
    room: "lobby",
    sender: "alice",
    device: 1,
};

const MESSAGE_LEN: usize = 256;

fn seal(c: &mut Criterion) {
    let plaintext = vec![0x61u8; MESSAGE_LEN];
    let mut group = c.benchmark_group("seal-256B");
    let mut ours = OwnSenderKey::generate().unwrap();
    group.bench_function("ours", |b| {
        b.iter(|| ours.seal(CONTEXT, black_box(&plaintext)).unwrap())
    });
    let mut megolm = GroupSession::new(SessionConfig::version_1());
    group.bench_function("megolm", |b| {
        b.iter(|| megolm.encrypt(black_box(&plaintext)))
    });
    group.finish();
}

fn open(c: &mut Criterion) {
    let plaintext = vec![0x61u8; MESSAGE_LEN];
    let mut group = c.benchmark_group("open-256B");

    // Each message is opened once, in the order sealed, as a member reads a room.
    let mut ours = OwnSenderKey::generate().unwrap();
    let mut peer = PeerSenderKey::new(&ours.distribution()).unwrap();
    group.bench_function("ours", |b| {
        b.iter_batched(
            || ours.seal(CONTEXT, &plaintext).unwrap(),
            |message| peer.open(CONTEXT, &message).unwrap(),
            BatchSize::SmallInput,
        )
    });

    let mut megolm = GroupSession::new(SessionConfig::version_1());
    let mut inbound = InboundGroupSession::new(&megolm.session_key(), SessionConfig::version_1());
    group.bench_function("megolm", |b| {
        b.iter_batched(
            || megolm.encrypt(&plaintext),
            |message| inbound.decrypt(&message).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// A rotation in a room of 100: a fresh sender key, its chain key wrapped for the 99
/// others' prekeys and signed once, at 3072 bits. (Every recipient has the same prekey
/// here: a wrap costs the same whoever it is for, and 99 keys would take minutes to make.)
fn rotate(c: &mut Criterion) {
    const OTHERS: usize = 99;
    let identity = Identity::generate(3072).unwrap();
    let prekey = Prekey::generate(3072, 0).unwrap();
    let names: Vec<String> = (0..OTHERS).map(|n| format!("member{n}")).collect();
    let recipients: Vec<Recipient<'_>> = names
        .iter()
        .map(|name| Recipient {
            user: name,
            device: 1,
            prekey_id: prekey.id(),
            prekey: prekey.key().public_key(),
        })
        .collect();
    let rotate = || {
        let key = OwnSenderKey::generate().unwrap();
        SignedDistribution::seal(
            &identity,
            "lobby",
            "alice",
            1,
            &key.distribution(),
            &recipients,
        )
        .unwrap()
    };
    let sample = rotate();
    let stored: usize = sample.signature.len()
        + 32
        + sample
            .copies
            .iter()
            .map(|copy| copy.recipient.len() + 4 + 8 + copy.wrapped.len())
            .sum::<usize>();
    let delivered = sample.delivered_copy(0).unwrap();
    let per_recipient =
        delivered.signature.len() + 32 + delivered.copy.wrapped.len() + 32 * delivered.path.len();
    eprintln!(
        "rotation in a room of {}: about {stored} bytes of keys and signature stored; each \
         recipient receives about {per_recipient} ({} path hashes)",
        OTHERS + 1,
        delivered.path.len()
    );
    let mut group = c.benchmark_group("rotate-100-members-3072");
    group.sample_size(20);
    group.bench_function("ours", |b| b.iter(rotate));
    group.finish();
}

criterion_group!(benches, seal, open, rotate);
criterion_main!(benches);
