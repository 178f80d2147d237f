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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::server::hub::{Doorbell, Follower};
use crate::store::{Change, Store, StoreError};

/// How often the store's heads are compared with what is delivered, for doorbells
/// that were lost.
pub(crate) const HEAD_CHECK: Duration = Duration::from_secs(2);

/// How many sequence numbers one read of a room's log spans.
const WINDOW: u64 = 1_000;

/// How many rooms' doorbells wait at most; beyond, they are dropped for a comparison of
/// every room with the store, which finds what they pointed at anyway.
const MAX_WAITING_BELLS: usize = 4_096;

/// How many doorbells the writer answers between two batches of its own: a flood of
/// them delays its commits by that much at most.
const BELLS_AT_ONCE: usize = 64;

/// The doorbells other relays rang, waiting for the writer: one per room, however often
/// it rang.
#[derive(Default)]
pub(crate) struct Bells {
    waiting: Mutex<BTreeMap<String, bool>>,
    /// Some were dropped: every room is compared with the store.
    overflowed: AtomicBool,
}

impl Bells {
    /// Takes `bell`; returns whether the writer must be woken (nothing waited before).
    pub(crate) fn ring(&self, bell: Doorbell) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let was_empty = waiting.is_empty() && !self.overflowed.load(Ordering::Relaxed);
        if let Some(changed) = waiting.get_mut(&bell.room) {
            *changed |= bell.changed;
        } else if waiting.len() < MAX_WAITING_BELLS {
            waiting.insert(bell.room, bell.changed);
        } else {
            self.overflowed.store(true, Ordering::Relaxed);
        }
        was_empty
    }

    /// Whether any wait.
    pub(super) fn any(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
            || !self
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
    }

    /// Up to `count` waiting doorbells, and whether some were dropped.
    fn take(&self, count: usize) -> (Vec<(String, bool)>, bool) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut taken = Vec::new();
        while taken.len() < count
            && let Some(bell) = waiting.pop_first()
        {
            taken.push(bell);
        }
        (taken, self.overflowed.swap(false, Ordering::Relaxed))
    }
}

/// What the writer of a relay in a cluster works with.
pub(crate) struct Follow {
    pub hub: Box<dyn Follower>,
    /// Where this relay's doorbells go (to the other relays, through NATS).
    pub ring: UnboundedSender<Doorbell>,
    /// The other relays' doorbells, waiting.
    pub bells: Arc<Bells>,
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

    /// Rings the doorbells of a committed batch: its `changes`, and the rooms it
    /// numbered entries of.
    pub(super) fn ring(&self, changes: &[Change], numbered: impl Iterator<Item = String>) {
        let mut bells: BTreeMap<String, bool> = numbered.map(|room| (room, false)).collect();
        for room in changes.iter().filter_map(unnumbered_change) {
            bells.insert(room.to_owned(), true);
        }
        for (room, changed) in bells {
            let _ = self.ring.send(Doorbell { room, changed });
        }
    }

    /// Answers some of the doorbells that wait (see [`BELLS_AT_ONCE`]).
    pub(super) fn answer_bells(&self, store: &dyn Store) -> Result<(), StoreError> {
        let (bells, overflowed) = self.bells.take(BELLS_AT_ONCE);
        if overflowed {
            self.check(store, false)?;
        }
        for (room, changed) in bells {
            self.answer(store, &room, changed)?;
        }
        Ok(())
    }

    /// Another relay rang for `room`: it is read as far as the store has it (never as
    /// far as the doorbell says: anyone who can publish on NATS can ring).
    fn answer(&self, store: &dyn Store, room: &str, changed: bool) -> Result<(), StoreError> {
        let head = store.heads(Some(room))?.first().map(|(_, head)| *head);
        self.follow_room(store, room, head, changed)
    }

    /// Compares every room's head in the store with what is delivered, and catches up;
    /// with `everything`, also takes anew what is not numbered of every room (after
    /// doorbells may have been lost).
    pub(super) fn check(&self, store: &dyn Store, everything: bool) -> Result<(), StoreError> {
        let heads: BTreeMap<String, u64> = store.heads(None)?.into_iter().collect();
        for room in self.hub.room_names() {
            if !heads.contains_key(&room) {
                self.hub.refresh_room(&room, None);
            }
        }
        for (room, head) in heads {
            self.follow_room(store, &room, Some(head), everything)?;
        }
        Ok(())
    }

    /// Brings `room` here up to its `head` in the store (`None`: the store has no such
    /// room), taking anew what is not numbered of it if `changed`.
    fn follow_room(
        &self,
        store: &dyn Store,
        room: &str,
        head: Option<u64>,
        changed: bool,
    ) -> Result<(), StoreError> {
        match (self.hub.delivered_through(room), head) {
            (None, None) => {}
            (Some(_), None) => self.hub.refresh_room(room, None),
            // New here: taken as stored, its log included.
            (None, Some(_)) => self.hub.refresh_room(room, store.room(room)?),
            (Some(through), Some(head)) => {
                if changed {
                    self.hub.refresh_room(room, store.room(room)?);
                }
                if head > through {
                    self.read_up_to(store, room, head)?;
                }
            }
        }
        Ok(())
    }

    /// Delivers what is not delivered of `room` up to `up_to` (at most the store's
    /// head), read from the store.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bell(room: &str, changed: bool) -> Doorbell {
        Doorbell {
            room: room.to_owned(),
            changed,
        }
    }

    #[test]
    fn doorbells_wait_once_per_room_and_a_flood_becomes_one_comparison_of_everything() {
        let bells = Bells::default();
        assert!(bells.ring(bell("a", false)), "the first wakes the writer");
        assert!(!bells.ring(bell("a", true)));
        assert!(!bells.ring(bell("b", false)));
        assert_eq!(
            bells.take(10),
            (vec![("a".to_owned(), true), ("b".to_owned(), false)], false)
        );
        assert!(!bells.any());
        for n in 0..MAX_WAITING_BELLS + 10 {
            bells.ring(bell(&format!("room {n}"), false));
        }
        let (first, overflowed) = bells.take(BELLS_AT_ONCE);
        assert_eq!((first.len(), overflowed), (BELLS_AT_ONCE, true));
        let (rest, overflowed) = bells.take(usize::MAX);
        assert_eq!(
            (rest.len(), overflowed),
            (MAX_WAITING_BELLS - BELLS_AT_ONCE, false)
        );
        assert!(!bells.any());
    }
}
