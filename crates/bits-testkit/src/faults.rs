//! A fault-injecting HTTP/1.1 server (hyper 1.x, in process) for the hostile-server tests.
//!
//! By default it serves named in-memory files correctly: `HEAD`, single `Range` requests (`206` +
//! `Content-Range`, `416` when unsatisfiable), `If-Range` (a stale validator gets the whole file
//! with `200`), `ETag` and `Last-Modified` (each optional). Faults are scripted per path: a rule
//! is a [`Fault`], an optional method it applies to, and how often it fires (once, or until
//! [`FaultServer::clear_faults`]). A request takes the first rule of its path that matches its
//! method; with none left it is served normally.
//!
//! Every request is logged ([`Logged`]): arrival time, method, path, `Range`, `If-Range`,
//! `Authorization`, `Cookie`, the status sent, the fault applied and the body bytes handed to
//! hyper for the socket.
//!
//! Connection-level faults are real: a reset closes the socket with `SO_LINGER` 0 (the peer sees
//! `ECONNRESET`), a stall keeps the socket open and silent, a short body ends with a clean FIN.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use crate::range::{self, RangeAnswer};

/// Largest body frame handed to hyper.
const CHUNK: usize = 16 * 1024;

/// How long a body waits, after its last byte before a connection fault, so that hyper has
/// flushed those bytes to the socket.
const FLUSH_PAUSE: Duration = Duration::from_millis(150);

/// The HTML "error page" of [`Fault::HtmlPage`].
pub const HTML_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Service unavailable</title></head>\
    <body><h1>Oops</h1><p>Please log in to the network to continue.</p></body></html>\n";

/// One version of a served file.
#[derive(Clone, Debug)]
pub struct FaultFile {
    pub data: Bytes,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

impl FaultFile {
    /// `data` with a content-derived strong ETag and [`crate::server::DEFAULT_LAST_MODIFIED`].
    pub fn new(data: impl Into<Bytes>) -> FaultFile {
        let data = data.into();
        let etag = format!("\"{}\"", &crate::data::sha256_hex(&data)[..16]);
        let last_modified =
            SystemTime::UNIX_EPOCH + Duration::from_secs(crate::server::DEFAULT_LAST_MODIFIED);
        FaultFile { data, etag: Some(etag), last_modified: Some(last_modified) }
    }

    fn last_modified_text(&self) -> Option<String> {
        self.last_modified.map(httpdate::fmt_http_date)
    }
}

/// What the server does to one request instead of (or on top of) serving it correctly.
#[derive(Clone, Debug)]
pub enum Fault {
    /// The correct answer, but the connection is reset (RST) after this many body bytes.
    ResetAfter(u64),
    /// Nothing at all (not even the status line) for this long, socket open; then the
    /// connection is dropped.
    StallHeaders(Duration),
    /// The correct head and `after` body bytes, then silence for `stall` with the socket open;
    /// then the connection is dropped.
    StallBody { after: u64, stall: Duration },
    /// The correct head (full `Content-Length`) and this many body bytes, then a clean close (FIN).
    ShortBody(u64),
    /// A consistent `206` for another span than the one asked for (one byte short at the end).
    WrongContentRange,
    /// `200` with the whole file (same validators) whatever the `Range`.
    IgnoreRange,
    /// This status with a small text body (`416` also gets `Content-Range: bytes */SIZE`).
    Status(u16),
    /// This status with `Retry-After: SECS`.
    StatusRetryAfter(u16, u64),
    /// `302` to the request's own path.
    RedirectLoop,
    /// `302` to this `Location` (absolute, or relative to the request).
    RedirectTo(String),
    /// The correct `206`, labelled `Content-Encoding: gzip` (bytes unchanged).
    GzipLabel,
    /// A `206` for the asked span whose body really is gzip (stored deflate blocks), chunked.
    GzipBody,
    /// `200 text/html` with [`HTML_PAGE`], no validators; `chunked`: without `Content-Length`.
    HtmlPage { chunked: bool },
    /// Replaces the file with this version, then answers correctly.
    Replace(FaultFile),
}

impl Fault {
    fn label(&self) -> String {
        match self {
            Fault::Replace(_) => "Replace".to_string(),
            other => format!("{other:?}"),
        }
    }
}

/// One request as the server saw and answered it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub seq: usize,
    /// Arrival (before any stall).
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub authorization: Option<String>,
    pub cookie: Option<String>,
    /// The status sent (0 if the connection failed before a status line).
    pub status: u16,
    /// The fault applied, as a label (`None`: served correctly).
    pub fault: Option<String>,
    /// First remote offset of the body (0 for faults whose body is not file bytes).
    pub start: u64,
    /// Body bytes handed to hyper for the socket.
    pub sent: u64,
}

