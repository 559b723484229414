//! What the manager's unit tests share: a manager on an in-memory store, the caller they act as,
//! jobs with files, and a store that counts its flushes and fails when told to.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed call is a failed test

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use bits_core::{Job, JobFile, JobId, JobType, Priority, RangeSet};
use bits_store::{MemStore, Store, StoreError};

use crate::handle::Manager;
use crate::table::Entry;
use crate::types::{Caller, ManagerConfig};

pub(crate) async fn manager() -> Manager {
    Manager::start(Arc::new(MemStore::new()), ManagerConfig::default()).unwrap()
}

/// The test's own uid: file work runs as the job's owner, who must be able to write the test's
/// temp directories.
pub(crate) fn caller() -> Caller {
    Caller::user(rustix::process::geteuid().as_raw())
}

/// A new job of the caller's with `n` files (`http://h/f<i>` to `dir/f<i>`).
pub(crate) async fn job_with_files(manager: &Manager, dir: &Path, n: usize) -> JobId {
    let id = manager
        .create_job(caller(), "test", "", JobType::Download, Priority::Normal)
        .await
        .unwrap();
    for i in 0..n {
        let dest = dir.join(format!("f{i}"));
        manager.add_file(caller(), id, &format!("http://h/f{i}"), &dest, None).await.unwrap();
    }
    id
}

/// A manager with one new job of the caller's with `n` files, whose destinations are in the
/// returned directory.
pub(crate) async fn manager_with_job(n: usize) -> (Manager, tempfile::TempDir, JobId) {
    let manager = manager().await;
    let dir = tempfile::tempdir().unwrap();
    let id = job_with_files(&manager, dir.path(), n).await;
    (manager, dir, id)
}

/// Changes the job in the table, as a worker would, under the lock.
pub(crate) fn with_entry(manager: &Manager, id: JobId, change: impl FnOnce(&mut Entry)) {
    let mut table = manager.table();
    change(table.get_mut(&id).unwrap());
}

/// A manager on a [`Watched`] store (default configuration) with one new job of the caller's
/// with `n` files, whose destinations are in the returned directory.
pub(crate) async fn watched_job(n: usize) -> (Arc<Watched>, Manager, tempfile::TempDir, JobId) {
    let store = Arc::new(Watched::default());
    let manager = Manager::start(store.clone(), ManagerConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = job_with_files(&manager, dir.path(), n).await;
    (store, manager, dir, id)
}

/// Records `[start, end)` of file `index` as a worker does once its flush returned: filled,
/// announced, and no longer requested.
pub(crate) fn record(manager: &Manager, id: JobId, index: u32, start: u64, end: u64) {
    let spans = RangeSet::from_span(start, end);
    with_entry(manager, id, |e| {
        e.fill(index, &spans).expect("no such file");
        e.flushed(index, &spans);
    });
}

/// A store that records which thread flushed it, and fails its flushes when told to.
#[derive(Default)]
pub(crate) struct Watched {
    inner: MemStore,
    /// One entry per flush: the flushing thread's name.
    threads: Mutex<Vec<Option<String>>>,
    fail: AtomicBool,
    /// Makes `add_files` and `put_new_files` fail, writing nothing.
    fail_adds: AtomicBool,
}

impl Watched {
    pub(crate) fn flushes(&self) -> usize {
        self.threads.lock().unwrap().len()
    }

    /// The name of the thread each flush so far ran on, in order.
    pub(crate) fn flush_threads(&self) -> Vec<Option<String>> {
        self.threads.lock().unwrap().clone()
    }

    /// Makes every flush from now on fail (`true`) or work again.
    pub(crate) fn fail_flushes(&self, fail: bool) {
        self.fail.store(fail, SeqCst);
    }

    /// Makes every write of new file records from now on fail (`true`) or work again.
    pub(crate) fn fail_adds(&self, fail: bool) {
        self.fail_adds.store(fail, SeqCst);
    }

    fn refuse_adds(&self) -> Result<(), StoreError> {
        if self.fail_adds.load(SeqCst) {
            return Err(StoreError::Io {
                op: "add files to a job",
                cause: std::io::Error::other("disk full"),
            });
        }
        Ok(())
    }
}

impl Store for Watched {
    fn load_all(&self) -> Result<Vec<Job>, StoreError> {
        self.inner.load_all()
    }
    fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        self.inner.put_job(job)
    }
    fn put_job_fields(&self, job: &Job) -> Result<(), StoreError> {
        self.inner.put_job_fields(job)
    }
    fn put_file(&self, job: JobId, index: u32, file: &JobFile) -> Result<(), StoreError> {
        self.inner.put_file(job, index, file)
    }
    fn add_files(&self, job: &Job, from: u32) -> Result<(), StoreError> {
        self.refuse_adds()?;
        self.inner.add_files(job, from)
    }
    fn put_new_files(&self, job: JobId, from: u32, files: &[JobFile]) -> Result<(), StoreError> {
        self.refuse_adds()?;
        self.inner.put_new_files(job, from, files)
    }
    fn delete_job(&self, job: JobId) -> Result<(), StoreError> {
        self.inner.delete_job(job)
    }
    fn flush(&self) -> Result<(), StoreError> {
        let name = std::thread::current().name().map(String::from);
        self.threads.lock().unwrap().push(name);
        if self.fail.load(SeqCst) {
            return Err(StoreError::Io {
                op: "flush",
                cause: std::io::Error::other("disk on fire"),
            });
        }
        self.inner.flush()
    }
}
