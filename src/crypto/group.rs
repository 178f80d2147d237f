//! Protocol v2's group cipher: sender keys that ratchet, as libsignal's do
//! (`sender_keys.rs`, `group_cipher.rs`), each with an Ed25519 key of its own that signs
//! every message, so that no message costs an RSA operation.
//!
//! A sender key is a chain key and the iteration it is at. For iteration `i`:
//!
//! - `seed_i = HMAC-SHA256(chain_i, 0x01)` and `chain_(i+1) = HMAC-SHA256(chain_i, 0x02)`;
//! - `key_i || nonce_i = HKDF-SHA256(salt: none, ikm: seed_i, info: "chat.v2/message-key")`,
//!   44 bytes: the AES-256-GCM key of message `i` and its 96-bit nonce.
//!
//! Each message key seals exactly one message and is then erased, so a nonce derived with
//! its key is never used twice under it. The chain only moves forward and a chain key is
//! erased once stepped past, by the sender and by every recipient: whoever steals the
//! state later cannot go back to messages already sealed or opened (forward secrecy
//! within the chain; rotation and prekeys bound the rest).
//!
//! A recipient checks a message's Ed25519 signature before it derives or decrypts
//! anything. Messages may arrive out of order: the keys of the iterations jumped over are
//! kept, at most [`MAX_SKIPPED_KEYS`] per sender key (the oldest go first), and a message
//! more than [`MAX_FORWARD_JUMP`] iterations ahead is refused without deriving anything.
//! What is signed and authenticated is specified in [`binding`](super::binding).

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey as Ed25519SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

pub mod distribution;
pub mod wire;

use super::CryptoError;
use super::binding::{group_message_associated_data, group_message_signed_bytes};

/// How far ahead of the next expected iteration a message may be: further is refused
/// (libsignal allows 25,000; a chain rotates long before that).
pub const MAX_FORWARD_JUMP: u32 = 25_000;

/// How many keys of messages jumped over a recipient keeps per sender key, for them to
/// arrive late (libsignal keeps 2,000).
pub const MAX_SKIPPED_KEYS: usize = 2_000;

/// The length of a chain key, the secret a sender key is handed out as.
pub const CHAIN_KEY_LEN: usize = 32;

/// The length of an Ed25519 public key.
pub const SIGNING_PUBLIC_KEY_LEN: usize = 32;

/// The length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

const MESSAGE_KEY_INFO: &[u8] = b"chat.v2/message-key";
const AES_KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// Who sent a message and where: everything a message is bound to besides its key.
#[derive(Clone, Copy, Debug)]
pub struct MessageContext<'a> {
    pub room: &'a str,
    pub sender: &'a str,
    pub device: u32,
}

impl MessageContext<'_> {
    fn associated_data(&self, key_id: u64, iteration: u32) -> Vec<u8> {
        group_message_associated_data(self.room, self.sender, self.device, key_id, iteration)
    }

    fn signed_bytes(&self, key_id: u64, iteration: u32, ciphertext: &[u8]) -> Vec<u8> {
        group_message_signed_bytes(
            self.room,
            self.sender,
            self.device,
            key_id,
            iteration,
            ciphertext,
        )
    }
}

/// A message sealed under a sender key, as it travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMessage {
    pub key_id: u64,
    pub iteration: u32,
    /// AES-256-GCM ciphertext and its 16-byte tag.
    pub ciphertext: Vec<u8>,
    /// Ed25519 over [`group_message_signed_bytes`], by the sender key's signing key.
    pub signature: [u8; SIGNATURE_LEN],
}

/// A sender key as it is handed to the other members: the chain at the iteration the
/// sender is at, and the public half of the key that signs its messages. The chain key
/// is the secret: it travels wrapped for each recipient, the rest in clear (signed).
pub struct SenderKeyDistribution {
    pub key_id: u64,
    pub iteration: u32,
    pub chain_key: Zeroizing<[u8; CHAIN_KEY_LEN]>,
    pub signing_key: [u8; SIGNING_PUBLIC_KEY_LEN],
}

/// A chain key and the iteration it is at. Erased when dropped.
#[derive(Clone)]
struct ChainKey {
    iteration: u32,
    key: Zeroizing<[u8; CHAIN_KEY_LEN]>,
}

