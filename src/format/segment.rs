//! Restart-point segments of the zlib stream (FORMAT.md §5).
//!
//! Every *piece* (one tile-wide slice of one scanline) is an independent raw-deflate sequence
//! that ends byte-aligned with no reference to earlier data: either deflate blocks followed by a
//! full flush, or one stored block. Concatenated, they form one valid zlib stream that any PNG
//! reader inflates; on their own, each inflates without the rest.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// zlib header: deflate, 32 KiB window, "fastest" level hint; (0x78·256 + 0x01) % 31 == 0.
pub const ZLIB_HEADER: [u8; 2] = [0x78, 0x01];
/// An empty final block with fixed Huffman codes: ends the deflate stream after the pieces.
pub const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];
/// Header bytes of a non-final stored block.
pub const STORED_OVERHEAD: usize = 5;

/// Appends `raw` as one non-final stored block (`raw.len()` ≤ 65535).
pub fn store_piece(raw: &[u8], out: &mut Vec<u8>) {
    assert!(raw.len() <= 0xffff);
    let len = raw.len() as u16;
    out.push(0x00);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(raw);
}

/// Compresses pieces one after another; each call's output is independent of the previous ones
/// (zlib's full flush resets the dictionary), so one compressor serves a whole run of pieces.
pub struct PieceCompressor {
    level: u32,
    deflate: Option<Compress>,
    /// For [`compress_sparse`](Self::compress_sparse), made on first use.
    zero_coder: Option<Compress>,
}

impl PieceCompressor {
    /// `level` 0 stores everything; 1–9 are zlib levels.
    pub fn new(level: u32) -> Self {
        let deflate = (level > 0).then(|| Compress::new(Compression::new(level.min(9)), false));
        PieceCompressor {
            level,
            deflate,
            zero_coder: None,
        }
    }

    pub fn level(&self) -> u32 {
        self.level
    }

    /// Appends the piece to `out`, compressed if that makes it smaller, else stored.
    /// Returns the number of bytes appended.
    pub fn compress(&mut self, raw: &[u8], out: &mut Vec<u8>) -> usize {
        match self.deflate.as_mut() {
            Some(deflate) => deflate_or_store(raw, deflate, self.level, out),
            None => {
                let start = out.len();
                store_raw(raw, out);
                out.len() - start
            }
        }
    }

    /// As [`compress`](Self::compress), but zero runs may be coded apart from the stored bytes
    /// around them ([`deflate_or_store_sparse`]): for pieces that mix padding and payload.
    pub fn compress_sparse(&mut self, raw: &[u8], out: &mut Vec<u8>) -> usize {
        let level = self.level;
        match self.deflate.as_mut() {
            Some(deflate) => {
                let zero_coder = self
                    .zero_coder
                    .get_or_insert_with(|| Compress::new(Compression::new(level.min(9)), false));
                deflate_or_store_sparse(raw, deflate, level, zero_coder, out)
            }
            None => self.compress(raw, out),
        }
    }
}

/// Appends `raw` to `out` as raw deflate from `compressor` ending byte-aligned with a full flush
/// (so the next call's output is independent of this one's), or as stored blocks when deflate
/// does not make it smaller. Returns the bytes appended. Serves both the pixels' pieces and a
/// compressed payload's segments.
pub fn deflate_or_store(
    raw: &[u8],
    compressor: &mut Compress,
    level: u32,
    out: &mut Vec<u8>,
) -> usize {
    let start = out.len();
    let stored_len = stored_len(raw.len() as u64) as usize;
    // Room for deflate's worst case, so every call ends with its flush complete: zlib-rs can
    // panic when a compressor whose output ran short is reset and reused.
    out.resize(start + raw.len() + raw.len() / 8 + 64, 0);
    let before_in = compressor.total_in();
    let before_out = compressor.total_out();
    let status = compressor.compress(raw, &mut out[start..], FlushCompress::Full);
    let consumed = (compressor.total_in() - before_in) as usize;
    let produced = (compressor.total_out() - before_out) as usize;
    out.truncate(start + produced);
    let flushed = matches!(status, Ok(Status::Ok))
        && consumed == raw.len()
        && out.ends_with(&[0, 0, 0xff, 0xff]);
    if !flushed {
        // Never reuse a compressor left mid-stream: start a fresh one.
        *compressor = Compress::new(Compression::new(level.clamp(1, 9)), false);
    } else if produced < stored_len {
        return produced;
    }
    out.truncate(start);
    store_raw(raw, out);
    out.len() - start
}

