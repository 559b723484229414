//! A small tmpfs mounted by a test, for filling a file system on purpose. Mounting needs root;
//! without it the test fails with a message saying so (it never passes silently).
//!
//! The guard owns a fresh directory and unmounts it when dropped, also while the test is
//! panicking. If a process still has files open on it (a daemon that outlived the guard), the
//! unmount is lazy (`umount -l`), so nothing stays mounted behind the test.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs; see the module docs.
pub struct TmpfsMount {
    dir: tempfile::TempDir,
    mounted: bool,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program} {args:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `8m`, `64m`) on a new directory
    /// inside `parent`. Panics (with the reason) if not root or if mounting fails.
    pub fn new_in(parent: &Path, size: &str) -> TmpfsMount {
        crate::require_root("mounting a tmpfs");
        let dir = tempfile::Builder::new().prefix("tmpfs-").tempdir_in(parent).unwrap();
        let target = dir.path().to_str().expect("temp dir path is not UTF-8").to_string();
        let options = format!("size={size},mode=0755");
        run("mount", &["-t", "tmpfs", "-o", &options, "tmpfs", &target])
            .unwrap_or_else(|e| panic!("cannot mount a tmpfs on {target}: {e}"));
        TmpfsMount { dir, mounted: true }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path()/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Changes the size in place (`mount -o remount,size=SIZE`); the files stay.
    pub fn resize(&self, size: &str) {
        let target = self.dir.path().to_str().unwrap();
        let options = format!("remount,size={size}");
        run("mount", &["-o", &options, target])
            .unwrap_or_else(|e| panic!("cannot resize the tmpfs on {target}: {e}"));
    }

    /// Unmounts now (lazily if busy); also done on drop.
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        let target = self.dir.path().to_str().unwrap().to_string();
        if let Err(e) = run("umount", &[&target]) {
            eprintln!("{e}; unmounting lazily");
            if let Err(e) = run("umount", &["-l", &target]) {
                eprintln!("cannot unmount {target}: {e}");
                return;
            }
        }
        self.mounted = false;
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        self.unmount();
    }
}
