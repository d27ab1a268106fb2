//! Files written by earlier versions of the writer keep decoding and reading at random.
//!
//! `tests/fixtures/layout-v1/` holds PNGs written by the `rtIX` version-1 layout before the
//! compressed payload and the padding changes of issue 11, each next to its original. A
//! writer change must never make one of them unreadable.

use std::fs;
use std::path::PathBuf;

use pixelrts::decode::{decode_to_writer, DecodeOptions};
use pixelrts::reader::{Reader, ReaderKind, ReaderOptions};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layout-v1")
}

fn fixtures() -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(fixture_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".rts.png") {
            let original = fs::read(fixture_dir().join(format!("{stem}.bin"))).unwrap();
            out.push((path, original));
        }
    }
    out.sort();
    assert_eq!(out.len(), 4, "fixtures missing from {:?}", fixture_dir());
    out
}

#[test]
fn layout_v1_fixtures_decode_with_verify() {
    for (png, original) in fixtures() {
        let mut out = Vec::new();
        let opts = DecodeOptions {
            verify: true,
            ..Default::default()
        };
        decode_to_writer(&png, &mut out, &opts).unwrap_or_else(|e| panic!("{png:?}: {e}"));
        assert!(out == original, "{png:?} decodes to different bytes");
    }
}

#[test]
fn layout_v1_fixtures_read_at_random() {
    for (png, original) in fixtures() {
        let reader = Reader::open(&png, &ReaderOptions::default()).unwrap();
        assert_eq!(reader.kind(), ReaderKind::Seekable, "{png:?}");
        assert_eq!(reader.len(), original.len() as u64);
        let n = original.len() as u64;
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ n;
        for _ in 0..200 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let offset = state % n;
            let len = ((state >> 32) % 70_000).min(n - offset) as usize + 1;
            let mut buf = vec![0u8; len];
            let got = reader.read_at(offset, &mut buf).unwrap();
            let want = &original[offset as usize..(offset as usize + len).min(n as usize)];
            assert_eq!(&buf[..got], want, "{png:?} at {offset}+{len}");
        }
    }
}
