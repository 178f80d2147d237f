//! The `chat.v1.ChatService` implementation: turns RPCs into [`Hub`] operations.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::hub::Hub;
use super::outbound::Outbound;
use super::session;
use crate::crypto::PublicEncryptionKey;
use crate::proto::chat_service_server::ChatService;
use crate::proto::{ClientFrame, KeyExchangeRequest, KeyExchangeResponse};
use crate::protocol::{USER_METADATA_KEY, validate_room, validate_user};

/// The relay's gRPC service.
pub(crate) struct ChatRelay {
    hub: Arc<Hub>,
}

impl ChatRelay {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl ChatService for ChatRelay {
    async fn key_exchange(
        &self,
        request: Request<KeyExchangeRequest>,
    ) -> Result<Response<KeyExchangeResponse>, Status> {
        let KeyExchangeRequest { identity, room } = request.into_inner();
        let identity = identity.ok_or_else(|| Status::invalid_argument("identity is missing"))?;
        validate_user(&identity.user)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        validate_room(&room).map_err(|error| Status::invalid_argument(error.to_string()))?;
        PublicEncryptionKey::from_der(&identity.encryption_public_key).map_err(|error| {
            Status::invalid_argument(format!("identity.encryption_public_key: {error}"))
        })?;
        self.hub.publish(&identity)?;
        let members = self.hub.room_members(&room, &identity.user);
        Ok(Response::new(KeyExchangeResponse { members }))
    }

    type ChatStream = Outbound;

    async fn chat(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Outbound>, Status> {
        let user = request
            .metadata()
            .get(USER_METADATA_KEY)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "the {USER_METADATA_KEY} request metadata is missing; set it to your user name"
                ))
            })?
            .to_str()
            .map_err(|_| Status::invalid_argument(format!("{USER_METADATA_KEY} is not ASCII")))?
            .to_owned();
        validate_user(&user).map_err(|error| Status::invalid_argument(error.to_string()))?;
        let (id, outbound) = self.hub.open_session(&user)?;
        let reader = tokio::spawn(session::run(self.hub.clone(), id, request.into_inner()));
        self.hub.set_reader(id, reader.abort_handle());
        Ok(Response::new(outbound))
    }
}
