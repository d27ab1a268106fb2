//! The encode pipeline: input bytes → a seekable PixelRTS PNG, in one pass over the input.
//!
//! Work is cut into *row groups* (a few scanlines across the whole image, ≈4 MiB of pixels).
//! For each group, every tile column is gathered straight from the input through the tile's
//! table, checksummed and deflated on the rayon pool; a writer thread appends the pieces in
//! stream order to fixed-size IDAT chunks and records their offsets; a third thread hashes the
//! input with SHA-256, which is the floor of the whole run. Input pages are released as soon as
//! both readers are done with them, and nothing holds more than a few row groups, so memory
//! does not grow with the file.
//!
//! When a GPU is selected (`EncodeOptions::gpu`, or a mapper forced by a test) each stripe's
//! non-empty tiles are instead coloured (code mode) and scattered through the
//! [`TileMapper`] in one batch — one transfer each way per stripe, `4·grid·T` bytes of tiles — and
//! the row groups copy their rows from those tiles; the output is the same byte for byte. The
//! scatter runs on a helper thread one stripe ahead ([`crate::gpu::overlap`]), so the mapper's
//! transfers and kernels for stripe `i + 1` overlap the deflate of stripe `i`.

pub mod compressed;
mod idat;
pub mod plain;
mod writer;

use std::io::{Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use rayon::prelude::*;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::format::code_mode::{self, code_pixel};
use crate::format::hilbert::{TilePlace, TileTables};
use crate::format::index::{self, IndexHeader};
use crate::format::metadata::{self, Mode, HASH_PLACEHOLDER};
use crate::format::png::{chunk_bytes, Ihdr, SIGNATURE};
use crate::format::segment::{adler32, PieceCompressor, ZLIB_HEADER};
use crate::gpu::overlap::produce_consume;
use crate::gpu::stages::{timed, Stage, StageClock};
use crate::gpu::{GpuMode, GpuTimings, TileMapper};
use crate::io_util::{with_threads, AtomicOutput, MappedInput};
use compressed::{CompressMode, CompressedPayload};
pub use plain::Layout;
use writer::{GroupOutput, StreamWriter};

/// Called with (bytes done, bytes total) as work completes.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Default deflate level: measured in docs/LAYOUT.md — level 1 shrinks binaries, text and zeros
/// at 200+ MB/s per core, while incompressible tiles are detected from a sample and stored.
pub const DEFAULT_LEVEL: u32 = 1;
/// IDAT chunk data size (all chunks but the last): 1 MiB.
pub const IDAT_CHUNK_SIZE: u32 = 1 << 20;

/// How to encode.
#[derive(Clone)]
pub struct EncodeOptions {
    pub mode: Mode,
    /// Explicit grid side (a power of two that holds the data); automatic when None.
    pub grid_size: Option<u64>,
    /// The user's metadata keys, in order (`version` is stored as `content_version`).
    pub metadata: Map<String, Value>,
    /// Write the `X.rts.png.meta.json` sidecar (path APIs only).
    pub sidecar: bool,
    /// Worker threads (None: one per core but one, which the SHA-256 thread keeps).
    pub threads: Option<usize>,
    /// Deflate level 0–9 (0 stores everything).
    pub level: u32,
    /// Replace an existing output.
    pub overwrite: bool,
    /// fsync the output before it is renamed into place.
    pub fsync: bool,
    /// Record the input's mode bits, mtime, owner and group as `file_mode` / `file_mtime` (+
    /// `file_mtime_nsec`) / `file_uid` / `file_gid` (path API only).
    pub record_file_attributes: bool,
    /// log2 of the tile side (restart-point geometry); None: [`index::DEFAULT_TILE_SIDE_LOG2`].
    pub tile_side_log2: Option<u8>,
    /// Seekable or plain pixels (`auto`: plain for small images, [`plain::PLAIN_MAX_GRID`]).
    pub layout: Layout,
    pub progress: Option<Progress>,
    /// `--gpu auto|on|off`: whether the tile scatter and code colouring run on a GPU
    /// (policy of [`crate::gpu::select_mapper`]); `on` fails when none is usable.
    pub gpu: GpuMode,
    /// For tests and benchmarks: run the scatter and colouring through this mapper whatever
    /// `gpu` says (a [`crate::gpu::CpuMapper`] exercises the GPU's code path on the CPU).
    pub mapper: Option<Arc<dyn TileMapper>>,
    /// For benchmarks: add each stage's busy time here (`pixelrts bench-gpu`).
    pub stages: Option<Arc<StageClock>>,
    /// `--compress auto|zlib|none`: whether the pixels hold a zlib stream of the input
    /// ([`compressed`]) or the input itself.
    pub compress: CompressMode,
    /// zlib level of a compressed payload's segments (1–9).
    pub compress_level: u32,
    /// Original bytes per segment of a compressed payload.
    pub segment_size: u32,
    /// Run on this pool instead of building one per encode (a mount's encodes share one, so
    /// they neither start threads per file nor spread their memory over new threads).
    pub pool: Option<Arc<rayon::ThreadPool>>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            mode: Mode::Standard,
            grid_size: None,
            metadata: Map::new(),
            sidecar: true,
            threads: None,
            level: DEFAULT_LEVEL,
            overwrite: false,
            fsync: false,
            record_file_attributes: false,
            tile_side_log2: None,
            layout: Layout::Auto,
            progress: None,
            gpu: GpuMode::Auto,
            mapper: None,
            stages: None,
            compress: CompressMode::Auto,
            compress_level: compressed::DEFAULT_COMPRESS_LEVEL,
            segment_size: compressed::DEFAULT_SEGMENT_SIZE,
            pool: None,
        }
    }
}

