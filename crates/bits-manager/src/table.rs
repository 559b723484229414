//! The job table: every job with what only the running daemon knows about it, the one place a
//! job's state changes ([`Entry::set_state`]), and the owner and tombstone checks every BITS
//! operation starts with.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bits_core::{BitsError, Code, Job, JobError, JobFile, JobId, JobState, Progress, RangeSet};
use tokio::sync::Notify;
// tokio's clock, so `tokio::time::pause` drives retry, stall and deadline times in tests.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{EventBus, JobView};
use crate::paths::PathIndex;
use crate::types::Caller;

/// How many finished jobs are remembered so that calls on them say BG_E_INVALID_STATE.
const MAX_TOMBSTONES: usize = 4096;

#[derive(Default)]
pub(crate) struct Table {
    jobs: HashMap<JobId, Entry>,
    /// Final jobs by id, oldest first, with their owner and final state.
    tombstones: VecDeque<(JobId, u32, JobState)>,
    /// Insertion counter giving FIFO order among jobs of equal priority.
    next_seq: u64,
}

impl Table {
    pub(crate) fn get(&self, id: &JobId) -> Option<&Entry> {
        self.jobs.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &JobId) -> Option<&mut Entry> {
        self.jobs.get_mut(id)
    }

    /// Job `id`'s entry for the daemon's own bookkeeping (no owner or state check), or
    /// BG_E_NOT_FOUND naming it.
    pub(crate) fn entry_mut(&mut self, id: JobId) -> Result<&mut Entry, BitsError> {
        self.jobs.get_mut(&id).ok_or_else(|| no_such_job(id))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.jobs.values()
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.jobs.values_mut()
    }

    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Adds a job behind every job already in the table (FIFO among equal priorities).
    pub(crate) fn insert(&mut self, job: Job, events: EventBus, retry_at: Option<Instant>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let paths = PathIndex::of(&job.files);
        let entry = Entry {
            job,
            seq,
            run: None,
            retry_at,
            stalled_since: None,
            finishing: false,
            events,
            active_time: Duration::ZERO,
            unflushed: HashMap::new(),
            adding: Arc::default(),
            paths,
            adding_from: None,
        };
        self.jobs.insert(entry.job.id, entry);
    }

    /// Takes a finished job out of the table, leaving a tombstone so that later changes of it
    /// answer BG_E_INVALID_STATE.
    pub(crate) fn retire(&mut self, id: JobId, final_state: JobState) -> Option<Entry> {
        let entry = self.jobs.remove(&id)?;
        self.tombstones.push_back((id, entry.job.owner_uid, final_state));
        if self.tombstones.len() > MAX_TOMBSTONES {
            self.tombstones.pop_front();
        }
        Some(entry)
    }
}

/// A job plus what only the running daemon knows about it.
pub(crate) struct Entry {
    /// Private so that every state change goes through [`Entry::set_state`] (which announces
    /// it) and every filled span through [`Entry::fill`] (which hides it until flushed).
    job: Job,
    seq: u64,
    run: Option<Run>,
    /// When a TRANSIENT_ERROR job is due for its retry.
    retry_at: Option<Instant>,
    /// Start of the current stretch without progress, set at the first transient error.
    stalled_since: Option<Instant>,
    /// Complete or Cancel is in progress: other changes are refused.
    finishing: bool,
    /// Time spent CONNECTING or TRANSFERRING since the last Resume, counted against the job's
    /// maximum download time (spec §5.3). Not persisted: a restart grants a fresh budget.
    active_time: Duration,
    /// Per file, filled spans recorded in the table (so every store write of the file includes
    /// them) whose store flush has not returned yet; a file with none has no entry. Clients are not shown them: a crash in that
    /// window would take them back, and what GetFilledFileRanges reported must never shrink.
    unflushed: HashMap<u32, RangeSet>,
    /// Where this job's notifications go: a handle on the manager's bus, so that
    /// [`set_state`] can announce every state change.
    events: EventBus,
    /// Held by an AddFile from its first look at the job to its store write: a large one writes
    /// its file records outside the table lock, and no other add may take the same indexes.
    adding: Arc<tokio::sync::Mutex<()>>,
    /// The job's local paths, for AddFile's duplicate check.
    paths: PathIndex,
    /// Files from this index on were just added and their flush has not returned: workers leave
    /// them alone, since a failed flush takes them back (and the next AddFile reuses the indexes).
    adding_from: Option<u32>,
}

