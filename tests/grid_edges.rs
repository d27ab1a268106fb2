//! Grid-size edges through the CLI: encode → decode --verify → compare, and the grid that
//! `info` reports follows FORMAT.md §1 (1 for empty input, else the smallest power of two
//! g ≥ 4 with 4·g² ≥ n). Explicit `--grid-size` errors use the reference's wording.
mod common;

use std::ffi::OsString;
use std::path::Path;

use common::*;
use serde_json::Value;

/// Round trip of `n` bytes via the CLI; returns the grid size `info --json` reports.
fn round_trip(n: usize, extra: &[&str]) -> u64 {
    let tmp = tempfile::tempdir().unwrap();
    let data = prng_bytes(n, n as u64 + 7);
    let input = tmp.path().join(format!("in_{n}.bin"));
    std::fs::write(&input, &data).unwrap();
    let png = tmp.path().join(format!("in_{n}.rts.png"));
    let mut args: Vec<OsString> = vec!["encode".into(), input.clone().into(), png.clone().into()];
    args.extend(extra.iter().map(OsString::from));
    run_ok(&args);

    let out = tmp.path().join("out.bin");
    run_ok([
        Path::new("decode").as_os_str(),
        png.as_os_str(),
        out.as_os_str(),
        "--verify".as_ref(),
    ]);
    let back = std::fs::read(&out).unwrap();
    assert_eq!(back.len(), n, "n={n} {extra:?}: decoded length");
    assert!(back == data, "n={n} {extra:?}: decoded bytes differ");

    let o = run([Path::new("verify").as_os_str(), png.as_os_str()]);
    assert_eq!(o.status.code(), Some(0), "n={n}: verify: {}", describe(&o));

    let o = run_ok([
        Path::new("info").as_os_str(),
        png.as_os_str(),
        "--json".as_ref(),
    ]);
    let info: Value = serde_json::from_slice(&o.stdout).expect("info --json");
    assert_eq!(info["data_size"], n, "n={n}: info data_size");
    assert_eq!(
        info["metadata"]["grid_size"], info["grid_size"],
        "n={n}: metadata grid_size vs info"
    );

    // Independent check of the image itself.
    let bytes = std::fs::read(&png).unwrap();
    let grid = info["grid_size"].as_u64().expect("grid_size is a number");
    let dec = png_decode(&bytes).expect("png crate decodes");
    assert_eq!(
        (dec.width as u64, dec.height as u64),
        (grid, grid),
        "n={n}: IHDR vs info"
    );
    if !extra.contains(&"code") {
        assert!(
            independent_rust_decode(&bytes).unwrap() == data,
            "n={n}: png crate + Hilbert walk differs"
        );
    }
    grid
}

macro_rules! auto_grid_tests {
    ($($name:ident => $n:expr, $grid:expr;)*) => {$(
        #[test]
        fn $name() {
            assert_eq!(expected_grid($n as u64), $grid, "the test's own rule");
            assert_eq!(round_trip($n, &[]), $grid, "auto grid for {} bytes", $n);
            // Small images are plain by default; the seekable layout at the same edges.
            assert_eq!(round_trip($n, &["--layout", "seekable"]), $grid, "seekable, {} bytes", $n);
        }
    )*};
}

auto_grid_tests! {
    size_0 => 0, 1;
    size_1 => 1, 4;
    size_64 => 64, 4;
    size_65 => 65, 8;
    size_4096 => 4096, 32;
    size_4097 => 4097, 64;
    size_65536 => 65536, 128;
    size_65537 => 65537, 256;
}

#[test]
fn code_mode_edges_on_non_wasm_data() {
    // Not WebAssembly: standard pixels, labelled RGBA-code, bytes from original_data_b64.
    for (n, g) in [(0usize, 1u64), (65, 8), (4097, 64)] {
        assert_eq!(
            round_trip(n, &["--mode", "code"]),
            g,
            "code mode, {n} bytes"
        );
    }
}

#[test]
fn explicit_grid_sizes_that_fit() {
    assert_eq!(
        round_trip(1000, &["--grid-size", "64"]),
        64,
        "larger than needed"
    );
    assert_eq!(round_trip(64, &["--grid-size", "4"]), 4, "exact fit");
    assert_eq!(
        round_trip(16, &["--grid-size", "2"]),
        2,
        "a power of two below 4 that holds the data"
    );
    assert_eq!(round_trip(4, &["--grid-size", "1"]), 1, "one pixel");
    assert_eq!(
        round_trip(4096, &["--grid-size", "32"]),
        32,
        "exact fit, 4096 bytes"
    );
}

/// Runs an encode that must fail; checks exit code, message and that nothing was written.
fn encode_must_fail(n: usize, grid: &str, message: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.bin");
    std::fs::write(&input, prng_bytes(n, 3)).unwrap();
    let png = tmp.path().join("in.rts.png");
    let o = run([
        Path::new("encode").as_os_str(),
        input.as_os_str(),
        png.as_os_str(),
        "--grid-size".as_ref(),
        grid.as_ref(),
    ]);
    let code = o.status.code();
    assert!(
        code.is_some() && code != Some(0) && code != Some(101),
        "grid {grid}, {n} bytes: {}",
        describe(&o)
    );
    assert_eq!(
        code,
        Some(2),
        "usage/argument errors exit 2: {}",
        describe(&o)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(message),
        "grid {grid}, {n} bytes: stderr lacks {message:?}: {}",
        describe(&o)
    );
    assert!(
        stderr.starts_with("error: "),
        "errors start with `error: `: {}",
        describe(&o)
    );
    assert_eq!(
        list_dir(tmp.path()),
        vec!["in.bin".to_string()],
        "a failed encode leaves nothing behind"
    );
}

#[test]
fn explicit_grid_too_small() {
    encode_must_fail(1000, "8", "exceeds grid capacity");
    encode_must_fail(1000, "8", "data of 1000 bytes exceeds grid capacity 256");
    encode_must_fail(65, "4", "data of 65 bytes exceeds grid capacity 64");
    encode_must_fail(5, "1", "exceeds grid capacity");
}

#[test]
fn explicit_grid_not_power_of_two() {
    encode_must_fail(100, "12", "Grid size must be power of 2, got 12");
    encode_must_fail(100, "0", "Grid size must be power of 2, got 0");
    encode_must_fail(1, "3", "Grid size must be power of 2, got 3");
}
