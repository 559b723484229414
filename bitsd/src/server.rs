//! The local socket: binding it safely and serving the gRPC API on it until shutdown.
//!
//! Authorisation is by the peer's uid (SO_PEERCRED, checked per call in `grpc.rs`), not by the
//! socket's mode. The mode only keeps callers out who could never be served: a per-user daemon's
//! socket is 0600 in a 0700 directory; a system daemon's socket is 0666 in a 0755 directory so
//! every local user can reach it and is then limited to their own jobs.
//!
//! Every local user can connect, so connecting must not be a way to take the daemon down:
//! - each uid may hold `max_connections_per_user` connections (administrators are exempt), all
//!   users together `max_connections`, at most half the fd limit so that the other half stays
//!   for transfers and the store; a connection over a cap is closed at once ([`Quota`]);
//! - a connection that has not sent the HTTP/2 preface within `handshake_timeout` is closed, and
//!   so is one with no call in flight that has sent nothing for `idle_timeout` ([`Conn`]); an
//!   open WatchJob stream is a call in flight, however quiet;
//! - when accept fails because no fd is left (EMFILE, ENFILE), the loop sleeps [`ACCEPT_BACKOFF`]
//!   instead of retrying at once: the listening socket stays readable, and retrying spun a core
//!   at 100% while the connections waiting in the backlog got nowhere.
//!
//! The TCP listener's connections ([`tcp_incoming`]) get the same treatment.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use anyhow::{Context, bail};
use bits_manager::Manager;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::unix::UCred;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use crate::authority::AuthorityFix;
use crate::awake::KeepAwake;
use crate::grpc::{Access, BitsService};
use crate::health::HealthService;
use crate::quota::{Quota, Slot};
use crate::throttle::Throttle;

/// Binds `socket`, creating its directory if needed. A stale socket file from a crashed daemon is
/// replaced; a socket another live daemon answers on is left alone and reported.
pub fn bind(socket: &Path, access: Access) -> anyhow::Result<UnixListener> {
    let (dir_mode, socket_mode) = match access {
        Access::AllUsers => (0o755, 0o666),
        Access::OnlyUid(_) => (0o700, 0o600),
    };
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(dir)
            .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!("another bitsd is already serving on {}", socket.display());
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("cannot remove stale socket {}", socket.display()))?;
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("cannot bind {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(socket_mode))
        .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
    Ok(listener)
}

/// How long the accept loop sleeps after accept failed (typically: no fd left) before it tries
/// again. Long enough that a daemon out of fds costs no CPU, short enough that the first caller
/// after fds are freed hardly notices.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The HTTP/2 client preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`: until this many bytes came in,
/// the connection is still in its handshake.
const PREFACE_LEN: usize = 24;

/// How many connections all callers together may hold: what the configuration wants, but at
/// most half of `fd_limit`, so that the other half stays for transfers and the store.
pub fn connection_cap(wanted: usize, fd_limit: u64) -> usize {
    let half = usize::try_from(fd_limit / 2).unwrap_or(usize::MAX);
    wanted.min(half).max(1)
}

