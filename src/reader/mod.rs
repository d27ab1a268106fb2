//! Random access to the original bytes of any PixelRTS PNG.
//!
//! [`Reader`] answers positional reads (`read_at`, like `FileExt::read_at`) from three kinds
//! of files:
//!
//! - **seekable** files (written by this project, with an `rtIX` index): a byte range maps to
//!   tiles `j = offset / tile_bytes …`; each tile comes from the shared [`TileCache`] or is
//!   inflated on its own from the pieces the index points at and checked against its CRC.
//!   Ranges covering several tiles decode them in parallel (rayon).
//! - **code mode** files: the bytes are the base64 text of the metadata; a byte range
//!   `[a, b)` maps to characters `[a/3·4, ⌈b/3⌉·4)`, which are read and decoded alone. The
//!   text chunk's CRC is checked when the file is opened.
//! - **plain PNGs** (every file the reference implementation wrote): a
//!   [`CheckpointIndex`](checkpoint::CheckpointIndex) is loaded or built on the first read
//!   (and cached on disk); the payload is cut into *virtual tiles* of side
//!   `T = min(grid, 256)` (smaller when a band of `T` rows would exceed 16 MiB); a tile is
//!   read as its band of rows (checked by the checkpoint module's CRCs), cut out, gathered
//!   along the curve, and cached. All tiles of a band that was inflated are cached.
//!
//! Files whose pixels hold a **compressed** payload are read in two layers. With this
//! project's segment index (`rtZX`), a byte range maps to segments; each segment's stream bytes
//! are read from the payload (straight from the raw pieces for small reads, through verified
//! tiles for large ones), inflated on their own into a buffer of exactly the segment's size (so
//! no zlib bomb can grow it) and checked against the segment's CRC-32; a segment the read
//! covers in part is cached, one it covers whole goes straight into the caller's buffer. Compressed files without a segment index (the reference's: one zlib
//! stream or a zstd frame) are decoded once, verified against `data_hash`, into an unlinked
//! file in the checkpoint directory, with a CRC-32 per 64 KiB block kept in memory, and served
//! from there.
//!
//! Bytes are never served unverified: a tile whose CRC fails, an index entry out of range, or
//! a changed file is an error for the reads that need it; other tiles still read.

pub mod bench;
pub mod checkpoint;
pub mod disk_cache;
mod inflate;
mod unfilter;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::cache::{FileKey, TileCache, TileKey};
use crate::container::{adjacent_runs, Container, SeekableImage, TileScratch};
use crate::error::{Error, IoContext, Result};
use crate::format::hilbert::{band_tables, gather_tile_from_band, TileTables};
use crate::format::metadata::B64Source;
use checkpoint::{CheckpointError, CheckpointIndex};

/// Largest band of rows a plain-PNG virtual tile may need (bytes of RGBA).
const MAX_BAND_BYTES: u64 = 16 << 20;
/// Tiles fetched per batch of a large read (bounds the memory a huge read holds).
const BATCH_TILES: usize = 64;
/// Sequential readahead of seekable files, in tiles: a read that starts where the previous
/// one ended also decodes the rest of the aligned block of this many tiles. Hilbert order
/// visits aligned 8x8 blocks of tiles one after another, so the block is 8 runs of 8 adjacent
/// tiles, and a run reads its 8 pieces of each scanline with one `pread` instead of 8 (a
/// tile's 256 pieces lie a scanline apart: per-piece reads were what made sequential reading
/// slow). 64 tiles are 16 MiB at the default geometry. Measured on 1 GiB of random data, one
/// thread: 1.40 s without readahead, 0.87 s with 16-tile blocks, 0.72 s with 64 (`decode`:
/// 0.68 s).
const READAHEAD_TILES: u64 = 64;
/// How many recent reads' ends a read may start at to count as sequential.
const RECENT_ENDS: usize = 8;
/// Payload bytes read sequentially after which the whole PNG is read from the disk in the
/// background ([`Reader::warm_png`]): a `cp`, not a program's scattered small reads.
const WARM_AFTER_SEQUENTIAL: u64 = 32 << 20;
/// Segments inflated for small reads after which the whole PNG is read from the disk in the
/// background: a loop-mounted image walked by `tar` or `find`, a database scanned, not a
/// program's few lookups. Cold, each such segment costs a hundred small disk reads (its
/// stream bytes lie on that many scanlines); one pass over the PNG costs as much as a few
/// hundred of them.
const WARM_AFTER_SEGMENT_MISSES: u64 = 16;
/// PNGs smaller than this are not worth a thread.
const WARM_MIN_FILE: u64 = 32 << 20;
/// Bytes advised per step of the warming thread.
const WARM_STEP: u64 = 4 << 20;

/// `MemAvailable` of /proc/meminfo in bytes (0 when unknown: nothing is warmed).
fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib << 10)
}

/// A tile and its position in a request.
type IndexedTile = (usize, Arc<[u8]>);

/// Cache keys of decoded compressed segments have this bit set; tiles never do.
const SEGMENT_KEY_BIT: u64 = 1 << 63;
/// Block size of the CRC-32s that guard a spilled (decoded once to disk) payload.
const SPILL_BLOCK: u64 = 64 << 10;

/// How to open a [`Reader`].
#[derive(Clone, Debug)]
pub struct ReaderOptions {
    /// The tile cache, shared by all readers that should share memory.
    pub cache: Arc<TileCache>,
    /// Where checkpoint indexes of plain PNGs are cached
    /// (default: [`checkpoint::default_cache_dir`]).
    pub checkpoint_dir: Option<PathBuf>,
    /// Where decoded compressed segments are kept between mounts (none by default).
    pub disk_cache: Option<Arc<disk_cache::DiskCache>>,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions {
            cache: Arc::new(TileCache::default()),
            checkpoint_dir: None,
            disk_cache: None,
        }
    }
}

/// Which kind of file a reader serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReaderKind {
    /// No data.
    Empty,
    /// This project's seekable layout.
    Seekable,
    /// Code mode: bytes from the base64 text.
    Code,
    /// A plain PNG read through a checkpoint index.
    Plain,
}

