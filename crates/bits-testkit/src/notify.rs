//! The one check of a job's FILE_RANGES_TRANSFERRED events (spec §7.1), shared by the manager's
//! virtual-time test and the daemon's conformance test.

use std::time::Duration;

use bits_core::{ByteRange, RangeSet, Span};

/// Asserts that `events` (each stamped with when it arrived, as time since any one origin) are at
/// least `min_events`, cover exactly the `requested` bytes with no byte reported twice, and are
/// at least `interval` apart, less `slack` for the clock's rounding.
pub fn assert_file_ranges_events(
    events: &[(Duration, RangeSet)],
    requested: &[ByteRange],
    min_events: usize,
    interval: Duration,
    slack: Duration,
) {
    assert!(events.len() >= min_events, "expected the bytes over several events: {events:?}");
    let union = events.iter().fold(RangeSet::new(), |union, (_, set)| union.union(set));
    let total: u64 = events.iter().map(|(_, set)| set.total_len()).sum();
    let want =
        RangeSet::from_spans(requested.iter().map(|r| Span::new(r.offset, r.offset + r.length)));
    assert_eq!(union, want, "events: {events:?}");
    assert_eq!(total, want.total_len(), "a byte reported twice: {events:?}");
    for pair in events.windows(2) {
        let gap = pair[1].0.saturating_sub(pair[0].0);
        assert!(gap + slack >= interval, "events {gap:?} apart: {events:?}");
    }
}
