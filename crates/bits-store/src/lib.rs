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
mod number_file;
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
    /// The first half of [`Store::add_files`] on its own, for an AddFile of many files: the
    /// records of `files`, the job's files from index `from` on, written before they are part of
    /// the job. The caller then writes the job's fields with [`Store::put_job_fields`], whose new
    /// file count makes them the job's; until then loading ignores them, as after a crash between
    /// the two. This lets the caller encode and write thousands of records without holding its
    /// own lock; it must keep every other write of the job's files and every [`Store::put_job`]
    /// of it (which drops records beyond the stored count) away meanwhile.
    /// [`StoreError::NotFound`] if the job is not stored.
    fn put_new_files(&self, job: JobId, from: u32, files: &[JobFile]) -> Result<(), StoreError>;
    /// Replace only a job's own fields (state, times, error, settings), not its files: the hot
    /// path for state changes of jobs with many files. The job's files must be the ones stored
    /// (same count, or more whose records [`Store::put_new_files`] wrote); a smaller count takes
    /// files added last back (their records no longer count). A job that is not stored yet is
    /// written whole.
    fn put_job_fields(&self, job: &Job) -> Result<(), StoreError>;

    /// Replace one file's record (the hot path: filled ranges after each sync, size/validator
    /// after a probe). [`StoreError::NotFound`] if the job is not stored or has no file `index`;
    /// nothing is written then.
    fn put_file(&self, job: JobId, index: u32, file: &JobFile) -> Result<(), StoreError>;

    /// A file's record encoded now, to be written by [`Store::put_encoded_file`] later: a caller
    /// that must write records in the order of its own changes can pay for a large record's
    /// encoding before it takes its lock, and only for the write under it.
    /// A store that keeps records as they are (the one in memory) keeps a copy.
    fn encode_file(
        &self,
        job: JobId,
        index: u32,
        file: &JobFile,
    ) -> Result<EncodedFile, StoreError> {
        Ok(EncodedFile { job, index, form: Encoded::File(Box::new(file.clone())) })
    }

    /// [`Store::put_file`] of a record [`Store::encode_file`] encoded.
    fn put_encoded_file(&self, file: EncodedFile) -> Result<(), StoreError> {
        match file.form {
            Encoded::File(record) => self.put_file(file.job, file.index, &record),
            Encoded::Bytes { .. } => Err(StoreError::Encode {
                key: format!("file/{}/{}", file.job, file.index),
                reason: "encoded by another store".into(),
            }),
        }
    }

    /// Remove a job and all of its files, atomically. Deleting a job that is not stored is `Ok`.
    fn delete_job(&self, job: JobId) -> Result<(), StoreError>;

    /// Make every write so far durable. Callers call this before acknowledging a change to a
    /// client and before treating filled ranges as recorded.
    fn flush(&self) -> Result<(), StoreError>;
}

/// A file record ready to write (see [`Store::encode_file`]).
#[derive(Debug)]
pub struct EncodedFile {
    job: JobId,
    index: u32,
    form: Encoded,
}

#[derive(Debug)]
enum Encoded {
    /// The record's bytes, for a store that writes bytes.
    Bytes { key: Vec<u8>, value: Vec<u8> },
    /// The record itself, for the store in memory.
    File(Box<JobFile>),
}

/// The order [`Store::load_all`] returns jobs in.
fn sort_jobs(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| a.creation_time.cmp(&b.creation_time).then(a.id.cmp(&b.id)));
}
