//! The local socket: binding it safely and serving the gRPC API on it until shutdown.
//!
//! Authorisation is by the peer's uid (SO_PEERCRED, checked per call in `grpc.rs`), not by the
//! socket's mode. The mode only keeps callers out who could never be served: a per-user daemon's
//! socket is 0600 in a 0700 directory; a system daemon's socket is 0666 in a 0755 directory so
//! every local user can reach it and is then limited to their own jobs.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::awake::KeepAwake;
use crate::grpc::{Access, BitsService};

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

pub async fn serve(
    listener: UnixListener,
    service: BitsService,
    awake: KeepAwake,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .layer(awake)
        .add_service(bits_proto::v1::bits_server::BitsServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .context("gRPC server failed")
}
