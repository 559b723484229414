//! The file-consistency rule: when the remote file changes between requests (new ETag and
//! Last-Modified), bytes fetched from the old version are discarded and the file restarts from
//! zero, so the result is never a mix of two versions.

use bits_core::{Code, JobState};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_tests::fixture::{Download, foreground, new_version, throttled};

use crate::progress::FAST_SYNC;
use bits_tests::helpers::{wait_filled, wait_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_remote_file_restarts_from_zero() {
    let size = 8 << 20;
    let old = random_bytes(40, size);
    let new = random_bytes(41, size); // same size: only the validators tell the versions apart
    let of = foreground("changes", "v.bin");
    let d = Download::started(throttled(2 << 20).await, old, &FAST_SYNC, of).await;
    let (server, client, job, dest) = (&d.server, &d.client, d.job, &d.dest);
    // 1 MiB of the old version filled.
    wait_filled(client, job, 0, 1 << 20).await;
    client.suspend(job).await.unwrap();
    wait_state(client, job, JobState::Suspended).await;
    let old_etag = client.list_files(job).await.unwrap()[0].etag.clone();
    assert!(old_etag.is_some(), "the ETag was not recorded");

    server.put_file("v.bin", new_version(&new, "\"version-2\""));
    server.set_throttle(None);
    let mark = server.log_len();
    client.resume(job).await.unwrap();
    wait_state(client, job, JobState::Transferred).await;
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert!(
        sha256_hex(&std::fs::read(dest).unwrap()) == sha256_hex(&new),
        "the result is not the new version (a mix of versions?); requests after the change: {:#?}",
        server.log_since(mark)
    );
}
