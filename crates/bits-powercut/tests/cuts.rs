//! The file system through the kernel: what a cut keeps and forgets, seen with ordinary system
//! calls on the mount, and a writer that skips one sync caught by the loop's own check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::Path;

use bits_powercut::{check_durable, mount_for_test};

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[test]
fn a_write_not_synced_is_gone_and_a_synced_one_stays() {
    let fs = mount_for_test().unwrap();
    let path = fs.path().join("f");
    let mut f = File::create(&path).unwrap();
    sync_dir(fs.path());
    f.write_all(b"durable").unwrap();
    f.sync_data().unwrap();
    f.write_all(b" and volatile").unwrap();
    f.write_at(b"D", 0).unwrap();
    assert_eq!(read(&path).unwrap(), b"Durable and volatile");
    drop(f);
    let report = fs.cut();
    assert!(report.inodes_reverted >= 1, "{report:?}");
    // Read through the kernel: no page cache may still serve the volatile bytes.
    assert_eq!(read(&path).unwrap(), b"durable");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 7);
}

#[test]
fn a_truncate_not_synced_is_undone() {
    let fs = mount_for_test().unwrap();
    let path = fs.path().join("f");
    std::fs::write(&path, b"0123456789").unwrap();
    File::open(&path).unwrap().sync_all().unwrap();
    sync_dir(fs.path());
    OpenOptions::new().write(true).open(&path).unwrap().set_len(3).unwrap();
    assert_eq!(read(&path).unwrap(), b"012");
    fs.cut();
    assert_eq!(read(&path).unwrap(), b"0123456789");
}

#[test]
fn a_create_without_a_directory_sync_is_gone_even_when_the_file_was_synced() {
    let fs = mount_for_test().unwrap();
    let sub = fs.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    sync_dir(fs.path());
    let kept = sub.join("kept");
    let lost = sub.join("lost");
    std::fs::write(&kept, b"k").unwrap();
    File::open(&kept).unwrap().sync_all().unwrap();
    sync_dir(&sub);
    std::fs::write(&lost, b"l").unwrap();
    File::open(&lost).unwrap().sync_all().unwrap();
    let unsynced_dir = fs.path().join("unsynced");
    std::fs::create_dir(&unsynced_dir).unwrap();
    fs.cut();
    assert_eq!(read(&kept).unwrap(), b"k");
    assert!(!lost.exists(), "a file whose directory was never synced survived");
    assert!(!unsynced_dir.exists(), "a directory whose parent was never synced survived");
    let names: Vec<_> = std::fs::read_dir(&sub).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["kept"]);
}

#[test]
fn a_rename_or_unlink_without_the_directory_sync_is_undone() {
    let fs = mount_for_test().unwrap();
    let (temp, dest, gone) =
        (fs.path().join(".temp"), fs.path().join("dest"), fs.path().join("gone"));
    std::fs::write(&temp, b"new").unwrap();
    std::fs::write(&gone, b"g").unwrap();
    File::open(&temp).unwrap().sync_all().unwrap();
    File::open(&gone).unwrap().sync_all().unwrap();
    sync_dir(fs.path());
    std::fs::rename(&temp, &dest).unwrap();
    std::fs::remove_file(&gone).unwrap();
    fs.cut();
    assert!(temp.exists() && !dest.exists(), "the rename survived without a directory sync");
    assert_eq!(read(&gone).unwrap(), b"g", "the unlink survived without a directory sync");

    std::fs::rename(&temp, &dest).unwrap();
    sync_dir(fs.path());
    fs.cut();
    assert!(!temp.exists());
    assert_eq!(read(&dest).unwrap(), b"new");
}

#[test]
fn fdatasync_keeps_the_bytes_but_not_a_mode_change() {
    let fs = mount_for_test().unwrap();
    let path = fs.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    File::open(&path).unwrap().sync_all().unwrap();
    sync_dir(fs.path());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"y").unwrap();
    f.sync_data().unwrap();
    drop(f);
    fs.cut();
    assert_eq!(read(&path).unwrap(), b"xy");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

/// A small program that follows bitsd's protocol: write a piece into the data file, sync it,
/// then record it in a journal (appended and synced); only recorded pieces count as done.
/// `skip` leaves out the data sync of that piece. Returns the bytes it wrote.
fn writer(dir: &Path, skip: Option<usize>) -> Vec<u8> {
    let data_path = dir.join("data");
    let journal_path = dir.join("journal");
    let data = File::create(&data_path).unwrap();
    let mut journal = File::create(&journal_path).unwrap();
    sync_dir(dir);
    let content: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 253) as u8).collect();
    for (i, piece) in content.chunks(5_000).enumerate() {
        let offset = (i * 5_000) as u64;
        data.write_all_at(piece, offset).unwrap();
        if skip != Some(i) {
            data.sync_data().unwrap();
        }
        writeln!(journal, "{offset} {}", piece.len()).unwrap();
        journal.sync_data().unwrap();
    }
    content
}

/// What the journal says is done, checked by [`check_durable`], the power-cut loop's check.
fn check_journal(dir: &Path, content: &[u8]) -> Result<usize, bits_powercut::Lost> {
    let journal = std::fs::read_to_string(dir.join("journal")).unwrap();
    let spans: Vec<(u64, usize)> = journal
        .lines()
        .map(|line| {
            let (offset, len) = line.split_once(' ').unwrap();
            (offset.parse().unwrap(), len.parse().unwrap())
        })
        .collect();
    let count = spans.len();
    check_durable(
        &dir.join("data"),
        spans.into_iter().map(|(o, n)| (o, &content[o as usize..o as usize + n])),
    )?;
    Ok(count)
}

#[test]
fn a_writer_that_skips_one_sync_is_caught_and_one_that_does_not_passes() {
    let fs = mount_for_test().unwrap();
    let honest = fs.path().join("honest");
    let sloppy = fs.path().join("sloppy");
    for dir in [&honest, &sloppy] {
        std::fs::create_dir(dir).unwrap();
    }
    sync_dir(fs.path());
    let content = writer(&honest, None);
    // The last piece: a later piece's sync would make a skipped one durable after all (one file,
    // one sync), so the cut must come while the skipped piece is the newest, as a crash would.
    writer(&sloppy, Some(7));
    // Without a cut the page cache hides the missing sync: both look right.
    assert_eq!(check_journal(&honest, &content), Ok(8));
    assert_eq!(check_journal(&sloppy, &content), Ok(8));
    fs.cut();
    assert_eq!(check_journal(&honest, &content), Ok(8));
    let lost = check_journal(&sloppy, &content).unwrap_err();
    assert_eq!(lost.offset, 35_000, "{lost}");
    eprintln!("caught: {lost}");
}