impl Entry {
    /// The job as the daemon holds it, spans whose flush is in flight included (clients see
    /// [`Entry::visible`]).
    pub(crate) fn job(&self) -> &Job {
        &self.job
    }

    /// The job to change wholesale: the setters' generic change and its undo (`setters.rs`),
    /// which touch any of a dozen settings through one path. A state change goes through
    /// [`Entry::set_state`], a filled span through [`Entry::fill`].
    pub(crate) fn job_mut(&mut self) -> &mut Job {
        &mut self.job
    }

    /// File `index`'s record, if the job has that file.
    pub(crate) fn file(&self, index: u32) -> Option<&JobFile> {
        self.job.files.get(index as usize)
    }

    /// File `index`'s record to change, if the job has that file.
    pub(crate) fn file_mut(&mut self, index: u32) -> Option<&mut JobFile> {
        self.job.files.get_mut(index as usize)
    }

    /// File `index` named by a caller: E_INVALIDARG naming the index and the count if the job
    /// has no such file.
    pub(crate) fn file_mut_checked(&mut self, index: u32) -> Result<&mut JobFile, BitsError> {
        file_mut(&mut self.job, index)
    }

    /// The one place a job's state changes; it also announces the change (JobModification, or
    /// JobTransferred / JobError for TRANSFERRED / ERROR, spec §7.1), so set the job's error
    /// first.
    pub(crate) fn set_state(&mut self, state: JobState) {
        self.job.state = state;
        self.job.modification_time = SystemTime::now();
        self.events.state_changed(self);
    }

    /// Stamps the job's modification time with now; returns the time it replaced, for an undo.
    pub(crate) fn touch(&mut self) -> SystemTime {
        std::mem::replace(&mut self.job.modification_time, SystemTime::now())
    }

    /// Stamps the transfer completion time with now (before the state change to TRANSFERRED,
    /// so its modification time is not earlier).
    pub(crate) fn stamp_transferred(&mut self) {
        self.job.transfer_completion_time = Some(SystemTime::now());
    }

    /// A failed attempt: the error object the job shows, one more error counted.
    pub(crate) fn record_error(&mut self, error: JobError) {
        self.job.error_count = self.job.error_count.saturating_add(1);
        self.job.error = Some(error);
    }

    /// Drops the error object; says whether there was one.
    pub(crate) fn clear_error(&mut self) -> bool {
        self.job.error.take().is_some()
    }

    /// New file records at the end of the job (their indexes were checked under the same lock);
    /// stamps the modification time and returns the one it replaced, for
    /// [`Entry::forget_files_from`].
    pub(crate) fn append_files(&mut self, records: Vec<JobFile>) -> SystemTime {
        // A fresh job (the usual large add) takes the vector as it is: no copy under the lock.
        if self.job.files.is_empty() {
            self.job.files = records;
        } else {
            self.job.files.extend(records);
        }
        self.touch()
    }

