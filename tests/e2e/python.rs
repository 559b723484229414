//! The real Python `grpcio` against the real daemon, default channel options: the example of
//! docs/clients.md (extracted from the markdown and run as it stands), every `:authority` a
//! client may send on the socket, Health (Check, and Watch across a SIGTERM) and server
//! reflection v1 and v1alpha, on the socket and on TCP with and without the bearer token.
//!
//! The Python is `$BITS_TEST_PYTHON`, else the venv `scripts/test.sh` makes (target/pyenv), else
//! `python3`; it must have grpcio, grpcio-tools, grpcio-health-checking and grpcio-reflection. The
//! stubs are generated from proto/ into a temp dir on every run.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use bits_tests::daemon::{TestDaemon, own_target_dir};
use bits_tests::fixture::serving;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::free_port;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// How long one Python run may take (interpreter start-up and imports included).
const PYTHON_TIMEOUT: Duration = Duration::from_secs(60);

/// The Python to run, checked to have what the tests import; panics saying how to get one.
fn python() -> PathBuf {
    let venv = own_target_dir().parent().unwrap().join("pyenv/bin/python3");
    let python = match std::env::var_os("BITS_TEST_PYTHON") {
        Some(path) => PathBuf::from(path),
        None if venv.exists() => venv,
        None => PathBuf::from("python3"),
    };
    let check = std::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_tools.protoc, grpc_health.v1, grpc_reflection.v1alpha"])
        .output();
    let missing = match check {
        Ok(out) if out.status.success() => return python,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    panic!(
        "{} cannot run the Python client tests: {missing}\n\
         `bash scripts/test.sh` creates target/pyenv with them; or set BITS_TEST_PYTHON to a python3 \
         with `pip install grpcio grpcio-tools grpcio-health-checking grpcio-reflection`",
        python.display()
    );
}

/// A temp dir holding `bits/v1/bits_pb2*.py`, generated from proto/ by grpc_tools.
fn stubs(python: &Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("bitsd-py-").tempdir().unwrap();
    let out = std::process::Command::new(python)
        .args(["-m", "grpc_tools.protoc", "-I", &format!("{REPO}/proto")])
        .arg(format!("--python_out={}", dir.path().display()))
        .arg(format!("--grpc_python_out={}", dir.path().display()))
        .arg("bits/v1/bits.proto")
        .output()
        .unwrap();
    assert!(out.status.success(), "grpc_tools.protoc failed: {}", text(&out.stderr));
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The first ```python block of docs/clients.md.
fn doc_example() -> String {
    let doc = std::fs::read_to_string(format!("{REPO}/docs/clients.md")).unwrap();
    let start = doc.find("```python\n").expect("docs/clients.md has a ```python block") + 10;
    let len = doc[start..].find("```").expect("the python block ends");
    doc[start..start + len].to_string()
}

/// Python with the stubs importable, stdin closed.
fn command(python: &Path, stubs: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(python);
    command.env("PYTHONPATH", stubs).env("PYTHONUNBUFFERED", "1").stdin(Stdio::null());
    command.kill_on_drop(true);
    command
}

/// Runs `script ARGS` and returns what it printed; panics if it takes over [`PYTHON_TIMEOUT`].
async fn run(mut command: tokio::process::Command) -> Output {
    tokio::time::timeout(PYTHON_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not finish within {PYTHON_TIMEOUT:?}"))
        .unwrap()
}

/// Runs `command`, which must exit 0, and returns its stdout. A failure names `what` and shows
/// both outputs and `more` (what else explains it).
async fn run_ok(
    command: tokio::process::Command,
    what: &str,
    more: impl FnOnce() -> String,
) -> String {
    let out = run(command).await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{what}{}\n--- stdout ---\n{stdout}--- stderr ---\n{}{}",
        out.status,
        text(&out.stderr),
        more()
    );
    stdout
}

/// `probe.py TARGET ARGS...`, which must exit 0; its stdout.
async fn probe(python: &Path, stubs: &Path, target: &str, args: &[&str]) -> String {
    let mut command = command(python, stubs);
    command.arg(format!("{REPO}/tests/e2e/python/probe.py")).arg(target).args(args);
    run_ok(command, &format!("probe.py {target} {args:?}: "), String::new).await
}

fn unix(daemon: &TestDaemon) -> String {
    format!("unix:{}", daemon.socket().display())
}

#[tokio::test]
async fn the_python_example_of_the_docs_downloads_with_default_options() {
    let python = python();
    let stubs = stubs(&python);
    let script = stubs.path().join("download.py");
    std::fs::write(&script, doc_example()).unwrap();
    let data = bits_testkit::data::random_bytes(14, 300_000);
    let server = serving("f.bin", data.clone()).await;
    let daemon = TestDaemon::start().await;
    let dest = daemon.out_dir().join("f.bin");

    let mut command = command(&python, stubs.path());
    command.arg(&script).arg(server.url("f.bin")).arg(&dest).env("BITSD_SOCKET", daemon.socket());
    let stdout = run_ok(command, "", || format!("--- bitsd ---\n{}", daemon.log_tail(30))).await;
    assert!(stdout.contains("filled: [(0, 300000)]\n"), "{stdout}");
    assert!(stdout.contains(&format!("{}: done\n", dest.display())), "{stdout}");
    assert!(
        stdout.ends_with("refused: FAILED_PRECONDITION BG_E_INVALID_STATE 0x80200002\n"),
        "{stdout}"
    );
    assert!(std::fs::read(&dest).unwrap() == data, "the file in place is the served one");
}

#[tokio::test]
async fn every_authority_a_client_may_send_on_the_socket_is_served() {
    let python = python();
    let stubs = stubs(&python);
    let daemon = TestDaemon::start().await;
    let out = probe(&python, stubs.path(), &unix(&daemon), &["authorities"]).await;
    assert_eq!(
        out,
        "authority default: ok\nauthority localhost: ok\nauthority empty: ok\n\
         authority path: ok\nauthority percent-encoded: ok\n"
    );
}

#[tokio::test]
async fn health_and_reflection_answer_on_the_socket() {
    let python = python();
    let stubs = stubs(&python);
    let daemon = TestDaemon::start().await;
    let target = unix(&daemon);
    let health = probe(&python, stubs.path(), &target, &["health"]).await;
    assert_eq!(
        health,
        "health '': SERVING\nhealth 'bits.v1.Bits': SERVING\nhealth 'no.Such': NOT_FOUND\n"
    );
    let reflection = probe(&python, stubs.path(), &target, &["reflection"]).await;
    for version in ["v1alpha", "v1"] {
        let services = format!(
            "reflection {version} services: bits.v1.Bits grpc.health.v1.Health \
             grpc.reflection.v1.ServerReflection grpc.reflection.v1alpha.ServerReflection\n"
        );
        assert!(reflection.contains(&services), "{reflection}");
        let files = format!(
            "reflection {version} files: bits/v1/bits.proto google/protobuf/timestamp.proto; \
             bits.v1.Bits has "
        );
        assert!(reflection.contains(&files), "{reflection}");
    }
    assert!(reflection.contains("CreateJob takes bits.v1.CreateJobRequest"), "{reflection}");
}

#[tokio::test]
async fn a_health_watch_sees_not_serving_at_sigterm_and_ends() {
    let python = python();
    let stubs = stubs(&python);
    let mut daemon = TestDaemon::start().await;
    let mut command = command(&python, stubs.path());
    command
        .arg(format!("{REPO}/tests/e2e/python/probe.py"))
        .arg(unix(&daemon))
        .arg("watch")
        .stdout(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next =
        async || tokio::time::timeout(PYTHON_TIMEOUT, lines.next_line()).await.unwrap().unwrap();
    assert_eq!(next().await.as_deref(), Some("watch: SERVING"));
    let status = daemon.terminate().await;
    assert!(status.success(), "{status}");
    assert_eq!(next().await.as_deref(), Some("watch: NOT_SERVING"));
    assert_eq!(next().await.as_deref(), Some("watch: ended"));
    assert!(child.wait().await.unwrap().success());
    let log = daemon.log();
    assert!(!log.contains("did not close within"), "the watch held the shutdown up:\n{log}");
}

/// A daemon serving TCP on a free loopback port with `token`, as an unprivileged uid.
async fn tcp_daemon(dir: &Path, token: &str) -> (TestDaemon, std::net::SocketAddr) {
    let addr = free_port();
    let token_path = dir.join("tcp.token");
    std::fs::write(&token_path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let uid = match rustix::process::geteuid().as_raw() {
        0 => 4242,
        own => own,
    };
    let config = dir.join("bitsd.toml");
    let toml = format!("[tcp]\nlisten = \"{addr}\"\ntoken_file = {token_path:?}\nuid = {uid}\n");
    std::fs::write(&config, toml).unwrap();
    (TestDaemon::start_with(&["--config", config.to_str().unwrap()]).await, addr)
}

#[tokio::test]
async fn health_and_reflection_over_tcp_need_the_bearer_token() {
    let python = python();
    let stubs = stubs(&python);
    let dir = tempfile::tempdir().unwrap();
    let token = "py-token-8d1e";
    let (_daemon, addr) = tcp_daemon(dir.path(), token).await;
    let target = addr.to_string();
    let health = probe(&python, stubs.path(), &target, &["--token", token, "health"]).await;
    assert!(health.starts_with("health '': SERVING\nhealth 'bits.v1.Bits': SERVING\n"), "{health}");
    let reflection = probe(&python, stubs.path(), &target, &["--token", token, "reflection"]).await;
    assert!(reflection.contains("reflection v1 services: bits.v1.Bits "), "{reflection}");
    assert!(reflection.contains("reflection v1alpha files: bits/v1/bits.proto "), "{reflection}");
    let refused = probe(&python, stubs.path(), &target, &["refused"]).await;
    assert_eq!(
        refused,
        "health: UNAUTHENTICATED E_ACCESSDENIED\n\
         reflection v1alpha: UNAUTHENTICATED E_ACCESSDENIED\n\
         reflection v1: UNAUTHENTICATED E_ACCESSDENIED\n"
    );
}
