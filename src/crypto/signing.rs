//! The signing half of an identity: an RSA key pair used only for RSA-PSS (SHA-256,
//! MGF1-SHA-256, 32-byte salt) signatures over the domain-separated byte strings of
//! [`binding`](super::binding).

use rsa::pss::{Signature, SigningKey as PssSigningKey, VerifyingKey};
use rsa::sha2::Sha256;
use rsa::signature::{RandomizedSigner, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::{CryptoError, os_rng, rsa_keys};

/// A user's private RSA-PSS key. The key material is zeroized when dropped.
pub struct SigningKey {
    key: PssSigningKey<Sha256>,
    public: PublicSigningKey,
}

impl SigningKey {
    /// Generates a new `bits`-bit key from the OS RNG.
    pub fn generate(bits: usize) -> Result<Self, CryptoError> {
        rsa_keys::generate(bits).map(Self::from_private)
    }

    /// Reads a PKCS#8 PEM private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        rsa_keys::private_from_pem(pem).map(Self::from_private)
    }

    /// The key as PKCS#8 PEM, zeroized when dropped.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        rsa_keys::private_to_pem(self.key.as_ref())
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicSigningKey {
        &self.public
    }

    /// Signs `message` (randomized PSS salt, blinded private-key operation).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.key
            .try_sign_with_rng(&mut os_rng(), message)
            .map(|signature| Box::<[u8]>::from(signature).into_vec())
            .map_err(|error| CryptoError::Sign(error.to_string()))
    }

    fn from_private(private: PrivateKey) -> Self {
        let public = PublicSigningKey::from_rsa(private.to_public_key());
        Self {
            key: PssSigningKey::new(private),
            public,
        }
    }
}

/// Someone's RSA-PSS public key, checked to be 2048 to 4096 bits.
#[derive(Clone)]
pub struct PublicSigningKey {
    key: VerifyingKey<Sha256>,
    der: Vec<u8>,
}

impl PartialEq for PublicSigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for PublicSigningKey {}

impl std::fmt::Debug for PublicSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let public: &PublicKey = self.key.as_ref();
        write!(f, "PublicSigningKey({} bits)", public.size() * 8)
    }
}

impl PublicSigningKey {
    /// Parses a DER X.509 SubjectPublicKeyInfo, as carried by `PublicIdentity`.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        rsa_keys::public_from_der(der).map(Self::from_rsa)
    }

    /// The DER X.509 SubjectPublicKeyInfo.
    pub fn to_der(&self) -> &[u8] {
        &self.der
    }

    /// Checks a signature over `message`; every failure is [`CryptoError::BadSignature`].
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let signature = Signature::try_from(signature).map_err(|_| CryptoError::BadSignature)?;
        self.key
            .verify(message, &signature)
            .map_err(|_| CryptoError::BadSignature)
    }

    fn from_rsa(key: PublicKey) -> Self {
        let der = rsa_keys::public_to_der(&key);
        Self {
            key: VerifyingKey::new(key),
            der,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let alice = SigningKey::generate(2048).unwrap();
        let eve = SigningKey::generate(2048).unwrap();
        let signature = alice.sign(b"hello").unwrap();
        assert_eq!(signature.len(), 256);
        let public = PublicSigningKey::from_der(alice.public_key().to_der()).unwrap();
        public.verify(b"hello", &signature).unwrap();
        assert!(matches!(
            public.verify(b"hellp", &signature),
            Err(CryptoError::BadSignature)
        ));
        assert!(matches!(
            eve.public_key().verify(b"hello", &signature),
            Err(CryptoError::BadSignature)
        ));
        assert!(matches!(
            public.verify(b"hello", &signature[1..]),
            Err(CryptoError::BadSignature)
        ));
        // PSS salts are random: two signatures of one message differ, both verify.
        let again = alice.sign(b"hello").unwrap();
        assert_ne!(again, signature);
        public.verify(b"hello", &again).unwrap();
    }

    #[test]
    fn pem_round_trip() {
        let key = SigningKey::generate(2048).unwrap();
        let reread = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
        assert_eq!(reread.public_key(), key.public_key());
    }
}
