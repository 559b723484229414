//! The BITS operations on a manager over an in-memory store, without any transfer: argument
//! checks and their order, state refusals, Complete and Cancel bookkeeping, and recovery from
//! the store. Transfers are covered end to end in the workspace's `tests/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed call is a failed test

use std::path::Path;
use std::sync::Arc;

use bits_core::{ByteRange, Code, JobId, JobState, JobType, LENGTH_TO_EOF, Priority};
use bits_manager::{Caller, Manager, ManagerConfig};
use bits_store::{MemStore, Store};

/// The test's own uid as a non-admin caller: file work for a job runs as its owner, so the
/// owner must be someone who may write the test's temp directories (also when tests run as root).
fn me() -> Caller {
    Caller::user(rustix::process::geteuid().as_raw())
}

fn start(store: Arc<dyn Store>) -> Manager {
    Manager::start(store, ManagerConfig::default()).unwrap()
}

async fn new_job(m: &Manager) -> JobId {
    m.create_job(me(), "test", "", JobType::Download, Priority::Normal).await.unwrap()
}

/// A manager on a MemStore with one job holding one file from an unreachable host, saved as `f`
/// in `dir`.
async fn one_file_job(dir: &Path) -> (Manager, JobId) {
    let m = start(Arc::new(MemStore::new()));
    let id = new_job(&m).await;
    m.add_file(me(), id, "http://127.0.0.1:9/f", &dir.join("f"), None).await.unwrap();
    (m, id)
}

fn code<T: std::fmt::Debug>(r: Result<T, bits_core::BitsError>) -> Code {
    r.unwrap_err().code
}

#[tokio::test]
async fn a_new_job_is_suspended_empty_and_has_no_error() {
    let m = start(Arc::new(MemStore::new()));
    let id = new_job(&m).await;
    let job = m.get_job(me(), id).unwrap();
    assert_eq!(job.state, JobState::Suspended);
    assert_eq!(job.priority, Priority::Normal);
    assert_eq!(job.owner_uid, me().uid);
    assert_eq!((job.minimum_retry_delay_secs, job.no_progress_timeout_secs), (600, 1_209_600));
    let progress = m.get_progress(me(), id).unwrap();
    assert_eq!(
        (progress.bytes_total, progress.bytes_transferred, progress.files_total),
        (Some(0), 0, 0)
    );
    assert_eq!(code(m.get_error(me(), id)), Code::BG_E_ERROR_INFORMATION_UNAVAILABLE);
    assert_eq!(code(m.resume(me(), id).await), Code::BG_E_EMPTY);
    assert_eq!(m.get_job(me(), id).unwrap().state, JobState::Suspended);
}

#[tokio::test]
async fn create_job_checks_name_description_and_type() {
    let m = start(Arc::new(MemStore::new()));
    assert_eq!(
        code(m.create_job(me(), "", "", JobType::Download, Priority::Normal).await),
        Code::E_INVALIDARG
    );
    let long = "n".repeat(257);
    assert_eq!(
        code(m.create_job(me(), &long, "", JobType::Download, Priority::Normal).await),
        Code::E_INVALIDARG
    );
    let desc = "d".repeat(1025);
    assert_eq!(
        code(m.create_job(me(), "ok", &desc, JobType::Download, Priority::Normal).await),
        Code::BG_E_STRING_TOO_LONG
    );
    assert_eq!(
        code(m.create_job(me(), "ok", "", JobType::Upload, Priority::Normal).await),
        Code::E_NOTIMPL
    );
    assert!(m.list_jobs(me()).is_empty(), "no failed create may leave a job behind");
}

