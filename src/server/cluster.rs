//! Relays serving one PostgreSQL database together (`--nats URL`): what they tell each
//! other through NATS, and how the hub follows what the others commit.
//!
//! The database is the source of truth: it numbers every room's entries as they are
//! committed (one room at a time under its row lock), and holds everything a relay
//! needs to deliver them. NATS only carries hints, on two subjects:
//!
//! - [`DOORBELLS`]: after each commit, for each room it changed, a relay says so
//!   ([`Doorbell`]); the others read the room's head and what they have not delivered
//!   from the database (`writer::follow`), never trusting the doorbell for more than
//!   "look at this room". A lost doorbell costs a delay until the next head check,
//!   never an entry.
//! - [`SESSIONS`]: a relay says whenever a session opens; the others end their
//!   session of the same user if it is older (one session per user, as on one relay).
//!
//! Each message carries the id of the relay that sent it, which ignores its own. NATS
//! is trusted to end sessions: anyone who can publish on it can (never read or forge a
//! message, which stay end-to-end encrypted, nor deliver what is not stored, nor skip
//! what is). Keep it on a private network, with credentials (docs/DEPLOY.md).

use std::sync::mpsc::Sender;
use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::ServerError;
use super::accounts::Accounts;
use super::hub::{Command, Doorbell, Follower, Hub};
use super::writer::{Bells, Follow};
use crate::store::{LogEntry, StoredRoom};

/// The subject of doorbells.
pub(crate) const DOORBELLS: &str = "chat.v2.relays.doorbells";
/// The subject of sessions opened.
pub(crate) const SESSIONS: &str = "chat.v2.relays.sessions";

/// What is read of one NATS message at most: a doorbell or a session is a few hundred
/// bytes; anything larger is not one of ours.
const MAX_HINT_BYTES: usize = 4096;

#[derive(Serialize, Deserialize)]
struct RungDoorbell {
    relay: String,
    #[serde(flatten)]
    bell: Doorbell,
}

#[derive(Serialize, Deserialize)]
struct SessionOpened {
    relay: String,
    user: String,
    opened_us: u64,
}

/// This relay's link to the others: the tasks that publish and subscribe, stopped
/// when it is dropped.
pub(crate) struct Link {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Connects to the NATS server at `url` and starts following the other relays: the
/// returned [`Follow`] goes to the writer, which `commands` wake for doorbells. The
/// hub's sessions are announced from now on.
pub(crate) async fn join(
    url: &str,
    hub: &Arc<Hub>,
    accounts: Arc<Accounts>,
    commands: Sender<Command>,
) -> Result<(Follow, Link), ServerError> {
    let relay = relay_id()?;
    let servers = describe_servers(url).map_err(ServerError::Nats)?;
    // Serving goes on without NATS (the relays follow each other through the database
    // every 2 s), but an operator should know at once that it is not there.
    // Bounded as a whole: a server that accepts the connection and never speaks NATS
    // (another service's port) must not hold the relay up.
    let probe = async_nats::ConnectOptions::new().connection_timeout(NATS_PATIENCE);
    let why = match tokio::time::timeout(NATS_PATIENCE, probe.connect(url)).await {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!(
            "no NATS answer within {} s (is it a NATS server?)",
            NATS_PATIENCE.as_secs()
        )),
    };
    if let Some(error) = why {
        tracing::warn!(
            servers,
            error,
            "cannot reach NATS yet; serving, and following the other relays through the \
             database every 2 s until it answers"
        );
    }
    let (resync, announcing) = (commands.clone(), Arc::downgrade(hub));
    let options = async_nats::ConnectOptions::new()
        .name(format!("chat-server {relay}"))
        // Started before NATS, or while it is away, a relay serves anyway and follows
        // the others through the database's heads until NATS is there.
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let (resync, announcing) = (resync.clone(), announcing.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("connected to NATS; comparing every room with the database");
                        let _ = resync.send(Command::Resync);
                        // What was announced while it was away is announced again.
                        if let Some(hub) = announcing.upgrade() {
                            hub.announce_sessions_again();
                        }
                    }
                    async_nats::Event::Disconnected => tracing::warn!(
                        "disconnected from NATS; following the other relays through the \
                         database every 2 s until it is back"
                    ),
                    other => tracing::debug!(%other, "NATS"),
                }
            }
        });
    let nats = |error: &dyn std::fmt::Display| ServerError::Nats(error.to_string());
    let client = options.connect(url).await.map_err(|e| nats(&e))?;
    let doorbells = client.subscribe(DOORBELLS).await.map_err(|e| nats(&e))?;
    let sessions = client.subscribe(SESSIONS).await.map_err(|e| nats(&e))?;
    let (ring, rung) = unbounded_channel();
    let (opened, announced) = unbounded_channel();
    hub.announce_sessions_to(opened);
    let bells = Arc::new(Bells::default());
    let tasks = vec![
        tokio::spawn(ring_doorbells(client.clone(), relay.clone(), rung)),
        tokio::spawn(announce_sessions(client.clone(), relay.clone(), announced)),
        tokio::spawn(answer_doorbells(
            doorbells,
            relay.clone(),
            bells.clone(),
            commands,
        )),
        tokio::spawn(end_sessions_elsewhere(
            sessions,
            relay.clone(),
            Arc::downgrade(hub),
        )),
    ];
    tracing::info!(
        relay,
        servers,
        "serving the database together with the relays on NATS"
    );
    let follow = Follow {
        hub: Box::new(HubFollower {
            hub: Arc::downgrade(hub),
            accounts,
        }),
        ring,
        bells,
    };
    Ok((follow, Link { tasks }))
}

