//! The accept loop of the test servers.

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};

/// Runs `serve` on a task of its own for every accepted connection. The connection tasks live in
/// a set owned by this future, so aborting the task that runs it aborts every connection too.
pub(crate) async fn accept_each<F, Fut>(listener: TcpListener, mut serve: F)
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
