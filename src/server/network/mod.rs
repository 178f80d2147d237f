//! What a peer can do to the relay before and around logging in, bounded: connections
//! and the requests on them.
//!
//! - `admission`: which accepted TCP connections are served (`--max-connections`,
//!   `--max-connections-per-ip`).
//! - `hosts`: the client addresses with connections open, and what each holds.
//! - [`connection`]: one connection, its deadlines (`--handshake-timeout-ms`,
//!   `--idle-timeout-ms`), and the [`ConnectionHandle`](connection::ConnectionHandle)
//!   the rest of the server finds with [`connection_of`](connection::connection_of).
//! - `bounds`: the tower layer every request passes through.
//! - `unauthenticated`: the RPCs that need no login, their message sizes and how many
//!   may be in progress.
//! - `per_user`: how many RPCs one logged-in user may have in progress.
//! - `message_deadline`: a request message that starts must arrive within
//!   `--request-timeout-ms`.
//! - `status`: the statuses for requests that cannot be decoded.
//! - `limits`: the flags, [`NetworkLimits`].
//! - `throttle`: warnings an attack would repeat, logged at most every few seconds.

mod admission;
mod bounds;
pub(crate) mod connection;
mod hosts;
mod limits;
mod message_deadline;
mod per_user;
mod status;
mod throttle;
mod unauthenticated;

pub(crate) use admission::admit;
pub(crate) use bounds::BoundsLayer;
pub use limits::NetworkLimits;
pub(crate) use per_user::{RequestPlace, UserRequests};
pub(crate) use status::decode_fault;
pub(crate) use unauthenticated::{
    MAX_AUTH_REQUEST_BYTES, MAX_HEALTH_REQUEST_BYTES, MAX_REFLECTION_REQUEST_BYTES,
};

#[cfg(test)]
mod tests;
