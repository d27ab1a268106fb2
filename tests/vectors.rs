//! Reference vectors (tests/fixtures/reference, copied from ../shared/vectors/reference): every
//! `.rts.png` the reference wrote decodes with `--verify` to its input; our own encodings of the
//! same inputs are valid PNGs (pngcheck), hold the reference's pixels, and decode to the same
//! bytes with independent readers (Pillow via tests/independent_decode.py, and the png crate + a
//! Hilbert walk written here).
mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn manifest() -> Value {
    let text =
        std::fs::read_to_string(vectors_dir().join("manifest.json")).expect("read manifest.json");
    serde_json::from_str(&text).expect("parse manifest.json")
}

fn vector(id: &str) -> Value {
    manifest()["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no vector {id} in manifest"))
        .clone()
}

/// Decodes a reference vector with `--verify` into a temp dir and compares with its input.
fn check_reference_vector(id: &str) {
    let v = vector(id);
    let png = vectors_dir().join(v["output_png"].as_str().unwrap());
    let input = std::fs::read(vectors_dir().join(v["input"].as_str().unwrap())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("decoded.bin");

    run_ok([
        Path::new("decode").as_os_str(),
        png.as_os_str(),
        out.as_os_str(),
        "--verify".as_ref(),
    ]);
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), input.len(), "{id}: decoded length");
    assert!(
        got == input,
        "{id}: decoded bytes differ from {}",
        v["input"]
    );

    // To stdout as well.
    let o = run_ok([
        Path::new("decode").as_os_str(),
        png.as_os_str(),
        "-".as_ref(),
        "--verify".as_ref(),
    ]);
    assert!(
        o.stdout == input,
        "{id}: `decode - --verify` wrote different bytes to stdout"
    );

    // verify: exit 0.
    let o = run([Path::new("verify").as_os_str(), png.as_os_str()]);
    assert_eq!(o.status.code(), Some(0), "{id}: verify: {}", describe(&o));

    // info --json: metadata, seekable, grid size and data size.
    let o = run_ok([
        Path::new("info").as_os_str(),
        png.as_os_str(),
        "--json".as_ref(),
    ]);
    let info: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{id}: info --json is not JSON ({e}): {}", describe(&o)));
    for key in ["metadata", "seekable", "grid_size", "data_size"] {
        assert!(
            info.get(key).is_some(),
            "{id}: info --json lacks {key:?}: {info}"
        );
    }
    assert_eq!(info["grid_size"], v["grid_size"], "{id}: info grid_size");
    assert_eq!(info["data_size"], v["input_size"], "{id}: info data_size");
    assert_eq!(
        info["seekable"],
        Value::Bool(false),
        "{id}: a reference file has no index, so it is not seekable"
    );
    assert_eq!(
        info["metadata"]["data_hash"], v["input_sha256"],
        "{id}: info metadata.data_hash"
    );

    // The same file without any sidecar next to it still decodes: the PNG's text is the truth.
    let lone = tmp.path().join("lone.rts.png");
    std::fs::copy(&png, &lone).unwrap();
    let out2 = tmp.path().join("lone.bin");
    run_ok([
        Path::new("decode").as_os_str(),
        lone.as_os_str(),
        out2.as_os_str(),
        "--verify".as_ref(),
    ]);
    assert!(
        std::fs::read(&out2).unwrap() == input,
        "{id}: decode without sidecar differs"
    );

    // Default output name: INPUT without `.rts.png`.
    run_ok([Path::new("decode").as_os_str(), lone.as_os_str()]);
    let default_out = tmp.path().join("lone");
    assert!(
        default_out.exists(),
        "{id}: default output {} not written; dir has {:?}",
        default_out.display(),
        list_dir(tmp.path())
    );
    assert!(
        std::fs::read(&default_out).unwrap() == input,
        "{id}: default-output decode differs"
    );

    // Refuse to overwrite without --force, then overwrite with it.
    let o = run([Path::new("decode").as_os_str(), lone.as_os_str()]);
    assert!(
        !o.status.success() && o.status.code() != Some(101),
        "{id}: decode over an existing output without --force: {}",
        describe(&o)
    );
    run_ok([
        Path::new("decode").as_os_str(),
        lone.as_os_str(),
        "--force".as_ref(),
    ]);
}

macro_rules! reference_tests {
    ($($name:ident => $id:literal,)*) => {$(
        #[test]
        fn $name() {
            check_reference_vector($id);
        }
    )*};
}

