//! The job manager: the BITS operations (create, add files, resume, suspend, cancel, complete, …)
//! on the in-memory job table, each persisted to the store before it is acknowledged.
//!
//! The table lives behind one `std::sync::Mutex` that is never held across an `.await`; slow work
//! (store flushes, file syncs, renames, stopping a worker) happens after the lock is released.
//! gRPC handlers call these methods and return; transfers are owned by worker tasks that the
//! scheduler starts, never by a request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bits_core::job::{DEFAULT_MINIMUM_RETRY_DELAY_SECS, DEFAULT_NO_PROGRESS_TIMEOUT_SECS};
use bits_core::{
    BitsError, ByteRange, Code, Event, Job, JobError, JobFile, JobId, JobState, JobType, Priority,
    Progress, RangeSet, TempId, transition,
};
use bits_store::Store;
use tokio::sync::Notify;
// tokio's clock, so `tokio::time::pause` drives retry, stall and deadline times in tests.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use bits_disk::Identity;

use crate::access::{AccessPolicy, run_as};
use crate::events::EventBus;
use crate::flusher::Flusher;
use crate::requested::{Requested, check_pending};
use crate::validate;

/// Who is calling: the uid from the socket's peer credentials, and whether that uid is an
/// administrator (see [`Manager::caller`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// Administrators may act on every job and are exempt from the limits (spec §8, §9).
    pub admin: bool,
    /// The calling process, from the socket's peer credentials (`None` over TCP): a file it adds
    /// gets the permissions its own umask would give it.
    pub pid: Option<i32>,
}

impl Caller {
    /// A caller that is not an administrator.
    pub fn user(uid: u32) -> Caller {
        Caller { uid, admin: false, pid: None }
    }

    /// This caller, calling from process `pid`.
    pub fn in_process(self, pid: Option<i32>) -> Caller {
        Caller { pid, ..self }
    }

    /// Permission bits of a file this caller adds: 0666 less the calling process's umask, as
    /// for a file it created itself; 0644 when the process is unknown (TCP) or gone.
    pub(crate) fn file_mode(self) -> u32 {
        let umask = self.pid.and_then(bits_disk::umask_of_process).unwrap_or(0o022);
        0o666 & !umask
    }

    pub fn is_admin(self) -> bool {
        self.admin
    }
}

/// Counts of jobs by state class (see [`Manager::summary`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Every job in the queue (final jobs leave it).
    pub jobs: usize,
    /// CONNECTING or TRANSFERRING.
    pub transferring: usize,
    /// QUEUED: waiting for their turn.
    pub queued: usize,
    /// ERROR or TRANSIENT_ERROR.
    pub in_error: usize,
}

/// Tunables of the manager and its workers.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Sync the temp file and record filled ranges after this many new bytes…
    pub sync_bytes: u64,
    /// …or after this much time with unsynced bytes, whichever comes first.
    pub sync_interval: Duration,
    /// HTTP client settings (timeouts, redirects, extra roots for tests).
    pub http: bits_http::HttpConfig,
    /// Minimum retry delay given to new jobs (BITS default 600 s).
    pub default_retry_delay_secs: u32,
    /// No-progress timeout given to new jobs (BITS default 14 days).
    pub default_no_progress_timeout_secs: u32,
    /// Uids that are administrators (default: root).
    pub admin_uids: Vec<u32>,
    /// Groups whose members are administrators (spec: "uid 0 or a member of a configurable
    /// group"; default none).
    pub admin_gids: Vec<u32>,
    /// Jobs one non-admin user may own (BITS policy default 60).
    pub max_jobs_per_user: usize,
    /// Jobs in the queue beyond which non-admins may not create more (BITS default 300).
    pub max_jobs_per_machine: usize,
    /// How long a new job may wait for its store flush (default 20 ms). CreateJob answers
    /// before its job is flushed: a client's next call (AddFile, typically under a millisecond
    /// later) flushes the new job along with its own write, so the pair costs one flush instead
    /// of two. After this delay a flush starts anyway (and is retried while the store fails).
    /// A crash in between loses only an empty job, whose id then answers BG_E_NOT_FOUND.
    pub new_job_flush_delay: Duration,
    /// How long a SetNotifyCmdLine program may run before its process group is killed
    /// (default 5 minutes).
    pub notify_cmd_timeout: Duration,
}

impl Default for ManagerConfig {
    fn default() -> ManagerConfig {
        ManagerConfig {
            sync_bytes: 16 << 20,
            sync_interval: Duration::from_secs(1),
            http: bits_http::HttpConfig::default(),
            default_retry_delay_secs: DEFAULT_MINIMUM_RETRY_DELAY_SECS,
            default_no_progress_timeout_secs: DEFAULT_NO_PROGRESS_TIMEOUT_SECS,
            admin_uids: vec![0],
            admin_gids: Vec::new(),
            max_jobs_per_user: bits_core::job::MAX_JOBS_PER_USER,
            max_jobs_per_machine: bits_core::job::MAX_JOBS_PER_MACHINE,
            new_job_flush_delay: Duration::from_millis(20),
            notify_cmd_timeout: Duration::from_secs(300),
        }
    }
}

/// Failures of the manager itself (as opposed to a refused BITS operation).
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("job store: {0}")]
    Store(#[from] bits_store::StoreError),
    #[error("HTTP client: {0}")]
    Http(#[from] bits_http::FetchError),
    #[error("cannot start the store's flusher thread: {0}")]
    Thread(std::io::Error),
}

/// How soon a failed deferred flush (see [`Manager::flush_soon`]) is tried again.
const DEFERRED_RETRY: Duration = Duration::from_secs(1);

/// How many finished jobs are remembered so that calls on them say BG_E_INVALID_STATE.
const MAX_TOMBSTONES: usize = 4096;

/// Up to this many ranges a RequestFileRanges sorts them on the gRPC thread (well under a
/// millisecond); more go to the blocking pool, so one large request does not stall other callers.
const SORT_INLINE_MAX: usize = 4096;

/// A cheap-to-clone handle on the manager.
#[derive(Clone)]
pub struct Manager {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) table: Mutex<Table>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) http: bits_http::HttpClient,
    pub(crate) config: ManagerConfig,
    /// Wakes the scheduler after anything that may let a job start.
    pub(crate) wake: Notify,
    /// Set at shutdown: workers stop, the scheduler exits.
    pub(crate) shutdown: CancellationToken,
    /// The runtime the manager was started on. Work that must outlive a request (Complete,
    /// Cancel) is spawned here, whatever runtime serves the request.
    pub(crate) runtime: tokio::runtime::Handle,
    /// Job notifications (WatchJob).
    pub(crate) events: EventBus,
    /// Administrators, and owners' identities for file access.
    pub(crate) access: AccessPolicy,
    /// Store flushes shared between concurrent callers (see [`Manager::flush`]).
    pub(crate) commit: GroupCommit,
    /// Job workers alive now (see [`Manager::transfers_running`]).
    pub(crate) workers: AtomicUsize,
    /// Daemon-wide counters (see `stats.rs`).
    pub(crate) stats: crate::stats::Counters,
}

