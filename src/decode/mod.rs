//! Decoding: any PixelRTS PNG → its original bytes.
//!
//! [`Container::open`](crate::container::Container::open) reads only chunk headers, the metadata and the index. The payload then
//! comes from one of three places: the base64 text of a code-mode file, the pixels of a file
//! with our seekable index (tiles inflated in parallel, in payload order), or the pixels of any
//! other PNG (one sequential pass with the `png` crate, scanlines gathered per stripe of tiles).
//! Every path streams, and `--verify` hashes alongside.

mod sequential;

use std::fs::File;
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use rayon::prelude::*;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::container::{adjacent_runs, Container, SeekableImage, TileScratch};

use crate::encode::{hex, Progress};
use crate::error::{Error, IoContext, Result};
use crate::format::metadata::{self, B64Source};
use crate::gpu::overlap::produce_consume;
use crate::gpu::stages::{timed, Stage, StageClock};
use crate::gpu::{GpuMode, GpuTimings, TileMapper};
use crate::io_util::{with_threads, AtomicOutput};

/// How to decode.
#[derive(Clone, Default)]
pub struct DecodeOptions {
    /// Check the SHA-256 of the result against `data_hash`.
    pub verify: bool,
    /// Replace an existing output.
    pub overwrite: bool,
    pub threads: Option<usize>,
    pub progress: Option<Progress>,
    /// `--gpu auto|on|off`: whether the tile gather of seekable images runs on a GPU
    /// (policy of [`crate::gpu::select_mapper`]); `on` fails when none is usable.
    pub gpu: GpuMode,
    /// For tests and benchmarks: gather tiles through this mapper whatever `gpu` says (a
    /// [`crate::gpu::CpuMapper`] exercises the GPU's code path on the CPU).
    pub mapper: Option<Arc<dyn TileMapper>>,
    /// For benchmarks: add each stage's busy time here (`pixelrts bench-gpu`).
    pub stages: Option<Arc<StageClock>>,
}

/// What a decode produced.
#[derive(Clone, Debug)]
pub struct DecodeReport {
    pub bytes: u64,
    /// SHA-256 of the output (hex).
    pub sha256: String,
    pub metadata: Map<String, Value>,
}

/// The default output path: INPUT without `.rts.png` (or `.png`), else INPUT + `.decoded`.
pub fn default_output(input: &Path) -> PathBuf {
    let s = input.to_string_lossy();
    for suffix in [".rts.png", ".png"] {
        if let Some(stem) = s.strip_suffix(suffix) {
            if !stem.is_empty() && !stem.ends_with('/') {
                return PathBuf::from(stem);
            }
        }
    }
    PathBuf::from(format!("{s}.decoded"))
}

/// Decodes `input` into the file `output` (written atomically; nothing is left under the final
/// name if decoding or verification fails).
pub fn decode_file(input: &Path, output: &Path, opts: &DecodeOptions) -> Result<DecodeReport> {
    let container = Container::open(input)?;
    let out = AtomicOutput::create(output, opts.overwrite)?;
    let report = with_threads(None, opts.threads, || {
        decode_container(&container, Sink::File(&out.file), opts)
    })?;
    out.commit(false)?;
    Ok(report)
}

/// Decodes `input` into any writer (standard output, a socket…).
pub fn decode_to_writer(
    input: &Path,
    out: &mut (dyn Write + Send),
    opts: &DecodeOptions,
) -> Result<DecodeReport> {
    let container = Container::open(input)?;
    with_threads(None, opts.threads, || {
        decode_container(&container, Sink::Stream(out), opts)
    })
}

/// Decodes PNG bytes held in memory (small files, tests).
pub fn decode_to_vec(png: &[u8]) -> Result<Vec<u8>> {
    let mut temp = tempfile::NamedTempFile::new().map_err(|e| Error::io("<temporary file>", e))?;
    temp.write_all(png).at(temp.path())?;
    let mut out = Vec::new();
    decode_to_writer(
        temp.path(),
        &mut out,
        &DecodeOptions {
            verify: true,
            ..Default::default()
        },
    )?;
    Ok(out)
}

/// Whether the payload matches its `data_hash`.
pub struct VerifyReport {
    pub expected: String,
    pub actual: String,
    pub bytes: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.expected == self.actual
    }
}

