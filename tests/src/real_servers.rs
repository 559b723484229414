//! A private lighttpd, Apache httpd or Python `http.server` on a free loopback port serving a
//! directory: servers nobody here wrote, each with its own answers to ranges (lighttpd returns at
//! most 10 parts to a multi-range request; Apache sends no Content-Length on HEAD for an empty
//! file and labels a `.gz` with `Content-Encoding: gzip` under `AddEncoding`; Python's ignores
//! Range and always sends the whole file). As with [`crate::nginx`], every
//! instance has its own config and logs in a temp dir, runs in the foreground as one process,
//! and the packages' own services are never touched.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server, and how it is run.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Lighttpd,
    Apache,
    /// `python3 -m http.server`: no range support at all.
    Python,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Lighttpd => "lighttpd",
            Kind::Apache => "apache2",
            Kind::Python => "python3",
        }
    }

    /// `$LIGHTTPD` / `$APACHE2`, else the name on `PATH`, else Debian's `/usr/sbin`. Panics
    /// (never skips) when there is none.
    fn binary(self) -> PathBuf {
        let var = self.name().to_ascii_uppercase();
        if let Some(path) = std::env::var_os(&var).filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
        let on_path = std::env::var_os("PATH")
            .map(|paths| {
                std::env::split_paths(&paths).map(|d| d.join(self.name())).collect::<Vec<_>>()
            })
            .unwrap_or_default();
        on_path
            .into_iter()
            .chain([Path::new("/usr/sbin").join(self.name())])
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{} not installed: run `bash scripts/test.sh`", self.name()))
    }

    /// The command that runs the server in the foreground, one process, with `conf` (Python's
    /// takes its root and address as arguments instead).
    fn command(self, conf: &Path, root: &Path, addr: SocketAddr) -> Command {
        let mut command = Command::new(self.binary());
        match self {
            Kind::Lighttpd => command.arg("-D").arg("-f").arg(conf),
            Kind::Apache => command.arg("-X").arg("-f").arg(conf),
            Kind::Python => command
                .args(["-m", "http.server", "--bind"])
                .arg(addr.ip().to_string())
                .arg("--directory")
                .arg(root)
                .arg(addr.port().to_string()),
        };
        command
    }

    /// The file its requests are logged to: Python's server logs them on stderr.
    fn access_log(self) -> &'static str {
        match self {
            Kind::Lighttpd | Kind::Apache => "access.log",
            Kind::Python => "stderr.log",
        }
    }

    /// The config: `root` on `addr`, logs in `prefix`, every access logged as
    /// `METHOD URI "RANGE" STATUS BODY_BYTES` (what [`crate::nginx::Nginx::access_log`] writes).
    fn config(self, prefix: &Path, root: &Path, addr: SocketAddr) -> String {
        let (p, r, ip, port) = (prefix.display(), root.display(), addr.ip(), addr.port());
        match self {
            Kind::Lighttpd => format!(
                r#"server.document-root = "{r}"
server.bind = "{ip}"
server.port = {port}
server.errorlog = "{p}/error.log"
server.pid-file = "{p}/server.pid"
server.modules = ( "mod_accesslog" )
accesslog.filename = "{p}/access.log"
accesslog.format = "%m %U \"%{{Range}}i\" %>s %b"
mimetype.assign = ( "" => "application/octet-stream" )
"#
            ),
            Kind::Apache => format!(
                r#"ServerRoot "{p}"
DefaultRuntimeDir "{p}"
PidFile "{p}/server.pid"
Listen {addr}
ServerName {ip}
LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule mime_module {m}/mod_mime.so
ErrorLog "{p}/error.log"
LogFormat "%m %U \"%{{Range}}i\" %>s %B" ranges
CustomLog "{p}/access.log" ranges
TypesConfig /dev/null
DefaultType application/octet-stream
DocumentRoot "{r}"
<Directory "{r}">
    Require all granted
</Directory>
# A stored .tar.gz is labelled with its encoding, as Debian's default mime.conf does.
AddEncoding gzip .gz
"#,
                m = apache_modules().display()
            ),
            Kind::Python => String::new(),
        }
    }
}

/// Where Apache's modules are: `$APACHE2_MODULES`, else Debian's directory.
fn apache_modules() -> PathBuf {
    std::env::var_os("APACHE2_MODULES")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/usr/lib/apache2/modules"), PathBuf::from)
}

/// A running lighttpd or Apache; dropping it kills it.
pub struct RealServer {
    kind: Kind,
    child: Child,
    addr: SocketAddr,
    /// Holds the config and logs; removed on drop.
    prefix: tempfile::TempDir,
}

