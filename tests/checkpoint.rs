//! Tests of random access into plain PNG files through a checkpoint index.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pixelrts::reader::checkpoint::{CacheStatus, CheckpointError, CheckpointIndex};

/// xorshift64*: deterministic pseudo-random numbers without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

fn reference_pngs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(reference_dir())
        .expect("reference vectors")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".rts.png"))
        .collect();
    v.sort();
    v
}

/// Full decode with the `png` crate: (width, height, RGBA8 pixels).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let mut dec = png::Decoder::new(BufReader::new(File::open(path).unwrap()));
    dec.set_limits(png::Limits { bytes: 1 << 30 });
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0u8; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgba);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Pixels that are partly random and partly compressible (gradients, repeats, runs), so
/// that the encoder's adaptive filtering picks all five filter types.
fn test_pixels(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let bpr = w as usize * 4;
    let mut px = vec![0u8; bpr * h as usize];
    for y in 0..h as usize {
        let kind = (y / 7) % 5;
        for x in 0..w as usize {
            let p = &mut px[y * bpr + x * 4..][..4];
            let v = match kind {
                0 => [(x + y) as u8, (x * 2) as u8, y as u8, 255],
                1 => {
                    let r = rng.next();
                    [r as u8, (r >> 8) as u8, (r >> 16) as u8, (r >> 24) as u8]
                }
                2 => [(x / 16) as u8, (y / 3) as u8, 7, (x ^ y) as u8],
                3 => {
                    let r = rng.below(4) as u8;
                    [(x as u8).wrapping_add(r), (y as u8).wrapping_mul(3), r, 200]
                }
                _ => [
                    (x * x / 64) as u8,
                    ((x + 3 * y) / 5) as u8,
                    (y * y) as u8,
                    x as u8,
                ],
            };
            p.copy_from_slice(&v);
        }
    }
    px
}

/// Writes an RGBA PNG with adaptive filtering and zlib compression, in IDAT chunks of
/// `chunk` bytes (`None`: one IDAT chunk).
fn write_png(path: &Path, w: u32, h: u32, px: &[u8], chunk: Option<usize>) {
    let f = BufWriter::new(File::create(path).unwrap());
    let mut enc = png::Encoder::new(f, w, h);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_filter(png::Filter::Adaptive);
    enc.set_compression(png::Compression::Balanced);
    let mut writer = enc.write_header().unwrap();
    match chunk {
        None => writer.write_image_data(px).unwrap(),
        Some(size) => {
            let mut s = writer.stream_writer_with_size(size).unwrap();
            s.write_all(px).unwrap();
            s.finish().unwrap();
        }
    }
    writer.finish().unwrap();
}

/// Compares `read_rows` of `n` random row ranges (and the first and last rows) against the
/// full decode.
fn check_random_reads(idx: &CheckpointIndex, file: &File, pixels: &[u8], n: usize, seed: u64) {
    let h = idx.height() as u64;
    let bpr = idx.row_bytes();
    let mut rng = Rng(seed);
    let mut ranges = vec![(0, 1), (h - 1, 1), (0, h)];
    for _ in 0..n {
        let first = rng.below(h);
        let max = if rng.below(4) == 0 { h } else { 8 };
        let rows = 1 + rng.below((h - first).min(max));
        ranges.push((first, rows));
    }
    for (first, rows) in ranges {
        let mut out = vec![0xAAu8; rows as usize * bpr];
        idx.read_rows(file, first as u32, rows as u32, &mut out)
            .unwrap_or_else(|e| panic!("rows {first}+{rows}: {e}"));
        let want = &pixels[first as usize * bpr..(first + rows) as usize * bpr];
        assert!(out == want, "rows {first}+{rows} differ");
    }
}

/// Which PNG filter types the rows of `path` use (full inflate with flate2).
fn filter_types_used(path: &Path) -> [bool; 5] {
    let bytes = fs::read(path).unwrap();
    let mut z = Vec::new();
    let mut off = 8;
    let mut width = 0usize;
    while off + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        match &bytes[off + 4..off + 8] {
            b"IHDR" => {
                width = u32::from_be_bytes(bytes[off + 8..off + 12].try_into().unwrap()) as usize
            }
            b"IDAT" => z.extend_from_slice(&bytes[off + 8..off + 8 + len]),
            _ => {}
        }
        off += 12 + len;
    }
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&z[..]), &mut raw).unwrap();
    let mut used = [false; 5];
    for row in raw.chunks(1 + 4 * width) {
        used[row[0] as usize] = true;
    }
    used
}

