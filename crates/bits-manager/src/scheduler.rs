//! Decides which queued jobs run. BITS model (spec §5.1): every FOREGROUND job runs at once, and
//! one background job (HIGH, NORMAL, LOW; most urgent first, FIFO within a priority) runs beside
//! them. Jobs in TRANSIENT_ERROR go back to QUEUED when their retry delay has passed.
//!
//! The scheduler wakes on `Inner::wake` (any change that may let a job start) or at the next
//! retry time, so it costs nothing while the queue is idle.

use std::sync::Arc;
use std::time::Duration;

use bits_core::{Event, JobId, JobState, Priority, transition};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::handle::Manager;
use crate::policy::Verdict;
use crate::table::Run;

pub(crate) async fn run(manager: Manager) {
    loop {
        let Pass { next_retry, wrote } = schedule_once(&manager);
        // A pass that changed no job has nothing to flush: a flush is a device flush, and the
        // scheduler wakes after every Resume, Suspend and finished job.
        if wrote && let Err(e) = manager.flush().await {
            tracing::error!(error = %e, "scheduler could not flush the store");
        }
        let sleep = next_retry
            .map_or(Duration::from_secs(3600), |at| at.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = manager.stopping().cancelled() => return,
            _ = manager.wake().notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// What one scheduling pass did.
struct Pass {
    /// The earliest pending retry.
    next_retry: Option<Instant>,
    /// Whether it wrote a job to the store.
    wrote: bool,
}

/// One pass: due retries re-queue, then runnable jobs start.
fn schedule_once(manager: &Manager) -> Pass {
    let mut wrote = false;
    let now = Instant::now();
    let mut table = manager.table();
    // Checked under the lock: shutdown collects the workers to wait for under it too, so a
    // worker is either among them or never started.
    if manager.stopping().is_cancelled() {
        return Pass { next_retry: None, wrote };
    }
    let mut next_retry: Option<Instant> = None;
    for entry in table.values_mut() {
        if entry.job().state != JobState::TransientError || entry.run().is_some() {
            continue;
        }
        let timing = crate::policy::Timing::of(entry.job());
        let verdict = crate::policy::waiting(timing, entry.retry_at(), entry.stalled_since(), now);
        match verdict {
            Some(Verdict::Wait(at)) => next_retry = Some(next_retry.map_or(at, |n| n.min(at))),
            // No progress for the whole no-progress timeout while waiting: give up (spec A8).
            Some(verdict) => {
                let expired = verdict == Verdict::Fail;
                let event = if expired { Event::FatalFailure } else { Event::RetryDue };
                if let Ok(next) = transition(entry.job().state, event) {
                    if expired {
                        entry.set_stalled_since(None);
                        tracing::warn!(job = %entry.job().id, "no progress within the no-progress timeout; job in ERROR");
                    }
                    entry.set_state(next);
                    entry.set_retry_at(None);
                    wrote = true;
                    if let Err(e) = manager.persist_job_fields(entry.job()) {
                        tracing::error!(job = %entry.job().id, error = %e, "cannot persist retry");
                    }
                }
            }
            None => {}
        }
    }

    let background_busy =
        table.values().any(|e| e.run().is_some() && e.job().priority != Priority::Foreground);
    let mut queued: Vec<(Priority, u64, JobId)> = table
        .values()
        .filter(|e| e.job().state == JobState::Queued && e.run().is_none() && !e.finishing())
        .map(|e| (e.job().priority, e.seq(), e.job().id))
        .collect();
    queued.sort();
    let mut start_background = !background_busy;
    let mut to_start = Vec::new();
    for (priority, _, id) in queued {
        if priority == Priority::Foreground {
            to_start.push(id);
        } else if start_background {
            start_background = false;
            to_start.push(id);
        }
    }
    for id in to_start {
        let Some(entry) = table.get_mut(&id) else { continue };
        let Ok(next) = transition(entry.job().state, Event::Start) else { continue };
        entry.set_state(next);
        wrote = true;
        if let Err(e) = manager.persist_job_fields(entry.job()) {
            tracing::error!(job = %id, error = %e, "cannot persist job start");
        }
        let stop = CancellationToken::new();
        let repick = Arc::new(Notify::new());
        let busy = Busy::enter(manager);
        let ended = CancellationToken::new();
        let ended_on_drop = ended.clone().drop_guard();
        let run = crate::worker::run_job(manager.clone(), id, stop.clone(), repick.clone());
        // Not joined: whoever waits for the worker waits for `ended` (see Run::ended).
        // `_ended` first, so it drops last: whoever it wakes finds the worker gone from
        // `transfers_running` too.
        drop(tokio::spawn(async move {
            let _ended = ended_on_drop;
            let _busy = busy;
            run.await
        }));
        entry.set_run(Some(Run::new(stop, repick, ended)));
        tracing::info!(job = %id, priority = entry.job().priority.name(), "job started");
    }
    Pass { next_retry, wrote }
}

/// One running worker in [`Manager::transfers_running`], for as long as its task lives (also
/// when it is aborted: dropping the task drops this).
struct Busy(Manager);

impl Busy {
    fn enter(manager: &Manager) -> Busy {
        manager.workers().fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Busy(manager.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.workers().fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
