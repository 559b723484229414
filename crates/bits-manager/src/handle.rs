//! The [`Manager`] handle: what every operation, the scheduler and the workers share, behind
//! methods, so that the operations (`manager.rs`, `files.rs`, `setters.rs`, `finish.rs`, …) sit
//! above it and nothing below it knows about them.
//!
//! The table lives behind one `std::sync::Mutex` that is never held across an `.await`; slow work
//! (store flushes, file syncs, renames, stopping a worker) happens after the lock is released.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bits_core::{BitsError, Job, JobFile, JobId};
use bits_disk::Identity;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::access::AccessPolicy;
use crate::commit::Commit;
use crate::events::EventBus;
use crate::stats::Counters;
use crate::table::{Table, no_such_job};
use crate::types::{Caller, ManagerConfig};

/// A cheap-to-clone handle on the manager.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    table: Mutex<Table>,
    /// The store and its group commit: every store write goes through it.
    commit: Arc<Commit>,
    http: bits_http::HttpClient,
    config: ManagerConfig,
    /// Wakes the scheduler after anything that may let a job start.
    wake: Notify,
    /// Set at shutdown: workers stop, the scheduler exits.
    shutdown: CancellationToken,
    /// The runtime the manager was started on. Work that must outlive a request (Complete,
    /// Cancel) is spawned here, whatever runtime serves the request.
    runtime: tokio::runtime::Handle,
    /// Job notifications (WatchJob).
    events: EventBus,
    /// Administrators, and owners' identities for file access.
    access: AccessPolicy,
    /// Job workers alive now (see [`Manager::transfers_running`]).
    workers: AtomicUsize,
    /// Daemon-wide counters (see `stats.rs`).
    stats: Counters,
}

impl Manager {
    /// What a manager is made of, put together once at start (`manager.rs: Manager::start`).
    pub(crate) fn assemble(
        table: Table,
        commit: Commit,
        http: bits_http::HttpClient,
        config: ManagerConfig,
        events: EventBus,
        access: AccessPolicy,
        stats: Counters,
    ) -> Manager {
        Manager {
            inner: Arc::new(Inner {
                table: Mutex::new(table),
                commit: Arc::new(commit),
                http,
                config,
                wake: Notify::new(),
                shutdown: CancellationToken::new(),
                runtime: tokio::runtime::Handle::current(),
                events,
                access,
                workers: AtomicUsize::new(0),
                stats,
            }),
        }
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock means a panic elsewhere; the table itself is still consistent because
        // every mutation is completed before the guard drops, so keep serving.
        self.inner.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    pub(crate) fn events(&self) -> &EventBus {
        &self.inner.events
    }

    pub(crate) fn http(&self) -> &bits_http::HttpClient {
        &self.inner.http
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.stats
    }

    /// Notified after anything that may let a job start; the scheduler waits on it.
    pub(crate) fn wake(&self) -> &Notify {
        &self.inner.wake
    }

    /// Cancelled at shutdown.
    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Job workers alive now; the scheduler counts them in and out.
    pub(crate) fn workers(&self) -> &AtomicUsize {
        &self.inner.workers
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.runtime
    }

    /// The store, for writes the methods below do not cover.
    pub(crate) fn commit(&self) -> &Commit {
        &self.inner.commit
    }

    /// Makes every store write so far durable (group commit, see `commit.rs`).
    pub(crate) async fn flush(&self) -> Result<(), BitsError> {
        self.inner.commit.flush().await
    }

    /// Makes the store writes so far durable within `delay`, without waiting for it.
    pub(crate) fn flush_soon(&self, delay: Duration) {
        self.inner.commit.flush_soon(delay);
    }

    /// Writes only the job's own fields (state, times, error) to the store; the caller flushes.
    pub(crate) fn persist_job_fields(&self, job: &Job) -> Result<(), BitsError> {
        self.inner.commit.put_job_fields(job)
    }

    /// Writes one file's record to the store; the caller flushes. Called under the table lock,
    /// so store writes keep the order of the in-memory changes.
    pub(crate) fn persist_file(
        &self,
        id: JobId,
        index: u32,
        file: &JobFile,
    ) -> Result<(), BitsError> {
        self.inner.commit.put_file(id, index, file)
    }

    /// Writes the whole job (fields and files) to the store; the caller flushes.
    pub(crate) fn persist_job(&self, job: &Job) -> Result<(), BitsError> {
        self.inner.commit.put_job(job)
    }

    // ---- identity ---------------------------------------------------------------------------

    /// The [`Caller`] for a uid, with its administrator status from the configuration (admin
    /// uids, or membership of an admin group).
    pub fn caller(&self, uid: u32) -> Caller {
        Caller { uid, admin: self.inner.access.is_admin(uid), pid: None }
    }

    /// The file-system identity of a job's owner, for file work done on the owner's behalf.
    /// When no switch can happen (the owner is root, or the daemon is not) the user database is
    /// not asked: `Identity::run` runs the work as it is then.
    pub(crate) fn owner_identity(&self, uid: u32) -> Identity {
        if !Identity::switches_to(uid) {
            return Identity::unswitched(uid);
        }
        self.inner.access.identity(uid)
    }

    /// [`Manager::owner_identity`] of job `id`'s current owner.
    pub(crate) fn job_identity(&self, id: JobId) -> Result<Identity, BitsError> {
        let uid =
            self.table().get(&id).map(|e| e.job().owner_uid).ok_or_else(|| no_such_job(id))?;
        Ok(self.owner_identity(uid))
    }
}
