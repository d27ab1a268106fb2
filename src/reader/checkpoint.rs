//! Random access into PNG files that carry no index of their own (zlib's `zran.c` technique).
//!
//! A plain PNG's image data is one zlib stream (the IDAT chunks' data, concatenated) holding
//! scanlines of `1 + 4·width` bytes (a filter type byte and the filtered RGBA8 pixels). One
//! sequential pass ([`CheckpointIndex::build`]) inflates it with `inflate(Z_BLOCK)` and, at
//! deflate block boundaries at least `spacing` bytes of output apart, records a checkpoint:
//! the compressed position (byte and bit), the uncompressed position, the last 32 KiB of
//! output (the window), and the unfiltering state there (the previous unfiltered scanline,
//! and inside a scanline its filter byte and the part done so far). The pass also verifies
//! every IDAT chunk CRC, the zlib Adler-32 and the exact size of the image data, and records
//! a CRC-32 of every 64 KiB block of the compressed stream so that later reads detect a
//! file that changed or went bad since indexing.
//!
//! [`CheckpointIndex::read_rows`] then restarts a raw inflate at the nearest checkpoint at
//! or before the first wanted row (`inflatePrime` + `inflateSetDictionary`), so it inflates
//! at most about `spacing` bytes more than it returns.
//!
//! The index can be saved to and loaded from a cache directory
//! ([`CheckpointIndex::load_or_build`]), keyed and validated so that a changed file is never
//! matched to an old index.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use sha2::{Digest, Sha256};

use super::inflate::{
    Inflater, Z_BLOCK, Z_BUF_ERROR, Z_DATA_ERROR, Z_MEM_ERROR, Z_NEED_DICT, Z_NO_FLUSH,
    Z_STREAM_END,
};
use super::unfilter::{BadFilter, RowUnfilter};
use crate::format::png::{self, IdatChunk, PngLayout};

/// Default distance between checkpoints, in bytes of filtered image data.
pub const DEFAULT_SPACING: u64 = 1 << 20;
/// Deflate's history window.
const WINDOW: usize = 32 * 1024;
/// The compressed stream is checksummed in blocks of this many bytes.
const CRC_BLOCK: u64 = 64 * 1024;
/// Size of the pieces the index pass reads.
const PIECE: usize = 256 * 1024;
/// Output ring of the index pass (at least [`WINDOW`]).
const RING: usize = 256 * 1024;
/// Widest row accepted (bytes of pixels): 16 Mi pixels.
const MAX_ROW_BYTES: u64 = 64 << 20;
/// Deflate cannot expand by more than 1032:1 (258-byte matches in 2 bits).
const MAX_DEFLATE_RATIO: u64 = 1032;
/// Streams shorter than this are indexed again on each open rather than saved in the default
/// cache directory: the pass takes under ~20 ms (small images are written plain, without an
/// index of their own, so the cache would otherwise collect one file per small image read).
pub const PERSIST_MIN_STREAM: u64 = 16 << 20;
/// How many bytes at each end of the file go into the cache key's hash.
const EDGE_BYTES: u64 = 64 * 1024;

const INDEX_MAGIC: &[u8; 8] = b"PXRTSCKP";
const INDEX_VERSION: u32 = 1;

/// Errors of the checkpoint index. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The PNG structure, as [`crate::format::png::layout`] checks it.
    #[error(transparent)]
    Png(#[from] crate::Error),
    #[error("{}: unsupported PNG: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    #[error("{}: truncated file: {what}", path.display())]
    Truncated { path: PathBuf, what: String },
    #[error("{}: CRC mismatch in {chunk} chunk at offset {offset}", path.display())]
    ChunkCrc {
        path: PathBuf,
        chunk: String,
        offset: u64,
    },
    #[error("{}: corrupt image data: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}: IDAT data ends after {got} of {expected} bytes", path.display())]
    ShortData {
        path: PathBuf,
        got: u64,
        expected: u64,
    },
    #[error(
        "{}: IDAT data at stream offset {offset} does not match the checkpoint index \
         (the file changed or is damaged)",
        path.display()
    )]
    DataChanged { path: PathBuf, offset: u64 },
    #[error("{}: stale checkpoint index: {reason}", path.display())]
    Stale { path: PathBuf, reason: String },
    #[error("{}: bad checkpoint index file: {reason}", path.display())]
    BadIndex { path: PathBuf, reason: String },
    #[error("{}: rows {first}..{end} are out of range (the image has {height} rows)", path.display())]
    RowRange {
        path: PathBuf,
        first: u64,
        end: u64,
        height: u32,
    },
    #[error("{}: output buffer holds {got} bytes, {need} are needed", path.display())]
    BufferSize {
        path: PathBuf,
        got: usize,
        need: u64,
    },
}

impl CheckpointError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// What identifies the indexed file: a changed file gets a different identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileIdentity {
    size: u64,
    mtime_ns: i128,
    dev: u64,
    ino: u64,
    /// SHA-256 of the size and the first and last 64 KiB.
    edge_hash: [u8; 32],
}