/// The control socket's caps and timeouts (the `[control]` settings).
#[derive(Clone)]
pub struct Control {
    pub connections: Quota,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Serves the gRPC API, Health and reflection on `listener` until `shutdown` resolves, with the
/// caps and timeouts of `control`.
pub async fn serve(
    listener: UnixListener,
    service: BitsService,
    health: HealthService,
    awake: KeepAwake,
    control: Control,
    manager: Manager,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let accepter = Accepter::new(control, manager);
    let incoming = futures::stream::unfold((listener, accepter), |(listener, accepter)| async {
        let conn = accepter.next_unix(&listener).await;
        Some((Ok::<_, io::Error>(conn), (listener, accepter)))
    });
    let (reflection_v1, reflection_v1alpha) = crate::health::reflection()?;
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(awake)
        .layer(Tracking)
        .add_service(bits_proto::v1::bits_server::BitsServer::new(service))
        .add_service(health.server())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server failed")
}

/// Calls in flight on one connection. tonic's default is no limit (not even hyper's 200), and a
/// call whose request never ends counts as activity, so the idle timeout never closes its
/// connection: without this, one caller's 64 connections could hold any number of them.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// The TCP listener's connections, with the socket's timeouts and caps. TCP has no peer
/// credentials, but every caller that gets through acts as `uid`, so its connections count
/// as `uid`'s (and towards the total shared with the socket).
pub fn tcp_incoming(
    listener: TcpListener,
    control: Control,
    manager: Manager,
    uid: u32,
) -> impl futures::Stream<Item = io::Result<Conn<TcpStream>>> {
    let accepter = Accepter::new(control, manager);
    futures::stream::unfold((listener, accepter), move |(listener, accepter)| async move {
        let conn = accepter.next_tcp(&listener, uid).await;
        Some((Ok::<_, io::Error>(conn), (listener, accepter)))
    })
}

/// The accept loop: only connections within their uid's cap come out.
struct Accepter {
    control: Control,
    /// Asked who is an administrator (exempt from the per-user cap).
    manager: Manager,
    /// Accept errors are warned about, but not once each.
    failures: Throttle,
    /// Refused connections likewise (on their own: a flood of one must not hide the other).
    refusals: Throttle,
}

impl Accepter {
    fn new(control: Control, manager: Manager) -> Accepter {
        Accepter { control, manager, failures: Throttle::default(), refusals: Throttle::default() }
    }
}

impl Accepter {
    async fn next_unix(&self, listener: &UnixListener) -> Conn<AuthorityFix<UnixStream>> {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    self.back_off(e).await;
                    continue;
                }
            };
            let cred = match stream.peer_cred() {
                Ok(cred) => cred,
                Err(e) => {
                    tracing::debug!(error = %e, "a connection without peer credentials: closed");
                    continue;
                }
            };
            let peer = Peer::new(Some(cred), None);
            if let Some(conn) = self.admit(cred.uid(), AuthorityFix::new(stream), peer) {
                return conn;
            }
        }
    }

    async fn next_tcp(&self, listener: &TcpListener, uid: u32) -> Conn<TcpStream> {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    self.back_off(e).await;
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            if let Some(conn) = self.admit(uid, stream, Peer::new(None, Some(remote))) {
                return conn;
            }
        }
    }

    /// Accept failed: typically no fd is left (EMFILE, ENFILE), and the listening socket stays
    /// readable, so trying again at once would spin.
    async fn back_off(&self, e: io::Error) {
        if let Some(left_out) = self.failures.allow() {
            tracing::warn!(
                error = %e,
                left_out,
                "cannot accept a connection; retrying in {ACCEPT_BACKOFF:?}"
            );
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }

    /// The connection with its place in `uid`'s cap, or `None` (it is dropped: closed) when
    /// that is full.
    fn admit<S>(&self, uid: u32, stream: S, peer: Peer) -> Option<Conn<S>> {
        let admin = self.manager.caller(uid).is_admin();
        match self.control.connections.take(uid, admin) {
            Ok(slot) => Some(Conn::new(stream, peer, slot, &self.control)),
            Err(over) => {
                if let Some(left_out) = self.refusals.allow() {
                    tracing::warn!(uid, left_out, "connection refused: {over}");
                }
                None
            }
        }
    }
}

/// Who is on the other end of a connection, and whether a call is in flight on it. Tonic puts a
/// clone into every request's extensions (it is the connection's `ConnectInfo`).
#[derive(Clone, Debug)]
pub struct Peer {
    /// The Unix socket's peer credentials (none on TCP).
    pub cred: Option<UCred>,
    /// The TCP peer's address (none on the Unix socket).
    pub remote: Option<SocketAddr>,
    activity: Arc<Activity>,
}

impl Peer {
    fn new(cred: Option<UCred>, remote: Option<SocketAddr>) -> Peer {
        let activity = Activity { calls: AtomicUsize::new(0), last: Mutex::new(Instant::now()) };
        Peer { cred, remote, activity: Arc::new(activity) }
    }
}

/// What the idle timeout looks at: calls in flight and the last moment anything happened.
#[derive(Debug)]
struct Activity {
    calls: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn touch(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A call in flight on a connection; dropped with the call's response body, so a WatchJob
/// stream counts for as long as it is open.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.calls.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An accepted connection: the socket, its place in the uid's cap, and the handshake and idle
/// timeouts, checked whenever a read would wait.
pub struct Conn<S> {
    stream: S,
    peer: Peer,
    /// Bytes read so far, counted up to [`PREFACE_LEN`].
    heard: usize,
    /// When the timeouts are checked next.
    check: Pin<Box<Sleep>>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    /// Given back when the connection is dropped.
    _slot: Slot,
}

impl<S> Conn<S> {
    fn new(stream: S, peer: Peer, slot: Slot, control: &Control) -> Conn<S> {
        Conn {
            stream,
            peer,
            heard: 0,
            check: Box::pin(tokio::time::sleep(control.handshake_timeout)),
            handshake_timeout: control.handshake_timeout,
            idle_timeout: control.idle_timeout,
            _slot: slot,
        }
    }

    /// When to check again, or why the connection is to be closed now.
    fn next_check(&self, now: Instant) -> Result<Instant, String> {
        if self.heard < PREFACE_LEN {
            return Err(format!("no HTTP/2 handshake within {:?}", self.handshake_timeout));
        }
        let activity = &self.peer.activity;
        if activity.calls.load(Ordering::Relaxed) > 0 {
            return Ok(now + self.idle_timeout);
        }
        let until = activity.last() + self.idle_timeout;
        if now >= until {
            return Err(format!("idle for {:?}", self.idle_timeout));
        }
        Ok(until)
    }

    /// Pending until a timeout closes the connection.
    fn poll_timeouts(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.check.as_mut().poll(cx));
            match self.next_check(Instant::now()) {
                Ok(at) => self.check.as_mut().reset(at),
                Err(why) => {
                    tracing::debug!(peer = ?self.peer.cred, remote = ?self.peer.remote, "connection closed: {why}");
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why));
                }
            }
        }
    }
}

