//! A connection to the relay, joined to one or more rooms on its one stream.
//!
//! [`ChatSession::open`] opens the `Chat` stream as a logged-in user and joins its rooms
//! (or comes back to them and catches up); [`ChatSession::join_room`] joins another one
//! later on the same stream. For each room a [`SessionState`] checks the members' keys
//! against the pinned ones (one set of pins for all rooms) and decides whom our sender
//! key goes to. From then on each frame from the relay goes through
//! [`ChatSession::handle`], which routes it to its room (by name, or by the request id
//! it answers), has that room's state apply it, and sends what that calls for (our key
//! for newcomers, a new key when someone leaves); it returns what the user should see.
//!
//! Delivery is durable, and the session does its part:
//! - it follows each room's sequence numbers ([`ChatSession::last_seq`]): a message at
//!   or below the last one processed was shown already and is dropped; the caller saves
//!   the number and joins with it next time to catch up on what it missed;
//! - it keeps every message the relay has not acknowledged, sealed and signed, and
//!   [`ChatSession::reconnect`] sends it again on a new stream exactly as it was (the
//!   relay recognises a repeat and stores it once), then rotates our key in every room.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

use super::ClientError;
use super::contacts::Contacts;
use super::login::{AuthorizedClient, Credentials, VerifiedBundle, fetch_identity, key_exchange};
use super::receipts::ReceiptSummary;
use super::room::{KeyHandout, RotationPolicy, SharedPrekeys};
use super::state::{Applied, Event, JOIN_REQUEST_ID, RequestIds, SessionState, SharedContacts};
use crate::crypto::{Fingerprint, Identity, SafetyNumber};
use crate::proto::{
    ClientFrame, JoinRoom, Joined, ServerFrame, SignedPrekey, client_frame, server_frame,
};
use crate::protocol::{DEVICE, MAX_BUNDLE_USERS};

/// Frames the client queues for the relay before `send` waits.
const OUTBOUND_FRAMES: usize = 256;

/// How long the relay may take to answer the joins that open a stream: a relay that
/// accepts the stream but never answers would otherwise hold a (re)connecting client
/// forever.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens the `Chat` stream as the logged-in user with a first frame (request id 1)
/// that joins a room. Returns where to send further frames and the frames from the
/// relay, the answer to the join first.
pub async fn open_stream(
    client: &mut AuthorizedClient,
    join: JoinRoom,
) -> Result<(mpsc::Sender<ClientFrame>, Streaming<ServerFrame>), ClientError> {
    let join = ClientFrame {
        request_id: JOIN_REQUEST_ID,
        kind: Some(client_frame::Kind::Join(join)),
    };
    open_stream_with(client, vec![join]).await
}

/// Opens the `Chat` stream with `first` frames already queued.
async fn open_stream_with(
    client: &mut AuthorizedClient,
    first: Vec<ClientFrame>,
) -> Result<(mpsc::Sender<ClientFrame>, Streaming<ServerFrame>), ClientError> {
    let (frames, outbound) = mpsc::channel(OUTBOUND_FRAMES.max(first.len()));
    for frame in first {
        frames
            .send(frame)
            .await
            .map_err(|_| ClientError::Disconnected)?;
    }
    let incoming = client
        .chat(Request::new(ReceiverStream::new(outbound)))
        .await
        .map_err(ClientError::Refused)?
        .into_inner();
    Ok((frames, incoming))
}

/// The current prekey of `prekeys`, signed by `identity` as `user`'s, as published.
fn signed_prekey(
    identity: &Identity,
    user: &str,
    prekeys: &SharedPrekeys,
) -> Result<SignedPrekey, ClientError> {
    let ring = prekeys.read().unwrap_or_else(PoisonError::into_inner);
    let signed = ring.current().sign(identity, user, DEVICE)?;
    Ok(SignedPrekey {
        device: signed.device,
        prekey_id: signed.id,
        created_at_ms: signed.created_at_ms,
        public_key: signed.public_key.into(),
        signature: signed.signature.into(),
    })
}

/// A join sent on the current stream and not answered yet.
#[derive(Debug, Clone)]
struct PendingJoin {
    request_id: u64,
    join: JoinRoom,
}

