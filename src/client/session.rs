//! A connection to the relay, joined to one room.
//!
//! [`ChatSession::join`] opens the `Chat` stream as a logged-in user, joins the room,
//! checks every member's keys against the pinned ones, and hands our sender key to the
//! members it trusts. From then on each frame from the relay goes through
//! [`ChatSession::handle`], which keeps the room's keys in step (answering newcomers
//! with our key, rotating it when someone leaves) and returns what the user should see.

use std::collections::BTreeMap;
use std::sync::Arc;

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
    ClientFrame, DistributeSenderKey, InviteMember, JoinRoom, KickMember, LeaveReason, LeaveRoom,
    PublicIdentity, ServerFrame, client_frame, server_frame,
};

/// Frames the client queues for the relay before `send` waits.
const OUTBOUND_FRAMES: usize = 256;

/// Opens the `Chat` stream as the logged-in user with a first frame (request id 1)
/// that joins a room. Returns where to send further frames and the frames from the
/// relay, the answer to the join first.
pub async fn open_stream(
    client: &mut AuthorizedClient,
    join: JoinRoom,
) -> Result<(mpsc::Sender<ClientFrame>, Streaming<ServerFrame>), ClientError> {
    let (frames, outbound) = mpsc::channel(OUTBOUND_FRAMES);
    let join = ClientFrame {
        request_id: 1,
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

/// What happened in the room, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message from another member, signed, decrypted and authenticated.
    Message {
        room: String,
        sender: String,
        text: String,
        sent_at_ms: u64,
    },
    /// Someone joined.
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
    /// The relay accepted one of our messages (the id [`ChatSession::send_text`] gave).
    Delivered { request_id: u64 },
    /// The relay refused one of our messages.
    Refused {
        request_id: u64,
        code: Code,
        message: String,
    },
    /// We left the room.
    Left { room: String },
    /// Something the user asked for was done; the text says what.
    Notice(String),
    /// Something was dropped or looks wrong; the text says what.
    Warning(String),
}

/// What an unanswered frame was, to report its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Message,
    KeyDistribution,
    Leave,
    Invite(String),
    Kick(String),
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
    last_request_id: u64,
    unanswered: BTreeMap<u64, Pending>,
    /// Set by `leave` or a kick: membership changes no longer call for key
    /// distributions, which the relay would refuse once we are out.
    leaving: bool,
}

