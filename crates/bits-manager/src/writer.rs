//! Every write → sync path of a transfer, and the proof it hands back: a [`Synced`] set of spans,
//! which only this file can make (after a sync that returned), and which is the only thing the
//! worker's `record_filled` accepts. So "a range is recorded as filled only after its bytes were
//! synced" is checked by the compiler. Three paths lead here: the [`Pipeline`] of one ranged
//! GET, the multi-range path's [`Unsynced`] window, and a small file written whole
//! ([`write_new`]).
//!
//! The pipeline: received chunks are written at their local offsets on the blocking pool, synced,
//! and only then handed back as synced.
//!
//! Writes are batched (about 1 MiB per blocking call) and run while the next chunks arrive; a sync
//! runs while the network keeps flowing, and its range is recorded when it returns. At most one
//! write and one sync are in flight, so memory stays bounded by two batches.
//!
//! The temp file was extended to its full length before the first write, so each write (before
//! and after) and each sync also checks that it still has that length ([`PartFile::check_len`]):
//! a file someone truncated under the download stops the pipeline before a span it lost is
//! recorded, even when our later writes would have grown it back.
//!
//! After any write or sync error the pipeline is poisoned: nothing more is written, synced or
//! reported as durable. A later sync could succeed while an earlier write left a hole (or while
//! the kernel already dropped pages whose writeback failed), so the only safe answer is to stop
//! and let the next attempt start from the last recorded checkpoint.

use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bits_core::{Layout, RangeSet, Span, TempId};
use bits_disk::{DiskError, PartFile};
use bytes::Bytes;
use tokio::task::JoinHandle;

/// Remote spans of one file whose bytes were written and synced, and whose temp file still had
/// its full length after the sync: proof that recording them as filled is safe. Its field is
/// private and it has no public constructor, so nothing outside this file can make one:
///
/// ```compile_fail,E0451
/// let forged = bits_manager::Synced { spans: bits_core::RangeSet::from_span(0, 10) };
/// ```
#[must_use = "synced spans are recorded as filled, or the progress is lost"]
#[derive(Debug, PartialEq, Eq)]
pub struct Synced {
    spans: RangeSet,
}

impl Synced {
    fn span(span: Span) -> Synced {
        Synced { spans: RangeSet::from_span(span.start, span.end) }
    }

    /// The remote spans made durable.
    pub(crate) fn spans(&self) -> &RangeSet {
        &self.spans
    }
}

/// Bytes gathered before one positional write is issued, for a file with one connection; with
/// several, each gathers a share (down to [`MIN_WRITE_BATCH`]) so memory stays bounded.
pub(crate) const WRITE_BATCH: usize = 1 << 20;
pub(crate) const MIN_WRITE_BATCH: usize = 256 << 10;

pub(crate) struct Pipeline {
    part: Arc<PartFile>,
    layout: Arc<Layout>,
    /// Received but not yet handed to a write: (remote offset, bytes).
    batch: Vec<(u64, Bytes)>,
    batch_len: usize,
    write: Option<JoinHandle<Result<(), DiskError>>>,
    /// A sync in flight and the remote span it makes durable.
    sync: Option<(JoinHandle<Result<(), DiskError>>, Span)>,
    /// Remote offset up to which bytes have been handed to a sync.
    synced_upto: u64,
    /// Set by the first error; see the module docs.
    poisoned: bool,
    /// Bytes gathered before a write is issued.
    batch_limit: usize,
}

impl Pipeline {
    pub(crate) fn new(
        part: Arc<PartFile>,
        layout: Arc<Layout>,
        start: u64,
        batch_limit: usize,
    ) -> Pipeline {
        Pipeline {
            part,
            layout,
            batch: Vec::new(),
            batch_len: 0,
            write: None,
            sync: None,
            synced_upto: start,
            poisoned: false,
            batch_limit,
        }
    }

    /// Queues `bytes` received for remote offset `remote`.
    pub(crate) async fn push(&mut self, remote: u64, bytes: Bytes) -> Result<(), DiskError> {
        self.check()?;
        self.batch_len += bytes.len();
        self.batch.push((remote, bytes));
        if self.batch_len >= self.batch_limit { self.submit_writes().await } else { Ok(()) }
    }