impl FileIdentity {
    fn of(file: &File, path: &Path) -> Result<Self> {
        let meta = file.metadata().map_err(|e| CheckpointError::io(path, e))?;
        let size = meta.len();
        let mut h = Sha256::new();
        h.update(size.to_le_bytes());
        let mut buf = vec![0u8; EDGE_BYTES.min(size) as usize];
        for off in [0, size - buf.len() as u64] {
            file.read_exact_at(&mut buf, off)
                .map_err(|e| CheckpointError::io(path, e))?;
            h.update(&buf);
        }
        let mut edge_hash = [0u8; 32];
        edge_hash.copy_from_slice(&h.finalize());
        Ok(Self {
            size,
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
            edge_hash,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.edge_hash);
    }

    /// File name stem of the cache file.
    fn cache_key(&self) -> String {
        let mut buf = b"pixelrts checkpoint index key v1\0".to_vec();
        self.encode(&mut buf);
        let digest = Sha256::digest(&buf);
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One restart point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpoint {
    /// Bytes of the compressed stream (IDAT data) consumed.
    in_pos: u64,
    /// Bits of the byte before `in_pos` that are still unused (0..=7).
    bits: u8,
    /// Bytes of filtered image data produced.
    out_pos: u64,
    /// Where the state blob starts in `blobs`.
    blob_off: u64,
    blob_len: u32,
    /// Whether the blob is raw-deflate compressed.
    compressed: bool,
}

/// How [`CheckpointIndex::load_or_build`] got its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// A valid cache file was loaded.
    Loaded,
    /// No cache file existed; the index was built (and saved if possible).
    Built,
    /// A cache file existed but was unusable (the reason); the index was rebuilt.
    Rebuilt(String),
}

/// A checkpoint index over the image data of one PNG file. Immutable once built; share it
/// between threads freely (`read_rows` takes `&self`).
#[derive(Debug, Clone)]
pub struct CheckpointIndex {
    path: PathBuf,
    ident: FileIdentity,
    width: u32,
    height: u32,
    spacing: u64,
    chunks: Vec<IdatChunk>,
    /// Stream position of each chunk's first byte.
    chunk_starts: Vec<u64>,
    stream_len: u64,
    /// CRC-32 of each [`CRC_BLOCK`] bytes of the compressed stream.
    block_crcs: Vec<u32>,
    points: Vec<Checkpoint>,
    /// Per checkpoint: window (`min(out_pos, 32 KiB)` bytes) then the unfilter snapshot,
    /// each possibly raw-deflate compressed.
    blobs: Vec<u8>,
}

impl CheckpointIndex {
    fn row_bytes_of(width: u32) -> u64 {
        u64::from(width) * 4
    }

    /// Image width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }
    /// Image height in pixels (rows).
    pub fn height(&self) -> u32 {
        self.height
    }
    /// Bytes of one unfiltered row (`4·width`).
    pub fn row_bytes(&self) -> usize {
        Self::row_bytes_of(self.width) as usize
    }
    /// Number of checkpoints.
    pub fn checkpoints(&self) -> usize {
        self.points.len()
    }
    /// Spacing the index was built with.
    pub fn spacing(&self) -> u64 {
        self.spacing
    }
    /// The file the index describes.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Approximate memory (and on-disk) size of the index in bytes.
    pub fn size_bytes(&self) -> usize {
        self.blobs.len()
            + self.points.len() * std::mem::size_of::<Checkpoint>()
            + self.block_crcs.len() * 4
            + self.chunks.len() * 20
    }
    /// Length of the filtered image data: `height · (1 + 4·width)`.
    pub fn filtered_len(&self) -> u64 {
        u64::from(self.height) * (Self::row_bytes_of(self.width) + 1)
    }
    /// Opens the indexed file for [`read_rows`](Self::read_rows).
    pub fn open(&self) -> Result<File> {
        File::open(&self.path).map_err(|e| CheckpointError::io(&self.path, e))
    }

    /// Builds the index of the PNG at `path` in one sequential pass, with a checkpoint at
    /// least every `spacing` bytes of filtered image data (0 is taken as 1).
    pub fn build(path: &Path, spacing: u64) -> Result<Self> {
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        let ident = FileIdentity::of(&file, path)?;
        let layout = png::layout(&file, path)?;
        let idx = Self::build_from(&file, path, ident, layout, spacing)?;
        // A file changed while it was read cannot be trusted to match what was indexed.
        let now = FileIdentity::of(&file, path)?;
        if now != idx.ident {
            return Err(CheckpointError::Stale {
                path: path.to_path_buf(),
                reason: "the file changed while it was being indexed".into(),
            });
        }
        Ok(idx)
    }

    fn build_from(
        file: &File,
        path: &Path,
        ident: FileIdentity,
        layout: PngLayout,
        spacing: u64,
    ) -> Result<Self> {
        let spacing = spacing.max(1);
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let expected = check_dimensions(path, &layout)?;
        let bpr = Self::row_bytes_of(layout.width) as usize;

        let mut src = IdatSource::new(file, path, &layout.idat);
        let mut inf = Inflater::new(15).map_err(corrupt)?;
        let mut unf = RowUnfilter::new(bpr);
        let mut ring = vec![0u8; RING];
        let mut rpos = 0usize;
        let mut inbuf = vec![0u8; PIECE];
        let (mut in_start, mut in_end) = (0usize, 0usize);
        let mut eof = false;
        let mut consumed_total = 0u64;
        let mut totout = 0u64;
        let mut last = 0u64;
        let mut points: Vec<Checkpoint> = Vec::new();
        let mut blobs: Vec<u8> = Vec::new();
        let mut raw = Vec::new();
        let mut packer = BlobPacker::new();

        loop {
            if in_start == in_end && !eof {
                in_end = src.fill(&mut inbuf)?;
                in_start = 0;
                eof = in_end == 0;
            }
            if rpos == RING {
                rpos = 0;
            }
            let step = inf.inflate(&inbuf[in_start..in_end], &mut ring[rpos..], Z_BLOCK);
            in_start += step.consumed;
            consumed_total += step.consumed as u64;
            if step.produced > 0 {
                if totout + step.produced as u64 > expected {
                    return Err(corrupt(format!(
                        "the image data inflates to more than the {expected} bytes that \
                         {}x{} pixels need",
                        layout.width, layout.height
                    )));
                }
                unf.feed(&ring[rpos..rpos + step.produced], &mut |_, _| {})
                    .map_err(|e| bad_filter(path, e))?;
                rpos += step.produced;
                totout += step.produced as u64;
            }
            match step.ret {
                Z_STREAM_END => break,
                Z_BUF_ERROR => {
                    if eof && in_start == in_end {
                        return Err(CheckpointError::ShortData {
                            path: path.to_path_buf(),
                            got: totout,
                            expected,
                        });
                    }
                    if in_start != in_end && rpos != RING {
                        return Err(corrupt("inflate made no progress".into()));
                    }
                }
                ret if ret >= 0 && ret != Z_NEED_DICT => {}
                ret => return Err(corrupt(inflate_error(ret, &inf, consumed_total, totout))),
            }
            let dt = inf.data_type();
            if dt & 0xc0 == 0x80
                && totout < expected
                && (points.is_empty() || totout - last >= spacing)
            {
                // At a block boundary (not in the last block): record a checkpoint.
                let dict_len = (totout as usize).min(WINDOW);
                raw.clear();
                if rpos >= dict_len {
                    raw.extend_from_slice(&ring[rpos - dict_len..rpos]);
                } else {
                    raw.extend_from_slice(&ring[RING - (dict_len - rpos)..]);
                    raw.extend_from_slice(&ring[..rpos]);
                }
                unf.snapshot(&mut raw);
                let (bytes, compressed) = packer.pack(&raw);
                points.push(Checkpoint {
                    in_pos: consumed_total,
                    bits: (dt & 7) as u8,
                    out_pos: totout,
                    blob_off: blobs.len() as u64,
                    blob_len: bytes.len() as u32,
                    compressed,
                });
                blobs.extend_from_slice(bytes);
                last = totout;
            }
        }
        if totout != expected {
            return Err(CheckpointError::ShortData {
                path: path.to_path_buf(),
                got: totout,
                expected,
            });
        }
        let trailing = (in_end - in_start) as u64 + src.remaining();
        if trailing > 0 {
            return Err(corrupt(format!(
                "{trailing} bytes of IDAT data follow the end of the zlib stream"
            )));
        }
        let block_crcs = src.finish()?;
        if points.first().map(|p| p.out_pos) != Some(0) {
            return Err(corrupt(
                "no restart point at the start of the stream".into(),
            ));
        }
        let chunk_starts = chunk_starts(&layout.idat);
        Ok(Self {
            path: path.to_path_buf(),
            ident,
            width: layout.width,
            height: layout.height,
            spacing,
            chunks: layout.idat,
            chunk_starts,
            stream_len: layout.idat_len,
            block_crcs,
            points,
            blobs,
        })
    }

    /// Fills `out` (exactly `rows · 4·width` bytes) with the unfiltered RGBA pixels of rows
    /// `first_row .. first_row + rows`, reading the image data from `file` (the indexed
    /// file). Inflates from the last checkpoint at or before the first row. Safe to call
    /// from many threads at once.
    pub fn read_rows(&self, file: &File, first_row: u32, rows: u32, out: &mut [u8]) -> Result<()> {
        let path = &self.path;
        let end_row = u64::from(first_row) + u64::from(rows);
        if end_row > u64::from(self.height) {
            return Err(CheckpointError::RowRange {
                path: path.clone(),
                first: first_row.into(),
                end: end_row,
                height: self.height,
            });
        }
        let bpr = self.row_bytes();
        let need = u64::from(rows) * bpr as u64;
        if out.len() as u64 != need {
            return Err(CheckpointError::BufferSize {
                path: path.clone(),
                got: out.len(),
                need,
            });
        }
        if rows == 0 {
            return Ok(());
        }
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: path.clone(),
            reason,
        };
        let stride = bpr as u64 + 1;
        let start = u64::from(first_row) * stride;
        let end = end_row * stride;
        let pi = self.points.partition_point(|p| p.out_pos <= start) - 1;
        let point = self.points[pi];
        let blob = self.blob(pi)?;
        let dict_len = (point.out_pos as usize).min(WINDOW);
        let (window, snapshot) = blob.split_at(dict_len);
        let mut unf = RowUnfilter::resume(bpr, point.out_pos, snapshot)
            .ok_or_else(|| corrupt(format!("checkpoint {pi} has an invalid state")))?;

        let mut inf = Inflater::new(-15).map_err(corrupt)?;
        let mut src = BlockReader::new(self, file, point.in_pos - u64::from(point.bits > 0))?;
        if point.bits > 0 {
            let byte = src.next_byte()?;
            inf.prime(point.bits, byte >> (8 - point.bits))
                .map_err(corrupt)?;
        }
        if dict_len > 0 {
            inf.set_dictionary(window).map_err(corrupt)?;
        }
        let mut scratch = vec![0u8; ((end - point.out_pos) as usize).min(PIECE)];
        let mut totout = point.out_pos;
        let mut sink = |row: u64, pixels: &[u8]| {
            if row >= u64::from(first_row) {
                let k = (row - u64::from(first_row)) as usize;
                out[k * bpr..(k + 1) * bpr].copy_from_slice(pixels);
            }
        };
        while totout < end {
            let input = src.current()?;
            let in_len = input.len();
            let want = ((end - totout) as usize).min(scratch.len());
            let step = inf.inflate(input, &mut scratch[..want], Z_NO_FLUSH);
            src.advance(step.consumed);
            if step.produced > 0 {
                unf.feed(&scratch[..step.produced], &mut sink)
                    .map_err(|e| bad_filter(path, e))?;
                totout += step.produced as u64;
            }
            match step.ret {
                Z_STREAM_END if totout < end => {
                    return Err(CheckpointError::ShortData {
                        path: path.clone(),
                        got: totout,
                        expected: self.filtered_len(),
                    })
                }
                // No progress: without input the stream is cut short, with input it is bad.
                Z_BUF_ERROR if in_len == 0 => {
                    return Err(CheckpointError::ShortData {
                        path: path.clone(),
                        got: totout,
                        expected: self.filtered_len(),
                    })
                }
                Z_BUF_ERROR => return Err(corrupt("inflate made no progress".into())),
                ret if ret >= 0 && ret != Z_NEED_DICT => {}
                ret => {
                    return Err(corrupt(inflate_error(ret, &inf, src.pos(), totout)));
                }
            }
        }
        Ok(())
    }

    /// The decompressed state blob of checkpoint `i`.
    fn blob(&self, i: usize) -> Result<Vec<u8>> {
        let p = &self.points[i];
        let bytes = &self.blobs[p.blob_off as usize..(p.blob_off + u64::from(p.blob_len)) as usize];
        let raw_len = self.raw_blob_len(p.out_pos);
        if !p.compressed {
            return Ok(bytes.to_vec());
        }
        let mut raw = vec![0u8; raw_len];
        let mut d = Decompress::new(false);
        let ok = matches!(
            d.decompress(bytes, &mut raw, FlushDecompress::Finish),
            Ok(Status::StreamEnd)
        ) && d.total_out() == raw_len as u64
            && d.total_in() == bytes.len() as u64;
        if !ok {
            return Err(CheckpointError::BadIndex {
                path: self.path.clone(),
                reason: format!("state of checkpoint {i} does not decompress"),
            });
        }
        Ok(raw)
    }

    fn raw_blob_len(&self, out_pos: u64) -> usize {
        (out_pos as usize).min(WINDOW) + RowUnfilter::snapshot_len(self.row_bytes(), out_pos)
    }
}

fn bad_filter(path: &Path, e: BadFilter) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("row {} has filter type {} (not 0..4)", e.row, e.filter),
    }
}

