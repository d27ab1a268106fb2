//! The CUDA implementation of [`TileMapper`]: context, streams, NVRTC-compiled kernels and a
//! two-lane pipeline over pinned staging buffers.
//!
//! Each call cuts its work into chunks of at most [`CHUNK_BYTES`]. Chunk `c` runs on lane
//! `c % 2`; a lane has its own stream, pinned input/output buffers and device buffers, so
//! while the GPU uploads, transforms and downloads one chunk the host copies the next chunk in
//! (and the previous one out), and one lane's upload can overlap the other's download.
//! Every call waits for all its work before returning; nothing is left in flight.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaFunction, CudaStream, LaunchConfig};
use cudarc::driver::{DriverError, PushKernelArg};
use cudarc::nvrtc;
use rayon::prelude::*;
use serde::Serialize;

use super::{
    check_code_colour, check_tile_jobs, kernels, probe, Direction, GpuError, GpuMode, GpuTimings,
    TileMapper,
};
use crate::format::hilbert::{TilePlace, TileTables};

/// Bytes per chunk (per lane buffer). Two lanes hold 4 pinned host buffers and 4 device
/// buffers of this size (plus room for one tile when a tile is bigger).
pub const CHUNK_BYTES: usize = 64 << 20;

/// What the opened GPU is.
#[derive(Clone, Debug, Serialize)]
pub struct GpuInfo {
    /// Device name ("NVIDIA H100 80GB HBM3").
    pub name: String,
    /// Device memory in bytes.
    pub total_memory: u64,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Highest CUDA version the driver supports ("12.8"), from `cuDriverGetVersion`.
    pub cuda_version: String,
    /// NVIDIA kernel driver version ("550.54.15"), from `/proc/driver/nvidia/version`.
    pub driver_version: Option<String>,
    /// NVRTC version ("12.8").
    pub nvrtc_version: String,
    /// The library names that loaded.
    pub driver_library: String,
    pub nvrtc_library: String,
    /// How the kernels were built: "cubin sm_90" or "ptx (driver JIT)".
    pub kernel_image: String,
}

/// An opened NVIDIA GPU with its compiled kernels. See the module documentation.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    scatter: CudaFunction,
    gather: CudaFunction,
    colour: CudaFunction,
    info: GpuInfo,
    state: Mutex<State>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn driver(context: &'static str) -> impl FnOnce(DriverError) -> GpuError {
    move |e| GpuError::Driver {
        context,
        message: e.to_string(),
    }
}

pub(super) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs `f` and turns a panic inside the CUDA libraries into an error.
fn guarded<T>(
    context: &'static str,
    f: impl FnOnce() -> Result<T, GpuError>,
) -> Result<T, GpuError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(GpuError::Panicked {
            context,
            message: panic_message(payload),
        })
    })
}

impl Gpu {
    /// Opens GPU 0 according to `mode`:
    /// - `Off`: `Ok(None)` without loading any library;
    /// - `Auto`: `Ok(None)` when no GPU is usable (the reason is logged with `tracing::debug!`);
    /// - `On`: [`GpuError::Unavailable`] with the reason when no GPU is usable.
    ///
    /// Both libraries are first checked with `dlopen`; initialisation runs under
    /// `catch_unwind`. Opening compiles the kernels with NVRTC (a fraction of a second).
    pub fn open(mode: GpuMode) -> Result<Option<Gpu>, GpuError> {
        if mode == GpuMode::Off {
            return Ok(None);
        }
        match Self::try_open() {
            Ok(gpu) => {
                tracing::debug!(gpu = %gpu.info.name, kernels = %gpu.info.kernel_image, "GPU opened");
                Ok(Some(gpu))
            }
            Err(reason) if mode == GpuMode::Auto => {
                tracing::debug!(%reason, "--gpu auto: no usable NVIDIA GPU, using the CPU");
                Ok(None)
            }
            Err(reason) => Err(GpuError::Unavailable(reason)),
        }
    }

    /// Why no GPU can be used, or the opened GPU.
    fn try_open() -> Result<Gpu, String> {
        let driver_library = probe::find_library("cuda")?;
        let nvrtc_library = probe::find_library("nvrtc")?;
        match catch_unwind(|| Self::init(driver_library, nvrtc_library)) {
            Ok(result) => result,
            Err(payload) => Err(format!(
                "the CUDA library panicked during initialisation: {}",
                panic_message(payload)
            )),
        }
    }

