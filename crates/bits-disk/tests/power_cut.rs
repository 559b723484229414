//! Temp files on a file system that forgets what was not fsynced (`bits-powercut`): bytes a
//! `PartFile::sync` covered are there after a power cut. Skipped, saying why, where the file
//! system cannot be mounted (not root, no /dev/fuse).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bits_disk::PartFile;
use bits_powercut::{check_durable, mount_for_test};

/// Found by the power-cut loop: the temp file's bytes were fdatasynced and recorded, but its
/// name in the destination directory never was, so a cut took the file and every range recorded
/// in it (bitsd then fetched them all again; a daemon trusting the record would have had
/// nothing to trust).
#[test]
fn a_synced_temp_file_keeps_its_name_and_bytes_across_a_power_cut() {
    let fs = mount_for_test().unwrap();
    let out = fs.path().join("out");
    std::fs::create_dir(&out).unwrap();
    fs.sync_all();
    let me = rustix::process::geteuid().as_raw();
    let path = out.join(".f.part");
    {
        let part = PartFile::create(&path, None, 0o644, me).unwrap();
        part.set_len(10).unwrap();
        part.write_at(0, b"recorded").unwrap();
        part.sync().unwrap();
        part.write_at(8, b"!!").unwrap();
    }
    fs.cut();
    check_durable(&path, [(0, &b"recorded"[..])]).unwrap();

    // A file reopened in a later life (its name possibly never synced in the earlier one) too.
    let again = out.join(".g.part");
    let id = PartFile::create(&again, None, 0o644, me).unwrap().id();
    let part = PartFile::reopen(&again, None, Some(id), me).unwrap().unwrap();
    part.write_at(0, b"later").unwrap();
    part.sync().unwrap();
    drop(part);
    fs.cut();
    check_durable(&again, [(0, &b"later"[..])]).unwrap();
}
