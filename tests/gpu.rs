//! GPU identity tests: GPU output == CPU output, byte for byte.
//!
//! Without a usable NVIDIA GPU each test prints "skipped: no usable NVIDIA GPU (<reason>)" and
//! passes, unless `PIXELRTS_REQUIRE_GPU=1` (set by `scripts/test-gpu.sh`), which turns the skip
//! into a failure. The CPU/GPU benchmark is `pixelrts bench-gpu` (run by `scripts/bench-gpu.sh`).
//!
//! The `kernels_compile_*` tests need no GPU and no driver, only NVRTC (`libnvrtc.so.12`, e.g.
//! from the PyPI wheel `nvidia-cuda-nvrtc-cu12` on `LD_LIBRARY_PATH`, as `.ci/run` does): they
//! compile the kernels for every architecture of `KERNEL_ARCHS` and as PTX. Without NVRTC they
//! print "skipped: <reason>" and pass, unless `PIXELRTS_REQUIRE_NVRTC=1`.

use pixelrts::format::code_mode;
use pixelrts::format::hilbert::{gather_tile, scatter_tile, TilePlace, TileTables};
use pixelrts::gpu::{
    check_kernels_compile, check_source_compiles, CpuMapper, Gpu, GpuError, GpuMode, ImageStatus,
    KernelCompileCheck, TileMapper, KERNEL_ARCHS, KERNEL_NAMES,
};

/// The GPU, or None after printing why the test is skipped (panics if a GPU is required).
fn gpu_or_skip(test: &str) -> Option<Gpu> {
    let reason = match Gpu::open(GpuMode::On) {
        Ok(Some(gpu)) => {
            eprintln!("{test}: running on {}", gpu.name());
            return Some(gpu);
        }
        Ok(None) => "Gpu::open returned None".to_string(),
        Err(GpuError::Unavailable(reason)) => reason,
        Err(e) => e.to_string(),
    };
    if std::env::var("PIXELRTS_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("{test}: PIXELRTS_REQUIRE_GPU=1 but no usable NVIDIA GPU: {reason}");
    }
    println!("{test}: skipped: no usable NVIDIA GPU ({reason})");
    None
}

