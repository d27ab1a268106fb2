//! Compressed payloads (issue 11): the pixels hold a zlib stream of the input in segments, with
//! the reference's `compression` metadata, read at random through the `rtZX` segment index; and
//! the reference's own compressed files (one zlib stream, or a zstd frame) decode and read.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use pixelrts::cache::TileCache;
use pixelrts::decode::{decode_to_writer, DecodeOptions};
use pixelrts::encode::compressed::CompressMode;
use pixelrts::encode::{encode_file, EncodeOptions, Layout};
use pixelrts::reader::{Reader, ReaderOptions};
use proptest::prelude::*;
use serde_json::Value;

/// Compressible content: text with some structure, binary-looking runs and zeros.
fn content(n: usize, seed: u64) -> Vec<u8> {
    let words = [
        "kernel ",
        "module ",
        "init ",
        "0x7f454c46 ",
        "lib.so ",
        "\n",
        "error: ",
        "path/to/",
    ];
    let mut out = Vec::with_capacity(n);
    let mut x = seed | 1;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 7 {
            0 => out.extend(std::iter::repeat_n(0u8, (x >> 8) as usize % 300)),
            1 => out.extend((0..(x >> 8) % 64).map(|i| (x >> (i % 56)) as u8)),
            _ => out.extend_from_slice(words[(x >> 12) as usize % words.len()].as_bytes()),
        }
    }
    out.truncate(n);
    out
}

/// A compressed payload in the seekable layout (segments read straight from raw pieces).
fn encode_compressed(dir: &Path, name: &str, data: &[u8], segment_size: u32) -> PathBuf {
    encode_compressed_as(dir, name, data, segment_size, Layout::Seekable)
}

fn encode_compressed_as(
    dir: &Path,
    name: &str,
    data: &[u8],
    segment_size: u32,
    layout: Layout,
) -> PathBuf {
    let input = dir.join(name);
    fs::write(&input, data).unwrap();
    let png = dir.join(format!("{name}.rts.png"));
    let opts = EncodeOptions {
        layout,
        compress: CompressMode::Zlib,
        segment_size,
        sidecar: false,
        overwrite: true,
        ..Default::default()
    };
    encode_file(&input, &png, &opts).unwrap();
    png
}

fn decode(png: &Path) -> pixelrts::Result<Vec<u8>> {
    let mut out = Vec::new();
    let opts = DecodeOptions {
        verify: true,
        ..Default::default()
    };
    decode_to_writer(png, &mut out, &opts)?;
    Ok(out)
}

fn reader(png: &Path) -> Reader {
    reader_with_disk_cache(png, None)
}

/// A reader of its own (a fresh memory cache), with `disk_cache`.
fn reader_with_disk_cache(
    png: &Path,
    disk_cache: Option<std::sync::Arc<pixelrts::reader::disk_cache::DiskCache>>,
) -> Reader {
    let opts = ReaderOptions {
        cache: TileCache::shared(64 << 20),
        checkpoint_dir: Some(png.parent().unwrap().join("checkpoints")),
        disk_cache,
    };
    Reader::open(png, &opts).unwrap()
}

fn check_ranges(r: &Reader, data: &[u8], seed: u64) {
    let n = data.len() as u64;
    let mut x = seed | 1;
    for _ in 0..100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = x % n.max(1);
        let len = ((x >> 33) % 300_000) as usize + 1;
        let mut buf = vec![0u8; len];
        let got = r.read_at(offset, &mut buf).unwrap();
        let want = &data[offset as usize..(offset as usize + len).min(data.len())];
        assert_eq!(got, want.len());
        assert!(&buf[..got] == want, "range {offset}+{len} differs");
    }
}

/// Rewrites one chunk of a PNG (CRC recomputed), so that a lie reaches the decoder.
fn rewrite_chunk(png: &[u8], kind: &[u8; 4], f: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = PngBuilder::new();
    for mut c in png_chunks(png).unwrap() {
        if &c.kind == kind {
            f(&mut c.data);
        }
        b = b.chunk(&c.kind, &c.data);
    }
    b.bytes
}

