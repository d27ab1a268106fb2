//! Random access through `pixelrts::reader::Reader`: our seekable files, the reference
//! vectors (plain PNGs through a checkpoint index), code mode; concurrency; corruption.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use pixelrts::cache::TileCache;
use pixelrts::encode::compressed::CompressMode;
use pixelrts::encode::{encode_to_writer, EncodeOptions};
use pixelrts::reader::checkpoint::CheckpointIndex;
use pixelrts::reader::{Reader, ReaderKind, ReaderOptions};
use pixelrts::Mode;
use proptest::prelude::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Half random, half compressible (runs and text), so pieces are both stored and deflated.
fn test_data(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let block = (rng.below(40_000) + 1) as usize;
        match rng.below(3) {
            0 => v.extend((0..block).map(|_| rng.next() as u8)),
            1 => v.extend(std::iter::repeat_n(rng.next() as u8, block)),
            _ => v.extend(b"PixelRTS random access ".iter().cycle().take(block)),
        }
    }
    v.truncate(n);
    v
}

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

fn encode_into(dir: &Path, name: &str, data: &[u8], opts: &EncodeOptions) -> PathBuf {
    let path = dir.join(name);
    let mut f = File::create(&path).unwrap();
    encode_to_writer(data, &mut f, opts).unwrap();
    path
}

struct Case {
    name: String,
    path: PathBuf,
    data: Vec<u8>,
}

struct Fixtures {
    _dir: tempfile::TempDir,
    ckpt: PathBuf,
    cases: Vec<Case>,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("ckpt");
        let mut cases = Vec::new();
        // Not 0: encoding an empty input in standard mode overflows in
        // `TileTables::place` (n - 2 with a 1-pixel tile; debug builds panic; code mode too). An empty
        // file is covered by the reference a2_empty_code.
        for (i, &n) in [1usize, 5000, 300_000, 2 << 20].iter().enumerate() {
            let data = test_data(n, 11 + i as u64);
            let name = format!("ours_{n}.rts.png");
            let path = encode_into(
                dir.path(),
                &name,
                &data,
                &EncodeOptions {
                    layout: pixelrts::encode::Layout::Seekable,
                    compress: CompressMode::None,
                    ..Default::default()
                },
            );
            cases.push(Case { name, path, data });
        }
        for (i, &n) in [5000usize, 300_000, 1 << 20, 2 << 20].iter().enumerate() {
            let data = test_data(n, 101 + i as u64);
            let name = format!("ours_t16_{n}.rts.png");
            let opts = EncodeOptions {
                layout: pixelrts::encode::Layout::Seekable,
                tile_side_log2: Some(4),
                compress: CompressMode::None,
                ..Default::default()
            };
            let path = encode_into(dir.path(), &name, &data, &opts);
            cases.push(Case { name, path, data });
        }
        // Zero stretches inside the data: their pieces have no bytes of their own, their index
        // entries point at the start of the zero run they joined (index v2).
        for (n, tile_log2) in [(1_000_000usize, Some(4u8)), (3 << 20, None)] {
            let mut data = test_data(n, 301);
            data[n / 4..n / 2].fill(0);
            data[n - n / 8..].fill(0);
            let name = format!("ours_holes_{n}.rts.png");
            let opts = EncodeOptions {
                layout: pixelrts::encode::Layout::Seekable,
                tile_side_log2: tile_log2,
                compress: CompressMode::None,
                ..Default::default()
            };
            let path = encode_into(dir.path(), &name, &data, &opts);
            cases.push(Case { name, path, data });
        }
        // What `encode` writes by default for small images: plain, read through a checkpoint
        // pass like the reference's files.
        for (i, &n) in [1000usize, 300_000, 3 << 20].iter().enumerate() {
            let data = test_data(n, 201 + i as u64);
            let name = format!("plain_ours_{n}.rts.png");
            let opts = EncodeOptions {
                compress: CompressMode::None,
                ..Default::default()
            };
            let path = encode_into(dir.path(), &name, &data, &opts);
            cases.push(Case { name, path, data });
        }
        {
            let data = test_data(10_000, 7);
            let name = "ours_code_10000.rts.png".to_string();
            let opts = EncodeOptions {
                layout: pixelrts::encode::Layout::Seekable,
                mode: Mode::Code,
                compress: CompressMode::None,
                ..Default::default()
            };
            let path = encode_into(dir.path(), &name, &data, &opts);
            cases.push(Case { name, path, data });
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(reference_dir().join("manifest.json")).unwrap())
                .unwrap();
        for v in manifest["vectors"].as_array().unwrap() {
            let (Some(png), Some(input)) = (v["output_png"].as_str(), v["input"].as_str()) else {
                continue;
            };
            cases.push(Case {
                name: png.to_string(),
                path: reference_dir().join(png),
                data: fs::read(reference_dir().join(input)).unwrap(),
            });
        }
        Fixtures {
            _dir: dir,
            ckpt,
            cases,
        }
    })
}

