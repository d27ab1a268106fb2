//! Random-access benchmark of a [`Reader`] (used by `pixelrts bench-random` and
//! `scripts/bench-random.sh`).
//!
//! - **cold** reads: before each timed read the tile cache is emptied and the file's pages are
//!   dropped from the page cache (`posix_fadvise(DONTNEED)`), so every read inflates what it
//!   fetched from the disk;
//! - **cold, cached file** reads: the tile cache is emptied but the file stays in the page
//!   cache (a first read of a range in a file the system has read before, e.g. through a
//!   mount): what the reader itself costs;
//! - **warm** reads: the same offsets, each read once untimed and then timed (a cache hit);
//! - bytes inflated per byte served, from the cold reads;
//! - sequential throughput through the reader (1 MiB reads) in a rayon pool of 1 and 2 threads,
//!   against `decode` of the whole file with the same thread counts (three alternated passes of
//!   each, medians);
//! - the file's size against a plain PNG of the same pixels (the `png` crate, default
//!   compression and filtering).

use std::fs::File;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{Reader, ReaderKind, ReaderOptions};
use crate::cache::TileCache;
use crate::decode::{self, DecodeOptions};
use crate::error::{Error, IoContext, Result};
use crate::format::hilbert::{scatter_tile, TileTables};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Random reads per size.
    pub reads: usize,
    /// Read sizes in bytes.
    pub sizes: Vec<usize>,
    /// Thread counts for the sequential comparisons.
    pub threads: Vec<usize>,
    /// Also write a plain PNG of the same pixels and compare sizes.
    pub plain_png: bool,
    pub checkpoint_dir: Option<std::path::PathBuf>,
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            reads: 1000,
            sizes: vec![4096, 128 * 1024],
            threads: vec![1, 2],
            plain_png: true,
            checkpoint_dir: None,
            seed: 0x5eed,
        }
    }
}

/// Latencies of one read size.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub size: usize,
    pub reads: usize,
    pub cold_p50_us: f64,
    pub cold_p99_us: f64,
    /// Tile cache empty, file in the page cache.
    pub cold_cached_p50_us: f64,
    pub cold_cached_p99_us: f64,
    pub warm_p50_us: f64,
    pub warm_p99_us: f64,
    /// Bytes inflated per byte served over the cold reads.
    pub inflated_per_served: f64,
}

/// Sequential throughput with `threads` threads.
#[derive(Clone, Debug, Serialize)]
pub struct SequentialReport {
    pub threads: usize,
    pub reader_mib_s: f64,
    pub decode_mib_s: f64,
}

/// Everything measured for one file.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub file: String,
    pub kind: ReaderKind,
    pub data_size: u64,
    pub file_size: u64,
    pub tile_bytes: u64,
    /// Time of the first read (opens, and for a plain PNG loads or builds the checkpoint
    /// index).
    pub first_read_ms: f64,
    pub latency: Vec<LatencyReport>,
    pub sequential: Vec<SequentialReport>,
    /// Size of a plain PNG (png crate, default compression) of the same pixels.
    pub plain_png_size: Option<u64>,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Passes of each sequential read (reader, then decode, alternated); medians are reported.
const SEQUENTIAL_ROUNDS: usize = 3;

fn drop_pages(file: &File) {
    // Clean pages only; best effort (the script also drops caches system-wide when root).
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::InvalidArgument(format!("thread pool: {e}")))
}

