//! CPU against GPU for scatter, gather and code colouring, stage by stage.
//!
//! Hidden helper for a later `pixelrts bench-gpu` subcommand; `scripts/bench-gpu.sh` runs it
//! now through the test harness. Every GPU result is compared byte for byte with the CPU's, so
//! a benchmark run is also an identity test at large sizes.

use std::fmt;
use std::time::Duration;

use rayon::prelude::*;
use serde::Serialize;

use super::{CpuMapper, Gpu, GpuError, GpuMode, GpuTimings, TileMapper};
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

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub gpu: super::GpuInfo,
    pub cpu_threads: usize,
    pub rows: Vec<BenchRow>,
}

/// Runs the comparison for each size in bytes (each operation twice; the second, warm run is
/// reported). Fails with [`GpuError::Unavailable`] when there is no usable GPU, and with
/// [`GpuError::InvalidJob`] if the GPU's output ever differs from the CPU's.
pub fn compare(sizes: &[u64]) -> Result<BenchReport, GpuError> {
    let gpu = Gpu::open(GpuMode::On)?.expect("GpuMode::On gives a GPU or an error");
    let mut rows = Vec::new();
    for &size in sizes {
        compare_one(&gpu, size, &mut rows)?;
    }
    Ok(BenchReport {
        gpu: gpu.info().clone(),
        cpu_threads: rayon::current_num_threads(),
        rows,
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

fn compare_one(gpu: &Gpu, size: u64, rows: &mut Vec<BenchRow>) -> Result<(), GpuError> {
    let grid = grid_for(size);
    let tables = TileTables::new(grid, BENCH_TILE_SIDE.min(grid));
    let tile_bytes = tables.tile_pixels() as usize * 4;
    let data = pseudo_random(size as usize, size);
    let jobs: Vec<(TilePlace, &[u8])> = data
        .chunks(tile_bytes)
        .enumerate()
        .map(|(j, c)| (tables.place_of(j as u64), c))
        .collect();
    let engines: [(&dyn TileMapper, String); 2] =
        [(&CpuMapper, CpuMapper.name()), (gpu, gpu.name())];
    let mut row = |op, engine: &String, timings| {
        rows.push(BenchRow {
            size,
            op,
            engine: engine.clone(),
            timings,
        })
    };

    // Scatter.
    let mut tiles: [Vec<u8>; 2] = [
        vec![0u8; jobs.len() * tile_bytes],
        vec![0u8; jobs.len() * tile_bytes],
    ];
    for ((mapper, name), buffer) in engines.iter().zip(tiles.iter_mut()) {
        let mut out: Vec<&mut [u8]> = buffer.chunks_mut(tile_bytes).collect();
        row(
            "scatter",
            name,
            twice(|| mapper.scatter_tiles(&tables, &jobs, &mut out))?,
        );
    }
    let [tiles, gpu_tiles] = tiles;
    same("scatter", size, &tiles, &gpu_tiles)?;
    drop(gpu_tiles);

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
    let mut coloured = [
        vec![0u8; data.len().div_ceil(4) * 4],
        vec![0u8; data.len().div_ceil(4) * 4],
    ];
    for ((mapper, name), out) in engines.iter().zip(coloured.iter_mut()) {
        row("code", name, twice(|| mapper.code_colour(&data, out))?);
    }
    same("code colouring", size, &coloured[0], &coloured[1])
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
        let g = &self.gpu;
        writeln!(
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
        )?;
        writeln!(
            f,
            "times in ms; GPU device stages from CUDA events, host staging from the wall clock (they overlap)"
        )?;
        writeln!(
            f,
            "{:>8} {:>8} {:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
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
                "{:>8} {:>8} {:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7.2}",
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
            "Set gpu::AUTO_GPU_MIN_BYTES to the smallest size where the GPU's total beats the CPU's."
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
    fn compare_without_gpu_is_unavailable() {
        if Gpu::open(GpuMode::Auto).ok().flatten().is_some() {
            return; // a GPU machine: scripts/bench-gpu.sh covers it.
        }
        let err = compare(&[1 << 20]).unwrap_err();
        assert!(matches!(err, GpuError::Unavailable(_)), "{err}");
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
