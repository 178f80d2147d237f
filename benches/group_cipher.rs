//! Protocol v2's group cipher against Matrix's Megolm (vodozemac), in one run: sealing
//! and opening a 256-byte message. Both sign every message with Ed25519; Megolm encrypts
//! with AES-256-CBC and HMAC-SHA256, ours with AES-256-GCM under a key used once.
//! Run with `cargo bench --bench group_cipher`; docs/BENCHMARKS.md reports the ratios.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use e2ee_chat::crypto::group::{MessageContext, OwnSenderKey, PeerSenderKey};
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

criterion_group!(benches, seal, open);
criterion_main!(benches);
