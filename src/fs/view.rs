//! The decoded, read-only view of SOURCE, without anything FUSE-specific (so it can be tested
//! without a mount).
//!
//! SOURCE's folders are mirrored. A file `NAME.rts.png` that carries PixelRTS metadata appears
//! as `NAME`, sized `data_size`; every other file (sidecars included) is hidden, and so are
//! names starting with `.pixelrts` (the spool, temporary files) and the spool folder wherever
//! it is. When a folder `NAME` and a file `NAME.rts.png` sit side by side, the folder wins.
//!
//! Nothing is cached across calls except what is keyed by a file's identity ([`FileKey`]:
//! device, inode, size, mtime), so a new or replaced PNG shows up at the next lookup or
//! listing:
//! - *probes* (metadata, size, mode, mtime of one PNG), so a listing does not re-read every
//!   PNG's header each time;
//! - *readers*, one [`Reader`] per PNG, sharing one [`TileCache`];
//! - *pins*: for a few seconds after a replaced PNG's new version is first seen, a descriptor
//!   of it, so that an open of the inode a lookup just handed out succeeds even when the name
//!   was replaced again in between (see [`View::open_version`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::cache::{FileKey, TileCache};
use crate::container::Container;
use crate::error::{Error, IoContext, Result};
use crate::reader::{Reader, ReaderOptions};

/// Suffix of the files the view decodes.
pub const SUFFIX: &str = ".rts.png";
/// Names starting with this are never shown (spool, temporary files of the encoder).
pub const HIDDEN_PREFIX: &str = ".pixelrts";
/// Probes kept at most (each holds one file's metadata, 1–2 KiB: at most ~16 MiB; a probe
/// costs an open and a header read to redo).
const MAX_PROBES: usize = 8192;
/// Readers kept open at most while unused; beyond this, unused ones are closed. Each holds a
/// descriptor, its index and decode scratch (a plain PNG's checkpoints: ~33 KiB per MiB).
const MAX_IDLE_READERS: usize = 32;
/// How long a pinned version stays openable. A lookup and the open that follows it (the
/// kernel's retry after ESTALE included) are microseconds to milliseconds apart, seconds under
/// heavy load; a pin keeps a replaced PNG's blocks allocated, so it does not last longer.
const PIN_TTL: Duration = Duration::from_secs(2);
/// Pins kept at most (one per version of a replaced PNG seen within [`PIN_TTL`]).
const MAX_PINS: usize = 32;

/// What a view entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Attributes of a view entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub kind: Kind,
    /// Decoded size for files; 0 for folders.
    pub size: u64,
    /// Permission bits (never write bits).
    pub mode: u32,
    pub mtime: SystemTime,
    /// The status-change time of the underlying file or folder.
    pub ctime: SystemTime,
    /// Owner and group recorded by the encoder (`file_uid`, `file_gid`); None: the mount's.
    pub owner: Option<(u32, u32)>,
}

/// What the view knows about one PNG, valid while its [`FileKey`] is unchanged.
#[derive(Debug)]
pub struct Probe {
    pub key: FileKey,
    pub attr: Attr,
    /// The metadata as shown to users (a code-mode payload appears by its length only).
    pub metadata: Map<String, Value>,
}

/// One entry of the view.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A mirrored folder: its path in SOURCE.
    Dir { path: PathBuf, attr: Attr },
    /// A decoded file: the PNG it comes from.
    File { png: PathBuf, probe: Arc<Probe> },
}

impl Entry {
    pub fn attr(&self) -> Attr {
        match self {
            Entry::Dir { attr, .. } => *attr,
            Entry::File { probe, .. } => probe.attr,
        }
    }
    pub fn kind(&self) -> Kind {
        self.attr().kind
    }
    /// The version of a decoded file (None for a folder).
    pub fn version(&self) -> Option<&Arc<Probe>> {
        match self {
            Entry::Dir { .. } => None,
            Entry::File { probe, .. } => Some(probe),
        }
    }
}

