//! Compressed payloads: the input deflated, in its own order, into one zlib stream of
//! independent segments, which then becomes the pixels' payload (docs/LAYOUT.md).
//!
//! Why the input's own order: the Hilbert mapping puts each 4-byte group next to bytes from
//! elsewhere in the file, so deflate over the pixels finds few matches (text: ratio 1.1 over
//! pixels against 3.8 in plain order). Compressing first and storing the stream in the pixels
//! gives the ratio of the plain order and keeps every PNG reader — and the reference decoder,
//! which inflates `encoded_size` payload bytes with `zlib.decompress` — working.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use flate2::{Compress, Compression};
use rayon::prelude::*;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::format::segment::{
    adler32, adler32_combine, deflate_or_store, FINAL_EMPTY_BLOCK, ZLIB_HEADER,
};
use crate::format::zindex::SegmentIndex;

/// `--compress auto|zlib|none`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompressMode {
    /// Compress when a sample says it pays ([`worth_compressing`]).
    #[default]
    Auto,
    /// Always hold a compressed stream (standard mode only).
    Zlib,
    /// Pixels are the input bytes, for those who look at the picture.
    None,
}

impl std::str::FromStr for CompressMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(CompressMode::Auto),
            "zlib" => Ok(CompressMode::Zlib),
            "none" | "off" => Ok(CompressMode::None),
            _ => Err(format!(
                "unknown compression {s:?} (expected auto, zlib or none)"
            )),
        }
    }
}

impl std::fmt::Display for CompressMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CompressMode::Auto => "auto",
            CompressMode::Zlib => "zlib",
            CompressMode::None => "none",
        })
    }
}

/// Original bytes per segment. Measured in docs/LAYOUT.md ("Segment size and level"): a 4 KiB
/// read inflates one segment, and at 128 KiB random 4 KiB reads of an OS image through the
/// mount outrun squashfuse over a zstd squashfs, for 1.3% more size than 512 KiB segments.
pub const DEFAULT_SEGMENT_SIZE: u32 = 128 << 10;
/// zlib level of the segments, measured in docs/LAYOUT.md.
pub const DEFAULT_COMPRESS_LEVEL: u32 = 7;

/// `auto` compresses when the sample shrinks to at most this fraction…
const AUTO_MAX_RATIO: f64 = 0.97;
/// …and the estimated saving is at least this many bytes (the compression keys and the
/// segment index cost about 200 bytes).
const AUTO_MIN_SAVING: f64 = 512.0;
/// Sample blocks `auto` deflates (level 1), spread evenly over the input.
const SAMPLE_BLOCKS: usize = 16;
const SAMPLE_BLOCK: usize = 64 << 10;

/// Whether compressing `data` pays: deflate (level 1) of up to 16 blocks of 64 KiB spread over
/// the input shrinks them to ≤ 97% and the estimated saving is at least 512 bytes. Random data
/// (ratio ≈ 1.0) stays a raw payload and pays only the sample (≤ 1 MiB at level 1, a few ms).
pub fn worth_compressing(data: &[u8]) -> bool {
    if data.is_empty() {
        return false;
    }
    let block = SAMPLE_BLOCK.min(data.len());
    let blocks = SAMPLE_BLOCKS.min(data.len().div_ceil(block));
    let mut compressor = Compress::new(Compression::new(1), false);
    let mut out = Vec::new();
    let (mut raw, mut coded) = (0usize, 0usize);
    for b in 0..blocks {
        let at = b * (data.len() - block) / (blocks - 1).max(1);
        let piece = &data[at..at + block];
        coded += deflate_or_store(piece, &mut compressor, 1, &mut out);
        raw += piece.len();
        out.clear();
    }
    let ratio = coded as f64 / raw as f64;
    ratio <= AUTO_MAX_RATIO && (1.0 - ratio) * data.len() as f64 >= AUTO_MIN_SAVING
}

/// The compressed stream, in an unlinked temporary file, with its index and the input's hash.
pub struct CompressedPayload {
    pub file: File,
    pub index: SegmentIndex,
    pub level: u32,
    pub digest: [u8; 32],
}

impl CompressedPayload {
    /// The reference's `compression` object: type, level, original and compressed sizes, ratio.
    pub fn metadata(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), "zlib".into());
        m.insert("level".into(), self.level.into());
        m.insert("original_size".into(), self.index.original_size.into());
        m.insert("compressed_size".into(), self.index.encoded_size.into());
        let ratio = self.index.encoded_size as f64 / self.index.original_size.max(1) as f64;
        m.insert("ratio".into(), ((ratio * 1e6).round() / 1e6).into());
        Value::Object(m)
    }
}

