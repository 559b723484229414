//! The FUSE face of [`Tree`]: each request locks the tree, does one thing and answers.
//!
//! Nothing is cached by the kernel: entries and attributes live for zero seconds and every open
//! file is `direct_io`, so after a cut the next lookup, `stat` or `read` sees the durable image
//! (the page cache would otherwise keep serving bytes the cut threw away).

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::tree::{Image, Meta, Refusal, Tree};

const TTL: Duration = Duration::ZERO;
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const FH: FileHandle = FileHandle(0);

pub(crate) struct PowerCutFs {
    pub(crate) tree: Arc<Mutex<Tree>>,
}

fn errno(refusal: Refusal) -> Errno {
    match refusal {
        Refusal::NotFound => Errno::ENOENT,
        Refusal::Exists => Errno::EEXIST,
        Refusal::NotDir => Errno::ENOTDIR,
        Refusal::IsDir => Errno::EISDIR,
        Refusal::NotEmpty => Errno::ENOTEMPTY,
        Refusal::Invalid => Errno::EINVAL,
    }
}

fn answer(reply: ReplyEmpty, result: Result<(), Refusal>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn answer_entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn attr(ino: u64, image: &Image) -> FileAttr {
    let size = image.size();
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: image.meta.atime,
        mtime: image.meta.mtime,
        ctime: image.meta.ctime,
        crtime: image.meta.ctime,
        kind: if image.is_dir() { FileType::Directory } else { FileType::RegularFile },
        perm: image.meta.perm,
        nlink: if image.is_dir() { 2 } else { 1 },
        uid: image.meta.uid,
        gid: image.meta.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl PowerCutFs {
    fn tree(&self) -> MutexGuard<'_, Tree> {
        // A panic while the lock was held left the tree as consistent as any single step does.
        self.tree.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn attr_of(&self, ino: u64) -> Result<FileAttr, Errno> {
        let tree = self.tree();
        tree.get(ino).map(|image| attr(ino, image)).map_err(errno)
    }

    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        dir: bool,
        mode: u32,
        umask: u32,
    ) -> Result<FileAttr, Errno> {
        let mut tree = self.tree();
        // Set-group-id directories hand their group down, as on ext4.
        let parent_meta = tree.get(parent.0).map_err(errno)?.meta.clone();
        let gid = if parent_meta.perm & 0o2000 != 0 { parent_meta.gid } else { req.gid() };
        let perm = (mode & !umask & 0o7777) as u16;
        let ino =
            tree.create(parent.0, name, dir, Meta::new(perm, req.uid(), gid)).map_err(errno)?;
        tree.get(ino).map(|image| attr(ino, image)).map_err(errno)
    }
}

impl Filesystem for PowerCutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let tree = self.tree();
        match tree.lookup(parent.0, name).and_then(|ino| tree.get(ino).map(|i| attr(ino, i))) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = {
            let mut tree = self.tree();
            let resized = match size {
                Some(len) => tree.set_len(ino.0, len),
                None => Ok(()),
            };
            resized
                .and_then(|()| {
                    tree.set_meta(ino.0, |meta| {
                        if let Some(mode) = mode {
                            meta.perm = (mode & 0o7777) as u16;
                        }
                        if let Some(uid) = uid {
                            meta.uid = uid;
                        }
                        if let Some(gid) = gid {
                            meta.gid = gid;
                        }
                        if let Some(t) = atime {
                            meta.atime = time(t);
                        }
                        if let Some(t) = mtime {
                            meta.mtime = time(t);
                        }
                    })
                })
                .and_then(|()| tree.get(ino.0).map(|image| attr(ino.0, image)))
        };
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        answer_entry(reply, self.make(req, parent, name, true, mode, umask))
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files only: nothing here needs a device, FIFO or socket on the mount.
        if mode & S_IFMT != S_IFREG {
            return reply.error(Errno::EPERM);
        }
        answer_entry(reply, self.make(req, parent, name, false, mode, umask))
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.make(req, parent, name, false, mode, umask) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FH, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(reply, self.tree().remove(parent.0, name, false))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(reply, self.tree().remove(parent.0, name, true))
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        answer(reply, self.tree().rename(parent.0, name, newparent.0, newname, no_replace))
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.attr_of(ino.0) {
            Ok(_) => reply.opened(FH, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.tree().read(ino.0, offset, size as usize) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.tree().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        answer(reply, self.tree().sync(ino.0, datasync))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.attr_of(ino.0) {
            Ok(attr) if attr.kind == FileType::Directory => reply.opened(FH, FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.tree().list(ino.0) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(e)),
        };
        let dots = [(".".into(), ino.0, true), ("..".into(), ino.0, true)];
        for (i, (name, child, is_dir)) in
            dots.into_iter().chain(entries).enumerate().skip(offset as usize)
        {
            let kind = if is_dir { FileType::Directory } else { FileType::RegularFile };
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        answer(reply, self.tree().sync(ino.0, datasync))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 4 GiB, nearly all free: bitsd and sled only ask to see that there is room.
        reply.statfs(1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks the mode bits itself.
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut tree = self.tree();
        let result = tree.get(ino.0).map(Image::size).and_then(|len| {
            if offset + length > len { tree.set_len(ino.0, offset + length) } else { Ok(()) }
        });
        answer(reply, result);
    }
}
