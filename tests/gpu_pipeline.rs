//! The encode/decode pipelines' [`TileMapper`] path, exercised on the CPU: with a forced
//! `CpuMapper` (the code path a GPU plugs into) the PNG and the decoded bytes are byte-for-byte
//! those of the CPU fast path; a mapper that fails makes the job fail cleanly; `--gpu on` without
//! a GPU still fails. Needs no GPU.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pixelrts::decode::{decode_file, DecodeOptions};
use pixelrts::encode::compressed::CompressMode;
use pixelrts::encode::{encode_file, encode_to_vec, EncodeOptions};
use pixelrts::format::hilbert::{TilePlace, TileTables};
use pixelrts::format::metadata::Mode;
use pixelrts::gpu::{CpuMapper, GpuError, GpuMode, GpuTimings, TileMapper};
use pixelrts::Error;

/// `CpuMapper` that counts its calls, so the tests know the trait path really ran, and wakes
/// [`Counting::wait_for_scatters`] whenever a call starts.
#[derive(Default)]
struct Counting {
    scatter: AtomicUsize,
    gather: AtomicUsize,
    colour: AtomicUsize,
    started: (Mutex<()>, Condvar),
}

impl Counting {
    fn count(&self, calls: &AtomicUsize) {
        calls.fetch_add(1, Ordering::SeqCst);
        // Under the lock, so that a waiter between its check and its wait is not missed.
        let _guard = self.started.0.lock().unwrap();
        self.started.1.notify_all();
    }

    /// Waits until `n` scatter calls have started; false after `timeout`.
    fn wait_for_scatters(&self, n: usize, timeout: Duration) -> bool {
        let guard = self.started.0.lock().unwrap();
        let (_guard, result) = self
            .started
            .1
            .wait_timeout_while(guard, timeout, |_| self.scatter.load(Ordering::SeqCst) < n)
            .unwrap();
        !result.timed_out()
    }
}

impl TileMapper for Counting {
    fn name(&self) -> String {
        "counting cpu".into()
    }
    fn scatter_tiles(
        &self,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        self.count(&self.scatter);
        CpuMapper.scatter_tiles(tables, jobs, out)
    }
    fn gather_tiles(
        &self,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        self.count(&self.gather);
        CpuMapper.gather_tiles(tables, jobs, out)
    }
    fn code_colour(&self, input: &[u8], out: &mut [u8]) -> Result<GpuTimings, GpuError> {
        self.count(&self.colour);
        CpuMapper.code_colour(input, out)
    }
}

/// A mapper whose every call fails, as a GPU whose driver call fails would.
struct Failing;

impl TileMapper for Failing {
    fn name(&self) -> String {
        "failing".into()
    }
    fn scatter_tiles(
        &self,
        _: &TileTables,
        _: &[(TilePlace, &[u8])],
        _: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        Err(failure())
    }
    fn gather_tiles(
        &self,
        _: &TileTables,
        _: &[(TilePlace, &[u8])],
        _: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        Err(failure())
    }
    fn code_colour(&self, _: &[u8], _: &mut [u8]) -> Result<GpuTimings, GpuError> {
        Err(failure())
    }
}

/// `CpuMapper` that flips the first byte of every tile it produces: proves that the pipelines
/// really write what the mapper returns (and that the identity test would catch a wrong one).
struct Corrupting;

impl TileMapper for Corrupting {
    fn name(&self) -> String {
        "corrupting cpu".into()
    }
    fn scatter_tiles(
        &self,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        let t = CpuMapper.scatter_tiles(tables, jobs, out)?;
        out.iter_mut().for_each(|o| o[0] ^= 0x5a);
        Ok(t)
    }
    fn gather_tiles(
        &self,
        tables: &TileTables,
        jobs: &[(TilePlace, &[u8])],
        out: &mut [&mut [u8]],
    ) -> Result<GpuTimings, GpuError> {
        let t = CpuMapper.gather_tiles(tables, jobs, out)?;
        out.iter_mut().for_each(|o| o[0] ^= 0x5a);
        Ok(t)
    }
    fn code_colour(&self, input: &[u8], out: &mut [u8]) -> Result<GpuTimings, GpuError> {
        CpuMapper.code_colour(input, out)
    }
}

#[test]
fn pipelines_use_what_the_mapper_returns() {
    let data = sample(100_000, 11, false);
    let base = EncodeOptions {
        layout: pixelrts::encode::Layout::Seekable,
        tile_side_log2: Some(4),
        compress: CompressMode::None,
        ..Default::default()
    };
    let (fast, _) = encode_to_vec(&data, &base).unwrap();
    let bad = EncodeOptions {
        layout: pixelrts::encode::Layout::Seekable,
        mapper: Some(Arc::new(Corrupting)),
        ..base
    };
    let (corrupted, _) = encode_to_vec(&data, &bad).unwrap();
    assert!(fast != corrupted);

    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("x.rts.png");
    fs::write(&png, &fast).unwrap();
    let out = dir.path().join("out");
    let opts = DecodeOptions {
        mapper: Some(Arc::new(Corrupting)),
        ..Default::default()
    };
    decode_file(&png, &out, &opts).unwrap();
    let got = fs::read(&out).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got != data);
    let verify = DecodeOptions {
        verify: true,
        overwrite: true,
        ..opts
    };
    let err = decode_file(&png, &out, &verify).unwrap_err();
    assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
}

