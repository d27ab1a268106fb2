//! Helpers shared by the fuzz targets.
//!
//! Mutated PNG files mostly fail at the first chunk CRC, which keeps the fuzzer away from
//! everything behind it (metadata, index, pieces). [`fix_chunk_crcs`] recomputes every
//! chunk's CRC after mutation, so mutations reach the parsers; inputs whose first byte is odd
//! keep their CRCs as they are, so the CRC checks themselves stay fuzzed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The encode thread pool of every run (as the mount shares one among its encodes). A pool
/// per encode ends its thread after the run returns, and that thread's last allocations
/// (crossbeam-epoch's deferred frees) looked leaked to LeakSanitizer: finding
/// `leak-f0ff2578…` of `code_mode_ranges`, a harness artefact, not a leak of the library.
pub fn encode_pool() -> std::sync::Arc<rayon::ThreadPool> {
    static POOL: OnceLock<std::sync::Arc<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        std::sync::Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .expect("encode pool"),
        )
    })
    .clone()
}

/// A per-process scratch folder on tmpfs when there is one (each run writes a file).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        if base.is_dir() {
            tempfile::tempdir_in(base)
        } else {
            tempfile::tempdir()
        }
        .expect("scratch folder")
    })
    .path()
}

/// Writes `bytes` to a file in the scratch folder and returns its path.
pub fn write_scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    let mut f = std::fs::File::create(&path).expect("scratch file");
    f.write_all(bytes).expect("scratch write");
    path
}

/// Recomputes the CRC of every whole chunk after the PNG signature (in place).
pub fn fix_chunk_crcs(png: &mut [u8]) {
    let mut at = 8usize;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len) else {
            return;
        };
        if end + 4 > png.len() {
            return;
        }
        let crc = crc32fast::hash(&png[at + 4..end]);
        png[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

/// The input as a PNG to open: CRCs fixed up unless the first byte is odd (that byte is then
/// restored to the PNG signature's first byte, so either way the signature can match).
pub fn png_from_input(data: &[u8]) -> Vec<u8> {
    let mut png = data.to_vec();
    let keep_crcs = png.first().is_some_and(|b| b & 1 == 1);
    if let Some(b) = png.first_mut() {
        *b = 0x89;
    }
    if !keep_crcs {
        fix_chunk_crcs(&mut png);
    }
    png
}

/// Deterministic ranges derived from the input (offsets and lengths spread over `len`).
pub fn ranges(data: &[u8], len: u64, count: usize) -> Vec<(u64, usize)> {
    let mut s = crc32fast::hash(data) as u64 | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..count)
        .map(|_| {
            let off = if len == 0 { 0 } else { next() % len };
            let n = match next() % 4 {
                0 => 1,
                1 => (next() % 64) as usize + 1,
                2 => (next() % 4096) as usize + 1,
                _ => (next() % (1 << 20)) as usize + 1,
            };
            (off, n)
        })
        .collect()
}