reference_tests! {
    reference_a2_empty_code => "a2_empty_code",
    reference_b_one_byte => "b_one_byte",
    reference_c_1000_prng => "c_1000_prng",
    reference_d_65536_zeros => "d_65536_zeros",
    reference_e_300000_prng => "e_300000_prng",
    reference_f_add_wasm_code => "f_add_wasm_code",
    reference_g_5mib_prng => "g_5MiB_prng",
    reference_h_1000_prng_cli => "h_1000_prng_cli",
    reference_i_1000_prng_mmap_sidecar => "i_1000_prng_mmap",
}

#[test]
fn every_reference_png_is_covered() {
    let covered = [
        "a2_empty_code",
        "b_one_byte",
        "c_1000_prng",
        "d_65536_zeros",
        "e_300000_prng",
        "f_add_wasm_code",
        "g_5MiB_prng",
        "h_1000_prng_cli",
        "i_1000_prng_mmap",
    ];
    let m = manifest();
    for v in m["vectors"].as_array().unwrap() {
        if v["encode_ok"] == Value::Bool(true) {
            assert!(
                covered.contains(&v["id"].as_str().unwrap()),
                "vector {} has no test",
                v["id"]
            );
        }
    }
    for name in list_dir(&vectors_dir()) {
        if name.ends_with(".rts.png") {
            assert!(
                m["vectors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["output_png"] == name.as_str()),
                "{name} is not in the manifest"
            );
        }
    }
}

/// Encodes `input` with our CLI into `dir` and returns the PNG path.
fn our_encode(input: &Path, dir: &Path, extra: &[&str]) -> PathBuf {
    let name = input.file_name().unwrap().to_string_lossy().into_owned();
    let src = dir.join(&name);
    if !src.exists() {
        std::fs::copy(input, &src).unwrap();
    }
    let suffix = if extra.contains(&"code") {
        ".code.rts.png"
    } else {
        ".rts.png"
    };
    let out = dir.join(format!("{name}{suffix}"));
    let mut args: Vec<std::ffi::OsString> = vec!["encode".into(), src.into(), out.clone().into()];
    args.extend(extra.iter().map(|s| s.into()));
    run_ok(args);
    out
}

#[test]
fn code_mode_f_add_matches_reference_pixels() {
    let v = vector("f_add_wasm_code");
    let input_path = vectors_dir().join("f_add.wasm");
    let input = std::fs::read(&input_path).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ours = our_encode(&input_path, tmp.path(), &["--mode", "code"]);
    let ours_bytes = std::fs::read(&ours).unwrap();
    let reference = std::fs::read(vectors_dir().join(v["output_png"].as_str().unwrap())).unwrap();

    let a = png_decode(&ours_bytes).expect("decode our code-mode PNG");
    let b = png_decode(&reference).expect("decode reference PNG");
    assert_eq!((a.width, a.height), (b.width, b.height), "image size");
    assert_eq!(a.width as u64, v["grid_size"].as_u64().unwrap());
    assert!(
        a.rgba == b.rgba,
        "code-mode pixels differ:\n ours {:?}\n ref  {:?}",
        a.rgba,
        b.rgba
    );

    let ma = png_metadata(&ours_bytes).unwrap();
    let mb = png_metadata(&reference).unwrap();
    assert_eq!(ma["encoding_mode"], "RGBA-code");
    assert_eq!(ma["encoding"], mb["encoding"]);
    assert_eq!(ma["original_data_b64"], mb["original_data_b64"]);
    assert_eq!(ma["data_hash"], mb["data_hash"]);
    assert_eq!(ma["data_size"], mb["data_size"]);

    let out = tmp.path().join("back.wasm");
    run_ok([
        Path::new("decode").as_os_str(),
        ours.as_os_str(),
        out.as_os_str(),
        "--verify".as_ref(),
    ]);
    assert!(
        std::fs::read(&out).unwrap() == input,
        "code mode does not decode back to f_add.wasm"
    );

    assert_pngcheck(&ours);
    assert!(
        python_decode(&ours, &tmp.path().join("py.out")) == input,
        "Pillow decoder disagrees"
    );
    assert!(
        independent_rust_decode(&ours_bytes).unwrap() == input,
        "png-crate decoder disagrees"
    );
}

/// Our encoding of a reference input: valid PNG (pngcheck), same pixels as the reference's
/// file, metadata in the reference's key order, and three independent decoders agree.
fn check_our_encoding(input_name: &str, reference_png: Option<&str>, extra: &[&str]) {
    let input_path = vectors_dir().join(input_name);
    let input = std::fs::read(&input_path).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Pixels = bytes, as the reference's uncompressed files (compressed payloads: below).
    let mut extra = extra.to_vec();
    extra.extend(["--compress", "none"]);
    let ours = our_encode(&input_path, tmp.path(), &extra);
    let bytes = std::fs::read(&ours).unwrap();

    // Sidecar by default.
    let mut sidecar = ours.clone().into_os_string();
    sidecar.push(".meta.json");
    assert!(
        Path::new(&sidecar).exists(),
        "no sidecar {:?}; dir has {:?}",
        sidecar,
        list_dir(tmp.path())
    );

    assert_pngcheck(&ours);

    // Structure: IHDR first, RGBA8, non-interlaced, square power-of-two of the rule's size;
    // metadata before the first IDAT.
    let chunks = png_chunks(&bytes).expect("chunk structure and CRCs");
    assert_eq!(&chunks[0].kind, b"IHDR");
    let ihdr = &chunks[0].data;
    let w = u32::from_be_bytes(ihdr[0..4].try_into().unwrap()) as u64;
    let h = u32::from_be_bytes(ihdr[4..8].try_into().unwrap()) as u64;
    assert_eq!(
        (w, h),
        (
            expected_grid(input.len() as u64),
            expected_grid(input.len() as u64)
        ),
        "grid size"
    );
    assert_eq!(
        &ihdr[8..13],
        &[8, 6, 0, 0, 0],
        "bit depth 8, RGBA, no interlace"
    );
    let first_idat = chunks
        .iter()
        .position(|c| &c.kind == b"IDAT")
        .expect("IDAT");
    let meta_pos = chunks
        .iter()
        .position(|c| &c.kind == b"tEXt" && c.data.windows(9).any(|w| w == b"PixelRTS{"))
        .expect("PixelRTS tEXt chunk");
    assert!(
        meta_pos < first_idat,
        "metadata must precede the first IDAT"
    );
    assert_eq!(&chunks.last().unwrap().kind, b"IEND");

    let meta = png_metadata(&bytes).unwrap();
    let keys: Vec<&str> = meta.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        &keys[..7],
        &[
            "format",
            "format_version",
            "grid_size",
            "encoding",
            "offsets",
            "hashes",
            "encoding_mode"
        ],
        "metadata key order: {keys:?}"
    );
    let ih = keys
        .iter()
        .position(|k| *k == "data_hash")
        .expect("data_hash");
    let is = keys
        .iter()
        .position(|k| *k == "data_size")
        .expect("data_size");
    assert_eq!(is, ih + 1, "data_size follows data_hash: {keys:?}");
    assert_eq!(meta["format"], "PixelRTS-2.0");
    assert_eq!(meta["format_version"], 2);
    assert_eq!(meta["grid_size"], w);
    assert_eq!(meta["data_size"], input.len());
    let meta_text = String::from_utf8_lossy(&chunks[meta_pos].data).into_owned();
    assert!(meta_text.is_ascii(), "metadata must be ASCII");
    assert!(
        !meta_text.contains(": ") && !meta_text.contains(", "),
        "metadata must be compact JSON"
    );

    // Pixels identical to the reference's (pixels are reproducible, PNG bytes are not).
    if let Some(r) = reference_png {
        let ours_px = png_decode(&bytes).expect("png crate decodes our file");
        let ref_px = png_decode(&std::fs::read(vectors_dir().join(r)).unwrap()).unwrap();
        assert_eq!(
            (ours_px.width, ours_px.height),
            (ref_px.width, ref_px.height)
        );
        assert!(
            ours_px.rgba == ref_px.rgba,
            "pixels differ from the reference file {r}"
        );
    }

    // Three decoders agree: ours, Pillow, the png crate.
    let out = tmp.path().join("ours.out");
    run_ok([
        Path::new("decode").as_os_str(),
        ours.as_os_str(),
        out.as_os_str(),
        "--verify".as_ref(),
    ]);
    assert!(
        std::fs::read(&out).unwrap() == input,
        "pixelrts decode differs"
    );
    assert!(
        python_decode(&ours, &tmp.path().join("py.out")) == input,
        "Pillow decoder (independent_decode.py) differs"
    );
    assert!(
        independent_rust_decode(&bytes).expect("png crate decode") == input,
        "png crate + Hilbert walk differs"
    );

    // verify: 0.
    let o = run([Path::new("verify").as_os_str(), ours.as_os_str()]);
    assert_eq!(o.status.code(), Some(0), "verify: {}", describe(&o));
}

