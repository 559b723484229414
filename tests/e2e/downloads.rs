//! Whole-file and ranged downloads from a real nginx: `bitsctl download` and the gRPC calls, with
//! the result checked byte for byte.

use std::path::Path;
use std::time::{Duration, SystemTime};

use bits_core::{ByteRange, Code, JobState, LENGTH_TO_EOF, Priority};
use bits_testkit::data::{random_bytes, sha256_file, write_random_file};
use bits_tests::daemon::TestDaemon;
use bits_tests::nginx::Nginx;

use bits_tests::helpers::{entries, range, wait_state};

/// 2019-05-06T07:08:09Z: the source files' mtime, hence nginx's Last-Modified.
const SOURCE_MTIME: u64 = 1_557_126_489;

fn set_mtime(path: &Path, secs: u64) {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(time).unwrap();
}

/// Serves `data` as `/NAME` from a fresh nginx root.
fn nginx_with(name: &str, data: &[u8]) -> (tempfile::TempDir, Nginx) {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join(name);
    std::fs::write(&path, data).unwrap();
    set_mtime(&path, SOURCE_MTIME);
    let nginx = Nginx::start(root.path());
    (root, nginx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitsctl_download_whole_file_from_nginx() {
    let root = tempfile::tempdir().unwrap();
    let source = root.path().join("big.bin");
    let size = 32 << 20;
    let expected = write_random_file(&source, 1, size).unwrap();
    set_mtime(&source, SOURCE_MTIME);
    let nginx = Nginx::start(root.path());
    let daemon = TestDaemon::start().await;
    let dest = daemon.out_dir().join("big.bin");

    let out = daemon
        .bitsctl_timeout(
            &["download", &nginx.url("big.bin"), dest.to_str().unwrap()],
            Duration::from_secs(120),
        )
        .await;
    assert!(out.status.success(), "bitsctl download failed: {out}");

    assert_eq!(std::fs::metadata(&dest).unwrap().len(), size);
    assert_eq!(sha256_file(&dest).unwrap(), expected, "downloaded content differs");
    assert_eq!(entries(&daemon.out_dir()), ["big.bin"], "a temp file was left behind");
    let mtime = std::fs::metadata(&dest).unwrap().modified().unwrap();
    assert_eq!(
        mtime,
        SystemTime::UNIX_EPOCH + Duration::from_secs(SOURCE_MTIME),
        "the file time is not the server's Last-Modified"
    );
    // Every byte came from the server exactly once (the access log has `METHOD URI "RANGE"
    // STATUS BODY_BYTES` lines; nginx writes a line when its request is done).
    let log = nginx.access_log();
    let fetched: u64 = log
        .lines()
        .filter(|l| l.starts_with("GET "))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(fetched, size, "body bytes sent by nginx != file size; access log:\n{log}");
    // The one-shot command completed the job: nothing is left in the queue in a live state.
    let client = daemon.client().await;
    for job in client.list_jobs().await.unwrap() {
        assert!(
            matches!(job.state, JobState::Acknowledged),
            "job {} left in {}",
            job.id,
            job.state.name()
        );
    }
}

/// Downloads `ranges` of a `size`-byte nginx file over gRPC and returns the local file.
async fn download_ranges(size: usize, ranges: &[ByteRange], seed: u64) -> (Vec<u8>, Vec<u8>) {
    let remote = random_bytes(seed, size);
    let (_root, nginx) = nginx_with("r.bin", &remote);
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let dest = daemon.out_dir().join("r.bin");

    let job = client.create_job("ranges", Priority::Normal).await.unwrap();
    let index = client.add_file_with_ranges(job, &nginx.url("r.bin"), &dest, ranges).await.unwrap();
    assert_eq!(index, 0);
    let files = client.list_files(job).await.unwrap();
    assert_eq!(files[0].ranges, ranges, "ListFiles must keep the ranges in caller order");
    client.resume(job).await.unwrap();
    let done = wait_state(&client, job, JobState::Transferred).await;
    assert!(!dest.exists(), "nothing may appear at the destination before Complete");

    let wanted: u64 =
        ranges.iter().map(|r| if r.is_to_eof() { size as u64 - r.offset } else { r.length }).sum();
    assert_eq!(done.progress.bytes_total, Some(wanted));
    assert_eq!(done.progress.bytes_transferred, wanted);
    assert_eq!((done.progress.files_total, done.progress.files_transferred), (1, 1));

    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    let local = std::fs::read(&dest).unwrap();
    assert_eq!(
        std::fs::read_dir(daemon.out_dir()).unwrap().count(),
        1,
        "a temp file was left behind"
    );
    (remote, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ranged_file_is_the_ranges_in_caller_order() {
    let ranges = [range(100, 100), range(900, 100), range(400, 100)];
    let (remote, local) = download_ranges(1500, &ranges, 2).await;
    let expected = [&remote[100..200], &remote[900..1000], &remote[400..500]].concat();
    assert_eq!(local.len(), 300);
    assert!(
        local == expected,
        "local file is not remote[100..200] ‖ remote[900..1000] ‖ remote[400..500]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ranged_file_with_an_eof_range() {
    let ranges = [range(24, 17), range(111, LENGTH_TO_EOF), range(83, 7)];
    let (remote, local) = download_ranges(1000, &ranges, 3).await;
    let expected = [&remote[24..41], &remote[111..], &remote[83..90]].concat();
    assert_eq!(local.len(), 17 + 889 + 7);
    assert!(local == expected, "local file is not remote[24..41] ‖ remote[111..] ‖ remote[83..90]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitsctl_download_with_ranges() {
    let remote = random_bytes(4, 2000);
    let (_root, nginx) = nginx_with("r.bin", &remote);
    let daemon = TestDaemon::start().await;
    let dest = daemon.out_dir().join("r.bin");
    let out = daemon
        .bitsctl(&[
            "download",
            &nginx.url("r.bin"),
            dest.to_str().unwrap(),
            "--range",
            "100:100",
            "--range",
            "900:100",
        ])
        .await;
    assert!(out.status.success(), "bitsctl download --range failed: {out}");
    let local = std::fs::read(&dest).unwrap();
    assert!(
        local == [&remote[100..200], &remote[900..1000]].concat(),
        "local file ({} bytes) is not remote[100..200] ‖ remote[900..1000]",
        local.len()
    );
    assert_eq!(entries(&daemon.out_dir()), ["r.bin"], "a temp file was left behind");
}

/// Many small ranges go to nginx in multi-range requests (64 per request), not one request each,
/// and the local file is still their caller-order concatenation.
#[tokio::test]
async fn many_small_ranges_use_multi_range_requests() {
    let root = tempfile::tempdir().unwrap();
    let size = 4 << 20;
    std::fs::write(root.path().join("m.bin"), random_bytes(77, size)).unwrap();
    let source = std::fs::read(root.path().join("m.bin")).unwrap();
    let nginx = Nginx::start(root.path());
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    // 100 scattered 4 KiB ranges, given in descending order.
    let ranges: Vec<ByteRange> = (0..100u64).rev().map(|i| range(i * 40_000 + 123, 4096)).collect();
    let job = client.create_job("multi", Priority::Normal).await.unwrap();
    let dest = daemon.out_dir().join("m.bin");
    client.add_file_with_ranges(job, &nginx.url("m.bin"), &dest, &ranges).await.unwrap();
    client.resume(job).await.unwrap();
    wait_state(&client, job, JobState::Transferred).await;
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    let expected: Vec<u8> = ranges
        .iter()
        .flat_map(|r| source[r.offset as usize..(r.offset + r.length) as usize].to_vec())
        .collect();
    assert_eq!(std::fs::read(&dest).unwrap(), expected);
    let gets = nginx.access_log().lines().filter(|l| l.contains("GET /m.bin")).count();
    assert!(
        gets <= 2,
        "100 ranges should take 2 multi-range requests, took {gets}:\n{}",
        nginx.access_log()
    );
}
