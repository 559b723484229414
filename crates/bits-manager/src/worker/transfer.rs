//! One file's transfer: probe the server, check the version, then fetch what is missing — a
//! small fresh file into memory and written whole, anything else streamed ([`Stream`]). A file
//! whose server copy changed, or whose temp file shrank under the download, restarts from zero, as
//! does a FOREGROUND file whose resumed GET a server without range support answered with all of
//! it; a redirect target that refuses a GET sends the file back to its remote name.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bits_core::job::security;
use bits_core::{Code, ErrorContext, Job, JobFile, Layout, Priority};
use bits_disk::PartFile;
use bits_http::{
    FetchError, FetchErrorKind, RangeBody, RedirectPolicy, RemoteInfo, RequestOptions,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::halt::{Halt, disk_halt, fetch_halt, job_error, local_halt, target_refused};
use super::ledger::{JobLedger, Persist, disk_error, remote_mtime, run_blocking};
use super::stream::Stream;
use crate::access::run_as;

/// How often one file may be found changed on the server before it counts as a transient error.
const MAX_RESTARTS: u32 = 3;

/// A fresh file up to this size is received into memory and written, synced and recorded in
/// one go (see [`FileTransfer::small_file`]).
const SMALL_FILE: u64 = 1 << 20;

/// Permission bits of a file whose record predates them: what a umask of 022 gives.
const DEFAULT_MODE: u32 = 0o644;

/// What is left of a file once its bytes are off the network: writing, syncing and recording
/// them. It runs without holding one of the job's files-at-once slots.
pub(super) type Tail = Pin<Box<dyn Future<Output = Result<(), Halt>> + Send + 'static>>;

/// A file's transfer: done, or its bytes are in memory and only its [`Tail`] remains.
pub(super) enum Fetched {
    Done,
    /// The tail, and how many bytes of the file it holds in memory.
    Tail(Tail, u64),
}

/// File `index` of the job, being transferred until `stop`; `repick` tells a piece in flight
/// that an on-demand request may have changed what comes next.
pub(super) struct FileTransfer {
    ledger: JobLedger,
    index: u32,
    stop: CancellationToken,
    repick: Arc<Notify>,
}

/// A file whose server has answered: what the rest of its transfer works from.
struct Opened {
    file: JobFile,
    options: RequestOptions,
    remote: RemoteInfo,
    layout: Arc<Layout>,
    /// The whole-file GET that probed a fresh file (see [`FileTransfer::open`]), not read yet.
    first_body: Option<RangeBody>,
    connections: u32,
}

impl FileTransfer {
    pub(super) fn new(
        ledger: JobLedger,
        index: u32,
        stop: CancellationToken,
        repick: Arc<Notify>,
    ) -> FileTransfer {
        FileTransfer { ledger, index, stop, repick }
    }

    pub(super) fn ledger(&self) -> &JobLedger {
        &self.ledger
    }

    pub(super) fn index(&self) -> u32 {
        self.index
    }

    pub(super) fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    pub(super) fn repick(&self) -> &Notify {
        &self.repick
    }

    /// The whole transfer. It restarts from zero (each cause counted apart) when the server's
    /// file changed, our temp file shrank, or a server that ignores Range answered a FOREGROUND
    /// job's resumed GET with the whole file; and it opens the file again, following its remote
    /// name's redirects afresh, when where they led refused a GET (an expired signed URL), once
    /// per failure: a refusal with no byte recorded since the last fresh follow counts.
    pub(super) async fn run(&self) -> Result<Fetched, Halt> {
        let (mut changes, mut losses, mut ignored) = (0, 0, 0);
        let mut followed_at: Option<u64> = None;
        loop {
            let (count, why) = match self.once().await {
                Err(Halt::Changed) => (inc(&mut changes), &Restart::CHANGED),
                Err(Halt::Lost) => (inc(&mut losses), &Restart::LOST),
                Err(Halt::TargetRefused { error, transient, retry_after }) => {
                    let filled = self.ledger.filled_len(self.index)?;
                    if followed_at.replace(filled) == Some(filled) {
                        return Err(Halt::Failed { error, transient, retry_after });
                    }
                    tracing::info!(job = %self.ledger.id(), index = self.index, error = %error.description, "the redirect target refused the request; following the remote name again");
                    continue;
                }
                Err(Halt::Failed { error, .. })
                    if error.code == Code::BG_E_INSUFFICIENT_RANGE_SUPPORT
                        && self.ledger.restart_asks_whole(self.index)? =>
                {
                    (inc(&mut ignored), &Restart::NO_RANGES)
                }
                other => return other,
            };
            let what = why.what;
            tracing::warn!(job = %self.ledger.id(), index = self.index, "{what}; restarting the file from zero");
            reset_file(&self.ledger, self.index).await?;
            if count > MAX_RESTARTS {
                let message = format!("{what} {count} times during the transfer");
                return Err(Halt::Failed {
                    error: job_error(why.context, why.code, message, self.index),
                    transient: true,
                    retry_after: None,
                });
            }
        }
    }

    async fn once(&self) -> Result<Fetched, Halt> {
        let mut opened = self.open().await?;
        if let Some(body) = opened.first_body.take_if(|_| opened.remote.size <= SMALL_FILE) {
            return self.small_file(&opened, body).await;
        }
        self.stream(opened).await.map(|()| Fetched::Done)
    }

    /// Asks the server about the file (HEAD, or for a fresh file of a files-at-once job the GET
    /// itself; a server that refuses HEAD or gives it no size gets that GET too) and checks it is
    /// still the version whose bytes are on disk.
    async fn open(&self) -> Result<Opened, Halt> {
        let (file, options, shape) = self.ledger.opening(self.index)?;
        let http = self.ledger.http();
        let (remote, first_body) = if shape.fetch_whole(&file) {
            self.exchange(&self.stop, http.fetch_whole_opts(&file.remote_url, &options)).await?
        } else {
            // Only a file fetched whole from byte 0 can stream a probing GET's body; for one
            // with bytes on disk or not fetched whole, the probe asks for no more than a byte.
            let open = http.open_opts(&file.remote_url, &options, shape.whole_and_fresh(&file));
            self.exchange(&self.stop, open).await?
        };
        let changed = file.remote_size.is_some_and(|s| s != remote.size)
            || (file.validator != Default::default() && file.validator != remote.validator);
        if changed {
            return Err(Halt::Changed);
        }
        let layout = Layout::new(&file.ranges, remote.size).map_err(|e| Halt::Failed {
            error: job_error(ErrorContext::RemoteFile, e.code, e.message, self.index),
            transient: false,
            retry_after: None,
        })?;
        let layout = Arc::new(layout);
        let connections = shape.connections();
        Ok(Opened { file, options, remote, layout, first_body, connections })
    }

    /// The file's missing bytes, streamed to disk: one connection (BITS) or several (segmented).
    async fn stream(&self, opened: Opened) -> Result<(), Halt> {
        let Opened { file, options, remote, layout, first_body, connections } = opened;
        let index = self.index;
        // Open the temp file. Only the filled ranges a file of its current length can hold are
        // trusted (it may have been deleted or truncated); `connected` drops the rest and flushes
        // *before* the file is extended, or a crash in between would leave a full-length file of
        // zeros that looks intact.
        let local_len = layout.local_len();
        let owner = self.ledger.owner()?;
        let (part, temp_len) = run_as(owner.clone(), move || {
            let part = open_temp(&file, owner.uid).map_err(disk_error)?;
            let len = part.len().map_err(disk_error)?;
            Ok((part, len))
        })
        .await
        .map_err(|e| local_halt(e, index))?;
        self.ledger.note_temp(index, part.id())?;
        self.ledger.connected(index, &remote, temp_len, Persist::Now).await?;
        let part = Arc::new(part);
        let sized = part.clone();
        run_blocking(move || sized.set_len(local_len).map_err(disk_error))
            .await
            .map_err(|e| local_halt(e, index))?;
        let stream = Stream::new(self, remote, options, layout, part);
        if connections == 1 {
            stream.single(first_body).await
        } else {
            stream.segmented(connections).await
        }
    }

    /// The whole of a small fresh file from its opened GET: the body is collected in memory and
    /// the file's [`Tail`] is returned, in which a single blocking task (as the owner) creates
    /// the temp file, writes it and fdatasyncs it (`writer::write_new`), and only then
    /// `[0, size)` is recorded as filled. One hand-off to the blocking pool instead of the five
    /// or six of the streaming path — most of the cost when a job holds thousands of small
    /// files. A failure or stop before the sync leaves nothing recorded, as on the streaming
    /// path; a tail, once started, runs to its end (its bytes are here, and valid).
    async fn small_file(&self, opened: &Opened, mut body: RangeBody) -> Result<Fetched, Halt> {
        let index = self.index;
        let size = opened.remote.size;
        let mut data = Vec::with_capacity(size as usize);
        loop {
            let chunk = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Err(Halt::Stopped),
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
        self.ledger.connected(index, &opened.remote, 0, Persist::WithFirstRange).await?;
        let owner = self.ledger.owner()?;
        let (temp, dir_ino) = (opened.file.temp_path.clone(), opened.file.dir_ino);
        let mode = opened.file.mode.unwrap_or(DEFAULT_MODE);
        // The times Complete gives the file, set now, before the one sync (see `sync_with_times`).
        let mtime = remote_mtime(&opened.remote.validator);
        let ledger = self.ledger.clone();
        let tail = async move {
            let written = run_as(owner.clone(), move || {
                Ok(crate::writer::write_new(&temp, dir_ino, mode, owner.uid, &data, mtime))
            })
            .await;
            let failed = match written {
                Ok(Ok((made, synced))) => {
                    ledger.note_temp(index, made)?;
                    return ledger.record_filled(index, synced).await;
                }
                Ok(Err(e)) => disk_halt(e, index),
                Err(e) => local_halt(e, index),
            };
            // No range will carry what the server said to the store: write it now, so that after
            // a restart the file reads as it does in memory (the worker's end flushes).
            ledger.store_file_record(index, |_| {});
            Err(failed)
        };
        Ok(Fetched::Tail(Box::pin(tail), size))
    }

    /// One HTTP exchange of this file that starts at its remote name, abandoned when `stop`
    /// fires; a failure becomes the halt [`FileTransfer::redirect_aware_halt`] makes of it.
    pub(super) async fn exchange<T>(
        &self,
        stop: &CancellationToken,
        call: impl Future<Output = Result<T, FetchError>>,
    ) -> Result<T, Halt> {
        tokio::select! {
            _ = stop.cancelled() => Err(Halt::Stopped),
            got = call => got.map_err(|e| self.redirect_aware_halt(e)),
        }
    }

    /// A ranged GET of `remote`, sent straight to its `final_url`, as [`FileTransfer::exchange`];
    /// a refusal from where the probe's redirects led is [`Halt::TargetRefused`].
    pub(super) async fn ranged<T>(
        &self,
        stop: &CancellationToken,
        remote: &RemoteInfo,
        call: impl Future<Output = Result<T, FetchError>>,
    ) -> Result<T, Halt> {
        tokio::select! {
            _ = stop.cancelled() => Err(Halt::Stopped),
            got = call => got.map_err(|e| {
                let from_target = remote.redirected && target_refused(&e);
                let halt = self.redirect_aware_halt(e);
                if from_target { halt.into_target_refused() } else { halt }
            }),
        }
    }

    /// A failed request; a redirect the job's policy refused also makes the redirect target the
    /// file's remote name (spec §6.2, DISALLOW), so the caller sees where it was sent.
    fn redirect_aware_halt(&self, e: FetchError) -> Halt {
        if let (FetchErrorKind::RedirectDisallowed, Some(target)) = (e.kind, &e.redirect_target) {
            self.ledger.store_file_record(self.index, |file| file.remote_url = target.clone());
        }
        fetch_halt(e, self.index)
    }
}

/// Forgets a file's progress after the server's copy changed (or its bytes failed their digest),
/// and empties its temp file.
pub(super) async fn reset_file(ledger: &JobLedger, index: u32) -> Result<(), Halt> {
    let file = ledger.file(index)?;
    let owner = ledger.owner()?;
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
    ledger.forget_progress(index).await
}

/// What the job asks of its HTTP requests: its custom headers (validated when set, so a parse
/// failure cannot happen and would only drop them), its redirect policy, and whether a server
/// that ignores Range may send the whole file in one 200 (FOREGROUND jobs only, spec §5.1).
pub(super) fn request_options(job: &Job) -> RequestOptions {
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

/// Why a file restarts from zero within its transfer, as its error says once it happened more
/// than [`MAX_RESTARTS`] times.
struct Restart {
    context: ErrorContext,
    code: Code,
    what: &'static str,
}

impl Restart {
    const CHANGED: Restart = Restart {
        context: ErrorContext::RemoteFile,
        code: Code::BG_E_REMOTE_FILE_CHANGED,
        what: "the remote file changed",
    };
    const LOST: Restart = Restart {
        context: ErrorContext::LocalFile,
        code: Code::E_FAIL,
        what: "the temp file was truncated under the download",
    };
    /// A FOREGROUND job may take a whole file in one 200 (spec §5.1, case 58), but a resumed
    /// GET asks for less: the bytes on disk are dropped and the file is fetched again from byte
    /// 0 (BITS fails the job with BG_E_INSUFFICIENT_RANGE_SUPPORT; docs/compat.md).
    const NO_RANGES: Restart = Restart {
        context: ErrorContext::RemoteFile,
        code: Code::BG_E_INSUFFICIENT_RANGE_SUPPORT,
        what: "the server ignored Range and sent the whole file to a resumed request",
    };
}

/// Counts one more and returns the new count.
fn inc(count: &mut u32) -> u32 {
    *count += 1;
    *count
}
