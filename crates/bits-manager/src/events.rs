//! Job notifications (spec §7): the events a watcher of a job receives, the bus that carries
//! them, and the per-subscriber filtering by notify flags.
//!
//! The manager calls the hooks of [`EventBus`] at the points where a job changes, always with
//! the job as it is after the change and usually under the table lock (so a subscriber that
//! takes its replay under the same lock neither misses nor doubles an event). The hooks decide
//! which events a change means:
//!
//! - a state change ([`EventBus::state_changed`]): JobTransferred when the job enters
//!   TRANSFERRED (after any FileTransferred still owed), JobError when it enters ERROR, a
//!   JobModification for every other state (spec §7.1: none accompanies TRANSFERRED or ERROR);
//! - a property change or new files ([`EventBus::modified`]): a JobModification;
//! - recorded bytes ([`EventBus::recorded`]): a JobModification, the on-demand part of the span
//!   for FileRangesTransferred (coalesced and sent at most once per
//!   `minimum_notification_interval_ms`, the remainder flushed when the file completes), and
//!   FileTransferred when the file's last byte is in;
//! - the end of a job ([`EventBus::finished`]): a JobModification with the final state, after
//!   which every subscription of that job ends.
//!
//! Delivery: a [`tokio::sync::broadcast`] channel shared by all jobs. A subscriber that falls
//! behind gets a fresh JobModification snapshot (and JobTransferred/JobError again if the job is
//! in that state now) instead of an error. A [`Subscription`](crate::Subscription) ends when its job reaches a final
//! state or when the daemon shuts down ([`Manager::close_subscriptions`](crate::Manager::close_subscriptions)).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use bits_core::job::notify;
use bits_core::{
    Code, ErrorContext, Job, JobError, JobId, JobState, NotifyCmdLine, Progress, RangeSet, Span,
};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What happened to a job: the kind is the client's too (bits-core), so the wire carries it as
/// it is.
pub use bits_core::EventKind;

/// Events the bus holds for slow subscribers before they lag.
const CAPACITY: usize = 1024;

/// One event of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEvent {
    pub job: JobId,
    pub time: SystemTime,
    pub kind: EventKind,
}

impl JobEvent {
    pub(crate) fn now(job: JobId, kind: EventKind) -> JobEvent {
        JobEvent { job, time: SystemTime::now(), kind }
    }
}

/// Whether flags `flags` let `kind` through (DISABLE lets nothing through).
pub fn wants(flags: u32, kind: &EventKind) -> bool {
    lets_through(flags, kind.flag())
}

/// Whether flags `flags` let events of flag `flag` through.
fn lets_through(flags: u32, flag: u32) -> bool {
    flags & notify::DISABLE == 0 && flags & flag != 0
}

/// A job as the bus sees it: what clients may see of it (no span whose store flush is still
/// in flight). The table's entries are one; the bus needs nothing else of them.
pub(crate) trait JobView {
    fn job(&self) -> &Job;
    fn progress(&self) -> Progress;
    /// Whether clients may see file `index` as transferred.
    fn file_transferred(&self, index: u32) -> bool;
}

/// A job whose notify program is due: which job, in which state, with which command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Due {
    id: JobId,
    state: JobState,
    cmd: NotifyCmdLine,
}

impl Due {
    pub(crate) fn id(&self) -> JobId {
        self.id
    }

    pub(crate) fn state(&self) -> JobState {
        self.state
    }

    pub(crate) fn cmd(&self) -> &NotifyCmdLine {
        &self.cmd
    }

    /// The program `job` owes now, if any: it is TRANSFERRED or ERROR, has a command line, and
    /// its notify flags let that state's notification through.
    pub(crate) fn of(job: &Job) -> Option<Due> {
        let flag = match job.state {
            JobState::Transferred => notify::JOB_TRANSFERRED,
            JobState::Error => notify::JOB_ERROR,
            _ => return None,
        };
        let cmd = job.notify_cmd_line.as_ref()?;
        if job.notify_flags & notify::DISABLE != 0 || job.notify_flags & flag == 0 {
            return None;
        }
        Some(Due { id: job.id, state: job.state, cmd: cmd.clone() })
    }
}

