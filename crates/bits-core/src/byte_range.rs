//! `BG_FILE_RANGE`: what callers ask for, the BITS rules for accepting a list of them, and how a
//! ranged file's requested remote bytes map onto its local file.
//!
//! A file added with ranges is stored locally as the concatenation of those ranges in the caller's
//! order (remote 100–199, 900–999, 400–499 → a 300-byte local file). The filled set is kept in
//! remote offsets (so GetFilledFileRanges speaks the server's coordinates); [`Layout`] translates
//! a remote offset into the local offset where its byte is written.

use serde::{Deserialize, Serialize};

use crate::code::{BitsError, Code};
use crate::range_set::{RangeSet, Span};

/// `BG_LENGTH_TO_EOF`: a range length meaning "to the end of the remote file".
pub const LENGTH_TO_EOF: u64 = u64::MAX;

/// One requested range, as the caller gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ByteRange {
    pub offset: u64,
    /// Byte count, or [`LENGTH_TO_EOF`].
    pub length: u64,
}

impl ByteRange {
    pub fn new(offset: u64, length: u64) -> ByteRange {
        ByteRange { offset, length }
    }

    pub fn is_to_eof(&self) -> bool {
        self.length == LENGTH_TO_EOF
    }

    /// The remote span `[offset, end)` once the remote size is known, or `BG_E_INVALID_RANGE` if it
    /// does not lie inside the file.
    pub fn resolve(&self, size: u64) -> Result<Span, BitsError> {
        let end = if self.is_to_eof() { size } else { self.offset.saturating_add(self.length) };
        // An EOF range must start inside the file; a counted range must end inside it.
        let outside = if self.is_to_eof() { self.offset >= size } else { end > size };
        if outside {
            return Err(BitsError::new(
                Code::BG_E_INVALID_RANGE,
                format!("range {} is outside the remote file of {size} bytes", self.display()),
            ));
        }
        Ok(Span::new(self.offset, end))
    }

    /// `OFFSET:LENGTH` with `eof` for [`LENGTH_TO_EOF`], the form bitsctl accepts.
    pub fn display(&self) -> String {
        if self.is_to_eof() {
            format!("{}:eof", self.offset)
        } else {
            format!("{}:{}", self.offset, self.length)
        }
    }
}

/// Checks a static range list the way AddFileWithRanges does (spec §3.C), in this order: empty list,
/// `BG_LENGTH_TO_EOF` as an offset, overflow, then overlaps by a stable sort on offset (ties keep the
/// caller's order, so `(100,0),(100,5)` passes and `(100,5),(100,0)` fails), then the count limit.
pub fn validate_static_ranges(ranges: &[ByteRange], max_ranges: usize) -> Result<(), BitsError> {
    if ranges.is_empty() {
        return Err(BitsError::new(Code::E_INVALIDARG, "at least one range is required"));
    }
    for range in ranges {
        if range.offset == LENGTH_TO_EOF {
            return Err(BitsError::new(
                Code::BG_E_INVALID_RANGE,
                format!("range offset {} is BG_LENGTH_TO_EOF", range.offset),
            ));
        }
        if !range.is_to_eof() && range.offset.checked_add(range.length).is_none() {
            return Err(BitsError::new(
                Code::BG_E_INVALID_RANGE,
                format!("range {} overflows a 64-bit offset", range.display()),
            ));
        }
    }
    check_overlaps(ranges)?;
    if ranges.len() > max_ranges {
        return Err(BitsError::new(
            Code::BG_E_TOO_MANY_RANGES_IN_FILE,
            format!("{} ranges given, at most {max_ranges} are allowed per file", ranges.len()),
        ));
    }
    Ok(())
}

fn check_overlaps(ranges: &[ByteRange]) -> Result<(), BitsError> {
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.offset); // stable: ties keep caller order
    for pair in sorted.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.is_to_eof() || a.offset + a.length > b.offset {
            return Err(BitsError::new(
                Code::BG_E_OVERLAPPING_RANGES,
                format!("range {} overlaps range {}", a.display(), b.display()),
            ));
        }
    }
    Ok(())
}