impl Logged {
    /// The offset a `Range: bytes=N-...` asked for.
    pub fn range_start(&self) -> Option<u64> {
        let spec = self.range.as_deref()?.trim().strip_prefix("bytes=")?;
        spec.split('-').next()?.trim().parse().ok()
    }
}

struct LogEntry {
    head: Mutex<Logged>,
    sent: AtomicU64,
}

impl LogEntry {
    fn snapshot(&self) -> Logged {
        let mut logged = self.head.lock().unwrap().clone();
        logged.sent = self.sent.load(Ordering::SeqCst);
        logged
    }
}

struct Rule {
    fault: Fault,
    method: Option<Method>,
    /// Fires once, or until cleared.
    once: bool,
}

#[derive(Default)]
struct State {
    files: Mutex<HashMap<String, FaultFile>>,
    rules: Mutex<HashMap<String, VecDeque<Rule>>>,
    log: Mutex<Vec<Arc<LogEntry>>>,
}

impl State {
    fn take_fault(&self, path: &str, method: &Method) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let queue = rules.get_mut(path)?;
        let pos = queue.iter().position(|r| r.method.as_ref().is_none_or(|m| m == method))?;
        if queue[pos].once {
            queue.remove(pos).map(|r| r.fault)
        } else {
            Some(queue[pos].fault.clone())
        }
    }
}

/// The server; dropping it stops accepting and aborts every open connection.
pub struct FaultServer {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

fn path_of(name: &str) -> String {
    format!("/{}", name.trim_start_matches('/'))
}

impl FaultServer {
    /// Binds 127.0.0.1 on a free port and starts serving on the current tokio runtime.
    pub async fn start() -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        FaultServer { addr, state, accept }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}{}", self.addr, path_of(name))
    }

    /// Serves `data` at `/NAME` (see [`FaultFile::new`]).
    pub fn add_file(&self, name: &str, data: impl Into<Bytes>) {
        self.put_file(name, FaultFile::new(data));
    }

    /// Serves (or replaces) `/NAME`.
    pub fn put_file(&self, name: &str, file: FaultFile) {
        self.state.files.lock().unwrap().insert(path_of(name), file);
    }

    /// The next request to `/NAME` (of `method`, or of any method) gets `fault`, once.
    pub fn push_fault(&self, name: &str, method: Option<Method>, fault: Fault) {
        self.push_rule(name, Rule { fault, method, once: true });
    }

    /// Every request to `/NAME` (of `method`, or any) gets `fault` until [`FaultServer::clear_faults`].
    pub fn always(&self, name: &str, method: Option<Method>, fault: Fault) {
        self.push_rule(name, Rule { fault, method, once: false });
    }

    /// Forgets every rule of `/NAME`: it is served correctly from now on.
    pub fn clear_faults(&self, name: &str) {
        self.state.rules.lock().unwrap().remove(&path_of(name));
    }

    /// Rules of `/NAME` not consumed yet.
    pub fn pending_faults(&self, name: &str) -> usize {
        self.state.rules.lock().unwrap().get(&path_of(name)).map_or(0, VecDeque::len)
    }

    fn push_rule(&self, name: &str, rule: Rule) {
        self.state.rules.lock().unwrap().entry(path_of(name)).or_default().push_back(rule);
    }

    /// Every request so far, in order of arrival.
    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().iter().map(|e| e.snapshot()).collect()
    }

    /// The first request the fault labelled `label` (a prefix of [`Logged::fault`]) hit; panics
    /// with the whole log when none did.
    pub fn faulted(&self, label: &str) -> Logged {
        let log = self.log();
        let hit = log.iter().find(|r| r.fault.as_deref().is_some_and(|f| f.starts_with(label)));
        hit.cloned().unwrap_or_else(|| panic!("no request hit {label}:\n{}", fault_log(&log)))
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Per-connection switches the response body can pull.
#[derive(Default)]
struct ConnCtl {
    /// Close with `SO_LINGER` 0 (RST) instead of FIN.
    reset: AtomicBool,
}

/// The socket as hyper sees it; resets on drop when asked to.
struct FaultIo {
    stream: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl Drop for FaultIo {
    fn drop(&mut self) {
        if self.ctl.reset.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl FaultIo {
    fn check(&self) -> io::Result<()> {
        if self.ctl.reset.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
            return Err(io::Error::from(io::ErrorKind::ConnectionReset));
        }
        Ok(())
    }
}

impl AsyncRead for FaultIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A reset must not send a FIN first.
        self.check()?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    crate::accept::accept_each(listener, move |stream| {
        let state = state.clone();
        async move {
            let ctl = Arc::new(ConnCtl::default());
            let io = FaultIo { stream, ctl: ctl.clone() };
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let ctl = ctl.clone();
                async move { Ok::<_, Infallible>(respond(&state, &ctl, req).await) }
            });
            // Errors here are the faults themselves, or clients going away.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await;
        }
    })
    .await
}

