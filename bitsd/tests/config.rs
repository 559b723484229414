//! The configuration file and the TCP listener, end to end: `bitsd --check-config`, a daemon that
//! takes its settings from a file, and gRPC over loopback TCP with a bearer token (through the
//! client library, raw gRPC and `bitsctl --tcp`).
//!
//! Runs the real binaries from the target directory (`cargo build --workspace --bins`, as for the
//! end-to-end suite in `tests/`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bits_client::{Client, ClientError, Token};
use bits_core::{Code, Priority};
use bits_tests::daemon::TestDaemon;

fn bitsd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_bitsd"))
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// `bitsd --check-config --config PATH`, with a private socket and data dir in case it did more
/// than check.
fn check_config(dir: &Path, config: &Path) -> Output {
    Command::new(bitsd())
        .arg("--check-config")
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(dir.join("bitsd.sock"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("BITSD_SOCKET")
        .env_remove("BITSD_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A loopback port nobody listens on right now.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A token file with mode 0600.
fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = write(&dir.join("tcp.token"), &format!("{token}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The uid TCP callers act as: the test's own uid, or (as root, where it must be named) an
/// unprivileged one, which also shows the token does not act as root.
fn tcp_uid() -> u32 {
    match rustix::process::geteuid().as_raw() {
        0 => 4242,
        own => own,
    }
}

#[test]
fn check_config_accepts_a_good_file_and_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "good-token");
    let store = dir.path().join("store");
    let config = write(
        &dir.path().join("bitsd.toml"),
        &format!(
            "socket = {:?}\ndata_dir = {:?}\n\n[limits]\nmax_jobs_per_user = 3\n\n[transfer]\nsync_bytes = 1048576\n\n[access]\nadmin_uids = [0]\nadmin_group = \"root\"\n\n[tcp]\nlisten = \"{}\"\ntoken_file = {:?}\nuid = {}\n\n[metrics]\nlisten = \"{}\"\n\n[log]\nformat = \"json\"\n",
            dir.path().join("s/bitsd.sock").display().to_string(),
            store.display().to_string(),
            free_port(),
            token.display().to_string(),
            tcp_uid(),
            free_port(),
        ),
    );
    let out = check_config(dir.path(), &config);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("config OK: {}\n", config.display()));
    assert_eq!(text(&out.stderr), "", "nothing is logged");
    for path in
        [dir.path().join("s"), store, dir.path().join("data"), dir.path().join("bitsd.sock")]
    {
        assert!(!path.exists(), "--check-config created {}", path.display());
    }
}

#[test]
fn check_config_rejects_a_bad_file_naming_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "# limits\n[limits]\nmax_jobs_per_user = 5\nmax_jobz_per_user = 2\n".to_string(),
            ":4: unknown key \"max_jobz_per_user\" in [limits]",
        ),
        (
            "socket = \"/run/x.sock\"\nkeep_awake_us = 10001\n".to_string(),
            ":2: keep_awake_us: must be at most 10000",
        ),
        (
            "[transfer]\n\nsync_bytes = 0\n".to_string(),
            ":3: transfer.sync_bytes: must be at least 1",
        ),
        (
            "[transfer]\nidle_timeout_ms = \"1m\"\n".to_string(),
            ":2: transfer.idle_timeout_ms: invalid type: string \"1m\", expected u64",
        ),
        (
            "[access]\nadmin_group = \"no-such-group-bitsd-e2e\"\n".to_string(),
            ":2: access.admin_group: no group \"no-such-group-bitsd-e2e\"",
        ),
        (
            format!(
                "[tcp]\nlisten = \"0.0.0.0:7781\"\ntoken_file = {:?}\nuid = 1000\n",
                token_file(dir.path(), "t").display().to_string()
            ),
            ":2: tcp.listen: 0.0.0.0:7781 is not a loopback address",
        ),
        (
            "[metrics]\nlisten = \"192.168.1.10:9781\"\n".to_string(),
            ":2: metrics.listen: 192.168.1.10:9781 is not a loopback address",
        ),
        (
            "[metrics]\nlisten = \"127.0.0.1:9781\"\nauth = false\n".to_string(),
            ":3: unknown key \"auth\" in [metrics] (expected listen)",
        ),
    ];
    for (i, (toml, expected)) in cases.iter().enumerate() {
        let config = write(&dir.path().join(format!("bad{i}.toml")), toml);
        let out = check_config(dir.path(), &config);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{toml}\nstderr: {stderr}");
        assert_eq!(text(&out.stdout), "", "{toml}");
        assert!(
            stderr.starts_with(&format!("{}{expected}", config.display())),
            "{toml}\nstderr: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }

    // A token file others may read, and a private one of another user (its owner could write
    // the token of their choice): refused, naming the file and why.
    let loose = write(&dir.path().join("loose.token"), "t\n");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let theirs = write(&dir.path().join("theirs.token"), "t\n");
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    let cases = [
        (&loose, "is readable or writable by group or others (mode 0644)"),
        (&theirs, "belongs to uid 65534, not to the daemon's uid 0"),
    ];
    for (i, (token, why)) in cases.into_iter().enumerate() {
        let config = write(
            &dir.path().join(format!("token{i}.toml")),
            &format!(
                "[tcp]\nlisten = \"127.0.0.1:7781\"\ntoken_file = {:?}\nuid = {}\n",
                token.display().to_string(),
                tcp_uid()
            ),
        );
        let out = check_config(dir.path(), &config);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        let expected = format!("{}:3: tcp.token_file: {} {why}", config.display(), token.display());
        assert!(stderr.starts_with(&expected), "{stderr}");
    }

    // A --config file that is not there.
    let missing = dir.path().join("missing.toml");
    let out = check_config(dir.path(), &missing);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with(&format!("{}: cannot read: ", missing.display())));
}

/// A zero where the file says "must be at least 1" is refused as a flag too (it used to be
/// clamped to 1 silently).
#[test]
fn flags_refuse_the_values_the_file_refuses() {
    for flag in [
        "--sync-bytes",
        "--sync-interval-ms",
        "--retry-delay-secs",
        "--idle-timeout-ms",
        "--connect-timeout-ms",
        "--max-connections-per-user",
        "--max-connections",
        "--max-watches-per-user",
        "--max-watches",
        "--handshake-timeout-ms",
        "--control-idle-timeout-ms",
    ] {
        let out = Command::new(bitsd()).args([flag, "0", "--check-config"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(&format!("invalid value '0' for '{flag}")), "{flag}");
    }
    // And the flag's upper bound is the file's.
    let out = Command::new(bitsd()).args(["--keep-awake-us", "10001", "--check-config"]).output();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("invalid value '10001' for '--keep-awake-us"));
    // And the metrics address is checked as the file's is: loopback only.
    let args = ["--metrics-listen", "0.0.0.0:9781", "--check-config"];
    let out = Command::new(bitsd()).args(args).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid value '0.0.0.0:9781' for '--metrics-listen"), "{stderr}");
    assert!(stderr.contains("is not a loopback address"), "{stderr}");
}

#[test]
fn a_bad_config_file_stops_the_daemon_before_it_opens_anything() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir.path().join("bitsd.toml"), "[limits]\nmax_jobs = 1\n");
    let mut child = Command::new(bitsd())
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("bitsd.sock"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("BITSD_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("bitsd kept running with a bad config file");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2: unknown key \"max_jobs\" in [limits]", config.display())),
        "{stderr}"
    );
    assert!(!dir.path().join("data").exists(), "the store was not opened");
    assert!(!dir.path().join("bitsd.sock").exists(), "the socket was not bound");
}

