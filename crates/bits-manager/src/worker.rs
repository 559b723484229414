//! One running job: its files in insertion order (spec I2), each probed, then fetched piece by
//! piece with ranged GETs into the temp file until every wanted byte is durably filled.
//!
//! The worker reads what is missing from the job table, so a restart, a new on-demand request or
//! a file added mid-transfer all need no special path: the next piece is always "the first
//! requested byte still missing, else the first missing byte". It never changes the job's state
//! directly except through `transition`, and a stop request (Suspend, Cancel, Complete,
//! shutdown) always ends with the bytes written so far synced and recorded.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bits_core::Priority;
use bits_core::job::security;
use bits_core::{
    BitsError, Code, ErrorContext, Event, Job, JobError, JobFile, JobId, Layout, RangeSet, Span,
    TempId, transition,
};
use bits_disk::PartFile;
use bits_http::{
    FetchError, FetchErrorKind, RangeBody, RedirectPolicy, RemoteInfo, RequestOptions,
};
use futures::FutureExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::access::run_as;
use crate::manager::{Entry, Manager, disk_error, remote_mtime, run_blocking, set_state};
use crate::writer::{Pipeline, Synced, Unsynced};

/// How often one file may be found changed on the server before it counts as a transient error.
const MAX_RESTARTS: u32 = 3;

/// Why a transfer stopped short.
enum Halt {
    /// Asked to stop; whoever asked owns the state.
    Stopped,
    /// The remote file changed: restart this file from zero.
    Changed,
    /// The temp file shrank under the download (truncated by someone): bytes already recorded
    /// may be gone, so the file restarts from zero.
    Lost,
    /// ON_DEMAND_MODE: every requested range is filled; the job waits for the next request.
    OnDemandIdle,
    /// The attempt failed; `retry_after` is the server's Retry-After, if it sent one.
    Failed { error: JobError, transient: bool, retry_after: Option<Duration> },
}

enum PieceEnd {
    Done,
    Repick,
}

pub(crate) async fn run_job(
    manager: Manager,
    id: JobId,
    stop: CancellationToken,
    repick: Arc<Notify>,
) {
    let started = Instant::now();
    let budget = {
        let table = manager.table();
        let Some(entry) = table.jobs.get(&id) else { return };
        let max = Duration::from_secs(u64::from(entry.job.maximum_download_time_secs));
        max.saturating_sub(entry.active_time)
    };
    // The maximum download time stops the worker the same way Suspend does (bytes synced and
    // recorded), and is then reported as the fatal error it is.
    let work = stop.child_token();
    let deadline = {
        let work = work.clone();
        tokio::spawn(async move {
            tokio::time::sleep(budget).await;
            work.cancel();
        })
    };
    let mut outcome = transfer_job(&manager, id, &work, &repick).await;
    if outcome.is_ok() {
        outcome = verify_digests(&manager, id, &work).await;
    }
    deadline.abort();
    if matches!(outcome, Err(Halt::Stopped)) && work.is_cancelled() && !stop.is_cancelled() {
        outcome = Err(Halt::Failed {
            error: JobError {
                context: ErrorContext::GeneralQueueManager,
                code: Code::BG_E_MAXDOWNLOAD_TIMEOUT,
                description: format!(
                    "the job's maximum download time of {} s was used up",
                    budget.as_secs()
                ),
                file_index: None,
            },
            transient: false,
            retry_after: None,
        });
    }
    {
        let mut table = manager.table();
        let Some(entry) = table.jobs.get_mut(&id) else { return };
        entry.run = None;
        entry.active_time += started.elapsed();
        if !entry.finishing {
            match outcome {
                // A file added after the last check is still missing (or, added meanwhile,
                // unverified): back to the queue.
                Ok(()) if !entry.job.all_verified() => {
                    if let Ok(next) = transition(entry.job.state, Event::Requeue) {
                        set_state(entry, next);
                    }
                }
                Ok(()) => {
                    if let Ok(next) = transition(entry.job.state, Event::AllTransferred) {
                        // Stamped first, so the state change's ModificationTime is not earlier.
                        entry.job.transfer_completion_time = Some(SystemTime::now());
                        set_state(entry, next);
                        entry.job.error = None;
                        entry.stalled_since = None;
                        tracing::info!(job = %id, "job transferred");
                    }
                }
                Err(Halt::Stopped) | Err(Halt::Changed) => {}
                // A small file's tail found its temp file truncated (a streamed file restarts
                // within its transfer and never ends here): retried like any transient failure.
                Err(Halt::Lost) => {
                    let error = JobError {
                        context: ErrorContext::LocalFile,
                        code: Code::E_FAIL,
                        description: "a temp file was truncated during the transfer".into(),
                        file_index: None,
                    };
                    fail(&manager, entry, error, true, None);
                }
                // Spec A6b: the requested ranges are in; an incomplete file waits, SUSPENDED.
                Err(Halt::OnDemandIdle) => {
                    if let Ok(next) = transition(entry.job.state, Event::Suspend) {
                        set_state(entry, next);
                        tracing::info!(job = %id, "on-demand ranges transferred; job suspended");
                    }
                }
                Err(Halt::Failed { error, transient, retry_after }) => {
                    fail(&manager, entry, error, transient, retry_after);
                }
            }
            if let Err(e) = manager.persist_job_fields(&entry.job) {
                tracing::error!(job = %id, error = %e, "cannot persist job");
            }
        }
    }
    if let Err(e) = manager.flush().await {
        tracing::error!(job = %id, error = %e, "cannot flush the store");
    }
    manager.inner.wake.notify_one();
}

/// Hashes, as the job's owner on the blocking pool, every file whose bytes are all recorded and
/// whose expected SHA-256 was not yet checked against them — from its temp file on disk, never
/// from what came off the network. A match is recorded (`actual_sha256`); a mismatch empties
/// that file's temp file and forgets its progress (Resume fetches it again from zero; nothing
/// reaches the destination) and fails the job with `BITSD_E_CHECKSUM_MISMATCH`, context
/// REMOTE_FILE.
async fn verify_digests(
    manager: &Manager,
    id: JobId,
    stop: &CancellationToken,
) -> Result<(), Halt> {
    let due: Vec<(u32, JobFile)> = {
        let table = manager.table();
        let entry = table.jobs.get(&id).ok_or(Halt::Stopped)?;
        (0u32..)
            .zip(&entry.job.files)
            .filter(|(_, f)| f.needs_verification())
            .map(|(i, f)| (i, f.clone()))
            .collect()
    };
    if due.is_empty() {
        return Ok(());
    }
    let owner = job_owner(manager, id)?;
    for (index, file) in due {
        let (uid, hashed) = (owner.uid, file.clone());
        let hashing = run_as(owner.clone(), move || crate::checksum::hash_temp(&hashed, uid));
        // A Suspend or Cancel does not wait for a large file's hash; the read is harmless.
        let actual = tokio::select! {
            _ = stop.cancelled() => return Err(Halt::Stopped),
            actual = hashing => actual.map_err(|e| local_halt(e, index))?,
        };
        let matched = file.expected_sha256.as_deref() == Some(actual.as_str());
        if !matched {
            let error = crate::checksum::mismatch(&file, &actual);
            tracing::warn!(job = %id, index, error = %error.message, "checksum mismatch");
            reset_file(manager, id, index).await?;
            store_file_record(manager, id, index, |f| f.actual_sha256 = Some(actual));
            return Err(Halt::Failed {
                error: job_error(ErrorContext::RemoteFile, error.code, error.message, index),
                transient: false,
                retry_after: None,
            });
        }
        // Recorded only if the bytes hashed are still the file's (nothing reset it meanwhile).
        store_file_record(manager, id, index, |f| {
            if f.filled == file.filled && f.expected_sha256 == file.expected_sha256 {
                f.actual_sha256 = Some(actual);
            }
        });
    }
    manager.flush().await.map_err(|e| store_halt(e, 0))
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
    let timing = crate::policy::Timing::of(&entry.job);
    let verdict =
        crate::policy::after_failure(timing, entry.stalled_since, transient, retry_after, now);
    let retry_at = match verdict {
        crate::policy::Verdict::Wait(at) => Some(at),
        _ => None,
    };
    let fatal = retry_at.is_none();
    let event = if fatal { Event::FatalFailure } else { Event::TransientFailure };
    let Ok(next) = transition(entry.job.state, event) else { return };
    tracing::warn!(job = %entry.job.id, code = %error.code, error = %error.description, state = next.name(), "transfer failed");
    if !fatal {
        manager.inner.stats.transient_error(error.code);
    }
    entry.job.error_count = entry.job.error_count.saturating_add(1);
    entry.job.error = Some(error);
    set_state(entry, next);
    if fatal {
        entry.retry_at = None;
        entry.stalled_since = None;
    } else {
        entry.retry_at = retry_at;
        entry.stalled_since.get_or_insert(now);
    }
}

