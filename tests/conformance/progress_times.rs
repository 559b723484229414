//! Conformance cases 94–96 (spec §10 "Progress / times / persistence", §4): BG_SIZE_UNKNOWN,
//! creation / modification / transfer-completion times, and a SIGKILLed daemon resuming from its
//! last persisted checkpoint.
//!
//! Left out: case 96's HIGH_PERFORMANCE half (SetProperty(HIGH_PERFORMANCE) is `E_NOTIMPL` in
//! bitsd), case 97 (bitsd has no JobInactivityTimeout) and case 98 (bitsd has no
//! SetValidationState).

use std::time::{Duration, SystemTime};

use bits_client::Client;
use bits_core::{ByteRange, Code, JobId, JobState, Priority};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{Download, foreground, serving, throttled};
use bits_tests::wait::{TIMEOUT, wait_for};

use bits_tests::helpers::{assert_no_byte_twice, served_spans, wait_state};

/// Daemon settings that record filled ranges at fine grain, so progress is seen as it happens.
const FAST_SYNC: [&str; 4] = ["--sync-bytes", "65536", "--sync-interval-ms", "100"];

fn total(ranges: &[ByteRange]) -> u64 {
    ranges.iter().map(|r| r.length).sum()
}

/// Polls the job until `check` accepts it (returns `Some`); fails at once on ERROR.
async fn wait_job<T>(
    client: &Client,
    job: JobId,
    what: &str,
    check: impl Fn(&bits_client::JobInfo) -> Option<T>,
) -> T {
    wait_for(what, TIMEOUT, || async {
        let info = client.get_job(job).await.map_err(|e| format!("GetJob failed: {e}"))?;
        assert!(info.state != JobState::Error, "job failed: {:?}", info.error);
        check(&info).ok_or_else(|| format!("{} {:?}", info.state.name(), info.progress))
    })
    .await
}

// Case 94 (first half): before the first contact the file's BytesTotal is BG_SIZE_UNKNOWN; after
// the HEAD it is N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_bytes_total_unknown_before_first_contact_then_n() {
    const SIZE: u64 = 1000;
    let server = serving("c94.bin", random_bytes(94, SIZE as usize)).await;
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let job = client.create_job("case 94", Priority::Foreground).await.unwrap();
    client.add_file(job, &server.url("c94.bin"), &daemon.out_dir().join("c94.bin")).await.unwrap();

    let before = client.get_progress(job).await.unwrap();
    assert_eq!(before.files[0].bytes_total, None, "file size must be BG_SIZE_UNKNOWN, not 0");
    assert_eq!(before.bytes_total, None, "job total must be BG_SIZE_UNKNOWN, not 0");
    assert_eq!(client.list_files(job).await.unwrap()[0].progress.bytes_total, None);

    // 100 B/s: the HEAD answers at once, the body takes ten seconds, so "after the HEAD" is seen
    // before any byte arrives.
    server.set_throttle(Some(100));
    client.resume(job).await.unwrap();
    let progress = wait_job(&client, job, "the file size to be known", |info| {
        info.progress.files[0].bytes_total.map(|_| info.progress.clone())
    })
    .await;
    assert_eq!(progress.files[0].bytes_total, Some(SIZE));
    assert_eq!(progress.bytes_total, Some(SIZE));
    assert!(
        progress.bytes_transferred < SIZE,
        "the size must be known from the HEAD, not the body"
    );
    client.cancel(job).await.unwrap();
}