/// How a body ends once its bytes (up to the limit) are out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Complete,
    Reset,
    Stall(Duration),
    Close,
}

/// Everything about one answer.
struct Plan {
    status: u16,
    headers: Vec<(header::HeaderName, String)>,
    /// The body that would be sent in full.
    data: Bytes,
    /// First remote offset of `data` (for the log).
    start: u64,
    /// `Content-Length` to announce; `None`: chunked.
    content_length: Option<u64>,
    /// Bytes of `data` actually sent before `ending` (all of them for `Complete`).
    limit: u64,
    ending: Ending,
}

impl Plan {
    fn simple(status: u16, body: &str) -> Plan {
        let data = Bytes::copy_from_slice(body.as_bytes());
        Plan {
            status,
            headers: vec![(header::CONTENT_TYPE, "text/plain".to_string())],
            content_length: Some(data.len() as u64),
            limit: data.len() as u64,
            data,
            start: 0,
            ending: Ending::Complete,
        }
    }

    fn header(mut self, name: header::HeaderName, value: impl Into<String>) -> Plan {
        self.headers.push((name, value.into()));
        self
    }

    /// Sends `after` bytes, then ends with `ending` (unless that is the whole body anyway).
    fn cut(mut self, after: u64, ending: Ending) -> Plan {
        if after < self.data.len() as u64 {
            self.limit = after;
            self.ending = ending;
        }
        self
    }
}

fn header_text(headers: &HeaderMap<HeaderValue>, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The correct answer to `method path` for `file`, plus the span it chose.
fn correct(
    file: &FaultFile,
    range: Option<&str>,
    if_range: Option<&str>,
) -> (Plan, Option<(u64, u64)>) {
    let size = file.data.len() as u64;
    let last_modified = file.last_modified_text();
    let mut headers = vec![
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
    ];
    if let Some(etag) = &file.etag {
        headers.push((header::ETAG, etag.clone()));
    }
    if let Some(lm) = &last_modified {
        headers.push((header::LAST_MODIFIED, lm.clone()));
    }
    // A stale If-Range means "send me the whole new file" (RFC 9110 §13.1.5).
    let validator_ok = if_range
        .is_none_or(|v| file.etag.as_deref() == Some(v) || last_modified.as_deref() == Some(v));
    let answer = range.filter(|_| validator_ok).map(|r| range::parse_single(r, size));
    let whole = |headers| Plan {
        status: 200,
        headers,
        data: file.data.clone(),
        start: 0,
        content_length: Some(size),
        limit: size,
        ending: Ending::Complete,
    };
    match answer {
        None | Some(RangeAnswer::Ignore) => (whole(headers), None),
        Some(RangeAnswer::Unsatisfiable) => {
            headers.push((header::CONTENT_RANGE, format!("bytes */{size}")));
            let plan = Plan {
                status: 416,
                headers,
                data: Bytes::new(),
                start: 0,
                content_length: Some(0),
                limit: 0,
                ending: Ending::Complete,
            };
            (plan, None)
        }
        Some(RangeAnswer::Spans(spans)) => {
            let (start, end) = spans[0];
            headers.push((header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1)));
            let data = file.data.slice(start as usize..end as usize);
            let plan = Plan {
                status: 206,
                headers,
                content_length: Some(end - start),
                limit: end - start,
                data,
                start,
                ending: Ending::Complete,
            };
            (plan, Some((start, end)))
        }
    }
}

