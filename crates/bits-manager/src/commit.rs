//! Persistence: the only holder of the job store. Every write goes through here, and so does the
//! group commit that makes writes durable before a change is acknowledged.
//!
//! Group commit: many workers finishing small files at once would each wait for a flush of their
//! own, one after another. Instead each caller takes a ticket (after its writes), and whoever gets
//! the flush lock flushes for every ticket issued so far; callers whose ticket a finished flush
//! already covers return without flushing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bits_core::{BitsError, Code, Event, Job, JobFile, JobId, transition};
use bits_disk::Identity;
use bits_store::{EncodedFile, Store};

use crate::access::run_blocking;
use crate::errors::store_error;
use crate::flusher::Flusher;
use crate::stats::FlushTimes;
use crate::types::ManagerError;

/// How soon a failed deferred flush (see [`Commit::flush_soon`]) is tried again.
const DEFERRED_RETRY: Duration = Duration::from_secs(1);

/// The store, with the tickets and the flush lock of its group commit.
pub(crate) struct Commit {
    store: Arc<dyn Store>,
    /// Where deferred flushes are spawned: the runtime the manager was started on.
    runtime: tokio::runtime::Handle,
    /// Tickets issued: one per flush request, taken after the requester's writes.
    tickets: AtomicU64,
    /// Held while flushing; what completed flushes covered.
    flushed: tokio::sync::Mutex<Flushed>,
    /// Where the flushes run (see `flusher.rs`).
    flusher: Flusher,
    /// The last ticket a deferred flush must cover (see [`Commit::flush_soon`]).
    deferred: AtomicU64,
    /// Whether a deferred flush is scheduled and has not yet read `deferred`.
    deferred_pending: AtomicBool,
}

/// What the group commit's flushes covered.
#[derive(Default)]
struct Flushed {
    /// The last ticket a successful flush covers.
    through: u64,
    /// Tickets after a successful flush that a failed one covered: their writes may be gone
    /// (the store reopens its engine after a failure and drops what it held unflushed), so a
    /// later successful flush does not vouch for them. `(lo, hi]`; empty when `lo == hi`.
    failed: (u64, u64),
    /// Why the last failed flush failed.
    failure: Option<BitsError>,
}

/// Every stored job, oldest first, as the daemon starts with it: filled ranges trimmed to what
/// the temp files hold, and jobs that were active when the previous process died back in QUEUED
/// (both written back and flushed before anything else happens).
pub(crate) fn recover(
    store: &dyn Store,
    owner: impl Fn(u32) -> Identity,
) -> Result<Vec<Job>, ManagerError> {
    let mut jobs = store.load_all()?;
    jobs.sort_by_key(|j| j.creation_time);
    for j in crate::reconcile::trim_filled(&mut jobs, owner) {
        store.put_job(&jobs[j])?;
    }
    crate::reconcile::report_orphans(&jobs);
    for job in &mut jobs {
        let before = job.state;
        if let Ok(after) = transition(job.state, Event::Requeue) {
            job.state = after;
        }
        if before != job.state {
            store.put_job(job)?;
        }
    }
    store.flush()?;
    Ok(jobs)
}

