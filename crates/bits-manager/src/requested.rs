//! RequestFileRanges' argument, turned into a range set before the job table is locked.
//!
//! A caller may send hundreds of thousands of ranges in any order. Inserting them one by one into
//! a sorted set costs a splice each (quadratic for a descending list), and doing it under the
//! table lock froze every other caller for tens of seconds. Here they are checked, sorted and
//! merged once (O(n log n)) with no lock held; the locked part only checks them against the
//! file's current size and merges two sorted lists.

use bits_core::job::MAX_RANGES_PER_FILE;
use bits_core::{BitsError, ByteRange, Code, LENGTH_TO_EOF, RangeSet, Span};

/// The requested ranges, merged, with what is needed to check them against a remote size that
/// may only become known (or change) after they were parsed.
#[derive(Debug)]
pub(crate) struct Requested {
    /// Counted ranges as `[offset, offset + length)` (saturating), to-EOF ranges open-ended as
    /// `[offset, u64::MAX)`: what an unknown size leaves for the worker to clip after its probe.
    open: RangeSet,
    /// The counted range that ends last: it decides whether all of them fit a size.
    last_end: Option<ByteRange>,
    /// The to-EOF range that starts last: it decides whether all of them start inside a size.
    last_eof: Option<ByteRange>,
}

impl Requested {
    /// Checks the size-independent rules (spec §3.F, with AddFileWithRanges' order: syntax, then
    /// the count limit non-admins are held to) and sorts and merges what was asked.
    pub(crate) fn parse(ranges: &[ByteRange], admin: bool) -> Result<Requested, BitsError> {
        if ranges.is_empty() {
            return Err(BitsError::new(Code::E_INVALIDARG, "at least one range is required"));
        }
        if let Some(range) = ranges.iter().find(|r| r.offset == LENGTH_TO_EOF) {
            return Err(BitsError::new(
                Code::BG_E_INVALID_RANGE,
                format!("range offset {} is BG_LENGTH_TO_EOF", range.offset),
            ));
        }
        if !admin && ranges.len() > MAX_RANGES_PER_FILE {
            return Err(too_many(format!(
                "{} ranges given, at most {MAX_RANGES_PER_FILE} are allowed per file",
                ranges.len()
            )));
        }
        let end = |r: &ByteRange| r.offset.saturating_add(r.length);
        let last_end = ranges.iter().filter(|r| !r.is_to_eof()).max_by_key(|r| end(r)).copied();
        let last_eof = ranges.iter().filter(|r| r.is_to_eof()).max_by_key(|r| r.offset).copied();
        let open =
            RangeSet::from_spans(ranges.iter().map(|r| Span { start: r.offset, end: end(r) }));
        Ok(Requested { open, last_end, last_eof })
    }

    /// The requested remote bytes of a file of `size` bytes (`None`: not known yet, the set stays
    /// open-ended), or `BG_E_INVALID_RANGE` naming a range that does not lie inside the file.
    /// Linear in the number of merged pieces.
    pub(crate) fn within(&self, size: Option<u64>) -> Result<RangeSet, BitsError> {
        let Some(size) = size else {
            return Ok(self.open.clone());
        };
        let outside = match (self.last_end, self.last_eof) {
            (Some(r), _) if r.offset.saturating_add(r.length) > size => Some(r),
            (_, Some(r)) if r.offset >= size => Some(r),
            _ => None,
        };
        if let Some(range) = outside {
            return Err(BitsError::new(
                Code::BG_E_INVALID_RANGE,
                format!("range {} is outside the remote file of {size} bytes", range.display()),
            ));
        }
        Ok(self.open.intersect_span(0, size))
    }
}

/// A file's pending on-demand ranges after this request, refused for a non-admin when it would
/// hold more pieces than one request may send: repeated requests cannot grow the set (and the
/// work every later request does under the lock) without bound.
pub(crate) fn check_pending(pending: &RangeSet, index: u32, admin: bool) -> Result<(), BitsError> {
    if admin || pending.n_spans() <= MAX_RANGES_PER_FILE {
        return Ok(());
    }
    Err(too_many(format!(
        "file {index} would have {} disjoint requested ranges pending, at most \
         {MAX_RANGES_PER_FILE} are allowed per file",
        pending.n_spans()
    )))
}

