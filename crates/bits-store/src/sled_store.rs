//! The [`Store`] on sled 0.34, the engine bitsd ships with. Nothing sled-specific leaves this
//! module: engine errors become [`StoreError::Io`].
//!
//! Three sled 0.34 pitfalls shape it (see the workspace notes, deps.md §6–§7):
//! - writes are durable only after a flush, so [`Store::flush`] is a synchronous `Db::flush`;
//! - dropping a `Db` does not join its flusher thread, so reopening right after (a daemon restart,
//!   a test) can fail with "could not acquire lock" for a moment. Opening retries that error, and
//!   only that error (sled reports it as `ErrorKind::Other`, so it is matched by message), for up
//!   to five seconds before reporting [`StoreError::Locked`];
//! - once one log write failed (a full disk), a `Db` fails every later call. So after an engine
//!   error the next call reopens the database, which recovers its log up to the last flush: the
//!   store works again as soon as the disk has room.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bits_core::{Job, JobFile, JobId};

use crate::guard::JobCountGuard;
use crate::keys::{
    JOB_PREFIX, JobRecord, Key, LAST_SEQ_KEY, SCHEMA_KEY, decode, decode_schema, display_key,
    encode, encode_schema, file_key, file_prefix, job_key, parse_key, seq_of, stamp,
};
use crate::mark::AckMark;
use crate::{Encoded, EncodedFile, SCHEMA_VERSION, Store, StoreError, sort_jobs};

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
    /// The open database; `None` after a reopen failed (the next call tries again).
    engine: RwLock<Option<Engine>>,
    path: PathBuf,
    /// Serialises writers, so `put_file`'s existence check and `put_job`'s scan for stale file
    /// records see no interleaved write from this process, and sequence numbers follow the
    /// order of the writes. Taken before `engine`, never after.
    write_lock: Mutex<()>,
    /// The sequence number of the newest write applied to the engine (see `mark.rs`).
    applied: AtomicU64,
    /// The newest sequence number a flush has tried to make durable, whether or not it
    /// succeeded: every writer up to there has heard how its flush went.
    attempted: AtomicU64,
    /// An engine call failed; the next call reopens the database first.
    failed: AtomicBool,
    /// The error of the last failed engine call (kind and message), for [`StoreError::Discarded`].
    cause: Mutex<Option<std::io::Error>>,
    /// Why the last reopen happened, when it dropped writes whose callers have not flushed
    /// yet: the next flush reports it instead of success.
    discarded: Mutex<Option<std::io::Error>>,
    /// Detects jobs the engine lost (see `guard.rs`).
    guard: JobCountGuard,
    /// Detects acknowledged changes the engine lost (see `mark.rs`).
    mark: AckMark,
}

/// An open sled database and its log file.
struct Engine {
    db: sled::Db,
    /// sled's log file (`path/db`), fdatasynced after every flush: see [`Store::flush`] here.
    log: std::fs::File,
}

