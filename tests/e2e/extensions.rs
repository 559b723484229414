//! The bitsd extensions (SetExtensions): several connections per file (segmented download, each
//! connection claiming the next missing piece) and several files of one job at once. Both must
//! give byte-identical files, really run in parallel, and never fetch a byte twice — also across
//! a SIGKILL.

use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};

use bits_client::Client;
use bits_core::{JobId, JobState, Priority};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_testkit::server::{DEFAULT_LAST_MODIFIED, LoggedRequest, TestServer};
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::serving;
use bits_tests::wait::{TIMEOUT, wait_for};
use http::Method;

use crate::progress::FAST_SYNC;
use bits_tests::helpers::{total, wait_filled, wait_state};

const SIZE: usize = 8 << 20;

fn gets(log: &[LoggedRequest]) -> Vec<&LoggedRequest> {
    log.iter().filter(|r| r.method == Method::GET).collect()
}

/// Every served byte of `path`, asserting no byte was served twice (the served spans are
/// pairwise disjoint).
fn served_once(log: &[LoggedRequest], path: &str) -> u64 {
    let mut spans: Vec<(u64, u64)> =
        gets(log).into_iter().filter(|r| r.path == path).map(LoggedRequest::served_span).collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "bytes of {path} served twice: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    spans.iter().map(|(start, end)| end - start).sum()
}

/// Waits until at least `n` GETs are streaming at the same moment (distinct, unfinished, begun).
async fn wait_parallel(server: &TestServer, n: usize) {
    wait_for(&format!("{n} GETs streaming at once"), TIMEOUT, || async {
        let log = server.log();
        let streaming = gets(&log).iter().filter(|r| !r.finished && r.served > 0).count();
        if streaming >= n { Ok(()) } else { Err(format!("{streaming} streaming")) }
    })
    .await;
}

async fn job_with(client: &Client, connections: u32, files_at_once: u32) -> JobId {
    let job = client.create_job("extensions", Priority::Foreground).await.unwrap();
    client.set_extensions(job, Some(connections), Some(files_at_once)).await.unwrap();
    let info = client.get_job(job).await.unwrap();
    assert_eq!((info.connections_per_file, info.files_at_once), (connections, files_at_once));
    job
}

#[tokio::test]
async fn segmented_download_runs_several_connections_and_is_exact() {
    let data = random_bytes(51, SIZE);
    let server = serving("s.bin", data.clone()).await;
    server.set_throttle(Some(8 << 20)); // about a second in all, shared by the connections
    let daemon = TestDaemon::start_with(&FAST_SYNC).await;
    let client = daemon.client().await;
    let job = job_with(&client, 4, 1).await;
    let dest = daemon.out_dir().join("s.bin");
    client.add_file(job, &server.url("s.bin"), &dest).await.unwrap();
    client.resume(job).await.unwrap();
    wait_parallel(&server, 2).await;
    wait_state(&client, job, JobState::Transferred).await;
    client.complete(job).await.unwrap();
    assert_eq!(sha256_hex(&std::fs::read(&dest).unwrap()), sha256_hex(&data));
    let log = server.log();
    assert_eq!(served_once(&log, "/s.bin"), SIZE as u64, "every byte served exactly once");
    assert!(gets(&log).len() >= 4, "a segmented download makes several range requests: {log:#?}");
}

#[tokio::test]
async fn files_at_once_transfers_several_files_together() {
    let server = TestServer::start().await;
    let names: Vec<String> = (0..6).map(|i| format!("f{i}.bin")).collect();
    let datas: Vec<Vec<u8>> = (0..6).map(|i| random_bytes(60 + i, 1 << 20)).collect();
    for (name, data) in names.iter().zip(&datas) {
        server.add_file(name, data.clone());
    }
    server.set_throttle(Some(4 << 20));
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let job = job_with(&client, 1, 3).await;
    let dests: Vec<_> = names.iter().map(|n| daemon.out_dir().join(n)).collect();
    let urls: Vec<String> = names.iter().map(|n| server.url(n)).collect();
    let set: Vec<(&str, &std::path::Path)> =
        urls.iter().map(String::as_str).zip(dests.iter().map(|d| d.as_path())).collect();
    client.add_file_set(job, &set).await.unwrap();
    client.resume(job).await.unwrap();
    wait_for("GETs of different files streaming at once", TIMEOUT, || async {
        let log = server.log();
        let paths: BTreeSet<&str> = gets(&log)
            .iter()
            .filter(|r| !r.finished && r.served > 0)
            .map(|r| r.path.as_str())
            .collect();
        if paths.len() >= 2 { Ok(()) } else { Err(format!("{paths:?}")) }
    })
    .await;
    wait_state(&client, job, JobState::Transferred).await;
    client.complete(job).await.unwrap();
    let log = server.log();
    for ((name, data), dest) in names.iter().zip(&datas).zip(&dests) {
        assert_eq!(std::fs::read(dest).unwrap(), *data, "{name}");
        // Small files get their times with their one sync; Complete must still show them.
        let mtime = std::fs::metadata(dest).unwrap().modified().unwrap();
        assert_eq!(mtime, UNIX_EPOCH + Duration::from_secs(DEFAULT_LAST_MODIFIED), "{name}");
        assert_eq!(served_once(&log, &format!("/{name}")), data.len() as u64, "{name}");
        // Fresh whole files of a files-at-once job: one GET is probe and download, no HEAD.
        let requests: Vec<_> = log.iter().filter(|r| r.path == format!("/{name}")).collect();
        assert_eq!(requests.len(), 1, "{name}: {requests:?}");
        assert_eq!(requests[0].method, Method::GET);
        assert_eq!(requests[0].range.as_deref(), Some("bytes=0-"), "{name}");
    }
}

