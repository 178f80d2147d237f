//! A connection to the relay, joined to one room.
//!
//! [`ChatSession::join`] opens the `Chat` stream as a logged-in user, joins the room (or
//! comes back to it and catches up), checks every member's keys against the pinned
//! ones, and hands our sender key to the members it trusts. From then on each frame
//! from the relay goes through [`ChatSession::handle`], which keeps the room's keys in
//! step (answering newcomers with our key, rotating it when someone leaves) and returns
//! what the user should see.
//!
//! Delivery is durable, and the session does its part:
//! - it follows the room's sequence numbers ([`ChatSession::last_seq`]): a message at or
//!   below the last one processed was shown already and is dropped; the caller saves
//!   the number and joins with it next time to catch up on what it missed;
//! - it keeps every message the relay has not acknowledged, sealed and signed, and
//!   [`ChatSession::reconnect`] sends it again on a new stream exactly as it was (the
//!   relay recognises a repeat and stores it once), then rotates our key.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

use super::ClientError;
use super::contacts::{Contacts, Pin};
use super::login::{AuthorizedClient, Credentials, fetch_identity};
use super::room::{RoomEvent, RoomKeys};
use crate::crypto::{Fingerprint, Identity, SafetyNumber, VerifiedIdentity};
use crate::proto::{
    ClientFrame, DistributeSenderKey, GetHistory, History, InviteMember, JoinRoom, Joined,
    KickMember, LeaveReason, LeaveRoom, PublicIdentity, SendMessage, ServerFrame, client_frame,
    server_frame,
};

/// Frames the client queues for the relay before `send` waits.
const OUTBOUND_FRAMES: usize = 256;

/// How long the relay may take to answer a join: a relay that accepts the stream but
/// never answers would otherwise hold a (re)connecting client forever.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The request id of the join that opens every stream; later frames count up from it.
const JOIN_REQUEST_ID: u64 = 1;

/// The most messages one history request may ask for.
pub const MAX_HISTORY: u32 = 100;

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

/// Where a client starts counting a room's sequence numbers after a `Joined` that
/// reports `resumed` and the room's `latest` number, given the `after_seq` it asked
/// for; and what to warn about.
fn starting_seq(resumed: bool, after_seq: Option<u64>, latest: u64) -> (u64, Option<String>) {
    match after_seq {
        Some(after) if resumed && after <= latest => (after, None),
        Some(after) if resumed => (
            latest,
            Some(format!(
                "this client has seen the room up to message number {after}, but the \
                 server's latest is {latest}: the server seems restored from an older \
                 backup; continuing from {latest}"
            )),
        ),
        Some(after) if after > 0 => (
            latest,
            Some(
                "the server no longer counted you as a member, so you joined again: what \
                 was said while you were away is not available"
                    .to_owned(),
            ),
        ),
        _ => (latest, None),
    }
}

/// A message of the room's history, decrypted and authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryMessage {
    /// Its sequence number in the room.
    pub seq: u64,
    pub sender: String,
    pub text: String,
    /// When its sender says it sent it, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
}

/// What happened in the room, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message from another member, signed, decrypted and authenticated.
    Message {
        room: String,
        sender: String,
        text: String,
        sent_at_ms: u64,
        /// Its sequence number in the room.
        seq: u64,
    },
    /// Someone joined (also: someone who joined while we were away).
    MemberJoined { room: String, user: String },
    /// Someone left or was removed; our sender key has been rotated.
    MemberLeft {
        room: String,
        user: String,
        reason: LeaveReason,
    },
    /// The owner of the room removed us from it.
    Removed { room: String },
    /// First sight of a contact: its keys are now pinned.
    Pinned {
        user: String,
        fingerprint: Fingerprint,
    },
    /// The relay presented keys for a contact that are not the pinned ones: nothing is
    /// sent to or accepted from it until the user trusts the new keys.
    KeysChanged {
        room: String,
        user: String,
        pinned: Fingerprint,
        presented: Fingerprint,
        was_verified: bool,
    },
    /// The relay stored one of our messages under `seq`. `request_id` is the one
    /// [`ChatSession::send_text`] returned, or the one the message got when
    /// [`ChatSession::reconnect`] sent it again.
    Delivered { request_id: u64, seq: u64 },
    /// The relay refused one of our messages: it will not be delivered.
    Refused {
        request_id: u64,
        code: Code,
        message: String,
        /// The text of the message.
        text: String,
    },
    /// We left the room.
    Left { room: String },
    /// The relay has sent everything we missed up to `seq`; what follows is live.
    CaughtUp { room: String, seq: u64 },
    /// The answer to [`ChatSession::history`]: messages in sequence order, ours included.
    History {
        room: String,
        messages: Vec<HistoryMessage>,
    },
    /// Something the user asked for was done; the text says what.
    Notice(String),
    /// Something was dropped or looks wrong; the text says what.
    Warning(String),
}

