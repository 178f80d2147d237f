//! The `chat.v1.ChatService` implementation: turns RPCs into [`Hub`](super::hub::Hub)
//! operations on behalf of the logged-in user.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::auth::AuthenticatedUser;
use super::network::connection::connection_of;
use super::outbound::Outbound;
use super::relay::Relay;
use super::session;
use crate::proto::chat_service_server::ChatService;
use crate::proto::{ClientFrame, GetIdentityRequest, PublicIdentity};
use crate::protocol::validate_user;

/// The relay's gRPC service.
pub(crate) struct ChatRelay {
    relay: Arc<Relay>,
}

impl ChatRelay {
    pub(crate) fn new(relay: Arc<Relay>) -> Self {
        Self { relay }
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
    async fn get_identity(
        &self,
        request: Request<GetIdentityRequest>,
    ) -> Result<Response<PublicIdentity>, Status> {
        caller(&request)?;
        let user = request.into_inner().user;
        validate_user(&user).map_err(|error| Status::invalid_argument(error.to_string()))?;
        self.relay
            .accounts
            .identity(&user)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no user named {user:?} is registered")))
    }

    type ChatStream = Outbound;

    async fn chat(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Outbound>, Status> {
        let user = caller(&request)?;
        let identity = self
            .relay
            .accounts
            .identity(&user)
            .ok_or_else(|| Status::unauthenticated("the token's user is not registered"))?;
        let connection = connection_of(&request);
        let (id, outbound) = self.relay.hub.open_session(identity, connection)?;
        let reader = tokio::spawn(session::run(self.relay.clone(), id, request.into_inner()));
        self.relay.hub.set_reader(id, reader.abort_handle());
        Ok(Response::new(outbound))
    }
}
