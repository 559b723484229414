//! The job manager's start, shutdown and the job-level BITS operations (create, get, list,
//! resume, suspend, progress, error), each persisted to the store before it is acknowledged.
//! Files, properties, on-demand ranges and Complete/Cancel have files of their own
//! (`files.rs`, `setters.rs`, `requested.rs`, `finish.rs`); all work on the [`Manager`] handle
//! (`handle.rs`).
//!
//! gRPC handlers call these methods and return; transfers are owned by worker tasks that the
//! scheduler starts, never by a request.

use std::sync::Arc;
use std::time::SystemTime;

use bits_core::{
    BitsError, Code, Event, Job, JobError, JobId, JobState, JobType, Priority, Progress, RangeSet,
    transition,
};
use bits_disk::Identity;
use bits_store::Store;
// tokio's clock, so `tokio::time::pause` drives retry, stall and deadline times in tests.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::access::AccessPolicy;
use crate::commit::{Commit, recover};
use crate::errors::no_such_file;
use crate::events::EventBus;
use crate::handle::Manager;
use crate::table::{Entry, Run, SavedState, Table, lookup, lookup_mut};
use crate::types::{Caller, ManagerConfig, ManagerError};
use crate::validate;

impl Manager {
    /// Opens the manager on a store: every job is loaded, jobs that were active when the previous
    /// process died go back to QUEUED, and the scheduler starts.
    pub fn start(store: Arc<dyn Store>, config: ManagerConfig) -> Result<Manager, ManagerError> {
        let http = bits_http::HttpClient::new(config.http.clone())?;
        let access = AccessPolicy::new(config.admin_uids.clone(), config.admin_gids.clone());
        let owner = |uid| match Identity::switches_to(uid) {
            true => access.identity(uid),
            false => Identity::unswitched(uid),
        };
        let jobs = recover(store.as_ref(), owner)?;
        let mut table = Table::default();
        let events = EventBus::new();
        let now = Instant::now();
        for job in jobs {
            // A job waiting to retry when the daemon stopped retries soon after start.
            let retry_at = (job.state == JobState::TransientError).then_some(now);
            table.insert(job, events.clone(), retry_at);
        }
        tracing::info!(jobs = table.len(), "job table loaded");
        let stats = crate::stats::Counters::new();
        let commit = Commit::start(store, stats.flush_times())?;
        let manager = Manager::assemble(table, commit, http, config, events, access, stats);
        crate::notify_cmd::start(&manager);
        tokio::spawn(crate::scheduler::run(manager.clone()));
        Ok(manager)
    }

    /// Stops every worker (each syncs and records what it wrote) and flushes the store.
    pub async fn shutdown(&self) {
        self.stopping().cancel();
        self.wake().notify_one();
        let workers: Vec<CancellationToken> = {
            let table = self.table();
            table.values().filter_map(|e| e.run()).map(Run::halt).collect()
        };
        for ended in workers {
            ended.cancelled().await;
        }
        if let Err(e) = self.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
    }

