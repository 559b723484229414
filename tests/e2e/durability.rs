//! Durability against the disk: a destination file system that fills up (a tmpfs the test mounts)
//! gives a transient ERROR_DISK_FULL naming the temp file without recording a byte that is not
//! there, and completes once space is freed; on start, the daemon reconciles the store with the
//! disk (a deleted or truncated temp file loses exactly the ranges it no longer holds, a temp
//! file with no job is logged and left alone).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bits_client::Client;
use bits_core::{ByteRange, Code, ErrorContext, JobId, JobState, Priority};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_testkit::server::TestServer;
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{Download, JobOf, foreground, serving, throttled};
use bits_tests::mounts::TmpfsMount;
use bits_tests::wait::{TIMEOUT, wait_for};
use http::Method;

use crate::progress::FAST_SYNC;
use bits_tests::helpers::{
    assert_normalised, overlap, range, span, total, wait_filled, wait_state,
};

/// Panics unless every filled range of `temp` holds exactly the source bytes.
fn assert_filled_bytes_match(temp: &Path, filled: &[ByteRange], remote: &[u8]) {
    let file = std::fs::File::open(temp)
        .unwrap_or_else(|e| panic!("temp file {} unreadable: {e}", temp.display()));
    for r in filled {
        let (start, end) = span(r);
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start).unwrap_or_else(|e| {
            panic!("filled range {r:?} is not in the temp file {}: {e}", temp.display())
        });
        if buf != remote[start as usize..end as usize] {
            let first_bad = buf
                .iter()
                .zip(&remote[start as usize..end as usize])
                .position(|(a, b)| a != b)
                .unwrap();
            panic!(
                "filled range {r:?} of {} differs from the source at offset {}",
                temp.display(),
                start + first_bad as u64
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_transient_with_the_temp_path_and_resume_completes_after_space_is_freed() {
    const SIZE: u64 = 16 << 20;
    const CAPACITY: u64 = 8 << 20;
    // Mounted before the daemon starts, so the daemon (and its open temp file) is gone first
    // when the test ends.
    let small = TmpfsMount::new_in(&std::env::temp_dir(), "8m");
    let remote = random_bytes(40, SIZE as usize);
    let server = serving("big.bin", remote.clone()).await;
    let mut args = vec!["--retry-delay-secs", "1"];
    args.extend(FAST_SYNC);
    let daemon = TestDaemon::start_with(&args).await;
    let client = daemon.client().await;
    let dest = small.join("big.bin");
    let job = client.create_job("full disk", Priority::Foreground).await.unwrap();
    client.add_file(job, &server.url("big.bin"), &dest).await.unwrap();
    let temp = client.list_files(job).await.unwrap()[0].temp_path.clone();
    assert_eq!(temp.parent(), Some(small.path()), "the temp file lives next to the destination");
    client.resume(job).await.unwrap();

    let info = wait_state(&client, job, JobState::TransientError).await;
    let error = info.error.expect("a TRANSIENT_ERROR job has an error object");
    assert_eq!(error.code, Code::ERROR_DISK_FULL, "{error:?}");
    assert_eq!(error.context, ErrorContext::LocalFile, "{error:?}");
    assert_eq!(error.file_index, Some(0), "{error:?}");
    assert!(
        error.description.contains(&temp.display().to_string()),
        "the description must name the temp file {}: {:?}",
        temp.display(),
        error.description
    );

    // The daemon keeps retrying (the disk stays full), and nothing it records is missing or wrong.
    wait_for("two retries that hit the full disk again", TIMEOUT, || async {
        let info = client.get_job(job).await.map_err(|e| e.to_string())?;
        assert!(
            !matches!(info.state, JobState::Error | JobState::Transferred),
            "job is {} with {:?}",
            info.state.name(),
            info.error
        );
        if info.error_count >= 3 && info.state == JobState::TransientError {
            Ok(())
        } else {
            Err(format!("{} after {} errors", info.state.name(), info.error_count))
        }
    })
    .await;
    let info = client.get_job(job).await.unwrap();
    let error = info.error.expect("still in TRANSIENT_ERROR");
    assert_eq!((error.code, error.context), (Code::ERROR_DISK_FULL, ErrorContext::LocalFile));
    let filled = client.get_filled_file_ranges(job, 0).await.unwrap();
    eprintln!("filled while the disk is full: {filled:?} ({} bytes)", total(&filled));
    assert_normalised(&filled, SIZE);
    assert!(total(&filled) > 0, "nothing was recorded before the disk filled up");
    assert!(
        total(&filled) <= CAPACITY,
        "more bytes recorded as filled ({}) than fit on the {CAPACITY}-byte file system",
        total(&filled)
    );
    assert_filled_bytes_match(&temp, &filled, &remote);
    assert!(!dest.exists(), "nothing at the destination before Complete");

    // Free space, Resume: the file completes and is byte-identical.
    small.resize("64m");
    client.resume(job).await.unwrap();
    wait_state(&client, job, JobState::Transferred).await;
    assert_eq!(client.get_filled_file_ranges(job, 0).await.unwrap(), [range(0, SIZE)]);
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    let got = std::fs::read(&dest).unwrap();
    assert_eq!(got.len() as u64, SIZE);
    assert!(sha256_hex(&got) == sha256_hex(&remote), "the completed file differs from the source");
    assert!(!temp.exists(), "the temp file was renamed into place");
}

const SIZE: u64 = 8 << 20;

/// A throttled 8 MiB download that was stalled after at least `min_filled` bytes were recorded,
/// so the filled set the store holds is exactly `filled`.
struct Stalled {
    server: TestServer,
    daemon: TestDaemon,
    client: Client,
    job: JobId,
    remote: Vec<u8>,
    dest: PathBuf,
    temp: PathBuf,
    filled: Vec<ByteRange>,
}

async fn stalled_download(seed: u64, min_filled: u64) -> Stalled {
    let remote = random_bytes(seed, SIZE as usize);
    let of = foreground("reconcile", "r.bin");
    let Download { server, daemon, client, job, dest, data: remote } =
        Download::added(throttled(1 << 20).await, remote, &FAST_SYNC, of).await;
    let temp = client.list_files(job).await.unwrap()[0].temp_path.clone();
    client.resume(job).await.unwrap();
    wait_filled(&client, job, 0, min_filled).await;
    // Starve the stream (the next 16 KiB chunk would take hours) and wait until the filled set
    // stops moving: then it is what the store holds when the daemon is killed.
    server.set_throttle(Some(1));
    let mut filled = client.get_filled_file_ranges(job, 0).await.unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now = client.get_filled_file_ranges(job, 0).await.unwrap();
        if now == filled {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the filled set keeps moving: {now:?}");
        filled = now;
    }
    assert_normalised(&filled, SIZE);
    assert!(total(&filled) < SIZE, "the download finished before it was stalled; test is void");
    assert_filled_bytes_match(&temp, &filled, &remote);
    Stalled { server, daemon, client, job, remote, dest, temp, filled }
}

/// Restarts the daemon with the server gate held and returns the filled set it reports before
/// a single byte (or even the probe) can get through; checks it does not move while the worker
/// waits at the gate.
async fn restart_gated(t: &mut Stalled) -> Vec<ByteRange> {
    t.daemon.restart().await;
    t.client = t.daemon.client().await;
    let f0 = t.client.get_filled_file_ranges(t.job, 0).await.unwrap();
    wait_for("the restarted daemon to reach the server", TIMEOUT, || async {
        if t.server.waiting_at_gate() > 0 { Ok(()) } else { Err("no request yet".to_string()) }
    })
    .await;
    assert_eq!(t.client.get_filled_file_ranges(t.job, 0).await.unwrap(), f0);
    f0
}

/// Opens the gate, lets the job finish and checks the result; returns the GETs served after
/// `mark`.
async fn finish(t: &Stalled, mark: usize) -> Vec<bits_testkit::server::LoggedRequest> {
    t.server.set_throttle(Some(16 << 20));
    t.server.release();
    wait_state(&t.client, t.job, JobState::Transferred).await;
    assert_eq!(t.client.get_filled_file_ranges(t.job, 0).await.unwrap(), [range(0, SIZE)]);
    assert_eq!(t.client.complete(t.job).await.unwrap(), Code::S_OK);
    let got = std::fs::read(&t.dest).unwrap();
    assert!(
        sha256_hex(&got) == sha256_hex(&t.remote),
        "the completed file differs from the source"
    );
    let gets: Vec<_> =
        t.server.log_since(mark).into_iter().filter(|r| r.method == Method::GET).collect();
    eprintln!("GETs after the restart: {gets:#?}");
    gets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_temp_file_resets_its_ranges_on_start() {
    let mut t = stalled_download(50, 1 << 20).await;
    eprintln!("filled before the kill: {:?}", t.filled);
    t.daemon.kill_9().await;
    t.server.hold();
    std::fs::remove_file(&t.temp).unwrap();
    let mark = t.server.log_len();

    let f0 = restart_gated(&mut t).await;
    assert_eq!(
        f0,
        Vec::<ByteRange>::new(),
        "the temp file is gone, so no range may be reported filled after the restart (before: {:?})",
        t.filled
    );
    let progress = t.client.get_progress(t.job).await.unwrap();
    assert_eq!(progress.bytes_transferred, 0, "progress must not count bytes that are gone");

    let gets = finish(&t, mark).await;
    let served: u64 = gets.iter().map(|r| r.served).sum();
    assert_eq!(served, SIZE, "the whole file is fetched again, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_temp_file_keeps_exactly_the_ranges_below_its_length() {
    let mut t = stalled_download(51, 2 << 20).await;
    let filled_end = t.filled.iter().map(|r| span(r).1).max().unwrap();
    // Inside the filled prefix, and not on any chunk or page boundary.
    let cut = t.filled[0].offset + t.filled[0].length / 2 + 12_345;
    assert!(
        span(&t.filled[0]).1 > cut,
        "cut {cut} is not inside the first filled range {:?}",
        t.filled
    );
    let want: Vec<ByteRange> = t
        .filled
        .iter()
        .filter(|r| r.offset < cut)
        .map(|r| range(r.offset, span(r).1.min(cut) - r.offset))
        .collect();
    eprintln!("filled before the kill: {:?} (end {filled_end}); cut at {cut}", t.filled);

    t.daemon.kill_9().await;
    t.server.hold();
    std::fs::OpenOptions::new().write(true).open(&t.temp).unwrap().set_len(cut).unwrap();
    let mark = t.server.log_len();

    let f0 = restart_gated(&mut t).await;
    assert_eq!(
        f0, want,
        "after truncating the temp file to {cut} bytes, the filled set must be the old one ({:?}) cut at {cut}",
        t.filled
    );
    assert_filled_bytes_match(&t.temp, &f0, &t.remote);

    let gets = finish(&t, mark).await;
    assert!(!gets.is_empty(), "no GET after the restart");
    for get in &gets {
        let (start, end) = get.served_span();
        assert_eq!(
            overlap(&f0, start, end),
            0,
            "bytes below the cut that were filled were fetched again: served [{start}, {end}), kept {f0:?}; {get:?}"
        );
        assert_eq!(get.status, 206, "a resumed download must use ranges: {get:?}");
    }
    let served: u64 = gets.iter().map(|r| r.served).sum();
    assert_eq!(served, SIZE - total(&f0), "bytes served after the restart != missing bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_temp_file_is_logged_and_left_alone_on_start() {
    let data = random_bytes(52, 10_000);
    let of =
        JobOf { display: "owner of the directory", priority: Priority::Normal, name: "real.bin" };
    let Download { server, mut daemon, client: _client, job, .. } =
        Download::added(TestServer::start().await, data, &[], of).await;

    let orphan = daemon.out_dir().join(format!(".x.bin.bitsd-{}-0.part", JobId::new_random()));
    let content = random_bytes(53, 70_000);
    std::fs::write(&orphan, &content).unwrap();
    let log_before = daemon.log().len();

    daemon.restart().await;
    let client = daemon.client().await;
    assert!(
        client.list_jobs().await.unwrap().iter().any(|j| j.id == job),
        "the real job is gone after the restart"
    );
    let orphan_text = orphan.display().to_string();
    wait_for("the orphan to be logged", Duration::from_secs(5), || async {
        let log = daemon.log();
        let new = &log[log_before.min(log.len())..];
        if new.lines().any(|l| l.contains("orphan temp file") && l.contains(&orphan_text)) {
            Ok(())
        } else {
            Err(format!("no line with \"orphan temp file\" and {orphan_text} in:\n{new}"))
        }
    })
    .await;
    let after = std::fs::read(&orphan)
        .unwrap_or_else(|e| panic!("the orphan {orphan_text} was removed or is unreadable: {e}"));
    assert!(after == content, "the orphan's content changed");
    assert!(server.log().is_empty(), "a suspended job must not touch the network");
}
