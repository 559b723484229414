//! Every answer the server gives, as a [`Plan`]: the correct one for a file (validators,
//! `If-Range`, one range or several), and each fault as a change to it.

use bytes::Bytes;
use http::{Method, header};

use super::{CutEnd, Fault, FaultFile, HTML_PAGE, Options, PartCut, Parts};
use crate::range::{self, RangeAnswer};

/// The boundary of multipart answers (nginx's style: 20 digits).
const BOUNDARY: &str = "00000000000000000007";

/// What one request asked for.
pub(super) struct Asked<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

/// How a body ends once its bytes (up to the limit) are out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    Complete,
    Cut(CutEnd),
}

/// Everything about one answer.
pub(super) struct Plan {
    pub status: u16,
    pub headers: Vec<(header::HeaderName, String)>,
    /// The body that would be sent in full.
    pub data: Bytes,
    /// First remote offset of `data` (for the log).
    pub start: u64,
    /// `Content-Length` to announce; `None`: chunked.
    pub content_length: Option<u64>,
    /// Bytes of `data` actually sent before `ending` (all of them for `Complete`).
    pub limit: u64,
    pub ending: Ending,
}

impl Plan {
    fn new(status: u16, headers: Vec<(header::HeaderName, String)>, data: Bytes) -> Plan {
        let len = data.len() as u64;
        Plan {
            status,
            headers,
            data,
            start: 0,
            content_length: Some(len),
            limit: len,
            ending: Ending::Complete,
        }
    }

    fn simple(status: u16, body: &str) -> Plan {
        let headers = vec![(header::CONTENT_TYPE, "text/plain".to_string())];
        Plan::new(status, headers, Bytes::copy_from_slice(body.as_bytes()))
    }

    fn header(mut self, name: header::HeaderName, value: impl Into<String>) -> Plan {
        self.headers.push((name, value.into()));
        self
    }

    /// Sends `after` bytes, then ends with `end` (unless that is the whole body anyway).
    fn cut(mut self, after: u64, end: CutEnd) -> Plan {
        if after < self.data.len() as u64 {
            self.limit = after;
            self.ending = Ending::Cut(end);
            if end == CutEnd::End {
                self.content_length = None;
            }
        }
        self
    }

    /// The same answer without `Content-Length`.
    fn chunked(mut self) -> Plan {
        self.content_length = None;
        self
    }
}

/// What a request's `Range` comes to for a file.
enum Chosen {
    Whole,
    Bad,
    Unsatisfiable,
    One(u64, u64),
    Many(Vec<(u64, u64)>),
}

fn choose(file: &FaultFile, asked: &Asked, options: &Options) -> Chosen {
    let size = file.data.len() as u64;
    let last_modified = file.last_modified_text();
    // A stale If-Range means "send me the whole new file" (RFC 9110 §13.1.5).
    let validator_ok = asked
        .if_range
        .is_none_or(|v| file.etag.as_deref() == Some(v) || last_modified.as_deref() == Some(v));
    let Some(value) = asked.range.filter(|_| validator_ok) else { return Chosen::Whole };
    let answer = if options.multi_range {
        range::parse(value, size)
    } else {
        range::parse_single(value, size)
    };
    match answer {
        RangeAnswer::Ignore if options.strict_ranges => Chosen::Bad,
        RangeAnswer::Ignore => Chosen::Whole,
        RangeAnswer::Unsatisfiable => Chosen::Unsatisfiable,
        RangeAnswer::Spans(spans) if spans.len() == 1 => Chosen::One(spans[0].0, spans[0].1),
        RangeAnswer::Spans(spans) => Chosen::Many(spans),
    }
}

/// The headers every answer about `file` carries.
fn file_headers(file: &FaultFile) -> Vec<(header::HeaderName, String)> {
    let mut headers = vec![
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
    ];
    if let Some(etag) = &file.etag {
        headers.push((header::ETAG, etag.clone()));
    }
    if let Some(lm) = file.last_modified_text() {
        headers.push((header::LAST_MODIFIED, lm));
    }
    headers
}

fn whole(file: &FaultFile) -> Plan {
    Plan::new(200, file_headers(file), file.data.clone())
}