fn inflate_error(ret: i32, inf: &Inflater, in_pos: u64, out_pos: u64) -> String {
    let what = match ret {
        Z_NEED_DICT => "the zlib stream needs a preset dictionary".to_string(),
        Z_DATA_ERROR => format!("invalid deflate data ({})", inf.message()),
        Z_MEM_ERROR => "inflate ran out of memory".to_string(),
        r => format!("inflate failed ({r}: {})", inf.message()),
    };
    format!("{what} near stream offset {in_pos} (output offset {out_pos})")
}

/// Validates the IHDR dimensions against the limits and the amount of IDAT data, returning
/// the length of the filtered image data.
fn check_dimensions(path: &Path, layout: &PngLayout) -> Result<u64> {
    let bpr = CheckpointIndex::row_bytes_of(layout.width);
    if bpr > MAX_ROW_BYTES {
        return Err(CheckpointError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("rows of {} pixels are too wide", layout.width),
        });
    }
    let expected = u64::from(layout.height) * (bpr + 1);
    let max = layout
        .idat_len
        .saturating_mul(MAX_DEFLATE_RATIO)
        .saturating_add(1024);
    if expected > max {
        return Err(CheckpointError::ShortData {
            path: path.to_path_buf(),
            got: max,
            expected,
        });
    }
    Ok(expected)
}