fn too_many(message: String) -> BitsError {
    BitsError::new(Code::BG_E_TOO_MANY_RANGES_IN_FILE, message)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed call is a failed test

    use proptest::prelude::*;

    use super::*;

    fn spans(set: &RangeSet) -> Vec<(u64, u64)> {
        set.iter().map(|s| (s.start, s.end)).collect()
    }

    /// What the old code computed: each range resolved (or left open) and inserted in turn.
    fn one_by_one(ranges: &[ByteRange], size: Option<u64>) -> Result<RangeSet, Code> {
        let mut set = RangeSet::new();
        for r in ranges {
            let span = match size {
                Some(size) => r.resolve(size).map_err(|e| e.code)?,
                None => Span::new(r.offset, r.offset.saturating_add(r.length)),
            };
            set.insert(span.start, span.end);
        }
        Ok(set)
    }

    #[test]
    fn a_large_descending_list_is_merged_correctly() {
        // 400,000 two-byte ranges, every other pair touching: 200,000 pieces of four bytes.
        let n = 400_000u64;
        let ranges: Vec<ByteRange> =
            (0..n).rev().map(|i| ByteRange::new(i * 2 + (i / 2) * 4, 2)).collect();
        let requested = Requested::parse(&ranges, true).unwrap();
        let set = requested.within(Some(u64::MAX / 2)).unwrap();
        assert_eq!(set.n_spans(), 200_000);
        assert_eq!(set.total_len(), 2 * n);
        assert!(
            set.iter().enumerate().all(|(k, s)| s == Span::new(k as u64 * 8, k as u64 * 8 + 4))
        );
    }

    #[test]
    fn non_admins_are_held_to_the_per_file_limit() {
        let ranges: Vec<ByteRange> = (0..501).map(|i| ByteRange::new(i * 10, 5)).collect();
        let err = Requested::parse(&ranges, false).unwrap_err();
        assert_eq!(err.code, Code::BG_E_TOO_MANY_RANGES_IN_FILE);
        assert!(err.message.contains("501") && err.message.contains("500"), "{err}");
        assert!(Requested::parse(&ranges[..500], false).is_ok());
        assert!(Requested::parse(&ranges, true).is_ok());

        let pending = RangeSet::from_spans((0..501).map(|i| Span::new(i * 10, i * 10 + 5)));
        let err = check_pending(&pending, 3, false).unwrap_err();
        assert_eq!(err.code, Code::BG_E_TOO_MANY_RANGES_IN_FILE);
        assert!(err.message.contains("file 3") && err.message.contains("501"), "{err}");
        assert!(check_pending(&pending, 3, true).is_ok());
    }

    #[test]
    fn size_checks_name_the_offending_range() {
        let requested = Requested::parse(&[ByteRange::new(0, 10), ByteRange::new(990, 20)], false);
        let err = requested.unwrap().within(Some(1000)).unwrap_err();
        assert_eq!(err.code, Code::BG_E_INVALID_RANGE);
        assert!(err.message.contains("990:20"), "{err}");
        let eof = Requested::parse(&[ByteRange::new(1000, LENGTH_TO_EOF)], false).unwrap();
        assert!(eof.within(Some(1000)).unwrap_err().message.contains("1000:eof"));
        assert_eq!(spans(&eof.within(Some(1001)).unwrap()), [(1000, 1001)]);
        assert_eq!(spans(&eof.within(None).unwrap()), [(1000, u64::MAX)]);
        let err = Requested::parse(&[ByteRange::new(LENGTH_TO_EOF, 1)], true).unwrap_err();
        assert_eq!(err.code, Code::BG_E_INVALID_RANGE);
        assert_eq!(Requested::parse(&[], true).unwrap_err().code, Code::E_INVALIDARG);
    }

    fn range() -> impl Strategy<Value = ByteRange> {
        (0u64..80, prop_oneof![0u64..40, Just(LENGTH_TO_EOF), Just(u64::MAX - 3)])
            .prop_map(|(offset, length)| ByteRange::new(offset, length))
    }

    proptest! {
        /// Sorting and merging once accepts, refuses and covers exactly what inserting each
        /// range in turn did, whatever the order, size or overflow.
        #[test]
        fn matches_inserting_one_by_one(ranges in proptest::collection::vec(range(), 1..30),
                                        size in proptest::option::of(0u64..120)) {
            let fast = Requested::parse(&ranges, true).and_then(|r| r.within(size));
            let slow = one_by_one(&ranges, size);
            prop_assert_eq!(fast.map(|s| spans(&s)).map_err(|e| e.code), slow.map(|s| spans(&s)));
        }
    }
}
