//! The baseline the relay is measured against: the smallest tonic bidi broadcast relay
//! that speaks the same proto. No crypto, no checks, no limits, no storage, no login (it
//! takes the bearer token as the user's name): it forwards each `SendMessage` to the
//! other members of the room and acknowledges it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::chat_service_server::{ChatService, ChatServiceServer};
use crate::proto::{
    Ack, ClientFrame, Joined, KeyExchangeRequest, KeyExchangeResponse, MessageDelivery,
    ServerFrame, client_frame, server_frame,
};
use crate::protocol::AUTHORIZATION_METADATA_KEY;

type Outbox = mpsc::UnboundedSender<Result<ServerFrame, Status>>;
/// Room → its members' names and outboxes.
type Rooms = HashMap<String, Vec<(String, Outbox)>>;

/// The baseline relay.
#[derive(Default, Clone)]
pub struct PlainRelay {
    rooms: Arc<Mutex<Rooms>>,
}

impl PlainRelay {
    /// The gRPC service.
    pub fn service(self) -> ChatServiceServer<Self> {
        ChatServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl ChatService for PlainRelay {
    async fn key_exchange(
        &self,
        _: Request<KeyExchangeRequest>,
    ) -> Result<Response<KeyExchangeResponse>, Status> {
        Err(Status::unimplemented("the baseline relay keeps no keys"))
    }

    async fn chat(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<BoxStream<ServerFrame>>, Status> {
        let user = request
            .metadata()
            .get(AUTHORIZATION_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        let (outbox, frames) = mpsc::unbounded_channel();
        let rooms = self.rooms.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = inbound.message().await {
                let reply = |kind| {
                    let _ = outbox.send(Ok(ServerFrame {
                        request_id: frame.request_id,
                        kind: Some(kind),
                    }));
                };
                match frame.kind {
                    Some(client_frame::Kind::Join(join)) => {
                        let mut rooms = rooms.lock().unwrap();
                        rooms
                            .entry(join.room.clone())
                            .or_default()
                            .push((user.clone(), outbox.clone()));
                        reply(server_frame::Kind::Joined(Joined {
                            room: join.room,
                            ..Joined::default()
                        }));
                    }
                    Some(client_frame::Kind::Send(send)) => {
                        let rooms = rooms.lock().unwrap();
                        for (member, member_outbox) in rooms.get(&send.room).into_iter().flatten() {
                            if *member != user {
                                let delivery = MessageDelivery {
                                    room: send.room.clone(),
                                    sender: user.clone(),
                                    sealed: send.sealed.clone(),
                                    ..Default::default()
                                };
                                let _ = member_outbox.send(Ok(ServerFrame {
                                    request_id: 0,
                                    kind: Some(server_frame::Kind::Message(delivery)),
                                }));
                            }
                        }
                        drop(rooms);
                        reply(server_frame::Kind::Ack(Ack::default()));
                    }
                    _ => reply(server_frame::Kind::Ack(Ack::default())),
                }
            }
            for members in rooms.lock().unwrap().values_mut() {
                members.retain(|(member, _)| *member != user);
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            frames,
        ))))
    }
}