#[test]
fn reference_vectors_random_rows() {
    let files = reference_pngs();
    assert!(files.len() >= 5, "reference vectors missing");
    let big = reference_dir().join("g_5MiB_prng.rts.png");
    // Pillow's adaptive filtering: None, Sub, Up and Paeth occur (Average does not, in these
    // vectors; the generated images below cover it).
    assert_eq!(filter_types_used(&big), [true, true, true, false, true]);
    for path in files {
        let (w, h, pixels) = decode_png(&path);
        for spacing in [1, 64 * 1024] {
            let idx = CheckpointIndex::build(&path, spacing).unwrap();
            assert_eq!((idx.width(), idx.height()), (w, h));
            let file = File::open(&path).unwrap();
            check_random_reads(&idx, &file, &pixels, 40, 7 + spacing);
        }
    }
}

#[test]
fn generated_png_many_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (1024, 1024);
    let pixels = test_pixels(w, h, 42);
    for (name, chunk) in [("chunks.png", Some(8192)), ("one.png", None)] {
        let path = dir.path().join(name);
        write_png(&path, w, h, &pixels, chunk);
        // The png crate's adaptive filter: Sub, Up, Average and Paeth.
        assert!(filter_types_used(&path)[1..].iter().all(|&u| u));
        let idx = CheckpointIndex::build(&path, 16 * 1024).unwrap();
        assert!(
            idx.checkpoints() > 20,
            "only {} checkpoints",
            idx.checkpoints()
        );
        let file = File::open(&path).unwrap();
        check_random_reads(&idx, &file, &pixels, 150, 99);
        // Single rows all over the image.
        let mut row = vec![0u8; idx.row_bytes()];
        for r in (0..h).step_by(7) {
            idx.read_rows(&file, r, 1, &mut row).unwrap();
            assert!(row[..] == pixels[r as usize * 4096..][..4096], "row {r}");
        }
    }
}

#[test]
fn many_threads_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (512, 512);
    let pixels = test_pixels(w, h, 5);
    let path = dir.path().join("t.png");
    write_png(&path, w, h, &pixels, Some(16 * 1024));
    let idx = CheckpointIndex::build(&path, 8 * 1024).unwrap();
    let file = File::open(&path).unwrap();
    std::thread::scope(|s| {
        for t in 0..6 {
            let (idx, file, pixels) = (&idx, &file, &pixels);
            s.spawn(move || check_random_reads(idx, file, pixels, 60, 1000 + t));
        }
    });
}

/// Offset of the first IDAT chunk's data and the length of all IDAT chunks.
fn idat_span(bytes: &[u8]) -> (usize, usize) {
    let mut off = 8;
    let (mut first, mut last) = (None, 0);
    while off + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        if &bytes[off + 4..off + 8] == b"IDAT" {
            first.get_or_insert(off + 8);
            last = off + 8 + len;
        }
        off += 12 + len;
    }
    (first.unwrap(), last)
}

/// Rewrites the CRC of the chunk whose data contains `pos` (so only inflate can notice).
fn fix_crcs(bytes: &mut [u8]) {
    let mut off = 8;
    while off + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        let crc = crc32fast::hash(&bytes[off + 4..off + 8 + len]);
        bytes[off + 8 + len..off + 12 + len].copy_from_slice(&crc.to_be_bytes());
        off += 12 + len;
    }
}

#[test]
fn corrupted_idat_byte_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (256, 256);
    let pixels = test_pixels(w, h, 11);
    let path = dir.path().join("c.png");
    write_png(&path, w, h, &pixels, Some(4096));
    let good = fs::read(&path).unwrap();
    let idx = CheckpointIndex::build(&path, 4096).unwrap();
    let (start, end) = idat_span(&good);
    let bpr = idx.row_bytes();
    let mut rng = Rng(3);
    for _ in 0..20 {
        let pos = start + 2 + rng.below((end - start - 6) as u64) as usize;
        let mut bad = good.clone();
        bad[pos] ^= 1 << rng.below(8);
        // 1. Indexing the damaged file fails (chunk CRC, or with fixed CRCs, inflate,
        //    filter or Adler-32 checks), never succeeds with wrong data.
        let bad_path = dir.path().join("bad.png");
        fs::write(&bad_path, &bad).unwrap();
        assert!(CheckpointIndex::build(&bad_path, 4096).is_err());
        let mut fixed = bad.clone();
        fix_crcs(&mut fixed);
        if fixed.as_slice() != bad.as_slice() {
            fs::write(&bad_path, &fixed).unwrap();
            let err = CheckpointIndex::build(&bad_path, 4096).unwrap_err();
            assert!(err.to_string().contains("bad.png"), "{err}");
        }
        // 2. The file damaged after indexing: every read either errs or is right.
        let file = File::open(&bad_path).unwrap();
        let mut errors = 0;
        for first in (0..h).step_by(17) {
            let mut out = vec![0u8; 16 * bpr];
            let rows = 16.min(h - first);
            match idx.read_rows(&file, first, rows, &mut out[..rows as usize * bpr]) {
                Ok(()) => assert!(
                    out[..rows as usize * bpr]
                        == pixels[first as usize * bpr..][..rows as usize * bpr],
                    "wrong bytes served"
                ),
                Err(_) => errors += 1,
            }
        }
        assert!(errors > 0);
    }
}