/// Where each requested remote span lives in the local file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// (remote span, local start), in the caller's order.
    segments: Vec<(Span, u64)>,
    local_len: u64,
}

impl Layout {
    /// Layout of a ranged file once the remote size is known. A whole-file download is the identity
    /// layout `[0, size)` at local offset 0.
    pub fn new(ranges: &[ByteRange], size: u64) -> Result<Layout, BitsError> {
        if ranges.is_empty() {
            return Ok(Layout { segments: vec![(Span::new(0, size), 0)], local_len: size });
        }
        let mut segments = Vec::with_capacity(ranges.len());
        let mut local = 0u64;
        for range in ranges {
            let span = range.resolve(size)?;
            segments.push((span, local));
            // Validated ranges cannot overflow; unvalidated ones get an error, not a wrap.
            local = local.checked_add(span.len()).ok_or_else(|| {
                BitsError::new(
                    Code::BG_E_INVALID_RANGE,
                    "the ranges add up to more than 2^64 bytes",
                )
            })?;
        }
        Ok(Layout { segments, local_len: local })
    }

    /// Length of the local file.
    pub fn local_len(&self) -> u64 {
        self.local_len
    }

    /// Every remote byte the file needs.
    pub fn wanted(&self) -> RangeSet {
        RangeSet::from_spans(self.segments.iter().map(|(span, _)| *span))
    }

    /// The remote bytes whose local offset is below `local_len`: what a temp file of that length
    /// can hold. Used to trust only the filled ranges a (possibly short) temp file backs.
    pub fn remote_backed_by(&self, local_len: u64) -> RangeSet {
        RangeSet::from_spans(self.segments.iter().map(|(span, local_start)| {
            let present = local_len.saturating_sub(*local_start).min(span.len());
            Span::new(span.start, span.start + present)
        }))
    }