#[tokio::test]
async fn add_file_validates_in_the_spec_order() {
    let m = start(Arc::new(MemStore::new()));
    let id = new_job(&m).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let url = "http://127.0.0.1:9/f";
    assert_eq!(
        code(m.add_file(me(), JobId::new_random(), url, &dest, None).await),
        Code::BG_E_NOT_FOUND
    );
    assert_eq!(code(m.add_file(me(), id, "ftp://h/x", &dest, None).await), Code::E_INVALIDARG);
    assert_eq!(
        code(m.add_file(me(), id, url, Path::new("relative/x"), None).await),
        Code::E_INVALIDARG
    );
    let missing_dir = dir.path().join("no/such/dir/f");
    assert_eq!(
        code(m.add_file(me(), id, url, &missing_dir, None).await),
        Code::ERROR_PATH_NOT_FOUND
    );
    let overlapping = vec![ByteRange::new(0, 10), ByteRange::new(5, 10)];
    let err = m.add_file(me(), id, url, &dest, Some(overlapping)).await.unwrap_err();
    assert_eq!(err.code, Code::BG_E_OVERLAPPING_RANGES);
    assert!(err.message.contains("0:10") && err.message.contains("5:10"), "{}", err.message);
    assert_eq!(code(m.add_file(me(), id, url, &dest, Some(vec![])).await), Code::E_INVALIDARG);
    let eof_offset = vec![ByteRange::new(LENGTH_TO_EOF, 1)];
    assert_eq!(
        code(m.add_file(me(), id, url, &dest, Some(eof_offset)).await),
        Code::BG_E_INVALID_RANGE
    );
    assert_eq!(m.get_job(me(), id).unwrap().files.len(), 0);

    // Names the kernel cannot take are refused before anything is downloaded.
    let named = |name: &str| dir.path().join(name);
    for bad in [named(&"n".repeat(256)), named("a\0b"), named(&format!("{}/f", "d".repeat(300)))] {
        let err = m.add_file(me(), id, url, &bad, None).await.unwrap_err();
        assert_eq!(err.code, Code::E_INVALIDARG, "{}", err.message);
        assert!(err.message.len() < 600, "the message echoes the whole path: {}", err.message);
    }
    let err = m.add_file(me(), id, url, &named(&"n".repeat(300)), None).await.unwrap_err();
    assert!(
        err.message.contains("300 bytes") && err.message.contains("NAME_MAX"),
        "{}",
        err.message
    );
    let files = vec![
        bits_manager::NewFile {
            remote_url: url.into(),
            local_path: named("ok"),
            ranges: None,
            sha256: None,
        },
        bits_manager::NewFile {
            remote_url: url.into(),
            local_path: named("n\0ul"),
            ranges: None,
            sha256: None,
        },
    ];
    let err = m.add_files(me(), id, files).await.unwrap_err();
    assert!(err.message.contains("NUL"), "{}", err.message);
    // A path the kernel could take, whose temp file (a longer name beside it) it could not.
    let deep = (0..40).fold(dir.path().to_path_buf(), |p, _| p.join("d".repeat(99)));
    let room = 4095 - deep.as_os_str().len() - 1;
    let long = deep.join("f".repeat(room));
    assert_eq!(long.as_os_str().len(), 4095);
    let err = m.add_file(me(), id, url, &long, None).await.unwrap_err();
    assert_eq!(err.code, Code::E_INVALIDARG);
    assert!(err.message.contains("temp file"), "{}", err.message);
    // A short path whose link leads to a directory so deep that the temp file would not fit.
    let mut deep = dir.path().join("deep");
    while deep.as_os_str().len() < 4050 - 101 {
        deep.push("d".repeat(100));
    }
    deep.push("e".repeat(4050 - deep.as_os_str().len() - 1));
    std::fs::create_dir_all(&deep).unwrap();
    std::os::unix::fs::symlink(&deep, dir.path().join("link")).unwrap();
    let err = m.add_file(me(), id, url, &dir.path().join("link/f"), None).await.unwrap_err();
    assert_eq!(err.code, Code::E_INVALIDARG);
    assert!(err.message.contains("temp file"), "{}", err.message);
    assert_eq!(m.get_job(me(), id).unwrap().files.len(), 0);

    assert_eq!(m.add_file(me(), id, url, &dest, None).await.unwrap(), 0);
    assert_eq!(
        code(m.add_file(me(), id, url, &dest, None).await),
        Code::E_INVALIDARG,
        "same destination twice"
    );
    let ranges = vec![ByteRange::new(100, 100), ByteRange::new(900, 100), ByteRange::new(400, 100)];
    assert_eq!(
        m.add_file(me(), id, url, &dir.path().join("r.bin"), Some(ranges.clone())).await.unwrap(),
        1
    );
    let job = m.get_job(me(), id).unwrap();
    assert_eq!(job.files[1].ranges, ranges, "ranges are kept in caller order");
    assert_eq!(
        m.get_progress(me(), id).unwrap().bytes_total,
        None,
        "sizes are unknown until the server answers"
    );
}