/// Tickets and the flush lock of [`Manager::flush`]'s group commit.
pub(crate) struct GroupCommit {
    /// Tickets issued: one per flush request, taken after the requester's writes.
    tickets: AtomicU64,
    /// Held while flushing; what completed flushes covered.
    flushed: tokio::sync::Mutex<Flushed>,
    /// Where the flushes run (see `flusher.rs`).
    flusher: Flusher,
    /// The last ticket a deferred flush must cover (see [`Manager::flush_soon`]).
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

#[derive(Default)]
pub(crate) struct Table {
    pub(crate) jobs: HashMap<JobId, Entry>,
    /// Final jobs by id, oldest first, with their owner and final state.
    pub(crate) tombstones: Vec<(JobId, u32, JobState)>,
    /// Insertion counter giving FIFO order among jobs of equal priority.
    pub(crate) next_seq: u64,
}

/// A job plus what only the running daemon knows about it.
pub(crate) struct Entry {
    pub(crate) job: Job,
    pub(crate) seq: u64,
    pub(crate) run: Option<Run>,
    /// When a TRANSIENT_ERROR job is due for its retry.
    pub(crate) retry_at: Option<Instant>,
    /// Start of the current stretch without progress, set at the first transient error.
    pub(crate) stalled_since: Option<Instant>,
    /// Complete or Cancel is in progress: other changes are refused.
    pub(crate) finishing: bool,
    /// Time spent CONNECTING or TRANSFERRING since the last Resume, counted against the job's
    /// maximum download time (spec §5.3). Not persisted: a restart grants a fresh budget.
    pub(crate) active_time: Duration,
    /// Per file, filled spans recorded in the table (so every store write of the file includes
    /// them) whose store flush has not returned yet; a file with none has no entry. Clients are not shown them: a crash in that
    /// window would take them back, and what GetFilledFileRanges reported must never shrink.
    pub(crate) unflushed: HashMap<u32, RangeSet>,
    /// Where this job's notifications go: a handle on the manager's bus, so that
    /// [`set_state`] can announce every state change.
    pub(crate) events: EventBus,
    /// Held by an AddFile from its first look at the job to its store write: a large one writes
    /// its file records outside the table lock, and no other add may take the same indexes.
    pub(crate) adding: Arc<tokio::sync::Mutex<()>>,
    /// The job's local paths, for AddFile's duplicate check.
    pub(crate) paths: crate::files::PathIndex,
    /// Files from this index on were just added and their flush has not returned: workers leave
    /// them alone, since a failed flush takes them back (and the next AddFile reuses the indexes).
    pub(crate) adding_from: Option<u32>,
}

impl Entry {
    /// File `index`'s filled set as clients may see it (see [`Entry::visible`]); borrowed unless
    /// a flush of that file is in flight.
    pub(crate) fn visible_filled(&self, index: u32) -> Option<Cow<'_, RangeSet>> {
        let file = self.job.files.get(index as usize)?;
        Some(match self.unflushed.get(&index) {
            Some(pending) => Cow::Owned(file.filled.subtract(pending)),
            None => Cow::Borrowed(&file.filled),
        })
    }

    /// Whether clients may see file `index` as transferred (its last bytes' flush has returned).
    pub(crate) fn file_transferred(&self, index: u32) -> bool {
        self.visible_filled(index)
            .is_some_and(|filled| self.job.files[index as usize].is_transferred_of(&filled))
    }

    /// The job's progress as clients may see it (see [`Entry::visible`]), without a clone.
    pub(crate) fn progress(&self) -> Progress {
        if self.unflushed.is_empty() {
            return self.job.progress();
        }
        self.job.progress_hiding(|index| self.unflushed.get(&index))
    }

    /// The job as clients may see it: without the spans in [`Entry::unflushed`], so progress,
    /// filled ranges and job snapshots all say the same thing and none ever shrinks. Borrowed
    /// unless a flush is in flight.
    pub(crate) fn visible(&self) -> Cow<'_, Job> {
        if self.unflushed.is_empty() {
            return Cow::Borrowed(&self.job);
        }
        let mut job = self.job.clone();
        for (&index, spans) in &self.unflushed {
            if let Some(file) = job.files.get_mut(index as usize) {
                file.filled = file.filled.subtract(spans);
            }
        }
        Cow::Owned(job)
    }
}

/// A running worker.
pub(crate) struct Run {
    pub(crate) stop: CancellationToken,
    /// Tells the worker to choose its next piece again (new on-demand ranges, new files).
    pub(crate) repick: Arc<Notify>,
    /// Cancelled when the worker's task has ended (returned, panicked or been dropped), so
    /// everyone who must wait for it can: shutdown and a Cancel or Complete arriving meanwhile
    /// both wait, rather than whoever came second finding nothing to wait on and deleting temp
    /// files a blocking write of the worker's is still using.
    pub(crate) ended: CancellationToken,
}

impl Run {
    /// Stops the worker; the returned token is cancelled once it has ended.
    pub(crate) fn halt(&self) -> CancellationToken {
        self.stop.cancel();
        self.ended.clone()
    }
}

impl Manager {
    /// Opens the manager on a store: every job is loaded, jobs that were active when the previous
    /// process died go back to QUEUED, and the scheduler starts.
    pub fn start(store: Arc<dyn Store>, config: ManagerConfig) -> Result<Manager, ManagerError> {
        let http = bits_http::HttpClient::new(config.http.clone())?;
        let mut jobs = store.load_all()?;
        jobs.sort_by_key(|j| j.creation_time);
        let access = AccessPolicy::new(config.admin_uids.clone(), config.admin_gids.clone());
        let owner = |uid| match Identity::switches_to(uid) {
            true => access.identity(uid),
            false => Identity::unswitched(uid),
        };
        for j in crate::reconcile::trim_filled(&mut jobs, owner) {
            store.put_job(&jobs[j])?;
        }
        crate::reconcile::report_orphans(&jobs);
        let mut table = Table::default();
        let events = EventBus::new();
        let now = Instant::now();
        for mut job in jobs {
            let before = job.state;
            if let Ok(after) = transition(job.state, Event::Requeue) {
                job.state = after;
            }
            if before != job.state {
                store.put_job(&job)?;
            }
            // A job waiting to retry when the daemon stopped retries soon after start.
            let retry_at = (job.state == JobState::TransientError).then_some(now);
            let seq = table.next_seq;
            table.next_seq += 1;
            let paths = crate::files::PathIndex::of(&job.files);
            table.jobs.insert(
                job.id,
                Entry {
                    job,
                    seq,
                    run: None,
                    retry_at,
                    stalled_since: None,
                    finishing: false,
                    events: events.clone(),
                    active_time: Duration::ZERO,
                    unflushed: HashMap::new(),
                    adding: Arc::default(),
                    paths,
                    adding_from: None,
                },
            );
        }
        store.flush()?;
        tracing::info!(jobs = table.jobs.len(), "job table loaded");
        let stats = crate::stats::Counters::new();
        let flusher = Flusher::start(store.clone(), Arc::clone(&stats.flushes))
            .map_err(ManagerError::Thread)?;
        let manager = Manager {
            inner: Arc::new(Inner {
                table: Mutex::new(table),
                store,
                http,
                config,
                wake: Notify::new(),
                shutdown: CancellationToken::new(),
                runtime: tokio::runtime::Handle::current(),
                events,
                access,
                commit: GroupCommit {
                    tickets: AtomicU64::new(0),
                    flushed: tokio::sync::Mutex::new(Flushed::default()),
                    flusher,
                    deferred: AtomicU64::new(0),
                    deferred_pending: AtomicBool::new(false),
                },
                workers: AtomicUsize::new(0),
                stats,
            }),
        };
        crate::notify_cmd::start(&manager);
        tokio::spawn(crate::scheduler::run(manager.clone()));
        Ok(manager)
    }