/// What an unanswered frame was, to report its answer.
#[derive(Debug, Clone, PartialEq)]
enum Pending {
    Message(Unacked),
    /// Kept to send again: messages sealed under this key may follow it.
    KeyDistribution(DistributeSenderKey),
    Leave,
    Invite(String),
    Kick(String),
    History,
}

/// A message the relay has not acknowledged: its text, to report on it, and its frame,
/// sealed and signed, to send again as it is on a new stream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unacked {
    text: String,
    send: SendMessage,
}

/// The unanswered frames of a dead stream, sorted out by [`ChatSession::reconnect`].
#[derive(Default)]
struct Carried {
    /// Messages and key distributions to send again, under their new request ids, in
    /// their original order: a message must not arrive after a newer key of ours.
    resend: Vec<(u64, client_frame::Kind)>,
    /// Whether a leave was unanswered.
    leave: bool,
}

/// A connection to the relay, joined to one room.
pub struct ChatSession {
    keys: RoomKeys,
    identity: Arc<Identity>,
    user: String,
    contacts: Contacts,
    client: AuthorizedClient,
    private_room: bool,
    owner: Option<String>,
    frames: mpsc::Sender<ClientFrame>,
    incoming: Streaming<ServerFrame>,
    /// The highest sequence number of the room processed.
    last_seq: u64,
    last_request_id: u64,
    /// Our frames the relay has not answered, by request id (so in the order sent).
    unanswered: BTreeMap<u64, Pending>,
    /// Set by `leave` or a kick: membership changes no longer call for key
    /// distributions, which the relay would refuse once we are out.
    leaving: bool,
}

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
    ) -> Result<(Self, Vec<Event>), ClientError> {
        let mut client = credentials.chat_client(channel);
        let room = join.room.clone();
        let after_seq = join.after_seq;
        let (frames, incoming, joined) = open_joined(&mut client, join).await?;
        let user = credentials.user().to_owned();
        let mut session = Self {
            keys: RoomKeys::new(&room, &user, identity.clone())?,
            identity,
            user,
            contacts,
            client,
            private_room: false,
            owner: None,
            frames,
            incoming,
            last_seq: 0,
            last_request_id: JOIN_REQUEST_ID,
            unanswered: BTreeMap::new(),
            leaving: false,
        };
        let mut events = session.apply_joined(&joined, after_seq);
        for member in &joined.members {
            if let Some((identity, trusted)) = session.admit(member, &mut events)? {
                session.keys.insert_member(identity, trusted);
            }
        }
        session.admit_former_members(&joined.former_members, &mut events)?;
        let distribution = session.keys.distribute_to_all()?;
        session.distribute(distribution).await?;
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
        let join = JoinRoom {
            room: self.keys.room().to_owned(),
            create_private: false,
            after_seq: Some(self.last_seq),
        };
        let (frames, incoming, joined) = open_joined(&mut client, join).await?;
        self.client = client;
        self.frames = frames;
        self.incoming = incoming;
        self.last_request_id = JOIN_REQUEST_ID;
        let mut events = self.apply_joined(&joined, Some(self.last_seq));
        let carried = self.carry_unanswered(&mut events);
        self.reconcile_members(&joined, &mut events)?;
        // As first sent: the relay stores each message once, and a key before the
        // messages sealed with it.
        for (request_id, frame) in carried.resend {
            self.send_frame(request_id, frame).await?;
        }
        if carried.leave {
            self.leave().await?;
        } else if !self.leaving {
            // A fresh key on every (re)join: it reaches whoever joined meanwhile, and
            // not whoever left.
            let rotation = self.keys.rotate()?;
            self.distribute(rotation).await?;
        }
        Ok(events)
    }

    /// The room.
    pub fn room(&self) -> &str {
        self.keys.room()
    }

    /// The owner of the room if it is private.
    pub fn owner(&self) -> Option<&str> {
        self.private_room.then_some(self.owner.as_deref()).flatten()
    }

    /// The other members, sorted by name.
    pub fn members(&self) -> Vec<String> {
        self.keys.members().map(str::to_owned).collect()
    }

    /// Members whose keys changed and are not trusted.
    pub fn untrusted_members(&self) -> Vec<String> {
        self.keys
            .members()
            .filter(|user| !self.keys.is_trusted(user))
            .map(str::to_owned)
            .collect()
    }

    /// The highest sequence number of the room this session has processed: save it, and
    /// join with it as `after_seq` next time.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// How many of our frames the relay has not answered yet.
    pub fn unanswered(&self) -> usize {
        self.unanswered.len()
    }

    /// The texts of our messages the relay has not acknowledged yet, in the order sent.
    pub fn pending(&self) -> Vec<&str> {
        self.unanswered
            .values()
            .filter_map(|pending| match pending {
                Pending::Message(unacked) => Some(unacked.text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Messages from others still waiting for their sender key.
    pub fn undecryptable(&self) -> usize {
        self.keys.waiting()
    }

    /// Seals and sends a text message; returns the id its `Delivered` or `Refused` event
    /// will carry. If the stream is down the message is kept, to be sent again by
    /// [`reconnect`](Self::reconnect); the lost stream shows in
    /// [`next_frame`](Self::next_frame).
    pub async fn send_text(&mut self, text: &str) -> Result<u64, ClientError> {
        let (rotation, send) = self.keys.seal_text(text)?;
        self.distribute(rotation).await?;
        let unacked = Unacked {
            text: text.to_owned(),
            send: send.clone(),
        };
        self.submit(client_frame::Kind::Send(send), Pending::Message(unacked))
            .await
    }

    /// Asks for the latest `limit` messages of the room (1 to [`MAX_HISTORY`]); they
    /// come as an [`Event::History`].
    pub async fn history(&mut self, limit: u32) -> Result<u64, ClientError> {
        let request = GetHistory {
            room: self.keys.room().to_owned(),
            limit: limit.clamp(1, MAX_HISTORY),
        };
        self.submit(client_frame::Kind::History(request), Pending::History)
            .await
    }

    /// Leaves the room for good; its `Left` event follows once the relay has answered.
    pub async fn leave(&mut self) -> Result<u64, ClientError> {
        self.leaving = true;
        let leave = LeaveRoom {
            room: self.keys.room().to_owned(),
        };
        self.submit(client_frame::Kind::Leave(leave), Pending::Leave)
            .await
    }

    /// Lets `user` join this private room (owner only; the relay decides).
    pub async fn invite(&mut self, user: &str) -> Result<u64, ClientError> {
        let invite = InviteMember {
            room: self.keys.room().to_owned(),
            user: user.to_owned(),
        };
        self.submit(
            client_frame::Kind::Invite(invite),
            Pending::Invite(user.to_owned()),
        )
        .await
    }

    /// Removes `user` from this private room (owner only; the relay decides).
    pub async fn kick(&mut self, user: &str) -> Result<u64, ClientError> {
        let kick = KickMember {
            room: self.keys.room().to_owned(),
            user: user.to_owned(),
        };
        self.submit(
            client_frame::Kind::Kick(kick),
            Pending::Kick(user.to_owned()),
        )
        .await
    }

    /// Accepts the keys the relay now presents for `user` as theirs: pins them and,
    /// if `user` is in the room, starts exchanging keys with it.
    pub async fn trust(&mut self, user: &str) -> Result<Vec<Event>, ClientError> {
        let identity = match self.keys.member_identity(user) {
            Some(identity) => identity.clone(),
            None => fetch_identity(&mut self.client, user).await?,
        };
        self.contacts.trust(user, &identity.fingerprint)?;
        let mut events = vec![Event::Notice(format!(
            "now trusting the keys of {user} (fingerprint {}); compare the safety number \
             with /verify {user}",
            identity.fingerprint
        ))];
        if !self.keys.is_trusted(user)
            && let Some((distribution, opened)) = self.keys.trust(user)?
        {
            self.distribute(distribution).await?;
            events.extend(self.room_events(opened));
        }
        Ok(events)
    }

    /// Our own fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    /// The safety number of this user and `user`: from the keys `user` has in this
    /// room (the ones to check before trusting them, if they changed), or else from the
    /// pinned keys.
    pub fn safety_number(&self, user: &str) -> Result<SafetyNumber, ClientError> {
        match self.keys.member_identity(user) {
            Some(member) => Ok(SafetyNumber::of(
                &self.user,
                &self.identity.fingerprint(),
                user,
                &member.fingerprint,
            )),
            None => safety_number(&self.identity, &self.user, &self.contacts, user),
        }
    }

    /// Records that the user compared the safety number with `user` and it matched. If
    /// `user` is in the room with keys that are not the pinned ones, the user must trust
    /// them first: the number shown was for those keys.
    pub fn mark_verified(&mut self, user: &str) -> Result<(), ClientError> {
        if self
            .keys
            .member_identity(user)
            .is_some_and(|_| !self.keys.is_trusted(user))
        {
            return Err(ClientError::NotTrusted {
                user: user.to_owned(),
            });
        }
        if self.contacts.mark_verified(user)? {
            Ok(())
        } else {
            Err(ClientError::NotPinned {
                user: user.to_owned(),
            })
        }
    }

    /// The next frame from the relay, or `None` when it closed the stream cleanly.
    /// Cancel-safe, so it can sit in a `select!` beside other input.
    pub async fn next_frame(&mut self) -> Result<Option<ServerFrame>, ClientError> {
        self.incoming.message().await.map_err(ClientError::Ended)
    }

    /// Applies one frame from the relay and returns what the user should see.
    pub async fn handle(&mut self, frame: ServerFrame) -> Result<Vec<Event>, ClientError> {
        use server_frame::Kind;

        let room = self.keys.room().to_owned();
        let mut events = Vec::new();
        match frame.kind {
            Some(Kind::Ack(ack)) => events.extend(self.on_ack(frame.request_id, ack.seq)),
            Some(Kind::Rejection(rejection)) => {
                let code = Code::from_i32(rejection.code);
                events.push(self.on_rejection(frame.request_id, code, rejection.message));
            }
            Some(Kind::MemberJoined(joined)) if joined.room == room => {
                if let Some(member) = joined.member {
                    self.on_member_joined(&member, &mut events).await?;
                }
            }
            Some(Kind::MemberLeft(left)) if left.room == room && left.user == self.user => {
                // The relay sends this only when the owner removed us.
                self.leaving = true;
                events.push(Event::Removed { room });
            }
            Some(Kind::MemberLeft(left)) if left.room == room => {
                let (rotation, warnings) = self.keys.member_left(&left.user)?;
                if !self.leaving {
                    self.distribute(rotation).await?;
                }
                events.push(Event::MemberLeft {
                    room: room.clone(),
                    user: left.user.clone(),
                    reason: left.reason(),
                });
                events.extend(self.room_events(warnings));
            }
            // One at or below what was processed is not new: the relay sent it again (a
            // catch-up overlapping what we saw), and it was shown then. Number 0 is a
            // relay that does not number its entries: nothing to go by but the replay
            // windows, which still catch a repeat.
            Some(Kind::Message(message))
                if message.room == room && (message.seq == 0 || message.seq > self.last_seq) =>
            {
                self.last_seq = self.last_seq.max(message.seq);
                let opened = self.keys.open(message);
                events.extend(self.room_events(opened));
            }
            Some(Kind::SenderKey(key)) if key.room == room => {
                // Always taken: a catch-up starts with the keys in force, numbered at or
                // below where it starts.
                self.last_seq = self.last_seq.max(key.seq);
                let opened = self.keys.accept_sender_key(key);
                events.extend(self.room_events(opened));
            }
            Some(Kind::CaughtUp(caught_up)) if caught_up.room == room => {
                // Informational: the numbers still come from the entries themselves, so
                // a relay sending this early cannot make us skip any.
                let forgotten = self.keys.forget_former_members();
                events.extend(self.room_events(forgotten));
                events.push(Event::CaughtUp {
                    room,
                    seq: caught_up.seq,
                });
            }
            Some(Kind::History(history)) if history.room == room => {
                self.unanswered.remove(&frame.request_id);
                events.extend(self.open_history(history)?);
            }
            // Frames for other rooms, messages already processed, a repeated `Joined`, or
            // kinds newer than this client.
            _ => {}
        }
        Ok(events)
    }

    /// Waits for the next frame and applies it: `None` when the relay closed the stream.
    /// Not cancel-safe; use [`next_frame`](Self::next_frame) in a `select!`.
    pub async fn next_events(&mut self) -> Result<Option<Vec<Event>>, ClientError> {
        match self.next_frame().await? {
            Some(frame) => self.handle(frame).await.map(Some),
            None => Ok(None),
        }
    }

    fn on_ack(&mut self, request_id: u64, seq: u64) -> Option<Event> {
        let room = self.keys.room().to_owned();
        // Our own entries never move `last_seq`: the relay may ack ours before it
        // delivers an earlier one of someone else's.
        match self.unanswered.remove(&request_id)? {
            Pending::Message(_) => Some(Event::Delivered { request_id, seq }),
            Pending::Leave => Some(Event::Left { room }),
            Pending::Invite(user) => Some(Event::Notice(format!(
                "invited {user} to {room}: they can join it now"
            ))),
            Pending::Kick(user) => Some(Event::Notice(format!("removed {user} from {room}"))),
            Pending::KeyDistribution(_) | Pending::History => None,
        }
    }

    fn on_rejection(&mut self, request_id: u64, code: Code, message: String) -> Event {
        let what = match self.unanswered.remove(&request_id) {
            Some(Pending::Message(unacked)) => {
                return Event::Refused {
                    request_id,
                    code,
                    message,
                    text: unacked.text,
                };
            }
            Some(Pending::KeyDistribution(_)) => "our sender key".to_owned(),
            Some(Pending::Leave) => "to let us leave".to_owned(),
            Some(Pending::Invite(user)) => format!("to invite {user}"),
            Some(Pending::Kick(user)) => format!("to remove {user}"),
            Some(Pending::History) => "to send the history".to_owned(),
            None => "a frame".to_owned(),
        };
        Event::Warning(format!(
            "the server refused {what}: {}: {message}",
            super::code_name(code)
        ))
    }

    async fn on_member_joined(
        &mut self,
        member: &PublicIdentity,
        events: &mut Vec<Event>,
    ) -> Result<(), ClientError> {
        let room = self.keys.room().to_owned();
        if self.keys.is_member(&member.user) {
            // Accepting it would reset what we know of that member's keys.
            events.push(Event::Warning(format!(
                "[{room}] ignored a second join of a current member: the server is \
                 misbehaving"
            )));
            return Ok(());
        }
        // A former member we were catching up on becomes a member again here.
        let Some((identity, trusted)) = self.admit(member, events)? else {
            return Ok(());
        };
        let user = identity.user.clone();
        let distribution = self.keys.member_joined(identity, trusted)?;
        if !self.leaving {
            self.distribute(distribution).await?;
        }
        events.insert(0, Event::MemberJoined { room, user });
        Ok(())
    }

    /// Opens a `History` answer with the identities it brings, checked as members' are.
    fn open_history(&mut self, history: History) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        let mut former = Vec::new();
        for identity in &history.former_members {
            if self.keys.member_identity(&identity.user).is_some() {
                continue;
            }
            if let Some((identity, true)) = self.admit(identity, &mut events)? {
                former.push(identity);
            }
        }
        let mut messages = Vec::new();
        for event in self.keys.open_history(history.entries, &former) {
            match event {
                RoomEvent::Message {
                    seq,
                    sender,
                    text,
                    sent_at_ms,
                } => messages.push(HistoryMessage {
                    seq,
                    sender,
                    text,
                    sent_at_ms,
                }),
                RoomEvent::Warning(text) => events.push(Event::Warning(text)),
            }
        }
        events.insert(
            0,
            Event::History {
                room: history.room,
                messages,
            },
        );
        Ok(events)
    }

    /// Takes in the relay's answer to a join: where the numbering starts, and whether
    /// the room is private.
    fn apply_joined(&mut self, joined: &Joined, after_seq: Option<u64>) -> Vec<Event> {
        self.private_room = joined.private_room;
        self.owner = (!joined.owner.is_empty()).then(|| joined.owner.clone());
        let (start, warning) = starting_seq(joined.resumed, after_seq, joined.last_seq);
        self.last_seq = start;
        warning
            .map(|text| Event::Warning(format!("[{}] {text}", self.keys.room())))
            .into_iter()
            .collect()
    }

    /// Admits the former members a `Joined` names, for the catch-up that follows.
    fn admit_former_members(
        &mut self,
        former_members: &[PublicIdentity],
        events: &mut Vec<Event>,
    ) -> Result<(), ClientError> {
        for member in former_members {
            if self.keys.is_member(&member.user) {
                continue;
            }
            if let Some((identity, trusted)) = self.admit(member, events)? {
                self.keys.insert_former_member(identity, trusted);
            }
        }
        Ok(())
    }

    /// Brings the members up to date after a reconnect: those who left meanwhile are
    /// forgotten, those who joined are admitted (no key for them yet: a distribution
    /// follows).
    fn reconcile_members(
        &mut self,
        joined: &Joined,
        events: &mut Vec<Event>,
    ) -> Result<(), ClientError> {
        let room = self.keys.room().to_owned();
        let present: BTreeSet<&str> = joined.members.iter().map(|m| m.user.as_str()).collect();
        let gone: Vec<String> = self
            .keys
            .members()
            .filter(|user| !present.contains(user))
            .map(str::to_owned)
            .collect();
        for user in gone {
            let warnings = self.keys.remove_member(&user);
            events.push(Event::MemberLeft {
                room: room.clone(),
                user,
                // Left or removed: a disconnection no longer ends a membership.
                reason: LeaveReason::Unspecified,
            });
            events.extend(self.room_events(warnings));
        }
        for member in &joined.members {
            if self.keys.is_member(&member.user) {
                continue;
            }
            if let Some((identity, trusted)) = self.admit(member, events)? {
                let user = identity.user.clone();
                self.keys.insert_member(identity, trusted);
                events.push(Event::MemberJoined {
                    room: room.clone(),
                    user,
                });
            }
        }
        self.admit_former_members(&joined.former_members, events)
    }

    /// Sorts out the frames a dead stream left unanswered: messages get new request ids
    /// (kept in order) to be sent again; key distributions are superseded by the
    /// rotation that follows; a leave is sent again; the rest is reported as unconfirmed.
    fn carry_unanswered(&mut self, events: &mut Vec<Event>) -> Carried {
        let mut carried = Carried::default();
        for pending in std::mem::take(&mut self.unanswered).into_values() {
            let unconfirmed = match pending {
                Pending::Message(unacked) => {
                    let request_id = self.next_request_id();
                    let frame = client_frame::Kind::Send(unacked.send.clone());
                    carried.resend.push((request_id, frame));
                    self.unanswered
                        .insert(request_id, Pending::Message(unacked));
                    continue;
                }
                Pending::KeyDistribution(distribution) => {
                    let request_id = self.next_request_id();
                    let frame = client_frame::Kind::DistributeKey(distribution.clone());
                    carried.resend.push((request_id, frame));
                    self.unanswered
                        .insert(request_id, Pending::KeyDistribution(distribution));
                    continue;
                }
                Pending::Leave => {
                    carried.leave = true;
                    continue;
                }
                Pending::Invite(user) => format!("inviting {user}"),
                Pending::Kick(user) => format!("removing {user}"),
                Pending::History => "the history asked for".to_owned(),
            };
            events.push(Event::Warning(format!(
                "the connection was lost before the server confirmed {unconfirmed}; ask again \
                 if needed"
            )));
        }
        carried
    }

    /// Checks a member the relay announced and decides whether to trust its keys:
    /// pinned ones or first sight, yes; different from the pinned ones, no.
    fn admit(
        &mut self,
        member: &PublicIdentity,
        events: &mut Vec<Event>,
    ) -> Result<Option<(VerifiedIdentity, bool)>, ClientError> {
        let identity = match self.keys.vet(member) {
            Ok(identity) => identity,
            Err(warning) => {
                events.extend(self.room_events(vec![warning]));
                return Ok(None);
            }
        };
        let trusted = match self.contacts.check(&identity.user, &identity.fingerprint)? {
            Pin::FirstUse => {
                events.push(Event::Pinned {
                    user: identity.user.clone(),
                    fingerprint: identity.fingerprint,
                });
                true
            }
            Pin::Known { .. } => true,
            Pin::Changed {
                pinned,
                was_verified,
            } => {
                events.push(Event::KeysChanged {
                    room: self.keys.room().to_owned(),
                    user: identity.user.clone(),
                    pinned,
                    presented: identity.fingerprint,
                    was_verified,
                });
                false
            }
        };
        Ok(Some((identity, trusted)))
    }

    fn room_events(&self, events: Vec<RoomEvent>) -> Vec<Event> {
        let room = self.keys.room();
        events
            .into_iter()
            .map(|event| match event {
                RoomEvent::Message {
                    seq,
                    sender,
                    text,
                    sent_at_ms,
                } => Event::Message {
                    room: room.to_owned(),
                    sender,
                    text,
                    sent_at_ms,
                    seq,
                },
                RoomEvent::Warning(text) => Event::Warning(text),
            })
            .collect()
    }

    async fn distribute(
        &mut self,
        distributions: Vec<DistributeSenderKey>,
    ) -> Result<(), ClientError> {
        for distribution in distributions {
            self.submit(
                client_frame::Kind::DistributeKey(distribution.clone()),
                Pending::KeyDistribution(distribution),
            )
            .await?;
        }
        Ok(())
    }

    /// Sends a frame under the next request id, remembering what it was. A message (or
    /// key distribution) is kept even when the stream is down: `reconnect` takes over.
    async fn submit(
        &mut self,
        kind: client_frame::Kind,
        pending: Pending,
    ) -> Result<u64, ClientError> {
        let request_id = self.next_request_id();
        let kept = matches!(pending, Pending::Message(_) | Pending::KeyDistribution(_));
        // Recorded before it is sent, so that no answer can come before it is known.
        self.unanswered.insert(request_id, pending);
        match self.send_frame(request_id, kind).await {
            Err(error) if !kept => {
                self.unanswered.remove(&request_id);
                Err(error)
            }
            _ => Ok(request_id),
        }
    }

    async fn send_frame(
        &mut self,
        request_id: u64,
        kind: client_frame::Kind,
    ) -> Result<(), ClientError> {
        let frame = ClientFrame {
            request_id,
            kind: Some(kind),
        };
        self.frames
            .send(frame)
            .await
            .map_err(|_| ClientError::Disconnected)
    }

    fn next_request_id(&mut self) -> u64 {
        self.last_request_id += 1;
        self.last_request_id
    }
}

/// The safety number of `me` (holding `identity`) and `user`, from the keys pinned for
/// `user`.
pub fn safety_number(
    identity: &Identity,
    me: &str,
    contacts: &Contacts,
    user: &str,
) -> Result<SafetyNumber, ClientError> {
    let (theirs, _) = contacts
        .pinned(user)
        .ok_or_else(|| ClientError::NotPinned {
            user: user.to_owned(),
        })?;
    Ok(SafetyNumber::of(me, &identity.fingerprint(), user, &theirs))
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::Response;
    use tonic::transport::Server;

    use super::*;
    use crate::proto::chat_service_server::{ChatService, ChatServiceServer};
    use crate::proto::{
        Ack, CaughtUp, GetIdentityRequest, HistoryEntry, MessageDelivery, Rejection,
        SenderKeyDelivery, history_entry,
    };
    use server_frame::Kind;

    const PATIENCE: Duration = Duration::from_secs(10);

    fn identities() -> &'static [Arc<Identity>; 3] {
        static IDS: OnceLock<[Arc<Identity>; 3]> = OnceLock::new();
        IDS.get_or_init(|| std::array::from_fn(|_| Arc::new(Identity::generate(2048).unwrap())))
    }

    fn public(user: &str, index: usize) -> PublicIdentity {
        identities()[index].publish(user).unwrap()
    }

    /// The room keys of another member, who knows `members`.
    fn peer(user: &str, index: usize, members: &[(&str, usize)]) -> RoomKeys {
        let mut keys = RoomKeys::new("lobby", user, identities()[index].clone()).unwrap();
        for (name, i) in members {
            keys.insert_member(VerifiedIdentity::verify(&public(name, *i)).unwrap(), true);
        }
        keys
    }

    /// A relay whose every answer the test writes by hand.
    struct ScriptedRelay {
        streams: mpsc::Sender<RelayStream>,
    }

    /// One stream a client opened on the scripted relay.
    struct RelayStream {
        frames: Streaming<ClientFrame>,
        replies: mpsc::Sender<Result<ServerFrame, Status>>,
    }

    #[tonic::async_trait]
    impl ChatService for ScriptedRelay {
        async fn get_identity(
            &self,
            _: Request<GetIdentityRequest>,
        ) -> Result<Response<PublicIdentity>, Status> {
            Err(Status::unimplemented("not in this script"))
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (streams, accepted) = mpsc::channel(4);
        tokio::spawn(
            Server::builder()
                .add_service(ChatServiceServer::new(ScriptedRelay { streams }))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (super::super::connect(&url, None).await.unwrap(), accepted)
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
            .keys
            .iter()
            .map(|key| key.recipient.as_str())
            .collect()
    }

    /// What the relay delivers to `recipient` of `sender`'s distribution.
    fn key_for(
        distribution: &DistributeSenderKey,
        sender: &str,
        recipient: &str,
        seq: u64,
    ) -> SenderKeyDelivery {
        let wrapped = distribution
            .keys
            .iter()
            .find(|key| key.recipient == recipient)
            .unwrap();
        SenderKeyDelivery {
            room: distribution.room.clone(),
            sender: sender.to_owned(),
            key_id: distribution.key_id,
            wrapped_key: wrapped.wrapped_key.clone(),
            signature: wrapped.signature.clone(),
            seq,
        }
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
            first_key.key_id
        );
        // Then a fresh key.
        let rotation = stream.frame().await;
        let rotation = distribution(&rotation);
        assert_ne!(rotation.key_id, first_key.key_id);
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
    async fn a_catch_up_skips_what_was_shown_and_reads_former_members_until_caught_up() {
        let (channel, mut accepted) = start_relay().await;
        let mut bob = peer("bob", 1, &[("alice", 0)]);
        let mut carol = peer("carol", 2, &[("alice", 0)]);
        let bob_key = bob.distribute_to_all().unwrap();
        let carol_key = carol.distribute_to_all().unwrap();
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
        let bob_key = bob.distribute_to_all().unwrap();
        let (_, his) = bob.seal_text("his").unwrap();

        let request_id = alice.history(500).await.unwrap();
        let asked = stream.frame().await;
        assert_eq!(asked.request_id, request_id);
        match asked.kind {
            Some(client_frame::Kind::History(history)) => assert_eq!(history.limit, MAX_HISTORY),
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

    #[test]
    fn a_first_join_starts_at_the_rooms_latest_number() {
        assert_eq!(starting_seq(false, None, 42), (42, None));
        assert_eq!(starting_seq(false, Some(0), 42), (42, None));
    }

    #[test]
    fn a_resumed_join_starts_where_the_client_was() {
        assert_eq!(starting_seq(true, Some(17), 42), (17, None));
        assert_eq!(starting_seq(true, Some(42), 42), (42, None));
        // Without saved progress: from now on.
        assert_eq!(starting_seq(true, None, 42), (42, None));
    }

    #[test]
    fn a_server_behind_the_client_is_reported_and_followed() {
        let (start, warning) = starting_seq(true, Some(50), 42);
        assert_eq!(start, 42);
        assert!(warning.unwrap().contains("older backup"));
        let (start, warning) = starting_seq(false, Some(50), 3);
        assert_eq!(start, 3);
        assert!(
            warning
                .unwrap()
                .contains("no longer counted you as a member")
        );
    }
}