#[test]
fn truncated_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (128, 128);
    let pixels = test_pixels(w, h, 12);
    let path = dir.path().join("t.png");
    write_png(&path, w, h, &pixels, Some(2048));
    let good = fs::read(&path).unwrap();
    let idx = CheckpointIndex::build(&path, 2048).unwrap();
    for cut in [
        good.len() - 1,
        good.len() - 12,
        good.len() / 2,
        40,
        20,
        7,
        0,
    ] {
        let p = dir.path().join("cut.png");
        fs::write(&p, &good[..cut]).unwrap();
        let err = CheckpointIndex::build(&p, 2048).unwrap_err();
        assert!(err.to_string().contains("cut.png"), "{err}");
        // Reads through an old index of the whole file fail too, where they touch the cut.
        let file = File::open(&p).unwrap();
        let mut out = vec![0u8; idx.row_bytes() * h as usize];
        if cut < good.len() - 16 {
            assert!(idx.read_rows(&file, 0, h, &mut out).is_err());
        }
    }
    // A zlib stream cut short inside well-formed chunks.
    let (start, end) = idat_span(&good);
    let mut short = good[..start - 8].to_vec();
    let keep = (end - start) / 2;
    short.extend_from_slice(&(keep as u32).to_be_bytes());
    short.extend_from_slice(b"IDAT");
    let mut chunk_data = Vec::new();
    // Concatenate the IDAT data of all chunks, keep the first half.
    let mut off = 8;
    while off + 12 <= good.len() {
        let len = u32::from_be_bytes(good[off..off + 4].try_into().unwrap()) as usize;
        if &good[off + 4..off + 8] == b"IDAT" {
            chunk_data.extend_from_slice(&good[off + 8..off + 8 + len]);
        }
        off += 12 + len;
    }
    short.extend_from_slice(&chunk_data[..keep]);
    short.extend_from_slice(
        &crc32fast::hash(&[b"IDAT".as_slice(), &chunk_data[..keep]].concat()).to_be_bytes(),
    );
    short.extend_from_slice(&good[good.len() - 12..]);
    let p = dir.path().join("short.png");
    fs::write(&p, &short).unwrap();
    match CheckpointIndex::build(&p, 2048) {
        Err(CheckpointError::ShortData { got, expected, .. }) => {
            assert!(got < expected);
        }
        other => panic!("expected ShortData, got {other:?}"),
    }
}

/// Minimal PNG writer for hostile headers.
fn raw_png(ihdr: [u8; 13], idat: &[u8]) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, t: &[u8; 4], d: &[u8]) {
        out.extend_from_slice(&(d.len() as u32).to_be_bytes());
        out.extend_from_slice(t);
        out.extend_from_slice(d);
        out.extend_from_slice(&crc32fast::hash(&[t.as_slice(), d].concat()).to_be_bytes());
    }
    let mut out = vec![137, 80, 78, 71, 13, 10, 26, 10];
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn ihdr(w: u32, h: u32, depth: u8, color: u8, interlace: u8) -> [u8; 13] {
    let mut d = [0u8; 13];
    d[..4].copy_from_slice(&w.to_be_bytes());
    d[4..8].copy_from_slice(&h.to_be_bytes());
    d[8] = depth;
    d[9] = color;
    d[12] = interlace;
    d
}

