//! The setup most e2e and conformance tests begin with: a server holding the test's files, a fresh
//! daemon, a client, and a job that downloads from the one into the other's out dir. One name for
//! it, so that a test reads as what it checks after the setup.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bits_client::Client;
use bits_core::{JobId, JobState, Priority};
use bits_testkit::faults::FaultServer;
use bits_testkit::server::{ServedFile, TestServer};

use crate::daemon::TestDaemon;
use crate::helpers::wait_state;

/// A server a job can download from: the in-process file server and the fault server alike.
pub trait Origin {
    /// The URL of `path` on this server.
    fn url(&self, path: &str) -> String;
    /// Serves `data` at `path`.
    fn add_file(&self, path: &str, data: Vec<u8>);
}

impl Origin for TestServer {
    fn url(&self, path: &str) -> String {
        TestServer::url(self, path)
    }
    fn add_file(&self, path: &str, data: Vec<u8>) {
        TestServer::add_file(self, path, data);
    }
}

impl Origin for FaultServer {
    fn url(&self, path: &str) -> String {
        FaultServer::url(self, path)
    }
    fn add_file(&self, path: &str, data: Vec<u8>) {
        FaultServer::add_file(self, path, data);
    }
}

/// An in-process file server with `data` at `/name`.
pub async fn serving(name: &str, data: Vec<u8>) -> TestServer {
    let server = TestServer::start().await;
    server.add_file(name, data);
    server
}

/// A new version of a served file: `data` with the ETag `etag` and a Last-Modified other than the
/// server's default, so that both validators tell it from the first version.
pub fn new_version(data: &[u8], etag: &str) -> ServedFile {
    ServedFile {
        data: data.to_vec().into(),
        etag: etag.to_string(),
        last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}

/// An in-process file server that sends at most `bytes_per_sec`: a download that is still running
/// when the test looks.
pub async fn throttled(bytes_per_sec: u64) -> TestServer {
    let server = TestServer::start().await;
    server.set_throttle(Some(bytes_per_sec));
    server
}

/// A fresh daemon (started with `daemon_args`), its client and a new job `display` of NORMAL
/// priority: the start of the tests of calls on one job.
pub async fn fresh_job(daemon_args: &[&str], display: &str) -> (TestDaemon, Client, JobId) {
    let daemon = TestDaemon::start_with(daemon_args).await;
    let client = daemon.client().await;
    let job = client.create_job(display, Priority::Normal).await.unwrap();
    (daemon, client, job)
}

/// A job `display` of `priority` holding one file per `(url, local path)`, in that order.
pub async fn new_job<U, P>(
    client: &Client,
    display: &str,
    priority: Priority,
    files: &[(U, P)],
) -> JobId
where
    U: AsRef<str>,
    P: AsRef<Path>,
{
    let job = client.create_job(display, priority).await.unwrap();
    for (url, local) in files {
        client.add_file(job, url.as_ref(), local.as_ref()).await.unwrap();
    }
    job
}

/// Which job a [`Download`] makes: its display name and priority, and the server path it fetches,
/// saved under the same name in the daemon's out dir.
#[derive(Clone, Copy)]
pub struct JobOf<'a> {
    pub display: &'a str,
    pub priority: Priority,
    pub name: &'a str,
}

/// A job `display` of FOREGROUND priority for the server's `/name`.
pub fn foreground<'a>(display: &'a str, name: &'a str) -> JobOf<'a> {
    JobOf { display, priority: Priority::Foreground, name }
}

/// One file served by `server` and a fresh daemon (started with the test's flags) downloading it
/// in one job.
pub struct Download<S = TestServer> {
    pub server: S,
    pub daemon: TestDaemon,
    pub client: Client,
    pub job: JobId,
    /// Where Complete puts the file.
    pub dest: PathBuf,
    /// The file's bytes on the server, to compare the result with.
    pub data: Vec<u8>,
}

impl<S: Origin> Download<S> {
    /// Serves `data` as `of.name`, starts the daemon with `daemon_args` and adds the job `of`
    /// (not resumed yet). The server is the test's, so that it can be throttled or held first.
    pub async fn added(server: S, data: Vec<u8>, daemon_args: &[&str], of: JobOf<'_>) -> Self {
        server.add_file(of.name, data.clone());
        let daemon = TestDaemon::start_with(daemon_args).await;
        let client = daemon.client().await;
        let dest = daemon.out_dir().join(of.name);
        let job = new_job(&client, of.display, of.priority, &[(server.url(of.name), &dest)]).await;
        Download { server, daemon, client, job, dest, data }
    }

    /// [`Download::added`], then Resume.
    pub async fn started(server: S, data: Vec<u8>, daemon_args: &[&str], of: JobOf<'_>) -> Self {
        let download = Self::added(server, data, daemon_args, of).await;
        download.client.resume(download.job).await.unwrap();
        download
    }

    /// [`Download::started`], then waits for TRANSFERRED (failing at once on ERROR): "download
    /// this file through a fresh daemon".
    pub async fn transferred(
        server: S,
        data: Vec<u8>,
        daemon_args: &[&str],
        of: JobOf<'_>,
    ) -> Self {
        let download = Self::started(server, data, daemon_args, of).await;
        wait_state(&download.client, download.job, JobState::Transferred).await;
        download
    }
}
