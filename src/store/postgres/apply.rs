//! The changes of a commit, and pruning, on PostgreSQL: the same statements as SQLite's
//! (`sqlite.rs` and `sqlite/usage.rs` say why each is as it is), in PostgreSQL's SQL.
//! The usage counters move by exactly what each `DELETE ... RETURNING` forgot, or, for
//! a room's trim for a new message, by what the same transaction read of the messages
//! just before; the quota, trim and eviction decisions are `shared`'s.

use std::fmt::Display;
use std::time::Duration;

use prost::Message;

use super::{Params, Transaction, execute, get, select, tally};
use crate::proto::SealedMessage;
use crate::store::shared::{self, Trim, Usage, bits, from_bits, millis, saturating, stored_seq};
use crate::store::tally::Tally;
use crate::store::{Applied, Change, Pruned, StoragePolicy, StoreError};

/// What a `DELETE FROM messages` returns, for the counters.
const DELETED_MESSAGE: &str = "RETURNING room, sender, length(sealed)::BIGINT";

/// What a `DELETE FROM sender_keys` returns, for the counters.
const DELETED_KEY: &str = "RETURNING sender, (length(wrapped_key) + length(signature))::BIGINT";

/// Applies one change of a commit other than a message (`append_message`); `now_ms` is
/// the commit's time.
pub(super) async fn change(
    transaction: &Transaction<'_>,
    change: &Change,
    now_ms: i64,
) -> Result<Applied, StoreError> {
    match change {
        Change::CreateRoom { room, owner } => {
            execute(
                transaction,
                "INSERT INTO rooms (name, owner, last_seq, created_ms, used_ms) \
                 VALUES ($1, $2, 0, $3, $3)",
                &[room, owner, &now_ms],
                format_args!("create room {room:?}"),
            )
            .await?;
        }
        Change::DeleteRoom { room } => {
            let operation = format!("delete room {room:?}");
            delete_keys(
                transaction,
                &format!("DELETE FROM sender_keys WHERE room = $1 {DELETED_KEY}"),
                &[room],
                &operation,
            )
            .await?;
            delete_messages(
                transaction,
                &format!("DELETE FROM messages WHERE room = $1 {DELETED_MESSAGE}"),
                &[room],
                &operation,
            )
            .await?;
            for sql in [
                "DELETE FROM members WHERE room = $1",
                "DELETE FROM invitations WHERE room = $1",
                "DELETE FROM removals WHERE room = $1",
                "DELETE FROM room_events WHERE room = $1",
                "DELETE FROM rooms WHERE name = $1",
            ] {
                execute(transaction, sql, &[room], &operation).await?;
            }
        }
        Change::Invite {
            room,
            user,
            invitation,
        } => {
            execute(
                transaction,
                "INSERT INTO invitations (room, \"user\", invitation) VALUES ($1, $2, $3) \
                 ON CONFLICT (room, \"user\") DO UPDATE SET invitation = excluded.invitation",
                &[room, user, &invitation.as_ref()],
                format_args!("invite {user:?} to room {room:?}"),
            )
            .await?;
            execute(
                transaction,
                "DELETE FROM removals WHERE room = $1 AND \"user\" = $2",
                &[room, user],
                format_args!("lift the removal of {user:?} from room {room:?}"),
            )
            .await?;
        }
        Change::RecordRemoval {
            room,
            user,
            removal,
        } => {
            execute(
                transaction,
                "INSERT INTO removals (room, \"user\", removal) VALUES ($1, $2, $3) \
                 ON CONFLICT (room, \"user\") DO UPDATE SET removal = excluded.removal",
                &[room, user, &removal.as_ref()],
                format_args!("record the removal of {user:?} from room {room:?}"),
            )
            .await?;
        }
        Change::Uninvite { room, user } => {
            execute(
                transaction,
                "DELETE FROM invitations WHERE room = $1 AND \"user\" = $2",
                &[room, user],
                format_args!("withdraw the invitation of {user:?} to room {room:?}"),
            )
            .await?;
        }
        Change::AddMember {
            room,
            user,
            seq: given,
        } => {
            let seq = use_seq(transaction, room, *given, now_ms).await?;
            execute(
                transaction,
                "INSERT INTO members (room, \"user\", joined_seq) VALUES ($1, $2, $3)",
                &[room, user, &seq],
                format_args!("add member {user:?} to room {room:?}"),
            )
            .await?;
            execute(
                transaction,
                "INSERT INTO room_events (room, seq, \"user\", reason) VALUES ($1, $2, $3, 0)",
                &[room, &seq, user],
                format_args!("note that {user:?} joined room {room:?}"),
            )
            .await?;
            return Ok(shared::numbered(stored_seq(*given)?, from_bits(seq)));
        }
        Change::RemoveMember {
            room,
            user,
            seq: given,
            reason,
        } => {
            let seq = use_seq(transaction, room, *given, now_ms).await?;
            execute(
                transaction,
                "INSERT INTO room_events (room, seq, \"user\", reason) VALUES ($1, $2, $3, $4)",
                &[room, &seq, user, &(*reason as i32)],
                format_args!("note that {user:?} left room {room:?}"),
            )
            .await?;
            let operation = format!("remove member {user:?} from room {room:?}");
            execute(
                transaction,
                "DELETE FROM members WHERE room = $1 AND \"user\" = $2",
                &[room, user],
                &operation,
            )
            .await?;
            delete_keys(
                transaction,
                &format!(
                    "DELETE FROM sender_keys WHERE room = $1 AND recipient = $2 {DELETED_KEY}"
                ),
                &[room, user],
                &operation,
            )
            .await?;
            return Ok(shared::numbered(stored_seq(*given)?, from_bits(seq)));
        }
        // Messages are counted by a tally, in `commit`.
        Change::AppendMessage { .. } => unreachable!("commit appends messages itself"),
        Change::AppendSenderKeys {
            room,
            seq: given,
            sender,
            key_id,
            keys,
        } => {
            let seq = use_seq(transaction, room, *given, now_ms).await?;
            let key_id = bits(*key_id);
            let mut bytes = 0;
            for key in keys {
                let what = format!(
                    "the sender key {seq} of {sender:?} for {:?} in room {room:?}",
                    key.recipient
                );
                execute(
                    transaction,
                    "INSERT INTO sender_keys \
                     (room, seq, sender, recipient, key_id, wrapped_key, signature, stored_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        room,
                        &seq,
                        sender,
                        &key.recipient,
                        &key_id,
                        &key.wrapped_key.as_ref(),
                        &key.signature.as_ref(),
                        &now_ms,
                    ],
                    format_args!("append {what}"),
                )
                .await?;
                bytes += key.wrapped_key.len() + key.signature.len();
                let earlier: Params<'_> = &[room, sender, &key.recipient, &seq];
                execute(
                    transaction,
                    "UPDATE sender_keys SET superseded_seq = $4 \
                     WHERE room = $1 AND sender = $2 AND recipient = $3 AND seq < $4 \
                     AND superseded_seq IS NULL",
                    earlier,
                    format_args!("mark the keys before {what} superseded"),
                )
                .await?;
                delete_keys(
                    transaction,
                    &format!(
                        "DELETE FROM sender_keys AS old \
                         WHERE room = $1 AND sender = $2 AND recipient = $3 AND seq < $4 \
                         AND NOT EXISTS (SELECT 1 FROM messages AS m \
                          WHERE m.room = $1 AND m.sender = $2 AND m.key_id = old.key_id) \
                         {DELETED_KEY}"
                    ),
                    earlier,
                    format_args!("drop the keys {what} supersedes"),
                )
                .await?;
            }
            let mut usage = Usage::default();
            usage.key(1, sender, saturating(bytes));
            count(transaction, usage).await?;
            return Ok(shared::numbered(stored_seq(*given)?, from_bits(seq)));
        }
        Change::Seen { user } => {
            execute(
                transaction,
                "UPDATE identities SET seen_ms = GREATEST(seen_ms, $2) WHERE \"user\" = $1",
                &[user, &now_ms],
                format_args!("note that {user:?} was seen"),
            )
            .await?;
        }
        Change::DeleteIdentity { user } => {
            let operation = format!("delete the identity of {user:?}");
            delete_keys(
                transaction,
                &format!("DELETE FROM sender_keys WHERE sender = $1 {DELETED_KEY}"),
                &[user],
                &operation,
            )
            .await?;
            for sql in [
                "DELETE FROM invitations WHERE \"user\" = $1",
                "DELETE FROM removals WHERE \"user\" = $1",
                "DELETE FROM prekeys WHERE \"user\" = $1",
                "DELETE FROM members WHERE \"user\" = $1",
                "DELETE FROM identities WHERE \"user\" = $1",
            ] {
                execute(transaction, sql, &[user], &operation).await?;
            }
        }
    }
    Ok(Applied::Done)
}

