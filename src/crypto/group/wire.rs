//! The group cipher's values as they travel in chat.v2 frames, and back. Only shapes
//! change here: every check stays with the type that verifies or opens.

use bytes::Bytes;

use super::distribution::{DeliveredCopy, DistributionHeader, SignedDistribution, WrappedCopy};
use super::{GroupMessage, SIGNATURE_LEN, SIGNING_PUBLIC_KEY_LEN};
use crate::crypto::CryptoError;
use crate::crypto::merkle::Hash;
use crate::proto;

/// A sealed message as sent by `device`.
pub fn sealed_message(message: GroupMessage, device: u32) -> proto::SealedMessage {
    proto::SealedMessage {
        key_id: message.key_id,
        iteration: message.iteration,
        device,
        ciphertext: message.ciphertext.into(),
        signature: Bytes::copy_from_slice(&message.signature),
    }
}

/// A sealed message as received; one whose signature is not 64 bytes cannot verify.
pub fn group_message(sealed: &proto::SealedMessage) -> Result<GroupMessage, CryptoError> {
    let signature: [u8; SIGNATURE_LEN] = sealed
        .signature
        .as_ref()
        .try_into()
        .map_err(|_| CryptoError::BadSignature)?;
    Ok(GroupMessage {
        key_id: sealed.key_id,
        iteration: sealed.iteration,
        ciphertext: sealed.ciphertext.to_vec(),
        signature,
    })
}

/// The frame that hands `distribution` out.
pub fn distribute_frame(distribution: SignedDistribution) -> proto::DistributeSenderKey {
    let header = &distribution.header;
    proto::DistributeSenderKey {
        room: header.room.clone(),
        header: Some(proto::DistributionHeader {
            key_id: header.key_id,
            iteration: header.iteration,
            device: header.device,
            signing_public_key: Bytes::copy_from_slice(&header.signing_key),
        }),
        copies: distribution
            .copies
            .into_iter()
            .map(|copy| proto::WrappedChainKey {
                recipient: copy.recipient,
                device: copy.device,
                prekey_id: copy.prekey_id,
                wrapped: copy.wrapped.into(),
            })
            .collect(),
        signature: distribution.signature.into(),
    }
}

/// A delivered copy of a sender key, as received; one with missing or misshapen parts
/// cannot verify.
pub fn delivered_copy(delivery: &proto::SenderKeyDelivery) -> Result<DeliveredCopy, CryptoError> {
    let (Some(header), Some(copy)) = (&delivery.header, &delivery.copy) else {
        return Err(CryptoError::BadSignature);
    };
    let signing_key: [u8; SIGNING_PUBLIC_KEY_LEN] = header
        .signing_public_key
        .as_ref()
        .try_into()
        .map_err(|_| CryptoError::BadSignature)?;
    let path = delivery
        .path
        .iter()
        .map(|hash| Hash::try_from(hash.as_ref()).map_err(|_| CryptoError::BadSignature))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DeliveredCopy {
        header: DistributionHeader {
            room: delivery.room.clone(),
            sender: delivery.sender.clone(),
            device: header.device,
            key_id: header.key_id,
            iteration: header.iteration,
            signing_key,
        },
        copy: WrappedCopy {
            recipient: copy.recipient.clone(),
            device: copy.device,
            prekey_id: copy.prekey_id,
            wrapped: copy.wrapped.to_vec(),
        },
        index: delivery.index,
        count: delivery.count,
        path,
        signature: delivery.signature.to_vec(),
    })
}
