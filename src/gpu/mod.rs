//! Optional NVIDIA GPU offload of the per-pixel stages: Hilbert tile scatter/gather and code-mode
//! colouring.
//!
//! Nothing here needs CUDA at build time: the driver (`libcuda.so.1`) and NVRTC are `dlopen`ed at
//! run time by [`Gpu::open`], which checks that both libraries can be loaded *before* calling any
//! `cudarc` function (some of them panic when a library is missing) and also runs the
//! initialisation under [`std::panic::catch_unwind`]. The kernels are CUDA C compiled by NVRTC
//! when the GPU is opened. [`check_kernels_compile`] compiles them the same way with NVRTC alone,
//! which needs neither a GPU nor the driver (CI does it on every run).
//!
//! The codec talks to a [`TileMapper`]: [`CpuMapper`] (rayon + the per-tile tables of
//! [`crate::format::hilbert`]) or [`Gpu`]. Both give byte-for-byte the same output.
//! [`select_mapper`] applies the `--gpu auto|on|off` policy.

pub mod bench;
mod cuda;
mod kernel_check;
mod kernels;
pub(crate) mod overlap;
mod probe;
pub mod stages;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use crate::format::code_mode;
use crate::format::hilbert::{gather_tile, scatter_tile, TilePlace, TileTables};

pub use cuda::{Gpu, GpuInfo};
#[doc(hidden)]
pub use kernel_check::check_source_compiles;
pub use kernel_check::{
    check_kernels_compile, ImageStatus, KernelCompileCheck, KernelImageCheck, KERNEL_ARCHS,
    KERNEL_NAMES,
};

/// `--gpu auto|on|off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuMode {
    /// Use a GPU when one is usable and the job is big enough to win ([`AUTO_GPU_MIN_BYTES`];
    /// today that is never, see there).
    #[default]
    Auto,
    /// Use the GPU; fail with the reason when there is none.
    On,
    /// Never touch the GPU libraries.
    Off,
}

impl GpuMode {
    pub const VALUES: [&'static str; 3] = ["auto", "on", "off"];
}

impl fmt::Display for GpuMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GpuMode::Auto => "auto",
            GpuMode::On => "on",
            GpuMode::Off => "off",
        })
    }
}

impl FromStr for GpuMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(GpuMode::Auto),
            "on" => Ok(GpuMode::On),
            "off" => Ok(GpuMode::Off),
            _ => Err(format!(
                "invalid GPU mode {s:?}: expected one of auto, on, off"
            )),
        }
    }
}

/// Errors of the GPU path.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// `--gpu on` and no GPU can be used; the text says why.
    #[error("--gpu on: no usable NVIDIA GPU: {0}")]
    Unavailable(String),
    /// A CUDA driver call failed after the GPU was opened.
    #[error("CUDA driver error in {context}: {message}")]
    Driver {
        context: &'static str,
        message: String,
    },
    /// NVRTC could not compile the kernels.
    #[error("NVRTC could not compile the GPU kernels: {0}")]
    Compile(String),
    /// The CUDA libraries panicked (a missing symbol in an old driver, for example).
    #[error("the CUDA library panicked in {context}: {message}")]
    Panicked {
        context: &'static str,
        message: String,
    },
    /// The caller passed buffers of the wrong size.
    #[error("invalid GPU job: {0}")]
    InvalidJob(String),
}

/// Where the time of one batch went. For the GPU the device stages come from CUDA events and
/// the host stages (copies into and out of the pinned buffers) from the wall clock; host and
/// device stages overlap, so they do not add up to `total`. For the CPU everything is `kernel`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct GpuTimings {
    /// Payload bytes processed.
    pub bytes: u64,
    /// Host: caller's buffers → pinned staging buffers.
    pub stage_in: Duration,
    /// Device: host → device copies.
    pub upload: Duration,
    /// Device: the kernels (or the whole CPU work for [`CpuMapper`]).
    pub kernel: Duration,
    /// Device: device → host copies.
    pub download: Duration,
    /// Host: pinned staging buffers → caller's buffers.
    pub stage_out: Duration,
    /// Wall clock of the whole call.
    pub total: Duration,
}

impl GpuTimings {
    /// Throughput in GB/s (10⁹ bytes per second) over `total`.
    pub fn gbps(&self) -> f64 {
        gbps(self.bytes, self.total)
    }

    /// Adds another batch's figures to these.
    pub fn accumulate(&mut self, other: &GpuTimings) {
        self.bytes += other.bytes;
        self.stage_in += other.stage_in;
        self.upload += other.upload;
        self.kernel += other.kernel;
        self.download += other.download;
        self.stage_out += other.stage_out;
        self.total += other.total;
    }
}

pub(crate) fn gbps(bytes: u64, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        bytes as f64 / time.as_secs_f64() / 1e9
    }
}