/// Decodes without writing anything and compares the hash.
pub fn verify_file(input: &Path, threads: Option<usize>) -> Result<VerifyReport> {
    let container = Container::open(input)?;
    let expected = container
        .metadata
        .data_hash
        .clone()
        .ok_or_else(|| Error::bad_metadata(input, "no data_hash to verify against"))?;
    let opts = DecodeOptions {
        verify: false,
        threads,
        ..Default::default()
    };
    let mut sink = std::io::sink();
    let report = with_threads(None, opts.threads, || {
        decode_container(&container, Sink::Stream(&mut sink), &opts)
    })?;
    Ok(VerifyReport {
        expected,
        actual: report.sha256,
        bytes: report.bytes,
    })
}

/// Where decoded bytes go.
pub(crate) enum Sink<'a> {
    /// A regular file: positional writes are possible.
    File(&'a File),
    Stream(&'a mut (dyn Write + Send)),
}

/// Writes sequentially to a sink while hashing; counts bytes.
struct HashingWriter<'a> {
    sink: Sink<'a>,
    sha: Sha256,
    written: u64,
}

impl HashingWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::File(f) => {
                // Sequential writes of at most 1 MiB: measured faster than one large pwrite.
                for part in bytes.chunks(1 << 20) {
                    (&**f).write_all(part)?;
                }
            }
            Sink::Stream(w) => w.write_all(bytes)?,
        }
        self.sha.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn decode_container(c: &Container, sink: Sink<'_>, opts: &DecodeOptions) -> Result<DecodeReport> {
    let path = &c.path;
    let md = &c.metadata;
    let out_err = |e: std::io::Error| Error::io("<output>", e);
    // Chosen once per job, before any output, so that `--gpu on` without a GPU fails whatever
    // the image holds. None is the CPU fast path (gather fused into the per-run decode).
    let mapper = crate::gpu::pipeline_mapper(opts.gpu, opts.mapper.as_ref(), md.data_size)
        .map_err(|e| Error::Gpu(e.to_string()))?;
    let mapper = mapper.as_deref();
    let mut writer = HashingWriter {
        sink,
        sha: Sha256::new(),
        written: 0,
    };
    if let Some(b64) = &md.b64 {
        decode_base64(c, b64, &mut writer)?;
    } else if md.compressed && c.segments.is_some() {
        decode_through_reader(c, &mut writer, opts.progress.as_ref())?;
    } else if md.compressed {
        // The reference's compressed files (no segment index): the pixels hold one zlib stream
        // or zstd frame; decode it to a temporary file, then inflate it.
        let temp = tempfile::tempfile().map_err(|e| Error::io("<temporary file>", e))?;
        let mut inner = HashingWriter {
            sink: Sink::File(&temp),
            sha: Sha256::new(),
            written: 0,
        };
        decode_pixels(c, &mut inner, opts, mapper)?;
        decompress_payload(c, &temp, inner.written, &mut writer)?;
    } else {
        decode_pixels(c, &mut writer, opts, mapper)?;
    }
    // Progress counts output bytes; its end is reported whichever path ran.
    if let Some(p) = &opts.progress {
        p(writer.written, writer.written);
    }
    if writer.written != md.data_size {
        return Err(Error::corrupt(
            path,
            format!(
                "decoded {} bytes, metadata says {}",
                writer.written, md.data_size
            ),
        ));
    }
    if let Sink::Stream(w) = &mut writer.sink {
        w.flush().map_err(out_err)?;
    }
    let actual = hex(&writer.sha.finalize());
    if opts.verify {
        match &md.data_hash {
            Some(expected) if *expected != actual => {
                return Err(Error::HashMismatch {
                    path: path.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
            Some(_) => {}
            None => return Err(Error::bad_metadata(path, "no data_hash to verify against")),
        }
    }
    Ok(DecodeReport {
        bytes: writer.written,
        sha256: actual,
        metadata: md.display_map(),
    })
}

fn decode_base64(c: &Container, b64: &B64Source, out: &mut HashingWriter<'_>) -> Result<()> {
    use base64::Engine;
    let engine = &base64::engine::general_purpose::STANDARD;
    let bad = |e: base64::DecodeError| {
        Error::bad_metadata(
            &c.path,
            format!("{} is not valid base64: {e}", metadata::B64_KEY),
        )
    };
    let io_out = |e| Error::io("<output>", e);
    match b64 {
        B64Source::Inline(s) => {
            let bytes = engine.decode(s.as_bytes()).map_err(bad)?;
            out.write(&bytes).map_err(io_out)?;
        }
        B64Source::File { offset, len } => {
            if len % 4 != 0 {
                return Err(Error::bad_metadata(
                    &c.path,
                    format!(
                        "{} has {len} characters, not a multiple of 4",
                        metadata::B64_KEY
                    ),
                ));
            }
            let block = 4 << 18;
            let mut text = vec![0u8; block];
            let mut bytes = Vec::with_capacity(block / 4 * 3);
            let mut done = 0u64;
            while done < *len {
                let n = (len - done).min(block as u64) as usize;
                c.file
                    .read_exact_at(&mut text[..n], offset + done)
                    .at(&c.path)?;
                bytes.clear();
                engine.decode_vec(&text[..n], &mut bytes).map_err(bad)?;
                out.write(&bytes).map_err(io_out)?;
                done += n as u64;
            }
        }
    }
    Ok(())
}

/// Decodes an indexed compressed payload through the random-access reader, 16 MiB at a time:
/// each read inflates its segments in parallel (every tile and segment CRC-checked) straight
/// from the pixels, so nothing the size of the payload is written anywhere; writing and
/// SHA-256 run on their own thread, one read behind.
fn decode_through_reader(
    c: &Container,
    out: &mut HashingWriter<'_>,
    progress: Option<&Progress>,
) -> Result<()> {
    const READ: u64 = 16 << 20;
    let opts = crate::reader::ReaderOptions {
        // Room for the read-ahead of the tiles under the segments, not for the whole file.
        cache: crate::cache::TileCache::shared(96 << 20),
        checkpoint_dir: None,
        disk_cache: None,
    };
    // The same open file, not the path again: a file renamed over since is not mixed in.
    let same = Container::from_file(c.file.try_clone().at(&c.path)?, &c.path)?;
    let reader = crate::reader::Reader::from_container(same, &opts)?;
    let len = reader.len();
    let (send_full, receive_full) = sync_channel::<Vec<u8>>(1);
    let (send_empty, receive_empty) = sync_channel::<Vec<u8>>(2);
    for _ in 0..2 {
        send_empty.send(Vec::new()).expect("channel has room");
    }
    std::thread::scope(|scope| -> Result<()> {
        let writer = scope.spawn(move || -> Result<()> {
            for buf in receive_full {
                out.write(&buf).map_err(|e| Error::io("<output>", e))?;
                // The reader side may have stopped: then nobody needs the buffer back.
                let _ = send_empty.send(buf);
            }
            Ok(())
        });
        let read = (|| -> Result<()> {
            let mut offset = 0;
            while offset < len {
                let Ok(mut buf) = receive_empty.recv() else {
                    return Ok(()); // the writer failed; its error is reported
                };
                let n = (len - offset).min(READ) as usize;
                buf.resize(n, 0);
                reader.read_exact_at(offset, &mut buf)?;
                if send_full.send(buf).is_err() {
                    return Ok(());
                }
                offset += n as u64;
                if let Some(p) = progress {
                    p(offset, len);
                }
            }
            Ok(())
        })();
        drop(send_full);
        let written = writer.join().expect("writer thread panicked");
        read.and(written)
    })
}

fn decompress_payload(
    c: &Container,
    temp: &File,
    encoded: u64,
    out: &mut HashingWriter<'_>,
) -> Result<()> {
    let mut magic = [0u8; 4];
    let have = temp.read_at(&mut magic, 0).at(&c.path)?;
    let reader = crate::format::metadata::PositionalReader {
        file: temp,
        offset: 0,
        remaining: encoded,
    };
    let mut decoder: Box<dyn Read> = if have == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(
            ruzstd::decoding::StreamingDecoder::new(reader).map_err(|e| {
                Error::corrupt(&c.path, format!("compressed payload: bad zstd frame: {e}"))
            })?,
        )
    } else if have >= 2
        && magic[0] & 0x0f == 8
        && (u16::from(magic[0]) << 8 | u16::from(magic[1])) % 31 == 0
    {
        Box::new(flate2::read::ZlibDecoder::new(reader))
    } else {
        return Err(Error::bad_metadata(
            &c.path,
            "compression is set but the payload is neither zstd nor zlib",
        ));
    };
    // Never produce more than the metadata promises: a bomb stops at data_size + 1.
    let limit = c.metadata.data_size;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = decoder.read(&mut buf).map_err(|e| {
            Error::corrupt(
                &c.path,
                format!("compressed payload does not decompress: {e}"),
            )
        })?;
        if n == 0 {
            break;
        }
        if out.written + n as u64 > limit {
            return Err(Error::limit(
                &c.path,
                format!("compressed payload inflates past data_size {limit}"),
            ));
        }
        out.write(&buf[..n]).map_err(|e| Error::io("<output>", e))?;
    }
    Ok(())
}

/// `mapper` serves seekable images only: the sequential path (PNGs written by other encoders)
/// gathers from scanline bands, never from whole row-major tiles, so it stays on the CPU.
fn decode_pixels(
    c: &Container,
    out: &mut HashingWriter<'_>,
    opts: &DecodeOptions,
    mapper: Option<&dyn TileMapper>,
) -> Result<()> {
    match &c.seekable {
        Some(image) => decode_seekable(image, c.metadata.pixel_payload_size, out, opts, mapper),
        None => sequential::decode_sequential(c, out, opts),
    }
}

/// Tiles in payload order, a batch at a time on the rayon pool; a writer thread writes and
/// hashes the previous batch meanwhile. With a mapper, a helper thread inflates batch `i + 1`
/// while the mapper gathers batch `i` ([`crate::gpu::overlap`]).
fn decode_seekable(
    image: &SeekableImage,
    payload: u64,
    out: &mut HashingWriter<'_>,
    opts: &DecodeOptions,
    mapper: Option<&dyn TileMapper>,
) -> Result<()> {
    let tile_bytes = 4 * image.tables.tile_pixels();
    let tiles = payload.div_ceil(tile_bytes);
    let batch_tiles = ((16u64 << 20) / tile_bytes)
        .max(rayon::current_num_threads() as u64)
        .max(1);
    let batches = tiles.div_ceil(batch_tiles) as usize;
    let batch_range = |b: usize| {
        let first = b as u64 * batch_tiles;
        (first, (first + batch_tiles).min(tiles))
    };
    let (send_full, receive_full) = sync_channel::<(Vec<u8>, usize)>(1);
    let (send_empty, receive_empty) = sync_channel::<Vec<u8>>(3);
    for _ in 0..3 {
        send_empty.send(Vec::new()).expect("channel has room");
    }
    let spare_pixels = std::sync::Mutex::new(Vec::<Vec<u8>>::new());
    let clock = opts.stages.as_deref();
    std::thread::scope(|scope| -> Result<()> {
        let writer = scope.spawn(move || -> std::io::Result<()> {
            for (buf, len) in receive_full {
                timed(clock, Stage::Write, || out.write(&buf[..len]))?;
                let _ = send_empty.send(buf);
            }
            Ok(())
        });
        // Mapper only: the batch's CRC-checked row-major pixels.
        let inflate = |b: usize| -> Result<Option<InflatedBatch>> {
            if mapper.is_none() {
                return Ok(None);
            }
            let (first, last) = batch_range(b);
            let spare = spare_pixels.lock().unwrap_or_else(|p| p.into_inner()).pop();
            timed(clock, Stage::Codec, || {
                inflate_batch(image, first, last, tile_bytes, spare.unwrap_or_default())
            })
            .map(Some)
        };
        let deliver = |b: usize, inflated: Option<InflatedBatch>| -> Result<ControlFlow<()>> {
            let (first, last) = batch_range(b);
            let start_byte = first * tile_bytes;
            let end_byte = (last * tile_bytes).min(payload);
            let len = (end_byte - start_byte) as usize;
            let Ok(mut buf) = receive_empty.recv() else {
                // The writer stopped; its error is reported below.
                return Ok(ControlFlow::Break(()));
            };
            buf.resize(len.max(buf.len()), 0);
            match (inflated, mapper) {
                (Some(batch), Some(mapper)) => {
                    let spent = gather_batch(image, &batch, tile_bytes, &mut buf[..len], mapper)?;
                    if let Some(clock) = clock {
                        clock.add_mapper(&spent);
                    }
                    spare_pixels
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(batch.pixels);
                }
                _ => timed(clock, Stage::Codec, || {
                    decode_batch(image, first, last, tile_bytes, &mut buf[..len])
                })?,
            }
            if send_full.send((buf, len)).is_err() {
                return Ok(ControlFlow::Break(()));
            }
            if let Some(p) = &opts.progress {
                p(end_byte, payload);
            }
            Ok(ControlFlow::Continue(()))
        };
        let result = produce_consume(batches, mapper.is_some(), inflate, deliver);
        drop(send_full);
        let written = writer.join().expect("writer thread panicked");
        result?;
        written.map_err(|e| Error::io("<output>", e))
    })
}

/// Adjacent tiles of one stripe, decoded by one task.
struct TileRun {
    stripe: u64,
    first_column: u64,
    /// Hilbert indices, left to right.
    tiles: Vec<u64>,
}

/// Tiles `first..last` grouped into runs of adjacent tiles of one stripe
/// ([`adjacent_runs`], as the random-access reader groups them), in file order.
fn batch_runs(image: &SeekableImage, first: u64, last: u64) -> Vec<TileRun> {
    let js: Vec<u64> = (first..last).collect();
    let all: Vec<usize> = (0..js.len()).collect();
    adjacent_runs(&image.tables, &js, &all)
        .into_iter()
        .map(|run| {
            let tiles: Vec<u64> = run.iter().map(|&i| js[i]).collect();
            let place = image.tables.place_of(tiles[0]);
            TileRun {
                stripe: place.row,
                first_column: place.column,
                tiles,
            }
        })
        .collect()
}

/// Decodes tiles `first..last` into `out` (their payloads, in order). Tiles of the batch that
/// sit side by side in a stripe are decoded together, one read per scanline for all of them.
fn decode_batch(
    image: &SeekableImage,
    first: u64,
    last: u64,
    tile_bytes: u64,
    out: &mut [u8],
) -> Result<()> {
    let mut slots: Vec<Option<&mut [u8]>> = out.chunks_mut(tile_bytes as usize).map(Some).collect();
    let runs: Vec<_> = batch_runs(image, first, last)
        .into_iter()
        .map(|run| {
            let outs: Vec<&mut [u8]> = run
                .tiles
                .iter()
                .map(|&j| slots[(j - first) as usize].take().expect("each tile once"))
                .collect();
            (run, outs)
        })
        .collect();
    runs.into_par_iter().try_for_each_init(
        || (TileScratch::new(image), Vec::new()),
        |(scratch, pixels), (run, mut outs)| {
            image.decode_run(
                run.stripe,
                run.first_column,
                &run.tiles,
                &mut outs,
                scratch,
                pixels,
            )
        },
    )
}

/// A batch inflated for a mapper: `pixels` holds the CRC-checked row-major tiles of
/// `order` (Hilbert indices, in file order), one after the other.
struct InflatedBatch {
    first: u64,
    order: Vec<u64>,
    pixels: Vec<u8>,
}

/// Inflates and CRC-checks tiles `first..last` on the pool, into `pixels` (reused).
fn inflate_batch(
    image: &SeekableImage,
    first: u64,
    last: u64,
    tile_bytes: u64,
    mut pixels: Vec<u8>,
) -> Result<InflatedBatch> {
    let tile_len = tile_bytes as usize;
    let runs = batch_runs(image, first, last);
    pixels.resize((last - first) as usize * tile_len, 0);
    let mut pieces: Vec<(&TileRun, &mut [u8])> = Vec::with_capacity(runs.len());
    let mut rest = &mut pixels[..];
    for run in &runs {
        let (mine, tail) = rest.split_at_mut(run.tiles.len() * tile_len);
        pieces.push((run, mine));
        rest = tail;
    }
    pieces.into_par_iter().try_for_each_init(
        || (TileScratch::new(image), Vec::new()),
        |(scratch, run_buf), (run, run_pixels)| {
            image.decode_run_pixels(
                run.stripe,
                run.first_column,
                &run.tiles,
                run_pixels,
                scratch,
                run_buf,
            )
        },
    )?;
    let order = runs.into_iter().flat_map(|run| run.tiles).collect();
    Ok(InflatedBatch {
        first,
        order,
        pixels,
    })
}

/// Gathers an inflated batch through `mapper` in one call (one transfer each way for a GPU)
/// into `out`, the payloads of its tiles in order.
fn gather_batch(
    image: &SeekableImage,
    batch: &InflatedBatch,
    tile_bytes: u64,
    out: &mut [u8],
    mapper: &dyn TileMapper,
) -> Result<GpuTimings> {
    let tile_len = tile_bytes as usize;
    let mut slots: Vec<Option<&mut [u8]>> = out.chunks_mut(tile_len).map(Some).collect();
    let jobs: Vec<(crate::format::hilbert::TilePlace, &[u8])> = batch
        .order
        .iter()
        .zip(batch.pixels.chunks(tile_len))
        .map(|(&j, tile)| (image.tables.place_of(j), tile))
        .collect();
    let mut outs: Vec<&mut [u8]> = batch
        .order
        .iter()
        .map(|&j| {
            slots[(j - batch.first) as usize]
                .take()
                .expect("each tile once")
        })
        .collect();
    mapper
        .gather_tiles(&image.tables, &jobs, &mut outs)
        .map_err(|e| {
            Error::Gpu(format!(
                "{}: GPU tile gather failed: {e}",
                image.path().display()
            ))
        })
}