impl std::fmt::Debug for EncodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodeOptions")
            .field("mode", &self.mode)
            .field("grid_size", &self.grid_size)
            .field("level", &self.level)
            .field("layout", &self.layout)
            .field("compress", &self.compress)
            .field("threads", &self.threads)
            .field("gpu", &self.gpu)
            .field("mapper", &self.mapper.as_ref().map(|m| m.name()))
            .finish_non_exhaustive()
    }
}

/// The default output path: INPUT + `.rts.png`.
pub fn default_output(input: &Path) -> std::path::PathBuf {
    let mut s = input.as_os_str().to_os_string();
    s.push(".rts.png");
    s.into()
}

/// Encodes the file at `input` into `output` (written atomically), plus the sidecar when asked.
/// Returns the metadata written.
pub fn encode_file(
    input: &Path,
    output: &Path,
    opts: &EncodeOptions,
) -> Result<Map<String, Value>> {
    let (file, mapped) = MappedInput::open(input)?;
    if same_file(input, output) {
        return Err(Error::InvalidArgument(format!(
            "{}: output would overwrite the input",
            output.display()
        )));
    }
    let mut opts = opts.clone();
    if opts.record_file_attributes {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().at(input)?;
        opts.metadata
            .entry("file_mode")
            .or_insert((meta.mode() & 0o7777).into());
        opts.metadata
            .entry("file_mtime")
            .or_insert(meta.mtime().into());
        opts.metadata
            .entry("file_mtime_nsec")
            .or_insert(meta.mtime_nsec().into());
        opts.metadata.entry("file_uid").or_insert(meta.uid().into());
        opts.metadata.entry("file_gid").or_insert(meta.gid().into());
    }
    let mut out = AtomicOutput::create(output, opts.overwrite)?;
    let meta = {
        let bytes = mapped.bytes();
        let release = |r: std::ops::Range<usize>| mapped.release(r);
        let temp_dir = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        encode_with(bytes, &release, &mut out.file, &opts, output, temp_dir)?
    };
    if opts.sidecar {
        let sidecar = metadata::sidecar_path(output);
        crate::io_util::write_atomically(
            &sidecar,
            metadata::sidecar_text(&meta).as_bytes(),
            true,
            opts.fsync,
        )?;
    }
    out.commit_image(opts.fsync)?;
    Ok(meta)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Encodes `data` into `out` (any seekable writer; a `Cursor<Vec<u8>>` works).
pub fn encode_to_writer<W: Write + Seek + Send>(
    data: &[u8],
    out: &mut W,
    opts: &EncodeOptions,
) -> Result<Map<String, Value>> {
    encode_with(
        data,
        &|_| {},
        out,
        opts,
        Path::new("<output>"),
        &std::env::temp_dir(),
    )
}

/// Encodes `data` to PNG bytes in memory (convenient for small payloads and tests).
pub fn encode_to_vec(data: &[u8], opts: &EncodeOptions) -> Result<(Vec<u8>, Map<String, Value>)> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    let meta = encode_to_writer(data, &mut cursor, opts)?;
    Ok((cursor.into_inner(), meta))
}

