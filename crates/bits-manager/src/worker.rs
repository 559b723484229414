//! One running job: its files in insertion order (spec I2), each probed, then fetched piece by
//! piece with ranged GETs into the temp file until every wanted byte is durably filled.
//!
//! The worker reads what is missing from the job table, so a restart, a new on-demand request or
//! a file added mid-transfer all need no special path: the next piece is always "the first
//! requested byte still missing, else the first missing byte". It never changes the job's state
//! directly except through `transition`, and a stop request (Suspend, Cancel, Complete,
//! shutdown) always ends with the bytes written so far synced and recorded.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bits_core::{
    BitsError, Code, ErrorContext, Event, JobError, JobFile, JobId, Layout, Span, transition,
};
use bits_disk::PartFile;
use bits_http::{FetchError, FetchErrorKind, RemoteInfo};
use http::HeaderMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::manager::{Entry, Manager, disk_error, run_blocking, set_state, store_error};
use crate::writer::Pipeline;

/// How often one file may be found changed on the server before it counts as a transient error.
const MAX_RESTARTS: u32 = 3;

/// Why a transfer stopped short.
enum Halt {
    /// Asked to stop; whoever asked owns the state.
    Stopped,
    /// The remote file changed: restart this file from zero.
    Changed,
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
    let outcome = transfer_job(&manager, id, &stop, &repick).await;
    {
        let mut table = manager.table();
        let Some(entry) = table.jobs.get_mut(&id) else { return };
        entry.run = None;
        if !entry.finishing {
            match outcome {
                // A file added after the last check is still missing: back to the queue.
                Ok(()) if !entry.job.all_transferred() => {
                    if let Ok(next) = transition(entry.job.state, Event::Requeue) {
                        set_state(entry, next);
                    }
                }
                Ok(()) => {
                    if let Ok(next) = transition(entry.job.state, Event::AllTransferred) {
                        set_state(entry, next);
                        entry.job.transfer_completion_time = Some(SystemTime::now());
                        entry.job.error = None;
                        entry.stalled_since = None;
                        tracing::info!(job = %id, "job transferred");
                    }
                }
                Err(Halt::Stopped) | Err(Halt::Changed) => {}
                Err(Halt::Failed { error, transient, retry_after }) => {
                    fail(entry, error, transient, retry_after);
                }
            }
            if let Err(e) = manager.persist_job(&entry.job) {
                tracing::error!(job = %id, error = %e, "cannot persist job");
            }
        }
    }
    if let Err(e) = manager.flush().await {
        tracing::error!(job = %id, error = %e, "cannot flush the store");
    }
    manager.inner.wake.notify_one();
}

/// Applies a failed attempt: TRANSIENT_ERROR with a retry time, or ERROR when the failure is
/// fatal or retrying cannot help (spec §5.3: no-progress timeout 0, retry delay longer than the
/// timeout, or no progress since the first transient error for longer than the timeout).
fn fail(entry: &mut Entry, error: JobError, transient: bool, retry_after: Option<Duration>) {
    let now = Instant::now();
    let job = &entry.job;
    // The 5 s floor applies where a job's delay is set; the operator's default may be lower.
    let delay = Duration::from_secs(u64::from(job.minimum_retry_delay_secs.max(1)));
    // Never sooner than the server asked (429/503 Retry-After).
    let delay = retry_after.map_or(delay, |asked| asked.max(delay));
    let timeout = Duration::from_secs(u64::from(job.no_progress_timeout_secs));
    let stalled_for = entry.stalled_since.map_or(Duration::ZERO, |since| now.duration_since(since));
    let fatal = !transient || timeout.is_zero() || delay > timeout || stalled_for >= timeout;
    let event = if fatal { Event::FatalFailure } else { Event::TransientFailure };
    let Ok(next) = transition(entry.job.state, event) else { return };
    tracing::warn!(job = %entry.job.id, code = %error.code, error = %error.description, state = next.name(), "transfer failed");
    set_state(entry, next);
    entry.job.error_count = entry.job.error_count.saturating_add(1);
    entry.job.error = Some(error);
    if fatal {
        entry.retry_at = None;
        entry.stalled_since = None;
    } else {
        entry.retry_at = Some(now + delay);
        entry.stalled_since.get_or_insert(now);
    }
}

