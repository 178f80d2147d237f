//! What a commit does when several relays serve the database together (`--nats`):
//! it locks what it writes in one order, so that their commits wait for each other
//! rather than deadlock, and it checks again who may send, since another relay may
//! have removed a member since this relay's hub took the message.

use std::collections::{BTreeSet, HashSet};

use super::{Transaction, get, select};
use crate::store::{Change, StoreError, WrappedKey};

/// The members of a commit's rooms that it touches, kept up to date as its changes
/// join and remove them.
pub(super) struct Members {
    /// (room, user).
    pairs: HashSet<(String, String)>,
    /// The batch's rooms that exist, as its changes create and delete them.
    rooms: HashSet<String>,
    /// Rooms another relay created as another kind of room: what the batch does in
    /// them is refused.
    conflicted: HashSet<String>,
}

/// What a change may do, once membership is checked.
pub(super) enum Checked {
    AsIs,
    /// Sender keys, without those for users who are no longer members.
    Narrowed(Change),
    /// The sender is not a member of the room: nothing of it is stored.
    Refused,
    /// Another relay changed the room first: nothing of it is done.
    Conflict,
}

impl Members {
    /// Checks `change` against the members, and notes what it changes of them.
    pub(super) fn check(&mut self, change: &Change) -> Checked {
        let member = |pairs: &HashSet<(String, String)>, room: &str, user: &str| {
            pairs.contains(&(room.to_owned(), user.to_owned()))
        };
        match change {
            Change::AppendMessage { room, sender, .. } if !member(&self.pairs, room, sender) => {
                Checked::Refused
            }
            Change::AppendSenderKeys {
                room,
                seq,
                sender,
                key_id,
                keys,
            } => {
                if !member(&self.pairs, room, sender) {
                    return Checked::Refused;
                }
                let kept: Vec<WrappedKey> = keys
                    .iter()
                    .filter(|key| member(&self.pairs, room, &key.recipient))
                    .cloned()
                    .collect();
                if kept.len() == keys.len() {
                    return Checked::AsIs;
                }
                Checked::Narrowed(Change::AppendSenderKeys {
                    room: room.clone(),
                    seq: *seq,
                    sender: sender.clone(),
                    key_id: *key_id,
                    keys: kept,
                })
            }
            Change::AddMember { room, .. }
                if self.conflicted.contains(room) || !self.rooms.contains(room) =>
            {
                Checked::Conflict
            }
            // Joined, or left, through another relay at the same moment (a user with a
            // session on each, for an instant).
            Change::AddMember { room, user, .. } => {
                match self.pairs.insert((room.clone(), user.clone())) {
                    true => Checked::AsIs,
                    false => Checked::Conflict,
                }
            }
            Change::RemoveMember { room, user, .. } => {
                match self.pairs.remove(&(room.clone(), user.clone())) {
                    true => Checked::AsIs,
                    false => Checked::Conflict,
                }
            }
            Change::DeleteRoom { room } => {
                self.pairs.retain(|(of, _)| of != room);
                self.rooms.remove(room);
                Checked::AsIs
            }
            _ => Checked::AsIs,
        }
    }
}