#[tokio::test]
async fn final_jobs_refuse_changes_and_leave_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let (m, id) = one_file_job(dir.path()).await;
    assert_eq!(m.cancel(me(), id).await.unwrap(), Code::S_OK);
    assert!(m.list_jobs(me()).is_empty());
    assert_eq!(code(m.get_job(me(), id)), Code::BG_E_NOT_FOUND);
    assert_eq!(code(m.resume(me(), id).await), Code::BG_E_INVALID_STATE);
    assert_eq!(code(m.suspend(me(), id).await), Code::BG_E_INVALID_STATE);
    assert_eq!(code(m.cancel(me(), id).await), Code::BG_E_INVALID_STATE);
    assert_eq!(code(m.complete(me(), id).await), Code::BG_E_INVALID_STATE);
    assert_eq!(code(m.set_priority(me(), id, Priority::High).await), Code::BG_E_INVALID_STATE);
    let dest = dir.path().join("g");
    assert_eq!(
        code(m.add_file(me(), id, "http://127.0.0.1:9/g", &dest, None).await),
        Code::BG_E_INVALID_STATE
    );
}

#[tokio::test]
async fn complete_with_nothing_transferred_is_partial_and_cleans_up() {
    let m = start(Arc::new(MemStore::new()));
    let dir = tempfile::tempdir().unwrap();
    let id = new_job(&m).await;
    let dest = dir.path().join("f");
    m.add_file(me(), id, "http://127.0.0.1:9/f", &dest, None).await.unwrap();
    let temp = m.get_job(me(), id).unwrap().files[0].temp_path.clone();
    std::fs::write(&temp, b"partial").unwrap();
    assert_eq!(m.complete(me(), id).await.unwrap(), Code::BG_S_PARTIAL_COMPLETE);
    assert!(!dest.exists(), "an unfinished file never appears at its destination");
    assert!(!temp.exists(), "the unfinished file's temp file is deleted");
    assert_eq!(code(m.complete(me(), id).await), Code::BG_E_INVALID_STATE);
}

#[tokio::test]
async fn cancel_deletes_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let (m, id) = one_file_job(dir.path()).await;
    let temp = m.get_job(me(), id).unwrap().files[0].temp_path.clone();
    assert_eq!(temp.parent(), Some(dir.path()), "the temp file lives next to the destination");
    std::fs::write(&temp, b"partial").unwrap();
    m.cancel(me(), id).await.unwrap();
    assert!(!temp.exists());
}

#[tokio::test]
async fn another_user_is_refused_and_does_not_see_the_job() {
    let m = start(Arc::new(MemStore::new()));
    let id = new_job(&m).await;
    let other = Caller::user(1001);
    assert_eq!(code(m.get_job(other, id)), Code::E_ACCESSDENIED);
    assert_eq!(code(m.cancel(other, id).await), Code::E_ACCESSDENIED);
    assert!(m.list_jobs(other).is_empty());
    assert_eq!(m.list_jobs(me()).len(), 1);
}

