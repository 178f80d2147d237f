//! The relay: a tonic gRPC server that routes ciphertext between the members of each
//! room and never sees a key or a plaintext.
//!
//! - [`serve`] runs `chat.v2.AuthService` and `chat.v2.ChatService` with gRPC
//!   reflection (v1 and v1alpha) and `grpc.health.v1.Health`, until a shutdown signal;
//!   this file only wires the parts together.
//! - `config`: [`Limits`], [`Config`] and the data directory; `error`: [`ServerError`].
//! - `accounts`: registered identities, login challenges and session tokens.
//! - `auth`: the login RPCs, and the interceptor that requires a token for the rest.
//! - `hub`: the shared state (sessions, rooms); `hub::committed` answers and fans out
//!   what the writer committed, `hub::peers` what other relays committed.
//! - `room`: one room's members, numbered like its log.
//! - `writer`: the thread that commits the hub's changes to the store in batches, and
//!   (`writer::follow`) delivers what other relays sharing the store committed.
//! - `cluster`: relays serving one PostgreSQL database together (`--nats`): the
//!   doorbells and sessions they tell each other through NATS.
//! - `catch_up`: a returning member's missed entries, and history, read from the store.
//! - `session`: reads one client's frames and carries them out on the hub.
//! - `web`: gRPC-Web, CORS and the web client's files, for browsers ([`WebOptions`]).
//! - `web_session`: sessions for browsers, opened with `OpenSession` and fed by
//!   `SendFrame`.
//! - [`frame`]: the relay's checks of one client frame, which need nothing but the frame
//!   (public so that the fuzz targets drive the same code).
//! - `outbound`: the bounded queue of frames to one client.
//! - [`tls`]: the certificate and key the relay serves TLS with.
//! - `network`: bounds on connections and on what needs no login ([`NetworkLimits`]).

mod accounts;
mod auth;
mod catch_up;
mod cluster;
mod config;
mod error;
pub mod frame;
mod hub;
mod key_directory;
mod network;
mod outbound;
pub mod registration;
mod relay;
mod room;
mod service;
mod session;
mod signed_membership;
pub mod tls;
mod web;
mod web_session;
mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use config::{Config, Limits, prepare_data_dir};
pub use error::ServerError;
pub use network::NetworkLimits;
pub use outbound::Outbound;
pub use registration::{RegistrationMode, RegistrationPolicy};
pub use web::WebOptions;

use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::auth_service_server::AuthServiceServer;
use crate::proto::chat_service_server::ChatServiceServer;
use crate::store::{Change, Store};
use accounts::Accounts;
use auth::{Login, require_token};
use config::days;
use hub::Hub;
use key_directory::KeyDirectory;
use relay::Relay;
use service::ChatRelay;
use writer::Writer;

