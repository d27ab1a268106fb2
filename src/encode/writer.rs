//! The sequential end of the encode pipeline: pieces in stream order into fixed-size IDAT
//! chunks, the Adler-32 of the whole stream combined from the pieces', and the index entries
//! (version 2, docs/LAYOUT.md).
//!
//! What goes into the stream is cheaper than one coded unit per piece:
//! * consecutive raw (stored) pieces share stored blocks of up to 65535 bytes, and their index
//!   entries point at the bytes themselves (RAW flag);
//! * padding pieces (tiles past the data) have no index entry and join one zero run, coded as
//!   long deflate matches; so do all-zero pieces of the data, whose entries point at the start
//!   of the run they joined; a run followed by raw bytes lends the stored block its header;
//! * deflated pieces are written as they come, self-contained.
//!
//! Runs and blocks are closed at every stripe boundary, so a stripe starts on a fresh unit.

use std::io::{self, Seek, SeekFrom, Write};

use super::idat::IdatWriter;
use crate::format::index::{IndexHeader, RAW_FLAG};
use crate::format::segment::{
    adler32_combine, ZeroRuns, FINAL_EMPTY_BLOCK, STORED_OVERHEAD, SYNC_TAIL,
};

/// Most bytes one stored block holds.
const STORED_MAX: usize = 0xffff;

/// Rows `first_row..first_row + n` of one tile, coded.
pub struct GroupOutput {
    pub column: u64,
    pub stripe: u64,
    pub hilbert_index: u64,
    pub first_row: u64,
    /// The pieces, one after another.
    pub bytes: Vec<u8>,
    pub piece_lens: Vec<u32>,
    /// Adler-32 and length of each piece's raw (filtered) bytes.
    pub adlers: Vec<u32>,
    pub raw_lens: Vec<u32>,
    /// Whether each piece's raw bytes are all zero: the writer then codes it as part of a zero
    /// run (index v2) instead of the piece's own bytes.
    pub zero: Vec<bool>,
    /// CRC-32 of these rows' pixels, to be combined into the tile's CRC.
    pub crc: crc32fast::Hasher,
}

/// What the index needs once the stream is complete.
pub struct StreamSummary {
    pub stream_length: u64,
    pub pieces_end: u64,
    pub stripe_starts: Vec<u64>,
    pub tile_crcs: Vec<u32>,
    /// CRC-32 state over the piece-offset table as written (to be combined into the chunk CRC).
    pub piece_table_crc: crc32fast::Hasher,
}

pub struct StreamWriter<'w, W: Write + Seek> {
    idat: IdatWriter<'w, W>,
    stream_pos: u64,
    adler: u32,
    tiles_per_side: u64,
    tile_side: u64,
    /// Where the index chunk's data starts; None writes no index (the plain layout).
    index_data_pos: Option<u64>,
    header: IndexHeader,
    stripe_starts: Vec<u64>,
    tile_crcs: Vec<u32>,
    tile_crc_state: Vec<Option<crc32fast::Hasher>>,
    /// Entries of the current stripe's pieces, column-major, relative to the stripe start.
    stripe_offsets: Vec<u32>,
    /// Hilbert index of each column's tile in the current stripe.
    stripe_tiles: Vec<u64>,
    current_stripe: Option<u64>,
    rows_done_in_stripe: u64,
    data_tiles: u64,
    /// CRC-32 of each data tile's entries (combined in Hilbert order at the end).
    entry_crcs: Vec<u32>,
    /// Raw bytes of the open stored block, its stream position, and how many of its 5 header
    /// bytes it still has to write (4 when a zero run's sync flush supplied the first one).
    block: Vec<u8>,
    block_start: u64,
    block_header_len: usize,
    pending_zeros: u64,
    zero_runs: ZeroRuns,
}