/// The manager's event bus. Cheap to clone.
#[derive(Clone)]
pub(crate) struct EventBus {
    inner: Arc<BusInner>,
}

struct BusInner {
    tx: broadcast::Sender<JobEvent>,
    /// Cancelled when the daemon shuts down: every subscription ends.
    closed: CancellationToken,
    /// What the bus remembers per job: which files were announced, which on-demand bytes wait
    /// for their FileRangesTransferred. Sends happen under this lock, so events of one job
    /// leave in the order they were decided.
    notes: Mutex<HashMap<JobId, Notes>>,
    /// Per job, its live subscriptions by the flags they filter with: JobModification carries
    /// the progress of every file, so it is only computed when one of them may want it.
    watchers: Mutex<HashMap<JobId, Watchers>>,
    /// Where a job whose notify command line is due goes (`notify_cmd.rs`); unset on a bus
    /// built alone, in tests.
    commands: OnceLock<tokio::sync::mpsc::UnboundedSender<Due>>,
}

#[derive(Default)]
struct Watchers {
    /// Subscriptions with their own flags that include JOB_MODIFICATION.
    modifications: usize,
    /// Subscriptions that follow the job's notify flags.
    job_flags: usize,
}

#[derive(Default)]
struct Notes {
    /// FileTransferred was sent for these files (and they have not been reset since).
    announced: Vec<bool>,
    /// Per file: on-demand bytes not yet reported.
    pending: HashMap<u32, Pending>,
}

#[derive(Default)]
struct Pending {
    ranges: RangeSet,
    last_sent: Option<Instant>,
    /// A flush task is scheduled.
    timer: bool,
}

impl Default for EventBus {
    fn default() -> EventBus {
        EventBus::new()
    }
}

impl EventBus {
    pub(crate) fn new() -> EventBus {
        let (tx, _) = broadcast::channel(CAPACITY);
        EventBus {
            inner: Arc::new(BusInner {
                tx,
                closed: CancellationToken::new(),
                notes: Mutex::new(HashMap::new()),
                watchers: Mutex::new(HashMap::new()),
                commands: OnceLock::new(),
            }),
        }
    }

    fn notes(&self) -> MutexGuard<'_, HashMap<JobId, Notes>> {
        self.inner.notes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends one event now. No subscriber is not an error.
    pub(crate) fn emit(&self, job: JobId, kind: EventKind) {
        let _ = self.inner.tx.send(JobEvent::now(job, kind));
    }

    /// A JobModification of `job` in `state`. Its progress covers every file of the job, and it
    /// goes out on every recorded range, so it is only computed when someone is subscribed
    /// (a late subscriber gets a fresh snapshot, not old events).
    fn modification(&self, job: &impl JobView, state: JobState) {
        if self.may_want_modifications(job.job()) {
            self.emit(job.job().id, EventKind::JobModification { state, progress: job.progress() });
        }
    }

    fn watchers(&self) -> MutexGuard<'_, HashMap<JobId, Watchers>> {
        self.inner.watchers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Some subscription of `job` may want its JobModification events.
    fn may_want_modifications(&self, job: &Job) -> bool {
        self.watchers().get(&job.id).is_some_and(|w| {
            w.modifications > 0
                || (w.job_flags > 0 && lets_through(job.notify_flags, notify::JOB_MODIFICATION))
        })
    }

    /// Counts a subscription of `job` with `flags` in (`delta` 1) or out (`delta` -1).
    pub(crate) fn watch(&self, job: JobId, flags: Option<u32>, delta: isize) {
        let own = match flags {
            None => false,
            Some(f) if lets_through(f, notify::JOB_MODIFICATION) => true,
            Some(_) => return,
        };
        let mut watchers = self.watchers();
        let w = watchers.entry(job).or_default();
        let count = if own { &mut w.modifications } else { &mut w.job_flags };
        *count = count.saturating_add_signed(delta);
        if w.modifications == 0 && w.job_flags == 0 {
            watchers.remove(&job);
        }
    }

