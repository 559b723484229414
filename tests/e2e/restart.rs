//! The daemon dies (SIGKILL) or is stopped (SIGTERM) mid-download and is started again on the same
//! data dir: jobs, files and filled ranges survive, the download completes correctly, and not one
//! filled byte is fetched again.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use bits_client::FileInfo;
use bits_core::{ByteRange, Code, JobState, Priority};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{Download, foreground, new_job, serving, throttled};
use bits_tests::wait::{TIMEOUT, wait_for};
use http::Method;

use crate::progress::FAST_SYNC;
use bits_tests::helpers::{
    assert_normalised, covers, overlap, range, span, total, wait_filled, wait_state,
};

const SIZE: u64 = 8 << 20;

/// The parts of a file that no download progress may change.
fn static_fields(file: &FileInfo) -> impl PartialEq + std::fmt::Debug {
    (
        file.index,
        file.remote_url.clone(),
        file.local_path.clone(),
        file.ranges.clone(),
        file.temp_path.clone(),
    )
}

/// A throttled 8 MiB download in progress.
type InFlight = Download;

/// Starts a throttled 8 MiB download and waits until at least 1 MiB is durably filled.
async fn download_in_flight(seed: u64) -> InFlight {
    let remote = random_bytes(seed, SIZE as usize);
    let of = foreground("restart", "k.bin");
    // 8 MiB at 1 MiB/s
    let t = Download::started(throttled(1 << 20).await, remote, &FAST_SYNC, of).await;
    wait_filled(&t.client, t.job, 0, 1 << 20).await;
    t
}

/// After a restart with the server gate held: checks what survived and returns the filled set F0.
async fn check_survivors(
    t: &InFlight,
    files_before: &[FileInfo],
    filled_before: &[ByteRange],
) -> Vec<ByteRange> {
    let (server, client, job, remote) = (&t.server, &t.client, t.job, &t.data);
    let jobs = client.list_jobs().await.unwrap();
    assert!(jobs.iter().any(|j| j.id == job), "job {job} is gone after the restart");
    let info = client.get_job(job).await.unwrap();
    assert_eq!(info.id, job);
    assert!(
        !matches!(info.state, JobState::Error | JobState::Suspended | JobState::Transferred)
            && !info.state.is_final(),
        "an interrupted active job must carry on after a restart, but it is {}",
        info.state.name()
    );
    let files_after = client.list_files(job).await.unwrap();
    assert_eq!(files_after.len(), files_before.len());
    for (a, b) in files_before.iter().zip(&files_after) {
        assert_eq!(static_fields(a), static_fields(b), "file changed across the restart");
        assert_eq!(b.remote_size, Some(SIZE));
        assert_eq!(a.etag, b.etag, "validator lost across the restart");
    }

    let f0 = client.get_filled_file_ranges(job, 0).await.unwrap();
    assert_normalised(&f0, SIZE);
    assert!(!f0.is_empty(), "nothing survived the restart");
    assert!(
        covers(&f0, filled_before),
        "bytes reported filled before the restart were lost: before {filled_before:?}, after {f0:?}"
    );
    assert!(total(&f0) < SIZE, "the download finished before it was interrupted; test is void");
    // What the daemon calls filled is really there, with the right content, in the temp file.
    let temp = std::fs::File::open(&files_after[0].temp_path).unwrap_or_else(|e| {
        panic!("temp file {} unreadable: {e}", files_after[0].temp_path.display())
    });
    for r in &f0 {
        let (start, end) = span(r);
        let mut buf = vec![0u8; (end - start) as usize];
        temp.read_exact_at(&mut buf, start).unwrap();
        assert!(buf == remote[start as usize..end as usize], "temp file bytes {r:?} are wrong");
    }

    // While the gate holds, no byte can flow, so the filled set cannot move.
    wait_for("the restarted daemon to reach the server", TIMEOUT, || async {
        if server.waiting_at_gate() > 0 { Ok(()) } else { Err("no request yet".to_string()) }
    })
    .await;
    assert_eq!(client.get_filled_file_ranges(job, 0).await.unwrap(), f0);
    f0
}

