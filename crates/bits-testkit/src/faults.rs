//! The server's hostile face, for the hostile-server tests and the bits-http client tests.
//!
//! By default it serves named in-memory files correctly: `HEAD`, `Range` requests (`206` +
//! `Content-Range`, `416` when unsatisfiable; several ranges as `multipart/byteranges` once
//! [`FaultServer::set_multi_range`] is on), `If-Range` (a stale validator gets the whole file
//! with `200`), `ETag` and `Last-Modified` (each optional). Faults are scripted per path: a rule
//! is a [`Fault`], an optional method it applies to, and how often it fires (once, or until
//! [`FaultServer::clear_faults`]). A request takes the first rule of its path that matches its
//! method; with none left it is served normally. A path with rules and no file (a redirect, a
//! status) is a route of its own.
//!
//! Every request is logged ([`Logged`]): arrival time, method, path, version, headers, the
//! status sent, the fault applied and the body bytes handed to hyper for the socket.
//!
//! Connection-level faults are real: a reset closes the socket with `SO_LINGER` 0 (the peer sees
//! `ECONNRESET`), a stall keeps the socket open and silent, a short body ends with a clean FIN.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Method;

use crate::serve::Server;
pub use crate::serve::{CutEnd, Fault, FaultFile, HTML_PAGE, Logged, PartCut, Parts};

/// The server; dropping it stops accepting and aborts every open connection.
pub struct FaultServer(Server);

impl FaultServer {
    /// Binds 127.0.0.1 on a free port and starts serving on the current tokio runtime.
    pub async fn start() -> FaultServer {
        FaultServer(Server::start().await)
    }

