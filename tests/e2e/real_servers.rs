//! Servers nobody here wrote (issue 16, items 1–4), each reproducing what once failed, with
//! `bitsctl download` against the real daemon and the result checked byte for byte:
//!
//! | server                                   | answer                                    | now                  |
//! |------------------------------------------|-------------------------------------------|----------------------|
//! | lighttpd, 25 and then 12 ranges          | the first 10 parts of a multi-range GET   | parts kept, the rest asked again; later requests ask 10 |
//! | Apache, an empty file                    | HEAD without Content-Length               | GET bytes=0- probes: 0 bytes, at any priority |
//! | in-process, HEAD answered 403, 405, 501  | (S3 presigned GET URLs answer 403)        | GET bytes=0- probes and streams the file: one GET |
//! | Apache `AddEncoding gzip .gz`, a .tar.gz | `Content-Encoding: gzip` on HEAD and ranges | the stored bytes, never decoded, whole or in ranges |
//! | Python `http.server`, FOREGROUND, a crash mid-body | 200 and the whole file to the resumed GET | the file restarts from zero (was BG_E_INSUFFICIENT_RANGE_SUPPORT) |
//!
//! The refusals that stay (a gzip label or body the probe did not see) are in `faults.rs`.

use std::time::{Duration, Instant, SystemTime};

use bits_core::{JobState, Priority};
use bits_testkit::data::{random_bytes, sha256_file};
use bits_testkit::faults::{Fault, FaultServer};
use bits_tests::daemon::{CtlOutput, TestDaemon};
use bits_tests::fixture::new_job;
use bits_tests::helpers::{entries, wait_state};
use bits_tests::real_servers::{Kind, RealServer};
use bits_tests::wait::TIMEOUT;
use http::Method;

/// A root holding each `(name, bytes)`, served by `kind`. The files are dated a day back: Apache
/// makes the validators of a file changed within the last second weak, and answers `If-Range`
/// with them by sending the whole file.
fn serving(kind: Kind, files: &[(&str, &[u8])]) -> (tempfile::TempDir, RealServer) {
    let root = tempfile::tempdir().unwrap();
    let yesterday = SystemTime::now() - Duration::from_secs(86_400);
    for (name, data) in files {
        std::fs::write(root.path().join(name), data).unwrap();
        let file = std::fs::File::options().write(true).open(root.path().join(name)).unwrap();
        file.set_modified(yesterday).unwrap();
    }
    let server = RealServer::start(kind, root.path());
    (root, server)
}

/// `bitsctl download URL OUT/NAME` with `extra` arguments; the path it saved to.
async fn download(
    daemon: &TestDaemon,
    url: &str,
    name: &str,
    extra: &[&str],
) -> (CtlOutput, std::path::PathBuf) {
    let dest = daemon.out_dir().join(name);
    let mut args = vec!["download", url, dest.to_str().unwrap()];
    args.extend_from_slice(extra);
    (daemon.bitsctl(&args).await, dest)
}

/// `count` ranges of 10 bytes, `stride` apart, as `--range OFFSET:10` arguments, and the bytes
/// of `data` they make, concatenated.
fn ranges_of(data: &[u8], count: usize, stride: usize) -> (Vec<String>, Vec<u8>) {
    let mut args = Vec::new();
    let mut expected = Vec::new();
    for i in 0..count {
        args.extend(["--range".to_string(), format!("{}:10", i * stride)]);
        expected.extend_from_slice(&data[i * stride..i * stride + 10]);
    }
    (args, expected)
}

/// How many ranges each `Range` header lists.
fn counts(ranges: &[String]) -> Vec<usize> {
    ranges.iter().map(|r| if r == "-" { 0 } else { r.matches(',').count() + 1 }).collect()
}