impl<S> Connected for Conn<S> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    this.heard = (this.heard + read).min(PREFACE_LEN);
                    this.peer.activity.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_timeouts(cx).map(Err),
        }
    }
}

write_through!(Conn, stream);

/// The layer that counts calls in flight per connection (for the idle timeout): from the
/// request until its response body is dropped.
#[derive(Clone, Copy)]
pub struct Tracking;

impl<S> tower::Layer<S> for Tracking {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked { inner }
    }
}

#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Tracked<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let in_flight = request.extensions().get::<Peer>().map(|p| InFlight::start(&p.activity));
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let Some(in_flight) = in_flight else { return Ok(response) };
            Ok(response.map(|body| {
                tonic::body::Body::new(body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                }))
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A connection to the far end of a socket pair, with a 10 s handshake and a 60 s idle
    /// timeout.
    fn conn() -> (Conn<UnixStream>, UnixStream) {
        let (near, far) = UnixStream::pair().unwrap();
        let control = Control {
            connections: Quota::new("max_connections", "connections", 1, 1),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        let slot = control.connections.take(1000, false).unwrap();
        (Conn::new(near, Peer::new(None, None), slot, &control), far)
    }

    /// Reads what there is; `Err` when the connection was closed by a timeout.
    async fn read(conn: &mut Conn<UnixStream>) -> io::Result<Vec<u8>> {
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).await?;
        Ok(buf[..n].to_vec())
    }

    #[test]
    fn connections_get_at_most_half_the_fd_limit() {
        assert_eq!(connection_cap(1024, 65_536), 1024);
        assert_eq!(connection_cap(1024, 1024), 512);
        assert_eq!(connection_cap(100_000, 4096), 2048);
        assert_eq!(connection_cap(1024, 1), 1, "never none at all");
        assert_eq!(connection_cap(1024, u64::MAX), 1024, "RLIM_INFINITY");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_the_preface_is_closed_after_the_handshake_timeout() {
        let (mut conn, mut far) = conn();
        let started = Instant::now();
        // Part of the preface is not the preface.
        far.write_all(&PREFACE[..10]).await.unwrap();
        assert_eq!(read(&mut conn).await.unwrap().len(), 10);
        let e = read(&mut conn).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("no HTTP/2 handshake within 10s"), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_unless_a_call_is_in_flight() {
        let (mut conn, mut far) = conn();
        far.write_all(PREFACE).await.unwrap();
        assert_eq!(read(&mut conn).await.unwrap(), PREFACE);
        // A call (a WatchJob stream, say) is in flight for 5 minutes without a byte.
        let call = InFlight::start(&conn.peer.activity);
        let reading = tokio::spawn(async move {
            let started = Instant::now();
            let e = read(&mut conn).await.unwrap_err();
            (started.elapsed(), e)
        });
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(!reading.is_finished(), "closed while a call was in flight");
        // The call ends: the connection is idle from now on.
        drop(call);
        let (waited, e) = reading.await.unwrap();
        assert!(e.to_string().contains("idle for 60s"), "{e}");
        assert!(waited >= Duration::from_secs(360), "{waited:?}");
        assert!(waited <= Duration::from_secs(361), "{waited:?}");
        drop(far);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_keep_a_connection_open() {
        let (mut conn, mut far) = conn();
        far.write_all(PREFACE).await.unwrap();
        read(&mut conn).await.unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            far.write_all(b"x").await.unwrap();
            assert_eq!(read(&mut conn).await.unwrap(), b"x");
        }
        let started = Instant::now();
        read(&mut conn).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }
}