/// Random access to a PixelRTS file's original bytes. `Send + Sync`: share it (in an `Arc`)
/// between threads; every method takes `&self`.
pub struct Reader {
    path: PathBuf,
    /// Original bytes (`data_size`).
    len: u64,
    /// Bytes the pixels hold (`encoded_size` of a compressed payload, else `len`).
    payload_len: u64,
    /// How original bytes map to the payload, when it is compressed.
    layer: Arc<Layer>,
    grid: u64,
    key: FileKey,
    cache: Arc<TileCache>,
    /// Shared with the background read-ahead jobs of this reader.
    backend: Arc<Backend>,
    /// Where the last few reads ended: a read starting at one of them is sequential
    /// (read-ahead).
    recent_ends: [AtomicU64; RECENT_ENDS],
    next_end_slot: AtomicUsize,
    /// Whether a background read-ahead of this reader is running (one at a time).
    reading_ahead: Arc<AtomicBool>,
    /// Sequential payload bytes so far, and whether the PNG is being warmed
    /// ([`Reader::warm_png`]).
    warm: Arc<WarmState>,
    /// This image's decoded segments on disk ([`ReaderOptions::disk_cache`]).
    disk: Option<Arc<disk_cache::SegmentFile>>,
}

#[derive(Debug, Default)]
struct WarmState {
    sequential_bytes: AtomicU64,
    /// Segments small reads had to inflate.
    segment_misses: AtomicU64,
    /// Decided (once per reader, whether or not the file qualified).
    started: AtomicBool,
    /// The warming thread was started.
    thread_started: AtomicBool,
}

/// What lies between the original bytes and the payload.
enum Layer {
    /// The payload is the original bytes.
    Direct,
    /// A zlib stream of segments, indexed.
    Segments(crate::format::zindex::SegmentIndex),
    /// A compressed stream without an index: decoded whole on the first read.
    Spilled {
        dir: Option<PathBuf>,
        spill: Mutex<Option<Arc<Spill>>>,
    },
}

/// A compressed payload decoded once into an unlinked file.
struct Spill {
    file: File,
    crcs: Vec<u32>,
}

enum Backend {
    Empty,
    Seekable {
        image: SeekableImage,
        tile_bytes: u64,
        pool: Mutex<Vec<TileScratch>>,
    },
    Base64File {
        file: File,
        offset: u64,
        chars: u64,
    },
    Base64Inline(Vec<u8>),
    Plain(Plain),
}

struct Plain {
    file: File,
    grid: u64,
    tables: TileTables,
    tile_bytes: u64,
    checkpoint_dir: Option<PathBuf>,
    index: Mutex<Option<Arc<CheckpointIndex>>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("kind", &self.kind())
            .finish()
    }
}

/// A checkpoint error as a crate error naming the file.
fn from_checkpoint(path: &Path, e: CheckpointError) -> Error {
    match e {
        CheckpointError::Io { path, source } => Error::Io { path, source },
        CheckpointError::Png(e) => e,
        other => {
            let text = other.to_string();
            let prefix = format!("{}: ", path.display());
            let reason = text.strip_prefix(&prefix).unwrap_or(&text).to_string();
            Error::corrupt(path, reason)
        }
    }
}

impl Reader {
    /// Opens `path`: reads its metadata and index (no pixel data yet).
    pub fn open(path: &Path, opts: &ReaderOptions) -> Result<Self> {
        Self::from_container(Container::open(path)?, opts)
    }

    /// A reader of an opened container (it keeps the container's file open, so it reads the
    /// version that was opened).
    pub fn from_container(c: Container, opts: &ReaderOptions) -> Result<Self> {
        let path = &c.path.clone();
        let grid = c.grid;
        let key = FileKey::of(&c.file).at(path)?;
        let md = &c.metadata;
        let len = md.data_size;
        let backend = if let Some(b64) = &md.b64 {
            let chars = len.div_ceil(3) * 4;
            match b64 {
                B64Source::File { offset, len: have } => {
                    if *have != chars {
                        return Err(Error::bad_metadata(
                            path,
                            format!(
                                "{} has {have} characters; data_size {len} needs {chars}",
                                crate::format::metadata::B64_KEY
                            ),
                        ));
                    }
                    Backend::Base64File {
                        file: c.file.try_clone().at(path)?,
                        offset: *offset,
                        chars,
                    }
                }
                B64Source::Inline(s) => {
                    use base64::Engine;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(s.as_bytes())
                        .map_err(|e| {
                            Error::bad_metadata(
                                path,
                                format!(
                                    "{} is not valid base64: {e}",
                                    crate::format::metadata::B64_KEY
                                ),
                            )
                        })?;
                    if bytes.len() as u64 != len {
                        return Err(Error::bad_metadata(
                            path,
                            format!(
                                "base64 payload decodes to {} bytes, data_size is {len}",
                                bytes.len()
                            ),
                        ));
                    }
                    Backend::Base64Inline(bytes)
                }
            }
        } else if md.pixel_payload_size == 0 {
            Backend::Empty
        } else if (!md.compressed && md.pixel_payload_size != len)
            || u128::from(md.pixel_payload_size) > crate::format::capacity(c.grid)
        {
            return Err(Error::bad_metadata(
                path,
                format!(
                    "data_size {len} does not fit the pixel payload ({} bytes, grid {})",
                    md.pixel_payload_size, c.grid
                ),
            ));
        } else if let Some(image) = c.seekable {
            let tile_bytes = 4 * image.tables.tile_pixels();
            Backend::Seekable {
                image,
                tile_bytes,
                pool: Mutex::new(Vec::new()),
            }
        } else {
            let tables = band_tables(grid, MAX_BAND_BYTES);
            let side = tables.tile_side();
            Backend::Plain(Plain {
                file: c.file.try_clone().at(path)?,
                grid,
                tile_bytes: 4 * side * side,
                tables,
                checkpoint_dir: opts.checkpoint_dir.clone(),
                index: Mutex::new(None),
            })
        };
        let layer = match (md.compressed, c.segments) {
            (false, _) => Layer::Direct,
            (true, Some(index)) => Layer::Segments(index),
            (true, None) => Layer::Spilled {
                dir: opts.checkpoint_dir.clone(),
                spill: Mutex::new(None),
            },
        };
        if md.compressed && len > 0 && matches!(backend, Backend::Empty) {
            return Err(Error::corrupt(
                path,
                format!("compression is set but encoded_size is 0 for {len} bytes of data"),
            ));
        }
        let disk = match (&layer, &opts.disk_cache, &md.data_hash) {
            (Layer::Segments(index), Some(cache), Some(hash)) => {
                cache.segments(hash, index.segment_size, len).map(Arc::new)
            }
            _ => None,
        };
        Ok(Reader {
            disk,
            path: path.to_path_buf(),
            len,
            payload_len: md.pixel_payload_size,
            layer: Arc::new(layer),
            grid,
            key,
            cache: opts.cache.clone(),
            backend: Arc::new(backend),
            recent_ends: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            next_end_slot: AtomicUsize::new(0),
            reading_ahead: Arc::new(AtomicBool::new(false)),
            warm: Arc::default(),
        })
    }