fn rewrite_metadata(png: &[u8], f: impl Fn(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    rewrite_chunk(png, b"tEXt", |d| {
        let nul = d.iter().position(|&b| b == 0).unwrap();
        let json = &d[nul + 1 + "PixelRTS".len()..];
        let mut m: serde_json::Map<String, Value> = serde_json::from_slice(json).unwrap();
        f(&mut m);
        let mut out = d[..nul + 1].to_vec();
        out.extend_from_slice(b"PixelRTS");
        out.extend_from_slice(serde_json::to_string(&m).unwrap().as_bytes());
        *d = out;
    })
}

#[test]
fn round_trips_at_segment_and_tile_edges() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 4096u32;
    let s = seg as usize;
    // A tile of the payload is 256 KiB; these sizes cross segment counts and payload tiles.
    for n in [
        1,
        2,
        s - 1,
        s,
        s + 1,
        3 * s,
        3 * s + 7,
        65_536,
        262_143,
        262_144,
        262_145,
        1_500_000,
    ] {
        let data = content(n, n as u64);
        // Plain (through a checkpoint pass) as `auto` writes small images, and seekable.
        let plain = encode_compressed_as(dir.path(), &format!("p{n}"), &data, seg, Layout::Plain);
        assert!(decode(&plain).unwrap() == data, "decode plain n={n}");
        check_ranges(&reader(&plain), &data, n as u64);
        let png = encode_compressed(dir.path(), &format!("c{n}"), &data, seg);
        let meta = png_metadata(&fs::read(&png).unwrap()).unwrap();
        let c = &meta["compression"];
        assert_eq!(c["type"], "zlib", "n={n}");
        assert_eq!(c["original_size"], n as u64);
        assert_eq!(meta["data_size"], n as u64);
        assert_eq!(c["compressed_size"], meta["encoded_size"]);
        let keys: Vec<&str> = meta.keys().map(String::as_str).collect();
        let at = keys.iter().position(|k| *k == "data_hash").unwrap();
        assert_eq!(
            &keys[at..],
            ["data_hash", "data_size", "compression", "encoded_size"],
            "reference key order"
        );
        assert!(decode(&png).unwrap() == data, "decode n={n}");
        let r = reader(&png);
        assert!(r.is_compressed());
        assert_eq!(r.len(), n as u64);
        check_ranges(&r, &data, n as u64);
        let mut all = vec![0u8; n];
        r.read_exact_at(0, &mut all).unwrap();
        assert!(all == data, "whole read n={n}");
    }
}

#[test]
fn default_segments_round_trip_and_auto_decides() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(3_000_000, 5);
    let input = dir.path().join("text");
    fs::write(&input, &data).unwrap();
    let png = dir.path().join("text.rts.png");
    encode_file(&input, &png, &EncodeOptions::default()).unwrap();
    let bytes = fs::read(&png).unwrap();
    assert!(
        png_metadata(&bytes).unwrap().contains_key("compression"),
        "auto compresses text"
    );
    assert!(bytes.len() < data.len() / 3, "{} bytes", bytes.len());
    assert!(decode(&png).unwrap() == data);
    check_ranges(&reader(&png), &data, 9);

    let random = prng_bytes(1_000_000, 3);
    fs::write(&input, &random).unwrap();
    let opts = EncodeOptions {
        overwrite: true,
        ..Default::default()
    };
    encode_file(&input, &png, &opts).unwrap();
    let bytes = fs::read(&png).unwrap();
    assert!(
        !png_metadata(&bytes).unwrap().contains_key("compression"),
        "auto leaves random data raw"
    );
    // `none` keeps pixels = bytes even for text.
    fs::write(&input, &data).unwrap();
    let opts = EncodeOptions {
        overwrite: true,
        compress: CompressMode::None,
        ..Default::default()
    };
    encode_file(&input, &png, &opts).unwrap();
    let bytes = fs::read(&png).unwrap();
    assert!(!png_metadata(&bytes).unwrap().contains_key("compression"));
    assert!(independent_rust_decode(&bytes).unwrap() == data);
}

#[test]
fn reference_way_of_decoding_reads_ours() {
    // Pillow + Hilbert walk + zlib.decompress of encoded_size bytes (tests/independent_decode.py),
    // and the png crate + Hilbert walk + flate2 here.
    let dir = tempfile::tempdir().unwrap();
    for (n, seg) in [(100_000usize, 4096u32), (700_000, 256 << 10)] {
        let data = content(n, 77);
        let png = encode_compressed(dir.path(), &format!("r{n}"), &data, seg);
        let out = dir.path().join(format!("r{n}.py"));
        assert!(python_decode(&png, &out) == data, "python n={n}");
        let bytes = fs::read(&png).unwrap();
        let meta = png_metadata(&bytes).unwrap();
        let decoded = png_decode(&bytes).unwrap();
        let grid = meta["grid_size"].as_u64().unwrap();
        let encoded = meta["encoded_size"].as_u64().unwrap() as usize;
        let stream = hilbert_gather(&decoded.rgba, grid, encoded);
        let mut inflated = Vec::new();
        use std::io::Read;
        flate2::read::ZlibDecoder::new(&stream[..])
            .read_to_end(&mut inflated)
            .unwrap();
        assert!(inflated == data, "flate2 n={n}");
        if pngcheck_available() {
            assert_pngcheck(&png);
        }
    }
}

