//! The worker's only door to the job table, the store and the events: every lock of the table,
//! every lookup of the job or one of its files, every store write and flush a transfer makes goes
//! through a [`JobLedger`]. A job or file that left the table reads as [`Halt::Stopped`].

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use bits_core::job::security;
use bits_core::{
    Code, ErrorContext, Event, JobError, JobFile, JobId, Layout, Priority, RangeSet, Span, TempId,
    transition,
};
use bits_http::{HttpClient, RemoteInfo, RequestOptions};

use super::halt::{Halt, store_halt};
use super::pick::{self, NextFile, Shape};
use crate::ManagerConfig;
use crate::handle::Manager;
use crate::table::Entry;
use crate::writer::Synced;

pub(super) use crate::access::run_blocking;
pub(super) use crate::errors::disk_error;
pub(super) use crate::finish::remote_mtime;

/// When [`JobLedger::connected`] writes the file's record to the store.
#[derive(PartialEq)]
pub(super) enum Persist {
    /// Now: what the server said is stored with the next flush.
    Now,
    /// With the first recorded range, which the caller writes next (a small file written
    /// whole): one store write per file instead of two.
    WithFirstRange,
}

/// One running job's entry in the table, as its worker sees it.
#[derive(Clone)]
pub(super) struct JobLedger {
    manager: Manager,
    id: JobId,
}

impl JobLedger {
    pub(super) fn new(manager: Manager, id: JobId) -> JobLedger {
        JobLedger { manager, id }
    }

    pub(super) fn id(&self) -> JobId {
        self.id
    }

    pub(super) fn http(&self) -> &HttpClient {
        self.manager.http()
    }

    pub(super) fn config(&self) -> &ManagerConfig {
        self.manager.config()
    }

    /// `look` at the job's entry under the table lock; a job that left the table is a stop.
    fn read<T>(&self, look: impl FnOnce(&Entry) -> Result<T, Halt>) -> Result<T, Halt> {
        let table = self.manager.table();
        look(table.get(&self.id).ok_or(Halt::Stopped)?)
    }

    /// `change` the job's entry under the table lock; a job that left the table is a stop.
    fn write<T>(&self, change: impl FnOnce(&mut Entry) -> Result<T, Halt>) -> Result<T, Halt> {
        let mut table = self.manager.table();
        change(table.get_mut(&self.id).ok_or(Halt::Stopped)?)
    }

    /// What is left of the job's maximum download time (`None`: the job is gone).
    pub(super) fn budget(&self) -> Option<Duration> {
        let table = self.manager.table();
        let entry = table.get(&self.id)?;
        let max = Duration::from_secs(u64::from(entry.job().maximum_download_time_secs));
        Some(max.saturating_sub(entry.active_time()))
    }

    /// A copy of one file's record.
    pub(super) fn file(&self, index: u32) -> Result<JobFile, Halt> {
        self.read(|entry| entry.file(index).cloned().ok_or(Halt::Stopped))
    }

    /// Bytes of the file recorded as filled.
    pub(super) fn filled_len(&self, index: u32) -> Result<u64, Halt> {
        self.read(|entry| Ok(entry.file(index).ok_or(Halt::Stopped)?.filled.total_len()))
    }

    /// Whether the file, restarted from zero, would be fetched by one GET of all of it, which a
    /// FOREGROUND job may take as a plain 200 ([`pick::restart_asks_whole`]).
    pub(super) fn restart_asks_whole(&self, index: u32) -> Result<bool, Halt> {
        self.read(|entry| {
            let job = entry.job();
            let file = entry.file(index).ok_or(Halt::Stopped)?;
            Ok(job.priority == Priority::Foreground && pick::restart_asks_whole(job, file))
        })
    }

    /// Everything opening a file needs from the job, under one lock.
    pub(super) fn opening(&self, index: u32) -> Result<(JobFile, RequestOptions, Shape), Halt> {
        self.read(|entry| {
            let file = entry.file(index).cloned().ok_or(Halt::Stopped)?;
            let job = entry.job();
            Ok((file, super::transfer::request_options(job), Shape::of(job)))
        })
    }

    /// The identity the job's file work runs as (spec §9: its owner's).
    pub(super) fn owner(&self) -> Result<bits_disk::Identity, Halt> {
        self.manager.job_identity(self.id).map_err(|_| Halt::Stopped)
    }

