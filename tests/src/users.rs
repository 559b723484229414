//! Unprivileged local users for the ownership tests: created with `useradd` when a test first
//! needs them (the tests run as root, as in CI) and removed with `userdel` when the last test
//! holding them ends, and `bitsctl` run as them with `setpriv`, so the daemon sees their uid in
//! the socket's peer credentials exactly as it would for a real user.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::daemon::{CtlOutput, TestDaemon, capture};

/// A local user: name, uid and primary gid. The account exists while any clone of a `User`
/// from [`ensure_user`] is alive.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// `None` for a system account the tests did not create (root, nobody).
    _lease: Option<Arc<Lease>>,
}

impl User {
    /// A system account that exists anyway (root, nobody): never created nor removed here.
    pub fn system(name: &str, uid: u32, gid: u32) -> User {
        User { name: name.to_string(), uid, gid, _lease: None }
    }
}

impl PartialEq for User {
    fn eq(&self, other: &User) -> bool {
        (&self.name, self.uid, self.gid) == (&other.name, other.uid, other.gid)
    }
}

impl Eq for User {}

/// useradd and userdel edit /etc/passwd under a lock; tests running in parallel take turns. The
/// map holds the account or group each live lease stands for, so that tests running at once share
/// one account and the last to end removes it.
static ACCOUNTS: Mutex<BTreeMap<(Kind, String), Weak<Lease>>> = Mutex::new(BTreeMap::new());

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    User,
    Group,
}

/// Removes its account (userdel, which also removes the user's own group) or group (groupdel)
/// when the last test holding it ends, unless a test took a new lease on the name meanwhile.
#[derive(Debug)]
struct Lease {
    kind: Kind,
    name: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut map = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let key = (self.kind, self.name.clone());
        if map.get(&key).is_some_and(|lease| lease.strong_count() > 0) {
            return; // a test took the name again between our last drop and this lock
        }
        map.remove(&key);
        let tool = match self.kind {
            Kind::User => "userdel",
            Kind::Group => "groupdel",
        };
        // Best effort: a failure leaves an account behind, which the next run reuses.
        let _ =
            Command::new(tool).arg(&self.name).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// The live lease on `name`, or a new one after `create` (run under the lock).
fn lease(kind: Kind, name: &str, create: impl FnOnce()) -> Arc<Lease> {
    let mut map = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let key = (kind, name.to_string());
    if let Some(lease) = map.get(&key).and_then(Weak::upgrade) {
        return lease;
    }
    create();
    let lease = Arc::new(Lease { kind, name: name.to_string() });
    map.insert(key, Arc::downgrade(&lease));
    lease
}

/// Whether this process may create users and switch to them.
pub fn can_switch_users() -> bool {
    rustix::process::geteuid().is_root()
}

/// The user `name`, created (no home directory, no login shell, a group of its own) if missing;
/// removed again when the last clone of every `User` of that name is dropped.
pub fn ensure_user(name: &str) -> User {
    let lease = lease(Kind::User, name, || {
        if lookup(name).is_none() {
            let status = Command::new("useradd")
                .args(["--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name])
                .stdout(Stdio::null())
                .status()
                .expect("useradd (passwd package) creates test users");
            // 9: the name exists (another test process created it meanwhile).
            assert!(status.success() || status.code() == Some(9), "useradd {name}: {status}");
        }
    });
    let (uid, gid) =
        lookup(name).unwrap_or_else(|| panic!("user {name} does not exist after useradd"));
    User { name: name.to_string(), uid, gid, _lease: Some(lease) }
}

/// A group made by [`ensure_group_with`]; removed when dropped (unless another test holds it).
#[derive(Debug)]
pub struct Group {
    pub gid: u32,
    _lease: Arc<Lease>,
}

/// The group `name`, created if missing, with `members` added to it.
pub fn ensure_group_with(name: &str, members: &[&User]) -> Group {
    let lease = lease(Kind::Group, name, || {
        if getent("group", name).is_none() {
            let status = Command::new("groupadd").arg(name).status().expect("groupadd runs");
            assert!(status.success() || status.code() == Some(9), "groupadd {name}: {status}");
        }
    });
    for user in members {
        let status = Command::new("usermod")
            .args(["--append", "--groups", name, &user.name])
            .status()
            .expect("usermod runs");
        assert!(status.success(), "usermod -aG {name} {}: {status}", user.name);
    }
    let entry = getent("group", name).expect("the group exists");
    let gid = entry.split(':').nth(2).and_then(|g| g.parse().ok()).expect("a numeric gid");
    Group { gid, _lease: lease }
}

/// The uid and gid of the account `name`, if it exists.
fn lookup(name: &str) -> Option<(u32, u32)> {
    let entry = getent("passwd", name)?;
    let fields: Vec<&str> = entry.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The account lives while a test holds it, is shared by tests holding it at once, and is
    /// gone after the last one ends.
    #[test]
    fn test_users_and_groups_are_removed_when_the_last_holder_ends() {
        if !can_switch_users() {
            return; // creating users needs root, as the ownership tests do
        }
        let name = "bitsd-e2e-lease";
        let first = ensure_user(name);
        let second = ensure_user(name);
        assert_eq!(first, second);
        let group = ensure_group_with("bitsd-e2e-lease-g", &[&first]);
        assert!(getent("group", "bitsd-e2e-lease-g").is_some());
        drop(group);
        assert!(getent("group", "bitsd-e2e-lease-g").is_none(), "the group is removed");
        drop(first);
        assert!(lookup(name).is_some(), "still held by the second");
        drop(second);
        assert!(lookup(name).is_none(), "removed with its last holder");
        assert!(getent("group", name).is_none(), "its own group too");
        let again = ensure_user(name);
        assert!(lookup(name).is_some(), "created again on demand: uid {}", again.uid);
    }
}
