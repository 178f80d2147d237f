//! Signed prekeys (protocol v2): medium-term RSA-OAEP key pairs that other members wrap
//! sender keys under, each signed by its owner's identity and replaced on a schedule.
//!
//! Sender keys are never wrapped under the long-term identity key: once a retired prekey's
//! private half is erased, the sender keys wrapped under it, and the messages they
//! sealed, cannot be opened with anything a later thief of the home directory finds.

use super::binding::prekey_signed_bytes;
use super::{CryptoError, EncryptionKey, Identity, PublicEncryptionKey, VerifiedIdentity};

/// A prekey's private half, as its owner keeps it.
pub struct Prekey {
    id: u64,
    created_at_ms: u64,
    key: EncryptionKey,
}

impl Prekey {
    /// A fresh `bits`-bit prekey with a random id, made at `now_ms` (Unix milliseconds).
    pub fn generate(bits: usize, now_ms: u64) -> Result<Self, CryptoError> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|error| CryptoError::Rng(error.to_string()))?;
        Ok(Self::new(
            u64::from_be_bytes(id),
            now_ms,
            EncryptionKey::generate(bits)?,
        ))
    }

    /// A prekey from its parts, as read back from the home directory.
    pub fn new(id: u64, created_at_ms: u64, key: EncryptionKey) -> Self {
        Self {
            id,
            created_at_ms,
            key,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// When it was made, in Unix milliseconds.
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    pub fn key(&self) -> &EncryptionKey {
        &self.key
    }

    /// The public half, signed by `identity` as the prekey of `user`'s `device`.
    pub fn sign(
        &self,
        identity: &Identity,
        user: &str,
        device: u32,
    ) -> Result<SignedPrekey, CryptoError> {
        let public_key = self.key.public_key().to_der().to_vec();
        let signed = prekey_signed_bytes(user, device, self.id, self.created_at_ms, &public_key);
        Ok(SignedPrekey {
            user: user.to_owned(),
            device,
            id: self.id,
            created_at_ms: self.created_at_ms,
            public_key,
            signature: identity.sign(&signed)?,
        })
    }
}

/// A prekey as published: its public half, signed by its owner's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedPrekey {
    pub user: String,
    pub device: u32,
    pub id: u64,
    pub created_at_ms: u64,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// RSA-PSS by the owner's identity over
    /// [`prekey_signed_bytes`](super::binding::prekey_signed_bytes).
    pub signature: Vec<u8>,
}

impl SignedPrekey {
    /// The public key, once `owner`'s identity is seen to have signed it for this user.
    pub fn verify(&self, owner: &VerifiedIdentity) -> Result<PublicEncryptionKey, CryptoError> {
        if owner.user != self.user {
            return Err(CryptoError::BadSignature);
        }
        let signed = prekey_signed_bytes(
            &self.user,
            self.device,
            self.id,
            self.created_at_ms,
            &self.public_key,
        );
        owner.signing.verify(&signed, &self.signature)?;
        PublicEncryptionKey::from_der(&self.public_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prekey_verifies_only_as_its_owner_s_for_what_was_signed() {
        let alice = Identity::generate(2048).unwrap();
        let mallory = Identity::generate(2048).unwrap();
        let alice_public = VerifiedIdentity::verify(&alice.publish("alice").unwrap()).unwrap();
        let prekey = Prekey::generate(2048, 1_000).unwrap();
        let signed = prekey.sign(&alice, "alice", 1).unwrap();
        assert_eq!(
            &signed.verify(&alice_public).unwrap(),
            prekey.key().public_key()
        );

        let by_mallory = prekey.sign(&mallory, "alice", 1).unwrap();
        assert!(by_mallory.verify(&alice_public).is_err());
        let mut claimed = signed.clone();
        claimed.user = "bob".into();
        assert!(claimed.verify(&alice_public).is_err());
        let mut edits: Vec<SignedPrekey> = vec![signed.clone(); 3];
        edits[0].device = 2;
        edits[1].id ^= 1;
        edits[2].created_at_ms += 1;
        for edited in edits {
            assert!(matches!(
                edited.verify(&alice_public),
                Err(CryptoError::BadSignature)
            ));
        }
        let other = Prekey::generate(2048, 1_000).unwrap();
        let mut swapped = signed;
        swapped.public_key = other.key().public_key().to_der().to_vec();
        assert!(swapped.verify(&alice_public).is_err());
    }
}