// Case 94 (second half): a two-file job whose second file is on an unreachable host → the job's
// BytesTotal is BG_SIZE_UNKNOWN although the first file's size is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_bytes_total_unknown_while_a_host_is_unreachable() {
    const SIZE: u64 = 1000;
    let server = serving("c94a.bin", random_bytes(940, SIZE as usize)).await;
    // A port nobody listens on: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let unreachable = format!("http://{closed}/c94b.bin");
    let daemon = TestDaemon::start_with(&["--retry-delay-secs", "1"]).await;
    let client = daemon.client().await;
    let job = client.create_job("case 94b", Priority::Foreground).await.unwrap();
    client.add_file(job, &server.url("c94a.bin"), &daemon.out_dir().join("a.bin")).await.unwrap();
    client.add_file(job, &unreachable, &daemon.out_dir().join("b.bin")).await.unwrap();
    client.resume(job).await.unwrap();

    let info = wait_for("the second file to fail", TIMEOUT, || async {
        let info = client.get_job(job).await.map_err(|e| e.to_string())?;
        let failed = matches!(info.state, JobState::TransientError | JobState::Error);
        if failed { Ok(info) } else { Err(format!("{} {:?}", info.state.name(), info.progress)) }
    })
    .await;
    let error = info.error.as_ref().expect("an error state carries its error");
    assert_eq!(error.file_index, Some(1), "the unreachable file failed: {error:?}");
    let progress = client.get_progress(job).await.unwrap();
    assert_eq!(progress.files[0].bytes_total, Some(SIZE));
    assert_eq!(progress.files[0].bytes_transferred, SIZE);
    assert_eq!(progress.files[1].bytes_total, None);
    assert_eq!(progress.bytes_total, None, "one file's size is unknown: job total BG_SIZE_UNKNOWN");
    assert_eq!(progress.bytes_transferred, SIZE);
    client.cancel(job).await.unwrap();
}

// Case 95 (SetPriority): ModificationTime increases after SetPriority; CreationTime never changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modification_time_increases_after_set_priority_creation_time_fixed() {
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let before_create = SystemTime::now();
    let job = client.create_job("case 95", Priority::Normal).await.unwrap();
    let after_create = SystemTime::now();
    let first = client.get_job(job).await.unwrap();
    assert!(
        before_create <= first.creation_time && first.creation_time <= after_create,
        "creation time {:?} is not when CreateJob ran",
        first.creation_time
    );
    assert!(first.modification_time >= first.creation_time);

    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(client.set_priority(job, Priority::High).await.unwrap(), Code::S_OK);
    let second = client.get_job(job).await.unwrap();
    assert!(
        second.modification_time > first.modification_time,
        "SetPriority did not advance the modification time: {:?} → {:?}",
        first.modification_time,
        second.modification_time
    );
    assert_eq!(second.creation_time, first.creation_time, "creation time changed");

    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(client.set_priority(job, Priority::Low).await.unwrap(), Code::S_OK);
    let third = client.get_job(job).await.unwrap();
    assert!(third.modification_time > second.modification_time);
    assert_eq!(third.creation_time, first.creation_time, "creation time changed");
}

// Case 95 (data progress): ModificationTime increases as bytes are transferred (no state change in
// between); CreationTime never changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modification_time_increases_as_bytes_are_transferred() {
    const SIZE: u64 = 1 << 20;
    let server = serving("c95.bin", random_bytes(95, SIZE as usize)).await;
    server.set_throttle(Some(256 << 10)); // 1 MiB at 256 KiB/s: four seconds
    let daemon = TestDaemon::start_with(&FAST_SYNC).await;
    let client = daemon.client().await;
    let job = client.create_job("case 95b", Priority::Foreground).await.unwrap();
    client.add_file(job, &server.url("c95.bin"), &daemon.out_dir().join("c95.bin")).await.unwrap();
    let created = client.get_job(job).await.unwrap().creation_time;
    client.resume(job).await.unwrap();

    let first = wait_job(&client, job, "some bytes while TRANSFERRING", |info| {
        let moving = info.state == JobState::Transferring && info.progress.bytes_transferred > 0;
        moving.then(|| info.clone())
    })
    .await;
    let second = wait_job(&client, job, "more bytes while still TRANSFERRING", |info| {
        assert_eq!(info.state, JobState::Transferring, "the job left TRANSFERRING; test is void");
        let more = info.progress.bytes_transferred > first.progress.bytes_transferred;
        more.then(|| info.clone())
    })
    .await;
    assert!(
        second.modification_time > first.modification_time,
        "bytes {} → {} left the modification time at {:?} → {:?}",
        first.progress.bytes_transferred,
        second.progress.bytes_transferred,
        first.modification_time,
        second.modification_time
    );
    assert_eq!((first.creation_time, second.creation_time), (created, created));
    client.cancel(job).await.unwrap();
}