impl Engine {
    fn open(path: &Path, wait: Duration) -> Result<Engine, StoreError> {
        let db = open_db(path, wait, true)?;
        let log = std::fs::File::open(path.join("db"))
            .map_err(|e| StoreError::io("open the job store's log", e))?;
        Ok(Engine { db, log })
    }
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
        // What the verified copy holds is what the database holds: nothing wrote to it since.
        let Survey { jobs: stored, newest: found } = if path.exists() {
            verify_copy(dir, &path, wait)?
        } else {
            refuse_if_missing(dir, &path)?;
            Survey::default()
        };
        let engine = Engine::open(&path, wait)?;
        check_schema(&engine.db, dir, &path)?;
        let guard = JobCountGuard::open(dir, &path, stored)?;
        let mark = AckMark::open(dir, crate::mark::check(dir, &path, found)?)?;
        sync_entries(dir, &path)?;
        tracing::debug!(path = %path.display(), jobs = stored, seq = found, "job store opened");
        Ok(SledStore {
            engine: RwLock::new(Some(engine)),
            path,
            write_lock: Mutex::new(()),
            applied: AtomicU64::new(found),
            attempted: AtomicU64::new(found),
            failed: AtomicBool::new(false),
            cause: Mutex::new(None),
            discarded: Mutex::new(None),
            guard,
            mark,
        })
    }

    /// The database path (`dir/db`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_writes(&self) -> MutexGuard<'_, ()> {
        // The guard protects no data of its own, so a poisoned lock is still a valid lock.
        self.write_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the open engine, reopened first if a call failed since. The caller holds the
    /// write lock (`_writing`), so no write runs while the engine is swapped.
    fn engine<T>(
        &self,
        _writing: &MutexGuard<'_, ()>,
        f: impl FnOnce(&Engine) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.failed.load(Ordering::SeqCst) {
            self.reopen()?;
        }
        self.current(f)
    }

    /// Runs `f` on the open engine as it is (no reopen), holding it for reading.
    fn current<T>(
        &self,
        f: impl FnOnce(&Engine) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let engine = self.engine.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        match engine.as_ref() {
            Some(engine) => f(engine),
            None => Err(StoreError::io(
                "use the job store",
                std::io::Error::other("the store could not be reopened after a failed write"),
            )),
        }
    }

    /// An engine error: the next call reopens the database.
    fn failure(&self, op: &'static str, e: impl Into<std::io::Error>) -> StoreError {
        let cause: std::io::Error = e.into();
        *self.cause.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(std::io::Error::new(cause.kind(), cause.to_string()));
        self.failed.store(true, Ordering::SeqCst);
        StoreError::Io { op, cause }
    }

    /// Replaces the failed engine with a fresh open of the same database. Its log comes back up
    /// to the last flush, which the mark checks (without it the store stays closed and the next
    /// call tries again). Writes since then that no failed flush covered are gone, and their
    /// writers have not heard so: the next flush fails ([`StoreError::Discarded`]).
    fn reopen(&self) -> Result<(), StoreError> {
        let mut engine = self.engine.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !self.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        // The old database must let go of its lock before it can be opened again.
        drop(engine.take());
        let opened = Engine::open(&self.path, LOCK_WAIT).and_then(|fresh| {
            let found = Survey::of(&fresh.db)?.newest;
            let acknowledged = self.mark.recorded();
            if found < acknowledged {
                return Err(StoreError::LostChanges {
                    path: self.path.clone(),
                    found,
                    acknowledged,
                });
            }
            Ok((fresh, found))
        });
        let (fresh, found) = opened.inspect_err(|e| {
            tracing::error!(path = %self.path.display(), error = %e, "reopening the job store failed; trying again at the next call");
        })?;
        let applied = self.applied.load(Ordering::SeqCst);
        let cause = self.cause.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if applied > self.attempted.load(Ordering::SeqCst) {
            let cause = cause.unwrap_or_else(|| std::io::Error::other("a write failed"));
            *self.discarded.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(cause);
        }
        // Jobs written since the last flush are gone with the old engine, or (if sled's own
        // flusher got to them) stored but not counted, which only weakens the count's check.
        self.guard.forget_pending();
        self.applied.store(found, Ordering::SeqCst);
        self.attempted.store(found, Ordering::SeqCst);
        *engine = Some(fresh);
        self.failed.store(false, Ordering::SeqCst);
        tracing::warn!(path = %self.path.display(), seq = found, "job store reopened after a failed write");
        Ok(())
    }

    /// Applies `writes` (a value to insert, or `None` to remove) atomically, as the next
    /// sequence number, which it stamps into every record and, when a key is removed, into
    /// `meta/last_seq`. A single insert goes to sled as a plain insert, atomic by itself: a batch
    /// costs an extra log write and a wake of sled's I/O threads (sled 0.34's `apply_batch` rolls
    /// the io buffer when it pins the log), ~100 µs that every CreateJob would pay.
    fn apply(
        &self,
        writing: &MutexGuard<'_, ()>,
        mut writes: Vec<Write>,
        op: &'static str,
    ) -> Result<(), StoreError> {
        let seq = self.applied.load(Ordering::SeqCst) + 1;
        let written = if let [(_, Some(_))] = writes.as_slice()
            && let Some((key, Some(mut value))) = writes.pop()
        {
            stamp(&mut value, seq);
            self.engine(writing, |engine| {
                engine.db.insert(key, value).map_err(|e| self.failure(op, e))
            })
            .map(drop)
        } else {
            let mut batch = sled::Batch::default();
            let mut removes = false;
            for (key, value) in writes {
                match value {
                    Some(mut value) => {
                        stamp(&mut value, seq);
                        batch.insert(key, value);
                    }
                    None => {
                        removes = true;
                        batch.remove(key);
                    }
                }
            }
            if removes {
                batch.insert(LAST_SEQ_KEY, &seq.to_be_bytes());
            }
            self.engine(writing, |engine| {
                engine.db.apply_batch(batch).map_err(|e| self.failure(op, e))
            })
        };
        written?;
        self.applied.store(seq, Ordering::SeqCst);
        Ok(())
    }

    /// Writes an encoded file record, which must exist (see [`Store::put_file`]).
    fn put_file_bytes(
        &self,
        job: JobId,
        index: u32,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        let writing = self.lock_writes();
        // put_job and delete_job keep file records in step with their job, so the record exists
        // exactly when the job has this file.
        if !self.contains(&writing, &key)? {
            return Err(StoreError::NotFound { job, index });
        }
        self.apply(&writing, vec![(key, Some(value))], "write a file record")
    }

    /// Removes `keys`, a slice of them per store write (see `delete_job`).
    fn remove_in_slices(&self, keys: &[sled::IVec]) -> Result<(), StoreError> {
        for slice in keys.chunks(NEW_FILES_SLICE) {
            let writing = self.lock_writes();
            let writes = slice.iter().map(|key| (key.to_vec(), None)).collect();
            self.apply(&writing, writes, "delete a job's file records")?;
        }
        Ok(())
    }

    /// Whether `key` is stored.
    fn contains(&self, writing: &MutexGuard<'_, ()>, key: &[u8]) -> Result<bool, StoreError> {
        self.engine(writing, |engine| {
            engine.db.contains_key(key).map_err(|e| self.failure("look up a record", e))
        })
    }

    /// Keys of every file record stored for `job`.
    fn file_keys(
        &self,
        writing: &MutexGuard<'_, ()>,
        job: JobId,
    ) -> Result<Vec<sled::IVec>, StoreError> {
        self.engine(writing, |engine| {
            engine
                .db
                .scan_prefix(file_prefix(job))
                .keys()
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.failure("scan the job's file records", e))
        })
    }

    /// Makes the store behave as after a failed engine call.
    #[cfg(test)]
    pub(crate) fn break_engine(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Runs `f` on the database (for tests that damage it on purpose).
    #[cfg(test)]
    pub(crate) fn with_db<T>(&self, f: impl FnOnce(&sled::Db) -> T) -> T {
        let writing = self.lock_writes();
        self.engine(&writing, |engine| Ok(f(&engine.db))).expect("the test's store is open")
    }
}