/// Finishes the download after the gate opens and checks that exactly the missing bytes were
/// fetched after `mark`.
async fn finish_without_refetch(t: &InFlight, mark: usize, f0: &[ByteRange], etag: Option<&str>) {
    let (server, client, job, remote) = (&t.server, &t.client, t.job, &t.data);
    server.set_throttle(Some(8 << 20));
    server.release();
    wait_state(client, job, JobState::Transferred).await;
    assert_eq!(client.get_filled_file_ranges(job, 0).await.unwrap(), [range(0, SIZE)]);
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert!(sha256_hex(&std::fs::read(&t.dest).unwrap()) == sha256_hex(remote), "content differs");

    let gets: Vec<_> =
        server.log_since(mark).into_iter().filter(|r| r.method == Method::GET).collect();
    eprintln!("filled at restart: {f0:?}\nGETs after the restart: {gets:#?}");
    assert!(!gets.is_empty(), "no GET after the restart");
    for get in &gets {
        let (start, end) = get.served_span();
        assert_eq!(
            overlap(f0, start, end),
            0,
            "refetched filled bytes: served [{start}, {end}) overlaps {f0:?}; request {get:?}"
        );
        assert_eq!(get.status, 206, "a resumed download must use ranges: {get:?}");
        assert!(
            get.if_range.is_some() && get.if_range.as_deref() == etag,
            "a resumed request must carry If-Range with the recorded validator {etag:?}: {get:?}"
        );
    }
    let served: u64 = gets.iter().map(|r| r.served).sum();
    assert_eq!(
        served,
        SIZE - total(f0),
        "bytes served after the restart != missing bytes; {gets:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_download_resumes_without_refetching() {
    let mut t = download_in_flight(20).await;
    let job = t.job;
    let job_before = t.client.get_job(job).await.unwrap();
    let files_before = t.client.list_files(job).await.unwrap();
    let filled_before = t.client.get_filled_file_ranges(job, 0).await.unwrap();

    t.daemon.kill_9().await;
    t.server.hold();
    let served_before_kill = t.server.bytes_served();
    assert!(served_before_kill >= total(&filled_before), "filled bytes that were never served");
    t.daemon.restart().await;
    t.client = t.daemon.client().await;
    let job_after = t.client.get_job(job).await.unwrap();
    assert_eq!(
        (&job_after.display_name, job_after.priority, job_after.creation_time),
        (&job_before.display_name, job_before.priority, job_before.creation_time)
    );
    let f0 = check_survivors(&t, &files_before, &filled_before).await;
    let mark = t.server.log_len();
    finish_without_refetch(&t, mark, &f0, files_before[0].etag.as_deref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_download_exits_cleanly_and_resumes() {
    let mut t = download_in_flight(21).await;
    let files_before = t.client.list_files(t.job).await.unwrap();
    let filled_before = t.client.get_filled_file_ranges(t.job, 0).await.unwrap();

    let status = t.daemon.terminate_within(Duration::from_secs(5)).await;
    assert!(status.success(), "bitsd exited with {status} on SIGTERM");
    t.server.hold();
    t.daemon.restart().await;
    t.client = t.daemon.client().await;
    let f0 = check_survivors(&t, &files_before, &filled_before).await;
    let mark = t.server.log_len();
    finish_without_refetch(&t, mark, &f0, files_before[0].etag.as_deref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_job_survives_a_clean_restart() {
    let server = serving("s.bin", random_bytes(22, 5000)).await;
    let mut daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let files = [(server.url("s.bin"), daemon.out_dir().join("a.bin"))];
    let job = new_job(&client, "survivor", Priority::Low, &files).await;
    client
        .add_file_with_ranges(
            job,
            &server.url("s.bin"),
            &daemon.out_dir().join("b.bin"),
            &[range(10, 20), range(0, 5)],
        )
        .await
        .unwrap();
    let job_before = client.get_job(job).await.unwrap();
    let files_before = client.list_files(job).await.unwrap();
    assert_eq!(job_before.state, JobState::Suspended, "new jobs start SUSPENDED");

    let status = daemon.terminate_within(Duration::from_secs(5)).await;
    assert!(status.success(), "bitsd exited with {status} on SIGTERM");
    daemon.restart().await;
    let client = daemon.client().await;

    let jobs = client.list_jobs().await.unwrap();
    let after = jobs.iter().find(|j| j.id == job).unwrap_or_else(|| panic!("job gone: {jobs:?}"));
    assert_eq!(after.state, JobState::Suspended);
    assert_eq!(
        (&after.display_name, after.priority, after.creation_time, after.owner_uid),
        (
            &job_before.display_name,
            job_before.priority,
            job_before.creation_time,
            job_before.owner_uid
        )
    );
    assert_eq!(client.list_files(job).await.unwrap(), files_before, "files changed");
    assert!(server.log().is_empty(), "a suspended job must not touch the network");
}

/// A client that connects and never says a word (any local user can) must not hold up SIGTERM:
/// the graceful gRPC shutdown gets a deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_does_not_block_sigterm() {
    let mut daemon = TestDaemon::start().await;
    let _silent = std::os::unix::net::UnixStream::connect(daemon.socket()).unwrap();
    // A client mid-call on an idle stream too: a WatchJob subscription stays open.
    let client = daemon.client().await;
    let job = client.create_job("watched", Priority::Normal).await.unwrap();
    let _events = client.watch_job(job, None).await.unwrap();
    let status = daemon.terminate_within(Duration::from_secs(10)).await;
    assert!(status.success(), "bitsd exited with {status} on SIGTERM");
}
