//! Running under systemd: the real `bitsd` speaks the sd_notify protocol to a notification socket
//! the test binds in place of systemd's (READY=1 only once its socket accepts connections, a
//! STATUS= line that follows the queue, WATCHDOG=1 when asked for, STOPPING=1 on SIGTERM), and the
//! unit files in dist/systemd pass `systemd-analyze verify` and allow the system calls bitsd makes.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bits_client::Client;
use bits_core::Priority;
use bits_tests::daemon::{TestDaemon, binary_in, own_target_dir};
use tokio::net::UnixDatagram;

/// Where bitsd is installed in the unit files; the verify test points them at the built binary.
const INSTALLED_BINARY: &str = "/usr/local/bin/bitsd";

/// A `bitsd` whose sd_notify messages the test receives. Started with [`TestDaemon::launch`],
/// which does not wait for the socket (as `TestDaemon::start` does), so the test can tell whether
/// READY came before the socket was usable.
struct NotifyingDaemon {
    daemon: TestDaemon,
    notify: UnixDatagram,
    _notify_dir: tempfile::TempDir,
}

impl NotifyingDaemon {
    /// Binds a notification socket, then starts bitsd with NOTIFY_SOCKET pointing at it and `env` added.
    fn start(env: &[(&str, &str)]) -> NotifyingDaemon {
        let notify_dir = tempfile::Builder::new().prefix("bitsd-systemd-").tempdir().unwrap();
        let path = notify_dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&path).unwrap();
        let mut vars: Vec<(&str, &OsStr)> = vec![("NOTIFY_SOCKET", path.as_os_str())];
        vars.extend(env.iter().map(|(k, v)| (*k, OsStr::new(v))));
        let daemon = TestDaemon::launch(&[], &vars);
        NotifyingDaemon { daemon, notify, _notify_dir: notify_dir }
    }

    fn socket(&self) -> PathBuf {
        self.daemon.socket()
    }

    fn log(&self) -> String {
        self.daemon.log()
    }

    /// The next notification datagram, or None if none arrives within `timeout`.
    async fn next(&self, timeout: Duration) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        let len = tokio::time::timeout(timeout, self.notify.recv(&mut buf)).await.ok()?.unwrap();
        Some(String::from_utf8(buf[..len].to_vec()).unwrap())
    }

    /// Receives datagrams until one satisfies `done`; returns everything received, that one last.
    /// Panics (with the log) if none does within `timeout`.
    async fn until(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(message) => {
                    let found = done(&message);
                    seen.push(message);
                    if found {
                        return seen;
                    }
                }
                None => panic!(
                    "no matching notification within {timeout:?}; received {seen:?}\n--- bitsd log ---\n{}",
                    self.log()
                ),
            }
        }
    }

    /// SIGTERM, and the exit status (20 s at most).
    async fn terminate(&mut self) -> std::process::ExitStatus {
        self.daemon.terminate().await
    }
}

/// The lines of one datagram (sd_notify sends `KEY=VALUE` lines).
fn lines(message: &str) -> Vec<&str> {
    message.lines().collect()
}

fn has_line(message: &str, line: &str) -> bool {
    lines(message).contains(&line)
}

