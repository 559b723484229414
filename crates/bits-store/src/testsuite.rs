//! The conformance suite every [`Store`] must pass, run against [`MemStore`] and [`SledStore`],
//! plus the tests only a persistent store can have (reopen, schema, corruption, locking).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bits_core::{
    ByteRange, Code, ErrorContext, Job, JobError, JobFile, JobId, JobState, LENGTH_TO_EOF,
    Priority, RangeSet, Validator,
};
use tempfile::TempDir;

use crate::keys::{SCHEMA_KEY, encode_schema, file_key, job_key};
use crate::sled_store::open_db;
use crate::{MemStore, SCHEMA_VERSION, SledStore, Store, StoreError};

fn file(n: u32, ranges: Vec<ByteRange>) -> JobFile {
    let mut filled = RangeSet::new();
    filled.insert(0, 10);
    filled.insert(500 + u64::from(n), 700);
    let mut requested = RangeSet::new();
    requested.insert(40, 50);
    JobFile {
        ranges,
        remote_size: Some(1000 + u64::from(n)),
        validator: Validator {
            etag: Some(format!("\"etag-{n}\"")),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
        },
        filled,
        requested,
        completed: n == 0,
        ..JobFile::new(
            format!("https://example.com/file{n}?q=1"),
            PathBuf::from(format!("/home/u/file{n}")),
            PathBuf::from(format!("/home/u/.file{n}.bitsd-x-{n}.part")),
        )
    }
}

fn job(created_secs: u64, files: Vec<JobFile>) -> Job {
    let created = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000 + created_secs, 123_456_789);
    Job {
        description: "a description".into(),
        priority: Priority::High,
        state: JobState::TransientError,
        minimum_retry_delay_secs: 60,
        no_progress_timeout_secs: 3600,
        modification_time: created + Duration::from_millis(5),
        error: Some(JobError {
            context: ErrorContext::RemoteFile,
            code: Code::Http(503),
            description: "service unavailable".into(),
            file_index: Some(1),
        }),
        error_count: 3,
        custom_headers: Some("X-Test: 1\r\n".into()),
        files,
        ..Job::new(JobId::new_random(), format!("job {created_secs} ünïcode"), 1000, created)
    }
}

/// Three files, the second with ranges in a non-sorted caller order.
fn three_file_job(created_secs: u64) -> Job {
    job(
        created_secs,
        vec![
            file(0, vec![]),
            file(
                1,
                vec![
                    ByteRange::new(900, 100),
                    ByteRange::new(100, 100),
                    ByteRange::new(400, LENGTH_TO_EOF),
                ],
            ),
            file(2, vec![ByteRange::new(5, 5)]),
        ],
    )
}

