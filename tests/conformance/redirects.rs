//! Conformance cases 66–70 (spec §10 "Redirects / TLS", §6.2): the three redirect policies of
//! SetSecurityFlags (ALLOW_SILENT, ALLOW_REPORT 0x100, DISALLOW 0x200) and a self-signed HTTPS
//! server.
//!
//! Left out: 69 (HTTPS → HTTP redirect: bitsd has no way to trust a test CA, so an HTTPS test
//! server fails at the TLS handshake before any redirect) and the second half of 70
//! (SSL_IGNORE_UNKNOWN_CA: bitsd has no TLS ignore flags).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bits_client::Client;
use bits_core::job::security;
use bits_core::{Code, ErrorContext, JobId, JobState, Priority};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_testkit::faults::{Fault, FaultServer};
use bits_tests::daemon::TestDaemon;

use bits_tests::helpers::{fault_log, wait_job, wait_state_within};

const SIZE: usize = 256 * 1024;
const WAIT: Duration = Duration::from_secs(20);

/// A fault server where `/old/f.bin` redirects (302) to `/new/f.bin`, a daemon, and a FOREGROUND
/// job for the old URL with the security `flags` (not resumed yet).
struct Redirected {
    server: FaultServer,
    daemon: TestDaemon,
    client: Client,
    job: JobId,
    data: Vec<u8>,
}

async fn redirected(seed: u64, flags: u32) -> Redirected {
    let server = FaultServer::start().await;
    let data = random_bytes(seed, SIZE);
    server.add_file("new/f.bin", data.clone());
    server.always("old/f.bin", None, Fault::RedirectTo(server.url("new/f.bin")));
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let job = client.create_job("redirect", Priority::Foreground).await.unwrap();
    client.add_file(job, &server.url("old/f.bin"), &daemon.out_dir().join("f.bin")).await.unwrap();
    if flags != 0 {
        assert_eq!(client.set_security_flags(job, flags).await.unwrap(), Code::S_OK);
    }
    Redirected { server, daemon, client, job, data }
}

impl Redirected {
    async fn remote_name(&self) -> String {
        self.client.list_files(self.job).await.unwrap()[0].remote_url.clone()
    }

    /// Resumes and waits for TRANSFERRED.
    async fn downloads(&self) {
        self.client.resume(self.job).await.unwrap();
        wait_state_within(&self.client, self.job, JobState::Transferred, WAIT).await;
    }

    /// Completes and checks the file.
    async fn completes(&self) {
        assert_eq!(self.client.complete(self.job).await.unwrap(), Code::S_OK);
        let got = std::fs::read(self.daemon.out_dir().join("f.bin")).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(&self.data));
    }
}

// Case 66: a 302 with the default policy (ALLOW_SILENT) is followed; the remote name stays the
// original URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_is_followed_silently_by_default() {
    let r = redirected(66, 0).await;
    assert_eq!(r.client.get_job(r.job).await.unwrap().security_flags, 0);
    r.downloads().await;
    assert_eq!(r.remote_name().await, r.server.url("old/f.bin"));
    let log = r.server.log();
    assert!(log.iter().any(|l| l.path == "/new/f.bin" && l.sent > 0), "{}", fault_log(&log));
    r.completes().await;
}

// Case 67: with ALLOW_REPORT (0x100) the redirect is followed and the remote name becomes the
// final URL, so a later ReplaceRemotePrefix on the original prefix → S_FALSE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_report_makes_the_final_url_the_remote_name() {
    let r = redirected(67, security::REDIRECT_POLICY_ALLOW_REPORT).await;
    assert_eq!(security::REDIRECT_POLICY_ALLOW_REPORT, 0x100);
    r.downloads().await;
    assert_eq!(r.remote_name().await, r.server.url("new/f.bin"));
    let old_prefix = format!("http://{}/old/", r.server.addr());
    let code = r.client.replace_remote_prefix(r.job, &old_prefix, "http://x.example/").await;
    assert_eq!(code.unwrap(), Code::S_FALSE);
    assert_eq!(r.remote_name().await, r.server.url("new/f.bin"));
    r.completes().await;
}

// Case 68: with DISALLOW (0x200) a 302 is ERROR HRESULT_FROM_WIN32(HTTP_STATUS_REDIRECT)
// (0x8007012E), and the remote name becomes the redirect target, which is not fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disallow_fails_on_a_redirect_and_reports_the_target() {
    let r = redirected(68, security::REDIRECT_POLICY_DISALLOW).await;
    assert_eq!(security::REDIRECT_POLICY_DISALLOW, 0x200);
    r.client.resume(r.job).await.unwrap();
    let info = wait_job(&r.client, r.job, "ERROR (redirect disallowed)", WAIT, |i| {
        assert_ne!(i.state, JobState::Transferred, "the redirect was followed");
        i.state == JobState::Error
    })
    .await;
    let error = info.error.unwrap();
    assert_eq!(error.code, Code::Win32Http(302));
    assert_eq!(error.code.hresult(), 0x8007_012E);
    assert_eq!(error.file_index, Some(0));
    assert_eq!(r.client.get_error(r.job).await.unwrap().code, Code::Win32Http(302));
    assert_eq!(r.remote_name().await, r.server.url("new/f.bin"));
    let log = r.server.log();
    assert!(log.iter().all(|l| l.path != "/new/f.bin"), "{}", fault_log(&log));
}

/// `openssl s_server` with a fresh self-signed certificate on a free loopback port; killed on
/// drop.
struct SelfSignedServer {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl SelfSignedServer {
    fn start() -> SelfSignedServer {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is needed for the self-signed HTTPS case");
        assert!(made.success(), "openssl req failed");
        // The port is released before openssl binds it; retry with another if that races.
        for _ in 0..5 {
            let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            if let Some(child) = Self::serve(dir.path(), &key, &cert, addr) {
                return SelfSignedServer { child, addr, _dir: dir };
            }
        }
        panic!("openssl s_server did not start");
    }

    /// `openssl s_server` on `addr`, once it accepts connections.
    fn serve(dir: &Path, key: &Path, cert: &Path, addr: SocketAddr) -> Option<Child> {
        let mut child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(addr.to_string())
            .arg("-key")
            .arg(key)
            .arg("-cert")
            .arg(cert)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            if TcpStream::connect(addr).is_ok() {
                return Some(child);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for SelfSignedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Case 70: an HTTPS server with a self-signed certificate and no ignore flags → ERROR (a TLS
// failure, not retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_https_without_ignore_flags_is_an_error() {
    let tls = SelfSignedServer::start();
    let daemon = TestDaemon::start_with(&["--retry-delay-secs", "1"]).await;
    let client = daemon.client().await;
    let job = client.create_job("tls", Priority::Foreground).await.unwrap();
    let url = format!("https://{}/f.bin", tls.addr);
    client.add_file(job, &url, &daemon.out_dir().join("f.bin")).await.unwrap();
    client.resume(job).await.unwrap();
    let info = wait_job(&client, job, "ERROR (untrusted certificate)", WAIT, |i| {
        assert_ne!(i.state, JobState::Transferred);
        i.state == JobState::Error
    })
    .await;
    let error = info.error.unwrap();
    assert_eq!(
        (error.code, error.context),
        (Code::ERROR_WINHTTP_SECURE_FAILURE, ErrorContext::GeneralTransport),
        "{}",
        error.description
    );
    // Fatal: still ERROR after the retry delay.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(client.get_job(job).await.unwrap().state, JobState::Error);
}