    /// Stops every worker (each syncs and records what it wrote) and flushes the store.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.wake.notify_one();
        let workers: Vec<CancellationToken> = {
            let table = self.table();
            table.jobs.values().filter_map(|e| e.run.as_ref()).map(Run::halt).collect()
        };
        for ended in workers {
            ended.cancelled().await;
        }
        if let Err(e) = self.flush().await {
            tracing::error!(error = %e, "final store flush failed");
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

    /// Makes every store write so far durable, off the async threads.
    ///
    /// Group commit: many workers finishing small files at once would each wait for a flush of
    /// their own, one after another. Instead each caller takes a ticket (after its writes), and
    /// whoever gets the flush lock flushes for every ticket issued so far; callers whose ticket a
    /// finished flush already covers return without flushing.
    pub(crate) async fn flush(&self) -> Result<(), BitsError> {
        let ticket = self.flush_ticket();
        self.flush_through(ticket).await
    }

    /// Makes the store writes so far durable within `delay`, without waiting for it. Any flush
    /// that starts sooner (another caller's) covers them, and this one then has nothing to do.
    /// Writes that come while such a flush is pending ride along with it (flushed sooner than
    /// their own delay), so a burst of calls schedules one flush, not one each.
    fn flush_soon(&self, delay: Duration) {
        let commit = &self.inner.commit;
        commit.deferred.fetch_max(self.flush_ticket(), Ordering::SeqCst);
        if commit.deferred_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let manager = self.clone();
        self.inner.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            let commit = &manager.inner.commit;
            // Cleared before the ticket is read: a write after this schedules a flush of its own.
            commit.deferred_pending.store(false, Ordering::SeqCst);
            let ticket = commit.deferred.load(Ordering::SeqCst);
            if let Err(e) = manager.flush_through(ticket).await {
                // Nobody waits for this flush to report to: try again (any other flush meanwhile
                // covers the writes too), at most once a second while the store keeps failing.
                tracing::error!(error = %e, "deferred store flush failed; retrying in 1 s");
                manager.flush_soon(delay.max(DEFERRED_RETRY));
            }
        });
    }

    /// A ticket for the store writes made so far (see [`Manager::flush`]).
    fn flush_ticket(&self) -> u64 {
        self.inner.commit.tickets.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Returns once a flush that covers `ticket` has returned, flushing if none has.
    /// A ticket a failed flush covered fails too, even when a later flush succeeds: the writes
    /// it stands for may be the ones the failure lost, and its caller must not acknowledge them.
    async fn flush_through(&self, ticket: u64) -> Result<(), BitsError> {
        let commit = &self.inner.commit;
        let mut flushed = commit.flushed.lock().await;
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
        let covers = commit.tickets.load(Ordering::SeqCst);
        if let Err(e) = commit.flusher.flush().await {
            let lo = if lo == hi { flushed.through } else { lo.min(flushed.through) };
            flushed.failed = (lo, covers);
            flushed.failure = Some(e.clone());
            return Err(e);
        }
        flushed.through = covers;
        Ok(())
    }

    /// Writes only the job's own fields (state, times, error) to the store; the caller flushes.
    /// Cheap whatever the number of files.
    pub(crate) fn persist_job_fields(&self, job: &Job) -> Result<(), BitsError> {
        self.inner.store.put_job_fields(job).map_err(store_error)
    }

    /// Writes one file's record to the store; the caller flushes. Called under the table lock,
    /// so store writes keep the order of the in-memory changes.
    pub(crate) fn persist_file(
        &self,
        id: JobId,
        index: u32,
        file: &JobFile,
    ) -> Result<(), BitsError> {
        self.inner.store.put_file(id, index, file).map_err(store_error)
    }

    /// Writes the whole job (fields and files) to the store; the caller flushes.
    pub(crate) fn persist_job(&self, job: &Job) -> Result<(), BitsError> {
        self.inner.store.put_job(job).map_err(store_error)
    }

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
        let uid = self
            .table()
            .jobs
            .get(&id)
            .map(|e| e.job.owner_uid)
            .ok_or_else(|| BitsError::new(Code::BG_E_NOT_FOUND, format!("no job {id}")))?;
        Ok(self.owner_identity(uid))
    }

    /// How many job workers are running: a cheap "is the data path busy" without the table lock.
    pub fn transfers_running(&self) -> usize {
        self.inner.workers.load(Ordering::Relaxed)
    }

    /// How many jobs are in each state class, for a status line (systemd's STATUS=).
    pub fn summary(&self) -> Summary {
        let table = self.table();
        let mut summary = Summary { jobs: table.jobs.len(), ..Summary::default() };
        for entry in table.jobs.values() {
            match entry.job.state {
                JobState::Transferring | JobState::Connecting => summary.transferring += 1,
                JobState::Queued => summary.queued += 1,
                JobState::TransientError | JobState::Error => summary.in_error += 1,
                _ => {}
            }
        }
        summary
    }

    /// Spec §3.A CreateJob steps 3–4: per-user then per-machine limits; admins are exempt.
    fn check_job_limits(&self, caller: Caller) -> Result<(), BitsError> {
        if caller.is_admin() {
            return Ok(());
        }
        let table = self.table();
        let (per_user, per_machine) =
            (self.config().max_jobs_per_user, self.config().max_jobs_per_machine);
        let owned = table.jobs.values().filter(|e| e.job.owner_uid == caller.uid).count();
        if owned >= per_user {
            return Err(BitsError::new(
                Code::BG_E_TOO_MANY_JOBS_PER_USER,
                format!(
                    "uid {} already owns {owned} jobs, at most {per_user} are allowed",
                    caller.uid
                ),
            ));
        }
        if table.jobs.len() >= per_machine {
            return Err(BitsError::new(
                Code::BG_E_TOO_MANY_JOBS_PER_MACHINE,
                format!(
                    "the queue holds {} jobs, at most {per_machine} are allowed",
                    table.jobs.len()
                ),
            ));
        }
        Ok(())
    }

    // ---- BITS operations -------------------------------------------------------------------

    pub async fn create_job(
        &self,
        caller: Caller,
        display_name: &str,
        description: &str,
        job_type: JobType,
        priority: Priority,
    ) -> Result<JobId, BitsError> {
        validate::display_name(display_name)?;
        validate::description(description)?;
        if job_type != JobType::Download {
            return Err(BitsError::new(
                Code::E_NOTIMPL,
                format!("job type {job_type:?} is not supported"),
            ));
        }
        self.check_job_limits(caller)?;
        let now = SystemTime::now();
        let job = Job {
            description: description.to_string(),
            job_type,
            priority,
            minimum_retry_delay_secs: self.config().default_retry_delay_secs,
            no_progress_timeout_secs: self.config().default_no_progress_timeout_secs,
            ..Job::new(JobId::new_random(), display_name.to_string(), caller.uid, now)
        };
        let id = job.id;
        {
            let mut table = self.table();
            self.persist_job(&job)?;
            let seq = table.next_seq;
            table.next_seq += 1;
            table.jobs.insert(
                id,
                Entry {
                    job,
                    seq,
                    run: None,
                    retry_at: None,
                    stalled_since: None,
                    finishing: false,
                    events: self.events().clone(),
                    active_time: Duration::ZERO,
                    unflushed: HashMap::new(),
                    adding: Arc::default(),
                    paths: Default::default(),
                    adding_from: None,
                },
            );
        }
        if self.inner.shutdown.is_cancelled() {
            // The final flush may have run already, and a deferred one would die with the
            // runtime: this job is flushed before the answer, as it was before the deferral.
            self.flush().await?;
        } else {
            self.flush_soon(self.config().new_job_flush_delay);
        }
        tracing::info!(job = %id, uid = caller.uid, "job created");
        Ok(id)
    }

    pub fn get_job(&self, caller: Caller, id: JobId) -> Result<Job, BitsError> {
        let table = self.table();
        Ok(lookup(&table, caller, id)?.visible().into_owned())
    }

    /// The caller's jobs, oldest first. Final jobs are never listed.
    pub fn list_jobs(&self, caller: Caller) -> Vec<Job> {
        self.jobs_where(|job| job.owner_uid == caller.uid)
    }

    /// The jobs `keep` selects, oldest first.
    pub(crate) fn jobs_where(&self, keep: impl Fn(&Job) -> bool) -> Vec<Job> {
        let table = self.table();
        let mut entries: Vec<&Entry> = table.jobs.values().filter(|e| keep(&e.job)).collect();
        entries.sort_by_key(|e| e.seq);
        entries.into_iter().map(|e| e.visible().into_owned()).collect()
    }

    pub async fn resume(&self, caller: Caller, id: JobId) -> Result<Code, BitsError> {
        let undo = {
            let mut table = self.table();
            let entry = lookup_mut(&mut table, caller, id)?;
            let event = Event::Resume {
                has_files: !entry.job.files.is_empty(),
                // A file with an expected digest counts once its bytes hashed to it.
                all_transferred: entry.job.all_verified(),
            };
            let next = transition(entry.job.state, event)?;
            if next == entry.job.state {
                None
            } else {
                self.stored_state_change(entry, |entry| {
                    if next == JobState::Transferred && entry.job.transfer_completion_time.is_none()
                    {
                        entry.job.transfer_completion_time = Some(SystemTime::now());
                    }
                    set_state(entry, next);
                    entry.retry_at = None;
                    // Resume starts a fresh attempt: the no-progress timer and the download-time
                    // budget restart with it.
                    entry.stalled_since = None;
                    entry.active_time = Duration::ZERO;
                })?
            }
        };
        self.flush_or_take_back(id, undo).await?;
        self.inner.wake.notify_one();
        Ok(Code::S_OK)
    }

    pub async fn suspend(&self, caller: Caller, id: JobId) -> Result<Code, BitsError> {
        let undo = {
            let mut table = self.table();
            let entry = lookup_mut(&mut table, caller, id)?;
            let next = transition(entry.job.state, Event::Suspend)?;
            if let Some(run) = &entry.run {
                // The worker syncs and records what it wrote, then exits; it reports no state.
                run.stop.cancel();
            }
            if next == entry.job.state {
                None
            } else {
                self.stored_state_change(entry, |entry| {
                    set_state(entry, next);
                    entry.retry_at = None;
                })?
            }
        };
        self.flush_or_take_back(id, undo).await?;
        self.inner.wake.notify_one();
        Ok(Code::S_OK)
    }

    /// Applies a state change to the table and writes the job's fields, taking the change back
    /// if the store refuses the write. Returns what [`Manager::flush_or_take_back`] needs.
    fn stored_state_change(
        &self,
        entry: &mut Entry,
        change: impl FnOnce(&mut Entry),
    ) -> Result<Option<(SavedState, JobState)>, BitsError> {
        let saved = SavedState::of(entry);
        change(entry);
        if let Err(e) = self.persist_job_fields(&entry.job) {
            saved.restore(entry);
            return Err(e);
        }
        Ok(Some((saved, entry.job.state)))
    }

    /// Flushes a state change, or takes it back when the flush fails: what a client was told
    /// failed must not show (and a restart would bring the stored state back anyway). The
    /// change is left alone if the job moved on meanwhile.
    async fn flush_or_take_back(
        &self,
        id: JobId,
        undo: Option<(SavedState, JobState)>,
    ) -> Result<(), BitsError> {
        let Err(e) = self.flush().await else { return Ok(()) };
        if let Some((saved, after)) = undo {
            let mut table = self.table();
            if let Some(entry) = table.jobs.get_mut(&id)
                && entry.job.state == after
            {
                saved.restore(entry);
                if let Err(e) = self.persist_job_fields(&entry.job) {
                    tracing::warn!(job = %id, error = %e, "storing a state taken back failed");
                }
            }
        }
        Err(e)
    }

    /// Cancel: stops the transfer, deletes every temp file, and retires the job.
    pub async fn cancel(&self, caller: Caller, id: JobId) -> Result<Code, BitsError> {
        self.finish(caller, id, Event::Cancel).await
    }

    /// Complete: renames every fully transferred file into place (fsync, rename, fsync dir, mtime
    /// from Last-Modified), deletes the rest, and retires the job. If a rename fails the job stays
    /// (TRANSFERRED when all its bytes are present) and Complete may be called again.
    pub async fn complete(&self, caller: Caller, id: JobId) -> Result<Code, BitsError> {
        self.finish(caller, id, Event::Complete).await
    }

    /// Complete and Cancel run on a task of their own: a client that hangs up halfway (hyper
    /// drops the handler's future) must not leave a job half-finished and locked.
    async fn finish(&self, caller: Caller, id: JobId, event: Event) -> Result<Code, BitsError> {
        let this = self.clone();
        self.inner
            .runtime
            .spawn(async move {
                let files = this.begin_finish(caller, id, event).await?;
                let owner = this.job_identity(id)?;
                let (result, final_state) = if event == Event::Cancel {
                    (this.delete_temps(&owner, &files, |_| true).await, JobState::Cancelled)
                } else {
                    (this.complete_files(&owner, id, &files).await, JobState::Acknowledged)
                };
                let result = match result {
                    Ok(code) => this.end_finish(id, final_state).await.map(|()| code),
                    Err(e) => Err(e),
                };
                if let Err(e) = &result {
                    tracing::warn!(job = %id, error = %e, "{event:?} failed; the job stays");
                    this.abort_finish(id).await;
                } else {
                    tracing::info!(job = %id, state = final_state.name(), "job finished");
                }
                result
            })
            .await
            .unwrap_or_else(|e| {
                Err(BitsError::new(Code::E_FAIL, format!("{event:?} of job {id} failed: {e}")))
            })
    }

    /// The Complete part proper: finalize what is whole, delete what is not.
    async fn complete_files(
        &self,
        owner: &Identity,
        id: JobId,
        files: &[JobFile],
    ) -> Result<Code, BitsError> {
        // A file whose expected digest was not matched by its bytes on disk is never moved.
        let done: Vec<bool> =
            files.iter().map(|f| f.is_transferred() && f.digest_verified()).collect();
        self.finalize_files(owner, id, files, &done).await?;
        let deleted = self.delete_temps(owner, files, |i| !done[i]).await?;
        Ok(if !done.iter().all(|d| *d) { Code::BG_S_PARTIAL_COMPLETE } else { deleted })
    }

    /// Moves every whole file into place. `completed` is recorded (one store flush for all)
    /// *before* the renames and undone for the files not renamed if one fails, so a crash in
    /// between is recognised on the next Complete: completed with its temp file gone means the
    /// rename happened. The renames run in one blocking batch and each directory is synced once.
    async fn finalize_files(
        &self,
        owner: &Identity,
        id: JobId,
        files: &[JobFile],
        done: &[bool],
    ) -> Result<(), BitsError> {
        let whole: Vec<(u32, JobFile)> = files
            .iter()
            .enumerate()
            .filter(|(i, _)| done[*i])
            .map(|(i, f)| (i as u32, f.clone()))
            .collect();
        let newly: Vec<u32> = whole.iter().filter(|(_, f)| !f.completed).map(|(i, _)| *i).collect();
        self.set_completed_many(id, &newly, true).await?;

        let batch = whole.clone();
        let owner_id = owner.clone();
        // As the owner: the rename needs the owner's right to replace the destination (and
        // never follows a link someone planted there; it replaces it).
        let stopped = run_as(owner.clone(), move || {
            let owner = owner_id;
            // Which files to move: in order, up to the first whose temp file cannot be made
            // ready. A temp file already gone was renamed before a crash if the file is
            // completed; if not, its bytes are lost.
            let mut failure = None;
            let mut already: Vec<&Path> = Vec::new();
            // The files to move, and each one's position in `batch`.
            let (mut plan, mut positions) = (Vec::new(), Vec::new());
            let mut dirs = bits_disk::Dirs::default();
            for (k, (index, file)) in batch.iter().enumerate() {
                let found = prepare_temp_for_finalize(&mut dirs, file, owner.uid);
                let found = match found {
                    Ok(found) => found,
                    Err(e) => {
                        failure = Some((k, *index, Some(e)));
                        break;
                    }
                };
                let Some((found, made)) = found else {
                    if file.completed {
                        already.push(&file.local_path);
                        continue;
                    }
                    failure = Some((k, *index, None));
                    break;
                };
                let mtime = remote_mtime(&file.validator);
                let (temp, dest) = (file.temp_path.as_path(), file.local_path.as_path());
                let dir_ino = file.dir_ino;
                plan.push(bits_disk::Move { temp, dest, mtime, made, dir_ino, found: Some(found) });
                positions.push(k);
            }
            let (renamed, error) = bits_disk::rename_all_into_place(&plan);
            if let Some(e) = error {
                let k = positions[renamed];
                failure = Some((k, batch[k].0, Some(disk_error(e))));
            }
            let done = plan[..renamed].iter().map(|m| m.dest).chain(already);
            bits_disk::sync_parent_dirs(done).map_err(disk_error)?;
            Ok(failure)
        })
        .await;
        let failure = match stopped {
            Ok(None) => return Ok(()),
            Ok(Some(failure)) => failure,
            Err(e) => {
                self.set_completed_many(id, &newly, false).await?;
                return Err(e);
            }
        };
        // Files from the failed one on were not renamed: they are not completed after all.
        let (k, index, error) = failure;
        let not_renamed: Vec<u32> =
            whole[k..].iter().filter(|(_, f)| !f.completed).map(|(i, _)| *i).collect();
        self.set_completed_many(id, &not_renamed, false).await?;
        match error {
            Some(e) => Err(e),
            None => {
                // The temp file vanished behind our back: its bytes must be fetched again.
                self.update_file(id, index, JobFile::reset_progress).await?;
                Err(BitsError::new(
                    Code::ERROR_PATH_NOT_FOUND,
                    format!(
                        "the temp file {} of file {index} is gone or truncated; Resume downloads \
                         the file again",
                        whole[k].1.temp_path.display()
                    ),
                ))
            }
        }
    }

    /// Deletes the temp files of the (not completed) files `which` selects.
    async fn delete_temps(
        &self,
        owner: &Identity,
        files: &[JobFile],
        which: impl Fn(usize) -> bool,
    ) -> Result<Code, BitsError> {
        let temps: Vec<(PathBuf, Option<u64>, Option<TempId>)> = files
            .iter()
            .enumerate()
            .filter(|(i, f)| which(*i) && !f.completed)
            .map(|(_, f)| (f.temp_path.clone(), f.dir_ino, f.temp_id))
            .collect();
        run_as(owner.clone(), move || {
            let mut all_deleted = true;
            for (temp, dir_ino, made) in temps {
                if let Err(e) = bits_disk::remove_temp(&temp, dir_ino, made) {
                    tracing::warn!(error = %e, "cannot delete temp file");
                    all_deleted = false;
                }
            }
            Ok(if all_deleted { Code::S_OK } else { Code::BG_S_UNABLE_TO_DELETE_FILES })
        })
        .await
    }

    pub fn get_progress(&self, caller: Caller, id: JobId) -> Result<Progress, BitsError> {
        let table = self.table();
        Ok(lookup(&table, caller, id)?.progress())
    }

    /// The error object, which exists only in ERROR and TRANSIENT_ERROR.
    pub fn get_error(&self, caller: Caller, id: JobId) -> Result<JobError, BitsError> {
        let table = self.table();
        let job = &lookup(&table, caller, id)?.job;
        match (&job.error, job.state) {
            (Some(error), JobState::Error | JobState::TransientError) => Ok(error.clone()),
            _ => Err(BitsError::new(
                Code::BG_E_ERROR_INFORMATION_UNAVAILABLE,
                format!("job {id} is {}, not in an error state", job.state.name()),
            )),
        }
    }

    /// RequestFileRanges: these remote ranges are fetched ahead of the rest of the file. Ranges may
    /// overlap each other and what is already filled; no byte is fetched twice.
    ///
    /// The ranges are sorted and merged before the table is locked (a large request is worth a
    /// blocking-pool thread, so the gRPC thread keeps serving meanwhile); under the lock they are
    /// only checked against the file's size and merged into its pending set in one pass.
    pub async fn request_file_ranges(
        &self,
        caller: Caller,
        id: JobId,
        index: u32,
        ranges: &[ByteRange],
    ) -> Result<Code, BitsError> {
        // Spec §3 order: lookup, state and the file's type come before the ranges themselves.
        let size = {
            let mut table = self.table();
            let entry = on_demand_entry(&mut table, caller, id, index)?;
            file_mut(&mut entry.job, index)?.remote_size
        };
        let requested = if ranges.len() <= SORT_INLINE_MAX {
            Requested::parse(ranges, caller.is_admin())?
        } else {
            let ranges = ranges.to_vec();
            tokio::task::spawn_blocking(move || Requested::parse(&ranges, caller.is_admin()))
                .await
                .map_err(|e| {
                    BitsError::new(Code::E_FAIL, format!("sorting the ranges failed: {e}"))
                })??
        };
        let wanted = requested.within(size)?;
        // The new record is built and encoded outside the table lock, from a copy of the file,
        // and written under it only if the file is still that copy (a worker may record bytes
        // meanwhile: then again, and after a few tries all under the lock).
        let mut tries = 0;
        let (before, after) = loop {
            tries += 1;
            let under_lock = tries > OPTIMISTIC_TRIES;
            let copy = {
                let mut table = self.table();
                let entry = on_demand_entry(&mut table, caller, id, index)?;
                let file = file_mut(&mut entry.job, index)?;
                if under_lock {
                    let pending = pending_after(file, index, &requested, &wanted, size, caller)?;
                    let before = std::mem::replace(&mut file.requested, pending);
                    let after = file.requested.clone();
                    self.persist_file(id, index, file)?;
                    self.requested_changed(entry)?;
                    break (before, after);
                }
                file.clone()
            };
            let pending = pending_after(&copy, index, &requested, &wanted, size, caller)?;
            let updated = JobFile { requested: pending, ..copy.clone() };
            let store = self.inner.store.clone();
            let (encoded, updated) = run_blocking(move || {
                let encoded = store.encode_file(id, index, &updated).map_err(store_error)?;
                Ok((encoded, updated))
            })
            .await?;
            let after = updated.requested.clone();
            let mut table = self.table();
            let entry = on_demand_entry(&mut table, caller, id, index)?;
            let file = file_mut(&mut entry.job, index)?;
            if *file != copy {
                continue;
            }
            self.inner.store.put_encoded_file(encoded).map_err(store_error)?;
            *file = updated;
            self.requested_changed(entry)?;
            break (copy.requested, after);
        };
        if let Err(e) = self.flush().await {
            // Not durable, so not shown: the pending ranges go back to what they were.
            let mut table = self.table();
            if let Some(file) =
                table.jobs.get_mut(&id).and_then(|e| e.job.files.get_mut(index as usize))
                && file.requested == after
            {
                file.requested = before;
                if let Err(e) = self.persist_file(id, index, file) {
                    tracing::warn!(job = %id, index, error = %e, "storing requested ranges taken back failed");
                }
            }
            return Err(e);
        }
        self.inner.wake.notify_one();
        Ok(Code::S_OK)
    }

    /// The rest of RequestFileRanges under the table lock, once the file's record is written.
    fn requested_changed(&self, entry: &mut Entry) -> Result<(), BitsError> {
        entry.job.modification_time = SystemTime::now();
        self.persist_job_fields(&entry.job)?;
        if let Some(run) = &entry.run {
            run.repick.notify_one();
        }
        Ok(())
    }

    /// The remote byte ranges durably present, sorted and merged.
    pub fn get_filled_file_ranges(
        &self,
        caller: Caller,
        id: JobId,
        index: u32,
    ) -> Result<RangeSet, BitsError> {
        let table = self.table();
        let entry = lookup(&table, caller, id)?;
        let job = &entry.job;
        let filled = entry.visible_filled(index).ok_or_else(|| no_such_file(job, index))?;
        Ok(filled.into_owned())
    }

    // ---- Complete / Cancel plumbing --------------------------------------------------------

    /// Checks the operation is allowed, marks the job as finishing and stops its worker. Returns
    /// the files as they are once the worker has recorded its last bytes.
    async fn begin_finish(
        &self,
        caller: Caller,
        id: JobId,
        event: Event,
    ) -> Result<Vec<JobFile>, BitsError> {
        let worker = {
            let mut table = self.table();
            let entry = lookup_mut(&mut table, caller, id)?;
            transition(entry.job.state, event)?;
            entry.finishing = true;
            entry.run.as_ref().map(Run::halt)
        };
        if let Some(ended) = worker {
            ended.cancelled().await;
        }
        let table = self.table();
        Ok(table.jobs.get(&id).map(|e| e.job.files.clone()).unwrap_or_default())
    }

    async fn abort_finish(&self, id: JobId) {
        {
            let mut table = self.table();
            if let Some(entry) = table.jobs.get_mut(&id) {
                entry.finishing = false;
                if entry.job.all_verified() && entry.job.state != JobState::Transferred {
                    set_state(entry, JobState::Transferred);
                } else if entry.job.state.is_active() {
                    set_state(entry, JobState::Suspended);
                }
                if let Err(e) = self.persist_job_fields(&entry.job) {
                    tracing::error!(job = %id, error = %e, "cannot persist job");
                }
            }
        }
        let _ = self.flush().await;
    }

    /// Sets `completed` on several files with one store flush.
    async fn set_completed_many(
        &self,
        id: JobId,
        indexes: &[u32],
        completed: bool,
    ) -> Result<(), BitsError> {
        if indexes.is_empty() {
            return Ok(());
        }
        {
            let mut table = self.table();
            let entry = table
                .jobs
                .get_mut(&id)
                .ok_or_else(|| BitsError::new(Code::BG_E_NOT_FOUND, format!("no job {id}")))?;
            for &index in indexes {
                let file = file_mut(&mut entry.job, index)?;
                file.completed = completed;
                self.persist_file(id, index, file)?;
            }
        }
        self.flush().await
    }

    /// Changes one file in memory and in the store (under the table lock, so store writes keep
    /// the order of the in-memory changes), then flushes.
    async fn update_file(
        &self,
        id: JobId,
        index: u32,
        change: impl FnOnce(&mut JobFile),
    ) -> Result<(), BitsError> {
        {
            let mut table = self.table();
            let entry = table
                .jobs
                .get_mut(&id)
                .ok_or_else(|| BitsError::new(Code::BG_E_NOT_FOUND, format!("no job {id}")))?;
            let file = file_mut(&mut entry.job, index)?;
            change(file);
            self.persist_file(id, index, file)?;
        }
        self.flush().await
    }

    /// Retires a finished job: out of the store first (so a failure leaves it in both places
    /// and the caller can retry), then out of the table, leaving a tombstone.
    async fn end_finish(&self, id: JobId, final_state: JobState) -> Result<(), BitsError> {
        // Deleting syncs the store's job count: blocking work, on the flusher thread like every
        // flush (see `flusher.rs`).
        let delete = move |store: &dyn Store| {
            store.delete_job(id)?;
            store.flush()
        };
        self.inner.commit.flusher.run(delete).await?;
        {
            let mut table = self.table();
            if let Some(entry) = table.jobs.remove(&id) {
                entry.events.finished(id, final_state, entry.job.progress());
                table.tombstones.push((id, entry.job.owner_uid, final_state));
                if table.tombstones.len() > MAX_TOMBSTONES {
                    table.tombstones.remove(0);
                }
            }
        }
        self.inner.wake.notify_one();
        Ok(())
    }
}

