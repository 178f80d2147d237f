//! Reading a room's log back from the store: the catch-up of a member that comes back,
//! and `GetHistory`.
//!
//! A catch-up sends, in this order: `Joined`; the sender keys in force where the client
//! left off; every entry meant for it after that, up to the head the hub noted when the
//! session attached; then [`Hub::finish_catch_up`] sends `CaughtUp` and the live frames
//! that waited. Catch-up frames wait for the client to read them instead of filling its
//! queue, so a long absence costs the relay a page of entries at a time, not memory.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message;
use tokio::sync::OwnedSemaphorePermit;
use tonic::Status;

use super::hub::{CatchUp, SessionId, rejection};
use super::outbound::Refusal;
use super::relay::Relay;
use crate::proto::{
    History, HistoryEntry, PublicIdentity, ServerFrame, history_entry, server_frame::Kind,
};
use crate::store::{Entry, Store, StoreError};

/// Entries read from the store at a time: at most this many frames of at most
/// `--max-frame-bytes` each wait in memory for a client that reads slowly.
const PAGE: usize = 64;
/// The most bytes of entries one `History` answer carries; older messages are left out.
const MAX_HISTORY_BYTES: usize = 1024 * 1024;

/// Runs the catch-up of a member coming back; ends its session if the store fails.
pub(crate) async fn run(relay: Arc<Relay>, catch_up: CatchUp) {
    let id = catch_up.session;
    let room = catch_up.room.clone();
    let head = catch_up.head;
    match replay(&relay, catch_up).await {
        Ok(true) => relay.hub.finish_catch_up(id, &room, head),
        // The session went away: nothing more to do.
        Ok(false) => {}
        Err(status) => relay.hub.end_session(id, status),
    }
}

/// Sends what the member missed; `false` if its stream went away.
async fn replay(relay: &Relay, catch_up: CatchUp) -> Result<bool, Status> {
    let CatchUp {
        session: catch_up_session,
        room,
        user,
        after,
        head,
        mut joined,
        request_id,
        frames,
        patience,
    } = catch_up;
    let start = after.unwrap_or(head).min(head);
    let mut readable: BTreeSet<String> = joined.members.iter().map(|m| m.user.clone()).collect();
    if start < head {
        let senders = {
            let room = room.clone();
            read(relay, move |store| {
                store.senders_between(&room, start, head)
            })
            .await?
        };
        joined.former_members = senders
            .into_iter()
            .filter(|sender| *sender != user && !readable.contains(sender))
            .filter_map(|sender| relay.accounts.identity(&sender))
            .collect();
        readable.extend(joined.former_members.iter().map(|m| m.user.clone()));
    }
    // `Ok(false)` once the stream is gone; an error for a client that stopped reading.
    let send = |request_id: u64, kind: Kind| {
        let frames = frames.clone();
        async move {
            let frame = ServerFrame {
                request_id,
                kind: Some(kind),
            };
            match frames.push_patiently(frame, patience).await {
                Ok(()) => Ok(true),
                Err(Refusal::Stalled) => Err(Status::resource_exhausted(format!(
                    "disconnected: your client read nothing for {} s while catching up; \
                     reconnect to go on from where it stopped",
                    patience.as_secs()
                ))),
                Err(Refusal::Closed | Refusal::Full) => Ok(false),
            }
        }
    };
    if !send(request_id, Kind::Joined(joined)).await? {
        return Ok(false);
    }
    // Entries from someone the client cannot check would only be dropped with a warning.
    let keys = {
        let (room, user) = (room.clone(), user.clone());
        read(relay, move |store| store.keys_in_force(&room, &user, start)).await?
    };
    for entry in keys.into_iter().filter(|e| readable.contains(e.sender())) {
        if !send(0, kind_of(entry)).await? {
            return Ok(false);
        }
    }
    let mut cursor = start;
    loop {
        // Left or removed meanwhile: the room may not even be the same one any more.
        if !relay.hub.is_catching_up(catch_up_session, &room) {
            return Ok(false);
        }
        let page = {
            let (room, user) = (room.clone(), user.clone());
            read(relay, move |store| {
                store.entries_after(&room, &user, cursor, head, PAGE)
            })
            .await?
        };
        let full = page.len() == PAGE;
        if let Some(last) = page.last() {
            cursor = last.seq();
        }
        for entry in page.into_iter().filter(|e| readable.contains(e.sender())) {
            if !send(0, kind_of(entry)).await? {
                return Ok(false);
            }
        }
        if !full {
            return Ok(true);
        }
    }
}