/// What the guards check a database against, from one pass over it.
#[derive(Debug, Default)]
struct Survey {
    /// Job records.
    jobs: u64,
    /// The highest sequence number (0 for a store from before them).
    newest: u64,
}

impl Survey {
    fn of(db: &sled::Db) -> Result<Survey, StoreError> {
        let mut survey = Survey::default();
        for item in db.iter() {
            let (key, value) = item.map_err(|e| StoreError::io("read the job store", e))?;
            if key.starts_with(JOB_PREFIX) {
                survey.jobs += 1;
            }
            survey.newest = survey.newest.max(seq_of(&key, &value));
        }
        Ok(survey)
    }
}

/// A store whose database directory is gone is new only if the guards beside it say it never
/// held anything. Otherwise it is refused before sled creates an empty database there.
fn refuse_if_missing(dir: &Path, path: &Path) -> Result<(), StoreError> {
    let jobs = crate::guard::recorded(dir)?;
    let acknowledged = crate::mark::read(dir)?;
    if jobs > 0 || acknowledged > 0 {
        return Err(StoreError::Missing { path: path.to_path_buf(), jobs, acknowledged });
    }
    Ok(())
}

/// One key's new value for [`SledStore::apply`]; `None` removes the key.
type Write = (Vec<u8>, Option<Vec<u8>>);

/// The records of `job`'s files from index `from` on.
/// Records [`Store::put_new_files`] writes, or `delete_job` removes, per store write: about 1 ms
/// of sled's time each, and small enough that sled does not keep memory for good after it.
const NEW_FILES_SLICE: usize = 512;

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
/// copy fails the checks (schema, job count, acknowledged changes), the real files are refused
/// exactly as they were found. The copy is small (the job queue) and lives next to the store
/// until the next start. What the copy holds is returned for the real open to start from.
fn verify_copy(dir: &Path, path: &Path, wait: Duration) -> Result<Survey, StoreError> {
    let copy = dir.join(VERIFY_DIR);
    if copy.exists() {
        std::fs::remove_dir_all(&copy)
            .map_err(|e| StoreError::io("remove the previous verification copy", e))?;
    }
    copy_dir(path, &copy.join("db"))
        .map_err(|e| StoreError::io("copy the store for verification", e))?;
    let mut lost = None;
    let checked = (|| {
        // No background flusher: nothing may write to the copy after it is dropped.
        let db = open_db(&copy.join("db"), wait, false)?;
        check_schema(&db, dir, path)?;
        let survey = Survey::of(&db)?;
        crate::guard::check(dir, path, survey.jobs)?;
        crate::mark::check(dir, path, survey.newest).inspect_err(|_| {
            // A record that does not decode lost its number too: name it, the sharper cause.
            if let Err(corrupt) = decode_all(&db) {
                lost = Some(corrupt);
            }
        })?;
        Ok(survey)
    })();
    let _ = std::fs::remove_dir_all(&copy);
    match lost {
        Some(corrupt) => Err(corrupt),
        None => checked,
    }
}

