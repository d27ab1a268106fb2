//! The encode directory (`MOUNTPOINT/encode/`): files written there are spooled to disk and
//! encoded to `SOURCE/<rel>.rts.png` when closed. Path-based and free of FUSE, so the adapter in
//! `fs::fuse` stays thin and everything here is testable with plain files.
//!
//! # Entries
//! Every entry has a path `rel` relative to the encode directory (`..`, absolute paths and names
//! starting with `.pixelrts` are refused with EINVAL; the view hides such names, and the default
//! spool `SOURCE/.pixelrts-spool` must never receive a commit). A file entry is
//! - **Spooled**: its bytes live in `SPOOL/data/<rel>` and have changed since the last commit (or
//!   were never committed). The spool file's own mode and mtime are the entry's, and are what the
//!   commit records (`file_mode`/`file_mtime`). User xattrs live in `SPOOL/meta/<rel>.json`.
//! - **Committed**: its bytes live in `SOURCE/<rel>.rts.png`. While handles are still open the
//!   spool file is kept (same bytes), so later writes through those handles need no copy-up; the
//!   last release deletes it. Committed entries stay listed until unmount (rsync sets attributes
//!   and renames after close); a new [`EncodeDir`] does not list them again.
//!
//! Directories exist only in memory (and as `SPOOL/data` folders holding spooled files); SOURCE
//! folders are created when a file below them is committed, so an empty directory made in
//! `encode/` leaves nothing in SOURCE and is not remembered across mounts.
//!
//! # Operations
//! - `create`: a new empty spool file with the given mode (and, when the mount runs as root, the
//!   caller's owner), Spooled, opened read-write. Creating counts as writing: the handle's close
//!   publishes even when nothing was written (`touch` makes an empty PNG).
//! - `open`: a Spooled entry, or one whose spool file is still kept, gets a handle on the spool
//!   file (`truncate` empties it, makes it Spooled, and counts as this handle's writing). A
//!   read-only open of a Committed entry answers [`Opened::Committed`] with the PNG to read
//!   through `reader::Reader`. A write open of a Committed entry starts a new spool file: empty
//!   with `truncate`, else a copy-up (the PNG is decoded, hash-verified, into `SPOOL/tmp`,
//!   fsynced, then renamed into `SPOOL/data`, so a crash never leaves a partial copy that would
//!   later be encoded over the good PNG). The copy-up is deferred to the handle's first read,
//!   write or publishing close: the kernel sends `O_TRUNC` as an open followed by a truncate to
//!   0 (the mount does not take atomic O_TRUNC, see `fs::fuse`), and that truncate makes an
//!   empty spool file without decoding anything. An unlink or rename over the entry first
//!   copies it up for its handles that have none yet. A copy-up alone does not make the entry
//!   Spooled: closing it unchanged encodes nothing.
//! - `write`/`setattr(size)`: change the spool file and make the entry Spooled; the first change
//!   after a recorded close first removes that record, durably. A size change marks every write
//!   handle open on the entry as having written; with none open (`truncate(2)` on a path) the
//!   entry stays pending until a writing close: nothing but a close ever publishes.
//! - `flush` (a close) of a handle that wrote: fsync the spool file, record durably that the
//!   close was reached (`"closed": true` in the meta file), encode, and return the encoder's
//!   error (errno kept: ENOSPC, EROFS, EIO…). Read-only handles, and write handles that changed
//!   nothing, never encode.
//! - `release`: never encodes (it cannot report errors); a Spooled entry whose flush failed
//!   stays Spooled (its close recorded: [`EncodeDir::commit_pending`] at the next mount, or the
//!   next writing close, encodes it); one whose close never came (the mount died first) stays
//!   pending, and is published only by a later writing close.
//! - `setattr(mode/mtime)`: applied to the spool file while one exists. When the entry is
//!   Committed, the PNG's metadata is rewritten (`format::rewrite`) so that `file_mode` and
//!   `file_mtime` hold the new values (rsync, `cp -p` and `touch -d` set them after close, i.e.
//!   after the commit), and the PNG file itself gets them too. The rewrite renames a new file
//!   over the PNG, so readers that have it open keep the old inode.
//! - `unlink`: a Spooled entry's spool data and meta are deleted; a Committed entry is only
//!   forgotten, its PNG stays. Open handles keep working on the now nameless spool inode, and
//!   their flush encodes nothing.
//! - xattrs: only `user.pixelrts.<key>` with a UTF-8 value; other names ENOTSUP; keys the format
//!   or the encoder owns (`data_size`, `file_mode`, `metadata`…) EINVAL. Readable on every entry
//!   (a Committed entry answers from its PNG's metadata, like the decoded view); set/remove on a
//!   Committed entry: EROFS.
//!
//! # Commit
//! `encode::encode_file(SPOOL/data/<rel>, SOURCE/<rel>.rts.png)` with the user keys as metadata,
//! no sidecar, fsync, overwrite (an existing PNG of that name in SOURCE is replaced) and the
//! spool file's mode, mtime (with nanoseconds), owner and group recorded. The encoder writes a
//! temporary file beside the target, and renames it into place after fsync, then fsyncs the
//! folder; folders it needed are created first and fsynced into their parents. On failure the
//! temporary file is gone, folders created for this commit are removed again, and the entry
//! stays Spooled with its bytes. Only after a successful commit (and the last release) are the
//! spool data and meta deleted (data first: a crash in between leaves no pending copy of a
//! published file). A crash anywhere leaves the entry pending, published whole, or (closed
//! recorded, not yet encoded) encoded at the next mount, which also removes the temporary files
//! of dead processes; `crate::failpoint` names each step for the crash-point test.
//!
//! # Rename (POSIX replace semantics, `noreplace` → EEXIST)
//! A file entry moves with everything it owns: its spool file and meta json are renamed in the
//! spool, and its PNG (if it was ever committed in this mount) is renamed in SOURCE (folders
//! created as needed), replacing whatever PNG had the target name. The replaced target entry is
//! dropped like an unlink. So:
//! - Spooled over nothing/Spooled: spool files move; the target's spool data and meta go.
//! - Spooled over Committed: the target is forgotten but its PNG stays until the moved entry is
//!   committed over it (`SOURCE/<to>.rts.png` keeps the old bytes meanwhile).
//! - Committed over anything (the rsync pattern: `.x.AbCdEf` closed, then renamed to `x`): the
//!   PNG is renamed to `SOURCE/<to>.rts.png`; no `.x.AbCdEf.rts.png` is left behind.
//! - Spooled again after a commit (rewritten): both the spool file and the old PNG move, so the
//!   old name leaves no stale PNG behind.
//! - A directory moves its spool folders and every committed descendant's PNG (SOURCE folders
//!   left empty by that are removed); it may replace only an empty directory (else ENOTEMPTY),
//!   and never into itself (EINVAL). A file over a directory is EISDIR, a directory over a
//!   file ENOTDIR. Several PNGs are not moved atomically: one that cannot be moved is logged
//!   and its entry keeps pointing at where it is.
//!
//! Renaming a file that is being encoded waits for that encode; a directory rename does not,
//! and a commit that finishes after its file was moved renames its fresh PNG to the new name.
//!
//! # Limits
//! The spool file carries the entry's mode, so a mount running without CAP_DAC_OVERRIDE cannot
//! reopen a spool file whose owner bits were cleared (`chmod 0` before close); as root it can.
//! Two commits racing to create the same new SOURCE folder while one of them fails may make the
//! other fail too (ENOENT); its bytes stay Spooled like any failed commit.
//!
//! # Locking
//! One lock on the namespace (held only for lookups and metadata-sized work), one state lock
//! per file, and one `io` lock per file held for a change of its bytes or its commit. Order:
//! `io` → namespace → state; the handle table is a leaf lock. So a long encode only blocks
//! writers, renames and unlinks of that same file; reads use `pread` on the handle's own file.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::encode;
use crate::error::{Error, IoContext, Result};
use crate::format;
use crate::gpu::GpuMode;