/// Answers a `GetHistory` of `user`, a member of `room` since `since`. The session's
/// in-flight `permit` is held until then, so one client cannot queue reads without end.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn history(
    relay: Arc<Relay>,
    id: SessionId,
    request_id: u64,
    room: String,
    user: String,
    since: u64,
    limit: u32,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    if !relay.hub.is_open(id) {
        return;
    }
    let read_room = room.clone();
    let member = user.clone();
    let entries = read(&relay, move |store| {
        store.history(&read_room, &member, since, limit as usize)
    })
    .await;
    let kind = match entries {
        Ok(entries) => {
            // Keys first: a key the sender distributed again later is stored under a
            // later number than the messages it opens.
            let (mut entries, messages): (Vec<Entry>, Vec<Entry>) = within_budget(entries)
                .into_iter()
                .partition(|entry| matches!(entry, Entry::SenderKey(_)));
            entries.extend(messages);
            let members = relay.hub.active_members(&room);
            let departed: BTreeSet<&str> = entries
                .iter()
                .map(Entry::sender)
                .filter(|sender| *sender != user && !members.contains(*sender))
                .collect();
            let former_members: Vec<PublicIdentity> = departed
                .into_iter()
                .filter_map(|sender| relay.accounts.identity(sender))
                .collect();
            Kind::History(History {
                room,
                entries: entries
                    .into_iter()
                    .map(|entry| HistoryEntry {
                        kind: Some(match entry {
                            Entry::Message(message) => history_entry::Kind::Message(message),
                            Entry::SenderKey(key) => history_entry::Kind::SenderKey(key),
                        }),
                    })
                    .collect(),
                former_members,
            })
        }
        Err(status) => Kind::Rejection(rejection(&status)),
    };
    relay.hub.reply(id, request_id, kind);
}

/// The newest messages (and all the keys) that fit in [`MAX_HISTORY_BYTES`].
fn within_budget(entries: Vec<Entry>) -> Vec<Entry> {
    let size = |entry: &Entry| match entry {
        Entry::Message(message) => message.encoded_len(),
        Entry::SenderKey(key) => key.encoded_len(),
    };
    let mut budget = MAX_HISTORY_BYTES;
    let mut kept: Vec<Entry> = Vec::with_capacity(entries.len());
    let mut full = false;
    for entry in entries.into_iter().rev() {
        let is_message = matches!(entry, Entry::Message(_));
        if is_message && (full || size(&entry) > budget) {
            full = true;
            continue;
        }
        budget = budget.saturating_sub(size(&entry));
        kept.push(entry);
    }
    kept.reverse();
    kept
}

fn kind_of(entry: Entry) -> Kind {
    match entry {
        Entry::Message(message) => Kind::Message(message),
        Entry::SenderKey(key) => Kind::SenderKey(key),
    }
}

/// Runs a store read off the async threads.
async fn read<T: Send + 'static>(
    relay: &Relay,
    operation: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    let store = relay.store.clone();
    tokio::task::spawn_blocking(move || operation(&*store))
        .await
        .map_err(|error| Status::internal(format!("a store read did not finish: {error}")))?
        .map_err(|error| {
            tracing::error!(%error, "store read failed");
            Status::unavailable(format!(
                "the server cannot read its store ({error}); try again later"
            ))
        })
}
