//! CPU against GPU, stage by stage: the mapper operations alone (scatter, gather and code
//! colouring) and whole `encode`/`decode` jobs through files (mapper, deflate or inflate, write,
//! hash), for `pixelrts bench-gpu` (`scripts/bench-gpu.sh`).
//!
//! Every GPU result is compared byte for byte with the CPU's (the PNGs too, and decodes are
//! verified against `data_hash`), so a benchmark run is also an identity test at large sizes.
//! Without a GPU (`--cpu-only`) it measures the CPU rows alone: the fast path and the mapper
//! path that a GPU plugs into.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use super::stages::{StageClock, StageTimes};
use super::{CpuMapper, Gpu, GpuError, GpuMode, GpuTimings, TileMapper};
use crate::bench::patterns::{write_pattern_to, Pattern};
use crate::decode::{decode_file, DecodeOptions};
use crate::encode::{encode_file, EncodeOptions};
use crate::error::{Error, Result};
use crate::format::hilbert::{TilePlace, TileTables};

/// The default sizes: 64 MiB, 1 GiB, 4 GiB.
pub const DEFAULT_SIZES: [u64; 3] = [64 << 20, 1 << 30, 4 << 30];

/// Tile side used by the benchmark (the encoder's largest).
pub const BENCH_TILE_SIDE: u64 = 256;

/// One measured operation.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub size: u64,
    pub op: &'static str,
    pub engine: String,
    pub timings: GpuTimings,
}

/// One whole job: `encode` of the input file, or `decode --verify` of the CPU's PNG.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineRow {
    pub size: u64,
    pub op: &'static str,
    pub engine: String,
    /// Busy time per stage (they overlap).
    pub stages: StageTimes,
    /// Wall clock of the job.
    pub wall: Duration,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// None: `--cpu-only`.
    pub gpu: Option<super::GpuInfo>,
    pub cpu_threads: usize,
    pub rows: Vec<BenchRow>,
    pub pipelines: Vec<PipelineRow>,
}

/// The GPU to compare against: `Ok(None)` for `cpu_only`, else the GPU or
/// [`GpuError::Unavailable`] with the reason.
pub fn open_gpu(cpu_only: bool) -> std::result::Result<Option<Arc<Gpu>>, GpuError> {
    if cpu_only {
        return Ok(None);
    }
    let gpu = Gpu::open(GpuMode::On)?.expect("GpuMode::On gives a GPU or an error");
    Ok(Some(Arc::new(gpu)))
}

/// Runs the comparison for each size in bytes, with scratch files in `dir` (about three times
/// the size). Each operation runs twice and the second, warm run is reported. Fails if the
/// GPU's output ever differs from the CPU's.
pub fn compare(gpu: Option<&Arc<Gpu>>, sizes: &[u64], dir: &Path) -> Result<BenchReport> {
    let mut rows = Vec::new();
    let mut pipelines = Vec::new();
    for &size in sizes {
        let input = dir.join(format!("pixelrts-bench-gpu-{}-{size}", std::process::id()));
        // Whole jobs first, while the process is small, then the mapper operations alone with
        // their buffers of several times the size.
        let result = write_random_file(&input, size)
            .map_err(|e| Error::io(&input, e))
            .and_then(|()| compare_pipelines(gpu, size, &input, &mut pipelines))
            .and_then(|()| {
                compare_one(gpu.map(|g| &**g), size, &mut rows)
                    .map_err(|e| Error::Gpu(e.to_string()))
            });
        let _ = std::fs::remove_file(&input);
        result?;
    }
    Ok(BenchReport {
        gpu: gpu.map(|g| g.info().clone()),
        cpu_threads: rayon::current_num_threads(),
        rows,
        pipelines,
    })
}

/// The grid the encoder would pick for `n` bytes (FORMAT.md §1).
fn grid_for(n: u64) -> u64 {
    let mut g = 4u64;
    while 4 * g * g < n {
        g *= 2;
    }
    g
}

/// Deterministic pseudo-random bytes, filled in parallel.
pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    data.par_chunks_mut(1 << 20)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut x = (seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
            for word in chunk.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
            }
        });
    data
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.par_chunks(1 << 20)
        .zip(b.par_chunks(1 << 20))
        .enumerate()
        .find_map_first(|(i, (x, y))| {
            x.iter()
                .zip(y)
                .position(|(p, q)| p != q)
                .map(|j| (i << 20) + j)
        })
}