/// Zero runs shorter than this stay inside their neighbour's stored block: a run costs a few
/// bytes of deflate, a stored block after it four more.
const MIN_SPARSE_RUN: usize = 32;

/// Codes a piece in which zeros and incompressible bytes alternate — the partly filled tile at
/// the end of the data, where the Hilbert curve interleaves payload and padding within each
/// scanline — as zero runs in deflate and everything else in stored blocks, when that is
/// smaller than [`deflate_or_store`] of the whole piece (whose Huffman codes charge every
/// random byte for the zeros beside it: 12% more on half-filled rows). Appends to `out` and
/// returns the bytes appended. The result is self-contained and ends byte-aligned.
pub fn deflate_or_store_sparse(
    raw: &[u8],
    compressor: &mut Compress,
    level: u32,
    zero_coder: &mut Compress,
    out: &mut Vec<u8>,
) -> usize {
    let start = out.len();
    let whole = deflate_or_store(raw, compressor, level, out);
    let mut sparse = Vec::with_capacity(raw.len() + 64);
    let mut at = 0;
    let mut any_run = false;
    while at < raw.len() {
        let (run_start, run_end) = next_zero_run(raw, at);
        if run_start > at {
            // The bytes before the run, stored; after a run, its sync flush's empty stored
            // block lends this one its header (LEN/NLEN replace the flush's `00 00 FF FF`).
            let mut blocks = raw[at..run_start].chunks(0xffff);
            if any_run {
                sparse.truncate(sparse.len() - SYNC_TAIL.len());
                let first = blocks.next().expect("a non-empty span");
                let len = first.len() as u16;
                sparse.extend_from_slice(&len.to_le_bytes());
                sparse.extend_from_slice(&(!len).to_le_bytes());
                sparse.extend_from_slice(first);
            }
            for block in blocks {
                store_piece(block, &mut sparse);
            }
        }
        if run_end > run_start {
            any_run = true;
            zero_coder.reset();
            let n = run_end - run_start;
            let from = sparse.len();
            sparse.resize(from + n / 64 + 64, 0);
            let status = zero_coder.compress(
                &raw[run_start..run_end],
                &mut sparse[from..],
                FlushCompress::Sync,
            );
            sparse.truncate(from + zero_coder.total_out() as usize);
            if !matches!(status, Ok(Status::Ok))
                || zero_coder.total_in() as usize != n
                || !sparse.ends_with(&SYNC_TAIL)
            {
                // Never reuse a compressor left mid-stream; the whole-piece coding stands.
                *zero_coder = Compress::new(Compression::new(level.clamp(1, 9)), false);
                return whole;
            }
        }
        at = run_end;
    }
    if !any_run || sparse.len() >= whole {
        return whole;
    }
    out.truncate(start);
    out.extend_from_slice(&sparse);
    sparse.len()
}

/// The first run of at least [`MIN_SPARSE_RUN`] zeros at or after `from`, as `(start, end)`;
/// `(len, len)` when there is none.
fn next_zero_run(raw: &[u8], from: usize) -> (usize, usize) {
    let mut k = from;
    while k < raw.len() {
        if raw[k] == 0 {
            let end = k + raw[k..].iter().take_while(|&&b| b == 0).count();
            if end - k >= MIN_SPARSE_RUN {
                return (k, end);
            }
            k = end;
        } else {
            k += 1;
        }
    }
    (raw.len(), raw.len())
}