fn chunk_starts(chunks: &[IdatChunk]) -> Vec<u64> {
    let mut pos = 0;
    chunks
        .iter()
        .map(|c| {
            let s = pos;
            pos += u64::from(c.len);
            s
        })
        .collect()
}

/// Compresses checkpoint state with raw deflate level 1, keeping it raw if that does not
/// save at least 1/16.
struct BlobPacker {
    c: Compress,
    buf: Vec<u8>,
}

impl BlobPacker {
    fn new() -> Self {
        Self {
            c: Compress::new(Compression::fast(), false),
            buf: Vec::new(),
        }
    }

    fn pack<'a>(&'a mut self, raw: &'a [u8]) -> (&'a [u8], bool) {
        // Room for the worst case, so that deflate always finishes: with zlib-rs 0.6.8, a
        // level-1 stream whose `Finish` ran out of output space and was then `reset()`
        // panics on its next use ("buf.len() must fit in remaining()").
        self.buf.resize(raw.len() + raw.len() / 8 + 1024, 0);
        let limit = raw.len() - raw.len() / 16;
        // Probe: if the first 4 KiB of the window and the last 4 KiB (row state) do not
        // compress, do not spend time on the rest (random data).
        let probe = 4096.min(raw.len() / 2);
        let mut squeezable = false;
        for part in [&raw[..probe], &raw[raw.len() - probe..]] {
            self.c.reset();
            let done = matches!(
                self.c.compress(part, &mut self.buf, FlushCompress::Finish),
                Ok(Status::StreamEnd)
            );
            if !done {
                self.c = Compress::new(Compression::fast(), false);
                return (raw, false);
            }
            squeezable |= (self.c.total_out() as usize) < part.len() - part.len() / 8;
        }
        if !squeezable {
            return (raw, false);
        }
        self.c.reset();
        let done = matches!(
            self.c.compress(raw, &mut self.buf, FlushCompress::Finish),
            Ok(Status::StreamEnd)
        );
        if !done {
            // Never reuse an unfinished stream (see above).
            self.c = Compress::new(Compression::fast(), false);
            return (raw, false);
        }
        let n = self.c.total_out() as usize;
        if n < limit {
            (&self.buf[..n], true)
        } else {
            (raw, false)
        }
    }
}

