//! The write path of one ranged GET: received chunks are written at their local offsets on the
//! blocking pool, synced, and only then recorded as filled — the durability rule in one place.
//!
//! Writes are batched (about 1 MiB per blocking call) and run while the next chunks arrive; a sync
//! runs while the network keeps flowing, and its range is recorded when it returns. At most one
//! write and one sync are in flight, so memory stays bounded by two batches.

use std::sync::Arc;

use bits_core::{Layout, Span};
use bits_disk::{DiskError, PartFile};
use bytes::Bytes;
use tokio::task::JoinHandle;

/// Bytes gathered before one positional write is issued.
const WRITE_BATCH: usize = 1 << 20;

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
}

impl Pipeline {
    pub(crate) fn new(part: Arc<PartFile>, layout: Arc<Layout>, start: u64) -> Pipeline {
        Pipeline {
            part,
            layout,
            batch: Vec::new(),
            batch_len: 0,
            write: None,
            sync: None,
            synced_upto: start,
        }
    }

    /// Queues `bytes` received for remote offset `remote`.
    pub(crate) async fn push(&mut self, remote: u64, bytes: Bytes) -> Result<(), DiskError> {
        self.batch_len += bytes.len();
        self.batch.push((remote, bytes));
        if self.batch_len >= WRITE_BATCH { self.submit_writes().await } else { Ok(()) }
    }

    async fn submit_writes(&mut self) -> Result<(), DiskError> {
        self.wait_write().await?;
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        let (part, layout) = (self.part.clone(), self.layout.clone());
        self.write = Some(tokio::task::spawn_blocking(move || write_batch(&part, &layout, &batch)));
        Ok(())
    }

    async fn wait_write(&mut self) -> Result<(), DiskError> {
        match self.write.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(join_error(e))),
            None => Ok(()),
        }
    }

    /// Starts making everything up to remote offset `upto` durable. Returns the span of an earlier
    /// sync that has now completed, which the caller records as filled.
    pub(crate) async fn checkpoint(&mut self, upto: u64) -> Result<Option<Span>, DiskError> {
        self.submit_writes().await?;
        self.wait_write().await?;
        let done = self.wait_sync().await?;
        if upto > self.synced_upto {
            let span = Span::new(self.synced_upto, upto);
            let part = self.part.clone();
            self.sync = Some((tokio::task::spawn_blocking(move || part.sync()), span));
            self.synced_upto = upto;
        }
        Ok(done)
    }

    /// Waits for the sync in flight; returns its span once durable.
    pub(crate) async fn wait_sync(&mut self) -> Result<Option<Span>, DiskError> {
        match self.sync.take() {
            Some((task, span)) => {
                task.await.unwrap_or_else(|e| Err(join_error(e)))?;
                Ok(Some(span))
            }
            None => Ok(None),
        }
    }
}

/// Writes each chunk at its local offset, splitting where consecutive remote bytes belong to
/// different requested ranges (a ranged file's local layout is in caller order).
fn write_batch(part: &PartFile, layout: &Layout, batch: &[(u64, Bytes)]) -> Result<(), DiskError> {
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
