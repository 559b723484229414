//! Connections: the one accept loop (plain or TLS), HTTP/1.1 and HTTP/2 on each, and the socket
//! wrapper that lets a body reset its connection (RST) instead of closing it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::Shared;

/// Runs `serve` on a task of its own for every accepted connection. The connection tasks live in
/// a set owned by this future, so aborting the task that runs it aborts every connection too.
async fn accept_each<F, Fut>(listener: TcpListener, mut serve: F)
where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                connections.spawn(serve(stream));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Per-connection switches a response can pull.
#[derive(Default)]
pub(super) struct ConnCtl {
    /// Close with `SO_LINGER` 0 (RST) instead of FIN.
    reset: AtomicBool,
}

impl ConnCtl {
    pub(super) fn reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
    }
}

/// The socket as hyper (or TLS) sees it; resets on drop when asked to, and is counted open
/// until dropped.
struct FaultIo {
    stream: TcpStream,
    ctl: Arc<ConnCtl>,
    shared: Arc<Shared>,
}

impl Drop for FaultIo {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
        if self.ctl.reset.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl FaultIo {
    fn check(&self) -> io::Result<()> {
        if self.ctl.reset.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
            return Err(io::Error::from(io::ErrorKind::ConnectionReset));
        }
        Ok(())
    }
}

impl AsyncRead for FaultIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A reset must not send a FIN first.
        self.check()?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Counts the connection and wraps its socket.
fn accepted(stream: TcpStream, shared: &Arc<Shared>) -> (FaultIo, Arc<ConnCtl>) {
    shared.connections.fetch_add(1, Ordering::SeqCst);
    shared.open.fetch_add(1, Ordering::SeqCst);
    let ctl = Arc::new(ConnCtl::default());
    (FaultIo { stream, ctl: ctl.clone(), shared: shared.clone() }, ctl)
}

/// Serves one connection, HTTP/1.1 or HTTP/2 (by prior knowledge, or as TLS negotiated).
async fn serve<I>(io: I, shared: Arc<Shared>, ctl: Arc<ConnCtl>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |req| super::respond(shared.clone(), ctl.clone(), req));
    // Errors here are the faults themselves, or clients going away.
    let _ =
        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), service).await;
}

pub(super) async fn accept_plain(listener: TcpListener, shared: Arc<Shared>) {
    accept_each(listener, move |stream| {
        let (io, ctl) = accepted(stream, &shared);
        serve(io, shared.clone(), ctl)
    })
    .await
}

#[cfg(feature = "tls")]
pub(super) async fn accept_tls(
    listener: TcpListener,
    shared: Arc<Shared>,
    config: rustls::ServerConfig,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    accept_each(listener, move |stream| {
        let (io, ctl) = accepted(stream, &shared);
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        async move {
            if let Ok(tls) = acceptor.accept(io).await {
                serve(tls, shared, ctl).await;
            }
        }
    })
    .await
}