    /// Spec §3.A CreateJob steps 3–4: per-user then per-machine limits; admins are exempt.
    fn check_job_limits(&self, caller: Caller) -> Result<(), BitsError> {
        if caller.is_admin() {
            return Ok(());
        }
        let table = self.table();
        let (per_user, per_machine) =
            (self.config().max_jobs_per_user, self.config().max_jobs_per_machine);
        let owned = table.values().filter(|e| e.job().owner_uid == caller.uid).count();
        if owned >= per_user {
            return Err(BitsError::new(
                Code::BG_E_TOO_MANY_JOBS_PER_USER,
                format!(
                    "uid {} already owns {owned} jobs, at most {per_user} are allowed",
                    caller.uid
                ),
            ));
        }
        if table.len() >= per_machine {
            return Err(BitsError::new(
                Code::BG_E_TOO_MANY_JOBS_PER_MACHINE,
                format!("the queue holds {} jobs, at most {per_machine} are allowed", table.len()),
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
            table.insert(job, self.events().clone(), None);
        }
        if self.stopping().is_cancelled() {
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
        let mut entries: Vec<&Entry> = table.values().filter(|e| keep(e.job())).collect();
        entries.sort_by_key(|e| e.seq());
        entries.into_iter().map(|e| e.visible().into_owned()).collect()
    }

    pub async fn resume(&self, caller: Caller, id: JobId) -> Result<Code, BitsError> {
        let undo = {
            let mut table = self.table();
            let entry = lookup_mut(&mut table, caller, id)?;
            let event = Event::Resume {
                has_files: !entry.job().files.is_empty(),
                // A file with an expected digest counts once its bytes hashed to it.
                all_transferred: entry.job().all_verified(),
            };
            let next = transition(entry.job().state, event)?;
            if next == entry.job().state {
                None
            } else {
                self.stored_state_change(entry, |entry| {
                    if next == JobState::Transferred
                        && entry.job().transfer_completion_time.is_none()
                    {
                        entry.stamp_transferred();
                    }
                    entry.set_state(next);
                    // Resume starts a fresh attempt: the no-progress timer and the download-time
                    // budget restart with it.
                    entry.restart_attempt();
                })?
            }
        };
        self.flush_or_take_back(id, undo).await?;
        self.wake().notify_one();
        Ok(Code::S_OK)
    }

    pub async fn suspend(&self, caller: Caller, id: JobId) -> Result<Code, BitsError> {
        let undo = {
            let mut table = self.table();
            let entry = lookup_mut(&mut table, caller, id)?;
            let next = transition(entry.job().state, Event::Suspend)?;
            if let Some(run) = entry.run() {
                // The worker syncs and records what it wrote, then exits; it reports no state.
                run.stop();
            }
            if next == entry.job().state {
                None
            } else {
                self.stored_state_change(entry, |entry| {
                    entry.set_state(next);
                    entry.set_retry_at(None);
                })?
            }
        };
        self.flush_or_take_back(id, undo).await?;
        self.wake().notify_one();
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
        if let Err(e) = self.persist_job_fields(entry.job()) {
            saved.restore(entry);
            return Err(e);
        }
        Ok(Some((saved, entry.job().state)))
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
            if let Some(entry) = table.get_mut(&id)
                && entry.job().state == after
            {
                saved.restore(entry);
                if let Err(e) = self.persist_job_fields(entry.job()) {
                    tracing::warn!(job = %id, error = %e, "storing a state taken back failed");
                }
            }
        }
        Err(e)
    }

    pub fn get_progress(&self, caller: Caller, id: JobId) -> Result<Progress, BitsError> {
        let table = self.table();
        Ok(lookup(&table, caller, id)?.progress())
    }

    /// The error object, which exists only in ERROR and TRANSIENT_ERROR.
    pub fn get_error(&self, caller: Caller, id: JobId) -> Result<JobError, BitsError> {
        let table = self.table();
        let job = lookup(&table, caller, id)?.job();
        match (&job.error, job.state) {
            (Some(error), JobState::Error | JobState::TransientError) => Ok(error.clone()),
            _ => Err(BitsError::new(
                Code::BG_E_ERROR_INFORMATION_UNAVAILABLE,
                format!("job {id} is {}, not in an error state", job.state.name()),
            )),
        }
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
        let job = entry.job();
        let filled = entry.visible_filled(index).ok_or_else(|| no_such_file(job, index))?;
        Ok(filled.into_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed call is a failed test

    use std::path::Path;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;
    use crate::testing::{Watched, caller, job_with_files, manager, manager_with_job, watched_job};
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
        assert_eq!(store.load_all().unwrap()[0].id, id, "CreateJob did not write the job");
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
        let (store, m, dir, id) = watched_job(0).await;
        let before = m.get_job(caller(), id).unwrap();
        store.fail_adds(true);
        let error = m.add_file(caller(), id, "http://h/f", &dir.path().join("f"), None).await;
        let error = error.unwrap_err();
        assert_eq!(error.code, Code::BG_E_DATABASE_CORRUPT, "{error:?}");
        assert!(error.message.contains("disk full"), "{}", error.message);
        assert_eq!(m.get_job(caller(), id).unwrap(), before, "the job changed");
        store.fail_adds(false);
        let added =
            m.add_file(caller(), id, "http://h/f", &dir.path().join("f"), None).await.unwrap();
        assert_eq!(added, 0);
    }

    /// An add whose flush fails answers with the error and leaves the job as it was, in the
    /// table and in the store: one file (written under the table lock) and a set large enough
    /// to be written before it. Once the store works again the same adds succeed.
    #[tokio::test]
    async fn an_add_whose_flush_fails_is_taken_back() {
        let (store, m, dir, id) = watched_job(0).await;
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
        store.fail_flushes(true);
        let error = m.add_file(caller(), id, "http://h/f", &dir.path().join("f"), None).await;
        assert!(error.unwrap_err().message.contains("disk on fire"));
        assert_eq!(m.get_job(caller(), id).unwrap(), before, "the failed add is visible");
        let error = m.add_files(admin, id, many(300)).await.unwrap_err();
        assert!(error.message.contains("disk on fire"), "{error:?}");
        assert_eq!(m.get_job(caller(), id).unwrap(), before, "the failed set is visible");
        assert!(store.load_all().unwrap()[0].files.is_empty(), "the store kept an added file");

        store.fail_flushes(false);
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

    /// Resume and Suspend whose flush fails answer with the error and leave the state as it
    /// was (a restart would bring the stored state back anyway).
    #[tokio::test]
    async fn resume_and_suspend_whose_flush_fails_are_taken_back() {
        let (store, m, _dir, id) = watched_job(1).await;
        store.fail_flushes(true);
        let error = m.resume(caller(), id).await.unwrap_err();
        assert!(error.message.contains("disk on fire"), "{error:?}");
        assert_eq!(m.get_job(caller(), id).unwrap().state, JobState::Suspended);
        assert_eq!(store.load_all().unwrap()[0].state, JobState::Suspended);

        store.fail_flushes(false);
        m.resume(caller(), id).await.unwrap();
        let resumed = m.get_job(caller(), id).unwrap().state;
        assert_ne!(resumed, JobState::Suspended);
        store.fail_flushes(true);
        m.suspend(caller(), id).await.unwrap_err();
        let state = m.get_job(caller(), id).unwrap().state;
        assert_ne!(state, JobState::Suspended, "the failed Suspend shows");
        assert_ne!(store.load_all().unwrap()[0].state, JobState::Suspended);
        store.fail_flushes(false);
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
            let entry = table.get_mut(&id).unwrap();
            entry.job_mut().files[0].remote_size = Some(100);
            entry.job_mut().files[0].filled.insert(0, 60);
            entry.hide_unflushed(0, &RangeSet::from_span(40, 60));
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
        m.table().get_mut(&id).unwrap().clear_unflushed();
        assert_eq!(seen(&m), (60, 60, 60, 60, 60));
    }

    /// Shutdown and a Cancel arriving meanwhile both wait for the worker, however they
    /// interleave: the temp file stays until the worker has ended, and only then is deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancel_during_shutdown_waits_for_the_worker_before_deleting_its_temp_file() {
        let (m, _dir, id) = manager_with_job(1).await;
        let temp = m.get_job(caller(), id).unwrap().files[0].temp_path.clone();
        std::fs::write(&temp, b"being written").unwrap();
        // A worker that is still running (in a blocking write, say) until the test ends it.
        let (stop, ended) = (CancellationToken::new(), CancellationToken::new());
        crate::testing::with_entry(&m, id, |entry| {
            let repick = Arc::new(Notify::new());
            entry.set_run(Some(Run::new(stop.clone(), repick, ended.clone())));
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

        crate::testing::with_entry(&m, id, |entry| entry.set_run(None));
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
            if let Some(run) = m.table().get(&id).unwrap().run() {
                break run.ended();
            }
            assert!(std::time::Instant::now() < deadline, "the worker never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!ended.is_cancelled(), "ended before its worker did");
        m.suspend(caller(), id).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), ended.cancelled()).await.unwrap();
        assert!(
            m.table().get(&id).unwrap().run().is_none(),
            "woken while the worker was still registered"
        );
        drop(silent);
    }
}