    /// The file this reader reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Length of the original data (`data_size`).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Image side in pixels.
    pub fn grid(&self) -> u64 {
        self.grid
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Which kind of file this is.
    pub fn kind(&self) -> ReaderKind {
        match &*self.backend {
            Backend::Empty => ReaderKind::Empty,
            Backend::Seekable { .. } => ReaderKind::Seekable,
            Backend::Base64File { .. } | Backend::Base64Inline(_) => ReaderKind::Code,
            Backend::Plain(_) => ReaderKind::Plain,
        }
    }

    /// Whether the pixels hold a compressed stream of the data.
    pub fn is_compressed(&self) -> bool {
        !matches!(*self.layer, Layer::Direct)
    }

    /// Bytes of payload per tile (0 for files not read by tiles).
    pub fn tile_bytes(&self) -> u64 {
        match &*self.backend {
            Backend::Seekable { tile_bytes, .. } => *tile_bytes,
            Backend::Plain(p) => p.tile_bytes,
            _ => 0,
        }
    }

    /// The cache this reader uses.
    pub fn cache(&self) -> &Arc<TileCache> {
        &self.cache
    }

    /// The file's identity as used in cache keys.
    pub fn file_key(&self) -> FileKey {
        self.key
    }

    /// Reads up to `buf.len()` bytes at `offset` into `buf`; returns how many were read: 0 at
    /// or after the end, fewer than asked only at the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let n = (self.len - offset).min(buf.len() as u64) as usize;
        let buf = &mut buf[..n];
        match &*self.layer {
            Layer::Direct => self.read_payload(offset, buf)?,
            Layer::Segments(index) => self.read_segments(index, offset, buf)?,
            Layer::Spilled { dir, spill } => self.read_spilled(dir, spill, offset, buf)?,
        }
        self.cache.add_served(n as u64);
        Ok(n)
    }

    /// Payload bytes `[offset, offset + buf.len())`, which must lie inside the payload.
    fn read_payload(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &*self.backend {
            // Callers' buffers are not zeroed (the mount reuses them): write every byte.
            Backend::Empty => buf.fill(0),
            Backend::Base64Inline(bytes) => {
                buf.copy_from_slice(&bytes[offset as usize..offset as usize + buf.len()]);
            }
            Backend::Base64File {
                file,
                offset: text_at,
                chars,
            } => self.read_base64(file, *text_at, *chars, offset, buf)?,
            Backend::Seekable { tile_bytes, .. } => self.read_tiles(*tile_bytes, offset, buf)?,
            Backend::Plain(p) => self.read_tiles(p.tile_bytes, offset, buf)?,
        }
        Ok(())
    }