#[tokio::test]
async fn the_daemon_takes_its_limits_from_the_file_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    // The tests may run as root, an admin by default, and admins have no job limits.
    let config = write(
        &dir.path().join("bitsd.toml"),
        "[access]\nadmin_uids = []\n\n[limits]\nmax_jobs_per_user = 1\n",
    );
    let config = config.to_str().unwrap();

    let daemon = TestDaemon::start_with(&["--config", config]).await;
    let client = daemon.client().await;
    client.create_job("first", Priority::Normal).await.unwrap();
    let err = client.create_job("second", Priority::Normal).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Bits(e) if e.code == Code::BG_E_TOO_MANY_JOBS_PER_USER),
        "{err}"
    );
    assert!(daemon.log().contains(&format!("config={config}")), "the log names the file");

    // The same file with a flag on top: the flag wins, the file's admin list still holds.
    let daemon = TestDaemon::start_with(&["--config", config, "--max-jobs-per-user", "2"]).await;
    let client = daemon.client().await;
    client.create_job("first", Priority::Normal).await.unwrap();
    client.create_job("second", Priority::Normal).await.unwrap();
    let err = client.create_job("third", Priority::Normal).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Bits(e) if e.code == Code::BG_E_TOO_MANY_JOBS_PER_USER),
        "{err}"
    );
}

/// A daemon serving TCP on a free loopback port with the token `token`.
async fn tcp_daemon(dir: &Path, token: &str) -> (TestDaemon, SocketAddr, PathBuf) {
    let addr = free_port();
    let token_path = token_file(dir, token);
    let config = write(
        &dir.join("bitsd.toml"),
        &format!(
            "[tcp]\nlisten = \"{addr}\"\ntoken_file = {:?}\nuid = {}\n",
            token_path.display().to_string(),
            tcp_uid()
        ),
    );
    let daemon = TestDaemon::start_with(&["--config", config.to_str().unwrap()]).await;
    (daemon, addr, token_path)
}