#[test]
fn ours_empty_standard() {
    // The reference cannot encode 0 bytes in standard mode; we must (FORMAT.md §4).
    check_our_encoding("a_empty.bin", None, &[]);
}

#[test]
fn ours_empty_code() {
    check_our_encoding(
        "a_empty.bin",
        Some("a2_empty_code.rts.png"),
        &["--mode", "code"],
    );
}

#[test]
fn ours_one_byte() {
    check_our_encoding("b_one_byte.bin", Some("b_one_byte.rts.png"), &[]);
}

#[test]
fn ours_1000_prng() {
    check_our_encoding("c_1000_prng.bin", Some("c_1000_prng.rts.png"), &[]);
}

#[test]
fn ours_65536_zeros() {
    check_our_encoding("d_65536_zeros.bin", Some("d_65536_zeros.rts.png"), &[]);
}

#[test]
fn ours_300000_prng() {
    check_our_encoding("e_300000_prng.bin", Some("e_300000_prng.rts.png"), &[]);
}

#[test]
fn ours_f_add_wasm_standard() {
    check_our_encoding("f_add.wasm", None, &[]);
}

#[test]
fn ours_f_add_wasm_code() {
    check_our_encoding(
        "f_add.wasm",
        Some("f_add_wasm_code.rts.png"),
        &["--mode", "code"],
    );
}