    /// Takes back an add that did not reach the store: the files from `first` on, their paths,
    /// and the modification time they set.
    pub(crate) fn forget_files_from(&mut self, first: u32, hashes: &[u64], modified: SystemTime) {
        self.job.files.truncate(first as usize);
        self.paths.remove_all(hashes);
        self.job.modification_time = modified;
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The worker running the job, if one is.
    pub(crate) fn run(&self) -> Option<&Run> {
        self.run.as_ref()
    }

    /// Registers the worker just spawned for the job, or (`None`) that it ended.
    pub(crate) fn set_run(&mut self, run: Option<Run>) {
        self.run = run;
    }

    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    pub(crate) fn set_retry_at(&mut self, at: Option<Instant>) {
        self.retry_at = at;
    }

    pub(crate) fn stalled_since(&self) -> Option<Instant> {
        self.stalled_since
    }

    pub(crate) fn set_stalled_since(&mut self, since: Option<Instant>) {
        self.stalled_since = since;
    }

    /// Starts the stretch without progress at `now`, unless one is running already.
    pub(crate) fn stalled_from(&mut self, now: Instant) {
        self.stalled_since.get_or_insert(now);
    }

    /// Complete or Cancel is in progress.
    pub(crate) fn finishing(&self) -> bool {
        self.finishing
    }

    pub(crate) fn set_finishing(&mut self, finishing: bool) {
        self.finishing = finishing;
    }

    /// Time spent CONNECTING or TRANSFERRING since the last Resume.
    pub(crate) fn active_time(&self) -> Duration {
        self.active_time
    }

    pub(crate) fn add_active_time(&mut self, spent: Duration) {
        self.active_time += spent;
    }

    /// Resume starts a fresh attempt: no retry pending, and the no-progress timer and the
    /// download-time budget restart.
    pub(crate) fn restart_attempt(&mut self) {
        self.retry_at = None;
        self.stalled_since = None;
        self.active_time = Duration::ZERO;
    }

    /// Synced spans of file `index` join its filled set now, so that every store write of the
    /// file (the caller's and concurrent ones) carries them, but stay hidden from clients until
    /// [`Entry::flushed`]. Returns the file's record for the caller's store write (`None`: the
    /// file is gone).
    pub(crate) fn fill(&mut self, index: u32, spans: &RangeSet) -> Option<&JobFile> {
        self.touch();
        let file = self.job.files.get_mut(index as usize)?;
        file.filled.insert_set(spans);
        self.unflushed.entry(index).or_default().insert_set(spans);
        Some(file)
    }

    /// The flush covering these spans of file `index` returned: clients may see them, each span
    /// still filled is announced and leaves the file's on-demand requests.
    pub(crate) fn flushed(&mut self, index: u32, spans: &RangeSet) {
        if let Some(pending) = self.unflushed.get_mut(&index) {
            *pending = pending.subtract(spans);
            if pending.is_empty() {
                // Empty sets are removed: most of the time the map is empty, and reads are free.
                self.unflushed.remove(&index);
            }
        }
        if self.file(index).is_none() {
            return;
        }
        for span in spans.iter() {
            // Unless the file restarted from zero meanwhile (then these bytes are gone again).
            if self.job.files[index as usize].filled.contains_span(span.start, span.end) {
                self.events.recorded(self, index, span);
                self.job.files[index as usize].requested.remove(span.start, span.end);
            }
        }
    }

    /// Hides spans of file `index` as if their flush were in flight.
    #[cfg(test)]
    pub(crate) fn hide_unflushed(&mut self, index: u32, spans: &RangeSet) {
        self.unflushed.entry(index).or_default().insert_set(spans);
    }

    #[cfg(test)]
    pub(crate) fn clear_unflushed(&mut self) {
        self.unflushed.clear();
    }

    /// Where this job's notifications go.
    pub(crate) fn events(&self) -> &EventBus {
        &self.events
    }

    /// Held by an AddFile from its first look at the job to its store write.
    pub(crate) fn adding(&self) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(&self.adding)
    }

    pub(crate) fn paths(&self) -> &PathIndex {
        &self.paths
    }

    pub(crate) fn paths_mut(&mut self) -> &mut PathIndex {
        &mut self.paths
    }

    /// Files from this index on were just added and their flush has not returned.
    pub(crate) fn adding_from(&self) -> Option<u32> {
        self.adding_from
    }

    pub(crate) fn set_adding_from(&mut self, first: Option<u32>) {
        self.adding_from = first;
    }

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

impl JobView for Entry {
    fn job(&self) -> &Job {
        &self.job
    }

    fn progress(&self) -> Progress {
        Entry::progress(self)
    }

