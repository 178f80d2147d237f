//! Logging in to the relay, and the clients that carry the session token.

use std::fmt;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use zeroize::Zeroizing;

use super::ClientError;
use crate::crypto::{self, Identity, PublicEncryptionKey, VerifiedIdentity};
use crate::proto::auth_service_client::AuthServiceClient;
use crate::proto::chat_service_client::ChatServiceClient;
use crate::proto::{
    CreateChallengeRequest, KeyBundle, KeyExchangeRequest, LoginRequest, LoginResponse,
    SignedPrekey,
};
use crate::protocol::AUTHORIZATION_METADATA_KEY;

/// The largest frame accepted from the relay: a `Joined` lists every member's keys.
const MAX_INBOUND_FRAME: usize = 4 * 1024 * 1024;

/// Logins tried before a refusal stands: the second one with a fresh challenge.
const LOGIN_TRIES: usize = 2;

/// A `ChatService` client whose every request carries the session token.
pub type AuthorizedClient = ChatServiceClient<InterceptedService<Channel, BearerToken>>;

/// A logged-in user: who, and the token that proves it.
#[derive(Clone)]
pub struct Credentials {
    user: String,
    bearer: BearerToken,
    /// When the token expires, in milliseconds since the Unix epoch (server clock).
    pub expires_at_ms: u64,
    /// Whether this login registered the user name.
    pub registered: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn user(&self) -> &str {
        &self.user
    }

    /// A `ChatService` client on `channel` acting as this user.
    pub fn chat_client(&self, channel: Channel) -> AuthorizedClient {
        ChatServiceClient::new(self.authorize(channel)).max_decoding_message_size(MAX_INBOUND_FRAME)
    }

    /// `channel` (or any other gRPC transport), with this user's token on every request.
    pub fn authorize<T>(&self, channel: T) -> InterceptedService<T, BearerToken> {
        InterceptedService::new(channel, self.bearer.clone())
    }
}

#[cfg(test)]
impl Credentials {
    /// Credentials with a made-up token, for a scripted relay that does not check it.
    pub(crate) fn for_tests(user: &str) -> Self {
        Self {
            user: user.to_owned(),
            bearer: BearerToken::new("test-token").expect("an ASCII token"),
            expires_at_ms: u64::MAX,
            registered: false,
        }
    }
}

/// Adds `authorization: Bearer <token>` to every request. The token is never printed.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl BearerToken {
    /// The metadata for `token`, marked sensitive so that HTTP/2 never indexes it.
    pub fn new(token: &str) -> Result<Self, ClientError> {
        let header = Zeroizing::new(format!("Bearer {token}"));
        let mut value = MetadataValue::try_from(header.as_str()).map_err(|_| {
            ClientError::Refused(Status::internal("the server sent a malformed token"))
        })?;
        value.set_sensitive(true);
        Ok(Self(value))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(AUTHORIZATION_METADATA_KEY, self.0.clone());
        Ok(request)
    }
}

/// Logs in as `user`: signs the relay's challenge with the identity's signing key. The
/// first login of a name registers it to this identity.
pub async fn login(
    channel: Channel,
    identity: &Identity,
    user: &str,
) -> Result<Credentials, ClientError> {
    login_with_token(channel, identity, user, None).await
}

/// [`login`], with the registration token the relay's operator handed out, for a
/// relay that registers new names only with one.
pub async fn login_with_token(
    channel: Channel,
    identity: &Identity,
    user: &str,
    registration_token: Option<&str>,
) -> Result<Credentials, ClientError> {
    let mut auth = AuthServiceClient::new(channel);
    // A challenge is good only at the relay process that issued it: a relay restarted
    // between the two calls (or another one behind the same address) refuses it as
    // UNAUTHENTICATED. One more try with a fresh challenge tells that apart from a
    // refusal that stands, such as keys that do not match.
    let mut tries_left = LOGIN_TRIES;
    let answer = loop {
        tries_left -= 1;
        match try_login(&mut auth, identity, user, registration_token).await {
            Err(ClientError::Refused(status))
                if status.code() == Code::Unauthenticated && tries_left > 0 => {}
            answer => break answer?,
        }
    };
    let token = Zeroizing::new(answer.session_token);
    Ok(Credentials {
        user: user.to_owned(),
        bearer: BearerToken::new(&token)?,
        expires_at_ms: answer.expires_at_ms,
        registered: answer.registered,
    })
}

