//! Bytes on disk: where a download's bytes go before and after it completes.
//!
//! A file downloads into a temp file next to its destination ([`temp_path_for`]), written at
//! arbitrary offsets ([`PartFile`]) and synced before its filled ranges are recorded, so the store
//! never claims a byte a crash could lose. Complete moves it into place atomically ([`finalize`]).
//! Nothing appears at the destination until then.
//!
//! The API is blocking by design: callers run it on tokio's blocking pool.

mod error;
mod finalize;
mod identity;
mod part_file;

pub use error::DiskError;
pub use finalize::{
    Move, check_destination, remove_temp, rename_all_into_place, sync_parent_dirs, temp_path_for,
};
pub use identity::{Identity, IdentityError};
pub use part_file::PartFile;