#[tokio::test]
async fn on_demand_ranges_need_a_whole_file() {
    let m = start(Arc::new(MemStore::new()));
    let dir = tempfile::tempdir().unwrap();
    let id = new_job(&m).await;
    let url = "http://127.0.0.1:9/f";
    m.add_file(me(), id, url, &dir.path().join("w"), None).await.unwrap();
    m.add_file(me(), id, url, &dir.path().join("r"), Some(vec![ByteRange::new(0, 10)]))
        .await
        .unwrap();
    assert_eq!(
        m.request_file_ranges(me(), id, 0, &[ByteRange::new(10, 5)]).await.unwrap(),
        Code::S_OK
    );
    assert_eq!(
        code(m.request_file_ranges(me(), id, 1, &[ByteRange::new(0, 5)]).await),
        Code::BG_E_RANDOM_ACCESS_NOT_SUPPORTED
    );
    assert_eq!(code(m.request_file_ranges(me(), id, 0, &[]).await), Code::E_INVALIDARG);
    assert_eq!(
        code(m.request_file_ranges(me(), id, 7, &[ByteRange::new(0, 5)]).await),
        Code::E_INVALIDARG
    );
    assert!(m.get_filled_file_ranges(me(), id, 0).unwrap().is_empty());
}

/// RequestFileRanges holds non-admins to AddFileWithRanges' per-file limit (spec §8), both per
/// request and for the pending set repeated requests build; admins are exempt. A large
/// descending request (the order that cost a splice per range) still yields the right set.
#[tokio::test]
async fn on_demand_ranges_have_the_per_file_limit() {
    let m = start(Arc::new(MemStore::new()));
    let dir = tempfile::tempdir().unwrap();
    let id = new_job(&m).await;
    m.add_file(me(), id, "http://127.0.0.1:9/f", &dir.path().join("w"), None).await.unwrap();
    let disjoint = |from: u64, n: u64| -> Vec<ByteRange> {
        (from..from + n).rev().map(|i| ByteRange::new(i * 10, 5)).collect()
    };
    let err = m.request_file_ranges(me(), id, 0, &disjoint(0, 501)).await.unwrap_err();
    assert_eq!(err.code, Code::BG_E_TOO_MANY_RANGES_IN_FILE);
    assert!(err.message.contains("501") && err.message.contains("500"), "{}", err.message);
    assert_eq!(m.request_file_ranges(me(), id, 0, &disjoint(0, 500)).await.unwrap(), Code::S_OK);
    // Ranges already pending merge with the new ones and do not count twice...
    assert_eq!(m.request_file_ranges(me(), id, 0, &disjoint(0, 500)).await.unwrap(), Code::S_OK);
    // ...but a 501st disjoint piece does, and is refused without changing anything.
    let err = m.request_file_ranges(me(), id, 0, &disjoint(500, 1)).await.unwrap_err();
    assert_eq!(err.code, Code::BG_E_TOO_MANY_RANGES_IN_FILE);
    assert!(err.message.contains("file 0") && err.message.contains("501"), "{}", err.message);
    let pending = &m.get_job(me(), id).unwrap().files[0].requested;
    assert_eq!((pending.n_spans(), pending.total_len()), (500, 2500));

    let admin = Caller { uid: me().uid, admin: true, pid: None };
    let n = 200_000;
    assert_eq!(m.request_file_ranges(admin, id, 0, &disjoint(0, n)).await.unwrap(), Code::S_OK);
    let pending = &m.get_job(admin, id).unwrap().files[0].requested;
    assert_eq!((pending.n_spans(), pending.total_len()), (n as usize, 5 * n));
    assert!(pending.iter().enumerate().all(|(i, s)| s.start == 10 * i as u64 && s.len() == 5));
}

