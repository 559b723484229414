//! Expected SHA-256 digests (a bitsd extension; BITS itself only has a validation state). A
//! file given one is hashed once all its bytes are recorded, from its temp file on disk (never
//! from network buffers), read as the job's owner through the directory AddFile pinned; the job
//! reaches TRANSFERRED only if every such file matched (`worker.rs: verify_digests`).

use bits_core::{BitsError, Code, JobFile};
use bits_disk::PartFile;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::errors::disk_error;

/// Bytes read per call while hashing.
const CHUNK: usize = 1 << 20;

/// The SHA-256 (lowercase hex) of the first `len` bytes of `file`'s temp file, read on this
/// (blocking) thread with its current file-system identity: the job's owner's. A temp file
/// that is gone is `ERROR_PATH_NOT_FOUND`; one shorter than `len` hashes what it holds (and
/// so fails the comparison). Once `stop` is cancelled it gives up between chunks (`E_FAIL`,
/// which nobody sees): the caller no longer waits for it, and a Suspend/Resume loop must not
/// pile up reads of a large file on the blocking pool.
pub(crate) fn hash_temp(
    file: &JobFile,
    owner: u32,
    stop: &CancellationToken,
) -> Result<String, BitsError> {
    let len = file.bytes_total().unwrap_or(0);
    let part = PartFile::reopen_to_read(&file.temp_path, file.dir_ino, file.temp_id, owner)
        .map_err(disk_error)?
        .ok_or_else(|| {
            BitsError::new(
                Code::ERROR_PATH_NOT_FOUND,
                format!("the temp file {} is gone", file.temp_path.display()),
            )
        })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK.min(len as usize).max(1)];
    let mut offset = 0u64;
    while offset < len {
        if stop.is_cancelled() {
            return Err(BitsError::new(Code::E_FAIL, "hashing stopped: the job was halted"));
        }
        let want = (len - offset).min(buf.len() as u64) as usize;
        let n = part.read_at(offset, &mut buf[..want]).map_err(disk_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The error a file whose bytes did not hash to what was expected puts its job in.
pub(crate) fn mismatch(file: &JobFile, actual: &str) -> BitsError {
    BitsError::new(
        Code::BITSD_E_CHECKSUM_MISMATCH,
        format!(
            "{} has SHA-256 {actual}, expected {}; it was not moved into place and Resume \
             fetches it again",
            file.local_path.display(),
            file.expected_sha256.as_deref().unwrap_or("none"),
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn hashes_what_is_on_disk_up_to_the_file_length() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join(".f.part");
        let me = rustix::process::geteuid().as_raw();
        let part = PartFile::create(&temp, None, 0o644, me).unwrap();
        part.write_at(0, b"abc").unwrap();
        let file = JobFile {
            remote_url: "http://h/f".into(),
            local_path: dir.path().join("f"),
            ranges: Vec::new(),
            remote_size: Some(3),
            validator: bits_core::Validator::default(),
            filled: bits_core::RangeSet::from_span(0, 3),
            requested: bits_core::RangeSet::new(),
            temp_path: temp.clone(),
            completed: false,
            download_position: None,
            dir_ino: None,
            temp_id: Some(part.id()),
            mode: None,
            expected_sha256: None,
            actual_sha256: None,
        };
        // sha256("abc")
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let go = CancellationToken::new();
        assert_eq!(hash_temp(&file, me, &go).unwrap(), abc);
        // Bytes past the file's length are not part of it.
        part.write_at(3, b"tail").unwrap();
        assert_eq!(hash_temp(&file, me, &go).unwrap(), abc);
        // What is on disk, not what was downloaded: a changed byte changes the digest.
        part.write_at(0, b"x").unwrap();
        assert_ne!(hash_temp(&file, me, &go).unwrap(), abc);
        let stopped = CancellationToken::new();
        stopped.cancel();
        assert_eq!(
            hash_temp(&file, me, &stopped).unwrap_err().message,
            "hashing stopped: the job was halted"
        );
        std::fs::remove_file(&temp).unwrap();
        assert_eq!(hash_temp(&file, me, &go).unwrap_err().code, Code::ERROR_PATH_NOT_FOUND);
    }
}
