//! File plumbing shared by the pipelines: memory-mapped input whose pages are handed back as
//! soon as they are used (so RSS stays flat at any size), and outputs that appear under their
//! final name only when complete.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, IoContext, Result};

/// A read-only view of an input file.
pub struct MappedInput {
    map: Option<Mmap>,
}

impl MappedInput {
    pub fn open(path: &Path) -> Result<(File, Self)> {
        let file = File::open(path).at(path)?;
        let meta = file.metadata().at(path)?;
        if meta.is_dir() {
            return Err(Error::io(
                path,
                io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
            ));
        }
        if meta.len() == 0 {
            return Ok((file, MappedInput { map: None }));
        }
        // SAFETY: the mapping is read-only; a concurrent truncation by another process would
        // raise SIGBUS, the same hazard every mmap-based reader accepts (cp, ripgrep, …).
        let map = unsafe { Mmap::map(&file) }.at(path)?;
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok((file, MappedInput { map: Some(map) }))
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Drops this process's mapping of the pages inside `range` (the page cache keeps them);
    /// touching them again maps them again. Keeps resident memory independent of file size.
    pub fn release(&self, range: Range<usize>) {
        release_pages(self.bytes(), range);
    }
}

/// Releases whole pages of a file-backed mapping within `range` of `bytes`.
pub fn release_pages(bytes: &[u8], range: Range<usize>) {
    if bytes.is_empty() || range.start >= range.end {
        return;
    }
    let page = page_size();
    let base = bytes.as_ptr() as usize;
    let start = (base + range.start).next_multiple_of(page);
    let end = (base + range.end.min(bytes.len())) / page * page;
    if end > start {
        // SAFETY: the range lies inside a live, file-backed, read-only mapping; MADV_DONTNEED
        // on such a mapping only drops page-table entries, and later reads refault the same
        // file contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// An output file written under a temporary name beside its final path, renamed into place by
/// [`AtomicOutput::commit`]. Dropped without commit, it deletes the temporary file.
pub struct AtomicOutput {
    pub file: File,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl AtomicOutput {
    pub fn create(target: &Path, overwrite: bool) -> Result<Self> {
        if !overwrite && target.symlink_metadata().is_ok() {
            return Err(Error::OutputExists {
                path: target.to_path_buf(),
            });
        }
        let dir = folder_of(target);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        for attempt in 0..100u32 {
            let temp = dir.join(format!(
                ".{name}.pixelrts-tmp.{}.{attempt}",
                std::process::id()
            ));
            match OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .open(&temp)
            {
                Ok(file) => {
                    return Ok(AtomicOutput {
                        file,
                        temp,
                        target: target.to_path_buf(),
                        committed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(target, e)),
            }
        }
        Err(Error::io(
            target,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "could not create a temporary file",
            ),
        ))
    }

    /// Optionally fsyncs, then renames into place (replacing an existing file only when the
    /// caller allowed overwriting at `create`).
    pub fn commit(self, fsync: bool) -> Result<()> {
        self.commit_inner(fsync, false)
    }

    /// [`commit`](Self::commit) of an encoded image: the same, with the crash points
    /// `encode` (written, not yet fsynced) and `fsynced` (not yet renamed) of
    /// [`crate::failpoint`].
    pub fn commit_image(self, fsync: bool) -> Result<()> {
        self.commit_inner(fsync, true)
    }

    fn commit_inner(mut self, fsync: bool, crash_points: bool) -> Result<()> {
        if crash_points {
            crate::failpoint::crash_point("encode");
        }
        self.file.flush().at(&self.target)?;
        if fsync {
            self.file.sync_all().at(&self.target)?;
        }
        if crash_points {
            crate::failpoint::crash_point("fsynced");
        }
        std::fs::rename(&self.temp, &self.target).at(&self.target)?;
        self.committed = true;
        if fsync {
            if let Ok(d) = File::open(folder_of(&self.target)) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for AtomicOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes `contents` to `path` atomically (temporary file + rename); with `fsync`, durably
/// (the file before the rename, its folder after).
pub fn write_atomically(path: &Path, contents: &[u8], overwrite: bool, fsync: bool) -> Result<()> {
    let mut out = AtomicOutput::create(path, overwrite)?;
    out.file.write_all(contents).at(path)?;
    out.commit(fsync)
}

/// Removes the temporary files that [`AtomicOutput`]s for `dir/name` (for any name in `dir`
/// with None) left behind when their process died (a crash or `kill -9` during an encode):
/// those whose process is gone, or is this one (a new process cannot have left them).
/// Returns how many were removed.
pub fn remove_stale_temps(dir: &Path, name: Option<&std::ffi::OsStr>) -> usize {
    const MARK: &str = ".pixelrts-tmp.";
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let rest = match name {
            Some(name) => file_name.strip_prefix(&format!(".{}{MARK}", name.to_string_lossy())),
            None => file_name
                .starts_with('.')
                .then(|| file_name.split_once(MARK).map(|(_, r)| r))
                .flatten(),
        };
        let Some(rest) = rest else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid != std::process::id() as i32 && process_alive(pid) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(
                    "{}: temporary file of a crashed encode removed",
                    path.display()
                );
                removed += 1;
            }
            Err(e) => tracing::warn!("{}: not removed: {e}", path.display()),
        }
    }
    removed
}

/// [`remove_stale_temps`] for one output path: what killed runs left beside `target` (a
/// crashed or `kill -9`ed `encode`/`decode` to the same path), removed before the next one
/// writes there. One folder listing: callers with many outputs in a folder call
/// [`remove_stale_temps`] once for it instead.
pub fn remove_stale_temps_of(target: &Path) -> usize {
    match target.file_name() {
        Some(name) => remove_stale_temps(folder_of(target), Some(name)),
        None => 0,
    }
}

/// The folder an output file goes in, where its temporary file goes too: `.` for a bare name.
pub fn folder_of(target: &Path) -> &Path {
    match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Whether `pid` is a running process: a zombie (killed, not yet reaped by its parent) is not.
fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Runs `f` on `pool` when given, else on a new rayon pool of `threads` workers (None: the
/// global pool, all cores).
pub fn with_threads<T: Send>(
    pool: Option<&rayon::ThreadPool>,
    threads: Option<usize>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    if let Some(pool) = pool {
        return pool.install(f);
    }
    match threads {
        Some(0) => Err(Error::InvalidArgument(
            "--threads must be at least 1".into(),
        )),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| Error::InvalidArgument(format!("cannot start {n} threads: {e}")))?
            .install(f),
        None => f(),
    }
}

/// Keeps a long-running process's heap close to what it holds (glibc only; elsewhere nothing).
///
/// glibc's malloc gives each thread that allocates concurrently an arena of its own and keeps
/// freed memory inside them; freeing a big buffer also raises the size above which it uses
/// mmap, so later big buffers stay in the arenas too. Under a mount's load (worker threads
/// decoding tiles, encoders, read buffers) that retained memory grew to several times what
/// was live (scripts/soak.sh: RssAnon 516 MiB for ~110 MiB of live heap). So: few arenas,
/// a fixed mmap threshold (tiles and read buffers stay in the heap, whole-band buffers do
/// not), and a thread that returns free pages to the kernel twice a second.
pub fn bound_heap_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; both values are in range.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
                libc::mallopt(libc::M_MMAP_THRESHOLD, 2 << 20);
            }
            let spawned = std::thread::Builder::new()
                .name("heap-trim".into())
                .spawn(|| loop {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    // SAFETY: malloc_trim has no preconditions.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("no heap-trim thread: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes given a pool run on it and start no pool of their own (a pool per encode is
    /// what the fuzz finding `code_mode_ranges` leak-f0ff2578 came from).
    #[test]
    fn a_pool_given_is_the_pool_used() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let on_pool = with_threads(Some(&pool), Some(4), || {
            Ok(pool.current_thread_index().is_some())
        })
        .unwrap();
        assert!(on_pool);
        assert!(with_threads(None, Some(0), || Ok(())).is_err());
    }
}