#[test]
fn reference_compressed_files_decode_and_read_at_random() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(400_000, 11);
    let zstd =
        ruzstd::encoding::compress_to_vec(&data[..], ruzstd::encoding::CompressionLevel::Fastest);
    for (name, stream, kind) in [("z", zlib(&data), "zlib"), ("s", zstd, "zstd-h5")] {
        let png = dir.path().join(format!("{name}.rts.png"));
        fs::write(&png, reference_compressed(&data, &stream, kind)).unwrap();
        assert!(decode(&png).unwrap() == data, "{kind} decodes");
        let r = reader(&png);
        assert!(r.is_compressed());
        check_ranges(&r, &data, 4);
    }
}

#[test]
fn corrupted_segment_fails_only_its_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(200_000, 21);
    let png = encode_compressed(dir.path(), "seg", &data, 4096);
    let bytes = fs::read(&png).unwrap();
    // Segment 3's CRC is wrong (chunk CRC fixed up, so only the segment check can catch it).
    let bad = rewrite_chunk(&bytes, b"rtZX", |d| {
        let count = u64::from_be_bytes(d[32..40].try_into().unwrap()) as usize;
        let at = 48 + 8 * (count + 1) + 4 * 3;
        d[at] ^= 0x55;
    });
    let bad_png = dir.path().join("bad.rts.png");
    fs::write(&bad_png, bad).unwrap();
    let r = reader(&bad_png);
    let mut buf = vec![0u8; 100];
    let e = r.read_at(3 * 4096 + 10, &mut buf).unwrap_err().to_string();
    assert!(e.contains("bad.rts.png") && e.contains("segment 3"), "{e}");
    r.read_exact_at(2 * 4096, &mut buf).unwrap();
    assert_eq!(&buf[..], &data[2 * 4096..2 * 4096 + 100]);
    r.read_exact_at(4 * 4096, &mut buf).unwrap();
    assert_eq!(&buf[..], &data[4 * 4096..4 * 4096 + 100]);
    // A whole decode reads through the same segment checks: it refuses the file, naming it.
    let e = decode(&bad_png).unwrap_err().to_string();
    assert!(e.contains("bad.rts.png") && e.contains("segment 3"), "{e}");
}

/// Writes `png` to `to` with two bytes of each IDAT chunk's pixels flipped (a third and two
/// thirds in); returns where.
fn damage_pixels(png: &Path, to: &Path) -> Vec<usize> {
    let mut bytes = fs::read(png).unwrap();
    let mut at = 8;
    let mut flipped = Vec::new();
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if &bytes[at + 4..at + 8] == b"IDAT" {
            flipped.push(at + 8 + len / 3);
            flipped.push(at + 8 + 2 * len / 3);
        }
        at += 12 + len;
    }
    for &at in &flipped {
        bytes[at] ^= 0x5a;
    }
    fs::write(to, &bytes).unwrap();
    flipped
}

/// Bytes of the compressed stream come straight from raw pieces, checked only by the segment
/// CRC: a damaged byte in the pixels fails the segments it lies in, with the file named, and
/// every other segment still reads right.
#[test]
fn damaged_pixels_fail_only_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(1_500_000, 5);
    let png = encode_compressed(dir.path(), "dmg", &data, 4096);
    let bad_png = dir.path().join("damaged.rts.png");
    let idat = damage_pixels(&png, &bad_png);
    let r = reader(&bad_png);
    let (mut ok, mut bad) = (0, 0);
    for s in 0..data.len().div_ceil(4096) {
        let mut buf = vec![0u8; 4096];
        match r.read_at(s as u64 * 4096, &mut buf) {
            Ok(n) => {
                assert!(
                    buf[..n] == data[s * 4096..s * 4096 + n],
                    "segment {s}: wrong bytes"
                );
                ok += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("damaged.rts.png"), "{e}");
                bad += 1;
            }
        }
    }
    assert!(bad >= 1 && bad <= 2 * idat.len(), "{bad} segments failed");
    assert!(ok > 300, "{ok} segments read");
}