    fn init(driver_library: String, nvrtc_library: String) -> Result<Gpu, String> {
        result::init().map_err(|e| format!("cuInit failed: {e}"))?;
        let count =
            CudaContext::device_count().map_err(|e| format!("cuDeviceGetCount failed: {e}"))?;
        if count < 1 {
            return Err("the CUDA driver loaded but reports no device".to_string());
        }
        let ctx =
            CudaContext::new(0).map_err(|e| format!("cannot create a context on GPU 0: {e}"))?;
        let name = ctx
            .name()
            .map_err(|e| format!("cuDeviceGetName failed: {e}"))?;
        let total_memory =
            ctx.total_mem()
                .map_err(|e| format!("cuDeviceTotalMem failed: {e}"))? as u64;
        let cc = ctx
            .compute_capability()
            .map_err(|e| format!("cannot read the compute capability: {e}"))?;
        let mut version = 0i32;
        // SAFETY: plain out-parameter call into the loaded driver.
        unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(|e| format!("cuDriverGetVersion failed: {e}"))?;
        let cuda_version = format!("{}.{}", version / 1000, version % 1000 / 10);
        let (major, minor) = nvrtc_version()?;

        let (image, kernel_image) = compile(&kernels::source(), cc)?;
        let module = ctx.load_module(image).map_err(|e| {
            format!("the driver refused the compiled kernels ({kernel_image}): {e}")
        })?;
        let function = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| format!("kernel {name} missing from the module: {e}"))
        };
        let scatter = function(kernels::SCATTER)?;
        let gather = function(kernels::GATHER)?;
        let colour = function(kernels::COLOUR)?;
        let info = GpuInfo {
            name,
            total_memory,
            compute_capability: cc,
            cuda_version,
            driver_version: probe::kernel_driver_version(),
            nvrtc_version: format!("{major}.{minor}"),
            driver_library,
            nvrtc_library,
            kernel_image,
        };
        Ok(Gpu {
            ctx,
            scatter,
            gather,
            colour,
            info,
            state: Mutex::new(State {
                lanes: Vec::new(),
                lane_bytes: 0,
                lane_slots: 0,
                tables: TableCache::default(),
            }),
        })
    }

    /// What this GPU is.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| {
            // A panic inside a call may have left copies in flight: let them finish before
            // the buffers are used again. The buffers themselves are still valid.
            let _ = self.ctx.synchronize();
            self.state.clear_poison();
            poisoned.into_inner()
        })
    }

    fn tiles(
        &self,
        direction: Direction,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        check_tile_jobs(direction, tables, jobs, out)?;
        let start = Instant::now();
        let tile_bytes = tables.tile_pixels() as usize * 4;
        let log2_tile_pixels = tables.tile_pixels().trailing_zeros();
        let bytes = match direction {
            Direction::Scatter => jobs.iter().map(|j| j.1.len() as u64).sum(),
            Direction::Gather => out.iter().map(|o| o.len() as u64).sum(),
        };
        if jobs.is_empty() {
            return Ok(GpuTimings {
                bytes,
                total: start.elapsed(),
                ..Default::default()
            });
        }
        let function = match direction {
            Direction::Scatter => &self.scatter,
            Direction::Gather => &self.gather,
        };
        let mut state = self.lock();
        let state = &mut *state;
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;

        // The distinct tables of this call (pointers are stable while `tables` is borrowed).
        let mut slot_of: HashMap<usize, u32> = HashMap::new();
        for (place, _) in jobs {
            let positions = tables.positions(place);
            if let std::collections::hash_map::Entry::Vacant(e) =
                slot_of.entry(positions.as_ptr() as usize)
            {
                e.insert(state.tables.slot(&self.ctx, positions)?);
            }
        }
        let table_ptr = state.tables.device_ptr();
        let per_chunk = (CHUNK_BYTES / tile_bytes).max(1).min(jobs.len());
        state.ensure_lanes(&self.ctx, per_chunk * tile_bytes, per_chunk)?;
        let chunks: Vec<Range<usize>> = (0..jobs.len())
            .step_by(per_chunk)
            .map(|a| a..(a + per_chunk).min(jobs.len()))
            .collect();

        let mut stage = |range: Range<usize>, pin_in: &mut [u8], pin_slots: &mut [u32]| {
            let jobs = &jobs[range];
            pin_in[..jobs.len() * tile_bytes]
                .par_chunks_mut(tile_bytes)
                .zip(jobs.par_iter())
                .for_each(|(dst, (_, src))| {
                    dst[..src.len()].copy_from_slice(src);
                    dst[src.len()..].fill(0);
                });
            for (slot, (place, _)) in pin_slots.iter_mut().zip(jobs) {
                *slot = slot_of[&(tables.positions(place).as_ptr() as usize)];
            }
            Staged {
                upload_bytes: jobs.len() * tile_bytes,
                slots: jobs.len(),
                download_bytes: jobs.len() * tile_bytes,
            }
        };
        let launch = |stream: &CudaStream, lane: &Lane, staged: &Staged| {
            let total_pixels = (staged.upload_bytes / 4) as u64;
            let (d_in, d_out, d_slots) = (lane.d_in.ptr, lane.d_out.ptr, lane.d_slots.ptr);
            let mut builder = stream.launch_builder(function);
            builder
                .arg(&d_in)
                .arg(&d_out)
                .arg(&table_ptr)
                .arg(&d_slots)
                .arg(&log2_tile_pixels)
                .arg(&total_pixels);
            // SAFETY: the kernel reads `total_pixels` words of d_in, slots of d_slots and table
            // entries below 8·tile_pixels; it writes `total_pixels` words of d_out: all inside
            // the buffers (ensure_lanes sized them for this call), which outlive the launch.
            unsafe { builder.launch(launch_config(total_pixels)) }
                .map(|_| ())
                .map_err(driver("cuLaunchKernel"))
        };
        let mut unstage = |range: Range<usize>, pin_out: &[u8]| {
            out[range]
                .par_iter_mut()
                .zip(pin_out.par_chunks(tile_bytes))
                .for_each(|(dst, src)| {
                    let n = dst.len();
                    dst.copy_from_slice(&src[..n]);
                });
        };
        let mut timings = state.pipeline(&self.ctx, chunks, &mut stage, &launch, &mut unstage)?;
        timings.bytes = bytes;
        timings.total = start.elapsed();
        Ok(timings)
    }

    fn colour_all(&self, input: &[u8], out: &mut [u8]) -> Result<GpuTimings, GpuError> {
        check_code_colour(input, out)?;
        let start = Instant::now();
        if input.is_empty() {
            return Ok(GpuTimings::default());
        }
        let mut state = self.lock();
        let state = &mut *state;
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        state.ensure_lanes(&self.ctx, CHUNK_BYTES, 1)?;
        let chunks: Vec<Range<usize>> = (0..input.len())
            .step_by(CHUNK_BYTES)
            .map(|a| a..(a + CHUNK_BYTES).min(input.len()))
            .collect();
        let mut stage = |range: Range<usize>, pin_in: &mut [u8], _: &mut [u32]| {
            let src = &input[range];
            let padded = src.len().div_ceil(4) * 4;
            const PIECE: usize = 1 << 20;
            pin_in[..src.len()]
                .par_chunks_mut(PIECE)
                .zip(src.par_chunks(PIECE))
                .for_each(|(d, s)| d.copy_from_slice(s));
            pin_in[src.len()..padded].fill(0);
            Staged {
                upload_bytes: padded,
                slots: 0,
                download_bytes: padded,
            }
        };
        let launch = |stream: &CudaStream, lane: &Lane, staged: &Staged| {
            let groups = (staged.upload_bytes / 4) as u64;
            let (d_in, d_out) = (lane.d_in.ptr, lane.d_out.ptr);
            let mut builder = stream.launch_builder(&self.colour);
            builder.arg(&d_in).arg(&d_out).arg(&groups);
            // SAFETY: reads and writes `groups` words of d_in / d_out, both big enough.
            unsafe { builder.launch(launch_config(groups)) }
                .map(|_| ())
                .map_err(driver("cuLaunchKernel"))
        };
        let mut unstage = |range: Range<usize>, pin_out: &[u8]| {
            let a = range.start;
            let b = (a + range.len().div_ceil(4) * 4).min(out.len());
            out[a..b].copy_from_slice(&pin_out[..b - a]);
        };
        let mut timings = state.pipeline(&self.ctx, chunks, &mut stage, &launch, &mut unstage)?;
        timings.bytes = input.len() as u64;
        timings.total = start.elapsed();
        Ok(timings)
    }
}