fn plan_for(
    fault: Option<&Fault>,
    file: Option<&FaultFile>,
    path: &str,
    range: Option<&str>,
    if_range: Option<&str>,
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
            return Plan::simple(302, "moved\n").header(header::LOCATION, path);
        }
        Some(Fault::RedirectTo(location)) => {
            return Plan::simple(302, "moved\n").header(header::LOCATION, location.clone());
        }
        Some(Fault::HtmlPage { chunked }) => {
            let mut plan = Plan::simple(200, HTML_PAGE);
            plan.headers = vec![(header::CONTENT_TYPE, "text/html; charset=utf-8".to_string())];
            if *chunked {
                plan.content_length = None;
            }
            return plan;
        }
        _ => {}
    }
    let Some(file) = file else { return Plan::simple(404, "not found\n") };
    let size = file.data.len() as u64;
    let (good, span) = correct(file, range, if_range);
    let Some(fault) = fault else { return good };
    match fault {
        Fault::Replace(_) => good,
        Fault::ResetAfter(n) => good.cut(*n, Ending::Reset),
        Fault::StallHeaders(_) => good,
        Fault::StallBody { after, stall } => good.cut(*after, Ending::Stall(*stall)),
        Fault::ShortBody(n) => good.cut(*n, Ending::Close).header(header::CONNECTION, "close"),
        Fault::WrongContentRange => {
            let (start, end) = span.unwrap_or((0, size));
            let end = end.saturating_sub(1).max(start + 1);
            let (mut plan, _) = correct(file, None, None);
            plan.status = 206;
            plan.headers.push((header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1)));
            plan.data = file.data.slice(start as usize..end as usize);
            plan.start = start;
            plan.content_length = Some(end - start);
            plan.limit = end - start;
            plan
        }
        Fault::IgnoreRange => correct_whole(file),
        Fault::Status(_)
        | Fault::StatusRetryAfter(..)
        | Fault::RedirectLoop
        | Fault::RedirectTo(_)
        | Fault::HtmlPage { .. } => unreachable!("answered above"),
        Fault::GzipLabel => good.header(header::CONTENT_ENCODING, "gzip"),
        Fault::GzipBody => {
            let (start, end) = span.unwrap_or((0, size));
            let (mut plan, _) = correct(file, None, None);
            plan.status = if span.is_some() { 206 } else { 200 };
            if span.is_some() {
                plan.headers
                    .push((header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1)));
            }
            plan.headers.push((header::CONTENT_ENCODING, "gzip".to_string()));
            plan.data = Bytes::from(gzip_stored(&file.data[start as usize..end as usize]));
            plan.start = 0;
            plan.content_length = None;
            plan.limit = plan.data.len() as u64;
            plan
        }
    }
}

fn correct_whole(file: &FaultFile) -> Plan {
    correct(file, None, None).0
}