    /// Original bytes of a compressed payload through its segment index: the segments the
    /// range touches, each from the cache or inflated and checked (in parallel when several).
    ///
    /// A segment the range covers whole is inflated straight into `buf` and not cached: a
    /// sequential reader (`cp`, `decode`, the kernel's read-ahead) never asks for it again, and
    /// caching it cost a fresh buffer — zeroed and faulted in page by page — plus a copy per
    /// segment: a quarter of the mount's CPU in a `cp` of compressible content. Segments the
    /// range covers in part (small and random reads) are cached, and decoded once however
    /// many threads want them.
    fn read_segments(
        &self,
        index: &crate::format::zindex::SegmentIndex,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let end = offset + buf.len() as u64;
        let first = index.segment_of(offset);
        let last = index.segment_of(end - 1);
        // Each segment's share of `buf`, and the segment when the cache holds it.
        let mut parts = Vec::with_capacity((last - first + 1) as usize);
        let mut rest = &mut *buf;
        for s in first..=last {
            let (x, y) = index.original_range(s);
            let (a, b) = (offset.max(x), end.min(y));
            let (share, tail) = std::mem::take(&mut rest).split_at_mut((b - a) as usize);
            rest = tail;
            let cached = self.cache.get(&self.tile_key(SEGMENT_KEY_BIT | s));
            let whole = (a, b) == (x, y);
            parts.push(SegmentPart {
                s,
                skip: (a - x) as usize,
                whole,
                cached,
                share,
                on_disk: false,
            });
        }
        // Segments on disk ([`ReaderOptions::disk_cache`]) need no stream bytes: whole ones
        // are read straight into `buf` here; others are read by `missing_segment`, once
        // however many threads want them.
        if let Some(disk) = &self.disk {
            for part in parts.iter_mut().filter(|p| p.cached.is_none()) {
                let (x, _) = index.original_range(part.s);
                part.on_disk = if part.whole {
                    disk.read(x, part.share, index.crcs[part.s as usize])
                } else {
                    disk.holds(x)
                };
            }
        }
        // Several segments to inflate: their stream bytes are one range, fetched at once —
        // for a large read through whole tiles (one read per scanline for adjacent tiles,
        // decoded in parallel, sequential read-ahead and warming), for a small one straddling
        // a boundary straight from the raw pieces, as a lone segment's are (whole tiles would
        // read and check up to 8 times the bytes it needs).
        let mut missing = parts
            .iter()
            .filter(|p| p.cached.is_none() && !p.on_disk)
            .map(|p| p.s);
        // The first and the last missing segment; `m1` is None when only one is missing.
        let (m0, m1) = (missing.next(), missing.next_back());
        let mut coded = Vec::new();
        let fetched = match (m0, m1) {
            (Some(m0), Some(m1)) => {
                let (a, _) = index.coded_range(m0);
                let (_, z) = index.coded_range(m1);
                if z > self.payload_len || a > z {
                    return Err(Error::corrupt(
                        &self.path,
                        format!("compressed segments {m0}..={m1} end past the payload"),
                    ));
                }
                // Every byte is written by the read before it is used.
                coded.resize((z - a) as usize, 0);
                if end - offset <= u64::from(index.segment_size) {
                    self.read_segment_bytes(a, &mut coded)?;
                } else {
                    self.read_payload(a, &mut coded)?;
                }
                Some((a, &coded[..]))
            }
            _ => None,
        };
        // A whole segment missing from the cache is inflated without claiming it: two
        // threads reading the same whole segment at once (which the kernel's page cache
        // makes rare) both inflate it.
        let serve = |part: SegmentPart<'_>| -> Result<()> {
            let seg = match part.cached {
                Some(seg) => seg,
                None if part.whole && part.on_disk => return Ok(()),
                None if part.whole => {
                    return self.inflate_segment(index, part.s, fetched, part.share)
                }
                None => self.missing_segment(index, part.s, fetched)?,
            };
            part.share
                .copy_from_slice(&seg[part.skip..part.skip + part.share.len()]);
            Ok(())
        };
        if parts.len() == 1 {
            parts.into_iter().try_for_each(serve)?;
        } else {
            parts.into_par_iter().try_for_each(serve)?;
        }
        Ok(())
    }

    /// Stream bytes `[a, a + out.len())` of a compressed payload, for segments whose own
    /// CRC-32s check them after inflating: straight from the raw pieces that hold them where
    /// the layout allows, without decoding (and CRC-checking) the whole tiles around them;
    /// otherwise through verified tiles.
    fn read_segment_bytes(&self, a: u64, out: &mut [u8]) -> Result<()> {
        let direct = match &*self.backend {
            Backend::Seekable { image, .. } => {
                let mut band = ScratchBuffer::take(&RAW_BANDS);
                let direct = image.read_raw_payload(a, out, &mut band)?;
                band.give_back();
                direct
            }
            _ => false,
        };
        if !direct {
            self.read_payload(a, out)?;
        }
        Ok(())
    }

    /// Adds `n` to one of the reader's warming counters (sequential bytes, segment misses);
    /// the first to reach its threshold has the PNG warmed ([`Self::warm_png`]), once.
    fn count_toward_warming(&self, counter: &AtomicU64, n: u64, threshold: u64) {
        let seen = counter.fetch_add(n, Ordering::Relaxed) + n;
        if seen >= threshold && !self.warm.started.swap(true, Ordering::AcqRel) {
            self.warm_png();
        }
    }

    /// Segment `s`, which the cache did not hold, decoded once: a thread that finds another
    /// decoding it waits (except on a rayon worker, which decodes it again rather than block;
    /// see `tiles`). From the disk cache when it holds an intact copy, else inflated (and
    /// written there). `fetched` is stream bytes already read, `(payload offset, bytes)`, used
    /// when they cover the segment.
    fn missing_segment(
        &self,
        index: &crate::format::zindex::SegmentIndex,
        s: u64,
        fetched: Option<(u64, &[u8])>,
    ) -> Result<Arc<[u8]>> {
        let key = self.tile_key(SEGMENT_KEY_BIT | s);
        let _claim = loop {
            match self.cache.claim(key) {
                Some(claim) => break Some(claim),
                None if rayon::current_thread_index().is_some() => break None,
                None => {
                    self.cache.wait_for(&key);
                    if let Some(seg) = self.cache.peek(&key) {
                        return Ok(seg);
                    }
                }
            }
        };
        // Inserted by another thread since this one looked?
        if let Some(seg) = self.cache.peek(&key) {
            return Ok(seg);
        }
        let (x, y) = index.original_range(s);
        let mut out = self.cache.buffer((y - x) as usize);
        let buf = Arc::get_mut(&mut out).expect("a fresh cache buffer is not shared");
        let on_disk = (self.disk.as_ref()).is_some_and(|d| d.read(x, buf, index.crcs[s as usize]));
        if !on_disk {
            // A small read's miss of the PNG counts toward warming it.
            self.count_toward_warming(&self.warm.segment_misses, 1, WARM_AFTER_SEGMENT_MISSES);
            self.inflate_segment(index, s, fetched, buf)?;
        }
        self.cache.insert(key, out.clone());
        Ok(out)
    }

    /// Inflates segment `s` into `out` (exactly its size) and checks its CRC-32, then keeps a
    /// copy in the disk cache when there is one. Its stream bytes come from `fetched` when
    /// that covers them, else are read here.
    fn inflate_segment(
        &self,
        index: &crate::format::zindex::SegmentIndex,
        s: u64,
        fetched: Option<(u64, &[u8])>,
        out: &mut [u8],
    ) -> Result<()> {
        let (a, z) = index.coded_range(s);
        let (x, y) = index.original_range(s);
        if z > self.payload_len || a > z {
            return Err(Error::corrupt(
                &self.path,
                format!("compressed segment {s} ends past the payload"),
            ));
        }
        let mut own = Vec::new();
        let coded: &[u8] = match fetched {
            Some((base, bytes)) if base <= a && z <= base + bytes.len() as u64 => {
                &bytes[(a - base) as usize..(z - base) as usize]
            }
            _ => {
                // Every byte is written by the read below before it is used.
                own.resize((z - a) as usize, 0);
                self.read_segment_bytes(a, &mut own)?;
                &own
            }
        };
        crate::format::segment::inflate_segment(coded, out).map_err(|e| {
            Error::corrupt(
                &self.path,
                format!("compressed segment {s} (bytes {x}..{y}): {e}"),
            )
        })?;
        if crc32fast::hash(out) != index.crcs[s as usize] {
            return Err(Error::corrupt(
                &self.path,
                format!("compressed segment {s} (bytes {x}..{y}) fails its CRC-32"),
            ));
        }
        self.cache.add_inflated(y - x);
        if let Some(disk) = &self.disk {
            disk.write(x, out);
        }
        Ok(())
    }

    /// Original bytes of a compressed payload without an index, from its one-time decode.
    fn read_spilled(
        &self,
        dir: &Option<PathBuf>,
        spill: &Mutex<Option<Arc<Spill>>>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let spill = {
            let mut slot = spill.lock().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some(s) => s.clone(),
                None => {
                    let made = Arc::new(self.spill(dir)?);
                    *slot = Some(made.clone());
                    made
                }
            }
        };
        let end = offset + buf.len() as u64;
        let first = offset / SPILL_BLOCK;
        let mut block = vec![0u8; SPILL_BLOCK as usize];
        for b in first..=(end - 1) / SPILL_BLOCK {
            let start = b * SPILL_BLOCK;
            let len = (self.len - start).min(SPILL_BLOCK) as usize;
            spill
                .file
                .read_exact_at(&mut block[..len], start)
                .at(&self.path)?;
            if crc32fast::hash(&block[..len]) != spill.crcs[b as usize] {
                return Err(Error::corrupt(
                    &self.path,
                    format!("decoded copy changed on disk (block at {start})"),
                ));
            }
            let a = offset.max(start);
            let z = end.min(start + len as u64);
            buf[(a - offset) as usize..(z - offset) as usize]
                .copy_from_slice(&block[(a - start) as usize..(z - start) as usize]);
        }
        Ok(())
    }

    /// Decodes the whole file once, verified against `data_hash`, into an unlinked file in the
    /// checkpoint directory, recording a CRC-32 per block.
    fn spill(&self, dir: &Option<PathBuf>) -> Result<Spill> {
        let dir = dir
            .clone()
            .or_else(checkpoint::default_cache_dir)
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&dir).at(&dir)?;
        let file = tempfile::tempfile_in(&dir).at(&dir)?;
        let mut sink = BlockCrcWriter {
            file: &file,
            at: 0,
            block: Vec::with_capacity(SPILL_BLOCK as usize),
            crcs: Vec::new(),
        };
        let opts = crate::decode::DecodeOptions {
            verify: true,
            ..Default::default()
        };
        crate::decode::decode_to_writer(&self.path, &mut sink, &opts)?;
        use std::io::Write;
        sink.flush().at(&dir)?;
        let crcs = std::mem::take(&mut sink.crcs);
        Ok(Spill { file, crcs })
    }

    /// Fills `buf` completely from `offset` (an error if the data ends first).
    pub fn read_exact_at(&self, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(offset, buf)?;
            if n == 0 {
                return Err(Error::io(
                    &self.path,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "read past the end of the data",
                    ),
                ));
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    fn read_base64(
        &self,
        file: &File,
        text_at: u64,
        chars: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        use base64::Engine;
        let end = offset + buf.len() as u64;
        let g0 = offset / 3;
        let c0 = g0 * 4;
        let c1 = (end.div_ceil(3) * 4).min(chars);
        let mut text = vec![0u8; (c1 - c0) as usize];
        file.read_exact_at(&mut text, text_at + c0).at(&self.path)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .map_err(|e| {
                Error::bad_metadata(
                    &self.path,
                    format!(
                        "{} is not valid base64 at characters {c0}..{c1}: {e}",
                        crate::format::metadata::B64_KEY
                    ),
                )
            })?;
        let skip = (offset - g0 * 3) as usize;
        if bytes.len() < skip + buf.len() {
            return Err(Error::bad_metadata(
                &self.path,
                format!("{} ends before data_size", crate::format::metadata::B64_KEY),
            ));
        }
        buf.copy_from_slice(&bytes[skip..skip + buf.len()]);
        self.cache.add_inflated(bytes.len() as u64);
        Ok(())
    }

    fn tile_key(&self, j: u64) -> TileKey {
        TileKey {
            file: self.key,
            tile: j,
        }
    }

    /// Payload bytes of tile `j` (the last tile may be short).
    fn tile_len(&self, tile_bytes: u64, j: u64) -> usize {
        (self.payload_len - j * tile_bytes).min(tile_bytes) as usize
    }

    fn read_tiles(&self, tile_bytes: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        let first = offset / tile_bytes;
        let last = (end - 1) / tile_bytes;
        // Sequential: starts where one of the last few reads ended. Not only the last one: a
        // mount serves the kernel's read-ahead requests on several threads, so consecutive
        // ranges arrive slightly out of order.
        let sequential = self
            .recent_ends
            .iter()
            .any(|e| e.load(Ordering::Relaxed) == offset);
        let slot = self.next_end_slot.fetch_add(1, Ordering::Relaxed) % RECENT_ENDS;
        self.recent_ends[slot].store(end, Ordering::Relaxed);
        let js: Vec<u64> = (first..=last).collect();
        for batch in js.chunks(BATCH_TILES) {
            let tiles = self.tiles(batch)?;
            for (&j, tile) in batch.iter().zip(&tiles) {
                let t0 = j * tile_bytes;
                let a = offset.max(t0);
                let b = end.min(t0 + tile.len() as u64);
                buf[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&tile[(a - t0) as usize..(b - t0) as usize]);
            }
            drop(tiles);
            // A sequential reader is done with the tiles whose end it has read.
            if sequential {
                for &j in batch {
                    if (j + 1) * tile_bytes <= end {
                        self.cache.release(&self.tile_key(j));
                    }
                }
            }
        }
        if sequential {
            self.read_ahead(tile_bytes, last);
            self.count_toward_warming(
                &self.warm.sequential_bytes,
                buf.len() as u64,
                WARM_AFTER_SEQUENTIAL,
            );
        }
        Ok(())
    }

    /// Whether this reader has started reading its whole PNG ahead ([`Self::warm_png`]).
    pub fn warming(&self) -> bool {
        self.warm.thread_started.load(Ordering::Acquire)
    }

    /// A file read from end to end: its PNG is read from the disk front to back, in the
    /// background (`POSIX_FADV_WILLNEED`, WARM_STEP at a time). The payload follows the Hilbert
    /// curve, so reading the original bytes in order touches the PNG's rows all over the file,
    /// a few hundred bytes of each at a time: cold, those are tens of thousands of small disk
    /// reads (a `cp` of the OS image: 54,837 reads of 8 KB on average), where one pass over
    /// the file is a few hundred large ones. Only for a PNG that fits four times into the
    /// memory available (page cache, reclaimable: warming must not push out what it warms);
    /// stops once every handle on the reader is gone.
    fn warm_png(&self) {
        let file = match &*self.backend {
            Backend::Seekable { image, .. } => image.file(),
            Backend::Plain(p) => &p.file,
            _ => return,
        };
        let Ok(len) = file.metadata().map(|m| m.len()) else {
            return;
        };
        if len < WARM_MIN_FILE || len.saturating_mul(4) > mem_available() {
            return;
        }
        let Ok(file) = file.try_clone() else {
            return;
        };
        let alive = Arc::downgrade(&self.backend);
        let spawned = std::thread::Builder::new()
            .name("pixelrts-warm".into())
            .spawn(move || {
                use std::os::fd::AsRawFd;
                let advise = |at: u64| {
                    // SAFETY: a valid descriptor; advice only.
                    unsafe {
                        libc::posix_fadvise(
                            file.as_raw_fd(),
                            at as libc::off_t,
                            WARM_STEP.min(len - at) as libc::off_t,
                            libc::POSIX_FADV_WILLNEED,
                        );
                    }
                };
                // Two steps in flight at most: the reads of the step before are waited for
                // (by reading its last byte) before another is started. Advising the whole
                // file at once queued hundreds of megabytes at the device, and a reader's
                // own small reads waited behind them (one `tar` read: 306 ms).
                let mut at = 0;
                advise(at);
                while at < len && alive.strong_count() > 0 {
                    let next = at + WARM_STEP;
                    if next < len {
                        advise(next);
                    }
                    let mut last = [0u8; 1];
                    let _ = file.read_at(&mut last, next.min(len) - 1);
                    at = next;
                }
            });
        match spawned {
            Ok(_) => self.warm.thread_started.store(true, Ordering::Release),
            Err(e) => tracing::debug!("{}: no thread to warm the PNG: {e}", self.path.display()),
        }
    }

    /// Read-ahead of a sequential read that ended in tile `last` of a seekable file: decodes
    /// and caches the rest of its aligned block of [`READAHEAD_TILES`] tiles now (when a
    /// background job has not already), and starts a background job for the next block, so
    /// that decoding block B+1 overlaps the caller's use of block B (under a mount, the
    /// kernel copying it out). Best effort: a damaged tile fails the read that needs it, not
    /// the one before it.
    fn read_ahead(&self, tile_bytes: u64, last: u64) {
        if !matches!(*self.backend, Backend::Seekable { .. }) {
            return;
        }
        // A cache too small for the blocks ahead would evict them before they are read.
        let block_bytes = READAHEAD_TILES * tile_bytes;
        if self.cache.budget() < 2 * block_bytes {
            return;
        }
        let tiles = self.payload_len.div_ceil(tile_bytes);
        let block_end = ((last / READAHEAD_TILES + 1) * READAHEAD_TILES).min(tiles);
        // One probe, not 64: a block's last tile is cached once the block was read ahead.
        let block_cached = |end: u64| self.cache.peek(&self.tile_key(end - 1)).is_some();
        if block_end > last + 1 && !block_cached(block_end) {
            let ahead: Vec<u64> = (last + 1..block_end).collect();
            if let Err(e) = self.read_ahead_tiles(&ahead) {
                tracing::debug!("read-ahead: {e}");
            }
        }
        let next_end = (block_end + READAHEAD_TILES).min(tiles);
        // Not from a rayon worker: its caller's pool would run the job nested in its own
        // joins, where a tile the job holds is decoded a second time rather than waited for
        // (see `tiles`). Mount threads and plain callers are not workers.
        if next_end > block_end
            && rayon::current_thread_index().is_none()
            && self.cache.budget() >= 4 * block_bytes
            && !block_cached(next_end)
            && !self.reading_ahead.swap(true, Ordering::AcqRel)
        {
            let shared = self.share();
            rayon::spawn(move || {
                let ahead: Vec<u64> = (block_end..next_end).collect();
                if let Err(e) = shared.read_ahead_tiles(&ahead) {
                    tracing::debug!("read-ahead: {e}");
                }
                shared.reading_ahead.store(false, Ordering::Release);
            });
        }
    }

    /// Another handle on this reader's file, tables and cache (cheap: the backend is shared),
    /// for background jobs that outlive a `&self` borrow.
    fn share(&self) -> Reader {
        Reader {
            path: self.path.clone(),
            len: self.len,
            payload_len: self.payload_len,
            layer: self.layer.clone(),
            grid: self.grid,
            key: self.key,
            cache: self.cache.clone(),
            backend: self.backend.clone(),
            recent_ends: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            next_end_slot: AtomicUsize::new(0),
            reading_ahead: self.reading_ahead.clone(),
            warm: self.warm.clone(),
            disk: self.disk.clone(),
        }
    }

    /// Tiles `js` (payload bytes), from the cache or decoded (in parallel when several miss).
    ///
    /// A tile another thread is decoding now is waited for, except on a rayon worker: a
    /// worker may be running, further down its own stack, the very job the other thread
    /// waits for (rayon runs stolen jobs on top of a blocked `join`), so blocking there can
    /// deadlock; a worker decodes such a tile again instead.
    fn tiles(&self, js: &[u64]) -> Result<Vec<Arc<[u8]>>> {
        let mut out: Vec<Option<Arc<[u8]>>> = js
            .iter()
            .map(|&j| self.cache.get(&self.tile_key(j)))
            .collect();
        let in_flight = self.claim_and_decode(js, &mut out)?;
        if rayon::current_thread_index().is_some() {
            self.decode_missing(js, &in_flight, &mut out)?;
        } else {
            for i in in_flight {
                let key = self.tile_key(js[i]);
                self.cache.wait_for(&key);
                out[i] = match self.cache.peek(&key) {
                    Some(tile) => Some(tile),
                    // The other decode failed (or the tile was evicted already): decode it
                    // here, so that its error, if any, is this read's error too.
                    None => self.tiles(&js[i..=i])?.pop(),
                };
            }
        }
        Ok(out
            .into_iter()
            .map(|t| t.expect("every tile decoded"))
            .collect())
    }

    /// Read-ahead: decodes and caches the tiles of `js` that are neither cached nor being
    /// decoded by another thread. Never waits (it runs on rayon workers too).
    fn read_ahead_tiles(&self, js: &[u64]) -> Result<()> {
        let mut out: Vec<Option<Arc<[u8]>>> = js
            .iter()
            .map(|&j| self.cache.peek(&self.tile_key(j)))
            .collect();
        self.claim_and_decode(js, &mut out).map(|_| ())
    }

    /// Claims the tiles of `js` missing from `out`, decodes them into `out` (and the cache)
    /// and returns the indexes of those another thread is decoding now.
    fn claim_and_decode(&self, js: &[u64], out: &mut [Option<Arc<[u8]>>]) -> Result<Vec<usize>> {
        let mut missing = Vec::new();
        let mut claims = Vec::new();
        let mut in_flight = Vec::new();
        for i in 0..js.len() {
            if out[i].is_some() {
                continue;
            }
            let key = self.tile_key(js[i]);
            match self.cache.claim(key) {
                // Decoded and inserted between the lookup and the claim.
                Some(_) if self.cache.peek(&key).is_some() => out[i] = self.cache.peek(&key),
                Some(claim) => {
                    missing.push(i);
                    claims.push(claim);
                }
                None => in_flight.push(i),
            }
        }
        let decoded = self.decode_missing(js, &missing, out);
        // Wake the waiters only once everything this call decoded is cached.
        drop(claims);
        decoded.map(|()| in_flight)
    }

    /// Decodes the tiles `js[i]` for `i` in `missing` into `out[i]` (and the cache).
    fn decode_missing(
        &self,
        js: &[u64],
        missing: &[usize],
        out: &mut [Option<Arc<[u8]>>],
    ) -> Result<()> {
        if missing.is_empty() {
            return Ok(());
        }
        match &*self.backend {
            Backend::Seekable {
                image,
                tile_bytes,
                pool,
            } => {
                let runs = adjacent_runs(&image.tables, js, missing);
                let decode = |run: &Vec<usize>| -> Result<Vec<IndexedTile>> {
                    let tiles = self.decode_seekable_run(image, pool, *tile_bytes, js, run)?;
                    Ok(run.iter().copied().zip(tiles).collect())
                };
                let decoded: Vec<Result<Vec<IndexedTile>>> = if runs.len() > 1 {
                    runs.par_iter().map(decode).collect()
                } else {
                    runs.iter().map(decode).collect()
                };
                for r in decoded {
                    for (i, tile) in r? {
                        out[i] = Some(tile);
                    }
                }
            }
            Backend::Plain(p) => {
                let index = self.checkpoint_index(p)?;
                let mut bands: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
                for &i in missing {
                    bands
                        .entry(p.tables.place_of(js[i]).row)
                        .or_default()
                        .push(i);
                }
                let bands: Vec<(u64, Vec<usize>)> = bands.into_iter().collect();
                let read = |(row, wanted): &(u64, Vec<usize>)| -> Result<Vec<IndexedTile>> {
                    let tiles = self.read_band(p, &index, *row)?;
                    Ok(wanted
                        .iter()
                        .map(|&i| {
                            let t = tiles
                                .iter()
                                .find(|(j, _)| *j == js[i])
                                .map(|(_, t)| t.clone())
                                .expect("band holds the tile");
                            (i, t)
                        })
                        .collect())
                };
                let decoded: Vec<Result<Vec<IndexedTile>>> = if bands.len() > 1 {
                    bands.par_iter().map(read).collect()
                } else {
                    bands.iter().map(read).collect()
                };
                for r in decoded {
                    for (i, tile) in r? {
                        out[i] = Some(tile);
                    }
                }
            }
            _ => unreachable!("only tiled backends read tiles"),
        }
        Ok(())
    }

    /// Decodes the tiles `js[i]` for `i` in `run` (one stripe, adjacent columns, left to
    /// right), caches them and returns them in `run` order.
    fn decode_seekable_run(
        &self,
        image: &SeekableImage,
        pool: &Mutex<Vec<TileScratch>>,
        tile_bytes: u64,
        js: &[u64],
        run: &[usize],
    ) -> Result<Vec<Arc<[u8]>>> {
        let mut scratch = pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| TileScratch::new(image));
        let tiles: Vec<u64> = run.iter().map(|&i| js[i]).collect();
        // Allocated as the cache's `Arc<[u8]>` from the start: converting a Vec would copy
        // every tile once more (measured: a fifth of sequential reading time).
        let mut payloads: Vec<Arc<[u8]>> = tiles
            .iter()
            .map(|&j| self.cache.buffer(self.tile_len(tile_bytes, j)))
            .collect();
        let outputs: Option<Vec<&mut [u8]>> = payloads.iter_mut().map(Arc::get_mut).collect();
        let mut pixels = ScratchBuffer::take(&RUN_PIXELS);
        let result = if let Some(mut outputs) = outputs {
            let place = image.tables.place_of(tiles[0]);
            image.decode_run(
                place.row,
                place.column,
                &tiles,
                &mut outputs,
                &mut scratch,
                &mut pixels,
            )
        } else {
            // `TileCache::buffer` only hands out unique buffers.
            Err(Error::io(
                &self.path,
                std::io::Error::other("tile buffer is shared"),
            ))
        };
        pixels.give_back();
        pool.lock().unwrap_or_else(|p| p.into_inner()).push(scratch);
        result?;
        self.cache.add_inflated(tile_bytes * tiles.len() as u64);
        Ok(tiles
            .iter()
            .zip(payloads)
            .map(|(&j, payload)| {
                self.cache.insert(self.tile_key(j), payload.clone());
                payload
            })
            .collect())
    }

    /// The checkpoint index of a plain PNG, loaded or built on first use.
    fn checkpoint_index(&self, p: &Plain) -> Result<Arc<CheckpointIndex>> {
        let mut slot = p.index.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(idx) = &*slot {
            return Ok(idx.clone());
        }
        let (idx, status) = CheckpointIndex::load_or_build_file(
            &p.file,
            &self.path,
            p.checkpoint_dir.as_deref(),
            checkpoint::DEFAULT_SPACING,
        )
        .map_err(|e| from_checkpoint(&self.path, e))?;
        tracing::debug!("{}: checkpoint index {status:?}", self.path.display());
        if u64::from(idx.width()) != p.grid || u64::from(idx.height()) != p.grid {
            return Err(Error::corrupt(
                &self.path,
                format!(
                    "image is {}x{}, the checkpoint index was built for another file",
                    idx.width(),
                    idx.height()
                ),
            ));
        }
        let idx = Arc::new(idx);
        *slot = Some(idx.clone());
        Ok(idx)
    }

    /// Reads the band of tile rows `row` of a plain PNG and returns (and caches) every tile
    /// in it that holds payload.
    fn read_band(
        &self,
        p: &Plain,
        index: &CheckpointIndex,
        row: u64,
    ) -> Result<Vec<(u64, Arc<[u8]>)>> {
        let t = p.tables.tile_side();
        let row_bytes = (4 * p.grid) as usize;
        let mut band = vec![0u8; t as usize * row_bytes];
        index
            .read_rows(&p.file, (row * t) as u32, t as u32, &mut band)
            .map_err(|e| from_checkpoint(&self.path, e))?;
        self.cache.add_inflated(band.len() as u64);
        let mut tile = vec![0u8; (4 * t * t) as usize];
        let mut tiles = Vec::new();
        for column in 0..p.tables.tiles_per_side() {
            let place = p.tables.place_at(column, row);
            let j = place.hilbert_index;
            if j * p.tile_bytes >= self.payload_len {
                continue;
            }
            let mut payload = vec![0u8; self.tile_len(p.tile_bytes, j)];
            gather_tile_from_band(&p.tables, &place, &band, &mut tile, &mut payload);
            let payload: Arc<[u8]> = payload.into();
            self.cache.insert(self.tile_key(j), payload.clone());
            tiles.push((j, payload));
        }
        Ok(tiles)
    }
}