/// The contract of [`Store`]; `make` returns a fresh, empty store each call.
pub(crate) fn store_suite(make: impl Fn() -> Box<dyn Store>) {
    // Empty store.
    let store = make();
    assert!(store.load_all().unwrap().is_empty());

    // Round trip: jobs with files, filled ranges, ranges in caller order; load order is by
    // creation time whatever the insertion order.
    let a = three_file_job(10);
    let b = job(5, vec![]);
    store.put_job(&a).unwrap();
    store.put_job(&b).unwrap();
    store.flush().unwrap();
    let loaded = store.load_all().unwrap();
    assert_eq!(loaded, vec![b.clone(), a.clone()]);
    assert_eq!(loaded[1].files[1].ranges[0], ByteRange::new(900, 100));

    // put_job replaces the job's own fields.
    let mut a2 = a.clone();
    a2.state = JobState::Suspended;
    a2.error = None;
    a2.transfer_completion_time = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1));
    store.put_job(&a2).unwrap();
    assert_eq!(store.load_all().unwrap(), vec![b.clone(), a2.clone()]);

    // put_file updates exactly one file.
    let mut f1 = a2.files[1].clone();
    f1.filled.insert(100, 200);
    f1.validator.etag = None;
    store.put_file(a2.id, 1, &f1).unwrap();
    let mut expected = a2.clone();
    expected.files[1] = f1.clone();
    assert_eq!(store.load_all().unwrap(), vec![b.clone(), expected.clone()]);

    // put_job_fields changes the job's own fields and leaves its stored files alone.
    let mut fields = expected.clone();
    fields.state = JobState::Transferring;
    fields.error_count = 7;
    fields.files[0].filled.insert(0, 1); // not stored by put_job_fields
    store.put_job_fields(&fields).unwrap();
    let mut want = expected.clone();
    want.state = JobState::Transferring;
    want.error_count = 7;
    assert_eq!(store.load_all().unwrap(), vec![b.clone(), want.clone()]);
    store.put_job(&expected).unwrap();

    // put_file for an unknown job or index is refused and writes nothing.
    let unknown = JobId::new_random();
    assert!(matches!(
        store.put_file(unknown, 0, &f1),
        Err(StoreError::NotFound { job, index: 0 }) if job == unknown
    ));
    assert!(matches!(store.put_file(a2.id, 3, &f1), Err(StoreError::NotFound { index: 3, .. })));
    assert!(matches!(store.put_file(b.id, 0, &f1), Err(StoreError::NotFound { .. })));
    assert_eq!(store.load_all().unwrap(), vec![b.clone(), expected.clone()]);

    // put_job with fewer files drops the stale ones, for good.
    let mut shrunk = expected.clone();
    shrunk.files.truncate(1);
    store.put_job(&shrunk).unwrap();
    assert_eq!(store.load_all().unwrap(), vec![b.clone(), shrunk.clone()]);
    assert!(matches!(store.put_file(a2.id, 1, &f1), Err(StoreError::NotFound { index: 1, .. })));
    let mut grown = shrunk.clone();
    grown.files.push(file(7, vec![]));
    store.put_job(&grown).unwrap();
    assert_eq!(store.load_all().unwrap(), vec![b.clone(), grown.clone()]);

    // Files added to a job that had none, one and then two at a time: add_files writes the new
    // files and the fields, and leaves the earlier files as stored.
    let mut b2 = b.clone();
    b2.files = vec![file(3, vec![])];
    b2.modification_time += Duration::from_secs(1);
    store.add_files(&b2, 0).unwrap();
    assert_eq!(store.load_all().unwrap(), vec![b2.clone(), grown.clone()]);
    let mut sent = b2.clone();
    sent.files[0].filled.insert(900, 1); // not stored: file 0 was added before
    sent.files.extend([file(4, vec![]), file(5, vec![])]);
    sent.description = "two more".into();
    store.add_files(&sent, 1).unwrap();
    b2.files.extend([file(4, vec![]), file(5, vec![])]);
    b2.description = "two more".into();
    assert_eq!(store.load_all().unwrap(), vec![b2.clone(), grown.clone()]);
    store.put_file(b2.id, 1, &f1).unwrap();
    b2.files[1] = f1.clone();
    assert_eq!(store.load_all().unwrap(), vec![b2.clone(), grown.clone()]);

    // add_files to a job that is not stored is refused and writes nothing.
    let mut stranger = job(20, vec![file(8, vec![])]);
    stranger.id = unknown;
    assert!(matches!(
        store.add_files(&stranger, 0),
        Err(StoreError::NotFound { job, index: 0 }) if job == unknown
    ));
    assert_eq!(store.load_all().unwrap(), vec![b2.clone(), grown.clone()]);

    // A record encoded ahead of its write is stored as put_file would store it; a record of a
    // file the job does not have is refused.
    let mut f2 = b2.files[2].clone();
    f2.filled.insert(7000, 7100);
    let encoded = store.encode_file(b2.id, 2, &f2).unwrap();
    store.put_encoded_file(encoded).unwrap();
    b2.files[2] = f2.clone();
    assert_eq!(store.load_all().unwrap(), vec![b2.clone(), grown.clone()]);
    let beyond = store.encode_file(b2.id, 99, &f2).unwrap();
    assert!(matches!(store.put_encoded_file(beyond), Err(StoreError::NotFound { index: 99, .. })));

    // put_new_files writes records the job does not count yet: invisible until its fields
    // carry the new count, then part of the job. More than one store write's worth.
    let many: Vec<JobFile> = (0..1100).map(|n| file(n, vec![])).collect();
    let from = b2.files.len() as u32;
    store.put_new_files(b2.id, from, &many).unwrap();
    assert_eq!(store.load_all().unwrap(), vec![b2.clone(), grown.clone()]);
    b2.files.extend(many.iter().cloned());
    store.put_job_fields(&b2).unwrap();
    assert_eq!(store.load_all().unwrap(), vec![b2.clone(), grown.clone()]);
    assert!(matches!(
        store.put_new_files(unknown, 0, &many[..1]),
        Err(StoreError::NotFound { job, index: 0 }) if job == unknown
    ));

    // Delete removes one job and its files; deleting again (or an unknown job) is fine.
    store.delete_job(grown.id).unwrap();
    assert_eq!(store.load_all().unwrap(), vec![b2.clone()]);
    assert!(matches!(store.put_file(grown.id, 0, &f1), Err(StoreError::NotFound { .. })));
    store.delete_job(grown.id).unwrap();
    store.delete_job(unknown).unwrap();
    store.delete_job(b2.id).unwrap();
    store.flush().unwrap();
    assert!(store.load_all().unwrap().is_empty());

    // A job re-created under a deleted id starts clean.
    store.put_job(&shrunk).unwrap();
    assert_eq!(store.load_all().unwrap(), vec![shrunk]);
}

