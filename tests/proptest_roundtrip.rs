//! Property tests through the library API: `encode_to_vec` in both modes and several levels,
//! then decoded (1) independently with the `png` crate + Hilbert walk and (2) by the library's
//! own `decode_to_vec`; both must give the input back, and the metadata must describe it.
mod common;

use base64::Engine;
use common::*;
use pixelrts::encode::compressed::CompressMode;
use pixelrts::encode::{encode_to_vec, EncodeOptions, Layout};
use pixelrts::Mode;
use proptest::prelude::*;

/// Payload shapes: random bytes, zeros, repeated text, and mixtures of those runs.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let random = (0usize..300_000, any::<u64>()).prop_map(|(n, seed)| prng_bytes(n, seed));
    let zeros = (0usize..300_000).prop_map(|n| vec![0u8; n]);
    let text = (0usize..300_000, "[a-zA-Z ,.\n]{1,40}")
        .prop_map(|(n, s)| s.as_bytes().iter().copied().cycle().take(n).collect());
    let wasm = (0usize..5_000, any::<u64>()).prop_map(|(n, seed)| {
        let mut v = b"\0asm\x01\0\0\0".to_vec();
        v.extend(prng_bytes(n, seed));
        v
    });
    let run = prop_oneof![
        (1usize..60_000, any::<u64>()).prop_map(|(n, seed)| prng_bytes(n, seed)),
        (1usize..60_000).prop_map(|n| vec![0u8; n]),
        (1usize..60_000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
        (1usize..60_000, "[a-z ]{1,16}").prop_map(|(n, s)| s
            .as_bytes()
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect()),
    ];
    let mixture = proptest::collection::vec(run, 0..6).prop_map(|runs| runs.concat());
    prop_oneof![random, zeros, text, wasm, mixture]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Standard), Just(Mode::Code)]
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Decodes with the png crate and the library's Hilbert curve (`format::hilbert::d2xy`).
fn png_crate_decode(png: &[u8], size: usize) -> Vec<u8> {
    let dec = png_decode(png).expect("png crate decodes our file");
    assert_eq!(dec.width, dec.height);
    let grid = dec.width as u64;
    let mut out = Vec::with_capacity(size + 4);
    for d in 0..size.div_ceil(4) as u64 {
        let (x, y) = pixelrts::format::hilbert::d2xy(grid, d);
        let p = 4 * (y * grid + x) as usize;
        out.extend_from_slice(&dec.rgba[p..p + 4]);
    }
    out.truncate(size);
    out
}

fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![
        Just(Layout::Auto),
        Just(Layout::Seekable),
        Just(Layout::Plain)
    ]
}

fn check(data: &[u8], mode: Mode, level: u32, layout: Layout) -> Result<(), TestCaseError> {
    let opts = EncodeOptions {
        mode,
        level,
        layout,
        compress: CompressMode::None,
        ..Default::default()
    };
    let (png, meta) =
        encode_to_vec(data, &opts).map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;

    // Metadata returned == metadata in the file, and describes the input.
    let in_file = png_metadata(&png).map_err(TestCaseError::fail)?;
    prop_assert_eq!(&in_file, &meta);
    prop_assert_eq!(meta["data_size"].as_u64(), Some(data.len() as u64));
    let hash = sha256_hex(data);
    prop_assert_eq!(meta["data_hash"].as_str(), Some(hash.as_str()));
    prop_assert_eq!(
        meta["grid_size"].as_u64(),
        Some(expected_grid(data.len() as u64))
    );
    prop_assert_eq!(meta["encoding_mode"].as_str(), Some(mode.encoding_type()));

    // Independent decode.
    let dec = png_decode(&png).map_err(TestCaseError::fail)?;
    prop_assert_eq!(dec.width as u64, expected_grid(data.len() as u64));
    match mode {
        Mode::Standard => {
            let got = png_crate_decode(&png, data.len());
            prop_assert!(
                got == data,
                "png crate + Hilbert decode differs (len {})",
                data.len()
            );
            // The whole image also matches the independent Hilbert copy, padding zero.
            let all = independent_rust_decode(&png).map_err(TestCaseError::fail)?;
            prop_assert!(all == data);
        }
        Mode::Code => {
            let b64 = meta["original_data_b64"]
                .as_str()
                .ok_or_else(|| TestCaseError::fail("no original_data_b64"))?;
            let got = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| TestCaseError::fail(format!("base64: {e}")))?;
            prop_assert!(got == data, "original_data_b64 differs");
            // Pixels: the code picture for WebAssembly, the bytes themselves otherwise.
            let grid = dec.width as u64;
            let is_wasm = data.starts_with(b"\0asm");
            for (d, group) in data.chunks(4).enumerate() {
                let mut g = [0u8; 4];
                g[..group.len()].copy_from_slice(group);
                let want = if is_wasm {
                    pixelrts::format::code_mode::code_pixel(g)
                } else {
                    g
                };
                let (x, y) = common::d2xy(grid, d as u64);
                let p = 4 * (y * grid + x) as usize;
                prop_assert_eq!(&dec.rgba[p..p + 4], &want[..], "code pixel {}", d);
            }
        }
    }

    // The library's own decoder.
    let back = pixelrts::decode::decode_to_vec(&png)
        .map_err(|e| TestCaseError::fail(format!("decode_to_vec: {e}")))?;
    prop_assert!(
        back == data,
        "decode_to_vec differs (len {} vs {})",
        back.len(),
        data.len()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_default_level(data in payload(), mode in mode(), layout in layout()) {
        check(&data, mode, pixelrts::encode::DEFAULT_LEVEL, layout)?;
    }

    #[test]
    fn round_trip_any_level(data in payload(), mode in mode(), level in 0u32..=9, layout in layout()) {
        check(&data, mode, level, layout)?;
    }

    #[test]
    fn small_sizes(n in 0usize..300, seed in any::<u64>(), mode in mode(), layout in layout()) {
        check(&prng_bytes(n, seed), mode, 1, layout)?;
    }
}

#[test]
fn code_pixel_matches_format_table() {
    // FORMAT.md §3, written out independently.
    fn class(b: u8) -> u8 {
        match b {
            0x00 => 255,
            0x02..=0x04 => 200,
            0x0C..=0x0D | 0x0F..=0x10 => 150,
            0x05 | 0x0B | 0x0E | 0x11 => 100,
            0x45..=0x66 | 0x6A..=0x78 | 0x7C..=0x8A | 0x92..=0x97 | 0xA0..=0xA5 => 80,
            0x20..=0x24 | 0x28..=0x40 => 50,
            0x41..=0x44 => 30,
            _ => 0,
        }
    }
    fn known(b: u8) -> bool {
        matches!(b, 0x00..=0x05 | 0x0A..=0x11 | 0x1B..=0x1C | 0x20..=0x24 | 0x28..=0x66 | 0x6A..=0x78 | 0x7C..=0x8A | 0x92..=0x97 | 0xA0..=0xA5)
    }
    for b0 in 0..=255u8 {
        let px = pixelrts::format::code_mode::code_pixel([b0, 0x12, 0x34, 0x56]);
        assert_eq!(
            px,
            [class(b0), 0x12, 0x34, if known(b0) { 255 } else { 0 }],
            "b0 = {b0:#04x}"
        );
    }
}