fn encode_with<W: Write + Seek + Send>(
    data: &[u8],
    release: &(dyn Fn(std::ops::Range<usize>) + Sync),
    out: &mut W,
    opts: &EncodeOptions,
    out_path: &Path,
    temp_dir: &Path,
) -> Result<Map<String, Value>> {
    // SHA-256 is one sequential stream and the floor of the whole run: by default it keeps a
    // core to itself and the pool gets the rest (measured on 2 cores, 1 GiB random: one worker
    // 1.19 s, two workers 1.53 s).
    let threads = opts.threads.or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Some(cores.saturating_sub(1).max(1))
    });
    let compress_threads = opts
        .threads
        .or_else(|| std::thread::available_parallelism().map(|n| n.get()).ok());
    let pool = opts.pool.as_deref();
    with_threads(pool, threads, || {
        let compress = match opts.compress {
            CompressMode::None => false,
            CompressMode::Zlib if opts.mode == Mode::Code => return Err(Error::InvalidArgument(
                "--compress zlib needs --mode standard: code mode keeps the bytes in the metadata"
                    .into(),
            )),
            CompressMode::Zlib => !data.is_empty(),
            CompressMode::Auto => {
                opts.mode == Mode::Standard && compressed::worth_compressing(data)
            }
        };
        // Progress counts input bytes: the end is reported whichever path ran (the plain
        // layout reports nothing on the way).
        let done = |meta: Map<String, Value>| {
            if let Some(p) = &opts.progress {
                p(data.len() as u64, data.len() as u64);
            }
            Ok(meta)
        };
        if !compress {
            return encode_core(data, release, out, opts, out_path, None).and_then(done);
        }
        if !(1..=9).contains(&opts.compress_level) {
            return Err(Error::InvalidArgument(format!(
                "compression level must be 1..9, got {}",
                opts.compress_level
            )));
        }
        // Deflate is the floor here, not SHA-256 (≈ 25× faster than level 6): the segments get
        // every core, the hash thread shares them.
        let payload = with_threads(pool, compress_threads, || {
            compressed::compress_payload(
                data,
                release,
                opts.compress_level,
                opts.segment_size,
                temp_dir,
                opts.progress.as_ref(),
            )
        })?;
        // SAFETY: the temporary file is unlinked and only this process holds it.
        let map =
            unsafe { memmap2::Mmap::map(&payload.file) }.map_err(|e| Error::io(temp_dir, e))?;
        let stream = &map[..payload.index.encoded_size as usize];
        let release_stream = |r: std::ops::Range<usize>| crate::io_util::release_pages(stream, r);
        // Deflating the input was the progress; the pixels of its stream come after, unreported.
        let pixel_opts = EncodeOptions {
            progress: None,
            ..opts.clone()
        };
        encode_core(
            stream,
            &release_stream,
            out,
            &pixel_opts,
            out_path,
            Some(&payload),
        )
        .and_then(done)
    })
}

/// What one tile column contributes to a stripe.
struct TileJob<'a> {
    place: TilePlace,
    payload: &'a [u8],
    kind: TileKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TileKind {
    /// All pixels zero (no data, or data that is all zeros): every piece is the precomputed
    /// zero piece.
    Empty,
    /// Sampled as incompressible: pieces are stored.
    Stored,
    /// Pieces are deflated (and stored where that does not help).
    Deflated,
    /// The partly filled tile at the end of the data: each piece is tried whole and with its
    /// zero runs (padding) coded apart from the payload around them.
    Partial,
}