/// Sequential reader of the IDAT data for the index pass: verifies each chunk's CRC and
/// records a CRC-32 per [`CRC_BLOCK`] of the stream.
struct IdatSource<'a> {
    file: &'a File,
    path: &'a Path,
    chunks: &'a [IdatChunk],
    chunk: usize,
    /// Bytes of the current chunk already read.
    done: u32,
    crc: crc32fast::Hasher,
    block: crc32fast::Hasher,
    block_fill: u64,
    block_crcs: Vec<u32>,
}

impl<'a> IdatSource<'a> {
    fn new(file: &'a File, path: &'a Path, chunks: &'a [IdatChunk]) -> Self {
        Self {
            file,
            path,
            chunks,
            chunk: 0,
            done: 0,
            crc: Self::chunk_hasher(),
            block: crc32fast::Hasher::new(),
            block_fill: 0,
            block_crcs: Vec::new(),
        }
    }

    fn chunk_hasher() -> crc32fast::Hasher {
        let mut h = crc32fast::Hasher::new();
        h.update(b"IDAT");
        h
    }

    /// Reads the next piece into `buf`; 0 at the end of the IDAT data.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        loop {
            let Some(c) = self.chunks.get(self.chunk) else {
                return Ok(0);
            };
            let left = (c.len - self.done) as usize;
            let n = left.min(buf.len());
            let off = c.data_offset + u64::from(self.done);
            read_at(self.file, self.path, &mut buf[..n], off)?;
            self.crc.update(&buf[..n]);
            self.track_blocks(&buf[..n]);
            self.done += n as u32;
            if self.done == c.len {
                let mut crc = [0u8; 4];
                read_at(
                    self.file,
                    self.path,
                    &mut crc,
                    c.data_offset + u64::from(c.len),
                )?;
                let h = std::mem::replace(&mut self.crc, Self::chunk_hasher());
                if h.finalize() != u32::from_be_bytes(crc) {
                    return Err(CheckpointError::ChunkCrc {
                        path: self.path.to_path_buf(),
                        chunk: "IDAT".into(),
                        offset: c.data_offset - 8,
                    });
                }
                self.chunk += 1;
                self.done = 0;
            }
            if n > 0 {
                return Ok(n);
            }
        }
    }

    fn track_blocks(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = ((CRC_BLOCK - self.block_fill) as usize).min(data.len());
            self.block.update(&data[..n]);
            self.block_fill += n as u64;
            data = &data[n..];
            if self.block_fill == CRC_BLOCK {
                let h = std::mem::take(&mut self.block);
                self.block_crcs.push(h.finalize());
                self.block_fill = 0;
            }
        }
    }

    /// Bytes not read yet.
    fn remaining(&self) -> u64 {
        let mut n: u64 = self.chunks[self.chunk.min(self.chunks.len())..]
            .iter()
            .map(|c| u64::from(c.len))
            .sum();
        n -= u64::from(self.done);
        n
    }

    fn finish(mut self) -> Result<Vec<u32>> {
        if self.block_fill > 0 {
            let h = std::mem::take(&mut self.block);
            self.block_crcs.push(h.finalize());
        }
        Ok(self.block_crcs)
    }
}