/// Serves the relay on `listener` until `shutdown` completes, then ends every session
/// with UNAVAILABLE and returns once the connections have closed. With `tls` (see
/// [`tls::load`]) every connection is TLS; without it, plaintext HTTP/2.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Config {
        limits,
        tls,
        store,
        web,
        nats,
    } = config;
    let accounts = Arc::new(Accounts::new(&limits, store.clone())?);
    let keys = Arc::new(KeyDirectory::new(store.clone())?);
    let (commands, received) = std::sync::mpsc::channel();
    let hub = Arc::new(Hub::new(
        limits.clone(),
        store.rooms()?,
        &|user| accounts.identity(user),
        commands.clone(),
    ));
    let reclaim_after = days(limits.reclaim_after_days);
    let reclaim = {
        let (hub, accounts, keys) = (hub.clone(), accounts.clone(), keys.clone());
        let policy = limits.storage();
        // Relays sharing the store would reclaim beside each other's sessions: not
        // yet in a cluster (docs/DEPLOY.md).
        let never = limits.reclaim_after_days == 0 || nats.is_some();
        Box::new(move |store: &dyn Store| {
            if never {
                return;
            }
            let since = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_sub(reclaim_after);
            let dormant = match store.dormant(since) {
                Ok(dormant) => dormant,
                Err(error) => {
                    tracing::warn!(%error, "cannot look for what nobody uses");
                    return;
                }
            };
            // The writer's own thread: nothing else commits while the identities go, and
            // a name is free only once its identity is deleted.
            let users = hub.reclaim(&dormant);
            for user in &users {
                let delete = [Change::DeleteIdentity { user: user.clone() }];
                match store.commit(&delete, &policy) {
                    Ok(_) => {
                        accounts.forget(user);
                        keys.forget(user);
                    }
                    Err(error) => tracing::warn!(user, %error, "cannot delete an unused identity"),
                }
            }
            hub.reclaimed(&users);
        })
    };
    let committed = {
        let hub = Arc::downgrade(&hub);
        Box::new(move |batch: Vec<_>, failure: Option<hub::Failure<'_>>| {
            if let Some(hub) = hub.upgrade() {
                hub.committed(batch, failure);
            }
        })
    };
    let recovered = {
        let (hub, accounts) = (Arc::downgrade(&hub), accounts.clone());
        Box::new(move |rooms| {
            if let Some(hub) = hub.upgrade() {
                hub.recovered(rooms, &|user| accounts.identity(user));
            }
        })
    };
    let (follow, _link) = match &nats {
        Some(url) => {
            accounts.share_the_store();
            keys.share_the_store();
            let (follow, link) =
                cluster::join(url, &hub, accounts.clone(), commands.clone()).await?;
            (Some(follow), Some(link))
        }
        None => (None, None),
    };
    let setup = writer::WriterSetup {
        store: store.clone(),
        max_batch: limits.max_commit_batch,
        policy: limits.storage(),
        committed,
        recovered,
        housekeeping: reclaim,
        follow,
    };
    let writer = Writer::spawn(setup, commands, received).map_err(ServerError::Writer)?;
    tokio::spawn(end_stalled_sessions(Arc::downgrade(&hub)));
    let relay = Arc::new(Relay {
        hub: hub.clone(),
        accounts: accounts.clone(),
        keys,
        store,
        max_frame_bytes: limits.max_frame_bytes,
    });
    let stopping_hub = hub.clone();

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ChatServiceServer<ChatRelay>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()?
        .max_decoding_message_size(network::MAX_REFLECTION_REQUEST_BYTES);
    let reflection_v1alpha = reflection()
        .build_v1alpha()?
        .max_decoding_message_size(network::MAX_REFLECTION_REQUEST_BYTES);
    let health_service =
        health_service.max_decoding_message_size(network::MAX_HEALTH_REQUEST_BYTES);
    let chat = InterceptedService::new(
        // Half the request deadline: a `SendFrame` that waits longer is told to retry
        // before the deadline cuts it off with a message that blames the client.
        ChatServiceServer::new(ChatRelay::new(relay, limits.network.request_timeout() / 2))
            // A `SendFrameRequest` wraps a frame of the limit; the frame itself is
            // checked against it (`Relay::check_frame_size`).
            .max_decoding_message_size(limits.max_frame_bytes + web_session::SEND_FRAME_OVERHEAD),
        require_token(
            accounts.clone(),
            network::UserRequests::new(limits.network.max_requests_per_user),
        ),
    );
    let login = AuthServiceServer::new(Login::new(accounts))
        .max_decoding_message_size(network::MAX_AUTH_REQUEST_BYTES);

    let stop = async move {
        shutdown.await;
        tracing::info!("shutting down: ending every session");
        health
            .set_not_serving::<ChatServiceServer<ChatRelay>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        stopping_hub.shutdown();
    };
    let incoming = network::admit(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        limits.max_connections,
        &limits.network,
    );
    // tonic wraps each connection from `incoming` in its TLS acceptor, so a connection
    // still counts against the limits, and its handshake deadline runs, while it
    // handshakes.
    let client_dir = web.client_dir();
    match &client_dir {
        Some(dir) => tracing::info!(dir = %dir.display(), "serving the web client at /"),
        None => match &web.web_dir {
            Some(dir) => tracing::warn!(
                dir = %dir.display(),
                "--web-dir holds no index.html (build the client with \
                 scripts/build-web.sh); / says so; native and gRPC-Web clients are served"
            ),
            None => tracing::info!(
                "no web client to serve at / (build it with scripts/build-web.sh, or give \
                 --web-dir); native and gRPC-Web clients are served"
            ),
        },
    }
    let mut routes = Routes::builder();
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(login)
        .add_service(chat);
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    // Browsers speak gRPC-Web, over HTTP/1.1 as well as HTTP/2; tonic-web translates it
    // before the relay's bounds see the request, so both kinds are bounded alike.
    builder
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .layer(web::cors(&web))
        .layer(web::FilesLayer::new(client_dir.as_deref()))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(network::BoundsLayer::new(&limits.network))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    // Everything acknowledged is committed already; this commits what is in flight.
    writer.stop().await;
    Ok(())
}

/// The NATS servers of a `--nats` value as a log line may name them (hosts and ports,
/// no credentials), or a one-line error saying what is wrong with it.
pub fn nats_servers(url: &str) -> Result<String, String> {
    cluster::describe_servers(url)
}

/// Looks every second for sessions whose client stopped taking its frames, for as long
/// as the hub lives.
async fn end_stalled_sessions(hub: std::sync::Weak<Hub>) {
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every_second.tick().await;
        match hub.upgrade() {
            Some(hub) => hub.end_stalled(),
            None => return,
        }
    }
}

/// Concurrent RPCs on one HTTP/2 connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
