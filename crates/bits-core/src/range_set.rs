//! A sorted, merged set of half-open `u64` byte intervals.
//!
//! This is how bitsd remembers which bytes of a file are durably on disk (the filled set), which
//! bytes a caller asked for, and what is still missing. Keeping the set normalised (sorted,
//! non-empty, non-touching pieces) makes equality structural and every query a binary search.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A half-open interval `[start, end)` of byte offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    pub fn new(start: u64, end: u64) -> Span {
        debug_assert!(start <= end);
        Span { start, end }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// Sorted, merged interval set. Invariant: pieces are non-empty, sorted, and neither overlap nor
/// touch (touching pieces are merged), so there is exactly one representation of each set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<Span>", into = "Vec<Span>")]
pub struct RangeSet {
    spans: Vec<Span>,
}

impl From<Vec<Span>> for RangeSet {
    /// Normalises whatever it is given, so a hand-edited or old store value cannot break the invariant.
    fn from(spans: Vec<Span>) -> RangeSet {
        RangeSet::from_spans(spans)
    }
}

impl From<RangeSet> for Vec<Span> {
    fn from(set: RangeSet) -> Vec<Span> {
        set.spans
    }
}

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet { spans: Vec::new() }
    }

    /// The set holding exactly `[start, end)`.
    pub fn from_span(start: u64, end: u64) -> RangeSet {
        let mut set = RangeSet::new();
        set.insert(start, end);
        set
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Number of disjoint pieces.
    pub fn n_spans(&self) -> usize {
        self.spans.len()
    }

    /// Pieces in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = Span> + '_ {
        self.spans.iter().copied()
    }

    /// Total number of bytes covered.
    pub fn total_len(&self) -> u64 {
        self.spans.iter().map(Span::len).sum()
    }

    /// Bytes of `[start, end)` in the set, without building the intersection.
    pub fn len_within(&self, start: u64, end: u64) -> u64 {
        let first = self.spans.partition_point(|s| s.end <= start);
        self.spans[first..]
            .iter()
            .take_while(|s| s.start < end)
            .map(|s| s.end.min(end).saturating_sub(s.start.max(start)))
            .sum()
    }

    /// Adds `[start, end)`, merging with every piece it overlaps or touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // First piece whose end reaches `start` (touching counts), and first piece starting after `end`.
        let lo = self.spans.partition_point(|s| s.end < start);
        let hi = self.spans.partition_point(|s| s.start <= end);
        let mut merged = Span::new(start, end);
        if lo < hi {
            merged.start = merged.start.min(self.spans[lo].start);
            merged.end = merged.end.max(self.spans[hi - 1].end);
        }
        self.spans.splice(lo..hi, std::iter::once(merged));
    }

    /// Adds every piece of `other`: one merge pass over both sorted lists when it has several
    /// (a batch of recorded spans, or a file's wanted ranges), rather than a splice per piece.
    pub fn insert_set(&mut self, other: &RangeSet) {
        if other.spans.len() <= 1 {
            other.spans.iter().for_each(|s| self.insert(s.start, s.end));
            return;
        }
        *self = self.union(other);
    }

    /// The bytes in either set: one merge pass over both sorted lists, leaving `self` as it is
    /// (so a caller can check the result before keeping it).
    pub fn union(&self, other: &RangeSet) -> RangeSet {
        let (a, b) = (&self.spans, &other.spans);
        let mut out: Vec<Span> = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let next = if j == b.len() || (i < a.len() && a[i].start <= b[j].start) {
                i += 1;
                a[i - 1]
            } else {
                j += 1;
                b[j - 1]
            };
            match out.last_mut() {
                Some(last) if next.start <= last.end => last.end = last.end.max(next.end),
                _ => out.push(next),
            }
        }
        RangeSet { spans: out }
    }

    /// Removes `[start, end)`.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let lo = self.spans.partition_point(|s| s.end <= start);
        let hi = self.spans.partition_point(|s| s.start < end);
        if lo >= hi {
            return;
        }
        let mut keep = Vec::with_capacity(2);
        let first = self.spans[lo];
        let last = self.spans[hi - 1];
        if first.start < start {
            keep.push(Span::new(first.start, start));
        }
        if last.end > end {
            keep.push(Span::new(end, last.end));
        }
        self.spans.splice(lo..hi, keep);
    }

    /// `self` minus `other`: one merge pass over both sorted lists (a file added with hundreds of
    /// ranges has this computed for every progress report).
    pub fn subtract(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::with_capacity(self.spans.len());
        let mut j = 0;
        for span in &self.spans {
            let mut start = span.start;
            // Pieces of `other` that end before this span are behind us for good.
            while j < other.spans.len() && other.spans[j].end <= start {
                j += 1;
            }
            let mut k = j;
            while k < other.spans.len() && other.spans[k].start < span.end {
                let cut = other.spans[k];
                if cut.start > start {
                    out.push(Span::new(start, cut.start));
                }
                start = start.max(cut.end);
                k += 1;
            }
            if start < span.end {
                out.push(Span::new(start, span.end));
            }
        }
        RangeSet { spans: out }
    }

    /// The bytes in both sets (one merge pass).
    pub fn intersect(&self, other: &RangeSet) -> RangeSet {
        let (mut i, mut j, mut out) = (0, 0, Vec::new());
        while i < self.spans.len() && j < other.spans.len() {
            let (a, b) = (self.spans[i], other.spans[j]);
            let (start, end) = (a.start.max(b.start), a.end.min(b.end));
            if start < end {
                out.push(Span::new(start, end));
            }
            if a.end <= b.end { i += 1 } else { j += 1 }
        }
        RangeSet { spans: out }
    }

    /// The union of `spans`, given in any order: sorted once and merged, instead of one
    /// [`RangeSet::insert`] (a splice into the middle) per span.
    pub fn from_spans(spans: impl IntoIterator<Item = Span>) -> RangeSet {
        let mut sorted: Vec<Span> = spans.into_iter().filter(|s| s.start < s.end).collect();
        sorted.sort_unstable_by_key(|s| s.start);
        let mut out: Vec<Span> = Vec::with_capacity(sorted.len());
        for span in sorted {
            match out.last_mut() {
                Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
                _ => out.push(span),
            }
        }
        RangeSet { spans: out }
    }

    /// The parts of `self` inside `[start, end)`.
    pub fn intersect_span(&self, start: u64, end: u64) -> RangeSet {
        let mut out = RangeSet::new();
        if start >= end {
            return out;
        }
        let lo = self.spans.partition_point(|s| s.end <= start);
        for span in &self.spans[lo..] {
            if span.start >= end {
                break;
            }
            out.spans.push(Span::new(span.start.max(start), span.end.min(end)));
        }
        out
    }

    /// The bytes of `[start, end)` that are not in the set: what is still missing within a bound.
    pub fn missing_within(&self, start: u64, end: u64) -> RangeSet {
        RangeSet::from_span(start, end).subtract(self)
    }

    /// Whether byte `offset` is in the set.
    pub fn contains(&self, offset: u64) -> bool {
        let i = self.spans.partition_point(|s| s.end <= offset);
        self.spans.get(i).is_some_and(|s| s.start <= offset)
    }

    /// Whether all of `[start, end)` is in the set (an empty span is always contained).
    pub fn contains_span(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let i = self.spans.partition_point(|s| s.end <= start);
        self.spans.get(i).is_some_and(|s| s.start <= start && end <= s.end)
    }

    /// The first piece starting at or after `offset`, or the piece containing it (clipped to start at
    /// `offset`). Lets a worker continue from a download position.
    pub fn first_from(&self, offset: u64) -> Option<Span> {
        let i = self.spans.partition_point(|s| s.end <= offset);
        self.spans.get(i).map(|s| Span::new(s.start.max(offset), s.end))
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, span) in self.spans.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{span}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn spans(set: &RangeSet) -> Vec<(u64, u64)> {
        set.iter().map(|s| (s.start, s.end)).collect()
    }

    #[test]
    fn insert_merges_touching_and_overlapping() {
        let mut set = RangeSet::new();
        set.insert(10, 20);
        set.insert(30, 40);
        assert_eq!(spans(&set), [(10, 20), (30, 40)]);
        set.insert(20, 30);
        assert_eq!(spans(&set), [(10, 40)]);
        set.insert(5, 12);
        set.insert(39, 50);
        assert_eq!(spans(&set), [(5, 50)]);
        set.insert(60, 60);
        assert_eq!(spans(&set), [(5, 50)]);
    }

    #[test]
    fn remove_splits_a_piece() {
        let mut set = RangeSet::from_span(0, 100);
        set.remove(10, 20);
        assert_eq!(spans(&set), [(0, 10), (20, 100)]);
        set.remove(0, 10);
        set.remove(90, 200);
        assert_eq!(spans(&set), [(20, 90)]);
    }

    #[test]
    fn missing_within_a_bound() {
        let mut filled = RangeSet::new();
        filled.insert(0, 10);
        filled.insert(20, 30);
        assert_eq!(spans(&filled.missing_within(0, 40)), [(10, 20), (30, 40)]);
        assert_eq!(spans(&filled.missing_within(5, 25)), [(10, 20)]);
        assert!(filled.missing_within(0, 10).is_empty());
    }

    #[test]
    fn serde_round_trip_normalises() {
        let set: RangeSet =
            serde_json_like(vec![Span::new(5, 10), Span::new(0, 5), Span::new(20, 20)]);
        assert_eq!(spans(&set), [(0, 10)]);
    }

    fn serde_json_like(raw: Vec<Span>) -> RangeSet {
        RangeSet::from(raw)
    }

    /// The model: a plain set of byte offsets over a small domain.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        (0u64..64, 0u64..64, any::<bool>()).prop_map(|(a, b, ins)| {
            let (s, e) = if a <= b { (a, b) } else { (b, a) };
            if ins { Op::Insert(s, e) } else { Op::Remove(s, e) }
        })
    }

    fn model_spans(model: &BTreeSet<u64>) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &b in model {
            match out.last_mut() {
                Some(last) if last.1 == b => last.1 = b + 1,
                _ => out.push((b, b + 1)),
            }
        }
        out
    }

    proptest! {
        #[test]
        fn behaves_like_a_set_of_offsets(ops in proptest::collection::vec(op(), 0..40),
                                         q in 0u64..70, bound in (0u64..70, 0u64..70)) {
            let mut set = RangeSet::new();
            let mut model = BTreeSet::new();
            for op in &ops {
                match *op {
                    Op::Insert(s, e) => { set.insert(s, e); model.extend(s..e); }
                    Op::Remove(s, e) => { set.remove(s, e); for b in s..e { model.remove(&b); } }
                }
            }
            prop_assert_eq!(spans(&set), model_spans(&model));
            prop_assert_eq!(set.total_len(), model.len() as u64);
            prop_assert_eq!(set.contains(q), model.contains(&q));
            let (lo, hi) = if bound.0 <= bound.1 { bound } else { (bound.1, bound.0) };
            let missing: BTreeSet<u64> = (lo..hi).filter(|b| !model.contains(b)).collect();
            prop_assert_eq!(spans(&set.missing_within(lo, hi)), model_spans(&missing));
            let inside: BTreeSet<u64> = (lo..hi).filter(|b| model.contains(b)).collect();
            prop_assert_eq!(spans(&set.intersect_span(lo, hi)), model_spans(&inside));
            prop_assert_eq!(set.len_within(lo, hi), inside.len() as u64);
            prop_assert_eq!(set.contains_span(lo, hi), (lo..hi).all(|b| model.contains(&b)));
            // Ordered iteration: strictly increasing, never touching.
            for w in set.iter().collect::<Vec<_>>().windows(2) {
                prop_assert!(w[0].end < w[1].start);
            }
        }

        #[test]
        fn subtract_matches_set_difference(a in proptest::collection::vec(op(), 0..20),
                                           b in proptest::collection::vec(op(), 0..20)) {
            let build = |ops: &[Op]| {
                let mut set = RangeSet::new();
                let mut model = BTreeSet::new();
                for op in ops {
                    let (Op::Insert(s, e) | Op::Remove(s, e)) = *op;
                    set.insert(s, e);
                    model.extend(s..e);
                }
                (set, model)
            };
            let (sa, ma) = build(&a);
            let (sb, mb) = build(&b);
            let diff: BTreeSet<u64> = ma.difference(&mb).copied().collect();
            prop_assert_eq!(spans(&sa.subtract(&sb)), model_spans(&diff));
            let both: BTreeSet<u64> = ma.intersection(&mb).copied().collect();
            prop_assert_eq!(spans(&sa.intersect(&sb)), model_spans(&both));
            let union: BTreeSet<u64> = ma.union(&mb).copied().collect();
            let pieces = sa.iter().chain(sb.iter()).collect::<Vec<_>>();
            prop_assert_eq!(spans(&RangeSet::from_spans(pieces.into_iter().rev())), model_spans(&union));
            let mut merged = sa.clone();
            merged.insert_set(&sb);
            prop_assert_eq!(spans(&merged), model_spans(&union));
            prop_assert_eq!(spans(&sa.union(&sb)), model_spans(&union));
        }
    }
}
