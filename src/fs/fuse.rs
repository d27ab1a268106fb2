//! The `fuser` adapter: inode numbers, file handles, and errno at the boundary. The decisions
//! live in [`View`] (the decoded view) and [`EncodeDir`] (the encode directory); this module
//! routes each request to one of them by where its inode lives.
//!
//! Inode numbers: 1 is the view's root, 2 the encode directory's root, then one number per
//! (parent, name, kind) ever seen, never reused. A rename in the encode directory moves the
//! node, so an open file or a cached dentry keeps its number, and children follow their
//! parent because paths are computed by walking up. Nodes are dropped when the kernel forgets
//! them.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::encode_dir::{EncodeDir, EntryAttr, EntryKind, Opened};
use super::stats::{self, Gathered, MountStats, SizedOnce, STATS_XATTR};
use super::view::{self, Entry, Kind, Probe, View};
use super::xattr::{self, SizedReply};
use crate::error::Error;
use crate::reader::Reader;

/// How long the kernel may trust attributes and names: changes in SOURCE show within this.
const TTL: Duration = Duration::from_secs(1);
/// Readahead asked of the kernel (it may allow less).
const READAHEAD: u32 = 1 << 20;
const ROOT: u64 = 1;
const ENCODE_ROOT: u64 = 2;
const FIRST_FREE_INO: u64 = 3;
/// `st_blksize`: programs size their buffers by it; large reads decode tiles in parallel.
const BLKSIZE: u32 = 1 << 17;

thread_local! {
    /// Each FUSE worker's buffer for decoded-file reads (grows to the largest read, max_read).
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Which tree a node belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Area {
    View,
    Encode,
}

#[derive(Debug)]
struct Node {
    parent: u64,
    name: OsString,
    kind: Kind,
    lookups: u64,
    /// For a decoded file: the version of its PNG this inode stands for. An inode never
    /// changes content: when SOURCE gets a new PNG under the name, the name gets a new inode,
    /// and this one keeps serving the old version to whoever still has it open (so the
    /// kernel's page cache never holds pages of two versions under one inode).
    version: Option<Arc<Probe>>,
}

#[derive(Debug, Default)]
struct Nodes {
    by_ino: HashMap<u64, Node>,
    by_name: HashMap<(u64, OsString), u64>,
    next: u64,
}

impl Nodes {
    /// The inode for (parent, name) of this kind and version, created when new or when the
    /// name now names something of another kind (the kernel treats a kind change as a stale
    /// inode) or another version of a decoded file.
    ///
    /// `counted`: the reply hands the inode to the kernel, whose reference is counted in the
    /// same step, so a FORGET of the same inode handled meanwhile on another worker cannot
    /// remove it between the two (the kernel would then hold an inode this table no longer
    /// knows: ENOENT on everything).
    fn get_or_insert(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        version: Option<&Arc<Probe>>,
        counted: bool,
    ) -> u64 {
        let key = (parent, name.to_os_string());
        if let Some(&ino) = self.by_name.get(&key) {
            if let Some(n) = self.by_ino.get_mut(&ino).filter(|n| {
                n.kind == kind && n.version.as_ref().map(|p| p.key) == version.map(|p| p.key)
            }) {
                n.lookups += u64::from(counted);
                return ino;
            }
        }
        let ino = self.next.max(FIRST_FREE_INO);
        self.next = ino + 1;
        self.by_ino.insert(
            ino,
            Node {
                parent,
                name: name.to_os_string(),
                kind,
                lookups: u64::from(counted),
                version: version.cloned(),
            },
        );
        self.by_name.insert(key, ino);
        ino
    }

    /// Counts a reference the kernel takes on `item` (readdirplus), bringing the node back
    /// if a FORGET removed it since the listing was taken.
    fn count_listed(&mut self, parent: u64, item: &DirItem) {
        if let Some(n) = self.by_ino.get_mut(&item.ino) {
            n.lookups += 1;
            return;
        }
        self.by_ino.insert(
            item.ino,
            Node {
                parent,
                name: item.name.clone(),
                kind: item.kind,
                lookups: 1,
                version: item.version.clone(),
            },
        );
        self.by_name
            .entry((parent, item.name.clone()))
            .or_insert(item.ino);
    }

    fn forget(&mut self, ino: u64, count: u64) {
        if ino < FIRST_FREE_INO {
            return;
        }
        let Some(n) = self.by_ino.get_mut(&ino) else {
            return;
        };
        n.lookups = n.lookups.saturating_sub(count);
        if n.lookups == 0 {
            let key = (n.parent, n.name.clone());
            self.by_ino.remove(&ino);
            if self.by_name.get(&key) == Some(&ino) {
                self.by_name.remove(&key);
            }
        }
    }

    /// Detaches (parent, name): the node stays valid for open handles but is nameless.
    fn unlink(&mut self, parent: u64, name: &OsStr) {
        if let Some(ino) = self.by_name.remove(&(parent, name.to_os_string())) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.parent = 0;
            }
        }
    }

    fn rename(&mut self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        self.unlink(new_parent, new_name);
        if let Some(ino) = self.by_name.remove(&(parent, name.to_os_string())) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.parent = new_parent;
                n.name = new_name.to_os_string();
            }
            self.by_name
                .insert((new_parent, new_name.to_os_string()), ino);
        }
    }

    /// The area and path (relative to that area's root) of a node; None for unknown or
    /// detached nodes.
    fn path(&self, ino: u64) -> Option<(Area, PathBuf)> {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        // Bounded walk: a cycle (impossible by construction) cannot hang a worker.
        for _ in 0..4096 {
            match cur {
                ROOT => return Some((Area::View, join_rev(&names))),
                ENCODE_ROOT => return Some((Area::Encode, join_rev(&names))),
                _ => {
                    let n = self.by_ino.get(&cur)?;
                    names.push(&n.name);
                    cur = n.parent;
                }
            }
        }
        None
    }
}

