//! Handing a sender key out (protocol v2): its chain key wrapped (RSA-OAEP) for each
//! recipient device's signed prekey, and everything signed **once** by the sender's
//! identity (RSA-PSS), over a Merkle root of the copies ([`merkle`](crate::crypto::merkle)).
//!
//! The relay stores the whole distribution and gives each recipient only its own copy
//! with its audit path. The recipient checks the path and the signature before its RSA
//! private key touches the copy, so the relay cannot feed it ciphertexts of its choosing
//! (the RUSTSEC-2023-0071 reasoning in docs/SECURITY.md).

use zeroize::Zeroizing;

use super::{CHAIN_KEY_LEN, SIGNING_PUBLIC_KEY_LEN, SenderKeyDistribution};
use crate::crypto::binding::{chain_key_copy_leaf, chain_key_label, distribution_signed_bytes};
use crate::crypto::merkle::{self, Hash};
use crate::crypto::{CryptoError, Identity, Prekey, PublicEncryptionKey, VerifiedIdentity};

/// Whose sender key it is, and what a recipient relies on besides its copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistributionHeader {
    pub room: String,
    pub sender: String,
    pub device: u32,
    pub key_id: u64,
    /// The chain's iteration: the key opens messages from this one on.
    pub iteration: u32,
    /// The Ed25519 public key that signs the messages sealed under this sender key.
    pub signing_key: [u8; SIGNING_PUBLIC_KEY_LEN],
}

/// One recipient device, and the prekey its copy is wrapped under (checked by the caller
/// against the recipient's identity).
pub struct Recipient<'a> {
    pub user: &'a str,
    pub device: u32,
    pub prekey_id: u64,
    pub prekey: &'a PublicEncryptionKey,
}

/// A recipient device's copy of the chain key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedCopy {
    pub recipient: String,
    pub device: u32,
    pub prekey_id: u64,
    pub wrapped: Vec<u8>,
}

impl WrappedCopy {
    fn leaf_hash(&self) -> Hash {
        merkle::leaf_hash(&chain_key_copy_leaf(
            &self.recipient,
            self.device,
            self.prekey_id,
            &self.wrapped,
        ))
    }
}

/// A sender key handed out to every recipient at once, as its sender makes it and the
/// relay stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedDistribution {
    pub header: DistributionHeader,
    /// In the order of the Merkle tree's leaves.
    pub copies: Vec<WrappedCopy>,
    /// RSA-PSS by the sender's identity over
    /// [`distribution_signed_bytes`](crate::crypto::binding::distribution_signed_bytes).
    pub signature: Vec<u8>,
}

/// What one recipient receives of a [`SignedDistribution`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveredCopy {
    pub header: DistributionHeader,
    pub copy: WrappedCopy,
    /// The copy's place among the leaves, and how many there are.
    pub index: u32,
    pub count: u32,
    /// Sibling hashes from the copy's leaf up to the root.
    pub path: Vec<Hash>,
    pub signature: Vec<u8>,
}

