//! What the layout costs on random data (nothing compresses, so every byte of layout shows):
//! at most 1% + 4 KiB over the input at sizes just past each grid boundary (the worst case,
//! three quarters of the image padding), never more than 1% over the reference's PNG of the
//! same input, and the layout `auto` picks for each size (docs/LAYOUT.md, "Two layouts").
mod common;

use common::*;
use pixelrts::container::Container;
use pixelrts::decode::{decode_to_writer, DecodeOptions};
use pixelrts::encode::compressed::CompressMode;
use pixelrts::encode::{encode_to_vec, EncodeOptions, Layout};

/// Pixels = bytes (random data is never compressed by `auto` anyway), so that the png crate
/// and a Hilbert walk read the data back.
fn encode(data: &[u8], layout: Layout) -> Vec<u8> {
    let opts = EncodeOptions {
        layout,
        compress: CompressMode::None,
        ..Default::default()
    };
    encode_to_vec(data, &opts).unwrap().0
}

fn is_seekable(png: &[u8]) -> bool {
    png_chunks(png).unwrap().iter().any(|c| &c.kind == b"rtIX")
}

fn check_round_trip(png: &[u8], data: &[u8], what: &str) {
    check_decode(png, data, what);
    assert!(
        independent_rust_decode(png).unwrap() == data,
        "{what}: png crate + Hilbert walk differs"
    );
}

fn check_decode(png: &[u8], data: &[u8], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.rts.png");
    std::fs::write(&path, png).unwrap();
    let opts = DecodeOptions {
        verify: true,
        ..Default::default()
    };
    let mut back = Vec::new();
    decode_to_writer(&path, &mut back, &opts).unwrap();
    assert!(back == data, "{what}: decoded bytes differ");
}

#[test]
fn random_data_costs_at_most_one_percent_and_4k() {
    // (bytes, the layout auto writes)
    let sizes: [(usize, bool); 10] = [
        (1, false),
        (1000, false),
        (100_000, false),
        (300_000, false),
        ((1 << 20) + 1, false),
        ((4 << 20) + 1, false),
        (6 << 20, false),
        ((16 << 20) + 1, true),
        (20_000_000, true),
        ((64 << 20) + 1, true),
    ];
    for (n, seekable) in sizes {
        let data = prng_bytes(n, n as u64);
        let png = encode(&data, Layout::Auto);
        let limit = n / 100 + 4096;
        assert!(
            png.len() - n <= limit,
            "{n} random bytes: {} over the input, limit {limit}",
            png.len() - n
        );
        assert_eq!(is_seekable(&png), seekable, "{n} bytes: layout");
        if n <= 6 << 20 {
            check_round_trip(&png, &data, &format!("{n} bytes"));
        }
    }
}

/// The reference's own PNGs of the vectors' random inputs (and one byte): ours are at most 1%
/// larger (they are the same size or smaller).
#[test]
fn no_bigger_than_the_reference_png() {
    for name in ["b_one_byte", "c_1000_prng", "e_300000_prng", "g_5MiB_prng"] {
        let data = std::fs::read(vectors_dir().join(format!("{name}.bin"))).unwrap();
        let reference = std::fs::metadata(vectors_dir().join(format!("{name}.rts.png")))
            .unwrap()
            .len() as usize;
        let png = encode(&data, Layout::Auto);
        assert!(
            png.len() * 100 <= reference * 101,
            "{name}: {} bytes, the reference's PNG {reference}",
            png.len()
        );
    }
}

/// 64 KiB of zeros (the reference vector's input) takes at most 1 KiB.
#[test]
fn zeros_cost_almost_nothing() {
    let data = vec![0u8; 65536];
    let (png, meta) = encode_to_vec(&data, &EncodeOptions::default()).unwrap();
    assert!(png.len() <= 1024, "{} bytes", png.len());
    assert!(meta.contains_key("compression"), "auto compresses zeros");
    check_decode(&png, &data, "64 KiB of zeros");
    // Pixels = bytes (no compressed payload) and a seekable index: the zero pieces have no
    // bytes of their own, they are zero runs (deflate's limit: ~1 KiB a MiB); what remains is
    // the index, 4 bytes per 1 KiB piece (64 KiB here). Index v1 took 2.1%.
    let opts = EncodeOptions {
        layout: Layout::Seekable,
        compress: CompressMode::None,
        ..Default::default()
    };
    let (png, _) = encode_to_vec(&vec![0u8; 16 << 20], &opts).unwrap();
    let limit = (16 << 20) / 256 + (16 << 20) / 1000 + 4096;
    assert!(
        png.len() <= limit,
        "16 MiB of zeros, seekable: {} bytes, limit {limit}",
        png.len()
    );
}