    async fn submit_writes(&mut self) -> Result<(), DiskError> {
        self.wait_write().await?;
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        let (part, layout) = (self.part.clone(), self.layout.clone());
        self.write = Some(tokio::task::spawn_blocking(move || {
            write_batch(&part, &layout, &batch)?;
            part.check_len(layout.local_len())
        }));
        Ok(())
    }

    async fn wait_write(&mut self) -> Result<(), DiskError> {
        match self.write.take() {
            Some(task) => {
                let written = task.await.unwrap_or_else(|e| Err(join_error(e)));
                self.poison_on(written)
            }
            None => Ok(()),
        }
    }

    /// Whether an error has stopped the pipeline.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn check(&self) -> Result<(), DiskError> {
        if self.poisoned {
            return Err(poisoned(&self.part));
        }
        Ok(())
    }

    fn poison_on<T>(&mut self, result: Result<T, DiskError>) -> Result<T, DiskError> {
        if result.is_err() {
            self.poisoned = true;
            self.batch.clear();
            self.batch_len = 0;
            // A sync still running is abandoned: its span is never reported.
            self.sync = None;
        }
        result
    }

    /// Starts making everything up to remote offset `upto` durable. Returns the span of an earlier
    /// sync that has now completed, which the caller records as filled.
    pub(crate) async fn checkpoint(&mut self, upto: u64) -> Result<Option<Synced>, DiskError> {
        self.check()?;
        self.wait_write().await?;
        let done = self.wait_sync().await?;
        if upto <= self.synced_upto {
            self.submit_writes().await?;
            return Ok(done);
        }
        // The last batch is written by the same blocking task that syncs it: one hand-off to
        // the blocking pool instead of two, which is most of the cost of a small file.
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        let span = Span::new(self.synced_upto, upto);
        let (part, layout) = (self.part.clone(), self.layout.clone());
        let task = tokio::task::spawn_blocking(move || {
            write_batch(&part, &layout, &batch)?;
            part.sync()?;
            // After the sync, before the span is recorded: a file truncated under us (then
            // extended again by our writes) is shorter than its layout at some check.
            part.check_len(layout.local_len())
        });
        self.sync = Some((task, span));
        self.synced_upto = upto;
        Ok(done)
    }

    /// Whether a sync is in flight.
    pub(crate) fn syncing(&self) -> bool {
        self.sync.is_some()
    }

    /// Completes when the sync in flight does, with its now durable span. Cancel-safe: if the
    /// future is dropped first, the sync stays in flight and is reported later. Never completes
    /// when no sync is in flight.
    pub(crate) async fn sync_done(&mut self) -> Result<Synced, DiskError> {
        let Some((task, span)) = self.sync.as_mut() else { return std::future::pending().await };
        let synced = task.await.unwrap_or_else(|e| Err(join_error(e)));
        let span = *span;
        self.sync = None;
        self.poison_on(synced).map(|()| Synced::span(span))
    }

    /// Waits for the sync in flight; returns its span once durable.
    pub(crate) async fn wait_sync(&mut self) -> Result<Option<Synced>, DiskError> {
        self.check()?;
        match self.sync.take() {
            Some((task, span)) => {
                let synced = task.await.unwrap_or_else(|e| Err(join_error(e)));
                self.poison_on(synced).map(|()| Some(Synced::span(span)))
            }
            None => Ok(None),
        }
    }
}

/// Bytes received for a file and not yet synced (so not yet recorded), with when the last sync
/// was: the multi-range path's write window, carried across requests. The window's bytes are
/// written as each [`WRITE_BATCH`] gathers (only the sync waits for the window to fill), so
/// memory holds one batch, not a whole window of `sync_bytes` per file. After a failed write
/// nothing more is written or reported (as for the [`Pipeline`]).
pub(crate) struct Unsynced {
    batch: Vec<(u64, Bytes)>,
    batch_len: usize,
    spans: RangeSet,
    bytes: u64,
    since: Instant,
    poisoned: bool,
}