impl SignedDistribution {
    /// Wraps `key`'s chain key for each of `recipients` and signs the whole with
    /// `identity`: one RSA private-key operation, however many recipients.
    pub fn seal(
        identity: &Identity,
        room: &str,
        sender: &str,
        device: u32,
        key: &SenderKeyDistribution,
        recipients: &[Recipient<'_>],
    ) -> Result<Self, CryptoError> {
        let header = DistributionHeader {
            room: room.to_owned(),
            sender: sender.to_owned(),
            device,
            key_id: key.key_id,
            iteration: key.iteration,
            signing_key: key.signing_key,
        };
        let copies = recipients
            .iter()
            .map(|recipient| {
                let label = chain_key_label(
                    room,
                    sender,
                    device,
                    recipient.user,
                    recipient.device,
                    key.key_id,
                    recipient.prekey_id,
                );
                Ok(WrappedCopy {
                    recipient: recipient.user.to_owned(),
                    device: recipient.device,
                    prekey_id: recipient.prekey_id,
                    wrapped: recipient.prekey.wrap(key.chain_key.as_ref(), label)?,
                })
            })
            .collect::<Result<Vec<_>, CryptoError>>()?;
        let leaves: Vec<Hash> = copies.iter().map(WrappedCopy::leaf_hash).collect();
        let root = merkle::root(&leaves).ok_or(CryptoError::Wrap("no recipients".into()))?;
        let count = u32::try_from(copies.len())
            .map_err(|_| CryptoError::Wrap("too many recipients".into()))?;
        let signature = identity.sign(&signed_bytes(&header, count, &root))?;
        Ok(Self {
            header,
            copies,
            signature,
        })
    }

    /// What the recipient of copy `index` receives: its copy and audit path.
    pub fn delivered_copy(&self, index: usize) -> Option<DeliveredCopy> {
        let copy = self.copies.get(index)?.clone();
        let leaves: Vec<Hash> = self.copies.iter().map(WrappedCopy::leaf_hash).collect();
        Some(DeliveredCopy {
            header: self.header.clone(),
            copy,
            index: u32::try_from(index).ok()?,
            count: u32::try_from(leaves.len()).ok()?,
            path: merkle::audit_path(&leaves, index),
            signature: self.signature.clone(),
        })
    }
}

impl DeliveredCopy {
    /// Checks that `sender` signed this distribution with this copy in it, and that the
    /// copy is for `recipient`'s `device` under `prekey`; only then unwraps the chain key.
    pub fn open(
        &self,
        sender: &VerifiedIdentity,
        recipient: &str,
        device: u32,
        prekey: &Prekey,
    ) -> Result<SenderKeyDistribution, CryptoError> {
        let copy = &self.copy;
        if sender.user != self.header.sender
            || copy.recipient != recipient
            || copy.device != device
            || copy.prekey_id != prekey.id()
        {
            return Err(CryptoError::Unwrap);
        }
        let root = merkle::root_from_path(
            copy.leaf_hash(),
            self.index as usize,
            self.count as usize,
            &self.path,
        )
        .ok_or(CryptoError::BadSignature)?;
        sender.signing.verify(
            &signed_bytes(&self.header, self.count, &root),
            &self.signature,
        )?;

        let header = &self.header;
        let label = chain_key_label(
            &header.room,
            &header.sender,
            header.device,
            recipient,
            device,
            header.key_id,
            prekey.id(),
        );
        let secret = prekey.key().unwrap(&copy.wrapped, label)?;
        if secret.len() != CHAIN_KEY_LEN {
            return Err(CryptoError::Unwrap);
        }
        let mut chain_key = Zeroizing::new([0u8; CHAIN_KEY_LEN]);
        chain_key.copy_from_slice(&secret);
        Ok(SenderKeyDistribution {
            key_id: header.key_id,
            iteration: header.iteration,
            chain_key,
            signing_key: header.signing_key,
        })
    }
}

fn signed_bytes(header: &DistributionHeader, count: u32, root: &Hash) -> Vec<u8> {
    distribution_signed_bytes(
        &header.room,
        &header.sender,
        header.device,
        header.key_id,
        header.iteration,
        &header.signing_key,
        count,
        root,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::group::{MessageContext, OwnSenderKey, PeerSenderKey};

    struct Member {
        name: &'static str,
        identity: Identity,
        public: VerifiedIdentity,
        prekey: Prekey,
    }

    fn member(name: &'static str) -> Member {
        let identity = Identity::generate(2048).unwrap();
        let public = VerifiedIdentity::verify(&identity.publish(name).unwrap()).unwrap();
        Member {
            name,
            identity,
            public,
            prekey: Prekey::generate(2048, 0).unwrap(),
        }
    }

    fn recipient(member: &Member) -> Recipient<'_> {
        Recipient {
            user: member.name,
            device: 1,
            prekey_id: member.prekey.id(),
            prekey: member.prekey.key().public_key(),
        }
    }

    const LOBBY: MessageContext<'static> = MessageContext {
        room: "lobby",
        sender: "alice",
        device: 1,
    };

