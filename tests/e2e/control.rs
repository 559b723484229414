//! The control socket under a hostile local user: connections that never speak or idle, more
//! connections than there are file descriptors, one user's share of connections and WatchJob
//! streams. Every local user can connect to a root daemon, so none of this may take it down.

use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bits_client::ClientError;
use bits_core::JobState;
use bits_core::job::notify;
use bits_core::{Code, Priority};
use bits_testkit::data::random_bytes;
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{fresh_job, serving};
use bits_tests::users::{bitsctl_as, ensure_user, open_daemon_dir};
use bits_tests::wait::wait_for;

use bits_tests::helpers::wait_state;

/// CPU time (user + system) the process has used, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    Duration::from_millis(ticks * 10)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64
}

/// Sets the daemon's soft fd limit, as `prlimit --pid PID --nofile=N:` would; the hard limit
/// stays, so the limit can be raised again.
fn limit_fds(pid: u32, limit: u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let hard = line.split_whitespace().nth(4).unwrap().parse().unwrap();
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let limit = rustix::process::Rlimit { current: Some(limit), maximum: Some(hard) };
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, limit).unwrap();
}

/// Whether the daemon closed `stream` within `within` (EOF or a reset), rather than keeping it
/// open without a word.
fn closed_within(stream: &mut UnixStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // The server's SETTINGS and the like: keep reading.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// `connections` sockets connected to `daemon` as `uid` (the thread's effective uid, which is
/// what SO_PEERCRED reports), from a thread of their own so the test keeps its own identity.
fn connect_as(daemon: &TestDaemon, uid: u32, connections: usize) -> Vec<UnixStream> {
    let socket = daemon.socket();
    std::thread::spawn(move || {
        rustix::thread::set_thread_res_uid(None, Some(rustix::process::Uid::from_raw(uid)), None)
            .unwrap();
        (0..connections).map(|_| UnixStream::connect(&socket).unwrap()).collect()
    })
    .join()
    .unwrap()
}

/// Idle connections beyond the fd limit (issue 13: 1,800 of them under the default 1024 limit
/// spun the daemon at 100% of a core): accept runs out of fds, and the loop must wait instead of
/// retrying at once. Once the connections are gone, a fresh caller is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_fd_limit_cost_no_cpu_and_the_daemon_recovers() {
    bits_tests::require_root("lowering the daemon's fd limit");
    let daemon = TestDaemon::start().await;
    let pid = daemon.pid();
    // Room for 40 more fds than the daemon holds now.
    limit_fds(pid, open_fds(pid) + 40);
    // As root (an administrator, exempt from the per-user cap), so that only the fds run out.
    let idle: Vec<UnixStream> =
        (0..300).map(|_| UnixStream::connect(daemon.socket()).unwrap()).collect();
    // Let the daemon take what it can and run into the limit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_time(pid);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_time(pid) - before;
    let elapsed = window.elapsed();
    eprintln!("daemon CPU over {elapsed:?} with 300 idle connections past its fd limit: {used:?}");
    // A spinning accept loop burns the whole window (3 s); backing off burns next to nothing.
    assert!(used < Duration::from_millis(600), "the daemon used {used:?} of CPU in {elapsed:?}");
    let log = daemon.log();
    let warnings = log.lines().filter(|l| l.contains("cannot accept a connection")).count();
    assert!((1..=2).contains(&warnings), "{warnings} accept warnings (throttled to one per 10 s)");

    drop(idle);
    let client = daemon.client().await;
    wait_for("a fresh caller to be served", Duration::from_secs(20), || async {
        client.list_jobs().await.map_err(|e| e.to_string())
    })
    .await;
}

/// A connection that never sends the HTTP/2 preface is closed after the handshake timeout
/// (issue 13: such a connection stayed open for more than 90 s).
#[tokio::test]
async fn a_connection_that_never_speaks_is_closed_after_the_handshake_timeout() {
    let daemon = TestDaemon::start_with(&["--handshake-timeout-ms", "300"]).await;
    let mut silent = UnixStream::connect(daemon.socket()).unwrap();
    let connected = Instant::now();
    let closed =
        tokio::task::spawn_blocking(move || closed_within(&mut silent, Duration::from_secs(20)));
    assert!(closed.await.unwrap(), "a silent connection was still open after 20 s");
    assert!(connected.elapsed() >= Duration::from_millis(250), "closed before the timeout");
    // Callers that do speak are served as before.
    daemon.client().await.list_jobs().await.unwrap();
}