impl Unsynced {
    pub(crate) fn new() -> Unsynced {
        Unsynced {
            batch: Vec::new(),
            batch_len: 0,
            spans: RangeSet::new(),
            bytes: 0,
            since: Instant::now(),
            poisoned: false,
        }
    }

    /// Queues `bytes` received for remote offset `offset`, and writes the batch once it holds
    /// [`WRITE_BATCH`] bytes.
    pub(crate) async fn push(
        &mut self,
        offset: u64,
        bytes: Bytes,
        part: &Arc<PartFile>,
        layout: &Arc<Layout>,
    ) -> Result<(), DiskError> {
        if self.poisoned {
            return Err(poisoned(part));
        }
        let n = bytes.len() as u64;
        self.spans.insert(offset, offset + n);
        self.bytes += n;
        self.batch_len += bytes.len();
        self.batch.push((offset, bytes));
        if self.batch_len < WRITE_BATCH {
            return Ok(());
        }
        let (writes, part, layout) = (self.take_batch(), part.clone(), layout.clone());
        let written = tokio::task::spawn_blocking(move || write_batch(&part, &layout, &writes))
            .await
            .unwrap_or_else(|e| Err(join_error(e)));
        if written.is_err() {
            // Nothing of this window is reported: a later sync does not vouch for a failed write.
            self.poisoned = true;
            self.spans = RangeSet::new();
        }
        written
    }

    fn take_batch(&mut self) -> Vec<(u64, Bytes)> {
        self.batch_len = 0;
        std::mem::take(&mut self.batch)
    }

    /// The remote spans received and not yet synced.
    pub(crate) fn spans(&self) -> &RangeSet {
        &self.spans
    }

    /// Whether the window is full: `bytes` received, or `interval` passed since the last sync.
    pub(crate) fn full(&self, bytes: u64, interval: std::time::Duration) -> bool {
        self.bytes >= bytes || self.since.elapsed() >= interval
    }

    /// Writes and syncs everything pending on the blocking pool, starts a new window, and
    /// returns what it made durable (`None` when nothing was pending).
    pub(crate) async fn sync(
        &mut self,
        part: &Arc<PartFile>,
        layout: &Arc<Layout>,
    ) -> Result<Option<Synced>, DiskError> {
        let mut done = None;
        if !self.poisoned && !self.spans.is_empty() {
            let (writes, part, layout) = (self.take_batch(), part.clone(), layout.clone());
            tokio::task::spawn_blocking(move || {
                write_batch(&part, &layout, &writes)
                    .and_then(|()| part.sync())
                    .and_then(|()| part.check_len(layout.local_len()))
            })
            .await
            .unwrap_or_else(|e| Err(join_error(e)))?;
            done = Some(Synced { spans: std::mem::take(&mut self.spans) });
        }
        self.bytes = 0;
        self.since = Instant::now();
        Ok(done)
    }
}

/// A small file written whole, as one blocking call (run it as the job's owner): a new temp file
/// at `path` (an earlier attempt's is replaced, see `PartFile::create`) holding `data` from byte
/// 0, synced — with the times Complete gives the file when `mtime` is known (see
/// `sync_with_times`) — and checked to still hold all of it after the sync.
pub(crate) fn write_new(
    path: &Path,
    dir_ino: Option<u64>,
    mode: u32,
    owner: u32,
    data: &[u8],
    mtime: Option<SystemTime>,
) -> Result<(TempId, Synced), DiskError> {
    let part = PartFile::create(path, dir_ino, mode, owner)?;
    part.write_at(0, data)?;
    match mtime {
        Some(mtime) => part.sync_with_times(mtime)?,
        None => part.sync()?,
    }
    // Truncated between the write and the sync: its bytes are not all on disk.
    let size = data.len() as u64;
    part.check_len(size)?;
    Ok((part.id(), Synced::span(Span::new(0, size))))
}

