//! Sender keys: one AES-256-GCM key per member and room.
//!
//! The owner seals with an [`OutboundSenderKey`], which numbers its messages; every
//! other member opens with a [`SenderKey`] it received wrapped for its identity.
//! Nonces are 96 random bits from the OS RNG per message, and a key seals at most
//! [`MAX_MESSAGES_PER_KEY`] messages, far below the 2^32 that NIST SP 800-38D allows
//! for random nonces, so a nonce is never reused under one key in practice.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use bytes::Bytes;
use zeroize::Zeroizing;

use super::binding::{message_associated_data, sender_key_label};
use super::{CryptoError, EncryptionKey, PublicEncryptionKey};
use crate::proto::SealedMessage;
use crate::protocol::NONCE_LEN;

/// How many messages one sender key seals before its owner must rotate it.
pub const MAX_MESSAGES_PER_KEY: u64 = 1 << 24;

const KEY_LEN: usize = 32;

/// A sender key as a recipient holds it: enough to open the owner's messages.
pub struct SenderKey {
    id: u64,
    cipher: Aes256Gcm,
}

impl SenderKey {
    /// The key's id, random, chosen by its owner.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Unwraps a key that `sender` wrapped for `recipient` (the holder of `identity`).
    pub fn unwrap(
        identity: &EncryptionKey,
        wrapped: &[u8],
        room: &str,
        sender: &str,
        recipient: &str,
        key_id: u64,
    ) -> Result<Self, CryptoError> {
        let secret = identity.unwrap(wrapped, sender_key_label(room, sender, recipient, key_id))?;
        if secret.len() != KEY_LEN {
            return Err(CryptoError::Unwrap);
        }
        Ok(Self::from_secret(key_id, &secret))
    }

    /// Opens a message `sender` sealed for `room` under this key.
    pub fn open(
        &self,
        room: &str,
        sender: &str,
        sealed: &SealedMessage,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.key_id != self.id || sealed.nonce.len() != NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let nonce = Nonce::try_from(&sealed.nonce[..]).map_err(|_| CryptoError::Open)?;
        let aad = message_associated_data(room, sender, self.id, sealed.counter);
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
    }

    fn from_secret(id: u64, secret: &[u8]) -> Self {
        let cipher = Aes256Gcm::new_from_slice(secret).expect("sender keys are 32 bytes");
        Self { id, cipher }
    }
}

/// The sender key a member seals its own messages with.
pub struct OutboundSenderKey {
    key: SenderKey,
    secret: Zeroizing<[u8; KEY_LEN]>,
    next_counter: u64,
}