/// A connection to the relay, joined to one or more rooms.
pub struct ChatSession {
    user: String,
    /// The rooms joined in this session, by name: those we are a member of, and those
    /// whose membership ended (in `gone`) until their last frames are answered.
    rooms: BTreeMap<String, SessionState>,
    /// Rooms we left, or were removed from, in this session.
    gone: BTreeSet<String>,
    /// Joins the relay has not answered yet, by room.
    joining: BTreeMap<String, PendingJoin>,
    request_ids: RequestIds,
    identity: Arc<Identity>,
    contacts: SharedContacts,
    prekeys: SharedPrekeys,
    rotation: RotationPolicy,
    /// Our current prekey as published (RSA-PSS signatures are randomized: signing it
    /// again would make it look new to the key directory).
    published: SignedPrekey,
    client: AuthorizedClient,
    frames: mpsc::Sender<ClientFrame>,
    incoming: Streaming<ServerFrame>,
    /// What the key directory said that the user should know (a prekey that does not
    /// verify), shown with the next events.
    warnings: Vec<Event>,
    /// When we last asked the key directory for the prekeys of members that had none,
    /// by room.
    owed_checked: BTreeMap<String, Instant>,
}

/// How often, at most, the prekeys of members owed our key (they had none) are asked for
/// again, as we send.
const OWED_RECHECK: Duration = Duration::from_secs(30);

impl ChatSession {
    /// Opens the session of the logged-in user and joins one room: [`open`](Self::open)
    /// with one join.
    pub async fn join(
        channel: Channel,
        identity: Arc<Identity>,
        credentials: &Credentials,
        join: JoinRoom,
        contacts: Contacts,
        prekeys: SharedPrekeys,
        rotation: RotationPolicy,
    ) -> Result<(Self, Vec<Event>), ClientError> {
        let joins = vec![join];
        Self::open(
            channel,
            identity,
            credentials,
            joins,
            contacts,
            prekeys,
            rotation,
        )
        .await
    }

    /// Opens the session of the logged-in user, joins `joins` (at least one) on its one
    /// stream, checks the members' keys against `contacts` and gives our sender key in
    /// each room to those it trusts. Also returns what the user should know at once
    /// (an [`Event::Joined`] per room, pins, changed keys, unusable members). A join the
    /// relay refuses fails the whole opening.
    ///
    /// To come back to a room and catch up on what was missed, set `after_seq` to the
    /// [`last_seq`](Self::last_seq) saved from the previous session.
    pub async fn open(
        channel: Channel,
        identity: Arc<Identity>,
        credentials: &Credentials,
        joins: Vec<JoinRoom>,
        contacts: Contacts,
        prekeys: SharedPrekeys,
        rotation: RotationPolicy,
    ) -> Result<(Self, Vec<Event>), ClientError> {
        if joins.is_empty() {
            return Err(ClientError::NoRoom);
        }
        let mut client = credentials.chat_client(channel);
        let published = signed_prekey(&identity, credentials.user(), &prekeys)?;
        key_exchange(&mut client, Some(published.clone()), None, &[]).await?;
        let request_ids = RequestIds::default();
        request_ids.restart();
        let (first, joining) = join_frames(&request_ids, joins);
        let (frames, incoming) = open_stream_with(&mut client, first).await?;
        let mut session = Self {
            user: credentials.user().to_owned(),
            rooms: BTreeMap::new(),
            gone: BTreeSet::new(),
            joining,
            request_ids,
            identity,
            contacts: Arc::new(Mutex::new(contacts)),
            prekeys,
            rotation,
            published,
            client,
            frames,
            incoming,
            warnings: Vec::new(),
            owed_checked: BTreeMap::new(),
        };
        let events = session.await_joins().await?;
        if let Some(Event::JoinRefused { code, message, .. }) = events
            .iter()
            .find(|event| matches!(event, Event::JoinRefused { .. }))
        {
            return Err(ClientError::Refused(Status::new(*code, message.clone())));
        }
        Ok((session, events))
    }