/// A sled store that owns its temporary directory.
struct TempSled {
    store: SledStore,
    _dir: TempDir,
}

impl Store for TempSled {
    fn load_all(&self) -> Result<Vec<Job>, StoreError> {
        self.store.load_all()
    }
    fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        self.store.put_job(job)
    }
    fn put_file(&self, job: JobId, index: u32, file: &JobFile) -> Result<(), StoreError> {
        self.store.put_file(job, index, file)
    }
    fn add_files(&self, job: &Job, from: u32) -> Result<(), StoreError> {
        self.store.add_files(job, from)
    }
    fn put_new_files(&self, job: JobId, from: u32, files: &[JobFile]) -> Result<(), StoreError> {
        self.store.put_new_files(job, from, files)
    }
    fn put_job_fields(&self, job: &Job) -> Result<(), StoreError> {
        self.store.put_job_fields(job)
    }
    fn encode_file(
        &self,
        job: JobId,
        index: u32,
        file: &JobFile,
    ) -> Result<crate::EncodedFile, StoreError> {
        self.store.encode_file(job, index, file)
    }
    fn put_encoded_file(&self, file: crate::EncodedFile) -> Result<(), StoreError> {
        self.store.put_encoded_file(file)
    }
    fn delete_job(&self, job: JobId) -> Result<(), StoreError> {
        self.store.delete_job(job)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.store.flush()
    }
}

#[test]
fn mem_store_conforms() {
    store_suite(|| Box::new(MemStore::new()));
}

#[test]
fn sled_store_conforms() {
    store_suite(|| {
        let dir = TempDir::new().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        Box::new(TempSled { store, _dir: dir })
    });
}

#[test]
fn store_is_object_safe() {
    let stores: Vec<std::sync::Arc<dyn Store>> = vec![std::sync::Arc::new(MemStore::new())];
    assert!(stores[0].load_all().unwrap().is_empty());
}

fn store_dir() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("state").join("bitsd");
    (tmp, dir)
}

/// Writes some jobs, flushes and drops the store.
fn populate(dir: &Path) -> Vec<Job> {
    let store = SledStore::open(dir).unwrap();
    let jobs = vec![three_file_job(1), job(2, vec![file(9, vec![])])];
    for job in &jobs {
        store.put_job(job).unwrap();
    }
    let mut f = jobs[0].files[2].clone();
    f.filled.insert(0, 1000);
    store.put_file(jobs[0].id, 2, &f).unwrap();
    store.flush().unwrap();
    let mut jobs = jobs;
    jobs[0].files[2] = f;
    jobs
}

#[test]
fn reopen_sees_every_flushed_write() {
    use std::os::unix::fs::PermissionsExt;
    let (_tmp, dir) = store_dir();
    let jobs = populate(&dir);
    // Reopen immediately: this races the dropped Db's flusher thread, which the retry absorbs.
    for _ in 0..3 {
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(store.load_all().unwrap(), jobs);
    }
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(dir.join("db").exists());
}

/// Opens the raw database behind a store directory, waiting out a just-dropped handle.
fn raw(dir: &Path) -> sled::Db {
    open_db(&dir.join("db"), Duration::from_secs(5), true).unwrap()
}