/// Small deterministic generator (no extra dependency).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Scatter then gather `len` bytes on a `grid` with tiles of `side`, on the GPU and with
/// `scatter_tile`/`gather_tile`, and compare every byte. Tiles are fed in a shuffled order
/// and split into several batches, to exercise the table slots and the chunking.
fn check_identity(gpu: &Gpu, grid: u64, side: u64, len: usize, rng: &mut Rng) {
    let tables = TileTables::new(grid, side);
    let tile_bytes = (side * side * 4) as usize;
    let data = rng.bytes(len);
    let mut jobs: Vec<(TilePlace, &[u8])> = data
        .chunks(tile_bytes)
        .enumerate()
        .map(|(j, c)| (tables.place_of(j as u64), c))
        .collect();
    for i in (1..jobs.len()).rev() {
        jobs.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut want = vec![0u8; jobs.len() * tile_bytes];
    for ((place, payload), tile) in jobs.iter().zip(want.chunks_mut(tile_bytes)) {
        scatter_tile(tables.positions(place), payload, tile);
    }
    let mut got = vec![0xA5u8; jobs.len() * tile_bytes];
    let batches = 1 + rng.below(3) as usize;
    let per_batch = jobs.len().div_ceil(batches).max(1);
    for (batch, out) in jobs
        .chunks(per_batch)
        .zip(got.chunks_mut(per_batch * tile_bytes))
    {
        let mut out: Vec<&mut [u8]> = out.chunks_mut(tile_bytes).collect();
        gpu.scatter_tiles(&tables, batch, &mut out)
            .expect("GPU scatter");
    }
    assert!(
        got == want,
        "scatter differs: grid {grid} side {side} len {len}"
    );

    // Gather into payload-sized outputs (the last one short), compared with gather_tile.
    let tile_jobs: Vec<(TilePlace, &[u8])> = jobs
        .iter()
        .zip(want.chunks(tile_bytes))
        .map(|((p, _), t)| (*p, t))
        .collect();
    let mut expected: Vec<Vec<u8>> = jobs.iter().map(|(_, p)| vec![0u8; p.len()]).collect();
    for ((place, tile), out) in tile_jobs.iter().zip(expected.iter_mut()) {
        gather_tile(tables.positions(place), tile, out);
    }
    let mut back: Vec<Vec<u8>> = jobs.iter().map(|(_, p)| vec![0x5Au8; p.len()]).collect();
    let mut out: Vec<&mut [u8]> = back.iter_mut().map(|v| v.as_mut_slice()).collect();
    gpu.gather_tiles(&tables, &tile_jobs, &mut out)
        .expect("GPU gather");
    assert!(
        back == expected,
        "gather differs: grid {grid} side {side} len {len}"
    );
    for ((_, payload), b) in jobs.iter().zip(&back) {
        assert!(
            payload == &b.as_slice(),
            "round trip differs: grid {grid} side {side} len {len}"
        );
    }
}

#[test]
fn gpu_scatter_gather_identity_random_sizes() {
    let Some(gpu) = gpu_or_skip("gpu_scatter_gather_identity_random_sizes") else {
        return;
    };
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // Fixed corner cases, then random ones.
    let mut cases = vec![
        (4u64, 4u64, 1usize),
        (4, 4, 64),
        (16, 4, 5),
        (64, 16, 1023),
        (1, 1, 3),
        (8, 2, 200),
    ];
    for _ in 0..40 {
        let grid = 1u64 << (2 + rng.below(9)); // 4 ..= 1024
        let side = (1u64 << rng.below(9)).min(grid); // 1 ..= 256
        let capacity = (grid * grid * 4) as usize;
        let len = 1 + rng.below(capacity as u64) as usize;
        cases.push((grid, side, len));
    }
    // Several 64 MiB pipeline chunks on both lanes, ragged end: 200 MiB on an 8192² grid.
    cases.push((8192, 256, (200 << 20) + 13));
    for (grid, side, len) in cases {
        check_identity(&gpu, grid, side, len, &mut rng);
    }
}

#[test]
fn gpu_code_colour_identity() {
    let Some(gpu) = gpu_or_skip("gpu_code_colour_identity") else {
        return;
    };
    let mut rng = Rng(42);
    let mut sizes = vec![0usize, 1, 2, 3, 4, 5, 41, 256, 1 << 20];
    sizes.extend((0..10).map(|_| rng.below(5 << 20) as usize));
    sizes.push((130 << 20) + 3); // three pipeline chunks, ragged end
    for len in sizes {
        let input = rng.bytes(len);
        let mut want = vec![0u8; len.div_ceil(4) * 4];
        code_mode::code_colour(&input, &mut want);
        let mut got = vec![0xEEu8; want.len()];
        gpu.code_colour(&input, &mut got).expect("GPU code colour");
        assert!(got == want, "code colouring differs for {len} bytes");
    }
    // Every b0 value, against code_pixel.
    let all: Vec<u8> = (0..=255u8).flat_map(|b| [b, b ^ 0x5A, !b, 7]).collect();
    let mut got = vec![0u8; all.len()];
    gpu.code_colour(&all, &mut got).unwrap();
    for (group, pixel) in all.chunks(4).zip(got.chunks(4)) {
        assert_eq!(
            pixel,
            code_mode::code_pixel([group[0], group[1], group[2], group[3]])
        );
    }
}

#[test]
fn gpu_matches_cpu_mapper_and_reuses_tables_across_calls() {
    let Some(gpu) = gpu_or_skip("gpu_matches_cpu_mapper_and_reuses_tables_across_calls") else {
        return;
    };
    let mut rng = Rng(7);
    // Alternate tile sizes and fresh TileTables so the table cache is reset and refilled.
    for round in 0..6 {
        let (grid, side) = [(512u64, 64u64), (256, 256), (512, 64), (64, 8)][round % 4];
        let tables = TileTables::new(grid, side);
        let tile_bytes = (side * side * 4) as usize;
        let short = rng.below(1000) as usize;
        let data = rng.bytes((grid * grid * 4) as usize - short);
        let jobs: Vec<(TilePlace, &[u8])> = data
            .chunks(tile_bytes)
            .enumerate()
            .map(|(j, c)| (tables.place_of(j as u64), c))
            .collect();
        let mut a = vec![0u8; jobs.len() * tile_bytes];
        let mut b = vec![1u8; jobs.len() * tile_bytes];
        let mut out_a: Vec<&mut [u8]> = a.chunks_mut(tile_bytes).collect();
        let mut out_b: Vec<&mut [u8]> = b.chunks_mut(tile_bytes).collect();
        CpuMapper.scatter_tiles(&tables, &jobs, &mut out_a).unwrap();
        let t = gpu.scatter_tiles(&tables, &jobs, &mut out_b).unwrap();
        assert_eq!(t.bytes, data.len() as u64);
        assert!(a == b, "round {round}");
    }
    // Bad sizes are rejected before anything reaches the GPU.
    let tables = TileTables::new(16, 4);
    let mut tile = vec![0u8; 63];
    let err = gpu
        .scatter_tiles(
            &tables,
            &[(tables.place_of(0), &[1, 2, 3])],
            &mut [&mut tile],
        )
        .unwrap_err();
    assert!(matches!(err, GpuError::InvalidJob(_)), "{err}");
}

/// Here (any machine): the three modes behave as documented.
#[test]
fn open_modes_behave() {
    assert!(Gpu::open(GpuMode::Off).unwrap().is_none());
    match Gpu::open(GpuMode::On) {
        Ok(Some(_)) => assert!(Gpu::open(GpuMode::Auto).unwrap().is_some()),
        Ok(None) => panic!("GpuMode::On never gives None"),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.starts_with("--gpu on: no usable NVIDIA GPU: "),
                "{text}"
            );
            assert!(Gpu::open(GpuMode::Auto).unwrap().is_none());
        }
    }
}

