//! `format::rewrite::rewrite_metadata`: only the metadata chunk changes, the file still decodes
//! (hash-verified), reads at random through the seekable index, and passes pngcheck.
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use pixelrts::decode::{decode_file, DecodeOptions};
use pixelrts::encode::{encode_to_vec, EncodeOptions};
use pixelrts::format::rewrite::rewrite_metadata;
use pixelrts::reader::{Reader, ReaderOptions};
use serde_json::{Map, Value};

fn set_attrs(m: &mut Map<String, Value>) {
    m.insert("file_mode".into(), 0o751.into());
    m.insert("file_mtime".into(), 1_500_000_000.into());
}

/// Chunks of a PNG with the metadata chunk's index.
fn chunks_and_meta(bytes: &[u8]) -> (Vec<Chunk>, usize) {
    let chunks = png_chunks(bytes).unwrap();
    let at = chunks
        .iter()
        .position(|c| &c.kind == b"tEXt" && c.data.starts_with(b"PixelRTS\0PixelRTS{"))
        .expect("metadata chunk");
    (chunks, at)
}

/// Checks the rewritten file against the original: every other chunk byte-identical and in
/// place, the metadata keys unchanged (same JSON text each) but the two attributes, whose
/// values are the new ones, and whose keys, if new, come right before `data_hash`.
fn check_rewrite(before: &[u8], after_path: &Path) {
    let after = fs::read(after_path).unwrap();
    let (old_chunks, old_at) = chunks_and_meta(before);
    let (new_chunks, new_at) = chunks_and_meta(&after);
    assert_eq!(old_at, new_at);
    assert_eq!(old_chunks.len(), new_chunks.len());
    for (i, (o, n)) in old_chunks.iter().zip(&new_chunks).enumerate() {
        if i != old_at {
            assert!(o.kind == n.kind && o.data == n.data, "chunk {i} changed");
        }
    }
    let old = png_metadata(before).unwrap();
    let new = png_metadata(&after).unwrap();
    assert_eq!(new["file_mode"], 0o751);
    assert_eq!(new["file_mtime"], 1_500_000_000);
    let json = |v: &Value| serde_json::to_string(v).unwrap();
    for (k, v) in &old {
        if k != "file_mode" && k != "file_mtime" {
            assert_eq!(json(&new[k]), json(v), "key {k}");
        }
    }
    let old_keys: Vec<&String> = old.keys().collect();
    let mut expected: Vec<&String> = Vec::new();
    for k in &old_keys {
        if k.as_str() == "data_hash" {
            for attr in ["file_mode", "file_mtime"] {
                if !old.contains_key(attr) {
                    expected.push(new.keys().find(|n| n.as_str() == attr).unwrap());
                }
            }
        }
        expected.push(k);
    }
    assert_eq!(new.keys().collect::<Vec<_>>(), expected, "key order");
    // The new text is what the project's ASCII writer makes of the map.
    let text = &new_chunks[new_at].data[b"PixelRTS\0PixelRTS".len()..];
    let want = pixelrts::format::metadata::to_ascii_json(&Value::Object(new.clone()), false);
    assert_eq!(text, want.as_bytes());
    assert_pngcheck(after_path);
}

fn decode_verified(png: &Path) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let opts = DecodeOptions {
        verify: true,
        ..Default::default()
    };
    decode_file(png, &out, &opts).unwrap();
    fs::read(out).unwrap()
}

