//! The [`Store`] contract held in memory, so the manager and the daemon can be tested without a
//! database on disk. It passes the same conformance suite as [`crate::SledStore`]; `flush` is a
//! no-op because nothing outlives the process anyway.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use bits_core::{Job, JobFile, JobId};

use crate::{Store, StoreError, sort_jobs};

/// An in-memory store. Every method works on its own snapshot copy, as a database would.
#[derive(Debug, Default)]
pub struct MemStore {
    jobs: Mutex<BTreeMap<JobId, Job>>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn jobs(&self) -> MutexGuard<'_, BTreeMap<JobId, Job>> {
        // A panic elsewhere while holding the lock leaves the map consistent (every update is
        // a single insert/remove), so poisoning carries no information here.
        self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemStore {
    fn load_all(&self) -> Result<Vec<Job>, StoreError> {
        let mut jobs: Vec<Job> = self.jobs().values().cloned().collect();
        sort_jobs(&mut jobs);
        Ok(jobs)
    }

    fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        self.jobs().insert(job.id, job.clone());
        Ok(())
    }

    fn add_files(&self, job: &Job, from: u32) -> Result<(), StoreError> {
        let mut jobs = self.jobs();
        let stored =
            jobs.get_mut(&job.id).ok_or(StoreError::NotFound { job: job.id, index: from })?;
        // As on disk: the earlier files stay as stored, the new ones and the fields replace.
        let mut files = std::mem::take(&mut stored.files);
        files.truncate(from as usize);
        files.extend(job.files.iter().skip(from as usize).cloned());
        *stored = Job { files, ..job.clone() };
        Ok(())
    }

    fn put_new_files(&self, job: JobId, from: u32, _files: &[JobFile]) -> Result<(), StoreError> {
        // Nothing to keep: the records join the job with its next fields (see below), which
        // carry them, as on disk the new count makes the written records the job's.
        match self.jobs().contains_key(&job) {
            true => Ok(()),
            false => Err(StoreError::NotFound { job, index: from }),
        }
    }

    fn put_job_fields(&self, job: &Job) -> Result<(), StoreError> {
        let mut jobs = self.jobs();
        let files = jobs.get(&job.id).map(|stored| stored.files.clone());
        let mut updated = job.clone();
        if let Some(mut files) = files {
            // The count decides, as on disk: files added by `put_new_files` become the job's
            // with a larger one, and records beyond a smaller one no longer count.
            files.truncate(job.files.len());
            files.extend(job.files.iter().skip(files.len()).cloned());
            updated.files = files;
        }
        jobs.insert(job.id, updated);
        Ok(())
    }

    fn put_file(&self, job: JobId, index: u32, file: &JobFile) -> Result<(), StoreError> {
        let mut jobs = self.jobs();
        let slot = jobs
            .get_mut(&job)
            .and_then(|j| j.files.get_mut(index as usize))
            .ok_or(StoreError::NotFound { job, index })?;
        *slot = file.clone();
        Ok(())
    }

    fn delete_job(&self, job: JobId) -> Result<(), StoreError> {
        self.jobs().remove(&job);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
