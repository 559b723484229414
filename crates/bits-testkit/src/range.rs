//! The one `Range: bytes=` parser (RFC 9110 §14.1.2) of the test servers, so that every server
//! answers the same header the same way and a quirk is fixed once.

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Not a `bytes` range we understand: answer 200 with the whole file, as the RFC allows.
    Ignore,
    /// No listed range overlaps the representation: 416.
    Unsatisfiable,
    /// The satisfiable spans, `[start, end)` each, in the order asked.
    Spans(Vec<(u64, u64)>),
}

impl RangeAnswer {
    /// The only span of a single-range answer; `None` for a multi-range one.
    pub fn single(&self) -> Option<(u64, u64)> {
        match self {
            RangeAnswer::Spans(spans) if spans.len() == 1 => Some(spans[0]),
            _ => None,
        }
    }
}

/// Parses every range of `value`. A syntax error anywhere ignores the whole header; ranges that
/// start past the end are dropped, and with none left the answer is [`RangeAnswer::Unsatisfiable`].
pub fn parse(value: &str, size: u64) -> RangeAnswer {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return RangeAnswer::Ignore };
    let mut spans = Vec::new();
    for one in spec.split(',') {
        match parse_one(one, size) {
            One::Syntax => return RangeAnswer::Ignore,
            One::Unsatisfiable => {}
            One::Span(start, end) => spans.push((start, end)),
        }
    }
    if spans.is_empty() { RangeAnswer::Unsatisfiable } else { RangeAnswer::Spans(spans) }
}

/// Parses a header the way the single-range servers answer it: a multi-range request gets the
/// whole file ([`RangeAnswer::Ignore`]).
pub fn parse_single(value: &str, size: u64) -> RangeAnswer {
    if value.contains(',') {
        return RangeAnswer::Ignore;
    }
    parse(value, size)
}

enum One {
    Syntax,
    Unsatisfiable,
    Span(u64, u64),
}

fn parse_one(spec: &str, size: u64) -> One {
    let Some((first, last)) = spec.trim().split_once('-') else { return One::Syntax };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        return match last.parse::<u64>() {
            Ok(n) if n > 0 && size > 0 => One::Span(size.saturating_sub(n), size),
            Ok(_) => One::Unsatisfiable,
            Err(_) => One::Syntax,
        };
    }
    let Ok(start) = first.parse::<u64>() else { return One::Syntax };
    let end = if last.is_empty() {
        size
    } else {
        match last.parse::<u64>() {
            Ok(last) if last >= start => last.saturating_add(1).min(size),
            _ => return One::Syntax,
        }
    };
    if start >= size {
        return One::Unsatisfiable;
    }
    One::Span(start, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::*;

    #[test]
    fn single_ranges() {
        assert_eq!(parse_single("bytes=0-99", 1000), Spans(vec![(0, 100)]));
        assert_eq!(parse_single("bytes=900-", 1000), Spans(vec![(900, 1000)]));
        assert_eq!(parse_single("bytes=900-5000", 1000), Spans(vec![(900, 1000)]));
        assert_eq!(parse_single("bytes=-10", 1000), Spans(vec![(990, 1000)]));
        assert_eq!(parse_single("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_single("bytes=-10", 0), Unsatisfiable);
        assert_eq!(parse_single("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_single("bytes=0-1,5-6", 1000), Ignore);
        assert_eq!(parse_single("bytes=5-1", 1000), Ignore);
        assert_eq!(parse_single("items=0-1", 1000), Ignore);
        assert_eq!(parse_single("bytes=x-1", 1000), Ignore);
    }

    #[test]
    fn multiple_ranges() {
        assert_eq!(
            parse("bytes=0-1, 5-6,990-2000", 1000),
            Spans(vec![(0, 2), (5, 7), (990, 1000)])
        );
        assert_eq!(parse("bytes=0-1,2000-3000", 1000), Spans(vec![(0, 2)]));
        assert_eq!(parse("bytes=2000-3000,5000-", 1000), Unsatisfiable);
        assert_eq!(parse("bytes=0-1,5-x", 1000), Ignore);
        assert_eq!(parse("bytes=0-1", 1000).single(), Some((0, 2)));
        assert_eq!(parse("bytes=0-1,3-4", 1000).single(), None);
    }
}