impl<'w, W: Write + Seek> StreamWriter<'w, W> {
    pub fn new(
        out: &'w mut W,
        chunk_size: u32,
        tiles_per_side: u64,
        tile_side: u64,
        index_data_pos: Option<u64>,
        header: &IndexHeader,
    ) -> Self {
        StreamWriter {
            idat: IdatWriter::new(out, chunk_size as usize),
            stream_pos: 0,
            adler: 1,
            tiles_per_side,
            tile_side,
            index_data_pos,
            header: *header,
            stripe_starts: Vec::with_capacity(tiles_per_side as usize),
            tile_crcs: vec![0; (tiles_per_side * tiles_per_side) as usize],
            tile_crc_state: (0..tiles_per_side).map(|_| None).collect(),
            stripe_offsets: vec![0; (tiles_per_side * tile_side) as usize],
            stripe_tiles: vec![0; tiles_per_side as usize],
            current_stripe: None,
            rows_done_in_stripe: 0,
            data_tiles: header.data_tiles(),
            entry_crcs: vec![0; header.data_tiles() as usize],
            block: Vec::with_capacity(STORED_MAX),
            block_start: 0,
            block_header_len: STORED_OVERHEAD,
            pending_zeros: 0,
            zero_runs: ZeroRuns::new(),
        }
    }

    /// Appends bytes to the zlib stream (not counted in the Adler-32: header and trailer).
    pub fn write_raw(&mut self, data: &[u8]) -> io::Result<()> {
        self.idat.write_all(data)?;
        self.stream_pos += data.len() as u64;
        Ok(())
    }

    /// Writes one row group: the outputs of every tile column of one stripe, same rows.
    pub fn write_group(&mut self, mut group: Vec<GroupOutput>) -> io::Result<()> {
        group.sort_by_key(|g| g.column);
        let stripe = group[0].stripe;
        if self.current_stripe != Some(stripe) {
            self.current_stripe = Some(stripe);
            self.stripe_starts.push(self.stream_pos);
            self.rows_done_in_stripe = 0;
        }
        let stripe_start = *self.stripe_starts.last().expect("pushed above");
        for g in &group {
            self.stripe_tiles[g.column as usize] = g.hilbert_index;
        }
        let rows = group[0].piece_lens.len();
        let mut cursors = vec![0usize; group.len()];
        for r in 0..rows {
            for (g, cursor) in group.iter().zip(cursors.iter_mut()) {
                let len = g.piece_lens[r] as usize;
                let raw_len = g.raw_lens[r] as usize;
                let row = g.first_row + r as u64;
                let piece = &g.bytes[*cursor..*cursor + len];
                *cursor += len;
                self.adler = adler32_combine(self.adler, g.adlers[r], raw_len as u64);
                if g.hilbert_index >= self.data_tiles {
                    // Padding: never read back, so no entry; its zeros join the run.
                    self.close_block()?;
                    self.pending_zeros += raw_len as u64;
                    continue;
                }
                if g.zero[r] {
                    // An all-zero piece joins the zero run too. The run starts afresh where it
                    // starts (nothing refers back past it), so inflating from its start yields
                    // at least this piece's zeros: the entry points there.
                    self.close_block()?;
                    let run_start = self.stream_pos;
                    self.pending_zeros += raw_len as u64;
                    self.stripe_offsets[(g.column * self.tile_side + row) as usize] =
                        (run_start - stripe_start) as u32;
                    continue;
                }
                let is_stored = len == raw_len + STORED_OVERHEAD && piece[0] == 0x00;
                let (at, flag) = if is_stored {
                    (self.append_raw(&piece[STORED_OVERHEAD..])?, RAW_FLAG)
                } else {
                    self.close_block()?;
                    self.close_zeros()?;
                    let at = self.stream_pos;
                    self.write_raw(piece)?;
                    (at, 0)
                };
                let offset = at - stripe_start;
                // A stripe is at most 256 scanlines of the largest grid (2^20 pixels): ~1 GiB.
                debug_assert!(offset < u64::from(RAW_FLAG));
                self.stripe_offsets[(g.column * self.tile_side + row) as usize] =
                    offset as u32 | flag;
            }
        }
        for g in group {
            let state = &mut self.tile_crc_state[g.column as usize];
            match state {
                Some(h) => h.combine(&g.crc),
                None => *state = Some(g.crc),
            }
            if g.first_row + rows as u64 == self.tile_side {
                let h = state.take().expect("set above");
                self.tile_crcs[g.hilbert_index as usize] = h.finalize();
            }
        }
        self.rows_done_in_stripe += rows as u64;
        if self.rows_done_in_stripe == self.tile_side {
            self.finish_stripe(stripe)?;
        }
        Ok(())
    }