#[test]
fn ours_5mib_prng() {
    check_our_encoding("g_5MiB_prng.bin", Some("g_5MiB_prng.rts.png"), &[]);
}

#[test]
fn ours_5mib_prng_level0_threads1() {
    check_our_encoding(
        "g_5MiB_prng.bin",
        Some("g_5MiB_prng.rts.png"),
        &["--level", "0", "--threads", "1"],
    );
}

#[test]
fn ours_1000_prng_level9() {
    check_our_encoding(
        "c_1000_prng.bin",
        Some("c_1000_prng.rts.png"),
        &["--level", "9"],
    );
}

#[test]
fn independent_hilbert_matches_library() {
    // Check values from FORMAT.md, against both the test copy and the library.
    let order2 = [
        (0, 0),
        (1, 0),
        (1, 1),
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 3),
        (1, 2),
        (2, 2),
        (2, 3),
        (3, 3),
        (3, 2),
        (3, 1),
        (2, 1),
        (2, 0),
        (3, 0),
    ];
    for (d, &xy) in order2.iter().enumerate() {
        assert_eq!(d2xy(4, d as u64), xy);
        assert_eq!(pixelrts::format::hilbert::d2xy(4, d as u64), xy);
    }
    for (n, d, xy) in [
        (16, 64, (0, 8)),
        (16, 128, (8, 8)),
        (16, 255, (15, 0)),
        (1024, 12345, (62, 123)),
        (1024, 654321, (767, 802)),
        (2048, 1000000, (152, 784)),
    ] {
        assert_eq!(d2xy(n, d), xy, "n={n} d={d}");
        assert_eq!(
            pixelrts::format::hilbert::d2xy(n, d),
            xy,
            "library n={n} d={d}"
        );
    }
}

/// Issue 11: by default 64 KiB of zeros become a compressed payload of at most 1 KiB, which the
/// reference's way of decoding (Pillow, Hilbert walk, zlib.decompress) reads back.
#[test]
fn zeros_vector_is_compressed_to_at_most_1_kib_by_default() {
    let input_path = vectors_dir().join("d_65536_zeros.bin");
    let input = std::fs::read(&input_path).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ours = our_encode(&input_path, tmp.path(), &["--no-sidecar"]);
    let bytes = std::fs::read(&ours).unwrap();
    assert!(bytes.len() <= 1024, "{} bytes", bytes.len());
    assert!(png_metadata(&bytes).unwrap().contains_key("compression"));
    assert!(python_decode(&ours, &tmp.path().join("py.out")) == input);
    assert_pngcheck(&ours);
}