fn shared_cache() -> Arc<TileCache> {
    static C: OnceLock<Arc<TileCache>> = OnceLock::new();
    // Small budget so that eviction runs during the tests too.
    C.get_or_init(|| Arc::new(TileCache::new(8 << 20))).clone()
}

fn readers() -> &'static Vec<(usize, Reader)> {
    static R: OnceLock<Vec<(usize, Reader)>> = OnceLock::new();
    R.get_or_init(|| {
        let f = fixtures();
        f.cases
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let opts = ReaderOptions {
                    cache: shared_cache(),
                    checkpoint_dir: Some(f.ckpt.clone()),
                    disk_cache: None,
                };
                let r = Reader::open(&c.path, &opts).unwrap_or_else(|e| panic!("{}: {e}", c.name));
                (i, r)
            })
            .collect()
    })
}

/// What `read_at` must return for `(offset, len)` over `data`.
fn expected(data: &[u8], offset: u64, len: usize) -> &[u8] {
    let start = (offset as usize).min(data.len());
    let end = start.saturating_add(len).min(data.len());
    &data[start..end]
}

fn check_range(case: &Case, reader: &Reader, offset: u64, len: usize) {
    let mut buf = vec![0xA5u8; len];
    let n = reader
        .read_at(offset, &mut buf)
        .unwrap_or_else(|e| panic!("{} @{offset}+{len}: {e}", case.name));
    let want = expected(&case.data, offset, len);
    assert_eq!(n, want.len(), "{} @{offset}+{len}: length", case.name);
    assert!(
        buf[..n] == *want,
        "{} @{offset}+{len}: bytes differ",
        case.name
    );
}

#[test]
fn every_file_reads_whole_and_kinds_are_right() {
    let f = fixtures();
    for (i, r) in readers() {
        let case = &f.cases[*i];
        assert_eq!(r.len(), case.data.len() as u64, "{}", case.name);
        check_range(case, r, 0, case.data.len() + 10);
        let kind = r.kind();
        if case.data.is_empty() {
            assert!(matches!(kind, ReaderKind::Empty | ReaderKind::Code));
        } else if case.name.starts_with("ours_code") || case.name.contains("_code") {
            assert_eq!(kind, ReaderKind::Code, "{}", case.name);
        } else if case.name.starts_with("ours") {
            assert_eq!(kind, ReaderKind::Seekable, "{}", case.name);
        } else {
            assert_eq!(kind, ReaderKind::Plain, "{}", case.name);
        }
    }
}

/// Offsets near tile boundaries, tile-row (stripe) boundaries and the end.
fn interesting_offset(r: &Reader, pick: u64, delta: i64) -> u64 {
    let len = r.len();
    let tb = r.tile_bytes().max(3);
    let grid = r.grid().max(1);
    let tiles = len.div_ceil(tb).max(1);
    let side_tiles = (tb / 4).isqrt().max(1);
    let stripe_tiles = (grid / side_tiles).max(1);
    let base = match pick % 4 {
        0 => (pick / 4 % tiles) * tb,
        1 => (pick / 4 % (tiles / stripe_tiles).max(1)) * stripe_tiles * tb,
        2 => len,
        _ => pick % (len + 1),
    };
    (base as i64 + delta).max(0) as u64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_ranges_match(
        which in 0usize..64,
        pick in any::<u64>(),
        delta in -5i64..5,
        len in prop_oneof![Just(0usize), 1usize..16, 1usize..5000, 1usize..300_000],
        past_eof in 0u64..4,
    ) {
        let f = fixtures();
        let rs = readers();
        let (i, r) = &rs[which % rs.len()];
        let case = &f.cases[*i];
        let mut offset = interesting_offset(r, pick, delta);
        if past_eof == 0 {
            offset = r.len() + pick % 1000;
        }
        check_range(case, r, offset, len);
    }
}