    /// Joins `join.room` on this stream; its [`Event::Joined`] (or
    /// [`Event::JoinRefused`]) follows from [`handle`](Self::handle).
    pub async fn join_room(&mut self, join: JoinRoom) -> Result<u64, ClientError> {
        if self.is_member(&join.room) || self.joining.contains_key(&join.room) {
            return Err(ClientError::AlreadyInRoom { room: join.room });
        }
        let (mut frames, joining) = join_frames(&self.request_ids, vec![join]);
        self.joining.extend(joining);
        let frame = frames.pop().expect("one join makes one frame");
        let request_id = frame.request_id;
        self.frames
            .send(frame)
            .await
            .map_err(|_| ClientError::Disconnected)?;
        Ok(request_id)
    }

    /// Reads frames until the relay has answered every join: the events of the rooms
    /// joined (and of their first frames), and an [`Event::JoinRefused`] per refusal.
    async fn await_joins(&mut self) -> Result<Vec<Event>, ClientError> {
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        let mut events = Vec::new();
        while let Some(room) = self.joining.keys().next().cloned() {
            let frame = tokio::time::timeout_at(deadline, self.next_frame())
                .await
                .map_err(|_| ClientError::NoAnswer {
                    what: format!("the join of {room}"),
                    seconds: JOIN_TIMEOUT.as_secs(),
                })??
                .ok_or(ClientError::Disconnected)?;
            events.extend(self.handle(frame).await?);
        }
        Ok(events)
    }

    /// Comes back to every room on a new stream after the old one was lost, as the user
    /// logged in again with `credentials`: catches up on each from its
    /// [`last_seq`](Self::last_seq), brings the members up to date, sends every
    /// unacknowledged message again exactly as it was sealed, then rotates our sender key
    /// for everyone. The old stream's request ids are dead: the messages get new ones.
    /// Joins that were not answered are sent again.
    ///
    /// A room the relay no longer lets us join (the owner removed us meanwhile) is
    /// dropped with an [`Event::JoinRefused`], and the messages waiting for it with an
    /// [`Event::Refused`] each; if it refuses every room, nothing changes and the
    /// refusal is the error. A failed attempt can simply be retried.
    pub async fn reconnect(
        &mut self,
        channel: Channel,
        credentials: &Credentials,
    ) -> Result<Vec<Event>, ClientError> {
        let mut client = credentials.chat_client(channel);
        self.published = self.current_prekey()?;
        key_exchange(&mut client, Some(self.published.clone()), None, &[]).await?;
        let mut events = Vec::new();
        // What a room we are out of left unanswered will never be answered now.
        for room in std::mem::take(&mut self.gone) {
            if let Some(mut state) = self.rooms.remove(&room) {
                events.extend(state.abandon(Code::Unavailable, "the connection was lost"));
            }
        }
        for state in self.rooms.values_mut() {
            state.detach();
        }
        let mut joins: Vec<JoinRoom> = self
            .rooms
            .values()
            .map(|state| JoinRoom {
                room: state.room().to_owned(),
                create_private: false,
                after_seq: Some(state.last_seq()),
            })
            .collect();
        // Joins the old stream left unanswered: a first join is asked again; a rejoin
        // is already among the rooms.
        let unanswered = std::mem::take(&mut self.joining);
        joins.extend(
            unanswered
                .into_values()
                .filter(|pending| !self.rooms.contains_key(&pending.join.room))
                .map(|pending| pending.join),
        );
        if joins.is_empty() {
            return Err(ClientError::NoRoom);
        }
        self.request_ids.restart();
        let (first, joining) = join_frames(&self.request_ids, joins);
        let (frames, incoming) = open_stream_with(&mut client, first).await?;
        self.client = client;
        self.frames = frames;
        self.incoming = incoming;
        self.joining = joining;
        let answered = self.await_joins().await?;
        let refused: Vec<(String, Code, String)> = answered
            .iter()
            .filter_map(|event| match event {
                Event::JoinRefused {
                    room,
                    code,
                    message,
                } => Some((room.clone(), *code, message.clone())),
                _ => None,
            })
            .collect();
        let rejoined = self
            .rooms
            .keys()
            .filter(|room| !refused.iter().any(|(refused, ..)| refused == *room))
            .count();
        if let Some((_, code, message)) = refused.first()
            && rejoined == 0
        {
            return Err(ClientError::Refused(Status::new(*code, message.clone())));
        }
        for (room, code, message) in &refused {
            if let Some(mut state) = self.rooms.remove(room) {
                events.extend(state.abandon(*code, message));
            }
        }
        events.extend(answered);
        Ok(events)
    }