/// A plain `206` for `[start, end)`, labelled `[label_start, label_end)` of `total`.
fn partial(file: &FaultFile, (start, end): (u64, u64), label: (u64, u64), total: u64) -> Plan {
    let mut plan =
        Plan::new(206, file_headers(file), file.data.slice(start as usize..end as usize));
    plan.start = start;
    plan.header(header::CONTENT_RANGE, format!("bytes {}-{}/{total}", label.0, label.1 - 1))
}

fn one(file: &FaultFile, span: (u64, u64)) -> Plan {
    partial(file, span, span, file.data.len() as u64)
}

/// A `multipart/byteranges` 206 with `spans` as its parts (in that order), broken as `parts`
/// says, and cut where `cut` says (the full length is announced either way).
fn multipart(
    file: &FaultFile,
    mut spans: Vec<(u64, u64)>,
    parts: Option<Parts>,
    cut: Option<(PartCut, CutEnd)>,
) -> Plan {
    match parts {
        Some(Parts::Reversed) => spans.reverse(),
        Some(Parts::CoalesceFirstTwo) => {
            let merged = (spans[0].0, spans[1].1);
            spans.splice(0..2, [merged]);
        }
        Some(Parts::FirstTwice) => spans.insert(1, spans[0]),
        Some(Parts::LastMissing) => {
            spans.pop();
        }
        _ => {}
    }
    let size = file.data.len() as u64;
    let total = if parts == Some(Parts::WrongTotal) { size + 1 } else { size };
    let eol = if parts == Some(Parts::BareLf) { "\n" } else { "\r\n" };
    let mut body = Vec::new();
    let mut cut_at = None;
    for (i, &(start, end)) in spans.iter().enumerate() {
        if cut.is_some_and(|(at, _)| at == PartCut::Before(i)) {
            cut_at = Some(body.len());
        }
        body.extend_from_slice(format!("\r\n--{BOUNDARY}\r\n").as_bytes());
        body.extend_from_slice(format!("Content-Type: application/octet-stream{eol}").as_bytes());
        body.extend_from_slice(
            format!("Content-Range: bytes {start}-{}/{total}{eol}{eol}", end - 1).as_bytes(),
        );
        if cut.is_some_and(|(at, _)| at == PartCut::Inside(i)) {
            cut_at = Some(body.len() + ((end - start) / 2) as usize);
        }
        body.extend_from_slice(&file.data[start as usize..end as usize]);
    }
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let mut headers = file_headers(file);
    headers.retain(|(name, _)| name != header::CONTENT_TYPE);
    headers.push((header::CONTENT_TYPE, format!("multipart/byteranges; boundary={BOUNDARY}")));
    let plan = Plan::new(206, headers, Bytes::from(body));
    match (cut, cut_at) {
        (Some((_, end)), Some(at)) => plan.cut(at as u64, end),
        _ => plan,
    }
}

/// The correct answer for `file`, and what the `Range` came to.
fn correct(file: &FaultFile, asked: &Asked, options: &Options) -> (Plan, Chosen) {
    let chosen = choose(file, asked, options);
    let size = file.data.len() as u64;
    let plan = match &chosen {
        Chosen::Whole => whole(file),
        Chosen::Bad => Plan::simple(400, "bad range\n"),
        Chosen::Unsatisfiable => {
            let mut plan = Plan::new(416, file_headers(file), Bytes::new());
            plan.headers.push((header::CONTENT_RANGE, format!("bytes */{size}")));
            plan
        }
        Chosen::One(start, end) => one(file, (*start, *end)),
        Chosen::Many(spans) => multipart(file, spans.clone(), None, None),
    };
    (plan, chosen)
}