impl TileMapper for Gpu {
    fn name(&self) -> String {
        format!("gpu ({})", self.info.name)
    }

    fn scatter_tiles(
        &self,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        guarded("scatter_tiles", || {
            self.tiles(Direction::Scatter, tables, jobs, out)
        })
    }

    fn gather_tiles(
        &self,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        guarded("gather_tiles", || {
            self.tiles(Direction::Gather, tables, jobs, out)
        })
    }

    fn code_colour(&self, input: &[u8], out: &mut [u8]) -> Result<GpuTimings, GpuError> {
        guarded("code_colour", || self.colour_all(input, out))
    }
}

fn launch_config(items: u64) -> LaunchConfig {
    const THREADS: u64 = 256;
    // Grid-stride loops in the kernels: a bounded grid covers any size.
    let blocks = items.div_ceil(THREADS).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// NVRTC's version (major, minor), from `nvrtcVersion`. NVRTC must be loadable
/// ([`probe::find_library`]); call under `catch_unwind`.
pub(super) fn nvrtc_version() -> Result<(i32, i32), String> {
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: plain out-parameter call into the loaded NVRTC.
    unsafe { nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| format!("nvrtcVersion failed: {e:?}"))?;
    Ok((major, minor))
}

/// Compiles the kernels: a CUBIN for the device's own architecture when this NVRTC knows it
/// (no driver JIT, and works when NVRTC is newer than the driver), else PTX for the driver to JIT.
fn compile(src: &str, (major, minor): (i32, i32)) -> Result<(nvrtc::Ptx, String), String> {
    let arch = format!("sm_{major}{minor}");
    match compile_cubin(src, &arch) {
        Ok(cubin) => Ok((
            nvrtc::Ptx::from_binary(cubin.image),
            format!("cubin {arch}"),
        )),
        Err(cubin_error) => {
            tracing::debug!(%cubin_error, "NVRTC cannot build a CUBIN, trying PTX");
            let ptx = compile_ptx(src).map_err(|e| {
                format!(
                    "NVRTC could not compile the kernels (cubin {arch}: {cubin_error}; ptx: {e})"
                )
            })?;
            Ok((ptx, "ptx (driver JIT)".to_string()))
        }
    }
}

/// `src` compiled to PTX with NVRTC's default options (the fallback of [`compile`]); on
/// failure the error text carries NVRTC's log.
pub(super) fn compile_ptx(src: &str) -> Result<nvrtc::Ptx, String> {
    nvrtc::compile_ptx(src).map_err(|e| match e {
        nvrtc::CompileError::CompileError { nvrtc, log, .. } => {
            format!("{nvrtc:?}: {}", log.to_string_lossy().trim_end())
        }
        other => format!("{other:?}"),
    })
}

/// A CUBIN and NVRTC's log of the compilation (warnings; usually empty).
pub(super) struct Cubin {
    pub(super) image: Vec<u8>,
    pub(super) log: String,
}

/// NVRTC's log of `prog` (empty when there is none or it cannot be read).
///
/// # Safety
/// `prog` must be a live program that has been compiled.
unsafe fn program_log(prog: nvrtc::sys::nvrtcProgram) -> String {
    nvrtc::result::get_program_log(prog)
        .map(|raw| {
            let bytes: Vec<u8> = raw
                .iter()
                .map(|&c| c as u8)
                .take_while(|&c| c != 0)
                .collect();
            String::from_utf8_lossy(&bytes).trim_end().to_string()
        })
        .unwrap_or_default()
}

/// `src` compiled to a CUBIN for `arch` ("sm_90"); on failure the error text carries NVRTC's log.
pub(super) fn compile_cubin(src: &str, arch: &str) -> Result<Cubin, String> {
    let c_src = CString::new(src).map_err(|e| e.to_string())?;
    let prog = nvrtc::result::create_program(&c_src, None).map_err(|e| format!("{e:?}"))?;
    struct Program(nvrtc::sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: created above, destroyed once.
            let _ = unsafe { nvrtc::result::destroy_program(self.0) };
        }
    }
    let prog = Program(prog);
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++14".to_string(),
    ];
    // SAFETY: `prog` is a live program; the options are plain strings.
    unsafe {
        if let Err(e) = nvrtc::result::compile_program(prog.0, &options) {
            return Err(format!("{e:?}: {}", program_log(prog.0)));
        }
        let log = program_log(prog.0);
        let mut size = 0usize;
        nvrtc::sys::nvrtcGetCUBINSize(prog.0, &mut size)
            .result()
            .map_err(|e| format!("{e:?}"))?;
        if size == 0 {
            return Err("NVRTC produced no CUBIN".to_string());
        }
        let mut image = vec![0u8; size];
        nvrtc::sys::nvrtcGetCUBIN(prog.0, image.as_mut_ptr().cast())
            .result()
            .map_err(|e| format!("{e:?}"))?;
        Ok(Cubin { image, log })
    }
}