#[test]
fn schema_mismatch_refuses_and_keeps_data() {
    let (_tmp, dir) = store_dir();
    let jobs = populate(&dir);
    {
        let db = raw(&dir);
        db.insert(SCHEMA_KEY, &encode_schema(SCHEMA_VERSION + 1)).unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::SchemaMismatch { found: 2, expected: 1 }), "{err:?}");
    assert!(err.to_string().contains("schema version 2"), "{err}");
    {
        let db = raw(&dir);
        // The refused open changed nothing.
        assert_eq!(&*db.get(SCHEMA_KEY).unwrap().unwrap(), &encode_schema(2));
        assert!(db.get(job_key(jobs[0].id)).unwrap().is_some());
        // No version at all in a store with data is refused too.
        db.remove(SCHEMA_KEY).unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::SchemaMismatch { found: 0, expected: 1 }), "{err:?}");
    {
        let db = raw(&dir);
        assert!(db.get(SCHEMA_KEY).unwrap().is_none());
        db.insert(SCHEMA_KEY, &encode_schema(SCHEMA_VERSION)).unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(&dir).unwrap();
    assert_eq!(store.load_all().unwrap(), jobs);
}

#[test]
fn corrupt_values_are_reported_by_key() {
    let (_tmp, dir) = store_dir();
    let jobs = populate(&dir);
    let id = jobs[0].id;
    let store = SledStore::open(&dir).unwrap();

    store.with_db(|db| db.insert(file_key(id, 1), &b"{not json"[..]).unwrap());
    match store.load_all() {
        Err(StoreError::Corrupt { key, reason }) => {
            assert_eq!(key, format!("file/{id}/1"));
            assert!(!reason.is_empty());
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    store.put_job(&jobs[0]).unwrap();
    assert_eq!(store.load_all().unwrap(), jobs);

    store.with_db(|db| db.insert(job_key(id), &b"[]"[..]).unwrap());
    let err = store.load_all().unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { key, .. } if *key == format!("job/{id}")));
    assert!(err.to_string().contains(&format!("job/{id}")), "{err}");

    // A missing file record is corruption too, named by the missing key.
    store.put_job(&jobs[0]).unwrap();
    store.with_db(|db| db.remove(file_key(id, 1)).unwrap());
    let err = store.load_all().unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { key, .. } if *key == format!("file/{id}/1")),
        "{err:?}"
    );
    store.put_job(&jobs[0]).unwrap();

    // A file record whose job is missing is ignored.
    let orphan = JobId::new_random();
    store.with_db(|db| {
        db.insert(file_key(orphan, 0), serde_json::to_vec(&jobs[0].files[0]).unwrap()).unwrap()
    });
    assert_eq!(store.load_all().unwrap(), jobs);
}