fn failure() -> GpuError {
    GpuError::Driver {
        context: "test",
        message: "injected failure".into(),
    }
}

/// Zeros, text and random bytes mixed, so tiles come out empty, deflated and stored.
fn sample(n: usize, seed: u64, wasm: bool) -> Vec<u8> {
    let mut s = seed | 1;
    let mut v: Vec<u8> = (0..n)
        .map(|i| match i % 3000 {
            0..1000 => 0,
            1000..2000 => b"some text "[i % 10],
            _ => {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            }
        })
        .collect();
    if wasm {
        let head = b"\0asm\x01\0\0\0";
        let k = head.len().min(n);
        v[..k].copy_from_slice(&head[..k]);
    }
    v
}

/// (bytes, tile_side_log2, grid): 0, 1, partial last tile and pixel, many stripes, several row
/// groups per stripe (a grid of 8192 has 128-row groups in 256-row tiles).
const CASES: &[(usize, u8, Option<u64>)] = &[
    (0, 8, None),
    (1, 8, None),
    (7, 2, None),
    (4095, 4, None),
    (70_001, 4, None),
    (300_003, 8, None),
    (1 << 20, 6, None),
    (200_001, 8, Some(8192)),
];

#[test]
fn forced_cpu_mapper_encodes_and_decodes_like_the_fast_path() {
    let dir = tempfile::tempdir().unwrap();
    for &(n, tile_log2, grid) in CASES {
        for mode in [Mode::Standard, Mode::Code] {
            let wasm = mode == Mode::Code;
            let data = sample(n, n as u64 + 3, wasm);
            let base = EncodeOptions {
                layout: pixelrts::encode::Layout::Seekable,
                mode,
                tile_side_log2: Some(tile_log2),
                grid_size: grid,
                gpu: GpuMode::Off,
                compress: CompressMode::None,
                ..Default::default()
            };
            let (fast, _) = encode_to_vec(&data, &base).unwrap();
            let counting = Arc::new(Counting::default());
            let forced = EncodeOptions {
                layout: pixelrts::encode::Layout::Seekable,
                mapper: Some(counting.clone()),
                ..base.clone()
            };
            let (mapped, _) = encode_to_vec(&data, &forced).unwrap();
            let what = format!("n={n} tile_log2={tile_log2} grid={grid:?} mode={mode:?}");
            assert!(fast == mapped, "PNGs differ: {what}");
            if data.iter().any(|&b| b != 0) {
                assert!(counting.scatter.load(Ordering::Relaxed) > 0, "{what}");
            }
            if wasm && n >= 4 {
                assert!(counting.colour.load(Ordering::Relaxed) > 0, "{what}");
            }

            // Decode the PNG both ways.
            let png = dir.path().join("x.rts.png");
            fs::write(&png, &fast).unwrap();
            let decode = |mapper: Option<Arc<dyn TileMapper>>, out: &Path| {
                decode_file(
                    &png,
                    out,
                    &DecodeOptions {
                        verify: true,
                        overwrite: true,
                        gpu: GpuMode::Off,
                        mapper,
                        ..Default::default()
                    },
                )
                .unwrap();
                fs::read(out).unwrap()
            };
            let plain = decode(None, &dir.path().join("plain"));
            let counting = Arc::new(Counting::default());
            let via = decode(Some(counting.clone()), &dir.path().join("via"));
            assert!(plain == data, "fast decode: {what}");
            assert!(via == data, "mapper decode: {what}");
            // Code mode keeps the bytes in base64, so only standard images gather tiles.
            if !wasm && n > 0 {
                assert!(counting.gather.load(Ordering::Relaxed) > 0, "{what}");
            }
        }
    }
}