/// What is left of a file once its bytes are off the network: writing, syncing and recording
/// them. It runs without holding one of the job's files-at-once slots.
type Tail = Pin<Box<dyn Future<Output = Result<(), Halt>> + Send + 'static>>;

/// A file's transfer: done, or its bytes are in memory and only its [`Tail`] remains.
enum Fetched {
    Done,
    /// The tail, and how many bytes of the file it holds in memory.
    Tail(Tail, u64),
}

/// Tails of one job in flight at once: files whose bytes are in memory, waiting for their write,
/// fsync and store flush. Capped by count and by bytes so memory stays bounded.
const MAX_TAILS: usize = 64;
const MAX_TAIL_BYTES: u64 = 16 << 20;

async fn transfer_job(
    manager: &Manager,
    id: JobId,
    stop: &CancellationToken,
    repick: &Arc<Notify>,
) -> Result<(), Halt> {
    // Files go one at a time (BITS), or several at once with the files-at-once extension. The
    // first failure stops the others (they drain: what they wrote is synced and recorded).
    // A small file's network part and its disk part are separate: while one file's bytes are
    // written and recorded, its slot already fetches the next file (most of a small file's time
    // is the fsync and the store flush, which many files share when they overlap).
    // Each file and each tail is a task of its own, not a future polled by this one: they run on
    // every runtime thread, and a new file's request goes out as soon as its slot frees (polled
    // from one task, a pushed file waited ~2 ms on average for its first poll: measured with
    // 1,000 small files, 16 at once). Every way out of the loop below drains both sets, so no
    // file or tail outlives the worker: aborting a task would only stop it at its next await, and
    // a blocking write it started would still run to its end.
    let files_stop = stop.child_token();
    let mut running = JoinSet::new();
    let mut tails = JoinSet::new();
    let mut tail_bytes = 0u64;
    let mut active: HashSet<u32> = HashSet::new();
    // Files before this index were transferred or active at the last pick: the next pick starts
    // here, so a job of n files is not scanned n times from the start. Whatever an active file
    // leaves undone is caught by the full scan at the end.
    let mut scan_from = 0;
    let mut failure: Option<Halt> = None;
    loop {
        let room = tails.len() < MAX_TAILS && tail_bytes < MAX_TAIL_BYTES;
        if failure.is_none() && !stop.is_cancelled() && room {
            loop {
                let next = {
                    let table = manager.table();
                    let Some(entry) = table.jobs.get(&id) else {
                        // The job left the table: stop the others and drain them.
                        files_stop.cancel();
                        failure.get_or_insert(Halt::Stopped);
                        break;
                    };
                    // Slots first: no pick without a free slot.
                    if running.len() >= entry.job.files_at_once.max(1) as usize {
                        break;
                    }
                    next_file(&entry.job, &active, scan_from).before(entry.adding_from)
                };
                let NextFile::File(index) = next else { break };
                scan_from = index + 1;
                active.insert(index);
                let (manager, files_stop, repick) =
                    (manager.clone(), files_stop.clone(), repick.clone());
                running.spawn(async move {
                    let fetched = transfer_file(&manager, id, index, &files_stop, &repick);
                    (index, caught(index, fetched).await)
                });
            }
        }
        let (index, result) = tokio::select! {
            Some(joined) = running.join_next() => match joined {
                Ok((index, Ok(Fetched::Tail(tail, bytes)))) => {
                    tail_bytes += bytes;
                    tails.spawn(async move { (index, bytes, caught(index, tail).await) });
                    continue;
                }
                Ok((index, Ok(Fetched::Done))) => (Some(index), Ok(())),
                Ok((index, Err(halt))) => (Some(index), Err(halt)),
                Err(e) => (None, Err(lost_task(e))),
            },
            Some(joined) = tails.join_next() => match joined {
                Ok((index, bytes, result)) => {
                    tail_bytes -= bytes;
                    (Some(index), result)
                }
                Err(e) => (None, Err(lost_task(e))),
            },
            else => break,
        };
        if let Some(index) = index {
            active.remove(&index);
        }
        if let Err(halt) = result {
            files_stop.cancel();
            failure.get_or_insert(halt);
        }
    }
    if let Some(halt) = failure {
        return Err(halt);
    }
    if stop.is_cancelled() {
        return Err(Halt::Stopped);
    }
    let table = manager.table();
    let entry = table.jobs.get(&id).ok_or(Halt::Stopped)?;
    outcome(&entry.job)
}

/// A file's transfer or tail, with a panic in it turned into a transient failure of the job
/// (as a panic in one future of the job's own task used to end the whole worker).
async fn caught<T>(index: u32, work: impl Future<Output = Result<T, Halt>>) -> Result<T, Halt> {
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(panicked(Some(index))))
}

/// A file's task that ended without an answer: cancelled by the runtime shutting down, or (should
/// `caught` ever miss one) panicked. Either way the worker stops; a panic is a transient failure,
/// so the job is retried rather than left running with no worker.
fn lost_task(e: tokio::task::JoinError) -> Halt {
    if e.is_panic() { panicked(None) } else { Halt::Stopped }
}

/// A transient E_FAIL for a file's transfer that panicked (`index`: the file, when known).
fn panicked(index: Option<u32>) -> Halt {
    tracing::error!(index, "a file's transfer panicked");
    Halt::Failed {
        error: JobError {
            context: ErrorContext::GeneralQueueManager,
            code: Code::E_FAIL,
            description: "internal error: a file's transfer panicked".into(),
            file_index: index,
        },
        transient: true,
        retry_after: None,
    }
}

