//! Unprivileged local users for the ownership tests: created once per machine with `useradd`
//! (the tests run as root, as in CI), and `bitsctl` run as them with `setpriv`, so the daemon
//! sees their uid in the socket's peer credentials exactly as it would for a real user.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::daemon::{CtlOutput, TestDaemon, capture};

/// A local user: name, uid and primary gid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// useradd edits /etc/passwd under a lock; tests running in parallel take turns.
static USERADD: Mutex<()> = Mutex::new(());

/// Whether this process may create users and switch to them.
pub fn can_switch_users() -> bool {
    rustix::process::geteuid().is_root()
}

/// The user `name`, created (no home directory, no login shell, a group of its own) if missing.
pub fn ensure_user(name: &str) -> User {
    let _turn = USERADD.lock().unwrap_or_else(|p| p.into_inner());
    if lookup(name).is_none() {
        let status = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name])
            .stdout(Stdio::null())
            .status()
            .expect("useradd (passwd package) creates test users");
        // 9: the name exists (another test process created it meanwhile).
        assert!(status.success() || status.code() == Some(9), "useradd {name}: {status}");
    }
    lookup(name).unwrap_or_else(|| panic!("user {name} does not exist after useradd"))
}

/// The group `name`, created if missing, with `members` added to it; returns its gid.
pub fn ensure_group_with(name: &str, members: &[&User]) -> u32 {
    let _turn = USERADD.lock().unwrap_or_else(|p| p.into_inner());
    if getent("group", name).is_none() {
        let status = Command::new("groupadd").arg(name).status().expect("groupadd runs");
        assert!(status.success() || status.code() == Some(9), "groupadd {name}: {status}");
    }
    for user in members {
        let status = Command::new("usermod")
            .args(["--append", "--groups", name, &user.name])
            .status()
            .expect("usermod runs");
        assert!(status.success(), "usermod -aG {name} {}: {status}", user.name);
    }
    let entry = getent("group", name).expect("the group exists");
    entry.split(':').nth(2).and_then(|g| g.parse().ok()).expect("a numeric gid")
}

fn lookup(name: &str) -> Option<User> {
    let entry = getent("passwd", name)?;
    let fields: Vec<&str> = entry.split(':').collect();
    Some(User {
        name: name.to_string(),
        uid: fields.get(2)?.parse().ok()?,
        gid: fields.get(3)?.parse().ok()?,
    })
}

fn getent(database: &str, key: &str) -> Option<String> {
    let out = Command::new("getent").args([database, key]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A directory owned by `user` with `mode`.
pub fn dir_owned_by(path: &Path, user: &User, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Makes the daemon's socket reachable by everyone (its temp dir is 0700 by default); the
/// socket itself is 0666 on a system daemon. Authorisation is the daemon's business.
pub fn open_daemon_dir(daemon: &TestDaemon) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `bitsctl --socket SOCKET ARGS...` against `daemon` as `user` (setpriv: real and
/// effective uid and gid, the user's groups), at most 60 s.
pub async fn bitsctl_as(daemon: &TestDaemon, user: &User, args: &[&str]) -> CtlOutput {
    bitsctl_at_as(&daemon.socket(), user, args).await
}

/// [`bitsctl_as`] for a daemon on `socket` that is not a [`TestDaemon`].
pub async fn bitsctl_at_as(socket: &Path, user: &User, args: &[&str]) -> CtlOutput {
    let mut command = tokio::process::Command::new("setpriv");
    command
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .arg(crate::daemon::binary_in(&crate::daemon::own_target_dir(), "bitsctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("BITSD_SOCKET")
        .current_dir("/");
    capture(command, Duration::from_secs(60), || {
        format!("bitsctl {args:?} as {} did not finish within 60 s", user.name)
    })
    .await
}

/// Runs a shell command as `user` (for planting files the way that user could).
pub fn sh_as(user: &User, script: &str) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .args(["sh", "-c", script])
        .current_dir("/")
        .output()
        .expect("setpriv runs sh")
}