/// Page-locked host memory.
struct PinnedBuf {
    ptr: *mut u8,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: the memory belongs to the process; only `State` (behind a Mutex) touches it.
unsafe impl Send for PinnedBuf {}
// SAFETY: a device address; only `State` (behind a Mutex) uses it.
unsafe impl Send for DeviceBuf {}

impl PinnedBuf {
    fn new(ctx: &Arc<CudaContext>, bytes: usize, flags: u32) -> Result<Self, GpuError> {
        // SAFETY: the context is current (bind_to_thread by the caller); freed in Drop.
        let ptr = unsafe { result::malloc_host(bytes.max(1), flags) }
            .map_err(driver("cuMemHostAlloc"))?;
        Ok(PinnedBuf {
            ptr: ptr.cast(),
            bytes,
            ctx: ctx.clone(),
        })
    }

    /// # Safety
    /// No copy into or out of the buffer may be in flight.
    unsafe fn slice(&mut self, len: usize) -> &mut [u8] {
        std::slice::from_raw_parts_mut(self.ptr, len.min(self.bytes))
    }

    /// # Safety
    /// No copy into or out of the buffer may be in flight.
    unsafe fn words(&mut self, len: usize) -> &mut [u32] {
        std::slice::from_raw_parts_mut(self.ptr.cast(), len.min(self.bytes / 4))
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by cuMemHostAlloc; all work was synchronised before drop.
        let _ = unsafe { result::free_host(self.ptr.cast::<c_void>()) };
    }
}

/// Device memory.
struct DeviceBuf {
    ptr: sys::CUdeviceptr,
    ctx: Arc<CudaContext>,
}

impl DeviceBuf {
    fn new(ctx: &Arc<CudaContext>, bytes: usize) -> Result<Self, GpuError> {
        // SAFETY: the context is current; freed in Drop.
        let ptr = unsafe { result::malloc_sync(bytes.max(4)) }.map_err(driver("cuMemAlloc"))?;
        Ok(DeviceBuf {
            ptr,
            ctx: ctx.clone(),
        })
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by cuMemAlloc; all work was synchronised before drop.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// One pipeline lane: a stream, its staging buffers, device buffers and timing events.
struct Lane {
    stream: Arc<CudaStream>,
    pin_in: PinnedBuf,
    pin_out: PinnedBuf,
    pin_slots: PinnedBuf,
    d_in: DeviceBuf,
    d_out: DeviceBuf,
    d_slots: DeviceBuf,
    /// Recorded before the upload, after it, after the kernel, after the download.
    events: [CudaEvent; 4],
}

/// Fills a lane's pinned input (and slot) buffers with a chunk; says what to copy.
type StageFn<'a> = dyn FnMut(Range<usize>, &mut [u8], &mut [u32]) -> Staged + 'a;
/// Enqueues the chunk's kernel on the lane's stream.
type LaunchFn<'a> = dyn Fn(&CudaStream, &Lane, &Staged) -> Result<(), GpuError> + 'a;

/// Slot entries per lane at least (tiles of 16 KiB or more fill a chunk with fewer).
const MIN_SLOTS: usize = 4096;

/// What a chunk's staging put in a lane.
struct Staged {
    upload_bytes: usize,
    slots: usize,
    download_bytes: usize,
}

struct State {
    lanes: Vec<Lane>,
    /// Capacity of each lane's data buffers, in bytes.
    lane_bytes: usize,
    /// Capacity of each lane's slot buffers, in entries (one per tile of a chunk).
    lane_slots: usize,
    tables: TableCache,
}

impl State {
    fn ensure_lanes(
        &mut self,
        ctx: &Arc<CudaContext>,
        bytes: usize,
        slots: usize,
    ) -> Result<(), GpuError> {
        let bytes = bytes.max(CHUNK_BYTES);
        let slots = slots.max(MIN_SLOTS);
        if self.lanes.len() == 2 && self.lane_bytes >= bytes && self.lane_slots >= slots {
            return Ok(());
        }
        let (bytes, slots) = (bytes.max(self.lane_bytes), slots.max(self.lane_slots));
        self.lanes.clear();
        self.lane_bytes = 0;
        self.lane_slots = 0;
        for _ in 0..2 {
            let events = [(); 4].map(|_| ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)));
            let [e0, e1, e2, e3] = events;
            let write_combined = sys::CU_MEMHOSTALLOC_WRITECOMBINED;
            self.lanes.push(Lane {
                stream: ctx.new_stream().map_err(driver("cuStreamCreate"))?,
                // The host only writes the input buffers: write-combined is fastest there.
                pin_in: PinnedBuf::new(ctx, bytes, write_combined)?,
                // The host reads the output buffers: plain cached pinned memory.
                pin_out: PinnedBuf::new(ctx, bytes, 0)?,
                pin_slots: PinnedBuf::new(ctx, slots * 4, write_combined)?,
                d_in: DeviceBuf::new(ctx, bytes)?,
                d_out: DeviceBuf::new(ctx, bytes)?,
                d_slots: DeviceBuf::new(ctx, slots * 4)?,
                events: [
                    e0.map_err(driver("cuEventCreate"))?,
                    e1.map_err(driver("cuEventCreate"))?,
                    e2.map_err(driver("cuEventCreate"))?,
                    e3.map_err(driver("cuEventCreate"))?,
                ],
            });
        }
        self.lane_bytes = bytes;
        self.lane_slots = slots;
        Ok(())
    }