/// What Resume and Suspend change besides the state, kept to undo a change the store refused.
pub(crate) struct SavedState {
    state: JobState,
    retry_at: Option<Instant>,
    stalled_since: Option<Instant>,
    active_time: Duration,
    transfer_completion_time: Option<SystemTime>,
}

impl SavedState {
    fn of(entry: &Entry) -> SavedState {
        SavedState {
            state: entry.job.state,
            retry_at: entry.retry_at,
            stalled_since: entry.stalled_since,
            active_time: entry.active_time,
            transfer_completion_time: entry.job.transfer_completion_time,
        }
    }

    /// Puts the job back as it was. A job that was transferring goes back to QUEUED: its worker
    /// was stopped, and the scheduler starts a new one. A job put back where no worker may run
    /// has its worker (if the scheduler started one meanwhile) stopped.
    fn restore(self, entry: &mut Entry) {
        let state = if self.state.is_active() { JobState::Queued } else { self.state };
        if !state.is_active()
            && let Some(run) = &entry.run
        {
            run.stop.cancel();
        }
        if entry.job.state != state {
            set_state(entry, state);
        }
        entry.retry_at = self.retry_at;
        entry.stalled_since = self.stalled_since;
        entry.active_time = self.active_time;
        entry.job.transfer_completion_time = self.transfer_completion_time;
    }
}

