//! `pixelrts mount`: SOURCE's `.rts.png` files as their decoded contents, plus an encode
//! directory whose files become `.rts.png` files in SOURCE when closed.
//!
//! - [`MountOptions`]: the `-o` options, parsed with clear errors.
//! - [`validate`]: SOURCE, MOUNTPOINT, the encode directory name and the spool, checked before
//!   anything is mounted.
//! - [`mount`]: builds the [`view::View`], opens the encode directory (encoding pending spool
//!   files first) and mounts [`fuse::PixelFs`] with `fuser`. The filesystem itself is
//!   `filesystem.rs` (handles, routing to the view or the encode directory, errno) over
//!   `inodes.rs` (the inode table); `fuse.rs` only turns requests into its calls and its
//!   answers into replies.
//! - [`unmount`]: what `pixelrts umount` and the signal handler use.

pub mod encode_dir;
mod filesystem;
pub mod fuse;
mod inodes;
pub mod stats;
pub mod view;
pub mod xattr;

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::cache::TileCache;
use crate::gpu::GpuMode;
use crate::reader::ReaderOptions;

/// Default name of the encode directory.
pub const DEFAULT_ENCODE_DIR: &str = "encode";
/// Default spool folder, inside SOURCE.
pub const DEFAULT_SPOOL: &str = ".pixelrts-spool";
/// Default FUSE worker threads.
pub const DEFAULT_THREADS: usize = 4;
/// Kernel readahead for the mount: large sequential reads decode many tiles in parallel.
pub const READAHEAD_KIB: u32 = 1024;
/// Most FUSE worker threads accepted.
pub const MAX_THREADS: usize = 256;

/// Errors of mounting, before and while the filesystem is attached.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A `-o` option that is unknown or has a bad value.
    #[error("option {option:?}: {reason}")]
    Option { option: String, reason: String },
    /// SOURCE is missing or not a folder.
    #[error("SOURCE {}: {reason}", path.display())]
    Source { path: PathBuf, reason: String },
    /// MOUNTPOINT is missing, not a folder, or busy.
    #[error("MOUNTPOINT {}: {reason}", path.display())]
    MountPoint { path: PathBuf, reason: String },
    /// SOURCE has a real entry named like the encode directory.
    #[error("{}: SOURCE already has an entry named like the encode directory {name:?}; rename it, or choose another name with -o encode_dir=NAME (or mount with -o ro)", path.display())]
    Collision { path: PathBuf, name: String },
    /// The spool folder cannot be used.
    #[error("spool {}: {reason}", path.display())]
    Spool { path: PathBuf, reason: String },
    /// `gpu=on` without a usable GPU, or an error of the codec (encoding pending files).
    #[error(transparent)]
    Codec(#[from] crate::Error),
    /// The kernel or fusermount3 refused the mount.
    #[error("cannot mount {} on {}: {source}", source_dir.display(), mountpoint.display())]
    Mount {
        source_dir: PathBuf,
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn opt_err(option: &str, reason: impl Into<String>) -> MountError {
    MountError::Option {
        option: option.to_string(),
        reason: reason.into(),
    }
}

/// The mount options (`-o a,b=c`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// `ro`: no encode directory; the whole mount is read-only.
    pub read_only: bool,
    /// `allow_other`: other users may access the mount.
    pub allow_other: bool,
    /// `allow_root`: root may access the mount too.
    pub allow_root: bool,
    /// `auto_unmount`: fusermount3 unmounts when the process dies.
    pub auto_unmount: bool,
    /// `default_permissions`: the kernel checks mode bits.
    pub default_permissions: bool,
    /// `encode_dir=NAME`.
    pub encode_dir: String,
    /// `cache_size=SIZE`: bytes of decoded tiles kept in memory.
    pub cache_size: u64,
    /// `spool=PATH` (default `SOURCE/.pixelrts-spool`).
    pub spool: Option<PathBuf>,
    /// `disk_cache=DIR`: decoded compressed segments kept on disk between mounts.
    pub disk_cache: Option<PathBuf>,
    /// `disk_cache_size=SIZE`: the most disk those take.
    pub disk_cache_size: u64,
    /// `threads=N`: FUSE worker threads (default 4), also the encoder's threads when set.
    pub threads: Option<usize>,
    /// `gpu=auto|on|off`, for encoding.
    pub gpu: GpuMode,
    /// `compress=auto|zlib|none`, for encoding (as `encode --compress`).
    pub compress: crate::encode::compressed::CompressMode,
    /// `fsname=NAME` (default: SOURCE).
    pub fsname: Option<String>,
    /// `subtype=NAME` (default `pixelrts`).
    pub subtype: String,
    /// Kernel options passed through as they are (`noatime`, `max_read=N`, ...).
    pub passthrough: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            allow_other: false,
            allow_root: false,
            auto_unmount: false,
            default_permissions: false,
            encode_dir: DEFAULT_ENCODE_DIR.to_string(),
            cache_size: crate::cache::DEFAULT_BUDGET,
            spool: None,
            disk_cache: None,
            disk_cache_size: crate::reader::disk_cache::DEFAULT_DISK_BUDGET,
            threads: None,
            gpu: GpuMode::Auto,
            compress: Default::default(),
            fsname: None,
            subtype: "pixelrts".to_string(),
            passthrough: Vec::new(),
        }
    }
}

