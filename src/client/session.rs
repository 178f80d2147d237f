//! A connection to the relay, joined to one room.
//!
//! [`ChatSession::join`] publishes the identity, opens the `Chat` stream, joins the room
//! and hands our sender key to its members. From then on each frame from the relay goes
//! through [`ChatSession::handle`], which keeps the room's keys in step (answering
//! newcomers with our key, rotating it when someone leaves) and returns what the user
//! should see.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

use super::ClientError;
use super::room::{RoomEvent, RoomKeys};
use crate::crypto::IdentityKey;
use crate::proto::chat_service_client::ChatServiceClient;
use crate::proto::{
    ClientFrame, DistributeSenderKey, JoinRoom, KeyExchangeRequest, LeaveReason, LeaveRoom,
    PublicIdentity, ServerFrame, client_frame, server_frame,
};
use crate::protocol::USER_METADATA_KEY;

/// Frames the client queues for the relay before `send` waits.
const OUTBOUND_FRAMES: usize = 256;
/// The largest frame accepted from the relay: a `Joined` lists every member's key.
const MAX_INBOUND_FRAME: usize = 4 * 1024 * 1024;

/// Publishes `identity` as `user` with `KeyExchange`, then opens the `Chat` stream as
/// `user` with a first frame (request id 1) that joins `room`. Returns where to send
/// further frames and the frames from the relay, the answer to the join first.
pub async fn open_stream(
    channel: Channel,
    identity: &IdentityKey,
    user: &str,
    room: &str,
) -> Result<(mpsc::Sender<ClientFrame>, Streaming<ServerFrame>), ClientError> {
    let mut client = ChatServiceClient::new(channel).max_decoding_message_size(MAX_INBOUND_FRAME);
    let published = PublicIdentity {
        user: user.to_owned(),
        encryption_public_key: identity.public_key().to_der().to_vec().into(),
    };
    client
        .key_exchange(KeyExchangeRequest {
            identity: Some(published),
            room: room.to_owned(),
        })
        .await
        .map_err(ClientError::Refused)?;

    let (frames, outbound) = mpsc::channel(OUTBOUND_FRAMES);
    let mut request = Request::new(ReceiverStream::new(outbound));
    let user_value = MetadataValue::try_from(user).map_err(|_| {
        ClientError::Refused(Status::invalid_argument("the user name is not ASCII"))
    })?;
    request.metadata_mut().insert(USER_METADATA_KEY, user_value);
    let join = ClientFrame {
        request_id: 1,
        kind: Some(client_frame::Kind::Join(JoinRoom {
            room: room.to_owned(),
        })),
    };
    frames
        .send(join)
        .await
        .map_err(|_| ClientError::Disconnected)?;
    let incoming = client
        .chat(request)
        .await
        .map_err(ClientError::Refused)?
        .into_inner();
    Ok((frames, incoming))
}

/// What happened in the room, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message from another member, decrypted and authenticated.
    Message {
        room: String,
        sender: String,
        text: String,
        sent_at_ms: u64,
    },
    /// Someone joined.
    MemberJoined { room: String, user: String },
    /// Someone left; our sender key has been rotated.
    MemberLeft {
        room: String,
        user: String,
        reason: LeaveReason,
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
    /// Something was dropped or looks wrong; the text says what.
    Warning(String),
}

/// What an unanswered frame was, to report its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Message,
    KeyDistribution,
    Leave,
}

/// A connection to the relay, joined to one room.
pub struct ChatSession {
    keys: RoomKeys,
    frames: mpsc::Sender<ClientFrame>,
    incoming: Streaming<ServerFrame>,
    last_request_id: u64,
    unanswered: BTreeMap<u64, Pending>,
    /// Set by `leave`: membership changes no longer call for key distributions, which
    /// the relay would refuse once we are out.
    leaving: bool,
}

impl ChatSession {
    /// Publishes `identity` as `user`, opens the session, joins `room` and gives our
    /// sender key to its members. Also returns warnings about members whose key is
    /// unusable.
    pub async fn join(
        channel: Channel,
        identity: Arc<IdentityKey>,
        user: &str,
        room: &str,
    ) -> Result<(Self, Vec<Event>), ClientError> {
        let (frames, mut incoming) = open_stream(channel, &identity, user, room).await?;
        let joined = loop {
            let frame = incoming
                .message()
                .await
                .map_err(ClientError::Ended)?
                .ok_or(ClientError::Disconnected)?;
            match frame.kind {
                Some(server_frame::Kind::Joined(joined)) => break joined,
                Some(server_frame::Kind::Rejection(rejection)) if frame.request_id == 1 => {
                    let code = Code::from_i32(rejection.code);
                    return Err(ClientError::Refused(Status::new(code, rejection.message)));
                }
                _ => {}
            }
        };
        let (keys, warnings) = RoomKeys::new(room, user, identity, joined.members)?;
        let mut session = Self {
            keys,
            frames,
            incoming,
            last_request_id: 1,
            unanswered: BTreeMap::new(),
            leaving: false,
        };
        let distribution = session.keys.distribute_to_all()?;
        session.distribute(distribution).await?;
        let warnings = warnings
            .into_iter()
            .map(|event| event.into_event(room))
            .collect();
        Ok((session, warnings))
    }

    /// The room.
    pub fn room(&self) -> &str {
        self.keys.room()
    }

    /// The other members, sorted by name.
    pub fn members(&self) -> Vec<String> {
        self.keys.members().map(str::to_owned).collect()
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
                            Some(Pending::KeyDistribution) => "our sender key",
                            Some(Pending::Leave) => "to let us leave",
                            _ => "a frame",
                        },
                        super::code_name(code),
                        rejection.message
                    )),
                });
            }
            Some(Kind::MemberJoined(joined)) if joined.room == room => {
                if let Some(member) = joined.member {
                    let user = member.user.clone();
                    let (distribution, warnings) = self.keys.member_joined(member)?;
                    if !self.leaving {
                        self.distribute(distribution).await?;
                    }
                    events.push(Event::MemberJoined {
                        room: room.clone(),
                        user,
                    });
                    events.extend(warnings.into_iter().map(|event| event.into_event(&room)));
                }
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
                events.extend(warnings.into_iter().map(|event| event.into_event(&room)));
            }
            Some(Kind::Message(message)) if message.room == room => {
                events.extend(
                    self.keys
                        .open(message)
                        .into_iter()
                        .map(|event| event.into_event(&room)),
                );
            }
            Some(Kind::SenderKey(key)) if key.room == room => {
                events.extend(
                    self.keys
                        .accept_sender_key(key)
                        .into_iter()
                        .map(|event| event.into_event(&room)),
                );
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

impl RoomEvent {
    fn into_event(self, room: &str) -> Event {
        match self {
            RoomEvent::Message {
                sender,
                text,
                sent_at_ms,
            } => Event::Message {
                room: room.to_owned(),
                sender,
                text,
                sent_at_ms,
            },
            RoomEvent::Warning(text) => Event::Warning(text),
        }
    }
}
