//! The tower layer every request passes through, between tonic's connection handling
//! and the services. For each request it
//!
//! - counts an RPC open on its connection until the response body is dropped, so that
//!   the connection's idle deadline runs only while nothing is open;
//! - gives an RPC that needs no login its places, or answers RESOURCE_EXHAUSTED at once
//!   ([`Places`]);
//! - ends a request message that stalls ([`MessageDeadline`]), and answers
//!   DEADLINE_EXCEEDED when a unary RPC is not answered within `--request-timeout-ms`
//!   (its response comes once its request is read and handled; a streaming RPC's
//!   response comes at once);
//! - answers a request that cannot be decoded with INVALID_ARGUMENT or
//!   RESOURCE_EXHAUSTED rather than tonic's INTERNAL or OUT_OF_RANGE ([`decode_fault`]).
//!
//! tonic adds each request's connection info outside the layers given to
//! `Server::layer`, so it is in the extensions here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use super::connection::{ConnectionHandle, StreamGuard, connection_in};
use super::limits::NetworkLimits;
use super::message_deadline::MessageDeadline;
use super::status::decode_fault;
use super::unauthenticated::{Held, Kind, Places};

/// Applies the bounds of [`NetworkLimits`] to every request.
#[derive(Clone)]
pub(crate) struct BoundsLayer(Arc<Shared>);

struct Shared {
    places: Places,
    request_timeout: Duration,
}

impl BoundsLayer {
    pub(crate) fn new(limits: &NetworkLimits) -> Self {
        Self(Arc::new(Shared {
            places: Places::new(limits),
            request_timeout: limits.request_timeout(),
        }))
    }
}

impl<S> Layer<S> for BoundsLayer {
    type Service = Bounded<S>;

    fn layer(&self, inner: S) -> Bounded<S> {
        Bounded {
            inner,
            shared: self.0.clone(),
        }
    }
}

/// The services behind [`BoundsLayer`].
#[derive(Clone)]
pub(crate) struct Bounded<S> {
    inner: S,
    shared: Arc<Shared>,
}

type Response = http::Response<Body>;

impl<S> Service<http::Request<Body>> for Bounded<S>
where
    S: Service<http::Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let connection = connection_in(request.extensions());
        let stream = connection.as_ref().map(ConnectionHandle::open_stream);
        let path = request.uri().path().to_owned();
        let held = match (Kind::of(&path), &connection) {
            (Some(kind), Some(connection)) => match self.shared.places.take(kind, connection) {
                Ok(held) => Some(held),
                Err(refused) => return Box::pin(std::future::ready(Ok(refused.into_http()))),
            },
            _ => None,
        };
        let timeout = self.shared.request_timeout;
        let request = request.map(|body| Body::new(MessageDeadline::new(body, timeout)));
        // The clone is ready only if polled; the one that was polled serves this call.
        let ready = self.inner.clone();
        let answer = std::mem::replace(&mut self.inner, ready).call(request);
        Box::pin(async move {
            let Ok(response) = tokio::time::timeout(timeout, answer).await else {
                return Ok(Status::deadline_exceeded(format!(
                    "{path} was not received and answered within {} ms \
                     (--request-timeout-ms); send the request without pausing",
                    timeout.as_millis()
                ))
                .into_http());
            };
            let mut response = response?;
            answer_decode_faults(&mut response, &path);
            Ok(response.map(|body| {
                Body::new(Holding {
                    body,
                    _stream: stream,
                    _held: held,
                })
            }))
        })
    }
}

/// Rewrites a trailers-only response that reports a request tonic could not decode.
fn answer_decode_faults(response: &mut Response, path: &str) {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return;
    };
    if let Some(fault) = decode_fault(&status, &format!("the request to {path}")) {
        // Only a message that cannot be a header value fails here; keep tonic's then.
        let _ = fault.add_header(response.headers_mut());
    }
}

/// A response body holding its RPC's places until hyper drops it, when the RPC ends.
struct Holding {
    body: Body,
    _stream: Option<StreamGuard>,
    _held: Option<Held>,
}

impl HttpBody for Holding {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
