//! The shared HTTP(S) client: one hyper-util connection pool (HTTP/1.1 and HTTP/2 via ALPN, TLS by
//! rustls with the ring provider and verified certificates) used for every probe and range GET,
//! with redirect following, timeouts, and the mapping of transport failures to BITS codes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bits_core::Span;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use tracing::debug;
use url::Url;

use crate::body::RangeBody;
use crate::classify::is_followed_redirect;
use crate::counted::Counted;
use crate::error::{FetchError, FetchErrorKind};
use crate::multirange::{self, MultiRangeBody};
use crate::part_limits::PartLimits;
use crate::probe::{self, RemoteInfo};
use crate::redirect::{
    Redirects, is_disallowed_redirect, parse_url, redirect_target, same_origin, to_uri,
};
use crate::transport_error::map_client_error;
use crate::{headers, range};

/// Settings of an [`HttpClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Redirects followed per request before giving up (`ERROR_WINHTTP_REDIRECT_FAILED`).
    pub max_redirects: u32,
    /// Limit for establishing a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for the next body chunk, or for response headers once connected.
    pub idle_timeout: Duration,
    pub user_agent: String,
    /// DER certificates trusted in addition to the system roots (tests, private CAs).
    pub extra_root_certs_der: Vec<Vec<u8>>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            max_redirects: 10,
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            user_agent: format!("bitsd/{}", env!("CARGO_PKG_VERSION")),
            extra_root_certs_der: Vec::new(),
        }
    }
}

/// What BITS does when the server redirects (BITS_JOB_PROPERTY_ID_HTTP_REDIRECT_POLICY; spec §6.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedirectPolicy {
    /// Follow redirects; the file's remote name stays the URL the job was given.
    #[default]
    AllowSilent,
    /// Follow redirects; the manager makes [`RemoteInfo::final_url`] the file's remote name.
    AllowReport,
    /// Do not follow: the first redirect fails the request with
    /// [`FetchErrorKind::RedirectDisallowed`](crate::FetchErrorKind::RedirectDisallowed).
    Disallow,
}

/// Per-request settings taken from the job.
#[derive(Clone, Debug)]
pub struct RequestOptions {
    /// The job's custom headers, sent with every request to the origin of the job's URL and to
    /// no other: all of them are dropped on a redirect to another origin, since any of them
    /// (`X-Api-Key`, `Private-Token`, …) may be a credential.
    pub headers: HeaderMap,
    pub redirects: RedirectPolicy,
    /// BITS_HTTP_SECURITY_FLAG ALLOW_HTTPS_TO_HTTP (0x800): follow a redirect from https to http.
    /// Without it such a redirect fails with `ERROR_WINHTTP_REDIRECT_FAILED` (fatal).
    pub allow_https_to_http: bool,
    /// Accept a 200 (the whole body) to a ranged GET of the whole file. When false, every 200 to
    /// a ranged GET is `BG_E_INSUFFICIENT_RANGE_SUPPORT`: the manager clears it for background
    /// priorities, since only FOREGROUND jobs may fall back to one plain GET (spec case 58).
    pub allow_full_response: bool,
}

impl Default for RequestOptions {
    /// No custom headers, [`RedirectPolicy::AllowSilent`], no https→http, full responses
    /// accepted (the behaviour of [`HttpClient::probe`] and [`HttpClient::get_range`]).
    fn default() -> RequestOptions {
        RequestOptions {
            headers: HeaderMap::new(),
            redirects: RedirectPolicy::AllowSilent,
            allow_https_to_http: false,
            allow_full_response: true,
        }
    }
}

impl RequestOptions {
    fn with_headers(extra: &HeaderMap) -> RequestOptions {
        RequestOptions { headers: extra.clone(), ..RequestOptions::default() }
    }
}

type PoolClient = Client<HttpsConnector<Counted<HttpConnector>>, Empty<Bytes>>;