impl Commit {
    /// Starts the flusher thread on `store`; deferred flushes run on the current runtime.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        times: Arc<FlushTimes>,
    ) -> Result<Commit, ManagerError> {
        let flusher = Flusher::start(store.clone(), times).map_err(ManagerError::Thread)?;
        Ok(Commit {
            store,
            runtime: tokio::runtime::Handle::current(),
            tickets: AtomicU64::new(0),
            flushed: tokio::sync::Mutex::new(Flushed::default()),
            flusher,
            deferred: AtomicU64::new(0),
            deferred_pending: AtomicBool::new(false),
        })
    }

    /// Makes every store write so far durable, off the async threads (see the module comment).
    pub(crate) async fn flush(&self) -> Result<(), BitsError> {
        let ticket = self.ticket();
        self.flush_through(ticket).await
    }

    /// Makes the store writes so far durable within `delay`, without waiting for it. Any flush
    /// that starts sooner (another caller's) covers them, and this one then has nothing to do.
    /// Writes that come while such a flush is pending ride along with it (flushed sooner than
    /// their own delay), so a burst of calls schedules one flush, not one each.
    pub(crate) fn flush_soon(self: &Arc<Self>, delay: Duration) {
        self.deferred.fetch_max(self.ticket(), Ordering::SeqCst);
        if self.deferred_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let commit = Arc::clone(self);
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            // Cleared before the ticket is read: a write after this schedules a flush of its own.
            commit.deferred_pending.store(false, Ordering::SeqCst);
            let ticket = commit.deferred.load(Ordering::SeqCst);
            if let Err(e) = commit.flush_through(ticket).await {
                // Nobody waits for this flush to report to: try again (any other flush meanwhile
                // covers the writes too), at most once a second while the store keeps failing.
                tracing::error!(error = %e, "deferred store flush failed; retrying in 1 s");
                commit.flush_soon(delay.max(DEFERRED_RETRY));
            }
        });
    }

    /// A ticket for the store writes made so far (see [`Commit::flush`]).
    fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Returns once a flush that covers `ticket` has returned, flushing if none has.
    /// A ticket a failed flush covered fails too, even when a later flush succeeds: the writes
    /// it stands for may be the ones the failure lost, and its caller must not acknowledge them.
    async fn flush_through(&self, ticket: u64) -> Result<(), BitsError> {
        let mut flushed = self.flushed.lock().await;
        let (lo, hi) = flushed.failed;
        if ticket > lo && ticket <= hi {
            let code = flushed.failure.as_ref().map_or(Code::BG_E_DATABASE_CORRUPT, |e| e.code);
            let why = flushed.failure.as_ref().map_or("", |e| e.message.as_str());
            return Err(BitsError::new(
                code,
                format!("a store flush covering this change failed, so it may be lost: {why}"),
            ));
        }
        if flushed.through >= ticket {
            return Ok(());
        }
        // Every ticket up to here was taken after its writes: this flush covers them all.
        let covers = self.tickets.load(Ordering::SeqCst);
        if let Err(e) = self.flusher.flush().await {
            let lo = if lo == hi { flushed.through } else { lo.min(flushed.through) };
            flushed.failed = (lo, covers);
            flushed.failure = Some(e.clone());
            return Err(e);
        }
        flushed.through = covers;
        Ok(())
    }

    /// Writes only the job's own fields (state, times, error); the caller flushes. Cheap
    /// whatever the number of files.
    pub(crate) fn put_job_fields(&self, job: &Job) -> Result<(), BitsError> {
        self.store.put_job_fields(job).map_err(store_error)
    }

    /// Writes one file's record; the caller flushes. Called under the table lock, so store
    /// writes keep the order of the in-memory changes.
    pub(crate) fn put_file(&self, id: JobId, index: u32, file: &JobFile) -> Result<(), BitsError> {
        self.store.put_file(id, index, file).map_err(store_error)
    }

    /// Writes the whole job (fields and files); the caller flushes.
    pub(crate) fn put_job(&self, job: &Job) -> Result<(), BitsError> {
        self.store.put_job(job).map_err(store_error)
    }

    /// Writes the job's fields and its files from `first` on (a small AddFile, under the table
    /// lock); the caller flushes.
    pub(crate) fn add_files(&self, job: &Job, first: u32) -> Result<(), BitsError> {
        self.store.add_files(job, first).map_err(store_error)
    }

    /// Writes the records of a large AddFile on the blocking pool, before they join the table;
    /// hands them back for that.
    pub(crate) async fn put_new_files(
        &self,
        id: JobId,
        first: u32,
        records: Vec<JobFile>,
    ) -> Result<Vec<JobFile>, BitsError> {
        let store = self.store.clone();
        run_blocking(move || {
            store.put_new_files(id, first, &records).map_err(store_error)?;
            Ok(records)
        })
        .await
    }

    /// Encodes a file record on the blocking pool, to be written later under the table lock by
    /// [`Commit::put_encoded_file`]; hands the file back.
    pub(crate) async fn encode_file(
        &self,
        id: JobId,
        index: u32,
        file: JobFile,
    ) -> Result<(EncodedFile, JobFile), BitsError> {
        let store = self.store.clone();
        run_blocking(move || {
            let encoded = store.encode_file(id, index, &file).map_err(store_error)?;
            Ok((encoded, file))
        })
        .await
    }

    pub(crate) fn put_encoded_file(&self, encoded: EncodedFile) -> Result<(), BitsError> {
        self.store.put_encoded_file(encoded).map_err(store_error)
    }

    /// Deletes a finished job and flushes. Deleting syncs the store's job count: blocking work,
    /// on the flusher thread like every flush (see `flusher.rs`).
    pub(crate) async fn delete_job(&self, id: JobId) -> Result<(), BitsError> {
        let delete = move |store: &dyn Store| {
            store.delete_job(id)?;
            store.flush()
        };
        self.flusher.run(delete).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed call is a failed test

    use super::*;
    use crate::testing::Watched;

    /// A write a failed flush covered is never acknowledged by a later flush that succeeds: the
    /// failure may have lost it (the store drops what its failed engine held).
    #[tokio::test]
    async fn a_change_a_failed_flush_covered_is_not_acknowledged_later() {
        let store = Arc::new(Watched::default());
        let m = Arc::new(Commit::start(store.clone(), Arc::default()).unwrap());
        let a = m.ticket();
        store.fail_flushes(true);
        assert!(m.flush().await.is_err(), "another caller's flush covers A's ticket and fails");
        store.fail_flushes(false);
        let error = m.flush_through(a).await.unwrap_err();
        assert!(error.message.contains("disk on fire"), "{error:?}");
        m.flush().await.unwrap();
        assert!(m.flush_through(a).await.is_err(), "still not acknowledged");
    }
}
