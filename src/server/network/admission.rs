//! Which accepted TCP connections are served: at most `--max-connections` at once, and
//! at most `--max-connections-per-ip` from one client address, so that one host cannot
//! take every slot. A connection beyond either bound is closed as soon as it is
//! accepted; one admitted holds its places until it is dropped.

use std::io;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_stream::{Stream, StreamExt};

use super::connection::{Connection, ConnectionState};
use super::hosts::{Admitted, Hosts};
use super::limits::NetworkLimits;
use super::throttle::Throttled;

static REFUSED_FULL: Throttled = Throttled::new();
static REFUSED_HOST: Throttled = Throttled::new();

/// Admits connections from `incoming` within `max_connections` and `limits`.
pub(crate) fn admit<S>(
    incoming: S,
    max_connections: usize,
    limits: &NetworkLimits,
) -> impl Stream<Item = io::Result<Connection>> + use<S>
where
    S: Stream<Item = io::Result<TcpStream>>,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let hosts = Arc::new(Hosts::default());
    let limits = limits.clone();
    incoming.filter_map(move |accepted| {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => return Some(Err(error)),
        };
        // A socket whose peer is already gone has nothing to serve.
        let peer = stream.peer_addr().ok()?;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            REFUSED_FULL.warn(|left_out| {
                tracing::warn!(
                    %peer,
                    left_out,
                    "refused a connection: {max_connections} connections are open (--max-connections)"
                );
            });
            return None;
        };
        let Some(host) = hosts.enter(peer.ip(), &limits) else {
            REFUSED_HOST.warn(|left_out| {
                tracing::warn!(
                    %peer,
                    left_out,
                    "refused a connection: {} connections from this address are open \
                     (--max-connections-per-ip)",
                    limits.max_connections_per_ip
                );
            });
            return None;
        };
        let state = ConnectionState::new(
            peer,
            host.clone(),
            limits.handshake_timeout(),
            limits.idle_timeout(),
            limits.max_unauthenticated_per_connection,
        );
        let admitted = Admitted::new(permit, hosts.clone(), host);
        Some(Ok(Connection::new(stream, Arc::new(state), admitted)))
    })
}