    /// From now on, jobs whose notify command line is due are sent to `commands`.
    pub(crate) fn send_commands_to(&self, commands: tokio::sync::mpsc::UnboundedSender<Due>) {
        let _ = self.inner.commands.set(commands);
    }

    /// Hands the job to the notify-program runner if it is TRANSFERRED or ERROR, has a command
    /// line and its notify flags let that state's notification through.
    pub(crate) fn command_due(&self, job: &Job) {
        if let Some(due) = Due::of(job)
            && let Some(commands) = self.inner.commands.get()
        {
            let _ = commands.send(due);
        }
    }

    /// The job's state just changed to `job.state`.
    pub(crate) fn state_changed(&self, entry: &impl JobView) {
        let (job, job_entry) = (entry.job(), entry);
        self.command_due(job);
        match job.state {
            JobState::Transferred => {
                let mut notes = self.notes();
                let entry = notes.entry(job.id).or_default();
                for index in 0..job.files.len() as u32 {
                    self.flush_ranges(job.id, entry, index);
                    if job_entry.file_transferred(index) && !announced(entry, index) {
                        set_announced(entry, index, true);
                        self.emit(job.id, EventKind::FileTransferred { index });
                    }
                }
                self.emit(job.id, EventKind::JobTransferred);
            }
            JobState::Error => {
                let error = job.error.clone().unwrap_or_else(|| JobError {
                    context: ErrorContext::Unknown,
                    code: Code::E_FAIL,
                    description: "the job is in ERROR".to_string(),
                    file_index: None,
                });
                let _notes = self.notes();
                self.emit(job.id, EventKind::JobError(error));
            }
            state => {
                let _notes = self.notes();
                self.modification(entry, state);
            }
        }
    }

    /// A property changed or files were added.
    pub(crate) fn modified(&self, entry: &impl JobView) {
        let _notes = self.notes();
        self.modification(entry, entry.job().state);
    }

    /// `span` of file `index` was just recorded as filled. Call it after the span joined
    /// `filled` and before it left `requested`: the requested part is what FileRangesTransferred
    /// reports.
    pub(crate) fn recorded(&self, job_entry: &impl JobView, index: u32, span: Span) {
        let job = job_entry.job();
        let Some(file) = job.files.get(index as usize) else { return };
        let mut notes = self.notes();
        let first_record = !notes.contains_key(&job.id);
        let entry = notes.entry(job.id).or_default();
        if first_record {
            // Files complete before this daemon saw them were announced then (or never will be).
            for i in (0..job.files.len() as u32).filter(|i| *i != index) {
                if job_entry.file_transferred(i) {
                    set_announced(entry, i, true);
                }
            }
        }
        self.modification(job_entry, job.state);
        // Only a whole-file download is random-access eligible (spec §4).
        if file.ranges.is_empty() {
            let on_demand = file.requested.intersect_span(span.start, span.end);
            if !on_demand.is_empty() {
                let interval =
                    Duration::from_millis(u64::from(job.minimum_notification_interval_ms));
                let pending = entry.pending.entry(index).or_default();
                pending.ranges.insert_set(&on_demand);
                let due = pending.last_sent.is_none_or(|at| at.elapsed() >= interval);
                if due {
                    self.flush_ranges(job.id, entry, index);
                } else if !pending.timer {
                    pending.timer = true;
                    let wait = pending.last_sent.map_or(Duration::ZERO, |at| {
                        (at + interval).saturating_duration_since(Instant::now())
                    });
                    self.flush_later(job.id, index, wait);
                }
            }
        }
        if job_entry.file_transferred(index) {
            if !announced(entry, index) {
                self.flush_ranges(job.id, entry, index);
                set_announced(entry, index, true);
                self.emit(job.id, EventKind::FileTransferred { index });
            }
        } else {
            // Progress was reset (a changed remote file, a lost temp file): announce it again.
            set_announced(entry, index, false);
        }
    }

