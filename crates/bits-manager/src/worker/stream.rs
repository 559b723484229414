//! A file's missing bytes streamed into its temp file, in one of two modes: one connection
//! (BITS: a ranged GET per missing piece, or several small pieces in one multi-range request) or
//! several (the segmented extension: each connection claims the next unclaimed piece). Either way
//! bytes go through `crate::writer`, and only its [`Synced`](crate::writer::Synced) proof is
//! recorded, so a stop or failure at any point leaves recorded only what is on disk.

use std::sync::Arc;
use tokio::time::Instant;

use bits_core::{Code, Layout, RangeSet, Span};
use bits_disk::PartFile;
use bits_http::{RangeBody, RemoteInfo, RequestOptions};
use tokio_util::sync::CancellationToken;

use super::halt::{Halt, disk_halt, fetch_halt};
use super::pick;
use super::transfer::FileTransfer;
use crate::writer::{MIN_WRITE_BATCH, Pipeline, Unsynced, WRITE_BATCH};

/// How one piece's GET ended without an error.
enum PieceEnd {
    Done,
    /// An on-demand request came in: pick again.
    Repick,
}

/// An opened file's temp file and what its requests need.
pub(super) struct Stream<'a> {
    transfer: &'a FileTransfer,
    remote: RemoteInfo,
    options: RequestOptions,
    layout: Arc<Layout>,
    part: Arc<PartFile>,
}