impl ChatSession {
    /// Opens the session of the logged-in user, joins a room, checks the members' keys
    /// against `contacts` and gives our sender key to those it trusts. Also returns what
    /// the user should know at once (pins, changed keys, unusable members).
    pub async fn join(
        channel: Channel,
        identity: Arc<Identity>,
        credentials: &Credentials,
        join: JoinRoom,
        contacts: Contacts,
    ) -> Result<(Self, Vec<Event>), ClientError> {
        let mut client = credentials.chat_client(channel);
        let room = join.room.clone();
        let (frames, mut incoming) = open_stream(&mut client, join).await?;
        let joined = loop {
            let frame = incoming
                .message()
                .await
                .map_err(ClientError::Ended)?
                .ok_or(ClientError::Disconnected)?;
            match frame.kind {
                Some(server_frame::Kind::Joined(joined)) if joined.room == room => break joined,
                Some(server_frame::Kind::Rejection(rejection)) if frame.request_id == 1 => {
                    let code = Code::from_i32(rejection.code);
                    return Err(ClientError::Refused(Status::new(code, rejection.message)));
                }
                _ => {}
            }
        };
        let user = credentials.user().to_owned();
        let mut session = Self {
            keys: RoomKeys::new(&room, &user, identity.clone())?,
            identity,
            user,
            contacts,
            client,
            private_room: joined.private_room,
            owner: (!joined.owner.is_empty()).then_some(joined.owner),
            frames,
            incoming,
            last_request_id: 1,
            unanswered: BTreeMap::new(),
            leaving: false,
        };
        let mut events = Vec::new();
        for member in joined.members {
            if let Some((identity, trusted)) = session.admit(&member, &mut events)? {
                session.keys.insert_member(identity, trusted);
            }
        }
        let distribution = session.keys.distribute_to_all()?;
        session.distribute(distribution).await?;
        Ok((session, events))
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

    /// How many of our frames the relay has not answered yet.
    pub fn unanswered(&self) -> usize {
        self.unanswered.len()
    }

    /// Messages from others still waiting for their sender key.
    pub fn undecryptable(&self) -> usize {
        self.keys.waiting()
    }

    /// Seals and sends a text message; returns the id its `Delivered` or `Refused` event
    /// will carry.
    pub async fn send_text(&mut self, text: &str) -> Result<u64, ClientError> {
        let (rotation, message) = self.keys.seal_text(text)?;
        self.distribute(rotation).await?;
        self.submit(client_frame::Kind::Send(message), Pending::Message)
            .await
    }

    /// Leaves the room; its `Left` event follows once the relay has answered.
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
            Some(Kind::Ack(_)) => match self.unanswered.remove(&frame.request_id) {
                Some(Pending::Message) => events.push(Event::Delivered {
                    request_id: frame.request_id,
                }),
                Some(Pending::Leave) => events.push(Event::Left { room }),
                Some(Pending::Invite(user)) => events.push(Event::Notice(format!(
                    "invited {user} to {room}: they can join it now"
                ))),
                Some(Pending::Kick(user)) => {
                    events.push(Event::Notice(format!("removed {user} from {room}")));
                }
                Some(Pending::KeyDistribution) | None => {}
            },
            Some(Kind::Rejection(rejection)) => {
                let code = Code::from_i32(rejection.code);
                events.push(match self.unanswered.remove(&frame.request_id) {
                    Some(Pending::Message) => Event::Refused {
                        request_id: frame.request_id,
                        code,
                        message: rejection.message,
                    },
                    what => Event::Warning(format!(
                        "the server refused {}: {}: {}",
                        match what {
                            Some(Pending::KeyDistribution) => "our sender key".to_owned(),
                            Some(Pending::Leave) => "to let us leave".to_owned(),
                            Some(Pending::Invite(user)) => format!("to invite {user}"),
                            Some(Pending::Kick(user)) => format!("to remove {user}"),
                            _ => "a frame".to_owned(),
                        },
                        super::code_name(code),
                        rejection.message
                    )),
                });
            }
            Some(Kind::MemberJoined(joined)) if joined.room == room => {
                let already = joined
                    .member
                    .as_ref()
                    .is_some_and(|member| self.keys.member_identity(&member.user).is_some());
                if already {
                    // Accepting it would reset what we know of that member's keys.
                    events.push(Event::Warning(format!(
                        "[{room}] ignored a second join of a current member: the server is \
                         misbehaving"
                    )));
                } else if let Some(member) = joined.member
                    && let Some((identity, trusted)) = self.admit(&member, &mut events)?
                {
                    let user = identity.user.clone();
                    let distribution = self.keys.member_joined(identity, trusted)?;
                    if !self.leaving {
                        self.distribute(distribution).await?;
                    }
                    events.insert(
                        0,
                        Event::MemberJoined {
                            room: room.clone(),
                            user,
                        },
                    );
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
            Some(Kind::Message(message)) if message.room == room => {
                let opened = self.keys.open(message);
                events.extend(self.room_events(opened));
            }
            Some(Kind::SenderKey(key)) if key.room == room => {
                let opened = self.keys.accept_sender_key(key);
                events.extend(self.room_events(opened));
            }
            // Frames for other rooms, a repeated `Joined`, or kinds newer than this client.
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
                    sender,
                    text,
                    sent_at_ms,
                    ..
                } => Event::Message {
                    room: room.to_owned(),
                    sender,
                    text,
                    sent_at_ms,
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
                client_frame::Kind::DistributeKey(distribution),
                Pending::KeyDistribution,
            )
            .await?;
        }
        Ok(())
    }

    async fn submit(
        &mut self,
        kind: client_frame::Kind,
        pending: Pending,
    ) -> Result<u64, ClientError> {
        self.last_request_id += 1;
        let request_id = self.last_request_id;
        let frame = ClientFrame {
            request_id,
            kind: Some(kind),
        };
        self.frames
            .send(frame)
            .await
            .map_err(|_| ClientError::Disconnected)?;
        self.unanswered.insert(request_id, pending);
        Ok(request_id)
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
