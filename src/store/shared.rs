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

/// What a change that numbers an entry did, stored under `seq`: the store gave the
/// number when the change asked it to (`given` 0).
pub(super) fn numbered(given: i64, seq: u64) -> super::Applied {
    match given {
        0 => super::Applied::Stored { seq },
        _ => super::Applied::Done,
    }
}

/// The sequence number a change that asked for `given` was stored under.
pub(super) fn stored_as(applied: super::Applied, given: u64) -> u64 {
    match applied {
        super::Applied::Stored { seq } => seq,
        _ => given,
    }
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

/// The quota a sender storing `stored` bytes exceeds once what it stores changes by
/// `change` bytes (a message it sends, less what the room forgets of its own to make
/// room: see [`stored_change`]), if any. Checked before anything is written, so a
/// refusal has nothing to undo. A sender without an identity row (`None`: only in tests
/// of the store alone) has no quota.
pub(super) fn exceeded_quota(
    stored: Option<i64>,
    change: i64,
    policy: &StoragePolicy,
) -> Option<Quota> {
    let stored = stored?.saturating_add(change).max(0) as u64;
    (stored > policy.max_user_bytes).then_some(Quota::User {
        limit: policy.max_user_bytes,
    })
}

/// How what `sender` stores changes when it stores a message of `bytes` and its room
/// forgets what `trim` found to make room for it: a member posting alone in a full room
/// is trimmed like anyone else, not refused.
pub(super) fn stored_change(bytes: i64, trim: Option<&Trim>, sender: &str) -> i64 {
    bytes.saturating_sub(trim.map_or(0, |trim| trim.bytes_of(sender)))
}

/// The bytes by which a store holding `total` exceeds its size.
pub(super) fn store_excess(total: Option<i64>, policy: &StoragePolicy) -> u64 {
    total.map_or(0, |total| {
        (total.max(0) as u64).saturating_sub(policy.max_store_bytes)
    })
}

/// How far a room beyond its limits must trim: messages and bytes to forget, from the
/// oldest. Fed the room's oldest messages one by one, it says when it has seen enough,
/// and keeps what it was fed (the last sequence number, each sender and size): every
/// message of the room up to [`Trim::last`] is to be forgotten, and is counted from
/// what was read, in the same transaction, without reading it again.
#[derive(Debug)]
pub(super) struct Trim {
    excess_count: u64,
    excess_bytes: u64,
    freed: u64,
    last: Option<i64>,
    /// The sender and size of each message taken, oldest first.
    taken: Vec<(String, i64)>,
}

impl Trim {
    /// What a room of `count` messages and `bytes` must forget; `None` if nothing.
    pub fn new(count: i64, bytes: i64, policy: &StoragePolicy) -> Option<Self> {
        let excess_count = (count.max(0) as u64).saturating_sub(policy.max_messages_per_room);
        let excess_bytes = (bytes.max(0) as u64).saturating_sub(policy.max_room_bytes);
        (excess_count > 0 || excess_bytes > 0).then_some(Self {
            excess_count,
            excess_bytes,
            freed: 0,
            last: None,
            taken: Vec::new(),
        })
    }

    /// What a room of `count` messages and `bytes` must forget to take a new message of
    /// `size` bytes as well; `None` if nothing. Planned before the message is stored.
    pub fn for_message(count: i64, bytes: i64, size: i64, policy: &StoragePolicy) -> Option<Self> {
        Self::new(count.saturating_add(1), bytes.saturating_add(size), policy)
    }

    /// Whether the next message alone can be enough: the bytes are freed and at most
    /// one more message is wanted. A full room forgets one message for each it stores,
    /// so the backends then read one message rather than a page (a page of 64 read for
    /// every message was half of SQLite's writer time).
    pub fn wants_one(&self) -> bool {
        self.freed >= self.excess_bytes
            && self.excess_count.saturating_sub(self.taken.len() as u64) <= 1
    }

    /// Counts the next oldest message, `seq` of `sender` and of `size` bytes, as
    /// forgotten; true once enough are.
    pub fn take(&mut self, seq: i64, sender: String, size: i64) -> bool {
        self.last = Some(seq);
        self.taken.push((sender, size));
        self.freed += size.max(0) as u64;
        self.taken.len() as u64 >= self.excess_count && self.freed >= self.excess_bytes
    }

    /// The trim, if it found anything to forget (a room may hold nothing it can).
    pub fn found(self) -> Option<Self> {
        self.last.is_some().then_some(self)
    }

    /// The newest message to forget: every message of the room up to it.
    pub fn last(&self) -> Option<i64> {
        self.last
    }

    /// The sender and size of each message to forget, oldest first.
    pub fn taken(&self) -> &[(String, i64)] {
        &self.taken
    }

    /// The bytes of `sender`'s messages among those to forget.
    pub fn bytes_of(&self, sender: &str) -> i64 {
        self.taken
            .iter()
            .filter(|(of, _)| of == sender)
            .map(|(_, size)| *size)
            .sum()
    }
}

/// A room's log from its rows, as both backends read them: messages, sender key rows
/// (sequence number, sender, key) and events (sequence number, user, reason, removal),
/// each in sequence order. Rows of one distribution become one entry.
pub(super) fn room_log(
    messages: Vec<crate::proto::MessageDelivery>,
    keys: Vec<(u64, String, super::WrappedKey)>,
    events: Vec<(u64, String, i32, Option<bytes::Bytes>)>,
) -> Vec<super::LogEntry> {
    use super::LogEntry;
    let mut log: Vec<LogEntry> = messages.into_iter().map(LogEntry::Message).collect();
    for (seq, sender, key) in keys {
        match log.last_mut() {
            Some(LogEntry::SenderKeys {
                seq: last, keys, ..
            }) if *last == seq => keys.push(key),
            _ => log.push(LogEntry::SenderKeys {
                seq,
                sender,
                keys: vec![key],
            }),
        }
    }
    for (seq, user, reason, removal) in events {
        log.push(match reason {
            0 => LogEntry::Joined { seq, user },
            reason => LogEntry::Left {
                seq,
                user,
                reason: crate::proto::LeaveReason::try_from(reason)
                    .unwrap_or(crate::proto::LeaveReason::Left),
                removal,
            },
        });
    }
    // Stable: one entry per sequence number anyway.
    log.sort_by_key(super::LogEntry::seq);
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_messages_per_room: u64, max_room_bytes: u64) -> StoragePolicy {
        StoragePolicy {
            max_messages_per_room,
            max_room_bytes,
            max_user_bytes: 100,
            ..StoragePolicy::UNLIMITED
        }
    }

    #[test]
    fn a_full_room_plans_one_message_read_alone_for_each_it_stores() {
        let policy = policy(3, u64::MAX);
        assert!(Trim::new(3, 30, &policy).is_none());
        let mut trim = Trim::for_message(3, 30, 10, &policy).unwrap();
        assert!(trim.wants_one());
        assert!(trim.take(7, "bob".into(), 12));
        assert_eq!(trim.last(), Some(7));
        assert_eq!(trim.bytes_of("bob"), 12);
        assert_eq!(trim.bytes_of("alice"), 0);
        assert_eq!(trim.taken(), [("bob".to_owned(), 12)]);
    }

    #[test]
    fn a_room_over_its_bytes_reads_pages_until_enough_is_freed() {
        let policy = policy(u64::MAX, 100);
        let mut trim = Trim::for_message(2, 95, 20, &policy).unwrap();
        assert!(!trim.wants_one());
        assert!(!trim.take(1, "bob".into(), 10));
        assert!(!trim.wants_one());
        assert!(trim.take(2, "alice".into(), 10));
        assert_eq!(stored_change(20, Some(&trim), "alice"), 10);
        assert_eq!(stored_change(20, None, "alice"), 20);
        // Nothing taken: nothing to forget.
        assert!(
            Trim::for_message(2, 95, 20, &policy)
                .unwrap()
                .found()
                .is_none()
        );
    }

    #[test]
    fn the_quota_is_checked_against_what_the_sender_would_store() {
        let policy = policy(u64::MAX, u64::MAX);
        assert_eq!(exceeded_quota(Some(90), 10, &policy), None);
        assert_eq!(
            exceeded_quota(Some(90), 11, &policy),
            Some(Quota::User { limit: 100 })
        );
        assert_eq!(exceeded_quota(Some(120), -20, &policy), None);
        assert_eq!(exceeded_quota(None, 1000, &policy), None);
    }
}