/// A compressed payload over 4 MiB (grid 2048) is written seekable by `auto`: its pixels do not
/// compress, so the layout costs under 1% over plain, and reading it cold through the mount
/// took 44 ms instead of 71 ms for 16 MiB (docs/LAYOUT.md, "Two layouts"). One of at most
/// 4 MiB stays plain. (zlib of random bytes stands in for a compressed payload: it is what one
/// looks like.)
#[test]
fn auto_writes_compressed_payloads_over_4_mib_seekable() {
    for (n, seekable) in [
        ((4 << 20) + 65536, true),
        ((12 << 20) + 1, true),
        (3 << 20, false),
    ] {
        let data = prng_bytes(n, 11);
        let with = |layout| EncodeOptions {
            layout,
            compress: CompressMode::Zlib,
            ..Default::default()
        };
        let (png, meta) = encode_to_vec(&data, &with(Layout::Auto)).unwrap();
        assert!(
            meta.contains_key("compression"),
            "{n} bytes: not compressed"
        );
        assert_eq!(is_seekable(&png), seekable, "{n} bytes");
        check_decode(&png, &data, &format!("{n} bytes, compressed"));
        if seekable {
            let (plain, _) = encode_to_vec(&data, &with(Layout::Plain)).unwrap();
            let over = png.len() as f64 / plain.len() as f64 - 1.0;
            assert!(
                over < 0.01,
                "{n} bytes: seekable {} against plain {} ({:.2}%)",
                png.len(),
                plain.len(),
                over * 100.0
            );
            eprintln!(
                "{n} bytes compressed: seekable {:+.2}% over plain",
                over * 100.0
            );
        }
    }
}

/// `--layout plain` above the zlib size goes through the piece pipeline without an index;
/// `--layout seekable` below the plain size writes one. Both decode everywhere, and the
/// container says which is which.
#[test]
fn explicit_layouts_at_every_size_class() {
    let dir = tempfile::tempdir().unwrap();
    for (n, layout, seekable) in [
        (5000usize, Layout::Seekable, true),
        (3 << 20, Layout::Seekable, true),
        ((16 << 20) + 1, Layout::Plain, false),
        (5000, Layout::Plain, false),
    ] {
        let mut data = prng_bytes(n, 5);
        data[n / 3..n / 2].fill(0);
        let png = encode(&data, layout);
        assert_eq!(is_seekable(&png), seekable, "{n} bytes, {layout}");
        check_round_trip(&png, &data, &format!("{n} bytes, {layout}"));
        let path = dir.path().join(format!("{n}_{layout}.rts.png"));
        std::fs::write(&path, &png).unwrap();
        let c = Container::open(&path).unwrap();
        assert_eq!(c.seekable.is_some(), seekable, "{n} bytes, {layout}");
    }
}

/// The CLI takes `--layout` and refuses anything else with a message.
#[test]
fn cli_layout_option() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    std::fs::write(&input, prng_bytes(10_000, 1)).unwrap();
    let out = dir.path().join("out.rts.png");
    run_ok([
        "encode".as_ref(),
        input.as_os_str(),
        out.as_os_str(),
        "--layout".as_ref(),
        "seekable".as_ref(),
    ]);
    assert!(is_seekable(&std::fs::read(&out).unwrap()));
    let o = run([
        "encode".as_ref(),
        input.as_os_str(),
        out.as_os_str(),
        "--force".as_ref(),
        "--layout".as_ref(),
        "sideways".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown layout 'sideways'"),
        "{}",
        describe(&o)
    );
}

/// What every layout writes is an ordinary PNG: `pngcheck` accepts it and Pillow with a Hilbert
/// walk reads the data back — the seekable layout's shared stored blocks, zero runs lending
/// their flush to the next stored block, and sparse pieces of the last tile included, and the
/// piece pipeline's plain images without an index.
#[test]
fn every_layout_reads_with_pillow_and_pngcheck() {
    let dir = tempfile::tempdir().unwrap();
    for (n, layout) in [
        (300_000usize, Layout::Seekable),
        (300_000, Layout::Auto),
        ((4 << 20) + 1, Layout::Auto),
        (700_000, Layout::Seekable),
    ] {
        let mut data = prng_bytes(n, 77);
        // A zero stretch inside the data: zero pieces with entries (seekable), zero runs.
        data[n / 5..n / 3].fill(0);
        let png = encode(&data, layout);
        let path = dir.path().join(format!("{n}_{layout}.rts.png"));
        std::fs::write(&path, &png).unwrap();
        assert_pngcheck(&path);
        let back = python_decode(&path, &dir.path().join("back.bin"));
        assert!(
            back == data,
            "{n} bytes, {layout}: Pillow decodes other bytes"
        );
    }
}
