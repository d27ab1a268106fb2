//! The segment index of a compressed payload: a private ancillary chunk `rtZX` before the first
//! IDAT (docs/LAYOUT.md, "Compressed payloads").
//!
//! A compressed payload is one zlib stream of the original bytes, in their own order, cut into
//! *segments* of `segment_size` input bytes (the last may be shorter). Each segment is raw
//! deflate that ends byte-aligned with a full flush (or stored blocks), so it inflates on its
//! own, and the whole is still one zlib stream that `zlib.decompress` accepts. The pixels hold
//! that stream as their payload (laid out by the `rtIX` tiles like any other payload).
//!
//! Layout (big-endian, like PNG):
//! ```text
//!  0  magic "PXRTSZIX"
//!  8  version u8 (1)       9 reserved (3 bytes, zero)
//! 12  segment_size u32     16 original size u64     24 encoded size u64 (the zlib stream)
//! 32  segment count u64    40 reserved (8 bytes, zero)
//! 48  (count + 1) × u64    stream offset of each segment's start; the last is the end of the
//!                          last segment (where the final empty block and the Adler-32 begin)
//! ..  count × u32          CRC-32 of each segment's original bytes
//! ```
//! Same letters rule as `rtIX`: ancillary, private, unsafe to copy (an editor that rewrites the
//! pixels drops it).

use crate::format::segment::{stored_len, FINAL_EMPTY_BLOCK, ZLIB_HEADER};

pub const CHUNK_TYPE: [u8; 4] = *b"rtZX";
pub const MAGIC: [u8; 8] = *b"PXRTSZIX";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 48;
/// The largest segment this implementation writes or accepts (bounds a read's memory).
pub const MAX_SEGMENT_SIZE: u32 = 16 << 20;
/// Bytes after the last segment: the final empty block and the Adler-32.
pub const TRAILER_LEN: u64 = FINAL_EMPTY_BLOCK.len() as u64 + 4;

/// The most bytes a segment of `raw` input bytes may take in the stream: its stored form
/// (the encoder never writes more), plus a little slack for a trailing flush.
pub fn max_coded_len(raw: u64) -> u64 {
    stored_len(raw) + 16
}

/// A parsed, checked segment index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentIndex {
    pub segment_size: u32,
    pub original_size: u64,
    pub encoded_size: u64,
    /// `count + 1` stream offsets.
    pub offsets: Vec<u64>,
    pub crcs: Vec<u32>,
}

impl SegmentIndex {
    pub fn count(&self) -> u64 {
        self.crcs.len() as u64
    }

    /// Original bytes `[start, end)` of segment `s`.
    pub fn original_range(&self, s: u64) -> (u64, u64) {
        let start = s * u64::from(self.segment_size);
        (
            start,
            (start + u64::from(self.segment_size)).min(self.original_size),
        )
    }

    /// Stream bytes `[start, end)` of segment `s`.
    pub fn coded_range(&self, s: u64) -> (u64, u64) {
        (self.offsets[s as usize], self.offsets[s as usize + 1])
    }

    /// The segment holding original byte `offset`.
    pub fn segment_of(&self, offset: u64) -> u64 {
        offset / u64::from(self.segment_size)
    }

