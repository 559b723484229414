//! RequestFileRanges (spec §3.F): on-demand ranges join a whole-file download's pending set,
//! which the worker fetches ahead of the rest of the file.

use bits_core::{BitsError, ByteRange, Code, Event, JobFile, JobId, RangeSet, transition};

use crate::handle::Manager;
use crate::requested::{Requested, check_pending};
use crate::table::{Entry, Table, lookup_mut};
use crate::types::Caller;

/// Up to this many ranges a RequestFileRanges sorts them on the gRPC thread (well under a
/// millisecond); more go to the blocking pool, so one large request does not stall other callers.
const SORT_INLINE_MAX: usize = 4096;

impl Manager {
    /// RequestFileRanges: these remote ranges are fetched ahead of the rest of the file. Ranges may
    /// overlap each other and what is already filled; no byte is fetched twice.
    ///
    /// The ranges are sorted and merged before the table is locked (a large request is worth a
    /// blocking-pool thread, so the gRPC thread keeps serving meanwhile); under the lock they are
    /// only checked against the file's size and merged into its pending set in one pass.
    pub async fn request_file_ranges(
        &self,
        caller: Caller,
        id: JobId,
        index: u32,
        ranges: &[ByteRange],
    ) -> Result<Code, BitsError> {
        // Spec §3 order: lookup, state and the file's type come before the ranges themselves.
        let size = {
            let mut table = self.table();
            let entry = on_demand_entry(&mut table, caller, id, index)?;
            entry.file_mut_checked(index)?.remote_size
        };
        let requested = if ranges.len() <= SORT_INLINE_MAX {
            Requested::parse(ranges, caller.is_admin())?
        } else {
            let ranges = ranges.to_vec();
            tokio::task::spawn_blocking(move || Requested::parse(&ranges, caller.is_admin()))
                .await
                .map_err(|e| {
                    BitsError::new(Code::E_FAIL, format!("sorting the ranges failed: {e}"))
                })??
        };
        let wanted = requested.within(size)?;
        // The new record is built and encoded outside the table lock, from a copy of the file,
        // and written under it only if the file is still that copy (a worker may record bytes
        // meanwhile: then again, and after a few tries all under the lock).
        let mut tries = 0;
        let (before, after) = loop {
            tries += 1;
            let under_lock = tries > OPTIMISTIC_TRIES;
            let copy = {
                let mut table = self.table();
                let entry = on_demand_entry(&mut table, caller, id, index)?;
                let file = entry.file_mut_checked(index)?;
                if under_lock {
                    let pending = pending_after(file, index, &requested, &wanted, size, caller)?;
                    let before = std::mem::replace(&mut file.requested, pending);
                    let after = file.requested.clone();
                    self.persist_file(id, index, file)?;
                    self.requested_changed(entry)?;
                    break (before, after);
                }
                file.clone()
            };
            let pending = pending_after(&copy, index, &requested, &wanted, size, caller)?;
            let updated = JobFile { requested: pending, ..copy.clone() };
            let (encoded, updated) = self.commit().encode_file(id, index, updated).await?;
            let after = updated.requested.clone();
            let mut table = self.table();
            let entry = on_demand_entry(&mut table, caller, id, index)?;
            let file = entry.file_mut_checked(index)?;
            if *file != copy {
                continue;
            }
            self.commit().put_encoded_file(encoded)?;
            *file = updated;
            self.requested_changed(entry)?;
            break (copy.requested, after);
        };
        if let Err(e) = self.flush().await {
            // Not durable, so not shown: the pending ranges go back to what they were.
            let mut table = self.table();
            if let Some(file) = table.get_mut(&id).and_then(|e| e.file_mut(index))
                && file.requested == after
            {
                file.requested = before;
                if let Err(e) = self.persist_file(id, index, file) {
                    tracing::warn!(job = %id, index, error = %e, "storing requested ranges taken back failed");
                }
            }
            return Err(e);
        }
        self.wake().notify_one();
        Ok(Code::S_OK)
    }

    /// The rest of RequestFileRanges under the table lock, once the file's record is written.
    fn requested_changed(&self, entry: &mut Entry) -> Result<(), BitsError> {
        entry.touch();
        self.persist_job_fields(entry.job())?;
        if let Some(run) = entry.run() {
            run.repick();
        }
        Ok(())
    }
}

/// Tries RequestFileRanges makes to write a record encoded outside the table lock before it
/// encodes under it.
const OPTIMISTIC_TRIES: u32 = 3;

/// The file's pending on-demand ranges once `requested` (checked against `size`, the size
/// known before) joins them: only bytes not filled yet, within the size known now.
fn pending_after(
    file: &JobFile,
    index: u32,
    requested: &Requested,
    wanted: &RangeSet,
    size: Option<u64>,
    caller: Caller,
) -> Result<RangeSet, BitsError> {
    // A probe may have learned (or changed) the size meanwhile: check against that one.
    let resized;
    let wanted = if file.remote_size != size {
        resized = requested.within(file.remote_size)?;
        &resized
    } else {
        wanted
    };
    let pending = file.requested.union(&wanted.subtract(&file.filled));
    check_pending(&pending, index, caller.is_admin())?;
    Ok(pending)
}

/// Job `id`'s entry, once RequestFileRanges may change it: the caller owns it (or is an admin),
/// its state allows changes, and file `index` is a whole-file download.
fn on_demand_entry(
    table: &mut Table,
    caller: Caller,
    id: JobId,
    index: u32,
) -> Result<&mut Entry, BitsError> {
    let entry = lookup_mut(table, caller, id)?;
    transition(entry.job().state, Event::Modify)?;
    if !entry.file_mut_checked(index)?.ranges.is_empty() {
        return Err(BitsError::new(
            Code::BG_E_RANDOM_ACCESS_NOT_SUPPORTED,
            format!(
                "file {index} was added with static ranges; on-demand ranges need a whole-file download"
            ),
        ));
    }
    Ok(entry)
}