/// Writes decoded bytes to a file and records the CRC-32 of every [`SPILL_BLOCK`] of them.
struct BlockCrcWriter<'a> {
    file: &'a File,
    at: u64,
    block: Vec<u8>,
    crcs: Vec<u32>,
}

impl std::io::Write for BlockCrcWriter<'_> {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let take = (SPILL_BLOCK as usize - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() == SPILL_BLOCK as usize {
                self.flush()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.block.is_empty() {
            self.file.write_all_at(&self.block, self.at)?;
            self.crcs.push(crc32fast::hash(&self.block));
            self.at += self.block.len() as u64;
            self.block.clear();
        }
        Ok(())
    }
}

/// One segment's share of a read: `share` is `buf`'s bytes from the segment's byte `skip` on.
struct SegmentPart<'a> {
    s: u64,
    skip: usize,
    /// The read covers the whole segment.
    whole: bool,
    cached: Option<Arc<[u8]>>,
    share: &'a mut [u8],
    /// The disk cache holds the segment (a whole one: `share` was filled from it).
    on_disk: bool,
}

/// A byte buffer kept between uses, so that a decode's working bytes land in memory already
/// faulted in rather than in a fresh, zeroed allocation each time (a run of 8 tiles' pixels is
/// 2 MiB: allocated per run, it came from `mmap` and cost a random-data `cp` through the mount
/// a fifth of its CPU in page faults and zeroing). Kept in a small pool shared by all threads
/// and readers: the mount has a dozen threads and keeps idle readers, and what they keep
/// counts against its memory bound (cache size + 64 MiB; a buffer per thread went over it).
/// Its length is kept: callers `resize` it and write every byte they use, so only growth is
/// zeroed.
struct ScratchBuffer {
    bytes: Vec<u8>,
    pool: &'static ScratchPool,
}

