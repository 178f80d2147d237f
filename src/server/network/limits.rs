//! The `chat-server` flags that bound connections and the requests on them.

use std::time::Duration;

use crate::server::config::{positive, positive_u64};

/// What a peer may hold before it has logged in, and how long it may take: deadlines and
/// caps on connections and on the RPCs that need no session token.
#[derive(Debug, Clone, clap::Args)]
pub struct NetworkLimits {
    /// Milliseconds a new connection has to complete its TLS handshake and HTTP/2
    /// preface and send its first request; then it is closed.
    #[arg(long, env = "CHAT_HANDSHAKE_TIMEOUT_MS", value_parser = positive_u64, default_value_t = NetworkLimits::DEFAULT.handshake_timeout_ms)]
    pub handshake_timeout_ms: u64,
    /// Milliseconds a connection may stay open with no RPC in progress; then it is
    /// closed (clients reconnect when they need to).
    #[arg(long, env = "CHAT_IDLE_TIMEOUT_MS", value_parser = positive_u64, default_value_t = NetworkLimits::DEFAULT.idle_timeout_ms)]
    pub idle_timeout_ms: u64,
    /// Open connections from one client address (for IPv6, one /64 network); one more
    /// is closed as soon as it is accepted. Behind a proxy every client has the
    /// proxy's address: raise this to --max-connections there.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_IP", value_parser = positive, default_value_t = NetworkLimits::DEFAULT.max_connections_per_ip)]
    pub max_connections_per_ip: usize,
    /// Milliseconds within which a unary RPC must be answered, receiving its request
    /// included, and within which a request message that has started arriving must be
    /// complete (only time spent waiting for the client counts); past it the RPC ends
    /// with DEADLINE_EXCEEDED.
    #[arg(long, env = "CHAT_REQUEST_TIMEOUT_MS", value_parser = positive_u64, default_value_t = NetworkLimits::DEFAULT.request_timeout_ms)]
    pub request_timeout_ms: u64,
    /// RPCs that need no login (AuthService, health, reflection) in progress at once on
    /// one connection; one more gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "CHAT_MAX_UNAUTHENTICATED_PER_CONNECTION", value_parser = positive, default_value_t = NetworkLimits::DEFAULT.max_unauthenticated_per_connection)]
    pub max_unauthenticated_per_connection: usize,
    /// RPCs that need no login in progress at once from one client address (for IPv6,
    /// one /64 network); one more gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "CHAT_MAX_UNAUTHENTICATED_PER_IP", value_parser = positive, default_value_t = NetworkLimits::DEFAULT.max_unauthenticated_per_ip)]
    pub max_unauthenticated_per_ip: usize,
    /// Logins, challenges and health checks in progress at once from all clients
    /// together; one more gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "CHAT_MAX_UNAUTHENTICATED", value_parser = positive, default_value_t = NetworkLimits::DEFAULT.max_unauthenticated)]
    pub max_unauthenticated: usize,
    /// Health Watch and reflection streams open at once from all clients together, a
    /// quarter of them at most from one address; one more gets RESOURCE_EXHAUSTED. They
    /// last as long as the client likes, so they have their own bound and never take
    /// the place of a login.
    #[arg(long, env = "CHAT_MAX_UNAUTHENTICATED_STREAMS", value_parser = positive, default_value_t = NetworkLimits::DEFAULT.max_unauthenticated_streams)]
    pub max_unauthenticated_streams: usize,
    /// chat.v2.ChatService RPCs one logged-in user may have in progress at once, over
    /// all its connections; one more gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "CHAT_MAX_REQUESTS_PER_USER", value_parser = positive, default_value_t = NetworkLimits::DEFAULT.max_requests_per_user)]
    pub max_requests_per_user: usize,
}

impl NetworkLimits {
    /// The limits of a server started without flags.
    pub const DEFAULT: Self = Self {
        // A TLS handshake and an HTTP/2 preface take a few round trips.
        handshake_timeout_ms: 5_000,
        // As long as common load balancers keep an idle connection.
        idle_timeout_ms: 60_000,
        // Room for a household or an office behind one NAT address, while one host
        // can take at most 1% of the default --max-connections.
        max_connections_per_ip: 100,
        // A login is a few KB; even a 64 KiB chat frame needs only ~7 KB/s.
        request_timeout_ms: 10_000,
        // A client logs in one RPC at a time; grpcurl holds a reflection stream and
        // makes one call.
        max_unauthenticated_per_connection: 8,
        max_unauthenticated_per_ip: 32,
        // Each holds one request of a few KB: some 15 MB for all, and it takes 32
        // addresses to fill.
        max_unauthenticated: 1024,
        // Each may hold up to a connection's HTTP/2 window (1 MiB) unread.
        max_unauthenticated_streams: 32,
        // A client has its Chat stream open and asks for one identity at a time. Each
        // place may hold a --max-frame-bytes request: 512 KiB a user at the defaults.
        max_requests_per_user: 8,
    };

    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Health Watch and reflection streams one address may hold: a quarter of all, so
    /// that one address cannot take every place either.
    pub(crate) fn max_unauthenticated_streams_per_ip(&self) -> usize {
        self.max_unauthenticated_streams.div_ceil(4)
    }
}

impl Default for NetworkLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
