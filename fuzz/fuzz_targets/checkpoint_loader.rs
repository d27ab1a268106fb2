//! The checkpoint-index cache file loader: a plain PNG (made once per process) with a cache
//! file holding the input. The input's file-identity field is overwritten with this process's
//! file identity (as the CRCs of PNG inputs are fixed up), so mutations reach everything
//! behind it. Whatever loads must never make `read_rows` return rows that differ from the
//! image: a bad cache file is rebuilt or its reads fail.
#![no_main]
use std::fs::File;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pixelrts::encode::{encode_file, EncodeOptions, Layout};
use pixelrts::reader::checkpoint::{CacheStatus, CheckpointIndex};

/// Offset and length of the identity in a cache file (after magic and version).
const IDENT_AT: usize = 12;
const IDENT_LEN: usize = 8 + 16 + 8 + 8 + 32;
const SPACING: u64 = 16 << 10;

struct Fixture {
    png: PathBuf,
    rows: Vec<u8>,
    row_bytes: usize,
    height: u32,
    ident: Vec<u8>,
    cache_dir: PathBuf,
    cache_file: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = pixelrts_fuzz::scratch_dir();
        // 200 KB of text-like bytes with runs: several deflate blocks and checkpoints.
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| b"pixelrts checkpoint fuzz \n"[(i % 26) as usize] ^ ((i / 4099) as u8 & 3))
            .collect();
        let src = pixelrts_fuzz::write_scratch("ckpt.bin", &data);
        let png = dir.join("ckpt.rts.png");
        let opts = EncodeOptions {
            layout: Layout::Plain,
            sidecar: false,
            overwrite: true,
            threads: Some(1),
        pool: Some(pixelrts_fuzz::encode_pool()),
            compress: pixelrts::encode::compressed::CompressMode::None,
            ..Default::default()
        };
        encode_file(&src, &png, &opts).expect("fixture encode");
        let cache_dir = dir.join("ckpt-cache");
        std::fs::create_dir_all(&cache_dir).unwrap();
        let file = File::open(&png).unwrap();
        let (idx, _) =
            CheckpointIndex::load_or_build_file(&file, &png, Some(&cache_dir), SPACING).unwrap();
        let height = idx.height();
        let row_bytes = idx.row_bytes();
        let mut rows = vec![0u8; row_bytes * height as usize];
        idx.read_rows(&file, 0, height, &mut rows).unwrap();
        let cache_file = cache_dir.join(idx.cache_file_name());
        let saved = std::fs::read(&cache_file).expect("saved index");
        if std::env::var_os("PIXELRTS_FUZZ_WRITE_SEED").is_some() {
            std::fs::write("checkpoint_loader.seed", &saved).unwrap();
        }
        Fixture {
            png,
            rows,
            row_bytes,
            height,
            ident: saved[IDENT_AT..IDENT_AT + IDENT_LEN].to_vec(),
            cache_dir,
            cache_file,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut bytes = data.to_vec();
    if bytes.len() >= IDENT_AT + IDENT_LEN {
        bytes[IDENT_AT..IDENT_AT + IDENT_LEN].copy_from_slice(&f.ident);
    }
    std::fs::write(&f.cache_file, &bytes).unwrap();
    let file = File::open(&f.png).unwrap();
    let Ok((idx, status)) =
        CheckpointIndex::load_or_build_file(&file, &f.png, Some(&f.cache_dir), SPACING)
    else {
        return;
    };
    if !matches!(status, CacheStatus::Loaded) {
        return;
    }
    // Rows from every checkpoint region, in a few shapes.
    let h = f.height;
    for (first, count) in [(0, h), (h / 3, 1), (h / 2, h - h / 2), (h - 1, 1)] {
        let mut out = vec![0u8; f.row_bytes * count as usize];
        if idx.read_rows(&file, first, count, &mut out).is_ok() {
            let at = first as usize * f.row_bytes;
            assert!(
                out == f.rows[at..at + out.len()],
                "a loaded cache file made rows {first}+{count} differ from the image"
            );
        }
    }
});