mod rename;
mod spool;
mod xattr;

use spool::sync_dir;

/// Names the view hides; refusing them here keeps every entry visible once committed.
const RESERVED_PREFIX: &str = ".pixelrts";
/// The suffix a committed entry gets in SOURCE.
const PNG_SUFFIX: &str = ".rts.png";
/// Linux NAME_MAX: a name must still fit once `.rts.png` or `.json` is appended.
const NAME_MAX: usize = 255;

/// How the encode directory encodes.
#[derive(Clone, Debug)]
pub struct EncodeDirOptions {
    /// Encoder worker threads (None: the encoder's default).
    pub threads: Option<usize>,
    /// Passed to every encode (and its verifying decode) of committed files. `gpu=on` also fails
    /// at [`EncodeDir::new`] when no GPU is usable, so the mount refuses to start rather than
    /// failing each file later.
    pub gpu: GpuMode,
    /// Deflate level 0–9.
    pub level: u32,
    /// `compress=auto|zlib|none`.
    pub compress: encode::compressed::CompressMode,
}

impl Default for EncodeDirOptions {
    fn default() -> Self {
        EncodeDirOptions {
            threads: None,
            gpu: GpuMode::default(),
            level: encode::DEFAULT_LEVEL,
            compress: Default::default(),
        }
    }
}

/// See [`EncodeDir::counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeCounters {
    pub done: u64,
    pub failed: u64,
    pub pending: u64,
    pub open: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryState {
    Dir,
    /// Bytes in the spool, not (or not any more) committed.
    Spooled,
    /// Bytes in this PNG.
    Committed {
        png: PathBuf,
    },
}

#[derive(Clone, Debug)]
pub struct EntryAttr {
    pub kind: EntryKind,
    /// Bytes of the file (0 for directories).
    pub size: u64,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    pub mtime: SystemTime,
    /// Last change of the data or the attributes.
    pub ctime: SystemTime,
    /// Owner and group (the mount process's own unless it runs as root).
    pub uid: u32,
    pub gid: u32,
    /// Folders: how many folders it holds (its link count is 2 more). Files: 0.
    pub subdirs: u32,
    pub state: EntryState,
}

/// What an [`EncodeDir::open`] gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// A handle for [`EncodeDir::read`]/[`EncodeDir::write`]/…/[`EncodeDir::release`].
    Handle(u64),
    /// Read-only open of a committed entry: read this PNG (through `reader::Reader`).
    Committed(PathBuf),
}

/// The encode directory over one SOURCE and one spool. `Send + Sync`; every method takes `&self`.
pub struct EncodeDir {
    source: PathBuf,
    data: PathBuf,
    meta: PathBuf,
    tmp: PathBuf,
    /// The spool's path inside SOURCE when it lies there (`.pixelrts-spool` by default).
    spool_in_source: Option<PathBuf>,
    opts: EncodeDirOptions,
    /// The one pool every encode of this directory runs on.
    pool: Arc<rayon::ThreadPool>,
    tree: Mutex<Tree>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_handle: AtomicU64,
    next_tmp: AtomicU64,
    /// Commits that encoded, and that failed (`user.pixelrts.stats`).
    encodes_done: AtomicU64,
    encodes_failed: AtomicU64,
}

/// Every entry by its rel path; the root is the empty path. `PathBuf` orders component-wise, so
/// a directory's descendants follow it contiguously.
struct Tree {
    nodes: BTreeMap<PathBuf, Node>,
}

#[derive(Clone)]
enum Node {
    Dir(DirInfo),
    File(Arc<FileNode>),
}

#[derive(Clone, Copy)]
struct DirInfo {
    mode: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    uid: u32,
    gid: u32,
}

struct FileNode {
    /// Held for a change of the bytes and for a whole commit (see the module doc).
    io: Mutex<()>,
    state: Mutex<FileState>,
}

struct FileState {
    rel: PathBuf,
    /// Changed since the last successful commit: the entry is Spooled. Implies `spool`.
    dirty: bool,
    /// `SPOOL/data/<rel>` exists and holds the entry's bytes.
    spool: bool,
    /// Where the last commit put the PNG.
    png: Option<PathBuf>,
    /// Attributes of the committed bytes (used when no spool file exists).
    size: u64,
    mode: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    uid: u32,
    gid: u32,
    /// User metadata keys (without the `user.pixelrts.` prefix), string values.
    xattrs: Map<String, Value>,
    handles: usize,
    /// Unlinked or replaced: the name (and the spool path) may belong to another entry now.
    detached: bool,
    /// A close of a handle that wrote the bytes now in the spool was reached, and recorded
    /// durably in the spool's meta file: the bytes are complete and must be published, by
    /// this mount or (after a crash) the next. Cleared, durably, before the next change.
    closed: bool,
}

