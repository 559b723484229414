//! Issue 16 item 5: a remote name that redirects to a signed URL valid for a few requests (an S3
//! presigned URL, a CDN token). A GET the expired target refuses (403) sends the daemon back to
//! the remote name for a fresh target, once per failure, before the error counts; a target that
//! refuses again at once is the job's error. Run as a user would: `bitsctl download` with two
//! ranges, each a GET of its own, so the second one meets the expired token. The rules in virtual
//! time: crates/bits-manager/tests/faults.rs.

use bits_testkit::data::random_bytes;
use bits_testkit::faults::{FaultServer, fault_log};
use bits_tests::daemon::TestDaemon;

const FILE: &str = "big.bin";
/// Two ranges of 1.5 MiB (each more than a multi-range piece, so a GET each) of a 4 MiB file.
const RANGES: [(usize, usize); 2] = [(0, 3 << 19), (2 << 20, 3 << 19)];

/// A fault server with the 4 MiB file behind `/signed`, whose tokens serve `uses` requests.
async fn signed(seed: u64, uses: u32) -> (FaultServer, Vec<u8>) {
    let server = FaultServer::start().await;
    let data = random_bytes(seed, 4 << 20);
    server.add_file(FILE, data.clone());
    server.sign("signed", FILE, uses);
    (server, data)
}

/// `bitsctl download URL DEST --range …` for both ranges.
async fn download(
    daemon: &TestDaemon,
    url: &str,
    dest: &std::path::Path,
) -> bits_tests::daemon::CtlOutput {
    let ranges: Vec<String> = RANGES.iter().map(|(o, l)| format!("{o}:{l}")).collect();
    let mut args = vec!["download", url, dest.to_str().unwrap()];
    for range in &ranges {
        args.extend(["--range", range.as_str()]);
    }
    daemon.bitsctl(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_signed_target_is_followed_afresh_and_the_download_completes() {
    let daemon = TestDaemon::start().await;
    // Each token serves the HEAD and one GET: the second range's GET meets an expired token.
    let (server, data) = signed(161, 2).await;
    let dest = daemon.out_dir().join(FILE);
    let done = download(&daemon, &server.url("signed"), &dest).await;
    let log = fault_log(&server.log());
    assert!(done.status.success(), "{done}\n{log}");
    let want: Vec<u8> = RANGES.iter().flat_map(|&(o, l)| data[o..o + l].to_vec()).collect();
    assert!(std::fs::read(&dest).unwrap() == want, "the file differs\n{log}");
    let refused: Vec<_> = server.log().into_iter().filter(|r| r.status == 403).collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert_eq!(refused[0].path, "/signed~1");
    // The refused range came from the second token, which the remote name gave afresh.
    let again = server
        .log()
        .into_iter()
        .find(|r| r.seq > refused[0].seq && r.method == http::Method::GET)
        .unwrap_or_else(|| panic!("no GET after the 403\n{log}"));
    assert_eq!((again.path.as_str(), again.range_start()), ("/signed~2", Some(2 << 20)), "{log}");
    assert!(
        daemon
            .log()
            .contains("the redirect target refused the request; following the remote name again"),
        "{}",
        daemon.log_tail(30)
    );

    // Tokens good for one request: the fresh one is refused too, and that refusal is the error.
    let (server, _) = signed(162, 1).await;
    let done = download(&daemon, &server.url("signed"), &daemon.out_dir().join("b.bin")).await;
    let log = fault_log(&server.log());
    assert_eq!(done.status.code(), Some(1), "{done}\n{log}");
    assert!(done.stderr.contains("BG_E_HTTP_ERROR_403"), "{done}");
    let follows = server.log().iter().filter(|r| r.path == "/signed").count();
    assert_eq!(follows, 2, "the remote name is followed once more, not again\n{log}");
}
