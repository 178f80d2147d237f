//! How a recipient's copy of a key distribution is stored: the `SenderKeyDelivery` the
//! recipient will receive, encoded without what the relay fills in when it delivers it
//! (room, sender, sequence number and the distribution's signature, kept beside it).
//! One format, written by the relay's frame checks and read back by the store.

use bytes::Bytes;
use prost::Message;

use super::StoreError;
use crate::proto::{DistributionHeader, SenderKeyDelivery, WrappedChainKey};

/// The stored form of copy `index` of `count`, with its Merkle audit path.
pub fn encode(
    header: &DistributionHeader,
    copy: WrappedChainKey,
    index: u32,
    count: u32,
    path: Vec<Bytes>,
) -> Bytes {
    SenderKeyDelivery {
        header: Some(header.clone()),
        copy: Some(copy),
        index,
        count,
        path,
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

/// The delivery of a stored copy: entry `seq` of `room`, from `sender`. A copy that
/// does not decode is a [`StoreError::CorruptEntry`].
pub fn delivery(
    room: &str,
    sender: String,
    seq: u64,
    stored: &[u8],
    signature: Bytes,
) -> Result<SenderKeyDelivery, StoreError> {
    let mut delivery =
        SenderKeyDelivery::decode(stored).map_err(|error| StoreError::CorruptEntry {
            room: room.to_owned(),
            seq,
            reason: format!("a sender key copy: {error}"),
        })?;
    delivery.room = room.to_owned();
    delivery.sender = sender;
    delivery.seq = seq;
    delivery.signature = signature;
    Ok(delivery)
}

/// The key id of a stored copy, for the store's index of keys.
pub fn key_id(delivery: &SenderKeyDelivery) -> u64 {
    delivery.header.as_ref().map_or(0, |header| header.key_id)
}
