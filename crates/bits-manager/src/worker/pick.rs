//! Which file, and which piece of it, comes next: pure functions of the job's data, so the order
//! rules (spec I2, on-demand mode, download position, multi-range batches, segments) are tested
//! without a server or a disk.

use std::collections::HashSet;

use bits_core::{Job, JobFile, RangeSet, Span};

use super::halt::Halt;

#[cfg_attr(test, derive(Debug, PartialEq))]
pub(super) enum NextFile {
    File(u32),
    /// Every file is whole.
    Done,
    /// ON_DEMAND_MODE and nothing requested is missing.
    Idle,
}

impl NextFile {
    /// No file from index `limit` on (files an AddFile has not made durable yet).
    pub(super) fn before(self, limit: Option<u32>) -> NextFile {
        match (self, limit) {
            (NextFile::File(index), Some(limit)) if index >= limit => NextFile::Done,
            (next, _) => next,
        }
    }
}

/// Files go in insertion order (spec I2), from index `from` on (ON_DEMAND_MODE: from the first,
/// as requests may come for any file). In ON_DEMAND_MODE only files with requested bytes still
/// missing are worked on.
pub(super) fn next_file(job: &Job, active: &HashSet<u32>, from: u32) -> NextFile {
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

/// How a worker that ran out of files to start ends: a full scan from the first file, so a file
/// the pick cursor passed (or one added meanwhile) is seen.
pub(super) fn outcome(job: &Job) -> Result<(), Halt> {
    match next_file(job, &HashSet::new(), 0) {
        NextFile::Done => Ok(()),
        NextFile::Idle => Err(Halt::OnDemandIdle),
        // The worker ends and the job is requeued (`run_job`: not all transferred).
        NextFile::File(_) => Ok(()),
    }
}

/// What of a job decides how one of its files is fetched.
#[derive(Clone, Copy)]
pub(super) struct Shape {
    connections: u32,
    on_demand: bool,
    files_at_once: u32,
}

impl Shape {
    pub(super) fn of(job: &Job) -> Shape {
        Shape {
            connections: job.connections_per_file.max(1),
            on_demand: job.on_demand,
            files_at_once: job.files_at_once.max(1),
        }
    }

    pub(super) fn connections(self) -> u32 {
        self.connections
    }

    /// With the several-files-at-once extension (jobs of many files, where a round trip per file
    /// is most of the cost), a whole file nothing of which is known or on disk yet, fetched front
    /// to back on one connection, is probed and downloaded by one GET (no HEAD). Other jobs keep
    /// the BITS sequence: HEAD, then ranged GETs.
    pub(super) fn fetch_whole(self, file: &JobFile) -> bool {
        self.files_at_once > 1 && self.whole_and_fresh(file)
    }

    /// A whole file nothing of which is known or on disk yet, fetched front to back on one
    /// connection: the one file a GET from byte 0 that probed it may go on to stream.
    pub(super) fn whole_and_fresh(self, file: &JobFile) -> bool {
        file.ranges.is_empty()
            && file.remote_size.is_none()
            && file.filled.is_empty()
            && file.requested.is_empty()
            && file.download_position.is_none()
            && self.connections == 1
            && !self.on_demand
    }
}

/// The next remote span to fetch from what is `missing`: the first requested (on-demand) byte
/// still missing; in ON_DEMAND_MODE nothing else (the rest waits for the next request);
/// otherwise from the download position to the end, then from the lowest missing byte. Shared by
/// one connection and a segmented download.
pub(super) fn piece(missing: &RangeSet, file: &JobFile, on_demand: bool) -> Option<Span> {
    if let Some(piece) = missing.intersect(&file.requested).iter().next() {
        return Some(piece);
    }
    if on_demand {
        return None;
    }
    let position = file.download_position.unwrap_or(0);
    missing.first_from(position).or_else(|| missing.iter().next())
}

/// Whether `file`, its progress forgotten, would next be fetched by one GET from byte 0 to its
/// end on one connection: a whole file (no static ranges) of known, non-zero size, no
/// requested (on-demand) bytes or download position that would come first, one connection.
/// Only such a GET may take a server's 200 (the whole body) as the file's bytes.
pub(super) fn restart_asks_whole(job: &Job, file: &JobFile) -> bool {
    let Some(size) = file.remote_size.filter(|&size| size > 0) else { return false };
    file.ranges.is_empty()
        && job.connections_per_file <= 1
        && piece(&RangeSet::from_span(0, size), file, job.on_demand) == Some(Span::new(0, size))
}

/// A piece no larger than this may share a multi-range request with others.
const SMALL_PIECE: u64 = 1 << 20;

/// Up to `max` small `missing` pieces (the parts the server returns to one request, at most
/// [`bits_http::MAX_SPANS_PER_REQUEST`]), lowest first, when requested (on-demand) bytes do not
/// take precedence and more than one is missing. Empty otherwise.
pub(super) fn small_pieces(
    missing: &RangeSet,
    file: &JobFile,
    on_demand: bool,
    max: usize,
) -> Vec<Span> {
    if on_demand || !missing.intersect(&file.requested).is_empty() || missing.n_spans() < 2 {
        return Vec::new();
    }
    missing
        .iter()
        .take_while(|s| s.len() <= SMALL_PIECE)
        .take(max.min(bits_http::MAX_SPANS_PER_REQUEST))
        .collect()
}

/// Smallest and largest piece one connection of a segmented download claims at a time.
const MIN_SEGMENT: u64 = 1 << 20;
const MAX_SEGMENT: u64 = 64 << 20;

/// How much one connection of a segmented download claims at a time: a quarter of its share.
pub(super) fn segment_size(local_len: u64, connections: u32) -> u64 {
    (local_len / (u64::from(connections) * 4)).clamp(MIN_SEGMENT, MAX_SEGMENT)
}

/// The next piece for one connection of a segmented download: like [`piece`] (with what other
/// connections claimed already taken out of `missing`), cut to `size`.
pub(super) fn segment(
    missing: &RangeSet,
    file: &JobFile,
    on_demand: bool,
    size: u64,
) -> Option<Span> {
    piece(missing, file, on_demand)
        .map(|span| Span::new(span.start, span.end.min(span.start.saturating_add(size))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed call is a failed test

    use super::*;
    use crate::testing::{caller, job_with_files, manager};

    /// Files an AddFile has not made durable yet are not picked.
    #[test]
    fn files_still_being_added_are_not_picked() {
        assert_eq!(NextFile::File(4).before(Some(3)), NextFile::Done);
        assert_eq!(NextFile::File(3).before(Some(3)), NextFile::Done);
        assert_eq!(NextFile::File(2).before(Some(3)), NextFile::File(2));
        assert_eq!(NextFile::File(9).before(None), NextFile::File(9));
        assert_eq!(NextFile::Idle.before(Some(0)), NextFile::Idle);
    }

    async fn job(n: usize) -> Job {
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let id = job_with_files(&m, dir.path(), n).await;
        m.get_job(caller(), id).unwrap()
    }

    /// The pick starts at the cursor, except in ON_DEMAND_MODE; the full scan at the end of a
    /// worker still sees a file the cursor passed, so the worker ends for a requeue, not as done.
    #[tokio::test]
    async fn next_file_starts_at_the_cursor_and_the_full_scan_sees_the_rest() {
        let mut job = job(5).await;
        let job = &mut job;
        let fill = |file: &mut JobFile| {
            file.remote_size = Some(10);
            file.filled.insert(0, 10);
        };
        job.files[..2].iter_mut().for_each(fill);
        let pick = |job: &Job, active: &[u32], from| {
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

    fn set(spans: &[(u64, u64)]) -> RangeSet {
        let mut set = RangeSet::new();
        spans.iter().for_each(|&(start, end)| set.insert(start, end));
        set
    }

    /// Requested bytes first; on demand nothing else; otherwise from the download position,
    /// wrapping to the lowest missing byte.
    #[tokio::test]
    async fn the_next_piece_is_requested_bytes_then_from_the_download_position() {
        let mut file = job(1).await.files.remove(0);
        let missing = set(&[(0, 10), (20, 30), (40, 50)]);
        assert_eq!(piece(&missing, &file, false), Some(Span::new(0, 10)));
        file.download_position = Some(25);
        assert_eq!(piece(&missing, &file, false), Some(Span::new(25, 30)));
        file.download_position = Some(60);
        assert_eq!(piece(&missing, &file, false), Some(Span::new(0, 10)), "wraps");
        assert_eq!(piece(&missing, &file, true), None, "on demand, nothing requested");
        file.requested = set(&[(42, 45)]);
        assert_eq!(piece(&missing, &file, true), Some(Span::new(42, 45)));
        assert_eq!(piece(&missing, &file, false), Some(Span::new(42, 45)));
        assert_eq!(segment(&missing, &file, false, 2), Some(Span::new(42, 44)), "cut to size");
        assert_eq!(piece(&RangeSet::new(), &file, false), None, "complete");
    }

    /// A restart from zero asks for the whole file only for a whole file of known size on one
    /// connection with nothing requested and no download position past byte 0 to come first.
    #[tokio::test]
    async fn a_restart_asks_for_the_whole_file_only_when_nothing_comes_before_it() {
        let mut job = job(1).await;
        let whole = |job: &Job| restart_asks_whole(job, &job.files[0]);
        assert!(!whole(&job), "size unknown");
        job.files[0].remote_size = Some(0);
        assert!(!whole(&job), "empty: nothing to ask for");
        job.files[0].remote_size = Some(100);
        job.files[0].filled.insert(0, 40);
        assert!(whole(&job), "what is filled is forgotten by the restart");
        job.files[0].download_position = Some(0);
        assert!(whole(&job));
        job.files[0].download_position = Some(50);
        assert!(!whole(&job), "starts at the download position");
        job.files[0].download_position = None;
        job.files[0].requested.insert(60, 70);
        assert!(!whole(&job), "requested bytes first");
        job.files[0].requested = RangeSet::new();
        job.on_demand = true;
        assert!(!whole(&job), "on demand, nothing requested: nothing asked");
        job.on_demand = false;
        job.connections_per_file = 2;
        assert!(!whole(&job), "segments");
        job.connections_per_file = 1;
        job.files[0].ranges = vec![bits_core::ByteRange { offset: 0, length: 10 }];
        assert!(!whole(&job), "static ranges");
    }

    /// Several small missing pieces share a request; one piece, a large first piece, requested
    /// bytes or on-demand mode do not.
    #[tokio::test]
    async fn only_several_small_missing_pieces_share_a_multi_range_request() {
        let mut file = job(1).await.files.remove(0);
        let many = set(&[(0, 10), (20, 30), (40, SMALL_PIECE + 41)]);
        assert_eq!(
            small_pieces(&many, &file, false, MAX),
            vec![Span::new(0, 10), Span::new(20, 30)]
        );
        assert!(small_pieces(&many, &file, true, MAX).is_empty(), "on demand");
        assert!(small_pieces(&set(&[(0, 10)]), &file, false, MAX).is_empty(), "one piece");
        let large_first = set(&[(0, SMALL_PIECE + 1), (SMALL_PIECE + 5, SMALL_PIECE + 6)]);
        assert!(small_pieces(&large_first, &file, false, MAX).is_empty());
        let lots: Vec<(u64, u64)> = (0..200).map(|i| (i * 10, i * 10 + 1)).collect();
        assert_eq!(
            small_pieces(&set(&lots), &file, false, MAX).len(),
            bits_http::MAX_SPANS_PER_REQUEST
        );
        file.requested = set(&[(20, 21)]);
        assert!(small_pieces(&many, &file, false, MAX).is_empty(), "requested bytes go first");
    }

    const MAX: usize = bits_http::MAX_SPANS_PER_REQUEST;

    /// A server seen to return 10 parts (lighttpd) gets batches of 10, lowest first, so the
    /// spans it left out come first in the next batch; a limit of 1 is no batch at all.
    #[tokio::test]
    async fn batches_fit_the_parts_the_server_returns() {
        let file = job(1).await.files.remove(0);
        let lots: Vec<(u64, u64)> = (0..11).map(|i| (i * 1000, i * 1000 + 10)).collect();
        let first = small_pieces(&set(&lots), &file, false, 10);
        assert_eq!(first, (0..10).map(|i| Span::new(i * 1000, i * 1000 + 10)).collect::<Vec<_>>());
        let rest = set(&lots[5..]);
        assert_eq!(small_pieces(&rest, &file, false, 10).len(), 6);
        assert_eq!(small_pieces(&rest, &file, false, 3)[0], Span::new(5000, 5010));
        assert_eq!(small_pieces(&rest, &file, false, 3).len(), 3);
        assert_eq!(small_pieces(&rest, &file, false, 1).len(), 1);
        assert_eq!(small_pieces(&rest, &file, false, 1000).len(), 6);
    }

    #[test]
    fn segments_are_a_quarter_of_a_connections_share_within_bounds() {
        assert_eq!(segment_size(0, 4), MIN_SEGMENT);
        assert_eq!(segment_size(64 << 20, 4), 4 << 20);
        assert_eq!(segment_size(u64::MAX, 1), MAX_SEGMENT);
    }
}