/// The buffers of one kind kept for reuse: at most `count`, each at most `keep` bytes.
struct ScratchPool {
    kept: Mutex<Vec<Vec<u8>>>,
    keep: usize,
    count: usize,
}

/// Row-major pixels of a run of adjacent tiles being decoded: 2 MiB for a run of 8. One is
/// kept: the 10-minute soak went over its memory bound with two of these and two of a read's
/// stream bytes kept (133 MiB of 128; the session 9 binary and none kept: 116 MiB halfway).
static RUN_PIXELS: ScratchPool = ScratchPool {
    kept: Mutex::new(Vec::new()),
    keep: 2 << 20,
    count: 1,
};

/// The rows a small read's stream bytes lie on, as [`SeekableImage::read_raw_payload`] reads
/// them: ~100 KiB for a 128 KiB segment at the default tile side. Two are kept (a miss used
/// to zero a fresh one).
static RAW_BANDS: ScratchPool = ScratchPool {
    kept: Mutex::new(Vec::new()),
    keep: 256 << 10,
    count: 2,
};

impl ScratchBuffer {
    fn take(pool: &'static ScratchPool) -> Self {
        let bytes = pool
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        ScratchBuffer { bytes, pool }
    }

    /// Keeps the buffer for a later use (dropped instead when it grew too big or enough are
    /// kept).
    fn give_back(mut self) {
        if self.bytes.capacity() <= self.pool.keep {
            let mut kept = self.pool.kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() < self.pool.count {
                kept.push(std::mem::take(&mut self.bytes));
            }
        }
    }
}

