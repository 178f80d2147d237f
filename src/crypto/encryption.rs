//! The encryption half of an identity: an RSA key pair used only to wrap and unwrap
//! sender keys with RSA-OAEP (SHA-256).

use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::{CryptoError, os_rng, rsa_keys};

/// A user's private RSA-OAEP key. The key material is zeroized when dropped.
pub struct EncryptionKey {
    private: PrivateKey,
    public: PublicEncryptionKey,
}

impl EncryptionKey {
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
        rsa_keys::private_to_pem(&self.private)
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicEncryptionKey {
        &self.public
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.private.size() * 8
    }

    /// RSA-OAEP (SHA-256) decryption with `label`, blinded with the OS RNG.
    /// Every failure is the same [`CryptoError::Unwrap`].
    pub(crate) fn unwrap(
        &self,
        wrapped: &[u8],
        label: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.private
            .decrypt_blinded(
                &mut os_rng(),
                Oaep::<Sha256>::new_with_label(label),
                wrapped,
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Unwrap)
    }

    fn from_private(private: PrivateKey) -> Self {
        let public = PublicEncryptionKey::from_rsa(private.to_public_key());
        Self { private, public }
    }
}

/// Someone's RSA-OAEP public key, checked to be 2048 to 4096 bits.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicEncryptionKey {
    key: PublicKey,
    der: Vec<u8>,
}

impl std::fmt::Debug for PublicEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicEncryptionKey({} bits)", self.key.size() * 8)
    }
}

impl PublicEncryptionKey {
    /// Parses a DER X.509 SubjectPublicKeyInfo, as carried by `PublicIdentity`.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        rsa_keys::public_from_der(der).map(Self::from_rsa)
    }

    /// The DER X.509 SubjectPublicKeyInfo.
    pub fn to_der(&self) -> &[u8] {
        &self.der
    }

    /// RSA-OAEP (SHA-256) encryption of `secret` with `label`.
    pub(crate) fn wrap(&self, secret: &[u8], label: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
        self.key
            .encrypt(&mut os_rng(), Oaep::<Sha256>::new_with_label(label), secret)
            .map_err(|error| CryptoError::Wrap(error.to_string()))
    }

    fn from_rsa(key: PublicKey) -> Self {
        let der = rsa_keys::public_to_der(&key);
        Self { key, der }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_and_der_round_trip() {
        let key = EncryptionKey::generate(2048).unwrap();
        assert_eq!(key.bits(), 2048);
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let reread = EncryptionKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(reread.public_key(), key.public_key());
        let public = PublicEncryptionKey::from_der(key.public_key().to_der()).unwrap();
        assert_eq!(&public, key.public_key());
    }

    #[test]
    fn refuses_unsupported_sizes_and_garbage() {
        assert!(matches!(
            EncryptionKey::generate(1024),
            Err(CryptoError::UnsupportedKeyBits(1024))
        ));
        assert!(matches!(
            PublicEncryptionKey::from_der(b"not a key"),
            Err(CryptoError::BadPublicKey)
        ));
        assert!(matches!(
            EncryptionKey::from_pkcs8_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            Err(CryptoError::BadPrivateKey)
        ));
    }

    #[test]
    fn wrap_unwrap_needs_the_right_key_and_label() {
        let bob = EncryptionKey::generate(2048).unwrap();
        let eve = EncryptionKey::generate(2048).unwrap();
        let wrapped = bob.public_key().wrap(&[9; 32], b"label".to_vec()).unwrap();
        assert_eq!(
            bob.unwrap(&wrapped, b"label".to_vec()).unwrap().as_slice(),
            &[9; 32]
        );
        assert!(matches!(
            bob.unwrap(&wrapped, b"other".to_vec()),
            Err(CryptoError::Unwrap)
        ));
        assert!(matches!(
            eve.unwrap(&wrapped, b"label".to_vec()),
            Err(CryptoError::Unwrap)
        ));
    }
}
