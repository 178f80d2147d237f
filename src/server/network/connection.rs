//! One accepted TCP connection: the deadlines it must meet, the RPCs open on it, and the
//! handle the rest of the server uses to find out who is on the other end or to cut it
//! off.
//!
//! hyper reads a connection whenever it waits for its peer (and writes it when the peer
//! does not read), so the socket's reads and waiting writes are where its deadlines are
//! enforced: a connection that has had no request within `--handshake-timeout-ms` of
//! being accepted (its TLS handshake included), or no RPC open for `--idle-timeout-ms`,
//! fails its next read or write, which makes hyper drop it. The RPCs on it are counted
//! by the layer ([`StreamGuard`]), which wakes the connection's task when the last one
//! ends so that the idle deadline is armed.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TlsConnectInfo};

use super::hosts::{Admitted, Host};

/// What the server knows about one connection, shared by its task and its requests.
pub(super) struct ConnectionState {
    peer: SocketAddr,
    accepted: Instant,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    /// Set by [`ConnectionHandle::close`]; the next read or write fails.
    closed: AtomicBool,
    activity: Mutex<Activity>,
    /// The client's address, with its own bounds.
    pub(super) host: Arc<Host>,
    /// RPCs that need no login in progress on this connection.
    pub(super) unauthenticated: Arc<Semaphore>,
}

/// The RPCs on a connection, and the task that drives it.
struct Activity {
    open_streams: usize,
    /// When the last RPC ended; `None` until the first one arrives.
    idle_since: Option<Instant>,
    /// The task driving the connection (hyper's, or tonic's TLS handshake), to wake
    /// when it has to act: the last RPC ended (arm the idle deadline) or the
    /// connection was closed.
    task: Option<Waker>,
}

impl ConnectionState {
    pub(super) fn new(
        peer: SocketAddr,
        host: Arc<Host>,
        handshake_timeout: Duration,
        idle_timeout: Duration,
        max_unauthenticated: usize,
    ) -> Self {
        Self {
            peer,
            accepted: Instant::now(),
            handshake_timeout,
            idle_timeout,
            closed: AtomicBool::new(false),
            activity: Mutex::new(Activity {
                open_streams: 0,
                idle_since: None,
                task: None,
            }),
            host,
            unauthenticated: Arc::new(Semaphore::new(max_unauthenticated)),
        }
    }

    fn activity(&self) -> MutexGuard<'_, Activity> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.activity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers `waker` as the connection's task and returns when the connection must
    /// close if nothing happens: `None` while an RPC is open.
    fn register_and_deadline(&self, waker: &Waker) -> Option<Instant> {
        let mut activity = self.activity();
        match &mut activity.task {
            Some(task) if task.will_wake(waker) => {}
            task => *task = Some(waker.clone()),
        }
        if activity.open_streams > 0 {
            return None;
        }
        Some(match activity.idle_since {
            None => self.accepted + self.handshake_timeout,
            Some(since) => since + self.idle_timeout,
        })
    }

    fn wake_task(&self) {
        if let Some(task) = self.activity().task.take() {
            task.wake();
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// An accepted connection: the socket, its slot among the admitted connections, and
/// its deadlines.
pub(crate) struct Connection {
    stream: TcpStream,
    state: Arc<ConnectionState>,
    /// Armed while no RPC is open.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Frees its place under `--max-connections` and `--max-connections-per-ip` when
    /// the connection is dropped.
    _admitted: Admitted,
}

impl Connection {
    pub(super) fn new(stream: TcpStream, state: Arc<ConnectionState>, admitted: Admitted) -> Self {
        Self {
            stream,
            state,
            deadline: None,
            _admitted: admitted,
        }
    }

    /// Fails when the connection must end: closed by the server, or past its deadline
    /// with no RPC open. Arms the deadline's timer to wake this task.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        // The waker is registered before `closed` is read, so a `close` in between
        // still wakes this task.
        let deadline = self.state.register_and_deadline(cx.waker());
        self.check_closed()?;
        let Some(deadline) = deadline else {
            self.deadline = None;
            return Ok(());
        };
        let sleep = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        if sleep.as_mut().poll(cx).is_ready() {
            let what = if self.state.activity().idle_since.is_none() {
                "no request within --handshake-timeout-ms"
            } else {
                "no RPC for --idle-timeout-ms"
            };
            tracing::debug!(peer = %self.state.peer, "closing a connection: {what}");
            return Err(io::Error::new(io::ErrorKind::TimedOut, what));
        }
        Ok(())
    }

    fn check_closed(&self) -> io::Result<()> {
        if !self.state.is_closed() {
            return Ok(());
        }
        // Reset rather than close: whatever is still queued for a peer that is cut off
        // (one that stopped reading, say) is dropped at once instead of lingering.
        let _ = self.stream.set_zero_linger();
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "closed by the relay",
        ))
    }

    /// When a write has to wait, checks as a read would: hyper does not read a
    /// connection while its writes wait for a peer that does not read, and such a peer
    /// must not escape the deadlines or [`ConnectionHandle::close`].
    fn pending_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_pending() {
            self.check(cx)?;
        }
        poll
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_closed()?;
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.pending_write(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_closed()?;
        let poll = Pin::new(&mut self.stream).poll_flush(cx);
        self.pending_write(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_closed()?;
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.pending_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// What tonic puts in the extensions of every request on a [`Connection`] (inside a
/// [`TlsConnectInfo`] as well, with TLS).
#[derive(Clone)]
pub(crate) struct ConnectionInfo(Arc<ConnectionState>);

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo(self.state.clone())
    }
}

/// The connection a request arrived on.
#[derive(Clone)]
pub(crate) struct ConnectionHandle(Arc<ConnectionState>);

impl ConnectionHandle {
    /// The address of the client (an IPv4 address, even when the listener is IPv6 and
    /// sees it IPv4-mapped).
    pub(crate) fn peer_ip(&self) -> IpAddr {
        self.0.peer.ip().to_canonical()
    }

    /// Tears the TCP connection down at once (a reset), whatever its RPCs are doing:
    /// even a response stuck waiting for HTTP/2 flow-control window, which could never
    /// be ended with trailers, ends with it.
    pub(crate) fn close(&self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake_task();
    }

    /// Counts an RPC as open on the connection until the guard is dropped.
    pub(super) fn open_stream(&self) -> StreamGuard {
        self.0.activity().open_streams += 1;
        StreamGuard(self.0.clone())
    }

    pub(super) fn state(&self) -> &ConnectionState {
        &self.0
    }
}

/// The connection of a request served by [`serve`](crate::server::serve), plaintext or
/// TLS; `None` for a request that did not come through it.
pub(crate) fn connection_of<T>(request: &tonic::Request<T>) -> Option<ConnectionHandle> {
    connection_in(request.extensions())
}

/// The connection recorded in a request's extensions.
pub(super) fn connection_in(extensions: &http::Extensions) -> Option<ConnectionHandle> {
    let info = extensions.get::<ConnectionInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<ConnectionInfo>>()
            .map(TlsConnectInfo::get_ref)
    })?;
    Some(ConnectionHandle(info.0.clone()))
}

/// One open RPC on a connection; the connection may count as idle once every guard is
/// dropped.
pub(super) struct StreamGuard(Arc<ConnectionState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut activity = self.0.activity();
        activity.open_streams -= 1;
        if activity.open_streams == 0 {
            activity.idle_since = Some(Instant::now());
            // The connection's task is parked with no deadline armed: wake it to arm one.
            if let Some(task) = activity.task.take() {
                drop(activity);
                task.wake();
            }
        }
    }
}