impl<'a> Stream<'a> {
    pub(super) fn new(
        transfer: &'a FileTransfer,
        remote: RemoteInfo,
        options: RequestOptions,
        layout: Arc<Layout>,
        part: Arc<PartFile>,
    ) -> Stream<'a> {
        Stream { transfer, remote, options, layout, part }
    }

    /// BITS: one connection, one request from the first missing byte to the end of its run.
    /// Many small missing pieces (a file added with many ranges) go in one multi-range request; a
    /// single piece streams as one ranged GET. A server that answers a multi-range request with
    /// the whole file (many do not implement them) gets single ranges from then on; its 200 body
    /// is never written. `first_body`: the GET that probed the file, if any.
    pub(super) async fn single(&self, mut first_body: Option<RangeBody>) -> Result<(), Halt> {
        let (ledger, index) = (self.transfer.ledger(), self.transfer.index());
        let mut multi_range = true;
        // Received by multi-range requests, not yet synced: carried from one request to the
        // next so a file of many small ranges is synced once per window, not once per request.
        let mut pending = Unsynced::new();
        loop {
            let batch = if multi_range {
                // As many pieces as the server returns to one request: the spans a short answer
                // left out are still missing, so they lead the next batch.
                let max = ledger.http().parts_per_request(&self.remote.final_url);
                ledger.small_pieces(index, &self.layout, pending.spans(), max)?
            } else {
                Vec::new()
            };
            if batch.len() > 1 {
                let fetched = self.fetch_pieces(&batch, &mut pending).await;
                if fetched.is_err() {
                    // What arrived before a stop or a failure is valid data of the probed
                    // version: keep it.
                    self.sync_and_record(&mut pending).await?;
                }
                match fetched {
                    Err(Halt::Failed { error, .. })
                        if error.code == Code::BG_E_INSUFFICIENT_RANGE_SUPPORT =>
                    {
                        tracing::info!(job = %ledger.id(), index, "server does not answer multi-range requests; using single ranges");
                        multi_range = false;
                    }
                    other => other?,
                }
                continue;
            }
            // Single pieces are picked from the recorded set: record what is pending first.
            self.sync_and_record(&mut pending).await?;
            let Some(piece) = ledger.next_piece(index, &self.layout)? else { return Ok(()) };
            // The opened GET serves the first piece when it is what is missing (the whole file,
            // unless a RequestFileRanges came in meanwhile; then the GET is dropped).
            let opened = first_body.take().filter(|body| body.span() == piece);
            match self.fetch_piece(piece, opened, self.transfer.stop()).await? {
                PieceEnd::Done | PieceEnd::Repick => continue,
            }
        }
    }

    /// Segmented (bitsd extension): each connection claims the next missing piece not claimed
    /// by another, fetches it, and comes back for more, so fast connections take more pieces.
    pub(super) async fn segmented(&self, connections: u32) -> Result<(), Halt> {
        let (ledger, index, stop) =
            (self.transfer.ledger(), self.transfer.index(), self.transfer.stop());
        let size = pick::segment_size(self.layout.local_len(), connections);
        let claims = std::sync::Mutex::new(RangeSet::new());
        let segment_stop = stop.child_token();
        let connection = |_| async {
            let result = async {
                loop {
                    let Some(piece) = ledger.claim_piece(index, &self.layout, &claims, size)?
                    else {
                        return Ok(());
                    };
                    let fetched = self.fetch_piece(piece, None, &segment_stop).await;
                    let mut claimed =
                        claims.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    claimed.remove(piece.start, piece.end);
                    drop(claimed);
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

    /// Writes, syncs and records everything `pending` holds, and starts a new window.
    async fn sync_and_record(&self, pending: &mut Unsynced) -> Result<(), Halt> {
        let (ledger, index) = (self.transfer.ledger(), self.transfer.index());
        match pending.sync(&self.part, &self.layout).await {
            Ok(Some(synced)) => ledger.record_filled(index, synced).await,
            Ok(None) => Ok(()),
            Err(e) => Err(disk_halt(e, index)),
        }
    }

    /// Fetches several pieces with one multi-range request. Parts may arrive in any order, and
    /// the server may send fewer than asked (what it left out is picked again); bytes
    /// are written at their local offsets, then synced, then recorded once a sync window is full
    /// (`pending` carries the rest to the caller, who syncs it with the next window or before
    /// picking single pieces), so the durability rule holds as for a single piece.
    async fn fetch_pieces(&self, pieces: &[Span], pending: &mut Unsynced) -> Result<(), Halt> {
        let (ledger, index, stop) =
            (self.transfer.ledger(), self.transfer.index(), self.transfer.stop());
        let get = ledger.http().get_ranges_opts(&self.remote, pieces, &self.options);
        let mut body = self.transfer.ranged(stop, &self.remote, get).await?;
        let config = ledger.config();
        loop {
            let chunk = tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(Halt::Stopped),
                chunk = body.next_chunk() => chunk,
            };
            match chunk {
                Ok(Some((offset, bytes))) => {
                    if let Err(e) = pending.push(offset, bytes, &self.part, &self.layout).await {
                        return Err(disk_halt(e, index));
                    }
                    if pending.full(config.sync_bytes, config.sync_interval) {
                        self.sync_and_record(pending).await?;
                    }
                }
                Ok(None) => {
                    if !body.missing().is_empty() {
                        tracing::info!(job = %ledger.id(), index, parts = pieces.len() - body.missing().len(), asked = pieces.len(), "the server returned fewer parts than asked; asking again for the rest");
                    }
                    return Ok(());
                }
                Err(e) => return Err(fetch_halt(e, index)),
            }
        }
    }

    /// One ranged GET of `piece` (or the already `opened` GET of exactly it) streamed through a
    /// write [`Pipeline`], until the body ends, `stop` fires or an on-demand request asks for a
    /// new pick. Every exit drains the pipeline: what was written is synced and recorded.
    async fn fetch_piece(
        &self,
        piece: Span,
        opened: Option<RangeBody>,
        stop: &CancellationToken,
    ) -> Result<PieceEnd, Halt> {
        let (ledger, index) = (self.transfer.ledger(), self.transfer.index());
        let mut body = match opened {
            Some(body) => body,
            None => {
                let get = ledger.http().get_range_opts(&self.remote, piece, &self.options);
                self.transfer.ranged(stop, &self.remote, get).await?
            }
        };
        tracing::debug!(job = %ledger.id(), index, start = piece.start, end = piece.end, "fetching");
        let config = ledger.config();
        let batch = (WRITE_BATCH / ledger.connections()).max(MIN_WRITE_BATCH);
        let mut pipe = Pipeline::new(self.part.clone(), self.layout.clone(), piece.start, batch);
        let mut pos = piece.start;
        let mut checkpointed = piece.start;
        let mut last_checkpoint = Instant::now();

        let end: Result<PieceEnd, Halt> = loop {
            let deadline = last_checkpoint + config.sync_interval;
            let due = pos > checkpointed;
            tokio::select! {
                biased;
                _ = stop.cancelled() => break Err(Halt::Stopped),
                _ = self.transfer.repick().notified() => break Ok(PieceEnd::Repick),
                // Record a span as soon as its sync is done, so a crash loses at most one window.
                synced = pipe.sync_done(), if pipe.syncing() => match synced {
                    Ok(synced) => if let Err(h) = ledger.record_filled(index, synced).await { break Err(h) },
                    Err(e) => break Err(disk_halt(e, index)),
                },
                _ = tokio::time::sleep_until(deadline), if due => {
                    last_checkpoint = Instant::now();
                    checkpointed = pos;
                    if let Err(h) = self.checkpoint(&mut pipe, pos).await { break Err(h) }
                }
                chunk = body.next_chunk() => match chunk {
                    Ok(Some(bytes)) => {
                        let n = bytes.len() as u64;
                        if let Err(e) = pipe.push(pos, bytes).await { break Err(disk_halt(e, index)) }
                        pos += n;
                        if pos - checkpointed >= config.sync_bytes || last_checkpoint.elapsed() >= config.sync_interval {
                            last_checkpoint = Instant::now();
                            checkpointed = pos;
                            if let Err(h) = self.checkpoint(&mut pipe, pos).await { break Err(h) }
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
        self.checkpoint(&mut pipe, pos).await?;
        match pipe.wait_sync().await {
            Ok(Some(synced)) => ledger.record_filled(index, synced).await?,
            Ok(None) => {}
            Err(e) => return Err(disk_halt(e, index)),
        }
        end
    }

    /// Hands bytes up to `upto` to a sync and records the span of the previous sync, now durable.
    async fn checkpoint(&self, pipe: &mut Pipeline, upto: u64) -> Result<(), Halt> {
        let (ledger, index) = (self.transfer.ledger(), self.transfer.index());
        match pipe.checkpoint(upto).await {
            Ok(Some(synced)) => ledger.record_filled(index, synced).await,
            Ok(None) => Ok(()),
            Err(e) => Err(disk_halt(e, index)),
        }
    }
}
