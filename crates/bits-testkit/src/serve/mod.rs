//! The one in-process HTTP file server of the workspace's tests (hyper 1.x; HTTP/1.1, HTTP/2 with
//! prior knowledge, and with feature "tls" HTTPS with HTTP/2 by ALPN). [`crate::server::TestServer`]
//! and [`crate::faults::FaultServer`] are two faces of it, and the bits-http tests drive it
//! directly through `FaultServer`.
//!
//! One accept loop (`conn.rs`), one request path (`respond`: gate, fault rules, log),
//! one file model ([`FaultFile`]), one answer builder (`answer.rs`: validators, `If-Range`, single
//! and multi-range, every fault as a change to the correct answer) and one body (`reply.rs`:
//! chunks, throttle, cuts, and a log of the bytes hyper took for the socket).

mod answer;
mod conn;
mod fault;
mod reply;
mod signed;
#[cfg(feature = "tls")]
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use fault::{CutEnd, DEFAULT_LAST_MODIFIED, Fault, FaultFile, HTML_PAGE, PartCut, Parts};

use answer::Asked;
use conn::ConnCtl;
use reply::{Reply, Throttle};
use signed::Signed;

/// Default largest body frame handed to hyper: small enough that the throttle is smooth and the
/// log of bytes sent is precise.
const CHUNK: usize = 16 * 1024;

/// One request as the server saw and answered it.
#[derive(Clone, Debug)]
pub struct Logged {
    /// Order in the log: of arrival for a request whose head stalls, else of its answer (after
    /// the gate).
    pub seq: usize,
    /// Arrival (before any stall).
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub version: Version,
    /// Every request header, as received.
    pub headers: HeaderMap,
    /// The `Range` header, verbatim.
    pub range: Option<String>,
    /// The `If-Range` header, verbatim.
    pub if_range: Option<String>,
    pub authorization: Option<String>,
    pub cookie: Option<String>,
    /// The status sent (0 if the connection failed before a status line).
    pub status: u16,
    /// The fault applied, as a label (`None`: served correctly).
    pub fault: Option<String>,
    /// First remote offset of the body (0 for answers whose body is not one span of the file).
    pub start: u64,
    /// Body length the response announced (for a `HEAD`, the length a `GET` would have).
    pub planned: u64,
    /// Body bytes handed to hyper for the socket so far.
    pub sent: u64,
    /// The whole planned body was handed over.
    pub finished: bool,
}

impl Logged {
    /// The offset a `Range: bytes=N-...` asked for.
    pub fn range_start(&self) -> Option<u64> {
        let spec = self.range.as_deref()?.trim().strip_prefix("bytes=")?;
        spec.split('-').next()?.trim().parse().ok()
    }
}

/// A request's log entry while it is answered: the head is filled in once the answer is planned,
/// the counters as the body goes out.
struct Record {
    head: Mutex<Logged>,
    sent: AtomicU64,
    finished: AtomicBool,
}

impl Record {
    fn snapshot(&self) -> Logged {
        let mut logged = self.head.lock().unwrap().clone();
        logged.sent = self.sent.load(Ordering::SeqCst);
        logged.finished = self.finished.load(Ordering::SeqCst);
        logged
    }
}

struct Rule {
    fault: Fault,
    method: Option<Method>,
    /// Fires once, or until cleared.
    once: bool,
}

/// How the server reads `Range` headers and sizes body frames.
#[derive(Clone, Copy)]
struct Options {
    /// Several ranges get a `multipart/byteranges` 206 (like nginx); otherwise the whole file.
    multi_range: bool,
    /// A `Range` header the server does not understand gets `400` instead of the whole file, so
    /// a client that sends a malformed one fails loudly.
    strict_ranges: bool,
    chunk: usize,
}

struct Shared {
    files: Mutex<HashMap<String, FaultFile>>,
    rules: Mutex<HashMap<String, VecDeque<Rule>>>,
    signed: Mutex<signed::Routes>,
    log: Mutex<Vec<Arc<Record>>>,
    options: Mutex<Options>,
    throttle: Throttle,
    /// `true` while the gate holds new requests.
    gate: watch::Sender<bool>,
    waiting_at_gate: AtomicUsize,
    /// Accepted so far.
    connections: AtomicUsize,
    /// Accepted and not yet closed.
    open: AtomicUsize,
}