    /// Runs `chunks` through the two lanes; see the module documentation.
    fn pipeline(
        &mut self,
        ctx: &Arc<CudaContext>,
        chunks: Vec<Range<usize>>,
        stage: &mut StageFn<'_>,
        launch: &LaunchFn<'_>,
        unstage: &mut dyn FnMut(Range<usize>, &[u8]),
    ) -> Result<GpuTimings, GpuError> {
        let mut timings = GpuTimings::default();
        let mut pending: [Option<(Range<usize>, usize)>; 2] = [None, None];
        let result = (|| {
            for (c, range) in chunks.into_iter().enumerate() {
                let lane_index = c % 2;
                if let Some(previous) = pending[lane_index].take() {
                    self.finish(lane_index, previous, &mut timings, unstage)?;
                }
                let lane = &mut self.lanes[lane_index];
                let clock = Instant::now();
                // SAFETY: this lane's previous chunk is finished (or there was none).
                let staged = unsafe {
                    let slots = lane.pin_slots.words(self.lane_slots);
                    stage(range.clone(), lane.pin_in.slice(self.lane_bytes), slots)
                };
                timings.stage_in += clock.elapsed();
                let lane = &self.lanes[lane_index];
                let stream = &lane.stream;
                let cu_stream = stream.cu_stream();
                let [e0, e1, e2, e3] = &lane.events;
                e0.record(stream).map_err(driver("cuEventRecord"))?;
                // SAFETY: source ranges lie inside the pinned buffers, destinations inside the
                // device buffers (same capacities); the lane is not reused before `finish`.
                unsafe {
                    if staged.slots > 0 {
                        let slots = std::slice::from_raw_parts(
                            lane.pin_slots.ptr.cast::<u32>(),
                            staged.slots,
                        );
                        result::memcpy_htod_async(lane.d_slots.ptr, slots, cu_stream)
                            .map_err(driver("cuMemcpyHtoDAsync"))?;
                    }
                    let data = std::slice::from_raw_parts(lane.pin_in.ptr, staged.upload_bytes);
                    result::memcpy_htod_async(lane.d_in.ptr, data, cu_stream)
                        .map_err(driver("cuMemcpyHtoDAsync"))?;
                }
                e1.record(stream).map_err(driver("cuEventRecord"))?;
                launch(stream, lane, &staged)?;
                e2.record(stream).map_err(driver("cuEventRecord"))?;
                // SAFETY: as above, device → pinned.
                unsafe {
                    let data =
                        std::slice::from_raw_parts_mut(lane.pin_out.ptr, staged.download_bytes);
                    result::memcpy_dtoh_async(data, lane.d_out.ptr, cu_stream)
                        .map_err(driver("cuMemcpyDtoHAsync"))?;
                }
                e3.record(stream).map_err(driver("cuEventRecord"))?;
                pending[lane_index] = Some((range, staged.download_bytes));
            }
            // Drain in chunk order: the lane that started first finishes first.
            let mut order: Vec<usize> = (0..2).filter(|&i| pending[i].is_some()).collect();
            order.sort_by_key(|&i| pending[i].as_ref().map(|p| p.0.start));
            for i in order {
                if let Some(previous) = pending[i].take() {
                    self.finish(i, previous, &mut timings, unstage)?;
                }
            }
            Ok(())
        })();
        if result.is_err() {
            // Leave nothing in flight that could still touch the buffers.
            let _ = ctx.synchronize();
        }
        result.map(|()| timings)
    }

