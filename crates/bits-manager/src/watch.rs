//! WatchJob: a subscription to one job's events, filtered by the watcher's notify flags, with
//! the events a late watcher is still owed (spec §7.2) and a fresh snapshot after it lagged.

use std::collections::VecDeque;

use bits_core::job::notify;
use bits_core::{BitsError, Code, Job, JobId, JobState};
use tokio::sync::broadcast;

use crate::events::{EventKind, JobEvent, wants};
use crate::handle::Manager;
use crate::table::lookup;
use crate::types::Caller;

/// The events of one job for one watcher, filtered by notify flags.
pub struct Subscription {
    job: JobId,
    /// The watcher's own flags; `None`: the job's current notify flags.
    flags: Option<u32>,
    /// The job's flags when last seen (used once the job has left the table).
    last_flags: u32,
    rx: broadcast::Receiver<JobEvent>,
    manager: Manager,
    /// Events decided locally (after a lag) and not yet returned.
    queued: VecDeque<JobEvent>,
    done: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.manager.events().watch(self.job, self.flags, -1);
    }
}

impl Subscription {
    /// The next event, or `None` once the job reached a final state (that JobModification is
    /// returned first when wanted) or the daemon is shutting down.
    pub async fn recv(&mut self) -> Option<JobEvent> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            let closed = self.manager.events().closed();
            let received = tokio::select! {
                _ = closed.cancelled() => { self.done = true; continue }
                _ = self.manager.stopping().cancelled() => { self.done = true; continue }
                received = self.rx.recv() => received,
            };
            match received {
                Ok(event) if event.job == self.job => {
                    let last = event.kind.is_final();
                    let flags = self.flags();
                    if last {
                        self.done = true;
                    }
                    if wants(flags, &event.kind) {
                        return Some(event);
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(job = %self.job, missed, "watcher lagged; sending a snapshot");
                    self.catch_up();
                }
                Err(broadcast::error::RecvError::Closed) => self.done = true,
            }
        }
    }

    /// The flags in force now: the watcher's own, else the job's.
    fn flags(&mut self) -> u32 {
        if let Some(flags) = self.flags {
            return flags;
        }
        let table = self.manager.table();
        if let Some(entry) = table.get(&self.job) {
            self.last_flags = entry.job().notify_flags;
        }
        self.last_flags
    }

    /// After missed events: a snapshot of the job, and JobTransferred/JobError again if the job
    /// is in that state (they must not be lost). A job that is gone ended meanwhile.
    fn catch_up(&mut self) {
        let flags = self.flags();
        let snapshot = {
            let table = self.manager.table();
            table.get(&self.job).map(|e| e.visible().into_owned())
        };
        let Some(job) = snapshot else {
            self.done = true;
            return;
        };
        let mut events = vec![JobEvent::now(
            job.id,
            EventKind::JobModification { state: job.state, progress: job.progress() },
        )];
        events.extend(replay_of(&job));
        self.queued.extend(events.into_iter().filter(|e| wants(flags, &e.kind)));
    }
}

/// What a watcher arriving now must still get (spec §7.2, at-least-once).
fn replay_of(job: &Job) -> Option<JobEvent> {
    match (job.state, &job.error) {
        (JobState::Transferred, _) => Some(JobEvent::now(job.id, EventKind::JobTransferred)),
        (JobState::Error, Some(error)) => {
            Some(JobEvent::now(job.id, EventKind::JobError(error.clone())))
        }
        _ => None,
    }
}

impl Manager {
    /// Watches job `id` (WatchJob). `flags` overrides the job's notify flags for this watcher;
    /// unknown bits are E_NOTIMPL. Returns the events owed already (JobTransferred if the job is
    /// TRANSFERRED now, JobError if it is in ERROR; spec §7.2) and the live subscription.
    pub fn subscribe(
        &self,
        caller: Caller,
        id: JobId,
        flags: Option<u32>,
    ) -> Result<(Vec<JobEvent>, Subscription), BitsError> {
        if let Some(flags) = flags.filter(|f| f & !notify::ALL != 0) {
            return Err(BitsError::new(
                Code::E_NOTIMPL,
                format!("notify flags 0x{flags:X} include unknown bits"),
            ));
        }
        // Under the table lock, like every hook call: no event falls between replay and live.
        let table = self.table();
        let job = &lookup(&table, caller, id)?.job();
        let effective = flags.unwrap_or(job.notify_flags);
        let replay: Vec<JobEvent> =
            replay_of(job).into_iter().filter(|e| wants(effective, &e.kind)).collect();
        self.events().watch(id, flags, 1);
        let subscription = Subscription {
            job: id,
            flags,
            last_flags: job.notify_flags,
            rx: self.events().subscribe(),
            manager: self.clone(),
            queued: VecDeque::new(),
            done: false,
        };
        Ok((replay, subscription))
    }

    /// Ends every subscription (the daemon is shutting down; a graceful server shutdown waits
    /// for open streams).
    pub fn close_subscriptions(&self) {
        self.events().close();
    }
}
