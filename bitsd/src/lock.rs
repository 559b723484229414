//! One daemon per data directory, said at once.
//!
//! sled locks its database too, but a locked database looks the same as one whose previous
//! owner (the daemon that just exited, whose flusher thread lingers) is about to let go, so the
//! store retries for five seconds before it gives up, silently. `bitsd.lock` in the data directory
//! tells the two apart first: it is held (`flock`, released by the kernel however the process
//! ends) for the daemon's whole life and holds its pid, so a second daemon stops at once and
//! names the first.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use anyhow::{Context, bail};
use rustix::fs::{FlockOperation, flock};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "bitsd.lock";

/// Held for as long as the daemon runs; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Creates `data_dir` (0700) if it is missing and locks it for this process, or says which
/// process has it.
pub fn lock(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let path = data_dir.join(LOCK_FILE);
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
        if e != rustix::io::Errno::WOULDBLOCK {
            bail!("cannot lock {}: {e}", path.display());
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim().parse::<u32>() {
            Ok(pid) => format!("bitsd (pid {pid})"),
            Err(_) => "another bitsd".to_string(),
        };
        bail!(
            "the data directory {} is in use by {holder}; stop it first, or give this one another --data-dir",
            data_dir.display()
        );
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{}", std::process::id())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_one_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = lock(&data).unwrap();
        let pid = std::process::id();
        assert_eq!(std::fs::read_to_string(data.join(LOCK_FILE)).unwrap(), format!("{pid}\n"));
        // flock is per open file description: a second open in this process conflicts too.
        let e = lock(&data).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "the data directory {} is in use by bitsd (pid {pid}); stop it first, or give this one another --data-dir",
                data.display()
            )
        );
        drop(held);
        let _again = lock(&data).unwrap();
    }

    #[test]
    fn a_link_in_place_of_the_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join(LOCK_FILE))
            .unwrap();
        let e = format!("{:#}", lock(dir.path()).unwrap_err());
        assert!(e.starts_with("cannot open "), "{e}");
        assert!(!dir.path().join("elsewhere").exists());
    }
}