/// Bytes [`store_raw`] appends for `raw_len` bytes: blocks of at most 65535 bytes, each with
/// its 5-byte header (one empty block for no bytes).
pub fn stored_len(raw_len: u64) -> u64 {
    raw_len + STORED_OVERHEAD as u64 * raw_len.div_ceil(0xffff).max(1)
}

/// Appends `raw` as non-final stored blocks of at most 65535 bytes (one empty block for no
/// bytes).
pub fn store_raw(raw: &[u8], out: &mut Vec<u8>) {
    if raw.is_empty() {
        store_piece(&[], out);
    }
    for block in raw.chunks(0xffff) {
        store_piece(block, out);
    }
}

/// Raw-deflate encodings of runs of zero bytes (the padding past the data), each ending
/// byte-aligned with a sync flush (`… 00 00 FF FF`) and referring to nothing before it.
/// A megabyte of zeros costs about a kilobyte; encodings are cached by length because a
/// stripe's padding runs repeat row after row.
pub struct ZeroRuns {
    level: u32,
    megabyte: Vec<u8>,
    cache: std::collections::HashMap<u64, Vec<u8>>,
}

const ZERO_CHUNK: u64 = 1 << 20;

impl ZeroRuns {
    pub fn new() -> Self {
        let level = 9;
        ZeroRuns {
            megabyte: encode_zeros(ZERO_CHUNK as usize, level),
            level,
            cache: std::collections::HashMap::new(),
        }
    }

    /// Calls `emit` with the encoding of `n` zeros, in order, possibly in several parts.
    pub fn encode(&mut self, n: u64, mut emit: impl FnMut(&[u8])) {
        for _ in 0..n / ZERO_CHUNK {
            emit(&self.megabyte);
        }
        let rest = n % ZERO_CHUNK;
        if rest > 0 {
            if self.cache.len() > 256 {
                self.cache.clear();
            }
            let level = self.level;
            let enc = self
                .cache
                .entry(rest)
                .or_insert_with(|| encode_zeros(rest as usize, level));
            emit(enc);
        }
    }
}

impl Default for ZeroRuns {
    fn default() -> Self {
        Self::new()
    }
}

/// The bytes that end every sync-flushed run: an empty stored block's LEN/NLEN (its 3 header
/// bits sit in the byte before). A stored block that follows reuses that header.
pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

fn encode_zeros(n: usize, level: u32) -> Vec<u8> {
    let zeros = vec![0u8; n];
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = vec![0u8; n / 64 + 256];
    let status = c.compress(&zeros, &mut out, FlushCompress::Sync);
    assert!(
        matches!(status, Ok(Status::Ok)) && c.total_in() as usize == n,
        "zero run fits its buffer"
    );
    out.truncate(c.total_out() as usize);
    assert!(out.ends_with(&SYNC_TAIL));
    out
}

/// Why a piece failed to inflate.
#[derive(Debug, PartialEq, Eq)]
pub enum PieceError {
    Inflate(String),
    WrongLength { expected: usize, got: usize },
    LeftOver { unused: usize },
}

impl std::fmt::Display for PieceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PieceError::Inflate(e) => write!(f, "segment does not inflate: {e}"),
            PieceError::WrongLength { expected, got } => {
                write!(f, "segment inflates to {got} bytes, expected {expected}")
            }
            PieceError::LeftOver { unused } => {
                write!(f, "segment has {unused} bytes left over after its data")
            }
        }
    }
}

