//! The daemon started in the test's own process through the library entry point (`bitsd::run`):
//! served on its socket, stopped by the test's shutdown future as by SIGTERM (socket removed,
//! store flushed), and started again on the same data directory.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test: a failed call is a failed test

use std::path::Path;
use std::time::Duration;

use bits_client::Client;
use bits_core::{JobState, Priority};
use clap::Parser as _;
use tokio::sync::oneshot;

/// A daemon on `dir`'s socket and data directory, and the sender that stops it.
fn start(dir: &Path) -> (oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let socket = dir.join("bitsd.sock");
    let data = dir.join("data");
    let args = bitsd::Args::parse_from([
        "bitsd".as_ref(),
        "--socket".as_ref(),
        socket.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    let config = bitsd::config::Config::defaults(bitsd::config::Origin::NoDefaultPath);
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(bitsd::run(args, config, async {
        let _ = stopped.await;
    }));
    (stop, daemon)
}

async fn connect(socket: &Path) -> Client {
    for _ in 0..500 {
        if let Ok(client) = Client::connect(socket).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the in-process daemon never served {}", socket.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_until_its_shutdown_future_and_keeps_jobs_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bitsd.sock");

    let (stop, daemon) = start(dir.path());
    let client = connect(&socket).await;
    let job = client.create_job("in-process", Priority::High).await.unwrap();
    assert_eq!(client.get_job(job).await.unwrap().state, JobState::Suspended);
    drop(client);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), daemon).await.unwrap().unwrap().unwrap();
    assert!(!socket.exists(), "the socket outlived the daemon");

    let (stop, daemon) = start(dir.path());
    let client = connect(&socket).await;
    let jobs = client.list_jobs().await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| (j.id, j.priority)).collect::<Vec<_>>(),
        [(job, Priority::High)]
    );
    drop(client);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), daemon).await.unwrap().unwrap().unwrap();
}
