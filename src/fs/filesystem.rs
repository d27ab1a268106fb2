//! The filesystem a mount serves, below the `fuser` adapter ([`super::fuse`]): the inode
//! table ([`super::inodes`]), open handles, and the routing of each operation to [`View`] (the
//! decoded view) or [`EncodeDir`] (the encode directory) by where its inode lives; errors are
//! logged with the file they concern, counted ([`MountStats`]) and turned into errno here.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{Errno, FileAttr, FileType, FopenFlags, INodeNo, OpenAccMode, OpenFlags, TimeOrNow};

use super::encode_dir::{EncodeDir, EntryAttr, EntryKind, Opened};
use super::inodes::{Area, Nodes};
use super::stats::{self, Gathered, MountStats, SizedOnce, STATS_XATTR};
use super::view::{self, Entry, Kind, Probe, View};
use super::xattr;
use crate::cache::FileKey;
use crate::error::Error;
use crate::reader::Reader;

/// How long the kernel may trust attributes and names: changes in SOURCE show within this.
pub(super) const TTL: Duration = Duration::from_secs(1);
/// Readahead asked of the kernel (it may allow less).
pub(super) const READAHEAD: u32 = 1 << 20;
pub(super) const ROOT: u64 = 1;
pub(super) const ENCODE_ROOT: u64 = 2;
pub(super) const FIRST_FREE_INO: u64 = 3;
/// `st_blksize`: programs size their buffers by it; large reads decode tiles in parallel.
pub(super) const BLKSIZE: u32 = 1 << 17;

pub(super) enum Handle {
    /// A decoded file (from the view or a committed encode entry).
    Reader { reader: Arc<Reader> },
    /// An encode directory handle, of inode `ino`.
    Encode { h: u64, rel: PathBuf, ino: u64 },
    /// A directory listing, snapshotted at opendir so offsets stay stable.
    Dir { items: Vec<DirItem> },
}

#[derive(Clone)]
pub(super) struct DirItem {
    pub(super) name: OsString,
    pub(super) ino: u64,
    pub(super) kind: Kind,
    pub(super) attr: Option<FileAttr>,
    /// A decoded file's version (see [`Node::version`]).
    pub(super) version: Option<Arc<Probe>>,
}

/// The filesystem served by `fuser`.
pub struct PixelFs {
    pub(super) view: View,
    pub(super) encode: Option<(OsString, EncodeDir)>,
    pub(super) read_only: bool,
    /// Mounted for every user (`allow_other`): `encode/` is writable by all, sticky like /tmp.
    pub(super) shared: bool,
    pub(super) nodes: RwLock<Nodes>,
    pub(super) handles: Mutex<HashMap<u64, Handle>>,
    pub(super) next_fh: AtomicU64,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Counters for `user.pixelrts.stats` on the root.
    pub(super) stats: MountStats,
    pub(super) stats_sized: SizedOnce,
    pub(super) stale_opens: StaleOpens,
}

/// Opens answered ESTALE, by calling thread and path, so that the kernel's retry is told
/// apart from a first attempt.
///
/// An inode stands for one version of a decoded file. An open of an inode whose name now
/// holds a newer version answers ESTALE: the kernel then looks the name up again and opens
/// what it finds, so an open after a replace sees the new version although the kernel still
/// had the old inode cached. The kernel retries once only: when another replace lands between
/// that lookup and the open, the open is stale again, and a second ESTALE reaches the program
/// (the soak saw it under load; a replace in a tight loop failed half the opens). So the
/// retry, recognised by its thread and path, is served the version its lookup found: that
/// lookup keeps a descriptor of it in the record (and the view keeps replaced versions
/// openable for a while, [`View::open_version`]). Like a local filesystem's open, it gets the
/// file that the name held at some moment during the call.
#[derive(Default)]
pub(super) struct StaleOpens(Mutex<HashMap<(u32, PathBuf), StaleRecord>>);

pub(super) struct StaleRecord {
    at: Instant,
    /// The version the retry's lookup found, and a descriptor of it.
    found: Option<(FileKey, File)>,
}

/// The kernel retries at once; a record older than this is not a retry.
const RETRY_WINDOW: Duration = Duration::from_secs(1);
/// Records kept at most: one per thread with an open answered ESTALE in the last
/// [`RETRY_WINDOW`] (a retry removes its record; one whose retry never came, its thread killed
/// between lookup and open, goes at the next ESTALE after the window, with the descriptor its
/// lookup may have kept).
const MAX_STALE_RECORDS: usize = 4096;

impl StaleOpens {
    fn note(&self, caller: u32, rel: &Path) {
        let mut m = lock(&self.0);
        m.retain(|_, r| r.at.elapsed() < RETRY_WINDOW);
        if m.len() >= MAX_STALE_RECORDS {
            // As many threads retrying at once: the oldest record goes.
            if let Some(oldest) = m.iter().min_by_key(|(_, r)| r.at).map(|(k, _)| k.clone()) {
                m.remove(&oldest);
            }
        }
        let record = StaleRecord {
            at: Instant::now(),
            found: None,
        };
        m.insert((caller, rel.to_path_buf()), record);
    }