/// Deflates `data` into segments on the rayon pool (a batch of segments at a time, so memory
/// is bounded by the batch), writes the stream to an unlinked temporary file in `temp_dir`, and
/// hashes the input with SHA-256 on its own thread meanwhile.
pub fn compress_payload(
    data: &[u8],
    release: &(dyn Fn(std::ops::Range<usize>) + Sync),
    level: u32,
    segment_size: u32,
    temp_dir: &Path,
    progress: Option<&super::Progress>,
) -> Result<CompressedPayload> {
    if segment_size == 0 || segment_size > crate::format::zindex::MAX_SEGMENT_SIZE {
        return Err(Error::InvalidArgument(format!(
            "segment size must be 1..={} bytes, got {segment_size}",
            crate::format::zindex::MAX_SEGMENT_SIZE
        )));
    }
    let temp_err = |e| Error::io(temp_dir, e);
    let file = tempfile::tempfile_in(temp_dir).map_err(temp_err)?;
    let seg = segment_size as usize;
    let count = data.len().div_ceil(seg);
    let batch = (rayon::current_num_threads() * 4).max(8);
    let (offsets, crcs, digest) = std::thread::scope(|scope| -> Result<_> {
        let hasher = scope.spawn(|| {
            let mut sha = Sha256::new();
            for block in data.chunks(4 << 20) {
                sha.update(block);
            }
            let digest: [u8; 32] = sha.finalize().into();
            digest
        });
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        out.write_all(&ZLIB_HEADER).map_err(temp_err)?;
        let mut pos = ZLIB_HEADER.len() as u64;
        let mut offsets = Vec::with_capacity(count + 1);
        let mut crcs = Vec::with_capacity(count);
        let mut adler = 1u32;
        let mut first = 0;
        while first < count {
            let last = (first + batch).min(count);
            let coded: Vec<(Vec<u8>, u32, u32)> = (first..last)
                .into_par_iter()
                .map_init(
                    || Compress::new(Compression::new(level.clamp(1, 9)), false),
                    |compressor, s| {
                        let raw = &data[s * seg..((s + 1) * seg).min(data.len())];
                        let mut bytes = Vec::new();
                        deflate_or_store(raw, compressor, level, &mut bytes);
                        (bytes, crc32fast::hash(raw), adler32(raw))
                    },
                )
                .collect();
            for (s, (bytes, crc, seg_adler)) in (first..last).zip(coded) {
                let raw_len = (((s + 1) * seg).min(data.len()) - s * seg) as u64;
                offsets.push(pos);
                crcs.push(crc);
                adler = adler32_combine(adler, seg_adler, raw_len);
                out.write_all(&bytes).map_err(temp_err)?;
                pos += bytes.len() as u64;
            }
            release(first * seg..(last * seg).min(data.len()));
            if let Some(p) = progress {
                p(((last * seg).min(data.len())) as u64, data.len() as u64);
            }
            first = last;
        }
        offsets.push(pos);
        out.write_all(&FINAL_EMPTY_BLOCK).map_err(temp_err)?;
        out.write_all(&adler.to_be_bytes()).map_err(temp_err)?;
        out.flush().map_err(temp_err)?;
        let digest = hasher.join().expect("hash thread panicked");
        Ok((offsets, crcs, digest))
    })?;
    let encoded_size = offsets[count] + crate::format::zindex::TRAILER_LEN;
    Ok(CompressedPayload {
        file,
        index: SegmentIndex {
            segment_size,
            original_size: data.len() as u64,
            encoded_size,
            offsets,
            crcs,
        },
        level,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::FileExt;

    fn text(n: usize) -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog; "
            .iter()
            .cycle()
            .take(n)
            .copied()
            .collect()
    }

    #[test]
    fn stream_is_one_zlib_stream_and_segments_inflate_alone() {
        let mut data = text(300_000);
        data.extend((0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8));
        let dir = tempfile::tempdir().unwrap();
        let p = compress_payload(&data, &|_| {}, 6, 65536, dir.path(), None).unwrap();
        let mut stream = vec![0u8; p.index.encoded_size as usize];
        p.file.read_exact_at(&mut stream, 0).unwrap();
        let mut whole = Vec::new();
        flate2::read::ZlibDecoder::new(&stream[..])
            .read_to_end(&mut whole)
            .unwrap();
        assert!(whole == data);
        let mut inflater = flate2::Decompress::new(false);
        for s in 0..p.index.count() {
            let (a, z) = p.index.coded_range(s);
            let (x, y) = p.index.original_range(s);
            let mut out = vec![0u8; (y - x) as usize];
            crate::format::segment::inflate_piece(
                &stream[a as usize..z as usize],
                &mut out,
                &mut inflater,
            )
            .unwrap();
            assert_eq!(&out[..], &data[x as usize..y as usize]);
            assert_eq!(crc32fast::hash(&out), p.index.crcs[s as usize]);
        }
        let index = SegmentIndex::parse(&p.index.to_bytes(), 400_000, p.index.encoded_size);
        assert_eq!(index.unwrap(), p.index);
    }

    #[test]
    fn auto_compresses_text_and_zeros_not_random() {
        assert!(worth_compressing(&text(100_000)));
        assert!(worth_compressing(&vec![0u8; 65536]));
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let random: Vec<u8> = (0..1_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(!worth_compressing(&random));
        assert!(!worth_compressing(b""));
        assert!(!worth_compressing(b"tiny tiny tiny"));
    }
}