    /// The same over https with `config` (see [`crate::serve::tls::self_signed`]); its ALPN list
    /// decides between HTTP/2 and HTTP/1.1.
    #[cfg(feature = "tls")]
    pub async fn start_tls(config: rustls::ServerConfig) -> FaultServer {
        FaultServer(Server::start_tls(config).await)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// `http://127.0.0.1:PORT/NAME` (`https` for a TLS server).
    pub fn url(&self, name: &str) -> String {
        self.0.url(name)
    }

    /// Serves `data` at `/NAME` (see [`FaultFile::new`]).
    pub fn add_file(&self, name: &str, data: impl Into<Bytes>) {
        self.put_file(name, FaultFile::new(data));
    }

    /// Serves (or replaces) `/NAME`.
    pub fn put_file(&self, name: &str, file: FaultFile) {
        self.0.put_file(name, file);
    }

    /// The next request to `/NAME` (of `method`, or of any method) gets `fault`, once.
    pub fn push_fault(&self, name: &str, method: Option<Method>, fault: Fault) {
        self.0.push_rule(name, fault, method, true);
    }

    /// Every request to `/NAME` (of `method`, or any) gets `fault` until [`FaultServer::clear_faults`].
    pub fn always(&self, name: &str, method: Option<Method>, fault: Fault) {
        self.0.push_rule(name, fault, method, false);
    }

    /// Makes `/ROUTE` a signed route to `/FILE`: each request gets a `302` to a fresh token URL
    /// (`/ROUTE~N`) that serves the file for `uses` requests (a HEAD counts), then answers `403`,
    /// as an expired S3 presigned URL or CDN token does.
    pub fn sign(&self, route: &str, file: &str, uses: u32) {
        self.0.sign(route, file, uses);
    }

    /// Forgets every rule of `/NAME`: it is served correctly from now on.
    pub fn clear_faults(&self, name: &str) {
        self.0.clear_faults(name);
    }

    /// Rules of `/NAME` not consumed yet.
    pub fn pending_faults(&self, name: &str) -> usize {
        self.0.pending_faults(name)
    }

    /// Answers several ranges with one `multipart/byteranges` 206 (parts in the order asked,
    /// like nginx) instead of the whole file.
    pub fn set_multi_range(&self, on: bool) {
        self.0.set_multi_range(on);
    }

    /// Answers a `Range` header it does not take (malformed, or several ranges while
    /// multi-range is off) with `400` instead of the whole file, so a client bug shows.
    pub fn set_strict_ranges(&self, on: bool) {
        self.0.set_strict_ranges(on);
    }

    /// Hands bodies to hyper in frames of at most `bytes` (16 KiB by default), so a client's
    /// parser meets every kind of chunk boundary.
    pub fn set_chunk(&self, bytes: usize) {
        self.0.set_chunk(bytes);
    }

    /// From now on every new request waits before being answered (bodies already streaming go
    /// on), as with [`crate::server::TestServer::hold`].
    pub fn hold(&self) {
        self.0.hold(true);
    }

    /// Lets held and future requests through.
    pub fn release(&self) {
        self.0.hold(false);
    }

    /// Connections accepted so far (a TLS one counts before its handshake).
    pub fn connections(&self) -> usize {
        self.0.connections()
    }

    /// Every request so far, in order of arrival.
    pub fn log(&self) -> Vec<Logged> {
        self.0.log()
    }

    /// The first request the fault labelled `label` (a prefix of [`Logged::fault`]) hit; panics
    /// with the whole log when none did.
    pub fn faulted(&self, label: &str) -> Logged {
        let log = self.log();
        let hit = log.iter().find(|r| r.fault.as_deref().is_some_and(|f| f.starts_with(label)));
        hit.cloned().unwrap_or_else(|| panic!("no request hit {label}:\n{}", fault_log(&log)))
    }
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
    use crate::raw::header;
    use std::io;

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

    /// A signed route redirects each request to a fresh token; a token serves the file (HEAD
    /// and ranges as usual) for its uses, then answers 403, while a newer token still serves.
    #[tokio::test]
    async fn signed_routes_issue_tokens_that_expire() {
        let server = FaultServer::start().await;
        let data = random_bytes(10, 1000);
        server.add_file("f.bin", data.clone());
        server.sign("s", "f.bin", 2);
        let (head, _, _) = raw(server.addr(), "GET", "/s", &[]).await;
        assert!(head.starts_with("http/1.1 302") && head.contains("location: /s~1"), "{head}");
        let (head, _, _) = raw(server.addr(), "HEAD", "/s~1", &[]).await;
        assert!(head.contains("content-length: 1000"), "{head}");
        let (_, body, _) = raw(server.addr(), "GET", "/s~1", &[("Range", "bytes=10-19")]).await;
        assert_eq!(body, &data[10..20]);
        let (head, _, _) = raw(server.addr(), "GET", "/s~1", &[]).await;
        assert!(head.starts_with("http/1.1 403"), "{head}");
        let (head, _, _) = raw(server.addr(), "GET", "/s", &[]).await;
        assert!(head.contains("location: /s~2"), "{head}");
        let (_, body, _) = raw(server.addr(), "GET", "/s~2", &[]).await;
        assert_eq!(body, data);
        for unknown in ["/s~3", "/s~0", "/s~x", "/f.bin~1"] {
            let (head, _, _) = raw(server.addr(), "GET", unknown, &[]).await;
            assert!(head.starts_with("http/1.1 404"), "{unknown}: {head}");
        }
        let statuses: Vec<_> = server.log().iter().map(|r| (r.path.clone(), r.status)).collect();
        assert_eq!(
            statuses[..6].iter().map(|s| s.1).collect::<Vec<_>>(),
            [302, 200, 206, 403, 302, 200]
        );
        assert_eq!(statuses[3].0, "/s~1");
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

    /// The content of a chunked body (`SIZE-HEX CRLF bytes CRLF`, ending with a zero size).
    fn unchunk(mut body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line = body.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&body[..line]).unwrap(), 16).unwrap();
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&body[line + 2..line + 2 + size]);
            body = &body[line + 2 + size + 2..];
        }
    }

    #[tokio::test]
    async fn fault_server_multi_range_parts_and_cuts() {
        let server = FaultServer::start().await;
        let data = random_bytes(9, 1000);
        server.add_file("f.bin", data.clone());
        let two = [("Range", "bytes=0-1,10-12")];
        // Off by default: the whole file, as the single-range servers always answered.
        let (head, body, _) = raw(server.addr(), "GET", "/f.bin", &two).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, data);
        server.set_strict_ranges(true);
        let (head, _, _) = raw(server.addr(), "GET", "/f.bin", &two).await;
        assert!(head.starts_with("http/1.1 400"), "{head}");

        server.set_multi_range(true);
        let part = |first: usize, last: usize| {
            let mut out = format!(
                "\r\n--00000000000000000007\r\nContent-Type: application/octet-stream\r\n\
                 Content-Range: bytes {first}-{last}/1000\r\n\r\n"
            )
            .into_bytes();
            out.extend_from_slice(&data[first..=last]);
            out
        };
        let whole =
            [part(0, 1), part(10, 12), b"\r\n--00000000000000000007--\r\n".to_vec()].concat();
        let (head, body, _) = raw(server.addr(), "GET", "/f.bin", &two).await;
        assert!(head.starts_with("http/1.1 206"), "{head}");
        assert!(head.contains("content-type: multipart/byteranges; boundary=00000000000000000007"));
        assert_eq!(header(&head, "content-length"), Some(whole.len().to_string().as_str()));
        assert_eq!(body, whole);

        server.push_fault("f.bin", None, Fault::Parts(Parts::Reversed));
        let (_, body, _) = raw(server.addr(), "GET", "/f.bin", &two).await;
        let reversed = [part(10, 12), part(0, 1), b"\r\n--00000000000000000007--\r\n".to_vec()];
        assert_eq!(body, reversed.concat());
        // Cut just before the second part's delimiter, then a clean chunked end.
        server.push_fault(
            "f.bin",
            None,
            Fault::CutParts { at: PartCut::Before(1), end: CutEnd::End },
        );
        let (head, body, end) = raw(server.addr(), "GET", "/f.bin", &two).await;
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(unchunk(&body), part(0, 1));
        // One range stays a plain 206.
        let (head, body, _) = raw(server.addr(), "GET", "/f.bin", &[("Range", "bytes=5-9")]).await;
        assert!(head.contains("content-range: bytes 5-9/1000"), "{head}");
        assert_eq!(body, &data[5..10]);
    }
}