#[tokio::test]
async fn a_restarted_manager_shows_every_job_as_before() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let dir = tempfile::tempdir().unwrap();
    let m = start(store.clone());
    let id = new_job(&m).await;
    m.add_file(
        me(),
        id,
        "http://127.0.0.1:9/f",
        &dir.path().join("f"),
        Some(vec![ByteRange::new(5, 5)]),
    )
    .await
    .unwrap();
    m.set_priority(me(), id, Priority::Low).await.unwrap();
    let before = m.get_job(me(), id).unwrap();
    m.shutdown().await;
    drop(m);

    let m = start(store);
    assert_eq!(m.get_job(me(), id).unwrap(), before);
    assert_eq!(m.list_jobs(me()).len(), 1);
}

#[tokio::test]
async fn custom_headers_are_checked_when_set() {
    let m = start(Arc::new(MemStore::new()));
    let id = new_job(&m).await;
    let exact = format!("X-A: {}", "a".repeat(16_383 - 5));
    assert_eq!(m.set_custom_headers(me(), id, Some(exact.clone())).await.unwrap(), Code::S_OK);
    assert_eq!(m.get_job(me(), id).unwrap().custom_headers.as_deref(), Some(exact.as_str()));
    let long = format!("{exact}a");
    assert_eq!(code(m.set_custom_headers(me(), id, Some(long)).await), Code::BG_E_STRING_TOO_LONG);
    assert_eq!(
        code(m.set_custom_headers(me(), id, Some("no colon".into())).await),
        Code::E_INVALIDARG
    );
    let range = Some("Range: bytes=0-1\r\n".to_string());
    assert_eq!(
        code(m.set_custom_headers(me(), id, range).await),
        Code::E_INVALIDARG,
        "bitsd owns Range"
    );
    m.set_custom_headers(me(), id, None).await.unwrap();
    assert_eq!(m.get_job(me(), id).unwrap().custom_headers, None);
}

#[tokio::test]
async fn only_admins_list_every_users_jobs() {
    let m = start(Arc::new(MemStore::new()));
    let mine = new_job(&m).await;
    let other = Caller::user(1001);
    let theirs =
        m.create_job(other, "theirs", "", JobType::Download, Priority::Normal).await.unwrap();
    assert_eq!(code(m.list_all_jobs(me())), Code::E_ACCESSDENIED);
    let admin = Caller { uid: 4242, admin: true, pid: None };
    let all: Vec<JobId> = m.list_all_jobs(admin).unwrap().iter().map(|j| j.id).collect();
    assert_eq!(all, vec![mine, theirs], "every user's jobs, oldest first");
    assert!(m.list_jobs(admin).is_empty(), "without the flag an admin sees only their own");
}

#[tokio::test]
async fn take_ownership_is_for_admins_and_drops_custom_headers() {
    let m = start(Arc::new(MemStore::new()));
    let id = new_job(&m).await;
    m.set_custom_headers(me(), id, Some("Authorization: Bearer secret".into())).await.unwrap();
    assert_eq!(code(m.take_ownership(me(), id).await), Code::E_ACCESSDENIED, "even the owner");
    assert_eq!(code(m.take_ownership(Caller::user(1001), id).await), Code::E_ACCESSDENIED);
    // The test's own uid as an admin: it can write the (absent) temp files.
    let admin = Caller { uid: me().uid, admin: true, pid: None };
    let other_admin = Caller { uid: 4242, admin: true, pid: None };
    m.take_ownership(other_admin, id).await.unwrap();
    let job = m.get_job(other_admin, id).unwrap();
    assert_eq!(job.owner_uid, 4242);
    assert_eq!(job.custom_headers, None, "the old owner's headers stay behind");
    assert_eq!(code(m.get_job(me(), id)), Code::E_ACCESSDENIED, "the old owner lost the job");
    assert!(m.list_jobs(me()).is_empty());
    m.take_ownership(admin, id).await.unwrap();
    m.cancel(admin, id).await.unwrap();
    assert_eq!(code(m.take_ownership(admin, id).await), Code::BG_E_INVALID_STATE);
}
