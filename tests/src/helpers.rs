//! Helpers of the e2e and conformance binaries: one name each for the waits, the error checks
//! and the range arithmetic the tests share.

use std::path::Path;
use std::time::Duration;

use bits_client::{Client, ClientError, JobInfo};
use bits_core::{BitsError, ByteRange, Code, JobId, JobState, Priority, RangeSet};
use bits_testkit::server::LoggedRequest;
use http::Method;

use crate::wait::{TIMEOUT, wait_for};

/// A static range `(offset, length)` (`bits_core::LENGTH_TO_EOF` for "to the end").
pub fn range(offset: u64, length: u64) -> ByteRange {
    ByteRange::new(offset, length)
}

/// The remote bytes a file of `source` wants with these static ranges (none: the whole file),
/// and its local content once complete (the ranges concatenated in caller order).
pub fn wanted_and_local(source: &[u8], ranges: &[ByteRange]) -> (RangeSet, Vec<u8>) {
    let size = source.len() as u64;
    if ranges.is_empty() {
        return (RangeSet::from_spans([bits_core::Span { start: 0, end: size }]), source.to_vec());
    }
    let mut wanted = RangeSet::new();
    let mut local = Vec::new();
    for r in ranges {
        let span = r.resolve(size).unwrap();
        wanted.insert(span.start, span.end);
        local.extend_from_slice(&source[span.start as usize..span.end as usize]);
    }
    (wanted, local)
}

/// A seeded loop's seed: `$var` when set (to replay a run), else the clock; printed by the caller.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
    })
}

/// GetFilledFileRanges' answer as a set (a filled range is never to-EOF).
pub fn filled_set(ranges: &[ByteRange]) -> RangeSet {
    let mut set = RangeSet::new();
    for r in ranges {
        assert!(!r.is_to_eof(), "a filled range is never to-EOF: {ranges:?}");
        set.insert(r.offset, r.offset + r.length);
    }
    set
}

/// `N bytes in [a, b) [c, d)`, for failure messages.
pub fn show_set(set: &RangeSet) -> String {
    let spans: Vec<String> = set.iter().map(|s| format!("[{}, {})", s.start, s.end)).collect();
    format!("{} bytes in {}", set.total_len(), spans.join(" "))
}

/// Polls GetJob until the job is in `want`. Fails at once if the job lands in ERROR (or any
/// final state) when that is not what the test waits for, showing the job's error.
pub async fn wait_state(client: &Client, job: JobId, want: JobState) -> JobInfo {
    wait_state_within(client, job, want, TIMEOUT).await
}

pub async fn wait_state_within(
    client: &Client,
    job: JobId,
    want: JobState,
    timeout: Duration,
) -> JobInfo {
    wait_for(&format!("job {job} to reach {}", want.name()), timeout, || async {
        let info = client.get_job(job).await.map_err(|e| format!("GetJob failed: {e}"))?;
        if info.state == want {
            return Ok(info);
        }
        let stuck =
            matches!(info.state, JobState::Error | JobState::Transferred) || info.state.is_final();
        if stuck {
            panic!(
                "job {job} is {} while waiting for {}; error: {:?}",
                info.state.name(),
                want.name(),
                info.error
            );
        }
        Err(format!("state {} (error {:?})", info.state.name(), info.error))
    })
    .await
}

/// The BITS error a failed call returned; panics if the call succeeded or failed otherwise.
pub fn bits_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> BitsError {
    match result {
        Err(ClientError::Bits(e)) => e,
        other => panic!("expected a BITS error, got {other:?}"),
    }
}

/// Asserts that `result` failed with the BITS `code` and returns the error.
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, ClientError>, code: Code) -> BitsError {
    match result {
        Err(ClientError::Bits(e)) => {
            assert_eq!(e.code, code, "wrong code in {e}");
            e
        }
        other => panic!("expected {} ({:#010x}), got {other:?}", code.name(), code.hresult()),
    }
}

/// `[start, end)` of a counted range.
pub fn span(r: &ByteRange) -> (u64, u64) {
    assert!(!r.is_to_eof(), "filled ranges are never to-EOF: {r:?}");
    (r.offset, r.offset + r.length)
}

pub fn total(ranges: &[ByteRange]) -> u64 {
    ranges.iter().map(|r| r.length).sum()
}

/// GetFilledFileRanges promises a sorted, merged set: non-empty pieces, each starting after the
/// previous one ended (touching pieces would have been merged).
pub fn assert_normalised(ranges: &[ByteRange], size: u64) {
    for r in ranges {
        assert!(r.length > 0, "empty piece in {ranges:?}");
        assert!(span(r).1 <= size, "piece beyond the file size {size}: {ranges:?}");
    }
    for pair in ranges.windows(2) {
        assert!(span(&pair[0]).1 < pair[1].offset, "not sorted and merged: {ranges:?}");
    }
}

/// Every byte of `inner` is in `outer` (both normalised).
pub fn covers(outer: &[ByteRange], inner: &[ByteRange]) -> bool {
    inner.iter().all(|i| {
        let (start, end) = span(i);
        outer.iter().any(|o| o.offset <= start && end <= span(o).1)
    })
}