    /// The job's connections per file.
    pub(super) fn connections(&self) -> usize {
        let table = self.manager.table();
        table.get(&self.id).map_or(1, |e| e.job().connections_per_file.max(1) as usize)
    }

    /// The next file to start when fewer than the job's files-at-once are `running`: from index
    /// `from` on, none of the `active` ones, none an AddFile has not made durable yet. `None`:
    /// start nothing now; an error: the job left the table.
    pub(super) fn next_file(
        &self,
        running: usize,
        active: &HashSet<u32>,
        from: u32,
    ) -> Result<Option<u32>, Halt> {
        self.read(|entry| {
            // Slots first: no pick without a free slot.
            if running >= entry.job().files_at_once.max(1) as usize {
                return Ok(None);
            }
            match pick::next_file(entry.job(), active, from).before(entry.adding_from()) {
                NextFile::File(index) => Ok(Some(index)),
                NextFile::Done | NextFile::Idle => Ok(None),
            }
        })
    }

    /// How the worker ends once it has no file left to start ([`pick::outcome`]).
    pub(super) fn outcome(&self) -> Result<(), Halt> {
        self.read(|entry| pick::outcome(entry.job()))
    }

    /// Files whose bytes are all recorded and whose expected digest was not checked yet.
    pub(super) fn due_for_verification(&self) -> Result<Vec<(u32, JobFile)>, Halt> {
        self.read(|entry| {
            Ok((0u32..)
                .zip(&entry.job().files)
                .filter(|(_, f)| f.needs_verification())
                .map(|(i, f)| (i, f.clone()))
                .collect())
        })
    }

    /// The file's next piece ([`pick::piece`]) of what `layout` wants and is not filled.
    pub(super) fn next_piece(&self, index: u32, layout: &Layout) -> Result<Option<Span>, Halt> {
        self.with_missing(index, layout, &RangeSet::new(), pick::piece)
    }

    /// The file's next multi-range batch of at most `max` pieces ([`pick::small_pieces`]),
    /// leaving out what is `pending` (received, not yet recorded).
    pub(super) fn small_pieces(
        &self,
        index: u32,
        layout: &Layout,
        pending: &RangeSet,
        max: usize,
    ) -> Result<Vec<Span>, Halt> {
        self.with_missing(index, layout, pending, |missing, file, on_demand| {
            pick::small_pieces(missing, file, on_demand, max)
        })
    }

    /// The next piece for one connection of a segmented download ([`pick::segment`]), leaving
    /// out what other connections `claims`; the claim is recorded before returning.
    pub(super) fn claim_piece(
        &self,
        index: u32,
        layout: &Layout,
        claims: &std::sync::Mutex<RangeSet>,
        size: u64,
    ) -> Result<Option<Span>, Halt> {
        // The claims are locked inside the table's lock, as two connections claim at once.
        self.read(|entry| {
            let file = entry.file(index).ok_or(Halt::Stopped)?;
            let mut claimed = claims.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let missing = layout.wanted().subtract(&file.filled).subtract(&claimed);
            let piece = pick::segment(&missing, file, entry.job().on_demand, size);
            if let Some(piece) = piece {
                claimed.insert(piece.start, piece.end);
            }
            Ok(piece)
        })
    }

    fn with_missing<T>(
        &self,
        index: u32,
        layout: &Layout,
        pending: &RangeSet,
        choose: impl FnOnce(&RangeSet, &JobFile, bool) -> T,
    ) -> Result<T, Halt> {
        self.read(|entry| {
            let file = entry.file(index).ok_or(Halt::Stopped)?;
            let missing = layout.wanted().subtract(&file.filled).subtract(pending);
            Ok(choose(&missing, file, entry.job().on_demand))
        })
    }