/// Locks the rows a batch of `changes` writes, each kind in one order (its rooms by
/// name, its senders by name, then the store's total), before it writes any: relays
/// sharing the database then wait for each other's batches instead of deadlocking,
/// which their batches, each taking rows in the order of its own changes, would. Then
/// reads who of the users the batch names is a member of its rooms: with the rooms
/// locked, no other relay changes that until the commit.
pub(super) async fn lock_in_order(
    transaction: &Transaction<'_>,
    changes: &[Change],
) -> Result<Members, StoreError> {
    let mut rooms = BTreeSet::new();
    let mut senders = BTreeSet::new();
    let mut users = BTreeSet::new();
    for change in changes {
        match change {
            Change::AppendMessage { room, sender, .. } => {
                rooms.insert(room.as_str());
                senders.insert(sender.as_str());
            }
            Change::AppendSenderKeys {
                room, sender, keys, ..
            } => {
                rooms.insert(room.as_str());
                senders.insert(sender.as_str());
                users.extend(keys.iter().map(|key| key.recipient.as_str()));
            }
            Change::AddMember { room, user, .. } | Change::RemoveMember { room, user, .. } => {
                rooms.insert(room.as_str());
                users.insert(user.as_str());
            }
            Change::DeleteRoom { room }
            | Change::Invite { room, .. }
            | Change::Uninvite { room, .. }
            | Change::RecordRemoval { room, .. } => {
                rooms.insert(room.as_str());
            }
            Change::CreateRoom { .. } | Change::Seen { .. } | Change::DeleteIdentity { .. } => {}
        }
    }
    users.extend(senders.iter().copied());
    let rooms: Vec<&str> = rooms.into_iter().collect();
    let senders: Vec<&str> = senders.into_iter().collect();
    let users: Vec<&str> = users.into_iter().collect();
    let operation = "lock what the commit writes";
    let mut existing = HashSet::new();
    if !rooms.is_empty() {
        let sql = "SELECT name FROM rooms WHERE name = ANY($1) ORDER BY name FOR UPDATE";
        for row in select(transaction, sql, &[&rooms], operation).await? {
            existing.insert(get(&row, 0)?);
        }
    }
    if !senders.is_empty() {
        let sql = "SELECT 1 FROM identities WHERE \"user\" = ANY($1) ORDER BY \"user\" FOR UPDATE";
        select(transaction, sql, &[&senders], operation).await?;
        let sql = "SELECT 1 FROM usage WHERE id = 1 FOR UPDATE";
        select(transaction, sql, &[], operation).await?;
    }
    let mut pairs = HashSet::new();
    if !users.is_empty() {
        for row in select(
            transaction,
            "SELECT room, \"user\" FROM members WHERE room = ANY($1) AND \"user\" = ANY($2)",
            &[&rooms, &users],
            "read who may send",
        )
        .await?
        {
            pairs.insert((get(&row, 0)?, get(&row, 1)?));
        }
    }
    Ok(Members {
        pairs,
        rooms: existing,
        conflicted: HashSet::new(),
    })
}

impl Members {
    /// Creates `room` (see [`create_room`]); `false` if another relay created it as
    /// another kind of room, which the rest of the batch then leaves alone.
    pub(super) async fn create_room(
        &mut self,
        transaction: &Transaction<'_>,
        room: &str,
        owner: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        if create_room(transaction, room, owner, now_ms).await? {
            self.rooms.insert(room.to_owned());
            return Ok(true);
        }
        self.conflicted.insert(room.to_owned());
        Ok(false)
    }

    /// Whether `room` may be deleted: not if another relay let a member join it since
    /// this relay saw it empty.
    pub(super) async fn delete_room(
        &mut self,
        transaction: &Transaction<'_>,
        room: &str,
    ) -> Result<bool, StoreError> {
        let occupied = select(
            transaction,
            "SELECT 1 FROM members WHERE room = $1 LIMIT 1",
            &[&room],
            format_args!("delete room {room:?}"),
        )
        .await?;
        if !occupied.is_empty() {
            return Ok(false);
        }
        self.pairs.retain(|(of, _)| of != room);
        self.rooms.remove(room);
        Ok(true)
    }
}

/// Creates `room`, or takes the one another relay created at the same moment for a user
/// joining it there, if it is the same kind of room (open, or private to the same
/// owner); `false` if it is another kind.
async fn create_room(
    transaction: &Transaction<'_>,
    room: &str,
    owner: Option<&str>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let operation = format!("create room {room:?}");
    let created = super::execute(
        transaction,
        "INSERT INTO rooms (name, owner, last_seq, created_ms, used_ms) \
         VALUES ($1, $2, 0, $3, $3) ON CONFLICT (name) DO NOTHING",
        &[&room, &owner, &now_ms],
        &operation,
    )
    .await?;
    if created == 1 {
        return Ok(true);
    }
    let existing = select(
        transaction,
        "SELECT owner FROM rooms WHERE name = $1",
        &[&room],
        &operation,
    )
    .await?;
    let existing = existing.first().map(|row| get::<Option<String>>(row, 0));
    Ok(matches!(existing.transpose()?, Some(existing) if existing.as_deref() == owner))
}
