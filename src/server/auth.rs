//! Logging in (`chat.v2.AuthService`), and the interceptor that admits only requests
//! with a valid session token to `chat.v2.ChatService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::accounts::Accounts;
use super::network::UserRequests;
use super::network::connection::connection_of;
use crate::proto::auth_service_server::AuthService;
use crate::proto::{CreateChallengeRequest, CreateChallengeResponse, LoginRequest, LoginResponse};
use crate::protocol::{AUTHORIZATION_METADATA_KEY, validate_user};

/// The logged-in user of a request, put in its extensions by [`require_token`].
#[derive(Debug, Clone)]
pub(crate) struct AuthenticatedUser(pub String);

/// Checks the `authorization: Bearer <token>` metadata of every request, and takes the
/// request's place among its user's (`--max-requests-per-user`) before its message is
/// read.
pub(crate) fn require_token(
    accounts: Arc<Accounts>,
    requests: Arc<UserRequests>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let value = request
            .metadata()
            .get(AUTHORIZATION_METADATA_KEY)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no session token: log in with chat.v2.AuthService and send \
                     `authorization: Bearer <token>`",
                )
            })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
            })?;
        let user = accounts.authenticate(token)?;
        let place = requests.take(&user)?;
        request.extensions_mut().insert(place);
        request.extensions_mut().insert(AuthenticatedUser(user));
        Ok(request)
    }
}

/// The relay's login service.
pub(crate) struct Login {
    accounts: Arc<Accounts>,
}

impl Login {
    pub(crate) fn new(accounts: Arc<Accounts>) -> Self {
        Self { accounts }
    }
}

#[tonic::async_trait]
impl AuthService for Login {
    async fn create_challenge(
        &self,
        request: Request<CreateChallengeRequest>,
    ) -> Result<Response<CreateChallengeResponse>, Status> {
        let user = request.into_inner().user;
        validate_user(&user).map_err(|error| Status::invalid_argument(error.to_string()))?;
        let challenge = self.accounts.create_challenge(&user)?;
        Ok(Response::new(CreateChallengeResponse {
            challenge: challenge.to_vec().into(),
        }))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let address = connection_of(&request).map(|connection| connection.peer_ip());
        let LoginRequest {
            identity,
            challenge,
            signature,
            registration_token,
        } = request.into_inner();
        let identity = identity.ok_or_else(|| Status::invalid_argument("identity is missing"))?;
        validate_user(&identity.user)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let session = self.accounts.login(
            identity,
            &challenge,
            &signature,
            &registration_token,
            address,
        )?;
        Ok(Response::new(LoginResponse {
            session_token: session.token,
            expires_at_ms: session.expires_at_ms,
            registered: session.registered,
        }))
    }
}