/// Writes each chunk at its local offset, splitting where consecutive remote bytes belong to
/// different requested ranges (a ranged file's local layout is in caller order).
///
/// The file's length is checked first as well as after: our own writes past a cut would extend
/// a truncated file to its full length again and hide the cut from the check after them.
fn write_batch(part: &PartFile, layout: &Layout, batch: &[(u64, Bytes)]) -> Result<(), DiskError> {
    if !batch.is_empty() {
        part.check_len(layout.local_len())?;
    }
    for (remote, bytes) in batch {
        let mut remote = *remote;
        let mut rest: &[u8] = bytes;
        while !rest.is_empty() {
            let Some((local, contiguous)) = layout.to_local(remote) else {
                // The worker only asks for wanted bytes, so this is unreachable; refuse rather
                // than write somewhere wrong.
                return Err(DiskError::Io {
                    path: Default::default(),
                    op: "map remote offset",
                    source: std::io::Error::other(format!(
                        "remote offset {remote} is not part of the file"
                    )),
                });
            };
            let n = (contiguous.min(rest.len() as u64)) as usize;
            part.write_at(local, &rest[..n])?;
            rest = &rest[n..];
            remote += n as u64;
        }
    }
    Ok(())
}

/// What a write path answers after its first error (see the module docs).
fn poisoned(part: &PartFile) -> DiskError {
    DiskError::Io {
        path: part.path().to_path_buf(),
        op: "write after an earlier write or sync failed",
        source: std::io::Error::other("the write pipeline stopped at its first error"),
    }
}