#[test]
fn failing_mapper_fails_the_job_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    fs::write(&input, sample(100_000, 9, false)).unwrap();
    let png = dir.path().join("in.bin.rts.png");
    let err = encode_file(
        &input,
        &png,
        &EncodeOptions {
            layout: pixelrts::encode::Layout::Seekable,
            mapper: Some(Arc::new(Failing)),
            compress: CompressMode::None,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Gpu(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains(&png.display().to_string()), "{text}");
    assert!(text.contains("injected failure"), "{text}");
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "only the input is left: {left:?}");

    encode_file(
        &input,
        &png,
        &EncodeOptions {
            layout: pixelrts::encode::Layout::Seekable,
            compress: CompressMode::None,
            ..Default::default()
        },
    )
    .unwrap();
    let out = dir.path().join("out.bin");
    let err = decode_file(
        &png,
        &out,
        &DecodeOptions {
            mapper: Some(Arc::new(Failing)),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Gpu(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains(&png.display().to_string()), "{text}");
    assert!(!out.exists());
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["in.bin", "in.bin.rts.png", "in.bin.rts.png.meta.json"]
    );
}

/// Without a GPU, `gpu: On` fails encode and decode with the `--gpu on` message and writes
/// nothing; `auto` and `off` run on the CPU.
#[test]
fn gpu_on_without_gpu_fails() {
    if pixelrts::gpu::Gpu::open(GpuMode::On).is_ok() {
        eprintln!("skipped: a GPU is usable here (scripts/test-gpu.sh covers that case)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let data = sample(10_000, 4, false);
    fs::write(&input, &data).unwrap();
    let png = dir.path().join("in.png");
    let on = EncodeOptions {
        layout: pixelrts::encode::Layout::Seekable,
        gpu: GpuMode::On,
        compress: CompressMode::None,
        ..Default::default()
    };
    let err = encode_file(&input, &png, &on).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("--gpu on: no usable NVIDIA GPU: "),
        "{err}"
    );
    assert!(!png.exists());
    for gpu in [GpuMode::Auto, GpuMode::Off] {
        let opts = EncodeOptions {
            layout: pixelrts::encode::Layout::Seekable,
            gpu,
            overwrite: true,
            compress: CompressMode::None,
            ..Default::default()
        };
        encode_file(&input, &png, &opts).unwrap();
    }
    let out = dir.path().join("out.bin");
    let err = decode_file(
        &png,
        &out,
        &DecodeOptions {
            gpu: GpuMode::On,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("--gpu on: no usable NVIDIA GPU: "),
        "{err}"
    );
    assert!(!out.exists());
    decode_file(&png, &out, &DecodeOptions::default()).unwrap();
    assert_eq!(fs::read(&out).unwrap(), data);
}

/// The encoder overlaps the mapper with the CPU: the scatter of stripe 1 (on a GPU: transfers
/// and kernels) starts while stripe 0 is being deflated. The progress callback, which the
/// encoder calls once stripe 0's only row group is deflated, does not return until that second
/// scatter has started. Without the overlap the scatter of stripe 1 would come only after that
/// callback returned; the callback gives up after 20 s and the test fails.
#[test]
fn encoder_scatters_the_next_stripe_while_deflating_this_one() {
    let data = sample(4 << 20, 77, false);
    // Grid 1024, tiles of 256: four stripes of one row group each.
    let (grid, tile_side_log2) = (1024u64, 8u8);
    let mapper = Arc::new(Counting::default());
    let waited_in_vain = Arc::new(AtomicUsize::new(0));
    let (signals, missed) = (mapper.clone(), waited_in_vain.clone());
    let opts = EncodeOptions {
        layout: pixelrts::encode::Layout::Seekable,
        grid_size: Some(grid),
        tile_side_log2: Some(tile_side_log2),
        mapper: Some(mapper.clone()),
        progress: Some(Arc::new(move |done, total| {
            if done > total / 4 {
                return;
            }
            if !signals.wait_for_scatters(2, Duration::from_secs(20)) {
                missed.fetch_add(1, Ordering::SeqCst);
            }
        })),
        compress: CompressMode::None,
        ..Default::default()
    };
    let (overlapped, _) = encode_to_vec(&data, &opts).expect("encode with overlap");
    assert_eq!(
        waited_in_vain.load(Ordering::SeqCst),
        0,
        "stripe 1 was not scattered while stripe 0 was deflated"
    );
    assert_eq!(
        mapper.scatter.load(Ordering::SeqCst),
        4,
        "one scatter per stripe"
    );
    let plain = EncodeOptions {
        layout: pixelrts::encode::Layout::Seekable,
        grid_size: Some(grid),
        tile_side_log2: Some(tile_side_log2),
        gpu: GpuMode::Off,
        compress: CompressMode::None,
        ..Default::default()
    };
    assert!(overlapped == encode_to_vec(&data, &plain).unwrap().0);
}

/// Mapped decodes of several batches (16 MiB each) go through the overlapped inflate/gather
/// and still give the input, batch after batch, in order.
#[test]
fn mapped_decode_of_many_batches_matches_the_input() {
    let data = sample(40 << 20, 91, false);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big");
    fs::write(&input, &data).unwrap();
    let png = dir.path().join("big.rts.png");
    let counting = Arc::new(Counting::default());
    encode_file(
        &input,
        &png,
        &EncodeOptions {
            layout: pixelrts::encode::Layout::Seekable,
            mapper: Some(counting.clone()),
            compress: CompressMode::None,
            ..Default::default()
        },
    )
    .unwrap();
    let out = dir.path().join("out");
    let counting = Arc::new(Counting::default());
    decode_file(
        &png,
        &out,
        &DecodeOptions {
            verify: true,
            mapper: Some(counting.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        counting.gather.load(Ordering::Relaxed),
        3,
        "40 MiB in 16 MiB batches"
    );
    assert!(fs::read(&out).unwrap() == data);
}
