//! The store on a file system that forgets what was not fsynced (`bits-powercut`): what a flush
//! acknowledged is there after a power cut, or the store refuses to open; it never opens empty.
//! Skipped, saying why, where the file system cannot be mounted (not root, no /dev/fuse).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use bits_core::{Job, JobId};
use bits_powercut::mount_for_test;
use bits_store::{SledStore, Store};

fn job(n: u64) -> Job {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(n);
    Job { no_progress_timeout_secs: 1, ..Job::new(JobId::new_random(), format!("j{n}"), 0, t) }
}

/// The first finding of the power-cut loop: a new store's files (sled's `db/` and its log, the
/// job count and the mark beside it) were created but no directory was synced, so a power cut
/// after the first acknowledged job took the whole store with it, and the daemon came back with
/// an empty one (the guards that would have noticed were lost with it).
#[test]
fn a_flushed_job_in_a_new_store_survives_a_power_cut() {
    let fs = mount_for_test().unwrap();
    let data = fs.path().join("data");
    std::fs::create_dir(&data).unwrap();
    fs.sync_all();
    let first = job(1);
    {
        let store = SledStore::open(&data).unwrap();
        store.put_job(&first).unwrap();
        store.flush().unwrap();
    }
    fs.cut();
    let store = SledStore::open(&data).unwrap();
    let ids: Vec<JobId> = store.load_all().unwrap().iter().map(|j| j.id).collect();
    assert_eq!(ids, [first.id]);

    // And again across opens: each open writes sled's snapshot anew.
    let second = job(2);
    store.put_job(&second).unwrap();
    store.flush().unwrap();
    drop(store);
    fs.cut();
    let store = SledStore::open(&data).unwrap();
    let mut ids: Vec<JobId> = store.load_all().unwrap().iter().map(|j| j.id).collect();
    ids.sort();
    let mut want = vec![first.id, second.id];
    want.sort();
    assert_eq!(ids, want);
}

/// The mark of acknowledged changes (`acked.seq`) and the job count (`jobs.count`) are written
/// unsynced after each flush, but they were also created unsynced, so after a power cut they read
/// as empty and their checks were skipped (the loop's log: "unreadable acknowledged-change mark"
/// twice per start, "unreadable job count" until the first Complete).
#[test]
fn the_guards_beside_the_store_are_readable_after_a_power_cut() {
    let fs = mount_for_test().unwrap();
    let data = fs.path().join("data");
    std::fs::create_dir(&data).unwrap();
    fs.sync_all();
    {
        let store = SledStore::open(&data).unwrap();
        store.put_job(&job(1)).unwrap();
        store.flush().unwrap();
    }
    fs.cut();
    let read = || std::fs::read_to_string(data.join("acked.seq")).unwrap().trim().parse::<u64>();
    assert_eq!(read(), Ok(0), "a new store's mark starts at 0, durably");
    let count = || std::fs::read_to_string(data.join("jobs.count")).unwrap().trim().parse::<u64>();
    assert_eq!(count(), Ok(0), "a new store's job count starts at 0, durably");
    {
        let store = SledStore::open(&data).unwrap();
        store.put_job(&job(2)).unwrap();
        store.flush().unwrap();
    }
    // The last open wrote back, synced, what it read: both jobs flushed, so both counted.
    SledStore::open(&data).unwrap();
    fs.cut();
    let mark = read().unwrap();
    assert!(mark > 0, "the mark fell back to {mark}");
    assert_eq!(count(), Ok(2), "the count read back at the last open was not kept");
    SledStore::open(&data).unwrap();
}
