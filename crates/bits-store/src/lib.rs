//! The persistent job queue. bitsd keeps every job and file record here so that a restart (or a
//! crash) resumes exactly where the last flushed write left off.
//!
//! Everything outside this crate speaks only the [`Store`] trait: the storage engine (sled 0.34
//! today, see [`SledStore`]) can be replaced without touching the manager. [`MemStore`] is the
//! same contract in memory, for the tests of other crates.
//!
//! Durability contract: `put_*` and `delete_job` may be buffered; nothing is promised to survive a
//! crash until [`Store::flush`] returns `Ok`. Callers flush before acknowledging a change to a
//! client and before treating filled ranges as recorded.

mod error;
mod guard;
mod keys;
mod mark;
mod mem_store;
mod sled_store;
#[cfg(test)]
mod testsuite;

pub use error::StoreError;
pub use mem_store::MemStore;
pub use sled_store::SledStore;

use bits_core::{Job, JobFile, JobId};

/// Version of the on-disk layout. A store written with another version is refused (never reset).
pub const SCHEMA_VERSION: u32 = 1;

/// The persistent job queue. Object safe: the manager holds an `Arc<dyn Store>`.
///
/// The methods are blocking; async callers run them on the blocking pool.
pub trait Store: Send + Sync + 'static {
    /// Every job with its files (in file order), as last written. Jobs come back ordered by
    /// creation time, then id.
    fn load_all(&self) -> Result<Vec<Job>, StoreError>;

    /// Insert or replace a job's own fields AND all of its files (used on create, add file, state
    /// changes). Atomic: a crash leaves either the old or the new job, never a mix. Files beyond
    /// the new file count are dropped.
    fn put_job(&self, job: &Job) -> Result<(), StoreError>;
    /// AddFile's write: the job's files from index `from` on (all just added), then the job's own
    /// fields, which hold its file count. Earlier files are not rewritten, so adding files one by
    /// one stays linear. A crash between the two writes leaves file records beyond the stored
    /// count, which loading ignores: the job is as it was, as if nothing had been added.
    /// [`StoreError::NotFound`] if the job is not stored; nothing is written then.
    fn add_files(&self, job: &Job, from: u32) -> Result<(), StoreError>;
    /// Replace only a job's own fields (state, times, error, settings), not its files: the hot
    /// path for state changes of jobs with many files. The job's files must be the ones stored
    /// (same count); a job that is not stored yet is written whole.
    fn put_job_fields(&self, job: &Job) -> Result<(), StoreError>;

    /// Replace one file's record (the hot path: filled ranges after each sync, size/validator
    /// after a probe). [`StoreError::NotFound`] if the job is not stored or has no file `index`;
    /// nothing is written then.
    fn put_file(&self, job: JobId, index: u32, file: &JobFile) -> Result<(), StoreError>;

    /// Remove a job and all of its files, atomically. Deleting a job that is not stored is `Ok`.
    fn delete_job(&self, job: JobId) -> Result<(), StoreError>;

    /// Make every write so far durable. Callers call this before acknowledging a change to a
    /// client and before treating filled ranges as recorded.
    fn flush(&self) -> Result<(), StoreError>;
}

/// The order [`Store::load_all`] returns jobs in.
fn sort_jobs(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| a.creation_time.cmp(&b.creation_time).then(a.id.cmp(&b.id)));
}
