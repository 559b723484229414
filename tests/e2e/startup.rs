//! How the daemon comes up where it cannot: a data directory another daemon has, and a user's
//! default socket with no XDG_RUNTIME_DIR and no login session.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bits_tests::daemon::{TestDaemon, binary_in, own_target_dir};

/// Runs `bitsd ARGS` (no configuration file, no socket or data dir from the environment) and
/// returns what it printed and how long it took; it must exit within 30 s.
fn bitsd(args: &[&std::ffi::OsStr], prepare: impl FnOnce(&mut Command)) -> (Output, Duration) {
    let mut command = Command::new(binary_in(&own_target_dir(), "bitsd"));
    command
        .args(args)
        .env_remove("BITSD_SOCKET")
        .env_remove("BITSD_DATA_DIR")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    prepare(&mut command);
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("bitsd {args:?} still runs after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    (child.wait_with_output().unwrap(), elapsed)
}

#[tokio::test]
async fn a_second_daemon_on_a_data_dir_in_use_names_the_first_at_once() {
    let daemon = TestDaemon::start().await;
    let config = daemon.dir().join("bitsd.toml");
    let other_socket = daemon.dir().join("other.sock");
    let (out, elapsed) = bitsd(
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--socket".as_ref(),
            other_socket.as_os_str(),
            "--data-dir".as_ref(),
            daemon.data_dir().as_os_str(),
        ],
        |_| {},
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "the data directory {} is in use by bitsd (pid {}); stop it first, or give this one another --data-dir",
        daemon.data_dir().display(),
        daemon.pid()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains("ERROR")).count(), 1, "one line: {stderr}");
    // The store's lock wait is 5 s; this one does not wait for it.
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    assert!(!other_socket.exists(), "nothing was bound");
    // The first daemon is untouched.
    daemon.client().await.list_jobs().await.unwrap();
}

#[tokio::test]
async fn a_user_daemon_without_xdg_runtime_dir_or_a_session_asks_for_a_socket() {
    bits_tests::require_root("running bitsd as an unprivileged uid");
    // A uid with no session: no /run/user/UID.
    let uid = 4246;
    assert!(!std::path::Path::new(&format!("/run/user/{uid}")).exists());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(uid), Some(uid)).unwrap();
    let config = dir.path().join("bitsd.toml");
    std::fs::write(&config, "").unwrap();
    let (out, _) = bitsd(
        &["--config".as_ref(), config.as_os_str(), "--data-dir".as_ref(), data.as_os_str()],
        |command| {
            command.env_remove("XDG_RUNTIME_DIR").uid(uid).gid(uid);
        },
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "XDG_RUNTIME_DIR is unset and /run/user/{uid} does not exist (no login session): \
             start bitsd with --socket PATH, and give bitsctl the same with --socket PATH or \
             BITSD_SOCKET=PATH"
        )),
        "{stderr}"
    );
}
