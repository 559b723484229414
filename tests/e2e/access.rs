//! Who may use a per-user daemon (one not running as root): only its own user. The socket is
//! private (0600 in a 0700 directory), and even a caller who can reach it is refused by its
//! peer credentials. (A root daemon serves every user; see `ownership.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use bits_tests::daemon::{TestDaemon, binary_in, own_target_dir};
use bits_tests::users::{User, bitsctl_at_as, can_switch_users, dir_owned_by, ensure_user};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_user_daemon_serves_only_its_user() {
    if !can_switch_users() {
        // Not root: the daemon is a user daemon already; its socket must be private.
        let daemon = TestDaemon::start().await;
        assert_eq!(mode(&daemon.socket()), 0o600, "the socket is usable by its owner only");
        assert!(daemon.client().await.list_jobs().await.unwrap().is_empty());
        return;
    }
    // As root: run bitsd as alice, in a directory of hers, and call it as alice and as bob.
    let alice = ensure_user("bitsd-e2e-alice");
    let bob = ensure_user("bitsd-e2e-bob");
    let base = tempfile::Builder::new().prefix("bitsd-userd-").tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = base.path().join("alice");
    dir_owned_by(&home, &alice, 0o755);
    let socket_dir = home.join("run");
    let socket = socket_dir.join("bitsd.sock");
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={}", alice.uid))
        .arg(format!("--regid={}", alice.gid))
        .arg("--init-groups")
        .arg(binary_in(&own_target_dir(), "bitsd"))
        .arg("--socket")
        .arg(&socket)
        .arg("--data-dir")
        .arg(home.join("data"))
        .env_remove("BITSD_SOCKET")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon_for = |user: &User| {
        let socket = socket.clone();
        let user = user.clone();
        async move { ctl(&socket, &user).await }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !daemon_for(&alice).await.status.success() {
        assert!(std::time::Instant::now() < deadline, "alice's daemon never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mode(&socket), 0o600, "the socket is usable by its owner only");
    assert_eq!(mode(&socket_dir), 0o700);

    // Open the path to everyone, as a careless operator might, and call as bob: the peer
    // credentials still refuse the call.
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = daemon_for(&bob).await;
    assert_eq!(out.status.code(), Some(1), "{out}");
    // `--json`: the error is JSON on stderr too.
    assert!(out.stderr.contains(r#""code":"E_ACCESSDENIED","hresult":"0x80070005""#), "{out}");
    assert!(
        out.stderr.contains(&format!("uid {}", bob.uid)),
        "the refusal names the caller: {out}"
    );
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "one readable line: {out}");
    assert!(daemon_for(&alice).await.status.success(), "alice is still served");
    let _ = child.kill();
    let _ = child.wait();
}

/// `bitsctl --socket SOCKET --json list` as `user`.
async fn ctl(socket: &std::path::Path, user: &User) -> bits_tests::daemon::CtlOutput {
    bitsctl_at_as(socket, user, &["--json", "list"]).await
}
