//! GetProgress and GetFilledFileRanges before, during and after a download that the in-process
//! server throttles so it can be watched.

use std::time::Instant;

use bits_core::{ByteRange, Code, JobState};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_tests::fixture::{Download, foreground, throttled};
use bits_tests::wait::{POLL, TIMEOUT};

use bits_tests::helpers::{assert_normalised, covers, range, total};

/// Daemon settings that persist filled ranges often, so progress is visible at fine grain.
pub const FAST_SYNC: [&str; 4] = ["--sync-bytes", "262144", "--sync-interval-ms", "100"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_filled_ranges_during_and_after_download() {
    let size: u64 = 8 << 20;
    let remote = random_bytes(10, size as usize);
    // 8 MiB at 2 MiB/s: about 4 s
    let of = foreground("progress", "p.bin");
    let Download { server, daemon: _daemon, client, job, dest, data: remote } =
        Download::added(throttled(2 << 20).await, remote, &FAST_SYNC, of).await;

    // Before Resume: nothing is known and nothing moved.
    let before = client.get_progress(job).await.unwrap();
    assert_eq!(before.bytes_total, None, "size must be unknown (not 0) before the server is asked");
    assert_eq!(before.bytes_transferred, 0);
    assert_eq!((before.files_total, before.files_transferred), (1, 0));
    assert_eq!(before.files.len(), 1);
    assert_eq!(before.files[0].bytes_total, None);
    assert!(!before.files[0].completed);
    assert_eq!(client.get_filled_file_ranges(job, 0).await.unwrap(), Vec::<ByteRange>::new());
    assert!(server.log().is_empty(), "a suspended job must not touch the network");

    client.resume(job).await.unwrap();

    // During: sample filled / progress / filled, so progress is bracketed by two filled readings.
    let started = Instant::now();
    let mut previous: Vec<ByteRange> = Vec::new();
    let mut partial_totals = Vec::new();
    let mut saw_transferring_with_data = false;
    loop {
        assert!(
            started.elapsed() < TIMEOUT,
            "no TRANSFERRED after {TIMEOUT:?}; filled {previous:?}"
        );
        let job_info = client.get_job(job).await.unwrap();
        let first = client.get_filled_file_ranges(job, 0).await.unwrap();
        let progress = client.get_progress(job).await.unwrap();
        let second = client.get_filled_file_ranges(job, 0).await.unwrap();
        for filled in [&first, &second] {
            assert_normalised(filled, size);
            if let Some(head) = filled.first() {
                assert_eq!(head.offset, 0, "a sequential download fills from byte 0: {filled:?}");
            }
        }
        assert!(covers(&first, &previous), "filled shrank: {previous:?} then {first:?}");
        assert!(covers(&second, &first), "filled shrank: {first:?} then {second:?}");
        assert!(
            total(&first) <= progress.bytes_transferred
                && progress.bytes_transferred <= total(&second),
            "bytes_transferred {} is not the filled total (between {} and {})",
            progress.bytes_transferred,
            total(&first),
            total(&second)
        );
        if let Some(known) = progress.bytes_total {
            assert_eq!(known, size, "wrong bytes_total");
        }
        assert!(
            !matches!(job_info.state, JobState::Error | JobState::TransientError),
            "job failed: {:?}",
            job_info.error
        );
        let t = total(&second);
        if t > 0 && t < size {
            if job_info.state == JobState::Transferring {
                saw_transferring_with_data = true;
            }
            if partial_totals.last() != Some(&t) {
                partial_totals.push(t);
            }
        }
        previous = second;
        if job_info.state == JobState::Transferred {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(saw_transferring_with_data, "never saw TRANSFERRING with some bytes filled");
    assert!(
        partial_totals.len() >= 3,
        "filled ranges should grow in steps while a 4 s download runs; saw {partial_totals:?}"
    );

    // After: everything filled, progress complete, nothing renamed into place yet.
    assert_eq!(client.get_filled_file_ranges(job, 0).await.unwrap(), [range(0, size)]);
    let after = client.get_progress(job).await.unwrap();
    assert_eq!(after.bytes_total, Some(size));
    assert_eq!(after.bytes_transferred, size);
    assert_eq!((after.files_total, after.files_transferred), (1, 1));
    assert_eq!(after.files[0].bytes_total, Some(size));
    assert_eq!(after.files[0].bytes_transferred, size);
    assert!(!after.files[0].completed, "completed must stay false until Complete");

    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert!(sha256_hex(&std::fs::read(&dest).unwrap()) == sha256_hex(&remote), "content differs");
}