/// Runs the benchmark on `path`.
pub fn run(path: &Path, opts: &BenchOptions) -> Result<BenchReport> {
    let file = File::open(path).at(path)?;
    let file_size = file.metadata().at(path)?.len();
    let open = |cache: Arc<TileCache>| {
        Reader::open(
            path,
            &ReaderOptions {
                cache,
                checkpoint_dir: opts.checkpoint_dir.clone(),
                disk_cache: None,
            },
        )
    };
    let cache = Arc::new(TileCache::default());
    let t = Instant::now();
    let reader = open(cache.clone())?;
    let mut one = [0u8; 1];
    reader.read_at(0, &mut one)?;
    let first_read_ms = t.elapsed().as_secs_f64() * 1e3;
    let len = reader.len();
    let mut rng = Rng(opts.seed | 1);
    let mut latency = Vec::new();
    for &size in &opts.sizes {
        let mut buf = vec![0u8; size];
        let offsets: Vec<u64> = (0..opts.reads)
            .map(|_| {
                if len > size as u64 {
                    rng.next() % (len - size as u64 + 1)
                } else {
                    0
                }
            })
            .collect();
        let before = cache.stats();
        let mut cold = Vec::with_capacity(offsets.len());
        for &off in &offsets {
            cache.clear();
            drop_pages(&file);
            let t = Instant::now();
            reader.read_at(off, &mut buf)?;
            cold.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let after = cache.stats();
        let mut cold_cached = Vec::with_capacity(offsets.len());
        for &off in &offsets {
            cache.clear();
            reader.read_at(off, &mut buf)?;
            cache.clear();
            let t = Instant::now();
            reader.read_at(off, &mut buf)?;
            cold_cached.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mut warm = Vec::with_capacity(offsets.len());
        for &off in &offsets {
            reader.read_at(off, &mut buf)?;
            let t = Instant::now();
            reader.read_at(off, &mut buf)?;
            warm.push(t.elapsed().as_secs_f64() * 1e6);
        }
        cold.sort_by(f64::total_cmp);
        cold_cached.sort_by(f64::total_cmp);
        warm.sort_by(f64::total_cmp);
        let served = (after.bytes_served - before.bytes_served).max(1);
        latency.push(LatencyReport {
            size,
            reads: offsets.len(),
            cold_p50_us: percentile(&cold, 0.5),
            cold_p99_us: percentile(&cold, 0.99),
            cold_cached_p50_us: percentile(&cold_cached, 0.5),
            cold_cached_p99_us: percentile(&cold_cached, 0.99),
            warm_p50_us: percentile(&warm, 0.5),
            warm_p99_us: percentile(&warm, 0.99),
            inflated_per_served: (after.bytes_inflated - before.bytes_inflated) as f64
                / served as f64,
        });
    }
    let mut sequential = Vec::new();
    let mib = len.max(1) as f64 / (1 << 20) as f64;
    // The cold reads above dropped the file's pages: read it once so that the reader and
    // `decode` below both start from a cached file, whichever runs first.
    std::io::copy(&mut File::open(path).at(path)?, &mut std::io::sink()).at(path)?;
    for &threads in &opts.threads {
        // Alternated and repeated, medians kept: on a shared machine one pass of each can
        // land in different moments of someone else's load.
        let mut reader_s = Vec::new();
        let mut decode_s = Vec::new();
        for _ in 0..SEQUENTIAL_ROUNDS {
            let reader = open(Arc::new(TileCache::default()))?;
            let t = Instant::now();
            pool(threads)?.install(|| -> Result<()> {
                let mut buf = vec![0u8; 1 << 20];
                let mut off = 0;
                loop {
                    let n = reader.read_at(off, &mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    off += n as u64;
                }
            })?;
            reader_s.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            decode::decode_to_writer(
                path,
                &mut std::io::sink(),
                &DecodeOptions {
                    threads: Some(threads),
                    ..Default::default()
                },
            )?;
            decode_s.push(t.elapsed().as_secs_f64());
        }
        reader_s.sort_by(f64::total_cmp);
        decode_s.sort_by(f64::total_cmp);
        sequential.push(SequentialReport {
            threads,
            reader_mib_s: mib / percentile(&reader_s, 0.5),
            decode_mib_s: mib / percentile(&decode_s, 0.5),
        });
    }
    let plain_png_size = if opts.plain_png && reader.kind() != ReaderKind::Code && len > 0 {
        Some(plain_png_size(&reader)?)
    } else {
        None
    };
    Ok(BenchReport {
        file: path.display().to_string(),
        kind: reader.kind(),
        data_size: len,
        file_size,
        tile_bytes: reader.tile_bytes(),
        first_read_ms,
        latency,
        sequential,
        plain_png_size,
    })
}

struct Counter(u64);
impl Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Size of a plain PNG (png crate defaults) of the pixels `reader`'s payload makes: the
/// payload is placed along the curve band by band and the rows are streamed to the encoder.
fn plain_png_size(reader: &Reader) -> Result<u64> {
    let len = reader.len();
    let grid = reader.grid();
    let mut side = grid.min(256);
    while side > 1 && side * grid * 4 > (16 << 20) {
        side /= 2;
    }
    let tables = TileTables::new(grid, side);
    let tile_bytes = 4 * side * side;
    let err = |e: png::EncodingError| Error::io(reader.path(), std::io::Error::other(e));
    let mut counter = Counter(0);
    {
        let mut enc = png::Encoder::new(&mut counter, grid as u32, grid as u32);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(err)?;
        let mut stream = w.stream_writer().map_err(err)?;
        let row_bytes = (4 * grid) as usize;
        let tw = 4 * side as usize;
        let mut band = vec![0u8; side as usize * row_bytes];
        let mut payload = vec![0u8; tile_bytes as usize];
        let mut tile = vec![0u8; tile_bytes as usize];
        for row in 0..tables.tiles_per_side() {
            for column in 0..tables.tiles_per_side() {
                let place = tables.place_at(column, row);
                let start = place.hilbert_index * tile_bytes;
                payload.fill(0);
                if start < len {
                    let n = (len - start).min(tile_bytes) as usize;
                    reader.read_exact_at(start, &mut payload[..n])?;
                }
                scatter_tile(tables.positions(&place), &payload, &mut tile);
                for r in 0..side as usize {
                    let dst = r * row_bytes + column as usize * tw;
                    band[dst..dst + tw].copy_from_slice(&tile[r * tw..(r + 1) * tw]);
                }
            }
            stream
                .write_all(&band)
                .map_err(|e| Error::io(reader.path(), e))?;
        }
        stream.finish().map_err(err)?;
    }
    Ok(counter.0)
}