struct Handle {
    node: Arc<FileNode>,
    /// The spool file this handle reads and writes. A write handle of a Committed entry
    /// starts without one: the copy-up (a decode of the whole image) waits until the handle
    /// first reads, writes or publishes, so `open(O_TRUNC)` — an open, then a truncate to 0 —
    /// never decodes bytes about to be thrown away. See [`EncodeDir::attach_spool`].
    file: OnceLock<File>,
    write: bool,
    /// This handle created, truncated or wrote the file (or the file was truncated while it
    /// was open): its close publishes.
    wrote: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not turn every later call into a panic: the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn errno(path: &Path, code: i32) -> Error {
    Error::io(path, io::Error::from_raw_os_error(code))
}

fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Removes a file, treating "already gone" as done.
fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if !is_not_found(&e) => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The mount process's own uid and gid.
fn process_owner() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Who owns a new entry: the caller when the mount runs as root (only root can give files
/// away), else the mount's own user.
fn effective_owner(owner: Option<(u32, u32)>) -> (u32, u32) {
    match owner {
        Some(o) if process_owner().0 == 0 => o,
        _ => process_owner(),
    }
}

/// A file's ctime as a `SystemTime` (std has no accessor for it).
fn change_time(m: &fs::Metadata) -> SystemTime {
    let secs = m.ctime();
    let nanos = m.ctime_nsec().clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos)
    } else {
        SystemTime::UNIX_EPOCH - std::time::Duration::new(secs.unsigned_abs(), 0)
            + std::time::Duration::new(0, nanos)
    }
}

fn set_mtime(path: &Path, mtime: SystemTime) -> Result<()> {
    let f = File::open(path).at(path)?;
    f.set_modified(mtime).at(path)
}

fn apply_attributes(path: &Path, mode: Option<u32>, mtime: Option<SystemTime>) -> Result<()> {
    if let Some(m) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(m & 0o7777)).at(path)?;
    }
    if let Some(t) = mtime {
        set_mtime(path, t)?;
    }
    Ok(())
}

/// Seconds since the epoch rounded down, and the nanoseconds after them (`st_mtime`,
/// `st_mtime_nsec`; recorded as `file_mtime`, `file_mtime_nsec`).
fn unix_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => ((-secs).saturating_sub(1), 1_000_000_000 - n),
            }
        }
    }
}