impl Shared {
    /// Appends a request to the log, numbered in order.
    fn push_log(&self, mut head: Logged) -> Arc<Record> {
        let mut log = self.log.lock().unwrap();
        head.seq = log.len();
        let record = Arc::new(Record {
            head: Mutex::new(head),
            sent: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        });
        log.push(record.clone());
        record
    }

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

/// `/NAME` for a name with or without its leading slash.
fn path_of(name: &str) -> String {
    format!("/{}", name.trim_start_matches('/'))
}

/// The server; dropping it stops accepting and aborts every open connection.
pub(crate) struct Server {
    addr: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Server {
    /// Binds 127.0.0.1 on a free port and serves plain http on the current tokio runtime.
    pub(crate) async fn start() -> Server {
        Server::bind("http", |listener, shared| tokio::spawn(conn::accept_plain(listener, shared)))
            .await
    }

    /// The same over TLS with `config` (its ALPN list decides between HTTP/2 and HTTP/1.1).
    #[cfg(feature = "tls")]
    pub(crate) async fn start_tls(config: rustls::ServerConfig) -> Server {
        Server::bind("https", |listener, shared| {
            tokio::spawn(conn::accept_tls(listener, shared, config))
        })
        .await
    }

    async fn bind(
        scheme: &'static str,
        spawn: impl FnOnce(TcpListener, Arc<Shared>) -> JoinHandle<()>,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            files: Mutex::new(HashMap::new()),
            rules: Mutex::new(HashMap::new()),
            signed: Mutex::new(signed::Routes::default()),
            log: Mutex::new(Vec::new()),
            options: Mutex::new(Options { multi_range: false, strict_ranges: false, chunk: CHUNK }),
            throttle: Throttle::default(),
            gate: watch::channel(false).0,
            waiting_at_gate: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
        });
        let accept = spawn(listener, shared.clone());
        Server { addr, scheme, shared, accept }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `SCHEME://127.0.0.1:PORT/NAME`.
    pub(crate) fn url(&self, name: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path_of(name))
    }

    pub(crate) fn put_file(&self, name: &str, file: FaultFile) {
        self.shared.files.lock().unwrap().insert(path_of(name), file);
    }

    pub(crate) fn push_rule(&self, name: &str, fault: Fault, method: Option<Method>, once: bool) {
        let rule = Rule { fault, method, once };
        self.shared.rules.lock().unwrap().entry(path_of(name)).or_default().push_back(rule);
    }

    pub(crate) fn sign(&self, route: &str, file: &str, uses: u32) {
        self.shared.signed.lock().unwrap().add(path_of(route), path_of(file), uses);
    }

    pub(crate) fn clear_faults(&self, name: &str) {
        self.shared.rules.lock().unwrap().remove(&path_of(name));
    }

    pub(crate) fn pending_faults(&self, name: &str) -> usize {
        self.shared.rules.lock().unwrap().get(&path_of(name)).map_or(0, VecDeque::len)
    }

    pub(crate) fn set_multi_range(&self, on: bool) {
        self.shared.options.lock().unwrap().multi_range = on;
    }

    pub(crate) fn set_strict_ranges(&self, on: bool) {
        self.shared.options.lock().unwrap().strict_ranges = on;
    }

    pub(crate) fn set_chunk(&self, bytes: usize) {
        self.shared.options.lock().unwrap().chunk = bytes.max(1);
    }

    pub(crate) fn set_throttle(&self, bytes_per_sec: Option<u64>) {
        self.shared.throttle.set(bytes_per_sec);
    }

    pub(crate) fn hold(&self, held: bool) {
        self.shared.gate.send_replace(held);
    }

    pub(crate) fn waiting_at_gate(&self) -> usize {
        self.shared.waiting_at_gate.load(Ordering::SeqCst)
    }