/// How long the first connection to NATS may take before the relay says it is away.
const NATS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The NATS servers of `--nats` (a URL, or several separated by commas), as a log line
/// may name them (host and port, no credentials); or what is wrong with them.
pub(crate) fn describe_servers(url: &str) -> Result<String, String> {
    let mut servers = Vec::new();
    for server in url.split(',') {
        let server = server.trim();
        if server.is_empty() {
            return Err("--nats needs a URL, nats://HOST:PORT (or tls://...)".to_owned());
        }
        let address: async_nats::ServerAddr = server.parse().map_err(|error| {
            // What is wrong, never the URL: it may hold a password.
            format!("--nats is not a NATS URL (nats://HOST:PORT or tls://...): {error}")
        })?;
        servers.push(format!("{}:{}", address.host(), address.port()));
    }
    Ok(servers.join(","))
}

/// A random id for this relay's messages.
fn relay_id() -> Result<String, ServerError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(ServerError::Rng)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Publishes this relay's doorbells; those waiting together go as one per room.
async fn ring_doorbells(
    client: async_nats::Client,
    relay: String,
    mut rung: UnboundedReceiver<Doorbell>,
) {
    while let Some(first) = rung.recv().await {
        let mut bells = std::collections::BTreeMap::<String, Doorbell>::new();
        let mut next = Some(first);
        while let Some(bell) = next {
            let merged = bells
                .entry(bell.room.clone())
                .or_insert_with(|| bell.clone());
            merged.changed |= bell.changed;
            next = rung.try_recv().ok();
        }
        for bell in bells.into_values() {
            let rung = RungDoorbell {
                relay: relay.clone(),
                bell,
            };
            publish(&client, DOORBELLS, &rung).await;
        }
    }
}

/// Publishes the sessions this relay opens.
async fn announce_sessions(
    client: async_nats::Client,
    relay: String,
    mut announced: UnboundedReceiver<(String, u64)>,
) {
    while let Some((user, opened_us)) = announced.recv().await {
        let opened = SessionOpened {
            relay: relay.clone(),
            user,
            opened_us,
        };
        publish(&client, SESSIONS, &opened).await;
    }
}

async fn publish(client: &async_nats::Client, subject: &'static str, message: &impl Serialize) {
    let Ok(payload) = serde_json::to_vec(message) else {
        return;
    };
    // While NATS is away the client buffers, then drops: the head check makes up for it.
    if let Err(error) = client.publish(subject, payload.into()).await {
        tracing::debug!(%error, subject, "cannot publish to NATS");
    }
}

/// Hands the other relays' doorbells to the writer: they wait in `bells`, one per room,
/// and the writer is woken when the first comes.
async fn answer_doorbells(
    mut doorbells: async_nats::Subscriber,
    relay: String,
    bells: Arc<Bells>,
    commands: Sender<Command>,
) {
    while let Some(message) = doorbells.next().await {
        let Some(rung) = parse::<RungDoorbell>(&message.payload) else {
            continue;
        };
        let wake = rung.relay != relay && bells.ring(rung.bell);
        if wake && commands.send(Command::Doorbells).is_err() {
            return;
        }
    }
}

/// Ends this relay's session of a user who opened a newer one on another relay.
async fn end_sessions_elsewhere(
    mut sessions: async_nats::Subscriber,
    relay: String,
    hub: Weak<Hub>,
) {
    while let Some(message) = sessions.next().await {
        let Some(opened) = parse::<SessionOpened>(&message.payload) else {
            continue;
        };
        if opened.relay == relay {
            continue;
        }
        let Some(hub) = hub.upgrade() else {
            return;
        };
        // Of two sessions opened in the same microsecond, the one on the relay with the
        // greater id stays, on both relays.
        let theirs_wins_a_tie = opened.relay > relay;
        hub.opened_elsewhere(&opened.user, opened.opened_us, theirs_wins_a_tie);
    }
}

/// A message of ours, or `None` (logged) for anything else on our subjects.
fn parse<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Option<T> {
    if payload.len() > MAX_HINT_BYTES {
        tracing::warn!(
            bytes = payload.len(),
            "ignored an oversized message on NATS"
        );
        return None;
    }
    match serde_json::from_slice(payload) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            tracing::warn!(%error, "ignored a message on NATS that is not a relay's");
            None
        }
    }
}

/// The hub as the writer follows the other relays with it.
struct HubFollower {
    hub: Weak<Hub>,
    accounts: Arc<Accounts>,
}

impl Follower for HubFollower {
    fn delivered_through(&self, room: &str) -> Option<u64> {
        self.hub.upgrade()?.delivered_through(room)
    }

    fn room_names(&self) -> Vec<String> {
        self.hub
            .upgrade()
            .map_or_else(Vec::new, |hub| hub.room_names())
    }

    fn peers_committed(&self, room: &str, entries: Vec<LogEntry>, through: u64) {
        if let Some(hub) = self.hub.upgrade() {
            hub.peers_committed(room, entries, through, &|user| self.accounts.identity(user));
        }
    }

    fn refresh_room(&self, room: &str, stored: Option<StoredRoom>) {
        if let Some(hub) = self.hub.upgrade() {
            hub.refresh_room(room, stored, &|user| self.accounts.identity(user));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_urls_are_named_without_their_credentials_and_bad_ones_refused() {
        assert_eq!(
            describe_servers("nats://chat:s3cret@nats.internal:4223,tls://b.internal").unwrap(),
            "nats.internal:4223,b.internal:4222"
        );
        for bad in ["", " , ", "http://nats.internal", "nats://[::1"] {
            let error = describe_servers(bad).unwrap_err();
            assert!(error.starts_with("--nats"), "{bad:?}: {error}");
        }
        let error = describe_servers("http://chat:s3cret@host").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
    }
}