async fn transfer_job(
    manager: &Manager,
    id: JobId,
    stop: &CancellationToken,
    repick: &Notify,
) -> Result<(), Halt> {
    loop {
        if stop.is_cancelled() {
            return Err(Halt::Stopped);
        }
        let next = {
            let table = manager.table();
            let entry = table.jobs.get(&id).ok_or(Halt::Stopped)?;
            entry.job.files.iter().position(|f| !f.is_transferred())
        };
        let Some(index) = next else { return Ok(()) };
        transfer_file(manager, id, index as u32, stop, repick).await?;
    }
}

async fn transfer_file(
    manager: &Manager,
    id: JobId,
    index: u32,
    stop: &CancellationToken,
    repick: &Notify,
) -> Result<(), Halt> {
    let mut restarts = 0;
    loop {
        match transfer_file_once(manager, id, index, stop, repick).await {
            Err(Halt::Changed) => {
                restarts += 1;
                tracing::info!(job = %id, index, "remote file changed; restarting it from zero");
                reset_file(manager, id, index).await?;
                if restarts > MAX_RESTARTS {
                    return Err(Halt::Failed {
                        error: job_error(
                            ErrorContext::RemoteFile,
                            Code::BG_E_REMOTE_FILE_CHANGED,
                            format!("the remote file changed {restarts} times during the transfer"),
                            index,
                        ),
                        transient: true,
                        retry_after: None,
                    });
                }
            }
            other => return other,
        }
    }
}