/// How a worker that ran out of files to start ends: a full scan from the first file, so a file
/// the pick cursor passed (or one added meanwhile) is seen.
fn outcome(job: &bits_core::Job) -> Result<(), Halt> {
    match next_file(job, &HashSet::new(), 0) {
        NextFile::Done => Ok(()),
        NextFile::Idle => Err(Halt::OnDemandIdle),
        // The worker ends and the job is requeued (`run_job`: not all transferred).
        NextFile::File(_) => Ok(()),
    }
}

impl NextFile {
    /// No file from index `limit` on (files an AddFile has not made durable yet).
    fn before(self, limit: Option<u32>) -> NextFile {
        match (self, limit) {
            (NextFile::File(index), Some(limit)) if index >= limit => NextFile::Done,
            (next, _) => next,
        }
    }
}

#[cfg_attr(test, derive(Debug, PartialEq))]
enum NextFile {
    File(u32),
    /// Every file is whole.
    Done,
    /// ON_DEMAND_MODE and nothing requested is missing.
    Idle,
}

/// Files go in insertion order (spec I2), from index `from` on (ON_DEMAND_MODE: from the first,
/// as requests may come for any file). In ON_DEMAND_MODE only files with requested bytes still
/// missing are worked on.
fn next_file(job: &bits_core::Job, active: &HashSet<u32>, from: u32) -> NextFile {
    let pending =
        |(i, f): &(usize, &JobFile)| !f.is_transferred() && !active.contains(&(*i as u32));
    let wanted = |f: &JobFile| !f.requested.subtract(&f.filled).is_empty();
    let from = if job.on_demand { 0 } else { from as usize };
    let mut files = job.files.iter().enumerate().skip(from);
    let found =
        if job.on_demand { files.find(|e| pending(e) && wanted(e.1)) } else { files.find(pending) };
    match found {
        Some((index, _)) => NextFile::File(index as u32),
        None if job.all_transferred() => NextFile::Done,
        None if !active.is_empty() => NextFile::Done, // the rest are running
        None => NextFile::Idle,
    }
}

async fn transfer_file(
    manager: &Manager,
    id: JobId,
    index: u32,
    stop: &CancellationToken,
    repick: &Notify,
) -> Result<Fetched, Halt> {
    // Restarts from zero, counted apart: the server's file changed, or our temp file shrank.
    let (mut changes, mut losses) = (0, 0);
    loop {
        let (count, context, code, what) =
            match transfer_file_once(manager, id, index, stop, repick).await {
                Err(Halt::Changed) => {
                    changes += 1;
                    (
                        changes,
                        ErrorContext::RemoteFile,
                        Code::BG_E_REMOTE_FILE_CHANGED,
                        "the remote file changed",
                    )
                }
                Err(Halt::Lost) => {
                    losses += 1;
                    (
                        losses,
                        ErrorContext::LocalFile,
                        Code::E_FAIL,
                        "the temp file was truncated under the download",
                    )
                }
                other => return other,
            };
        tracing::warn!(job = %id, index, "{what}; restarting the file from zero");
        reset_file(manager, id, index).await?;
        if count > MAX_RESTARTS {
            let message = format!("{what} {count} times during the transfer");
            return Err(Halt::Failed {
                error: job_error(context, code, message, index),
                transient: true,
                retry_after: None,
            });
        }
    }
}

/// A file whose server has answered: what the rest of its transfer works from.
struct Opened {
    file: JobFile,
    options: RequestOptions,
    remote: RemoteInfo,
    layout: Arc<Layout>,
    /// The whole-file GET that probed a fresh file (see [`open_file`]), not read yet.
    first_body: Option<RangeBody>,
    connections: u32,
}

async fn transfer_file_once(
    manager: &Manager,
    id: JobId,
    index: u32,
    stop: &CancellationToken,
    repick: &Notify,
) -> Result<Fetched, Halt> {
    let mut opened = open_file(manager, id, index, stop).await?;
    if let Some(body) = opened.first_body.take_if(|_| opened.remote.size <= SMALL_FILE) {
        return small_file(manager, id, index, &opened, body, stop).await;
    }
    stream_file(manager, id, index, stop, repick, opened).await.map(|()| Fetched::Done)
}

/// Asks the server about the file (HEAD, or for a fresh file of a files-at-once job the GET
/// itself) and checks it is still the version whose bytes are on disk.
async fn open_file(
    manager: &Manager,
    id: JobId,
    index: u32,
    stop: &CancellationToken,
) -> Result<Opened, Halt> {
    // Everything the exchange needs from the job, under one lock.
    let (file, options, connections, on_demand, files_at_once) = {
        let table = manager.table();
        let job = table.jobs.get(&id).map(|e| &e.job).ok_or(Halt::Stopped)?;
        let file = job.files.get(index as usize).cloned().ok_or(Halt::Stopped)?;
        let options = request_options(job);
        (file, options, job.connections_per_file.max(1), job.on_demand, job.files_at_once.max(1))
    };
    // With the several-files-at-once extension (jobs of many files, where a round trip per file
    // is most of the cost), a whole file nothing of which is known or on disk yet, fetched front
    // to back on one connection, is probed and downloaded by one GET (no HEAD). Other jobs keep
    // the BITS sequence: HEAD, then ranged GETs.
    let fresh = files_at_once > 1
        && file.ranges.is_empty()
        && file.remote_size.is_none()
        && file.filled.is_empty()
        && file.requested.is_empty()
        && file.download_position.is_none()
        && connections == 1
        && !on_demand;
    let http = &manager.inner.http;
    let opened = if fresh {
        request(manager, id, index, stop, http.fetch_whole_opts(&file.remote_url, &options)).await?
    } else {
        None
    };
    let (remote, first_body) = match opened {
        Some((remote, body)) => (remote, Some(body)),
        None => {
            let probe = http.probe_opts(&file.remote_url, &options);
            (request(manager, id, index, stop, probe).await?, None)
        }
    };
    let changed = file.remote_size.is_some_and(|s| s != remote.size)
        || (file.validator != Default::default() && file.validator != remote.validator);
    if changed {
        return Err(Halt::Changed);
    }
    let layout = Layout::new(&file.ranges, remote.size).map_err(|e| Halt::Failed {
        error: job_error(ErrorContext::RemoteFile, e.code, e.message, index),
        transient: false,
        retry_after: None,
    })?;
    let layout = Arc::new(layout);
    Ok(Opened { file, options, remote, layout, first_body, connections })
}