/// A whole file's temp file as Complete finds it (reached without following a link): its
/// `lstat` and which file the job created, or `None` when it is gone or shorter than its bytes. The temp file of a
/// transferred zero-length file may never have been created (no byte was written): it is
/// created now, so there is something to rename.
fn prepare_temp_for_finalize(
    dirs: &mut bits_disk::Dirs,
    file: &JobFile,
    owner: u32,
) -> Result<Option<(bits_disk::Stat, Option<TempId>)>, BitsError> {
    let temp = &file.temp_path;
    let mut made = file.temp_id;
    if file.bytes_total() == Some(0) && made.is_none() && !file.completed {
        let mode = file.mode.unwrap_or(0o644);
        let part =
            bits_disk::PartFile::create(temp, file.dir_ino, mode, owner).map_err(disk_error)?;
        part.sync().map_err(disk_error)?;
        made = Some(part.id());
    }
    let found = dirs.stat(temp, file.dir_ino).map_err(disk_error)?;
    // Shorter than its bytes: truncated behind our back, so some recorded bytes are lost.
    let whole = |stat: &bits_disk::Stat| stat.st_size as u64 >= file.bytes_total().unwrap_or(0);
    Ok(found.filter(whole).map(|stat| (stat, made)))
}

/// The server's Last-Modified, which a completed file gets as its modification time.
pub(crate) fn remote_mtime(validator: &bits_core::Validator) -> Option<SystemTime> {
    validator.last_modified.as_deref().and_then(|s| httpdate::parse_http_date(s).ok())
}

