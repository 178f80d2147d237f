//! The `chat.v2.ChatService` implementation: the key directory's `KeyExchange`, and the
//! session, whose frames become [`Hub`](super::hub::Hub) operations on behalf of the
//! logged-in user: on one `Chat` stream, or on `OpenSession` and `SendFrame` for
//! browsers.

use std::sync::Arc;
use std::time::Duration;

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::AuthenticatedUser;
use super::network::RequestPlace;
use super::network::connection::connection_of;
use super::relay::Relay;
use super::session;
use super::web_session::WebSessions;
use crate::proto::chat_service_server::ChatService;
use crate::proto::{
    ClientFrame, KeyExchangeRequest, KeyExchangeResponse, OpenSessionRequest, SendFrameRequest,
    SendFrameResponse, ServerFrame,
};
use crate::protocol::{MAX_BUNDLE_USERS, validate_room, validate_user};

/// The relay's gRPC service.
pub(crate) struct ChatRelay {
    relay: Arc<Relay>,
    web_sessions: Arc<WebSessions>,
}

impl ChatRelay {
    /// `queue_wait`: how long a `SendFrame` may wait for room in its session's queue.
    pub(crate) fn new(relay: Arc<Relay>, queue_wait: Duration) -> Self {
        Self {
            relay,
            web_sessions: Arc::new(WebSessions::new(queue_wait)),
        }
    }

    /// The caller's registered identity, for opening a session.
    fn identity_of<T>(&self, request: &Request<T>) -> Result<crate::proto::PublicIdentity, Status> {
        let user = caller(request)?;
        self.relay
            .accounts
            .identity(&user)
            .ok_or_else(|| Status::unauthenticated("the token's user is not registered"))
    }
}

/// The user [`require_token`](super::auth::require_token) found for the request.
fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<AuthenticatedUser>()
        .map(|user| user.0.clone())
        .ok_or_else(|| Status::unauthenticated("no session token"))
}

#[tonic::async_trait]
impl ChatService for ChatRelay {
    async fn key_exchange(
        &self,
        request: Request<KeyExchangeRequest>,
    ) -> Result<Response<KeyExchangeResponse>, Status> {
        let user = caller(&request)?;
        let KeyExchangeRequest {
            publish,
            room,
            users,
        } = request.into_inner();
        if users.len() > MAX_BUNDLE_USERS {
            return Err(Status::invalid_argument(format!(
                "{} users asked for; at most {MAX_BUNDLE_USERS} at once",
                users.len()
            )));
        }
        let relay = &self.relay;
        if let Some(prekey) = publish {
            relay.keys.publish(&relay.accounts, &user, prekey)?;
        }
        let mut wanted = Vec::new();
        if !room.is_empty() {
            validate_room(&room).map_err(|error| Status::invalid_argument(error.to_string()))?;
            wanted = relay.hub.other_members(&room, &user)?;
        }
        for named in users {
            validate_user(&named).map_err(|error| Status::invalid_argument(error.to_string()))?;
            if !wanted.contains(&named) {
                wanted.push(named);
            }
        }
        let bundles = wanted
            .into_iter()
            .map(|name| {
                let identity = relay.accounts.identity(&name).ok_or_else(|| {
                    Status::not_found(format!("no user named {name:?} is registered"))
                })?;
                Ok(relay.keys.bundle(identity))
            })
            .collect::<Result<_, Status>>()?;
        Ok(Response::new(KeyExchangeResponse { bundles }))
    }

    async fn chat(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<BoxStream<ServerFrame>>, Status> {
        let identity = self.identity_of(&request)?;
        let connection = connection_of(&request);
        let (id, outbound) = self.relay.hub.open_session(identity, connection)?;
        let reader = tokio::spawn(session::run(self.relay.clone(), id, request.into_inner()));
        self.relay.hub.set_reader(id, reader.abort_handle());
        Ok(Response::new(Box::pin(outbound)))
    }

    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<BoxStream<ServerFrame>>, Status> {
        let identity = self.identity_of(&request)?;
        let user = identity.user.clone();
        let connection = connection_of(&request);
        let (id, outbound) = self.relay.hub.open_session(identity, connection)?;
        let hub = self.relay.hub.clone();
        let (stream, frames) = match self.web_sessions.open(hub, id, user, outbound) {
            Ok(opened) => opened,
            Err(status) => {
                self.relay.hub.close_session(id);
                return Err(status);
            }
        };
        let reader = tokio::spawn(session::run(self.relay.clone(), id, frames));
        self.relay.hub.set_reader(id, reader.abort_handle());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn send_frame(
        &self,
        mut request: Request<SendFrameRequest>,
    ) -> Result<Response<SendFrameResponse>, Status> {
        let user = caller(&request)?;
        // The frame may wait for room in its session's queue: it keeps its place among
        // the user's requests in progress until then.
        let _place = request.extensions_mut().remove::<RequestPlace>();
        let SendFrameRequest {
            session_id,
            frame_number,
            frame,
        } = request.into_inner();
        let frame = frame.ok_or_else(|| {
            Status::invalid_argument("SendFrameRequest.frame is missing: send one ClientFrame")
        })?;
        self.relay.check_frame_size(&frame)?;
        self.web_sessions
            .send(&user, &session_id, frame_number, frame)
            .await?;
        Ok(Response::new(SendFrameResponse {}))
    }
}