/// The file's missing bytes, streamed to disk: one connection (BITS) or several (segmented).
async fn stream_file(
    manager: &Manager,
    id: JobId,
    index: u32,
    stop: &CancellationToken,
    repick: &Notify,
    opened: Opened,
) -> Result<(), Halt> {
    let Opened { file, options, remote, layout, mut first_body, connections } = opened;

    // Open the temp file. Only the filled ranges a file of its current length can hold are
    // trusted (it may have been deleted or truncated); `connected` drops the rest and flushes
    // *before* the file is extended, or a crash in between would leave a full-length file of
    // zeros that looks intact.
    let local_len = layout.local_len();
    let owner = job_owner(manager, id)?;
    let opening = file.clone();
    let (part, temp_len) = run_as(owner.clone(), move || {
        let part = open_temp(&opening, owner.uid).map_err(disk_error)?;
        let len = part.len().map_err(disk_error)?;
        Ok((part, len))
    })
    .await
    .map_err(|e| local_halt(e, index))?;
    note_temp(manager, id, index, part.id())?;
    connected(manager, id, index, &remote, temp_len, Persist::Now).await?;
    let part = Arc::new(part);
    let sized = part.clone();
    run_blocking(move || sized.set_len(local_len).map_err(disk_error))
        .await
        .map_err(|e| local_halt(e, index))?;

    if connections == 1 {
        // BITS: one connection, one request from the first missing byte to the end of its run.
        // Many small missing pieces (a file added with many ranges) go in one multi-range
        // request; a single piece streams as one ranged GET. A server that answers a
        // multi-range request with the whole file (many do not implement them) gets single
        // ranges from then on; its 200 body is never written.
        let mut multi_range = true;
        // Received by multi-range requests, not yet synced: carried from one request to the
        // next so a file of many small ranges is synced once per window, not once per request.
        let mut pending = Unsynced::new();
        loop {
            let batch = if multi_range {
                small_pieces(manager, id, index, &layout, pending.spans())?
            } else {
                Vec::new()
            };
            if batch.len() > 1 {
                let fetched = fetch_pieces(
                    manager,
                    id,
                    index,
                    &remote,
                    &options,
                    &batch,
                    &part,
                    &layout,
                    stop,
                    &mut pending,
                )
                .await;
                if fetched.is_err() {
                    // What arrived before a stop or a failure is valid data of the probed
                    // version: keep it.
                    sync_and_record(manager, id, index, &mut pending, &part, &layout).await?;
                }
                match fetched {
                    Err(Halt::Failed { error, .. })
                        if error.code == Code::BG_E_INSUFFICIENT_RANGE_SUPPORT =>
                    {
                        tracing::info!(job = %id, index, "server does not answer multi-range requests; using single ranges");
                        multi_range = false;
                    }
                    other => other?,
                }
                continue;
            }
            // Single pieces are picked from the recorded set: record what is pending first.
            sync_and_record(manager, id, index, &mut pending, &part, &layout).await?;
            let Some(piece) = next_piece(manager, id, index, &layout)? else { return Ok(()) };
            // The opened GET serves the first piece when it is what is missing (the whole file,
            // unless a RequestFileRanges came in meanwhile; then the GET is dropped).
            let opened = first_body.take().filter(|body| body.span() == piece);
            let request = Request { remote: &remote, options: &options, piece, opened };
            match fetch_piece(manager, id, index, request, &part, &layout, stop, repick).await? {
                PieceEnd::Done | PieceEnd::Repick => continue,
            }
        }
    }
    // Segmented (bitsd extension): each connection claims the next missing piece not claimed
    // by another, fetches it, and comes back for more, so fast connections take more pieces.
    let piece_size =
        (layout.local_len() / (u64::from(connections) * 4)).clamp(MIN_SEGMENT, MAX_SEGMENT);
    let claims = std::sync::Mutex::new(RangeSet::new());
    let segment_stop = stop.child_token();
    let connection = |_| async {
        let result = async {
            loop {
                let Some(piece) = claim_piece(manager, id, index, &layout, &claims, piece_size)?
                else {
                    return Ok(());
                };
                let request = Request { remote: &remote, options: &options, piece, opened: None };
                let fetched =
                    fetch_piece(manager, id, index, request, &part, &layout, &segment_stop, repick)
                        .await;
                lock(&claims).remove(piece.start, piece.end);
                fetched?;
            }
        }
        .await;
        if result.is_err() {
            segment_stop.cancel();
        }
        result
    };
    let results = futures::future::join_all((0..connections).map(connection)).await;
    let mut first_error = None;
    for result in results {
        match result {
            Err(Halt::Stopped) if !stop.is_cancelled() => {} // stopped because a sibling failed
            Err(halt) => {
                first_error.get_or_insert(halt);
            }
            Ok(()) => {}
        }
    }
    match first_error {
        Some(halt) => Err(halt),
        None if stop.is_cancelled() => Err(Halt::Stopped),
        None => Ok(()),
    }
}

/// A fresh file up to this size is received into memory and written, synced and recorded in
/// one go (see [`small_file`]).
const SMALL_FILE: u64 = 1 << 20;

/// The whole of a small fresh file from its opened GET: the body is collected in memory and
/// the file's [`Tail`] is returned, in which a single blocking task (as the owner) creates the
/// temp file, writes it and fdatasyncs it, and only then `[0, size)` is recorded as filled. One
/// hand-off to the blocking pool instead of the five or six of the streaming path — most of the
/// cost when a job holds thousands of small files. A failure or stop before the sync leaves
/// nothing recorded, as on the streaming path; a tail, once started, runs to its end (its bytes
/// are here, and valid).
async fn small_file(
    manager: &Manager,
    id: JobId,
    index: u32,
    opened: &Opened,
    mut body: RangeBody,
    stop: &CancellationToken,
) -> Result<Fetched, Halt> {
    let size = opened.remote.size;
    let mut data = Vec::with_capacity(size as usize);
    loop {
        let chunk = tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(Halt::Stopped),
            chunk = body.next_chunk() => chunk.map_err(|e| fetch_halt(e, index))?,
        };
        match chunk {
            Some(bytes) => data.extend_from_slice(&bytes),
            None => break,
        }
    }
    drop(body);
    // A fresh file has no filled ranges for a short temp file to contradict (temp length 0).
    // Its record is written once, by the tail, with the size, validator and filled range
    // together (a crash before that loses nothing: the file is fetched again).
    connected(manager, id, index, &opened.remote, 0, Persist::WithFirstRange).await?;
    let owner = job_owner(manager, id)?;
    let (temp, dir_ino) = (opened.file.temp_path.clone(), opened.file.dir_ino);
    let mode = opened.file.mode.unwrap_or(DEFAULT_MODE);
    // The times Complete gives the file, set now, before the one sync (see `sync_with_times`).
    let mtime = remote_mtime(&opened.remote.validator);
    let manager = manager.clone();
    let tail = async move {
        let written = run_as(owner.clone(), move || {
            Ok(crate::writer::write_new(&temp, dir_ino, mode, owner.uid, &data, mtime))
        })
        .await;
        let failed = match written {
            Ok(Ok((made, synced))) => {
                note_temp(&manager, id, index, made)?;
                return record_filled(&manager, id, index, synced).await;
            }
            Ok(Err(e)) => disk_halt(e, index),
            Err(e) => local_halt(e, index),
        };
        // No range will carry what the server said to the store: write it now, so that after a
        // restart the file reads as it does in memory (the worker's end flushes).
        store_file_record(&manager, id, index, |_| {});
        Err(failed)
    };
    Ok(Fetched::Tail(Box::pin(tail), size))
}

/// A piece no larger than this may share a multi-range request with others.
const SMALL_PIECE: u64 = 1 << 20;