fn read_at(file: &File, path: &Path, buf: &mut [u8], off: u64) -> Result<()> {
    file.read_exact_at(buf, off).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            CheckpointError::Truncated {
                path: path.to_path_buf(),
                what: format!("{} bytes at offset {off} cannot be read", buf.len()),
            }
        } else {
            CheckpointError::io(path, e)
        }
    })
}

/// Positioned reader of the compressed stream for `read_rows`: reads whole
/// [`CRC_BLOCK`]-sized blocks across IDAT chunk boundaries and checks each block's CRC.
struct BlockReader<'a> {
    idx: &'a CheckpointIndex,
    file: &'a File,
    /// Index of the block in `buf`.
    block: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> BlockReader<'a> {
    fn new(idx: &'a CheckpointIndex, file: &'a File, stream_pos: u64) -> Result<Self> {
        let mut r = Self {
            idx,
            file,
            block: stream_pos / CRC_BLOCK,
            buf: Vec::with_capacity(CRC_BLOCK as usize),
            pos: 0,
        };
        r.load()?;
        r.pos = (stream_pos - r.block * CRC_BLOCK) as usize;
        if r.pos > r.buf.len() {
            return Err(r.changed(stream_pos));
        }
        Ok(r)
    }

    fn changed(&self, offset: u64) -> CheckpointError {
        CheckpointError::DataChanged {
            path: self.idx.path.clone(),
            offset,
        }
    }

    fn load(&mut self) -> Result<()> {
        let idx = self.idx;
        let start = self.block * CRC_BLOCK;
        let end = (start + CRC_BLOCK).min(idx.stream_len);
        self.buf.clear();
        self.pos = 0;
        if start >= end {
            return Ok(());
        }
        self.buf.resize((end - start) as usize, 0);
        let mut ci = idx.chunk_starts.partition_point(|&s| s <= start) - 1;
        let mut pos = start;
        while pos < end {
            let c = idx.chunks[ci];
            let cstart = idx.chunk_starts[ci];
            let cend = cstart + u64::from(c.len);
            let n = (cend.min(end) - pos) as usize;
            let dst = &mut self.buf[(pos - start) as usize..][..n];
            read_at(self.file, &idx.path, dst, c.data_offset + (pos - cstart))?;
            pos += n as u64;
            ci += 1;
        }
        let crc = crc32fast::hash(&self.buf);
        if idx.block_crcs.get(self.block as usize) != Some(&crc) {
            return Err(self.changed(start));
        }
        Ok(())
    }

    /// Stream position of the next unread byte.
    fn pos(&self) -> u64 {
        self.block * CRC_BLOCK + self.pos as u64
    }

    fn at_end(&self) -> bool {
        self.pos() >= self.idx.stream_len
    }

    /// The unread rest of the current block, loading the next block when this one is done
    /// (empty at the end of the stream).
    fn current(&mut self) -> Result<&[u8]> {
        if self.pos == self.buf.len() && !self.at_end() {
            self.block += 1;
            self.load()?;
        }
        Ok(&self.buf[self.pos..])
    }

    fn advance(&mut self, n: usize) {
        self.pos += n;
    }

    fn next_byte(&mut self) -> Result<u8> {
        let pos = self.pos();
        match self.current()?.first() {
            Some(&b) => {
                self.advance(1);
                Ok(b)
            }
            None => Err(self.changed(pos)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------

/// The default cache directory: `$XDG_CACHE_HOME/pixelrts`, else `~/.cache/pixelrts`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        let p = PathBuf::from(x);
        if p.is_absolute() {
            return Some(p.join("pixelrts"));
        }
    }
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache").join("pixelrts"))
}

impl CheckpointIndex {
    /// Name of this index's cache file inside a cache directory (`<key>.ckpt`).
    pub fn cache_file_name(&self) -> String {
        format!("{}.ckpt", self.ident.cache_key())
    }

    /// Writes the index to `dir/<key>.ckpt` atomically (temporary file + rename) and
    /// returns that path.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).map_err(|e| CheckpointError::io(dir, e))?;
        let dest = dir.join(self.cache_file_name());
        let bytes = self.encode();
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{}.{}.{}.tmp",
            self.cache_file_name(),
            std::process::id(),
            n
        ));
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
            fs::rename(&tmp, &dest)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(CheckpointError::io(&dest, e));
        }
        Ok(dest)
    }

    /// Loads the index of `path` from `cache_dir` (default: [`default_cache_dir`]) if a
    /// valid, current one is there; otherwise builds it with `spacing` and saves it (a
    /// failure to save is only logged).
    pub fn load_or_build(
        path: &Path,
        cache_dir: Option<&Path>,
        spacing: u64,
    ) -> Result<(Self, CacheStatus)> {
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        Self::load_or_build_file(&file, path, cache_dir, spacing)
    }

    /// As [`load_or_build`](Self::load_or_build), for a file already open: the index is of
    /// that file, even if `path` names another one by now. Without `cache_dir`, images whose
    /// stream is under [`PERSIST_MIN_STREAM`] are indexed in memory only.
    pub fn load_or_build_file(
        file: &File,
        path: &Path,
        cache_dir: Option<&Path>,
        spacing: u64,
    ) -> Result<(Self, CacheStatus)> {
        let ident = FileIdentity::of(file, path)?;
        let layout = png::layout(file, path)?;
        let dir = match cache_dir {
            Some(d) => Some(d.to_path_buf()),
            None if layout.idat_len >= PERSIST_MIN_STREAM => default_cache_dir(),
            None => None,
        };
        let mut reason = None;
        if let Some(dir) = &dir {
            let cache_path = dir.join(format!("{}.ckpt", ident.cache_key()));
            match fs::read(&cache_path) {
                Ok(bytes) => match Self::decode(&bytes, path, &cache_path)
                    .and_then(|idx| idx.validate(&ident, &layout).map(|()| idx))
                {
                    Ok(idx) => return Ok((idx, CacheStatus::Loaded)),
                    Err(e) => reason = Some(e.to_string()),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => reason = Some(CheckpointError::io(&cache_path, e).to_string()),
            }
        }
        let idx = Self::build_from(file, path, ident.clone(), layout, spacing)?;
        if FileIdentity::of(file, path)? != ident {
            return Err(CheckpointError::Stale {
                path: path.to_path_buf(),
                reason: "the file changed while it was being indexed".into(),
            });
        }
        if let Some(dir) = &dir {
            if let Err(e) = idx.save(dir) {
                tracing::warn!("cannot save checkpoint index: {e}");
            }
        }
        let status = match reason {
            Some(r) => CacheStatus::Rebuilt(r),
            None => CacheStatus::Built,
        };
        Ok((idx, status))
    }

    /// Checks a loaded index against the file as it is now.
    fn validate(&self, ident: &FileIdentity, layout: &PngLayout) -> Result<()> {
        let stale = |reason: &str| CheckpointError::Stale {
            path: self.path.clone(),
            reason: reason.to_string(),
        };
        if self.ident.size != ident.size {
            return Err(stale("file size differs"));
        }
        if self.ident.mtime_ns != ident.mtime_ns {
            return Err(stale("modification time differs"));
        }
        if self.ident != *ident {
            return Err(stale(
                "file identity (device, inode or content hash) differs",
            ));
        }
        if (self.width, self.height) != (layout.width, layout.height) {
            return Err(stale("image size differs"));
        }
        if self.chunks != layout.idat {
            return Err(stale("IDAT chunk layout differs"));
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(self.blobs.len() + self.points.len() * 32 + 4096);
        o.extend_from_slice(INDEX_MAGIC);
        o.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        self.ident.encode(&mut o);
        o.extend_from_slice(&self.width.to_le_bytes());
        o.extend_from_slice(&self.height.to_le_bytes());
        o.extend_from_slice(&self.spacing.to_le_bytes());
        o.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            o.extend_from_slice(&c.data_offset.to_le_bytes());
            o.extend_from_slice(&c.len.to_le_bytes());
        }
        o.extend_from_slice(&(self.block_crcs.len() as u64).to_le_bytes());
        for c in &self.block_crcs {
            o.extend_from_slice(&c.to_le_bytes());
        }
        o.extend_from_slice(&(self.points.len() as u64).to_le_bytes());
        for p in &self.points {
            o.extend_from_slice(&p.in_pos.to_le_bytes());
            o.push(p.bits);
            o.extend_from_slice(&p.out_pos.to_le_bytes());
            o.extend_from_slice(&p.blob_len.to_le_bytes());
            o.push(u8::from(p.compressed));
        }
        o.extend_from_slice(&(self.blobs.len() as u64).to_le_bytes());
        o.extend_from_slice(&self.blobs);
        let crc = crc32fast::hash(&o);
        o.extend_from_slice(&crc.to_le_bytes());
        o
    }

    /// Parses and checks a cache file (everything but its match with the PNG file).
    fn decode(bytes: &[u8], path: &Path, cache_path: &Path) -> Result<Self> {
        let bad = |reason: String| CheckpointError::BadIndex {
            path: cache_path.to_path_buf(),
            reason,
        };
        if bytes.len() < INDEX_MAGIC.len() + 8 || &bytes[..8] != INDEX_MAGIC {
            return Err(bad("wrong magic".into()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
            return Err(bad("CRC mismatch".into()));
        }
        let mut r = Cursor {
            b: &body[8..],
            bad: &bad,
        };
        let version = r.u32()?;
        if version != INDEX_VERSION {
            return Err(bad(format!("version {version}, expected {INDEX_VERSION}")));
        }
        let ident = FileIdentity {
            size: r.u64()?,
            mtime_ns: i128::from_le_bytes(r.take(16)?.try_into().unwrap()),
            dev: r.u64()?,
            ino: r.u64()?,
            edge_hash: r.take(32)?.try_into().unwrap(),
        };
        let width = r.u32()?;
        let height = r.u32()?;
        let spacing = r.u64()?;
        let n = r.count(12)?;
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            chunks.push(IdatChunk {
                data_offset: r.u64()?,
                len: r.u32()?,
            });
        }
        let stream_len: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        let n = r.count(4)?;
        if n as u64 != stream_len.div_ceil(CRC_BLOCK) {
            return Err(bad("wrong number of block CRCs".into()));
        }
        let mut block_crcs = Vec::with_capacity(n);
        for _ in 0..n {
            block_crcs.push(r.u32()?);
        }
        let n = r.count(22)?;
        let mut points = Vec::with_capacity(n);
        let mut blob_off = 0u64;
        for _ in 0..n {
            let p = Checkpoint {
                in_pos: r.u64()?,
                bits: r.u8()?,
                out_pos: r.u64()?,
                blob_off,
                blob_len: r.u32()?,
                compressed: r.u8()? != 0,
            };
            blob_off += u64::from(p.blob_len);
            points.push(p);
        }
        let blob_total = r.u64()?;
        let blobs = r.take(usize::try_from(blob_total).map_err(|_| bad("size".into()))?)?;
        if !r.b.is_empty() || blob_total != blob_off {
            return Err(bad("inconsistent lengths".into()));
        }
        let idx = Self {
            path: path.to_path_buf(),
            ident,
            width,
            height,
            spacing,
            chunk_starts: chunk_starts(&chunks),
            chunks,
            stream_len,
            block_crcs,
            points,
            blobs: blobs.to_vec(),
        };
        idx.check_points().map_err(bad)?;
        Ok(idx)
    }

    /// Structural checks of the checkpoints, so that `read_rows` can rely on them.
    fn check_points(&self) -> Result<(), String> {
        let layout = PngLayout {
            width: self.width,
            height: self.height,
            idat: self.chunks.clone(),
            idat_len: self.stream_len,
        };
        let expected = check_dimensions(&self.path, &layout).map_err(|e| e.to_string())?;
        if self.points.first().map(|p| p.out_pos) != Some(0) {
            return Err("no checkpoint at the start".into());
        }
        let mut prev: Option<&Checkpoint> = None;
        for p in &self.points {
            let ok = p.bits <= 7
                && p.in_pos <= self.stream_len
                && p.in_pos >= u64::from(p.bits > 0)
                && p.out_pos < expected
                && prev.is_none_or(|q| q.out_pos < p.out_pos && q.in_pos <= p.in_pos);
            if !ok {
                return Err("checkpoint positions out of order or out of range".into());
            }
            let raw = self.raw_blob_len(p.out_pos);
            if (!p.compressed && p.blob_len as usize != raw)
                || (p.compressed && p.blob_len as usize >= raw)
            {
                return Err("checkpoint state has the wrong length".into());
            }
            prev = Some(p);
        }
        Ok(())
    }
}

struct Cursor<'a, F: Fn(String) -> CheckpointError> {
    b: &'a [u8],
    bad: &'a F,
}