#[test]
fn a_second_open_reports_locked() {
    let (_tmp, dir) = store_dir();
    let _first = SledStore::open(&dir).unwrap();
    let started = std::time::Instant::now();
    let err = SledStore::open_with_lock_wait(&dir, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(&err, StoreError::Locked { path } if *path == dir.join("db")), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(err.to_string().contains("another bitsd"), "{err}");
}

#[test]
fn open_reports_an_uncreatable_directory() {
    let tmp = TempDir::new().unwrap();
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let err = SledStore::open(&blocker.join("sub")).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
}

/// A store as issue 13 found it damaged: two jobs, each created and then given files one AddFile
/// at a time, every AddFile flushed (acknowledged to its client). Returns the jobs as
/// acknowledged; the store is closed and unlocked.
fn acknowledged_store(dir: &Path, crashed: bool) -> Vec<Job> {
    let store = SledStore::open(dir).unwrap();
    let mut jobs = Vec::new();
    for n in 0..2 {
        let mut job = job(n, vec![]);
        store.put_job(&job).unwrap();
        for index in 0..3 {
            job.files.push(file(index, vec![]));
            store.add_files(&job, index).unwrap();
            store.flush().unwrap();
        }
        jobs.push(job);
    }
    if crashed {
        // What a crash leaves behind: the files as they are now, no clean close.
        let copy = dir.with_extension("crashed");
        crate::sled_store::copy_dir(dir, &copy).unwrap();
        drop(store);
        drop(open_db(&dir.join("db"), Duration::from_secs(5), false).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::rename(&copy, dir).unwrap();
        return jobs;
    }
    drop(store);
    // Waits for the dropped store's flusher to let go: nothing writes to the log after this.
    drop(open_db(&dir.join("db"), Duration::from_secs(5), false).unwrap());
    jobs
}

/// Every way of damaging the log that issue 13 tried, each on a fresh store: the store either
/// refuses to open, naming what is missing and leaving the log as it was, or comes back with
/// every acknowledged change. Opening never hands out a store that silently lost one.
#[test]
fn a_damaged_log_is_refused_or_keeps_every_acknowledged_change() {
    damaged_logs(false);
}

#[test]
fn a_damaged_log_after_a_crash_is_refused_or_keeps_every_acknowledged_change() {
    damaged_logs(true);
}

fn damaged_logs(crashed: bool) {
    use std::os::unix::fs::FileExt;

    let used = {
        let (_tmp, dir) = store_dir();
        acknowledged_store(&dir, crashed);
        // The log is preallocated: what was written ends at its last non-zero byte.
        let log = std::fs::read(dir.join("db").join("db")).unwrap();
        log.iter().rposition(|&b| b != 0).map_or(0, |last| last as u64 + 1)
    };
    type Damage = Box<dyn Fn(&std::fs::File)>;
    let mut damages: Vec<(String, Damage)> = Vec::new();
    for n in 0..10 {
        let at = if n == 0 { 10 } else { used * n / 10 };
        let flip = move |log: &std::fs::File| {
            let mut byte = [0u8];
            log.read_exact_at(&mut byte, at).unwrap();
            log.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
        };
        damages.push((format!("byte {at} flipped"), Box::new(flip)));
    }
    for at in [0, 4096, used / 2 / 4096 * 4096] {
        let zero = move |log: &std::fs::File| log.write_all_at(&[0; 4096], at).unwrap();
        damages.push((format!("4 KiB zeroed at {at}"), Box::new(zero)));
    }
    for len in [used / 4, used / 2, used * 3 / 4, used - 100] {
        damages
            .push((format!("cut to {len} bytes"), Box::new(move |log| log.set_len(len).unwrap())));
    }

    let (mut refused, mut intact) = (0, 0);
    for (what, damage) in damages {
        let (_tmp, dir) = store_dir();
        let jobs = acknowledged_store(&dir, crashed);
        let log_path = dir.join("db").join("db");
        let log = std::fs::OpenOptions::new().read(true).write(true).open(&log_path).unwrap();
        damage(&log);
        drop(log);
        let damaged = std::fs::read(&log_path).unwrap();
        match SledStore::open(&dir) {
            Err(e) => {
                eprintln!("{what}: refused: {e}");
                assert!(
                    e.to_string().contains("damaged") || e.to_string().contains("corrupt"),
                    "{what}: {e}"
                );
                assert!(
                    std::fs::read(&log_path).unwrap() == damaged,
                    "{what}: the log was changed"
                );
                refused += 1;
            }
            Ok(store) => {
                let loaded = store.load_all();
                assert!(
                    matches!(&loaded, Ok(loaded) if *loaded == jobs) || loaded.is_err(),
                    "{what}: the store opened without acknowledged changes: {:?}",
                    loaded.map(|jobs| jobs.iter().map(|j| j.files.len()).collect::<Vec<_>>())
                );
                intact += 1;
            }
        }
    }
    eprintln!("log of {used} bytes: {refused} damages refused, {intact} harmless");
}

/// A deleted job takes its records, and their sequence numbers, with it: the delete leaves its
/// own number behind, so the mark never outruns a healthy store. And once the store has held
/// anything, a missing database is refused instead of replaced by an empty one.
#[test]
fn deletes_keep_the_mark_reachable_and_a_missing_database_is_refused() {
    let (_tmp, dir) = store_dir();
    {
        let store = SledStore::open(&dir).unwrap();
        let (a, b) = (three_file_job(1), three_file_job(2));
        store.put_job(&a).unwrap();
        store.put_job(&b).unwrap();
        store.flush().unwrap();
        store.delete_job(b.id).unwrap();
        store.flush().unwrap();
        store.delete_job(a.id).unwrap();
        store.flush().unwrap();
    }
    let mark = crate::mark::read(&dir).unwrap();
    assert_eq!(mark, 4, "two creates and two deletes");
    let store = SledStore::open(&dir).unwrap();
    assert!(store.load_all().unwrap().is_empty());
    drop(store);

    drop(open_db(&dir.join("db"), Duration::from_secs(5), false).unwrap());
    std::fs::remove_dir_all(dir.join("db")).unwrap();
    let err = SledStore::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::Missing { jobs: 0, acknowledged: 4, .. }), "{err:?}");
    assert!(!dir.join("db").exists(), "the refused start created a database");
}

