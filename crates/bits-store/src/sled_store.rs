//! The [`Store`] on sled 0.34, the engine bitsd ships with. Nothing sled-specific leaves this
//! module: engine errors become [`StoreError::Io`].
//!
//! Two sled 0.34 pitfalls shape it (see the workspace notes, deps.md §6–§7):
//! - writes are durable only after a flush, so [`Store::flush`] is a synchronous `Db::flush`;
//! - dropping a `Db` does not join its flusher thread, so reopening right after (a daemon restart,
//!   a test) can fail with "could not acquire lock" for a moment. Opening retries that error, and
//!   only that error (sled reports it as `ErrorKind::Other`, so it is matched by message), for up
//!   to five seconds before reporting [`StoreError::Locked`].

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bits_core::{Job, JobFile, JobId};

use crate::guard::JobCountGuard;
use crate::keys::{
    JOB_PREFIX, JobRecord, Key, SCHEMA_KEY, decode, decode_schema, display_key, encode,
    encode_schema, file_key, file_prefix, job_key, parse_key,
};
use crate::{SCHEMA_VERSION, Store, StoreError, sort_jobs};

/// How long [`SledStore::open`] waits for a previous holder of the lock to let go.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How often sled's own flusher thread runs. It fsyncs the log every round whether or not
/// anything was written (sled 0.34 flusher.rs). Every write that matters is flushed by the
/// store's callers, so it is needed for sled's segment cleaning, and as a backstop that makes
/// any write nobody flushed durable within this interval. sled's default, 500 ms, made an idle
/// daemon flush the disk's cache twice a second.
const FLUSH_EVERY_MS: u64 = 5_000;
/// sled's in-memory page cache; its default (1 GiB) is far more than a job queue needs.
const CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// The job store in `dir/db`, a sled database.
pub struct SledStore {
    pub(crate) db: sled::Db,
    path: PathBuf,
    /// Serialises writers, so `put_file`'s existence check and `put_job`'s scan for stale file
    /// records see no interleaved write from this process.
    write_lock: Mutex<()>,
    /// Detects jobs the engine lost (see `guard.rs`).
    guard: JobCountGuard,
    /// sled's log file (`path/db`), fdatasynced after every flush: see [`Store::flush`] here.
    log: std::fs::File,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir/db`. `dir` is created with mode 0700 if missing. A
    /// new store gets the current schema version; an existing one must already have it.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with_lock_wait(dir, LOCK_WAIT)
    }

    pub(crate) fn open_with_lock_wait(dir: &Path, wait: Duration) -> Result<SledStore, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|cause| StoreError::Open { path: dir.to_path_buf(), cause })?;
        let path = dir.join("db");
        if path.exists() {
            verify_copy(dir, &path, wait)?;
        }
        let db = open_db(&path, wait, true)?;
        check_schema(&db, dir, &path)?;
        let stored = db.scan_prefix(JOB_PREFIX).keys().count() as u64;
        let guard = JobCountGuard::open(dir, &path, stored)?;
        tracing::debug!(path = %path.display(), jobs = stored, "job store opened");
        let log = std::fs::File::open(path.join("db"))
            .map_err(|e| StoreError::io("open the job store's log", e))?;
        Ok(SledStore { db, path, write_lock: Mutex::new(()), guard, log })
    }

    /// The database path (`dir/db`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_writes(&self) -> MutexGuard<'_, ()> {
        // The guard protects no data of its own, so a poisoned lock is still a valid lock.
        self.write_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `writes` (a value to insert, or `None` to remove) atomically. A single write goes
    /// to sled as a plain insert or remove, atomic by itself: a batch costs an extra log write
    /// and a wake of sled's I/O threads (sled 0.34's `apply_batch` rolls the io buffer when it
    /// pins the log), ~100 µs that every CreateJob would pay.
    fn apply(&self, mut writes: Vec<Write>, op: &'static str) -> Result<(), StoreError> {
        let written = if writes.len() == 1
            && let Some((key, value)) = writes.pop()
        {
            match value {
                Some(value) => self.db.insert(key, value).map(drop),
                None => self.db.remove(key).map(drop),
            }
        } else {
            let mut batch = sled::Batch::default();
            for (key, value) in writes {
                match value {
                    Some(value) => batch.insert(key, value),
                    None => batch.remove(key),
                }
            }
            self.db.apply_batch(batch)
        };
        written.map_err(|e| StoreError::io(op, e))
    }

    /// Keys of every file record stored for `job`.
    fn file_keys(&self, job: JobId) -> Result<Vec<sled::IVec>, StoreError> {
        self.db
            .scan_prefix(file_prefix(job))
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::io("scan the job's file records", e))
    }
}

/// One key's new value for [`SledStore::apply`]; `None` removes the key.
type Write = (Vec<u8>, Option<Vec<u8>>);

/// The records of `job`'s files from index `from` on.
fn file_writes(job: &Job, from: u32) -> Result<Vec<Write>, StoreError> {
    let mut writes = Vec::with_capacity(job.files.len().saturating_sub(from as usize));
    for (index, file) in job.files.iter().enumerate().skip(from as usize) {
        let key = file_key(job.id, index as u32);
        let value = encode(&key, file)?;
        writes.push((key, Some(value)));
    }
    Ok(writes)
}

/// sled repairs a damaged log while it opens it, so a store is first opened as a copy: if the
/// copy fails the checks (schema, job count), the real files are refused exactly as they were
/// found. The copy is small (the job queue) and lives next to the store until the next start.
fn verify_copy(dir: &Path, path: &Path, wait: Duration) -> Result<(), StoreError> {
    let copy = dir.join(VERIFY_DIR);
    if copy.exists() {
        std::fs::remove_dir_all(&copy)
            .map_err(|e| StoreError::io("remove the previous verification copy", e))?;
    }
    copy_dir(path, &copy.join("db"))
        .map_err(|e| StoreError::io("copy the store for verification", e))?;
    let checked = (|| {
        // No background flusher: nothing may write to the copy after it is dropped.
        let db = open_db(&copy.join("db"), wait, false)?;
        check_schema(&db, dir, path)?;
        let stored = db.scan_prefix(JOB_PREFIX).keys().count() as u64;
        crate::guard::check(dir, path, stored)
    })();
    let _ = std::fs::remove_dir_all(&copy);
    checked
}

/// Where [`verify_copy`] puts its copy, inside the data directory.
const VERIFY_DIR: &str = ".verify";

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Opens the sled database at `path`, retrying for up to `wait` while another handle (typically
/// the previous process, or a just-dropped `Db` whose flusher is still running) holds its lock.
pub(crate) fn open_db(path: &Path, wait: Duration, flusher: bool) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + wait;
    let mut delay = Duration::from_millis(10);
    let flush_every = if flusher { Some(FLUSH_EVERY_MS) } else { None };
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY)
            .flush_every_ms(flush_every)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(e) if e.to_string().contains("could not acquire lock") => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(StoreError::Locked { path: path.to_path_buf() });
                }
                tracing::debug!(path = %path.display(), "job store is locked, retrying");
                std::thread::sleep(delay.min(deadline - now));
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(StoreError::Open { path: path.to_path_buf(), cause: e.into() }),
        }
    }
}

/// Stamps an empty database with [`SCHEMA_VERSION`]; refuses any other version, and a database
/// with data but no version. Never changes existing data.
///
/// An empty database whose job count says it held jobs lost its log: that is damage, not a new
/// store, and it is refused before anything is written.
fn check_schema(db: &sled::Db, dir: &Path, db_path: &Path) -> Result<(), StoreError> {
    let stored = db.get(SCHEMA_KEY).map_err(|e| StoreError::io("read the schema version", e))?;
    match stored {
        Some(value) => {
            let found = decode_schema(&value)?;
            if found != SCHEMA_VERSION {
                return Err(StoreError::SchemaMismatch { found, expected: SCHEMA_VERSION });
            }
        }
        None if db.is_empty() => {
            crate::guard::check(dir, db_path, 0)?;
            db.insert(SCHEMA_KEY, &encode_schema(SCHEMA_VERSION))
                .map_err(|e| StoreError::io("write the schema version", e))?;
            db.flush().map_err(|e| StoreError::io("flush the schema version", e))?;
        }
        None => return Err(StoreError::SchemaMismatch { found: 0, expected: SCHEMA_VERSION }),
    }
    Ok(())
}

impl Store for SledStore {
    fn load_all(&self) -> Result<Vec<Job>, StoreError> {
        let mut records: BTreeMap<JobId, JobRecord> = BTreeMap::new();
        let mut files: HashMap<JobId, BTreeMap<u32, JobFile>> = HashMap::new();
        for item in self.db.iter() {
            let (key, value) = item.map_err(|e| StoreError::io("read the job store", e))?;
            match parse_key(&key) {
                Key::Schema => {}
                Key::Job(id) => {
                    let record: JobRecord = decode(&key, &value)?;
                    if record.id() != id {
                        return Err(StoreError::Corrupt {
                            key: display_key(&key),
                            reason: format!("the record is for job {}", record.id()),
                        });
                    }
                    records.insert(id, record);
                }
                Key::File(id, index) => {
                    let file: JobFile = decode(&key, &value)?;
                    files.entry(id).or_default().insert(index, file);
                }
                Key::Malformed => {
                    return Err(StoreError::Corrupt {
                        key: display_key(&key),
                        reason: "malformed key".into(),
                    });
                }
                Key::Unknown => {
                    tracing::warn!(key = %display_key(&key), "ignoring an unknown key in the job store");
                }
            }
        }

        let mut jobs = Vec::with_capacity(records.len());
        for (id, record) in records {
            let mut by_index = files.remove(&id).unwrap_or_default();
            let count = record.file_count;
            let extra = by_index.split_off(&count);
            if !extra.is_empty() {
                tracing::warn!(job = %id, count, extra = extra.len(), "ignoring file records beyond the job's file count");
            }
            if by_index.len() != count as usize {
                let missing = (0..count).find(|i| !by_index.contains_key(i)).unwrap_or(0);
                return Err(StoreError::Corrupt {
                    key: display_key(&file_key(id, missing)),
                    reason: format!("job {id} has {count} files but this file's record is missing"),
                });
            }
            jobs.push(record.into_job(by_index.into_values().collect()));
        }
        for (id, orphans) in files {
            tracing::warn!(job = %id, files = orphans.len(), "ignoring file records of a job that is not stored");
        }
        sort_jobs(&mut jobs);
        Ok(jobs)
    }

    fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        let key = job_key(job.id);
        let mut writes = vec![(key.clone(), Some(encode(&key, &JobRecord::from_job(job))?))];
        writes.extend(file_writes(job, 0)?);
        let _writing = self.lock_writes();
        let is_new = !self.db.contains_key(&key).map_err(|e| StoreError::io("look up a job", e))?;
        for key in self.file_keys(job.id)? {
            let stale = match parse_key(&key) {
                Key::File(_, index) => index as usize >= job.files.len(),
                _ => true, // a malformed key under this job's prefix
            };
            if stale {
                writes.push((key.to_vec(), None));
            }
        }
        self.apply(writes, "write a job")?;
        if is_new {
            self.guard.created();
        }
        Ok(())
    }

    fn add_files(&self, job: &Job, from: u32) -> Result<(), StoreError> {
        let key = job_key(job.id);
        let fields = encode(&key, &JobRecord::from_job(job))?;
        let files = file_writes(job, from)?;
        let _writing = self.lock_writes();
        if !self.db.contains_key(&key).map_err(|e| StoreError::io("look up a job", e))? {
            return Err(StoreError::NotFound { job: job.id, index: from });
        }
        // Files first: the fields count them, and sled recovers a prefix of its log (it stops at
        // the first torn write), so the new count never survives without its files.
        self.apply(files, "add files to a job")?;
        self.db.insert(key, fields).map_err(|e| StoreError::io("write a job", e))?;
        Ok(())
    }

    fn put_job_fields(&self, job: &Job) -> Result<(), StoreError> {
        let key = job_key(job.id);
        let value = encode(&key, &JobRecord::from_job(job))?;
        {
            let _writing = self.lock_writes();
            let stored =
                self.db.contains_key(&key).map_err(|e| StoreError::io("look up a job", e))?;
            if stored {
                self.db.insert(key, value).map_err(|e| StoreError::io("write a job", e))?;
                return Ok(());
            }
        }
        self.put_job(job)
    }

    fn put_file(&self, job: JobId, index: u32, file: &JobFile) -> Result<(), StoreError> {
        let key = file_key(job, index);
        let value = encode(&key, file)?;
        let _writing = self.lock_writes();
        // put_job and delete_job keep file records in step with their job, so the record exists
        // exactly when the job has this file.
        let exists =
            self.db.contains_key(&key).map_err(|e| StoreError::io("look up a file record", e))?;
        if !exists {
            return Err(StoreError::NotFound { job, index });
        }
        self.db.insert(key, value).map_err(|e| StoreError::io("write a file record", e))?;
        Ok(())
    }

    fn delete_job(&self, job: JobId) -> Result<(), StoreError> {
        let key = job_key(job);
        let _writing = self.lock_writes();
        let mut writes = vec![(key.clone(), None)];
        writes.extend(self.file_keys(job)?.into_iter().map(|key| (key.to_vec(), None)));
        if self.db.contains_key(&key).map_err(|e| StoreError::io("look up a job", e))? {
            self.guard.deleting()?;
        }
        self.apply(writes, "delete a job")
    }

    /// sled's flush writes its log with `sync_file_range` only (sled 0.34 on Linux, see
    /// spacejam/sled#1452): that survives a crash of this process, but not a power loss or a
    /// kernel crash — the disk's write cache is not flushed and a grown log file's new size is
    /// not recorded. The fdatasync after it makes a flush mean what callers take it to mean:
    /// a created job, a Complete's `completed` flag, a recorded range survive anything.
    fn flush(&self) -> Result<(), StoreError> {
        let covered = self.guard.pending();
        self.db.flush().map_err(|e| StoreError::io("flush the job store to disk", e))?;
        self.log.sync_data().map_err(|e| StoreError::io("sync the job store's log", e))?;
        self.guard.flushed(covered)
    }
}

impl Drop for SledStore {
    /// A clean shutdown loses nothing even if a caller forgot the last flush.
    fn drop(&mut self) {
        if let Err(e) = self.db.flush() {
            tracing::warn!(path = %self.path.display(), error = %e, "flushing the job store on close failed");
        }
    }
}
