//! A connection to the relay, joined to one room.
//!
//! [`ChatSession::join`] opens the `Chat` stream as a logged-in user, joins the room (or
//! comes back to it and catches up), checks every member's keys against the pinned
//! ones, and hands our sender key to the members it trusts. From then on each frame
//! from the relay goes through [`ChatSession::handle`], which has the session's
//! [`SessionState`] apply it (keeping the room's keys in step) and sends what that
//! calls for (our key for newcomers, a new key when someone leaves); it returns what
//! the user should see.
//!
//! Delivery is durable, and the session does its part:
//! - it follows the room's sequence numbers ([`ChatSession::last_seq`]): a message at or
//!   below the last one processed was shown already and is dropped; the caller saves
//!   the number and joins with it next time to catch up on what it missed;
//! - it keeps every message the relay has not acknowledged, sealed and signed, and
//!   [`ChatSession::reconnect`] sends it again on a new stream exactly as it was (the
//!   relay recognises a repeat and stores it once), then rotates our key.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

use super::ClientError;
use super::contacts::Contacts;
use super::login::{AuthorizedClient, Credentials, VerifiedBundle, fetch_identity, key_exchange};
use super::room::{KeyHandout, RotationPolicy, SharedPrekeys};
use super::state::{Applied, Event, JOIN_REQUEST_ID, SessionState};
use crate::crypto::{Fingerprint, Identity, SafetyNumber};
use crate::proto::{
    ClientFrame, JoinRoom, Joined, ServerFrame, SignedPrekey, client_frame, server_frame,
};
use crate::protocol::{DEVICE, MAX_BUNDLE_USERS};

/// Frames the client queues for the relay before `send` waits.
const OUTBOUND_FRAMES: usize = 256;

/// How long the relay may take to answer a join: a relay that accepts the stream but
/// never answers would otherwise hold a (re)connecting client forever.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens the `Chat` stream as the logged-in user with a first frame (request id 1)
/// that joins a room. Returns where to send further frames and the frames from the
/// relay, the answer to the join first.
pub async fn open_stream(
    client: &mut AuthorizedClient,
    join: JoinRoom,
) -> Result<(mpsc::Sender<ClientFrame>, Streaming<ServerFrame>), ClientError> {
    let (frames, outbound) = mpsc::channel(OUTBOUND_FRAMES);
    let join = ClientFrame {
        request_id: JOIN_REQUEST_ID,
        kind: Some(client_frame::Kind::Join(join)),
    };
    frames
        .send(join)
        .await
        .map_err(|_| ClientError::Disconnected)?;
    let incoming = client
        .chat(Request::new(ReceiverStream::new(outbound)))
        .await
        .map_err(ClientError::Refused)?
        .into_inner();
    Ok((frames, incoming))
}

/// A new stream, joined: where to send frames, the frames from the relay, and its
/// answer to the join.
type JoinedStream = (mpsc::Sender<ClientFrame>, Streaming<ServerFrame>, Joined);

/// Opens the stream with `join` and waits for the relay's answer to it. Changes no
/// state, so it can be retried or abandoned freely.
async fn open_joined(
    client: &mut AuthorizedClient,
    join: JoinRoom,
) -> Result<JoinedStream, ClientError> {
    let room = join.room.clone();
    let (frames, mut incoming) = open_stream(client, join).await?;
    let joined = tokio::time::timeout(JOIN_TIMEOUT, wait_for_joined(&mut incoming, &room))
        .await
        .map_err(|_| ClientError::NoAnswer {
            what: format!("the join of {room}"),
            seconds: JOIN_TIMEOUT.as_secs(),
        })??;
    Ok((frames, incoming, joined))
}