/// The one place a job's state changes; it also announces the change (JobModification, or
/// JobTransferred / JobError for TRANSFERRED / ERROR, spec §7.1), so set the job's error first.
pub(crate) fn set_state(entry: &mut Entry, state: JobState) {
    entry.job.state = state;
    entry.job.modification_time = SystemTime::now();
    entry.events.state_changed(entry);
}

pub(crate) fn lookup(table: &Table, caller: Caller, id: JobId) -> Result<&Entry, BitsError> {
    match table.jobs.get(&id) {
        Some(entry) => {
            check_owner(caller, &entry.job)?;
            Ok(entry)
        }
        None => Err(BitsError::new(Code::BG_E_NOT_FOUND, format!("no job {id}"))),
    }
}

/// Lookup for a change: a job that has just been completed or cancelled answers
/// BG_E_INVALID_STATE rather than BG_E_NOT_FOUND (spec §1.1 tombstones).
pub(crate) fn lookup_mut_check(
    table: &Table,
    caller: Caller,
    id: JobId,
) -> Result<&Entry, BitsError> {
    if let Some((_, owner, state)) = table.tombstones.iter().find(|(t, _, _)| *t == id)
        && (*owner == caller.uid || caller.is_admin())
    {
        return Err(BitsError::new(
            Code::BG_E_INVALID_STATE,
            format!("job {id} is {} and can no longer change", state.name()),
        ));
    }
    let entry = lookup(table, caller, id)?;
    if entry.finishing {
        return Err(BitsError::new(
            Code::BG_E_INVALID_STATE,
            format!("job {id} is being completed or cancelled"),
        ));
    }
    Ok(entry)
}

pub(crate) fn lookup_mut(
    table: &mut Table,
    caller: Caller,
    id: JobId,
) -> Result<&mut Entry, BitsError> {
    lookup_mut_check(table, caller, id)?;
    table
        .jobs
        .get_mut(&id)
        .ok_or_else(|| BitsError::new(Code::BG_E_NOT_FOUND, format!("no job {id}")))
}

fn check_owner(caller: Caller, job: &Job) -> Result<(), BitsError> {
    if job.owner_uid == caller.uid || caller.is_admin() {
        Ok(())
    } else {
        Err(BitsError::new(Code::E_ACCESSDENIED, format!("job {} belongs to another user", job.id)))
    }
}

/// Tries RequestFileRanges makes to write a record encoded outside the table lock before it
/// encodes under it.
const OPTIMISTIC_TRIES: u32 = 3;

/// The file's pending on-demand ranges once `requested` (checked against `size`, the size
/// known before) joins them: only bytes not filled yet, within the size known now.
fn pending_after(
    file: &JobFile,
    index: u32,
    requested: &Requested,
    wanted: &RangeSet,
    size: Option<u64>,
    caller: Caller,
) -> Result<RangeSet, BitsError> {
    // A probe may have learned (or changed) the size meanwhile: check against that one.
    let resized;
    let wanted = if file.remote_size != size {
        resized = requested.within(file.remote_size)?;
        &resized
    } else {
        wanted
    };
    let pending = file.requested.union(&wanted.subtract(&file.filled));
    check_pending(&pending, index, caller.is_admin())?;
    Ok(pending)
}

pub(crate) fn file_mut(job: &mut Job, index: u32) -> Result<&mut JobFile, BitsError> {
    let n = job.files.len();
    job.files.get_mut(index as usize).ok_or_else(|| {
        BitsError::new(
            Code::E_INVALIDARG,
            format!("file index {index} is out of range; the job has {n} files"),
        )
    })
}

/// Job `id`'s entry, once RequestFileRanges may change it: the caller owns it (or is an admin),
/// its state allows changes, and file `index` is a whole-file download.
fn on_demand_entry(
    table: &mut Table,
    caller: Caller,
    id: JobId,
    index: u32,
) -> Result<&mut Entry, BitsError> {
    let entry = lookup_mut(table, caller, id)?;
    transition(entry.job.state, Event::Modify)?;
    if !file_mut(&mut entry.job, index)?.ranges.is_empty() {
        return Err(BitsError::new(
            Code::BG_E_RANDOM_ACCESS_NOT_SUPPORTED,
            format!(
                "file {index} was added with static ranges; on-demand ranges need a whole-file download"
            ),
        ));
    }
    Ok(entry)
}