/// lighttpd answers a request for more than 10 ranges with the first 10 parts (it used to put the
/// job in ERROR: "server did not return requested range"). The parts that came are kept, the
/// rest asked again, and the daemon remembers the origin's 10: 25 ranges take requests of 25, 10
/// and 5; a later job's 12 ranges from the same server take 10 and 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lighttpd_returns_ten_parts_and_the_rest_is_asked_again() {
    let data = random_bytes(161, 100_000);
    let other = random_bytes(162, 100_000);
    let (_root, mut lighttpd) = serving(Kind::Lighttpd, &[("f.bin", &data), ("g.bin", &other)]);
    let daemon = TestDaemon::start().await;

    let (ranges, expected) = ranges_of(&data, 25, 4000);
    let extra: Vec<&str> = ranges.iter().map(String::as_str).collect();
    let (out, dest) = download(&daemon, &lighttpd.url("f.bin"), "f.bin", &extra).await;
    assert!(out.status.success(), "{out}\n{}", lighttpd.access_log());
    assert!(std::fs::read(&dest).unwrap() == expected, "the 25 ranges differ");

    let (ranges, expected) = ranges_of(&other, 12, 8000);
    let extra: Vec<&str> = ranges.iter().map(String::as_str).collect();
    let (out, dest) = download(&daemon, &lighttpd.url("g.bin"), "g.bin", &extra).await;
    assert!(out.status.success(), "{out}");
    assert!(std::fs::read(&dest).unwrap() == expected, "the 12 ranges differ");

    lighttpd.stop();
    let asked = lighttpd.ranges_asked("f.bin");
    assert_eq!(counts(&asked), [25, 10, 5], "ranges per GET:\n{}", lighttpd.access_log());
    assert!(asked[1].starts_with("bytes=40000-40009,"), "the left-out ranges come next: {asked:?}");
    let asked = lighttpd.ranges_asked("g.bin");
    assert_eq!(
        counts(&asked),
        [10, 2],
        "the origin's limit was not kept:\n{}",
        lighttpd.access_log()
    );
    assert_eq!(entries(&daemon.out_dir()), ["f.bin", "g.bin"], "a temp file was left behind");
}

/// Apache's HEAD of an empty file has no Content-Length (its GET has `Content-Length: 0`); this
/// failed with BG_E_MISSING_FILE_SIZE at any priority. Now `GET bytes=0-` probes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_empty_file_without_a_head_size_downloads() {
    let (_root, apache) = serving(Kind::Apache, &[("empty.bin", b"")]);
    let daemon = TestDaemon::start().await;
    for (name, priority) in [("fg.bin", "foreground"), ("normal.bin", "normal"), ("low.bin", "low")]
    {
        let (out, dest) =
            download(&daemon, &apache.url("empty.bin"), name, &["--priority", priority]).await;
        assert!(out.status.success(), "{priority}: {out}\n{}", apache.access_log());
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), 0, "{priority}");
    }
    let log = apache.access_log();
    assert_eq!(log.matches("HEAD /empty.bin \"-\" 200").count(), 3, "{log}");
    assert_eq!(log.matches("GET /empty.bin \"bytes=0-\" 200").count(), 3, "{log}");
    assert_eq!(entries(&daemon.out_dir()), ["fg.bin", "low.bin", "normal.bin"]);
}

/// A server that refuses HEAD (S3 presigned GET URLs answer 403; others 405 or 501) failed the
/// job with BG_E_HTTP_ERROR_403. Now `GET bytes=0-` probes the file, and the same GET streams
/// it: one HEAD and one GET per download, the file byte for byte, for a background job too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_refused_probes_with_the_get_that_streams_the_file() {
    let server = FaultServer::start().await;
    let daemon = TestDaemon::start().await;
    for (seed, status) in [(163, 403), (164, 405), (165, 501)] {
        let name = format!("s{status}.bin");
        let data = random_bytes(seed, 3 << 20);
        server.add_file(&name, data.clone());
        server.always(&name, Some(Method::HEAD), Fault::Status(status));
        let (out, dest) =
            download(&daemon, &server.url(&name), &name, &["--priority", "normal"]).await;
        assert!(out.status.success(), "{status}: {out}");
        assert!(std::fs::read(&dest).unwrap() == data, "{status}: the file differs");
        let seen: Vec<_> = server
            .log()
            .into_iter()
            .filter(|r| r.path.trim_start_matches('/') == name)
            .map(|r| (r.method, r.range))
            .collect();
        assert_eq!(
            seen,
            [(Method::HEAD, None), (Method::GET, Some("bytes=0-".to_string()))],
            "{status}"
        );
    }
}