async fn respond(
    state: &Arc<State>,
    ctl: &Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Response<FaultBody> {
    let at = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let headers = req.headers();
    let range = header_text(headers, header::RANGE);
    let if_range = header_text(headers, header::IF_RANGE);
    let authorization = header_text(headers, header::AUTHORIZATION);
    let cookie = header_text(headers, header::COOKIE);
    let fault = state.take_fault(&path, &method);

    let entry = {
        let mut log = state.log.lock().unwrap();
        let entry = Arc::new(LogEntry {
            head: Mutex::new(Logged {
                seq: log.len(),
                at,
                method: method.clone(),
                path: path.clone(),
                range: range.clone(),
                if_range: if_range.clone(),
                authorization,
                cookie,
                status: 0,
                fault: fault.as_ref().map(Fault::label),
                start: 0,
                sent: 0,
            }),
            sent: AtomicU64::new(0),
        });
        log.push(entry.clone());
        entry
    };

    if let Some(Fault::Replace(new)) = &fault {
        state.files.lock().unwrap().insert(path.clone(), new.clone());
    }
    if let Some(Fault::StallHeaders(stall)) = &fault {
        tokio::time::sleep(*stall).await;
        ctl.reset.store(true, Ordering::SeqCst);
    }
    let file = state.files.lock().unwrap().get(&path).cloned();
    let plan =
        plan_for(fault.as_ref(), file.as_ref(), &path, range.as_deref(), if_range.as_deref());
    {
        let mut head = entry.head.lock().unwrap();
        head.status = plan.status;
        head.start = plan.start;
    }

    let mut builder = Response::builder().status(StatusCode::from_u16(plan.status).unwrap());
    for (name, value) in &plan.headers {
        builder = builder.header(name, value);
    }
    if let Some(len) = plan.content_length {
        // Explicit, so HEAD carries the length a GET would have.
        builder = builder.header(header::CONTENT_LENGTH, len);
    }
    let is_head = method == Method::HEAD;
    let body = FaultBody {
        data: if is_head { Bytes::new() } else { plan.data },
        pos: 0,
        limit: if is_head { 0 } else { plan.limit },
        ending: if is_head { Ending::Complete } else { plan.ending },
        announced: plan.content_length,
        sleep: None,
        paused: false,
        ctl: ctl.clone(),
        entry,
    };
    builder.body(body).unwrap()
}

/// A response body that sends its bytes up to a limit, then ends as its fault says.
pub struct FaultBody {
    data: Bytes,
    pos: usize,
    limit: u64,
    ending: Ending,
    announced: Option<u64>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The flush pause before the ending is over.
    paused: bool,
    ctl: Arc<ConnCtl>,
    entry: Arc<LogEntry>,
}

impl FaultBody {
    fn complete(&self) -> bool {
        self.ending == Ending::Complete && self.pos >= self.data.len()
    }
}

impl Body for FaultBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let limit = (this.limit as usize).min(this.data.len());
        if this.pos < limit {
            let len = CHUNK.min(limit - this.pos);
            let chunk = this.data.slice(this.pos..this.pos + len);
            this.pos += len;
            this.entry.sent.fetch_add(len as u64, Ordering::SeqCst);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.ending == Ending::Complete {
            return Poll::Ready(None);
        }
        // Let hyper flush what was sent, then apply the ending.
        if !this.paused {
            let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(FLUSH_PAUSE)));
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
            this.paused = true;
        }
        match this.ending {
            Ending::Complete => Poll::Ready(None),
            Ending::Reset => {
                this.ctl.reset.store(true, Ordering::SeqCst);
                Poll::Ready(Some(Err(io::Error::from(io::ErrorKind::ConnectionReset))))
            }
            Ending::Close => Poll::Ready(Some(Err(io::Error::other("short body: closing")))),
            Ending::Stall(stall) => {
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                ready!(sleep.as_mut().poll(cx));
                this.ctl.reset.store(true, Ordering::SeqCst);
                Poll::Ready(Some(Err(io::Error::other("stall over: closing"))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.complete()
    }

    fn size_hint(&self) -> SizeHint {
        match self.announced {
            Some(len) => SizeHint::with_exact(len.saturating_sub(self.pos as u64)),
            None => SizeHint::default(),
        }
    }
}

/// `data` as a gzip member of stored (uncompressed) deflate blocks: valid gzip, no dependency.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
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

/// A fault server's request log, one line per request, for failure messages.
pub fn fault_log(log: &[Logged]) -> String {
    let t0 = log.first().map(|r| r.at);
    log.iter()
        .map(|r| {
            format!(
                "#{} +{:?} {} {} range={:?} if-range={:?} auth={:?} cookie={:?} -> {} sent={} fault={:?}\n",
                r.seq,
                t0.map(|t| r.at.duration_since(t)).unwrap_or_default(),
                r.method,
                r.path,
                r.range,
                r.if_range,
                r.authorization,
                r.cookie,
                r.status,
                r.sent,
                r.fault
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::random_bytes;

    const GET: Option<Method> = Some(Method::GET);

    /// A raw exchange with the head lowercased, for matching header names and values.
    async fn raw(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (String, Vec<u8>, io::Result<()>) {
        let (head, body, end) = crate::raw::raw_exchange(addr, method, path, headers).await;
        (head.to_ascii_lowercase(), body, end)
    }

    #[test]
    fn fault_server_gzip_is_valid_framing() {
        let gz = gzip_stored(b"123456789");
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(gz.len(), 10 + 5 + 9 + 8);
        // CRC-32 of "123456789" is the standard check value.
        assert_eq!(&gz[gz.len() - 8..gz.len() - 4], &0xCBF4_3926u32.to_le_bytes());
    }

    #[tokio::test]
    async fn fault_server_applies_faults_in_order() {
        let server = FaultServer::start().await;
        let data = random_bytes(7, 200_000);
        server.add_file("f.bin", data.clone());
        server.push_fault("f.bin", GET, Fault::ResetAfter(50_000));
        server.push_fault("f.bin", GET, Fault::ShortBody(20_000));
        server.push_fault("f.bin", None, Fault::Status(503));

        // A HEAD skips the GET rules and takes the any-method one.
        let (head, _, _) = raw(server.addr(), "HEAD", "/f.bin", &[]).await;
        assert!(head.starts_with("http/1.1 503"), "{head}");
        let (head, body, end) = raw(server.addr(), "GET", "/f.bin", &[]).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(body.len() <= 50_000 && body == data[..body.len()], "{}", body.len());
        assert_eq!(end.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset));
        let (head, body, end) = raw(server.addr(), "GET", "/f.bin", &[]).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body.len(), 20_000);
        assert!(end.is_ok(), "a short body ends with a clean close: {end:?}");
        let (head, body, _) =
            raw(server.addr(), "GET", "/f.bin", &[("Range", "bytes=10-"), ("Cookie", "c=1")]).await;
        assert!(head.starts_with("http/1.1 206"), "{head}");
        assert_eq!(body, &data[10..]);

        let log = server.log();
        let faults: Vec<_> = log.iter().map(|r| r.fault.as_deref().unwrap_or("-")).collect();
        assert_eq!(faults, ["Status(503)", "ResetAfter(50000)", "ShortBody(20000)", "-"]);
        assert_eq!(log[1].sent, 50_000);
        assert_eq!(log[2].sent, 20_000);
        assert_eq!((log[3].range_start(), log[3].cookie.as_deref()), (Some(10), Some("c=1")));
        assert_eq!(server.pending_faults("f.bin"), 0);
    }

    #[tokio::test]
    async fn fault_server_broken_answers() {
        let server = FaultServer::start().await;
        let data = random_bytes(8, 1000);
        server.add_file("f.bin", data.clone());
        server.push_fault("f.bin", None, Fault::WrongContentRange);
        server.push_fault("f.bin", None, Fault::GzipBody);
        server.push_fault("f.bin", None, Fault::HtmlPage { chunked: false });
        server.push_fault("f.bin", None, Fault::StatusRetryAfter(429, 3));
        let range = [("Range", "bytes=100-")];
        let (head, body, _) = raw(server.addr(), "GET", "/f.bin", &range).await;
        assert!(head.contains("content-range: bytes 100-998/1000"), "{head}");
        assert_eq!(body, &data[100..999]);
        let (head, _, _) = raw(server.addr(), "GET", "/f.bin", &range).await;
        assert!(head.contains("content-encoding: gzip"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        let (head, body, _) = raw(server.addr(), "GET", "/f.bin", &range).await;
        assert!(head.starts_with("http/1.1 200") && head.contains("text/html"), "{head}");
        assert!(!head.contains("etag"), "{head}");
        assert_eq!(body, HTML_PAGE.as_bytes());
        let (head, _, _) = raw(server.addr(), "GET", "/f.bin", &range).await;
        assert!(head.starts_with("http/1.1 429") && head.contains("retry-after: 3"), "{head}");
    }
}