/// Every `-o` option with what it does: the one list `pixelrts mount --help`, the
/// mount.fuse.pixelrts(8) man page and the unknown-option error are made from.
pub const OPTION_DOCS: &[(&str, &str)] = &[
    ("ro", "Read-only: no encode directory, nothing is written to SOURCE."),
    ("allow_other", "Let other users use the mount (for a user other than root, needs user_allow_other in /etc/fuse.conf)."),
    ("allow_root", "Let root use the mount too."),
    ("auto_unmount", "Unmount when the mount process ends, even if it is killed."),
    ("default_permissions", "Let the kernel check permissions against the files' modes."),
    ("encode_dir=NAME", "Name of the folder whose files are encoded into SOURCE when closed (default encode)."),
    ("cache_size=SIZE", "Decoded bytes kept in memory, with a K, M or G suffix (default 256M)."),
    ("disk_cache=DIR", "Keep the compressed segments reads decode in DIR (created 0700; must be yours and writable by nobody else) for later reads and mounts: a cold read of one then costs one disk read instead of ~100 plus an inflate. Off by default."),
    ("disk_cache_size=SIZE", "Most disk the disk_cache files take, with a K, M or G suffix (default 4G); the least recently written go first."),
    ("spool=PATH", "Where files written into the encode folder are held until encoded (default SOURCE/.pixelrts-spool)."),
    ("threads=N", "Threads serving FUSE requests (default 4, at most 256)."),
    ("gpu=auto|on|off", "GPU use for encodes: auto (only where present and measured to win), on (fail to mount without a usable GPU), off."),
    ("compress=auto|zlib|none", "Payload of files encoded through the encode folder: auto (compress when a sample shows it pays), zlib, none."),
    ("fsname=NAME", "The source shown in the mount table (default SOURCE)."),
    ("subtype=NAME", "The type shown as fuse.NAME in the mount table (default pixelrts)."),
    ("max_read=N", "Largest read request the kernel sends, with a K or M suffix."),
    ("noatime, atime, relatime, strictatime, nodiratime, dirsync, sync, async", "Passed to the kernel."),
    ("rw, defaults, auto, noauto, user, nouser, users, nofail, _netdev, dev, nodev, suid, nosuid, exec, noexec, x-systemd.*, comment=*", "mount(8) and fstab options: accepted and ignored."),
];

/// Options mount(8) or fstab add that mean nothing to this filesystem.
fn is_ignored(name: &str) -> bool {
    matches!(
        name,
        "rw" | "dev"
            | "nodev"
            | "suid"
            | "nosuid"
            | "exec"
            | "noexec"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "_netdev"
            | "nofail"
            | "defaults"
            | "comment"
    ) || name.starts_with("x-systemd.")
        || name.starts_with("comment=")
}