/// One login: a challenge from the relay, signed and sent back with the identity.
async fn try_login(
    auth: &mut AuthServiceClient<Channel>,
    identity: &Identity,
    user: &str,
    registration_token: Option<&str>,
) -> Result<LoginResponse, ClientError> {
    let challenge = auth
        .create_challenge(CreateChallengeRequest {
            user: user.to_owned(),
        })
        .await
        .map_err(|status| {
            // The first RPC is where a server that drops the connection unanswered shows
            // up: a TLS port reached with http://, or a server at its connection limit.
            let dropped = status.code() == Code::Cancelled
                || status.message().contains("h2 protocol error")
                || (status.code() == Code::Unknown && status.message() == "transport error");
            if dropped {
                ClientError::ClosedAtOnce {
                    reason: status.message().to_owned(),
                }
            } else {
                ClientError::Refused(status)
            }
        })?
        .into_inner()
        .challenge;
    let signature = identity.sign_login(user, &challenge)?;
    let answer = auth
        .login(LoginRequest {
            identity: Some(identity.publish(user)?),
            challenge,
            signature: signature.into(),
            registration_token: registration_token.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|status| match status.code() {
            Code::AlreadyExists => ClientError::NameTaken {
                user: user.to_owned(),
                reason: status.message().to_owned(),
            },
            _ => ClientError::Refused(status),
        })?;
    Ok(answer.into_inner())
}

/// A user's device as the key directory presents it, checked: its identity's
/// self-signature, and its prekey's signature by that identity. Whether the identity is
/// the one pinned for the user is the caller's to check.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    pub identity: VerifiedIdentity,
    pub device: u32,
    /// The device's current prekey (id and public key); `None` when it has published
    /// none, or its signature does not verify (then `prekey_problem` says why).
    pub prekey: Option<(u64, PublicEncryptionKey)>,
    pub prekey_problem: Option<String>,
}

/// Publishes `publish` (our new signed prekey) if given, and fetches the bundles of the
/// other members of `room` (if given) and of `users`. Only bundles whose identity
/// verifies are returned: one the relay garbled costs that user, not everyone.
pub async fn key_exchange(
    client: &mut AuthorizedClient,
    publish: Option<SignedPrekey>,
    room: Option<&str>,
    users: &[&str],
) -> Result<Vec<VerifiedBundle>, ClientError> {
    let bundles = fetch_bundles(client, publish, room, users).await?;
    Ok(bundles
        .into_iter()
        .filter_map(|bundle| verify_bundle(bundle).ok())
        .collect())
}

async fn fetch_bundles(
    client: &mut AuthorizedClient,
    publish: Option<SignedPrekey>,
    room: Option<&str>,
    users: &[&str],
) -> Result<Vec<KeyBundle>, ClientError> {
    let request = KeyExchangeRequest {
        publish,
        room: room.unwrap_or_default().to_owned(),
        users: users.iter().map(|user| (*user).to_owned()).collect(),
    };
    let answer = client
        .key_exchange(request)
        .await
        .map_err(ClientError::Refused)?
        .into_inner();
    Ok(answer.bundles)
}

/// The identity the relay has registered for `user`, checked.
pub async fn fetch_identity(
    client: &mut AuthorizedClient,
    user: &str,
) -> Result<VerifiedIdentity, ClientError> {
    let bundle = fetch_bundles(client, None, None, &[user])
        .await?
        .into_iter()
        .find(|bundle| bundle.identity.as_ref().is_some_and(|id| id.user == user))
        .ok_or_else(|| ClientError::BadIdentity {
            user: user.to_owned(),
            reason: "the server answered with someone else's".into(),
        })?;
    verify_bundle(bundle).map(|bundle| bundle.identity)
}

fn verify_bundle(bundle: KeyBundle) -> Result<VerifiedBundle, ClientError> {
    let published = bundle.identity.unwrap_or_default();
    let identity =
        VerifiedIdentity::verify(&published).map_err(|error| ClientError::BadIdentity {
            user: published.user.clone(),
            reason: error.to_string(),
        })?;
    let (prekey, prekey_problem) = match bundle.prekey {
        None => (None, Some("it has published no prekey yet".to_owned())),
        Some(prekey) => {
            let signed = crypto::SignedPrekey {
                user: identity.user.clone(),
                device: prekey.device,
                id: prekey.prekey_id,
                created_at_ms: prekey.created_at_ms,
                public_key: prekey.public_key.to_vec(),
                signature: prekey.signature.to_vec(),
            };
            match signed.verify(&identity) {
                Ok(key) => (Some((prekey.prekey_id, key)), None),
                Err(error) => (None, Some(format!("its prekey does not verify: {error}"))),
            }
        }
    };
    Ok(VerifiedBundle {
        identity,
        device: bundle.device,
        prekey,
        prekey_problem,
    })
}