    /// Takes in the relay's answer to one of our joins: a first join in this session
    /// sets the room up; a rejoin after a lost stream catches up, sends again what the
    /// old stream left unanswered, and rotates our key.
    async fn on_joined(
        &mut self,
        pending: PendingJoin,
        joined: &Joined,
    ) -> Result<Vec<Event>, ClientError> {
        let room = joined.room.clone();
        let rejoin = self.rooms.contains_key(&room) && !self.gone.contains(&room);
        if !rejoin {
            self.gone.remove(&room);
            let state = SessionState::new(
                &room,
                &self.user,
                self.identity.clone(),
                self.contacts.clone(),
                self.prekeys.clone(),
                self.rotation,
                self.request_ids.clone(),
            )?;
            self.rooms.insert(room.clone(), state);
            let applied = self
                .state_mut(&room)?
                .joined(joined, pending.join.after_seq)?;
            let mut events = self.carry_out(&room, applied).await?;
            events.push(Event::Joined { room });
            return Ok(events);
        }
        let rejoined = self.state_mut(&room)?.rejoined(joined)?;
        // As first sent: the relay stores each message once, and a key before the
        // messages sealed with it.
        self.send_all(&room, rejoined.resend).await?;
        if rejoined.leave {
            self.leave(&room).await?;
        } else if !self.state(&room)?.is_leaving() {
            // A fresh key on every (re)join: it reaches whoever joined meanwhile, and
            // not whoever left.
            self.learn_prekeys(&room, &KeyHandout::Everyone).await;
            let rotation = self.state_mut(&room)?.rotate()?;
            self.send_all(&room, rotation).await?;
        }
        let mut events = rejoined.events;
        events.append(&mut self.warnings);
        Ok(events)
    }