    fn file_transferred(&self, index: u32) -> bool {
        Entry::file_transferred(self, index)
    }
}

/// A running worker.
pub(crate) struct Run {
    stop: CancellationToken,
    /// Tells the worker to choose its next piece again (new on-demand ranges, new files).
    repick: Arc<Notify>,
    /// Cancelled when the worker's task has ended (returned, panicked or been dropped), so
    /// everyone who must wait for it can: shutdown and a Cancel or Complete arriving meanwhile
    /// both wait, rather than whoever came second finding nothing to wait on and deleting temp
    /// files a blocking write of the worker's is still using.
    ended: CancellationToken,
}

impl Run {
    /// The worker the scheduler just spawned, with the tokens it watches and cancels.
    pub(crate) fn new(
        stop: CancellationToken,
        repick: Arc<Notify>,
        ended: CancellationToken,
    ) -> Run {
        Run { stop, repick, ended }
    }

    /// Tells the worker to stop (it syncs and records what it wrote, then exits); see
    /// [`Run::halt`] to wait for that.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Tells the worker to choose its next piece again.
    pub(crate) fn repick(&self) {
        self.repick.notify_one();
    }

    /// Cancelled once the worker's task has ended.
    #[cfg(test)]
    pub(crate) fn ended(&self) -> CancellationToken {
        self.ended.clone()
    }

    /// Stops the worker; the returned token is cancelled once it has ended.
    pub(crate) fn halt(&self) -> CancellationToken {
        self.stop.cancel();
        self.ended.clone()
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
    pub(crate) fn of(entry: &Entry) -> SavedState {
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
    pub(crate) fn restore(self, entry: &mut Entry) {
        let state = if self.state.is_active() { JobState::Queued } else { self.state };
        if !state.is_active()
            && let Some(run) = &entry.run
        {
            run.stop.cancel();
        }
        if entry.job.state != state {
            entry.set_state(state);
        }
        entry.retry_at = self.retry_at;
        entry.stalled_since = self.stalled_since;
        entry.active_time = self.active_time;
        entry.job.transfer_completion_time = self.transfer_completion_time;
    }
}

pub(crate) fn lookup(table: &Table, caller: Caller, id: JobId) -> Result<&Entry, BitsError> {
    match table.jobs.get(&id) {
        Some(entry) => {
            check_owner(caller, &entry.job)?;
            Ok(entry)
        }
        None => Err(no_such_job(id)),
    }
}

/// BG_E_NOT_FOUND naming the job.
pub(crate) fn no_such_job(id: JobId) -> BitsError {
    BitsError::new(Code::BG_E_NOT_FOUND, format!("no job {id}"))
}

/// Lookup for a change: a job that has just been completed or cancelled answers
/// BG_E_INVALID_STATE rather than BG_E_NOT_FOUND (spec §1.1 tombstones).
pub(crate) fn lookup_mut_check(
    table: &Table,
    caller: Caller,
    id: JobId,
) -> Result<&Entry, BitsError> {
    // A retired job has left `jobs`: only a miss there scans the tombstones, so a change of a
    // live job (every setter, every RequestFileRanges) does not walk up to MAX_TOMBSTONES
    // entries under the table lock.
    if !table.jobs.contains_key(&id)
        && let Some((_, owner, state)) = table.tombstones.iter().find(|(t, _, _)| *t == id)
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
    table.entry_mut(id)
}

fn check_owner(caller: Caller, job: &Job) -> Result<(), BitsError> {
    if job.owner_uid == caller.uid || caller.is_admin() {
        Ok(())
    } else {
        Err(BitsError::new(Code::E_ACCESSDENIED, format!("job {} belongs to another user", job.id)))
    }
}

/// File `index` of a job a setter changes: E_INVALIDARG naming the index and the count if the
/// job has no such file.
pub(crate) fn file_mut(job: &mut Job, index: u32) -> Result<&mut JobFile, BitsError> {
    let n = job.files.len();
    job.files.get_mut(index as usize).ok_or_else(|| {
        BitsError::new(
            Code::E_INVALIDARG,
            format!("file index {index} is out of range; the job has {n} files"),
        )
    })
}
