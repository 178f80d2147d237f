//! Client-side crypto costs: sealing and opening messages, signing and verifying them,
//! wrapping and unwrapping sender keys, generating keys. Run with `cargo bench --bench crypto`; docs/BENCHMARKS.md
//! compares the numbers with `openssl speed` on the same machine.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use e2ee_chat::crypto::{EncryptionKey, OutboundSenderKey, SenderKey, SigningKey};

fn seal_and_open(c: &mut Criterion) {
    let recipient = EncryptionKey::generate(2048).unwrap();
    let mut outbound = OutboundSenderKey::generate().unwrap();
    let wrapped = outbound
        .wrap_for(recipient.public_key(), "lobby", "alice", "bob")
        .unwrap();
    let inbound =
        SenderKey::unwrap(&recipient, &wrapped, "lobby", "alice", "bob", outbound.id()).unwrap();

    let mut group = c.benchmark_group("aes-256-gcm");
    for size in [64usize, 1024, 16 * 1024] {
        let plaintext = vec![0x61u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("seal", size),
            &plaintext,
            |b, plaintext| {
                b.iter(|| {
                    outbound
                        .seal("lobby", "alice", black_box(plaintext))
                        .unwrap()
                })
            },
        );
        let sealed = outbound.seal("lobby", "alice", &plaintext).unwrap();
        group.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, sealed| {
            b.iter(|| inbound.open("lobby", "alice", black_box(sealed)).unwrap())
        });
    }
    group.finish();
}

fn wrap_and_unwrap(c: &mut Criterion) {
    let mut group = c.benchmark_group("rsa-oaep-sha256");
    for bits in [2048usize, 3072] {
        let recipient = EncryptionKey::generate(bits).unwrap();
        let outbound = OutboundSenderKey::generate().unwrap();
        group.bench_function(BenchmarkId::new("wrap", bits), |b| {
            b.iter(|| {
                outbound
                    .wrap_for(recipient.public_key(), "lobby", "alice", "bob")
                    .unwrap()
            })
        });
        let wrapped = outbound
            .wrap_for(recipient.public_key(), "lobby", "alice", "bob")
            .unwrap();
        group.bench_function(BenchmarkId::new("unwrap", bits), |b| {
            b.iter(|| {
                SenderKey::unwrap(
                    &recipient,
                    black_box(&wrapped),
                    "lobby",
                    "alice",
                    "bob",
                    outbound.id(),
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

fn sign_and_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("rsa-pss-sha256");
    // What a sender signs for a short message: the tag, names, counters and ciphertext.
    let message = vec![0x61u8; 200];
    for bits in [2048usize, 3072] {
        let key = SigningKey::generate(bits).unwrap();
        group.bench_function(BenchmarkId::new("sign", bits), |b| {
            b.iter(|| key.sign(black_box(&message)).unwrap())
        });
        let signature = key.sign(&message).unwrap();
        group.bench_function(BenchmarkId::new("verify", bits), |b| {
            b.iter(|| {
                key.public_key()
                    .verify(black_box(&message), &signature)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn generate_identity(c: &mut Criterion) {
    let mut group = c.benchmark_group("rsa-keygen");
    group.sample_size(10);
    for bits in [2048usize, 3072] {
        group.bench_function(BenchmarkId::from_parameter(bits), |b| {
            b.iter(|| EncryptionKey::generate(bits).unwrap())
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    seal_and_open,
    sign_and_verify,
    wrap_and_unwrap,
    generate_identity
);
criterion_main!(benches);