    /// Whether `caller` is retrying an open of `rel` that was answered ESTALE.
    fn retrying(&self, caller: u32, rel: &Path) -> bool {
        let m = lock(&self.0);
        !m.is_empty()
            && m.get(&(caller, rel.to_path_buf()))
                .is_some_and(|r| r.at.elapsed() < RETRY_WINDOW)
    }

    /// Keeps what the retry's lookup found for its open.
    fn found(&self, caller: u32, rel: &Path, key: FileKey, file: File) {
        if let Some(r) = lock(&self.0).get_mut(&(caller, rel.to_path_buf())) {
            r.found = Some((key, file));
        }
    }

    /// The record of an open by `caller` that retries one answered ESTALE (forgotten then);
    /// None: not a retry.
    fn take(&self, caller: u32, rel: &Path) -> Option<StaleRecord> {
        let mut m = lock(&self.0);
        if m.is_empty() {
            return None;
        }
        m.remove(&(caller, rel.to_path_buf()))
            .filter(|r| r.at.elapsed() < RETRY_WINDOW)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn errno(code: i32) -> Errno {
    Errno::from_i32(code)
}

/// Errors that are part of normal operation, logged at debug level only.
pub(super) fn expected(code: i32) -> bool {
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
            stale_opens: StaleOpens::default(),
        }
    }