pub(crate) fn no_such_file(job: &Job, index: u32) -> BitsError {
    BitsError::new(
        Code::E_INVALIDARG,
        format!("file index {index} is out of range; the job has {} files", job.files.len()),
    )
}

/// A full disk (or quota) is `ERROR_DISK_FULL`, which a client can act on by freeing space: the
/// store recovers by itself once there is room. Anything else is the store's failure.
pub(crate) fn store_error(e: bits_store::StoreError) -> BitsError {
    tracing::error!(error = %e, "job store failure");
    if e.is_disk_full() {
        return BitsError::new(
            Code::ERROR_DISK_FULL,
            format!("the job store's disk is full; the change was not saved: {e}"),
        );
    }
    BitsError::new(Code::BG_E_DATABASE_CORRUPT, format!("job store failure: {e}"))
}

pub(crate) fn disk_error(e: bits_disk::DiskError) -> BitsError {
    BitsError::new(e.code(), e.to_string())
}

/// Runs blocking file or store work on tokio's blocking pool.
pub(crate) async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BitsError> + Send + 'static,
) -> Result<T, BitsError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(BitsError::new(Code::E_FAIL, format!("blocking task failed: {e}"))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed call is a failed test

    use super::*;
    use crate::testing::{Watched, caller, job_with_files, manager};
    use bits_core::{JobType, Priority};

    /// Waits (up to 10 s) until `store` has seen more than `count` flushes, then a little more,
    /// so that a flush that should not happen has had its chance.
    async fn settle_past(store: &Watched, count: usize) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.flushes() <= count && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        store.flushes()
    }

    /// CreateJob answers before its flush; the client's next call flushes the new job with its
    /// own write, and the deferred flush then has nothing left to do.
    #[tokio::test]
    async fn a_new_job_is_flushed_by_the_next_call_or_soon_after() {
        use bits_store::Store as _;

        let store = Arc::new(Watched::default());
        let start = |delay| {
            let config = ManagerConfig { new_job_flush_delay: delay, ..Default::default() };
            Manager::start(store.clone(), config).unwrap()
        };
        let create = |m: &Manager, name: &'static str| {
            let m = m.clone();
            async move { m.create_job(caller(), name, "", JobType::Download, Priority::Normal).await }
        };
        let dir = tempfile::tempdir().unwrap();

        // AddFile's own flush makes the new job durable (no deferred flush within the test).
        let m = start(Duration::from_secs(3600));
        let at_start = store.flushes();
        let id = create(&m, "t").await.unwrap();
        assert_eq!(store.flushes(), at_start, "CreateJob waited for a flush");
        assert_eq!(store.inner.load_all().unwrap()[0].id, id, "CreateJob did not write the job");
        m.add_file(caller(), id, "http://h/f", &dir.path().join("f"), None).await.unwrap();
        assert_eq!(store.flushes(), at_start + 1, "AddFile did not flush");

        // The deferred flush that comes after it finds nothing left to do.
        let m = start(Duration::from_millis(300));
        let before = store.flushes();
        let id = create(&m, "t1").await.unwrap();
        m.add_file(caller(), id, "http://h/g", &dir.path().join("g"), None).await.unwrap();
        assert_eq!(store.flushes(), before + 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(store.flushes(), before + 1, "the deferred flush flushed again");

        // Alone, new jobs are flushed once the delay has passed: a burst of them by one flush,
        // and a job created after that flush started by a flush of its own.
        let m = start(Duration::from_millis(10));
        let before = store.flushes();
        for name in ["t2", "t3", "t4"] {
            create(&m, name).await.unwrap();
        }
        assert_eq!(settle_past(&store, before).await, before + 1, "three jobs, one flush");
        create(&m, "t5").await.unwrap();
        assert_eq!(settle_past(&store, before + 1).await, before + 2, "t5 was never flushed");

        // Once shutting down, CreateJob flushes before it answers: no deferred flush would run.
        m.shutdown().await;
        let before = store.flushes();
        create(&m, "t6").await.unwrap();
        assert_eq!(store.flushes(), before + 1);
    }

    /// A store that refuses AddFile's write leaves the job as it was, and a retry gets the same
    /// index.
    #[tokio::test]
    async fn add_file_leaves_the_job_unchanged_when_the_store_refuses() {
        use std::sync::atomic::Ordering::SeqCst;

        let store = Arc::new(Watched::default());
        let m = Manager::start(store.clone(), ManagerConfig::default()).unwrap();
        let id = job_with_files(&m, Path::new("/unused"), 0).await;
        let dir = tempfile::tempdir().unwrap();
        let before = m.get_job(caller(), id).unwrap();
        store.fail_adds.store(true, SeqCst);
        let error = m.add_file(caller(), id, "http://h/f", &dir.path().join("f"), None).await;
        let error = error.unwrap_err();
        assert_eq!(error.code, Code::BG_E_DATABASE_CORRUPT, "{error:?}");
        assert!(error.message.contains("disk full"), "{}", error.message);
        assert_eq!(m.get_job(caller(), id).unwrap(), before, "the job changed");
        store.fail_adds.store(false, SeqCst);
        let added =
            m.add_file(caller(), id, "http://h/f", &dir.path().join("f"), None).await.unwrap();
        assert_eq!(added, 0);
    }

    /// An add whose flush fails answers with the error and leaves the job as it was, in the
    /// table and in the store: one file (written under the table lock) and a set large enough
    /// to be written before it. Once the store works again the same adds succeed.
    #[tokio::test]
    async fn an_add_whose_flush_fails_is_taken_back() {
        use std::sync::atomic::Ordering::SeqCst;

        let store = Arc::new(Watched::default());
        let m = Manager::start(store.clone(), ManagerConfig::default()).unwrap();
        let id = job_with_files(&m, Path::new("/unused"), 0).await;
        let dir = tempfile::tempdir().unwrap();
        let before = m.get_job(caller(), id).unwrap();
        // Past the 200-file limit: an administrator's set.
        let admin = Caller { admin: true, ..caller() };
        let many = |n: usize| -> Vec<crate::NewFile> {
            (0..n)
                .map(|i| crate::NewFile {
                    remote_url: format!("http://h/m{i}"),
                    local_path: dir.path().join(format!("m{i}")),
                    ranges: None,
                    sha256: None,
                })
                .collect()
        };
        store.fail.store(true, SeqCst);
        let error = m.add_file(caller(), id, "http://h/f", &dir.path().join("f"), None).await;
        assert!(error.unwrap_err().message.contains("disk on fire"));
        assert_eq!(m.get_job(caller(), id).unwrap(), before, "the failed add is visible");
        let error = m.add_files(admin, id, many(300)).await.unwrap_err();
        assert!(error.message.contains("disk on fire"), "{error:?}");
        assert_eq!(m.get_job(caller(), id).unwrap(), before, "the failed set is visible");
        assert!(store.load_all().unwrap()[0].files.is_empty(), "the store kept an added file");

        store.fail.store(false, SeqCst);
        assert_eq!(m.add_files(admin, id, many(300)).await.unwrap(), (0..300).collect::<Vec<_>>());
        let added = m.add_file(admin, id, "http://h/f", &dir.path().join("f"), None).await;
        assert_eq!(added.unwrap(), 300);
        let stored = &store.load_all().unwrap()[0];
        assert_eq!(stored.files.len(), 301);
        assert_eq!(stored.files, m.get_job(caller(), id).unwrap().files);
        // A path already in the job is refused in a large set too, and adds nothing.
        let mut again = many(299);
        again.push(crate::NewFile {
            remote_url: "http://h/x".into(),
            local_path: dir.path().join("m7"),
            ranges: None,
            sha256: None,
        });
        assert_eq!(m.add_files(admin, id, again).await.unwrap_err().code, Code::E_INVALIDARG);
    }

    /// Concurrent AddFileSets of a non-admin each pass the first look at the 200-file limit;
    /// together they must still not pass it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_adds_keep_the_file_limit() {
        let m = manager().await;
        let id = job_with_files(&m, Path::new("/unused"), 0).await;
        let dir = tempfile::tempdir().unwrap();
        let adds = (0..5).map(|k| {
            let (m, dir) = (m.clone(), dir.path().to_path_buf());
            tokio::spawn(async move {
                let files = (0..200)
                    .map(|i| crate::NewFile {
                        remote_url: format!("http://h/{k}/{i}"),
                        local_path: dir.join(format!("{k}-{i}")),
                        ranges: None,
                        sha256: None,
                    })
                    .collect();
                m.add_files(caller(), id, files).await
            })
        });
        let results = futures::future::join_all(adds).await;
        let refused = results
            .into_iter()
            .filter(|r| matches!(r, Ok(Err(e)) if e.code == Code::BG_E_TOO_MANY_FILES_IN_JOB))
            .count();
        assert_eq!(refused, 4);
        assert_eq!(m.get_job(caller(), id).unwrap().files.len(), 200);
    }

    /// A write a failed flush covered is never acknowledged by a later flush that succeeds: the
    /// failure may have lost it (the store drops what its failed engine held).
    #[tokio::test]
    async fn a_change_a_failed_flush_covered_is_not_acknowledged_later() {
        use std::sync::atomic::Ordering::SeqCst;

        let store = Arc::new(Watched::default());
        let m = Manager::start(store.clone(), ManagerConfig::default()).unwrap();
        let a = m.flush_ticket();
        store.fail.store(true, SeqCst);
        assert!(m.flush().await.is_err(), "another caller's flush covers A's ticket and fails");
        store.fail.store(false, SeqCst);
        let error = m.flush_through(a).await.unwrap_err();
        assert!(error.message.contains("disk on fire"), "{error:?}");
        m.flush().await.unwrap();
        assert!(m.flush_through(a).await.is_err(), "still not acknowledged");
    }

    /// Resume and Suspend whose flush fails answer with the error and leave the state as it
    /// was (a restart would bring the stored state back anyway).
    #[tokio::test]
    async fn resume_and_suspend_whose_flush_fails_are_taken_back() {
        use std::sync::atomic::Ordering::SeqCst;

        let store = Arc::new(Watched::default());
        let m = Manager::start(store.clone(), ManagerConfig::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let id = job_with_files(&m, dir.path(), 1).await;
        store.fail.store(true, SeqCst);
        let error = m.resume(caller(), id).await.unwrap_err();
        assert!(error.message.contains("disk on fire"), "{error:?}");
        assert_eq!(m.get_job(caller(), id).unwrap().state, JobState::Suspended);
        assert_eq!(store.load_all().unwrap()[0].state, JobState::Suspended);

        store.fail.store(false, SeqCst);
        m.resume(caller(), id).await.unwrap();
        let resumed = m.get_job(caller(), id).unwrap().state;
        assert_ne!(resumed, JobState::Suspended);
        store.fail.store(true, SeqCst);
        m.suspend(caller(), id).await.unwrap_err();
        let state = m.get_job(caller(), id).unwrap().state;
        assert_ne!(state, JobState::Suspended, "the failed Suspend shows");
        assert_ne!(store.load_all().unwrap()[0].state, JobState::Suspended);
        store.fail.store(false, SeqCst);
        m.suspend(caller(), id).await.unwrap();
        assert_eq!(m.get_job(caller(), id).unwrap().state, JobState::Suspended);
    }

    /// Spans recorded in the table but not yet flushed are invisible to every read a client can
    /// make, and appear in all of them at once when the flush returns.
    #[tokio::test]
    async fn unflushed_spans_are_hidden_from_every_client_read() {
        let m = manager().await;
        let me = caller();
        let dir = tempfile::tempdir().unwrap();
        let id = job_with_files(&m, dir.path(), 1).await;
        {
            let mut table = m.table();
            let entry = table.jobs.get_mut(&id).unwrap();
            entry.job.files[0].remote_size = Some(100);
            entry.job.files[0].filled.insert(0, 60);
            entry.unflushed.entry(0).or_default().insert(40, 60);
        }
        let seen = |m: &Manager| {
            let progress = m.get_progress(me, id).unwrap();
            let job = m.get_job(me, id).unwrap();
            let listed = m.list_jobs(me);
            let filled = m.get_filled_file_ranges(me, id, 0).unwrap();
            (
                progress.bytes_transferred,
                progress.files[0].bytes_transferred,
                job.files[0].filled.total_len(),
                listed[0].files[0].filled.total_len(),
                filled.total_len(),
            )
        };
        assert_eq!(seen(&m), (40, 40, 40, 40, 40));
        m.table().jobs.get_mut(&id).unwrap().unflushed.clear();
        assert_eq!(seen(&m), (60, 60, 60, 60, 60));
    }

    /// Shutdown and a Cancel arriving meanwhile both wait for the worker, however they
    /// interleave: the temp file stays until the worker has ended, and only then is deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancel_during_shutdown_waits_for_the_worker_before_deleting_its_temp_file() {
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let id = job_with_files(&m, dir.path(), 1).await;
        let temp = m.get_job(caller(), id).unwrap().files[0].temp_path.clone();
        std::fs::write(&temp, b"being written").unwrap();
        // A worker that is still running (in a blocking write, say) until the test ends it.
        let (stop, ended) = (CancellationToken::new(), CancellationToken::new());
        crate::testing::with_entry(&m, id, |entry| {
            let repick = Arc::new(Notify::new());
            entry.run = Some(Run { stop: stop.clone(), repick, ended: ended.clone() });
        });

        let shutdown = tokio::spawn({
            let m = m.clone();
            async move { m.shutdown().await }
        });
        tokio::time::timeout(Duration::from_secs(10), stop.cancelled()).await.unwrap();
        let cancel = tokio::spawn({
            let m = m.clone();
            async move { m.cancel(caller(), id).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!cancel.is_finished(), "Cancel returned while the worker was running");
        assert!(!shutdown.is_finished(), "shutdown returned while the worker was running");
        assert!(temp.exists(), "the temp file was deleted while the worker was running");

        crate::testing::with_entry(&m, id, |entry| entry.run = None);
        ended.cancel();
        assert_eq!(cancel.await.unwrap().unwrap(), Code::S_OK);
        shutdown.await.unwrap();
        assert!(!temp.exists(), "Cancel left the temp file behind");
    }

    /// The token a real worker's task cancels when it ends: a job's worker, stuck on a server
    /// that never answers, is stopped by Suspend, and whoever waits on `ended` is woken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_workers_ended_token_is_cancelled_when_its_task_ends() {
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/f", silent.local_addr().unwrap());
        let id =
            m.create_job(caller(), "t", "", JobType::Download, Priority::Foreground).await.unwrap();
        m.add_file(caller(), id, &url, &dir.path().join("f"), None).await.unwrap();
        m.resume(caller(), id).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let ended = loop {
            if let Some(run) = &m.table().jobs[&id].run {
                break run.ended.clone();
            }
            assert!(std::time::Instant::now() < deadline, "the worker never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!ended.is_cancelled(), "ended before its worker did");
        m.suspend(caller(), id).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), ended.cancelled()).await.unwrap();
        assert!(m.table().jobs[&id].run.is_none(), "woken while the worker was still registered");
        drop(silent);
    }

    /// A store that failed for lack of space says so (ERROR_DISK_FULL), also when the engine
    /// kept only the error's kind; other failures stay the store's.
    #[test]
    fn a_full_disk_is_error_disk_full_not_a_corrupt_database() {
        use bits_store::StoreError;
        let io = |cause| StoreError::Io { op: "flush the job store to disk", cause };
        let enospc = std::io::Error::from_raw_os_error(28);
        let edquot = std::io::Error::from_raw_os_error(122);
        let kind_only = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        for cause in [enospc, edquot, kind_only] {
            let error = store_error(io(cause));
            assert_eq!(error.code, Code::ERROR_DISK_FULL, "{error:?}");
            assert!(error.message.contains("disk is full"), "{}", error.message);
        }
        let error = store_error(io(std::io::Error::other("disk on fire")));
        assert_eq!(error.code, Code::BG_E_DATABASE_CORRUPT, "{error:?}");
    }
}
