//! A guard against silent loss inside the engine. sled 0.34 reads a damaged or truncated log as
//! a shorter one and opens without a word, which would drop jobs. So the store also keeps, in a
//! small file beside the database, how many jobs it has durably stored, ordered so that a healthy
//! store always holds *at least* that many:
//! - a new job raises the count only after the engine's flush made the job durable;
//! - a deleted job lowers the count (written and synced) *before* the engine deletes it.
//!
//! On open, fewer jobs than the count means damage, and the store refuses to open.
//! Without the file (a new store, or one from before the guard) the count starts at what is there.

use std::path::Path;
use std::sync::Mutex;

use crate::StoreError;
use crate::number_file::{self, NumberFile};

pub(crate) const FILE_NAME: &str = "jobs.count";

pub(crate) struct JobCountGuard {
    /// The count file, kept open.
    file: NumberFile,
    state: Mutex<Counts>,
}

struct Counts {
    /// The value in the file.
    recorded: u64,
    /// Jobs created since the last flush; counted once the engine has flushed them.
    pending: u64,
}

/// The recorded count; 0 without a (readable) file: a new store, or one from before the guard.
pub(crate) fn recorded(dir: &Path) -> Result<u64, StoreError> {
    number_file::read(dir, FILE_NAME, "job count")
}

/// Refuses an engine holding fewer jobs than the recorded count, which it returns. Reads only.
pub(crate) fn check(dir: &Path, db_path: &Path, stored: u64) -> Result<u64, StoreError> {
    let recorded = recorded(dir)?;
    if stored < recorded {
        return Err(StoreError::Damaged {
            path: db_path.to_path_buf(),
            expected: recorded,
            found: stored,
        });
    }
    Ok(recorded)
}

impl JobCountGuard {
    /// Checks the engine's job count against the recorded one (refusing damage) and brings the
    /// file up to date.
    ///
    /// The count read back is first written again, synced: it counted only jobs a flush had made
    /// durable, so it is safe to keep, and without it a power cut left a new file empty (its
    /// later writes unsynced until a delete), which skipped the check. The engine's count is not
    /// synced: it may include jobs sled wrote but nothing flushed, which a power cut can take.
    pub(crate) fn open(
        dir: &Path,
        db_path: &Path,
        stored: u64,
    ) -> Result<JobCountGuard, StoreError> {
        let durable = check(dir, db_path, stored)?;
        let file = NumberFile::open(dir, FILE_NAME)?;
        file.write(durable, true)?;
        let guard =
            JobCountGuard { file, state: Mutex::new(Counts { recorded: stored, pending: 0 }) };
        guard.write(stored, false)?;
        Ok(guard)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A job that was not stored before is being written.
    pub(crate) fn created(&self) {
        self.counts().pending += 1;
    }

    /// Jobs created and not yet counted: what an engine flush starting now makes durable. Taken
    /// before the flush, because jobs created while it runs may miss it.
    pub(crate) fn pending(&self) -> u64 {
        self.counts().pending
    }

    /// The engine has flushed: the `covered` jobs (from [`JobCountGuard::pending`] before the
    /// flush) are durable and may be counted. A lost write of this file only makes the check
    /// weaker, never wrong, so it is not synced.
    pub(crate) fn flushed(&self, covered: u64) -> Result<(), StoreError> {
        let mut counts = self.counts();
        // A delete meanwhile has counted them already (see `deleting`).
        let covered = covered.min(counts.pending);
        if covered > 0 {
            let value = counts.recorded + covered;
            self.write(value, false)?;
            counts.recorded = value;
            counts.pending -= covered;
        }
        Ok(())
    }

    /// The engine was reopened after a failure: the jobs created since the last flush went
    /// with it (or, if sled's own flusher got to them, are stored uncounted: a weaker check).
    pub(crate) fn forget_pending(&self) {
        self.counts().pending = 0;
    }

    /// A stored job is about to be deleted: lower the count durably first.
    pub(crate) fn deleting(&self) -> Result<(), StoreError> {
        let mut counts = self.counts();
        let value = (counts.recorded + counts.pending).saturating_sub(1);
        self.write(value, true)?;
        counts.recorded = value;
        counts.pending = 0;
        Ok(())
    }

    /// Overwrites the count (creating jobs must stay cheap: see `number_file.rs`); `sync` makes
    /// it durable before returning, as a delete needs.
    fn write(&self, value: u64, sync: bool) -> Result<(), StoreError> {
        self.file.write(value, sync)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bits_core::{Job, JobId};

    use crate::{SledStore, Store, StoreError};

    fn job(n: u64) -> Job {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(n);
        Job { no_progress_timeout_secs: 1, ..Job::new(JobId::new_random(), format!("j{n}"), 0, t) }
    }

    fn count(dir: &std::path::Path) -> u64 {
        std::fs::read_to_string(dir.join(super::FILE_NAME)).unwrap().trim().parse().unwrap()
    }

    #[test]
    fn the_count_follows_creates_after_flush_and_deletes_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(count(dir.path()), 0);
        let (a, b) = (job(1), job(2));
        store.put_job(&a).unwrap();
        store.put_job(&b).unwrap();
        store.put_job(&a).unwrap(); // an update is no new job
        assert_eq!(count(dir.path()), 0, "not counted before the flush makes them durable");
        store.flush().unwrap();
        assert_eq!(count(dir.path()), 2);
        store.delete_job(a.id).unwrap();
        assert_eq!(count(dir.path()), 1, "lowered before the delete");
        store.delete_job(a.id).unwrap();
        assert_eq!(count(dir.path()), 1, "deleting a missing job changes nothing");
    }

    /// A job created while the engine flushes may miss that flush: it is counted by the next.
    #[test]
    fn jobs_created_during_a_flush_wait_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let guard = super::JobCountGuard::open(dir.path(), &dir.path().join("db"), 0).unwrap();
        guard.created();
        let covered = guard.pending();
        guard.created(); // while the engine flushes
        guard.flushed(covered).unwrap();
        assert_eq!(count(dir.path()), 1);
        guard.flushed(guard.pending()).unwrap();
        assert_eq!(count(dir.path()), 2);
        guard.created();
        let covered = guard.pending();
        guard.deleting().unwrap(); // counts the pending job, lowers by the deleted one
        guard.flushed(covered).unwrap();
        assert_eq!(count(dir.path()), 2, "counted once, not twice");
    }

    #[test]
    fn fewer_jobs_than_recorded_is_damage_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_job(&job(1)).unwrap();
            store.flush().unwrap();
        }
        // As if the engine's log lost a job that was durably stored.
        std::fs::write(dir.path().join(super::FILE_NAME), "2\n").unwrap();
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { expected: 2, found: 1, .. }), "{err:?}");
        assert!(err.to_string().contains("damaged or truncated"), "{err}");
        assert_eq!(count(dir.path()), 2);
    }

    #[test]
    fn an_emptied_engine_with_a_count_is_refused_not_restamped() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        std::fs::remove_dir_all(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join(super::FILE_NAME), "3\n").unwrap();
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Missing { jobs: 3, .. }), "{err:?}");
        assert!(err.to_string().contains("is missing"), "{err}");
        // Not even an empty database was created in its place.
        assert!(!dir.path().join("db").exists(), "the refused start created a database");
        assert_eq!(count(dir.path()), 3);
    }
}