    /// Waits for a lane's chunk, adds its device timings and copies its output out.
    fn finish(
        &mut self,
        lane_index: usize,
        (range, download_bytes): (Range<usize>, usize),
        timings: &mut GpuTimings,
        unstage: &mut dyn FnMut(Range<usize>, &[u8]),
    ) -> Result<(), GpuError> {
        let lane = &mut self.lanes[lane_index];
        let [e0, e1, e2, e3] = &lane.events;
        e3.synchronize().map_err(driver("cuEventSynchronize"))?;
        let ms = |a: &CudaEvent, b: &CudaEvent| -> Result<Duration, GpuError> {
            let ms = a.elapsed_ms(b).map_err(driver("cuEventElapsedTime"))?;
            Ok(Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3))
        };
        timings.upload += ms(e0, e1)?;
        timings.kernel += ms(e1, e2)?;
        timings.download += ms(e2, e3)?;
        let clock = Instant::now();
        // SAFETY: the download into pin_out has completed (e3) and nothing else uses it.
        unstage(range, unsafe { lane.pin_out.slice(download_bytes) });
        timings.stage_out += clock.elapsed();
        Ok(())
    }
}

/// Tables on the device: up to [`TableCache::SLOTS`] distinct position tables of one tile
/// size, in one buffer. Content is checked on every lookup, so a reused pointer can never
/// serve a stale table.
#[derive(Default)]
struct TableCache {
    tile_pixels: usize,
    entries: Vec<(usize, Vec<u32>)>,
    device: Option<DeviceBuf>,
}