/// Fetches remote files over http and https. Cheap to clone; clones share one connection pool,
/// so connections to a host are reused across files and jobs.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: PoolClient,
    /// Connections to servers open now (see `counted.rs`).
    open: Arc<AtomicUsize>,
    config: HttpConfig,
    base_headers: HeaderMap,
    /// Parts per multi-range request each origin returns.
    part_limits: Arc<PartLimits>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl HttpClient {
    pub fn new(config: HttpConfig) -> Result<HttpClient, FetchError> {
        let open = Arc::new(AtomicUsize::new(0));
        let https = connector(&config, &open)?;
        let client =
            Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(https);
        let mut base_headers = HeaderMap::new();
        let agent = HeaderValue::from_str(&config.user_agent).map_err(|_| {
            FetchError::bad_url(format!("invalid user agent {:?}", config.user_agent))
        })?;
        base_headers.insert(header::USER_AGENT, agent);
        base_headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let part_limits = Arc::default();
        Ok(HttpClient {
            inner: Arc::new(Inner { client, open, config, base_headers, part_limits }),
        })
    }

    /// Connections to servers open now: in use, or idle in the pool for the next request.
    pub fn open_connections(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// Most spans worth putting in one [`HttpClient::get_ranges_opts`] request to `url`'s
    /// origin: [`MAX_SPANS_PER_REQUEST`](crate::MAX_SPANS_PER_REQUEST), or fewer once the origin
    /// was seen to answer fewer parts than asked (see [`MultiRangeBody::missing`]).
    pub fn parts_per_request(&self, url: &str) -> usize {
        let max = crate::MAX_SPANS_PER_REQUEST;
        let learned = Url::parse(url).ok().and_then(|url| self.inner.part_limits.per_request(&url));
        learned.map_or(max, |parts| parts.min(max))
    }

    /// HEAD the URL (following redirects) and learn its size and validators. A server that
    /// refuses HEAD with 403, 405 or 501 is asked `GET` with `Range: bytes=0-0` instead, and the
    /// size is taken from the Content-Range total.
    pub async fn probe(&self, url: &str) -> Result<RemoteInfo, FetchError> {
        self.probe_with(url, &HeaderMap::new()).await
    }

    /// [`HttpClient::probe`] with a job's custom headers on every request to the URL's origin
    /// (none of them follows a redirect to another origin).
    pub async fn probe_with(&self, url: &str, extra: &HeaderMap) -> Result<RemoteInfo, FetchError> {
        self.probe_opts(url, &RequestOptions::with_headers(extra)).await
    }

    /// [`HttpClient::probe`] with a job's headers, redirect policy and https→http flag.
    /// `final_url` is where the redirects led (`redirected` says whether there were any); under
    /// [`RedirectPolicy::Disallow`] a redirect fails with `RedirectDisallowed`.
    pub async fn probe_opts(
        &self,
        url: &str,
        opts: &RequestOptions,
    ) -> Result<RemoteInfo, FetchError> {
        let start = parse_url(url)?;
        let (parts, final_url) = match self.head(&start, opts).await? {
            Head::Answered(info) => return Ok(info),
            Head::Refused(parts, final_url) => (parts, final_url),
        };
        debug!(url = %final_url, status = parts.status.as_u16(), "HEAD refused; probing with GET bytes=0-0");
        // The HEAD was redirected to another origin: the GET starting there gets no custom
        // headers either.
        let custom =
            if same_origin(&start, &final_url) { &opts.headers } else { &HeaderMap::new() };
        self.range_probe(&start, &final_url, custom, opts).await
    }

    /// How a transfer opens a file: HEAD, as [`HttpClient::probe_opts`]; where HEAD cannot tell
    /// (refused with 403, 405 or 501, or answered without a size, as Apache does for an empty
    /// file) the file is probed by a GET from the URL asked for. With `stream` (the caller would
    /// fetch the whole file from byte 0 next) that is the `GET bytes=0-` of
    /// [`HttpClient::fetch_whole_opts`], whose checked body comes back to be streamed; otherwise
    /// `GET bytes=0-0`, so no body is sent only to be dropped. That GET follows the redirects
    /// afresh: a redirector that signs its targets signs them for the method.
    pub async fn open_opts(
        &self,
        url: &str,
        opts: &RequestOptions,
        stream: bool,
    ) -> Result<(RemoteInfo, Option<RangeBody>), FetchError> {
        let start = parse_url(url)?;
        match self.head(&start, opts).await {
            Ok(Head::Answered(info)) => return Ok((info, None)),
            Ok(Head::Refused(parts, final_url)) => {
                debug!(url = %final_url, status = parts.status.as_u16(), "HEAD refused; probing with GET bytes=0-");
            }
            Err(err) if err.kind == FetchErrorKind::MissingSize => {
                debug!(%url, error = %err, "HEAD gave no size; probing with GET bytes=0-");
            }
            Err(err) => return Err(err),
        }
        if stream {
            return self.fetch_whole_opts(url, opts).await;
        }
        Ok((self.range_probe(&start, &start, &opts.headers, opts).await?, None))
    }

    /// `GET from` with `Range: bytes=0-0`, for a server whose HEAD cannot tell: the size is the
    /// Content-Range total (or a 200's Content-Length), and `start` is the URL the probe began at.
    async fn range_probe(
        &self,
        start: &Url,
        from: &Url,
        custom: &HeaderMap,
        opts: &RequestOptions,
    ) -> Result<RemoteInfo, FetchError> {
        let mut headers = self.own_headers();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
        let (resp, final_url) = self.send(Method::GET, from, headers, custom, opts).await?;
        let (parts, _body) = resp.into_parts();
        probe::from_range_probe(&parts, &final_url).map(|info| info.reached_from(start, &final_url))
    }

    /// HEAD `start`, following redirects as `opts` allow: the file as its answer describes it, or
    /// the answer of a server that refuses HEAD.
    async fn head(&self, start: &Url, opts: &RequestOptions) -> Result<Head, FetchError> {
        let (resp, final_url) =
            self.send(Method::HEAD, start, self.own_headers(), &opts.headers, opts).await?;
        let (parts, _body) = resp.into_parts();
        if probe::head_refused(parts.status) {
            return Ok(Head::Refused(parts, final_url));
        }
        probe::from_head(&parts, &final_url)
            .map(|info| Head::Answered(info.reached_from(start, &final_url)))
    }

    /// GET all of `url` with one request that is also the probe: `Range: bytes=0-`, and the size,
    /// validators and final URL are read from the answer (a 206 whose Content-Range covers the
    /// whole file, or — where `opts` allow a full response — a 200 with a Content-Length).
    /// For a file none of whose bytes are on disk yet this saves the HEAD round trip of
    /// [`HttpClient::probe_opts`] then [`HttpClient::get_range_opts`], which matters when a job
    /// holds thousands of small files. The body is checked exactly as `get_range_opts` checks it.
    ///
    /// No body for an empty file (a 416 `bytes */0`, or a 200 or 206 of length 0): there is
    /// nothing to stream.
    pub async fn fetch_whole_opts(
        &self,
        url: &str,
        opts: &RequestOptions,
    ) -> Result<(RemoteInfo, Option<RangeBody>), FetchError> {
        let start = parse_url(url)?;
        let mut headers = self.own_headers();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-"));
        let (resp, final_url) =
            self.send(Method::GET, &start, headers, &opts.headers, opts).await?;
        let (parts, body) = resp.into_parts();
        let info = probe::from_open_range(&parts, &final_url)?.reached_from(&start, &final_url);
        if info.size == 0 {
            return Ok((info, None));
        }
        let span = Span::new(0, info.size);
        range::check(&parts, &info, span, &final_url, opts.allow_full_response)?;
        let body = RangeBody::new(
            body,
            span,
            self.inner.config.idle_timeout,
            parts.version,
            final_url.to_string(),
        );
        Ok((info, Some(body)))
    }

    /// GET the remote bytes `span` (`[start, end)`, `end <= remote.size`) of `remote.final_url`,
    /// with `If-Range` when the probe saw a validator. The returned body has been checked to be
    /// exactly those bytes of the probed version.
    pub async fn get_range(
        &self,
        remote: &RemoteInfo,
        span: Span,
    ) -> Result<RangeBody, FetchError> {
        self.get_range_with(remote, span, &HeaderMap::new()).await
    }

    /// [`HttpClient::get_range`] with a job's custom headers.
    pub async fn get_range_with(
        &self,
        remote: &RemoteInfo,
        span: Span,
        extra: &HeaderMap,
    ) -> Result<RangeBody, FetchError> {
        self.get_range_opts(remote, span, &RequestOptions::with_headers(extra)).await
    }

    /// [`HttpClient::get_range`] with a job's headers, redirect policy, https→http flag, and
    /// whether a 200 with the whole file is acceptable ([`RequestOptions::allow_full_response`]).
    pub async fn get_range_opts(
        &self,
        remote: &RemoteInfo,
        span: Span,
        opts: &RequestOptions,
    ) -> Result<RangeBody, FetchError> {
        if span.start >= span.end || span.end > remote.size {
            return Err(FetchError::invalid_range(format!(
                "span {span} is empty or outside the {} bytes of {}",
                remote.size, remote.final_url
            )));
        }
        let range = format!("bytes={}-{}", span.start, span.end - 1);
        let (parts, body, url) = self.ranged_get(remote, &range, opts).await?;
        range::check(&parts, remote, span, &url, opts.allow_full_response)?;
        Ok(RangeBody::new(
            body,
            span,
            self.inner.config.idle_timeout,
            parts.version,
            url.to_string(),
        ))
    }

    /// GET several disjoint spans of the probed version in one request
    /// (`Range: bytes=a-b,c-d,…`, with `If-Range` like [`HttpClient::get_range_opts`]).
    ///
    /// `spans` must be non-empty, at most [`MAX_SPANS_PER_REQUEST`](crate::MAX_SPANS_PER_REQUEST),
    /// each non-empty and inside the file, sorted, and neither overlapping nor touching (a gap of
    /// at least one byte between neighbours); otherwise `InvalidRange` (`BG_E_INVALID_RANGE`).
    ///
    /// The server may answer a `multipart/byteranges` 206 (parsed as it streams, every part
    /// checked to be exactly one requested span; fewer parts than spans is allowed, and
    /// [`MultiRangeBody::missing`] then names the rest) or, only when one span was asked, a plain
    /// 206 (or a 200 with the whole file, as [`HttpClient::get_range_opts`] accepts it). A server
    /// that merges, splits, repeats or adds ranges fails with `BG_E_INVALID_SERVER_RESPONSE`
    /// (fatal, REMOTE_FILE; spec §6.2), one that sends no part at all with the transient
    /// `ERROR_WINHTTP_INVALID_SERVER_RESPONSE` of any malformed body; a 200 to several spans is
    /// `BG_E_INSUFFICIENT_RANGE_SUPPORT` unless the version checks already say the file changed.
    pub async fn get_ranges_opts(
        &self,
        remote: &RemoteInfo,
        spans: &[Span],
        opts: &RequestOptions,
    ) -> Result<MultiRangeBody, FetchError> {
        multirange::check_spans(remote, spans)?;
        let range = multirange::range_header(spans);
        let (parts, body, url) = self.ranged_get(remote, &range, opts).await?;
        let head = multirange::check_head(&parts, remote, spans, &url, opts.allow_full_response)?;
        Ok(MultiRangeBody::new(
            head,
            body,
            spans,
            remote.size,
            self.inner.config.idle_timeout,
            parts.version,
            &url,
            Arc::clone(&self.inner.part_limits),
        ))
    }

    /// GET `remote.final_url` with `Range: <range>` (and `If-Range` when the probe saw a
    /// validator), following redirects as `opts` allow; returns the final response and its URL.
    pub(crate) async fn ranged_get(
        &self,
        remote: &RemoteInfo,
        range: &str,
        opts: &RequestOptions,
    ) -> Result<(http::response::Parts, Incoming, Url), FetchError> {
        let start = parse_url(&remote.final_url)?;
        let mut headers = self.own_headers();
        headers.insert(
            header::RANGE,
            HeaderValue::from_str(range)
                .map_err(|_| FetchError::invalid_range(format!("unencodable range {range}")))?,
        );
        if let Some(value) =
            headers::if_range(&remote.validator).and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert(header::IF_RANGE, value);
        }
        // The probe was redirected to another origin: it gets no custom headers, now or later.
        let custom = if remote.same_origin { &opts.headers } else { &HeaderMap::new() };
        let (resp, url) = self.send(Method::GET, &start, headers, custom, opts).await?;
        let (parts, body) = resp.into_parts();
        Ok((parts, body, url))
    }

    /// The headers bitsd sends with every request, to any origin.
    fn own_headers(&self) -> HeaderMap {
        self.inner.base_headers.clone()
    }

    /// Sends one request, following redirects as `opts` allow; returns the final response and
    /// its URL. `own` headers go to every hop; the job's `custom` ones only until a redirect
    /// leaves `start`'s origin, and not after it, even if the chain comes back.
    async fn send(
        &self,
        method: Method,
        start: &Url,
        own: HeaderMap,
        custom: &HeaderMap,
        opts: &RequestOptions,
    ) -> Result<(Response<Incoming>, Url), FetchError> {
        let mut headers = with_custom(custom, &own);
        let config = &self.inner.config;
        let mut redirects = Redirects::new(start, config.max_redirects)
            .allow_https_to_http(opts.allow_https_to_http);
        let mut url = start.clone();
        loop {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(to_uri(&url)?)
                .body(Empty::new())
                .map_err(|e| FetchError::bad_url(format!("cannot build request for {url}: {e}")))?;
            *req.headers_mut() = headers.clone();
            debug!(%method, %url, range = ?headers.get(header::RANGE), "request");
            // Connecting gets its own limit inside the connector; after that the server has
            // idle_timeout to answer.
            let limit = config.connect_timeout.saturating_add(config.idle_timeout);
            let resp = match tokio::time::timeout(limit, self.inner.client.request(req)).await {
                Err(_) => {
                    return Err(FetchError::timeout(format!(
                        "no response from {url} within {limit:?}"
                    )));
                }
                Ok(Err(err)) => {
                    let err = map_client_error(&err, url.as_str());
                    debug!(%method, %url, error = %err, "request failed");
                    return Err(err);
                }
                Ok(Ok(resp)) => resp,
            };
            let status = resp.status().as_u16();
            debug!(%method, %url, status, version = ?resp.version(), "response");
            if opts.redirects == RedirectPolicy::Disallow && is_disallowed_redirect(status) {
                let target = redirect_target(&url, resp.headers().get(header::LOCATION));
                debug!(from = %url, to = ?target.as_ref().map(Url::as_str), status, "redirect disallowed");
                return Err(FetchError::redirect_disallowed(
                    status,
                    url.as_str(),
                    target.map(String::from),
                ));
            }
            if !is_followed_redirect(status) {
                return Ok((resp, url));
            }
            let next = redirects.next(&url, status, resp.headers().get(header::LOCATION))?;
            debug!(from = %url, to = %next, status, "following redirect");
            if !same_origin(&url, &next) {
                headers = own.clone();
            }
            url = next;
        }
    }
}