/// Up to [`bits_http::MAX_SPANS_PER_REQUEST`] small missing pieces, lowest first, when requested
/// (on-demand) bytes do not take precedence and more than one is missing. Empty otherwise.
fn small_pieces(
    manager: &Manager,
    id: JobId,
    index: u32,
    layout: &Layout,
    pending: &RangeSet,
) -> Result<Vec<Span>, Halt> {
    let table = manager.table();
    let entry = table.jobs.get(&id).ok_or(Halt::Stopped)?;
    let file = entry.job.files.get(index as usize).ok_or(Halt::Stopped)?;
    let missing = layout.wanted().subtract(&file.filled).subtract(pending);
    if entry.job.on_demand
        || !missing.intersect(&file.requested).is_empty()
        || missing.n_spans() < 2
    {
        return Ok(Vec::new());
    }
    Ok(missing
        .iter()
        .take_while(|s| s.len() <= SMALL_PIECE)
        .take(bits_http::MAX_SPANS_PER_REQUEST)
        .collect())
}

/// Writes, syncs and records everything `pending` holds (the durability rule: recorded only
/// after the sync), and starts a new window.
async fn sync_and_record(
    manager: &Manager,
    id: JobId,
    index: u32,
    pending: &mut Unsynced,
    part: &Arc<PartFile>,
    layout: &Arc<Layout>,
) -> Result<(), Halt> {
    match pending.sync(part, layout).await {
        Ok(Some(synced)) => record_filled(manager, id, index, synced).await,
        Ok(None) => Ok(()),
        Err(e) => Err(disk_halt(e, index)),
    }
}

/// Fetches several pieces with one multi-range request. Parts may arrive in any order; bytes are
/// written at their local offsets, then synced, then recorded once a sync window is full
/// (`pending` carries the rest to the caller, who syncs it with the next window or before
/// picking single pieces), so the durability rule holds as for a single piece.
#[allow(clippy::too_many_arguments)]
async fn fetch_pieces(
    manager: &Manager,
    id: JobId,
    index: u32,
    remote: &RemoteInfo,
    options: &RequestOptions,
    pieces: &[Span],
    part: &Arc<PartFile>,
    layout: &Arc<Layout>,
    stop: &CancellationToken,
    pending: &mut Unsynced,
) -> Result<(), Halt> {
    let get = manager.inner.http.get_ranges_opts(remote, pieces, options);
    let mut body = request(manager, id, index, stop, get).await?;
    let config = manager.config();
    loop {
        let chunk = tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(Halt::Stopped),
            chunk = body.next_chunk() => chunk,
        };
        match chunk {
            Ok(Some((offset, bytes))) => {
                pending.push(offset, bytes);
                if pending.full(config.sync_bytes, config.sync_interval) {
                    sync_and_record(manager, id, index, pending, part, layout).await?;
                }
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(fetch_halt(e, index)),
        }
    }
}

/// Smallest and largest piece one connection of a segmented download claims at a time.
const MIN_SEGMENT: u64 = 1 << 20;
const MAX_SEGMENT: u64 = 64 << 20;

/// The next piece for one connection of a segmented download: like [`next_piece`], minus what
/// other connections have claimed, cut to `piece_size`; the claim is recorded before returning.
fn claim_piece(
    manager: &Manager,
    id: JobId,
    index: u32,
    layout: &Layout,
    claims: &std::sync::Mutex<RangeSet>,
    piece_size: u64,
) -> Result<Option<Span>, Halt> {
    let table = manager.table();
    let entry = table.jobs.get(&id).ok_or(Halt::Stopped)?;
    let file = entry.job.files.get(index as usize).ok_or(Halt::Stopped)?;
    let mut claimed = lock(claims);
    let missing = layout.wanted().subtract(&file.filled).subtract(&claimed);
    Ok(pick(&missing, file, entry.job.on_demand).map(|span| {
        let piece = Span::new(span.start, span.end.min(span.start.saturating_add(piece_size)));
        claimed.insert(piece.start, piece.end);
        piece
    }))
}

fn lock(claims: &std::sync::Mutex<RangeSet>) -> std::sync::MutexGuard<'_, RangeSet> {
    claims.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// When [`connected`] writes the file's record to the store.
#[derive(PartialEq)]
enum Persist {
    /// Now: what the server said is stored with the next flush.
    Now,
    /// With the first recorded range, which the caller writes next (a small file written
    /// whole): one store write per file instead of two.
    WithFirstRange,
}

/// Records what the server said about the file (in the table, and in the store now or, with
/// [`Persist::WithFirstRange`], with the caller's first recorded range) and moves the job to
/// TRANSFERRING.
async fn connected(
    manager: &Manager,
    id: JobId,
    index: u32,
    remote: &RemoteInfo,
    temp_len: u64,
    persist: Persist,
) -> Result<(), Halt> {
    let trimmed = {
        let mut table = manager.table();
        let entry = table.jobs.get_mut(&id).ok_or(Halt::Stopped)?;
        let file = entry.job.files.get_mut(index as usize).ok_or(Halt::Stopped)?;
        file.remote_size = Some(remote.size);
        file.validator = remote.validator.clone();
        // ALLOW_REPORT: the remote name becomes where the redirects led (spec §6.2).
        if remote.redirected
            && entry.job.security_flags & security::REDIRECT_POLICY_MASK
                == security::REDIRECT_POLICY_ALLOW_REPORT
        {
            file.remote_url = remote.final_url.clone();
        }
        let trimmed = file.trim_filled_to(Some(temp_len));
        if trimmed {
            tracing::warn!(job = %id, index, path = %file.temp_path.display(), temp_len, "temp file short; the ranges it no longer holds will be fetched again");
        }
        // On-demand requests made before the size was known are clipped to the file now.
        file.requested = file.requested.intersect_span(0, remote.size);
        let mut fields_changed = false;
        if let Ok(next) = transition(entry.job.state, Event::Connected) {
            if next != entry.job.state {
                set_state(entry, next);
                fields_changed = true;
            }
            // The error object lasts until the job is transferring again (spec §3.H).
            fields_changed |= entry.job.error.take().is_some();
        }
        // The job's own fields when they changed (in a job of many files, only its first
        // connection changes them), and this file unless its caller writes it next.
        if fields_changed {
            manager.persist_job_fields(&entry.job).map_err(|e| store_halt(e, index))?;
        }
        if persist == Persist::Now {
            let file = &entry.job.files[index as usize];
            manager.persist_file(id, index, file).map_err(|e| store_halt(e, index))?;
        }
        trimmed
    };
    // The flush must precede extending the temp file only when the stored filled set claimed
    // bytes the file no longer holds (see above). Otherwise the new size and validator reach the
    // disk with the first recorded range's flush — and a crash before it loses nothing: the file
    // is probed again.
    if trimmed {
        manager.flush().await.map_err(|e| store_halt(e, index))?;
    }
    Ok(())
}

/// Applies `change` to a file in the table and writes its record; the caller's flush makes it
/// durable. A failure is only logged: the caller is already failing for another reason.
fn store_file_record(manager: &Manager, id: JobId, index: u32, change: impl FnOnce(&mut JobFile)) {
    let mut table = manager.table();
    let Some(file) = table.jobs.get_mut(&id).and_then(|e| e.job.files.get_mut(index as usize))
    else {
        return;
    };
    change(file);
    if let Err(e) = manager.persist_file(id, index, file) {
        tracing::error!(job = %id, index, error = %e, "cannot store a file's record");
    }
}

/// The next remote span to fetch: the first requested byte still missing, else the first
/// missing byte; `None` when the file is complete.
fn next_piece(
    manager: &Manager,
    id: JobId,
    index: u32,
    layout: &Layout,
) -> Result<Option<Span>, Halt> {
    let table = manager.table();
    let entry = table.jobs.get(&id).ok_or(Halt::Stopped)?;
    let file = entry.job.files.get(index as usize).ok_or(Halt::Stopped)?;
    Ok(pick(&layout.wanted().subtract(&file.filled), file, entry.job.on_demand))
}

