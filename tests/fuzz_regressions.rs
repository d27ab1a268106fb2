//! Findings of the fuzz targets (fuzz/, scripts/fuzz.sh), each pinned by a test named after it.
//! The inputs are in tests/fixtures/fuzz/ as the target saw them (chunk CRCs already fixed up
//! where the harness does that), and every one of them also goes through the property of
//! `reader_vs_decode`: when the verified decode succeeds, the reader returns the same bytes.
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use pixelrts::cache::TileCache;
use pixelrts::reader::{Reader, ReaderOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(name)
}

/// The reader_vs_decode property: Ok(Some(bytes)) when both agree on good data, Ok(None)
/// when both refuse, Err(reason) when they disagree.
fn decode_and_reader(png: &Path) -> Result<Option<Vec<u8>>, String> {
    let bytes = std::fs::read(png).unwrap();
    let decoded = pixelrts::decode::decode_to_vec(&bytes);
    let scratch = tempfile::tempdir().unwrap();
    let reader = Reader::open(
        png,
        &ReaderOptions {
            cache: Arc::new(TileCache::new(1 << 20)),
            checkpoint_dir: Some(scratch.path().to_path_buf()),
            disk_cache: None,
        },
    );
    let read = reader.and_then(|r| {
        let mut buf = vec![0xA5u8; r.len() as usize];
        let n = r.read_at(0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    });
    match (decoded, read) {
        (Ok(d), Ok(r)) if d == r => Ok(Some(d)),
        (Ok(_), Ok(_)) => Err("the reader and the verified decode return different bytes".into()),
        (Ok(_), Err(e)) => Err(format!("the decode verified, the reader failed: {e}")),
        // The reader may serve a damaged file's intact ranges; a full read must fail.
        (Err(e), Ok(_)) => Err(format!("the decode failed ({e}), the whole read succeeded")),
        (Err(_), Err(_)) => Ok(None),
    }
}

#[test]
fn decode_and_reader_agree_on_a_bad_crc_in_the_last_idat_chunk() {
    // A 4x4 plain PNG whose only IDAT chunk has a wrong CRC: the sequential decode stopped
    // after the last row, before the png crate reached the CRC, and verified the payload by
    // its hash; the reader (checkpoint index) checks every IDAT CRC and refused. Both refuse
    // now, naming the chunk.
    let png = fixture("decode_and_reader_agree_on_a_bad_crc_in_the_last_idat_chunk.rts.png");
    assert_eq!(decode_and_reader(&png), Ok(None));
    let out = tempfile::tempdir().unwrap();
    let r = run([
        "decode".as_ref(),
        png.as_os_str(),
        out.path().join("x").as_os_str(),
        "--verify".as_ref(),
    ]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("CRC mismatch in IDAT chunk") && err.contains(png.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn code_mode_ranges_leak_f0ff2578_round_trips_on_a_shared_pool() {
    // LeakSanitizer flagged this input in `code_mode_ranges`: each run built a rayon pool for
    // its encode (threads: Some(1)), whose thread's last frees came after the leak check. The
    // harness now shares one pool across runs, as the mount does (`EncodeOptions::pool`);
    // the input itself round-trips in code mode.
    use pixelrts::encode::{encode_file, EncodeOptions};
    let mut input = b"\0asm\x01\0\0\0".to_vec();
    input.extend_from_slice(&std::fs::read(fixture("code_mode_ranges_leak_f0ff2578.bin")).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (src, png) = (
        dir.path().join("code.wasm"),
        dir.path().join("code.rts.png"),
    );
    std::fs::write(&src, &input).unwrap();
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap(),
    );
    for _ in 0..3 {
        let opts = EncodeOptions {
            mode: pixelrts::Mode::Code,
            sidecar: false,
            overwrite: true,
            threads: Some(1),
            pool: Some(pool.clone()),
            ..Default::default()
        };
        encode_file(&src, &png, &opts).unwrap();
        assert_eq!(decode_and_reader(&png), Ok(Some(input.clone())));
    }
}

#[test]
fn every_fuzz_finding_keeps_decode_and_reader_in_agreement() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".rts.png") {
            if let Err(why) = decode_and_reader(&p) {
                panic!("{}: {why}", p.display());
            }
            n += 1;
        }
    }
    assert!(n >= 1, "no fixtures in {}", dir.display());
}
