//! How long the largest requests an admin can send (within gRPC's 4 MB message limit) keep other
//! callers waiting for the job table. Prints numbers and asserts nothing about time; run it in
//! release mode on a quiet machine:
//!
//! `cargo test --release -p bits-manager --test lock_hold -- --ignored --nocapture`
//!
//! A thread calls GetProgress on a job of its own in a loop while each request runs; the longest
//! such call is the longest the request held the table lock (plus scheduling noise).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bits_core::{ByteRange, JobId, JobType, Priority};
use bits_manager::{Caller, Manager, ManagerConfig, NewFile};
use bits_store::SledStore;

fn admin() -> Caller {
    Caller { uid: rustix::process::geteuid().as_raw(), admin: true, pid: None }
}

fn user() -> Caller {
    Caller::user(rustix::process::geteuid().as_raw())
}

async fn new_job(m: &Manager) -> JobId {
    m.create_job(admin(), "bench", "", JobType::Download, Priority::Normal).await.unwrap()
}

/// Runs `request` while another thread measures how long a GetProgress call waits; prints the
/// request's own time and the longest wait.
async fn measure<F: std::future::Future<Output = ()>>(m: &Manager, what: &str, request: F) {
    let probe = new_job(m).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (m, stop) = (m.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut worst, mut calls) = (Duration::ZERO, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                m.get_progress(admin(), probe).unwrap();
                worst = worst.max(t.elapsed());
                calls += 1;
            }
            (worst, calls)
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    let t = Instant::now();
    request.await;
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (worst, calls) = watcher.join().unwrap();
    println!(
        "{what:<60} call {:>8.1} ms   longest table wait {:>7.2} ms ({calls} probes)",
        took.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3
    );
}

/// How long RequestFileRanges of `ranges` for file 0 of `id`, by `caller`, holds the lock.
async fn request_ranges(
    m: &Manager,
    caller: Caller,
    id: JobId,
    ranges: Vec<ByteRange>,
    label: &str,
) {
    measure(m, label, async {
        m.request_file_ranges(caller, id, 0, &ranges).await.unwrap();
    })
    .await;
}

/// How long one AddFileSet of `files` into a new job, by `caller`, holds the lock; the job.
async fn add_file_set(m: &Manager, caller: Caller, files: Vec<NewFile>, label: &str) -> JobId {
    let id = new_job(m).await;
    measure(m, label, async {
        m.add_files(caller, id, files).await.unwrap();
    })
    .await;
    id
}

/// `n` files of an AddFileSet from an unreachable host, saved as `{prefix}{i}`.
fn file_set(n: usize, prefix: &Path) -> Vec<NewFile> {
    let prefix = prefix.to_str().unwrap();
    (0..n)
        .map(|i| NewFile {
            remote_url: format!("http://127.0.0.1:9/f{i}"),
            local_path: PathBuf::from(format!("{prefix}{i}")),
            ranges: None,
            sha256: None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints numbers, run it in release mode"]
async fn largest_requests_hold_the_table_lock_briefly() {
    let data = tempfile::tempdir().unwrap();
    let m =
        Manager::start(Arc::new(SledStore::open(data.path()).unwrap()), ManagerConfig::default())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = "http://127.0.0.1:9/f";
    let descending = |n: u64, from: u64| -> Vec<ByteRange> {
        (0..n).rev().map(|i| ByteRange::new(from + i * 10, 5)).collect()
    };

    // The noise floor: nothing holds the lock but the prober itself.
    measure(&m, "baseline: no request, 50 ms", tokio::time::sleep(Duration::from_millis(50))).await;

    // The most a non-admin may send: 500 ranges, 200 files.
    let id = new_job(&m).await;
    m.add_file(user(), id, url, &dir.path().join("user-on-demand"), None).await.unwrap();
    let ranges = descending(500, 0);
    request_ranges(&m, user(), id, ranges.clone(), "user: RequestFileRanges 500 descending").await;
    measure(&m, "user: AddFileWithRanges 500 ranges", async {
        m.add_file(user(), id, url, &dir.path().join("user-ranged"), Some(ranges.clone()))
            .await
            .unwrap();
    })
    .await;
    add_file_set(
        &m,
        user(),
        file_set(200, &dir.path().join("user-f")),
        "user: AddFileSet 200 files",
    )
    .await;

    // The worst case, for an admin: 400,000 descending ranges (3.2 MB on the wire).
    let id = new_job(&m).await;
    m.add_file(admin(), id, url, &dir.path().join("on-demand"), None).await.unwrap();
    request_ranges(&m, admin(), id, descending(400_000, 0), "RequestFileRanges 400k descending")
        .await;
    let interleaved = descending(400_000, 5);
    let label = "RequestFileRanges 400k descending onto 400k pending";
    request_ranges(&m, admin(), id, interleaved, label).await;

    let id = new_job(&m).await;
    let ranges = descending(400_000, 0);
    measure(&m, "AddFileWithRanges 400k ranges", async {
        m.add_file(admin(), id, url, &dir.path().join("ranged"), Some(ranges)).await.unwrap();
    })
    .await;

    // A FileSpec of a short URL and path is about 45 bytes: ~90,000 fit in 4 MB.
    let id =
        add_file_set(&m, admin(), file_set(90_000, &dir.path().join("f")), "AddFileSet 90k files")
            .await;
    measure(&m, "AddFile to that job", async {
        m.add_file(admin(), id, url, &dir.path().join("one-more"), None).await.unwrap();
    })
    .await;
}