/// The per-pixel stages of the codec, on the CPU or on a GPU.
///
/// A *tile job* is `(place, bytes)`: for [`scatter_tiles`](TileMapper::scatter_tiles) `bytes` is
/// the tile's payload (at most `4·T²` bytes; a shorter one is zero-padded) and `out[k]` receives
/// the `4·T²` row-major tile bytes; for [`gather_tiles`](TileMapper::gather_tiles) `bytes` is the
/// `4·T²`-byte row-major tile and `out[k]` (at most `4·T²` bytes) receives its payload.
/// The results are byte-for-byte those of [`scatter_tile`] / [`gather_tile`].
pub trait TileMapper: Send + Sync {
    /// A short human-readable name ("cpu (2 threads)", "NVIDIA H100 …").
    fn name(&self) -> String;

    /// Payload (Hilbert order) → row-major tiles.
    fn scatter_tiles(
        &self,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError>;

    /// Row-major tiles → payload (Hilbert order).
    fn gather_tiles(
        &self,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError>;

    /// Code-mode colouring ([`code_mode::code_colour`]): `out.len()` must be
    /// `input.len().div_ceil(4) * 4`.
    fn code_colour(&self, input: &[u8], out: &mut [u8]) -> Result<GpuTimings, GpuError>;
}

/// Which direction a tile batch goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Scatter,
    Gather,
}

/// Checks the sizes of a tile batch; shared by every mapper so they reject the same input.
pub(crate) fn check_tile_jobs(
    direction: Direction,
    tables: &TileTables,
    jobs: &[(TilePlace, &[u8])],
    out: &[&mut [u8]],
) -> Result<(), GpuError> {
    if jobs.len() != out.len() {
        return Err(GpuError::InvalidJob(format!(
            "{} jobs but {} output buffers",
            jobs.len(),
            out.len()
        )));
    }
    let tile_bytes = tables.tile_pixels() as usize * 4;
    let tiles = tables.tiles_per_side() * tables.tiles_per_side();
    for (k, ((place, input), output)) in jobs.iter().zip(out).enumerate() {
        if place.hilbert_index >= tiles {
            return Err(GpuError::InvalidJob(format!(
                "job {k}: tile {} is outside the grid ({tiles} tiles)",
                place.hilbert_index
            )));
        }
        let (ok, what) = match direction {
            Direction::Scatter => (
                input.len() <= tile_bytes && output.len() == tile_bytes,
                "payload <= tile and output == tile",
            ),
            Direction::Gather => (
                input.len() == tile_bytes && output.len() <= tile_bytes,
                "tile == tile and payload <= tile",
            ),
        };
        if !ok {
            return Err(GpuError::InvalidJob(format!(
                "job {k}: {} bytes in, {} bytes out, tile of {tile_bytes} bytes (need {what})",
                input.len(),
                output.len()
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_code_colour(input: &[u8], out: &[u8]) -> Result<(), GpuError> {
    let want = input.len().div_ceil(4) * 4;
    if out.len() != want {
        return Err(GpuError::InvalidJob(format!(
            "code colouring of {} bytes needs an output of {want} bytes, got {}",
            input.len(),
            out.len()
        )));
    }
    Ok(())
}

/// The CPU implementation: [`scatter_tile`] / [`gather_tile`] on the rayon pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuMapper;

impl TileMapper for CpuMapper {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn scatter_tiles(
        &self,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        check_tile_jobs(Direction::Scatter, tables, jobs, out)?;
        let start = Instant::now();
        jobs.par_iter()
            .zip(out.par_iter_mut())
            .for_each(|((place, payload), tile)| {
                scatter_tile(tables.positions(place), payload, tile)
            });
        Ok(cpu_timings(
            jobs.iter().map(|j| j.1.len() as u64).sum(),
            start,
        ))
    }

    fn gather_tiles(
        &self,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        check_tile_jobs(Direction::Gather, tables, jobs, out)?;
        let start = Instant::now();
        jobs.par_iter()
            .zip(out.par_iter_mut())
            .for_each(|((place, tile), payload)| {
                gather_tile(tables.positions(place), tile, payload)
            });
        Ok(cpu_timings(out.iter().map(|o| o.len() as u64).sum(), start))
    }

    fn code_colour(&self, input: &[u8], out: &mut [u8]) -> Result<GpuTimings, GpuError> {
        check_code_colour(input, out)?;
        let start = Instant::now();
        // Split on 4-byte boundaries so that every piece but the last holds whole groups.
        const PIECE: usize = 1 << 20;
        input
            .par_chunks(PIECE)
            .zip(out.par_chunks_mut(PIECE))
            .for_each(|(i, o)| code_mode::code_colour(i, o));
        Ok(cpu_timings(input.len() as u64, start))
    }
}

fn cpu_timings(bytes: u64, start: Instant) -> GpuTimings {
    let total = start.elapsed();
    GpuTimings {
        bytes,
        kernel: total,
        total,
        ..Default::default()
    }
}

/// Below this many bytes `--gpu auto` stays on the CPU; `u64::MAX` means `auto` never uses the
/// GPU.
///
/// It is `u64::MAX` because nothing has measured the GPU winning yet: no GPU has been available
/// to the sessions that built this, and the CPU does 2.7–5 GB/s per thread (FORMAT.md §6) while
/// the GPU path pays two PCIe copies plus the copies into pinned memory, so it may never win for
/// scatter/gather alone. `--gpu on` still uses the GPU. To enable `auto`, run
/// `scripts/bench-gpu.sh` on the target machine: it prints the break-even size (the smallest size
/// at which the GPU's total time beats the CPU's for scatter *and* gather); put that here.
pub const AUTO_GPU_MIN_BYTES: u64 = u64::MAX;

/// Whether `--gpu auto` should try the GPU for a job of `job_bytes` given the `threshold`
/// ([`AUTO_GPU_MIN_BYTES`], a parameter so that the rule reads the same whatever it is set to).
fn auto_wants_gpu(job_bytes: u64, threshold: u64) -> bool {
    // u64::MAX means never: not even a job of u64::MAX bytes goes to the GPU.
    threshold != u64::MAX && job_bytes >= threshold
}

/// The mapper for a job of `job_bytes` under `mode`:
/// `off` → CPU; `on` → the GPU or [`GpuError::Unavailable`]; `auto` → the GPU when one is usable
/// and `job_bytes >= AUTO_GPU_MIN_BYTES`, else the CPU (the reason is logged at debug level).
pub fn select_mapper(mode: GpuMode, job_bytes: u64) -> Result<Box<dyn TileMapper>, GpuError> {
    Ok(match pipeline_mapper(mode, None, job_bytes)? {
        Some(gpu) => Box::new(ArcMapper(gpu)),
        None => Box::new(CpuMapper),
    })
}

/// What the encode/decode pipelines use for one job: `Some(mapper)` sends whole tiles through
/// the [`TileMapper`] in batches; `None` keeps the CPU fast path, which fuses the scatter/gather
/// into the per-row compression and so never materialises whole tiles (cheaper than
/// [`CpuMapper`]). `forced` (tests, benchmarks) wins over `mode`.
pub(crate) fn pipeline_mapper(
    mode: GpuMode,
    forced: Option<&Arc<dyn TileMapper>>,
    job_bytes: u64,
) -> Result<Option<Arc<dyn TileMapper>>, GpuError> {
    if let Some(m) = forced {
        return Ok(Some(Arc::clone(m)));
    }
    if mode == GpuMode::Auto && !auto_wants_gpu(job_bytes, AUTO_GPU_MIN_BYTES) {
        tracing::debug!(
            job_bytes,
            threshold = AUTO_GPU_MIN_BYTES,
            "--gpu auto: the GPU is not measured to win for this size, using the CPU"
        );
        return Ok(None);
    }
    Ok(Gpu::open(mode)?.map(|gpu| Arc::new(gpu) as Arc<dyn TileMapper>))
}

/// An `Arc`ed mapper behind the `Box` that [`select_mapper`] returns.
struct ArcMapper(Arc<dyn TileMapper>);

impl TileMapper for ArcMapper {
    fn name(&self) -> String {
        self.0.name()
    }

    fn scatter_tiles(
        &self,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        self.0.scatter_tiles(tables, jobs, out)
    }

    fn gather_tiles(
        &self,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        self.0.gather_tiles(tables, jobs, out)
    }

    fn code_colour(&self, input: &[u8], out: &mut [u8]) -> Result<GpuTimings, GpuError> {
        self.0.code_colour(input, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::hilbert::TileTables;

    #[test]
    fn mode_parses_and_prints() {
        for (s, m) in [
            ("auto", GpuMode::Auto),
            ("on", GpuMode::On),
            ("off", GpuMode::Off),
        ] {
            assert_eq!(s.parse::<GpuMode>().unwrap(), m);
            assert_eq!(m.to_string(), s);
        }
        assert_eq!("ON".parse::<GpuMode>().unwrap(), GpuMode::On);
        let err = "yes".parse::<GpuMode>().unwrap_err();
        assert!(err.contains("auto, on, off"), "{err}");
        assert_eq!(GpuMode::default(), GpuMode::Auto);
    }

    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// CpuMapper over a whole grid equals `scatter_tile`/`gather_tile` tile by tile, including
    /// a short last tile.
    #[test]
    fn cpu_mapper_is_scatter_tile() {
        for (grid, side, len) in [
            (64u64, 16u64, 64 * 64 * 4 - 1001),
            (16, 4, 5),
            (256, 256, 9999),
        ] {
            let tables = TileTables::new(grid, side);
            let tile_bytes = (side * side * 4) as usize;
            let data = sample(len, grid + side);
            let jobs: Vec<(TilePlace, &[u8])> = data
                .chunks(tile_bytes)
                .enumerate()
                .map(|(j, c)| (tables.place_of(j as u64), c))
                .collect();
            let mut tiles = vec![0xEEu8; jobs.len() * tile_bytes];
            let mut out: Vec<&mut [u8]> = tiles.chunks_mut(tile_bytes).collect();
            let t = CpuMapper.scatter_tiles(&tables, &jobs, &mut out).unwrap();
            assert_eq!(t.bytes, len as u64);
            for ((place, payload), got) in jobs.iter().zip(tiles.chunks(tile_bytes)) {
                let mut want = vec![0x11u8; tile_bytes];
                scatter_tile(tables.positions(place), payload, &mut want);
                assert_eq!(got, &want[..]);
            }

            let tile_jobs: Vec<(TilePlace, &[u8])> = jobs
                .iter()
                .zip(tiles.chunks(tile_bytes))
                .map(|((p, _), t)| (*p, t))
                .collect();
            let mut back = vec![0u8; len];
            let mut out: Vec<&mut [u8]> = back.chunks_mut(tile_bytes).collect();
            CpuMapper
                .gather_tiles(&tables, &tile_jobs, &mut out)
                .unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn cpu_mapper_code_colour_matches_code_mode() {
        let data = sample((3 << 20) + 7, 5);
        let mut want = vec![0u8; data.len().div_ceil(4) * 4];
        code_mode::code_colour(&data, &mut want);
        let mut got = vec![0u8; want.len()];
        CpuMapper.code_colour(&data, &mut got).unwrap();
        assert_eq!(got, want);
        assert!(CpuMapper.code_colour(&data, &mut got[4..]).is_err());
    }

    #[test]
    fn bad_sizes_are_rejected() {
        let tables = TileTables::new(16, 4);
        let big = vec![0u8; 65];
        let mut tile = vec![0u8; 64];
        let mut out: Vec<&mut [u8]> = vec![&mut tile];
        let err = CpuMapper
            .scatter_tiles(&tables, &[(tables.place_of(0), &big)], &mut out)
            .unwrap_err();
        assert!(matches!(err, GpuError::InvalidJob(_)), "{err}");
        let err = CpuMapper.scatter_tiles(&tables, &[], &mut out).unwrap_err();
        assert!(err.to_string().contains("0 jobs but 1 output"), "{err}");
    }

    /// `--gpu off` does not even look for the libraries; `auto` looks (and finds none here).
    #[test]
    fn off_touches_no_library() {
        let before = probe::PROBES.with(|p| p.get());
        assert!(Gpu::open(GpuMode::Off).unwrap().is_none());
        assert!(select_mapper(GpuMode::Off, u64::MAX).is_ok());
        assert_eq!(probe::PROBES.with(|p| p.get()), before);
        let gpu = Gpu::open(GpuMode::Auto).unwrap();
        assert!(probe::PROBES.with(|p| p.get()) > before);
        if gpu.is_none() {
            let err = Gpu::open(GpuMode::On).unwrap_err();
            assert!(matches!(err, GpuError::Unavailable(_)));
            let text = err.to_string();
            assert!(
                text.starts_with("--gpu on: no usable NVIDIA GPU: "),
                "{text}"
            );
            assert!(
                text.len() > "--gpu on: no usable NVIDIA GPU: ".len() + 10,
                "{text}"
            );
        }
    }

    #[test]
    fn select_mapper_policy() {
        assert!(select_mapper(GpuMode::Off, u64::MAX)
            .unwrap()
            .name()
            .starts_with("cpu"));
        assert!(select_mapper(GpuMode::Auto, 1)
            .unwrap()
            .name()
            .starts_with("cpu"));
        assert!(auto_wants_gpu(100, 64) && auto_wants_gpu(64, 64));
        assert!(!auto_wants_gpu(63, 64) && !auto_wants_gpu(u64::MAX, u64::MAX));
        // Unmeasured, `auto` never picks the GPU (and does not even look for one).
        let before = probe::PROBES.with(|p| p.get());
        assert!(select_mapper(GpuMode::Auto, u64::MAX)
            .unwrap()
            .name()
            .starts_with("cpu"));
        assert!(pipeline_mapper(GpuMode::Auto, None, u64::MAX)
            .unwrap()
            .is_none());
        assert_eq!(probe::PROBES.with(|p| p.get()), before);
        let forced: Arc<dyn TileMapper> = Arc::new(CpuMapper);
        assert!(pipeline_mapper(GpuMode::Off, Some(&forced), 0)
            .unwrap()
            .is_some());
    }
}