#[tokio::test]
async fn ready_only_when_serving_then_status_follows_the_queue_and_stopping_comes_last() {
    let mut daemon = NotifyingDaemon::start(&[]);

    let first = daemon.next(Duration::from_secs(20)).await;
    let first = first.unwrap_or_else(|| panic!("no READY within 20 s\n{}", daemon.log()));
    // At the moment READY arrives the socket must take connections and answer calls.
    let connected = std::os::unix::net::UnixStream::connect(daemon.socket());
    assert!(connected.is_ok(), "READY=1 came before the socket accepted: {connected:?}");
    // A connection that never speaks HTTP/2 would hold up the server's graceful shutdown.
    drop(connected);
    assert!(has_line(&first, "READY=1"), "the first notification is READY: {first:?}");
    assert!(
        has_line(&first, "STATUS=idle, 0 jobs"),
        "READY carries the status of the empty queue: {first:?}"
    );
    let client = Client::connect(&daemon.socket()).await.unwrap();
    assert!(client.list_jobs().await.unwrap().is_empty());

    // A new job (SUSPENDED) shows up in the status within one refresh (2 s) plus slack.
    client.create_job("status", Priority::Normal).await.unwrap();
    let seen = daemon
        .until(Duration::from_secs(10), |m| {
            has_line(m, "STATUS=1 job: 0 transferring, 0 queued, 0 in error")
        })
        .await;
    let statuses: Vec<&str> =
        seen.iter().flat_map(|m| lines(m)).filter(|l| l.starts_with("STATUS=")).collect();
    assert_eq!(
        statuses,
        ["STATUS=1 job: 0 transferring, 0 queued, 0 in error"],
        "a status is sent once when it changes, not on every refresh"
    );
    // Nothing asked for a watchdog, so none is pinged.
    assert!(seen.iter().all(|m| !has_line(m, "WATCHDOG=1")), "unasked watchdog pings: {seen:?}");
    assert!(seen.iter().all(|m| !has_line(m, "READY=1")), "READY is said once: {seen:?}");

    // Unchanged queue: no more status lines (a few refreshes pass).
    let quiet = daemon.next(Duration::from_millis(4500)).await;
    assert_eq!(quiet, None, "an unchanged status is not resent");

    drop(client);
    let status = daemon.terminate().await;
    assert!(status.success(), "bitsd exits 0 after SIGTERM: {status}\n{}", daemon.log());
    // Everything sent after SIGTERM is in the socket buffer by now.
    let mut after = Vec::new();
    while let Some(message) = daemon.next(Duration::from_millis(200)).await {
        after.push(message);
    }
    let last = after.last().unwrap_or_else(|| panic!("nothing after SIGTERM\n{}", daemon.log()));
    assert!(has_line(last, "STOPPING=1"), "STOPPING=1 is the last word: {after:?}");
}

#[tokio::test]
async fn the_watchdog_is_pinged_at_half_its_interval_when_systemd_sets_one() {
    // 600 ms: pings every 300 ms.
    let daemon = NotifyingDaemon::start(&[("WATCHDOG_USEC", "600000")]);
    let ready = daemon.until(Duration::from_secs(20), |m| has_line(m, "READY=1")).await;
    assert_eq!(ready.len(), 1, "READY is the first notification: {ready:?}");

    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let Some(message) = daemon.next(Duration::from_millis(900)).await else {
            panic!("no notification for 900 ms with a 600 ms watchdog\n{}", daemon.log());
        };
        if has_line(&message, "WATCHDOG=1") {
            pings += 1;
        }
    }
    // 3 s at one ping per 300 ms is about 10; 5 leaves room for a slow machine.
    assert!(pings >= 5, "only {pings} watchdog pings in 3 s");
}

/// Runs `systemd-analyze ARGS`, panicking with a hint when it is not installed.
fn systemd_analyze(args: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    let mut command = Command::new("systemd-analyze");
    command.args(args).stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap_or_else(|e| {
        panic!("cannot run systemd-analyze ({e}); install it (apt-get install systemd) or run scripts/test.sh")
    })
}

/// Copies `unit` into its own directory (same file name) with the installed binary replaced by
/// the built one, since `verify` checks that ExecStart= and ExecStartPre= exist; `extra` is
/// appended to the [Service] section.
fn prepare_unit(unit: &Path, dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(unit).unwrap();
    let bitsd = binary_in(&own_target_dir(), "bitsd");
    assert!(
        text.contains(&format!("ExecStartPre={INSTALLED_BINARY} --check-config"))
            && text.contains(&format!("ExecStart={INSTALLED_BINARY}\n")),
        "{} starts {INSTALLED_BINARY} after checking its configuration",
        unit.display()
    );
    let text = text
        .replace(INSTALLED_BINARY, bitsd.to_str().unwrap())
        .replace("[Service]\n", &format!("[Service]\n{extra}"));
    let copy = dir.join(unit.file_name().unwrap());
    std::fs::write(&copy, text).unwrap();
    copy
}