impl ChainKey {
    fn hmac(&self, byte: u8) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.as_ref())
            .expect("HMAC takes keys of any length");
        mac.update(&[byte]);
        mac.finalize().into_bytes().into()
    }

    /// The key of the message at this iteration.
    fn message_key(&self) -> MessageKey {
        let seed = Zeroizing::new(self.hmac(0x01));
        let mut derived = Zeroizing::new([0u8; AES_KEY_LEN + NONCE_LEN]);
        Hkdf::<Sha256>::new(None, seed.as_ref())
            .expand(MESSAGE_KEY_INFO, derived.as_mut())
            .expect("44 bytes is a valid HKDF-SHA256 length");
        let mut key = Zeroizing::new([0u8; AES_KEY_LEN]);
        key.copy_from_slice(&derived[..AES_KEY_LEN]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&derived[AES_KEY_LEN..]);
        MessageKey {
            iteration: self.iteration,
            key,
            nonce,
        }
    }

    /// The chain one iteration on; this one is erased when dropped.
    fn next(&self) -> Result<Self, CryptoError> {
        let iteration = self
            .iteration
            .checked_add(1)
            .ok_or(CryptoError::KeyExhausted)?;
        Ok(Self {
            iteration,
            key: Zeroizing::new(self.hmac(0x02)),
        })
    }
}

/// The key of one message. Erased when dropped.
struct MessageKey {
    iteration: u32,
    key: Zeroizing<[u8; AES_KEY_LEN]>,
    nonce: [u8; NONCE_LEN],
}

impl MessageKey {
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.key.as_ref()).expect("message keys are 32 bytes")
    }
}

/// A member's own sender key in one room: it seals and signs what the member sends.
pub struct OwnSenderKey {
    key_id: u64,
    chain: ChainKey,
    /// The chain at the oldest message the relay has not acknowledged: what a member who
    /// joins now is handed, since such messages may be delivered to it after its join.
    floor: ChainKey,
    signing: Ed25519SigningKey,
}