impl<'a, F: Fn(String) -> CheckpointError> Cursor<'a, F> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err((self.bad)("truncated".into()));
        }
        let (a, b) = self.b.split_at(n);
        self.b = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    /// A count of records of `rec` bytes each, checked against the bytes left.
    fn count(&mut self, rec: usize) -> Result<usize> {
        let n = self.u64()?;
        if n > (self.b.len() / rec) as u64 {
            return Err((self.bad)("record count exceeds the file".into()));
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/reference")
            .join(name)
    }

    #[test]
    fn checkpoints_cover_bit_offsets_and_mid_row_positions() {
        let idx = CheckpointIndex::build(&reference("g_5MiB_prng.rts.png"), 1).unwrap();
        let stride = idx.row_bytes() as u64 + 1;
        let p = &idx.points;
        eprintln!(
            "{} points, {} with bits, {} mid-row, {} compressed",
            p.len(),
            p.iter().filter(|p| p.bits != 0).count(),
            p.iter().filter(|p| p.out_pos % stride != 0).count(),
            p.iter().filter(|p| p.compressed).count()
        );
        assert_eq!(p[0].out_pos, 0);
        assert_eq!(p[0].in_pos, 2);
        assert!(p.iter().any(|p| p.bits != 0));
        assert!(p.iter().any(|p| p.out_pos % stride > 1));
    }
}
