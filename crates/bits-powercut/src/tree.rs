//! The whole file system in memory, each inode as two images: what a power cut would leave
//! (`durable`) and what processes see now (`current`). The crate docs give the model; this file
//! is its only implementation, free of FUSE so it can be tested directly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::SystemTime;

/// File data is kept in blocks shared between the two images: a sync copies pointers, a write
/// copies only the blocks it touches (sled's log is fdatasynced after every flush).
const BLOCK: usize = 16 * 1024;

pub(crate) const ROOT: u64 = 1;

/// Why an operation was refused, as the errno the kernel passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    Invalid,
}

/// A file's bytes: `len` bytes in blocks of [`BLOCK`]; a missing block or the part of a block past
/// its vector's end reads as zeros (a hole).
#[derive(Clone, Default, Debug)]
pub(crate) struct Data {
    blocks: Vec<Option<Arc<Vec<u8>>>>,
    len: u64,
}

impl Data {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn read(&self, offset: u64, size: usize) -> Vec<u8> {
        if offset >= self.len {
            return Vec::new();
        }
        let end = self.len.min(offset + size as u64);
        let mut out = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        while pos < end {
            let (b, within) = ((pos / BLOCK as u64) as usize, (pos % BLOCK as u64) as usize);
            let n = (BLOCK - within).min((end - pos) as usize);
            if let Some(Some(block)) = self.blocks.get(b) {
                let have = block.len().saturating_sub(within).min(n);
                let at = (pos - offset) as usize;
                out[at..at + have].copy_from_slice(&block[within..within + have]);
            }
            pos += n as u64;
        }
        out
    }

    pub(crate) fn write(&mut self, offset: u64, bytes: &[u8]) {
        let mut pos = offset;
        let mut rest = bytes;
        while !rest.is_empty() {
            let (b, within) = ((pos / BLOCK as u64) as usize, (pos % BLOCK as u64) as usize);
            let n = (BLOCK - within).min(rest.len());
            if self.blocks.len() <= b {
                self.blocks.resize(b + 1, None);
            }
            let block = Arc::make_mut(self.blocks[b].get_or_insert_with(Default::default));
            if block.len() < within + n {
                block.resize(within + n, 0);
            }
            block[within..within + n].copy_from_slice(&rest[..n]);
            pos += n as u64;
            rest = &rest[n..];
        }
        self.len = self.len.max(pos);
    }

    /// Truncates or extends (with zeros) to `len`.
    pub(crate) fn set_len(&mut self, len: u64) {
        if len < self.len {
            let keep = len.div_ceil(BLOCK as u64) as usize;
            self.blocks.truncate(keep);
            let within = (len % BLOCK as u64) as usize;
            if within != 0
                && let Some(Some(last)) = self.blocks.last_mut()
                && last.len() > within
            {
                Arc::make_mut(last).truncate(within);
            }
        }
        self.len = len;
    }
}

/// What `stat` shows besides the size.
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) atime: SystemTime,
    pub(crate) mtime: SystemTime,
    pub(crate) ctime: SystemTime,
}

impl Meta {
    pub(crate) fn new(perm: u16, uid: u32, gid: u32) -> Meta {
        let now = SystemTime::now();
        Meta { perm, uid, gid, atime: now, mtime: now, ctime: now }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Content {
    File(Data),
    Dir(BTreeMap<OsString, u64>),
}

#[derive(Clone, Debug)]
pub(crate) struct Image {
    pub(crate) meta: Meta,
    pub(crate) content: Content,
}

impl Image {
    pub(crate) fn is_dir(&self) -> bool {
        matches!(self.content, Content::Dir(_))
    }

    pub(crate) fn size(&self) -> u64 {
        match &self.content {
            Content::File(data) => data.len(),
            Content::Dir(entries) => entries.len() as u64,
        }
    }
}

#[derive(Debug)]
struct Node {
    durable: Image,
    current: Image,
}

/// What a cut threw away, for the caller's log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CutReport {
    /// Inodes changed since the previous cut, put back to their durable image.
    pub inodes_reverted: usize,
    /// Inodes no durable directory entry reaches any more (created and never made durable).
    pub inodes_dropped: usize,
}

#[derive(Debug)]
pub(crate) struct Tree {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Inodes changed since the last cut (so a cut does not walk the whole tree twice).
    dirty: HashSet<u64>,
}

impl Tree {
    pub(crate) fn new(uid: u32, gid: u32) -> Tree {
        let root =
            Image { meta: Meta::new(0o755, uid, gid), content: Content::Dir(BTreeMap::new()) };
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node { durable: root.clone(), current: root });
        Tree { nodes, next_ino: ROOT + 1, dirty: HashSet::new() }
    }

