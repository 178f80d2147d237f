//! The RPCs anyone may call without logging in (AuthService, health, reflection): how
//! large their messages may be, and how many may be in progress at once.
//!
//! Each such RPC holds at most one message of its service's size limit, plus HTTP/2's
//! buffers for its stream. It takes a place on its connection, on its client's address
//! and among all clients; one beyond any of these bounds is refused with
//! RESOURCE_EXHAUSTED before it is read. Health Watch and reflection streams last as
//! long as their client likes, so they are counted apart from logins and cannot take
//! their places, except on their own connection.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use super::connection::ConnectionHandle;
use super::limits::NetworkLimits;
use super::throttle::Throttled;
use crate::proto::chat_service_server;
use crate::protocol::{CHALLENGE_LEN, MAX_SIGNATURE_LEN, MAX_USER_LEN};

/// Largest AuthService request: a login carries a user name, two DER public keys of at
/// most 4096 bits (about 550 bytes each), the identity's signature and the login
/// signature (512 bytes each at 4096 bits) and a challenge: some 2.2 KB. Four times
/// that leaves room for encoding overhead and nothing an attacker could use.
pub(crate) const MAX_AUTH_REQUEST_BYTES: usize =
    4 * (MAX_USER_LEN + 2 * 600 + 2 * MAX_SIGNATURE_LEN + CHALLENGE_LEN);

/// Largest health request: the name of a service.
pub(crate) const MAX_HEALTH_REQUEST_BYTES: usize = 1024;

/// Largest reflection request: a file name or a symbol.
pub(crate) const MAX_REFLECTION_REQUEST_BYTES: usize = 4 * 1024;

/// Which bound an RPC that needs no login is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Logins, challenges, health checks: answered as soon as their request is read.
    /// Unknown methods count here too; they are answered at once.
    Brief,
    /// Health Watch and reflection streams.
    Lasting,
}

impl Kind {
    /// The kind of the RPC at `path` (`/package.Service/Method`); `None` for
    /// `chat.v2.ChatService`, which needs a token, checked before its request is read.
    pub(super) fn of(path: &str) -> Option<Self> {
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'))
            .unwrap_or_default();
        Some(match (service, method) {
            (chat_service_server::SERVICE_NAME, _) => return None,
            (tonic_health::pb::health_server::SERVICE_NAME, "Watch")
            | (tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME, _)
            | (tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME, _) => {
                Self::Lasting
            }
            _ => Self::Brief,
        })
    }
}

/// The places of every client's RPCs that need no login.
pub(super) struct Places {
    limits: NetworkLimits,
    brief: Arc<Semaphore>,
    lasting: Arc<Semaphore>,
}

/// The places one RPC holds until it ends.
pub(super) struct Held {
    _permits: [OwnedSemaphorePermit; 3],
}

static REFUSED: [Throttled; 5] = [const { Throttled::new() }; 5];

impl Places {
    pub(super) fn new(limits: &NetworkLimits) -> Self {
        Self {
            limits: limits.clone(),
            brief: Arc::new(Semaphore::new(limits.max_unauthenticated)),
            lasting: Arc::new(Semaphore::new(limits.max_unauthenticated_streams)),
        }
    }

    /// Takes the places of an RPC of `kind` on `connection`, or says which bound is
    /// reached.
    pub(super) fn take(&self, kind: Kind, connection: &ConnectionHandle) -> Result<Held, Status> {
        let state = connection.state();
        let (host, host_bound, all, all_bound) = match kind {
            Kind::Brief => (
                &state.host.unauthenticated,
                Bound::Host,
                &self.brief,
                Bound::All,
            ),
            Kind::Lasting => (
                &state.host.streams,
                Bound::HostStreams,
                &self.lasting,
                Bound::Streams,
            ),
        };
        let place = |semaphore: &Arc<Semaphore>, bound: Bound| {
            semaphore
                .clone()
                .try_acquire_owned()
                .map_err(|_| self.refuse(bound, connection))
        };
        Ok(Held {
            _permits: [
                place(&state.unauthenticated, Bound::Connection)?,
                place(host, host_bound)?,
                place(all, all_bound)?,
            ],
        })
    }

    fn refuse(&self, bound: Bound, connection: &ConnectionHandle) -> Status {
        let message = bound.describe(&self.limits);
        REFUSED[bound as usize].warn(|left_out| {
            tracing::warn!(peer = %connection.peer_ip(), left_out, "refused an RPC: {message}");
        });
        Status::resource_exhausted(message)
    }
}

/// The bounds on RPCs that need no login.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Connection,
    Host,
    All,
    Streams,
    HostStreams,
}

impl Bound {
    fn describe(self, limits: &NetworkLimits) -> String {
        match self {
            Self::Connection => format!(
                "{} requests without a login are in progress on this connection \
                 (--max-unauthenticated-per-connection); wait for one to finish",
                limits.max_unauthenticated_per_connection
            ),
            Self::Host => format!(
                "{} requests without a login are in progress from this address \
                 (--max-unauthenticated-per-ip); wait for one to finish",
                limits.max_unauthenticated_per_ip
            ),
            Self::All => format!(
                "the server is busy: {} requests without a login are in progress \
                 (--max-unauthenticated); try again shortly",
                limits.max_unauthenticated
            ),
            Self::HostStreams => format!(
                "{} health Watch and reflection streams are open from this address \
                 (a quarter of --max-unauthenticated-streams); close one, or poll with \
                 grpc.health.v1.Health/Check",
                limits.max_unauthenticated_streams_per_ip()
            ),
            Self::Streams => format!(
                "{} health Watch and reflection streams are open \
                 (--max-unauthenticated-streams); try again later, or poll with \
                 grpc.health.v1.Health/Check",
                limits.max_unauthenticated_streams
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpcs_are_told_apart_by_path() {
        assert_eq!(Kind::of("/chat.v2.ChatService/Chat"), None);
        assert_eq!(Kind::of("/chat.v2.ChatService/KeyExchange"), None);
        assert_eq!(Kind::of("/chat.v2.AuthService/Login"), Some(Kind::Brief));
        assert_eq!(Kind::of("/grpc.health.v1.Health/Check"), Some(Kind::Brief));
        assert_eq!(
            Kind::of("/grpc.health.v1.Health/Watch"),
            Some(Kind::Lasting)
        );
        for version in ["v1", "v1alpha"] {
            let path = format!("/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo");
            assert_eq!(Kind::of(&path), Some(Kind::Lasting));
        }
        assert_eq!(Kind::of("/nothing.Here/At"), Some(Kind::Brief));
        assert_eq!(Kind::of("garbage"), Some(Kind::Brief));
    }

    #[test]
    fn the_largest_login_fits_with_room_to_spare() {
        use prost::Message;

        let keys = crate::crypto::Identity::generate(4096).unwrap();
        let user = "u".repeat(MAX_USER_LEN);
        let challenge = [0; CHALLENGE_LEN];
        let login = crate::proto::LoginRequest {
            identity: Some(keys.publish(&user).unwrap()),
            signature: keys.sign_login(&user, &challenge).unwrap().into(),
            challenge: challenge.to_vec().into(),
            // Twice the length of the tokens `chat-server registration-token` makes.
            registration_token: "0".repeat(64),
        };
        let len = login.encoded_len();
        assert!(
            2 * len <= MAX_AUTH_REQUEST_BYTES,
            "{len} of {MAX_AUTH_REQUEST_BYTES}"
        );
    }
}