// Case 95 (TransferCompletionTime): unset before the job is TRANSFERRED, set to the moment it
// entered TRANSFERRED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_completion_time_set_when_transferred_is_entered() {
    let server = serving("c95c.bin", random_bytes(951, 5000)).await;
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let job = client.create_job("case 95c", Priority::Foreground).await.unwrap();
    client.add_file(job, &server.url("c95c.bin"), &daemon.out_dir().join("c.bin")).await.unwrap();
    let before = client.get_job(job).await.unwrap();
    assert_eq!(before.transfer_completion_time, None, "no completion time before TRANSFERRED");

    let resumed = SystemTime::now();
    client.resume(job).await.unwrap();
    let done = wait_state(&client, job, JobState::Transferred).await;
    let seen = SystemTime::now();
    let at = done.transfer_completion_time.expect("TRANSFERRED without a completion time");
    assert!(done.modification_time >= at, "entering TRANSFERRED is a modification");
    assert!(
        resumed <= at && at <= seen,
        "completion time {at:?} not within [{resumed:?}, {seen:?}]"
    );
    assert_eq!(done.creation_time, before.creation_time, "creation time changed");
    // It stays put while the job sits in TRANSFERRED.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(client.get_job(job).await.unwrap().transfer_completion_time, Some(at));
}

// Case 96: kill -9 mid-transfer and restart → the job is still listed with the same id and an
// active state, resumes from the last persisted checkpoint (BytesTransferred after the restart ≤
// before, persisted bytes not fetched again) and the final content is correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_transfer_resumes_from_persisted_checkpoint() {
    const SIZE: u64 = 2 << 20;
    let remote = random_bytes(96, SIZE as usize);
    let of = foreground("case 96", "c96.bin");
    let Download { server, mut daemon, client, job, dest, data: remote } =
        Download::started(throttled(1 << 20).await, remote, &FAST_SYNC, of).await;
    wait_job(&client, job, "256 KiB transferred", |info| {
        (info.progress.bytes_transferred >= 256 << 10).then_some(())
    })
    .await;

    // Stall the server (the next chunk would take hours), so progress settles before the kill.
    server.set_throttle(Some(1));
    let mut last = u64::MAX;
    let mut settled = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let info = client.get_job(job).await.unwrap();
        if info.progress.bytes_transferred == last {
            settled = Some(info);
            break;
        }
        last = info.progress.bytes_transferred;
    }
    let before = settled.expect("progress never settled after the server stalled");
    assert_eq!(before.state, JobState::Transferring);
    assert!(before.progress.bytes_transferred < SIZE, "finished before the kill; test is void");

    daemon.kill_9().await;
    let served_before_kill = server.bytes_served();
    server.hold();
    server.set_throttle(None);
    daemon.restart().await;
    let client = daemon.client().await;

    let jobs = client.list_jobs().await.unwrap();
    assert!(jobs.iter().any(|j| j.id == job), "job {job} is gone after the restart: {jobs:?}");
    let after = client.get_job(job).await.unwrap();
    assert_eq!(after.id, job);
    assert_eq!(after.creation_time, before.creation_time);
    assert!(
        matches!(after.state, JobState::Queued | JobState::Connecting | JobState::Transferring),
        "an interrupted active job must stay active after a restart, but it is {}",
        after.state.name()
    );
    let checkpoint = client.get_filled_file_ranges(job, 0).await.unwrap();
    let resumed_at = after.progress.bytes_transferred;
    assert_eq!(resumed_at, total(&checkpoint));
    assert!(
        resumed_at <= before.progress.bytes_transferred,
        "BytesTransferred grew across the crash: {} before, {resumed_at} after",
        before.progress.bytes_transferred
    );
    assert!(resumed_at <= served_before_kill, "more bytes filled than the server ever sent");
    assert!(resumed_at > 0, "nothing persisted: the job restarts from zero, not a checkpoint");

    let mark = server.log_len();
    server.release();
    wait_state(&client, job, JobState::Transferred).await;
    let refetched: Vec<(u64, u64)> = served_spans(&server.log_since(mark), "c96.bin");
    for (start, end) in &refetched {
        let overlap: u64 = checkpoint
            .iter()
            .map(|r| (*end).min(r.offset + r.length).saturating_sub((*start).max(r.offset)))
            .sum();
        assert_eq!(overlap, 0, "persisted bytes fetched again: [{start}, {end}) vs {checkpoint:?}");
    }
    assert_eq!(
        refetched.iter().map(|(a, b)| b - a).sum::<u64>(),
        SIZE - resumed_at,
        "bytes fetched after the restart are not exactly the missing ones: {refetched:?}"
    );
    assert_no_byte_twice(&server.log_since(mark), "c96.bin");
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert!(sha256_hex(&std::fs::read(&dest).unwrap()) == sha256_hex(&remote), "content differs");
}