/// Bytes of `[start, end)` that lie inside `ranges`.
pub fn overlap(ranges: &[ByteRange], start: u64, end: u64) -> u64 {
    ranges
        .iter()
        .map(|r| {
            let (a, b) = span(r);
            b.min(end).saturating_sub(a.max(start))
        })
        .sum()
}

/// Every value stored under `key` anywhere in a JSON document.
pub fn json_values<'a>(value: &'a serde_json::Value, key: &str) -> Vec<&'a serde_json::Value> {
    let mut found = Vec::new();
    collect(value, key, &mut found);
    found
}

fn collect<'a>(value: &'a serde_json::Value, key: &str, found: &mut Vec<&'a serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == key {
                    found.push(v);
                }
                collect(v, key, found);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, key, found)),
        _ => {}
    }
}

/// Parses bitsctl's `--json` output (one document).
pub fn parse_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("bitsctl --json printed invalid JSON ({e}):\n{text}"))
}

/// The job id `bitsctl create` printed.
pub fn job_id_in(stdout: &str) -> JobId {
    stdout
        .split_whitespace()
        .find_map(JobId::parse)
        .unwrap_or_else(|| panic!("no job id in bitsctl output: {stdout:?}"))
}

/// Polls the job's progress until file `index` has at least `bytes` bytes recorded.
pub async fn wait_file_bytes(client: &Client, job: JobId, index: usize, bytes: u64) -> u64 {
    wait_for(&format!("file {index} of job {job} to hold {bytes} bytes"), TIMEOUT, || async {
        let progress = client.get_progress(job).await.map_err(|e| format!("GetProgress: {e}"))?;
        let done = progress.files.get(index).map_or(0, |f| f.bytes_transferred);
        if done >= bytes { Ok(done) } else { Err(format!("{done} bytes")) }
    })
    .await
}

/// Polls GetFilledFileRanges until file `index` has at least `bytes` bytes recorded, and returns
/// the ranges. The download is expected to be running: the wait fails at once if the job ends in
/// ERROR or TRANSFERRED first.
pub async fn wait_filled(client: &Client, job: JobId, index: u32, bytes: u64) -> Vec<ByteRange> {
    wait_for(&format!("{bytes} bytes of file {index} of job {job} filled"), TIMEOUT, || async {
        let filled = client.get_filled_file_ranges(job, index).await.map_err(|e| e.to_string())?;
        let state = client.get_job(job).await.map_err(|e| e.to_string())?.state;
        assert!(state != JobState::Error && state != JobState::Transferred, "job is {state:?}");
        if total(&filled) >= bytes { Ok(filled) } else { Err(format!("{state:?} {filled:?}")) }
    })
    .await
}

/// Resume of a job without files is BG_E_EMPTY (0x80200003), and the job stays SUSPENDED.
pub async fn assert_resume_of_an_empty_job_is_bg_e_empty(client: &Client) {
    let job = client.create_job("empty", Priority::Normal).await.unwrap();
    let err = expect_code(client.resume(job).await, Code::BG_E_EMPTY);
    assert_eq!(err.code.hresult(), 0x8020_0003);
    assert_eq!(client.get_job(job).await.unwrap().state, JobState::Suspended);
}

/// Whether the job is listed by ListJobs (EnumJobs).
pub async fn is_listed(client: &Client, job: JobId) -> bool {
    client.list_jobs().await.unwrap().iter().any(|j| j.id == job)
}

/// Polls GetJob until `done` holds for the job, and returns it; `what` names the wait.
pub async fn wait_job<F>(
    client: &Client,
    job: JobId,
    what: &str,
    timeout: Duration,
    done: F,
) -> JobInfo
where
    F: Fn(&JobInfo) -> bool,
{
    wait_for(what, timeout, || async {
        let info = client.get_job(job).await.map_err(|e| format!("GetJob failed: {e}"))?;
        if done(&info) {
            return Ok(info);
        }
        Err(format!(
            "state {} error_count {} error {:?}",
            info.state.name(),
            info.error_count,
            info.error
        ))
    })
    .await
}

pub use bits_testkit::faults::fault_log;

/// The remote spans `[start, end)` that GETs for `/NAME` actually delivered, in arrival order.
pub fn served_spans(log: &[LoggedRequest], name: &str) -> Vec<(u64, u64)> {
    let path = format!("/{name}");
    log.iter()
        .filter(|r| r.method == Method::GET && r.path == path && r.served > 0)
        .map(|r| r.served_span())
        .collect()
}

/// The server never sent any byte of `/NAME` twice: the served spans are pairwise disjoint.
pub fn assert_no_byte_twice(log: &[LoggedRequest], name: &str) {
    let mut spans = served_spans(log, name);
    spans.sort_unstable();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "bytes [{}, {}) of /{name} were served twice; served spans {spans:?}; log {log:#?}",
            pair[1].0,
            pair[0].1.min(pair[1].1)
        );
    }
}

/// Names of the entries of a directory, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
