//! A private nginx on a free loopback port serving a directory: the real-world HTTP server of the
//! end-to-end tests (sendfile, its own `Range`/`ETag`/`Last-Modified` handling). Every instance has
//! its own config, logs and temp paths in a temp dir; the system nginx service is never touched.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running nginx; dropping it kills it.
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    /// Holds the config, logs and temp paths; removed on drop.
    prefix: tempfile::TempDir,
}

/// The nginx binary: `$NGINX`, else `nginx` on `PATH`, else the Debian location `/usr/sbin/nginx`.
/// Panics (never skips) when there is none.
pub fn nginx_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NGINX").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join("nginx")).collect::<Vec<_>>())
        .unwrap_or_default();
    let fallbacks = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"];
    on_path
        .into_iter()
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("nginx not installed: run `bash scripts/test.sh`"))
}

impl Nginx {
    /// Starts nginx serving `root` on 127.0.0.1 and waits until it accepts connections.
    pub fn start(root: &Path) -> Nginx {
        let binary = nginx_binary();
        let root = root.canonicalize().unwrap();
        // The port is picked by binding :0 and released before nginx binds it, so a parallel test
        // can take it in between: retry with a new port when nginx exits early.
        let mut last_error = String::new();
        for _ in 0..5 {
            let prefix = tempfile::Builder::new().prefix("bits-nginx-").tempdir().unwrap();
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let conf = prefix.path().join("nginx.conf");
            std::fs::write(&conf, config(prefix.path(), &root, addr)).unwrap();
            let error_log = prefix.path().join("error.log");
            let mut command = Command::new(&binary);
            command.arg("-p").arg(prefix.path()).arg("-c").arg(&conf);
            if supports_error_log_flag(&binary) {
                // The log used before the config is read; older nginx warns that it cannot open
                // the default /var/log/nginx/error.log and carries on.
                command.arg("-e").arg(&error_log);
            }
            let mut child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(prefix.path().join("stderr.log")).unwrap(),
                ))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Nginx { child, addr, prefix };
                }
                if let Some(status) = child.try_wait().unwrap() {
                    last_error = format!(
                        "nginx exited with {status}\nstderr:\n{}\nerror.log:\n{}",
                        read_lossy(&prefix.path().join("stderr.log")),
                        read_lossy(&error_log)
                    );
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "nginx did not listen on {addr} within 20 s:\n{}",
                        read_lossy(&error_log)
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nginx failed to start 5 times; last attempt: {last_error}");
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/NAME` for a file under the served root.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{}", self.addr, name.trim_start_matches('/'))
    }

    /// The access log so far: one line per request,
    /// `METHOD URI "RANGE" STATUS BODY_BYTES_SENT`.
    pub fn access_log(&self) -> String {
        read_lossy(&self.prefix.path().join("access.log"))
    }

    /// The error log so far (useful in failure messages).
    pub fn error_log(&self) -> String {
        read_lossy(&self.prefix.path().join("error.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx ≥ 1.19.5 has `-e FILE`; its `-h` output says so.
fn supports_error_log_flag(binary: &Path) -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        Command::new(binary)
            .arg("-h")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stderr).contains("-e filename"))
            .unwrap_or(false)
    })
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// One process (`master_process off`), no daemonising, every path inside `prefix`.
fn config(prefix: &Path, root: &Path, addr: SocketAddr) -> String {
    let p = prefix.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{
    worker_connections 256;
}}
http {{
    log_format ranges '$request_method $uri "$http_range" $status $body_bytes_sent';
    access_log {p}/access.log ranges;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    server {{
        listen {addr};
        root {root};
    }}
}}
"#,
        root = root.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bits_testkit::raw::raw_request;

    #[tokio::test]
    async fn nginx_serves_ranges_with_the_file_mtime() {
        let root = tempfile::tempdir().unwrap();
        let data = bits_testkit::data::random_bytes(9, 5000);
        let path = root.path().join("f.bin");
        std::fs::write(&path, &data).unwrap();
        let mtime = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        let nginx = Nginx::start(root.path());
        let (head, body) =
            raw_request(nginx.addr(), "GET", "/f.bin", &[("Range", "bytes=100-199")]).await;
        assert!(head.starts_with("HTTP/1.1 206"), "{head}\n{}", nginx.error_log());
        assert!(head.contains("Last-Modified: Fri, 14 Jul 2017 02:40:00 GMT"), "{head}");
        assert_eq!(body, &data[100..200]);
        let (head, _) = raw_request(nginx.addr(), "GET", "/nope", &[]).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert!(
            nginx.access_log().contains("GET /f.bin \"bytes=100-199\" 206 100"),
            "{}",
            nginx.access_log()
        );
    }
}
