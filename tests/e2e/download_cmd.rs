//! `bitsctl download` as a user runs it, against the real daemon: several files in one job, a
//! LIST, a header file, a server without range support, signals, --detach, a daemon restart
//! mid-download, giving up, progress lines, and bad input.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bits_client::Client;
use bits_core::{JobId, JobState};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_testkit::server::TestServer;
use bits_tests::daemon::{CtlOutput, TestDaemon};
use bits_tests::fixture::serving;
use bits_tests::require_root;
use bits_tests::users::{User, bitsctl_as, dir_owned_by, ensure_user, open_daemon_dir};
use bits_tests::wait::{TIMEOUT, wait_for};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use bits_tests::helpers::{entries, job_id_in, parse_json};

/// A bare HTTP/1.1 server that ignores `Range` (always `200` with the whole body, no
/// `Accept-Ranges`, no validators) and keeps every request head it was sent.
struct NoRangeServer {
    addr: std::net::SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NoRangeServer {
    async fn start(files: Vec<(&'static str, Vec<u8>)>) -> NoRangeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let files = Arc::new(files);
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let (files, seen) = (files.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    seen.lock().unwrap().push(head.clone());
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    let Some((_, body)) = files.iter().find(|(n, _)| path == format!("/{n}"))
                    else {
                        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                        return;
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                    if head.starts_with("GET ") {
                        let _ = conn.write_all(body).await;
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        NoRangeServer { addr, heads, task }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    fn gets(&self) -> Vec<String> {
        self.heads.lock().unwrap().iter().filter(|h| h.starts_with("GET ")).cloned().collect()
    }
}

impl Drop for NoRangeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The caller's jobs that are still live (not completed or cancelled).
async fn live_jobs(client: &Client) -> Vec<(JobId, JobState)> {
    client
        .list_jobs()
        .await
        .unwrap()
        .into_iter()
        .filter(|j| !j.state.is_final())
        .map(|j| (j.id, j.state))
        .collect()
}

/// `bitsctl download ARGS` as a child process (stdin null, output piped), not waited for.
fn spawn_download(daemon: &TestDaemon, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(daemon.bitsctl_path())
        .arg("--socket")
        .arg(daemon.socket())
        .arg("download")
        .args(args)
        .env_remove("BITSD_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn finish(child: tokio::process::Child, within: Duration) -> CtlOutput {
    let output = tokio::time::timeout(within, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("bitsctl download did not end within {within:?}"))
        .unwrap();
    CtlOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Waits until the one job of this daemon has some bytes in, and returns it.
async fn transferring_job(client: &Client) -> JobId {
    wait_for("a job with bytes transferred", TIMEOUT, || async {
        let jobs = client.list_jobs().await.map_err(|e| e.to_string())?;
        match jobs.as_slice() {
            [job] if job.progress.bytes_transferred > 0 => Ok(job.id),
            other => Err(format!("{:?}", other.iter().map(|j| j.state).collect::<Vec<_>>())),
        }
    })
    .await
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Two URL DEST pairs plus a LIST on stdin, a header file, from a server that ignores Range: the
/// default FOREGROUND priority lets the 200s through, every GET carries the headers, the job is
/// completed and one result line is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_files_a_list_and_a_header_file_from_a_server_without_ranges() {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.bin", random_bytes(1, 300_000)),
        ("b.bin", random_bytes(2, 1_000)),
        ("c.bin", random_bytes(3, 70_000)),
    ];
    let server = NoRangeServer::start(files.clone()).await;
    let daemon = TestDaemon::start().await;
    let out = daemon.out_dir();
    let headers = daemon.dir().join("headers");
    std::fs::write(&headers, "Authorization: Bearer s3cret\nX-Trace:  t-1 \n").unwrap();
    let list = format!("# more\n{} {}\n", server.url("c.bin"), path(&out.join("c.bin")));

    let mut child = tokio::process::Command::new(daemon.bitsctl_path())
        .arg("--socket")
        .arg(daemon.socket())
        .args(["download", &server.url("a.bin"), path(&out.join("a.bin"))])
        .args([&server.url("b.bin"), path(&out.join("b.bin"))])
        .args(["-i", "-", "--header-file", path(&headers)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(list.as_bytes()).await.unwrap();
    drop(stdin);
    let done = finish(child, Duration::from_secs(60)).await;
    assert!(done.status.success(), "{done}");

    for (name, data) in &files {
        assert!(std::fs::read(out.join(name)).unwrap() == *data, "{name} differs");
    }
    assert_eq!(entries(&out), ["a.bin", "b.bin", "c.bin"], "a temp file was left behind");
    let gets = server.gets();
    assert!(gets.len() >= 3, "{gets:?}");
    for get in &gets {
        // Header names are case-insensitive (the daemon's HTTP client sends them lowercase).
        let get = get.to_ascii_lowercase();
        assert!(get.contains("\r\nauthorization: bearer s3cret\r\n"), "no header in {get:?}");
        assert!(get.contains("\r\nx-trace: t-1\r\n"), "no header in {get:?}");
    }
    let lines: Vec<&str> = done.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{done}");
    assert!(lines[0].starts_with("3 files, 362.3 KiB in "), "{done}");
    assert!(lines[0].ends_with("/s)"), "{done}");
    assert_eq!(live_jobs(&daemon.client().await).await, []);

    // The same server with a background priority: BITS refuses a server without ranges.
    let again = daemon
        .bitsctl(&[
            "download",
            &server.url("b.bin"),
            path(&out.join("b2.bin")),
            "--priority",
            "normal",
        ])
        .await;
    assert_eq!(again.status.code(), Some(1), "{again}");
    assert!(again.stderr.contains("BG_E_INSUFFICIENT_RANGE_SUPPORT"), "{again}");
    assert_eq!(live_jobs(&daemon.client().await).await, [], "the failed job was not cancelled");
}

/// SIGINT, SIGTERM and SIGHUP each cancel the job: exit 130, no job left, no temp file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_sigterm_and_sighup_cancel_the_job() {
    use rustix::process::Signal;
    let server = serving("slow.bin", random_bytes(4, 4 << 20)).await;
    server.set_throttle(Some(256 << 10));
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    for (i, sig) in [Signal::INT, Signal::TERM, Signal::HUP].into_iter().enumerate() {
        let dest = daemon.out_dir().join(format!("slow{i}.bin"));
        let child = spawn_download(&daemon, &[&server.url("slow.bin"), path(&dest)]);
        let job = transferring_job(&client).await;
        signal(child.id().unwrap(), sig);
        let done = finish(child, Duration::from_secs(30)).await;
        assert_eq!(done.status.code(), Some(130), "{sig:?}: {done}");
        assert!(
            done.stderr.contains(&format!("interrupted; job {job} cancelled")),
            "{sig:?}: {done}"
        );
        assert_eq!(live_jobs(&client).await, [], "{sig:?} left the job");
        assert_eq!(entries(&daemon.out_dir()), Vec::<String>::new(), "{sig:?} left a temp file");
    }
}

/// --detach prints the job id and leaves the job running; `bitsctl complete` finishes it (a root
/// caller's job runs no notify command, so the command says how).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_leaves_the_job_running_in_the_daemon() {
    let server = TestServer::start().await;
    let data = random_bytes(5, 2 << 20);
    server.add_file("d.bin", data.clone());
    server.add_file("e.bin", random_bytes(6, 1000));
    let daemon = TestDaemon::start().await;
    let dest = daemon.out_dir().join("d.bin");
    let e = daemon.out_dir().join("e.bin");
    let out = daemon
        .bitsctl(&[
            "download",
            &server.url("d.bin"),
            path(&dest),
            &server.url("e.bin"),
            path(&e),
            "--detach",
            "--files-at-once",
            "2",
            "--connections",
            "2",
        ])
        .await
        .success();
    let job = job_id_in(&out.stdout);
    assert_eq!(out.stdout.trim(), job.to_string(), "{out}");
    let client = daemon.client().await;
    let info = client.get_job(job).await.unwrap();
    assert_eq!((info.files_at_once, info.connections_per_file), (2, 2), "extensions not passed");
    // Detached, the job keeps BITS' background retry policy.
    assert_eq!(info.minimum_retry_delay_secs, 600);
    bits_tests::helpers::wait_state(&client, job, JobState::Transferred).await;
    if info.notify_cmd_line.is_empty() {
        assert!(out.stderr.contains(&format!("bitsctl complete {job}")), "{out}");
        daemon.bitsctl(&["complete", &job.to_string()]).await.success();
    }
    wait_for("the file in place", TIMEOUT, || async {
        if dest.exists() { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;
    assert!(std::fs::read(&dest).unwrap() == data);
}

/// The daemon is killed mid-download and started again: the command waits for it, re-attaches
/// to the job and completes it. Plain progress lines (stderr is not a terminal) show the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restart_mid_download_is_waited_out() {
    let server = TestServer::start().await;
    // 8 s at the throttled rate: still running when the daemon is killed 5 s into it.
    let data = random_bytes(7, 4 << 20);
    server.add_file("r.bin", data.clone());
    server.set_throttle(Some(512 << 10));
    let mut daemon = TestDaemon::start().await;
    let dest = daemon.out_dir().join("r.bin");
    let child = spawn_download(&daemon, &[&server.url("r.bin"), path(&dest)]);
    {
        let client = daemon.client().await;
        transferring_job(&client).await;
        // Long enough for a timed progress line (every 3 s, checked each second) with a rate.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    daemon.kill_9().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.set_throttle(None);
    daemon.restart().await;
    let done = finish(child, Duration::from_secs(60)).await;
    assert!(done.status.success(), "{done}");
    assert!(std::fs::read(&dest).unwrap() == data, "the file differs");
    assert!(done.stderr.contains("lost bitsd; waiting for it to come back"), "{done}");
    assert!(
        done.stderr.lines().any(|l| l.starts_with("TRANSFERRING ")
            && l.contains(" / 4.0 MiB (")
            && l.contains("/s")),
        "no progress line with a rate: {done}"
    );
    assert_eq!(entries(&daemon.out_dir()), ["r.bin"]);
    assert_eq!(live_jobs(&daemon.client().await).await, []);
}

/// A daemon that does not come back within --reconnect-timeout: exit 3, naming the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_stays_away_is_exit_3_naming_the_job() {
    let server = serving("g.bin", random_bytes(8, 2 << 20)).await;
    server.set_throttle(Some(256 << 10));
    let mut daemon = TestDaemon::start().await;
    let dest = daemon.out_dir().join("g.bin");
    let child =
        spawn_download(&daemon, &[&server.url("g.bin"), path(&dest), "--reconnect-timeout", "1"]);
    let job = transferring_job(&daemon.client().await).await;
    daemon.kill_9().await;
    let done = finish(child, Duration::from_secs(30)).await;
    assert_eq!(done.status.code(), Some(3), "{done}");
    let last = done.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("bitsctl: cannot connect to bitsd at "), "{done}");
    assert!(last.contains(&format!("job {job} stays in bitsd")), "{done}");
}

/// A refused connection with a --timeout below the 5 s retry delay: the job fails at the first
/// error, with no retry (policy::after_failure); the command prints the error once, cancels the
/// job and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_under_a_short_timeout_fails_at_once_with_one_error_line() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x.bin", closed.local_addr().unwrap());
    drop(closed);
    let daemon = TestDaemon::start().await;
    let started = Instant::now();
    let out = daemon
        .bitsctl(&["download", &url, path(&daemon.out_dir().join("x.bin")), "--timeout", "2"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{out}");
    // A retry would come 5 s after the refusal.
    assert!(started.elapsed() < Duration::from_secs(5), "retried: took {:?}", started.elapsed());
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("bitsctl: ")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(out.stderr.lines().filter(|l| l.contains("refused")).count() == 1, "{out}");
    assert_eq!(live_jobs(&daemon.client().await).await, []);
}

/// Bad input is one line and exit 2, and no job is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_usage_error_and_creates_no_job() {
    let daemon = TestDaemon::start().await;
    let dir = daemon.dir();
    let list = dir.join("list");
    std::fs::write(&list, "http://h/a /tmp/a\nhttp://h/b\n").unwrap();
    let bad_headers = dir.join("bad-headers");
    std::fs::write(&bad_headers, "Authorization Bearer x\n").unwrap();
    let missing = dir.join("missing");
    let (hex_a, hex_b) = ("a".repeat(64), "b".repeat(64));
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["-i", path(&list)], format!("{}:2: 'http://h/b' has no DEST", list.display())),
        (vec!["http://h/a", "/tmp/a", "--sha256", "xyz"], "'xyz' is not a SHA-256 digest".into()),
        (
            vec!["http://h/a", "/tmp/a", "--header-file", path(&missing)],
            format!("cannot read {}: No such file or directory", missing.display()),
        ),
        (
            vec!["http://h/a", "/tmp/a", "--header-file", path(&bad_headers)],
            format!("{}:1: not a 'Name: value' header", bad_headers.display()),
        ),
        (vec!["http://h/a", "/tmp/a", "http://h/b"], "'http://h/b' has no DEST".into()),
        (
            vec!["http://h/a", "/tmp/a", "--sha256", &hex_a, "--sha256", &hex_b],
            "--sha256 is given 2 times for 1 URL DEST pairs".into(),
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["download"];
        all.extend(args.iter().copied());
        let out = daemon.bitsctl(&all).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out}");
        assert!(out.stderr.contains(&want), "{args:?}: want {want:?} in {out}");
        assert!(out.stdout.is_empty(), "{out}");
    }
    assert!(daemon.client().await.list_jobs().await.unwrap().is_empty());
}

/// --json: one object on stdout at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_prints_one_result_object() {
    let server = serving("j.bin", random_bytes(9, 5000)).await;
    let daemon = TestDaemon::start().await;
    let dest = daemon.out_dir().join("j.bin");
    let out = daemon.bitsctl(&["download", &server.url("j.bin"), path(&dest), "--json"]).await;
    let out = out.success();
    let v = parse_json(&out.stdout);
    assert_eq!(v["state"], "ACKNOWLEDGED");
    assert_eq!((v["bytes"].as_u64(), v["files"].as_u64()), (Some(5000), Some(1)));
    assert!(JobId::parse(v["job_id"].as_str().unwrap()).is_some(), "{v}");
}

/// --sha256 per URL DEST pair and `sha256=HEX` in a LIST: the right digests land the files; a
/// wrong one fails the job (BITSD_E_CHECKSUM_MISMATCH naming the digest), cancels it, and
/// nothing is moved into place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksums_from_the_command_line_and_a_list() {
    let server = TestServer::start().await;
    let (a, b) = (random_bytes(10, 200_000), random_bytes(11, 3_000));
    server.add_file("a.bin", a.clone());
    server.add_file("b.bin", b.clone());
    let daemon = TestDaemon::start().await;
    let out = daemon.out_dir();
    let list = daemon.dir().join("list");
    std::fs::write(
        &list,
        format!("{} {} sha256={}\n", server.url("b.bin"), path(&out.join("b.bin")), sha256_hex(&b)),
    )
    .unwrap();
    let done = daemon
        .bitsctl(&[
            "download",
            &server.url("a.bin"),
            path(&out.join("a.bin")),
            "--sha256",
            &sha256_hex(&a).to_uppercase(),
            "-i",
            path(&list),
        ])
        .await
        .success();
    assert!(done.stdout.starts_with("2 files, "), "{done}");
    assert!(std::fs::read(out.join("a.bin")).unwrap() == a);
    assert!(std::fs::read(out.join("b.bin")).unwrap() == b);

    let wrong = "0".repeat(64);
    let failed = daemon
        .bitsctl(&["download", &server.url("a.bin"), path(&out.join("c.bin")), "--sha256", &wrong])
        .await;
    assert_eq!(failed.status.code(), Some(1), "{failed}");
    assert!(failed.stderr.contains("BITSD_E_CHECKSUM_MISMATCH"), "{failed}");
    assert!(failed.stderr.contains(&wrong) && failed.stderr.contains(&sha256_hex(&a)), "{failed}");
    assert!(!out.join("c.bin").exists(), "a file that failed its digest was moved into place");
    assert_eq!(entries(&out), ["a.bin", "b.bin"], "the cancelled job left a temp file");
    assert_eq!(live_jobs(&daemon.client().await).await, []);
}

/// A user's --detach: the job's notify program (run by bitsd as that user) completes it, so the
/// file lands with nobody waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_download_of_a_user_completes_itself() {
    require_root("switching users");
    let user = ensure_user("bitsd-e2e-alice");
    let server = TestServer::start().await;
    let data = random_bytes(12, 500_000);
    server.add_file("n.bin", data.clone());
    let daemon = TestDaemon::start().await;
    open_daemon_dir(&daemon);
    let base = tempfile::Builder::new().prefix("bitsd-detach-").tempdir().unwrap();
    dir_owned_by(base.path(), &User::system("root", 0, 0), 0o755);
    let home = base.path().join("alice");
    dir_owned_by(&home, &user, 0o700);
    let dest = home.join("n.bin");
    let out =
        bitsctl_as(&daemon, &user, &["download", &server.url("n.bin"), path(&dest), "--detach"])
            .await
            .success();
    let job = job_id_in(&out.stdout);
    assert!(!out.stderr.contains("bitsctl complete"), "told to complete by hand: {out}");
    let client = daemon.client().await;
    wait_for("the notify program to complete the job", TIMEOUT, || async {
        let jobs = client.list_all_jobs().await.map_err(|e| e.to_string())?;
        match jobs.iter().find(|j| j.id == job) {
            None if dest.exists() => Ok(()),
            found => {
                Err(format!("job {:?}, file there: {}", found.map(|j| j.state), dest.exists()))
            }
        }
    })
    .await;
    assert!(std::fs::read(&dest).unwrap() == data);
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&dest).unwrap().uid(), user.uid);
}
