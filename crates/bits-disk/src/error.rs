//! Disk failures, sorted into the cases a BITS caller can act on: a full disk, a permission
//! problem, a missing directory, a bad path. Everything else is an I/O error naming the operation.

use std::io;
use std::path::{Path, PathBuf};

use bits_core::Code;

/// A failed disk operation. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No space left on the device, or the user's quota is exhausted (ENOSPC / EDQUOT).
    #[error("the disk holding {} is full", path.display())]
    Full { path: PathBuf },

    /// The process (EMFILE) or the system (ENFILE) has no file descriptor left. Passing: other
    /// files close, so the operation is worth retrying, like on a full disk.
    #[error("cannot {op} {}: too many open files", path.display())]
    TooManyOpenFiles { path: PathBuf, op: &'static str },

    /// Permission denied, or a read-only file system (EACCES / EPERM / EROFS).
    #[error("access denied to {}", path.display())]
    AccessDenied { path: PathBuf },

    /// The path, or its parent directory, does not exist (or a parent is not a directory).
    #[error("path not found: {}", path.display())]
    NotFound { path: PathBuf },

    /// The destination cannot be used as a file path at all.
    #[error("invalid destination {}: {reason}", path.display())]
    InvalidPath { path: PathBuf, reason: &'static str },

    /// A symbolic link in a directory path that was resolved at AddFile: the path was changed
    /// since, and is not followed (see `dir.rs`).
    #[error("the directory path {} now contains a symbolic link; bitsd follows none after AddFile", path.display())]
    Redirected { path: PathBuf },

    /// A file at a temp file's name that this job did not create (another user's, or one put
    /// there in place of ours): never written, renamed or deleted.
    #[error("{} is not the temp file this job created ({reason}); it is left alone", path.display())]
    NotOurs { path: PathBuf, reason: String },

    /// The temp file is shorter than the bytes written to it: something truncated it, and the
    /// bytes past its end are lost.
    #[error("the temp file {} shrank to {len} bytes under the download (expected {expected})", path.display())]
    Shrunk { path: PathBuf, len: u64, expected: u64 },

    /// Any other I/O failure.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl DiskError {
    /// The BITS code reported for this error.
    pub fn code(&self) -> Code {
        match self {
            DiskError::Full { .. } => Code::ERROR_DISK_FULL,
            DiskError::TooManyOpenFiles { .. } => Code::ERROR_TOO_MANY_OPEN_FILES,
            DiskError::AccessDenied { .. } => Code::E_ACCESSDENIED,
            DiskError::NotFound { .. } => Code::ERROR_PATH_NOT_FOUND,
            DiskError::InvalidPath { .. } => Code::E_INVALIDARG,
            DiskError::Redirected { .. } | DiskError::NotOurs { .. } => Code::E_ACCESSDENIED,
            DiskError::Shrunk { .. } | DiskError::Io { .. } => Code::E_FAIL,
        }
    }

    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            DiskError::Full { path }
            | DiskError::TooManyOpenFiles { path, .. }
            | DiskError::AccessDenied { path }
            | DiskError::NotFound { path }
            | DiskError::InvalidPath { path, .. }
            | DiskError::Redirected { path }
            | DiskError::NotOurs { path, .. }
            | DiskError::Shrunk { path, .. }
            | DiskError::Io { path, .. } => path,
        }
    }

    /// Classifies an I/O error from doing `op` on `path`.
    pub(crate) fn from_io(path: &Path, op: &'static str, source: io::Error) -> DiskError {
        let path = path.to_path_buf();
        // ELOOP: a symlink where we open with O_NOFOLLOW — someone else's link, never followed.
        if source.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            return DiskError::AccessDenied { path };
        }
        let out_of_fds = [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE];
        if out_of_fds.iter().any(|e| source.raw_os_error() == Some(e.raw_os_error())) {
            return DiskError::TooManyOpenFiles { path, op };
        }
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => DiskError::Full { path },
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                DiskError::AccessDenied { path }
            }
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => DiskError::NotFound { path },
            _ => DiskError::Io { path, op, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(errno: rustix::io::Errno) -> DiskError {
        DiskError::from_io(
            Path::new("/x"),
            "write",
            io::Error::from_raw_os_error(errno.raw_os_error()),
        )
    }

    #[test]
    fn errno_maps_to_variant_and_code() {
        use rustix::io::Errno;
        let cases = [
            (Errno::NOSPC, Code::ERROR_DISK_FULL),
            (Errno::DQUOT, Code::ERROR_DISK_FULL),
            (Errno::ACCESS, Code::E_ACCESSDENIED),
            (Errno::PERM, Code::E_ACCESSDENIED),
            (Errno::LOOP, Code::E_ACCESSDENIED),
            (Errno::ROFS, Code::E_ACCESSDENIED),
            (Errno::NOENT, Code::ERROR_PATH_NOT_FOUND),
            (Errno::NOTDIR, Code::ERROR_PATH_NOT_FOUND),
            (Errno::MFILE, Code::ERROR_TOO_MANY_OPEN_FILES),
            (Errno::NFILE, Code::ERROR_TOO_MANY_OPEN_FILES),
            (Errno::IO, Code::E_FAIL),
            (Errno::FBIG, Code::E_FAIL),
        ];
        for (errno, code) in cases {
            let err = classify(errno);
            assert_eq!(err.code(), code, "{errno:?} -> {err:?}");
            assert_eq!(err.path(), Path::new("/x"));
        }
        assert!(matches!(classify(Errno::NOSPC), DiskError::Full { .. }));
        let io = classify(Errno::IO);
        assert!(matches!(io, DiskError::Io { op: "write", .. }));
        assert!(io.to_string().contains("cannot write /x"), "{io}");
        let fds = classify(Errno::MFILE);
        assert_eq!(fds.to_string(), "cannot write /x: too many open files");
    }
}