impl TableCache {
    /// Eight symmetries of the square: no TileTables has more distinct tables.
    const SLOTS: usize = 8;

    fn slot(&mut self, ctx: &Arc<CudaContext>, positions: &[u32]) -> Result<u32, GpuError> {
        if positions.len() != self.tile_pixels || self.device.is_none() {
            self.entries.clear();
            self.device = None;
            self.device = Some(DeviceBuf::new(ctx, Self::SLOTS * positions.len() * 4)?);
            self.tile_pixels = positions.len();
        }
        let ptr = positions.as_ptr() as usize;
        if let Some(i) = self
            .entries
            .iter()
            .position(|(p, v)| *p == ptr && v[..] == *positions)
        {
            return Ok(i as u32);
        }
        if let Some(i) = self.entries.iter().position(|(_, v)| v[..] == *positions) {
            self.entries[i].0 = ptr;
            return Ok(i as u32);
        }
        if self.entries.len() == Self::SLOTS {
            return Err(GpuError::InvalidJob(format!(
                "more than {} distinct tile tables in one batch",
                Self::SLOTS
            )));
        }
        let index = self.entries.len();
        let device = self.device.as_ref().map(|d| d.ptr).unwrap_or_default();
        let offset = (index * self.tile_pixels * 4) as u64;
        // SAFETY: the destination slot lies inside the table buffer; the synchronous copy
        // is followed by a context synchronisation before any kernel can read it.
        unsafe { result::memcpy_htod_sync(device + offset, positions) }
            .map_err(driver("cuMemcpyHtoD"))?;
        ctx.synchronize().map_err(driver("cuCtxSynchronize"))?;
        self.entries.push((ptr, positions.to_vec()));
        Ok(index as u32)
    }

    fn device_ptr(&self) -> sys::CUdeviceptr {
        self.device.as_ref().map(|d| d.ptr).unwrap_or_default()
    }
}
