//! Generating, encoding and checking the RSA keys both identity key pairs are made of.

use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::{CryptoError, os_rng};

/// The RSA sizes a user may choose.
pub const ALLOWED_KEY_BITS: [usize; 3] = [2048, 3072, 4096];
/// The RSA size of a new identity: about 128-bit security.
pub const DEFAULT_KEY_BITS: usize = 3072;

/// A new private key from the OS RNG. Takes from a fraction of a second (2048 bits) to
/// several seconds (4096 bits).
pub(super) fn generate(bits: usize) -> Result<PrivateKey, CryptoError> {
    if !ALLOWED_KEY_BITS.contains(&bits) {
        return Err(CryptoError::UnsupportedKeyBits(bits));
    }
    PrivateKey::new(&mut os_rng(), bits).map_err(|error| CryptoError::Rng(error.to_string()))
}

/// Reads a PKCS#8 PEM private key of an allowed size.
pub(super) fn private_from_pem(pem: &str) -> Result<PrivateKey, CryptoError> {
    let private = PrivateKey::from_pkcs8_pem(pem).map_err(|_| CryptoError::BadPrivateKey)?;
    if !bits_allowed(private.n()) {
        return Err(CryptoError::BadPrivateKey);
    }
    Ok(private)
}

/// The private key as PKCS#8 PEM, zeroized when dropped.
pub(super) fn private_to_pem(private: &PrivateKey) -> Zeroizing<String> {
    private
        .to_pkcs8_pem(LineEnding::LF)
        .expect("a valid RSA key always encodes")
}

/// Parses a DER X.509 SubjectPublicKeyInfo of an allowed size.
pub(super) fn public_from_der(der: &[u8]) -> Result<PublicKey, CryptoError> {
    let key = PublicKey::from_public_key_der(der).map_err(|_| CryptoError::BadPublicKey)?;
    if !bits_allowed(key.n()) {
        return Err(CryptoError::BadPublicKey);
    }
    Ok(key)
}

/// The DER X.509 SubjectPublicKeyInfo of a public key.
pub(super) fn public_to_der(key: &PublicKey) -> Vec<u8> {
    key.to_public_key_der()
        .expect("a valid RSA public key always encodes")
        .into_vec()
}

/// Whether the modulus has 2048 to 4096 significant bits.
fn bits_allowed(modulus: &rsa::BoxedUint) -> bool {
    (2048..=4096).contains(&modulus.bit_width_vartime())
}