/// Random ranges (deterministic) read through a fresh Reader match `data`.
fn check_random_reads(png: &Path, data: &[u8], checkpoints: &Path) {
    let reader = Reader::open(
        png,
        &ReaderOptions {
            checkpoint_dir: Some(checkpoints.to_path_buf()),
            disk_cache: None,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(reader.len(), data.len() as u64);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..200 {
        let start = (next() % data.len() as u64) as usize;
        let len = (next() % 70_000) as usize + 1;
        let mut buf = vec![0u8; len];
        let n = reader.read_at(start as u64, &mut buf).unwrap();
        let end = (start + len).min(data.len());
        assert_eq!(n, end - start);
        assert!(buf[..n] == data[start..end], "range {start}+{len}");
    }
}

#[test]
fn rewrite_seekable_file_changes_only_the_metadata_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let data = prng_bytes(3_000_000, 11);
    let mut user = Map::new();
    user.insert("name".into(), "café 🦀".into());
    user.insert("version".into(), "1.2".into());
    let opts = EncodeOptions {
        layout: pixelrts::encode::Layout::Seekable,
        metadata: user,
        sidecar: false,
        // Small tiles: many stripes, and IDAT chunks far behind the metadata.
        tile_side_log2: Some(6),
        ..Default::default()
    };
    let (png, _) = encode_to_vec(&data, &opts).unwrap();
    let path = dir.path().join("x.rts.png");
    fs::write(&path, &png).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();

    rewrite_metadata(&path, set_attrs).unwrap();
    check_rewrite(&png, &path);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert_eq!(decode_verified(&path), data);
    check_random_reads(&path, &data, dir.path());

    // Again: the keys exist now and keep their place; nothing else changes.
    let once = fs::read(&path).unwrap();
    rewrite_metadata(&path, |m| {
        m.insert("file_mtime".into(), 1_600_000_000.into());
    })
    .unwrap();
    let twice = fs::read(&path).unwrap();
    let (a, b) = (png_metadata(&once).unwrap(), png_metadata(&twice).unwrap());
    assert_eq!(b["file_mtime"], 1_600_000_000);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert_eq!(decode_verified(&path), data);
    // No temporary file left beside it.
    assert_eq!(list_dir(dir.path()), vec!["x.rts.png"]);
}

#[test]
fn rewrite_reference_vectors() {
    for (png, input) in [
        ("c_1000_prng.rts.png", "c_1000_prng.bin"),
        ("e_300000_prng.rts.png", "e_300000_prng.bin"),
        // Code mode: the base64 payload in the metadata chunk is carried over.
        ("f_add_wasm_code.rts.png", "f_add.wasm"),
        ("g_5MiB_prng.rts.png", "g_5MiB_prng.bin"),
        ("i_1000_prng_mmap.rts.png", "c_1000_prng.bin"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let original = fs::read(vectors_dir().join(png)).unwrap();
        let data = fs::read(vectors_dir().join(input)).unwrap();
        let path = dir.path().join(png);
        fs::write(&path, &original).unwrap();
        rewrite_metadata(&path, set_attrs).unwrap_or_else(|e| panic!("{png}: {e}"));
        check_rewrite(&original, &path);
        assert_eq!(decode_verified(&path), data, "{png}");
        check_random_reads(&path, &data, dir.path());
    }
}

#[test]
fn rewrite_refuses_without_changing_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = prng_bytes(5000, 3);
    let opts = EncodeOptions {
        layout: pixelrts::encode::Layout::Seekable,
        sidecar: false,
        ..Default::default()
    };
    let (png, _) = encode_to_vec(&data, &opts).unwrap();
    let path = dir.path().join("y.rts.png");
    fs::write(&path, &png).unwrap();
    // A key the format owns.
    let e = rewrite_metadata(&path, |m| {
        m.insert("data_hash".into(), "0".repeat(64).into());
    })
    .unwrap_err();
    assert!(e.to_string().contains("y.rts.png"), "{e}");
    assert!(e.to_string().contains("data_hash"), "{e}");
    assert_eq!(fs::read(&path).unwrap(), png);

    // A PNG whose metadata is only in a sidecar.
    let grid = expected_grid(data.len() as u64);
    let bare = PngBuilder::new()
        .ihdr(grid as u32, grid as u32, 8, 6)
        .idat(&zlib(&vec![0u8; (grid * (4 * grid + 1)) as usize]))
        .iend();
    let side = dir.path().join("z.rts.png");
    fs::write(&side, &bare).unwrap();
    fs::write(
        dir.path().join("z.rts.png.meta.json"),
        reference_metadata(grid, &data).to_string(),
    )
    .unwrap();
    let e = rewrite_metadata(&side, set_attrs).unwrap_err();
    assert!(e.to_string().contains("z.rts.png"), "{e}");
    assert!(e.to_string().contains("tEXt"), "{e}");
    assert_eq!(fs::read(&side).unwrap(), bare);

    // Not compact JSON: rewriting would change bytes of keys nobody asked to change.
    let spaced = PngBuilder::new()
        .ihdr(grid as u32, grid as u32, 8, 6)
        .chunk(
            b"tEXt",
            format!(
                "PixelRTS\0PixelRTS{}",
                serde_json::to_string_pretty(&reference_metadata(grid, &data)).unwrap()
            )
            .as_bytes(),
        )
        .idat(&zlib(&vec![0u8; (grid * (4 * grid + 1)) as usize]))
        .iend();
    let pretty = dir.path().join("p.rts.png");
    fs::write(&pretty, &spaced).unwrap();
    let e = rewrite_metadata(&pretty, set_attrs).unwrap_err();
    assert!(e.to_string().contains("p.rts.png"), "{e}");
    assert_eq!(fs::read(&pretty).unwrap(), spaced);
    assert_eq!(
        list_dir(dir.path()),
        vec!["p.rts.png", "y.rts.png", "z.rts.png", "z.rts.png.meta.json"]
    );
}