#[test]
fn hostile_headers_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.png");
    let zeros = {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; 1 << 20]).unwrap();
        e.finish().unwrap()
    };
    let cases: Vec<([u8; 13], &str)> = vec![
        (ihdr(0x7fff_ffff, 0x7fff_ffff, 8, 6, 0), "too wide"),
        (ihdr(1 << 20, 0x7fff_ffff, 8, 6, 0), "IDAT data ends"),
        (ihdr(0, 4, 8, 6, 0), "malformed"),
        (ihdr(0x8000_0000, 4, 8, 6, 0), "malformed"),
        (ihdr(4, 4, 8, 2, 0), "colour type 2"),
        (ihdr(4, 4, 16, 6, 0), "bit depth 16"),
        (ihdr(4, 4, 8, 6, 1), "interlaced"),
    ];
    for (h, what) in cases {
        fs::write(&p, raw_png(h, &zeros)).unwrap();
        let t = Instant::now();
        let err = CheckpointIndex::build(&p, 1 << 20).unwrap_err().to_string();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(err.contains(what) && err.contains("h.png"), "{what}: {err}");
    }
    // More data than the header allows.
    fs::write(&p, raw_png(ihdr(16, 16, 8, 6, 0), &zeros)).unwrap();
    let err = CheckpointIndex::build(&p, 1 << 20).unwrap_err().to_string();
    assert!(err.contains("more than"), "{err}");
    // Bad filter type (all bytes 5).
    let fives = {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&[5u8; 17 * 4]).unwrap();
        e.finish().unwrap()
    };
    fs::write(&p, raw_png(ihdr(4, 4, 8, 6, 0), &fives)).unwrap();
    let err = CheckpointIndex::build(&p, 1 << 20).unwrap_err().to_string();
    assert!(err.contains("filter type 5"), "{err}");
    // Not a PNG at all.
    fs::write(&p, b"hello, world, this is not a PNG").unwrap();
    let err = CheckpointIndex::build(&p, 1 << 20).unwrap_err().to_string();
    assert!(err.contains("not a valid PNG"), "{err}");
}

#[test]
fn out_of_range_and_buffer_size() {
    let path = reference_dir().join("c_1000_prng.rts.png");
    let idx = CheckpointIndex::build(&path, 1024).unwrap();
    let file = File::open(&path).unwrap();
    let bpr = idx.row_bytes();
    let h = idx.height();
    let mut out = vec![0u8; bpr];
    assert!(matches!(
        idx.read_rows(&file, h, 1, &mut out),
        Err(CheckpointError::RowRange { .. })
    ));
    assert!(matches!(
        idx.read_rows(&file, 0, 2, &mut out),
        Err(CheckpointError::BufferSize { .. })
    ));
    idx.read_rows(&file, 0, 0, &mut []).unwrap();
}

#[test]
fn cache_roundtrip_stale_and_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (w, h) = (256, 256);
    let pixels = test_pixels(w, h, 77);
    let path = dir.path().join("img.png");
    write_png(&path, w, h, &pixels, Some(8192));

    let (idx, st) = CheckpointIndex::load_or_build(&path, Some(&cache), 8192).unwrap();
    assert_eq!(st, CacheStatus::Built);
    let cache_file = cache.join(idx.cache_file_name());
    assert!(cache_file.exists());
    let (idx2, st) = CheckpointIndex::load_or_build(&path, Some(&cache), 8192).unwrap();
    assert_eq!(st, CacheStatus::Loaded);
    assert_eq!(idx2.checkpoints(), idx.checkpoints());
    let file = File::open(&path).unwrap();
    check_random_reads(&idx2, &file, &pixels, 50, 1);

    // Corrupted cache file: detected (CRC) and rebuilt, then loadable again.
    let mut bytes = fs::read(&cache_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&cache_file, &bytes).unwrap();
    let (_, st) = CheckpointIndex::load_or_build(&path, Some(&cache), 8192).unwrap();
    assert!(
        matches!(st, CacheStatus::Rebuilt(ref r) if r.contains("CRC")),
        "{st:?}"
    );
    let (_, st) = CheckpointIndex::load_or_build(&path, Some(&cache), 8192).unwrap();
    assert_eq!(st, CacheStatus::Loaded);
    // Truncated and garbage cache files.
    for junk in [&bytes[..10], b"PXRTSCKP\x02\0\0\0garbage".as_slice()] {
        fs::write(&cache_file, junk).unwrap();
        let (_, st) = CheckpointIndex::load_or_build(&path, Some(&cache), 8192).unwrap();
        assert!(matches!(st, CacheStatus::Rebuilt(_)), "{st:?}");
    }

    // The file changes after indexing, same size (stored deflate blocks: the size depends
    // only on the dimensions): a different cache key, so the old index is never used; and
    // an old index placed under the new key is rejected as stale.
    let stored = dir.path().join("stored.png");
    write_stored_png(&stored, w, h, &pixels);
    let (old, st) = CheckpointIndex::load_or_build(&stored, Some(&cache), 8192).unwrap();
    assert_eq!(st, CacheStatus::Built);
    let old_index = fs::read(cache.join(old.cache_file_name())).unwrap();
    let old_len = fs::metadata(&stored).unwrap().len();
    let pixels2 = test_pixels(w, h, 78);
    write_stored_png(&stored, w, h, &pixels2);
    assert_eq!(fs::metadata(&stored).unwrap().len(), old_len);
    let (new, st) = CheckpointIndex::load_or_build(&stored, Some(&cache), 8192).unwrap();
    assert_eq!(st, CacheStatus::Built);
    assert_ne!(new.cache_file_name(), old.cache_file_name());
    let file = File::open(&stored).unwrap();
    check_random_reads(&new, &file, &pixels2, 50, 2);
    // The old index under the new key: stale, rebuilt.
    fs::write(cache.join(new.cache_file_name()), &old_index).unwrap();
    let (idx4, st) = CheckpointIndex::load_or_build(&stored, Some(&cache), 8192).unwrap();
    assert!(
        matches!(st, CacheStatus::Rebuilt(ref r) if r.contains("stale")),
        "{st:?}"
    );
    check_random_reads(&idx4, &file, &pixels2, 50, 3);
    // The old in-memory index on the changed file: errors, never old or wrong data.
    let mut out = vec![0u8; old.row_bytes() * h as usize];
    assert!(old.read_rows(&file, 0, h, &mut out).is_err());
}