fn join_rev(names: &[&OsStr]) -> PathBuf {
    let mut p = PathBuf::new();
    for n in names.iter().rev() {
        p.push(n);
    }
    p
}

enum Handle {
    /// A decoded file (from the view or a committed encode entry).
    Reader { reader: Arc<Reader> },
    /// An encode directory handle, of inode `ino`.
    Encode { h: u64, rel: PathBuf, ino: u64 },
    /// A directory listing, snapshotted at opendir so offsets stay stable.
    Dir { items: Vec<DirItem> },
}

#[derive(Clone)]
struct DirItem {
    name: OsString,
    ino: u64,
    kind: Kind,
    attr: Option<FileAttr>,
    /// A decoded file's version (see [`Node::version`]).
    version: Option<Arc<Probe>>,
}

/// The filesystem served by `fuser`.
pub struct PixelFs {
    view: View,
    encode: Option<(OsString, EncodeDir)>,
    read_only: bool,
    /// Mounted for every user (`allow_other`): `encode/` is writable by all, sticky like /tmp.
    shared: bool,
    nodes: RwLock<Nodes>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    /// Counters for `user.pixelrts.stats` on the root.
    stats: MountStats,
    stats_sized: SizedOnce,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno(code: i32) -> Errno {
    Errno::from_i32(code)
}

/// Errors that are part of normal operation, logged at debug level only.
fn expected(code: i32) -> bool {
    matches!(
        code,
        libc::ENOENT
            | libc::ENODATA
            | libc::EEXIST
            | libc::ENOTEMPTY
            | libc::EROFS
            | libc::EXDEV
            | libc::ERANGE
            | libc::EISDIR
            | libc::ENOTDIR
            | libc::EOPNOTSUPP
            | libc::ESTALE
    )
}

impl PixelFs {
    pub fn new(
        view: View,
        encode: Option<(OsString, EncodeDir)>,
        read_only: bool,
        shared: bool,
    ) -> Self {
        PixelFs {
            view,
            encode,
            read_only,
            shared,
            nodes: RwLock::new(Nodes {
                next: FIRST_FREE_INO,
                ..Default::default()
            }),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            // SAFETY: getuid/getgid cannot fail.
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
            stats: MountStats::default(),
            stats_sized: SizedOnce::default(),
        }
    }

    /// `user.pixelrts.stats`: this mount's counters and the parts the cache and the encode
    /// folder keep.
    fn stats_value(&self) -> Vec<u8> {
        let open_decoded = lock(&self.handles)
            .values()
            .filter(|h| matches!(h, Handle::Reader { .. }))
            .count() as u64;
        let encode = self
            .encode_dir()
            .map(EncodeDir::counters)
            .unwrap_or_default();
        let gathered = Gathered {
            cache: self.view.cache().stats(),
            open_decoded,
            open_encode: encode.open,
            encodes_done: encode.done,
            encodes_failed: encode.failed,
            encodes_pending: encode.pending,
        };
        stats::attribute_value(&self.stats.snapshot(&gathered))
    }