/// ListJobs over TCP with raw gRPC and the given `authorization` metadata (or none).
async fn raw_list_jobs(addr: SocketAddr, authorization: Option<&str>) -> tonic::Status {
    let mut client =
        bits_proto::v1::bits_client::BitsClient::connect(format!("http://{addr}")).await.unwrap();
    let mut request = tonic::Request::new(bits_proto::v1::ListJobsRequest::default());
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value.parse().unwrap());
    }
    match client.list_jobs(request).await {
        Ok(reply) => panic!("served without the right token: {:?}", reply.into_inner()),
        Err(status) => status,
    }
}

#[tokio::test]
async fn tcp_serves_callers_with_the_token_as_the_configured_uid() {
    let dir = tempfile::tempdir().unwrap();
    let token = "e2e-token-5f2c9a";
    let (mut daemon, addr, _) = tcp_daemon(dir.path(), token).await;

    let tcp = Client::connect_tcp(addr, &Token::parse(token).unwrap()).await.unwrap();
    let id = tcp.create_job("over tcp", Priority::High).await.unwrap();
    let jobs = tcp.list_jobs().await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    assert_eq!(jobs[0].owner_uid, tcp_uid(), "TCP callers act as tcp.uid");
    assert_eq!(tcp.get_job(id).await.unwrap().display_name, "over tcp");
    // The same job table behind the Unix socket.
    let unix = daemon.client().await;
    assert_eq!(unix.get_job(id).await.unwrap().owner_uid, tcp_uid());

    // Without the token, or with a wrong one: unauthenticated, E_ACCESSDENIED.
    for (authorization, why) in [
        (None, "a bearer token is required"),
        (Some("Bearer not-the-token"), "the bearer token is wrong"),
        (Some(&format!("Basic {token}") as &str), "is not \"Bearer <token>\""),
    ] {
        let status = raw_list_jobs(addr, authorization).await;
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{authorization:?}: {status:?}");
        assert!(
            status.message().starts_with("E_ACCESSDENIED (0x80070005): "),
            "{authorization:?}: {}",
            status.message()
        );
        assert!(status.message().contains(why), "{authorization:?}: {}", status.message());
    }
    let wrong = Client::connect_tcp(addr, &Token::parse("not-the-token").unwrap()).await.unwrap();
    let err = wrong.create_job("nope", Priority::Normal).await.unwrap_err();
    assert!(matches!(&err, ClientError::Bits(e) if e.code == Code::E_ACCESSDENIED), "{err}");

    let log = daemon.log();
    assert!(log.contains("TCP request refused"), "refusals are logged");
    assert!(!log.contains(token), "the token is never logged");

    // SIGTERM stops the TCP server too, by its stop signal (not by the 2 s deadline that cuts
    // lingering connections off), and the port is free again.
    assert!(daemon.terminate().await.success());
    let log = daemon.log();
    assert!(!log.contains("did not close within"), "the servers stopped on their own: {log}");
    std::net::TcpListener::bind(addr).expect("the daemon released its TCP port");
}

/// A 3 MB job id is refused as E_INVALIDARG naming its start (issue 13: the error echoed all of
/// it, and the client saw "metadata size exceeds hard limit" instead of the BITS error).
#[tokio::test]
async fn a_huge_job_id_is_e_invalidarg_naming_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let token = "e2e-token-3mb";
    let (_daemon, addr, _) = tcp_daemon(dir.path(), token).await;
    let mut client =
        bits_proto::v1::bits_client::BitsClient::connect(format!("http://{addr}")).await.unwrap();
    let huge = "j".repeat(3 << 20);
    let mut request = tonic::Request::new(bits_proto::v1::JobRef { job_id: huge });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let status = client.get_job(request).await.unwrap_err();
    let err = bits_proto::status::from_status(&status);
    assert_eq!(err.code, Code::E_INVALIDARG, "{status:?}");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(err.message.contains(&format!("job id '{}…", "j".repeat(64))), "{}", err.message);
    assert!(err.message.len() < 200, "{} bytes echoed", err.message.len());
}

/// The TCP listener closes a connection that never speaks, as the socket does (the timeouts and
/// caps of `[control]` hold on both).
#[tokio::test]
async fn tcp_closes_a_connection_that_never_speaks() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let token_path = token_file(dir.path(), "e2e-token-silent");
    let config = write(
        &dir.path().join("bitsd.toml"),
        &format!(
            "[control]\nhandshake_timeout_ms = 300\n\n[tcp]\nlisten = \"{addr}\"\ntoken_file = {:?}\nuid = {}\n",
            token_path.display().to_string(),
            tcp_uid()
        ),
    );
    let _daemon = TestDaemon::start_with(&["--config", config.to_str().unwrap()]).await;
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    // The server's own SETTINGS come first; then the close.
    let mut buf = [0u8; 256];
    while let Ok(1..) = silent.read(&mut buf) {}
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(15), "still open after {waited:?}");
    assert!(waited >= Duration::from_millis(250), "closed before the timeout: {waited:?}");
}