/// Apache labels a stored `.tar.gz` `Content-Encoding: gzip` (`AddEncoding gzip .gz`) on HEAD
/// and on every range; the job sat in TRANSIENT_ERROR for 14 days. The bytes of that
/// representation are the file: kept as they are (byte-identical to the file on the server,
/// never decoded), whole, in ranges of the encoded form, and in a multi-range answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_gzip_label_on_a_stored_tar_gz_keeps_its_bytes() {
    let data = random_bytes(166, 2 << 20);
    let (root, apache) = serving(Kind::Apache, &[("a.tar.gz", &data)]);
    let daemon = TestDaemon::start().await;
    let url = apache.url("a.tar.gz");
    for (name, priority) in [("fg.tar.gz", "foreground"), ("bg.tar.gz", "normal")] {
        let (out, dest) = download(&daemon, &url, name, &["--priority", priority]).await;
        assert!(out.status.success(), "{priority}: {out}\n{}", apache.access_log());
        assert_eq!(
            sha256_file(&dest).unwrap(),
            sha256_file(&root.path().join("a.tar.gz")).unwrap(),
            "{priority}: not the stored bytes"
        );
    }
    let (ranges, expected) = ranges_of(&data, 5, 100_000);
    let mut extra: Vec<&str> = ranges.iter().map(String::as_str).collect();
    extra.extend(["--range", "1048576:eof"]);
    let (out, dest) = download(&daemon, &url, "r.tar.gz", &extra).await;
    assert!(out.status.success(), "{out}\n{}", apache.access_log());
    let expected = [expected.as_slice(), &data[1 << 20..]].concat();
    assert!(std::fs::read(&dest).unwrap() == expected, "the ranges are not the encoded bytes");
    let asked = apache.ranges_asked("a.tar.gz");
    assert!(counts(&asked).iter().any(|&n| n > 1), "no multi-range request: {asked:?}");
    assert!(apache.access_log().lines().all(|l| !l.contains(" 416 ")), "{}", apache.access_log());
}

/// Issue 16 item 6 against the server that showed it: Python's `http.server` ignores Range, so a
/// FOREGROUND download killed mid-body gets the whole file again in answer to its resumed GET.
/// That used to fail the job with BG_E_INSUFFICIENT_RANGE_SUPPORT; the file now restarts from
/// zero, says so in the log, and completes byte for byte. A sync every 8 KiB records the first
/// bytes early, so the kill lands with almost all of the file still to come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_server_foreground_download_restarts_from_zero_after_a_crash() {
    const SIZE: usize = 32 << 20;
    let data = random_bytes(167, SIZE);
    let (_root, python) = serving(Kind::Python, &[("big.bin", &data)]);
    let mut daemon = TestDaemon::start_with(&["--sync-bytes", "8192"]).await;
    let client = daemon.client().await;
    let dest = daemon.out_dir().join("big.bin");
    let files = [(python.url("big.bin"), dest.clone())];
    let job = new_job(&client, "no ranges", Priority::Foreground, &files).await;
    client.resume(job).await.unwrap();
    // Polled every millisecond (not wait_filled's 50 ms): on loopback the file takes well under
    // a second, and the kill must land while it is still coming.
    let deadline = Instant::now() + TIMEOUT;
    let recorded = loop {
        let filled = client.get_filled_file_ranges(job, 0).await.unwrap();
        let recorded: u64 = filled.iter().map(|r| r.length).sum();
        if recorded > 0 {
            break recorded;
        }
        assert!(Instant::now() < deadline, "nothing recorded within {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert!(
        recorded < SIZE as u64,
        "the download finished before the kill ({recorded} bytes); nothing was interrupted"
    );
    eprintln!("killing bitsd with {recorded} of {SIZE} bytes recorded");
    daemon.kill_9().await;
    daemon.restart().await;
    let client = daemon.client().await;
    wait_state(&client, job, JobState::Transferred).await;
    client.complete(job).await.unwrap();
    assert_eq!(sha256_file(&dest).unwrap(), bits_testkit::data::sha256_hex(&data));
    let log = daemon.log();
    assert!(
        log.contains("the server ignored Range and sent the whole file to a resumed request"),
        "no restart from zero in the daemon's log:\n{log}"
    );
    // The first GET, the resumed one its whole-file 200 refused, and the restart from zero.
    let gets = python.access_log().lines().filter(|l| l.contains("\"GET /big.bin ")).count();
    assert!(gets >= 3, "{gets} GETs:\n{}", python.access_log());
}