#[test]
fn eight_threads_share_one_reader() {
    let f = fixtures();
    let picks: Vec<usize> = f
        .cases
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            c.name == "ours_t16_2097152.rts.png"
                || c.name == "ours_2097152.rts.png"
                || c.name == "g_5MiB_prng.rts.png"
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(picks.len(), 3);
    for i in picks {
        let case = &f.cases[i];
        let reader = Arc::new(
            Reader::open(
                &case.path,
                &ReaderOptions {
                    cache: Arc::new(TileCache::new(4 << 20)),
                    checkpoint_dir: Some(f.ckpt.clone()),
                    disk_cache: None,
                },
            )
            .unwrap(),
        );
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let reader = reader.clone();
                s.spawn(move || {
                    let mut rng = Rng(t * 7919 + 1);
                    for _ in 0..100 {
                        let len = rng.below(200_000) as usize;
                        let off = rng.below(reader.len() + 100);
                        check_range(case, &reader, off, len);
                    }
                });
            }
        });
    }
}

#[test]
fn cache_counts_hits_and_bytes_served() {
    let f = fixtures();
    let case = f
        .cases
        .iter()
        .find(|c| c.name == "ours_t16_300000.rts.png")
        .unwrap();
    let cache = Arc::new(TileCache::new(64 << 20));
    let r = Reader::open(
        &case.path,
        &ReaderOptions {
            cache: cache.clone(),
            checkpoint_dir: None,
            disk_cache: None,
        },
    )
    .unwrap();
    let mut buf = vec![0u8; 10_000];
    assert_eq!(r.read_at(12_345, &mut buf).unwrap(), 10_000);
    let s1 = cache.stats();
    assert!(s1.misses > 0 && s1.hits == 0);
    assert!(s1.bytes_inflated >= 10_000);
    assert_eq!(s1.bytes_served, 10_000);
    assert_eq!(r.read_at(12_345, &mut buf).unwrap(), 10_000);
    let s2 = cache.stats();
    assert_eq!(s2.misses, s1.misses, "second read must not miss");
    assert_eq!(s2.hits, s1.misses, "every tile of the second read is a hit");
    assert_eq!(s2.bytes_inflated, s1.bytes_inflated);
    assert_eq!(s2.bytes_served, 20_000);
    assert_eq!(&buf[..], &case.data[12_345..22_345]);
    // A tiny budget evicts.
    let small = Arc::new(TileCache::new(4096));
    let r = Reader::open(
        &case.path,
        &ReaderOptions {
            cache: small.clone(),
            checkpoint_dir: None,
            disk_cache: None,
        },
    )
    .unwrap();
    let mut all = vec![0u8; case.data.len()];
    r.read_exact_at(0, &mut all).unwrap();
    assert_eq!(all, case.data);
    assert!(small.stats().bytes_cached <= 4096);
    // Stats serialize.
    let json = serde_json::to_value(small.stats()).unwrap();
    assert!(json.get("bytes_served").is_some());
}

/// Chunks of a PNG: (offset of the length field, type, data length).
fn chunks(png: &[u8]) -> Vec<(usize, [u8; 4], usize)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = png[at + 4..at + 8].try_into().unwrap();
        out.push((at, kind, len));
        at += 12 + len;
    }
    out
}

fn corrupt_copy(case: &Case, dir: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = fs::read(&case.path).unwrap();
    f(&mut bytes);
    let p = dir.join(name);
    fs::write(&p, &bytes).unwrap();
    p
}

/// A reader with a cache of its own and no checkpoint directory (nothing shared with the
/// other tests), or the error opening it.
fn private_reader(path: &Path) -> pixelrts::Result<Reader> {
    Reader::open(
        path,
        &ReaderOptions {
            cache: Arc::new(TileCache::default()),
            checkpoint_dir: None,
            disk_cache: None,
        },
    )
}

/// Reads every tile alone: each read is an error or the right bytes. Returns (ok, errors).
fn read_all_tiles(case: &Case, r: &Reader) -> (usize, usize) {
    let tb = r.tile_bytes() as usize;
    let (mut ok, mut bad) = (0, 0);
    for start in (0..case.data.len()).step_by(tb) {
        let mut buf = vec![0u8; tb];
        match r.read_at(start as u64, &mut buf) {
            Ok(n) => {
                assert!(
                    buf[..n] == *expected(&case.data, start as u64, tb),
                    "{}: wrong bytes served at {start}",
                    case.name
                );
                ok += 1;
            }
            Err(_) => bad += 1,
        }
    }
    (ok, bad)
}