/// An RGBA PNG of stored deflate blocks (its size depends only on the dimensions).
fn write_stored_png(path: &Path, w: u32, h: u32, px: &[u8]) {
    let f = BufWriter::new(File::create(path).unwrap());
    let mut enc = png::Encoder::new(f, w, h);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::NoCompression);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(px).unwrap();
    writer.finish().unwrap();
}

#[test]
fn changed_middle_with_restored_mtime_is_caught_on_read() {
    // Same size, same inode, same mtime, same first and last 64 KiB: the cache key matches
    // and the old index is loaded, but the per-block CRCs of the index catch the change.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (w, h) = (256, 512);
    let pixels = test_pixels(w, h, 31);
    let path = dir.path().join("m.png");
    write_stored_png(&path, w, h, &pixels);
    let (idx, _) = CheckpointIndex::load_or_build(&path, Some(&cache), 8192).unwrap();
    let meta = fs::metadata(&path).unwrap();
    let mid = meta.len() / 2;
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut b = [0u8; 1];
    File::open(&path)
        .unwrap()
        .read_exact_at(&mut b, mid)
        .unwrap();
    f.write_all_at(&[b[0] ^ 0x55], mid).unwrap();
    drop(f);
    set_mtime(&path, &meta);
    let (idx2, st) = CheckpointIndex::load_or_build(&path, Some(&cache), 8192).unwrap();
    assert_eq!(st, CacheStatus::Loaded);
    assert_eq!(idx2.cache_file_name(), idx.cache_file_name());
    let file = File::open(&path).unwrap();
    let mut out = vec![0u8; idx2.row_bytes() * h as usize];
    let err = idx2.read_rows(&file, 0, h, &mut out).unwrap_err();
    assert!(matches!(err, CheckpointError::DataChanged { .. }), "{err}");
    // Rows before the damaged block still read correctly.
    let bpr = idx2.row_bytes();
    idx2.read_rows(&file, 0, 4, &mut out[..4 * bpr]).unwrap();
    assert!(out[..4 * bpr] == pixels[..4 * bpr]);
}

fn set_mtime(path: &Path, meta: &fs::Metadata) {
    use std::os::unix::fs::MetadataExt;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec(),
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    // SAFETY: valid NUL-terminated path and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) };
    assert_eq!(r, 0);
}

#[test]
fn damaged_file_after_indexing_with_same_metadata() {
    // A byte flips inside IDAT data but the file keeps its size: the per-block CRCs of the
    // index catch it on read.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.png");
    let (w, h) = (256, 256);
    let pixels = test_pixels(w, h, 21);
    write_png(&path, w, h, &pixels, None);
    let idx = CheckpointIndex::build(&path, 4096).unwrap();
    let bytes = fs::read(&path).unwrap();
    let (start, end) = idat_span(&bytes);
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let pos = (start + end) / 2;
    f.write_all_at(&[bytes[pos] ^ 0x10], pos as u64).unwrap();
    let file = File::open(&path).unwrap();
    let mut out = vec![0u8; idx.row_bytes() * h as usize];
    let err = idx.read_rows(&file, 0, h, &mut out).unwrap_err();
    assert!(matches!(err, CheckpointError::DataChanged { .. }), "{err}");
    assert!(err.to_string().contains("d.png"));
}