    /// The job was completed or cancelled and left the table: the last event of the job.
    pub(crate) fn finished(&self, job: JobId, state: JobState, progress: Progress) {
        let mut notes = self.notes();
        notes.remove(&job);
        self.emit(job, EventKind::JobModification { state, progress });
    }

    /// Sends what is pending for file `index` (if anything) and restarts its interval.
    fn flush_ranges(&self, job: JobId, notes: &mut Notes, index: u32) {
        let Some(pending) = notes.pending.get_mut(&index) else { return };
        if pending.ranges.is_empty() {
            return;
        }
        let ranges = std::mem::take(&mut pending.ranges);
        pending.last_sent = Some(Instant::now());
        self.emit(job, EventKind::FileRangesTransferred { index, ranges });
    }

    /// Flushes file `index`'s pending ranges after `wait` (the rest of its interval).
    fn flush_later(&self, job: JobId, index: u32, wait: Duration) {
        let bus = self.clone();
        let flush = async move {
            tokio::select! {
                _ = bus.inner.closed.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            bus.timer_fired(job, index);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(flush);
            }
            // No runtime (cannot happen inside the daemon): send at once rather than never.
            Err(_) => self.timer_fired(job, index),
        }
    }

    /// File `index`'s flush timer is done: it is no longer scheduled, and what is pending goes.
    fn timer_fired(&self, job: JobId, index: u32) {
        let mut notes = self.notes();
        if let Some(entry) = notes.get_mut(&job) {
            if let Some(pending) = entry.pending.get_mut(&index) {
                pending.timer = false;
            }
            self.flush_ranges(job, entry, index);
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.inner.tx.subscribe()
    }

    /// Cancelled once the daemon shuts down: every subscription ends.
    pub(crate) fn closed(&self) -> &CancellationToken {
        &self.inner.closed
    }

    /// Ends every subscription.
    pub(crate) fn close(&self) {
        self.inner.closed.cancel();
    }
}

fn announced(notes: &Notes, index: u32) -> bool {
    notes.announced.get(index as usize).copied().unwrap_or(false)
}

fn set_announced(notes: &mut Notes, index: u32, value: bool) {
    let i = index as usize;
    if notes.announced.len() <= i {
        notes.announced.resize(i + 1, false);
    }
    notes.announced[i] = value;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use bits_core::Priority;

    use super::*;
    use crate::testing::{caller, job_with_files, manager_with_job, record, with_entry};
    use crate::types::Caller;
    use crate::watch::Subscription;

    const ALL: u32 = notify::ALL & !notify::DISABLE;

    async fn next(sub: &mut Subscription) -> Option<JobEvent> {
        tokio::time::timeout(Duration::from_secs(5), sub.recv()).await.expect("no event within 5 s")
    }

    /// The kinds of the next `n` events.
    async fn kinds(sub: &mut Subscription, n: usize) -> Vec<EventKind> {
        let mut kinds = Vec::with_capacity(n);
        for _ in 0..n {
            kinds.push(next(sub).await.expect("the subscription ended").kind);
        }
        kinds
    }

    /// Nothing arrives within a short while.
    async fn quiet(sub: &mut Subscription) {
        if let Ok(event) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
            panic!("unexpected event {event:?}");
        }
    }

    #[tokio::test]
    async fn setters_and_new_files_send_job_modification_when_asked_for() {
        let (manager, dir, id) = manager_with_job(0).await;
        let (replay, mut sub) = manager.subscribe(caller(), id, Some(ALL)).unwrap();
        assert!(replay.is_empty());
        let (_, mut default_flags) = manager.subscribe(caller(), id, None).unwrap();

        manager.set_priority(caller(), id, Priority::High).await.unwrap();
        let event = next(&mut sub).await.unwrap();
        assert_eq!(event.job, id);
        assert!(matches!(
            event.kind,
            EventKind::JobModification { state: JobState::Suspended, .. }
        ));

        manager.add_file(caller(), id, "http://h/x", &dir.path().join("x"), None).await.unwrap();
        match next(&mut sub).await.unwrap().kind {
            EventKind::JobModification { progress, .. } => assert_eq!(progress.files_total, 1),
            other => panic!("{other:?}"),
        }
        // The job's own flags (default 0x3) select no JobModification…
        quiet(&mut default_flags).await;
        // …until they do; the subscription follows the job's current flags.
        manager.set_notify_flags(caller(), id, notify::JOB_MODIFICATION).await.unwrap();
        assert!(matches!(
            next(&mut default_flags).await.unwrap().kind,
            EventKind::JobModification { .. }
        ));
    }

