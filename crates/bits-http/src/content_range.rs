//! A strict parser for the `Content-Range` response header (RFC 9110 §14.4). A 206 is only trusted
//! when this header says exactly which bytes the body holds; a lenient parser could let a wrong
//! body land at the wrong file offset, so anything unusual is rejected here.

use std::fmt;

/// A parsed `Content-Range` value in the `bytes` unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes first-last/complete` (or `/*` when the total is unknown); `last` is inclusive.
    Satisfied { first: u64, last: u64, complete: Option<u64> },
    /// `bytes */complete`, sent with 416.
    Unsatisfied { complete: u64 },
}

/// Why a header was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ContentRange {
    /// Parses one header value. Only the `bytes` unit (case-insensitive) is accepted, with exactly
    /// one space after it, decimal digits without sign, and `first <= last < complete`.
    pub fn parse(value: &str) -> Result<ContentRange, ParseError> {
        let err = |why: &str| ParseError(format!("bad Content-Range {value:?}: {why}"));
        let (unit, rest) = value.split_once(' ').ok_or_else(|| err("no unit"))?;
        if !unit.eq_ignore_ascii_case("bytes") {
            return Err(err("unit is not bytes"));
        }
        let (range, complete) = rest.split_once('/').ok_or_else(|| err("no '/'"))?;
        let complete = if complete == "*" {
            None
        } else {
            Some(parse_digits(complete).ok_or_else(|| err("bad complete length"))?)
        };
        if range == "*" {
            return match complete {
                Some(complete) => Ok(ContentRange::Unsatisfied { complete }),
                None => Err(err("both range and length are '*'")),
            };
        }
        let (first, last) = range.split_once('-').ok_or_else(|| err("no '-' in range"))?;
        let first = parse_digits(first).ok_or_else(|| err("bad first byte position"))?;
        let last = parse_digits(last).ok_or_else(|| err("bad last byte position"))?;
        if first > last {
            return Err(err("first position after last"));
        }
        if let Some(complete) = complete
            && last >= complete
        {
            return Err(err("last position not below complete length"));
        }
        Ok(ContentRange::Satisfied { first, last, complete })
    }
}

impl fmt::Display for ContentRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ContentRange::Satisfied { first, last, complete: Some(c) } => {
                write!(f, "bytes {first}-{last}/{c}")
            }
            ContentRange::Satisfied { first, last, complete: None } => {
                write!(f, "bytes {first}-{last}/*")
            }
            ContentRange::Unsatisfied { complete } => write!(f, "bytes */{complete}"),
        }
    }
}

/// `1*DIGIT` as a u64; `None` on anything else or on overflow.
pub(crate) fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sat(first: u64, last: u64, complete: Option<u64>) -> ContentRange {
        ContentRange::Satisfied { first, last, complete }
    }

    #[test]
    fn accepts_the_valid_forms() {
        assert_eq!(ContentRange::parse("bytes 0-499/1234"), Ok(sat(0, 499, Some(1234))));
        assert_eq!(ContentRange::parse("bytes 10-10/11"), Ok(sat(10, 10, Some(11))));
        assert_eq!(ContentRange::parse("BYTES 1-2/*"), Ok(sat(1, 2, None)));
        assert_eq!(ContentRange::parse("bytes */0"), Ok(ContentRange::Unsatisfied { complete: 0 }));
        assert_eq!(
            ContentRange::parse("bytes 0-18446744073709551614/18446744073709551615"),
            Ok(sat(0, u64::MAX - 1, Some(u64::MAX)))
        );
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "bytes",
            "bytes ",
            "bytes 0-1",
            "bytes=0-1/2",
            "items 0-1/2",
            "bytes  0-1/2",
            "bytes 0 -1/2",
            "bytes 0-1 /2",
            "bytes 0-1/ 2",
            "bytes -1/2",
            "bytes 0-/2",
            "bytes +0-1/2",
            "bytes 0-+1/2",
            "bytes 0x0-1/2",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes 0-1/2/3",
            "bytes 0-1-2/3",
            "bytes */*",
            "bytes 0-1/18446744073709551616",
            "bytes 0-1,3-4/10",
            "bytes 0-1/2 ",
            " bytes 0-1/2",
        ] {
            assert!(ContentRange::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    fn any_range() -> impl Strategy<Value = ContentRange> {
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c)| {
                let mut v = [a, b, c];
                v.sort_unstable();
                let [first, last, complete] = v;
                if last == complete {
                    sat(first, last, None)
                } else {
                    sat(first, last, Some(complete))
                }
            }),
            any::<u64>().prop_map(|complete| ContentRange::Unsatisfied { complete }),
        ]
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(range in any_range()) {
            prop_assert_eq!(ContentRange::parse(&range.to_string()), Ok(range));
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = ContentRange::parse(&s);
        }

        /// Strings assembled from the header's own pieces (and near misses) are accepted exactly
        /// when an independent model of the grammar and the ordering rules says so.
        #[test]
        fn grammar_strings_match_a_model(
            unit in prop_oneof![Just("bytes"), Just("BYTES"), Just("Bytes"), Just("byte"), Just("")],
            sep in prop_oneof![Just(" "), Just("  "), Just(""), Just("\t")],
            range in prop_oneof![
                Just("*".to_string()),
                ("[0-9]{0,21}", "[0-9+ ]{0,1}[0-9]{0,21}").prop_map(|(a, b)| format!("{a}-{b}")),
                "[0-9]{1,3}".prop_map(|a| format!("{a}-{a}")),
            ],
            complete in prop_oneof![Just("*".to_string()), "[0-9]{0,21}", "[0-9]{1,3}"],
        ) {
            let text = format!("{unit}{sep}{range}/{complete}");
            let num = |s: &str| {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                s.parse::<u128>().ok().and_then(|v| u64::try_from(v).ok())
            };
            let model = (|| {
                if !unit.eq_ignore_ascii_case("bytes") || sep != " " {
                    return None;
                }
                let total = if complete == "*" { None } else { Some(num(&complete)?) };
                if range == "*" {
                    return total.map(|complete| ContentRange::Unsatisfied { complete });
                }
                let (a, b) = range.split_once('-')?;
                let (first, last) = (num(a)?, num(b)?);
                if first > last || total.is_some_and(|c| last >= c) {
                    return None;
                }
                Some(sat(first, last, total))
            })();
            prop_assert_eq!(ContentRange::parse(&text).ok(), model, "{:?}", text);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(range) = ContentRange::parse(&text) {
                prop_assert_eq!(ContentRange::parse(&range.to_string()), Ok(range));
            }
        }
    }
}