/// Decodes every job and file record, for the first that does not decode.
fn decode_all(db: &sled::Db) -> Result<(), StoreError> {
    for item in db.iter() {
        let (key, value) = item.map_err(|e| StoreError::io("read the job store", e))?;
        match parse_key(&key) {
            Key::Job(_) => drop(decode::<JobRecord>(&key, &value)?),
            Key::File(..) => drop(decode::<JobFile>(&key, &value)?),
            _ => {}
        }
    }
    Ok(())
}

/// Makes the names of the store's files (and sled's `conf`) durable. sled creates its log, `conf` and `blobs/`
/// and, at every open, renames a new snapshot into place, and syncs no directory; the job count
/// and the mark are created beside it. Without this a power cut after the first acknowledged
/// flush could take the whole store, guards included, and the daemon would start empty.
fn sync_entries(dir: &Path, db: &Path) -> Result<(), StoreError> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    // `conf` first: sled writes it unsynced, and reads an empty one back with a warning.
    let conf = db.join("conf");
    for d in [Some(conf.as_path()), Some(db), Some(dir), parent].into_iter().flatten() {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::io("sync the job store's directories", e))?;
    }
    Ok(())
}

/// Where [`verify_copy`] puts its copy, inside the data directory.
const VERIFY_DIR: &str = ".verify";