    /// Local offset of remote byte `remote`, and how many bytes from there are contiguous locally.
    pub fn to_local(&self, remote: u64) -> Option<(u64, u64)> {
        self.segments
            .iter()
            .find(|(span, _)| span.start <= remote && remote < span.end)
            .map(|(span, local_start)| (local_start + (remote - span.start), span.end - remote))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(offset: u64, length: u64) -> ByteRange {
        ByteRange::new(offset, length)
    }

    fn check(ranges: &[ByteRange], expect: Option<Code>) {
        let got = validate_static_ranges(ranges, 500).err().map(|e| e.code);
        assert_eq!(got, expect, "ranges {ranges:?}");
    }

    #[test]
    fn validation_follows_the_stable_sort_rule() {
        check(&[], Some(Code::E_INVALIDARG));
        check(&[r(LENGTH_TO_EOF, 10)], Some(Code::BG_E_INVALID_RANGE));
        check(&[r(u64::MAX - 5, 10)], Some(Code::BG_E_INVALID_RANGE));
        check(&[r(100, 5), r(100, 0)], Some(Code::BG_E_OVERLAPPING_RANGES));
        check(&[r(100, 0), r(100, 5)], None);
        check(&[r(0, 100), r(50, 10)], Some(Code::BG_E_OVERLAPPING_RANGES));
        check(&[r(0, 100), r(100, 10)], None);
        check(&[r(0, 10), r(0, 10)], Some(Code::BG_E_OVERLAPPING_RANGES));
        check(&[r(10, LENGTH_TO_EOF), r(20, 5)], Some(Code::BG_E_OVERLAPPING_RANGES));
        check(&[r(20, 5), r(10, LENGTH_TO_EOF)], Some(Code::BG_E_OVERLAPPING_RANGES));
        check(&[r(100, 100), r(900, 100), r(400, 100)], None);
        let many: Vec<ByteRange> = (0..501).map(|i| r(i * 10, 5)).collect();
        check(&many[..500], None);
        check(&many, Some(Code::BG_E_TOO_MANY_RANGES_IN_FILE));
    }

    #[test]
    fn layout_concatenates_in_caller_order() {
        let layout = Layout::new(&[r(100, 100), r(900, 100), r(400, 100)], 1000).unwrap();
        assert_eq!(layout.local_len(), 300);
        assert_eq!(layout.to_local(100), Some((0, 100)));
        assert_eq!(layout.to_local(950), Some((150, 50)));
        assert_eq!(layout.to_local(400), Some((200, 100)));
        assert_eq!(layout.to_local(300), None);
        let layout = Layout::new(&[r(24, 17), r(111, LENGTH_TO_EOF), r(83, 7)], 1000).unwrap();
        assert_eq!(layout.local_len(), 17 + 889 + 7);
        assert_eq!(layout.to_local(83), Some((17 + 889, 7)));
    }

    #[test]
    fn a_short_local_file_backs_only_its_prefix() {
        let layout = Layout::new(&[r(100, 100), r(900, 100), r(400, 100)], 1000).unwrap();
        let spans = |set: RangeSet| set.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>();
        assert_eq!(spans(layout.remote_backed_by(0)), []);
        assert_eq!(spans(layout.remote_backed_by(150)), [(100, 200), (900, 950)]);
        assert_eq!(spans(layout.remote_backed_by(300)), [(100, 200), (400, 500), (900, 1000)]);
        assert_eq!(spans(Layout::new(&[], 50).unwrap().remote_backed_by(70)), [(0, 50)]);
    }

    #[test]
    fn ranges_outside_the_file_are_invalid() {
        let err = Layout::new(&[r(990, 20)], 1000).unwrap_err();
        assert_eq!(err.code, Code::BG_E_INVALID_RANGE);
        assert!(err.message.contains("990:20"), "{}", err.message);
        assert_eq!(
            Layout::new(&[r(1000, LENGTH_TO_EOF)], 1000).unwrap_err().code,
            Code::BG_E_INVALID_RANGE
        );
        assert!(Layout::new(&[r(900, 100)], 1000).is_ok());
    }
}

/// Property tests against brute-force models over a small domain (offsets and lengths below 64),
/// where overlaps, ties, touching ranges and EOF ranges are all common.
#[cfg(test)]
mod model_tests {
    use proptest::prelude::*;

    use super::*;

    /// Spec §3.C steps 1–4, written out independently: empty list, EOF offset, overflow, then the
    /// stable sort by offset and the adjacent-pair rule, then the count limit.
    fn model_validate(ranges: &[ByteRange], max_ranges: usize) -> Option<Code> {
        if ranges.is_empty() {
            return Some(Code::E_INVALIDARG);
        }
        if ranges.iter().any(|r| {
            r.offset == LENGTH_TO_EOF
                || (r.length != LENGTH_TO_EOF
                    && u128::from(r.offset) + u128::from(r.length) > u128::from(u64::MAX))
        }) {
            return Some(Code::BG_E_INVALID_RANGE);
        }
        // Insertion sort: stable by construction, so no reliance on the library's sort.
        let mut sorted: Vec<ByteRange> = Vec::new();
        for &r in ranges {
            let at = sorted.iter().position(|s| s.offset > r.offset).unwrap_or(sorted.len());
            sorted.insert(at, r);
        }
        for i in 1..sorted.len() {
            let (a, b) = (sorted[i - 1], sorted[i]);
            if a.length == LENGTH_TO_EOF
                || u128::from(a.offset) + u128::from(a.length) > u128::from(b.offset)
            {
                return Some(Code::BG_E_OVERLAPPING_RANGES);
            }
        }
        if ranges.len() > max_ranges {
            return Some(Code::BG_E_TOO_MANY_RANGES_IN_FILE);
        }
        None
    }