/// `systemd-analyze [--user] verify` of `unit`: its exit status and the stderr lines about it.
fn verify(unit: &Path, user: bool) -> (bool, Vec<String>, String) {
    let runtime = tempfile::tempdir().unwrap();
    let path = unit.to_str().unwrap();
    let mut args = vec!["verify", "--man=no", "--generators=no", path];
    if user {
        args.insert(0, "--user");
    }
    // A user manager needs a runtime directory; this container has no session.
    let output = systemd_analyze(&args, &[("XDG_RUNTIME_DIR", runtime.path())]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let about_unit = stderr.lines().filter(|l| l.contains(path)).map(str::to_string).collect();
    (output.status.success(), about_unit, stderr)
}

fn units() -> [(PathBuf, bool); 2] {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd");
    [(dist.join("bitsd.service"), false), (dist.join("user/bitsd.service"), true)]
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    for (unit, user) in units() {
        let dir = tempfile::tempdir().unwrap();
        let copy = prepare_unit(&unit, dir.path(), "");
        let (ok, about_unit, stderr) = verify(&copy, user);
        assert!(ok, "systemd-analyze verify {} failed:\n{stderr}", unit.display());
        assert!(
            about_unit.is_empty(),
            "systemd-analyze has warnings about {}:\n{}",
            unit.display(),
            about_unit.join("\n")
        );

        // The check above would catch a mistake: the same unit with an unknown key is flagged.
        let dir = tempfile::tempdir().unwrap();
        let broken = prepare_unit(&unit, dir.path(), "NoSuchSetting=yes\n");
        let (_, about_broken, stderr) = verify(&broken, user);
        assert!(
            about_broken.iter().any(|l| l.contains("NoSuchSetting")),
            "an unknown key must be reported; systemd-analyze said:\n{stderr}"
        );
    }
}

/// Both units raise the fd limit above the usual 1024 (issue 13: 1,800 idle connections under
/// 1024 fds left a running job unable to open its temp file). bitsd lets clients hold at most
/// half the limit and caps them at 1024 by default, so 65536 leaves the rest to transfers.
#[test]
fn the_units_raise_the_fd_limit_with_room_for_transfers() {
    for (unit, _) in units() {
        let text = std::fs::read_to_string(&unit).unwrap();
        let limits: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("LimitNOFILE=")).collect();
        assert_eq!(limits, ["65536"], "{}", unit.display());
    }
}

/// Every system call a syscall-filter group allows, with nested groups expanded.
fn syscalls_of(group: &str, seen: &mut BTreeSet<String>) -> BTreeSet<String> {
    let output = systemd_analyze(&["syscall-filter", group], &[]);
    assert!(output.status.success(), "systemd-analyze syscall-filter {group} failed");
    let mut calls = BTreeSet::new();
    for line in String::from_utf8_lossy(&output.stdout).lines().skip(1) {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if name.starts_with('@') {
            if seen.insert(name.to_string()) {
                calls.extend(syscalls_of(name, seen));
            }
        } else {
            calls.insert(name.to_string());
        }
    }
    calls
}

#[test]
fn the_system_unit_allows_what_acting_as_a_jobs_owner_needs() {
    let (unit, _) = &units()[0];
    let text = std::fs::read_to_string(unit).unwrap();
    let values = |key: &str| -> Vec<String> {
        let prefix = format!("{key}=");
        text.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_string).collect()
    };

    // setfsuid needs CAP_SETUID; setfsgid and setgroups need CAP_SETGID; CAP_KILL kills a notify
    // program (running as the job's owner) past its time limit. Nothing more is granted.
    assert_eq!(values("CapabilityBoundingSet"), ["CAP_SETUID CAP_SETGID CAP_KILL"]);
    // Users download into their homes and /tmp: those must be the real ones.
    assert_eq!(values("ProtectHome"), ["no"]);
    assert_eq!(values("PrivateTmp"), ["no"]);
    assert_eq!(values("ProtectSystem"), ["full"]);

    // The filter is an allow list of groups only (a "~" deny list could take calls back), and
    // those groups allow the owner switch (raw setfsuid/setfsgid/setgroups) and the nice +5 of
    // the data-path threads.
    let filters = values("SystemCallFilter");
    assert!(!filters.is_empty() && filters.iter().all(|f| !f.starts_with('~')), "{filters:?}");
    let mut allowed = BTreeSet::new();
    for group in filters.iter().flat_map(|f| f.split_whitespace()) {
        assert!(group.starts_with('@'), "only groups in SystemCallFilter: {group}");
        allowed.extend(syscalls_of(group, &mut BTreeSet::new()));
    }
    // prlimit64: bitsd raises its soft fd limit to the hard one at start. A notify program is
    // started with setgid/setuid/setpgid and execve, and killed past its limit.
    for call in [
        "setfsuid",
        "setfsgid",
        "setgroups",
        "setpriority",
        "fdatasync",
        "renameat2",
        "prlimit64",
        "setuid",
        "setgid",
        "setpgid",
        "execve",
        "kill",
    ] {
        assert!(allowed.contains(call), "SystemCallFilter {filters:?} does not allow {call}");
    }
}