/// Inflates one piece into `out`, which must be filled exactly, with all input consumed.
pub fn inflate_piece(
    compressed: &[u8],
    out: &mut [u8],
    inflater: &mut Decompress,
) -> Result<(), PieceError> {
    // Fast path: a single stored block of exactly the right size.
    if compressed.len() == out.len() + STORED_OVERHEAD && compressed[0] == 0x00 {
        let len = u16::from_le_bytes([compressed[1], compressed[2]]);
        let nlen = u16::from_le_bytes([compressed[3], compressed[4]]);
        if len as usize == out.len() && nlen == !len {
            out.copy_from_slice(&compressed[STORED_OVERHEAD..]);
            return Ok(());
        }
    }
    inflate_until_full(compressed, out, inflater)?;
    let (got, used) = (out.len(), inflater.total_in() as usize);
    if used != compressed.len() {
        // The output is full; whatever remains must be nothing but an empty flush block.
        let rest = &compressed[used..];
        let mut probe = [0u8; 1];
        let more = inflater.decompress(rest, &mut probe, FlushDecompress::Sync);
        let extra_out = inflater.total_out() as usize - got;
        let extra_in = inflater.total_in() as usize - used;
        if more.is_err() || extra_out != 0 || extra_in != rest.len() {
            return Err(PieceError::LeftOver {
                unused: compressed.len() - used,
            });
        }
    }
    Ok(())
}

/// Inflates from the start of `compressed` until `out` is full: exactly full, and without
/// reaching a final block (one inside a piece would end the PNG's stream early).
fn inflate_until_full(
    compressed: &[u8],
    out: &mut [u8],
    inflater: &mut Decompress,
) -> Result<(), PieceError> {
    inflater.reset(false);
    let status = inflater
        .decompress(compressed, out, FlushDecompress::Sync)
        .map_err(|e| PieceError::Inflate(e.to_string()))?;
    let got = inflater.total_out() as usize;
    if got != out.len() {
        return Err(PieceError::WrongLength {
            expected: out.len(),
            got,
        });
    }
    if status == Status::StreamEnd {
        return Err(PieceError::Inflate(
            "segment ends the deflate stream".into(),
        ));
    }
    Ok(())
}

/// Inflates one segment of a compressed payload — raw deflate ending with a full flush, as
/// [`deflate_or_store`] writes it — into `out`, which it must fill exactly. libdeflate decodes
/// only whole streams, so the segment is given an empty final block (`03 00`) first; output
/// beyond `out` is an error (a bomb cannot grow it). The caller checks the segment's CRC-32.
pub fn inflate_segment(coded: &[u8], out: &mut [u8]) -> Result<(), PieceError> {
    thread_local! {
        static STATE: std::cell::RefCell<(libdeflater::Decompressor, Vec<u8>)> =
            std::cell::RefCell::new((libdeflater::Decompressor::new(), Vec::new()));
    }
    STATE.with(|state| {
        let (decompressor, whole) = &mut *state.borrow_mut();
        whole.clear();
        whole.extend_from_slice(coded);
        whole.extend_from_slice(&FINAL_EMPTY_BLOCK);
        match decompressor.deflate_decompress(whole, out) {
            Ok(got) if got == out.len() => Ok(()),
            Ok(got) => Err(PieceError::WrongLength {
                expected: out.len(),
                got,
            }),
            Err(libdeflater::DecompressionError::InsufficientSpace) => Err(PieceError::Inflate(
                format!("segment inflates to more than {} bytes", out.len()),
            )),
            Err(e) => Err(PieceError::Inflate(e.to_string())),
        }
    })
}

/// Inflates the self-contained deflate sequence at the start of `compressed` until `out` is
/// full (index version 2, where a piece's length is not recorded: whatever follows it is
/// another piece or padding). The caller checks the result against the tile's CRC.
pub fn inflate_piece_prefix(
    compressed: &[u8],
    out: &mut [u8],
    inflater: &mut Decompress,
) -> Result<(), PieceError> {
    inflate_until_full(compressed, out, inflater)
}