    /// The rooms we are a member of in this session, sorted by name.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms
            .keys()
            .filter(|room| !self.gone.contains(*room))
            .cloned()
            .collect()
    }

    /// Whether we are a member of `room` in this session.
    pub fn is_member(&self, room: &str) -> bool {
        self.rooms.contains_key(room) && !self.gone.contains(room)
    }

    fn state(&self, room: &str) -> Result<&SessionState, ClientError> {
        self.rooms.get(room).ok_or_else(|| not_in(room))
    }

    fn state_mut(&mut self, room: &str) -> Result<&mut SessionState, ClientError> {
        self.rooms.get_mut(room).ok_or_else(|| not_in(room))
    }

    /// A room we are a member of, for a request about it.
    fn member_state_mut(&mut self, room: &str) -> Result<&mut SessionState, ClientError> {
        if self.gone.contains(room) {
            return Err(not_in(room));
        }
        self.state_mut(room)
    }

    /// The owner of `room` if it is private.
    pub fn owner(&self, room: &str) -> Option<&str> {
        self.rooms.get(room)?.owner()
    }

    /// The other members of `room`, sorted by name.
    pub fn members(&self, room: &str) -> Vec<String> {
        self.rooms
            .get(room)
            .map(SessionState::members)
            .unwrap_or_default()
    }

    /// Members of `room` whose keys changed and are not trusted.
    pub fn untrusted_members(&self, room: &str) -> Vec<String> {
        self.rooms
            .get(room)
            .map(SessionState::untrusted_members)
            .unwrap_or_default()
    }

    /// Whether `user`, a member of `room`, has keys we use (not changed keys we have not
    /// trusted).
    pub fn is_trusted(&self, room: &str, user: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|state| state.is_trusted(user))
    }

    /// Whether we marked `user` verified (compared safety numbers).
    pub fn is_verified(&self, user: &str) -> bool {
        self.contacts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pinned(user)
            .is_some_and(|(_, verified)| verified)
    }

    /// The highest sequence number of `room` this session has processed: save it, and
    /// join with it as `after_seq` next time.
    pub fn last_seq(&self, room: &str) -> u64 {
        self.rooms.get(room).map_or(0, SessionState::last_seq)
    }

    /// Whether the relay has sent everything we missed in `room`.
    pub fn is_caught_up(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(SessionState::is_caught_up)
    }

    /// How many of our frames the relay has not answered yet, in all rooms.
    pub fn unanswered(&self) -> usize {
        self.rooms.values().map(SessionState::unanswered).sum()
    }

    /// The texts of our messages the relay has not acknowledged yet, in the order sent
    /// in each room (rooms by name).
    pub fn pending(&self) -> Vec<&str> {
        self.rooms
            .values()
            .flat_map(SessionState::pending)
            .collect()
    }

    /// Messages from others still waiting for their sender key, in all rooms.
    pub fn undecryptable(&self) -> usize {
        self.rooms.values().map(SessionState::undecryptable).sum()
    }

    /// Seals and sends a text message to `room`; returns the id its `Delivered` or
    /// `Refused` event will carry. If the stream is down the message is kept, to be sent
    /// again by [`reconnect`](Self::reconnect); the lost stream shows in
    /// [`next_frame`](Self::next_frame).
    pub async fn send_text(&mut self, room: &str, text: &str) -> Result<u64, ClientError> {
        self.member_state_mut(room)?;
        self.hand_out_owed(room).await?;
        if self.state(room)?.rotation_due() {
            // The new key goes to everyone under their current prekeys, fetched afresh
            // (one kept from earlier may have been retired and be erased soon).
            self.learn_prekeys(room, &KeyHandout::Everyone).await;
        }
        let (request_id, frames) = self.state_mut(room)?.send_text(text)?;
        self.send_all(room, frames).await?;
        Ok(request_id)
    }

    /// Sends the receipts that are due (see docs/PROTOCOL.md, "Receipts"): at most one
    /// per room every two seconds, once something new arrived or was read. Returns how
    /// many were sent.
    pub async fn send_due_receipts(&mut self) -> Result<usize, ClientError> {
        let now = Instant::now();
        let mut sent = 0;
        for room in self.rooms() {
            let state = self.state(&room)?;
            if !state.receipt_due(now) {
                continue;
            }
            if state.rotation_due() {
                // A receipt rotates our key like a text would: under fresh prekeys.
                self.learn_prekeys(&room, &KeyHandout::Everyone).await;
            }
            let Some(frames) = self.state_mut(&room)?.send_receipt(now)? else {
                continue;
            };
            self.send_all(&room, frames).await?;
            sent += 1;
        }
        Ok(sent)
    }

    /// The person saw `room` up to `seq` (a text from someone else): the next receipt
    /// says so.
    pub fn mark_read(&mut self, room: &str, seq: u64) {
        if let Some(state) = self.rooms.get_mut(room) {
            state.mark_read(seq);
        }
    }

    /// What receipts say of our message stored in `room` under `seq`.
    pub fn receipt_summary(&self, room: &str, seq: u64) -> Option<ReceiptSummary> {
        self.rooms.get(room)?.receipt_summary(seq)
    }

    /// Our latest acknowledged messages in `room` (at most `count`), oldest first, with
    /// what receipts say of each.
    pub fn own_receipts(&self, room: &str, count: usize) -> Vec<(u64, String, ReceiptSummary)> {
        self.rooms
            .get(room)
            .map(|state| state.own_receipts(count))
            .unwrap_or_default()
    }

    /// Renews the device's prekeys at `now_ms` as their policy says. When a new prekey was
    /// made, it is published and our sender key rotated in every room, so that what we
    /// send next is wrapped under prekeys that are current (a retired prekey of ours that
    /// is erased later takes our own history copies with it). Returns how many retired
    /// prekeys were erased.
    pub async fn renew_prekeys(&mut self, now_ms: u64) -> Result<usize, ClientError> {
        let maintenance = self
            .prekeys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .maintain(now_ms)?;
        if maintenance.rotated {
            self.published = self.current_prekey()?;
            key_exchange(&mut self.client, Some(self.published.clone()), None, &[]).await?;
            for room in self.rooms() {
                if !self.state(&room)?.is_leaving() {
                    self.learn_prekeys(&room, &KeyHandout::Everyone).await;
                    let rotation = self.state_mut(&room)?.rotate()?;
                    self.send_all(&room, rotation).await?;
                }
            }
        }
        Ok(maintenance.erased)
    }

    /// Asks for the latest `limit` messages of `room` (1 to
    /// [`MAX_HISTORY_MESSAGES`](crate::protocol::MAX_HISTORY_MESSAGES)); they come as an [`Event::History`].
    pub async fn history(&mut self, room: &str, limit: u32) -> Result<u64, ClientError> {
        let frame = self.member_state_mut(room)?.history(limit);
        self.send(room, frame).await
    }

    /// Leaves `room` for good; its `Left` event follows once the relay has answered.
    pub async fn leave(&mut self, room: &str) -> Result<u64, ClientError> {
        let (request_id, frames) = self.member_state_mut(room)?.leave();
        self.send_all(room, frames).await?;
        Ok(request_id)
    }

    /// Lets `user` join the private `room` (owner only; the relay decides).
    pub async fn invite(&mut self, room: &str, user: &str) -> Result<u64, ClientError> {
        let known = self.member_state_mut(room)?.member_identity(user).cloned();
        let invitee = match known {
            Some(identity) => identity,
            None => fetch_identity(&mut self.client, user).await?,
        };
        let frame = self.state_mut(room)?.invite(&invitee)?;
        self.send(room, frame).await
    }

    /// Removes `user` from the private `room` (owner only; the relay decides).
    pub async fn kick(&mut self, room: &str, user: &str) -> Result<u64, ClientError> {
        let frame = self.member_state_mut(room)?.kick(user)?;
        self.send(room, frame).await
    }

    /// Accepts the keys the relay now presents for `user` as theirs: pins them and, in
    /// every room `user` is in, starts exchanging keys with it.
    pub async fn trust(&mut self, user: &str) -> Result<Vec<Event>, ClientError> {
        let known = self
            .rooms
            .values()
            .find_map(|state| state.member_identity(user).cloned());
        let identity = match known {
            Some(identity) => identity,
            None => fetch_identity(&mut self.client, user).await?,
        };
        let mut events = Vec::new();
        let rooms = self.rooms();
        if rooms.is_empty() {
            return Err(ClientError::NoRoom);
        }
        for room in rooms {
            let applied = self.state_mut(&room)?.trust(user, &identity)?;
            events.extend(self.carry_out(&room, applied).await?);
        }
        Ok(events)
    }

    /// Our own fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    /// The safety number of this user and `user`: from the keys `user` has in one of our
    /// rooms (the ones to check before trusting them, if they changed), or else from the
    /// pinned keys.
    pub fn safety_number(&self, user: &str) -> Result<SafetyNumber, ClientError> {
        let state = self
            .rooms
            .values()
            .find(|state| state.member_identity(user).is_some())
            .or_else(|| self.rooms.values().next())
            .ok_or(ClientError::NoRoom)?;
        state.safety_number(user)
    }

    /// Records that the user compared the safety number with `user` and it matched. If
    /// `user` is in one of our rooms with keys that are not the pinned ones, the user must
    /// trust them first: the number shown was for those keys.
    pub fn mark_verified(&mut self, user: &str) -> Result<(), ClientError> {
        let state = match self
            .rooms
            .values_mut()
            .find(|state| state.member_identity(user).is_some())
        {
            Some(state) => state,
            None => self.rooms.values_mut().next().ok_or(ClientError::NoRoom)?,
        };
        state.mark_verified(user)
    }

    /// The next frame from the relay, or `None` when it closed the stream cleanly.
    /// Cancel-safe, so it can sit in a `select!` beside other input.
    pub async fn next_frame(&mut self) -> Result<Option<ServerFrame>, ClientError> {
        self.incoming.message().await.map_err(ClientError::Ended)
    }

    /// Applies one frame from the relay and returns what the user should see.
    pub async fn handle(&mut self, frame: ServerFrame) -> Result<Vec<Event>, ClientError> {
        use server_frame::Kind;

        match &frame.kind {
            Some(Kind::Joined(joined)) => {
                // A `Joined` nobody asked for (a repeat) changes nothing.
                let Some(pending) = self.joining.remove(&joined.room) else {
                    return Ok(Vec::new());
                };
                return self.on_joined(pending, joined).await;
            }
            Some(Kind::Rejection(rejection)) => {
                let refused = self
                    .joining
                    .iter()
                    .find(|(_, pending)| pending.request_id == frame.request_id)
                    .map(|(room, _)| room.clone());
                if let Some(room) = refused {
                    self.joining.remove(&room);
                    return Ok(vec![Event::JoinRefused {
                        room,
                        code: Code::from_i32(rejection.code),
                        message: rejection.message.clone(),
                    }]);
                }
            }
            _ => {}
        }
        let Some(room) = self.room_of(&frame) else {
            return Ok(Vec::new());
        };
        let applied = self.state_mut(&room)?.apply(frame)?;
        let events = self.carry_out(&room, applied).await?;
        if events
            .iter()
            .any(|event| matches!(event, Event::Left { .. } | Event::Removed { .. }))
        {
            self.gone.insert(room);
        }
        Ok(events)
    }

    /// The room a frame from the relay is about, if it is one of ours: named in the
    /// frame, or the room of the request it answers.
    fn room_of(&self, frame: &ServerFrame) -> Option<String> {
        use server_frame::Kind;

        let room = match frame.kind.as_ref()? {
            Kind::Ack(_) | Kind::Rejection(_) => {
                return self
                    .rooms
                    .iter()
                    .find(|(_, state)| state.owns(frame.request_id))
                    .map(|(room, _)| room.clone());
            }
            Kind::MemberJoined(joined) => &joined.room,
            Kind::MemberLeft(left) => &left.room,
            Kind::Message(message) => &message.room,
            Kind::SenderKey(key) => &key.room,
            Kind::CaughtUp(caught_up) => &caught_up.room,
            Kind::History(history) => &history.room,
            // A `Chat` stream never carries `SessionOpened`.
            Kind::Joined(_) | Kind::SessionOpened(_) => return None,
        };
        self.rooms.contains_key(room).then(|| room.clone())
    }

    /// Waits for the next frame and applies it: `None` when the relay closed the stream.
    /// Not cancel-safe; use [`next_frame`](Self::next_frame) in a `select!`.
    pub async fn next_events(&mut self) -> Result<Option<Vec<Event>>, ClientError> {
        match self.next_frame().await? {
            Some(frame) => self.handle(frame).await.map(Some),
            None => Ok(None),
        }
    }

    /// Hands out our key in `room` as `applied` says, and sends again, under a fresh
    /// key, the messages a refused distribution of ours left unreadable; returns its
    /// events.
    async fn carry_out(&mut self, room: &str, applied: Applied) -> Result<Vec<Event>, ClientError> {
        if let Some(handout) = applied.handout {
            self.hand_out(room, &handout).await?;
        }
        self.send_all(room, applied.send).await?;
        if self.state(room)?.resealing() {
            if self.state(room)?.rotation_due() {
                self.learn_prekeys(room, &KeyHandout::Everyone).await;
            }
            let frames = self.state_mut(room)?.reseal()?;
            self.send_all(room, frames).await?;
        }
        let mut events = applied.events;
        events.append(&mut self.warnings);
        Ok(events)
    }

    /// Hands our key in `room` out as `handout` says, once the recipients' prekeys are
    /// known: those we lack are fetched from the key directory first. A member with no
    /// prekey gets nothing until it publishes one (the next handout).
    async fn hand_out(&mut self, room: &str, handout: &KeyHandout) -> Result<(), ClientError> {
        self.learn_prekeys(room, handout).await;
        let frames = self.state_mut(room)?.distribute(handout)?;
        self.send_all(room, frames).await
    }

    /// Fetches from the key directory the prekeys of the recipients of `handout` in
    /// `room` that we do not know yet.
    async fn learn_prekeys(&mut self, room: &str, handout: &KeyHandout) {
        // A new key for everyone is wrapped under everyone's *current* prekey, fetched
        // afresh: one kept from earlier in the session may have been retired since, and
        // its owner will erase it.
        if *handout == KeyHandout::Everyone
            && let Ok(bundles) = key_exchange(&mut self.client, None, Some(room), &[]).await
        {
            self.take_prekeys(room, bundles);
        }
        let missing = self
            .rooms
            .get(room)
            .map(SessionState::members_without_prekey)
            .unwrap_or_default();
        let wanted: Vec<&str> = match handout {
            KeyHandout::Everyone => missing.iter().map(String::as_str).collect(),
            KeyHandout::Newcomer(user) => missing
                .iter()
                .map(String::as_str)
                .filter(|missing| missing == user)
                .collect(),
        };
        for users in wanted.chunks(MAX_BUNDLE_USERS) {
            // A directory that cannot answer (a user reclaimed meanwhile) costs those
            // members our key for now, not the session.
            if let Ok(bundles) = key_exchange(&mut self.client, None, None, users).await {
                self.take_prekeys(room, bundles);
            }
        }
    }

    /// Hands our key in `room` to members that had no prekey when it was handed out (a
    /// member upgraded from v1 that has not run a v2 client yet, say), once they have
    /// one: they would otherwise wait for our next rotation. At most every
    /// [`OWED_RECHECK`].
    async fn hand_out_owed(&mut self, room: &str) -> Result<(), ClientError> {
        let owed = self.state(room)?.members_without_prekey();
        if owed.is_empty()
            || self
                .owed_checked
                .get(room)
                .is_some_and(|checked| checked.elapsed() < OWED_RECHECK)
        {
            return Ok(());
        }
        self.owed_checked.insert(room.to_owned(), Instant::now());
        for users in owed.chunks(MAX_BUNDLE_USERS) {
            let users: Vec<&str> = users.iter().map(String::as_str).collect();
            if let Ok(bundles) = key_exchange(&mut self.client, None, None, &users).await {
                self.take_prekeys(room, bundles);
            }
        }
        let still_owed = self.state(room)?.members_without_prekey();
        for user in owed {
            if !still_owed.contains(&user) {
                let frames = self
                    .state_mut(room)?
                    .distribute(&KeyHandout::Newcomer(user))?;
                self.send_all(room, frames).await?;
            }
        }
        Ok(())
    }

    /// Records the prekeys of `bundles` for the members they belong to, in every room
    /// (a prekey is the user's, whatever the room). A member of `room` whose prekey is
    /// missing or does not verify gets no key from us until it publishes a good one; the
    /// user is told.
    fn take_prekeys(&mut self, room: &str, bundles: Vec<VerifiedBundle>) {
        for bundle in bundles {
            if let Some((prekey_id, prekey)) = bundle.prekey {
                for state in self.rooms.values_mut() {
                    state.set_prekey(&bundle.identity, prekey_id, prekey.clone());
                }
            } else if let Some(problem) = bundle.prekey_problem
                && self.members(room).contains(&bundle.identity.user)
            {
                self.warnings.push(Event::Warning(format!(
                    "[{room}] {} gets no key from you for now: {problem}",
                    bundle.identity.user
                )));
            }
        }
    }

    /// Our current prekey, signed for publishing; the one already published if it has
    /// not changed.
    fn current_prekey(&self) -> Result<SignedPrekey, ClientError> {
        let current = self
            .prekeys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .current()
            .id();
        if current == self.published.prekey_id {
            return Ok(self.published.clone());
        }
        signed_prekey(&self.identity, &self.user, &self.prekeys)
    }

    async fn send_all(&mut self, room: &str, frames: Vec<ClientFrame>) -> Result<(), ClientError> {
        for frame in frames {
            self.send(room, frame).await?;
        }
        Ok(())
    }

    /// Sends a frame `room`'s state made; returns its request id. A message, key
    /// distribution or leave is kept even when the stream is down: `reconnect` takes
    /// over.
    async fn send(&mut self, room: &str, frame: ClientFrame) -> Result<u64, ClientError> {
        let request_id = frame.request_id;
        if self.frames.send(frame).await.is_err() && !self.state_mut(room)?.unsent(request_id) {
            return Err(ClientError::Disconnected);
        }
        Ok(request_id)
    }
}

/// The frames joining `joins`, numbered from `request_ids`, and the joins by room.
fn join_frames(
    request_ids: &RequestIds,
    joins: Vec<JoinRoom>,
) -> (Vec<ClientFrame>, BTreeMap<String, PendingJoin>) {
    let mut frames = Vec::new();
    let mut joining = BTreeMap::new();
    for join in joins {
        let request_id = request_ids.next();
        frames.push(ClientFrame {
            request_id,
            kind: Some(client_frame::Kind::Join(join.clone())),
        });
        joining.insert(join.room.clone(), PendingJoin { request_id, join });
    }
    (frames, joining)
}

fn not_in(room: &str) -> ClientError {
    ClientError::NotInRoom {
        room: room.to_owned(),
    }
}

#[cfg(test)]
mod tests;