fn join_error(e: tokio::task::JoinError) -> DiskError {
    DiskError::Io {
        path: Default::default(),
        op: "blocking task",
        source: std::io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one span a pipeline hands back as synced.
    fn span(synced: Option<Synced>) -> Option<Span> {
        synced.map(|s| {
            let spans: Vec<Span> = s.spans().iter().collect();
            assert_eq!(spans.len(), 1, "{spans:?}");
            spans[0]
        })
    }

    fn pipeline(dir: &std::path::Path, layout: Layout) -> (Pipeline, Arc<PartFile>) {
        let part = Arc::new(
            PartFile::create(&dir.join("f.part"), None, 0o644, rustix::process::geteuid().as_raw())
                .unwrap(),
        );
        part.set_len(layout.local_len()).unwrap();
        (Pipeline::new(part.clone(), Arc::new(layout), 0, WRITE_BATCH), part)
    }

    #[tokio::test]
    async fn synced_spans_are_reported_only_after_their_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pipe, _) = pipeline(dir.path(), Layout::new(&[], 100).unwrap());
        pipe.push(0, Bytes::from(vec![1u8; 40])).await.unwrap();
        assert_eq!(
            span(pipe.checkpoint(40).await.unwrap()),
            None,
            "the first sync is only started"
        );
        pipe.push(40, Bytes::from(vec![2u8; 60])).await.unwrap();
        assert_eq!(span(pipe.checkpoint(100).await.unwrap()), Some(Span::new(0, 40)));
        assert_eq!(span(pipe.wait_sync().await.unwrap()), Some(Span::new(40, 100)));
        let data = std::fs::read(dir.path().join("f.part")).unwrap();
        assert_eq!(&data[..40], &[1u8; 40][..]);
        assert_eq!(&data[40..], &[2u8; 60][..]);
    }

    #[tokio::test]
    async fn ranged_layout_writes_at_local_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let ranges = [bits_core::ByteRange::new(10, 5), bits_core::ByteRange::new(0, 5)];
        let (mut pipe, _) = pipeline(dir.path(), Layout::new(&ranges, 20).unwrap());
        // Remote 0..5 lands after remote 10..15 locally (caller order).
        pipe.push(0, Bytes::from_static(b"AAAAA")).await.unwrap();
        pipe.push(10, Bytes::from_static(b"BBBBB")).await.unwrap();
        pipe.checkpoint(15).await.unwrap();
        pipe.wait_sync().await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("f.part")).unwrap(), b"BBBBBAAAAA");
    }

    #[tokio::test]
    async fn a_failed_write_poisons_everything_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pipe, _) = pipeline(dir.path(), Layout::new(&[], 100).unwrap());
        pipe.push(0, Bytes::from(vec![1u8; 10])).await.unwrap();
        assert_eq!(span(pipe.checkpoint(10).await.unwrap()), None);
        // Remote offset 500 is outside the layout: the write of this batch fails. The earlier
        // sync finished before that write started, so its span is durable and reported.
        pipe.push(500, Bytes::from(vec![2u8; 10])).await.unwrap();
        assert_eq!(span(pipe.checkpoint(20).await.unwrap()), Some(Span::new(0, 10)));
        // The failed batch's span never is, and nothing is accepted after it.
        assert!(pipe.wait_sync().await.is_err());
        assert!(pipe.is_poisoned());
        assert!(pipe.push(20, Bytes::from(vec![3u8; 10])).await.is_err());
        assert!(pipe.checkpoint(30).await.is_err());
    }

    /// The multi-range window writes each batch as it fills: memory holds at most one batch,
    /// not the window, and its spans are still reported only by the sync.
    #[tokio::test]
    async fn the_unsynced_window_writes_each_batch_and_reports_only_after_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let len = 3 * WRITE_BATCH as u64;
        let (_, part) = pipeline(dir.path(), Layout::new(&[], len).unwrap());
        let layout = Arc::new(Layout::new(&[], len).unwrap());
        let mut window = Unsynced::new();
        let chunk = 64 << 10;
        for offset in (0..len).step_by(chunk) {
            window.push(offset, Bytes::from(vec![7u8; chunk]), &part, &layout).await.unwrap();
            assert!(window.batch_len < WRITE_BATCH, "at {offset}: {}", window.batch_len);
        }
        assert_eq!(window.spans(), &RangeSet::from_span(0, len));
        let on_disk = std::fs::read(part.path()).unwrap();
        assert!(on_disk.iter().all(|b| *b == 7), "every full batch is written before the sync");
        let synced = window.sync(&part, &layout).await.unwrap().unwrap();
        assert_eq!(synced.spans(), &RangeSet::from_span(0, len));
        assert!(window.spans().is_empty());
    }

    /// After a failed write the window reports nothing, and accepts nothing more.
    #[tokio::test]
    async fn a_failed_window_write_reports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_, part) = pipeline(dir.path(), Layout::new(&[], 100).unwrap());
        let layout = Arc::new(Layout::new(&[], 100).unwrap());
        let mut window = Unsynced::new();
        window.push(0, Bytes::from(vec![1u8; 10]), &part, &layout).await.unwrap();
        // Outside the layout, and a whole batch: its write fails.
        let past = Bytes::from(vec![2u8; WRITE_BATCH]);
        assert!(window.push(500, past, &part, &layout).await.is_err());
        assert!(window.push(10, Bytes::from(vec![3u8; 10]), &part, &layout).await.is_err());
        assert_eq!(window.sync(&part, &layout).await.unwrap(), None);
    }

    /// A temp file truncated under the pipeline is caught before the span written after the cut
    /// is reported durable: when our next write leaves it short, and when that write reaches
    /// the end and would grow it back to full length (caught by the check before the write).
    #[tokio::test]
    async fn a_truncated_file_stops_the_pipeline_before_its_span_is_reported() {
        for (written, upto) in [(20, 60), (60, 100)] {
            let dir = tempfile::tempdir().unwrap();
            let (mut pipe, part) = pipeline(dir.path(), Layout::new(&[], 100).unwrap());
            pipe.push(0, Bytes::from(vec![1u8; 40])).await.unwrap();
            assert_eq!(span(pipe.checkpoint(40).await.unwrap()), None);
            assert_eq!(span(pipe.wait_sync().await.unwrap()), Some(Span::new(0, 40)));
            let cut = std::fs::OpenOptions::new().write(true).open(part.path()).unwrap();
            cut.set_len(10).unwrap();
            pipe.push(40, Bytes::from(vec![2u8; written])).await.unwrap();
            assert_eq!(pipe.checkpoint(upto).await.unwrap(), None);
            let err = pipe.wait_sync().await.unwrap_err();
            let shrunk = matches!(err, DiskError::Shrunk { len: 10, expected: 100, .. });
            assert!(shrunk, "writing up to {upto}: {err:?}");
            assert!(pipe.is_poisoned());
        }
    }
}