    fn nodes(&self) -> std::sync::RwLockReadGuard<'_, Nodes> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn nodes_mut(&self) -> std::sync::RwLockWriteGuard<'_, Nodes> {
        self.nodes.write().unwrap_or_else(|p| p.into_inner())
    }

    fn encode_dir(&self) -> Option<&EncodeDir> {
        self.encode.as_ref().map(|(_, d)| d)
    }

    /// Logs `e` (with the file it names) and turns it into the errno for the kernel.
    fn fail(&self, op: &str, what: &Path, e: &Error) -> Errno {
        let code = e.errno();
        self.stats.error(code);
        if expected(code) {
            tracing::debug!(file = %what.display(), errno = code, "{op} {}: {e}", what.display());
        } else {
            tracing::warn!(file = %what.display(), errno = code, "{op} {}: {e}", what.display());
        }
        errno(code)
    }

    fn plain(&self, op: &str, what: &Path, code: i32) -> Errno {
        self.stats.error(code);
        tracing::debug!(
            file = %what.display(),
            errno = code,
            "{op} {}: {}",
            what.display(),
            std::io::Error::from_raw_os_error(code)
        );
        errno(code)
    }

    fn path_of(&self, ino: u64) -> Result<(Area, PathBuf), Errno> {
        self.nodes().path(ino).ok_or(Errno::ENOENT)
    }

    /// The version of a decoded file that inode `ino` stands for (None: not a decoded file).
    fn version_of(&self, ino: u64) -> Option<Arc<Probe>> {
        self.nodes().by_ino.get(&ino)?.version.clone()
    }

    /// Where child `name` of `parent` lives.
    fn child_path(&self, parent: u64, name: &OsStr) -> Result<(Area, PathBuf), Errno> {
        let (area, dir) = self.path_of(parent)?;
        Ok((area, dir.join(name)))
    }

    fn is_encode_root_name(&self, parent: u64, name: &OsStr) -> bool {
        parent == ROOT && self.encode.as_ref().is_some_and(|(n, _)| n == name)
    }

    fn attr(
        &self,
        ino: u64,
        kind: Kind,
        size: u64,
        perm: u32,
        mtime: SystemTime,
        ctime: SystemTime,
    ) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime,
            crtime: mtime,
            kind: match kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            },
            perm: (perm & 0o7777) as u16,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    fn view_attr(&self, ino: u64, a: &view::Attr) -> FileAttr {
        let mut attr = self.attr(ino, a.kind, a.size, a.mode, a.mtime, a.ctime);
        if let Some((uid, gid)) = a.owner {
            (attr.uid, attr.gid) = (uid, gid);
        }
        attr
    }

    fn encode_attr(&self, ino: u64, a: &EntryAttr) -> FileAttr {
        let kind = match a.kind {
            EntryKind::Dir => Kind::Dir,
            EntryKind::File => Kind::File,
        };
        let mut attr = self.attr(ino, kind, a.size, a.mode, a.mtime, a.ctime);
        (attr.uid, attr.gid) = (a.uid, a.gid);
        if kind == Kind::Dir {
            attr.nlink = 2u32.saturating_add(a.subdirs);
        }
        attr
    }

    fn encode_root_attr(&self) -> FileAttr {
        let (mtime, ctime, subdirs) = match self.encode_dir().map(|d| d.getattr(Path::new(""))) {
            Some(Ok(a)) => (a.mtime, a.ctime, a.subdirs),
            _ => {
                let root = self.view.entry(Path::new("")).map(|e| e.attr());
                root.map(|a| (a.mtime, a.ctime, 0)).unwrap_or((
                    SystemTime::UNIX_EPOCH,
                    SystemTime::UNIX_EPOCH,
                    0,
                ))
            }
        };
        let mode = if self.shared { 0o1777 } else { 0o755 };
        let mut attr = self.attr(ENCODE_ROOT, Kind::Dir, 0, mode, mtime, ctime);
        attr.nlink = 2u32.saturating_add(subdirs);
        attr
    }