/// `check` (an NVRTC kernel check), or None after printing why the test is skipped: NVRTC
/// cannot be loaded. With `PIXELRTS_REQUIRE_NVRTC=1` that is a failure instead.
fn nvrtc_or_skip(
    test: &str,
    check: Result<KernelCompileCheck, String>,
) -> Option<KernelCompileCheck> {
    match check {
        Ok(check) => Some(check),
        Err(reason) => {
            if std::env::var("PIXELRTS_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("{test}: PIXELRTS_REQUIRE_NVRTC=1 but NVRTC cannot be used: {reason}");
            }
            println!("{test}: skipped: {reason}");
            None
        }
    }
}

/// The kernels compile with a real NVRTC (no GPU needed) for every listed architecture this
/// NVRTC supports, and as PTX, and every image holds the three kernels.
#[test]
fn kernels_compile_with_nvrtc() {
    let test = "kernels_compile_with_nvrtc";
    let Some(check) = nvrtc_or_skip(test, check_kernels_compile(&KERNEL_ARCHS)) else {
        return;
    };
    println!(
        "{test}: NVRTC {} ({}), supports {}",
        check.nvrtc_version,
        check.nvrtc_library,
        check
            .supported_archs
            .as_ref()
            .map(|a| a.join(" "))
            .unwrap_or_else(|| "(cannot say)".into())
    );
    for image in &check.images {
        println!(
            "  {:7} {:?} {:>7} bytes {:>7.1} ms{}",
            image.target,
            image.status,
            image.bytes,
            image.seconds * 1e3,
            image
                .error
                .as_deref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
        if !image.log.is_empty() {
            println!("  NVRTC log for {}:\n{}", image.target, image.log);
        }
    }
    println!("{test}: kernels {}", check.summary());
    check.ensure_compiled().unwrap();
    assert_eq!(check.images.len(), KERNEL_ARCHS.len() + 1);
    for (image, arch) in check.images.iter().zip(KERNEL_ARCHS) {
        assert_eq!(image.target, arch);
        let supported = check
            .supported_archs
            .as_ref()
            .is_none_or(|list| list.iter().any(|a| a == arch));
        let want = if supported {
            ImageStatus::Ok
        } else {
            ImageStatus::Skipped
        };
        assert_eq!(image.status, want, "{arch}: {:?}", image.error);
    }
    for image in check.images.iter().filter(|i| i.status == ImageStatus::Ok) {
        assert!(
            image.missing_kernels.is_empty() && image.bytes > 0,
            "{image:?}"
        );
    }
    let ptx = check.images.last().unwrap();
    assert_eq!((ptx.target.as_str(), ptx.status), ("ptx", ImageStatus::Ok));
}

/// The check can fail: broken source gives errors carrying NVRTC's log, and an image without
/// all three kernels is refused.
#[test]
fn kernels_compile_check_reports_nvrtc_errors() {
    let test = "kernels_compile_check_reports_nvrtc_errors";
    let broken = r#"extern "C" __global__ void pixelrts_scatter_tiles(unsigned int* out)
{
    out[0] = pixelrts_no_such_identifier;
}
"#;
    let Some(check) = nvrtc_or_skip(test, check_source_compiles(broken, &["sm_90"])) else {
        return;
    };
    assert!(!check.all_compiled());
    assert_eq!(check.images.len(), 2);
    for image in &check.images {
        assert_eq!(image.status, ImageStatus::Failed, "{image:?}");
        let error = image.error.as_deref().unwrap();
        assert!(error.contains("NVRTC_ERROR_COMPILATION"), "{error}");
        // The log: `error: identifier "pixelrts_no_such_identifier" is undefined`.
        assert!(
            error.contains("\"pixelrts_no_such_identifier\" is undefined"),
            "{error}"
        );
    }
    let err = check.ensure_compiled().unwrap_err();
    println!("{test}: broken source:\n{err}");
    assert!(err.contains("sm_90: ") && err.contains("ptx: "), "{err}");
    assert!(err.contains("pixelrts_no_such_identifier"), "{err}");
    assert!(
        check.summary().starts_with("FAIL with NVRTC"),
        "{}",
        check.summary()
    );

    // Valid source with only one of the three kernels: it compiles, but the check refuses it.
    let one_kernel = r#"extern "C" __global__ void pixelrts_scatter_tiles(unsigned int* out)
{
    out[threadIdx.x] = 1u;
}
"#;
    let check = check_source_compiles(one_kernel, &["sm_90"]).unwrap();
    for image in &check.images {
        assert_eq!(image.status, ImageStatus::Failed, "{image:?}");
        assert_eq!(image.missing_kernels, &KERNEL_NAMES[1..], "{image:?}");
    }
    let err = check.ensure_compiled().unwrap_err();
    println!("{test}: one kernel only:\n{err}");
    assert!(err.contains("kernels missing from the image"), "{err}");
}