fn same(what: &str, size: u64, cpu: &[u8], gpu: &[u8]) -> Result<(), GpuError> {
    match first_difference(cpu, gpu) {
        None => Ok(()),
        Some(at) => Err(GpuError::InvalidJob(format!(
            "{what} of {size} bytes: GPU output differs from the CPU's at byte {at}"
        ))),
    }
}

fn twice(mut run: impl FnMut() -> Result<GpuTimings, GpuError>) -> Result<GpuTimings, GpuError> {
    run()?;
    run()
}

/// The mapper operations alone, on `size` bytes of random data.
fn compare_one(
    gpu: Option<&Gpu>,
    size: u64,
    rows: &mut Vec<BenchRow>,
) -> std::result::Result<(), GpuError> {
    let grid = grid_for(size);
    let tables = TileTables::new(grid, BENCH_TILE_SIDE.min(grid));
    let tile_bytes = tables.tile_pixels() as usize * 4;
    let data = pseudo_random(size as usize, size);
    let jobs: Vec<(TilePlace, &[u8])> = data
        .chunks(tile_bytes)
        .enumerate()
        .map(|(j, c)| (tables.place_of(j as u64), c))
        .collect();
    let mut engines: Vec<(&dyn TileMapper, String)> = vec![(&CpuMapper, CpuMapper.name())];
    if let Some(gpu) = gpu {
        engines.push((gpu, gpu.name()));
    }
    let mut row = |op, engine: &String, timings| {
        rows.push(BenchRow {
            size,
            op,
            engine: engine.clone(),
            timings,
        })
    };

    // Scatter.
    let mut tiles: Vec<Vec<u8>> = engines
        .iter()
        .map(|_| vec![0u8; jobs.len() * tile_bytes])
        .collect();
    for ((mapper, name), buffer) in engines.iter().zip(tiles.iter_mut()) {
        let mut out: Vec<&mut [u8]> = buffer.chunks_mut(tile_bytes).collect();
        row(
            "scatter",
            name,
            twice(|| mapper.scatter_tiles(&tables, &jobs, &mut out))?,
        );
    }
    for other in &tiles[1..] {
        same("scatter", size, &tiles[0], other)?;
    }
    tiles.truncate(1);
    let tiles = tiles.pop().expect("the CPU's tiles");

    // Gather, checked against the input.
    let tile_jobs: Vec<(TilePlace, &[u8])> = jobs
        .iter()
        .zip(tiles.chunks(tile_bytes))
        .map(|((p, _), t)| (*p, t))
        .collect();
    let mut back = vec![0u8; data.len()];
    for (mapper, name) in &engines {
        back.fill(0);
        let mut out: Vec<&mut [u8]> = back.chunks_mut(tile_bytes).collect();
        row(
            "gather",
            name,
            twice(|| mapper.gather_tiles(&tables, &tile_jobs, &mut out))?,
        );
        same("gather", size, &data, &back)?;
    }
    drop(tiles);

    // Code colouring, checked against the CPU.
    let mut coloured: Vec<Vec<u8>> = engines
        .iter()
        .map(|_| vec![0u8; data.len().div_ceil(4) * 4])
        .collect();
    for ((mapper, name), out) in engines.iter().zip(coloured.iter_mut()) {
        row("code", name, twice(|| mapper.code_colour(&data, out))?);
    }
    for other in &coloured[1..] {
        same("code colouring", size, &coloured[0], other)?;
    }
    Ok(())
}

/// `size` pseudo-random bytes into `path` (the benchmarks' own generator).
fn write_random_file(path: &Path, size: u64) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    write_pattern_to(&mut out, Pattern::Random, size, size)?;
    out.flush()
}