pub(crate) fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
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
        let writing = self.lock_writes();
        self.engine(&writing, |engine| {
            for item in engine.db.iter() {
                let (key, value) = item.map_err(|e| self.failure("read the job store", e))?;
                match parse_key(&key) {
                    Key::Schema | Key::LastSeq => {}
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
            Ok(())
        })?;
        drop(writing);

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
        let mut orphans = Vec::new();
        for (id, records) in files {
            tracing::warn!(job = %id, files = records.len(), "removing file records of a job that is not stored (a deletion a crash cut short)");
            orphans.extend(records.into_keys().map(|index| sled::IVec::from(file_key(id, index))));
        }
        // Best effort: they are ignored either way, and a full disk must not stop the start.
        if let Err(e) = self.remove_in_slices(&orphans) {
            tracing::warn!(error = %e, "cannot remove file records of jobs that are not stored");
        }
        sort_jobs(&mut jobs);
        Ok(jobs)
    }

    fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        let key = job_key(job.id);
        let mut writes = vec![(key.clone(), Some(encode(&key, &JobRecord::from_job(job))?))];
        writes.extend(file_writes(job, 0)?);
        let writing = self.lock_writes();
        let is_new = !self.contains(&writing, &key)?;
        for key in self.file_keys(&writing, job.id)? {
            let stale = match parse_key(&key) {
                Key::File(_, index) => index as usize >= job.files.len(),
                _ => true, // a malformed key under this job's prefix
            };
            if stale {
                writes.push((key.to_vec(), None));
            }
        }
        self.apply(&writing, writes, "write a job")?;
        if is_new {
            self.guard.created();
        }
        Ok(())
    }

    fn add_files(&self, job: &Job, from: u32) -> Result<(), StoreError> {
        let key = job_key(job.id);
        let fields = encode(&key, &JobRecord::from_job(job))?;
        let files = file_writes(job, from)?;
        let writing = self.lock_writes();
        if !self.contains(&writing, &key)? {
            return Err(StoreError::NotFound { job: job.id, index: from });
        }
        // Files first: the fields count them, and sled recovers a prefix of its log (it stops at
        // the first torn write), so the new count never survives without its files.
        self.apply(&writing, files, "add files to a job")?;
        self.apply(&writing, vec![(key, Some(fields))], "write a job")
    }

    fn put_new_files(&self, job: JobId, from: u32, files: &[JobFile]) -> Result<(), StoreError> {
        // Encoded before any lock; written in slices, so other writers (a worker recording
        // progress) wait for one slice, not for the whole set.
        let mut writes = Vec::with_capacity(files.len());
        for (index, file) in (from..).zip(files) {
            let key = file_key(job, index);
            let value = encode(&key, file)?;
            writes.push((key, Some(value)));
        }
        let key = job_key(job);
        while !writes.is_empty() {
            let rest = writes.split_off(writes.len().min(NEW_FILES_SLICE));
            let writing = self.lock_writes();
            if !self.contains(&writing, &key)? {
                return Err(StoreError::NotFound { job, index: from });
            }
            self.apply(&writing, std::mem::replace(&mut writes, rest), "add files to a job")?;
        }
        Ok(())
    }

    fn put_job_fields(&self, job: &Job) -> Result<(), StoreError> {
        let key = job_key(job.id);
        let value = encode(&key, &JobRecord::from_job(job))?;
        {
            let writing = self.lock_writes();
            if self.contains(&writing, &key)? {
                return self.apply(&writing, vec![(key, Some(value))], "write a job");
            }
        }
        self.put_job(job)
    }

    fn encode_file(
        &self,
        job: JobId,
        index: u32,
        file: &JobFile,
    ) -> Result<EncodedFile, StoreError> {
        let key = file_key(job, index);
        let value = encode(&key, file)?;
        Ok(EncodedFile { job, index, form: Encoded::Bytes { key, value } })
    }

    fn put_encoded_file(&self, file: EncodedFile) -> Result<(), StoreError> {
        match file.form {
            Encoded::Bytes { key, value } => self.put_file_bytes(file.job, file.index, key, value),
            Encoded::File(record) => self.put_file(file.job, file.index, &record),
        }
    }

    fn put_file(&self, job: JobId, index: u32, file: &JobFile) -> Result<(), StoreError> {
        let key = file_key(job, index);
        let value = encode(&key, file)?;
        self.put_file_bytes(job, index, key, value)
    }

    /// The job's record goes first, atomically with the first slice of its file records; the
    /// rest follow in slices. One batch of tens of thousands of removals made sled 0.34 keep
    /// hundreds of MB for good (RSS grew with each AddFileSet + Cancel of 40,000 files), slices of
    /// 512 do not. A crash between slices leaves file records of a job that is not stored, which
    /// loading ignores and removes.
    fn delete_job(&self, job: JobId) -> Result<(), StoreError> {
        let key = job_key(job);
        let files = {
            let writing = self.lock_writes();
            let files = self.file_keys(&writing, job)?;
            if self.contains(&writing, &key)? {
                self.guard.deleting()?;
            }
            let mut writes = vec![(key.clone(), None)];
            writes.extend(files.iter().take(NEW_FILES_SLICE).map(|key| (key.to_vec(), None)));
            self.apply(&writing, writes, "delete a job")?;
            files
        };
        self.remove_in_slices(files.get(NEW_FILES_SLICE..).unwrap_or_default())
    }

    /// sled's flush writes its log with `sync_file_range` only (sled 0.34 on Linux, see
    /// spacejam/sled#1452): that survives a crash of this process, but not a power loss or a
    /// kernel crash — the disk's write cache is not flushed and a grown log file's new size is
    /// not recorded. The fdatasync after it makes a flush mean what callers take it to mean:
    /// a created job, a Complete's `completed` flag, a recorded range survive anything.
    /// Then the guards learn what it made durable: the new jobs, the newest sequence number.
    fn flush(&self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::SeqCst) {
            let writing = self.lock_writes();
            self.engine(&writing, |_| Ok(()))?;
        }
        let (covered, discarded) = self.current(|engine| {
            // Taken with the engine held: no reopen can come in between, and a write applied
            // after this may miss the flush, so it is not covered.
            let jobs = self.guard.pending();
            let covered = self.applied.load(Ordering::SeqCst);
            let discarded =
                self.discarded.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            let flushed = engine
                .db
                .flush()
                .map_err(|e| self.failure("flush the job store to disk", e))
                .and_then(|_| {
                    engine.log.sync_data().map_err(|e| self.failure("sync the job store's log", e))
                });
            self.attempted.fetch_max(covered, Ordering::SeqCst);
            flushed?;
            self.guard.flushed(jobs)?;
            Ok((covered, discarded))
        })?;
        self.mark.flushed(covered)?;
        match discarded {
            Some(cause) => Err(StoreError::Discarded { cause }),
            None => Ok(()),
        }
    }
}

impl Drop for SledStore {
    /// A clean shutdown loses nothing even if a caller forgot the last flush.
    fn drop(&mut self) {
        let engine = self.engine.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(Err(e)) = engine.as_ref().map(|engine| engine.db.flush()) {
            tracing::warn!(path = %self.path.display(), error = %e, "flushing the job store on close failed");
        }
    }
}