/// The selection rule shared by one connection and a segmented download: the first requested
/// (on-demand) byte still `missing`; in ON_DEMAND_MODE nothing else (the rest waits for the next
/// request); otherwise from the download position to the end, then from the lowest missing byte.
fn pick(missing: &RangeSet, file: &JobFile, on_demand: bool) -> Option<Span> {
    if let Some(piece) = missing.intersect(&file.requested).iter().next() {
        return Some(piece);
    }
    if on_demand {
        return None;
    }
    let position = file.download_position.unwrap_or(0);
    missing.first_from(position).or_else(|| missing.iter().next())
}

#[allow(clippy::too_many_arguments)]
async fn fetch_piece(
    manager: &Manager,
    id: JobId,
    index: u32,
    request: Request<'_>,
    part: &Arc<PartFile>,
    layout: &Arc<Layout>,
    stop: &CancellationToken,
    repick: &Notify,
) -> Result<PieceEnd, Halt> {
    let mut body = match request.opened {
        Some(body) => body,
        None => {
            let get =
                manager.inner.http.get_range_opts(request.remote, request.piece, request.options);
            self::request(manager, id, index, stop, get).await?
        }
    };
    let piece = request.piece;
    tracing::debug!(job = %id, index, start = piece.start, end = piece.end, "fetching");
    let config = manager.config();
    let connections = {
        let table = manager.table();
        table.jobs.get(&id).map_or(1, |e| e.job.connections_per_file.max(1) as usize)
    };
    let batch = (crate::writer::WRITE_BATCH / connections).max(crate::writer::MIN_WRITE_BATCH);
    let mut pipe = Pipeline::new(part.clone(), layout.clone(), piece.start, batch);
    let mut pos = piece.start;
    let mut checkpointed = piece.start;
    let mut last_checkpoint = Instant::now();

    // Every exit drains the pipeline: what was written is synced and recorded.
    let end: Result<PieceEnd, Halt> = loop {
        let deadline = tokio::time::Instant::from_std(last_checkpoint + config.sync_interval);
        let due = pos > checkpointed;
        tokio::select! {
            biased;
            _ = stop.cancelled() => break Err(Halt::Stopped),
            _ = repick.notified() => break Ok(PieceEnd::Repick),
            // Record a span as soon as its sync is done, so a crash loses at most one window.
            synced = pipe.sync_done(), if pipe.syncing() => match synced {
                Ok(synced) => if let Err(h) = record_filled(manager, id, index, synced).await { break Err(h) },
                Err(e) => break Err(disk_halt(e, index)),
            },
            _ = tokio::time::sleep_until(deadline), if due => {
                last_checkpoint = Instant::now();
                checkpointed = pos;
                if let Err(h) = checkpoint(manager, id, index, &mut pipe, pos).await { break Err(h) }
            }
            chunk = body.next_chunk() => match chunk {
                Ok(Some(bytes)) => {
                    let n = bytes.len() as u64;
                    if let Err(e) = pipe.push(pos, bytes).await { break Err(disk_halt(e, index)) }
                    pos += n;
                    if pos - checkpointed >= config.sync_bytes || last_checkpoint.elapsed() >= config.sync_interval {
                        last_checkpoint = Instant::now();
                        checkpointed = pos;
                        if let Err(h) = checkpoint(manager, id, index, &mut pipe, pos).await { break Err(h) }
                    }
                }
                Ok(None) => break Ok(PieceEnd::Done),
                Err(e) => break Err(fetch_halt(e, index)),
            },
        }
    };
    drop(body);
    if pipe.is_poisoned() {
        // A write or sync failed: nothing after the last recorded checkpoint can be trusted.
        return end;
    }
    // Drain: a final checkpoint, then wait for that sync and record it.
    checkpoint(manager, id, index, &mut pipe, pos).await?;
    match pipe.wait_sync().await {
        Ok(Some(synced)) => record_filled(manager, id, index, synced).await?,
        Ok(None) => {}
        Err(e) => return Err(disk_halt(e, index)),
    }
    end
}

/// Hands bytes up to `upto` to a sync and records the span of the previous sync, now durable.
async fn checkpoint(
    manager: &Manager,
    id: JobId,
    index: u32,
    pipe: &mut Pipeline,
    upto: u64,
) -> Result<(), Halt> {
    match pipe.checkpoint(upto).await {
        Ok(Some(synced)) => record_filled(manager, id, index, synced).await,
        Ok(None) => Ok(()),
        Err(e) => Err(disk_halt(e, index)),
    }
}

/// The spans are synced (the [`Synced`] proves it): they join the filled set, in memory and in
/// the store (flushed). The store write happens under the table lock so that store writes land in
/// the same order as the in-memory changes (a concurrent RequestFileRanges is never overwritten by
/// an older copy).
async fn record_filled(
    manager: &Manager,
    id: JobId,
    index: u32,
    synced: Synced,
) -> Result<(), Halt> {
    let spans = synced.spans();
    if spans.is_empty() {
        return Ok(());
    }
    {
        let mut table = manager.table();
        let Some(entry) = table.jobs.get_mut(&id) else { return Ok(()) };
        entry.stalled_since = None;
        entry.job.modification_time = SystemTime::now();
        if entry.job.files.get(index as usize).is_none() {
            return Ok(());
        }
        // Into the table now, so that every store write of this file (ours and concurrent
        // ones) carries the spans; hidden from clients until the flush returns.
        entry.job.files[index as usize].filled.insert_set(spans);
        entry.unflushed.entry(index).or_default().insert_set(spans);
        let file = &entry.job.files[index as usize];
        manager.persist_file(id, index, file).map_err(|e| store_halt(e, index))?;
    }
    manager.flush().await.map_err(|e| store_halt(e, index))?;
    manager.inner.stats.recorded(spans.total_len());
    // Durable: now clients may see the spans, and their events go out.
    let mut table = manager.table();
    let Some(entry) = table.jobs.get_mut(&id) else { return Ok(()) };
    if let Some(pending) = entry.unflushed.get_mut(&index) {
        *pending = pending.subtract(spans);
        if pending.is_empty() {
            // Empty sets are removed: most of the time the map is empty, and reads are free.
            entry.unflushed.remove(&index);
        }
    }
    if entry.job.files.get(index as usize).is_none() {
        return Ok(());
    }
    for span in spans.iter() {
        // Unless the file restarted from zero meanwhile (then these bytes are gone again).
        if entry.job.files[index as usize].filled.contains_span(span.start, span.end) {
            entry.events.recorded(entry, index, span);
            entry.job.files[index as usize].requested.remove(span.start, span.end);
        }
    }
    Ok(())
}

