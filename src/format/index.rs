//! The seekable index: a private ancillary chunk `rtIX` placed before the first IDAT
//! (FORMAT.md §5). Lowercase first and second letters: ancillary and private; uppercase third:
//! reserved bit clear; uppercase fourth: unsafe to copy, so an editor that rewrites the pixels
//! drops the chunk instead of keeping an index that no longer matches.
//!
//! Layout (big-endian, like PNG):
//! ```text
//! header (64 bytes)
//!   0  magic "PXRTSIDX"
//!   8  version u8 (2; 1 still read)   9 tile_side_log2 u8     10 reserved u16
//!  12  grid u32           16 payload bytes u64
//!  24  IDAT chunk data size u32 (every IDAT chunk but the last holds exactly this many bytes)
//!  28  tiles per side u32  32 zlib stream length u64   40 end of the last piece u64
//!  48  reserved (16 bytes, zero)
//! stripe_start   tiles_per_side × u64  zlib-stream offset of each stripe's first piece
//! version 2 (written today):
//! tile_crc       data_tiles × u32, by Hilbert tile index: CRC-32 of the tile's row-major pixels
//! piece_entry    data_tiles × tile_side × u32, by Hilbert tile index then tile row:
//!                bit 31 RAW (the piece's bytes lie verbatim inside a stored block),
//!                bits 0..30 offset from the stripe start
//! version 1:
//! tile_crc       tiles² × u32, by Hilbert tile index
//! piece_offset   per stripe, per tile column, per tile row: u32 offset from the stripe start
//! ```
//! `data_tiles = ceil(payload / tile_bytes)`: tiles past the data are padding, which no reader
//! ever decodes, so version 2 spends nothing on them (their zeros are long deflate runs in the
//! stream). A stripe is a row of tiles (`tile_side` scanlines); its pieces are in stream order,
//! row by row, each row left to right. Version 1: a piece's length is the distance to the next
//! piece in stream order. Version 2: a RAW piece is exactly its row's bytes; any other piece is
//! a self-contained deflate sequence read up to its bound ([`IndexHeader::max_piece_len`]) and
//! inflated until its row is full — the tile CRC then checks what came out.

use crate::format::hilbert::TileTables;

pub const CHUNK_TYPE: [u8; 4] = *b"rtIX";
pub const MAGIC: [u8; 8] = *b"PXRTSIDX";
pub const VERSION: u8 = 2;
/// The first layout (dense tables, padding tiles included), still read.
pub const VERSION_DENSE: u8 = 1;
/// Entry flag (version 2): the piece is raw bytes inside a stored block.
pub const RAW_FLAG: u32 = 1 << 31;
pub const HEADER_LEN: usize = 64;

/// Geometry and totals from the index header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    pub version: u8,
    pub tile_side_log2: u8,
    pub grid: u64,
    pub payload_size: u64,
    pub idat_chunk_size: u32,
    pub stream_length: u64,
    pub pieces_end: u64,
}