async fn transfer_file_once(
    manager: &Manager,
    id: JobId,
    index: u32,
    stop: &CancellationToken,
    repick: &Notify,
) -> Result<(), Halt> {
    let file = snapshot(manager, id, index)?;
    let headers = custom_headers(manager, id);
    let remote = tokio::select! {
        _ = stop.cancelled() => return Err(Halt::Stopped),
        probed = manager.inner.http.probe_with(&file.remote_url, &headers) => probed.map_err(|e| fetch_halt(e, index))?,
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

    // Open the temp file. Only the filled ranges a file of its current length can hold are
    // trusted (it may have been deleted or truncated); `connected` drops the rest and flushes
    // *before* the file is extended, or a crash in between would leave a full-length file of
    // zeros that looks intact.
    let temp = file.temp_path.clone();
    let local_len = layout.local_len();
    let (part, temp_len) = run_blocking(move || {
        let part = PartFile::open(&temp).map_err(disk_error)?;
        let len = part.len().map_err(disk_error)?;
        Ok((part, len))
    })
    .await
    .map_err(|e| local_halt(e, index))?;
    connected(manager, id, index, &remote, temp_len).await?;
    let part = Arc::new(part);
    let sized = part.clone();
    run_blocking(move || sized.set_len(local_len).map_err(disk_error))
        .await
        .map_err(|e| local_halt(e, index))?;

    loop {
        let Some(piece) = next_piece(manager, id, index, &layout)? else { return Ok(()) };
        let request = Request { remote: &remote, headers: &headers, piece };
        match fetch_piece(manager, id, index, request, &part, &layout, stop, repick).await? {
            PieceEnd::Done | PieceEnd::Repick => continue,
        }
    }
}

/// Records what the server said about the file and moves the job to TRANSFERRING.
async fn connected(
    manager: &Manager,
    id: JobId,
    index: u32,
    remote: &RemoteInfo,
    temp_len: u64,
) -> Result<(), Halt> {
    {
        let mut table = manager.table();
        let entry = table.jobs.get_mut(&id).ok_or(Halt::Stopped)?;
        let file = entry.job.files.get_mut(index as usize).ok_or(Halt::Stopped)?;
        file.remote_size = Some(remote.size);
        file.validator = remote.validator.clone();
        if file.trim_filled_to(Some(temp_len)) {
            tracing::warn!(job = %id, index, path = %file.temp_path.display(), temp_len, "temp file short; the ranges it no longer holds will be fetched again");
        }
        // On-demand requests made before the size was known are clipped to the file now.
        file.requested = file.requested.intersect_span(0, remote.size);
        if let Ok(next) = transition(entry.job.state, Event::Connected) {
            if next != entry.job.state {
                set_state(entry, next);
            }
            // The error object lasts until the job is transferring again (spec §3.H).
            entry.job.error = None;
        }
        manager.persist_job(&entry.job).map_err(|e| store_halt(e, index))?;
    }
    manager.flush().await.map_err(|e| store_halt(e, index))
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
    let file =
        table.jobs.get(&id).and_then(|e| e.job.files.get(index as usize)).ok_or(Halt::Stopped)?;
    let missing = layout.wanted().subtract(&file.filled);
    let urgent = file.requested.subtract(&file.filled);
    let urgent = missing.intersect(&urgent);
    Ok(urgent.iter().next().or_else(|| missing.iter().next()))
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
    let mut body = tokio::select! {
        _ = stop.cancelled() => return Err(Halt::Stopped),
        got = manager.inner.http.get_range_with(request.remote, request.piece, request.headers) => got.map_err(|e| fetch_halt(e, index))?,
    };
    let piece = request.piece;
    tracing::debug!(job = %id, index, start = piece.start, end = piece.end, "fetching");
    let config = manager.config();
    let mut pipe = Pipeline::new(part.clone(), layout.clone(), piece.start);
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
                Ok(span) => if let Err(h) = record_filled(manager, id, index, span).await { break Err(h) },
                Err(e) => break Err(local_halt(disk_error(e), index)),
            },
            _ = tokio::time::sleep_until(deadline), if due => {
                last_checkpoint = Instant::now();
                checkpointed = pos;
                if let Err(h) = checkpoint(manager, id, index, &mut pipe, pos).await { break Err(h) }
            }
            chunk = body.next_chunk() => match chunk {
                Ok(Some(bytes)) => {
                    let n = bytes.len() as u64;
                    if let Err(e) = pipe.push(pos, bytes).await { break Err(local_halt(disk_error(e), index)) }
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
        Ok(Some(span)) => record_filled(manager, id, index, span).await?,
        Ok(None) => {}
        Err(e) => return Err(local_halt(disk_error(e), index)),
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
        Ok(Some(span)) => record_filled(manager, id, index, span).await,
        Ok(None) => Ok(()),
        Err(e) => Err(local_halt(disk_error(e), index)),
    }
}

/// The span is synced: it joins the filled set, in memory and in the store (flushed). The store
/// write happens under the table lock so that store writes land in the same order as the
/// in-memory changes (a concurrent RequestFileRanges is never overwritten by an older copy).
async fn record_filled(manager: &Manager, id: JobId, index: u32, span: Span) -> Result<(), Halt> {
    {
        let mut table = manager.table();
        let Some(entry) = table.jobs.get_mut(&id) else { return Ok(()) };
        entry.stalled_since = None;
        entry.job.modification_time = SystemTime::now();
        let Some(file) = entry.job.files.get_mut(index as usize) else { return Ok(()) };
        file.filled.insert(span.start, span.end);
        file.requested.remove(span.start, span.end);
        manager
            .inner
            .store
            .put_file(id, index, file)
            .map_err(|e| store_halt(store_error(e), index))?;
    }
    manager.flush().await.map_err(|e| store_halt(e, index))
}

/// Forgets a file's progress after the server's copy changed, and empties its temp file.
async fn reset_file(manager: &Manager, id: JobId, index: u32) -> Result<(), Halt> {
    let temp = snapshot(manager, id, index)?.temp_path;
    // Truncate before the store forgets: a crash in between leaves the old filled set pointing
    // at a file shorter than its layout, which the next attempt treats as lost.
    run_blocking(move || {
        if temp.exists() {
            PartFile::open(&temp).and_then(|p| p.set_len(0)).map_err(disk_error)?;
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
        manager
            .inner
            .store
            .put_file(id, index, file)
            .map_err(|e| store_halt(store_error(e), index))?;
    }
    manager.flush().await.map_err(|e| store_halt(e, index))
}

/// One ranged GET to make: the probed version, the job's headers, the remote span.
struct Request<'a> {
    remote: &'a RemoteInfo,
    headers: &'a HeaderMap,
    piece: Span,
}

/// The job's custom headers, parsed (they were validated when set, so a parse failure cannot
/// happen; it would only drop them).
fn custom_headers(manager: &Manager, id: JobId) -> HeaderMap {
    let table = manager.table();
    let text = table.jobs.get(&id).and_then(|e| e.job.custom_headers.clone());
    text.and_then(|t| bits_http::parse_custom_headers(&t).ok()).unwrap_or_default()
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

/// A local file problem. A full disk is worth retrying once space is freed; anything else
/// (permissions, a vanished directory) needs the user.
fn local_halt(e: BitsError, index: u32) -> Halt {
    let transient = e.code == Code::ERROR_DISK_FULL;
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