/// A connection with nothing in flight is closed after the idle timeout; an open WatchJob
/// stream is a call in flight, however quiet, and is not cut off. A client whose connection was
/// closed while idle connects again for its next call.
#[tokio::test]
async fn an_idle_connection_is_closed_but_a_quiet_watch_stays_open() {
    let daemon = TestDaemon::start_with(&["--control-idle-timeout-ms", "1000"]).await;
    // The preface and an empty SETTINGS frame: the handshake is done, then nothing.
    let mut idle = UnixStream::connect(daemon.socket()).unwrap();
    std::io::Write::write_all(&mut idle, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let closed =
        tokio::task::spawn_blocking(move || closed_within(&mut idle, Duration::from_secs(20)));
    assert!(closed.await.unwrap(), "an idle connection was still open after 20 s");

    let client = daemon.client().await;
    let job = client.create_job("watched", Priority::Normal).await.unwrap();
    let mut events = client.watch_job(job, Some(notify::JOB_MODIFICATION)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let other = daemon.client().await;
    other.set_display_name(job, Some("renamed")).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), events.next()).await;
    let event = event.expect("the watch stream delivered nothing").expect("the stream ended");
    event.expect("the watch stream failed");
    drop(events);

    // The first client idles past the timeout, then calls again.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    wait_for("a call after an idle close", Duration::from_secs(20), || async {
        client.list_jobs().await.map_err(|e| e.to_string())
    })
    .await;
}

/// One user's connections beyond their share are closed at once; another user is served.
#[tokio::test]
async fn one_user_over_their_connection_share_leaves_room_for_others() {
    bits_tests::require_root("connecting as other users");
    let greedy = ensure_user("bitsd-e2e-greedy");
    let other = ensure_user("bitsd-e2e-other");
    // A long handshake timeout: the connections held here say nothing, and must stay open
    // while the test looks at them.
    let daemon = TestDaemon::start_with(&[
        "--max-connections-per-user",
        "3",
        "--handshake-timeout-ms",
        "120000",
    ])
    .await;
    open_daemon_dir(&daemon);
    let mut held = connect_as(&daemon, greedy.uid, 10);
    let mut closed = 0;
    for stream in &mut held {
        if closed_within(stream, Duration::from_secs(2)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 7, "3 of 10 connections stay open, the rest are closed at once");
    let refused = bitsctl_as(&daemon, &greedy, &["list"]).await;
    assert!(!refused.status.success(), "a 4th connection of the same user: {refused}");
    bitsctl_as(&daemon, &other, &["list"]).await.success();
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            "connection refused: uid {} already has 3 connections open (max_connections_per_user = 3)",
            greedy.uid
        )),
        "{log}"
    );
    // Closing one makes room for the next.
    drop(held);
    wait_for("room for the user again", Duration::from_secs(20), || async {
        let out = bitsctl_as(&daemon, &greedy, &["list"]).await;
        if out.status.success() { Ok(()) } else { Err(out.to_string()) }
    })
    .await;
}

/// WatchJob streams over the cap are refused with RPC_S_SERVER_TOO_BUSY naming the cap (issue
/// 13: 20,000 streams took 203 MB); a stream that ends gives its place back.
#[tokio::test]
async fn watch_streams_over_the_cap_are_refused_naming_it() {
    let (_daemon, client, job) = fresh_job(&["--max-watches", "2"], "watched").await;
    let first = client.watch_job(job, None).await.unwrap();
    let _second = client.watch_job(job, None).await.unwrap();
    let refused = client.watch_job(job, None).await.err().expect("a third watch was accepted");
    match &refused {
        ClientError::Bits(e) => {
            assert_eq!(e.code, Code::RPC_S_SERVER_TOO_BUSY, "{e}");
            assert!(e.message.contains("max_watches = 2"), "{e}");
        }
        other => panic!("not a BITS error: {other}"),
    }
    drop(first);
    wait_for("the ended stream's place", Duration::from_secs(20), || async {
        client.watch_job(job, None).await.map(drop).map_err(|e| e.to_string())
    })
    .await;
}