    /// `user.pixelrts.stats`: this mount's counters and the parts the cache and the encode
    /// folder keep.
    pub(super) fn stats_value(&self) -> Vec<u8> {
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

    pub(super) fn nodes(&self) -> std::sync::RwLockReadGuard<'_, Nodes> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn nodes_mut(&self) -> std::sync::RwLockWriteGuard<'_, Nodes> {
        self.nodes.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn encode_dir(&self) -> Option<&EncodeDir> {
        self.encode.as_ref().map(|(_, d)| d)
    }

    /// Logs `e` (with the file it names) and turns it into the errno for the kernel.
    pub(super) fn fail(&self, op: &str, what: &Path, e: &Error) -> Errno {
        let code = e.errno();
        self.stats.error(code);
        if expected(code) {
            tracing::debug!(file = %what.display(), errno = code, "{op} {}: {e}", what.display());
        } else {
            tracing::warn!(file = %what.display(), errno = code, "{op} {}: {e}", what.display());
        }
        errno(code)
    }

    pub(super) fn plain(&self, op: &str, what: &Path, code: i32) -> Errno {
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

    pub(super) fn path_of(&self, ino: u64) -> Result<(Area, PathBuf), Errno> {
        self.nodes().path(ino).ok_or(Errno::ENOENT)
    }

    /// The version of a decoded file that inode `ino` stands for (None: not a decoded file).
    pub(super) fn version_of(&self, ino: u64) -> Option<Arc<Probe>> {
        self.nodes().by_ino.get(&ino)?.version.clone()
    }

    /// Where child `name` of `parent` lives.
    pub(super) fn child_path(&self, parent: u64, name: &OsStr) -> Result<(Area, PathBuf), Errno> {
        let (area, dir) = self.path_of(parent)?;
        Ok((area, dir.join(name)))
    }

    pub(super) fn is_encode_root_name(&self, parent: u64, name: &OsStr) -> bool {
        parent == ROOT && self.encode.as_ref().is_some_and(|(n, _)| n == name)
    }

    pub(super) fn attr(
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

    pub(super) fn view_attr(&self, ino: u64, a: &view::Attr) -> FileAttr {
        let mut attr = self.attr(ino, a.kind, a.size, a.mode, a.mtime, a.ctime);
        if let Some((uid, gid)) = a.owner {
            (attr.uid, attr.gid) = (uid, gid);
        }
        attr
    }

    pub(super) fn encode_attr(&self, ino: u64, a: &EntryAttr) -> FileAttr {
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

    pub(super) fn encode_root_attr(&self) -> FileAttr {
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
    pub(super) fn getattr_ino(&self, ino: u64) -> Result<FileAttr, Errno> {
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
    pub(super) fn lookup_child(
        &self,
        parent: u64,
        name: &OsStr,
        counted: bool,
        caller: u32,
    ) -> Result<FileAttr, Errno> {
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
                if let Entry::File { png, probe } = &entry {
                    let rel = dir.join(name);
                    if self.stale_opens.retrying(caller, &rel) {
                        // The kernel's retry of a stale open: its open must get this version
                        // even if the name is replaced again before it comes.
                        if let Some(file) = self.view.open_exact(png, probe) {
                            self.stale_opens.found(caller, &rel, probe.key, file);
                        }
                    }
                }
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

    pub(super) fn register_encode(
        &self,
        parent: u64,
        name: &OsStr,
        a: &EntryAttr,
        counted: bool,
    ) -> FileAttr {
        let kind = match a.kind {
            EntryKind::Dir => Kind::Dir,
            EntryKind::File => Kind::File,
        };
        let ino = self
            .nodes_mut()
            .get_or_insert(parent, name, kind, None, counted);
        self.encode_attr(ino, a)
    }

    pub(super) fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }

    pub(super) fn reader_of(&self, fh: u64) -> Option<Arc<Reader>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Reader { reader }) => Some(reader.clone()),
            _ => None,
        }
    }

    /// Attributes of an encode-directory inode that has no name any more but is still open.
    pub(super) fn unlinked_attr(&self, ino: u64) -> Option<FileAttr> {
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

    pub(super) fn encode_handle(&self, fh: u64) -> Option<(u64, PathBuf)> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Encode { h, rel, .. }) => Some((*h, rel.clone())),
            _ => None,
        }
    }

    /// The listing of a directory inode, with inode numbers and (for readdirplus) attributes.
    pub(super) fn list_dir(&self, ino: u64) -> Result<Vec<DirItem>, Errno> {
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

    /// symlink / link: not supported; EPERM in the encode directory, EROFS in the view.
    pub(super) fn refuse_link(&self, what: &str, parent: u64, name: &OsStr) -> Errno {
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
    pub(super) fn remove_child(
        &self,
        what: &str,
        parent: u64,
        name: &OsStr,
        remove: impl FnOnce(&EncodeDir, &Path) -> Result<(), Error>,
    ) -> Result<(), Errno> {
        let rel = self.writable_child(what, parent, name)?;
        let d = self.encode_dir().ok_or(Errno::EROFS)?;
        remove(d, &rel).map_err(|e| self.fail(what, &rel, &e))?;
        self.nodes_mut().unlink(parent, name);
        Ok(())
    }

    pub(super) fn writable_child(
        &self,
        op: &str,
        parent: u64,
        name: &OsStr,
    ) -> Result<PathBuf, Errno> {
        let (area, rel) = self.child_path(parent, name)?;
        if area == Area::View || self.read_only || self.is_encode_root_name(parent, name) {
            return Err(self.plain(op, &rel, libc::EROFS));
        }
        Ok(rel)
    }

    /// Opens `png` for reading; with `version`, exactly that version of it (the one the
    /// inode stands for, kept by the view for a while after a replace; else ESTALE, which
    /// makes the kernel look the name up again and open the inode of the new version).
    pub(super) fn open_reader(
        &self,
        png: &Path,
        version: Option<&Probe>,
    ) -> Result<(u64, FopenFlags), Errno> {
        let (reader, keep) = match version {
            // An inode of a version never changes content: its cached pages stay valid.
            Some(v) => (self.view.open_version(png, v), true),
            None => match self.view.open_reader(png) {
                Ok((reader, keep)) => (Ok(reader), keep),
                Err(e) => (Err(e), false),
            },
        };
        let reader = reader.map_err(|e| self.fail("open", png, &e))?;
        let fh = self.new_handle(Handle::Reader { reader });
        let flags = if keep {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        Ok((fh, flags))
    }

    /// A handle on the version of `png` that `file` holds (found by a retry's lookup).
    fn open_found(&self, png: &Path, file: File) -> Result<(u64, FopenFlags), Errno> {
        let reader = self
            .view
            .reader_of_file(png, file)
            .map_err(|e| self.fail("open", png, &e))?;
        let fh = self.new_handle(Handle::Reader { reader });
        Ok((fh, FopenFlags::FOPEN_KEEP_CACHE))
    }

    /// Opens inode `ino` for thread `caller` (the request's pid: the kernel's retry of an
    /// open comes from the same thread, see [`StaleOpens`]).
    pub(super) fn do_open(
        &self,
        ino: u64,
        flags: OpenFlags,
        caller: u32,
    ) -> Result<(u64, FopenFlags), Errno> {
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
                    Ok(Entry::File { png, probe }) => {
                        let version = self.version_of(ino);
                        let retry = self.stale_opens.take(caller, &rel);
                        let opened = match (version, retry) {
                            // The name holds another version now (another inode).
                            (Some(v), None) if v.key != probe.key => {
                                Err(self.plain("open (replaced)", &rel, libc::ESTALE))
                            }
                            // A retry, of the version its lookup kept a descriptor of.
                            (
                                Some(v),
                                Some(StaleRecord {
                                    found: Some((key, file)),
                                    ..
                                }),
                            ) if key == v.key => self.open_found(&png, file),
                            (v, _) => self.open_reader(&png, v.as_deref()),
                        };
                        if opened == Err(Errno::ESTALE) {
                            self.stale_opens.note(caller, &rel);
                        }
                        opened
                    }
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
    pub(super) fn xattr_value(&self, ino: u64, name: &OsStr) -> Result<Option<Vec<u8>>, Errno> {
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

    pub(super) fn xattr_names(&self, ino: u64) -> Result<Vec<String>, Errno> {
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

    pub(super) fn create_file(
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
                match self.do_open(fa.ino.0, OpenFlags(flags), 0) {
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
    pub(super) fn do_setattr(
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