/// How to build a [`View`].
#[derive(Clone, Debug, Default)]
pub struct ViewOptions {
    /// The shared tile cache and where checkpoint indexes of plain PNGs go.
    pub reader: ReaderOptions,
    /// A top-level name reserved for the encode directory (hidden from the view).
    pub reserved_root_name: Option<OsString>,
    /// Paths in SOURCE never shown (the spool folder when it lives inside SOURCE).
    pub hidden_paths: Vec<PathBuf>,
}

struct ReaderSlot {
    reader: Arc<Reader>,
}

/// A descriptor of one version of a PNG, kept for [`PIN_TTL`] after it was first probed.
struct Pin {
    key: FileKey,
    file: File,
    since: Instant,
}

/// The decoded view of one SOURCE folder. `Send + Sync`; every method takes `&self`.
pub struct View {
    source: PathBuf,
    opts: ViewOptions,
    probes: Mutex<HashMap<PathBuf, Arc<Probe>>>,
    readers: Mutex<HashMap<PathBuf, ReaderSlot>>,
    /// Oldest first.
    pins: Mutex<VecDeque<Pin>>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked: keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno_error(path: &Path, errno: i32) -> Error {
    Error::io(path, std::io::Error::from_raw_os_error(errno))
}

/// `stat` times as `SystemTime` (pre-1970 times included).
pub fn system_time(secs: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsec)
    }
}

fn key_of(m: &Metadata) -> FileKey {
    FileKey {
        dev: m.dev(),
        ino: m.ino(),
        size: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    }
}

/// The view name of a PNG file name: `NAME.rts.png` → `NAME` (None for other names).
pub fn decoded_name(png_name: &OsStr) -> Option<&OsStr> {
    let b = png_name.as_bytes();
    let stem = b.strip_suffix(SUFFIX.as_bytes())?;
    if stem.is_empty() || stem == b"." || stem == b".." {
        return None;
    }
    Some(OsStr::from_bytes(stem))
}

/// True for names the view never shows.
pub fn is_hidden_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(HIDDEN_PREFIX.as_bytes())
}

/// A relative path with only normal components (no `..`, no root): what the FUSE layer hands
/// over. Anything else is refused rather than resolved, so nothing outside SOURCE is reached.
fn check_rel(rel: &Path) -> Result<()> {
    if rel.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{}: not a plain relative path",
            rel.display()
        )))
    }
}