/// A transfer that finds no fd left for its temp file is a transient error, retried once fds are
/// free again (issue 13: the job went to ERROR, `E_FAIL`, cannot open its temp file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_without_a_free_fd_is_a_transient_error() {
    bits_tests::require_root("lowering the daemon's fd limit");
    let server = serving("a.bin", random_bytes(1, 64 << 10)).await;
    let daemon = TestDaemon::start_with(&["--retry-delay-secs", "1"]).await;
    let pid = daemon.pid();
    let client = daemon.client().await;
    let job = client.create_job("no fds", Priority::Foreground).await.unwrap();
    let dest = daemon.out_dir().join("a.bin");
    client.add_file(job, &server.url("a.bin"), &dest).await.unwrap();
    // The probe waits at the gate while the fds run out; the temp file is opened after it.
    server.hold();
    client.resume(job).await.unwrap();
    wait_for("the probe at the gate", Duration::from_secs(20), || async {
        if server.waiting_at_gate() > 0 { Ok(()) } else { Err("no request yet".into()) }
    })
    .await;
    // No new fd at all: a new fd takes the lowest free number, never below 3 (stdio).
    limit_fds(pid, 3);
    server.release();
    let info = wait_state(&client, job, JobState::TransientError).await;
    let error = info.error.expect("a transient error has an error");
    eprintln!("with no fd left: {} {}", error.code, error.description);
    // Fds again: the retry completes the download.
    limit_fds(pid, 20_000);
    wait_state(&client, job, JobState::Transferred).await;
}

/// The daemon's resident memory, from /proc/PID/status.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Not a check but a measurement (run with `--ignored --nocapture`): the daemon's RSS after
/// 20,000 WatchJob attempts by root over 100 connections (issue 13: +203 MB when every one was
/// served). Root is an administrator, so only the total cap (`max_watches`) holds it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints the RSS numbers"]
async fn rss_after_20000_watch_attempts() {
    let daemon = TestDaemon::start().await;
    let pid = daemon.pid();
    let setup = daemon.client().await;
    let job = setup.create_job("watched", Priority::Normal).await.unwrap();
    let before = rss_kib(pid);
    for round in 1..=3 {
        let started = Instant::now();
        // 200 calls at once on each of 100 connections (h2 lets 200 streams run at once).
        let mut attempts = tokio::task::JoinSet::new();
        let mut clients = Vec::new();
        for _ in 0..100 {
            let client = daemon.client().await;
            for _ in 0..200 {
                let client = client.clone();
                attempts.spawn(async move { client.watch_job(job, None).await });
            }
            clients.push(client);
        }
        let mut held = Vec::new();
        while let Some(attempt) = attempts.join_next().await {
            if let Ok(stream) = attempt.unwrap() {
                held.push(stream);
            }
        }
        let served = held.len();
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(pid);
        eprintln!(
            "round {round}: 20000 WatchJob attempts in {took:?}: {served} served; RSS {before} KiB -> {after} KiB (+{} MiB)",
            after.saturating_sub(before) / 1024
        );
        drop((held, clients));
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("round {round}: all streams closed: RSS {} KiB", rss_kib(pid));
    }
}

/// Not a check but a measurement (run with `--ignored --nocapture`): the daemon's RSS across
/// cycles of an admin's AddFileSet of 40,000 files followed by Cancel (issue 13: ~430 MB, growing
/// ~15 MB per cycle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints the RSS numbers"]
async fn rss_across_add_file_set_40k_and_cancel() {
    let daemon = TestDaemon::start().await;
    let pid = daemon.pid();
    let client = daemon.client().await;
    let out = daemon.out_dir();
    let urls: Vec<String> = (0..40_000).map(|i| format!("http://127.0.0.1:9/f/{i}")).collect();
    let paths: Vec<std::path::PathBuf> = (0..40_000).map(|i| out.join(format!("f{i}"))).collect();
    let files: Vec<(&str, &std::path::Path)> =
        urls.iter().zip(&paths).map(|(u, p)| (u.as_str(), p.as_path())).collect();
    eprintln!("start: RSS {} KiB", rss_kib(pid));
    let cycles: usize =
        std::env::var("BITSD_RSS_CYCLES").ok().and_then(|c| c.parse().ok()).unwrap_or(6);
    for cycle in 1..=cycles {
        let job = client.create_job("many", Priority::Normal).await.unwrap();
        let started = Instant::now();
        for chunk in files.chunks(10_000) {
            client.add_file_set(job, chunk).await.unwrap();
        }
        let added = started.elapsed();
        let after_add = rss_kib(pid);
        client.cancel(job).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!(
            "cycle {cycle}: added 40000 files in {added:?}, RSS {after_add} KiB; after Cancel {} KiB",
            rss_kib(pid)
        );
    }
}