/// The answer to `asked`: `fault` applied to the correct answer about `file`.
pub(super) fn plan(
    fault: Option<&Fault>,
    file: Option<&FaultFile>,
    asked: &Asked,
    options: &Options,
) -> Plan {
    // Faults that need no file.
    match fault {
        Some(Fault::Status(status)) => {
            let plan = Plan::simple(*status, &format!("error {status}\n"));
            return match file {
                Some(f) if *status == 416 => {
                    plan.header(header::CONTENT_RANGE, format!("bytes */{}", f.data.len()))
                }
                _ => plan,
            };
        }
        Some(Fault::StatusRetryAfter(status, secs)) => {
            return Plan::simple(*status, &format!("error {status}, retry after {secs} s\n"))
                .header(header::RETRY_AFTER, secs.to_string());
        }
        Some(Fault::RedirectLoop) => {
            return Plan::simple(302, "moved\n").header(header::LOCATION, asked.path);
        }
        Some(Fault::RedirectTo(location)) => {
            return Plan::simple(302, "moved\n").header(header::LOCATION, location.clone());
        }
        Some(Fault::Redirect(status, location)) => {
            return Plan::simple(*status, "moved\n").header(header::LOCATION, location.clone());
        }
        Some(Fault::HtmlPage { chunked }) => {
            let mut plan = Plan::simple(200, HTML_PAGE);
            plan.headers = vec![(header::CONTENT_TYPE, "text/html; charset=utf-8".to_string())];
            return if *chunked { plan.chunked() } else { plan };
        }
        _ => {}
    }
    let Some(file) = file else { return Plan::new(404, Vec::new(), Bytes::new()) };
    if asked.method != Method::GET && asked.method != Method::HEAD {
        return Plan::new(405, vec![(header::ALLOW, "GET, HEAD".to_string())], Bytes::new());
    }
    let size = file.data.len() as u64;
    let (good, chosen) = correct(file, asked, options);
    let Some(fault) = fault else { return good };
    match (fault, chosen) {
        (Fault::ResetAfter(n), _) => good.cut(*n, CutEnd::Reset),
        (Fault::StallBody { after, stall }, _) => good.cut(*after, CutEnd::Stall(*stall)),
        (Fault::ShortBody(n), _) => good.cut(*n, CutEnd::Close).header(header::CONNECTION, "close"),
        (Fault::WrongContentRange, chosen) => {
            let (start, end) = if let Chosen::One(s, e) = chosen { (s, e) } else { (0, size) };
            one(file, (start, end.saturating_sub(1).max(start + 1)))
        }
        (Fault::ShiftedContentRange, Chosen::One(start, end)) => {
            partial(file, (start, end), (start + 1, end + 1), size)
        }
        (Fault::IgnoreRange, _) => whole(file),
        (Fault::GzipLabel, _) => good.header(header::CONTENT_ENCODING, "gzip"),
        (Fault::GzipBody, chosen) => {
            let (mut plan, (start, end)) = match chosen {
                Chosen::One(s, e) => (one(file, (s, e)), (s, e)),
                _ => (whole(file), (0, size)),
            };
            plan.headers.push((header::CONTENT_ENCODING, "gzip".to_string()));
            plan.data = Bytes::from(gzip_stored(&file.data[start as usize..end as usize]));
            plan.start = 0;
            plan.limit = plan.data.len() as u64;
            plan.chunked()
        }
        (Fault::NoLength, _) => good.chunked(),
        (Fault::ExtraBytes(n), _) => {
            let mut longer = good.data.to_vec();
            longer.resize(longer.len() + *n as usize, 0);
            let mut plan = good.chunked();
            plan.data = Bytes::from(longer);
            plan.limit = plan.data.len() as u64;
            plan
        }
        (Fault::FirstRangeOnly, Chosen::Many(spans)) => one(file, spans[0]),
        (Fault::RangesHull, Chosen::Many(spans)) => {
            one(file, (spans[0].0, spans[spans.len() - 1].1))
        }
        (Fault::Parts(parts), Chosen::Many(spans)) => multipart(file, spans, Some(*parts), None),
        (Fault::CutParts { at, end }, Chosen::Many(spans)) => {
            multipart(file, spans, None, Some((*at, *end)))
        }
        (Fault::Status(_), _)
        | (Fault::StatusRetryAfter(..), _)
        | (Fault::RedirectLoop, _)
        | (Fault::RedirectTo(_), _)
        | (Fault::Redirect(..), _)
        | (Fault::HtmlPage { .. }, _) => unreachable!("answered above"),
        // The rest leave the answer alone: Replace and StallHeaders act before it; the range
        // faults have nothing to change in an answer to fewer ranges than they need.
        _ => good,
    }
}

/// `data` as a gzip member of stored (uncompressed) deflate blocks: valid gzip, no dependency.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE), bitwise.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_valid_framing() {
        let gz = gzip_stored(b"123456789");
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(gz.len(), 10 + 5 + 9 + 8);
        // CRC-32 of "123456789" is the standard check value.
        assert_eq!(&gz[gz.len() - 8..gz.len() - 4], &0xCBF4_3926u32.to_le_bytes());
    }
}