impl IndexHeader {
    pub fn tile_side(&self) -> u64 {
        1 << self.tile_side_log2
    }
    pub fn tiles_per_side(&self) -> u64 {
        self.grid >> self.tile_side_log2
    }
    pub fn tile_count(&self) -> u64 {
        self.tiles_per_side() * self.tiles_per_side()
    }
    pub fn tile_bytes(&self) -> u64 {
        4 << (2 * self.tile_side_log2)
    }
    /// Tiles holding payload bytes; the rest is padding.
    pub fn data_tiles(&self) -> u64 {
        self.payload_size.div_ceil(self.tile_bytes())
    }
    /// Tiles the CRC and piece tables cover: all of them in version 1, the data tiles in 2.
    pub fn indexed_tiles(&self) -> u64 {
        if self.version == VERSION_DENSE {
            self.tile_count()
        } else {
            self.data_tiles()
        }
    }
    /// Upper bound on a piece's coded length: a stored block of the row with the filter byte.
    pub fn max_piece_len(&self) -> u64 {
        4 * self.tile_side() + 1 + crate::format::segment::STORED_OVERHEAD as u64
    }
    pub fn stripe_table_offset(&self) -> u64 {
        HEADER_LEN as u64
    }
    pub fn tile_crc_offset(&self) -> u64 {
        self.stripe_table_offset() + 8 * self.tiles_per_side()
    }
    pub fn piece_table_offset(&self) -> u64 {
        self.tile_crc_offset() + 4 * self.indexed_tiles()
    }
    /// Offset (in the chunk data) of the entries of the tile at `column` of `stripe`, Hilbert
    /// index `j` (version 1 lists by place, version 2 by Hilbert index).
    pub fn piece_entries_of(&self, stripe: u64, column: u64, j: u64) -> u64 {
        let slot = if self.version == VERSION_DENSE {
            stripe * self.tiles_per_side() + column
        } else {
            j
        };
        self.piece_table_offset() + 4 * slot * self.tile_side()
    }
    /// Total chunk data length.
    pub fn chunk_len(&self) -> u64 {
        self.piece_table_offset() + 4 * self.indexed_tiles() * self.tile_side()
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8] = self.version;
        b[9] = self.tile_side_log2;
        b[12..16].copy_from_slice(&(self.grid as u32).to_be_bytes());
        b[16..24].copy_from_slice(&self.payload_size.to_be_bytes());
        b[24..28].copy_from_slice(&self.idat_chunk_size.to_be_bytes());
        b[28..32].copy_from_slice(&(self.tiles_per_side() as u32).to_be_bytes());
        b[32..40].copy_from_slice(&self.stream_length.to_be_bytes());
        b[40..48].copy_from_slice(&self.pieces_end.to_be_bytes());
        b
    }

    /// Parses and sanity-checks a header against the image it claims to describe.
    pub fn parse(b: &[u8], image_grid: u64, chunk_len: u64) -> Result<Self, String> {
        if b.len() < HEADER_LEN || b[0..8] != MAGIC {
            return Err("index chunk has no PXRTSIDX header".into());
        }
        if b[8] != VERSION && b[8] != VERSION_DENSE {
            return Err(format!("index version {} is not supported", b[8]));
        }
        let be32 = |r: std::ops::Range<usize>| u32::from_be_bytes(b[r].try_into().unwrap());
        let be64 = |r: std::ops::Range<usize>| u64::from_be_bytes(b[r].try_into().unwrap());
        let h = IndexHeader {
            version: b[8],
            tile_side_log2: b[9],
            grid: u64::from(be32(12..16)),
            payload_size: be64(16..24),
            idat_chunk_size: be32(24..28),
            stream_length: be64(32..40),
            pieces_end: be64(40..48),
        };
        if h.grid != image_grid {
            return Err(format!(
                "index describes a {}-pixel grid, image is {image_grid}",
                h.grid
            ));
        }
        if h.tile_side_log2 > 12 || h.tile_side() > h.grid {
            return Err(format!(
                "index tile side 2^{} does not fit the grid",
                h.tile_side_log2
            ));
        }
        if u64::from(be32(28..32)) != h.tiles_per_side() {
            return Err("index tile count disagrees with its geometry".into());
        }
        if h.idat_chunk_size == 0 || h.idat_chunk_size > crate::format::png::MAX_CHUNK_LEN {
            return Err("index IDAT chunk size is invalid".into());
        }
        // Before the table sizes, which grow with the payload (version 2).
        if u128::from(h.payload_size) > crate::format::capacity(h.grid) {
            return Err("index payload size exceeds the grid".into());
        }
        if h.chunk_len() != chunk_len {
            return Err(format!(
                "index chunk is {chunk_len} bytes, its geometry needs {}",
                h.chunk_len()
            ));
        }
        if h.pieces_end > h.stream_length {
            return Err("index pieces end after the stream".into());
        }
        Ok(h)
    }
}

/// Default tile side: 256 pixels (256 KiB of payload per tile, 1 KiB per piece). Measured
/// trade-offs are in docs/LAYOUT.md.
pub const DEFAULT_TILE_SIDE_LOG2: u8 = 8;

/// The tile side used for a grid: the preferred one, or the whole image when it is smaller.
pub fn tile_side_log2_for(grid: u64, preferred_log2: u8) -> u8 {
    let grid_log2 = grid.trailing_zeros() as u8;
    preferred_log2.min(grid_log2)
}

/// Row-major geometry of a piece in the image.
pub fn piece_raw_len(tables: &TileTables, column: u64) -> usize {
    // The first piece of every scanline carries the filter-type byte.
    (4 * tables.tile_side()) as usize + usize::from(column == 0)
}