impl OwnSenderKey {
    /// A fresh key: a random id, chain key and signing key, from the OS RNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut id = [0u8; 8];
        let mut chain = Zeroizing::new([0u8; CHAIN_KEY_LEN]);
        let mut signing = Zeroizing::new([0u8; 32]);
        for secret in [&mut id[..], &mut chain[..], &mut signing[..]] {
            getrandom::fill(secret).map_err(|error| CryptoError::Rng(error.to_string()))?;
        }
        let chain = ChainKey {
            iteration: 0,
            key: chain,
        };
        Ok(Self {
            key_id: u64::from_be_bytes(id),
            floor: chain.clone(),
            chain,
            signing: Ed25519SigningKey::from_bytes(&signing),
        })
    }

    /// A key from given secrets, for test vectors.
    #[cfg(test)]
    fn from_secrets(key_id: u64, chain_key: [u8; CHAIN_KEY_LEN], signing: [u8; 32]) -> Self {
        let chain = ChainKey {
            iteration: 0,
            key: Zeroizing::new(chain_key),
        };
        Self {
            key_id,
            floor: chain.clone(),
            chain,
            signing: Ed25519SigningKey::from_bytes(&signing),
        }
    }

    pub fn id(&self) -> u64 {
        self.key_id
    }

    /// The iteration the next message will be sealed at: how many this key has sealed.
    pub fn iteration(&self) -> u32 {
        self.chain.iteration
    }

    /// The key as the other members get it: from the oldest message not yet
    /// [`acknowledged`](Self::acknowledged) on (from the next one if all were), since a
    /// member who joins now may still be delivered those.
    pub fn distribution(&self) -> SenderKeyDistribution {
        SenderKeyDistribution {
            key_id: self.key_id,
            iteration: self.floor.iteration,
            chain_key: self.floor.key.clone(),
            signing_key: self.signing.verifying_key().to_bytes(),
        }
    }

    /// The relay stored the message sealed at `iteration`, and those before it: a member
    /// who joins from now on is not delivered them, so the key is handed out from the
    /// next one on, and the chain keys before it are erased.
    pub fn acknowledged(&mut self, iteration: u32) {
        while self.floor.iteration <= iteration && self.floor.iteration < self.chain.iteration {
            match self.floor.next() {
                Ok(next) => self.floor = next,
                Err(_) => return,
            }
        }
    }

    /// Seals and signs `plaintext` as the next message; its key is erased at once, and
    /// the chain moves past it.
    pub fn seal(
        &mut self,
        context: MessageContext<'_>,
        plaintext: &[u8],
    ) -> Result<GroupMessage, CryptoError> {
        let next = self.chain.next()?;
        let message_key = self.chain.message_key();
        let aad = context.associated_data(self.key_id, message_key.iteration);
        let ciphertext = message_key
            .cipher()
            .encrypt(
                &Nonce::from(message_key.nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        let signed = context.signed_bytes(self.key_id, message_key.iteration, &ciphertext);
        let signature = self.signing.sign(&signed).to_bytes();
        self.chain = next;
        Ok(GroupMessage {
            key_id: self.key_id,
            iteration: message_key.iteration,
            ciphertext,
            signature,
        })
    }
}

/// Another member's sender key, as a recipient holds it: it opens that member's
/// messages from the iteration it was handed out at on.
pub struct PeerSenderKey {
    key_id: u64,
    /// The chain at the next iteration no key was derived for yet.
    chain: ChainKey,
    verifying: VerifyingKey,
    /// Keys of iterations jumped over, for messages arriving late; each used once.
    skipped: BTreeMap<u32, MessageKey>,
}

impl PeerSenderKey {
    /// Takes a key handed out by its sender (whose signature over the distribution the
    /// caller has checked).
    pub fn new(distribution: &SenderKeyDistribution) -> Result<Self, CryptoError> {
        let verifying = VerifyingKey::from_bytes(&distribution.signing_key)
            .ok()
            // A small-order key lets its holder make signatures that verify for many
            // messages; no honest sender has one.
            .filter(|key| !key.is_weak())
            .ok_or(CryptoError::BadSigningKey)?;
        Ok(Self {
            key_id: distribution.key_id,
            chain: ChainKey {
                iteration: distribution.iteration,
                key: distribution.chain_key.clone(),
            },
            verifying,
            skipped: BTreeMap::new(),
        })
    }

    pub fn id(&self) -> u64 {
        self.key_id
    }

    /// The lowest iteration this key can still open, keys kept for late messages aside.
    pub fn next_iteration(&self) -> u32 {
        self.chain.iteration
    }

    /// Checks the signature of `message`, then opens it. Its key is erased; a message
    /// opened once, older than the key was handed out at, or whose key was dropped to
    /// keep others cannot be opened again.
    pub fn open(
        &mut self,
        context: MessageContext<'_>,
        message: &GroupMessage,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if message.key_id != self.key_id {
            return Err(CryptoError::Open);
        }
        let signed = context.signed_bytes(message.key_id, message.iteration, &message.ciphertext);
        self.verifying
            .verify_strict(&signed, &Signature::from_bytes(&message.signature))
            .map_err(|_| CryptoError::BadSignature)?;

        let aad = context.associated_data(message.key_id, message.iteration);
        if message.iteration < self.chain.iteration {
            let key = self
                .skipped
                .get(&message.iteration)
                .ok_or(CryptoError::AlreadyOpened)?;
            let plaintext = decrypt(key, &aad, &message.ciphertext)?;
            self.skipped.remove(&message.iteration);
            return Ok(plaintext);
        }
        // Derived on a copy: the state moves only once the message opened.
        let (key, chain, skipped) = self.derive_to(message.iteration)?;
        let plaintext = decrypt(&key, &aad, &message.ciphertext)?;
        self.chain = chain;
        for jumped in skipped {
            self.skipped.insert(jumped.iteration, jumped);
        }
        while self.skipped.len() > MAX_SKIPPED_KEYS {
            self.skipped.pop_first();
        }
        Ok(plaintext)
    }

    /// The key of `iteration` (at or after the chain's), the chain just past it, and the
    /// keys jumped over that are worth keeping (the last [`MAX_SKIPPED_KEYS`]).
    fn derive_to(
        &self,
        iteration: u32,
    ) -> Result<(MessageKey, ChainKey, Vec<MessageKey>), CryptoError> {
        let jump = iteration - self.chain.iteration;
        if jump > MAX_FORWARD_JUMP {
            return Err(CryptoError::TooFarAhead { jump });
        }
        let keep_from = iteration.saturating_sub(MAX_SKIPPED_KEYS as u32);
        let mut chain = self.chain.clone();
        let mut skipped = Vec::new();
        while chain.iteration < iteration {
            if chain.iteration >= keep_from {
                skipped.push(chain.message_key());
            }
            chain = chain.next()?;
        }
        let key = chain.message_key();
        Ok((key, chain.next()?, skipped))
    }
}

fn decrypt(
    key: &MessageKey,
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    key.cipher()
        .decrypt(
            &Nonce::from(key.nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Open)
}

#[cfg(test)]
mod tests;
