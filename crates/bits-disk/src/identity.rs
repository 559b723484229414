//! File access as a job's owner (spec §9): a daemon running as root must never let a user reach a
//! file that user could not reach themselves.
//!
//! How: every file operation for a job runs inside [`Identity::run`], which switches the calling
//! thread's *file-system* credentials — fsuid, fsgid and the supplementary groups — to the owner's
//! for the duration of the closure and switches them back afterwards. Linux keeps these per thread
//! (the raw `setfsuid`/`setfsgid`/`setgroups` system calls; glibc's `setgroups` would change every
//! thread, so the group list is set with rustix's per-thread call), and leaving fsuid 0 drops the
//! file capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_CHOWN…) for that thread. So the kernel
//! itself checks every path walk, open, create, rename and unlink against the owner's permissions,
//! and new files belong to the owner.
//!
//! Why it is race-free: there is no check-then-use. Nothing is tested with `stat` or `access` and
//! then opened with root's rights; the one syscall that does the work is the one that is checked,
//! as the owner, at the moment it happens. A symlink someone else plants where a temp file or a
//! destination will be is harmless: temp files are opened with `O_NOFOLLOW`, and `rename` replaces
//! a link rather than following it — and where the owner may not replace it (a sticky directory),
//! the rename fails with EPERM as it would for the owner.
//!
//! When the daemon is not root (a per-user daemon) there is nothing to switch: the process already
//! is the owner, and [`Identity::run`] just runs the closure.

use std::ffi::CString;

use rustix::process::Gid;

/// Primary group used for a uid that has no passwd entry (the kernel's overflow gid, "nogroup").
const NO_GROUP: u32 = 65534;

/// A user's file-system identity: uid, primary gid and supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Switching to another identity failed (the daemon lacks CAP_SETUID/CAP_SETGID, or the kernel
/// refused). The operation was not attempted.
#[derive(Debug, thiserror::Error)]
#[error("cannot act as uid {uid}: {reason}")]
pub struct IdentityError {
    pub uid: u32,
    pub reason: String,
}

impl Identity {
    /// The identity of `uid` from the user database (passwd + group, through NSS): its primary
    /// group and every group it is a member of. A uid with no passwd entry gets the overflow
    /// group and no supplementary groups.
    pub fn of_uid(uid: u32) -> Identity {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
        let Some(user) = user else {
            return Identity { uid, gid: NO_GROUP, groups: Vec::new() };
        };
        let gid = user.gid.as_raw();
        let groups = CString::new(user.name.as_bytes())
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, user.gid).ok())
            .map(|gids| gids.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|| vec![gid]);
        Identity { uid, gid, groups }
    }

    /// Whether this process runs as root, i.e. whether [`Identity::run`] switches identities.
    pub fn daemon_is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Whether [`Identity::run`] switches to `uid` at all: only a root daemon switches, and never
    /// to root.
    pub fn switches_to(uid: u32) -> bool {
        uid != 0 && Identity::daemon_is_root()
    }

    /// The identity of `uid` where [`Identity::switches_to`] says no switch happens: [`Identity::run`]
    /// then runs work as it is, so the groups need not be looked up.
    pub fn unswitched(uid: u32) -> Identity {
        Identity { uid, gid: 0, groups: Vec::new() }
    }

    /// Whether `gid` is this identity's primary group or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Runs `work` on this thread with this identity's file-system credentials, when the process
    /// runs as root and this is not root; otherwise runs it as is. The thread's credentials are
    /// restored before returning, also when `work` panics. Call it only from threads that do
    /// nothing else meanwhile (the blocking pool), never around an `.await`.
    pub fn run<T>(&self, work: impl FnOnce() -> T) -> Result<T, IdentityError> {
        if !Identity::switches_to(self.uid) {
            return Ok(work());
        }
        let _restore = Switched::to(self)?;
        Ok(work())
    }
}

/// The thread's file-system credentials while switched; dropping it switches back to root's.
struct Switched {
    groups: Vec<Gid>,
}

impl Switched {
    fn to(identity: &Identity) -> Result<Switched, IdentityError> {
        let fail = |reason: String| IdentityError { uid: identity.uid, reason };
        let saved = rustix::process::getgroups()
            .map_err(|e| fail(format!("cannot read the daemon's groups: {e}")))?;
        let groups: Vec<Gid> = identity.groups.iter().map(|&g| Gid::from_raw(g)).collect();
        rustix::thread::set_thread_groups(&groups)
            .map_err(|e| fail(format!("cannot set the supplementary groups: {e}")))?;
        // From here on, dropping `switched` restores whatever was changed.
        let switched = Switched { groups: saved };
        set_fsgid(identity.gid).map_err(|()| fail(format!("setfsgid({}) failed", identity.gid)))?;
        set_fsuid(identity.uid).map_err(|()| fail(format!("setfsuid({}) failed", identity.uid)))?;
        Ok(switched)
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        let restored = set_fsuid(0).is_ok()
            && set_fsgid(0).is_ok()
            && rustix::thread::set_thread_groups(&self.groups).is_ok();
        if !restored {
            // A pool thread left acting as a user would do later work (for other users, or the
            // store) with the wrong rights. That must never happen; stop the daemon instead.
            tracing::error!(
                "cannot switch a thread back to the daemon's own credentials; aborting"
            );
            std::process::abort();
        }
    }
}

/// setfsuid reports no errors: it returns the previous fsuid either way. Asking again tells
/// whether the change took.
fn set_fsuid(uid: u32) -> Result<(), ()> {
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
    let now = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
    if now.as_raw() == uid { Ok(()) } else { Err(()) }
}

fn set_fsgid(gid: u32) -> Result<(), ()> {
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
    let now = nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
    if now.as_raw() == gid { Ok(()) } else { Err(()) }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn root_and_unknown_users() {
        let root = Identity::of_uid(0);
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.in_group(0));
        let nobody = Identity::of_uid(3_999_999_999);
        assert_eq!((nobody.gid, nobody.groups.len()), (NO_GROUP, 0));
    }

    /// As root: files made inside `run` belong to the identity, root-only directories are
    /// closed to it, and the thread is root again afterwards.
    #[test]
    fn run_switches_and_restores_file_credentials() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to switch identities");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let user = Identity { uid: 4242, gid: 4343, groups: vec![4343, 4444] };
        let made = user.run(|| std::fs::write(shared.join("f"), b"x")).unwrap();
        made.unwrap();
        let meta = std::fs::metadata(shared.join("f")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
        let denied = user.run(|| std::fs::write(private.join("f"), b"x")).unwrap();
        assert_eq!(denied.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        // Back to root: the private directory is writable again, files are root's.
        std::fs::write(private.join("g"), b"y").unwrap();
        assert_eq!(std::fs::metadata(private.join("g")).unwrap().uid(), 0);
    }
}
