//! The store's and the disk's failures as BITS errors, and the answer for a file index out of range.

use bits_core::{BitsError, Code, Job};

pub(crate) fn no_such_file(job: &Job, index: u32) -> BitsError {
    BitsError::new(
        Code::E_INVALIDARG,
        format!("file index {index} is out of range; the job has {} files", job.files.len()),
    )
}

/// A full disk (or quota) is `ERROR_DISK_FULL`, which a client can act on by freeing space: the
/// store recovers by itself once there is room. Anything else is the store's failure.
pub(crate) fn store_error(e: bits_store::StoreError) -> BitsError {
    tracing::error!(error = %e, "job store failure");
    if e.is_disk_full() {
        return BitsError::new(
            Code::ERROR_DISK_FULL,
            format!("the job store's disk is full; the change was not saved: {e}"),
        );
    }
    BitsError::new(Code::BG_E_DATABASE_CORRUPT, format!("job store failure: {e}"))
}

pub(crate) fn disk_error(e: bits_disk::DiskError) -> BitsError {
    BitsError::new(e.code(), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that failed for lack of space says so (ERROR_DISK_FULL), also when the engine
    /// kept only the error's kind; other failures stay the store's.
    #[test]
    fn a_full_disk_is_error_disk_full_not_a_corrupt_database() {
        use bits_store::StoreError;
        let io = |cause| StoreError::Io { op: "flush the job store to disk", cause };
        let enospc = std::io::Error::from_raw_os_error(28);
        let edquot = std::io::Error::from_raw_os_error(122);
        let kind_only = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        for cause in [enospc, edquot, kind_only] {
            let error = store_error(io(cause));
            assert_eq!(error.code, Code::ERROR_DISK_FULL, "{error:?}");
            assert!(error.message.contains("disk is full"), "{}", error.message);
        }
        let error = store_error(io(std::io::Error::other("disk on fire")));
        assert_eq!(error.code, Code::BG_E_DATABASE_CORRUPT, "{error:?}");
    }
}