/// After an engine error the next call reopens the database and goes on. A write made before
/// the failure that no flush has reported on may be gone with the old engine, so the next flush
/// says so instead of succeeding; the one after is fine, and the store reopens clean.
#[test]
fn a_failed_engine_is_reopened_and_the_flush_after_reports_unflushed_writes() {
    let (_tmp, dir) = store_dir();
    let (a, b) = (three_file_job(1), three_file_job(2));
    {
        let store = SledStore::open(&dir).unwrap();
        store.put_job(&a).unwrap();
        store.flush().unwrap();
        store.put_job(&b).unwrap(); // not flushed when the engine fails
        store.break_engine();
        let mut changed = a.files[1].clone();
        changed.filled.insert(0, 1000);
        store.put_file(a.id, 1, &changed).unwrap();
        let err = store.flush().unwrap_err();
        assert!(matches!(err, StoreError::Discarded { .. }), "{err:?}");
        store.flush().unwrap();
        assert_eq!(store.load_all().unwrap()[0].files[1], changed);

        // A failure right after a flush loses nothing unreported: the next flush succeeds.
        store.break_engine();
        store.put_job(&b).unwrap();
        store.flush().unwrap();
    }
    let store = SledStore::open(&dir).unwrap();
    assert_eq!(store.load_all().unwrap().len(), 2);
}

/// CreateJob answers before its flush: a crash in that window may lose the new job, and that
/// must not make the store look damaged (the mark covers only what flushes made durable).
#[test]
fn an_unflushed_write_lost_in_a_crash_is_not_damage() {
    let (_tmp, dir) = store_dir();
    let store = SledStore::open(&dir).unwrap();
    let (a, b) = (three_file_job(1), three_file_job(2));
    store.put_job(&a).unwrap();
    store.flush().unwrap();
    store.put_job(&b).unwrap(); // acknowledged, not flushed
    let copy = dir.with_extension("crashed");
    crate::sled_store::copy_dir(&dir, &copy).unwrap();
    drop(store);
    let store = SledStore::open(&copy).unwrap();
    let loaded = store.load_all().unwrap();
    assert!(loaded.len() <= 2 && loaded[0] == a, "{loaded:?}");
}

/// A job of more files than one store write removes is deleted whole, and file records a
/// deletion cut short by a crash left behind (no job record) are removed by the next load.
#[test]
fn deletions_in_slices_leave_nothing_behind() {
    let (_tmp, dir) = store_dir();
    let stranger = JobId::new_random();
    {
        let store = SledStore::open(&dir).unwrap();
        let big = job(1, (0..1100).map(|n| file(n, vec![])).collect());
        store.put_job(&big).unwrap();
        store.flush().unwrap();
        store.delete_job(big.id).unwrap();
        store.flush().unwrap();
        assert!(store.load_all().unwrap().is_empty());
    }
    {
        let db = raw(&dir);
        assert_eq!(
            db.iter().keys().filter(|k| k.as_ref().unwrap().starts_with(b"file/")).count(),
            0
        );
        for index in 0..3 {
            let key = file_key(stranger, index);
            db.insert(&key, crate::keys::encode(&key, &file(index, vec![])).unwrap()).unwrap();
        }
        db.flush().unwrap();
    }
    {
        let store = SledStore::open(&dir).unwrap();
        assert!(store.load_all().unwrap().is_empty());
        store.flush().unwrap();
    }
    let db = raw(&dir);
    assert!(db.get(file_key(stranger, 0)).unwrap().is_none(), "the orphan records stay");
}
