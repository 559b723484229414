//! What the fetcher's tests share: the bits-testkit server set up the way they expect (one
//! generated file at `/file` plus the redirect routes below; a test scripts its faults on top),
//! and a client with short limits.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use bits_http::{HttpClient, HttpConfig};
use bits_testkit::data::random_bytes;
pub use bits_testkit::faults::{Fault, FaultFile, FaultServer, Logged};
use bytes::Bytes;
pub use http::Method;

pub const SIZE: usize = 100_000;
pub const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
pub const ETAG: &str = "\"v1\"";
pub const GET: Option<Method> = Some(Method::GET);
pub const HEAD: Option<Method> = Some(Method::HEAD);

/// The content of `/file`.
pub static DATA: LazyLock<Bytes> = LazyLock::new(|| random_bytes(1, SIZE).into());

/// `/file` at ETag `etag`.
pub fn file(etag: &str) -> FaultFile {
    let last_modified: SystemTime = httpdate::parse_http_date(LAST_MODIFIED).unwrap();
    FaultFile { data: DATA.clone(), etag: Some(etag.into()), last_modified: Some(last_modified) }
}

/// Plain http (HTTP/1.1, or h2c with prior knowledge) on 127.0.0.1.
pub async fn start() -> FaultServer {
    routes(FaultServer::start().await)
}

/// https with the given rustls server config (ALPN set by the caller).
pub async fn start_tls(config: rustls::ServerConfig) -> FaultServer {
    routes(FaultServer::start_tls(config).await)
}

/// A server whose `/file` always gets `fault` on a GET (a HEAD is answered correctly).
pub async fn start_with(fault: Fault) -> FaultServer {
    let server = start().await;
    server.always("file", GET, fault);
    server
}

/// `/file`, and the redirects: `/r/<status>` to `/file#frag` (each 3xx, 300 included),
/// `/chain/<n>` a chain of n 307s and a 301 to `/file`, relative Locations with dot segments and
/// without a slash, a loop, a scheme other than http, a 302 without a Location, and
/// `/abs-redirect` to wherever [`redirect_to`] points it. A `Range` the server cannot take is
/// answered 400, so a client sending a wrong one fails.
fn routes(server: FaultServer) -> FaultServer {
    server.put_file("file", file(ETAG));
    server.set_strict_ranges(true);
    for status in [300, 301, 302, 303, 307, 308] {
        server.always(&format!("r/{status}"), None, Fault::Redirect(status, "/file#frag".into()));
    }
    server.always("chain/0", None, Fault::Redirect(301, "/file".into()));
    for n in 1..=10 {
        let next = format!("/chain/{}", n - 1);
        server.always(&format!("chain/{n}"), None, Fault::Redirect(307, next));
    }
    let redirects = [
        ("dir/sub/start", 302, "../../file"),
        ("see-other", 303, "file"),
        ("loop/a", 302, "/loop/b"),
        ("loop/b", 308, "a"),
        ("ftp", 302, "ftp://example.com/file"),
    ];
    for (path, status, location) in redirects {
        server.always(path, None, Fault::Redirect(status, location.into()));
    }
    server.always("no-location", None, Fault::Status(302));
    server
}

/// Points `/abs-redirect` (a 302) at `target`.
pub fn redirect_to(server: &FaultServer, target: &str) {
    server.clear_faults("abs-redirect");
    server.always("abs-redirect", None, Fault::RedirectTo(target.into()));
}

/// `/file` answers GETs with `fault` from now on (`None`: correctly again).
pub fn set_fault(server: &FaultServer, fault: Option<Fault>) {
    server.clear_faults("file");
    if let Some(fault) = fault {
        server.always("file", GET, fault);
    }
}

/// The last request the server saw.
pub fn last(server: &FaultServer) -> Logged {
    server.log().pop().unwrap()
}

/// A client with short limits so a failing test fails fast.
pub fn client() -> HttpClient {
    client_with(|_| {})
}

pub fn client_with(f: impl FnOnce(&mut HttpConfig)) -> HttpClient {
    let mut config = HttpConfig {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        ..HttpConfig::default()
    };
    f(&mut config);
    HttpClient::new(config).unwrap()
}

/// Reads a whole range body.
pub async fn read_all(body: &mut bits_http::RangeBody) -> Result<Vec<u8>, bits_http::FetchError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next_chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
