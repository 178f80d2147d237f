//! Client-side crypto costs: sealing and opening messages, signing and verifying them,
//! wrapping and unwrapping sender keys, generating keys. Run with `cargo bench --bench crypto`; docs/BENCHMARKS.md
//! compares the numbers with `openssl speed` on the same machine.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use e2ee_chat::crypto::group::distribution::{Recipient, SignedDistribution};
use e2ee_chat::crypto::group::{MessageContext, OwnSenderKey, PeerSenderKey};
use e2ee_chat::crypto::{EncryptionKey, Identity, Prekey, SigningKey, VerifiedIdentity};

const CONTEXT: MessageContext<'static> = MessageContext {
    room: "lobby",
    sender: "alice",
    device: 1,
};

/// The group cipher per message: a ratchet step, AES-256-GCM and an Ed25519 signature to
/// seal; the signature check, a ratchet step and AES-256-GCM to open.
fn seal_and_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("group-cipher");
    for size in [64usize, 1024, 16 * 1024] {
        let plaintext = vec![0x61u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        let mut own = OwnSenderKey::generate().unwrap();
        group.bench_with_input(
            BenchmarkId::new("seal", size),
            &plaintext,
            |b, plaintext| b.iter(|| own.seal(CONTEXT, black_box(plaintext)).unwrap()),
        );
        let mut own = OwnSenderKey::generate().unwrap();
        let mut peer = PeerSenderKey::new(&own.distribution()).unwrap();
        group.bench_with_input(
            BenchmarkId::new("open", size),
            &plaintext,
            |b, plaintext| {
                b.iter_batched(
                    || own.seal(CONTEXT, plaintext).unwrap(),
                    |message| peer.open(CONTEXT, black_box(&message)).unwrap(),
                    BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
}

/// Handing a sender key to one recipient: wrapping its chain key for the recipient's
/// prekey (RSA-OAEP) and signing the distribution (RSA-PSS); then, on the recipient's
/// side, checking the signature and unwrapping.
fn wrap_and_unwrap(c: &mut Criterion) {
    let mut group = c.benchmark_group("sender-key-to-one");
    for bits in [2048usize, 3072] {
        let alice = Identity::generate(bits).unwrap();
        let alice_public = VerifiedIdentity::verify(&alice.publish("alice").unwrap()).unwrap();
        let prekey = Prekey::generate(bits, 0).unwrap();
        let recipient = [Recipient {
            user: "bob",
            device: 1,
            prekey_id: prekey.id(),
            prekey: prekey.key().public_key(),
        }];
        let key = OwnSenderKey::generate().unwrap().distribution();
        group.bench_function(BenchmarkId::new("wrap-and-sign", bits), |b| {
            b.iter(|| {
                SignedDistribution::seal(&alice, "lobby", "alice", 1, &key, &recipient).unwrap()
            })
        });
        let sealed =
            SignedDistribution::seal(&alice, "lobby", "alice", 1, &key, &recipient).unwrap();
        let delivered = sealed.delivered_copy(0).unwrap();
        group.bench_function(BenchmarkId::new("verify-and-unwrap", bits), |b| {
            b.iter(|| {
                black_box(&delivered)
                    .open(&alice_public, "bob", 1, &prekey)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn sign_and_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("rsa-pss-sha256");
    // What an identity signs: a prekey, a key distribution, an invitation (a few hundred
    // bytes at most).
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
