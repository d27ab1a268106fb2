//! Decoded compressed segments kept on local disk between mounts (`-o disk_cache=DIR`).
//!
//! Cold, a compressed segment costs ~100 small reads of the PNG (its stream bytes lie on that
//! many scanlines) plus an inflate; from this cache it costs one read of its decoded bytes and
//! a CRC-32. Every segment a reader inflates is written here (a `cp` leaves the whole file).
//! Each image's segments live in one sparse file named after its `data_hash` and segment
//! size, segment `s` at its own original offset, so a segment never written is a hole and
//! nothing but the file itself records what is there.
//!
//! Nothing read from here is served unchecked: the bytes must match the segment's CRC-32 from
//! the open image's index, else they count as absent (a hole, a torn write, a damaged copy)
//! and the segment is decoded from the PNG and written again. A
//! CRC-32 stops accidents, not forgers, so the folder must be private: owned by the user that
//! mounts, writable by nobody else (checked at open).
//!
//! The cache's files take at most `budget` bytes of disk (their allocated blocks): past it, the
//! least recently written files go, whole.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Default `disk_cache_size`.
pub const DEFAULT_DISK_BUDGET: u64 = 4 << 30;
/// Bytes written between two checks of the budget.
const CHECK_EVERY: u64 = 64 << 20;
/// Suffix of the cache's files.
const SUFFIX: &str = ".seg";

/// A folder of decoded segments, shared by every reader of a mount.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    budget: u64,
    /// Bytes written since the budget was last checked.
    since_check: AtomicU64,
    /// One budget check at a time.
    checking: Mutex<()>,
}

