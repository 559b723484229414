//! The write path of one ranged GET: received chunks are written at their local offsets on the
//! blocking pool, synced, and only then recorded as filled — the durability rule in one place.
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

use std::sync::Arc;

use bits_core::{Layout, Span};
use bits_disk::{DiskError, PartFile};
use bytes::Bytes;
use tokio::task::JoinHandle;

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
            return Err(DiskError::Io {
                path: self.part.path().to_path_buf(),
                op: "write after an earlier write or sync failed",
                source: std::io::Error::other("the write pipeline stopped at its first error"),
            });
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
    pub(crate) async fn checkpoint(&mut self, upto: u64) -> Result<Option<Span>, DiskError> {
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
    pub(crate) async fn sync_done(&mut self) -> Result<Span, DiskError> {
        let Some((task, span)) = self.sync.as_mut() else { return std::future::pending().await };
        let synced = task.await.unwrap_or_else(|e| Err(join_error(e)));
        let span = *span;
        self.sync = None;
        self.poison_on(synced).map(|()| span)
    }

    /// Waits for the sync in flight; returns its span once durable.
    pub(crate) async fn wait_sync(&mut self) -> Result<Option<Span>, DiskError> {
        self.check()?;
        match self.sync.take() {
            Some((task, span)) => {
                let synced = task.await.unwrap_or_else(|e| Err(join_error(e)));
                self.poison_on(synced).map(|()| Some(span))
            }
            None => Ok(None),
        }
    }
}

/// Writes each chunk at its local offset, splitting where consecutive remote bytes belong to
/// different requested ranges (a ranged file's local layout is in caller order).
///
/// The file's length is checked first as well as after: our own writes past a cut would extend
/// a truncated file to its full length again and hide the cut from the check after them.
pub(crate) fn write_batch(
    part: &PartFile,
    layout: &Layout,
    batch: &[(u64, Bytes)],
) -> Result<(), DiskError> {
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
        assert_eq!(pipe.checkpoint(40).await.unwrap(), None, "the first sync is only started");
        pipe.push(40, Bytes::from(vec![2u8; 60])).await.unwrap();
        assert_eq!(pipe.checkpoint(100).await.unwrap(), Some(Span::new(0, 40)));
        assert_eq!(pipe.wait_sync().await.unwrap(), Some(Span::new(40, 100)));
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
        assert_eq!(pipe.checkpoint(10).await.unwrap(), None);
        // Remote offset 500 is outside the layout: the write of this batch fails. The earlier
        // sync finished before that write started, so its span is durable and reported.
        pipe.push(500, Bytes::from(vec![2u8; 10])).await.unwrap();
        assert_eq!(pipe.checkpoint(20).await.unwrap(), Some(Span::new(0, 10)));
        // The failed batch's span never is, and nothing is accepted after it.
        assert!(pipe.wait_sync().await.is_err());
        assert!(pipe.is_poisoned());
        assert!(pipe.push(20, Bytes::from(vec![3u8; 10])).await.is_err());
        assert!(pipe.checkpoint(30).await.is_err());
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
            assert_eq!(pipe.checkpoint(40).await.unwrap(), None);
            assert_eq!(pipe.wait_sync().await.unwrap(), Some(Span::new(0, 40)));
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
