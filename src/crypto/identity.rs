//! A user's identity: a signing key pair and an encryption key pair, one job each, and
//! what others use to recognise it (fingerprints and safety numbers).

use std::fmt;

use sha2::{Digest, Sha256};

use super::binding::{
    fingerprint_input, identity_signed_bytes, login_signed_bytes, safety_number_input,
};
use super::{CryptoError, EncryptionKey, PublicEncryptionKey, PublicSigningKey, SigningKey};
use crate::proto::PublicIdentity;

/// A user's two private keys.
pub struct Identity {
    signing: SigningKey,
    encryption: EncryptionKey,
}

impl Identity {
    /// A new identity with two fresh `bits`-bit key pairs.
    pub fn generate(bits: usize) -> Result<Self, CryptoError> {
        Ok(Self::new(
            SigningKey::generate(bits)?,
            EncryptionKey::generate(bits)?,
        ))
    }

    pub fn new(signing: SigningKey, encryption: EncryptionKey) -> Self {
        Self {
            signing,
            encryption,
        }
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn encryption_key(&self) -> &EncryptionKey {
        &self.encryption
    }

    /// Signs `message` with the signing key.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.signing.sign(message)
    }

    /// The identity as published under `user`, self-signed.
    pub fn publish(&self, user: &str) -> Result<PublicIdentity, CryptoError> {
        let signing = self.signing.public_key().to_der();
        let encryption = self.encryption.public_key().to_der();
        let signature = self.sign(&identity_signed_bytes(user, signing, encryption))?;
        Ok(PublicIdentity {
            user: user.to_owned(),
            encryption_public_key: encryption.to_vec().into(),
            signing_public_key: signing.to_vec().into(),
            signature: signature.into(),
        })
    }

    /// The answer to a login challenge for `user`.
    pub fn sign_login(&self, user: &str, challenge: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.sign(&login_signed_bytes(user, challenge))
    }

    /// This identity's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.signing.public_key(), self.encryption.public_key())
    }
}

/// Someone's published identity, its keys parsed and its self-signature checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    pub user: String,
    pub signing: PublicSigningKey,
    pub encryption: PublicEncryptionKey,
    pub fingerprint: Fingerprint,
}

impl VerifiedIdentity {
    /// Parses both keys and checks that the signing key signed the user name and both
    /// keys, and that the two keys differ.
    pub fn verify(identity: &PublicIdentity) -> Result<Self, CryptoError> {
        let signing = PublicSigningKey::from_der(&identity.signing_public_key)?;
        let encryption = PublicEncryptionKey::from_der(&identity.encryption_public_key)?;
        if signing.to_der() == encryption.to_der() {
            return Err(CryptoError::SameKeyTwice);
        }
        let signed = identity_signed_bytes(&identity.user, signing.to_der(), encryption.to_der());
        signing.verify(&signed, &identity.signature)?;
        let fingerprint = Fingerprint::of(&signing, &encryption);
        Ok(Self {
            user: identity.user.clone(),
            signing,
            encryption,
            fingerprint,
        })
    }

    /// Checks `signature` as this user's answer to a login `challenge`.
    pub fn verify_login(&self, challenge: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        self.signing
            .verify(&login_signed_bytes(&self.user, challenge), signature)
    }
}

/// The SHA-256 of an identity's two public keys: what a user compares, or pins, to know
/// whose keys these are.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(signing: &PublicSigningKey, encryption: &PublicEncryptionKey) -> Self {
        Self(Sha256::digest(fingerprint_input(signing.to_der(), encryption.to_der())).into())
    }

    /// A fingerprint as its 32 raw bytes travel.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits, for storing.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Reads what [`to_hex`](Self::to_hex) wrote.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

/// Upper-case hex in 16 groups of 4, for people to read aloud.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, pair) in self.0.chunks(2).enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{:02X}{:02X}", pair[0], pair[1])?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// The 60 digits two users compare to know that each holds the other's real keys.
/// Both compute the same number, whoever computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber(String);

impl SafetyNumber {
    /// The safety number of the pair (`user`, `fingerprint`) and (`other`,
    /// `other_fingerprint`).
    pub fn of(
        user: &str,
        fingerprint: &Fingerprint,
        other: &str,
        other_fingerprint: &Fingerprint,
    ) -> Self {
        let mine = safety_digits(user, fingerprint);
        let theirs = safety_digits(other, other_fingerprint);
        let (first, second) = if mine <= theirs {
            (mine, theirs)
        } else {
            (theirs, mine)
        };
        Self(first + &second)
    }