    /// JobModification is only built for subscriptions that may want it, and that bookkeeping
    /// follows subscriptions coming and going and the job's own flags changing.
    #[tokio::test]
    async fn job_modification_reaches_whoever_wants_it_as_subscriptions_change() {
        let (manager, _dir, id) = manager_with_job(0).await;
        let bus = manager.events();
        let (_, transferred_only) =
            manager.subscribe(caller(), id, Some(notify::JOB_TRANSFERRED)).unwrap();
        let job = manager.get_job(caller(), id).unwrap();
        assert!(!bus.may_want_modifications(&job));
        let (_, mut follows_job) = manager.subscribe(caller(), id, None).unwrap();
        assert!(!bus.may_want_modifications(&job), "the job's default flags exclude it");
        manager.set_notify_flags(caller(), id, notify::JOB_MODIFICATION).await.unwrap();
        manager.set_priority(caller(), id, Priority::High).await.unwrap();
        assert!(matches!(
            next(&mut follows_job).await.unwrap().kind,
            EventKind::JobModification { .. }
        ));
        manager
            .set_notify_flags(caller(), id, notify::JOB_MODIFICATION | notify::DISABLE)
            .await
            .unwrap();
        let job = manager.get_job(caller(), id).unwrap();
        assert!(!bus.may_want_modifications(&job), "DISABLE lets nothing through");
        let (_, disabled) = manager
            .subscribe(caller(), id, Some(notify::JOB_MODIFICATION | notify::DISABLE))
            .unwrap();
        assert!(!bus.may_want_modifications(&job), "nor does a subscription's DISABLE");
        drop(disabled);
        drop(follows_job);
        drop(transferred_only);
        assert!(bus.watchers().is_empty(), "dropped subscriptions are forgotten");
        let (_, mut all) = manager.subscribe(caller(), id, Some(ALL)).unwrap();
        manager.set_priority(caller(), id, Priority::Low).await.unwrap();
        assert!(matches!(next(&mut all).await.unwrap().kind, EventKind::JobModification { .. }));
        drop(all);
        assert!(bus.watchers().is_empty());
    }