/// Raises the room's last sequence number to `seq`, or for 0 takes the room's next
/// (the row locked until the commit, so relays sharing the database number one at a
/// time), and notes that the room was used at `now_ms`; an unknown room is an error.
/// Returns the number used.
async fn use_seq(
    transaction: &Transaction<'_>,
    room: &str,
    seq: u64,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let seq = stored_seq(seq)?;
    if seq == 0 {
        let next = select(
            transaction,
            "UPDATE rooms SET last_seq = last_seq + 1, used_ms = GREATEST(used_ms, $2) \
             WHERE name = $1 RETURNING last_seq",
            &[&room, &now_ms],
            format_args!("number an entry of room {room:?}"),
        )
        .await?;
        return match next.first() {
            Some(row) => get(row, 0),
            None => Err(StoreError::Database(format!(
                "an entry is for room {room:?}, which does not exist"
            ))),
        };
    }
    let changed = execute(
        transaction,
        "UPDATE rooms SET last_seq = GREATEST(last_seq, $2), used_ms = GREATEST(used_ms, $3) \
         WHERE name = $1",
        &[&room, &seq, &now_ms],
        format_args!("use sequence number {seq} in room {room:?}"),
    )
    .await?;
    if changed == 0 {
        return Err(StoreError::Database(format!(
            "sequence number {seq} is for room {room:?}, which does not exist"
        )));
    }
    Ok(seq)
}