#[test]
fn flipped_idat_byte_fails_one_tile_only() {
    let f = fixtures();
    let case = f
        .cases
        .iter()
        .find(|c| c.name == "ours_t16_300000.rts.png")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = corrupt_copy(case, dir.path(), "flip.rts.png", |b| {
        let cs = chunks(b);
        let idats: Vec<_> = cs.iter().filter(|c| &c.1 == b"IDAT").collect();
        let total: usize = idats.iter().map(|c| c.2).sum();
        // A byte in the middle of the image data, away from headers.
        let mut want = total / 2;
        for c in idats {
            if want < c.2 {
                b[c.0 + 8 + want] ^= 0x5A;
                return;
            }
            want -= c.2;
        }
        unreachable!();
    });
    let r = private_reader(&path).unwrap();
    let (ok, bad) = read_all_tiles(case, &r);
    assert!(bad >= 1, "the damaged tile must fail");
    assert!(bad <= 2, "only the damaged tile fails ({bad} did)");
    assert!(ok > 100);
    // The error names the file and does not poison the cache: it fails again.
    let mut buf = vec![0u8; case.data.len()];
    let e = r.read_at(0, &mut buf).unwrap_err();
    assert!(e.to_string().contains("flip.rts.png"), "{e}");
}

#[test]
fn lying_index_is_an_error_not_a_panic() {
    let f = fixtures();
    let case = f
        .cases
        .iter()
        .find(|c| c.name == "ours_t16_1048576.rts.png") // a full grid: every piece is used
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (k, seed) in [1u64, 2, 3, 4].into_iter().enumerate() {
        let path = corrupt_copy(case, dir.path(), &format!("lie{k}.rts.png"), |b| {
            let (at, _, len) = *chunks(b).iter().find(|c| &c.1 == b"rtIX").unwrap();
            let data = at + 8;
            let mut rng = Rng(seed);
            // The piece offsets are the second half of the chunk (and more).
            for _ in 0..16 {
                let word = len / 2 + rng.below((len / 2 / 4) as u64) as usize * 4;
                let value = match seed {
                    1 => rng.next() as u32,
                    2 => 0,
                    3 => u32::from_be_bytes(b[data + word..data + word + 4].try_into().unwrap())
                        .wrapping_add(1),
                    _ => u32::MAX,
                };
                b[data + word..data + word + 4].copy_from_slice(&value.to_be_bytes());
            }
            let crc = crc32fast::hash(&b[at + 4..data + len]);
            b[data + len..data + len + 4].copy_from_slice(&crc.to_be_bytes());
        });
        match private_reader(&path) {
            Err(_) => {}
            Ok(r) => {
                let (_ok, bad) = read_all_tiles(case, &r);
                assert!(bad >= 1, "seed {seed}: a lying index must fail some tile");
            }
        }
    }
}

#[test]
fn truncated_file_is_an_error() {
    let f = fixtures();
    for name in ["ours_2097152.rts.png", "e_300000_prng.rts.png"] {
        let case = f.cases.iter().find(|c| c.name == name).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bytes = fs::read(&case.path).unwrap();
        for cut in [bytes.len() / 2, bytes.len() - 20] {
            let p = dir.path().join("cut.png");
            fs::write(&p, &bytes[..cut]).unwrap();
            let opts = ReaderOptions {
                cache: Arc::new(TileCache::default()),
                checkpoint_dir: Some(dir.path().join("ckpt")),
                disk_cache: None,
            };
            if let Ok(r) = Reader::open(&p, &opts) {
                let mut all = vec![0u8; case.data.len()];
                assert!(
                    r.read_exact_at(0, &mut all).is_err(),
                    "{name} cut at {cut}: reading must fail"
                );
            }
        }
    }
}