    #[tokio::test]
    async fn late_subscribers_get_job_transferred_or_job_error_replayed() {
        let (manager, _dir, id) = manager_with_job(0).await;
        with_entry(&manager, id, |e| e.set_state(JobState::Transferred));
        let (replay, _) = manager.subscribe(caller(), id, None).unwrap();
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].kind, EventKind::JobTransferred);
        let (replay, _) = manager.subscribe(caller(), id, Some(notify::JOB_ERROR)).unwrap();
        assert!(replay.is_empty());
        let disabled = notify::DISABLE | notify::JOB_TRANSFERRED;
        let (replay, _) = manager.subscribe(caller(), id, Some(disabled)).unwrap();
        assert!(replay.is_empty());

        let error = JobError {
            context: ErrorContext::RemoteFile,
            code: Code::Http(404),
            description: "Not Found".into(),
            file_index: Some(0),
        };
        with_entry(&manager, id, |e| {
            e.job_mut().error = Some(error.clone());
            e.set_state(JobState::Error);
        });
        let (replay, _) = manager.subscribe(caller(), id, None).unwrap();
        assert_eq!(
            replay.iter().map(|e| e.kind.clone()).collect::<Vec<_>>(),
            [EventKind::JobError(error)]
        );
    }

    #[tokio::test]
    async fn transitions_into_transferred_or_error_send_no_job_modification() {
        let (manager, _dir, id) = manager_with_job(0).await;
        let (_, mut sub) = manager.subscribe(caller(), id, Some(ALL)).unwrap();
        with_entry(&manager, id, |e| e.set_state(JobState::Queued));
        with_entry(&manager, id, |e| e.set_state(JobState::TransientError));
        with_entry(&manager, id, |e| e.set_state(JobState::Error));
        with_entry(&manager, id, |e| e.set_state(JobState::Transferred));
        let kinds = kinds(&mut sub, 4).await;
        assert!(matches!(kinds[0], EventKind::JobModification { state: JobState::Queued, .. }));
        assert!(matches!(
            kinds[1],
            EventKind::JobModification { state: JobState::TransientError, .. }
        ));
        assert!(matches!(kinds[2], EventKind::JobError(_)));
        assert_eq!(kinds[3], EventKind::JobTransferred);
        quiet(&mut sub).await;
    }

    #[tokio::test]
    async fn files_are_announced_in_order_before_job_transferred() {
        let (manager, _dir, id) = manager_with_job(3).await;
        let flags = notify::FILE_TRANSFERRED | notify::JOB_TRANSFERRED;
        let (_, mut sub) = manager.subscribe(caller(), id, Some(flags)).unwrap();
        for index in 0..3u32 {
            with_entry(&manager, id, |e| e.file_mut(index).unwrap().remote_size = Some(100));
            record(&manager, id, index, 0, 60);
            record(&manager, id, index, 60, 100);
        }
        with_entry(&manager, id, |e| e.set_state(JobState::Transferred));
        assert_eq!(
            kinds(&mut sub, 4).await,
            [
                EventKind::FileTransferred { index: 0 },
                EventKind::FileTransferred { index: 1 },
                EventKind::FileTransferred { index: 2 },
                EventKind::JobTransferred,
            ]
        );
        quiet(&mut sub).await;
    }

    /// A file whose last bytes are in the table but not yet flushed is not transferred for the
    /// events either: another file's record neither announces it early nor marks it announced
    /// (which would swallow its FileTransferred when its own flush returns).
    #[tokio::test]
    async fn a_file_awaiting_its_flush_is_announced_after_it_not_before() {
        let (manager, _dir, id) = manager_with_job(2).await;
        let (_, mut sub) = manager.subscribe(caller(), id, Some(notify::FILE_TRANSFERRED)).unwrap();
        with_entry(&manager, id, |e| {
            for file in &mut e.job_mut().files {
                file.remote_size = Some(100);
                file.filled.insert(0, 100);
            }
            // File 1 is whole in the table, its flush still in flight.
            e.hide_unflushed(1, &RangeSet::from_span(40, 100));
            e.events().recorded(e, 0, Span::new(0, 100));
        });
        assert_eq!(next(&mut sub).await.unwrap().kind, EventKind::FileTransferred { index: 0 });
        quiet(&mut sub).await;
        with_entry(&manager, id, |e| {
            e.clear_unflushed();
            e.events().recorded(e, 1, Span::new(40, 100));
        });
        assert_eq!(next(&mut sub).await.unwrap().kind, EventKind::FileTransferred { index: 1 });
    }

    #[tokio::test]
    async fn a_complete_job_never_recorded_still_announces_its_files() {
        let (manager, _dir, id) = manager_with_job(2).await;
        let (_, mut sub) = manager.subscribe(caller(), id, Some(ALL)).unwrap();
        with_entry(&manager, id, |e| {
            for file in &mut e.job_mut().files {
                file.remote_size = Some(0); // zero-length files: no byte is ever recorded
            }
            e.set_state(JobState::Transferred);
        });
        assert_eq!(
            kinds(&mut sub, 3).await,
            [
                EventKind::FileTransferred { index: 0 },
                EventKind::FileTransferred { index: 1 },
                EventKind::JobTransferred,
            ]
        );
    }

    #[tokio::test]
    async fn on_demand_ranges_are_coalesced_within_the_interval() {
        let (manager, _dir, id) = manager_with_job(1).await;
        let interval = Duration::from_millis(300);
        with_entry(&manager, id, |e| {
            e.job_mut().minimum_notification_interval_ms = interval.as_millis() as u32;
            let file = &mut e.job_mut().files[0];
            file.remote_size = Some(1000);
            file.requested.insert(0, 100);
            file.requested.insert(500, 600);
        });
        let (_, mut sub) =
            manager.subscribe(caller(), id, Some(notify::FILE_RANGES_TRANSFERRED)).unwrap();
        let record = |start, end| record(&manager, id, 0, start, end);
        record(0, 50); // first: sent at once
        record(50, 100); // within the interval: held
        record(100, 500); // not requested: never reported
        record(500, 600); // held with the previous one
        let first = next(&mut sub).await.unwrap();
        let second = next(&mut sub).await.unwrap();
        let ranges = |e: &JobEvent| match &e.kind {
            EventKind::FileRangesTransferred { index: 0, ranges } => ranges.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(ranges(&first), RangeSet::from_span(0, 50));
        let mut rest = RangeSet::from_span(50, 100);
        rest.insert(500, 600);
        assert_eq!(ranges(&second), rest);
        let gap = second.time.duration_since(first.time).unwrap();
        assert!(gap >= interval - Duration::from_millis(5), "second event after {gap:?}");
        quiet(&mut sub).await;
    }

    #[tokio::test]
    async fn a_completed_file_flushes_its_pending_ranges_first() {
        let (manager, _dir, id) = manager_with_job(1).await;
        with_entry(&manager, id, |e| {
            e.job_mut().minimum_notification_interval_ms = 60_000;
            let file = &mut e.job_mut().files[0];
            file.remote_size = Some(100);
            file.requested.insert(0, 100);
        });
        let flags = notify::FILE_RANGES_TRANSFERRED | notify::FILE_TRANSFERRED;
        let (_, mut sub) = manager.subscribe(caller(), id, Some(flags)).unwrap();
        record(&manager, id, 0, 0, 10);
        record(&manager, id, 0, 10, 100);
        assert_eq!(
            kinds(&mut sub, 3).await,
            [
                EventKind::FileRangesTransferred { index: 0, ranges: RangeSet::from_span(0, 10) },
                EventKind::FileRangesTransferred { index: 0, ranges: RangeSet::from_span(10, 100) },
                EventKind::FileTransferred { index: 0 },
            ]
        );
    }

    #[tokio::test]
    async fn subscriptions_end_with_the_job_or_the_daemon() {
        let (manager, dir, id) = manager_with_job(1).await;
        let (_, mut modifications) = manager.subscribe(caller(), id, Some(ALL)).unwrap();
        let (_, mut quiet_one) = manager.subscribe(caller(), id, None).unwrap();
        manager.cancel(caller(), id).await.unwrap();
        assert!(matches!(
            next(&mut modifications).await.unwrap().kind,
            EventKind::JobModification { state: JobState::Cancelled, .. }
        ));
        assert_eq!(next(&mut modifications).await, None);
        assert_eq!(next(&mut quiet_one).await, None);
        // A finished job cannot be watched.
        let gone = manager.subscribe(caller(), id, None).err().unwrap();
        assert_eq!(gone.code, Code::BG_E_NOT_FOUND);

        let id = job_with_files(&manager, dir.path(), 0).await;
        let (_, mut sub) = manager.subscribe(caller(), id, None).unwrap();
        manager.close_subscriptions();
        assert_eq!(next(&mut sub).await, None);
    }

    #[tokio::test]
    async fn unknown_flags_and_other_users_are_refused() {
        let (manager, _dir, id) = manager_with_job(0).await;
        let err = manager.subscribe(caller(), id, Some(0x40)).err().unwrap();
        assert_eq!(err.code, Code::E_NOTIMPL);
        let err = manager.subscribe(Caller::user(1001), id, None).err().unwrap();
        assert_eq!(err.code, Code::E_ACCESSDENIED);
    }
}