/// Whether two files hold the same bytes, read in blocks.
fn same_file_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Whole jobs on `input`: `encode` and `decode --verify` with the CPU fast path, with the
/// mapper path on the CPU ([`CpuMapper`]) and, given one, on the GPU. Every PNG must equal the
/// fast path's byte for byte.
fn compare_pipelines(
    gpu: Option<&Arc<Gpu>>,
    size: u64,
    input: &Path,
    rows: &mut Vec<PipelineRow>,
) -> Result<()> {
    let mut engines: Vec<(String, Option<Arc<dyn TileMapper>>)> = vec![
        ("cpu fast path".to_string(), None),
        (
            format!("{} (mapper path)", CpuMapper.name()),
            Some(Arc::new(CpuMapper)),
        ),
    ];
    if let Some(gpu) = gpu {
        engines.push((gpu.name(), Some(gpu.clone() as Arc<dyn TileMapper>)));
    }
    let scratch = |what: &str| -> PathBuf {
        let mut p = input.as_os_str().to_os_string();
        p.push(what);
        p.into()
    };
    let decoded = scratch(".out");
    let pngs: Vec<PathBuf> = (0..engines.len())
        .map(|k| scratch(&format!(".{k}.rts.png")))
        .collect();
    let result = (|| -> Result<()> {
        // Engines alternate within each round, so that a slow spell of this shared machine
        // does not land on one engine only; each row is the round with the median wall time.
        let mut encodes = vec![Vec::new(); engines.len()];
        let mut decodes = vec![Vec::new(); engines.len()];
        for _ in 0..PIPELINE_ROUNDS {
            for (k, (_, mapper)) in engines.iter().enumerate() {
                encodes[k].push(timed_job(
                    |clock| {
                        encode_file(
                            input,
                            &pngs[k],
                            &EncodeOptions {
                                layout: crate::encode::Layout::Seekable,
                                sidecar: false,
                                gpu: GpuMode::Off,
                                mapper: mapper.clone(),
                                stages: Some(clock),
                                ..Default::default()
                            },
                        )
                        .map(drop)
                    },
                    &pngs[k],
                )?);
            }
        }
        for (k, (engine, _)) in engines.iter().enumerate().skip(1) {
            let same = same_file_bytes(&pngs[0], &pngs[k]).map_err(|e| Error::io(&pngs[k], e))?;
            let _ = std::fs::remove_file(&pngs[k]);
            if !same {
                return Err(Error::Gpu(format!(
                    "{engine}: the PNG of {size} bytes differs from the CPU fast path's"
                )));
            }
        }
        for _ in 0..PIPELINE_ROUNDS {
            for (k, (_, mapper)) in engines.iter().enumerate() {
                decodes[k].push(timed_job(
                    |clock| {
                        decode_file(
                            &pngs[0],
                            &decoded,
                            &DecodeOptions {
                                verify: true,
                                gpu: GpuMode::Off,
                                mapper: mapper.clone(),
                                stages: Some(clock),
                                ..Default::default()
                            },
                        )
                        .map(drop)
                    },
                    &decoded,
                )?);
            }
        }
        for (op, runs) in [("encode", encodes), ("decode", decodes)] {
            for ((engine, _), mut runs) in engines.iter().zip(runs) {
                runs.sort_by_key(|r| r.0);
                let (wall, stages) = runs[runs.len() / 2];
                rows.push(PipelineRow {
                    size,
                    op,
                    engine: engine.clone(),
                    stages,
                    wall,
                });
            }
        }
        Ok(())
    })();
    for path in pngs.iter().chain([&decoded]) {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Rounds of whole jobs per engine (the median is reported).
const PIPELINE_ROUNDS: usize = 3;

/// Runs one job with a fresh [`StageClock`], after removing its `output` (replacing a file
/// costs freeing the old one, which would be charged to the job).
fn timed_job(
    job: impl FnOnce(Arc<StageClock>) -> Result<()>,
    output: &Path,
) -> Result<(Duration, StageTimes)> {
    let _ = std::fs::remove_file(output);
    let clock = Arc::new(StageClock::default());
    let start = Instant::now();
    job(clock.clone())?;
    Ok((start.elapsed(), clock.times()))
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} B")
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.gpu {
            Some(g) => writeln!(
                f,
                "GPU: {} ({} MiB, sm_{}{}, CUDA {}, driver {}, kernels: {}); CPU: {} threads",
                g.name,
                g.total_memory >> 20,
                g.compute_capability.0,
                g.compute_capability.1,
                g.cuda_version,
                g.driver_version.as_deref().unwrap_or("?"),
                g.kernel_image,
                self.cpu_threads
            )?,
            None => writeln!(
                f,
                "CPU only (--cpu-only); CPU: {} threads",
                self.cpu_threads
            )?,
        }
        writeln!(
            f,
            "\nMapper operations alone. Times in ms; GPU device stages from CUDA events, host staging from the wall clock (they overlap)"
        )?;
        writeln!(
            f,
            "{:>8} {:>8} {:<34} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "size",
            "op",
            "engine",
            "stage_in",
            "upload",
            "kernel",
            "download",
            "stage_out",
            "total",
            "GB/s"
        )?;
        for r in &self.rows {
            let t = &r.timings;
            writeln!(
                f,
                "{:>8} {:>8} {:<34} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7.2}",
                human(r.size),
                r.op,
                r.engine,
                ms(t.stage_in),
                ms(t.upload),
                ms(t.kernel),
                ms(t.download),
                ms(t.stage_out),
                ms(t.total),
                t.gbps()
            )?;
        }
        writeln!(
            f,
            "\nWhole jobs through files (encode; decode --verify). Busy ms per stage, which overlap: transfer = mapper staging + upload + download, kernel = mapper kernels, codec = deflate or inflate + CRC (fast path: with the fused scatter/gather), write = writer thread (decode: with SHA-256), hash = SHA-256 of the input"
        )?;
        writeln!(
            f,
            "{:>8} {:>7} {:<34} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "size", "op", "engine", "transfer", "kernel", "codec", "write", "hash", "wall", "GB/s"
        )?;
        for r in &self.pipelines {
            let m = &r.stages.mapper;
            writeln!(
                f,
                "{:>8} {:>7} {:<34} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7.2}",
                human(r.size),
                r.op,
                r.engine,
                ms(m.stage_in + m.upload + m.download + m.stage_out),
                ms(m.kernel),
                ms(r.stages.codec),
                ms(r.stages.write),
                ms(r.stages.hash),
                ms(r.wall),
                super::gbps(r.size, r.wall)
            )?;
        }
        writeln!(
            f,
            "\nSet gpu::AUTO_GPU_MIN_BYTES to the smallest size from which the GPU's wall time beats the CPU fast path's for encode and decode."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_matches_format_md() {
        assert_eq!(grid_for(1), 4);
        assert_eq!(grid_for(1000), 16);
        assert_eq!(grid_for(64 << 20), 4096);
        assert_eq!(grid_for(1 << 30), 16384);
        assert_eq!(grid_for(4 << 30), 32768);
    }

    #[test]
    fn open_gpu_without_gpu_is_unavailable() {
        if Gpu::open(GpuMode::Auto).ok().flatten().is_some() {
            return; // a GPU machine: scripts/bench-gpu.sh covers it.
        }
        let err = open_gpu(false).unwrap_err();
        assert!(matches!(err, GpuError::Unavailable(_)), "{err}");
        assert!(open_gpu(true).unwrap().is_none());
    }

    /// The CPU half of the benchmark runs anywhere: both engines' rows for both levels of the
    /// comparison, the PNGs compared, the scratch files removed.
    #[test]
    fn cpu_only_comparison_measures_every_stage_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let report = compare(None, &[3 << 20], dir.path()).unwrap();
        assert!(report.gpu.is_none());
        assert_eq!(report.rows.len(), 3, "scatter, gather, code on the CPU");
        assert_eq!(
            report.pipelines.len(),
            4,
            "encode and decode, two CPU engines"
        );
        for r in &report.pipelines {
            assert!(
                r.wall > Duration::ZERO && r.stages.codec > Duration::ZERO,
                "{r:?}"
            );
            assert!(r.stages.write > Duration::ZERO, "{r:?}");
            let mapped = r.engine.contains("mapper path");
            assert_eq!(r.stages.mapper.bytes > 0, mapped, "{r:?}");
            assert_eq!(r.stages.hash > Duration::ZERO, r.op == "encode", "{r:?}");
        }
        let text = report.to_string();
        assert!(
            text.contains("CPU only") && text.contains("Whole jobs"),
            "{text}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn first_difference_finds_it() {
        let a = vec![0u8; 3 << 20];
        let mut b = a.clone();
        assert_eq!(first_difference(&a, &b), None);
        b[(2 << 20) + 5] = 1;
        assert_eq!(first_difference(&a, &b), Some((2 << 20) + 5));
    }
}