    /// Appends raw piece bytes to the open stored block (opening one when needed); returns
    /// the stream position they will occupy.
    fn append_raw(&mut self, data: &[u8]) -> io::Result<u64> {
        if self.pending_zeros > 0 {
            // The run's sync flush ends with an empty stored block: keep its header bits and
            // let this block supply LEN/NLEN.
            self.write_zero_run(true)?;
            self.block_start = self.stream_pos;
            self.block_header_len = SYNC_TAIL.len();
        } else if self.block.len() + data.len() > STORED_MAX || self.block.is_empty() {
            self.close_block()?;
            self.block_start = self.stream_pos;
            self.block_header_len = STORED_OVERHEAD;
        }
        let at = self.block_start + (self.block_header_len + self.block.len()) as u64;
        self.block.extend_from_slice(data);
        Ok(at)
    }

    /// Writes the open stored block, if any.
    fn close_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let len = self.block.len() as u16;
        let mut head = [0u8; STORED_OVERHEAD];
        head[1..3].copy_from_slice(&len.to_le_bytes());
        head[3..5].copy_from_slice(&(!len).to_le_bytes());
        let skip = STORED_OVERHEAD - self.block_header_len;
        self.write_raw(&head[skip..])?;
        let block = std::mem::take(&mut self.block);
        self.write_raw(&block)?;
        self.block = block;
        self.block.clear();
        Ok(())
    }

    /// Writes the pending zero run, whole (ending byte-aligned).
    fn close_zeros(&mut self) -> io::Result<()> {
        if self.pending_zeros > 0 {
            self.write_zero_run(false)?;
        }
        Ok(())
    }

    /// Writes the pending zero run; `open_stored` leaves off its last four bytes
    /// ([`SYNC_TAIL`]) so that a stored block's LEN/NLEN can follow.
    fn write_zero_run(&mut self, open_stored: bool) -> io::Result<()> {
        let n = std::mem::take(&mut self.pending_zeros);
        let mut parts: Vec<Vec<u8>> = Vec::new();
        self.zero_runs.encode(n, |p| parts.push(p.to_vec()));
        let last = parts.len() - 1;
        for (k, part) in parts.iter().enumerate() {
            let keep = if open_stored && k == last {
                part.len() - SYNC_TAIL.len()
            } else {
                part.len()
            };
            self.write_raw(&part[..keep])?;
        }
        Ok(())
    }

    fn finish_stripe(&mut self, stripe: u64) -> io::Result<()> {
        self.close_block()?;
        self.close_zeros()?;
        let Some(index_data_pos) = self.index_data_pos else {
            return Ok(());
        };
        let side = self.tile_side as usize;
        let here = self.idat.out.stream_position()?;
        for column in 0..self.tiles_per_side {
            let j = self.stripe_tiles[column as usize];
            if j >= self.data_tiles {
                continue;
            }
            let c = column as usize;
            let bytes: Vec<u8> = self.stripe_offsets[c * side..(c + 1) * side]
                .iter()
                .flat_map(|o| o.to_be_bytes())
                .collect();
            self.entry_crcs[j as usize] = crc32fast::hash(&bytes);
            let at = index_data_pos + self.header.piece_entries_of(stripe, column, j);
            self.idat.out.seek(SeekFrom::Start(at))?;
            self.idat.out.write_all(&bytes)?;
        }
        self.idat.out.seek(SeekFrom::Start(here))?;
        debug_assert!(self.stripe_starts.len() as u64 <= self.tiles_per_side);
        Ok(())
    }

    /// Ends the deflate stream, writes the Adler-32, the last IDAT and IEND.
    pub fn finish(mut self) -> io::Result<StreamSummary> {
        self.close_block()?;
        self.close_zeros()?;
        let pieces_end = self.stream_pos;
        let entry_len = 4 * self.tile_side;
        let mut piece_table_crc = crc32fast::Hasher::new();
        for &crc in &self.entry_crcs {
            piece_table_crc.combine(&crc32fast::Hasher::new_with_initial_len(crc, entry_len));
        }
        let mut tile_crcs = std::mem::take(&mut self.tile_crcs);
        tile_crcs.truncate(self.data_tiles as usize);
        self.write_raw(&FINAL_EMPTY_BLOCK)?;
        let adler = self.adler.to_be_bytes();
        self.write_raw(&adler)?;
        self.idat.flush_chunk()?;
        self.idat
            .out
            .write_all(&crate::format::png::chunk_bytes(b"IEND", &[]))?;
        Ok(StreamSummary {
            stream_length: self.stream_pos,
            pieces_end,
            stripe_starts: self.stripe_starts,
            tile_crcs,
            piece_table_crc,
        })
    }
}
