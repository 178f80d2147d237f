//! A user's long-term RSA identity, used to wrap and unwrap sender keys.

use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::{CryptoError, os_rng};

/// The RSA sizes a user may choose.
pub const ALLOWED_KEY_BITS: [usize; 3] = [2048, 3072, 4096];
/// The RSA size of a new identity: about 128-bit security.
pub const DEFAULT_KEY_BITS: usize = 3072;

/// A user's RSA private key. The key material is zeroized when dropped.
pub struct IdentityKey {
    private: PrivateKey,
    public: PublicEncryptionKey,
}

impl IdentityKey {
    /// Generates a new key from the OS RNG. Takes from a fraction of a second (2048
    /// bits) to several seconds (4096 bits).
    pub fn generate(bits: usize) -> Result<Self, CryptoError> {
        if !ALLOWED_KEY_BITS.contains(&bits) {
            return Err(CryptoError::UnsupportedKeyBits(bits));
        }
        let private = PrivateKey::new(&mut os_rng(), bits)
            .map_err(|error| CryptoError::Rng(error.to_string()))?;
        Ok(Self::from_private(private))
    }

    /// Reads a PKCS#8 PEM private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        let private = PrivateKey::from_pkcs8_pem(pem).map_err(|_| CryptoError::BadPrivateKey)?;
        if !key_bits_allowed(private.n()) {
            return Err(CryptoError::BadPrivateKey);
        }
        Ok(Self::from_private(private))
    }

    /// The key as PKCS#8 PEM, zeroized when dropped.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        self.private
            .to_pkcs8_pem(LineEnding::LF)
            .expect("a valid RSA key always encodes")
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

/// Someone's RSA public key, checked to be 2048 to 4096 bits.
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
        let key = PublicKey::from_public_key_der(der).map_err(|_| CryptoError::BadPublicKey)?;
        if !key_bits_allowed(key.n()) {
            return Err(CryptoError::BadPublicKey);
        }
        Ok(Self::from_rsa(key))
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
        let der = key
            .to_public_key_der()
            .expect("a valid RSA public key always encodes")
            .into_vec();
        Self { key, der }
    }
}

/// Whether the modulus has 2048 to 4096 significant bits.
fn key_bits_allowed(modulus: &rsa::BoxedUint) -> bool {
    (2048..=4096).contains(&modulus.bit_width_vartime())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_and_der_round_trip() {
        let identity = IdentityKey::generate(2048).unwrap();
        assert_eq!(identity.bits(), 2048);
        let pem = identity.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let reread = IdentityKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(reread.public_key(), identity.public_key());
        let public = PublicEncryptionKey::from_der(identity.public_key().to_der()).unwrap();
        assert_eq!(&public, identity.public_key());
    }

    #[test]
    fn refuses_unsupported_sizes_and_garbage() {
        assert!(matches!(
            IdentityKey::generate(1024),
            Err(CryptoError::UnsupportedKeyBits(1024))
        ));
        assert!(matches!(
            PublicEncryptionKey::from_der(b"not a key"),
            Err(CryptoError::BadPublicKey)
        ));
        assert!(matches!(
            IdentityKey::from_pkcs8_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            Err(CryptoError::BadPrivateKey)
        ));
    }

    #[test]
    fn wrap_unwrap_needs_the_right_key_and_label() {
        let bob = IdentityKey::generate(2048).unwrap();
        let eve = IdentityKey::generate(2048).unwrap();
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