    #[test]
    fn each_recipient_opens_its_own_copy_under_one_signature() {
        let alice = member("alice");
        let others: Vec<Member> = ["bob", "carol", "dave"].into_iter().map(member).collect();
        let mut own = OwnSenderKey::generate().unwrap();
        own.seal(LOBBY, b"before").unwrap();
        own.acknowledged(0);
        let recipients: Vec<Recipient<'_>> = others.iter().map(recipient).collect();
        let sealed = SignedDistribution::seal(
            &alice.identity,
            "lobby",
            "alice",
            1,
            &own.distribution(),
            &recipients,
        )
        .unwrap();
        assert_eq!(sealed.copies.len(), 3);
        let message = own.seal(LOBBY, b"hello").unwrap();
        for (index, other) in others.iter().enumerate() {
            let delivered = sealed.delivered_copy(index).unwrap();
            let key = delivered
                .open(&alice.public, other.name, 1, &other.prekey)
                .unwrap();
            assert_eq!(key.iteration, 1);
            let mut peer = PeerSenderKey::new(&key).unwrap();
            assert_eq!(peer.open(LOBBY, &message).unwrap().as_slice(), b"hello");
            // Not anyone else's copy, device or prekey.
            let next = &others[(index + 1) % others.len()];
            assert!(
                delivered
                    .open(&alice.public, next.name, 1, &next.prekey)
                    .is_err()
            );
            assert!(
                delivered
                    .open(&alice.public, other.name, 2, &other.prekey)
                    .is_err()
            );
            assert!(
                delivered
                    .open(&alice.public, other.name, 1, &next.prekey)
                    .is_err()
            );
        }
        assert!(sealed.delivered_copy(3).is_none());
    }

    #[test]
    fn a_relay_cannot_change_a_copy_its_place_or_what_was_signed() {
        let alice = member("alice");
        let bob = member("bob");
        let carol = member("carol");
        let mallory = member("mallory");
        let own = OwnSenderKey::generate().unwrap();
        let sealed = SignedDistribution::seal(
            &alice.identity,
            "lobby",
            "alice",
            1,
            &own.distribution(),
            &[recipient(&bob), recipient(&carol)],
        )
        .unwrap();
        let genuine = sealed.delivered_copy(0).unwrap();
        assert!(genuine.open(&alice.public, "bob", 1, &bob.prekey).is_ok());

        // A chain key of the relay's choosing, wrapped for bob's real prekey.
        let mut substituted = genuine.clone();
        let label = chain_key_label("lobby", "alice", 1, "bob", 1, own.id(), bob.prekey.id());
        substituted.copy.wrapped = bob.prekey.key().public_key().wrap(&[9; 32], label).unwrap();
        let mut moved = genuine.clone();
        moved.index = 1;
        let mut shortened = genuine.clone();
        shortened.path.clear();
        shortened.count = 1;
        let mut later = genuine.clone();
        later.header.iteration += 1;
        let mut other_room = genuine.clone();
        other_room.header.room = "elsewhere".into();
        let mut other_signer = genuine.clone();
        other_signer.header.signing_key = mallory.public.fingerprint.as_bytes().to_owned();
        for forged in [
            substituted,
            moved,
            shortened,
            later,
            other_room,
            other_signer,
        ] {
            assert!(matches!(
                forged.open(&alice.public, "bob", 1, &bob.prekey),
                Err(CryptoError::BadSignature)
            ));
        }
        // Signed by someone else than the sender it names.
        let by_mallory = SignedDistribution::seal(
            &mallory.identity,
            "lobby",
            "alice",
            1,
            &own.distribution(),
            &[recipient(&bob)],
        )
        .unwrap();
        let delivered = by_mallory.delivered_copy(0).unwrap();
        assert!(matches!(
            delivered.open(&alice.public, "bob", 1, &bob.prekey),
            Err(CryptoError::BadSignature)
        ));
        assert!(
            delivered
                .open(&mallory.public, "bob", 1, &bob.prekey)
                .is_err()
        );
    }
}