impl EncodeDir {
    /// Opens the encode directory: creates `SPOOL/data`, `SPOOL/meta` and `SPOOL/tmp`, and loads
    /// every file left in `SPOOL/data` by an earlier mount or a crash as a pending Spooled entry.
    /// (Named `new` because `open` is the file operation below.)
    pub fn new(source: &Path, spool: &Path, opts: EncodeDirOptions) -> Result<EncodeDir> {
        let source_meta = fs::metadata(source).at(source)?;
        if !source_meta.is_dir() {
            return Err(errno(source, libc::ENOTDIR));
        }
        if opts.level > 9 {
            return Err(Error::InvalidArgument(format!(
                "level must be 0..9, got {}",
                opts.level
            )));
        }
        if opts.threads == Some(0) {
            return Err(Error::InvalidArgument("threads must be at least 1".into()));
        }
        if opts.gpu == GpuMode::On {
            crate::gpu::Gpu::open(GpuMode::On).map_err(|e| Error::Gpu(e.to_string()))?;
        }
        let data = spool.join("data");
        let meta = spool.join("meta");
        let tmp = spool.join("tmp");
        for d in [&data, &meta] {
            fs::create_dir_all(d).at(d)?;
        }
        // Leftovers in tmp are copy-ups a crash interrupted: the PNG still holds those bytes.
        match fs::remove_dir_all(&tmp) {
            Err(e) if !is_not_found(&e) => return Err(Error::io(&tmp, e)),
            _ => {}
        }
        fs::create_dir_all(&tmp).at(&tmp)?;
        let source = fs::canonicalize(source).at(source)?;
        let spool_canon = fs::canonicalize(spool).at(spool)?;
        if source.starts_with(&spool_canon) {
            return Err(Error::InvalidArgument(format!(
                "{}: the spool must not contain SOURCE",
                spool.display()
            )));
        }
        let spool_in_source = spool_canon
            .strip_prefix(&source)
            .ok()
            .map(Path::to_path_buf);
        let dir = EncodeDir {
            source,
            data,
            meta,
            tmp,
            spool_in_source,
            pool: Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(opts.threads.unwrap_or(0))
                    .thread_name(|i| format!("encode-{i}"))
                    .build()
                    .map_err(|e| {
                        Error::InvalidArgument(format!("cannot start encoder threads: {e}"))
                    })?,
            ),
            opts,
            tree: Mutex::new(Tree {
                nodes: BTreeMap::new(),
            }),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            next_tmp: AtomicU64::new(0),
            encodes_done: AtomicU64::new(0),
            encodes_failed: AtomicU64::new(0),
        };
        // A crash while a meta file was rewritten leaves its temporary file beside it.
        dir.remove_stale_meta_temps(&dir.meta);
        let now = SystemTime::now();
        let (uid, gid) = process_owner();
        let root = DirInfo {
            mode: 0o755,
            mtime: now,
            ctime: now,
            uid,
            gid,
        };
        let mut nodes = BTreeMap::new();
        nodes.insert(PathBuf::new(), Node::Dir(root));
        dir.scan_pending(Path::new(""), &mut nodes)?;
        lock(&dir.tree).nodes = nodes;
        Ok(dir)
    }

    fn remove_stale_meta_temps(&self, dir: &Path) {
        crate::io_util::remove_stale_temps(dir, None);
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.remove_stale_meta_temps(&entry.path());
            }
        }
    }

    fn meta_path(&self, rel: &Path) -> PathBuf {
        with_suffix(&self.meta.join(rel), ".json")
    }

    fn png_path(&self, rel: &Path) -> PathBuf {
        with_suffix(&self.source.join(rel), PNG_SUFFIX)
    }

    /// Checks a caller's path: relative, no `..`, no reserved names, nothing that would land a
    /// commit inside the spool. Returns it normalised (`.` components dropped).
    fn clean_rel(&self, rel: &Path) -> Result<PathBuf> {
        let mut out = PathBuf::new();
        for c in rel.components() {
            match c {
                Component::Normal(name) => {
                    if name.as_bytes().starts_with(RESERVED_PREFIX.as_bytes()) {
                        return Err(errno(rel, libc::EINVAL));
                    }
                    if name.len() + PNG_SUFFIX.len() > NAME_MAX {
                        return Err(errno(rel, libc::ENAMETOOLONG));
                    }
                    out.push(name);
                }
                Component::CurDir => {}
                _ => return Err(errno(rel, libc::EINVAL)),
            }
        }
        if let Some(spool) = &self.spool_in_source {
            if !out.as_os_str().is_empty() && out.starts_with(spool) {
                return Err(errno(rel, libc::EINVAL));
            }
        }
        Ok(out)
    }

    /// ENOENT, or ENOTDIR when a path component is a file.
    fn missing(tree: &Tree, rel: &Path) -> Error {
        let mut at = rel.parent();
        while let Some(p) = at {
            if let Some(Node::File(_)) = tree.nodes.get(p) {
                return errno(rel, libc::ENOTDIR);
            }
            at = p.parent();
        }
        errno(rel, libc::ENOENT)
    }

    fn lookup(&self, rel: &Path) -> Result<Node> {
        let tree = lock(&self.tree);
        tree.nodes
            .get(rel)
            .cloned()
            .ok_or_else(|| Self::missing(&tree, rel))
    }

    fn lookup_file(&self, rel: &Path) -> Result<Arc<FileNode>> {
        match self.lookup(rel)? {
            Node::File(f) => Ok(f),
            Node::Dir(_) => Err(errno(rel, libc::EISDIR)),
        }
    }

    /// The parent of a new entry must be an existing directory.
    fn check_parent(tree: &Tree, rel: &Path) -> Result<()> {
        let parent = match rel.parent() {
            Some(p) => p,
            None => return Err(errno(rel, libc::EINVAL)),
        };
        match tree.nodes.get(parent) {
            Some(Node::Dir(_)) => Ok(()),
            Some(Node::File(_)) => Err(errno(rel, libc::ENOTDIR)),
            None => Err(Self::missing(tree, parent)),
        }
    }

    fn touch_parent(tree: &mut Tree, rel: &Path) {
        if let Some(Node::Dir(d)) = rel.parent().and_then(|p| tree.nodes.get_mut(p)) {
            d.mtime = SystemTime::now();
            d.ctime = d.mtime;
        }
    }

    fn file_attr(&self, st: &FileState) -> Result<EntryAttr> {
        if st.spool {
            let path = self.data.join(&st.rel);
            let m = fs::metadata(&path).at(&path)?;
            Self::spool_file_attr(st, &m, &path)
        } else {
            Ok(EntryAttr {
                kind: EntryKind::File,
                size: st.size,
                mode: st.mode,
                mtime: st.mtime,
                ctime: st.ctime,
                uid: st.uid,
                gid: st.gid,
                subdirs: 0,
                state: Self::file_state(st),
            })
        }
    }

    /// Attributes of a file entry whose bytes are the spool file with metadata `m` (`path`
    /// names it in errors).
    fn spool_file_attr(st: &FileState, m: &fs::Metadata, path: &Path) -> Result<EntryAttr> {
        Ok(EntryAttr {
            kind: EntryKind::File,
            size: m.len(),
            mode: m.mode() & 0o7777,
            mtime: m.modified().at(path)?,
            ctime: change_time(m),
            uid: m.uid(),
            gid: m.gid(),
            subdirs: 0,
            state: Self::file_state(st),
        })
    }

    fn file_state(st: &FileState) -> EntryState {
        match (&st.png, st.dirty) {
            (Some(png), false) => EntryState::Committed { png: png.clone() },
            _ => EntryState::Spooled,
        }
    }

    fn dir_attr(d: &DirInfo, subdirs: u32) -> EntryAttr {
        EntryAttr {
            kind: EntryKind::Dir,
            size: 0,
            mode: d.mode,
            mtime: d.mtime,
            ctime: d.ctime,
            uid: d.uid,
            gid: d.gid,
            subdirs,
            state: EntryState::Dir,
        }
    }

    /// Applies an attribute change to the folder `rel` (its ctime becomes now) and returns its
    /// attributes; ENOENT when it went away meanwhile.
    fn change_dir(&self, rel: &Path, change: impl FnOnce(&mut DirInfo)) -> Result<EntryAttr> {
        let mut tree = lock(&self.tree);
        let subdirs = Self::subdirs(&tree, rel);
        match tree.nodes.get_mut(rel) {
            Some(Node::Dir(d)) => {
                change(d);
                d.ctime = SystemTime::now();
                Ok(Self::dir_attr(d, subdirs))
            }
            _ => Err(errno(rel, libc::ENOENT)),
        }
    }

    /// How many folders the folder `rel` holds.
    fn subdirs(tree: &Tree, rel: &Path) -> u32 {
        let n = tree
            .nodes
            .range(rel.to_path_buf()..)
            .skip(1)
            .take_while(|(k, _)| k.starts_with(rel))
            .filter(|(k, n)| k.parent() == Some(rel) && matches!(n, Node::Dir(_)))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// `subdirs`: of a folder node, how many folders it holds.
    fn node_attr(&self, node: &Node, subdirs: u32) -> Result<EntryAttr> {
        match node {
            Node::Dir(d) => Ok(Self::dir_attr(d, subdirs)),
            Node::File(f) => self.file_attr(&lock(&f.state)),
        }
    }

    pub fn getattr(&self, rel: &Path) -> Result<EntryAttr> {
        let rel = self.clean_rel(rel)?;
        let node = self.lookup(&rel)?;
        let subdirs = match node {
            Node::Dir(_) => Self::subdirs(&lock(&self.tree), &rel),
            Node::File(_) => 0,
        };
        self.node_attr(&node, subdirs)
    }

    /// The entries of a directory. An entry whose attributes cannot be read is logged and left
    /// out rather than failing the listing.
    pub fn list(&self, rel_dir: &Path) -> Result<Vec<(OsString, EntryAttr)>> {
        let rel_dir = self.clean_rel(rel_dir)?;
        let children: Vec<(OsString, Node, u32)> = {
            let tree = lock(&self.tree);
            match tree.nodes.get(&rel_dir) {
                Some(Node::Dir(_)) => {}
                Some(Node::File(_)) => return Err(errno(&rel_dir, libc::ENOTDIR)),
                None => return Err(Self::missing(&tree, &rel_dir)),
            }
            tree.nodes
                .range(rel_dir.clone()..)
                .skip(1)
                .take_while(|(k, _)| k.starts_with(&rel_dir))
                .filter(|(k, _)| k.parent() == Some(rel_dir.as_path()))
                .filter_map(|(k, n)| {
                    let subdirs = match n {
                        Node::Dir(_) => Self::subdirs(&tree, k),
                        Node::File(_) => 0,
                    };
                    k.file_name()
                        .map(|f| (f.to_os_string(), n.clone(), subdirs))
                })
                .collect()
        };
        let mut out = Vec::with_capacity(children.len());
        for (name, node, subdirs) in children {
            match self.node_attr(&node, subdirs) {
                Ok(a) => out.push((name, a)),
                Err(e) => tracing::warn!("encode dir listing: {e}"),
            }
        }
        Ok(out)
    }

    pub fn mkdir(&self, rel: &Path, mode: u32) -> Result<EntryAttr> {
        self.mkdir_as(rel, mode, None)
    }

    /// `mkdir` on behalf of `owner` (uid, gid): the folder is theirs when the mount runs as
    /// root.
    pub fn mkdir_as(&self, rel: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<EntryAttr> {
        let rel = self.clean_rel(rel)?;
        let mut tree = lock(&self.tree);
        if tree.nodes.contains_key(&rel) {
            return Err(errno(&rel, libc::EEXIST));
        }
        Self::check_parent(&tree, &rel)?;
        let now = SystemTime::now();
        let (uid, gid) = effective_owner(owner);
        let info = DirInfo {
            mode: mode & 0o7777,
            mtime: now,
            ctime: now,
            uid,
            gid,
        };
        tree.nodes.insert(rel.clone(), Node::Dir(info));
        Self::touch_parent(&mut tree, &rel);
        Ok(Self::dir_attr(&info, 0))
    }

    pub fn rmdir(&self, rel: &Path) -> Result<()> {
        let rel = self.clean_rel(rel)?;
        if rel.as_os_str().is_empty() {
            return Err(errno(&rel, libc::EBUSY));
        }
        let mut tree = lock(&self.tree);
        match tree.nodes.get(&rel) {
            Some(Node::Dir(_)) => {}
            Some(Node::File(_)) => return Err(errno(&rel, libc::ENOTDIR)),
            None => return Err(Self::missing(&tree, &rel)),
        }
        if Self::has_children(&tree, &rel) {
            return Err(errno(&rel, libc::ENOTEMPTY));
        }
        // Spool folders of files that were committed or unlinked may be left; they are empty
        // (or hold only empty folders), since every spool file is an entry.
        for d in [self.data.join(&rel), self.meta.join(&rel)] {
            match fs::remove_dir_all(&d) {
                Err(e) if !is_not_found(&e) => return Err(Error::io(&d, e)),
                _ => {}
            }
        }
        tree.nodes.remove(&rel);
        Self::touch_parent(&mut tree, &rel);
        Ok(())
    }

    fn has_children(tree: &Tree, rel: &Path) -> bool {
        tree.nodes
            .range(rel.to_path_buf()..)
            .nth(1)
            .is_some_and(|(k, _)| k.starts_with(rel))
    }

    fn register(&self, node: Arc<FileNode>, file: Option<File>, write: bool, wrote: bool) -> u64 {
        let h = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(
            h,
            Arc::new(Handle {
                node,
                file: file.map_or_else(OnceLock::new, OnceLock::from),
                write,
                wrote: std::sync::atomic::AtomicBool::new(wrote),
            }),
        );
        h
    }

    fn handle(&self, h: u64) -> Result<Arc<Handle>> {
        lock(&self.handles)
            .get(&h)
            .cloned()
            .ok_or_else(|| errno(Path::new("<encode-dir handle>"), libc::EBADF))
    }

    /// The handle's spool file, copying the entry up first if it has none. The caller holds
    /// the entry's io lock.
    fn attach_spool<'h>(&self, handle: &'h Handle) -> Result<&'h File> {
        if let Some(f) = handle.file.get() {
            return Ok(f);
        }
        let copied_up = lock(&handle.node.state).spool;
        if !copied_up {
            self.spool_up(&handle.node, false)?;
        }
        let path = self.data.join(&lock(&handle.node.state).rel);
        let f = OpenOptions::new()
            .read(true)
            .write(handle.write)
            .open(&path)
            .at(&path)?;
        Ok(handle.file.get_or_init(|| f))
    }

    /// Gives every handle of `node` that has no spool file yet its own (see `Handle::file`),
    /// before the entry is detached from its image. The caller holds the entry's io lock.
    fn attach_deferred_handles(&self, node: &Arc<FileNode>) -> Result<()> {
        let deferred: Vec<Arc<Handle>> = lock(&self.handles)
            .values()
            .filter(|h| Arc::ptr_eq(&h.node, node) && h.file.get().is_none())
            .cloned()
            .collect();
        for h in deferred {
            self.attach_spool(&h)?;
        }
        Ok(())
    }

    pub fn create(&self, rel: &Path, mode: u32) -> Result<(u64, EntryAttr)> {
        self.create_as(rel, mode, None)
    }

    /// `create` on behalf of `owner` (uid, gid): the file is theirs when the mount runs as
    /// root (its spool file is chowned, and the commit records them).
    pub fn create_as(
        &self,
        rel: &Path,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<(u64, EntryAttr)> {
        let rel = self.clean_rel(rel)?;
        let mut tree = lock(&self.tree);
        if tree.nodes.contains_key(&rel) {
            return Err(errno(&rel, libc::EEXIST));
        }
        Self::check_parent(&tree, &rel)?;
        let path = self.data.join(&rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).at(parent)?;
        }
        // A meta file without data can only be a leftover; it must not leak into this entry.
        remove_if_exists(&self.meta_path(&rel))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .at(&path)?;
        let (uid, gid) = effective_owner(owner);
        if (uid, gid) != process_owner() {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).at(&path)?;
        }
        // Exact bits, without the process umask (the kernel already applied the caller's),
        // after the chown, which clears set-id bits.
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .at(&path)?;
        let node = Arc::new(FileNode {
            io: Mutex::new(()),
            state: Mutex::new(FileState {
                rel: rel.clone(),
                dirty: true,
                spool: true,
                png: None,
                size: 0,
                mode: mode & 0o7777,
                mtime: SystemTime::now(),
                ctime: SystemTime::now(),
                uid,
                gid,
                xattrs: Map::new(),
                handles: 1,
                detached: false,
                closed: false,
            }),
        });
        tree.nodes.insert(rel.clone(), Node::File(node.clone()));
        Self::touch_parent(&mut tree, &rel);
        drop(tree);
        let attr = self.file_attr(&lock(&node.state))?;
        // Creating is writing: `touch` publishes an empty file at its close.
        Ok((self.register(node, Some(file), true, true), attr))
    }

    pub fn open(&self, rel: &Path, write: bool, truncate: bool) -> Result<Opened> {
        let rel = self.clean_rel(rel)?;
        let node = self.lookup_file(&rel)?;
        let _io = lock(&node.io);
        // The spool file is opened under the same state lock that saw it: a release of the
        // last other handle could otherwise delete it in between.
        let mut st = lock(&node.state);
        if st.detached {
            return Err(errno(&rel, libc::ENOENT));
        }
        if !st.spool {
            if !write {
                return match &st.png {
                    Some(png) => Ok(Opened::Committed(png.clone())),
                    None => Err(errno(&rel, libc::EIO)),
                };
            }
            if !truncate {
                // The copy-up waits for the handle's first use (see `Handle::file`).
                st.handles += 1;
                drop(st);
                return Ok(Opened::Handle(self.register(
                    node.clone(),
                    None,
                    write,
                    false,
                )));
            }
            drop(st);
            // No spool file means no handle either, so nothing but the io lock holder (us)
            // can remove the new spool file before it is opened below.
            self.spool_up(&node, truncate)?;
            st = lock(&node.state);
        }
        let path = self.data.join(&st.rel);
        if write && truncate {
            self.reopen(&mut st)?;
        }
        let opened = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&path)
            .and_then(|f| {
                if write && truncate {
                    f.set_len(0)?;
                }
                Ok(f)
            });
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                self.drop_unused_spool(&mut st);
                return Err(Error::io(&path, e));
            }
        };
        if write && truncate {
            st.dirty = true;
        }
        st.handles += 1;
        drop(st);
        Ok(Opened::Handle(self.register(
            node.clone(),
            Some(file),
            write,
            write && truncate,
        )))
    }

    pub fn read(&self, h: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let handle = self.handle(h)?;
        // Offsets past i64::MAX are refused by the kernel too; checking here keeps the
        // arithmetic below from overflowing.
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(errno(&lock(&handle.node.state).rel, libc::EINVAL));
        }
        let file = match handle.file.get() {
            Some(f) => f,
            None => {
                let _io = lock(&handle.node.io);
                self.attach_spool(&handle)?
            }
        };
        let mut done = 0;
        // FUSE wants a full buffer unless at end of file.
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&lock(&handle.node.state).rel, e)),
            }
        }
        Ok(done)
    }

    pub fn write(&self, h: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let handle = self.handle(h)?;
        if !handle.write {
            return Err(errno(Path::new("<encode-dir handle>"), libc::EBADF));
        }
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(errno(&lock(&handle.node.state).rel, libc::EFBIG));
        }
        let _io = lock(&handle.node.io);
        {
            let mut st = lock(&handle.node.state);
            if !st.detached {
                self.reopen(&mut st)?;
            }
        }
        let file = self.attach_spool(&handle)?;
        handle.wrote.store(true, Ordering::Relaxed);
        crate::failpoint::crash_point("write");
        let written = file.write_all_at(data, offset);
        let mut st = lock(&handle.node.state);
        // Even a failed write may have changed some bytes: the entry needs encoding again.
        if !st.detached {
            st.dirty = true;
        }
        written.map_err(|e| Error::io(&st.rel, e))?;
        Ok(data.len())
    }

    /// Encodes done and failed since the mount, files waiting to be encoded (Spooled), and open
    /// handles: the encode folder's part of `user.pixelrts.stats`.
    pub fn counters(&self) -> EncodeCounters {
        let pending = lock(&self.tree)
            .nodes
            .values()
            .filter(|n| matches!(n, Node::File(f) if lock(&f.state).dirty))
            .count() as u64;
        EncodeCounters {
            done: self.encodes_done.load(Ordering::Relaxed),
            failed: self.encodes_failed.load(Ordering::Relaxed),
            pending,
            open: lock(&self.handles).len() as u64,
        }
    }

    /// A close: publishes the entry if this handle wrote it (see "Commit" in the module doc).
    pub fn flush(&self, h: u64) -> Result<()> {
        let handle = self.handle(h)?;
        if !handle.write || !handle.wrote.load(Ordering::Relaxed) {
            return Ok(());
        }
        crate::failpoint::crash_point("flush");
        {
            let _io = lock(&handle.node.io);
            let file = self.attach_spool(&handle)?;
            let mut st = lock(&handle.node.state);
            if st.dirty && !st.detached && !st.closed {
                // The bytes first, then the record that they are complete.
                file.sync_all().at(&st.rel)?;
                self.store_meta(&st.rel, &st.xattrs, true)?;
                st.closed = true;
            } else if !st.closed {
                // Published by another handle's close already, or unlinked.
                return Ok(());
            }
            // Recorded already: an earlier encode failed (ENOSPC…); try it again.
        }
        crate::failpoint::crash_point("closed");
        self.commit(&handle.node)
    }

    /// Before the first change after a recorded close: the record goes, durably, so a crash
    /// during the change leaves the entry pending instead of publishing a mix of old and new
    /// bytes at the next mount. The caller holds the entry's io lock.
    fn reopen(&self, st: &mut FileState) -> Result<()> {
        if st.closed {
            self.store_meta(&st.rel, &st.xattrs, false)?;
            st.closed = false;
        }
        Ok(())
    }

    /// The attributes of the file a handle has open (`fstat`), and whether it was unlinked
    /// (or replaced) since: its bytes are the handle's spool file either way.
    pub fn handle_attr(&self, h: u64) -> Result<(EntryAttr, bool)> {
        let handle = self.handle(h)?;
        let st = lock(&handle.node.state);
        let Some(file) = handle.file.get() else {
            // Not copied up yet: the entry's own attributes (it cannot be detached: see
            // `attach_deferred_handles`).
            return Ok((self.file_attr(&st)?, st.detached));
        };
        let m = file.metadata().at(&st.rel)?;
        let attr = Self::spool_file_attr(&st, &m, &st.rel)?;
        Ok((attr, st.detached))
    }

    /// Makes the spool bytes durable (not an encode: that is flush's job).
    pub fn fsync(&self, h: u64) -> Result<()> {
        let handle = self.handle(h)?;
        let rel = lock(&handle.node.state).rel.clone();
        let Some(file) = handle.file.get() else {
            // Nothing written through it: the bytes are the committed image's (durable), or a
            // spool file another handle or a truncate made since, synced here by its path.
            let st = lock(&handle.node.state);
            if st.spool && !st.detached {
                let path = self.data.join(&st.rel);
                File::open(&path).and_then(|f| f.sync_all()).at(&path)?;
            }
            return Ok(());
        };
        file.sync_all().at(&rel)?;
        if let Some(parent) = self.data.join(&rel).parent() {
            sync_dir(parent);
        }
        Ok(())
    }

    pub fn release(&self, h: u64) -> Result<()> {
        let handle = lock(&self.handles)
            .remove(&h)
            .ok_or_else(|| errno(Path::new("<encode-dir handle>"), libc::EBADF))?;
        let mut st = lock(&handle.node.state);
        st.handles = st.handles.saturating_sub(1);
        self.drop_unused_spool(&mut st);
        Ok(())
    }

    /// A committed entry's spool copy goes once no handle uses it (also after a copy-up whose
    /// open or truncate then failed, so no stale copy stays behind).
    fn drop_unused_spool(&self, st: &mut FileState) {
        if st.handles == 0 && !st.dirty && st.spool && !st.detached {
            self.drop_spool(st);
        }
    }

    pub fn setattr(
        &self,
        rel: &Path,
        size: Option<u64>,
        mode: Option<u32>,
        mtime: Option<SystemTime>,
    ) -> Result<EntryAttr> {
        let rel = self.clean_rel(rel)?;
        let node = match self.lookup(&rel)? {
            Node::File(f) => f,
            Node::Dir(_) => {
                if size.is_some() {
                    return Err(errno(&rel, libc::EISDIR));
                }
                return self.change_dir(&rel, |d| {
                    if let Some(m) = mode {
                        d.mode = m & 0o7777;
                    }
                    if let Some(t) = mtime {
                        d.mtime = t;
                    }
                });
            }
        };
        let io_guard = lock(&node.io);
        let mut st = lock(&node.state);
        if st.detached {
            return Err(errno(&rel, libc::ENOENT));
        }
        if let Some(size) = size {
            if !st.spool {
                drop(st);
                self.spool_up(&node, size == 0)?;
                st = lock(&node.state);
            }
            self.reopen(&mut st)?;
            let path = self.data.join(&st.rel);
            let truncated = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(size));
            if let Err(e) = truncated {
                self.drop_unused_spool(&mut st);
                return Err(Error::io(&path, e));
            }
            st.dirty = true;
            // A truncate while handles are open (`ftruncate`, or `truncate` beside a writer)
            // is published by their close; without one it stays pending (publishing a
            // truncated file on its own is what this module must never do).
            for h in lock(&self.handles).values() {
                if h.write && Arc::ptr_eq(&h.node, &node) {
                    h.wrote.store(true, Ordering::Relaxed);
                }
            }
        }
        let committed = !st.dirty && st.png.is_some();
        if st.spool && (mode.is_some() || mtime.is_some()) {
            let path = self.data.join(&st.rel);
            apply_attributes(&path, mode, mtime)?;
            // The spool's records survive a crash: mode and times are the spool file's own.
            File::open(&path).and_then(|f| f.sync_all()).at(&path)?;
        }
        if committed && (mode.is_some() || mtime.is_some()) {
            // Not under the state lock: the rewrite copies the whole PNG. The io lock we hold
            // keeps writes, commits and file renames of this entry out meanwhile.
            drop(st);
            let png = self.record_attributes(&node, mode, mtime)?;
            st = lock(&node.state);
            // The PNG file's own attributes too, for whoever looks at SOURCE directly.
            apply_attributes(&png, mode, mtime)?;
            if let Some(m) = mode {
                st.mode = m & 0o7777;
            }
            if let Some(t) = mtime {
                st.mtime = t;
            }
            st.ctime = SystemTime::now();
        }
        drop(st);
        drop(io_guard);
        let st = lock(&node.state);
        self.file_attr(&st)
    }

    /// `chown`: a new owner and/or group (the caller decided it may: the kernel with
    /// `default_permissions`, or the FUSE layer). Spooled files chown their spool file; a
    /// Committed entry's image records the new `file_uid`/`file_gid`.
    pub fn chown(&self, rel: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<EntryAttr> {
        let rel = self.clean_rel(rel)?;
        let node = match self.lookup(&rel)? {
            Node::File(f) => f,
            Node::Dir(_) => {
                return self.change_dir(&rel, |d| {
                    d.uid = uid.unwrap_or(d.uid);
                    d.gid = gid.unwrap_or(d.gid);
                });
            }
        };
        let _io = lock(&node.io);
        let mut st = lock(&node.state);
        if st.detached {
            return Err(errno(&rel, libc::ENOENT));
        }
        if st.spool {
            let path = self.data.join(&st.rel);
            std::os::unix::fs::chown(&path, uid, gid).at(&path)?;
            File::open(&path).and_then(|f| f.sync_all()).at(&path)?;
        }
        if !st.dirty && st.png.is_some() {
            drop(st);
            let update = |m: &mut Map<String, Value>| {
                if let Some(u) = uid {
                    m.insert("file_uid".into(), u.into());
                }
                if let Some(g) = gid {
                    m.insert("file_gid".into(), g.into());
                }
            };
            self.rewrite_committed(&node, update)?;
            st = lock(&node.state);
        }
        st.uid = uid.unwrap_or(st.uid);
        st.gid = gid.unwrap_or(st.gid);
        st.ctime = SystemTime::now();
        self.file_attr(&st)
    }

    /// Rewrites a Committed entry's PNG metadata so `file_mode`/`file_mtime` hold the new
    /// values: the view shows those, and rsync's quick check compares them, so without this
    /// every `rsync -a` would copy the file again. The caller holds the entry's io lock.
    /// Returns where the PNG is now.
    fn record_attributes(
        &self,
        node: &FileNode,
        mode: Option<u32>,
        mtime: Option<SystemTime>,
    ) -> Result<PathBuf> {
        self.rewrite_committed(node, |m: &mut Map<String, Value>| {
            if let Some(mode) = mode {
                m.insert("file_mode".into(), (mode & 0o7777).into());
            }
            if let Some(t) = mtime {
                let (secs, nsec) = unix_time(t);
                m.insert("file_mtime".into(), secs.into());
                m.insert("file_mtime_nsec".into(), nsec.into());
            }
        })
    }

    /// Rewrites a Committed entry's PNG metadata with `update`, wherever a concurrent
    /// directory rename moves the PNG meanwhile. The caller holds the entry's io lock.
    /// Returns where the PNG is now.
    fn rewrite_committed(
        &self,
        node: &FileNode,
        update: impl Fn(&mut Map<String, Value>),
    ) -> Result<PathBuf> {
        // A directory rename takes neither this io lock nor waits for it, so it may move the
        // PNG while it is rewritten; a rewrite that then failed (its folder gone) is tried
        // again at the new place.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let png = {
                let st = lock(&node.state);
                st.png.clone().ok_or_else(|| errno(&st.rel, libc::EIO))?
            };
            let result = format::rewrite::rewrite_metadata(&png, &update);
            let tree = lock(&self.tree);
            let st = lock(&node.state);
            let now = st.png.clone().unwrap_or_else(|| png.clone());
            if now == png {
                return result.map(|()| png);
            }
            if result.is_err() {
                if attempts < 3 {
                    continue;
                }
                return result.map(|()| now);
            }
            if fs::symlink_metadata(&png).is_err() {
                // Nothing at the old name: the rename came after the rewrite and took the new
                // file along, or the rewrite had nothing to change.
                return Ok(now);
            }
            // Moved after the rewrite began: the rewritten copy landed at the old name and
            // replaces the moved one (same pixels, old metadata), as a commit does.
            fs::rename(&png, &now).at(&now)?;
            if let Some(parent) = now.parent() {
                sync_dir(parent);
            }
            // The old folders, emptied now, would linger in the view (rename_dir could not
            // remove them while the temporary file was there).
            let mut dir = png.parent();
            while let Some(d) = dir {
                let in_tree = d
                    .strip_prefix(&self.source)
                    .map_or(true, |rel| tree.nodes.contains_key(rel));
                if in_tree || fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            return Ok(now);
        }
    }

    pub fn unlink(&self, rel: &Path) -> Result<()> {
        let rel = self.clean_rel(rel)?;
        let node = self.lookup_file(&rel)?;
        let _io = lock(&node.io);
        // Open handles keep the bytes of an unlinked file: those not copied up yet need theirs
        // before the image goes.
        self.attach_deferred_handles(&node)?;
        let mut tree = lock(&self.tree);
        match tree.nodes.get(&rel) {
            Some(Node::File(f)) if Arc::ptr_eq(f, &node) => {}
            // Replaced or removed while we waited for the io lock: look again.
            _ => {
                drop(tree);
                drop(_io);
                return self.unlink(&rel);
            }
        }
        let mut st = lock(&node.state);
        if st.spool {
            self.remove_spool(&rel)?;
            st.spool = false;
        }
        st.detached = true;
        drop(st);
        tree.nodes.remove(&rel);
        Self::touch_parent(&mut tree, &rel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn dir() -> (tempfile::TempDir, EncodeDir) {
        let t = tempfile::tempdir().unwrap();
        let source = t.path().join("src");
        fs::create_dir(&source).unwrap();
        let d = EncodeDir::new(
            &source,
            &source.join(".pixelrts-spool"),
            EncodeDirOptions::default(),
        )
        .unwrap();
        (t, d)
    }

    #[test]
    fn unix_time_rounds_down_like_st_mtime() {
        use std::time::{Duration, UNIX_EPOCH};
        let ms = Duration::from_millis;
        assert_eq!(unix_time(UNIX_EPOCH + ms(1_500)), (1, 500_000_000));
        assert_eq!(unix_time(UNIX_EPOCH - ms(1_500)), (-2, 500_000_000));
        assert_eq!(unix_time(UNIX_EPOCH - ms(2_000)), (-2, 0));
        assert_eq!(unix_time(UNIX_EPOCH + ms(1_250)), (1, 250_000_000));
    }

    #[test]
    fn rel_paths_are_checked() {
        let (_t, d) = dir();
        for bad in ["../x", "/x", "a/../b", ".pixelrts-spool/x", ".pixelrtsfoo"] {
            assert_eq!(
                d.clean_rel(Path::new(bad)).unwrap_err().errno(),
                libc::EINVAL,
                "{bad}"
            );
        }
        assert_eq!(d.clean_rel(Path::new("./a/b")).unwrap(), Path::new("a/b"));
        let long = "x".repeat(250);
        assert_eq!(
            d.clean_rel(Path::new(&long)).unwrap_err().errno(),
            libc::ENAMETOOLONG
        );
    }
}