    /// The 60 digits, without spaces.
    pub fn digits(&self) -> &str {
        &self.0
    }
}

/// 12 groups of 5 digits.
impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, group) in self.0.as_bytes().chunks(5).enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

/// One user's 30 digits: six 5-byte big-endian chunks of a hash, each mod 100000.
fn safety_digits(user: &str, fingerprint: &Fingerprint) -> String {
    let hash = Sha256::digest(safety_number_input(user, fingerprint.as_bytes()));
    hash[..30]
        .chunks(5)
        .map(|chunk| {
            let value = chunk
                .iter()
                .fold(0u64, |value, byte| (value << 8) | u64::from(*byte));
            format!("{:05}", value % 100_000)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn identities() -> &'static [Identity; 2] {
        static IDS: OnceLock<[Identity; 2]> = OnceLock::new();
        IDS.get_or_init(|| std::array::from_fn(|_| Identity::generate(2048).unwrap()))
    }

    #[test]
    fn a_published_identity_verifies_and_a_tampered_one_does_not() {
        let [alice, mallory] = identities();
        let published = alice.publish("alice").unwrap();
        let verified = VerifiedIdentity::verify(&published).unwrap();
        assert_eq!(verified.user, "alice");
        assert_eq!(verified.fingerprint, alice.fingerprint());

        let mut renamed = published.clone();
        renamed.user = "bob".into();
        assert!(matches!(
            VerifiedIdentity::verify(&renamed),
            Err(CryptoError::BadSignature)
        ));
        // A relay swapping in its own encryption key breaks the self-signature.
        let mut swapped = published.clone();
        swapped.encryption_public_key = mallory
            .encryption_key()
            .public_key()
            .to_der()
            .to_vec()
            .into();
        assert!(matches!(
            VerifiedIdentity::verify(&swapped),
            Err(CryptoError::BadSignature)
        ));
        let mut same = published;
        same.encryption_public_key = same.signing_public_key.clone();
        assert!(matches!(
            VerifiedIdentity::verify(&same),
            Err(CryptoError::SameKeyTwice)
        ));
    }

    #[test]
    fn login_signatures_are_bound_to_user_and_challenge() {
        let [alice, _] = identities();
        let verified = VerifiedIdentity::verify(&alice.publish("alice").unwrap()).unwrap();
        let signature = alice.sign_login("alice", &[7; 32]).unwrap();
        verified.verify_login(&[7; 32], &signature).unwrap();
        assert!(verified.verify_login(&[8; 32], &signature).is_err());
        let for_bob = alice.sign_login("bob", &[7; 32]).unwrap();
        assert!(verified.verify_login(&[7; 32], &for_bob).is_err());
    }

    #[test]
    fn fingerprints_round_trip_and_read_in_groups() {
        let fingerprint = identities()[0].fingerprint();
        assert_eq!(
            Fingerprint::from_hex(&fingerprint.to_hex()),
            Some(fingerprint)
        );
        assert_eq!(Fingerprint::from_hex("zz"), None);
        let shown = fingerprint.to_string();
        assert_eq!(shown.len(), 16 * 4 + 15);
        assert_eq!(shown.replace(' ', ""), fingerprint.to_hex().to_uppercase());
    }

    #[test]
    fn safety_numbers_are_symmetric_and_change_with_a_key() {
        let [alice, bob] = identities();
        let (a, b) = (alice.fingerprint(), bob.fingerprint());
        let ours = SafetyNumber::of("alice", &a, "bob", &b);
        assert_eq!(ours, SafetyNumber::of("bob", &b, "alice", &a));
        assert_eq!(ours.digits().len(), 60);
        assert!(ours.digits().bytes().all(|digit| digit.is_ascii_digit()));
        assert_eq!(ours.to_string().split(' ').count(), 12);
        assert_ne!(ours, SafetyNumber::of("alice", &a, "bob", &a));
    }

    #[test]
    fn fingerprint_and_safety_number_are_the_documented_ones() {
        // The vectors of docs/PROTOCOL.md, computed there independently.
        assert_eq!(
            hex(&Sha256::digest(fingerprint_input(b"s", b"e"))),
            "301d4b63196a2c69e9c2ba7a405c7548c708d8f74e6b875fb9f67a5898074e02"
        );
        let number = SafetyNumber::of("alice", &Fingerprint([0; 32]), "bob", &Fingerprint([1; 32]));
        assert_eq!(
            number.to_string(),
            "08940 22870 87407 56001 96721 49985 24506 87332 60637 75593 12840 20400"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}