/// What a HEAD said.
enum Head {
    /// The file's size and validators.
    Answered(RemoteInfo),
    /// HEAD is refused ([`probe::head_refused`]): the answer and the URL that gave it.
    Refused(http::response::Parts, Url),
}

/// A job's custom headers and bitsd's own, which win: custom headers are added first, then ours
/// replace any of the same name.
fn with_custom(custom: &HeaderMap, own: &HeaderMap) -> HeaderMap {
    let mut headers = custom.clone();
    for (name, value) in own {
        headers.insert(name.clone(), value.clone());
    }
    headers
}

/// The TLS-capable connector: ring provider, system roots (webpki roots if the system has none),
/// plus any extra roots; ALPN offers h2 and http/1.1.
fn connector(
    config: &HttpConfig,
    open: &Arc<AtomicUsize>,
) -> Result<HttpsConnector<Counted<HttpConnector>>, FetchError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_err = |e: &dyn std::fmt::Display| FetchError::tls(format!("TLS setup failed: {e}"));
    let builder = if config.extra_root_certs_der.is_empty() {
        match HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
            Ok(builder) => builder,
            Err(err) => {
                debug!(error = %err, "no native root certificates; using webpki roots");
                HttpsConnectorBuilder::new()
                    .with_provider_and_webpki_roots(provider)
                    .map_err(|e| tls_err(&e))?
            }
        }
    } else {
        let mut roots = RootCertStore::empty();
        let (added, _) =
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if added == 0 {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for der in &config.extra_root_certs_der {
            roots.add(CertificateDer::from(der.clone())).map_err(|e| tls_err(&e))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        HttpsConnectorBuilder::new().with_tls_config(tls)
    };
    Ok(builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(Counted::new(http, Arc::clone(open))))
}