    /// Attributes of an existing inode.
    fn getattr_ino(&self, ino: u64) -> Result<FileAttr, Errno> {
        if ino == ENCODE_ROOT && self.encode.is_some() {
            return Ok(self.encode_root_attr());
        }
        // A decoded file's attributes are those of its version, whatever SOURCE holds now.
        if let Some(version) = self.version_of(ino) {
            return Ok(self.view_attr(ino, &version.attr));
        }
        let (area, rel) = self.path_of(ino)?;
        match area {
            Area::View => match self.view.entry(&rel) {
                Ok(e) => Ok(self.view_attr(ino, &e.attr())),
                Err(e) => Err(self.fail("getattr", &rel, &e)),
            },
            Area::Encode => {
                let dir = self.encode_dir().ok_or(Errno::ENOENT)?;
                match dir.getattr(&rel) {
                    Ok(a) => Ok(self.encode_attr(ino, &a)),
                    Err(e) => Err(self.fail("getattr", &rel, &e)),
                }
            }
        }
    }

    /// Looks up a child and registers it, counting the kernel's reference when `counted`.
    fn lookup_child(&self, parent: u64, name: &OsStr, counted: bool) -> Result<FileAttr, Errno> {
        if self.is_encode_root_name(parent, name) {
            return Ok(self.encode_root_attr());
        }
        let (area, dir) = self.path_of(parent)?;
        match area {
            Area::View => {
                let entry = self
                    .view
                    .lookup(&dir, name)
                    .map_err(|e| self.fail("lookup", &dir.join(name), &e))?;
                let a = entry.attr();
                let ino =
                    self.nodes_mut()
                        .get_or_insert(parent, name, a.kind, entry.version(), counted);
                Ok(self.view_attr(ino, &a))
            }
            Area::Encode => {
                let d = self.encode_dir().ok_or(Errno::ENOENT)?;
                let rel = dir.join(name);
                let a = d.getattr(&rel).map_err(|e| self.fail("lookup", &rel, &e))?;
                Ok(self.register_encode(parent, name, &a, counted))
            }
        }
    }