    /// Records what the server said about the file (in the table, and in the store now or, with
    /// [`Persist::WithFirstRange`], with the caller's first recorded range) and moves the job to
    /// TRANSFERRING.
    pub(super) async fn connected(
        &self,
        index: u32,
        remote: &RemoteInfo,
        temp_len: u64,
        persist: Persist,
    ) -> Result<(), Halt> {
        let (manager, id) = (&self.manager, self.id);
        let trimmed = {
            let mut table = manager.table();
            let entry = table.get_mut(&id).ok_or(Halt::Stopped)?;
            // ALLOW_REPORT: the remote name becomes where the redirects led (spec §6.2).
            let report_redirect = remote.redirected
                && entry.job().security_flags & security::REDIRECT_POLICY_MASK
                    == security::REDIRECT_POLICY_ALLOW_REPORT;
            let file = entry.file_mut(index).ok_or(Halt::Stopped)?;
            file.remote_size = Some(remote.size);
            file.validator = remote.validator.clone();
            if report_redirect {
                file.remote_url = remote.final_url.clone();
            }
            let trimmed = file.trim_filled_to(Some(temp_len));
            if trimmed {
                tracing::warn!(job = %id, index, path = %file.temp_path.display(), temp_len, "temp file short; the ranges it no longer holds will be fetched again");
            }
            // On-demand requests made before the size was known are clipped to the file now.
            file.requested = file.requested.intersect_span(0, remote.size);
            let mut fields_changed = false;
            if let Ok(next) = transition(entry.job().state, Event::Connected) {
                if next != entry.job().state {
                    entry.set_state(next);
                    fields_changed = true;
                }
                // The error object lasts until the job is transferring again (spec §3.H).
                fields_changed |= entry.clear_error();
            }
            // The job's own fields when they changed (in a job of many files, only its first
            // connection changes them), and this file unless its caller writes it next.
            if fields_changed {
                manager.persist_job_fields(entry.job()).map_err(|e| store_halt(e, index))?;
            }
            if persist == Persist::Now {
                let file = &entry.job().files[index as usize];
                manager.persist_file(id, index, file).map_err(|e| store_halt(e, index))?;
            }
            trimmed
        };
        // The flush must precede extending the temp file only when the stored filled set claimed
        // bytes the file no longer holds (see above). Otherwise the new size and validator reach
        // the disk with the first recorded range's flush — and a crash before it loses nothing:
        // the file is probed again.
        if trimmed {
            self.flush(index).await?;
        }
        Ok(())
    }

    /// Keeps which temp file the job created; the file's next store write carries it (before any
    /// byte of it is recorded, so a record with bytes always names its file).
    pub(super) fn note_temp(&self, index: u32, made: TempId) -> Result<(), Halt> {
        self.write(|entry| {
            entry.file_mut(index).ok_or(Halt::Stopped)?.temp_id = Some(made);
            Ok(())
        })
    }

    /// Applies `change` to a file in the table and writes its record; the caller's flush makes
    /// it durable. A failure is only logged: the caller is already failing for another reason.
    pub(super) fn store_file_record(&self, index: u32, change: impl FnOnce(&mut JobFile)) {
        let mut table = self.manager.table();
        let Some(file) = table.get_mut(&self.id).and_then(|e| e.file_mut(index)) else { return };
        change(file);
        if let Err(e) = self.manager.persist_file(self.id, index, file) {
            tracing::error!(job = %self.id, index, error = %e, "cannot store a file's record");
        }
    }

    /// The spans are synced (the [`Synced`] proves it): they join the filled set, in memory and
    /// in the store (flushed). The store write happens under the table lock so that store writes
    /// land in the same order as the in-memory changes (a concurrent RequestFileRanges is never
    /// overwritten by an older copy).
    pub(super) async fn record_filled(&self, index: u32, synced: Synced) -> Result<(), Halt> {
        let (manager, id) = (&self.manager, self.id);
        let spans = synced.spans();
        if spans.is_empty() {
            return Ok(());
        }
        {
            let mut table = manager.table();
            let Some(entry) = table.get_mut(&id) else { return Ok(()) };
            entry.set_stalled_since(None);
            let Some(file) = entry.fill(index, spans) else { return Ok(()) };
            manager.persist_file(id, index, file).map_err(|e| store_halt(e, index))?;
        }
        self.flush(index).await?;
        manager.counters().recorded(spans.total_len());
        // Durable: now clients may see the spans, and their events go out.
        let mut table = manager.table();
        let Some(entry) = table.get_mut(&id) else { return Ok(()) };
        entry.flushed(index, spans);
        Ok(())
    }

    /// Forgets a file's progress, in the table and (flushed) in the store; its temp file was
    /// emptied first.
    pub(super) async fn forget_progress(&self, index: u32) -> Result<(), Halt> {
        self.write(|entry| {
            let file = entry.file_mut(index).ok_or(Halt::Stopped)?;
            file.reset_progress();
            self.manager.persist_file(self.id, index, file).map_err(|e| store_halt(e, index))
        })?;
        self.flush(index).await
    }