/// Stores a message unless it is a resend or beyond its sender's quota, as SQLite's
/// `append_message` does, counted in `tally`.
pub(super) async fn append_message(
    transaction: &Transaction<'_>,
    tally: &mut Tally,
    room: &str,
    seq: u64,
    sender: &str,
    sealed: &SealedMessage,
    policy: &StoragePolicy,
) -> Result<Applied, StoreError> {
    let given = stored_seq(seq)?;
    let (key_id, iteration) = (bits(sealed.key_id), i64::from(sealed.iteration));
    tally::read_room(transaction, tally, room, given).await?;
    tally::read_user(transaction, tally, sender).await?;
    let stored = tally.number(room, given);
    let operation = format!("append message {stored} of {sender:?} to room {room:?}");
    let encoded = sealed.encode_to_vec();
    let size = saturating(encoded.len());
    // Decided before anything is written, as on SQLite: nothing to roll back.
    let trim = match tally.room(room).trim_for(size, policy) {
        Some((trim, after)) => read_trim(transaction, room, trim, after, from_bits(stored)).await?,
        None => None,
    };
    let change = shared::stored_change(size, trim.as_ref(), sender);
    let stored_before = async || -> Result<Option<u64>, StoreError> {
        let first = select(
            transaction,
            "SELECT seq FROM messages \
             WHERE room = $1 AND sender = $2 AND key_id = $3 AND iteration = $4",
            &[&room, &sender, &key_id, &iteration],
            &operation,
        )
        .await?;
        first
            .first()
            .map(|row| get::<i64>(row, 0).map(from_bits))
            .transpose()
    };
    if let Some(quota) = shared::exceeded_quota(tally.stored_bytes(sender), change, policy) {
        // A resend of what is stored (and stays so) is acknowledged, whatever the quota
        // says now.
        return Ok(match stored_before().await? {
            Some(first) if tally.room(room).keeps(bits(first)) => Applied::Duplicate { seq: first },
            _ => Applied::OverQuota(quota),
        });
    }
    let inserted = execute(
        transaction,
        "INSERT INTO messages (room, seq, sender, key_id, iteration, sealed, stored_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (room, sender, key_id, iteration) DO NOTHING",
        &[
            &room,
            &stored,
            &sender,
            &key_id,
            &iteration,
            &encoded,
            &tally.now_ms(),
        ],
        &operation,
    )
    .await?;
    if inserted == 0 {
        return match stored_before().await? {
            None => Err(StoreError::Database(format!(
                "{operation}: refused as a resend of a message that is not stored"
            ))),
            // A resend of a message this run forgets: forgotten now, and stored anew.
            Some(first) if !tally.room(room).keeps(bits(first)) => {
                tally::write_and_restart(transaction, tally).await?;
                Box::pin(append_message(
                    transaction,
                    tally,
                    room,
                    seq,
                    sender,
                    sealed,
                    policy,
                ))
                .await
            }
            Some(first) => Ok(Applied::Duplicate { seq: first }),
        };
    }
    tally.stored_message(room, stored, sender, size, trim.as_ref());
    Ok(shared::numbered(given, from_bits(stored)))
}

