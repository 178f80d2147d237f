//! The writer's part in a cluster: relays that share one database deliver each
//! other's entries in order, to their own members.
//!
//! Every relay numbers what it commits in the database (the store takes the room's
//! next number under the room's row lock), then rings a [`Doorbell`] for each room it
//! changed. A relay delivers a room's log strictly in sequence order: before its own
//! entries of a batch it delivers what the others committed to the room before them,
//! and a doorbell, or the store's head seen every [`HEAD_CHECK`], makes it read and
//! deliver what it has not delivered yet. A doorbell is only a hint: one that is lost (the broker
//! restarted, this relay was cut off) costs a delay until the next head check, never an
//! entry. All of it runs on the writer's thread, which is the only one that delivers,
//! so delivering the others' entries never interleaves with a commit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::server::hub::{Doorbell, Follower};
use crate::store::{Change, Store, StoreError};

/// How often the store's heads are compared with what is delivered, for doorbells
/// that were lost.
pub(crate) const HEAD_CHECK: Duration = Duration::from_secs(2);

/// How many sequence numbers one read of a room's log spans.
const WINDOW: u64 = 1_000;

/// What the writer of a relay in a cluster works with.
pub(crate) struct Follow {
    pub hub: Box<dyn Follower>,
    /// Where this relay's doorbells go (to the other relays, through NATS).
    pub ring: UnboundedSender<Doorbell>,
}

impl Follow {
    /// Before this relay's own entries of a batch are delivered: what the others
    /// committed to the same rooms before them (`firsts`: each room's first own
    /// sequence number in the batch).
    pub(super) fn before_own(
        &self,
        store: &dyn Store,
        firsts: &BTreeMap<String, u64>,
    ) -> Result<(), StoreError> {
        for (room, first) in firsts {
            self.read_up_to(store, room, first - 1)?;
        }
        Ok(())
    }

    /// Rings the doorbells of a committed batch: its `changes`, and the last sequence
    /// number it used in each room (`lasts`).
    pub(super) fn ring(&self, changes: &[Change], lasts: BTreeMap<String, u64>) {
        let changed: BTreeSet<&str> = changes.iter().filter_map(unnumbered_change).collect();
        let mut bells: BTreeMap<&str, Doorbell> = BTreeMap::new();
        for (room, up_to) in &lasts {
            bells.insert(
                room,
                Doorbell {
                    room: room.clone(),
                    up_to: *up_to,
                    changed: false,
                },
            );
        }
        for room in changed {
            bells
                .entry(room)
                .or_insert_with(|| Doorbell {
                    room: room.to_owned(),
                    up_to: 0,
                    changed: true,
                })
                .changed = true;
        }
        for bell in bells.into_values() {
            let _ = self.ring.send(bell);
        }
    }

    /// Another relay rang: the room is read as far as it says.
    pub(super) fn answer(&self, store: &dyn Store, bell: &Doorbell) -> Result<(), StoreError> {
        match self.hub.delivered_through(&bell.room) {
            // New here: taken as stored, its log included.
            None => self.hub.refresh_room(&bell.room, store.room(&bell.room)?),
            Some(through) => {
                if bell.changed {
                    self.hub.refresh_room(&bell.room, store.room(&bell.room)?);
                }
                if bell.up_to > through {
                    self.read_up_to(store, &bell.room, bell.up_to)?;
                }
            }
        }
        Ok(())
    }

    /// Compares every room's head in the store with what is delivered, and catches up;
    /// with `everything`, also takes anew what is not numbered of every room (after
    /// doorbells may have been lost).
    pub(super) fn check(&self, store: &dyn Store, everything: bool) -> Result<(), StoreError> {
        let heads: BTreeMap<String, u64> = store.heads()?.into_iter().collect();
        for room in self.hub.room_names() {
            if !heads.contains_key(&room) {
                self.hub.refresh_room(&room, None);
            }
        }
        for (room, head) in heads {
            match self.hub.delivered_through(&room) {
                None => self.hub.refresh_room(&room, store.room(&room)?),
                Some(through) => {
                    if everything {
                        self.hub.refresh_room(&room, store.room(&room)?);
                    }
                    if head > through {
                        self.read_up_to(store, &room, head)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Delivers what is not delivered of `room` up to `up_to`, read from the store.
    fn read_up_to(&self, store: &dyn Store, room: &str, up_to: u64) -> Result<(), StoreError> {
        while let Some(through) = self.hub.delivered_through(room)
            && through < up_to
        {
            let until = up_to.min(through.saturating_add(WINDOW));
            let entries = store.log_between(room, through, until)?;
            tracing::debug!(
                room,
                through,
                until,
                entries = entries.len(),
                "delivering what other relays committed"
            );
            self.hub.peers_committed(room, entries, until);
        }
        Ok(())
    }
}

/// The room a change alters without numbering it, if it does.
fn unnumbered_change(change: &Change) -> Option<&str> {
    match change {
        Change::CreateRoom { room, .. }
        | Change::DeleteRoom { room }
        | Change::Invite { room, .. }
        | Change::RecordRemoval { room, .. }
        | Change::Uninvite { room, .. } => Some(room),
        _ => None,
    }
}