fn encode_core<W: Write + Seek + Send>(
    data: &[u8],
    release: &(dyn Fn(std::ops::Range<usize>) + Sync),
    out: &mut W,
    opts: &EncodeOptions,
    out_path: &Path,
    compressed: Option<&CompressedPayload>,
) -> Result<Map<String, Value>> {
    let n = data.len() as u64;
    let grid = match opts.grid_size {
        Some(g) => {
            crate::format::check_grid(g, n).map_err(Error::InvalidArgument)?;
            g
        }
        None => crate::format::auto_grid(n),
    };
    if grid > crate::format::MAX_GRID {
        return Err(Error::InvalidArgument(format!(
            "input of {n} bytes needs a grid larger than {}",
            crate::format::MAX_GRID
        )));
    }
    if opts.level > 9 {
        return Err(Error::InvalidArgument(format!(
            "--level must be 0..9, got {}",
            opts.level
        )));
    }
    let draw_code = opts.mode == Mode::Code && code_mode::is_wasm(data);
    let clock = opts.stages.as_deref();
    // Chosen once per job; None is the CPU fast path (gather fused into the row compression).
    let mapper = crate::gpu::pipeline_mapper(opts.gpu, opts.mapper.as_ref(), n)
        .map_err(|e| Error::Gpu(e.to_string()))?;
    let preferred_log2 = opts.tile_side_log2.unwrap_or(index::DEFAULT_TILE_SIDE_LOG2);
    let tile_log2 = index::tile_side_log2_for(grid, preferred_log2.min(12));
    let tables = TileTables::new(grid, 1 << tile_log2);
    let tile_side = tables.tile_side();
    let tiles_per_side = tables.tiles_per_side();
    let tile_bytes = 4 * tables.tile_pixels();

    // --- Metadata text, written now with a placeholder hash, patched at the end. ---
    let original_size = compressed.map_or(n, |c| c.index.original_size);
    let mut meta = metadata::build(
        grid,
        opts.mode,
        &opts.metadata,
        HASH_PLACEHOLDER,
        original_size,
    );
    if let Some(c) = compressed {
        // After data_hash and data_size, as the reference writes them.
        meta.insert("compression".into(), c.metadata());
        meta.insert("encoded_size".into(), n.into());
    }
    let text = metadata::png_text(&meta);
    let hash_at = text
        .find(&format!("\"data_hash\":\"{HASH_PLACEHOLDER}\""))
        .expect("metadata::build writes data_hash")
        + "\"data_hash\":\"".len();
    let (text_a, rest) = text.split_at(hash_at);
    let rest = &rest[HASH_PLACEHOLDER.len()..];
    let (text_b, text_c) = if opts.mode == Mode::Code {
        let marker = format!("\"{}\":\"", metadata::B64_KEY);
        let at = rest
            .rfind(&marker)
            .expect("code mode writes the payload key")
            + marker.len();
        rest.split_at(at)
    } else {
        (rest, "")
    };
    let b64_len = if opts.mode == Mode::Code {
        code_mode::b64_len(n)
    } else {
        0
    };
    let keyword_prefix = format!("{}\0", metadata::KEYWORD);
    let text_chunk_len = keyword_prefix.len() as u64 + text.len() as u64 + b64_len;
    if text_chunk_len > u64::from(crate::format::png::MAX_CHUNK_LEN) {
        return Err(Error::InvalidArgument(format!(
            "code mode keeps the bytes in a PNG text chunk, which holds at most 2 GiB; input is {n} bytes"
        )));
    }

    let io = |e| Error::io(out_path, e);
    out.write_all(&SIGNATURE).map_err(io)?;
    out.write_all(&chunk_bytes(b"IHDR", &Ihdr::rgba8(grid as u32).to_bytes()))
        .map_err(io)?;

    // tEXt: length, type, [keyword, A] hash [B, base64, C], CRC.
    out.write_all(&(text_chunk_len as u32).to_be_bytes())
        .map_err(io)?;
    let mut crc_head = crc32fast::Hasher::new();
    crc_head.update(b"tEXt");
    crc_head.update(keyword_prefix.as_bytes());
    crc_head.update(text_a.as_bytes());
    out.write_all(b"tEXt").map_err(io)?;
    out.write_all(keyword_prefix.as_bytes()).map_err(io)?;
    out.write_all(text_a.as_bytes()).map_err(io)?;
    let hash_pos = out.stream_position().map_err(io)?;
    out.write_all(HASH_PLACEHOLDER.as_bytes()).map_err(io)?;
    let mut crc_tail = crc32fast::Hasher::new();
    crc_tail.update(text_b.as_bytes());
    out.write_all(text_b.as_bytes()).map_err(io)?;
    if opts.mode == Mode::Code {
        write_base64(data, out, &mut crc_tail).map_err(io)?;
    }
    crc_tail.update(text_c.as_bytes());
    out.write_all(text_c.as_bytes()).map_err(io)?;
    let text_crc_pos = out.stream_position().map_err(io)?;
    out.write_all(&[0u8; 4]).map_err(io)?;
    if let Some(c) = compressed {
        let index = c.index.to_bytes();
        if index.len() as u64 > u64::from(crate::format::png::MAX_CHUNK_LEN) {
            return Err(Error::InvalidArgument(format!(
                "{} segments need an index larger than a PNG chunk; use a larger segment size",
                c.index.count()
            )));
        }
        out.write_all(&chunk_bytes(&crate::format::zindex::CHUNK_TYPE, &index))
            .map_err(io)?;
    }

    let indexed = !opts.layout.is_plain(grid, compressed.is_some());
    let (digest, end) = if !indexed && grid <= plain::ZLIB_MAX_GRID {
        // Whether the pixels compress: a compressed payload does not; `auto` has already
        // sampled the input when it chose not to compress it.
        let compressible = match (compressed, opts.compress) {
            (Some(_), _) => false,
            (None, CompressMode::Auto) if opts.mode == Mode::Standard => false,
            _ => compressed::worth_compressing(data),
        };
        let plain_coding = plain::PlainCoding::new(opts.level, compressible);
        timed(clock, Stage::Codec, || {
            plain::write_plain_pixels(
                &mut *out,
                data,
                &tables,
                draw_code,
                plain_coding,
                IDAT_CHUNK_SIZE as usize,
            )
        })
        .map_err(io)?;
        out.write_all(&chunk_bytes(b"IEND", &[])).map_err(io)?;
        let digest: [u8; 32] = match compressed {
            // The hash is of the original input, taken while it was compressed.
            Some(c) => c.digest,
            None => timed(clock, Stage::Hash, || Sha256::digest(data).into()),
        };
        (digest, out.stream_position().map_err(io)?)
    } else {
        // rtIX: placeholder of the right size, filled in as stripes complete.
        let mut header = IndexHeader {
            version: index::VERSION,
            tile_side_log2: tile_log2,
            grid,
            payload_size: n,
            idat_chunk_size: IDAT_CHUNK_SIZE,
            stream_length: 0,
            pieces_end: 0,
        };
        let index_len = header.chunk_len();
        if index_len > u64::from(crate::format::png::MAX_CHUNK_LEN) {
            return Err(Error::InvalidArgument(format!(
                "grid {grid} needs an index larger than a PNG chunk"
            )));
        }
        let index_data_pos = if indexed {
            out.write_all(&(index_len as u32).to_be_bytes())
                .map_err(io)?;
            out.write_all(&index::CHUNK_TYPE).map_err(io)?;
            let at = out.stream_position().map_err(io)?;
            write_zeros(out, index_len + 4).map_err(io)?;
            Some(at)
        } else {
            None
        };

        // --- Pixels. ---
        let zero_pieces = ZeroPieces::new(tile_side);
        let rows_per_group = (((1u64 << 20) / grid).max(1)).min(tile_side);
        let groups_per_stripe = tile_side / rows_per_group;
        let total_rows = grid;
        let level = opts.level;
        let progress = opts.progress.clone();

        let mut stream = StreamWriter::new(
            &mut *out,
            IDAT_CHUNK_SIZE,
            tiles_per_side,
            tile_side,
            index_data_pos,
            &header,
        );
        let (digest, stream_result) = std::thread::scope(|scope| -> Result<_> {
            // SHA-256 of the input: one sequential stream, on its own thread.
            let hasher = scope.spawn(|| -> [u8; 32] {
                if let Some(c) = compressed {
                    // The hash is of the original input, taken while it was compressed.
                    return c.digest;
                }
                timed(clock, Stage::Hash, || {
                    let mut sha = Sha256::new();
                    let block = 4 << 20;
                    let mut at = 0;
                    while at < data.len() {
                        let end = (at + block).min(data.len());
                        sha.update(&data[at..end]);
                        release(at..end);
                        at = end;
                    }
                    sha.finalize().into()
                })
            });

            let (send, receive) = sync_channel::<Vec<GroupOutput>>(2);
            let writer = scope.spawn(move || -> Result<_> {
                stream
                    .write_raw(&ZLIB_HEADER)
                    .map_err(|e| Error::io(out_path, e))?;
                for group in receive {
                    timed(clock, Stage::Write, || stream.write_group(group))
                        .map_err(|e| Error::io(out_path, e))?;
                }
                timed(clock, Stage::Write, || stream.finish()).map_err(|e| Error::io(out_path, e))
            });

            // A stripe's tile jobs, and with a mapper its scattered row-major tiles. With a mapper
            // this runs on a helper thread one stripe ahead, so the mapper (a GPU's transfers and
            // kernels) works on stripe i + 1 while the pool deflates stripe i.
            let spare_tiles = std::sync::Mutex::new(Vec::<Vec<u8>>::new());
            let prepare_stripe = |stripe: usize| -> Result<(Vec<TileJob<'_>>, Vec<u8>)> {
                let stripe = stripe as u64;
                let jobs: Vec<TileJob> = (0..tiles_per_side)
                    .into_par_iter()
                    .map(|column| {
                        let place = tables.place_at(column, stripe);
                        let start = place.hilbert_index * tile_bytes;
                        let payload = if start >= n {
                            &data[0..0]
                        } else {
                            &data[start as usize..(start + tile_bytes).min(n) as usize]
                        };
                        let kind = classify(payload, tile_bytes as usize, level);
                        TileJob {
                            place,
                            payload,
                            kind,
                        }
                    })
                    .collect();
                let spare = spare_tiles.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let mut stripe_tiles = spare.unwrap_or_default();
                if let Some(m) = &mapper {
                    let spent = scatter_stripe(&**m, &tables, &jobs, draw_code, &mut stripe_tiles)
                        .map_err(|e| {
                            Error::Gpu(format!(
                                "{}: GPU tile scatter failed: {e}",
                                out_path.display()
                            ))
                        })?;
                    if let Some(clock) = clock {
                        clock.add_mapper(&spent);
                    }
                }
                Ok((jobs, stripe_tiles))
            };
            let compress_stripe = |stripe: usize,
                                   (jobs, stripe_tiles): (Vec<TileJob<'_>>, Vec<u8>)|
             -> Result<ControlFlow<()>> {
                let stripe = stripe as u64;
                let tile_of = |k: usize| {
                    mapper
                        .as_ref()
                        .map(|_| &stripe_tiles[k * tile_bytes as usize..][..tile_bytes as usize])
                };
                let mut flow = ControlFlow::Continue(());
                for group in 0..groups_per_stripe {
                    let first_row = group * rows_per_group;
                    let outputs: Vec<GroupOutput> = timed(clock, Stage::Codec, || {
                        jobs.par_iter()
                            .enumerate()
                            .map_init(
                                || {
                                    (
                                        PieceCompressor::new(level),
                                        Vec::with_capacity(4 * tile_side as usize + 1),
                                    )
                                },
                                |(compressor, raw), (k, job)| {
                                    encode_group(
                                        &tables,
                                        job,
                                        tile_of(k),
                                        first_row,
                                        rows_per_group,
                                        draw_code,
                                        compressor,
                                        raw,
                                        &zero_pieces,
                                    )
                                },
                            )
                            .collect()
                    });
                    if send.send(outputs).is_err() {
                        // The writer stopped; its error is reported below.
                        flow = ControlFlow::Break(());
                        break;
                    }
                    if let Some(p) = &progress {
                        let rows_done = stripe * tile_side + first_row + rows_per_group;
                        p(n * rows_done / total_rows, n);
                    }
                }
                for job in &jobs {
                    if !job.payload.is_empty() {
                        let start = job.payload.as_ptr() as usize - data.as_ptr() as usize;
                        release(start..start + job.payload.len());
                    }
                }
                if mapper.is_some() {
                    spare_tiles
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(stripe_tiles);
                }
                Ok(flow)
            };
            let stripes_result = produce_consume(
                tiles_per_side as usize,
                mapper.is_some(),
                prepare_stripe,
                compress_stripe,
            );
            drop(send);
            let stream_result = writer.join().expect("writer thread panicked");
            let digest = hasher.join().expect("hash thread panicked");
            stripes_result?;
            Ok((digest, stream_result))
        })?;
        let summary = stream_result?;

        let end = out.stream_position().map_err(io)?;
        if let Some(index_data_pos) = index_data_pos {
            // --- Patch the index. ---
            header.stream_length = summary.stream_length;
            header.pieces_end = summary.pieces_end;
            let mut index_head = Vec::with_capacity(header.piece_table_offset() as usize);
            index_head.extend_from_slice(&header.to_bytes());
            for offset in &summary.stripe_starts {
                index_head.extend_from_slice(&offset.to_be_bytes());
            }
            for crc in &summary.tile_crcs {
                index_head.extend_from_slice(&crc.to_be_bytes());
            }
            let mut index_crc = crc32fast::Hasher::new();
            index_crc.update(&index::CHUNK_TYPE);
            index_crc.update(&index_head);
            index_crc.combine(&summary.piece_table_crc);
            out.seek(SeekFrom::Start(index_data_pos)).map_err(io)?;
            out.write_all(&index_head).map_err(io)?;
            out.seek(SeekFrom::Start(index_data_pos + index_len))
                .map_err(io)?;
            out.write_all(&index_crc.finalize().to_be_bytes())
                .map_err(io)?;
        }
        (digest, end)
    };

    let hash_hex = hex(&digest);
    crc_head.update(hash_hex.as_bytes());
    crc_head.combine(&crc_tail);
    out.seek(SeekFrom::Start(hash_pos)).map_err(io)?;
    out.write_all(hash_hex.as_bytes()).map_err(io)?;
    out.seek(SeekFrom::Start(text_crc_pos)).map_err(io)?;
    out.write_all(&crc_head.finalize().to_be_bytes())
        .map_err(io)?;
    out.seek(SeekFrom::Start(end)).map_err(io)?;
    out.flush().map_err(io)?;

    let mut meta = meta;
    meta.insert("data_hash".into(), hash_hex.into());
    if opts.mode == Mode::Code {
        // The caller gets the metadata without a copy of the whole payload.
        meta.insert(metadata::B64_KEY.into(), Value::String(base64_of(data)));
    }
    Ok(meta)
}

/// Decides how a tile's pieces are coded from a small sample of its payload.
fn classify(payload: &[u8], tile_bytes: usize, level: u32) -> TileKind {
    // An all-zero tile has exactly the pixels of a tile past the data: reuse the zero pieces.
    if payload.iter().all(|&b| b == 0) {
        return TileKind::Empty;
    }
    if level == 0 {
        return TileKind::Stored;
    }
    // The partly filled tile at the end of the data: a sample cannot speak for its zero
    // padding, which the Hilbert curve interleaves with the payload inside each scanline, so
    // every piece is tried (each still falls back to stored when nothing else helps) and the
    // padding costs a few bytes a run instead of being stored raw.
    if payload.len() < tile_bytes {
        return TileKind::Partial;
    }
    // Two 1 KiB samples, from the start and the middle: compressing them costs well under 1%
    // of the tile, and random data then skips deflate entirely.
    let sample_len = 1024.min(payload.len());
    let mid = (payload.len() / 2).min(payload.len() - sample_len);
    let mut compressor = PieceCompressor::new(level);
    let mut buf = Vec::with_capacity(2 * sample_len + 32);
    let a = compressor.compress(&payload[..sample_len], &mut buf);
    let b = compressor.compress(&payload[mid..mid + sample_len], &mut buf);
    if (a + b) as f64 >= 0.97 * (2 * sample_len) as f64 {
        TileKind::Stored
    } else {
        TileKind::Deflated
    }
}

/// Adler-32 of an all-zero piece with and without the filter byte (zero pieces have no bytes
/// of their own: the writer codes them as zero runs, but the stream's Adler-32 counts them).
struct ZeroPieces {
    first_adler: u32,
    other_adler: u32,
}

impl ZeroPieces {
    fn new(tile_side: u64) -> Self {
        let other_raw = vec![0u8; 4 * tile_side as usize];
        ZeroPieces {
            first_adler: adler32(&[&[0u8][..], &other_raw].concat()),
            other_adler: adler32(&other_raw),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn encode_group(
    tables: &TileTables,
    job: &TileJob<'_>,
    tile: Option<&[u8]>,
    first_row: u64,
    rows: u64,
    draw_code: bool,
    compressor: &mut PieceCompressor,
    raw: &mut Vec<u8>,
    zeros: &ZeroPieces,
) -> GroupOutput {
    let side = tables.tile_side() as usize;
    let column = job.place.column;
    let mut out = GroupOutput {
        column,
        stripe: job.place.row,
        hilbert_index: job.place.hilbert_index,
        bytes: Vec::with_capacity(if job.kind == TileKind::Empty {
            0
        } else {
            rows as usize * (4 * side + 8)
        }),
        piece_lens: Vec::with_capacity(rows as usize),
        adlers: Vec::with_capacity(rows as usize),
        raw_lens: Vec::with_capacity(rows as usize),
        zero: Vec::with_capacity(rows as usize),
        crc: crc32fast::Hasher::new(),
        first_row,
    };
    let filter_byte = usize::from(column == 0);
    if job.kind == TileKind::Empty {
        let adler = if column == 0 {
            zeros.first_adler
        } else {
            zeros.other_adler
        };
        let zero_row = [0u8; 4 * 256];
        for _ in 0..rows {
            // No bytes of its own: the writer codes it as part of a zero run.
            out.piece_lens.push(0);
            out.zero.push(true);
            out.adlers.push(adler);
            out.raw_lens.push((4 * side + filter_byte) as u32);
            // CRC of a zero row, fed in slices of a small zero buffer.
            let mut left = 4 * side;
            while left > 0 {
                let take = left.min(zero_row.len());
                out.crc.update(&zero_row[..take]);
                left -= take;
            }
        }
        return out;
    }
    let locals = tables.locals(&job.place);
    let row_len = 4 * side + filter_byte;
    for row in first_row..first_row + rows {
        let row_locals = &locals[row as usize * side..(row as usize + 1) * side];
        // Stored tiles are gathered straight behind their stored-block header: one copy less.
        let stored = job.kind == TileKind::Stored;
        let start = out.bytes.len();
        let (buf, at) = if stored {
            let len = row_len as u16;
            out.bytes.push(0x00);
            out.bytes.extend_from_slice(&len.to_le_bytes());
            out.bytes.extend_from_slice(&(!len).to_le_bytes());
            (
                &mut out.bytes,
                start + crate::format::segment::STORED_OVERHEAD,
            )
        } else {
            raw.clear();
            (&mut *raw, 0)
        };
        buf.resize(at + row_len, 0);
        match tile {
            // Already scattered (and coloured) by the mapper: copy the row.
            Some(tile) => buf[at + filter_byte..]
                .copy_from_slice(&tile[row as usize * 4 * side..(row as usize + 1) * 4 * side]),
            None => gather_row(
                &mut buf[at + filter_byte..],
                row_locals,
                job.payload,
                draw_code,
            ),
        }
        let piece_raw = &buf[at..];
        out.crc.update(&piece_raw[filter_byte..]);
        out.adlers.push(adler32(piece_raw));
        out.raw_lens.push(row_len as u32);
        let is_zero = piece_raw.iter().all(|&b| b == 0);
        out.zero.push(is_zero);
        let len = if is_zero {
            // Coded by the writer as part of a zero run.
            out.bytes.truncate(start);
            0
        } else if stored {
            out.bytes.len() - start
        } else if job.kind == TileKind::Partial {
            compressor.compress_sparse(raw, &mut out.bytes)
        } else {
            compressor.compress(raw, &mut out.bytes)
        };
        out.piece_lens.push(len as u32);
    }
    out
}

/// Scatters every non-empty tile of a stripe through `mapper` into `tiles` (`jobs.len()` tiles
/// of `4·T²` bytes, column order; empty tiles are left zero and never read, their pieces are the
/// precomputed zero pieces). In code mode each payload is coloured by the mapper first: the
/// colouring works on whole 4-byte pixels and tiles start on pixel boundaries, so colouring tile
/// by tile equals colouring the whole input, and pixels past the data stay zero as in
/// [`gather_row`].
fn scatter_stripe(
    mapper: &dyn TileMapper,
    tables: &TileTables,
    jobs: &[TileJob<'_>],
    draw_code: bool,
    tiles: &mut Vec<u8>,
) -> std::result::Result<GpuTimings, crate::gpu::GpuError> {
    let tile_bytes = 4 * tables.tile_pixels() as usize;
    tiles.clear();
    tiles.resize(jobs.len() * tile_bytes, 0);
    let live: Vec<usize> = (0..jobs.len())
        .filter(|&k| jobs[k].kind != TileKind::Empty)
        .collect();
    let mut spent = GpuTimings::default();
    if live.is_empty() {
        return Ok(spent);
    }
    // Colour all live payloads in one mapper call, laid end to end at whole-tile offsets.
    let coloured = if draw_code {
        let mut input = Vec::with_capacity(live.len() * tile_bytes);
        for &k in &live {
            let p = jobs[k].payload;
            input.extend_from_slice(p);
            // Pad to the tile so that the next payload starts on a pixel boundary.
            input.resize(input.len() + tile_bytes - p.len(), 0);
        }
        let mut out = vec![0u8; input.len()];
        spent.accumulate(&mapper.code_colour(&input, &mut out)?);
        Some(out)
    } else {
        None
    };
    let inputs: Vec<(TilePlace, &[u8])> = live
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let p = jobs[k].payload;
            let bytes = match &coloured {
                // Only the data's own pixels: the padding must stay zero, not coloured zero.
                Some(c) => &c[i * tile_bytes..i * tile_bytes + p.len().div_ceil(4) * 4],
                None => p,
            };
            (jobs[k].place, bytes)
        })
        .collect();
    let mut outs: Vec<&mut [u8]> = Vec::with_capacity(live.len());
    let mut rest = &mut tiles[..];
    let mut at = 0;
    for &k in &live {
        let (_, tail) = rest.split_at_mut((k - at) * tile_bytes);
        let (tile, tail) = tail.split_at_mut(tile_bytes);
        outs.push(tile);
        rest = tail;
        at = k + 1;
    }
    spent.accumulate(&mapper.scatter_tiles(tables, &inputs, &mut outs)?);
    Ok(spent)
}

/// One tile-wide scanline: pixel `x` is payload pixel `row_locals[x]` (zero past the data),
/// drawn as code when asked.
fn gather_row(dst: &mut [u8], row_locals: &[u32], payload: &[u8], draw_code: bool) {
    let whole = payload.len() / 4;
    let full_tile = row_locals.iter().all(|&l| (l as usize) < whole);
    if full_tile && !draw_code {
        for (pixel, &local) in dst.chunks_exact_mut(4).zip(row_locals) {
            let l = 4 * local as usize;
            pixel.copy_from_slice(&payload[l..l + 4]);
        }
        return;
    }
    let data_pixels = payload.len().div_ceil(4);
    for (pixel, &local) in dst.chunks_exact_mut(4).zip(row_locals) {
        let l = local as usize;
        let mut p = [0u8; 4];
        if l < whole {
            p.copy_from_slice(&payload[4 * l..4 * l + 4]);
        } else if l < data_pixels {
            let tail = &payload[4 * l..];
            p[..tail.len()].copy_from_slice(tail);
        } else {
            pixel.copy_from_slice(&p);
            continue;
        }
        pixel.copy_from_slice(&if draw_code { code_pixel(p) } else { p });
    }
}

fn write_zeros<W: Write>(out: &mut W, mut n: u64) -> std::io::Result<()> {
    let zeros = [0u8; 64 * 1024];
    while n > 0 {
        let take = n.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..take])?;
        n -= take as u64;
    }
    Ok(())
}

fn write_base64<W: Write>(
    data: &[u8],
    out: &mut W,
    crc: &mut crc32fast::Hasher,
) -> std::io::Result<()> {
    use base64::Engine;
    // Whole 3-byte groups per block so that only the very end carries padding.
    let block = 3 * (1 << 18);
    let mut buf = String::with_capacity(block / 3 * 4 + 4);
    for chunk in data.chunks(block) {
        buf.clear();
        base64::engine::general_purpose::STANDARD.encode_string(chunk, &mut buf);
        crc.update(buf.as_bytes());
        out.write_all(buf.as_bytes())?;
    }
    Ok(())
}

fn base64_of(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::hilbert::d2xy;

    /// Decodes with the png crate (an independent reader) and walks the Hilbert curve.
    fn decode_with_png_crate(png_bytes: &[u8], n: usize) -> Vec<u8> {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        decoder.ignore_checksums(false);
        let mut reader = decoder.read_info().unwrap();
        let mut img = vec![0u8; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut img).unwrap();
        let g = info.width as u64;
        let mut out = Vec::with_capacity(n);
        for d in 0..(n as u64).div_ceil(4) {
            let (x, y) = d2xy(g, d);
            let p = ((y * g + x) * 4) as usize;
            out.extend_from_slice(&img[p..p + 4]);
        }
        out.truncate(n);
        out
    }

    fn sample(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..n)
            .map(|i| {
                if i % 3000 < 1000 {
                    0
                } else if i % 3000 < 2000 {
                    b"some text "[i % 10]
                } else {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                }
            })
            .collect()
    }

    #[test]
    fn png_crate_reads_what_we_write() {
        for (n, tile_log2) in [
            (0usize, 8u8),
            (1, 8),
            (65, 8),
            (1000, 2),
            (70_000, 4),
            (300_000, 8),
            (1 << 20, 6),
        ] {
            for level in [0, 1, 6] {
                let data = sample(n, n as u64 + 7);
                let opts = EncodeOptions {
                    level,
                    tile_side_log2: Some(tile_log2),
                    // The pixels themselves are compared with the data.
                    compress: CompressMode::None,
                    ..Default::default()
                };
                let (png_bytes, meta) = encode_to_vec(&data, &opts).unwrap();
                assert_eq!(meta["data_size"], n as u64);
                assert_eq!(
                    decode_with_png_crate(&png_bytes, n),
                    data,
                    "n={n} level={level}"
                );
            }
        }
    }
}
