//! The end-to-end cryptography, all of it client-side.
//!
//! - [`Identity`]: a user's two long-term RSA key pairs, one job each:
//!   [`SigningKey`] / [`PublicSigningKey`] sign with RSA-PSS (SHA-256) what vouches for
//!   the user (its prekeys, its key distributions, invitations), and
//!   [`EncryptionKey`] / [`PublicEncryptionKey`] are RSA-OAEP (SHA-256) keys.
//!   [`VerifiedIdentity`] is someone else's, checked; [`Fingerprint`] and
//!   [`SafetyNumber`] are what people compare.
//! - [`Prekey`] / [`SignedPrekey`]: a device's medium-term RSA-OAEP key that sender keys
//!   are wrapped under, signed by its identity and replaced on a schedule.
//! - [`group`]: the group cipher: sender keys that ratchet (a chain of message keys,
//!   each used once and erased), every message signed with the sender key's own
//!   Ed25519 key; handed out wrapped for each recipient's prekey, signed once.
//! - [`Invitation`] / [`Removal`]: a private room's membership as its owner signs it.
//! - [`binding`]: the exact bytes each key, message and signature is bound to (the
//!   AES-GCM associated data, the OAEP label, what is signed), specified in
//!   docs/PROTOCOL.md.
//!
//! The relay only verifies identities and login signatures; it never holds a private
//! key.
//! All randomness comes from the operating system's RNG.

pub mod binding;
mod encryption;
pub mod group;
mod identity;
mod membership;
pub mod merkle;
mod prekey;
mod rsa_keys;
mod signing;

pub use encryption::{EncryptionKey, PublicEncryptionKey};
pub use identity::{Fingerprint, Identity, SafetyNumber, VerifiedIdentity};
pub use membership::{Invitation, Removal};
pub use prekey::{Prekey, SignedPrekey};
pub use rsa_keys::{ALLOWED_KEY_BITS, DEFAULT_KEY_BITS};
pub use signing::{PublicSigningKey, SigningKey};

/// Why a cryptographic operation failed. Deliberately vague where detail would help an
/// attacker: a failed unwrap or open never says why.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("RSA key size must be one of 2048, 3072 or 4096 bits, not {0}")]
    UnsupportedKeyBits(usize),
    #[error("the public key is not a DER SubjectPublicKeyInfo RSA key of 2048 to 4096 bits")]
    BadPublicKey,
    #[error("the private key is not a PKCS#8 PEM RSA key of 2048 to 4096 bits")]
    BadPrivateKey,
    #[error("the sender key's Ed25519 public key is not usable (no point, or of small order)")]
    BadSigningKey,
    #[error("could not wrap the key: {0}")]
    Wrap(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the signing key and the encryption key must be two different keys")]
    SameKeyTwice,
    #[error("could not sign: {0}")]
    Sign(String),
    #[error("the wrapped sender key could not be unwrapped")]
    Unwrap,
    #[error("the message failed authentication: tampered, corrupted, or not for this key")]
    Open,
    #[error("AES-GCM refused to seal the message")]
    Seal,
    #[error("the sender key has sealed its maximum number of messages and must be rotated")]
    KeyExhausted,
    #[error("the message was opened before, or is older than the key it names")]
    AlreadyOpened,
    #[error("the message is {jump} messages ahead of the last one seen, too far to follow")]
    TooFarAhead { jump: u32 },
    #[error("the operating system's random number generator failed: {0}")]
    Rng(String),
}

/// The operating system's RNG, for the crates that take one explicitly.
fn os_rng() -> getrandom::rand_core::UnwrapErr<getrandom::SysRng> {
    getrandom::rand_core::UnwrapErr(getrandom::SysRng)
}