#[test]
fn stale_checkpoint_cache_is_rebuilt() {
    let f = fixtures();
    let e = f
        .cases
        .iter()
        .find(|c| c.name == "e_300000_prng.rts.png")
        .unwrap();
    let g = f
        .cases
        .iter()
        .find(|c| c.name == "c_1000_prng.rts.png")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let path = dir.path().join("ref.rts.png");
    fs::copy(&e.path, &path).unwrap();
    fs::copy(
        e.path.with_extension("png.meta.json"),
        dir.path().join("ref.rts.png.meta.json"),
    )
    .ok();
    let cache = Arc::new(TileCache::default());
    let opts = ReaderOptions {
        cache: cache.clone(),
        checkpoint_dir: Some(ckpt.clone()),
        disk_cache: None,
    };
    let r = Reader::open(&path, &opts).unwrap();
    let mut all = vec![0u8; e.data.len()];
    r.read_exact_at(0, &mut all).unwrap();
    assert_eq!(all, e.data);
    let old_index: Vec<PathBuf> = fs::read_dir(&ckpt)
        .unwrap()
        .map(|d| d.unwrap().path())
        .collect();
    assert_eq!(old_index.len(), 1);
    drop(r);
    // The file changes in place (same path, same inode) to another reference file; the old
    // index is also planted under the new file's cache name.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(&path, fs::read(&g.path).unwrap()).unwrap();
    let _ = fs::remove_file(dir.path().join("ref.rts.png.meta.json"));
    let new_name = CheckpointIndex::build(&path, 1 << 20)
        .unwrap()
        .cache_file_name();
    fs::copy(&old_index[0], ckpt.join(new_name)).unwrap();
    let r = Reader::open(&path, &opts).unwrap();
    let mut all = vec![0u8; g.data.len()];
    r.read_exact_at(0, &mut all).unwrap();
    assert_eq!(all, g.data, "bytes after the change");
    // Reading past the new end gives nothing.
    assert_eq!(r.read_at(g.data.len() as u64, &mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn compressed_or_missing_files_error_with_their_name() {
    let e = Reader::open(
        Path::new("/nonexistent/x.rts.png"),
        &ReaderOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.rts.png"));
    // Same file read twice through one cache: the second reader hits the first one's tiles.
    let f = fixtures();
    let case = f
        .cases
        .iter()
        .find(|c| c.name == "ours_300000.rts.png")
        .unwrap();
    let cache = Arc::new(TileCache::default());
    let opts = ReaderOptions {
        cache: cache.clone(),
        checkpoint_dir: None,
        disk_cache: None,
    };
    let a = Reader::open(&case.path, &opts).unwrap();
    let b = Reader::open(&case.path, &opts).unwrap();
    let mut buf = vec![0u8; 1000];
    a.read_at(500, &mut buf).unwrap();
    let misses = cache.stats().misses;
    b.read_at(500, &mut buf).unwrap();
    assert_eq!(cache.stats().misses, misses);
    assert_eq!(&buf[..], &case.data[500..1500]);
}

#[test]
fn read_at_positional_semantics() {
    let f = fixtures();
    let case = f
        .cases
        .iter()
        .find(|c| c.name == "ours_5000.rts.png")
        .unwrap();
    let r = Reader::open(&case.path, &ReaderOptions::default()).unwrap();
    let mut buf = [0u8; 100];
    assert_eq!(r.read_at(4950, &mut buf).unwrap(), 50);
    assert_eq!(r.read_at(5000, &mut buf).unwrap(), 0);
    assert_eq!(r.read_at(u64::MAX, &mut buf).unwrap(), 0);
    assert_eq!(r.read_at(0, &mut []).unwrap(), 0);
    let file = File::open(&case.path).unwrap();
    let mut one = [0u8; 1];
    assert_eq!(file.read_at(&mut one, 0).unwrap(), 1);
}

#[test]
fn cli_cat_writes_ranges_and_names_bad_files() {
    let f = fixtures();
    let bin = env!("CARGO_BIN_EXE_pixelrts");
    for name in [
        "ours_t16_300000.rts.png",
        "e_300000_prng.rts.png",
        "f_add_wasm_code.rts.png",
    ] {
        let case = f.cases.iter().find(|c| c.name == name).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new(bin)
                .arg("cat")
                .arg(&case.path)
                .args(["--checkpoint-dir", f.ckpt.to_str().unwrap()])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{name}: {:?}", out);
            out.stdout
        };
        assert_eq!(run(&[]), case.data, "{name}: whole");
        assert_eq!(
            run(&["--offset", "17", "--length", "100"]),
            expected(&case.data, 17, 100),
            "{name}: range"
        );
        assert_eq!(
            run(&["--offset", "99999999"]),
            Vec::<u8>::new(),
            "{name}: past the end"
        );
    }
    let out = std::process::Command::new(bin)
        .args(["cat", "/nonexistent/y.rts.png"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/y.rts.png"));
}

/// A reader with its own empty cache over the fixture with 16-pixel tiles (293 tiles of 1 KiB).
fn small_tile_reader() -> (&'static Case, Arc<TileCache>, Reader) {
    let case = fixtures()
        .cases
        .iter()
        .find(|c| c.name == "ours_t16_300000.rts.png")
        .unwrap();
    let cache = Arc::new(TileCache::default());
    let reader = Reader::open(
        &case.path,
        &ReaderOptions {
            cache: cache.clone(),
            checkpoint_dir: None,
            disk_cache: None,
        },
    )
    .unwrap();
    (case, cache, reader)
}

#[test]
fn sequential_reads_read_ahead_the_aligned_block_and_random_reads_do_not() {
    let (case, cache, r) = small_tile_reader();
    let tb = r.tile_bytes() as usize;
    let mut buf = vec![0u8; tb];
    // Not sequential (first read): only tile 0 is decoded.
    r.read_at(0, &mut buf).unwrap();
    assert_eq!(cache.stats().entries, 1);
    // Starts where the last read ended: tile 1 (released once read to its end), then the rest
    // of the 64-tile block ahead, and the next block in the background.
    r.read_at(tb as u64, &mut buf).unwrap();
    assert_eq!(buf[..], case.data[tb..2 * tb]);
    assert!(cache.stats().entries >= 63);
    let t = std::time::Instant::now();
    while cache.stats().entries < 127 {
        assert!(
            t.elapsed().as_secs() < 10,
            "the next block was not read ahead"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(cache.stats().entries, 127, "two blocks, nothing more");
    // The block's tiles were decoded right: read them all back (cache hits; tile 1 again).
    let mut all = vec![0u8; 128 * tb];
    r.read_at(0, &mut all).unwrap();
    assert_eq!(all[..], case.data[..128 * tb]);
    // A jump elsewhere reads only what it needs.
    r.read_at((140 * tb + 7) as u64, &mut buf[..100]).unwrap();
    assert_eq!(buf[..100], case.data[140 * tb + 7..140 * tb + 107]);
    assert_eq!(cache.stats().entries, 129);
}

#[test]
fn threads_missing_the_same_tile_decode_it_once() {
    for round in 0..20u64 {
        let (case, cache, r) = small_tile_reader();
        let tb = r.tile_bytes();
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (r, barrier, data) = (&r, &barrier, &case.data);
                s.spawn(move || {
                    let at = (round * 7 % 200) * tb + t * 3;
                    let mut buf = vec![0u8; 50];
                    barrier.wait();
                    r.read_exact_at(at, &mut buf).unwrap();
                    assert_eq!(buf[..], data[at as usize..at as usize + 50]);
                });
            }
        });
        assert_eq!(
            cache.stats().bytes_inflated,
            tb,
            "round {round}: decoded more than once"
        );
    }
}

#[test]
fn no_read_ahead_into_a_cache_too_small_to_keep_it() {
    let (case, _, _) = small_tile_reader();
    // Room for 100 tiles of 1 KiB: less than two 64-tile blocks.
    let cache = Arc::new(TileCache::new(100 * 1024));
    let r = Reader::open(
        &case.path,
        &ReaderOptions {
            cache: cache.clone(),
            checkpoint_dir: None,
            disk_cache: None,
        },
    )
    .unwrap();
    let tb = r.tile_bytes() as usize;
    let mut buf = vec![0u8; tb];
    r.read_at(0, &mut buf).unwrap();
    r.read_at(tb as u64, &mut buf).unwrap();
    assert_eq!(buf[..], case.data[tb..2 * tb]);
    std::thread::sleep(std::time::Duration::from_millis(50));
    // Tile 0, and not tile 1: read to its end in order, it was released.
    assert_eq!(cache.stats().entries, 1, "read only what was asked");
}

/// Regression: a background read-ahead job on a rayon worker waited for a tile that a mount
/// thread was decoding, while that thread's decode job sat below it on the same worker's stack
/// (`cp` out of a mount hung). Read-ahead never waits now, and rayon workers never block on a
/// tile another thread holds.
#[test]
fn concurrent_sequential_readers_with_read_ahead_do_not_deadlock() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for round in 0..30 {
            let (case, _, r) = small_tile_reader();
            let tb = r.tile_bytes() as usize;
            let r = &r;
            std::thread::scope(|s| {
                // Plain threads, like a mount's: sequential readers on one reader, staggered.
                for t in 0..4usize {
                    s.spawn(move || {
                        let mut buf = vec![0u8; 3 * tb + 17];
                        let mut off = (t * 5 * tb) as u64;
                        while off < case.data.len() as u64 {
                            let n = r.read_at(off, &mut buf).unwrap();
                            assert_eq!(buf[..n], case.data[off as usize..off as usize + n]);
                            off += n as u64;
                        }
                    });
                }
                // And a reader inside the rayon pool, where read-ahead jobs run too.
                s.spawn(move || {
                    rayon::scope(|_| {
                        let mut buf = vec![0u8; 2 * tb];
                        let mut off = (round % 7 * tb) as u64;
                        while off < case.data.len() as u64 {
                            let n = r.read_at(off, &mut buf).unwrap();
                            assert_eq!(buf[..n], case.data[off as usize..off as usize + n]);
                            off += n as u64;
                        }
                    });
                });
            });
        }
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("readers deadlocked");
}

/// The entries of an index v2 chunk: `(file offset of the entry, value)` for every data tile's
/// pieces, in Hilbert order, from the header's geometry.
fn v2_entries(b: &[u8]) -> (usize, Vec<(usize, u32)>) {
    let (at, _, len) = *chunks(b).iter().find(|c| &c.1 == b"rtIX").unwrap();
    let data = at + 8;
    assert_eq!(b[data + 8], 2, "index version");
    let side = 1usize << b[data + 9];
    let payload = u64::from_be_bytes(b[data + 16..data + 24].try_into().unwrap()) as usize;
    let tiles_per_side = u32::from_be_bytes(b[data + 28..data + 32].try_into().unwrap()) as usize;
    let data_tiles = payload.div_ceil(4 * side * side);
    let table = data + 64 + 8 * tiles_per_side + 4 * data_tiles;
    assert_eq!(
        table + 4 * side * data_tiles,
        data + len,
        "v2 has entries for data tiles only"
    );
    let entries = (0..side * data_tiles)
        .map(|k| {
            let o = table + 4 * k;
            (o, u32::from_be_bytes(b[o..o + 4].try_into().unwrap()))
        })
        .collect();
    (at, entries)
}

fn fix_index_crc(b: &mut [u8], at: usize) {
    let len = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let crc = crc32fast::hash(&b[at + 4..at + 8 + len]);
    b[at + 8 + len..at + 12 + len].copy_from_slice(&crc.to_be_bytes());
}

const RAW: u32 = 1 << 31;

/// Index v2: a raw entry that loses its flag, a deflated one that gains it, and a zero piece
/// pointed elsewhere each fail the reads of their own tile with an error naming the file, and
/// every other tile still reads right.
#[test]
fn lying_v2_entries_fail_only_their_tile() {
    let f = fixtures();
    let case = f
        .cases
        .iter()
        .find(|c| c.name == "ours_holes_1000000.rts.png")
        .unwrap();
    let original = fs::read(&case.path).unwrap();
    let (_, entries) = v2_entries(&original);
    let raw = entries
        .iter()
        .position(|e| e.1 & RAW != 0)
        .expect("random data is stored raw");
    let side = 16;
    // A zero piece: a tile inside the zero stretch (its entries point at run starts).
    let zero_tile = case.data.len() / 4 / 1024 + 10;
    let zero = zero_tile * side + 3;
    assert!(case.data[zero_tile * 1024..(zero_tile + 1) * 1024]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(entries[zero].1 & RAW, 0, "zero pieces are not raw");
    let dir = tempfile::tempdir().unwrap();
    let lies: [(&str, usize, u32); 4] = [
        ("raw_flag_cleared", raw, entries[raw].1 & !RAW),
        ("raw_moved_by_one", raw, entries[raw].1 + 1),
        ("zero_made_raw", zero, entries[zero].1 | RAW),
        ("zero_pointed_at_data", zero, entries[raw].1 & !RAW),
    ];
    for (name, k, value) in lies {
        let file = format!("{name}.rts.png");
        let path = corrupt_copy(case, dir.path(), &file, |b| {
            let (at, entries) = v2_entries(b);
            let o = entries[k].0;
            b[o..o + 4].copy_from_slice(&value.to_be_bytes());
            fix_index_crc(b, at);
        });
        let r = private_reader(&path).unwrap();
        let (ok, bad) = read_all_tiles(case, &r);
        assert!(bad >= 1, "{name}: the tile with the lying entry must fail");
        assert!(bad <= 2, "{name}: only that tile fails ({bad} did)");
        assert!(ok > 500, "{name}: the others read ({ok})");
        let tile = k / side;
        let mut buf = vec![0u8; 1024];
        let e = r.read_at(tile as u64 * 1024, &mut buf).unwrap_err();
        assert!(e.to_string().contains(&file), "{name}: {e}");
    }
}

/// A file read from start to end makes the reader read its whole PNG from the disk in the
/// background (large reads instead of the Hilbert curve's scattered row pieces; measured in
/// README "The read path"); reads all over the file do not.
#[test]
fn a_sequential_reader_warms_the_png_and_a_random_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = {
        let mut rng = Rng(7);
        (0..48 << 20).map(|_| rng.next() as u8).collect()
    };
    let png = encode_into(dir.path(), "warm", &data, &EncodeOptions::default());
    let mut buf = vec![0u8; 1 << 20];

    let random = private_reader(&png).unwrap();
    let mut rng = Rng(3);
    for _ in 0..64 {
        let at = rng.below((data.len() - buf.len()) as u64) as usize;
        random.read_at(at as u64, &mut buf).unwrap();
        assert!(buf[..] == data[at..at + buf.len()]);
    }
    assert!(
        !random.warming(),
        "64 MiB of scattered reads warmed the PNG"
    );

    let sequential = private_reader(&png).unwrap();
    for at in (0..40 << 20).step_by(buf.len()) {
        let n = sequential.read_at(at as u64, &mut buf).unwrap();
        assert!(buf[..n] == data[at..at + n]);
        if at < 16 << 20 {
            assert!(!sequential.warming(), "warmed after {at} bytes");
        }
    }
    assert!(
        sequential.warming(),
        "40 MiB read in order did not warm the PNG"
    );
}

/// Small reads all over a compressed file (a loop-mounted image walked by `tar`) warm its PNG
/// once they have had to inflate 16 segments: cold, each costs a hundred scattered disk reads.
/// Fewer do not.
#[test]
fn small_reads_missing_many_segments_warm_the_png() {
    let dir = tempfile::tempdir().unwrap();
    // Random nibbles: compressed to about half, so the PNG passes the 32 MiB minimum.
    let data: Vec<u8> = {
        let mut rng = Rng(11);
        (0..72 << 20).map(|_| (rng.next() & 15) as u8).collect()
    };
    let png = encode_into(dir.path(), "nibbles", &data, &EncodeOptions::default());
    assert!(fs::metadata(&png).unwrap().len() > 32 << 20);
    let r = private_reader(&png).unwrap();
    assert!(r.is_compressed());
    let mut buf = vec![0u8; 4096];
    let segment = 128 << 10;
    // Every 5th segment, so that no read steps into the next one.
    for k in 0..16 {
        let at = k * 5 * segment + 777;
        r.read_exact_at(at as u64, &mut buf).unwrap();
        assert!(buf[..] == data[at..at + buf.len()]);
        assert_eq!(
            r.warming(),
            k == 15,
            "warming after {} segment misses",
            k + 1
        );
    }
}

/// A sequential reader releases the tiles it has read to their end (from its second read on):
/// a large `cp` recycles a few buffers instead of filling the cache (a `cp` of 1 GiB through the mount: peak RSS
/// 292 MB before, 60 MB after). Tiles a random reader decoded stay cached.
#[test]
fn a_sequential_reader_leaves_no_tiles_behind_and_a_random_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = {
        let mut rng = Rng(5);
        (0..24 << 20).map(|_| rng.next() as u8).collect()
    };
    let png = encode_into(dir.path(), "seq", &data, &EncodeOptions::default());
    let r = private_reader(&png).unwrap();
    let tile = r.tile_bytes() as usize;
    let key = |j: usize| pixelrts::cache::TileKey {
        file: r.file_key(),
        tile: j as u64,
    };
    let mut buf = vec![0u8; 1 << 20];
    for at in (0..16 << 20).step_by(buf.len()) {
        r.read_exact_at(at as u64, &mut buf).unwrap();
        assert!(buf[..] == data[at..at + buf.len()]);
    }
    // The first read is not known to be sequential yet: its tiles stay.
    assert!(r.cache().peek(&key(0)).is_some());
    for j in (1 << 20) / tile..(16 << 20) / tile {
        assert!(r.cache().peek(&key(j)).is_none(), "tile {j} was kept");
    }
    // Random: 3 tiles apart, never where a read ended.
    let mut small = vec![0u8; 4096];
    for j in [80usize, 77, 90] {
        let at = j * tile + 1000;
        r.read_exact_at(at as u64, &mut small).unwrap();
        assert!(small[..] == data[at..at + small.len()]);
        assert!(r.cache().peek(&key(j)).is_some(), "tile {j} was not kept");
    }
}