    pub(crate) fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    pub(crate) fn log(&self) -> Vec<Logged> {
        self.log_since(0)
    }

    pub(crate) fn log_len(&self) -> usize {
        self.shared.log.lock().unwrap().len()
    }

    pub(crate) fn log_since(&self, mark: usize) -> Vec<Logged> {
        self.shared.log.lock().unwrap().iter().skip(mark).map(|r| r.snapshot()).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn header_text(headers: &HeaderMap<HeaderValue>, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Every request of every connection: the gate, the fault rules, the log, then the answer.
async fn respond(
    shared: Arc<Shared>,
    ctl: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Result<Response<Reply>, Infallible> {
    let mut gate = shared.gate.subscribe();
    if *gate.borrow() {
        shared.waiting_at_gate.fetch_add(1, Ordering::SeqCst);
        let _ = gate.wait_for(|held| !*held).await;
        shared.waiting_at_gate.fetch_sub(1, Ordering::SeqCst);
    }

    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let headers = req.headers();
    let range = header_text(headers, header::RANGE);
    let if_range = header_text(headers, header::IF_RANGE);
    // A signed route or token answers as a redirect or status fault would, or serves its file.
    let signed = shared.signed.lock().unwrap().answer(&path);
    let (fault, file_path) = match signed {
        Some(Signed::Redirect(to)) => (Some(Fault::RedirectTo(to)), path.clone()),
        Some(Signed::Expired) => (Some(Fault::Status(403)), path.clone()),
        Some(Signed::Serve(file)) => (shared.take_fault(&path, &method), file),
        None => (shared.take_fault(&path, &method), path.clone()),
    };
    let mut head = Logged {
        seq: 0,
        at: Instant::now(),
        method: method.clone(),
        path: path.clone(),
        version: req.version(),
        headers: headers.clone(),
        range: range.clone(),
        if_range: if_range.clone(),
        authorization: header_text(headers, header::AUTHORIZATION),
        cookie: header_text(headers, header::COOKIE),
        status: 0,
        fault: fault.as_ref().map(Fault::label),
        start: 0,
        planned: 0,
        sent: 0,
        finished: false,
    };

    if let Some(Fault::Replace(new)) = &fault {
        shared.files.lock().unwrap().insert(path.clone(), new.clone());
    }
    // A request whose head never comes is in the log while it waits (status 0); any other
    // appears with its answer decided, so a reader never sees one half logged.
    let mut record = None;
    if let Some(Fault::StallHeaders(stall)) = &fault {
        record = Some(shared.push_log(head.clone()));
        tokio::time::sleep(*stall).await;
        ctl.reset();
    }
    let file = shared.files.lock().unwrap().get(&file_path).cloned();
    let options = *shared.options.lock().unwrap();
    let asked = Asked {
        method: &method,
        path: &path,
        range: range.as_deref(),
        if_range: if_range.as_deref(),
    };
    let plan = answer::plan(fault.as_ref(), file.as_ref(), &asked, &options);
    head.status = plan.status;
    head.start = plan.start;
    head.planned = plan.content_length.unwrap_or(plan.data.len() as u64);
    let record = match record {
        Some(record) => {
            {
                let mut logged = record.head.lock().unwrap();
                *logged = Logged { seq: logged.seq, ..head };
            }
            record
        }
        None => shared.push_log(head),
    };

    let mut builder = Response::builder().status(StatusCode::from_u16(plan.status).unwrap());
    for (name, value) in &plan.headers {
        builder = builder.header(name, value);
    }
    if let Some(len) = plan.content_length {
        // Explicit, so HEAD carries the length a GET would have.
        builder = builder.header(header::CONTENT_LENGTH, len);
    }
    let body = Reply::new(plan, method == Method::HEAD, options.chunk, shared.clone(), ctl, record);
    Ok(builder.body(body).unwrap())
}

/// How long a body waits, after its last byte before a connection fault, so that hyper has
/// flushed those bytes to the socket.
const FLUSH_PAUSE: Duration = Duration::from_millis(150);