    /// Makes the store writes so far durable; a failure is a transient failure of file `index`.
    pub(super) async fn flush(&self, index: u32) -> Result<(), Halt> {
        self.manager.flush().await.map_err(|e| store_halt(e, index))
    }

    /// The worker's end: the job leaves RUNNING for what `outcome` says (unless Complete or
    /// Cancel is finishing it), its active time grows by the run's, and the scheduler is woken.
    pub(super) async fn end_run(&self, outcome: Result<(), Halt>, started: Instant) {
        let (manager, id) = (&self.manager, self.id);
        {
            let mut table = manager.table();
            let Some(entry) = table.get_mut(&id) else { return };
            entry.set_run(None);
            entry.add_active_time(started.elapsed());
            if !entry.finishing() {
                match outcome {
                    // A file added after the last check is still missing (or, added meanwhile,
                    // unverified): back to the queue.
                    Ok(()) if !entry.job().all_verified() => {
                        if let Ok(next) = transition(entry.job().state, Event::Requeue) {
                            entry.set_state(next);
                        }
                    }
                    Ok(()) => {
                        if let Ok(next) = transition(entry.job().state, Event::AllTransferred) {
                            entry.stamp_transferred();
                            entry.set_state(next);
                            entry.clear_error();
                            entry.set_stalled_since(None);
                            tracing::info!(job = %id, "job transferred");
                        }
                    }
                    Err(Halt::Stopped) | Err(Halt::Changed) => {}
                    // A small file's tail found its temp file truncated (a streamed file restarts
                    // within its transfer and never ends here): retried like any transient
                    // failure.
                    Err(Halt::Lost) => {
                        let error = JobError {
                            context: ErrorContext::LocalFile,
                            code: Code::E_FAIL,
                            description: "a temp file was truncated during the transfer".into(),
                            file_index: None,
                        };
                        fail(manager, entry, error, true, None);
                    }
                    // Spec A6b: the requested ranges are in; an incomplete file waits, SUSPENDED.
                    Err(Halt::OnDemandIdle) => {
                        if let Ok(next) = transition(entry.job().state, Event::Suspend) {
                            entry.set_state(next);
                            tracing::info!(job = %id, "on-demand ranges transferred; job suspended");
                        }
                    }
                    // A refused redirect target counts once its file followed the remote
                    // name afresh (a file's transfer never ends with one otherwise).
                    Err(
                        Halt::Failed { error, transient, retry_after }
                        | Halt::TargetRefused { error, transient, retry_after },
                    ) => {
                        fail(manager, entry, error, transient, retry_after);
                    }
                }
                if let Err(e) = manager.persist_job_fields(entry.job()) {
                    tracing::error!(job = %id, error = %e, "cannot persist job");
                }
            }
        }
        if let Err(e) = manager.flush().await {
            tracing::error!(job = %id, error = %e, "cannot flush the store");
        }
        manager.wake().notify_one();
    }
}

/// Applies a failed attempt: TRANSIENT_ERROR with a retry time, or ERROR when the failure is
/// fatal or retrying cannot help ([`crate::policy::after_failure`]).
fn fail(
    manager: &Manager,
    entry: &mut Entry,
    error: JobError,
    transient: bool,
    retry_after: Option<Duration>,
) {
    let now = Instant::now();
    let timing = crate::policy::Timing::of(entry.job());
    let verdict =
        crate::policy::after_failure(timing, entry.stalled_since(), transient, retry_after, now);
    let retry_at = match verdict {
        crate::policy::Verdict::Wait(at) => Some(at),
        _ => None,
    };
    let fatal = retry_at.is_none();
    let event = if fatal { Event::FatalFailure } else { Event::TransientFailure };
    let Ok(next) = transition(entry.job().state, event) else { return };
    tracing::warn!(job = %entry.job().id, code = %error.code, error = %error.description, state = next.name(), "transfer failed");
    if !fatal {
        manager.counters().transient_error(error.code);
    }
    entry.record_error(error);
    entry.set_state(next);
    if fatal {
        entry.set_retry_at(None);
        entry.set_stalled_since(None);
    } else {
        entry.set_retry_at(retry_at);
        entry.stalled_from(now);
    }
}
