//! The sequential end of the encode pipeline: pieces in stream order into fixed-size IDAT
//! chunks, the Adler-32 of the whole stream combined from the pieces', and the index entries.

use std::io::{self, Seek, SeekFrom, Write};

use crate::format::index::IndexHeader;
use crate::format::png::chunk_crc;
use crate::format::segment::{adler32_combine, FINAL_EMPTY_BLOCK};

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
    out: &'w mut W,
    chunk: Vec<u8>,
    chunk_size: usize,
    stream_pos: u64,
    adler: u32,
    tiles_per_side: u64,
    tile_side: u64,
    index_data_pos: u64,
    header: IndexHeader,
    stripe_starts: Vec<u64>,
    tile_crcs: Vec<u32>,
    tile_crc_state: Vec<Option<crc32fast::Hasher>>,
    /// Offsets of the current stripe's pieces, column-major, relative to the stripe start.
    stripe_offsets: Vec<u32>,
    current_stripe: Option<u64>,
    rows_done_in_stripe: u64,
    piece_table_crc: crc32fast::Hasher,
}

impl<'w, W: Write + Seek> StreamWriter<'w, W> {
    pub fn new(
        out: &'w mut W,
        chunk_size: u32,
        tiles_per_side: u64,
        tile_side: u64,
        index_data_pos: u64,
        header: &IndexHeader,
    ) -> Self {
        StreamWriter {
            out,
            chunk: Vec::with_capacity(chunk_size as usize),
            chunk_size: chunk_size as usize,
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
            current_stripe: None,
            rows_done_in_stripe: 0,
            piece_table_crc: crc32fast::Hasher::new(),
        }
    }

    /// Appends bytes to the zlib stream (not counted in the Adler-32: header and trailer).
    pub fn write_raw(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let take = (self.chunk_size - self.chunk.len()).min(data.len());
            self.chunk.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.stream_pos += take as u64;
            if self.chunk.len() == self.chunk_size {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        self.out
            .write_all(&(self.chunk.len() as u32).to_be_bytes())?;
        self.out.write_all(b"IDAT")?;
        self.out.write_all(&self.chunk)?;
        self.out
            .write_all(&chunk_crc(b"IDAT", &self.chunk).to_be_bytes())?;
        self.chunk.clear();
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
        let rows = group[0].piece_lens.len();
        let mut cursors = vec![0usize; group.len()];
        for r in 0..rows {
            for (g, cursor) in group.iter().zip(cursors.iter_mut()) {
                let len = g.piece_lens[r] as usize;
                let row = g.first_row + r as u64;
                self.stripe_offsets[(g.column * self.tile_side + row) as usize] =
                    (self.stream_pos - stripe_start) as u32;
                let piece = &g.bytes[*cursor..*cursor + len];
                *cursor += len;
                self.adler = adler32_combine(self.adler, g.adlers[r], u64::from(g.raw_lens[r]));
                self.write_raw(piece)?;
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

    fn finish_stripe(&mut self, stripe: u64) -> io::Result<()> {
        let bytes: Vec<u8> = self
            .stripe_offsets
            .iter()
            .flat_map(|o| o.to_be_bytes())
            .collect();
        self.piece_table_crc.update(&bytes);
        let at = self.index_data_pos + self.header.piece_offsets_of(stripe, 0);
        let here = self.out.stream_position()?;
        self.out.seek(SeekFrom::Start(at))?;
        self.out.write_all(&bytes)?;
        self.out.seek(SeekFrom::Start(here))?;
        debug_assert!(self.stripe_starts.len() as u64 <= self.tiles_per_side);
        Ok(())
    }

    /// Ends the deflate stream, writes the Adler-32, the last IDAT and IEND.
    pub fn finish(mut self) -> io::Result<StreamSummary> {
        let pieces_end = self.stream_pos;
        self.write_raw(&FINAL_EMPTY_BLOCK)?;
        let adler = self.adler.to_be_bytes();
        self.write_raw(&adler)?;
        self.flush_chunk()?;
        self.out
            .write_all(&crate::format::png::chunk_bytes(b"IEND", &[]))?;
        Ok(StreamSummary {
            stream_length: self.stream_pos,
            pieces_end,
            stripe_starts: self.stripe_starts,
            tile_crcs: self.tile_crcs,
            piece_table_crc: self.piece_table_crc,
        })
    }
}