/// Adler-32 of `a ‖ b` from adler32(a), adler32(b) and len(b) (zlib's adler32_combine).
pub fn adler32_combine(adler1: u32, adler2: u32, len2: u64) -> u32 {
    const BASE: u64 = 65521;
    let rem = len2 % BASE;
    let mut sum1 = u64::from(adler1 & 0xffff);
    let mut sum2 = (rem * sum1) % BASE;
    sum1 += u64::from(adler2 & 0xffff) + BASE - 1;
    sum2 += u64::from(adler1 >> 16) + u64::from(adler2 >> 16) + BASE - rem;
    if sum1 >= BASE {
        sum1 -= BASE;
    }
    if sum1 >= BASE {
        sum1 -= BASE;
    }
    if sum2 >= BASE << 1 {
        sum2 -= BASE << 1;
    }
    if sum2 >= BASE {
        sum2 -= BASE;
    }
    ((sum2 << 16) | sum1) as u32
}

pub fn adler32(data: &[u8]) -> u32 {
    let mut a = simd_adler32::Adler32::new();
    a.write(data);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn adler_combine_matches_direct() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for split in [0, 1, 5552, 65521, 70000, 100_000] {
            let (a, b) = data.split_at(split);
            assert_eq!(
                adler32_combine(adler32(a), adler32(b), b.len() as u64),
                adler32(&data),
                "split {split}"
            );
        }
    }

    #[test]
    fn pieces_join_into_one_valid_zlib_stream_and_inflate_alone() {
        let pieces: Vec<Vec<u8>> = vec![
            vec![0u8; 1025],
            (0..1024u32).map(|i| (i * 7919 % 256) as u8).collect(),
            b"hello hello hello hello hello".repeat(30),
            (0..1024u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ];
        for level in [0, 1, 6, 9] {
            let mut c = PieceCompressor::new(level);
            let mut stream = ZLIB_HEADER.to_vec();
            let mut spans = vec![];
            let mut adler = 1u32;
            for p in &pieces {
                let start = stream.len();
                let n = c.compress(p, &mut stream);
                assert!(n <= p.len() + STORED_OVERHEAD);
                spans.push(start..start + n);
                adler = adler32_combine(adler, adler32(p), p.len() as u64);
            }
            stream.extend_from_slice(&FINAL_EMPTY_BLOCK);
            stream.extend_from_slice(&adler.to_be_bytes());
            let mut all = vec![];
            flate2::read::ZlibDecoder::new(&stream[..])
                .read_to_end(&mut all)
                .unwrap();
            assert_eq!(all, pieces.concat());
            let mut inflater = Decompress::new(false);
            for (p, span) in pieces.iter().zip(&spans) {
                let mut out = vec![0u8; p.len()];
                inflate_piece(&stream[span.clone()], &mut out, &mut inflater).unwrap();
                assert_eq!(&out, p);
                let mut short = vec![0u8; p.len() - 1];
                assert!(inflate_piece(&stream[span.clone()], &mut short, &mut inflater).is_err());
                let mut long = vec![0u8; p.len() + 1];
                assert!(inflate_piece(&stream[span.clone()], &mut long, &mut inflater).is_err());
            }
        }
    }

    #[test]
    fn random_data_is_stored_not_grown() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let raw: Vec<u8> = (0..1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let mut out = vec![];
        let n = PieceCompressor::new(1).compress(&raw, &mut out);
        assert_eq!(n, raw.len() + STORED_OVERHEAD);
    }
}
#[cfg(test)]
mod compressible_pieces {
    #[test]
    fn text_piece_shrinks() {
        let raw: Vec<u8> = b"the quick brown fox jumps over the lazy dog "
            .iter()
            .copied()
            .cycle()
            .take(1024)
            .collect();
        let mut c = super::PieceCompressor::new(1);
        let mut out = vec![];
        let n1 = c.compress(&raw, &mut out);
        let n2 = c.compress(&raw, &mut out);
        assert!(n1 < 200 && n2 < 200);
    }
}
