//! The `fuser` adapter: each request of the kernel becomes a call into the filesystem core
//! ([`super::filesystem`]), whose answer becomes the reply; inode numbers and errno are the core's.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use fuser::{
    AccessFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::encode_dir::EncodeDir;
pub use super::filesystem::PixelFs;
use super::filesystem::*;
use super::inodes::Area;
use super::stats::STATS_XATTR;
use super::view::{self, Kind};
use super::xattr::{self, SizedReply};
use crate::error::Error;

thread_local! {
    /// Each FUSE worker's buffer for decoded-file reads (grows to the largest read, max_read).
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Replies to a request that returns nothing.
fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl PixelFs {
    /// flush / fsync: `op` on an encode-directory handle; nothing to do for the view's.
    fn on_encode_handle(
        &self,
        fh: u64,
        what: &str,
        reply: ReplyEmpty,
        op: impl FnOnce(&EncodeDir, u64) -> Result<(), Error>,
    ) {
        match (self.encode_handle(fh), self.encode_dir()) {
            (Some((h, rel)), Some(d)) => match op(d, h) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(self.fail(what, &rel, &e)),
            },
            _ => reply.ok(),
        }
    }
}

impl Filesystem for PixelFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_readahead(READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        // Each on its own: a kernel without one of them still mounts. Not FUSE_ATOMIC_O_TRUNC:
        // with it the kernel truncates the file's pages and size at the open, before it
        // checks ETXTBSY for `open(O_RDONLY|O_TRUNC)` of a running program — which then dies
        // (see the test named after it); without it O_TRUNC is a SETATTR after that check.
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_child(parent.0, name, true, req.pid()) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.nodes_mut().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.getattr_ino(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            // `fstat` of an encode-directory file unlinked while open (the kernel asks by
            // inode): its handle still has the bytes, with a link count of 0.
            Err(e) if e == Errno::ENOENT => match self.unlinked_attr(ino.0) {
                Some(a) => reply.attr(&TTL, &a),
                None => reply.error(e),
            },
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr((req.uid(), req.gid()), ino.0, mode, uid, gid, size, mtime) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
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
        if mode & libc::S_IFMT != libc::S_IFREG {
            let rel = self
                .child_path(parent.0, name)
                .map(|(_, p)| p)
                .unwrap_or_default();
            let code = match self.writable_child("mknod", parent.0, name) {
                Ok(_) => libc::EPERM,
                Err(_) => libc::EROFS,
            };
            return reply.error(self.plain("mknod (only regular files)", &rel, code));
        }
        match self.create_file(
            (req.uid(), req.gid()),
            parent.0,
            name,
            mode,
            umask,
            libc::O_EXCL,
        ) {
            Ok((a, fh, _)) => {
                // mknod is create + close: flush commits the empty file like `touch` does, so
                // nothing is left pending, and its error is mknod's.
                let mut result = Ok(());
                if let Some((h, rel)) = self.encode_handle(fh) {
                    lock(&self.handles).remove(&fh);
                    if let Some(d) = self.encode_dir() {
                        result = d.flush(h).map_err(|e| self.fail("mknod", &rel, &e));
                        if let Err(e) = d.release(h) {
                            self.fail("mknod", &rel, &e);
                        }
                    }
                }
                match result {
                    Ok(()) => reply.entry(&TTL, &a, Generation(0)),
                    Err(e) => {
                        self.nodes_mut().forget(a.ino.0, 1);
                        reply.error(e)
                    }
                }
            }
            Err(e) => reply.error(e),
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
        let rel = match self.writable_child("mkdir", parent.0, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let Some(d) = self.encode_dir() else {
            return reply.error(Errno::EROFS);
        };
        match d.mkdir_as(&rel, mode & !umask & 0o7777, Some((req.uid(), req.gid()))) {
            Ok(a) => {
                let fa = self.register_encode(parent.0, name, &a, true);
                reply.entry(&TTL, &fa, Generation(0));
            }
            Err(e) => reply.error(self.fail("mkdir", &rel, &e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.remove_child("unlink", parent.0, name, EncodeDir::unlink),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.remove_child("rmdir", parent.0, name, EncodeDir::rmdir),
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_link("symlink", parent.0, link_name));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_link("link", newparent.0, newname));
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
        let from = self.child_path(parent.0, name);
        let to = self.child_path(newparent.0, newname);
        let ((fa, from), (ta, to)) = match (from, to) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if self.read_only
            || fa == Area::View && ta == Area::View
            || self.is_encode_root_name(parent.0, name)
        {
            return reply.error(self.plain("rename", &from, libc::EROFS));
        }
        if fa != ta || self.is_encode_root_name(newparent.0, newname) {
            return reply.error(self.plain("rename", &from, libc::EXDEV));
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(self.plain("rename (exchange/whiteout)", &from, libc::EINVAL));
        }
        let Some(d) = self.encode_dir() else {
            return reply.error(Errno::EROFS);
        };
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match d.rename(&from, &to, noreplace) {
            Ok(()) => {
                self.nodes_mut()
                    .rename(parent.0, name, newparent.0, newname);
                // Open handles name their file by path for logging only; keep them current.
                for h in lock(&self.handles).values_mut() {
                    if let Handle::Encode { rel, .. } = h {
                        if let Ok(rest) = rel.strip_prefix(&from) {
                            *rel = if rest.as_os_str().is_empty() {
                                to.clone()
                            } else {
                                to.join(rest)
                            };
                        }
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(self.fail("rename", &from, &e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino.0, flags, req.pid()) {
            Ok((fh, fl)) => reply.opened(FileHandle(fh), fl),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Some(reader) = self.reader_of(fh.0) {
            let started = Instant::now();
            let want = (size as u64).min(reader.len().saturating_sub(offset)) as usize;
            return READ_BUFFER.with_borrow_mut(|buf| {
                // The reader fills what it returns; a worker's buffer is reused, not zeroed
                // and freed per request.
                if buf.len() < want {
                    buf.resize(want, 0);
                }
                match reader.read_at(offset, &mut buf[..want]) {
                    Ok(n) => {
                        // Counted before the reply: once a program has its bytes, the mount's
                        // statistics include them (a test read them right after a `cat`).
                        let took = started.elapsed();
                        self.stats.read_done(n, took);
                        reply.data(&buf[..n]);
                        // The request pattern (PIXELRTS_LOG=pixelrts=trace), for tuning.
                        tracing::trace!(
                            ino = ino.0,
                            offset,
                            size,
                            us = took.as_micros() as u64,
                            "read"
                        );
                    }
                    // Never wrong bytes: any reader error is EIO (or its own errno), logged
                    // with the PNG's name.
                    Err(e) => {
                        self.stats.read_done(0, started.elapsed());
                        reply.error(self.fail("read", reader.path(), &e));
                    }
                }
            });
        }
        if let Some((h, rel)) = self.encode_handle(fh.0) {
            let Some(d) = self.encode_dir() else {
                return reply.error(Errno::EBADF);
            };
            let mut buf = vec![0u8; size as usize];
            return match d.read(h, offset, &mut buf) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(self.fail("read", &rel, &e)),
            };
        }
        tracing::warn!("read: unknown handle {} for inode {}", fh.0, ino.0);
        reply.error(Errno::EBADF)
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some((h, rel)) = self.encode_handle(fh.0) else {
            let rel = self.path_of(ino.0).map(|(_, p)| p).unwrap_or_default();
            return reply.error(self.plain("write", &rel, libc::EROFS));
        };
        let Some(d) = self.encode_dir() else {
            return reply.error(Errno::EROFS);
        };
        match d.write(h, offset, data) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(self.fail("write", &rel, &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // This is where close() learns that encoding failed.
        self.on_encode_handle(fh.0, "close (encoding)", reply, EncodeDir::flush);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = lock(&self.handles).remove(&fh.0);
        if let (Some(Handle::Encode { h, rel, .. }), Some(d)) = (handle, self.encode_dir()) {
            if let Err(e) = d.release(h) {
                // release cannot report to anyone; flush already did.
                self.fail("release", &rel, &e);
            }
        }
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.on_encode_handle(fh.0, "fsync", reply, EncodeDir::fsync);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.list_dir(ino.0) {
            Ok(items) => {
                let fh = self.new_handle(Handle::Dir { items });
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let handles = lock(&self.handles);
        let Some(Handle::Dir { items }) = handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            let kind = match item.kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            };
            if reply.add(INodeNo(item.ino), (i + 1) as u64, kind, &item.name) {
                break;
            }
        }
        reply.ok()
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let items: Vec<DirItem> = match lock(&self.handles).get(&fh.0) {
            Some(Handle::Dir { items }) => items.iter().skip(offset as usize).cloned().collect(),
            _ => return reply.error(Errno::EBADF),
        };
        let dir_attr = self.getattr_ino(ino.0).ok();
        for (i, item) in items.iter().enumerate() {
            let pos = offset + i as u64 + 1;
            let dot = item.name == "." || item.name == "..";
            let attr = match (&item.attr, dot) {
                (Some(a), _) => *a,
                // The kernel takes no reference for "." and "..": any valid attributes do.
                (None, true) => match dir_attr {
                    Some(mut a) => {
                        a.ino = INodeNo(item.ino);
                        a
                    }
                    None => continue,
                },
                (None, false) => continue,
            };
            if reply.add(
                INodeNo(item.ino),
                pos,
                &item.name,
                &TTL,
                &attr,
                Generation(0),
            ) {
                break;
            }
            if !dot {
                self.nodes_mut().count_listed(ino.0, item);
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let src = self.view.source();
        let c = match std::ffi::CString::new(src.as_os_str().as_bytes()) {
            Ok(c) => c,
            Err(_) => return reply.error(Errno::EINVAL),
        };
        // SAFETY: statvfs fills the zeroed struct; `c` is a valid path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!("statfs {}: {e}", src.display());
            return reply.error(e.into());
        }
        // Shown names are ".rts.png" shorter than the names in SOURCE.
        let namelen = (st.f_namemax as u32).saturating_sub(view::SUFFIX.len() as u32);
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            namelen,
            st.f_frsize as u32,
        )
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (area, rel) = match self.path_of(ino.0) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if area == Area::View || self.read_only || ino.0 == ENCODE_ROOT {
            return reply.error(self.plain("setxattr", &rel, libc::EROFS));
        }
        let Some(name) = name.to_str() else {
            return reply.error(self.plain("setxattr (name not UTF-8)", &rel, libc::EINVAL));
        };
        let Some(d) = self.encode_dir() else {
            return reply.error(Errno::EROFS);
        };
        match d.setxattr(&rel, name, value) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("setxattr", &rel, &e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = if ino.0 == ROOT && name == STATS_XATTR {
            Ok(Some(self.stats_sized.value(size, || self.stats_value())))
        } else {
            self.xattr_value(ino.0, name)
        };
        match value {
            Ok(Some(v)) => match xattr::sized(&v, size) {
                SizedReply::Size(n) => reply.size(n),
                SizedReply::Data(d) => reply.data(d),
                SizedReply::Range => reply.error(Errno::ERANGE),
                SizedReply::TooBig => reply.error(Errno::E2BIG),
            },
            Ok(None) => reply.error(errno(libc::ENODATA)),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.xattr_names(ino.0) {
            Ok(names) => {
                let payload = xattr::list_payload(&names);
                match xattr::sized(&payload, size) {
                    SizedReply::Size(n) => reply.size(n),
                    SizedReply::Data(d) => reply.data(d),
                    SizedReply::Range => reply.error(Errno::ERANGE),
                    SizedReply::TooBig => reply.error(Errno::E2BIG),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (area, rel) = match self.path_of(ino.0) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if area == Area::View || self.read_only || ino.0 == ENCODE_ROOT {
            return reply.error(self.plain("removexattr", &rel, libc::EROFS));
        }
        let Some(name) = name.to_str() else {
            return reply.error(errno(libc::ENODATA));
        };
        let Some(d) = self.encode_dir() else {
            return reply.error(Errno::EROFS);
        };
        match d.removexattr(&rel, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("removexattr", &rel, &e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (area, rel) = if ino.0 == ENCODE_ROOT && self.encode.is_some() {
            (Area::Encode, PathBuf::new())
        } else {
            match self.path_of(ino.0) {
                Ok(p) => p,
                Err(e) => return reply.error(e),
            }
        };
        if mask.contains(AccessFlags::W_OK) && (area == Area::View || self.read_only) {
            return reply.error(self.plain("access", &rel, libc::EROFS));
        }
        match self.getattr_ino(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.create_file((req.uid(), req.gid()), parent.0, name, mode, umask, flags) {
            Ok((a, fh, fl)) => reply.created(&TTL, &a, Generation(0), FileHandle(fh), fl),
            Err(e) => reply.error(e),
        }
    }
}