impl View {
    pub fn new(source: &Path, opts: ViewOptions) -> Self {
        View {
            source: source.to_path_buf(),
            opts,
            probes: Mutex::new(HashMap::new()),
            readers: Mutex::new(HashMap::new()),
            pins: Mutex::new(VecDeque::new()),
        }
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The cache every reader of this view shares.
    pub fn cache(&self) -> &Arc<TileCache> {
        &self.opts.reader.cache
    }

    fn is_reserved_root(&self, rel_dir: &Path, name: &OsStr) -> bool {
        rel_dir.as_os_str().is_empty() && self.opts.reserved_root_name.as_deref() == Some(name)
    }

    fn is_hidden_path(&self, path: &Path) -> bool {
        self.opts.hidden_paths.iter().any(|h| h == path)
    }

    fn dir_attr(m: &Metadata) -> Attr {
        Attr {
            kind: Kind::Dir,
            size: 0,
            mode: 0o555,
            mtime: system_time(m.mtime(), m.mtime_nsec()),
            ctime: system_time(m.ctime(), m.ctime_nsec()),
            owner: None,
        }
    }

    /// The entry at `rel` (relative to SOURCE; empty for the root).
    pub fn entry(&self, rel: &Path) -> Result<Entry> {
        check_rel(rel)?;
        match (rel.parent(), rel.file_name()) {
            (Some(parent), Some(name)) => self.lookup(parent, name),
            _ => {
                let m = std::fs::metadata(&self.source).at(&self.source)?;
                Ok(Entry::Dir {
                    path: self.source.clone(),
                    attr: Self::dir_attr(&m),
                })
            }
        }
    }

    /// Looks `name` up in the view folder `rel_dir`: a folder wins over `name.rts.png`.
    pub fn lookup(&self, rel_dir: &Path, name: &OsStr) -> Result<Entry> {
        check_rel(rel_dir)?;
        // Pins of versions nobody opened go when the mount is next used.
        Self::expire(&mut lock(&self.pins));
        let dir = self.source.join(rel_dir);
        let shown = dir.join(name);
        if name.is_empty()
            || name.as_bytes().contains(&b'/')
            || name == "."
            || name == ".."
            || is_hidden_name(name)
            || self.is_reserved_root(rel_dir, name)
            || self.is_hidden_path(&shown)
        {
            return Err(errno_error(&shown, libc::ENOENT));
        }
        // The parent must be a folder of the view (ENOTDIR/ENOENT otherwise).
        let dm = std::fs::metadata(&dir).at(&dir)?;
        if !dm.is_dir() {
            return Err(errno_error(&dir, libc::ENOTDIR));
        }
        match std::fs::metadata(&shown) {
            Ok(m) if m.is_dir() => {
                return Ok(Entry::Dir {
                    path: shown,
                    attr: Self::dir_attr(&m),
                })
            }
            _ => {}
        }
        let mut png_name = name.to_os_string();
        png_name.push(SUFFIX);
        let png = dir.join(png_name);
        match std::fs::metadata(&png) {
            Ok(m) if m.is_file() => {}
            _ => {
                // Gone: so are what was kept for it (memory, and an idle reader's descriptor
                // that would keep a deleted PNG's blocks allocated).
                lock(&self.probes).remove(&png);
                lock(&self.readers).remove(&png);
                return Err(errno_error(&shown, libc::ENOENT));
            }
        }
        // A PNG the codec cannot read is left out of listings, so it is absent here too
        // (the reason is logged).
        match self.probe(&png) {
            Ok(probe) => Ok(Entry::File { png, probe }),
            Err(e) => {
                tracing::warn!("left out of the view: {e}");
                Err(errno_error(&shown, libc::ENOENT))
            }
        }
    }

    /// The entries of the view folder `rel_dir`, sorted by name. PNGs that cannot be read are
    /// left out (and logged); only a folder that cannot be read at all is an error.
    pub fn list(&self, rel_dir: &Path) -> Result<Vec<(OsString, Entry)>> {
        check_rel(rel_dir)?;
        let dir = self.source.join(rel_dir);
        let mut dirs: BTreeMap<OsString, Entry> = BTreeMap::new();
        let mut pngs: Vec<(OsString, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(&dir).at(&dir)? {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!("{}: reading the folder: {e}", dir.display());
                    continue;
                }
            };
            let name = item.file_name();
            let path = item.path();
            if is_hidden_name(&name)
                || self.is_reserved_root(rel_dir, &name)
                || self.is_hidden_path(&path)
            {
                continue;
            }
            // Follow symlinks: a link to a folder or PNG is shown like its target.
            let m = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("{}: skipped: {e}", path.display());
                    continue;
                }
            };
            if m.is_dir() {
                dirs.insert(
                    name,
                    Entry::Dir {
                        attr: Self::dir_attr(&m),
                        path,
                    },
                );
            } else if m.is_file() {
                if let Some(shown) = decoded_name(&name) {
                    pngs.push((shown.to_os_string(), path));
                }
            }
        }
        let mut out = dirs;
        for (shown, png) in pngs {
            if out.contains_key(&shown) {
                tracing::warn!(
                    "{}: hidden, the folder {} has the same name",
                    png.display(),
                    dir.join(&shown).display()
                );
                continue;
            }
            if self.is_reserved_root(rel_dir, &shown) {
                tracing::warn!(
                    "{}: hidden, its name is the encode directory's",
                    png.display()
                );
                continue;
            }
            match self.probe(&png) {
                Ok(probe) => {
                    out.insert(shown, Entry::File { png, probe });
                }
                Err(e) => tracing::warn!("left out of the view: {e}"),
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Size, mode, mtime and metadata of a PNG; re-read only when its identity changed.
    pub fn probe(&self, png: &Path) -> Result<Arc<Probe>> {
        let m = std::fs::metadata(png).at(png)?;
        let key = key_of(&m);
        let replaced = match lock(&self.probes).get(png) {
            Some(p) if p.key == key => return Ok(p.clone()),
            Some(_) => true,
            None => false,
        };
        let c = Container::open(png)?;
        // The identity of what was actually parsed (the file may have been replaced since
        // the stat above; then the next probe simply reads it again).
        let m = c.file.metadata().at(png)?;
        let key = key_of(&m);
        let md = &c.metadata;
        let mode = md
            .map
            .get("file_mode")
            .and_then(Value::as_u64)
            .map(|mode| (mode as u32) & 0o555)
            .unwrap_or(0o444);
        let nsec = md
            .map
            .get("file_mtime_nsec")
            .and_then(Value::as_i64)
            .filter(|n| (0..1_000_000_000).contains(n))
            .unwrap_or(0);
        let mtime = match md.map.get("file_mtime") {
            Some(v) if v.is_i64() => system_time(v.as_i64().unwrap_or(0), nsec),
            Some(v) if v.is_f64() => {
                let f = v.as_f64().unwrap_or(0.0);
                if f.is_finite() && f.abs() < 1e15 {
                    system_time(f.floor() as i64, ((f - f.floor()) * 1e9) as i64)
                } else {
                    system_time(m.mtime(), m.mtime_nsec())
                }
            }
            _ => system_time(m.mtime(), m.mtime_nsec()),
        };
        let probe = Arc::new(Probe {
            key,
            attr: Attr {
                kind: Kind::File,
                size: md.data_size,
                mode,
                mtime,
                ctime: system_time(m.ctime(), m.ctime_nsec()),
                owner: recorded_owner(&md.map),
            },
            metadata: md.display_map(),
        });
        if replaced {
            self.pin(key, c.file);
        }
        let mut probes = lock(&self.probes);
        if probes.len() >= MAX_PROBES {
            // Probes are cheap to redo; a bound keeps a huge SOURCE from growing the map forever.
            probes.clear();
        }
        probes.insert(png.to_path_buf(), probe.clone());
        Ok(probe)
    }

    /// A reader for `png`, and whether the kernel may keep its cached pages: true only when
    /// the PNG is the very file (same [`FileKey`]) the previous open of it saw.
    pub fn open_reader(&self, png: &Path) -> Result<(Arc<Reader>, bool)> {
        let key = key_of(&std::fs::metadata(png).at(png)?);
        self.reader_of_key(png, key)
    }

    /// A reader of exactly `version` of `png`: the shared one while the name holds it, else
    /// one over the descriptor pinned when that version was first seen. A local filesystem
    /// opens the file its lookup found even when the name was replaced since. The mount's
    /// retry records (`StaleOpens` in filesystem.rs) keep the version a retried open's lookup
    /// found; a pin also covers a version replaced between being probed and being opened
    /// there. ESTALE when neither holds the version any more.
    pub fn open_version(&self, png: &Path, version: &Probe) -> Result<Arc<Reader>> {
        if let Ok(m) = std::fs::metadata(png) {
            if key_of(&m) == version.key {
                let (reader, _) = self.reader_of_key(png, version.key)?;
                if reader.file_key() == version.key {
                    return Ok(reader);
                }
            }
        }
        let Some(file) = self.pinned(version.key) else {
            return Err(errno_error(png, libc::ESTALE));
        };
        self.reader_of_file(png, file)
    }

    /// A descriptor of `png` if it still is `version` (None: replaced meanwhile, or gone).
    pub fn open_exact(&self, png: &Path, version: &Probe) -> Option<File> {
        let file = File::open(png).ok()?;
        (FileKey::of(&file).ok()? == version.key).then_some(file)
    }

    /// A reader of the version `file` holds (not shared: the name may hold another by now).
    pub fn reader_of_file(&self, png: &Path, file: File) -> Result<Arc<Reader>> {
        let c = Container::from_file(file, png)?;
        Ok(Arc::new(Reader::from_container(c, &self.opts.reader)?))
    }

    /// Keeps a descriptor of `file` (version `key`) for [`PIN_TTL`].
    fn pin(&self, key: FileKey, file: File) {
        let mut pins = lock(&self.pins);
        Self::expire(&mut pins);
        if pins.iter().any(|p| p.key == key) {
            return;
        }
        if pins.len() >= MAX_PINS {
            pins.pop_front();
        }
        pins.push_back(Pin {
            key,
            file,
            since: Instant::now(),
        });
    }

    /// The pinned descriptor of version `key`, when it is still kept (a duplicate of it, so
    /// closing it later does not disturb a reader).
    fn pinned(&self, key: FileKey) -> Option<File> {
        let mut pins = lock(&self.pins);
        Self::expire(&mut pins);
        pins.iter()
            .find(|p| p.key == key)
            .and_then(|p| p.file.try_clone().ok())
    }

    fn expire(pins: &mut VecDeque<Pin>) {
        while pins.front().is_some_and(|p| p.since.elapsed() > PIN_TTL) {
            pins.pop_front();
        }
    }

    /// The shared reader of `png` when it is version `key`, else a new one (which becomes
    /// the shared one), and whether the kernel may keep its cached pages.
    fn reader_of_key(&self, png: &Path, key: FileKey) -> Result<(Arc<Reader>, bool)> {
        {
            let readers = lock(&self.readers);
            if let Some(slot) = readers.get(png) {
                if slot.reader.file_key() == key {
                    return Ok((slot.reader.clone(), true));
                }
            }
        }
        // Opening reads the header and index: done without the lock so other files stay
        // available meanwhile.
        let reader = Arc::new(Reader::open(png, &self.opts.reader)?);
        let mut readers = lock(&self.readers);
        if readers.len() >= MAX_IDLE_READERS {
            readers.retain(|_, s| Arc::strong_count(&s.reader) > 1);
        }
        readers.insert(
            png.to_path_buf(),
            ReaderSlot {
                reader: reader.clone(),
            },
        );
        Ok((reader, false))
    }
}

/// `file_uid` and `file_gid` as recorded, when both are there and fit.
fn recorded_owner(map: &serde_json::Map<String, Value>) -> Option<(u32, u32)> {
    let id = |k: &str| {
        map.get(k)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    Some((id("file_uid")?, id("file_gid")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{encode_file, EncodeOptions};

    fn encode(src: &Path, data: &[u8], png: &Path, opts: &EncodeOptions) {
        std::fs::write(src, data).unwrap();
        encode_file(src, png, opts).unwrap();
    }

    fn view(dir: &Path) -> View {
        View::new(
            dir,
            ViewOptions {
                reserved_root_name: Some("encode".into()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn names() {
        assert_eq!(decoded_name(OsStr::new("a.rts.png")), Some(OsStr::new("a")));
        assert_eq!(decoded_name(OsStr::new(".rts.png")), None);
        assert_eq!(decoded_name(OsStr::new("..rts.png")), None);
        assert_eq!(decoded_name(OsStr::new("a.png")), None);
        assert!(is_hidden_name(OsStr::new(".pixelrts-spool")));
        assert!(!is_hidden_name(OsStr::new(".hidden")));
    }

    #[test]
    fn mirrors_decodes_and_hides() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let src = tmp.path();
        std::fs::create_dir(src.join("sub")).unwrap();
        std::fs::create_dir(src.join(".pixelrts-spool")).unwrap();
        let data = b"hello, view".to_vec();
        let opts = EncodeOptions {
            sidecar: true,
            ..Default::default()
        };
        encode(&work.path().join("a"), &data, &src.join("a.rts.png"), &opts);
        encode(
            &work.path().join("b"),
            b"bb",
            &src.join("sub/b.rts.png"),
            &opts,
        );
        // A folder and a PNG with the same view name: the folder wins.
        std::fs::create_dir(src.join("dup")).unwrap();
        encode(
            &work.path().join("d"),
            b"d",
            &src.join("dup.rts.png"),
            &opts,
        );
        std::fs::write(src.join("junk.rts.png"), b"not a png").unwrap();
        std::fs::write(src.join("plain.txt"), b"x").unwrap();
        std::fs::create_dir(src.join("encode")).unwrap();

        let v = view(src);
        let names: Vec<String> = v
            .list(Path::new(""))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a", "dup", "sub"]);
        let a = v.lookup(Path::new(""), OsStr::new("a")).unwrap();
        assert_eq!(a.attr().size, data.len() as u64);
        assert_eq!(a.kind(), Kind::File);
        assert_eq!(a.attr().mode & 0o222, 0);
        assert_eq!(v.entry(Path::new("dup")).unwrap().kind(), Kind::Dir);
        assert_eq!(v.entry(Path::new("sub/b")).unwrap().attr().size, 2);
        for missing in [
            "junk",
            "plain.txt",
            "a.rts.png",
            "encode",
            ".pixelrts-spool",
        ] {
            let e = v.lookup(Path::new(""), OsStr::new(missing)).unwrap_err();
            assert_eq!(e.errno(), libc::ENOENT, "{missing}");
        }
        assert!(v.entry(Path::new("../etc")).is_err());
        assert_eq!(
            v.lookup(Path::new("a"), OsStr::new("x"))
                .unwrap_err()
                .errno(),
            libc::ENOENT
        );

        let Entry::File { png, .. } = a else { panic!() };
        let (r, keep) = v.open_reader(&png).unwrap();
        assert!(!keep);
        let mut buf = vec![0u8; 64];
        let n = r.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[..n], &data[..]);
        let (_, keep) = v.open_reader(&png).unwrap();
        assert!(keep, "unchanged file keeps the page cache");

        // Replace the PNG: new size shows, and the cache is not kept.
        std::thread::sleep(Duration::from_millis(20));
        let opts = EncodeOptions {
            overwrite: true,
            ..opts
        };
        encode(&work.path().join("a"), b"new content!!", &png, &opts);
        let a = v.lookup(Path::new(""), OsStr::new("a")).unwrap();
        assert_eq!(a.attr().size, 13);
        let (r, keep) = v.open_reader(&png).unwrap();
        assert!(!keep);
        let n = r.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"new content!!");
    }

    #[test]
    fn a_replaced_version_stays_openable_by_its_inode_for_a_while() {
        // The soak's ESTALE (see `open_version`): the version a lookup found must open even
        // when the name was replaced again before the open.
        let tmp = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let src = tmp.path();
        let png = src.join("f.rts.png");
        let replace = |tag: &str, data: &[u8]| {
            let staged = work.path().join(format!("{tag}.rts.png"));
            encode(
                &work.path().join(tag),
                data,
                &staged,
                &EncodeOptions::default(),
            );
            std::fs::rename(&staged, &png).unwrap();
        };
        let read_all = |r: &Reader| {
            let mut buf = vec![0u8; r.len() as usize];
            r.read_exact_at(0, &mut buf).unwrap();
            buf
        };
        replace("one", b"version one");
        let v = view(src);
        let first = v.probe(&png).unwrap();
        replace("two", b"version two!");
        let second = v.probe(&png).unwrap();
        replace("three", b"version three");
        let third = v.probe(&png).unwrap();
        assert_ne!(second.key, third.key);

        // The name holds the third version; the second is served from its pin.
        assert_eq!(
            read_all(&v.open_version(&png, &second).unwrap()),
            b"version two!"
        );
        assert_eq!(
            read_all(&v.open_version(&png, &third).unwrap()),
            b"version three"
        );
        // The first version was seen before any replace, so nothing kept it: ESTALE, and the
        // kernel looks the name up again.
        let e = v.open_version(&png, &first).err().unwrap();
        assert_eq!(e.errno(), libc::ESTALE, "{e}");
        // Pins last a while only: a replaced PNG's blocks are not kept allocated.
        lock(&v.pins).front_mut().unwrap().since -= PIN_TTL + Duration::from_secs(1);
        lock(&v.pins).back_mut().unwrap().since -= PIN_TTL + Duration::from_secs(1);
        let e = v.open_version(&png, &second).err().unwrap();
        assert_eq!(e.errno(), libc::ESTALE, "{e}");
        assert!(lock(&v.pins).is_empty());
    }

    #[test]
    fn recorded_mode_and_mtime() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        std::fs::write(&input, b"x").unwrap();
        std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o751)).unwrap();
        let png = tmp.path().join("out.rts.png");
        encode_file(
            &input,
            &png,
            &EncodeOptions {
                sidecar: false,
                record_file_attributes: true,
                ..Default::default()
            },
        )
        .unwrap();
        let in_mtime = std::fs::metadata(&input).unwrap().modified().unwrap();
        let p = view(tmp.path()).probe(&png).unwrap();
        assert_eq!(p.attr.mode, 0o551);
        assert_eq!(p.attr.mtime, in_mtime, "to the nanosecond");
    }
}
