//! What the store's backends share, whatever their SQL: how values are stored (u64s as
//! the bits of an i64, times as milliseconds), how stored bytes are read back, how
//! registration tokens are made and named, the schema-version check, and the usage
//! arithmetic behind quotas, trimming and eviction. Each backend only runs the
//! statements; the decisions are made here once, so both decide the same.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use sha2::{Digest, Sha256};

use super::{Entry, Quota, StoragePolicy, StoreError};
use crate::proto::{MessageDelivery, PublicIdentity, SealedMessage};

/// A key id, in a 64-bit integer column. Key ids are only compared for
/// equality, so the cast keeps every bit and nothing else: a random key id above
/// `i64::MAX` is stored negative and read back as it was.
pub(super) fn bits(value: u64) -> i64 {
    value as i64
}

/// The inverse of [`bits`], also for the sequence numbers read back.
pub(super) fn from_bits(value: i64) -> u64 {
    value as u64
}

/// A sequence number to store. Sequence numbers are ordered in SQL, where one above
/// `i64::MAX` stored as its bits would sort before 0, so it is refused.
pub(super) fn stored_seq(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| {
        StoreError::Database(format!(
            "sequence number {seq} is beyond the highest the store can order, {}",
            i64::MAX
        ))
    })
}

/// A sequence number bound or a count in a query. No stored sequence number is above
/// `i64::MAX`, so a larger bound (a caller may ask for everything up to `u64::MAX`)
/// means the same as `i64::MAX`.
pub(super) fn saturating(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// Bytes of randomness in a registration token.
pub(super) const TOKEN_LEN: usize = 16;

/// What is kept of a registration token: its SHA-256.
pub(super) fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.trim().as_bytes()).to_vec()
}

/// How a registration token is named in listings: the start of its digest, which says
/// nothing of the token itself.
pub(super) fn token_id(digest: &[u8]) -> String {
    digest
        .iter()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Milliseconds since the Unix epoch.
pub(super) fn millis(since_epoch: Duration) -> i64 {
    saturating(since_epoch.as_millis())
}

/// The wall clock, in milliseconds since the Unix epoch (0 for a clock before it).
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

/// The message `sender` sent to `room` under `seq`, from the `sealed` BLOB it is stored
/// as: how the store reads every message it hands out. A BLOB that does not decode is a
/// [`StoreError::CorruptEntry`] naming the entry.
pub fn decode_message(
    room: &str,
    seq: u64,
    sender: String,
    sealed: Vec<u8>,
) -> Result<MessageDelivery, StoreError> {
    // From `Bytes`, the ciphertext and signature are slices of it, not copies.
    let sealed = SealedMessage::decode(bytes::Bytes::from(sealed)).map_err(|error| {
        StoreError::CorruptEntry {
            room: room.to_owned(),
            seq,
            reason: format!("the sealed message of {sender:?} does not decode: {error}"),
        }
    })?;
    Ok(MessageDelivery {
        room: room.to_owned(),
        sender,
        sealed: Some(sealed),
        seq,
    })
}

/// The identity registered under `user`, from the BLOB it is stored as: how the store
/// reads every identity. One that does not decode, or names another user, is a
/// [`StoreError::Corrupt`].
pub fn decode_identity(user: String, stored: &[u8]) -> Result<PublicIdentity, StoreError> {
    let identity = PublicIdentity::decode(stored).map_err(|error| StoreError::Corrupt {
        user: user.clone(),
        reason: error.to_string(),
    })?;
    if identity.user != user {
        return Err(StoreError::Corrupt {
            user,
            reason: format!("it names {:?}", identity.user),
        });
    }
    Ok(identity)
}

/// `keys` and `messages` (each in sequence order) merged in sequence order, at most
/// `limit`. A key comes before a message under the same number, as a key is needed
/// before the messages sealed with it.
pub(super) fn in_sequence(mut keys: Vec<Entry>, messages: Vec<Entry>, limit: usize) -> Vec<Entry> {
    keys.extend(messages);
    // Stable: the keys stay before the messages under equal numbers.
    keys.sort_by_key(Entry::seq);
    keys.truncate(limit);
    keys
}

/// A new registration token: the secret shown once, and the digest that is kept.
pub(super) fn new_token() -> Result<(String, Vec<u8>), StoreError> {
    let mut secret = [0u8; TOKEN_LEN];
    getrandom::fill(&mut secret).map_err(|error| {
        StoreError::Database(format!("the operating system's RNG failed: {error}"))
    })?;
    let token: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
    let digest = token_digest(&token);
    Ok((token, digest))
}

/// The digests among `digests` that `id_prefix` names (an empty prefix names none: a
/// slip must not revoke every token).
pub(super) fn tokens_named<'a>(
    digests: &'a [Vec<u8>],
    id_prefix: &'a str,
) -> impl Iterator<Item = &'a Vec<u8>> {
    digests
        .iter()
        .filter(move |digest| !id_prefix.is_empty() && token_id(digest).starts_with(id_prefix))
}