async fn wait_for_joined(
    incoming: &mut Streaming<ServerFrame>,
    room: &str,
) -> Result<Joined, ClientError> {
    loop {
        let frame = incoming
            .message()
            .await
            .map_err(ClientError::Ended)?
            .ok_or(ClientError::Disconnected)?;
        match frame.kind {
            Some(server_frame::Kind::Joined(joined)) if joined.room == room => return Ok(joined),
            Some(server_frame::Kind::Rejection(rejection))
                if frame.request_id == JOIN_REQUEST_ID =>
            {
                let code = Code::from_i32(rejection.code);
                return Err(ClientError::Refused(Status::new(code, rejection.message)));
            }
            _ => {}
        }
    }
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

/// A connection to the relay, joined to one room.
pub struct ChatSession {
    state: SessionState,
    identity: Arc<Identity>,
    prekeys: SharedPrekeys,
    /// Our current prekey as published (RSA-PSS signatures are randomized: signing it
    /// again would make it look new to the key directory).
    published: SignedPrekey,
    client: AuthorizedClient,
    frames: mpsc::Sender<ClientFrame>,
    incoming: Streaming<ServerFrame>,
    /// What the key directory said that the user should know (a prekey that does not
    /// verify), shown with the next events.
    warnings: Vec<Event>,
    /// When we last asked the key directory for the prekeys of members that had none.
    owed_checked: Option<Instant>,
}

/// How often, at most, the prekeys of members owed our key (they had none) are asked for
/// again, as we send.
const OWED_RECHECK: Duration = Duration::from_secs(30);

impl ChatSession {
    /// Opens the session of the logged-in user, joins a room, checks the members' keys
    /// against `contacts` and gives our sender key to those it trusts. Also returns what
    /// the user should know at once (pins, changed keys, unusable members).
    ///
    /// To come back to a room and catch up on what was missed, set `join.after_seq` to
    /// the [`last_seq`](Self::last_seq) saved from the previous session.
    pub async fn join(
        channel: Channel,
        identity: Arc<Identity>,
        credentials: &Credentials,
        join: JoinRoom,
        contacts: Contacts,
        prekeys: SharedPrekeys,
        rotation: RotationPolicy,
    ) -> Result<(Self, Vec<Event>), ClientError> {
        let mut client = credentials.chat_client(channel);
        let room = join.room.clone();
        let after_seq = join.after_seq;
        let published = signed_prekey(&identity, credentials.user(), &prekeys)?;
        key_exchange(&mut client, Some(published.clone()), None, &[]).await?;
        let (frames, incoming, joined) = open_joined(&mut client, join).await?;
        let state = SessionState::new(
            &room,
            credentials.user(),
            identity.clone(),
            contacts,
            prekeys.clone(),
            rotation,
        )?;
        let mut session = Self {
            state,
            identity,
            prekeys,
            published,
            client,
            frames,
            incoming,
            warnings: Vec::new(),
            owed_checked: None,
        };
        let applied = session.state.joined(&joined, after_seq)?;
        let events = session.carry_out(applied).await?;
        Ok((session, events))
    }

    /// Comes back to the room on a new stream after the old one was lost, as the user
    /// logged in again with `credentials`: catches up from [`last_seq`](Self::last_seq),
    /// brings the members up to date, sends every unacknowledged message again exactly
    /// as it was sealed, then rotates our sender key for everyone. The old stream's
    /// request ids are dead: the messages get new ones.
    ///
    /// Until the relay has answered the join nothing changes, so a failed attempt can
    /// simply be retried.
    pub async fn reconnect(
        &mut self,
        channel: Channel,
        credentials: &Credentials,
    ) -> Result<Vec<Event>, ClientError> {
        let mut client = credentials.chat_client(channel);
        self.published = self.current_prekey()?;
        key_exchange(&mut client, Some(self.published.clone()), None, &[]).await?;
        let join = JoinRoom {
            room: self.state.room().to_owned(),
            create_private: false,
            after_seq: Some(self.state.last_seq()),
        };
        let (frames, incoming, joined) = open_joined(&mut client, join).await?;
        self.client = client;
        self.frames = frames;
        self.incoming = incoming;
        let rejoined = self.state.rejoined(&joined)?;
        // As first sent: the relay stores each message once, and a key before the
        // messages sealed with it.
        for frame in rejoined.resend {
            self.frames
                .send(frame)
                .await
                .map_err(|_| ClientError::Disconnected)?;
        }
        if rejoined.leave {
            self.leave().await?;
        } else if !self.state.is_leaving() {
            // A fresh key on every (re)join: it reaches whoever joined meanwhile, and
            // not whoever left.
            self.learn_prekeys(&KeyHandout::Everyone).await;
            let rotation = self.state.rotate()?;
            self.send_all(rotation).await?;
        }
        let mut events = rejoined.events;
        events.append(&mut self.warnings);
        Ok(events)
    }

    /// The room.
    pub fn room(&self) -> &str {
        self.state.room()
    }

    /// The owner of the room if it is private.
    pub fn owner(&self) -> Option<&str> {
        self.state.owner()
    }

    /// The other members, sorted by name.
    pub fn members(&self) -> Vec<String> {
        self.state.members()
    }

    /// Members whose keys changed and are not trusted.
    pub fn untrusted_members(&self) -> Vec<String> {
        self.state.untrusted_members()
    }

    /// The highest sequence number of the room this session has processed: save it, and
    /// join with it as `after_seq` next time.
    pub fn last_seq(&self) -> u64 {
        self.state.last_seq()
    }

    /// How many of our frames the relay has not answered yet.
    pub fn unanswered(&self) -> usize {
        self.state.unanswered()
    }

    /// The texts of our messages the relay has not acknowledged yet, in the order sent.
    pub fn pending(&self) -> Vec<&str> {
        self.state.pending()
    }

    /// Messages from others still waiting for their sender key.
    pub fn undecryptable(&self) -> usize {
        self.state.undecryptable()
    }

    /// Seals and sends a text message; returns the id its `Delivered` or `Refused` event
    /// will carry. If the stream is down the message is kept, to be sent again by
    /// [`reconnect`](Self::reconnect); the lost stream shows in
    /// [`next_frame`](Self::next_frame).
    pub async fn send_text(&mut self, text: &str) -> Result<u64, ClientError> {
        self.hand_out_owed().await?;
        if self.state.rotation_due() {
            // The new key goes to everyone under their current prekeys, fetched afresh
            // (one kept from earlier may have been retired and be erased soon).
            self.learn_prekeys(&KeyHandout::Everyone).await;
        }
        let frames = self.state.send_text(text)?;
        let request_id = frames.last().map_or(0, |frame| frame.request_id);
        self.send_all(frames).await?;
        Ok(request_id)
    }

    /// Renews the device's prekeys at `now_ms` as their policy says. When a new prekey was
    /// made, it is published and our sender key rotated, so that what we send next is
    /// wrapped under prekeys that are current (a retired prekey of ours that is erased
    /// later takes our own history copies with it). Returns how many retired prekeys were
    /// erased.
    pub async fn renew_prekeys(&mut self, now_ms: u64) -> Result<usize, ClientError> {
        let maintenance = self
            .prekeys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .maintain(now_ms)?;
        if maintenance.rotated {
            self.published = self.current_prekey()?;
            key_exchange(&mut self.client, Some(self.published.clone()), None, &[]).await?;
            if !self.state.is_leaving() {
                self.learn_prekeys(&KeyHandout::Everyone).await;
                let rotation = self.state.rotate()?;
                self.send_all(rotation).await?;
            }
        }
        Ok(maintenance.erased)
    }

    /// Asks for the latest `limit` messages of the room (1 to
    /// [`MAX_HISTORY_MESSAGES`](crate::protocol::MAX_HISTORY_MESSAGES)); they come as an [`Event::History`].
    pub async fn history(&mut self, limit: u32) -> Result<u64, ClientError> {
        let frame = self.state.history(limit);
        self.send(frame).await
    }

    /// Leaves the room for good; its `Left` event follows once the relay has answered.
    pub async fn leave(&mut self) -> Result<u64, ClientError> {
        let frame = self.state.leave();
        self.send(frame).await
    }

    /// Lets `user` join this private room (owner only; the relay decides).
    pub async fn invite(&mut self, user: &str) -> Result<u64, ClientError> {
        let invitee = match self.state.member_identity(user) {
            Some(identity) => identity.clone(),
            None => fetch_identity(&mut self.client, user).await?,
        };
        let frame = self.state.invite(&invitee)?;
        self.send(frame).await
    }

    /// Removes `user` from this private room (owner only; the relay decides).
    pub async fn kick(&mut self, user: &str) -> Result<u64, ClientError> {
        let frame = self.state.kick(user)?;
        self.send(frame).await
    }

    /// Accepts the keys the relay now presents for `user` as theirs: pins them and,
    /// if `user` is in the room, starts exchanging keys with it.
    pub async fn trust(&mut self, user: &str) -> Result<Vec<Event>, ClientError> {
        let identity = match self.state.member_identity(user) {
            Some(identity) => identity.clone(),
            None => fetch_identity(&mut self.client, user).await?,
        };
        let applied = self.state.trust(user, &identity)?;
        self.carry_out(applied).await
    }

    /// Our own fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    /// The safety number of this user and `user`: from the keys `user` has in this
    /// room (the ones to check before trusting them, if they changed), or else from the
    /// pinned keys.
    pub fn safety_number(&self, user: &str) -> Result<SafetyNumber, ClientError> {
        self.state.safety_number(user)
    }

    /// Records that the user compared the safety number with `user` and it matched. If
    /// `user` is in the room with keys that are not the pinned ones, the user must trust
    /// them first: the number shown was for those keys.
    pub fn mark_verified(&mut self, user: &str) -> Result<(), ClientError> {
        self.state.mark_verified(user)
    }

    /// The next frame from the relay, or `None` when it closed the stream cleanly.
    /// Cancel-safe, so it can sit in a `select!` beside other input.
    pub async fn next_frame(&mut self) -> Result<Option<ServerFrame>, ClientError> {
        self.incoming.message().await.map_err(ClientError::Ended)
    }

    /// Applies one frame from the relay and returns what the user should see.
    pub async fn handle(&mut self, frame: ServerFrame) -> Result<Vec<Event>, ClientError> {
        let applied = self.state.apply(frame)?;
        self.carry_out(applied).await
    }

    /// Waits for the next frame and applies it: `None` when the relay closed the stream.
    /// Not cancel-safe; use [`next_frame`](Self::next_frame) in a `select!`.
    pub async fn next_events(&mut self) -> Result<Option<Vec<Event>>, ClientError> {
        match self.next_frame().await? {
            Some(frame) => self.handle(frame).await.map(Some),
            None => Ok(None),
        }
    }

    /// Hands out our key as `applied` says; returns its events.
    async fn carry_out(&mut self, applied: Applied) -> Result<Vec<Event>, ClientError> {
        if let Some(handout) = applied.handout {
            self.hand_out(&handout).await?;
        }
        let mut events = applied.events;
        events.append(&mut self.warnings);
        Ok(events)
    }

    /// Hands our key out as `handout` says, once the recipients' prekeys are known: those
    /// we lack are fetched from the key directory first. A member with no prekey gets
    /// nothing until it publishes one (the next handout).
    async fn hand_out(&mut self, handout: &KeyHandout) -> Result<(), ClientError> {
        self.learn_prekeys(handout).await;
        let frames = self.state.distribute(handout)?;
        self.send_all(frames).await
    }

    /// Fetches from the key directory the prekeys of the recipients of `handout` that we
    /// do not know yet.
    async fn learn_prekeys(&mut self, handout: &KeyHandout) {
        // A new key for everyone is wrapped under everyone's *current* prekey, fetched
        // afresh: one kept from earlier in the session may have been retired since, and
        // its owner will erase it.
        if *handout == KeyHandout::Everyone {
            let room = self.state.room().to_owned();
            if let Ok(bundles) = key_exchange(&mut self.client, None, Some(&room), &[]).await {
                self.take_prekeys(bundles);
            }
        }
        let missing = self.state.members_without_prekey();
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
                self.take_prekeys(bundles);
            }
        }
    }

    /// Hands our key to members that had no prekey when it was handed out (a member
    /// upgraded from v1 that has not run a v2 client yet, say), once they have one: they
    /// would otherwise wait for our next rotation. At most every [`OWED_RECHECK`].
    async fn hand_out_owed(&mut self) -> Result<(), ClientError> {
        let owed = self.state.members_without_prekey();
        if owed.is_empty()
            || self
                .owed_checked
                .is_some_and(|checked| checked.elapsed() < OWED_RECHECK)
        {
            return Ok(());
        }
        self.owed_checked = Some(Instant::now());
        for users in owed.chunks(MAX_BUNDLE_USERS) {
            let users: Vec<&str> = users.iter().map(String::as_str).collect();
            if let Ok(bundles) = key_exchange(&mut self.client, None, None, &users).await {
                self.take_prekeys(bundles);
            }
        }
        let still_owed = self.state.members_without_prekey();
        for user in owed {
            if !still_owed.contains(&user) {
                let frames = self.state.distribute(&KeyHandout::Newcomer(user))?;
                self.send_all(frames).await?;
            }
        }
        Ok(())
    }

    /// Records the prekeys of `bundles` whose identity is the member's.
    /// A member whose prekey is missing or does not verify gets no key from us until it
    /// publishes a good one; the user is told.
    fn take_prekeys(&mut self, bundles: Vec<VerifiedBundle>) {
        for bundle in bundles {
            if let Some((prekey_id, prekey)) = bundle.prekey {
                self.state.set_prekey(&bundle.identity, prekey_id, prekey);
            } else if let Some(problem) = bundle.prekey_problem
                && self.state.members().contains(&bundle.identity.user)
            {
                self.warnings.push(Event::Warning(format!(
                    "[{}] {} gets no key from you for now: {problem}",
                    self.state.room(),
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
        signed_prekey(&self.identity, self.state.user(), &self.prekeys)
    }

    async fn send_all(&mut self, frames: Vec<ClientFrame>) -> Result<(), ClientError> {
        for frame in frames {
            self.send(frame).await?;
        }
        Ok(())
    }

    /// Sends a frame the state made; returns its request id. A message (or key
    /// distribution) is kept even when the stream is down: `reconnect` takes over.
    async fn send(&mut self, frame: ClientFrame) -> Result<u64, ClientError> {
        let request_id = frame.request_id;
        if self.frames.send(frame).await.is_err() && !self.state.unsent(request_id) {
            return Err(ClientError::Disconnected);
        }
        Ok(request_id)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::Response;
    use tonic::transport::Server;

    use super::*;
    use crate::client::prekeys::PrekeyRing;
    use crate::client::{RoomEvent, RoomKeys};
    use crate::crypto::VerifiedIdentity;
    use crate::proto::chat_service_server::{ChatService, ChatServiceServer};
    use crate::proto::{
        Ack, CaughtUp, DistributeSenderKey, History, HistoryEntry, KeyBundle, KeyExchangeRequest,
        KeyExchangeResponse, MessageDelivery, PublicIdentity, Rejection, SendMessage,
        SenderKeyDelivery, history_entry,
    };
    use crate::protocol::MAX_HISTORY_MESSAGES;
    use crate::server::frame::{ValidFrame, check};
    use server_frame::Kind;

    const PATIENCE: Duration = Duration::from_secs(10);

    fn identities() -> &'static [Arc<Identity>; 3] {
        static IDS: OnceLock<[Arc<Identity>; 3]> = OnceLock::new();
        IDS.get_or_init(|| std::array::from_fn(|_| Arc::new(Identity::generate(2048).unwrap())))
    }

    fn public(user: &str, index: usize) -> PublicIdentity {
        identities()[index].publish(user).unwrap()
    }

    /// The prekeys of the three test identities, in memory.
    fn rings() -> &'static [SharedPrekeys; 3] {
        static RINGS: OnceLock<[SharedPrekeys; 3]> = OnceLock::new();
        RINGS.get_or_init(|| {
            std::array::from_fn(|_| {
                let ring = PrekeyRing::in_memory(2048, crate::protocol::now_ms()).unwrap();
                Arc::new(std::sync::RwLock::new(ring))
            })
        })
    }

    /// The test identity a name stands for in these tests.
    fn index_of(user: &str) -> Option<usize> {
        ["alice", "bob", "carol"]
            .iter()
            .position(|name| *name == user)
    }

    /// What the key directory presents for `user`: its identity and signed prekey.
    fn bundle(user: &str) -> Option<KeyBundle> {
        let index = index_of(user)?;
        let ring = rings()[index].read().unwrap();
        let signed = ring
            .current()
            .sign(&identities()[index], user, DEVICE)
            .unwrap();
        Some(KeyBundle {
            identity: Some(public(user, index)),
            device: DEVICE,
            prekey: Some(SignedPrekey {
                device: signed.device,
                prekey_id: signed.id,
                created_at_ms: signed.created_at_ms,
                public_key: signed.public_key.into(),
                signature: signed.signature.into(),
            }),
        })
    }

    /// The room keys of another member, who knows `members` and their prekeys.
    fn peer(user: &str, index: usize, members: &[(&str, usize)]) -> RoomKeys {
        let mut keys = RoomKeys::new(
            "lobby",
            user,
            identities()[index].clone(),
            rings()[index].clone(),
            RotationPolicy::default(),
        )
        .unwrap();
        for (name, i) in members {
            keys.insert_member(VerifiedIdentity::verify(&public(name, *i)).unwrap(), true);
            let ring = rings()[*i].read().unwrap();
            let current = ring.current();
            keys.set_prekey(name, current.id(), current.key().public_key().clone());
        }
        keys
    }

    /// A relay whose every answer the test writes by hand.
    struct ScriptedRelay {
        streams: mpsc::Sender<RelayStream>,
        /// The ids of the prekeys clients published, in order.
        published: Arc<std::sync::Mutex<Vec<u64>>>,
    }

    /// One stream a client opened on the scripted relay.
    struct RelayStream {
        frames: Streaming<ClientFrame>,
        replies: mpsc::Sender<Result<ServerFrame, Status>>,
    }

    #[tonic::async_trait]
    impl ChatService for ScriptedRelay {
        async fn key_exchange(
            &self,
            request: Request<KeyExchangeRequest>,
        ) -> Result<Response<KeyExchangeResponse>, Status> {
            let request = request.into_inner();
            if let Some(prekey) = &request.publish {
                self.published.lock().unwrap().push(prekey.prekey_id);
            }
            // The script does not follow membership: a room's bundles are those of every
            // test identity (a client takes only its members').
            let mut users = request.users.clone();
            if !request.room.is_empty() {
                users.extend(["alice", "bob", "carol"].map(str::to_owned));
            }
            let bundles = users.iter().filter_map(|user| bundle(user)).collect();
            Ok(Response::new(KeyExchangeResponse { bundles }))
        }

        type ChatStream = ReceiverStream<Result<ServerFrame, Status>>;

        async fn chat(
            &self,
            request: Request<Streaming<ClientFrame>>,
        ) -> Result<Response<Self::ChatStream>, Status> {
            let (replies, outbound) = mpsc::channel(64);
            let stream = RelayStream {
                frames: request.into_inner(),
                replies,
            };
            let _ = self.streams.send(stream).await;
            Ok(Response::new(ReceiverStream::new(outbound)))
        }
    }

    impl RelayStream {
        async fn frame(&mut self) -> ClientFrame {
            tokio::time::timeout(PATIENCE, self.frames.message())
                .await
                .expect("a frame in time")
                .unwrap()
                .expect("the stream is open")
        }

        async fn send(&self, request_id: u64, kind: Kind) {
            let frame = ServerFrame {
                request_id,
                kind: Some(kind),
            };
            self.replies.send(Ok(frame)).await.unwrap();
        }
    }

    /// Starts a scripted relay; returns a channel to it and the streams opened on it.
    async fn start_relay() -> (Channel, mpsc::Receiver<RelayStream>) {
        let (channel, accepted, _) = start_recording_relay().await;
        (channel, accepted)
    }

    /// [`start_relay`], with the log of the prekeys published to it.
    async fn start_recording_relay() -> (
        Channel,
        mpsc::Receiver<RelayStream>,
        Arc<std::sync::Mutex<Vec<u64>>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (streams, accepted) = mpsc::channel(4);
        let published = Arc::default();
        let relay = ScriptedRelay {
            streams,
            published: Arc::clone(&published),
        };
        tokio::spawn(
            Server::builder()
                .add_service(ChatServiceServer::new(relay))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let channel = super::super::connect(&url, None).await.unwrap();
        (channel, accepted, published)
    }

    /// Takes the next stream opened, reads its join and answers with `joined`.
    async fn answer_join(
        accepted: &mut mpsc::Receiver<RelayStream>,
        joined: Joined,
    ) -> (RelayStream, ClientFrame) {
        let mut stream = tokio::time::timeout(PATIENCE, accepted.recv())
            .await
            .unwrap()
            .unwrap();
        let join = stream.frame().await;
        stream.send(join.request_id, Kind::Joined(joined)).await;
        (stream, join)
    }

    /// alice joins lobby through the scripted relay, which answers with `joined`.
    async fn join_alice(
        channel: Channel,
        accepted: &mut mpsc::Receiver<RelayStream>,
        after_seq: Option<u64>,
        joined: Joined,
    ) -> (ChatSession, Vec<Event>, RelayStream, ClientFrame) {
        join_alice_with(channel, accepted, after_seq, joined, rings()[0].clone()).await
    }

    /// [`join_alice`], with the prekeys `prekeys`.
    async fn join_alice_with(
        channel: Channel,
        accepted: &mut mpsc::Receiver<RelayStream>,
        after_seq: Option<u64>,
        joined: Joined,
        prekeys: SharedPrekeys,
    ) -> (ChatSession, Vec<Event>, RelayStream, ClientFrame) {
        let join = JoinRoom {
            room: "lobby".into(),
            create_private: false,
            after_seq,
        };
        let credentials = Credentials::for_tests("alice");
        let session = ChatSession::join(
            channel,
            identities()[0].clone(),
            &credentials,
            join,
            Contacts::in_memory(),
            prekeys,
            RotationPolicy::default(),
        );
        let (session, (stream, join)) = tokio::join!(session, answer_join(accepted, joined));
        let (session, events) = session.unwrap();
        (session, events, stream, join)
    }

    fn joined(members: Vec<PublicIdentity>, last_seq: u64, resumed: bool) -> Joined {
        Joined {
            room: "lobby".into(),
            members,
            last_seq,
            resumed,
            ..Default::default()
        }
    }

    async fn events(session: &mut ChatSession) -> Vec<Event> {
        tokio::time::timeout(PATIENCE, session.next_events())
            .await
            .expect("a frame in time")
            .unwrap()
            .expect("the stream is open")
    }

    fn distribution(frame: &ClientFrame) -> &DistributeSenderKey {
        match &frame.kind {
            Some(client_frame::Kind::DistributeKey(distribution)) => distribution,
            other => panic!("not a key distribution: {other:?}"),
        }
    }

    fn sent(frame: &ClientFrame) -> &SendMessage {
        match &frame.kind {
            Some(client_frame::Kind::Send(send)) => send,
            other => panic!("not a message: {other:?}"),
        }
    }

    fn recipients(distribution: &DistributeSenderKey) -> Vec<&str> {
        distribution
            .copies
            .iter()
            .map(|copy| copy.recipient.as_str())
            .collect()
    }

    fn key_id(distribution: &DistributeSenderKey) -> u64 {
        distribution.header.as_ref().unwrap().key_id
    }

    /// What the relay delivers to `recipient` of `sender`'s distribution: its copy, as
    /// the relay's own frame checks store it.
    fn key_for(
        distribution: &DistributeSenderKey,
        sender: &str,
        recipient: &str,
        seq: u64,
    ) -> SenderKeyDelivery {
        let frame = ClientFrame {
            request_id: 1,
            kind: Some(client_frame::Kind::DistributeKey(distribution.clone())),
        };
        let Ok(ValidFrame::DistributeKey { keys, .. }) = check(frame) else {
            panic!("the relay would refuse this distribution");
        };
        let stored = keys
            .into_iter()
            .find(|key| key.recipient == recipient)
            .unwrap();
        crate::store::copy::delivery(
            &distribution.room,
            sender.to_owned(),
            seq,
            &stored.wrapped_key,
            stored.signature,
        )
        .unwrap()
    }

    fn message_from(send: &SendMessage, sender: &str, seq: u64) -> MessageDelivery {
        MessageDelivery {
            room: send.room.clone(),
            sender: sender.to_owned(),
            sealed: send.sealed.clone(),
            seq,
        }
    }

    #[tokio::test]
    async fn a_reconnect_sends_unacknowledged_messages_again_as_sealed_then_rotates() {
        let (channel, mut accepted) = start_relay().await;
        let first = joined(vec![public("bob", 1)], 5, false);
        let (mut alice, shown, mut stream, _) =
            join_alice(channel.clone(), &mut accepted, None, first).await;
        assert!(matches!(&shown[..], [Event::Pinned { user, .. }] if user == "bob"));
        assert_eq!(alice.last_seq(), 5);
        let first_key_frame = stream.frame().await;
        let first_key = distribution(&first_key_frame);
        assert_eq!(recipients(first_key), ["alice", "bob"]);

        let one = alice.send_text("one").await.unwrap();
        alice.send_text("two").await.unwrap();
        let one_frame = stream.frame().await;
        let two_frame = stream.frame().await;
        assert_eq!(one_frame.request_id, one);
        stream.send(one, Kind::Ack(Ack { seq: 7 })).await;
        assert_eq!(
            events(&mut alice).await,
            [Event::Delivered {
                request_id: one,
                seq: 7
            }]
        );
        assert_eq!(alice.pending(), ["two"]);

        // The relay goes away; alice writes on.
        drop(stream);
        let lost = tokio::time::timeout(PATIENCE, alice.next_frame()).await;
        assert!(matches!(lost, Ok(Ok(None) | Err(_))), "{lost:?}");
        alice.send_text("three").await.unwrap();
        assert_eq!(alice.pending(), ["two", "three"]);

        // carol joined meanwhile.
        let members = vec![public("bob", 1), public("carol", 2)];
        let credentials = Credentials::for_tests("alice");
        let (reconnected, (mut stream, join)) = tokio::join!(
            alice.reconnect(channel, &credentials),
            answer_join(&mut accepted, joined(members, 9, true))
        );
        let shown = reconnected.unwrap();
        assert!(
            shown.contains(&Event::MemberJoined {
                room: "lobby".into(),
                user: "carol".into()
            }),
            "{shown:?}"
        );
        match join.kind {
            Some(client_frame::Kind::Join(join)) => assert_eq!(join.after_seq, Some(5)),
            other => panic!("{other:?}"),
        }
        assert_eq!(join.request_id, JOIN_REQUEST_ID);
        // The unacknowledged distribution of the key "two" and "three" were sealed with,
        // exactly as first sent, before them: never a newer key before an older message.
        let old_key = stream.frame().await;
        assert_eq!(old_key.kind, first_key_frame.kind);
        let old_key = distribution(&old_key);
        // Exactly as sealed and signed the first time: the relay recognises a repeat.
        let two_again = stream.frame().await;
        assert_eq!(two_again.kind, two_frame.kind);
        let three = stream.frame().await;
        assert_eq!(
            sent(&three).sealed.as_ref().unwrap().key_id,
            key_id(first_key)
        );
        // Then a fresh key.
        let rotation = stream.frame().await;
        let rotation = distribution(&rotation);
        assert_ne!(key_id(rotation), key_id(first_key));
        assert_eq!(recipients(rotation), ["alice", "bob", "carol"]);

        // bob can read what was sent again (carol joined after it was written).
        let mut bob = peer("bob", 1, &[("alice", 0)]);
        assert!(
            bob.accept_sender_key(key_for(old_key, "alice", "bob", 10))
                .is_empty()
        );
        let opened = bob.open(message_from(sent(&two_again), "alice", 11));
        assert!(
            matches!(&opened[..], [RoomEvent::Message { text, .. }] if text == "two"),
            "{opened:?}"
        );

        // The answers come under the new request ids.
        stream
            .send(two_again.request_id, Kind::Ack(Ack { seq: 8 }))
            .await;
        assert_eq!(
            events(&mut alice).await,
            [Event::Delivered {
                request_id: two_again.request_id,
                seq: 8
            }]
        );
        assert_eq!(alice.pending(), ["three"]);
        let refusal = Rejection {
            code: Code::ResourceExhausted as i32,
            message: "slow down".into(),
        };
        stream
            .send(three.request_id, Kind::Rejection(refusal))
            .await;
        let refused = events(&mut alice).await;
        assert!(
            matches!(&refused[..], [Event::Refused { text, code: Code::ResourceExhausted, .. }] if text == "three"),
            "{refused:?}"
        );
        assert!(alice.pending().is_empty());
    }

    #[tokio::test]
    async fn a_renewed_prekey_is_published_and_our_key_handed_out_under_it() {
        use crate::client::prekeys::PrekeyPolicy;

        let (channel, mut accepted, published) = start_recording_relay().await;
        let home = tempfile::tempdir().unwrap();
        let policy = PrekeyPolicy {
            rotate_after_ms: 1_000,
            keep_retired_ms: 1_000,
        };
        let (ring, _) = PrekeyRing::load(home.path(), "alice", 2048, policy, 0, || {}).unwrap();
        let first = ring.current().id();
        let ring: SharedPrekeys = Arc::new(std::sync::RwLock::new(ring));
        let members = joined(vec![public("bob", 1)], 0, false);
        let (mut alice, _, mut stream, _) =
            join_alice_with(channel, &mut accepted, None, members, ring.clone()).await;
        let handed = stream.frame().await;
        assert_eq!(*published.lock().unwrap(), [first]);

        // Not due yet: nothing changes.
        assert_eq!(alice.renew_prekeys(900).await.unwrap(), 0);
        assert_eq!(*published.lock().unwrap(), [first]);

        // Due: a new prekey is published, and a new sender key handed out, our own copy
        // wrapped under the new prekey.
        assert_eq!(alice.renew_prekeys(1_000).await.unwrap(), 0);
        let second = ring.read().unwrap().current().id();
        assert_ne!(second, first);
        assert_eq!(*published.lock().unwrap(), [first, second]);
        let rotation = stream.frame().await;
        let rotation = distribution(&rotation);
        assert_ne!(key_id(rotation), key_id(distribution(&handed)));
        assert_eq!(recipients(rotation), ["alice", "bob"]);
        assert_eq!(rotation.copies[0].prekey_id, second);

        // The first is kept until a second after its retirement, then erased.
        assert!(ring.read().unwrap().get(first).is_some());
        assert_eq!(alice.renew_prekeys(2_000).await.unwrap(), 1);
        assert!(ring.read().unwrap().get(first).is_none());
    }

    #[tokio::test]
    async fn a_catch_up_skips_what_was_shown_and_reads_former_members_until_caught_up() {
        let (channel, mut accepted) = start_relay().await;
        let mut bob = peer("bob", 1, &[("alice", 0)]);
        let mut carol = peer("carol", 2, &[("alice", 0)]);
        let bob_key = bob.distribute(&KeyHandout::Everyone).unwrap();
        let carol_key = carol.distribute(&KeyHandout::Everyone).unwrap();
        let (_, shown_before) = bob.seal_text("shown before").unwrap();
        let (_, from_carol) = carol.seal_text("carol, before leaving").unwrap();
        let (_, from_bob) = bob.seal_text("bob, while alice was away").unwrap();
        let (_, too_late) = carol.seal_text("after the catch-up").unwrap();

        let mut resumed = joined(vec![public("bob", 1)], 12, true);
        resumed.former_members = vec![public("carol", 2)];
        let (mut alice, shown, mut stream, join) =
            join_alice(channel, &mut accepted, Some(10), resumed).await;
        match join.kind {
            Some(client_frame::Kind::Join(join)) => assert_eq!(join.after_seq, Some(10)),
            other => panic!("{other:?}"),
        }
        assert_eq!(shown.len(), 2, "bob and carol pinned: {shown:?}");
        assert_eq!(alice.last_seq(), 10);
        assert_eq!(alice.members(), ["bob"]);
        let own = stream.frame().await;
        assert_eq!(
            recipients(distribution(&own)),
            ["alice", "bob"],
            "nothing for a former member"
        );

        let script = [
            Kind::SenderKey(key_for(&bob_key[0], "bob", "alice", 4)),
            Kind::SenderKey(key_for(&carol_key[0], "carol", "alice", 9)),
            Kind::Message(message_from(&shown_before, "bob", 10)),
            Kind::Message(message_from(&from_carol, "carol", 11)),
            Kind::Message(message_from(&from_bob, "bob", 12)),
            Kind::CaughtUp(CaughtUp {
                room: "lobby".into(),
                seq: 12,
            }),
            Kind::SenderKey(key_for(&bob_key[0], "bob", "alice", 4)),
            Kind::Message(message_from(&too_late, "carol", 13)),
        ];
        let mut seen = Vec::new();
        for kind in script {
            stream.send(0, kind).await;
            seen.push(events(&mut alice).await);
        }
        let texts: Vec<(u64, &str)> = seen
            .iter()
            .flatten()
            .filter_map(|event| match event {
                Event::Message { seq, text, .. } => Some((*seq, text.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            texts,
            [
                (11, "carol, before leaving"),
                (12, "bob, while alice was away")
            ]
        );
        assert!(seen[..3].iter().all(Vec::is_empty), "{seen:?}");
        assert_eq!(
            seen[5],
            [Event::CaughtUp {
                room: "lobby".into(),
                seq: 12
            }]
        );
        assert!(seen[6].is_empty(), "the key in force again: {:?}", seen[6]);
        assert!(
            matches!(&seen[7][..], [Event::Warning(w)] if w.contains("not a member")),
            "{:?}",
            seen[7]
        );
        assert_eq!(alice.last_seq(), 13);
    }

    #[tokio::test]
    async fn history_comes_as_one_event_with_our_own_messages() {
        let (channel, mut accepted) = start_relay().await;
        let (mut alice, _, mut stream, _) = join_alice(
            channel,
            &mut accepted,
            None,
            joined(vec![public("bob", 1)], 0, false),
        )
        .await;
        let own_key = stream.frame().await;
        alice.send_text("mine").await.unwrap();
        let mine = stream.frame().await;
        let mut bob = peer("bob", 1, &[("alice", 0)]);
        let bob_key = bob.distribute(&KeyHandout::Everyone).unwrap();
        let (_, his) = bob.seal_text("his").unwrap();

        let request_id = alice.history(500).await.unwrap();
        let asked = stream.frame().await;
        assert_eq!(asked.request_id, request_id);
        match asked.kind {
            Some(client_frame::Kind::History(history)) => {
                assert_eq!(history.limit, MAX_HISTORY_MESSAGES)
            }
            other => panic!("{other:?}"),
        }
        let entry = |kind| HistoryEntry { kind: Some(kind) };
        let answer = History {
            room: "lobby".into(),
            entries: vec![
                entry(history_entry::Kind::SenderKey(key_for(
                    distribution(&own_key),
                    "alice",
                    "alice",
                    1,
                ))),
                entry(history_entry::Kind::SenderKey(key_for(
                    &bob_key[0],
                    "bob",
                    "alice",
                    2,
                ))),
                entry(history_entry::Kind::Message(message_from(
                    sent(&mine),
                    "alice",
                    3,
                ))),
                entry(history_entry::Kind::Message(message_from(&his, "bob", 4))),
            ],
            former_members: Vec::new(),
        };
        stream.send(request_id, Kind::History(answer)).await;
        let shown = events(&mut alice).await;
        let [Event::History { room, messages }] = &shown[..] else {
            panic!("{shown:?}");
        };
        assert_eq!(room, "lobby");
        let read: Vec<(u64, &str, &str)> = messages
            .iter()
            .map(|m| (m.seq, m.sender.as_str(), m.text.as_str()))
            .collect();
        assert_eq!(read, [(3, "alice", "mine"), (4, "bob", "his")]);
        assert!(messages.iter().all(|m| m.sent_at_ms > 0));
        assert_eq!(alice.last_seq(), 0, "history is not progress");
        assert_eq!(alice.pending(), ["mine"]);
    }
}