    pub(crate) fn get(&self, ino: u64) -> Result<&Image, Refusal> {
        self.nodes.get(&ino).map(|n| &n.current).ok_or(Refusal::NotFound)
    }

    fn current_mut(&mut self, ino: u64) -> Result<&mut Image, Refusal> {
        self.dirty.insert(ino);
        self.nodes.get_mut(&ino).map(|n| &mut n.current).ok_or(Refusal::NotFound)
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Refusal> {
        match &self.get(dir)?.content {
            Content::Dir(entries) => Ok(entries),
            Content::File(_) => Err(Refusal::NotDir),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Refusal> {
        let image = self.current_mut(dir)?;
        image.meta.mtime = SystemTime::now();
        image.meta.ctime = image.meta.mtime;
        match &mut image.content {
            Content::Dir(entries) => Ok(entries),
            Content::File(_) => Err(Refusal::NotDir),
        }
    }

    pub(crate) fn lookup(&self, dir: u64, name: &OsStr) -> Result<u64, Refusal> {
        self.entries(dir)?.get(name).copied().ok_or(Refusal::NotFound)
    }

    /// `(name, ino, is_dir)` of every entry, in name order.
    pub(crate) fn list(&self, dir: u64) -> Result<Vec<(OsString, u64, bool)>, Refusal> {
        Ok(self
            .entries(dir)?
            .iter()
            .map(|(name, &ino)| (name.clone(), ino, self.get(ino).is_ok_and(Image::is_dir)))
            .collect())
    }

    /// A new file or directory named `name` in `dir`. Its inode starts durable as created (empty,
    /// with its owner and mode), since a file system writes an inode with the entry that names it;
    /// the entry itself is volatile until `dir` is synced.
    pub(crate) fn create(
        &mut self,
        dir: u64,
        name: &OsStr,
        dir_kind: bool,
        meta: Meta,
    ) -> Result<u64, Refusal> {
        if self.entries(dir)?.contains_key(name) {
            return Err(Refusal::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let content =
            if dir_kind { Content::Dir(BTreeMap::new()) } else { Content::File(Data::default()) };
        let image = Image { meta, content };
        self.nodes.insert(ino, Node { durable: image.clone(), current: image });
        self.entries_mut(dir)?.insert(name.to_os_string(), ino);
        Ok(ino)
    }

    /// Removes the entry; the inode lives on for open handles and for the durable entries that
    /// still name it.
    pub(crate) fn remove(&mut self, dir: u64, name: &OsStr, want_dir: bool) -> Result<(), Refusal> {
        let ino = self.lookup(dir, name)?;
        let image = self.get(ino)?;
        match (&image.content, want_dir) {
            (Content::Dir(entries), true) if !entries.is_empty() => return Err(Refusal::NotEmpty),
            (Content::Dir(_), false) => return Err(Refusal::IsDir),
            (Content::File(_), true) => return Err(Refusal::NotDir),
            _ => {}
        }
        self.entries_mut(dir)?.remove(name);
        Ok(())
    }

    pub(crate) fn rename(
        &mut self,
        from_dir: u64,
        from: &OsStr,
        to_dir: u64,
        to: &OsStr,
        no_replace: bool,
    ) -> Result<(), Refusal> {
        let ino = self.lookup(from_dir, from)?;
        let moving_dir = self.get(ino)?.is_dir();
        if let Ok(existing) = self.lookup(to_dir, to) {
            if no_replace {
                return Err(Refusal::Exists);
            }
            if existing == ino {
                return Ok(());
            }
            match (&self.get(existing)?.content, moving_dir) {
                (Content::Dir(entries), true) if !entries.is_empty() => {
                    return Err(Refusal::NotEmpty);
                }
                (Content::Dir(_), false) => return Err(Refusal::IsDir),
                (Content::File(_), true) => return Err(Refusal::NotDir),
                _ => {}
            }
        }
        if moving_dir && self.is_within(to_dir, ino) {
            return Err(Refusal::Invalid);
        }
        self.entries(to_dir)?;
        self.entries_mut(from_dir)?.remove(from);
        self.entries_mut(to_dir)?.insert(to.to_os_string(), ino);
        Ok(())
    }

    /// Whether `dir` is `ancestor` or below it (a directory may not move into itself).
    fn is_within(&self, dir: u64, ancestor: u64) -> bool {
        let mut stack = vec![ancestor];
        while let Some(d) = stack.pop() {
            if d == dir {
                return true;
            }
            if let Ok(entries) = self.entries(d) {
                stack.extend(entries.values().filter(|&&i| self.get(i).is_ok_and(Image::is_dir)));
            }
        }
        false
    }

    pub(crate) fn read(&self, ino: u64, offset: u64, size: usize) -> Result<Vec<u8>, Refusal> {
        match &self.get(ino)?.content {
            Content::File(data) => Ok(data.read(offset, size)),
            Content::Dir(_) => Err(Refusal::IsDir),
        }
    }

    fn data_mut(&mut self, ino: u64) -> Result<&mut Data, Refusal> {
        let image = self.current_mut(ino)?;
        image.meta.mtime = SystemTime::now();
        image.meta.ctime = image.meta.mtime;
        match &mut image.content {
            Content::File(data) => Ok(data),
            Content::Dir(_) => Err(Refusal::IsDir),
        }
    }

    pub(crate) fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<(), Refusal> {
        self.data_mut(ino)?.write(offset, bytes);
        Ok(())
    }

    pub(crate) fn set_len(&mut self, ino: u64, len: u64) -> Result<(), Refusal> {
        self.data_mut(ino)?.set_len(len);
        Ok(())
    }

    /// Changes what `stat` shows (the caller has filled in the new values).
    pub(crate) fn set_meta(
        &mut self,
        ino: u64,
        change: impl FnOnce(&mut Meta),
    ) -> Result<(), Refusal> {
        let image = self.current_mut(ino)?;
        change(&mut image.meta);
        image.meta.ctime = SystemTime::now();
        Ok(())
    }

    /// fsync (`data_only`: fdatasync) of a file, or fsync of a directory: its current image
    /// becomes durable. fdatasync makes the bytes and the size durable but not the times, mode or
    /// owner (POSIX asks it to keep only what reading the data back needs).
    pub(crate) fn sync(&mut self, ino: u64, data_only: bool) -> Result<(), Refusal> {
        let node = self.nodes.get_mut(&ino).ok_or(Refusal::NotFound)?;
        node.durable.content = node.current.content.clone();
        if !data_only || node.current.is_dir() {
            node.durable.meta = node.current.meta.clone();
        }
        Ok(())
    }

    /// Every image becomes durable (a test's setup, or a clean unmount).
    pub(crate) fn sync_all(&mut self) {
        for node in self.nodes.values_mut() {
            node.durable = node.current.clone();
        }
        self.dirty.clear();
    }

    /// The power cut: every inode goes back to its durable image, and inodes no durable entry
    /// reaches from the root are gone.
    pub(crate) fn cut(&mut self) -> CutReport {
        let mut report = CutReport::default();
        for ino in std::mem::take(&mut self.dirty) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.current = node.durable.clone();
                report.inodes_reverted += 1;
            }
        }
        let mut reached = HashSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            if let Ok(entries) = self.entries(dir) {
                for &ino in entries.values() {
                    if reached.insert(ino) {
                        stack.push(ino);
                    }
                }
            }
        }
        let before = self.nodes.len();
        self.nodes.retain(|ino, _| reached.contains(ino));
        // A durable entry can name an inode that is gone (its creation was durable in one
        // directory, its removal in another); it goes with it.
        let nodes: HashSet<u64> = self.nodes.keys().copied().collect();
        for node in self.nodes.values_mut() {
            for image in [&mut node.current, &mut node.durable] {
                if let Content::Dir(entries) = &mut image.content {
                    entries.retain(|_, ino| nodes.contains(ino));
                }
            }
        }
        report.inodes_dropped = before - self.nodes.len();
        report
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(tree: &mut Tree, dir: u64, n: &str) -> u64 {
        tree.create(dir, name(n), false, Meta::new(0o644, 0, 0)).unwrap()
    }

    #[test]
    fn data_reads_back_holes_as_zeros_across_blocks() {
        let mut data = Data::default();
        data.write(BLOCK as u64 * 2 + 5, b"abc");
        assert_eq!(data.len(), BLOCK as u64 * 2 + 8);
        assert_eq!(data.read(0, 4), vec![0; 4]);
        assert_eq!(data.read(BLOCK as u64 * 2 + 4, 10), b"\0abc");
        let long: Vec<u8> = (0..BLOCK * 3).map(|i| (i % 251) as u8).collect();
        data.write(7, &long);
        assert_eq!(data.read(7, long.len()), long);
        data.set_len(10);
        data.set_len(BLOCK as u64 + 1);
        assert_eq!(data.read(0, BLOCK + 1)[10..], vec![0; BLOCK - 9][..]);
    }

    #[test]
    fn a_durable_image_does_not_see_later_writes_to_shared_blocks() {
        let mut tree = Tree::new(0, 0);
        let f = file(&mut tree, ROOT, "f");
        tree.write(f, 0, b"old!").unwrap();
        tree.sync(f, true).unwrap();
        tree.sync(ROOT, false).unwrap();
        tree.write(f, 1, b"NEW").unwrap();
        assert_eq!(tree.read(f, 0, 10).unwrap(), b"oNEW");
        tree.cut();
        assert_eq!(tree.read(f, 0, 10).unwrap(), b"old!");
    }

    /// Durable directories `a` and `b`, and `a/f` (durable) renamed to `b/g`, nothing synced since.
    fn moved_from_a_to_b() -> (Tree, u64, u64, u64) {
        let mut tree = Tree::new(0, 0);
        let a = tree.create(ROOT, name("a"), true, Meta::new(0o755, 0, 0)).unwrap();
        let b = tree.create(ROOT, name("b"), true, Meta::new(0o755, 0, 0)).unwrap();
        let f = file(&mut tree, a, "f");
        tree.sync_all();
        tree.rename(a, name("f"), b, name("g"), false).unwrap();
        (tree, a, b, f)
    }

    #[test]
    fn a_rename_is_durable_per_directory() {
        let (mut tree, a, b, f) = moved_from_a_to_b();
        tree.sync(b, false).unwrap();
        tree.cut();
        // Only the target directory was synced: the file is under both names.
        assert_eq!(tree.lookup(a, name("f")), Ok(f));
        assert_eq!(tree.lookup(b, name("g")), Ok(f));
        // Both synced: moved.
        tree.remove(b, name("g"), false).unwrap();
        tree.sync(b, false).unwrap();
        tree.rename(a, name("f"), b, name("g"), false).unwrap();
        tree.sync(a, false).unwrap();
        tree.sync(b, false).unwrap();
        tree.cut();
        assert_eq!(tree.lookup(a, name("f")), Err(Refusal::NotFound));
        assert_eq!(tree.lookup(b, name("g")), Ok(f));
    }

    #[test]
    fn a_file_whose_only_durable_entry_was_removed_is_gone_after_a_cut() {
        let (mut tree, a, b, f) = moved_from_a_to_b();
        tree.sync(a, false).unwrap();
        let report = tree.cut();
        assert_eq!(tree.lookup(a, name("f")), Err(Refusal::NotFound));
        assert_eq!(tree.lookup(b, name("g")), Err(Refusal::NotFound));
        assert!(tree.get(f).is_err());
        assert_eq!(report.inodes_dropped, 1);
    }

    #[test]
    fn refusals_match_posix() {
        let mut tree = Tree::new(0, 0);
        let d = tree.create(ROOT, name("d"), true, Meta::new(0o755, 0, 0)).unwrap();
        file(&mut tree, d, "f");
        file(&mut tree, ROOT, "g");
        assert_eq!(tree.create(ROOT, name("g"), false, Meta::new(0, 0, 0)), Err(Refusal::Exists));
        assert_eq!(tree.remove(ROOT, name("d"), true), Err(Refusal::NotEmpty));
        assert_eq!(tree.remove(ROOT, name("d"), false), Err(Refusal::IsDir));
        assert_eq!(tree.remove(ROOT, name("g"), true), Err(Refusal::NotDir));
        assert_eq!(tree.rename(ROOT, name("g"), d, name("f"), true), Err(Refusal::Exists));
        assert_eq!(tree.rename(ROOT, name("d"), d, name("x"), false), Err(Refusal::Invalid));
        tree.rename(ROOT, name("g"), d, name("f"), false).unwrap();
        assert_eq!(tree.list(d).unwrap().len(), 1);
    }
}