/// Which of `migrations` a database at schema version `found` still needs, by index;
/// a schema newer than the migrations know is [`StoreError::TooNew`].
pub(super) fn pending(
    found: i64,
    migrations: &[&str],
) -> Result<std::ops::Range<usize>, StoreError> {
    let known = migrations.len() as i64;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    Ok(found.max(0) as usize..migrations.len())
}

/// How the usage counters change: messages and bytes per room and per user, bytes in
/// all. Every statement that stores or deletes messages or sender keys adds what it
/// did here, and the backend writes the sums in the same transaction.
#[derive(Debug, Default)]
pub(super) struct Usage {
    /// Room → (messages, bytes of messages).
    pub rooms: HashMap<String, (i64, i64)>,
    /// User → (messages, bytes of messages and sender keys).
    pub users: HashMap<String, (i64, i64)>,
    pub total: i64,
}

impl Usage {
    /// A message of `bytes` stored (`sign` 1) or forgotten (`sign` -1).
    pub fn message(&mut self, sign: i64, room: &str, sender: &str, bytes: i64) {
        let room = self.rooms.entry(room.to_owned()).or_default();
        room.0 += sign;
        room.1 += sign * bytes;
        let user = self.users.entry(sender.to_owned()).or_default();
        user.0 += sign;
        user.1 += sign * bytes;
        self.total += sign * bytes;
    }

    /// A sender key (wrapped key and signature) of `bytes` stored or forgotten.
    pub fn key(&mut self, sign: i64, sender: &str, bytes: i64) {
        self.users.entry(sender.to_owned()).or_default().1 += sign * bytes;
        self.total += sign * bytes;
    }
}

/// The quota a sender storing `stored` bytes exceeds, if any. A sender without an
/// identity row (`None`: only in tests of the store alone) has no quota.
pub(super) fn exceeded_quota(stored: Option<i64>, policy: &StoragePolicy) -> Option<Quota> {
    let stored = stored.map_or(0, |stored| stored.max(0) as u64);
    (stored > policy.max_user_bytes).then_some(Quota::User {
        limit: policy.max_user_bytes,
    })
}

/// The bytes by which a store holding `total` exceeds its size.
pub(super) fn store_excess(total: Option<i64>, policy: &StoragePolicy) -> u64 {
    total.map_or(0, |total| {
        (total.max(0) as u64).saturating_sub(policy.max_store_bytes)
    })
}

/// How far a room beyond its limits must trim: messages and bytes to forget, from the
/// oldest. Fed the room's oldest messages one by one, it says when it has seen enough.
#[derive(Debug)]
pub(super) struct Trim {
    excess_count: u64,
    excess_bytes: u64,
    found: u64,
    freed: u64,
}

impl Trim {
    /// What a room of `count` messages and `bytes` must forget; `None` if nothing.
    pub fn new(count: i64, bytes: i64, policy: &StoragePolicy) -> Option<Self> {
        let excess_count = (count.max(0) as u64).saturating_sub(policy.max_messages_per_room);
        let excess_bytes = (bytes.max(0) as u64).saturating_sub(policy.max_room_bytes);
        (excess_count > 0 || excess_bytes > 0).then_some(Self {
            excess_count,
            excess_bytes,
            found: 0,
            freed: 0,
        })
    }

    /// Counts the next oldest message, of `size` bytes, as forgotten; true once enough
    /// are.
    pub fn take(&mut self, size: i64) -> bool {
        self.found += 1;
        self.freed += size.max(0) as u64;
        self.found >= self.excess_count && self.freed >= self.excess_bytes
    }
}