impl OutboundSenderKey {
    /// A fresh random key with a fresh random id.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(secret.as_mut()).map_err(|error| CryptoError::Rng(error.to_string()))?;
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|error| CryptoError::Rng(error.to_string()))?;
        Ok(Self {
            key: SenderKey::from_secret(u64::from_be_bytes(id), secret.as_ref()),
            secret,
            next_counter: 0,
        })
    }

    /// The key's id.
    pub fn id(&self) -> u64 {
        self.key.id
    }

    /// Whether the key has sealed all the messages it may.
    pub fn is_exhausted(&self) -> bool {
        self.next_counter >= MAX_MESSAGES_PER_KEY
    }

    /// Wraps the key for `recipient`, whose public key is `recipient_key`.
    pub fn wrap_for(
        &self,
        recipient_key: &PublicEncryptionKey,
        room: &str,
        sender: &str,
        recipient: &str,
    ) -> Result<Bytes, CryptoError> {
        let label = sender_key_label(room, sender, recipient, self.id());
        recipient_key
            .wrap(self.secret.as_ref(), label)
            .map(Bytes::from)
    }

    /// Seals `plaintext` as the next message of `sender` in `room`, unsigned.
    pub fn seal(
        &mut self,
        room: &str,
        sender: &str,
        plaintext: &[u8],
    ) -> Result<SealedMessage, CryptoError> {
        if self.is_exhausted() {
            return Err(CryptoError::KeyExhausted);
        }
        let counter = self.next_counter;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|error| CryptoError::Rng(error.to_string()))?;
        let aad = message_associated_data(room, sender, self.id(), counter);
        let ciphertext = self
            .key
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        self.next_counter += 1;
        Ok(SealedMessage {
            key_id: self.id(),
            counter,
            nonce: Bytes::copy_from_slice(&nonce),
            ciphertext: Bytes::from(ciphertext),
            // The sender signs the sealed message with its identity; see `RoomKeys`.
            signature: Bytes::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient_copy(key: &OutboundSenderKey) -> SenderKey {
        SenderKey::from_secret(key.id(), key.secret.as_ref())
    }

    #[test]
    fn seal_open_round_trip_and_counts() {
        let mut key = OutboundSenderKey::generate().unwrap();
        let first = key.seal("lobby", "alice", b"hello").unwrap();
        let second = key.seal("lobby", "alice", b"hello").unwrap();
        assert_eq!((first.counter, second.counter), (0, 1));
        assert_ne!(
            first.nonce, second.nonce,
            "every message gets a fresh nonce"
        );
        assert_ne!(first.ciphertext, second.ciphertext);
        assert_eq!(first.ciphertext.len(), 5 + 16, "ciphertext || 16-byte tag");
        let copy = recipient_copy(&key);
        assert_eq!(
            copy.open("lobby", "alice", &first).unwrap().as_slice(),
            b"hello"
        );
        assert_eq!(
            copy.open("lobby", "alice", &second).unwrap().as_slice(),
            b"hello"
        );
    }

    #[test]
    fn open_fails_under_another_key() {
        let mut key = OutboundSenderKey::generate().unwrap();
        let sealed = key.seal("lobby", "alice", b"hello").unwrap();
        let other = OutboundSenderKey::generate().unwrap();
        let mut relabelled = sealed.clone();
        relabelled.key_id = other.id();
        assert!(matches!(
            recipient_copy(&other).open("lobby", "alice", &relabelled),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn open_fails_when_any_bound_field_changes() {
        let mut key = OutboundSenderKey::generate().unwrap();
        let sealed = key.seal("lobby", "alice", b"hello").unwrap();
        let copy = recipient_copy(&key);
        assert!(copy.open("other-room", "alice", &sealed).is_err());
        assert!(copy.open("lobby", "mallory", &sealed).is_err());
        let mut recounted = sealed.clone();
        recounted.counter = 5;
        assert!(copy.open("lobby", "alice", &recounted).is_err());
        let mut flipped = sealed.clone();
        let mut bytes = flipped.ciphertext.to_vec();
        bytes[0] ^= 1;
        flipped.ciphertext = bytes.into();
        assert!(copy.open("lobby", "alice", &flipped).is_err());
        let mut short_nonce = sealed.clone();
        short_nonce.nonce = Bytes::from_static(b"short");
        assert!(copy.open("lobby", "alice", &short_nonce).is_err());
        assert!(copy.open("lobby", "alice", &sealed).is_ok());
    }

    #[test]
    fn wrapped_key_opens_only_for_its_recipient_and_context() {
        let bob = EncryptionKey::generate(2048).unwrap();
        let carol = EncryptionKey::generate(2048).unwrap();
        let mut key = OutboundSenderKey::generate().unwrap();
        let wrapped = key
            .wrap_for(bob.public_key(), "lobby", "alice", "bob")
            .unwrap();
        let sealed = key.seal("lobby", "alice", b"for bob").unwrap();

        let unwrapped =
            SenderKey::unwrap(&bob, &wrapped, "lobby", "alice", "bob", key.id()).unwrap();
        assert_eq!(
            unwrapped
                .open("lobby", "alice", &sealed)
                .unwrap()
                .as_slice(),
            b"for bob"
        );

        assert!(SenderKey::unwrap(&carol, &wrapped, "lobby", "alice", "carol", key.id()).is_err());
        assert!(SenderKey::unwrap(&bob, &wrapped, "lobby", "mallory", "bob", key.id()).is_err());
        assert!(SenderKey::unwrap(&bob, &wrapped, "elsewhere", "alice", "bob", key.id()).is_err());
        assert!(SenderKey::unwrap(&bob, &wrapped, "lobby", "alice", "bob", key.id() ^ 1).is_err());
    }

    #[test]
    fn exhausted_key_refuses_to_seal() {
        let mut key = OutboundSenderKey::generate().unwrap();
        key.next_counter = MAX_MESSAGES_PER_KEY;
        assert!(key.is_exhausted());
        assert!(matches!(
            key.seal("r", "a", b"x"),
            Err(CryptoError::KeyExhausted)
        ));
    }
}