impl RealServer {
    /// Starts `kind` serving `root` on 127.0.0.1 and waits until it accepts connections.
    pub fn start(kind: Kind, root: &Path) -> RealServer {
        let root = root.canonicalize().unwrap();
        // The port is picked by binding :0 and released before the server binds it, so a parallel
        // test can take it in between: retry with a new port when the server exits early.
        let mut last_error = String::new();
        for _ in 0..5 {
            let prefix = tempfile::Builder::new().prefix("bits-server-").tempdir().unwrap();
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let conf = prefix.path().join("server.conf");
            std::fs::write(&conf, kind.config(prefix.path(), &root, addr)).unwrap();
            let stderr = std::fs::File::create(prefix.path().join("stderr.log")).unwrap();
            let mut child = kind
                .command(&conf, &root, addr)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(stderr))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", kind.name()));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return RealServer { kind, child, addr, prefix };
                }
                if let Some(status) = child.try_wait().unwrap() {
                    last_error = format!(
                        "{} exited with {status}\nstderr:\n{}\nerror.log:\n{}",
                        kind.name(),
                        read_lossy(&prefix.path().join("stderr.log")),
                        read_lossy(&prefix.path().join("error.log"))
                    );
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{} did not listen on {addr} within 20 s", kind.name());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("{} failed to start 5 times; last attempt: {last_error}", kind.name());
    }

    /// `http://127.0.0.1:PORT/NAME` for a file under the served root.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{}", self.addr, name.trim_start_matches('/'))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The access log so far: one line per finished request, `METHOD URI "RANGE" STATUS BYTES`
    /// (Python's: `ADDR - - [TIME] "METHOD URI HTTP/1.1" STATUS -`). lighttpd writes its log in
    /// batches: [`RealServer::stop`] it first to read every line.
    pub fn access_log(&self) -> String {
        read_lossy(&self.prefix.path().join(self.kind.access_log()))
    }

    /// Stops the server with SIGTERM and waits for it, so its logs are complete (lighttpd
    /// flushes its access log on the way out). Its files stay readable until it is dropped.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
            let _ = self.child.wait();
        }
    }

    /// The `Range` header of each GET of `/name` in the access log, in order (`-` for none).
    pub fn ranges_asked(&self, name: &str) -> Vec<String> {
        let get = format!("GET /{} \"", name.trim_start_matches('/'));
        self.access_log()
            .lines()
            .filter_map(|line| line.strip_prefix(&get))
            .filter_map(|rest| rest.split('"').next().map(str::to_string))
            .collect()
    }

    /// The error log so far (for failure messages).
    pub fn error_log(&self) -> String {
        read_lossy(&self.prefix.path().join("error.log"))
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bits_testkit::raw::raw_request;

    /// What the end-to-end tests rely on, seen byte for byte: lighttpd answers 11 ranges with
    /// the first 10 parts; Apache's HEAD of an empty file has no Content-Length, and a `.tar.gz`
    /// is labelled gzip on HEAD and on a range.
    #[tokio::test]
    async fn the_servers_answer_as_the_tests_expect() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f.bin"), bits_testkit::data::random_bytes(5, 100_000))
            .unwrap();
        std::fs::write(root.path().join("empty.bin"), b"").unwrap();
        std::fs::write(root.path().join("a.tar.gz"), bits_testkit::data::random_bytes(6, 5000))
            .unwrap();
        let lighttpd = RealServer::start(Kind::Lighttpd, root.path());
        let ranges: Vec<String> =
            (0..11).map(|i| format!("{}-{}", i * 1000, i * 1000 + 9)).collect();
        let range = format!("bytes={}", ranges.join(","));
        let (head, body) =
            raw_request(lighttpd.addr(), "GET", "/f.bin", &[("Range", &range)]).await;
        assert!(head.starts_with("HTTP/1.1 206"), "{head}\n{}", lighttpd.error_log());
        let parts = String::from_utf8_lossy(&body).matches("Content-Range: bytes").count();
        assert_eq!(parts, 10, "{head}");
        let mut lighttpd = lighttpd;
        lighttpd.stop();
        assert_eq!(lighttpd.ranges_asked("f.bin"), [range]);

        let apache = RealServer::start(Kind::Apache, root.path());
        let (head, _) = raw_request(apache.addr(), "HEAD", "/empty.bin", &[]).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", apache.error_log());
        assert!(!head.to_ascii_lowercase().contains("content-length"), "{head}");
        let (head, _) = raw_request(apache.addr(), "HEAD", "/a.tar.gz", &[]).await;
        assert!(head.contains("Content-Encoding: gzip"), "{head}");
        let (head, body) =
            raw_request(apache.addr(), "GET", "/a.tar.gz", &[("Range", "bytes=10-19")]).await;
        assert!(
            head.starts_with("HTTP/1.1 206") && head.contains("Content-Encoding: gzip"),
            "{head}"
        );
        assert_eq!(body, bits_testkit::data::random_bytes(6, 5000)[10..20]);
    }
}