    fn register_encode(&self, parent: u64, name: &OsStr, a: &EntryAttr, counted: bool) -> FileAttr {
        let kind = match a.kind {
            EntryKind::Dir => Kind::Dir,
            EntryKind::File => Kind::File,
        };
        let ino = self
            .nodes_mut()
            .get_or_insert(parent, name, kind, None, counted);
        self.encode_attr(ino, a)
    }

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }

    fn reader_of(&self, fh: u64) -> Option<Arc<Reader>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Reader { reader }) => Some(reader.clone()),
            _ => None,
        }
    }

    /// Attributes of an encode-directory inode that has no name any more but is still open.
    fn unlinked_attr(&self, ino: u64) -> Option<FileAttr> {
        let h = lock(&self.handles)
            .values()
            .find_map(|handle| match handle {
                Handle::Encode { h, ino: i, .. } if *i == ino => Some(*h),
                _ => None,
            })?;
        let (a, unlinked) = self.encode_dir()?.handle_attr(h).ok()?;
        let mut attr = self.encode_attr(ino, &a);
        if unlinked {
            attr.nlink = 0;
        }
        Some(attr)
    }

    fn encode_handle(&self, fh: u64) -> Option<(u64, PathBuf)> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Encode { h, rel, .. }) => Some((*h, rel.clone())),
            _ => None,
        }
    }

    /// The listing of a directory inode, with inode numbers and (for readdirplus) attributes.
    fn list_dir(&self, ino: u64) -> Result<Vec<DirItem>, Errno> {
        let (area, rel) = if ino == ENCODE_ROOT && self.encode.is_some() {
            (Area::Encode, PathBuf::new())
        } else {
            self.path_of(ino)?
        };
        let parent_ino = if ino == ROOT || ino == ENCODE_ROOT {
            ROOT
        } else {
            self.nodes()
                .by_ino
                .get(&ino)
                .map(|n| n.parent)
                .unwrap_or(ROOT)
        };
        let mut items = vec![
            DirItem {
                name: ".".into(),
                ino,
                kind: Kind::Dir,
                attr: None,
                version: None,
            },
            DirItem {
                name: "..".into(),
                ino: parent_ino,
                kind: Kind::Dir,
                attr: None,
                version: None,
            },
        ];
        match area {
            Area::View => {
                let entries = self
                    .view
                    .list(&rel)
                    .map_err(|e| self.fail("readdir", &rel, &e))?;
                if ino == ROOT {
                    if let Some((name, _)) = &self.encode {
                        items.push(DirItem {
                            version: None,
                            name: name.clone(),
                            ino: ENCODE_ROOT,
                            kind: Kind::Dir,
                            attr: Some(self.encode_root_attr()),
                        });
                    }
                }
                let mut nodes = self.nodes_mut();
                for (name, e) in entries {
                    let a = e.attr();
                    let child = nodes.get_or_insert(ino, &name, a.kind, e.version(), false);
                    items.push(DirItem {
                        version: e.version().cloned(),
                        attr: Some(self.view_attr(child, &a)),
                        name,
                        ino: child,
                        kind: a.kind,
                    });
                }
            }
            Area::Encode => {
                let d = self.encode_dir().ok_or(Errno::ENOENT)?;
                let entries = d.list(&rel).map_err(|e| self.fail("readdir", &rel, &e))?;
                for (name, a) in entries {
                    let fa = self.register_encode(ino, &name, &a, false);
                    items.push(DirItem {
                        version: None,
                        kind: if fa.kind == FileType::Directory {
                            Kind::Dir
                        } else {
                            Kind::File
                        },
                        ino: fa.ino.0,
                        attr: Some(fa),
                        name,
                    });
                }
            }
        }
        Ok(items)
    }

    /// The area and relative path of a child for a modifying operation: EROFS in the view.
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

    /// symlink / link: not supported; EPERM in the encode directory, EROFS in the view.
    fn refuse_link(&self, what: &str, parent: u64, name: &OsStr) -> Errno {
        let code = match self.writable_child(what, parent, name) {
            Ok(_) => libc::EPERM,
            Err(_) => libc::EROFS,
        };
        let rel = self
            .child_path(parent, name)
            .map(|(_, p)| p)
            .unwrap_or_default();
        self.plain(&format!("{what} (not supported)"), &rel, code)
    }

    /// unlink / rmdir in the encode directory: `remove` does it, then the name is forgotten.
    fn remove_child(
        &self,
        what: &str,
        parent: u64,
        name: &OsStr,
        reply: ReplyEmpty,
        remove: impl FnOnce(&EncodeDir, &Path) -> Result<(), Error>,
    ) {
        let rel = match self.writable_child(what, parent, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let Some(d) = self.encode_dir() else {
            return reply.error(Errno::EROFS);
        };
        match remove(d, &rel) {
            Ok(()) => {
                self.nodes_mut().unlink(parent, name);
                reply.ok()
            }
            Err(e) => reply.error(self.fail(what, &rel, &e)),
        }
    }

    fn writable_child(&self, op: &str, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        let (area, rel) = self.child_path(parent, name)?;
        if area == Area::View || self.read_only || self.is_encode_root_name(parent, name) {
            return Err(self.plain(op, &rel, libc::EROFS));
        }
        Ok(rel)
    }

    /// Opens `png` for reading; with `version`, only that version of it (else ESTALE, which
    /// makes the kernel look the name up again and open the inode of the new version).
    fn open_reader(&self, png: &Path, version: Option<&Probe>) -> Result<(u64, FopenFlags), Errno> {
        let (reader, keep) = self
            .view
            .open_reader(png)
            .map_err(|e| self.fail("open", png, &e))?;
        // An inode of a version never changes content: its cached pages stay valid.
        let keep = match version {
            Some(v) if v.key != reader.file_key() => {
                return Err(self.plain("open (replaced meanwhile)", png, libc::ESTALE))
            }
            Some(_) => true,
            None => keep,
        };
        let fh = self.new_handle(Handle::Reader { reader });
        let flags = if keep {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        Ok((fh, flags))
    }

    fn do_open(&self, ino: u64, flags: OpenFlags) -> Result<(u64, FopenFlags), Errno> {
        if ino == ROOT || ino == ENCODE_ROOT {
            return Err(Errno::EISDIR);
        }
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let (area, rel) = self.path_of(ino)?;
        match area {
            Area::View => {
                if write {
                    return Err(self.plain("open for writing", &rel, libc::EROFS));
                }
                match self.view.entry(&rel) {
                    Ok(Entry::File { png, probe }) => match self.version_of(ino) {
                        // The name now holds another version: that is another inode.
                        Some(v) if v.key != probe.key => {
                            Err(self.plain("open (replaced)", &rel, libc::ESTALE))
                        }
                        v => self.open_reader(&png, v.as_deref()),
                    },
                    Ok(Entry::Dir { .. }) => Err(Errno::EISDIR),
                    Err(e) => Err(self.fail("open", &rel, &e)),
                }
            }
            Area::Encode => {
                let d = self.encode_dir().ok_or(Errno::ENOENT)?;
                let truncate = flags.0 & libc::O_TRUNC != 0;
                match d.open(&rel, write, truncate) {
                    Ok(Opened::Handle(h)) => Ok((
                        self.new_handle(Handle::Encode { h, rel, ino }),
                        FopenFlags::empty(),
                    )),
                    Ok(Opened::Committed(png)) => self.open_reader(&png, None),
                    Err(e) => Err(self.fail("open", &rel, &e)),
                }
            }
        }
    }

    /// xattr value lookups for any inode: Ok(None) means "no such attribute".
    fn xattr_value(&self, ino: u64, name: &OsStr) -> Result<Option<Vec<u8>>, Errno> {
        if ino == ROOT || ino == ENCODE_ROOT {
            return Ok(None);
        }
        let Some(name) = name.to_str() else {
            return Ok(None);
        };
        if let Some(version) = self.version_of(ino) {
            return Ok(xattr::get(&version.metadata, name));
        }
        let (area, rel) = self.path_of(ino)?;
        match area {
            Area::View => match self.view.entry(&rel) {
                Ok(Entry::File { probe, .. }) => Ok(xattr::get(&probe.metadata, name)),
                Ok(Entry::Dir { .. }) => Ok(None),
                Err(e) => Err(self.fail("getxattr", &rel, &e)),
            },
            Area::Encode => {
                let d = self.encode_dir().ok_or(Errno::ENOENT)?;
                match d.getxattr(&rel, name) {
                    Ok(v) => Ok(Some(v)),
                    Err(e) if e.errno() == libc::ENODATA => Ok(None),
                    Err(e) => Err(self.fail("getxattr", &rel, &e)),
                }
            }
        }
    }

    fn xattr_names(&self, ino: u64) -> Result<Vec<String>, Errno> {
        if ino == ROOT {
            return Ok(vec![STATS_XATTR.to_string()]);
        }
        if ino == ENCODE_ROOT {
            return Ok(Vec::new());
        }
        if let Some(version) = self.version_of(ino) {
            return Ok(xattr::attributes(&version.metadata)
                .into_iter()
                .map(|(n, _)| n)
                .collect());
        }
        let (area, rel) = self.path_of(ino)?;
        match area {
            Area::View => match self.view.entry(&rel) {
                Ok(Entry::File { probe, .. }) => Ok(xattr::attributes(&probe.metadata)
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect()),
                Ok(Entry::Dir { .. }) => Ok(Vec::new()),
                Err(e) => Err(self.fail("listxattr", &rel, &e)),
            },
            Area::Encode => {
                let d = self.encode_dir().ok_or(Errno::ENOENT)?;
                d.listxattr(&rel)
                    .map_err(|e| self.fail("listxattr", &rel, &e))
            }
        }
    }

    fn create_file(
        &self,
        owner: (u32, u32),
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64, FopenFlags), Errno> {
        let rel = self.writable_child("create", parent, name)?;
        let d = self.encode_dir().ok_or(Errno::EROFS)?;
        let perm = mode & !umask & 0o7777;
        match d.create_as(&rel, perm, Some(owner)) {
            Ok((h, a)) => {
                // Counted: the caller replies with this entry (or gives the count back).
                let fa = self.register_encode(parent, name, &a, true);
                let fh = self.new_handle(Handle::Encode {
                    h,
                    rel,
                    ino: fa.ino.0,
                });
                Ok((fa, fh, FopenFlags::empty()))
            }
            // Lost a race with another creator: without O_EXCL, open what is there.
            Err(e) if e.errno() == libc::EEXIST && flags & libc::O_EXCL == 0 => {
                let a = d.getattr(&rel).map_err(|e| self.fail("create", &rel, &e))?;
                let fa = self.register_encode(parent, name, &a, true);
                match self.do_open(fa.ino.0, OpenFlags(flags)) {
                    Ok((fh, fl)) => Ok((fa, fh, fl)),
                    Err(e) => {
                        self.nodes_mut().forget(fa.ino.0, 1);
                        Err(e)
                    }
                }
            }
            Err(e) => Err(self.fail("create", &rel, &e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        caller: (u32, u32),
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Errno> {
        let (area, rel) = if ino == ENCODE_ROOT && self.encode.is_some() {
            (Area::Encode, PathBuf::new())
        } else {
            self.path_of(ino)?
        };
        if area == Area::View || self.read_only {
            return Err(self.plain("setattr", &rel, libc::EROFS));
        }
        if ino == ENCODE_ROOT {
            if uid.is_some_and(|u| u != self.uid) || gid.is_some_and(|g| g != self.gid) {
                return Err(self.plain("chown", &rel, libc::EPERM));
            }
            // The encode directory itself keeps mode 0755 and its times; accepting the change
            // lets `rsync -a dir/ MOUNT/encode/` finish without an error.
            return Ok(self.encode_root_attr());
        }
        let d = self.encode_dir().ok_or(Errno::EROFS)?;
        let mtime = mtime.map(|t| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        });
        let mode = mode.map(|m| m & 0o7777);
        if uid.is_some() || gid.is_some() {
            // Giving a file away needs root (CAP_CHOWN); so does, here, changing its group
            // (without `default_permissions` the kernel has not checked group membership).
            // Setting what is already there always succeeds (rsync -a does that).
            let now = self.getattr_ino(ino)?;
            let changes = uid.is_some_and(|u| u != now.uid) || gid.is_some_and(|g| g != now.gid);
            if changes && caller.0 != 0 {
                return Err(self.plain("chown", &rel, libc::EPERM));
            }
            if changes {
                if let Err(e) = d.chown(&rel, uid, gid) {
                    return Err(self.fail("chown", &rel, &e));
                }
            }
        }
        if size.is_none() && mode.is_none() && mtime.is_none() {
            // atime/ctime only: nothing stored, report the current attributes.
            return self.getattr_ino(ino);
        }
        match d.setattr(&rel, size, mode, mtime) {
            Ok(a) => Ok(self.encode_attr(ino, &a)),
            Err(e) => Err(self.fail("setattr", &rel, &e)),
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

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_child(parent.0, name, true) {
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
        self.remove_child("unlink", parent.0, name, reply, EncodeDir::unlink);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove_child("rmdir", parent.0, name, reply, EncodeDir::rmdir);
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

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino.0, flags) {
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
                        reply.data(&buf[..n]);
                        self.stats.read_done(n, started.elapsed());
                    }
                    // Never wrong bytes: any reader error is EIO (or its own errno), logged
                    // with the PNG's name.
                    Err(e) => {
                        reply.error(self.fail("read", reader.path(), &e));
                        self.stats.read_done(0, started.elapsed());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_table_survives_renames() {
        let mut n = Nodes {
            next: FIRST_FREE_INO,
            ..Default::default()
        };
        let d = n.get_or_insert(ENCODE_ROOT, OsStr::new("d"), Kind::Dir, None, false);
        let f = n.get_or_insert(d, OsStr::new("f"), Kind::File, None, false);
        assert_eq!(n.path(f), Some((Area::Encode, PathBuf::from("d/f"))));
        n.rename(ENCODE_ROOT, OsStr::new("d"), ENCODE_ROOT, OsStr::new("e"));
        assert_eq!(n.path(f), Some((Area::Encode, PathBuf::from("e/f"))));
        assert_eq!(
            n.get_or_insert(d, OsStr::new("f"), Kind::File, None, false),
            f
        );
        // Replacing a target detaches it.
        let g = n.get_or_insert(d, OsStr::new("g"), Kind::File, None, false);
        n.rename(d, OsStr::new("f"), d, OsStr::new("g"));
        assert_eq!(n.path(g), None);
        assert_eq!(n.path(f), Some((Area::Encode, PathBuf::from("e/g"))));
        // A kind change gets a new number.
        let v = n.get_or_insert(ROOT, OsStr::new("x"), Kind::File, None, false);
        let w = n.get_or_insert(ROOT, OsStr::new("x"), Kind::Dir, None, false);
        assert_ne!(v, w);
        // Forget drops a node once its lookups are gone.
        for _ in 0..2 {
            assert_eq!(
                n.get_or_insert(ROOT, OsStr::new("x"), Kind::Dir, None, true),
                w
            );
        }
        n.forget(w, 1);
        assert!(n.path(w).is_some());
        n.forget(w, 1);
        assert!(n.path(w).is_none());
        assert_eq!(n.path(ROOT), Some((Area::View, PathBuf::new())));
    }
}