#[test]
fn lies_are_clean_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(100_000, 31);
    let png = encode_compressed(dir.path(), "lie", &data, 4096);
    let bytes = fs::read(&png).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "swapped segment offsets",
            rewrite_chunk(&bytes, b"rtZX", |d| {
                let a: [u8; 8] = d[56..64].try_into().unwrap();
                let b: [u8; 8] = d[64..72].try_into().unwrap();
                d[56..64].copy_from_slice(&b);
                d[64..72].copy_from_slice(&a);
            }),
        ),
        (
            "segment offset moved by one",
            rewrite_chunk(&bytes, b"rtZX", |d| d[63] += 1),
        ),
        (
            "wrong encoded_size",
            rewrite_metadata(&bytes, |m| {
                let e = m["encoded_size"].as_u64().unwrap();
                m.insert("encoded_size".into(), (e - 1).into());
            }),
        ),
        (
            "compression object lies about the original size",
            rewrite_metadata(&bytes, |m| {
                m["compression"]["original_size"] = 5.into();
            }),
        ),
        (
            "compression object lies about the compressed size",
            rewrite_metadata(&bytes, |m| {
                m["compression"]["compressed_size"] = 5.into();
            }),
        ),
    ];
    for (what, png_bytes) in cases {
        let p = dir.path().join("liar.rts.png");
        fs::write(&p, png_bytes).unwrap();
        let opened = Reader::open(&p, &ReaderOptions::default());
        let err = match opened {
            Err(e) => e.to_string(),
            Ok(r) => {
                // Detected at read time at the latest, and never as wrong bytes.
                let mut all = vec![0u8; data.len()];
                match r.read_exact_at(0, &mut all) {
                    Err(e) => e.to_string(),
                    Ok(()) => panic!("{what}: read succeeded"),
                }
            }
        };
        assert!(err.contains("liar.rts.png"), "{what}: {err}");
        // A whole decode either refuses the file or, where the lie is only in the index it
        // does not need (it inflates the one stream), returns the verified original.
        match decode(&p) {
            Err(e) => assert!(e.to_string().contains("liar.rts.png"), "{what}: {e}"),
            Ok(out) => assert!(out == data, "{what}: decode gave wrong bytes"),
        }
    }
}