impl DiskCache {
    /// Opens (creating it, mode 0700) the cache folder `dir`, which must belong to this
    /// process's user and be writable by nobody else.
    pub fn open(dir: &Path, budget: u64) -> io::Result<Arc<DiskCache>> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let md = std::fs::metadata(dir)?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !md.is_dir() {
            return Err(io::Error::other("not a folder"));
        }
        if md.uid() != me {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("owned by uid {}, not {me}", md.uid()),
            ));
        }
        if md.mode() & 0o022 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "mode {:o}: writable by others (its bytes are only CRC-checked)",
                    md.mode() & 0o777
                ),
            ));
        }
        Ok(Arc::new(DiskCache {
            dir: dir.to_path_buf(),
            budget,
            since_check: AtomicU64::new(0),
            checking: Mutex::new(()),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment file of an image whose original bytes have SHA-256 `data_hash` (hex) and
    /// `len` bytes, cut in segments of `segment_size`; None when `data_hash` is not a SHA-256
    /// or the file cannot be opened (the reader then works without it).
    pub fn segments(
        self: &Arc<Self>,
        data_hash: &str,
        segment_size: u32,
        len: u64,
    ) -> Option<SegmentFile> {
        let hex = data_hash.len() == 64 && data_hash.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex || len == 0 {
            return None;
        }
        let path = self.dir.join(format!(
            "{}-{segment_size}{SUFFIX}",
            data_hash.to_ascii_lowercase()
        ));
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|file| {
                let md = file.metadata()?;
                if !md.is_file() {
                    return Err(io::Error::other("not a regular file"));
                }
                // A file of this name holds this image's bytes, so only its length can be
                // wrong (cut short by a full disk, say); holes cost nothing.
                if md.len() != len {
                    file.set_len(len)?;
                }
                Ok(file)
            });
        match opened {
            Ok(file) => Some(SegmentFile {
                file,
                path,
                cache: self.clone(),
                writable: AtomicBool::new(true),
                since_check: AtomicU64::new(0),
            }),
            Err(e) => {
                tracing::warn!("{}: segment cache not used: {e}", path.display());
                None
            }
        }
    }

    /// Counts `n` bytes written; past [`CHECK_EVERY`], checks the budget.
    fn wrote(&self, n: u64) {
        if check_due(&self.since_check, n) {
            self.enforce_budget();
        }
    }

    /// Removes the least recently written segment files until the rest fit the budget.
    /// Returns how many were removed.
    pub fn enforce_budget(&self) -> usize {
        let Ok(_one) = self.checking.try_lock() else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut files: Vec<(i64, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(SUFFIX))
            .filter_map(|e| {
                let md = e.metadata().ok()?;
                md.is_file()
                    .then(|| (md.mtime(), md.blocks() * 512, e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        let mut removed = 0;
        for (_, bytes, path) in files {
            if total <= self.budget {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                tracing::debug!("{}: removed from the segment cache", path.display());
                total -= bytes;
                removed += 1;
            }
        }
        removed
    }
}

/// One image's decoded segments on disk.
#[derive(Debug)]
pub struct SegmentFile {
    file: File,
    path: PathBuf,
    cache: Arc<DiskCache>,
    /// Cleared once a write fails (a full disk) or the file was removed for the budget:
    /// reads go on, writes stop.
    writable: AtomicBool,
    /// Bytes written since this file last checked that it is still in the folder.
    since_check: AtomicU64,
}

impl SegmentFile {
    /// Whether the file has data at original offset `at`: a segment never written is a hole,
    /// found without reading (or hashing) its zeros.
    pub fn holds(&self, at: u64) -> bool {
        // SAFETY: lseek on an open descriptor.
        let data =
            unsafe { libc::lseek(self.file.as_raw_fd(), at as libc::off_t, libc::SEEK_DATA) };
        data == at as libc::off_t
    }

    /// Fills `out` with the segment that starts at original offset `at` if the file holds it
    /// and it matches `crc`; false otherwise (then `out` holds anything).
    pub fn read(&self, at: u64, out: &mut [u8], crc: u32) -> bool {
        self.holds(at) && self.file.read_exact_at(out, at).is_ok() && crc32fast::hash(out) == crc
    }

    /// Stores a decoded, checked segment that starts at original offset `at`. Best effort:
    /// a failure only means it is decoded from the PNG again next time.
    pub fn write(&self, at: u64, bytes: &[u8]) {
        if !self.writable.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.file.write_all_at(bytes, at) {
            tracing::warn!("{}: segment cache not written: {e}", self.path.display());
            self.writable.store(false, Ordering::Relaxed);
            return;
        }
        let n = bytes.len() as u64;
        self.cache.wrote(n);
        // Removed for the budget while open (checked now and then, not per write): what it
        // gets then would be invisible to the budget, and lost at close.
        if check_due(&self.since_check, n) && self.file.metadata().is_ok_and(|m| m.nlink() == 0) {
            self.writable.store(false, Ordering::Relaxed);
        }
    }
}

/// Adds `n` bytes written to `since_check`; true (and the count restarted) once they reach
/// [`CHECK_EVERY`].
fn check_due(since_check: &AtomicU64, n: u64) -> bool {
    let due = since_check.fetch_add(n, Ordering::Relaxed) + n >= CHECK_EVERY;
    if due {
        since_check.store(0, Ordering::Relaxed);
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const HASH: &str = "ddbed0433005d1a43afc82e14d2892a687960e1fb6f29e09f21463323522fde3";

    #[test]
    fn a_written_segment_reads_back_only_with_its_crc() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(&dir.path().join("c"), 1 << 30).unwrap();
        let seg = cache.segments(HASH, 1024, 10_000).unwrap();
        let bytes: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
        let crc = crc32fast::hash(&bytes);
        let mut out = vec![0u8; 1024];
        assert!(!seg.read(4096, &mut out, crc), "a hole is absent");
        seg.write(4096, &bytes);
        assert!(seg.read(4096, &mut out, crc));
        assert_eq!(out, bytes);
        assert!(!seg.read(4096, &mut out, crc ^ 1), "another CRC: absent");
        // Another reader of the same image finds it.
        let again = cache.segments(&HASH.to_uppercase(), 1024, 10_000).unwrap();
        assert!(again.read(4096, &mut out, crc));
        // A torn or damaged copy counts as absent.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&again.path)
            .unwrap()
            .write_all_at(b"X", 4100)
            .unwrap();
        assert!(!again.read(4096, &mut out, crc));
    }

    #[test]
    fn names_that_are_not_a_sha256_get_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 30).unwrap();
        assert!(cache.segments("../../etc/passwd", 1024, 10).is_none());
        assert!(cache.segments(&HASH[..63], 1024, 10).is_none());
        assert!(cache.segments(HASH, 1024, 0).is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_folder_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = DiskCache::open(dir.path(), 1 << 30).unwrap_err();
        assert!(err.to_string().contains("writable by others"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(DiskCache::open(dir.path(), 1 << 30).is_ok());
    }

    #[test]
    fn past_the_budget_the_least_recently_written_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 300 << 10).unwrap();
        let block = vec![1u8; 128 << 10];
        let hashes: Vec<String> = (0..3).map(|i| format!("{i:064x}")).collect();
        for (i, h) in hashes.iter().enumerate() {
            let seg = cache.segments(h, 128 << 10, 1 << 20).unwrap();
            seg.write(0, &block);
            seg.write(128 << 10, &block);
            // Distinct, increasing mtimes.
            let t =
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            seg.file.set_modified(t).unwrap();
        }
        // 3 files of 256 KiB against 300 KiB: the two oldest go.
        assert_eq!(cache.enforce_budget(), 2);
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![format!("{}-{}{SUFFIX}", hashes[2], 128 << 10)]);
    }
}