/// Parses a size: bytes, or with a K/M/G/T suffix (powers of 1024; `KiB`, `KB`, `k` work).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "{text:?} is not a size (expected e.g. 256M, 1G, 65536)"
        ));
    }
    let n: u64 = num.parse().map_err(|_| format!("{text:?} is too large"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use K, M, G or T)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl MountOptions {
    /// Parses option groups as given to `-o` (each a comma-separated list; later ones win).
    pub fn parse<S: AsRef<str>>(groups: &[S]) -> Result<Self, MountError> {
        let mut o = MountOptions::default();
        for g in groups {
            for opt in g.as_ref().split(',') {
                o.apply(opt.trim())?;
            }
        }
        Ok(o)
    }

    /// Applies one option.
    pub fn apply(&mut self, opt: &str) -> Result<(), MountError> {
        if opt.is_empty() || is_ignored(opt) {
            return Ok(());
        }
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        let need = |v: Option<&str>| -> Result<String, MountError> {
            match v {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(opt_err(opt, format!("{name} needs a value: {name}=..."))),
            }
        };
        let flag = |v: Option<&str>| -> Result<(), MountError> {
            match v {
                None => Ok(()),
                Some(_) => Err(opt_err(opt, format!("{name} takes no value"))),
            }
        };
        match name {
            "ro" => {
                flag(value)?;
                self.read_only = true
            }
            "allow_other" => {
                flag(value)?;
                self.allow_other = true
            }
            "allow_root" => {
                flag(value)?;
                self.allow_root = true
            }
            "auto_unmount" => {
                flag(value)?;
                self.auto_unmount = true
            }
            "default_permissions" => {
                flag(value)?;
                self.default_permissions = true
            }
            "noatime" | "atime" | "relatime" | "strictatime" | "nodiratime" | "dirsync"
            | "sync" | "async" => {
                flag(value)?;
                self.passthrough.push(name.to_string())
            }
            "max_read" => {
                let v = need(value)?;
                let n = parse_size(&v).map_err(|e| opt_err(opt, e))?;
                if n == 0 || n > u64::from(u32::MAX) {
                    return Err(opt_err(opt, "max_read must be between 1 and 4G"));
                }
                self.passthrough.push(format!("max_read={n}"))
            }
            "encode_dir" => {
                let v = need(value)?;
                check_encode_dir_name(&v).map_err(|e| opt_err(opt, e))?;
                self.encode_dir = v
            }
            "cache_size" => {
                let v = need(value)?;
                self.cache_size = parse_size(&v).map_err(|e| opt_err(opt, e))?
            }
            "spool" => self.spool = Some(PathBuf::from(need(value)?)),
            "disk_cache" => {
                let v = need(value)?;
                let dir = std::path::absolute(&v).map_err(|e| opt_err(opt, e.to_string()))?;
                self.disk_cache = Some(dir)
            }
            "disk_cache_size" => {
                let v = need(value)?;
                self.disk_cache_size = parse_size(&v).map_err(|e| opt_err(opt, e))?
            }
            "threads" => {
                let v = need(value)?;
                let n: usize = v
                    .parse()
                    .map_err(|_| opt_err(opt, format!("{v:?} is not a number")))?;
                if n == 0 || n > MAX_THREADS {
                    return Err(opt_err(
                        opt,
                        format!("threads must be between 1 and {MAX_THREADS}"),
                    ));
                }
                self.threads = Some(n)
            }
            "gpu" => {
                let v = need(value)?;
                self.gpu = v.parse().map_err(|e: String| opt_err(opt, e))?
            }
            "compress" => {
                let v = need(value)?;
                self.compress = v.parse().map_err(|e: String| opt_err(opt, e))?
            }
            "fsname" => self.fsname = Some(need(value)?),
            "subtype" => self.subtype = need(value)?,
            _ => {
                let known: Vec<&str> = OPTION_DOCS[..OPTION_DOCS.len() - 1]
                    .iter()
                    .map(|(name, _)| *name)
                    .collect();
                return Err(opt_err(
                    opt,
                    format!(
                        "unknown option (known: {}, and mount(8)'s generic ones)",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// FUSE worker threads to run.
    pub fn fuse_threads(&self) -> usize {
        self.threads.unwrap_or(DEFAULT_THREADS)
    }
}

fn check_encode_dir_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!("{name:?} is not a plain file name"));
    }
    if view::is_hidden_name(OsStr::new(name)) {
        return Err(format!(
            "{name:?} starts with {:?}, which the view hides",
            view::HIDDEN_PREFIX
        ));
    }
    if view::decoded_name(OsStr::new(name)).is_some() {
        return Err(format!("{name:?} ends with {:?}", view::SUFFIX));
    }
    Ok(())
}

/// SOURCE, MOUNTPOINT and spool after [`validate`]: absolute and canonical.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    /// None with `ro`.
    pub spool: Option<PathBuf>,
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted filesystem.
    pub device: String,
    pub mountpoint: PathBuf,
    pub fstype: String,
}

/// The mount table of this process's namespace, in mount order.
pub fn mount_table() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let device = fields.get(2)?;
            let mp = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(sep + 1)?;
            Some(MountEntry {
                device: device.to_string(),
                mountpoint: PathBuf::from(unescape_mountinfo(mp)),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// Raises the kernel readahead of the FUSE mount at `mountpoint` to `kib`. The FUSE INIT reply
/// cannot ask for more than the kernel offers (128 KiB by default); the mount's backing-device
/// setting can, for root. Best effort: without permission the default stays.
fn raise_readahead(mountpoint: &Path, kib: u32) {
    let Some(entry) = mount_table()
        .into_iter()
        .rev()
        .find(|e| e.mountpoint == mountpoint)
    else {
        return;
    };
    let knob = PathBuf::from(format!("/sys/class/bdi/{}/read_ahead_kb", entry.device));
    match std::fs::write(&knob, kib.to_string()) {
        Ok(()) => tracing::debug!("{}: readahead {kib} KiB", mountpoint.display()),
        Err(e) => tracing::debug!("{}: readahead unchanged: {e}", knob.display()),
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsStr::from_bytes(&out).to_os_string()
}

/// The filesystem type mounted exactly at `path`, if something is.
pub fn mounted_at(path: &Path) -> Option<String> {
    mount_table()
        .into_iter()
        .rev()
        .find(|e| e.mountpoint == path)
        .map(|e| e.fstype)
}

/// Checks everything that can be checked before mounting.
pub fn validate(
    source: &Path,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<Checked, MountError> {
    let src_err = |reason: String| MountError::Source {
        path: source.to_path_buf(),
        reason,
    };
    let m = std::fs::metadata(source).map_err(|e| src_err(e.to_string()))?;
    if !m.is_dir() {
        return Err(src_err("not a directory".into()));
    }
    let source_c = source.canonicalize().map_err(|e| src_err(e.to_string()))?;

    let mp_err = |reason: String| MountError::MountPoint {
        path: mountpoint.to_path_buf(),
        reason,
    };
    let m = match std::fs::metadata(mountpoint) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(mp_err(format!(
                "busy: a FUSE filesystem whose process is gone is still mounted there ({e}); \
                 unmount it first: fusermount3 -u {}",
                mountpoint.display()
            )))
        }
        Err(e) => return Err(mp_err(e.to_string())),
    };
    if !m.is_dir() {
        return Err(mp_err("not a directory".into()));
    }
    let mp_c = mountpoint
        .canonicalize()
        .map_err(|e| mp_err(e.to_string()))?;
    if let Some(fstype) = mounted_at(&mp_c) {
        return Err(mp_err(format!(
            "busy: already a mount point ({fstype}); unmount it first or choose another folder"
        )));
    }
    if mp_c.starts_with(&source_c) {
        return Err(mp_err(format!(
            "is SOURCE {} or inside it; the mount would list itself",
            source_c.display()
        )));
    }
    if source_c.starts_with(&mp_c) {
        return Err(mp_err(format!(
            "contains SOURCE {}, which the mount would hide",
            source_c.display()
        )));
    }

    if opts.read_only {
        return Ok(Checked {
            source: source_c,
            mountpoint: mp_c,
            spool: None,
        });
    }
    let collision = source_c.join(&opts.encode_dir);
    if collision.symlink_metadata().is_ok() {
        return Err(MountError::Collision {
            path: collision,
            name: opts.encode_dir.clone(),
        });
    }
    let spool = match &opts.spool {
        Some(s) if s.is_absolute() => s.clone(),
        Some(s) => std::env::current_dir()
            .map_err(|e| MountError::Spool {
                path: s.clone(),
                reason: e.to_string(),
            })?
            .join(s),
        None => source_c.join(DEFAULT_SPOOL),
    };
    let spool_err = |reason: String| MountError::Spool {
        path: spool.clone(),
        reason,
    };
    std::fs::create_dir_all(&spool).map_err(|e| {
        spool_err(format!(
            "{e} (the encode directory spools there: give a writable folder with -o spool=PATH, \
             or mount with -o ro)"
        ))
    })?;
    let spool_c = spool.canonicalize().map_err(|e| spool_err(e.to_string()))?;
    if !std::fs::metadata(&spool_c)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        return Err(spool_err("not a directory".into()));
    }
    if spool_c.starts_with(&mp_c) {
        return Err(spool_err(
            "is inside MOUNTPOINT; the spool must be on a real filesystem".into(),
        ));
    }
    Ok(Checked {
        source: source_c,
        mountpoint: mp_c,
        spool: Some(spool_c),
    })
}

/// A mounted filesystem: the thread serving it, and where it is.
#[derive(Debug)]
pub struct Mounted {
    mountpoint: PathBuf,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// True once the session has ended (unmounted from outside, or an error).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the session to end; its final error, if any.
    pub fn join(&mut self) -> io::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the FUSE session thread panicked"))),
            None => Ok(()),
        }
    }

    /// Waits at most `timeout` for the session to end; false if it is still running.
    pub fn join_timeout(&mut self, timeout: std::time::Duration) -> Option<io::Result<()>> {
        let start = std::time::Instant::now();
        while !self.is_finished() {
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(self.join())
    }
}

/// Mounts SOURCE on MOUNTPOINT and serves it on background threads; returns once the kernel
/// has completed the FUSE handshake, i.e. once the mount is usable. `on_end` runs on the
/// session thread when the session ends (however it ends).
pub fn mount(
    source: &Path,
    mountpoint: &Path,
    opts: &MountOptions,
    on_end: impl FnOnce() + Send + 'static,
) -> Result<Mounted, MountError> {
    let checked = validate(source, mountpoint, opts)?;
    crate::io_util::bound_heap_retention();
    let cache: Arc<TileCache> = TileCache::shared(opts.cache_size);
    let disk_cache = match &opts.disk_cache {
        Some(dir) => Some(
            crate::reader::disk_cache::DiskCache::open(dir, opts.disk_cache_size)
                .map_err(|e| opt_err("disk_cache", format!("{}: {e}", dir.display())))?,
        ),
        None => None,
    };
    let mut hidden_paths = Vec::new();
    if let Some(s) = &checked.spool {
        hidden_paths.push(s.clone());
    }
    let view = view::View::new(
        &checked.source,
        view::ViewOptions {
            reader: ReaderOptions {
                cache,
                checkpoint_dir: None,
                disk_cache,
            },
            reserved_root_name: (!opts.read_only).then(|| OsString::from(&opts.encode_dir)),
            hidden_paths,
        },
    );
    let encode = match &checked.spool {
        Some(spool) => {
            // gpu=on without a usable GPU fails here, with the reason.
            let dir = encode_dir::EncodeDir::new(
                &checked.source,
                spool,
                encode_dir::EncodeDirOptions {
                    threads: opts.threads,
                    gpu: opts.gpu,
                    compress: opts.compress,
                    ..Default::default()
                },
            )?;
            for (path, result) in dir.commit_pending() {
                match result {
                    Ok(()) => tracing::info!("{}: pending spool file encoded", path.display()),
                    Err(e) => tracing::warn!(
                        "{}: pending spool file could not be encoded, left in the encode directory: {e}",
                        path.display()
                    ),
                }
            }
            Some((OsString::from(&opts.encode_dir), dir))
        }
        None => None,
    };
    let fs = fuse::PixelFs::new(view, encode, opts.read_only, opts.allow_other);
    let config = fuse_config(&checked, opts);
    let mount_err = |e| MountError::Mount {
        source_dir: checked.source.clone(),
        mountpoint: checked.mountpoint.clone(),
        source: e,
    };
    let session = fuser::Session::new(fs, &checked.mountpoint, &config).map_err(mount_err)?;
    // Tells, after the session, whether the kernel still has this connection mounted.
    let device = std::os::fd::AsFd::as_fd(&session)
        .try_clone_to_owned()
        .map_err(mount_err)?;
    let serving = disown_fuser_unmount(session.spawn().map_err(mount_err)?);
    let mountpoint = checked.mountpoint.clone();
    let thread = std::thread::Builder::new()
        .name("pixelrts-fuse".into())
        .spawn(move || {
            let r = serving
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the FUSE session thread panicked")));
            // Ended while still mounted (an error, not an unmount): detach it, so the folder
            // is not left with a dead mount. After an unmount nothing is done: the path may
            // already hold someone else's new mount.
            if connection_alive(&device) {
                if let Err(e) = unmount(&mountpoint, true) {
                    tracing::warn!("{e}");
                }
            }
            drop(device);
            on_end();
            r
        })
        .map_err(mount_err)?;
    raise_readahead(&checked.mountpoint, READAHEAD_KIB);
    Ok(Mounted {
        mountpoint: checked.mountpoint,
        thread: Some(thread),
    })
}

/// The serving thread of a background session whose mount fuser will never unmount.
///
/// fuser 0.18 unmounts the mount point path when its session ends unless `/dev/fuse` polls
/// with `POLLERR`, and it reads that test the wrong way round (fixed upstream in
/// cberner/fuser#703, unreleased): after an outside `umount` it unmounts the path again,
/// taking down whatever was mounted there since — a new mount of the same folder, as a
/// restart makes (found by the crash-point test, which mounts again right after
/// `pixelrts umount`). So its `Mount` is leaked here (it holds only descriptors, closed at
/// exit) and the session thread's end is handled by [`connection_alive`] instead.
fn disown_fuser_unmount(
    session: fuser::BackgroundSession,
) -> std::thread::JoinHandle<io::Result<()>> {
    let session: &'static mut fuser::BackgroundSession = Box::leak(Box::new(session));
    std::mem::replace(&mut session.guard, std::thread::spawn(|| Ok(())))
}

/// Whether the kernel still serves this FUSE connection: `/dev/fuse` polls with `POLLERR` once
/// it is unmounted or aborted (as libfuse's `fuse_kern_unmount` tests).
fn connection_alive(device: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: device.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n >= 0 {
            return p.revents & libc::POLLERR == 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

fn fuse_config(checked: &Checked, opts: &MountOptions) -> fuser::Config {
    use fuser::{MountOption, SessionACL};
    let mut mo = vec![
        MountOption::FSName(
            opts.fsname
                .clone()
                .unwrap_or_else(|| checked.source.to_string_lossy().into_owned()),
        ),
        // As a kernel option too: a direct mount(2) (root) ignores fuser's Subtype, which only
        // reaches fusermount3, and without it /proc/mounts would say plain "fuse".
        MountOption::CUSTOM(format!("subtype={}", opts.subtype)),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.read_only {
        mo.push(MountOption::RO);
    }
    // Shared with other users, the mount must check their permissions: the kernel does it
    // from the modes and owners the mount reports (without it, any user could chmod,
    // truncate or rename anyone's files in encode/).
    if opts.default_permissions || opts.allow_other {
        mo.push(MountOption::DefaultPermissions);
    }
    if opts.auto_unmount {
        mo.push(MountOption::AutoUnmount);
    }
    for p in &opts.passthrough {
        mo.push(match p.as_str() {
            "noatime" => MountOption::NoAtime,
            "atime" => MountOption::Atime,
            "dirsync" => MountOption::DirSync,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            other => MountOption::CUSTOM(other.to_string()),
        });
    }
    let mut config = fuser::Config::default();
    config.mount_options = mo;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else if opts.allow_root || opts.auto_unmount {
        // fusermount3 needs allow_root or allow_other for auto_unmount.
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.fuse_threads());
    // One /dev/fuse descriptor per worker spreads requests without a shared read lock.
    config.clone_fd = true;
    config
}

/// Unmounts `mountpoint`: `fusermount3 -u` (lazily with `lazy`), falling back to umount(2)
/// when running as root. Only FUSE mounts are touched.
pub fn unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let target = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    match mounted_at(&target) {
        Some(t) if t.starts_with("fuse") => {}
        Some(t) => {
            return Err(io::Error::other(format!(
                "{}: not a FUSE mount ({t})",
                target.display()
            )))
        }
        None => {
            return Err(io::Error::other(format!(
                "{}: not mounted",
                target.display()
            )))
        }
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u").arg("-q");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg("--").arg(&target).output();
    let fusermount_err = match out {
        Ok(o) if o.status.success() => return Ok(()),
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run fusermount3: {e}"),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let c = CString::new(target.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("mount point path holds a NUL byte"))?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("{}: {e}", target.display()),
        ));
    }
    Err(io::Error::other(if fusermount_err.is_empty() {
        format!("{}: fusermount3 -u failed", target.display())
    } else {
        fusermount_err
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The man page and --help list OPTION_DOCS: every name there must be one `apply` takes.
    #[test]
    fn every_documented_option_is_accepted() {
        for (names, _) in OPTION_DOCS {
            for name in names.split(", ") {
                let sample = match name.split_once('=') {
                    None => name.to_string(),
                    Some((n, "*")) => format!("{n}=x"),
                    Some(("cache_size" | "max_read" | "disk_cache_size", _)) => {
                        format!("{}=64K", &name[..name.find('=').unwrap()])
                    }
                    Some(("threads", _)) => "threads=2".into(),
                    Some((n, v)) => format!(
                        "{n}={}",
                        v.split('|')
                            .next()
                            .unwrap()
                            .replace("NAME", "x")
                            .replace("PATH", "/tmp/x")
                            .replace("DIR", "/tmp/x")
                    ),
                };
                let sample = sample.replace(".*", ".automount");
                MountOptions::parse(&[sample.as_str()])
                    .unwrap_or_else(|e| panic!("{name} documented, {sample:?} refused: {e}"));
            }
        }
    }

    #[test]
    fn parses_options() {
        let o = MountOptions::parse(&[
            "ro,allow_other,cache_size=64M,threads=8,gpu=off,compress=none",
            "encode_dir=in,spool=/tmp/s,fsname=x,rw,nofail,x-systemd.automount,noatime",
        ])
        .unwrap();
        assert!(o.read_only && o.allow_other);
        assert_eq!(o.cache_size, 64 << 20);
        assert_eq!(o.threads, Some(8));
        assert_eq!(o.gpu, GpuMode::Off);
        assert_eq!(o.compress, crate::encode::compressed::CompressMode::None);
        assert_eq!(o.encode_dir, "in");
        assert_eq!(o.spool.as_deref(), Some(Path::new("/tmp/s")));
        assert_eq!(o.fsname.as_deref(), Some("x"));
        assert_eq!(o.passthrough, ["noatime"]);
        assert_eq!(
            MountOptions::parse::<&str>(&[]).unwrap(),
            MountOptions::default()
        );
    }

    #[test]
    fn option_errors_are_clear() {
        for (bad, words) in [
            ("bogus", "unknown option"),
            ("threads=0", "between"),
            ("threads=x", "not a number"),
            ("cache_size=12Q", "unknown unit"),
            ("cache_size=", "needs a value"),
            ("gpu=maybe", "auto, on, off"),
            ("compress=lz4", "auto, zlib or none"),
            ("encode_dir=a/b", "plain file name"),
            ("encode_dir=.pixelrts-x", "hides"),
            ("ro=1", "takes no value"),
        ] {
            let e = MountOptions::parse(&[bad]).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(words), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("1k").unwrap(), 1024);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn mountinfo_unescapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), OsString::from("/a b"));
        assert_eq!(unescape_mountinfo("/a\\\\"), OsString::from("/a\\\\"));
    }

    #[test]
    fn validation() {
        let src = tempfile::tempdir().unwrap();
        let mp = tempfile::tempdir().unwrap();
        let o = MountOptions::default();
        let c = validate(src.path(), mp.path(), &o).unwrap();
        assert_eq!(
            c.spool.unwrap(),
            src.path().canonicalize().unwrap().join(DEFAULT_SPOOL)
        );
        let e = validate(&src.path().join("nope"), mp.path(), &o).unwrap_err();
        assert!(matches!(e, MountError::Source { .. }), "{e}");
        std::fs::write(src.path().join("f"), b"").unwrap();
        let e = validate(&src.path().join("f"), mp.path(), &o).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = validate(src.path(), &mp.path().join("nope"), &o).unwrap_err();
        assert!(matches!(e, MountError::MountPoint { .. }), "{e}");
        let e = validate(src.path(), src.path(), &o).unwrap_err();
        assert!(e.to_string().contains("inside"), "{e}");
        std::fs::create_dir(src.path().join("encode")).unwrap();
        let e = validate(src.path(), mp.path(), &o).unwrap_err();
        assert!(matches!(e, MountError::Collision { .. }), "{e}");
        let ro = MountOptions {
            read_only: true,
            ..Default::default()
        };
        assert!(validate(src.path(), mp.path(), &ro)
            .unwrap()
            .spool
            .is_none());
        let e = validate(src.path(), Path::new("/proc"), &ro).unwrap_err();
        assert!(e.to_string().contains("busy"), "{e}");
    }
}