#[test]
fn zlib_bomb_in_the_payload_stops_at_data_size() {
    let dir = tempfile::tempdir().unwrap();
    // 64 MiB of zeros in 65 KB of zlib, declared as 1000 bytes of data.
    let claimed = vec![0u8; 1000];
    let bomb = zlib(&vec![0u8; 64 << 20]);
    let png = dir.path().join("bomb.rts.png");
    fs::write(&png, reference_compressed(&claimed, &bomb, "zlib")).unwrap();
    let e = decode(&png).unwrap_err().to_string();
    assert!(e.contains("bomb.rts.png") && e.contains("data_size"), "{e}");
    let r = reader(&png);
    let e = r.read_at(0, &mut [0u8; 10]).unwrap_err().to_string();
    assert!(e.contains("bomb.rts.png"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn compressed_ranges_match(n in 1usize..400_000, seg_log2 in 9u32..17, seed in 1u64..1000,
                               picks in proptest::collection::vec((0.0f64..1.0, 1usize..70_000), 8)) {
        let dir = tempfile::tempdir().unwrap();
        let data = content(n, seed);
        let png = encode_compressed(dir.path(), "p", &data, 1 << seg_log2);
        let r = reader(&png);
        for (at, len) in picks {
            let offset = ((n as f64) * at) as u64;
            let mut buf = vec![0u8; len];
            let got = r.read_at(offset, &mut buf).unwrap();
            let end = (offset as usize + len).min(n);
            prop_assert_eq!(&buf[..got], &data[offset as usize..end]);
        }
    }
}

/// A read covering whole segments inflates them straight into the caller's buffer and does
/// not cache them: a sequential reader never asks again, and caching cost a fresh buffer and a
/// copy per segment (a quarter of the mount's CPU in a `cp`). A read of part of a segment
/// caches it, so the next small read of it inflates nothing, and a whole read of a cached
/// segment is served from the cache.
#[test]
fn whole_segments_go_straight_to_the_read_and_partial_ones_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(300_000, 13);
    let seg = 4096usize;
    let png = encode_compressed(dir.path(), "whole", &data, seg as u32);
    let r = reader(&png);
    let inflated = |r: &Reader| r.cache().stats().bytes_inflated;
    let read = |at: usize, len: usize| {
        let mut buf = vec![0u8; len];
        r.read_exact_at(at as u64, &mut buf).unwrap();
        assert!(buf[..] == data[at..at + len], "bytes {at}+{len}");
    };

    // A small read across a boundary, first: its two segments' stream bytes come straight
    // from the raw pieces, not through whole tiles (which would count as inflated too).
    read(20 * seg - 100, 200);
    assert_eq!(inflated(&r), 2 * seg as u64);
    // Segments 2..=5, whole, twice: inflated both times.
    for _ in 0..2 {
        let before = inflated(&r);
        read(2 * seg, 4 * seg);
        assert!(
            inflated(&r) - before >= 4 * seg as u64,
            "whole segments were served from the cache"
        );
    }
    // Part of segment 8, twice: inflated once.
    read(8 * seg + 100, 200);
    let before = inflated(&r);
    read(8 * seg + 1000, 200);
    assert_eq!(inflated(&r), before, "a cached segment was inflated again");
    // Segments 8..=9 whole: 8 from the cache, only 9 inflated.
    let before = inflated(&r);
    read(8 * seg, 2 * seg);
    assert_eq!(inflated(&r) - before, seg as u64);
    // The last, short segment whole, and the file's end.
    let last = (data.len() - 1) / seg * seg;
    read(last, data.len() - last);
    read(last - 10, data.len() - last + 10);
}

/// `-o disk_cache`: the segments small reads inflate are kept on disk, and a later reader (a
/// new mount, an empty memory cache) is served from there — each copy checked against the
/// open image's segment CRC-32, so a damaged copy is decoded from the PNG again (and
/// rewritten), never served.
#[test]
fn a_disk_cache_serves_later_readers_and_never_a_damaged_copy() {
    use pixelrts::reader::disk_cache::DiskCache;
    use std::os::unix::fs::{FileExt, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    let data = content(1_500_000, 9);
    let png = encode_compressed(dir.path(), "dc", &data, 4096);
    let cache_dir = dir.path().join("segments");
    let disk = DiskCache::open(&cache_dir, 1 << 30).unwrap();
    let open = |png: &Path| reader_with_disk_cache(png, Some(disk.clone()));
    let segments = data.len().div_ceil(4096);
    let read_each = |r: &Reader, len: usize| -> Vec<pixelrts::Result<Vec<u8>>> {
        (0..segments)
            .map(|s| {
                let mut buf = vec![0u8; len];
                r.read_at((s * 4096 + 4096 - len) as u64, &mut buf)
                    .map(|n| buf[..n].to_vec())
            })
            .collect()
    };
    let want = |s: usize, len: usize| {
        let a = (s * 4096 + 4096 - len).min(data.len());
        data[a..(a + len).min(data.len())].to_vec()
    };

    // Small reads of every segment fill one sparse file.
    for (s, got) in read_each(&open(&png), 100).into_iter().enumerate() {
        assert_eq!(got.unwrap(), want(s, 100), "segment {s}");
    }
    let files: Vec<_> = fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let on_disk = fs::metadata(&files[0]).unwrap().blocks() * 512;
    assert!(on_disk >= data.len() as u64 / 2, "{on_disk} bytes on disk");

    // The same image with damaged pixels: without the disk cache some segments fail; with
    // it every one reads right, in part and whole.
    let bad = dir.path().join("damaged.rts.png");
    damage_pixels(&png, &bad);
    let failed = read_each(&reader(&bad), 4096)
        .iter()
        .filter(|r| r.is_err())
        .count();
    assert!(failed >= 1, "the damage fails some segments");
    let through_disk = open(&bad);
    for len in [100, 4096] {
        for (s, got) in read_each(&through_disk, len).into_iter().enumerate() {
            assert_eq!(got.unwrap(), want(s, len), "segment {s}, {len} bytes");
        }
    }

    // A damaged copy on disk is not served: the intact image decodes it again, and the copy
    // is rewritten.
    let seg_file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&files[0])
        .unwrap();
    seg_file.write_all_at(&[0xff; 16], 3 * 4096 + 10).unwrap();
    for (s, got) in read_each(&open(&png), 100).into_iter().enumerate() {
        assert_eq!(got.unwrap(), want(s, 100), "segment {s}");
    }
    let mut copy = vec![0u8; 4096];
    seg_file.read_exact_at(&mut copy, 3 * 4096).unwrap();
    assert!(
        copy == data[3 * 4096..4 * 4096],
        "the damaged copy was rewritten"
    );
    // Through the damaged image, that segment comes from disk again.
    let through_disk = open(&bad);
    for (s, got) in read_each(&through_disk, 4096).into_iter().enumerate() {
        assert_eq!(got.unwrap(), want(s, 4096), "segment {s}");
    }
}