/// Forgets a file's progress after the server's copy changed, and empties its temp file.
async fn reset_file(manager: &Manager, id: JobId, index: u32) -> Result<(), Halt> {
    let file = snapshot(manager, id, index)?;
    let owner = job_owner(manager, id)?;
    // Truncate before the store forgets: a crash in between leaves the old filled set pointing
    // at a file shorter than its layout, which the next attempt treats as lost.
    run_as(owner.clone(), move || {
        if let Some(part) = PartFile::reopen(&file.temp_path, file.dir_ino, file.temp_id, owner.uid)
            .map_err(disk_error)?
        {
            part.set_len(0).map_err(disk_error)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| local_halt(e, index))?;
    {
        let mut table = manager.table();
        let entry = table.jobs.get_mut(&id).ok_or(Halt::Stopped)?;
        let file = entry.job.files.get_mut(index as usize).ok_or(Halt::Stopped)?;
        file.reset_progress();
        manager.persist_file(id, index, file).map_err(|e| store_halt(e, index))?;
    }
    manager.flush().await.map_err(|e| store_halt(e, index))
}

/// One ranged GET to make: the probed version, the job's headers, the remote span.
struct Request<'a> {
    remote: &'a RemoteInfo,
    options: &'a RequestOptions,
    piece: Span,
    /// A GET of exactly `piece` already answered (see `fetch_whole_opts`); else one is sent.
    opened: Option<RangeBody>,
}

/// What the job asks of its HTTP requests: its custom headers (validated when set, so a parse
/// failure cannot happen and would only drop them), its redirect policy, and whether a server
/// that ignores Range may send the whole file in one 200 (FOREGROUND jobs only, spec §5.1).
fn request_options(job: &Job) -> RequestOptions {
    let headers =
        job.custom_headers.as_deref().and_then(|t| bits_http::parse_custom_headers(t).ok());
    RequestOptions {
        headers: headers.unwrap_or_default(),
        redirects: match job.security_flags & security::REDIRECT_POLICY_MASK {
            security::REDIRECT_POLICY_ALLOW_REPORT => RedirectPolicy::AllowReport,
            security::REDIRECT_POLICY_DISALLOW => RedirectPolicy::Disallow,
            _ => RedirectPolicy::AllowSilent,
        },
        allow_https_to_http: job.security_flags & security::ALLOW_HTTPS_TO_HTTP != 0,
        allow_full_response: job.priority == Priority::Foreground,
    }
}

/// One HTTP exchange of file `index`, abandoned when `stop` fires; a failure becomes the halt
/// [`redirect_aware_halt`] makes of it.
async fn request<T>(
    manager: &Manager,
    id: JobId,
    index: u32,
    stop: &CancellationToken,
    exchange: impl std::future::Future<Output = Result<T, FetchError>>,
) -> Result<T, Halt> {
    tokio::select! {
        _ = stop.cancelled() => Err(Halt::Stopped),
        got = exchange => got.map_err(|e| redirect_aware_halt(manager, id, index, e)),
    }
}

/// A failed request; a redirect the job's policy refused also makes the redirect target the
/// file's remote name (spec §6.2, DISALLOW), so the caller sees where it was sent.
fn redirect_aware_halt(manager: &Manager, id: JobId, index: u32, e: FetchError) -> Halt {
    if let (FetchErrorKind::RedirectDisallowed, Some(target)) = (e.kind, &e.redirect_target) {
        store_file_record(manager, id, index, |file| file.remote_url = target.clone());
    }
    fetch_halt(e, index)
}

/// The identity the job's file work runs as (spec §9: its owner's).
/// Permission bits of a file whose record predates them: what a umask of 022 gives.
const DEFAULT_MODE: u32 = 0o644;

/// A file's temp file, opened as the job's owner: the one the job created, with its bytes, or a
/// new one when there is none yet (or it was deleted). A record written before the job kept
/// which file it created, but with bytes recorded, trusts a file of the owner's.
fn open_temp(file: &JobFile, owner: u32) -> Result<PartFile, bits_disk::DiskError> {
    if (file.temp_id.is_some() || !file.filled.is_empty())
        && let Some(part) = PartFile::reopen(&file.temp_path, file.dir_ino, file.temp_id, owner)?
    {
        return Ok(part);
    }
    PartFile::create(&file.temp_path, file.dir_ino, file.mode.unwrap_or(DEFAULT_MODE), owner)
}

/// Keeps which temp file the job created; the file's next store write carries it (before any
/// byte of it is recorded, so a record with bytes always names its file).
fn note_temp(manager: &Manager, id: JobId, index: u32, made: TempId) -> Result<(), Halt> {
    let mut table = manager.table();
    let entry = table.jobs.get_mut(&id).ok_or(Halt::Stopped)?;
    let file = entry.job.files.get_mut(index as usize).ok_or(Halt::Stopped)?;
    file.temp_id = Some(made);
    Ok(())
}

fn job_owner(manager: &Manager, id: JobId) -> Result<bits_disk::Identity, Halt> {
    manager.job_identity(id).map_err(|_| Halt::Stopped)
}

fn snapshot(manager: &Manager, id: JobId, index: u32) -> Result<JobFile, Halt> {
    let table = manager.table();
    table.jobs.get(&id).and_then(|e| e.job.files.get(index as usize)).cloned().ok_or(Halt::Stopped)
}

fn job_error(
    context: ErrorContext,
    code: Code,
    description: impl Into<String>,
    index: u32,
) -> JobError {
    JobError { context, code, description: description.into(), file_index: Some(index) }
}

fn fetch_halt(e: FetchError, index: u32) -> Halt {
    if e.kind == FetchErrorKind::RemoteChanged {
        return Halt::Changed;
    }
    Halt::Failed {
        error: job_error(e.context, e.code, e.message.clone(), index),
        transient: e.transient,
        retry_after: e.retry_after,
    }
}

/// A disk failure during a transfer: a temp file that shrank under it restarts the file
/// ([`Halt::Lost`]); anything else is [`local_halt`].
fn disk_halt(e: bits_disk::DiskError, index: u32) -> Halt {
    match e {
        bits_disk::DiskError::Shrunk { .. } => {
            tracing::warn!(index, error = %e, "temp file lost bytes");
            Halt::Lost
        }
        e => local_halt(disk_error(e), index),
    }
}

/// A local file problem. A full disk is worth retrying once space is freed, running out of file
/// descriptors once some close; anything else (permissions, a vanished directory) needs the user.
fn local_halt(e: BitsError, index: u32) -> Halt {
    let transient = matches!(e.code, Code::ERROR_DISK_FULL | Code::ERROR_TOO_MANY_OPEN_FILES);
    Halt::Failed {
        error: job_error(ErrorContext::LocalFile, e.code, e.message, index),
        transient,
        retry_after: None,
    }
}

fn store_halt(e: BitsError, index: u32) -> Halt {
    Halt::Failed {
        error: job_error(ErrorContext::GeneralQueueManager, e.code, e.message, index),
        transient: true,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed call is a failed test

    use super::*;
    use crate::testing::{job_with_files, manager};

    /// A file's task that panics fails the job transiently, naming the file, instead of taking
    /// the worker down; a task that returns is passed through.
    #[tokio::test]
    async fn a_panicking_file_task_is_a_transient_failure_of_that_file() {
        let ok = caught(3, async { Ok::<u32, Halt>(7) }).await;
        assert!(matches!(ok, Ok(7)));
        let panicking = async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            Ok::<u32, Halt>(0)
        };
        match caught(5, panicking).await {
            Err(Halt::Failed { error, transient, .. }) => {
                assert!(transient);
                assert_eq!(error.code, Code::E_FAIL);
                assert_eq!(error.file_index, Some(5));
                assert!(error.description.contains("panicked"), "{}", error.description);
            }
            _ => panic!("a panic must become Halt::Failed"),
        }
    }

    /// Running out of file descriptors passes as other files close: a transient failure, like a
    /// full disk; a permission problem needs the user.
    /// Files an AddFile has not made durable yet are not picked.
    #[test]
    fn files_still_being_added_are_not_picked() {
        assert_eq!(NextFile::File(4).before(Some(3)), NextFile::Done);
        assert_eq!(NextFile::File(3).before(Some(3)), NextFile::Done);
        assert_eq!(NextFile::File(2).before(Some(3)), NextFile::File(2));
        assert_eq!(NextFile::File(9).before(None), NextFile::File(9));
        assert_eq!(NextFile::Idle.before(Some(0)), NextFile::Idle);
    }

    #[test]
    fn a_full_disk_or_too_many_open_files_is_transient_other_local_errors_fatal() {
        for (code, transient) in [
            (Code::ERROR_DISK_FULL, true),
            (Code::ERROR_TOO_MANY_OPEN_FILES, true),
            (Code::E_ACCESSDENIED, false),
            (Code::E_FAIL, false),
        ] {
            match local_halt(BitsError::new(code, "x"), 0) {
                Halt::Failed { transient: t, .. } => assert_eq!(t, transient, "{code}"),
                _ => panic!("a local error is a failure"),
            }
        }
    }

    /// A task that ends without an answer: a panic (one `caught` missed) is a transient failure
    /// naming no file, a cancelled task a stop.
    #[tokio::test]
    async fn a_lost_task_is_a_transient_failure_if_it_panicked_else_a_stop() {
        let panicked = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
        });
        match lost_task(panicked.await.unwrap_err()) {
            Halt::Failed { error, transient: true, .. } => {
                assert_eq!((error.code, error.file_index), (Code::E_FAIL, None));
            }
            _ => panic!("a panic must become a transient Halt::Failed"),
        }
        let cancelled = tokio::spawn(std::future::pending::<()>());
        cancelled.abort();
        assert!(matches!(lost_task(cancelled.await.unwrap_err()), Halt::Stopped));
    }

    /// A file whose bytes are all recorded is hashed from its temp file on disk: a match is
    /// recorded, a mismatch empties the temp file, forgets the file's bytes, keeps the digest it
    /// found and fails the job with BITSD_E_CHECKSUM_MISMATCH; a file not yet whole is left.
    #[tokio::test]
    async fn digests_are_checked_from_the_disk_once_a_file_is_whole() {
        use sha2::Digest;
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let id = job_with_files(&m, dir.path(), 3).await;
        let me = rustix::process::geteuid().as_raw();
        let data = b"what the server sent";
        let digest: String =
            sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
        let temps: Vec<_> = {
            let mut table = m.table();
            let job = &mut table.jobs.get_mut(&id).unwrap().job;
            let expected = [digest.clone(), "0".repeat(64), digest.clone()];
            job.files
                .iter_mut()
                .zip(expected)
                .enumerate()
                .map(|(i, (file, expected))| {
                    let part = PartFile::create(&file.temp_path, file.dir_ino, 0o644, me).unwrap();
                    part.write_at(0, data).unwrap();
                    file.temp_id = Some(part.id());
                    file.remote_size = Some(data.len() as u64);
                    // File 2 is one byte short: not whole, not hashed.
                    let end = if i == 2 { data.len() - 1 } else { data.len() };
                    file.filled.insert(0, end as u64);
                    file.expected_sha256 = Some(expected);
                    file.temp_path.clone()
                })
                .collect()
        };
        let outcome = verify_digests(&m, id, &CancellationToken::new()).await;
        match outcome {
            Err(Halt::Failed { error, transient: false, .. }) => {
                assert_eq!(error.code, Code::BITSD_E_CHECKSUM_MISMATCH);
                assert_eq!(error.context, ErrorContext::RemoteFile);
                assert_eq!(error.file_index, Some(1));
                assert!(error.description.contains(&digest), "{}", error.description);
                assert!(error.description.contains(&"0".repeat(64)), "{}", error.description);
            }
            _ => panic!("a mismatch must fail the job"),
        }
        let job = m.get_job(crate::testing::caller(), id).unwrap();
        assert_eq!(job.files[0].actual_sha256.as_deref(), Some(digest.as_str()));
        assert!(job.files[0].digest_verified());
        assert_eq!(job.files[1].actual_sha256.as_deref(), Some(digest.as_str()));
        assert!(job.files[1].filled.is_empty(), "the wrong bytes still count");
        assert_eq!(std::fs::metadata(&temps[1]).unwrap().len(), 0, "the wrong bytes are kept");
        assert_eq!(std::fs::metadata(&temps[0]).unwrap().len(), data.len() as u64);
        assert_eq!(job.files[2].actual_sha256, None, "a file not yet whole was hashed");
        assert!(!job.all_verified());
        // Nothing is left to check: the matched file is not hashed again (its temp file is gone,
        // which hashing would report).
        std::fs::remove_file(&temps[0]).unwrap();
        assert!(verify_digests(&m, id, &CancellationToken::new()).await.is_ok());
    }

    /// The pick starts at the cursor, except in ON_DEMAND_MODE; the full scan at the end of a
    /// worker still sees a file the cursor passed, so the worker ends for a requeue, not as done.
    #[tokio::test]
    async fn next_file_starts_at_the_cursor_and_the_full_scan_sees_the_rest() {
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let id = job_with_files(&m, dir.path(), 5).await;
        let mut table = m.table();
        let job = &mut table.jobs.get_mut(&id).unwrap().job;
        let fill = |file: &mut JobFile| {
            file.remote_size = Some(10);
            file.filled.insert(0, 10);
        };
        job.files[..2].iter_mut().for_each(fill);
        let pick = |job: &bits_core::Job, active: &[u32], from| {
            next_file(job, &active.iter().copied().collect(), from)
        };
        assert_eq!(pick(job, &[], 0), NextFile::File(2));
        assert_eq!(pick(job, &[2], 3), NextFile::File(3));
        assert_eq!(pick(job, &[2], 4), NextFile::File(4), "the cursor passes file 3");
        assert_eq!(pick(job, &[3], 5), NextFile::Done, "the rest are running");
        // Files 2 and 4 done, 3 left behind the cursor: nothing to start from 5 on...
        fill(&mut job.files[2]);
        fill(&mut job.files[4]);
        assert_eq!(pick(job, &[], 5), NextFile::Idle);
        // ...and the worker's last scan finds file 3: it ends Ok (requeued), the job not done.
        assert_eq!(pick(job, &[], 0), NextFile::File(3), "the full scan");
        assert!(matches!(outcome(job), Ok(())));
        assert!(!job.all_transferred());
        fill(&mut job.files[3]);
        assert_eq!(pick(job, &[], 0), NextFile::Done);
        // On demand, any file may be asked for, whatever the cursor.
        job.on_demand = true;
        job.files[1].requested.insert(0, 1);
        job.files[1].filled = RangeSet::new();
        assert_eq!(pick(job, &[], 4), NextFile::File(1));
        job.files[1].requested = RangeSet::new();
        assert!(matches!(outcome(job), Err(Halt::OnDemandIdle)));
    }
}