/// Forgets what `policy` no longer keeps as of `now`: old messages, each room's excess,
/// and the sender keys no remaining message needs.
pub(super) async fn prune(
    transaction: &Transaction<'_>,
    policy: &StoragePolicy,
    now: Duration,
) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    if let Some(max_age) = policy.max_age {
        pruned.messages += delete_messages(
            transaction,
            &format!("DELETE FROM messages WHERE stored_ms < $1 {DELETED_MESSAGE}"),
            &[&millis(now.saturating_sub(max_age))],
            "prune the messages older than the retention",
        )
        .await?;
    }
    let rooms = select(
        transaction,
        "SELECT name FROM rooms",
        &[],
        "read the rooms to prune",
    )
    .await?
    .iter()
    .map(|row| get::<String>(row, 0))
    .collect::<Result<Vec<_>, _>>()?;
    for room in rooms {
        pruned.messages += trim_room(transaction, &room, policy, u64::MAX).await?;
        pruned.sender_keys += delete_keys(
            transaction,
            &format!(
                "DELETE FROM sender_keys AS old \
                 WHERE room = $1 AND superseded_seq IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM messages AS m \
                  WHERE m.room = $1 AND m.sender = old.sender AND m.key_id = old.key_id) \
                 {DELETED_KEY}"
            ),
            &[&room],
            format_args!("prune the sender keys of room {room:?}"),
        )
        .await?;
    }
    Ok(pruned)
}

/// What `room` must forget to hold no more than `policy` lets a room keep, never a
/// message at or after `keep_from`; as SQLite's `plan_trim`, it changes nothing and
/// reads the room's oldest messages only as far as they would be deleted.
async fn plan_trim(
    transaction: &Transaction<'_>,
    room: &str,
    policy: &StoragePolicy,
    keep_from: u64,
) -> Result<Option<Trim>, StoreError> {
    let operation = format!("trim room {room:?}");
    let counts = select(
        transaction,
        "SELECT message_count, message_bytes FROM rooms WHERE name = $1",
        &[&room],
        &operation,
    )
    .await?;
    let Some(row) = counts.first() else {
        return Ok(None);
    };
    let (count, bytes) = (get(row, 0)?, get(row, 1)?);
    match Trim::new(count, bytes, policy) {
        Some(trim) => read_trim(transaction, room, trim, -1, keep_from).await,
        None => Ok(None),
    }
}

/// Feeds `trim` the oldest messages of `room` after `after` and before `keep_from`, as
/// far as it needs; the trim, if it found anything to forget.
async fn read_trim(
    transaction: &Transaction<'_>,
    room: &str,
    mut trim: Trim,
    mut after: i64,
    keep_from: u64,
) -> Result<Option<Trim>, StoreError> {
    let operation = format!("trim room {room:?}");
    let keep_from = saturating(keep_from);
    'pages: loop {
        let page = select(
            transaction,
            if trim.wants_one() {
                "SELECT seq, sender, length(sealed)::BIGINT FROM messages \
                 WHERE room = $1 AND seq > $2 AND seq < $3 ORDER BY seq LIMIT 1"
            } else {
                "SELECT seq, sender, length(sealed)::BIGINT FROM messages \
                 WHERE room = $1 AND seq > $2 AND seq < $3 ORDER BY seq LIMIT 64"
            },
            &[&room, &after, &keep_from],
            &operation,
        )
        .await?;
        if page.is_empty() {
            break;
        }
        for row in &page {
            let seq: i64 = get(row, 0)?;
            after = seq;
            if trim.take(seq, get(row, 1)?, get(row, 2)?) {
                break 'pages;
            }
        }
    }
    Ok(trim.found())
}