impl std::ops::Deref for ScratchBuffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.bytes
    }
}

impl std::ops::DerefMut for ScratchBuffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_follow_stripes_and_adjacent_columns() {
        let tables = TileTables::new(64, 4); // 16x16 tiles
        let js: Vec<u64> = (0..16).collect(); // an aligned 4x4 block of tiles
        let missing: Vec<usize> = (0..16).collect();
        let runs = adjacent_runs(&tables, &js, &missing);
        assert_eq!(runs.len(), 4, "{runs:?}");
        for run in &runs {
            assert_eq!(run.len(), 4);
            let places: Vec<_> = run.iter().map(|&i| tables.place_of(js[i])).collect();
            for w in places.windows(2) {
                assert_eq!(w[0].row, w[1].row);
                assert_eq!(w[0].column + 1, w[1].column);
            }
        }
        // A gap splits a run.
        let missing = [0usize, 2];
        let runs = adjacent_runs(&tables, &js, &missing);
        assert_eq!(runs.iter().map(Vec::len).sum::<usize>(), 2);
    }

    #[test]
    fn scratch_buffers_are_kept_and_a_nested_use_gets_its_own() {
        static POOL: ScratchPool = ScratchPool {
            kept: Mutex::new(Vec::new()),
            keep: 4096,
            count: 2,
        };
        let mut outer = ScratchBuffer::take(&POOL);
        outer.resize(1000, 7);
        let kept = outer.as_ptr();
        let inner = ScratchBuffer::take(&POOL);
        assert_eq!(inner.capacity(), 0, "a nested use got the outer buffer");
        outer.give_back();
        let again = ScratchBuffer::take(&POOL);
        assert_eq!(again.as_ptr(), kept, "the buffer was not kept");
        assert_eq!(again.len(), 1000, "its length was not kept");
        let mut grown = again;
        grown.resize(POOL.keep + 1, 0);
        grown.give_back();
        assert_eq!(
            POOL.kept.lock().unwrap().len(),
            0,
            "a buffer past the cap was kept"
        );
        inner.give_back();
        let held: Vec<ScratchBuffer> = (0..3).map(|_| ScratchBuffer::take(&POOL)).collect();
        held.into_iter().for_each(ScratchBuffer::give_back);
        assert_eq!(POOL.kept.lock().unwrap().len(), 2, "more than `count` kept");
    }

    #[test]
    fn reader_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Reader>();
        check::<TileCache>();
    }
}