/// A small file of a files-at-once job whose write fails (its temp path is a directory) keeps
/// what the server said about it in the store, not only in memory: after a restart its size is
/// still known. Its record is otherwise written only with its first filled range.
#[tokio::test]
async fn a_small_file_whose_write_fails_keeps_its_size_across_a_restart() {
    const SMALL: usize = 64 << 10;
    let server = serving("ok.bin", random_bytes(70, SMALL)).await;
    server.add_file("bad.bin", random_bytes(71, SMALL));
    let mut daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let job = job_with(&client, 1, 2).await;
    let dests = [daemon.out_dir().join("ok.bin"), daemon.out_dir().join("bad.bin")];
    let urls = [server.url("ok.bin"), server.url("bad.bin")];
    let set = [(urls[0].as_str(), dests[0].as_path()), (urls[1].as_str(), dests[1].as_path())];
    client.add_file_set(job, &set).await.unwrap();
    let bad = client.list_files(job).await.unwrap().remove(1);
    assert_eq!(bad.remote_size, None);
    std::fs::create_dir(&bad.temp_path).unwrap();
    client.resume(job).await.unwrap();
    wait_for("the failed write to stop the job", TIMEOUT, || async {
        let state = client.get_job(job).await.unwrap().state;
        match state {
            JobState::TransientError | JobState::Error => Ok(()),
            other => Err(other.name().to_string()),
        }
    })
    .await;
    assert_eq!(client.list_files(job).await.unwrap()[1].remote_size, Some(SMALL as u64));
    // No request may change the file while the restarted daemon is looked at.
    server.hold();
    daemon.restart().await;
    let client = daemon.client().await;
    let stored = client.list_files(job).await.unwrap().remove(1);
    assert_eq!(stored.remote_size, Some(SMALL as u64), "the size reached the store: {stored:?}");
    server.release();
}

#[tokio::test]
async fn segmented_download_survives_sigkill_without_refetching() {
    let data = random_bytes(52, SIZE);
    let server = serving("k.bin", data.clone()).await;
    server.set_throttle(Some(2 << 20));
    let mut daemon = TestDaemon::start_with(&FAST_SYNC).await;
    let client = daemon.client().await;
    let job = job_with(&client, 4, 1).await;
    let dest = daemon.out_dir().join("k.bin");
    client.add_file(job, &server.url("k.bin"), &dest).await.unwrap();
    client.resume(job).await.unwrap();
    wait_filled(&client, job, 0, 1 << 20).await;
    daemon.kill_9().await;
    server.hold();
    let mark = server.log_len();
    daemon.restart().await;
    let client = daemon.client().await;
    let before = client.get_filled_file_ranges(job, 0).await.unwrap();
    assert!(total(&before) > 0, "recorded progress survives the crash");
    server.set_throttle(None);
    server.release();
    wait_state(&client, job, JobState::Transferred).await;
    client.complete(job).await.unwrap();
    assert_eq!(sha256_hex(&std::fs::read(&dest).unwrap()), sha256_hex(&data));
    let after: Vec<LoggedRequest> = server.log_since(mark);
    let refetched: u64 = gets(&after)
        .iter()
        .map(|r| {
            let (s, e) = r.served_span();
            before
                .iter()
                .map(|f| e.min(f.offset + f.length).saturating_sub(s.max(f.offset)))
                .sum::<u64>()
        })
        .sum();
    assert_eq!(refetched, 0, "filled ranges {before:?} were fetched again: {after:#?}");
    let served_after: u64 =
        gets(&after).iter().map(|r| r.served_span().1 - r.served_span().0).sum();
    assert_eq!(
        served_after,
        SIZE as u64 - total(&before),
        "exactly the missing bytes after the restart"
    );
}