    fn small_range() -> impl Strategy<Value = ByteRange> {
        prop_oneof![
            8 => (0u64..64, 0u64..64).prop_map(|(o, l)| ByteRange::new(o, l)),
            2 => (0u64..64).prop_map(|o| ByteRange::new(o, LENGTH_TO_EOF)),
            1 => (0u64..64).prop_map(|l| ByteRange::new(LENGTH_TO_EOF, l)),
            1 => (0u64..64, 0u64..64).prop_map(|(d, l)| ByteRange::new(u64::MAX - 1 - d, l)),
        ]
    }

    /// Ranges that pass validation: disjoint spans over 0..64 in shuffled caller order, some of
    /// them empty, some touching, at most one (the highest) running to EOF.
    fn valid_ranges() -> impl Strategy<Value = Vec<ByteRange>> {
        (prop::collection::vec((0u64..8, 0u64..8), 1..8), any::<bool>())
            .prop_map(|(pieces, eof_last)| {
                let mut at = 0;
                let mut ranges = Vec::new();
                for (gap, len) in pieces {
                    at += gap;
                    ranges.push(ByteRange::new(at, len));
                    // A later range at the same offset as an empty one would fail the tie rule
                    // when the shuffle puts it first.
                    at += len.max(1);
                }
                if eof_last && let Some(last) = ranges.last_mut() {
                    last.length = LENGTH_TO_EOF;
                }
                ranges
            })
            .prop_shuffle()
    }

    /// The local file byte by byte: for each local offset, (remote offset, segment index).
    fn model_local_bytes(ranges: &[ByteRange], size: u64) -> Option<Vec<(u64, usize)>> {
        let mut out = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            let end = if r.length == LENGTH_TO_EOF {
                if r.offset >= size {
                    return None;
                }
                size
            } else {
                if r.offset + r.length > size {
                    return None;
                }
                r.offset + r.length
            };
            out.extend((r.offset..end).map(|b| (b, i)));
        }
        Some(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn validation_matches_the_spec_model(
            ranges in prop::collection::vec(small_range(), 0..7),
            max_ranges in 0usize..8,
        ) {
            let got = validate_static_ranges(&ranges, max_ranges).err().map(|e| e.code);
            prop_assert_eq!(got, model_validate(&ranges, max_ranges), "ranges {:?}", ranges);
        }

        #[test]
        fn generated_valid_lists_are_accepted(ranges in valid_ranges()) {
            prop_assert_eq!(validate_static_ranges(&ranges, 500).err().map(|e| e.code), None);
        }

        #[test]
        fn layout_matches_a_byte_by_byte_model(ranges in valid_ranges(), size in 0u64..80) {
            let model = model_local_bytes(&ranges, size);
            let layout = Layout::new(&ranges, size);
            let (Some(model), Ok(layout)) = (&model, &layout) else {
                prop_assert!(model.is_none(), "model accepts, Layout says {:?}", layout);
                prop_assert_eq!(layout.as_ref().map_err(|e| e.code).err(), Some(Code::BG_E_INVALID_RANGE));
                return Ok(());
            };
            prop_assert_eq!(layout.local_len(), model.len() as u64);
            let mut wanted = RangeSet::new();
            for &(remote, _) in model {
                wanted.insert(remote, remote + 1);
            }
            prop_assert_eq!(layout.wanted(), wanted);
            for remote in 0..size + 2 {
                let expect = model.iter().position(|&(b, _)| b == remote).map(|local| {
                    let seg = model[local].1;
                    let run = model[local..].iter().take_while(|&&(_, s)| s == seg).count();
                    (local as u64, run as u64)
                });
                prop_assert_eq!(layout.to_local(remote), expect, "remote {} in {:?}", remote, ranges);
            }
        }

        #[test]
        fn whole_file_layout_is_the_identity(size in 0u64..1000, remote in 0u64..1000) {
            let layout = Layout::new(&[], size).expect("whole file");
            prop_assert_eq!(layout.local_len(), size);
            let expect = (remote < size).then(|| (remote, size - remote));
            prop_assert_eq!(layout.to_local(remote), expect);
        }
    }
}