/// Makes `room` forget its oldest messages beyond what `policy` lets a room keep, never
/// one at or after `keep_from`; returns how many it forgot.
async fn trim_room(
    transaction: &Transaction<'_>,
    room: &str,
    policy: &StoragePolicy,
    keep_from: u64,
) -> Result<u64, StoreError> {
    let Some(trim) = plan_trim(transaction, room, policy, keep_from).await? else {
        return Ok(0);
    };
    delete_messages(
        transaction,
        &format!("DELETE FROM messages WHERE room = $1 AND seq <= $2 {DELETED_MESSAGE}"),
        &[&room, &trim.last()],
        format_args!("trim room {room:?}"),
    )
    .await
}

/// While the store holds more than `policy` lets it, forgets its oldest messages in the
/// order they were stored, never message `seq` of `room`.
pub(super) async fn evict_oldest(
    transaction: &Transaction<'_>,
    policy: &StoragePolicy,
    room: &str,
    seq: u64,
) -> Result<u64, StoreError> {
    let operation = "make room in the store";
    let total = select(
        transaction,
        "SELECT stored_bytes FROM usage WHERE id = 1",
        &[],
        operation,
    )
    .await?
    .first()
    .map(|row| get::<i64>(row, 0))
    .transpose()?;
    let mut excess = shared::store_excess(total, policy);
    let seq = saturating(seq);
    let mut evicted = 0;
    while excess > 0 {
        let page = select(
            transaction,
            "SELECT id, length(sealed)::BIGINT FROM messages \
             WHERE NOT (room = $1 AND seq = $2) ORDER BY stored_ms, id LIMIT 64",
            &[&room, &seq],
            operation,
        )
        .await?;
        if page.is_empty() {
            break;
        }
        for row in &page {
            let (id, size): (i64, i64) = (get(row, 0)?, get(row, 1)?);
            evicted += delete_messages(
                transaction,
                &format!("DELETE FROM messages WHERE id = $1 {DELETED_MESSAGE}"),
                &[&id],
                operation,
            )
            .await?;
            excess = excess.saturating_sub(size.max(0) as u64);
            if excess == 0 {
                break;
            }
        }
    }
    Ok(evicted)
}

/// Runs a `DELETE FROM messages ... RETURNING room, sender, bytes` and counts what it
/// forgot; returns how many messages.
async fn delete_messages(
    transaction: &Transaction<'_>,
    sql: &str,
    params: Params<'_>,
    operation: impl Display,
) -> Result<u64, StoreError> {
    let deleted = select(transaction, sql, params, operation).await?;
    let mut usage = Usage::default();
    for row in &deleted {
        usage.message(-1, get(row, 0)?, get(row, 1)?, get(row, 2)?);
    }
    count(transaction, usage).await?;
    Ok(deleted.len() as u64)
}

/// Runs a `DELETE FROM sender_keys ... RETURNING sender, bytes` and counts what it
/// forgot; returns how many rows.
async fn delete_keys(
    transaction: &Transaction<'_>,
    sql: &str,
    params: Params<'_>,
    operation: impl Display,
) -> Result<u64, StoreError> {
    let deleted = select(transaction, sql, params, operation).await?;
    let mut usage = Usage::default();
    for row in &deleted {
        usage.key(-1, get(row, 0)?, get(row, 1)?);
    }
    count(transaction, usage).await?;
    Ok(deleted.len() as u64)
}

/// Writes `usage` to the counters.
async fn count(transaction: &Transaction<'_>, usage: Usage) -> Result<(), StoreError> {
    for (room, (messages, bytes)) in usage.rooms {
        execute(
            transaction,
            "UPDATE rooms SET message_count = message_count + $2, \
             message_bytes = message_bytes + $3 WHERE name = $1",
            &[&room, &messages, &bytes],
            format_args!("count the messages of room {room:?}"),
        )
        .await?;
    }
    for (user, (messages, bytes)) in usage.users {
        execute(
            transaction,
            "UPDATE identities SET message_count = message_count + $2, \
             stored_bytes = stored_bytes + $3 WHERE \"user\" = $1",
            &[&user, &messages, &bytes],
            format_args!("count what {user:?} stores"),
        )
        .await?;
    }
    if usage.total != 0 {
        execute(
            transaction,
            "UPDATE usage SET stored_bytes = stored_bytes + $1 WHERE id = 1",
            &[&usage.total],
            "count what the store holds",
        )
        .await?;
    }
    Ok(())
}
