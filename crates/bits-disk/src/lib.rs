//! Bytes on disk: where a download's bytes go before and after it completes.
//!
//! A file downloads into a temp file next to its destination ([`temp_path_for`]), written at
//! arbitrary offsets ([`PartFile`]) and synced before its filled ranges are recorded, so the store
//! never claims a byte a crash could lose. Complete moves it into place atomically ([`finalize`]).
//! Nothing appears at the destination until then.
//!
//! The API is blocking by design: callers run it on tokio's blocking pool.

mod dir;
mod dir_sync;
mod error;
mod finalize;
mod identity;
mod part_file;

pub use error::DiskError;
pub use finalize::{
    Dirs, Move, check_destination_name, check_temp_writable, remove_temp, rename_all_into_place,
    resolve_destinations, sync_parent_dirs, temp_len, temp_path_for,
};
pub use identity::{Identity, IdentityError};
pub use part_file::PartFile;
/// A file's `lstat`, as [`Dirs::stat`] returns it.
pub use rustix::fs::Stat;

/// The umask of process `pid`, from `/proc/PID/status` (Linux 4.7+): the mode its own new files
/// would get, for a download it asks for. `None` if the process or the line is gone.
pub fn umask_of_process(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| umask_in_status(&s))
}

/// The `Umask:` line of a `/proc/PID/status` text.
pub(crate) fn umask_in_status(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok().filter(|m| *m <= 0o777)
}