/// A loop of refused TCP requests logs one WARN line, not one per request (one loop wrote
/// 9,007); the lines after it, one per 10 s at most, say how many they left out.
#[tokio::test]
async fn a_flood_of_refused_tcp_requests_logs_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr, _) = tcp_daemon(dir.path(), "e2e-token-77a1").await;
    for _ in 0..200 {
        let status = raw_list_jobs(addr, Some("Bearer wrong")).await;
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    let log = daemon.log();
    let lines = log.lines().filter(|l| l.contains("TCP request refused")).count();
    // Two at most: the first, and one summary if the loop happened to take over 10 s.
    assert!((1..=2).contains(&lines), "{lines} lines for 200 refusals:\n{log}");
}

#[tokio::test]
async fn bitsctl_talks_tcp_with_a_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr, token_path) = tcp_daemon(dir.path(), "ctl-token-81d0").await;
    let addr = addr.to_string();
    let token_path = token_path.to_str().unwrap();

    let created = daemon
        .bitsctl(&["--tcp", &addr, "--token-file", token_path, "create", "--name", "via tcp"])
        .await
        .success();
    let id = created.stdout.trim().to_string();
    let listed =
        daemon.bitsctl(&["list", "--json", "--tcp", &addr, "--token-file", token_path]).await;
    let listed = listed.success();
    assert!(listed.stdout.contains(&id), "{listed}");
    assert!(listed.stdout.contains("via tcp"), "{listed}");

    // The same through the environment.
    let mut command = tokio::process::Command::new(daemon.bitsctl_path());
    let out = command
        .args(["info", &id])
        .env("BITSD_TCP", &addr)
        .env("BITSD_TOKEN_FILE", token_path)
        .env("BITSD_SOCKET", dir.path().join("no-such.sock"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("via tcp"), "{}", text(&out.stdout));

    // A wrong token: exit 1 with the BITS error; no listener: exit 3.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let wrong = token_file(&other, "wrong");
    let out =
        daemon.bitsctl(&["--tcp", &addr, "--token-file", wrong.to_str().unwrap(), "list"]).await;
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert_eq!(
        out.stderr, "bitsctl: E_ACCESSDENIED (0x80070005): the bearer token is wrong\n",
        "{out}"
    );
    let nobody = free_port().to_string();
    let out = daemon.bitsctl(&["--tcp", &nobody, "--token-file", token_path, "list"]).await;
    assert_eq!(out.status.code(), Some(3), "{out}");
    assert!(out.stderr.starts_with(&format!("bitsctl: cannot connect to bitsd at {nobody}: ")));
}

#[tokio::test]
async fn log_format_comes_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir.path().join("bitsd.toml"), "[log]\nformat = \"json\"\n");
    let daemon = TestDaemon::start_with(&["--config", config.to_str().unwrap()]).await;
    let log = daemon.log();
    assert!(log.contains("bitsd starting"), "{log}");
    for line in log.lines() {
        assert!(line.starts_with('{') && line.ends_with('}'), "not a JSON object: {line}");
        assert!(line.contains("\"level\":"), "{line}");
    }
}

/// Starts bitsd with `config` and RUST_LOG as given, waits until it answers, stops it with
/// SIGTERM and returns what it logged.
async fn run_and_stop(dir: &Path, config: &Path, rust_log: Option<&str>) -> String {
    let socket = dir.join("bitsd.sock");
    let mut command = Command::new(bitsd());
    command
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(&socket)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("BITSD_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    loop {
        if let Ok(client) = Client::connect(&socket).await
            && client.list_jobs().await.is_ok()
        {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "bitsd exited before answering");
        assert!(started.elapsed() < Duration::from_secs(20), "bitsd did not answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stderr)
}

#[tokio::test]
async fn log_level_comes_from_the_file_and_rust_log_wins() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir.path().join("bitsd.toml"), "[log]\nlevel = \"warn\"\n");
    let quiet = run_and_stop(dir.path(), &config, None).await;
    assert!(!quiet.contains("bitsd starting"), "info lines at level warn: {quiet}");
    let loud = run_and_stop(dir.path(), &config, Some("info")).await;
    assert!(loud.contains("bitsd starting"), "RUST_LOG=info wins: {loud}");
}
