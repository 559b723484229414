//! The local socket: binding it safely and serving the gRPC API on it until shutdown.
//!
//! The socket is private to the daemon's user (mode 0600 in a 0700 directory we create), and every
//! call is checked against the peer's uid as well (see `grpc.rs`), so a root daemon can never be
//! made to write on behalf of another user until per-user ownership exists.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::grpc::BitsService;

/// Binds `socket`, creating its directory if needed. A stale socket file from a crashed daemon is
/// replaced; a socket another live daemon answers on is left alone and reported.
pub fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
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
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    service: BitsService,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(bits_proto::v1::bits_server::BitsServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .context("gRPC server failed")
}