    pub fn chunk_len(count: u64) -> u64 {
        HEADER_LEN as u64 + 8 * (count + 1) + 4 * count
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::chunk_len(self.count()) as usize);
        b.extend_from_slice(&MAGIC);
        b.push(VERSION);
        b.extend_from_slice(&[0; 3]);
        b.extend_from_slice(&self.segment_size.to_be_bytes());
        b.extend_from_slice(&self.original_size.to_be_bytes());
        b.extend_from_slice(&self.encoded_size.to_be_bytes());
        b.extend_from_slice(&self.count().to_be_bytes());
        b.extend_from_slice(&[0; 8]);
        for o in &self.offsets {
            b.extend_from_slice(&o.to_be_bytes());
        }
        for c in &self.crcs {
            b.extend_from_slice(&c.to_be_bytes());
        }
        b
    }

    /// Parses the chunk data and checks it against the metadata's sizes. Trusts nothing: every
    /// field that later sizes a buffer or a read is bounded here.
    pub fn parse(b: &[u8], original_size: u64, encoded_size: u64) -> Result<Self, String> {
        if b.len() < HEADER_LEN || b[0..8] != MAGIC {
            return Err("segment index has no PXRTSZIX header".into());
        }
        if b[8] != VERSION {
            return Err(format!("segment index version {} is not supported", b[8]));
        }
        let be32 = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        let be64 = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
        let segment_size = be32(12);
        if segment_size == 0 || segment_size > MAX_SEGMENT_SIZE {
            return Err(format!("segment size {segment_size} is out of range"));
        }
        if be64(16) != original_size {
            return Err(format!(
                "segment index covers {} bytes, metadata says {original_size}",
                be64(16)
            ));
        }
        if be64(24) != encoded_size {
            return Err(format!(
                "segment index describes a {}-byte stream, encoded_size is {encoded_size}",
                be64(24)
            ));
        }
        let count = be64(32);
        if count != original_size.div_ceil(u64::from(segment_size)) {
            return Err(format!(
                "segment index has {count} segments, {original_size} bytes need {}",
                original_size.div_ceil(u64::from(segment_size))
            ));
        }
        if b.len() as u64 != Self::chunk_len(count) {
            return Err(format!(
                "segment index is {} bytes, {count} segments need {}",
                b.len(),
                Self::chunk_len(count)
            ));
        }
        let offsets: Vec<u64> = (0..=count as usize)
            .map(|i| be64(HEADER_LEN + 8 * i))
            .collect();
        let crc_at = HEADER_LEN + 8 * (count as usize + 1);
        let crcs: Vec<u32> = (0..count as usize).map(|i| be32(crc_at + 4 * i)).collect();
        let index = SegmentIndex {
            segment_size,
            original_size,
            encoded_size,
            offsets,
            crcs,
        };
        if index.offsets[0] != ZLIB_HEADER.len() as u64 {
            return Err("the first segment does not follow the zlib header".into());
        }
        if index.offsets[count as usize] + TRAILER_LEN != encoded_size {
            return Err("the segments do not end where the stream's trailer begins".into());
        }
        for s in 0..count {
            let (start, end) = index.coded_range(s);
            let (a, z) = index.original_range(s);
            if end <= start || end - start > max_coded_len(z - a) {
                return Err(format!(
                    "segment {s} has an impossible length ({start}..{end} for {} bytes)",
                    z - a
                ));
            }
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        SegmentIndex {
            segment_size: 100,
            original_size: 250,
            encoded_size: 2 + 30 + 40 + 10 + TRAILER_LEN,
            offsets: vec![2, 32, 72, 82],
            crcs: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trips() {
        let i = sample();
        let b = i.to_bytes();
        assert_eq!(b.len() as u64, SegmentIndex::chunk_len(3));
        assert_eq!(SegmentIndex::parse(&b, 250, i.encoded_size).unwrap(), i);
        assert_eq!(i.original_range(2), (200, 250));
        assert_eq!(i.segment_of(199), 1);
    }

    #[test]
    fn lies_are_rejected() {
        let i = sample();
        let b = i.to_bytes();
        assert!(SegmentIndex::parse(&b, 251, i.encoded_size).is_err());
        assert!(SegmentIndex::parse(&b, 250, i.encoded_size + 1).is_err());
        assert!(SegmentIndex::parse(&b[..b.len() - 1], 250, i.encoded_size).is_err());
        let mut bad = i.clone();
        bad.offsets = vec![2, 72, 32, 82];
        assert!(SegmentIndex::parse(&bad.to_bytes(), 250, i.encoded_size).is_err());
        let mut huge = i.clone();
        huge.segment_size = MAX_SEGMENT_SIZE + 1;
        assert!(SegmentIndex::parse(&huge.to_bytes(), 250, i.encoded_size).is_err());
    }
}
