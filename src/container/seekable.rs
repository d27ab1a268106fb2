//! Decoding files written with the seekable layout: any tile inflates on its own from the
//! pieces the `rtIX` index points at, and is checked against the tile's CRC before use.

use std::fs::File;
use std::path::{Path, PathBuf};

use flate2::Decompress;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use crate::error::{Error, IoContext, Result};
use crate::format::hilbert::{gather_tile, gather_tile_range, TileTables};
use crate::format::index::{IndexHeader, RAW_FLAG, VERSION_DENSE};
use crate::format::png::ChunkHeader;
use crate::format::segment::{inflate_piece, inflate_piece_prefix, ZLIB_HEADER};

/// Where one piece lies in the zlib stream.
#[derive(Clone, Copy, Debug)]
struct PieceSpan {
    at: u64,
    /// Index v1: the piece's exact length. v2: exact for a raw piece, else an upper bound
    /// (the piece is inflated until its row is full).
    len: u64,
    /// The piece's bytes are the row itself (filter byte first in column 0), inside a stored
    /// block (index v2).
    raw: bool,
}

/// An open seekable image: the index tables that are small enough to keep (stripe starts and
/// tile CRCs), and the file mapped for piece reads.
pub struct SeekableImage {
    path: PathBuf,
    pub header: IndexHeader,
    pub tables: TileTables,
    file: File,
    index_data_offset: u64,
    first_idat_offset: u64,
    stripe_starts: Vec<u64>,
    tile_crcs: Vec<u32>,
}

/// Reusable per-thread state for tile decoding.
pub struct TileScratch {
    inflater: Decompress,
    with_filter: Vec<u8>,
    /// Bytes of one row-major tile.
    tile_len: usize,
    /// One piece read on its own.
    piece: Vec<u8>,
    /// One scanline's pieces of a run of tiles, read together.
    run_reads: Vec<u8>,
}

impl TileScratch {
    pub fn new(image: &SeekableImage) -> Self {
        TileScratch {
            inflater: Decompress::new(false),
            with_filter: vec![0u8; 4 * image.tables.tile_side() as usize + 1],
            tile_len: 4 * image.tables.tile_pixels() as usize,
            piece: Vec::new(),
            run_reads: Vec::new(),
        }
    }
}

impl SeekableImage {
    /// Opens the image given its index chunk and first IDAT chunk; validates the index header,
    /// its CRC and the IDAT framing of the whole stream.
    pub fn open(
        path: &Path,
        file: &File,
        grid: u64,
        index_chunk: &ChunkHeader,
        first_idat: &ChunkHeader,
    ) -> Result<Self> {
        let corrupt = |reason: String| Error::corrupt(path, format!("seekable index: {reason}"));
        crate::format::png::verify_chunk_crc_streamed(file, path, index_chunk)?;
        let file = file.try_clone().at(path)?;
        let data_off = index_chunk.data_offset();
        let mut header_bytes =
            vec![0u8; (index_chunk.length as usize).min(crate::format::index::HEADER_LEN)];
        file.read_exact_at(&mut header_bytes, data_off).at(path)?;
        let header = IndexHeader::parse(&header_bytes, grid, u64::from(index_chunk.length))
            .map_err(corrupt)?;
        let tables = TileTables::new(grid, header.tile_side());
        let m = header.tiles_per_side() as usize;
        // Stripe starts and tile CRCs: small (16 KiB per GiB), kept in memory.
        let mut table =
            vec![0u8; (header.piece_table_offset() - header.stripe_table_offset()) as usize];
        file.read_exact_at(&mut table, data_off + header.stripe_table_offset())
            .at(path)?;
        let (stripe_bytes, crc_bytes) = table.split_at(8 * m);
        let stripe_starts: Vec<u64> = stripe_bytes
            .chunks_exact(8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
            .collect();
        let tile_crcs: Vec<u32> = crc_bytes
            .chunks_exact(4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
            .collect();
        if stripe_starts.windows(2).any(|w| w[0] >= w[1])
            || stripe_starts.first() != Some(&2)
            || stripe_starts[m - 1] >= header.pieces_end
        {
            return Err(corrupt(
                "stripe offsets are not increasing from the stream start".into(),
            ));
        }
        let image = SeekableImage {
            path: path.to_path_buf(),
            header,
            tables,
            file,
            index_data_offset: index_chunk.data_offset(),
            first_idat_offset: first_idat.offset,
            stripe_starts,
            tile_crcs,
        };
        image.check_idat_framing()?;
        let mut zlib = [0u8; 2];
        image.read_stream(0, &mut zlib)?;
        if zlib != ZLIB_HEADER {
            return Err(corrupt(
                "zlib stream does not start with the header this layout writes".into(),
            ));
        }
        Ok(image)
    }

    /// Every IDAT chunk header must sit where the fixed chunk size puts it.
    fn check_idat_framing(&self) -> Result<()> {
        let c = u64::from(self.header.idat_chunk_size);
        let chunks = self.header.stream_length.div_ceil(c);
        let end = self.first_idat_offset + chunks * 12 + self.header.stream_length;
        let file_len = self.file.metadata().at(&self.path)?.len();
        if end > file_len {
            return Err(Error::corrupt(
                &self.path,
                format!("file truncated: image data needs {end} bytes, file has {file_len}"),
            ));
        }
        let mut head = [0u8; 8];
        for k in 0..chunks {
            let at = self.first_idat_offset + k * (c + 12);
            let len = c.min(self.header.stream_length - k * c);
            self.file.read_exact_at(&mut head, at).at(&self.path)?;
            if head[0..4] != (len as u32).to_be_bytes() || &head[4..8] != b"IDAT" {
                return Err(Error::corrupt(
                    &self.path,
                    format!("IDAT chunk {k} at offset {at} does not match the index"),
                ));
            }
        }
        Ok(())
    }

    /// The open PNG (for read-ahead advice on it).
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies `out.len()` bytes of the zlib stream from stream offset `at` (positional reads:
    /// a tile's pieces lie a scanline apart, and mapping them would make resident memory grow
    /// with the image width). IDAT framing was checked at open.
    fn read_stream(&self, mut at: u64, mut out: &mut [u8]) -> Result<()> {
        let c = u64::from(self.header.idat_chunk_size);
        if at + out.len() as u64 > self.header.stream_length {
            return Err(Error::corrupt(
                &self.path,
                "segment lies outside the image data",
            ));
        }
        while !out.is_empty() {
            let within = at % c;
            let chunk_len = c.min(self.header.stream_length - at / c * c);
            let take = ((chunk_len - within) as usize).min(out.len());
            self.file
                .read_exact_at(&mut out[..take], self.stream_to_file_offset(at))
                .at(&self.path)?;
            out = &mut out[take..];
            at += take as u64;
        }
        Ok(())
    }

    /// A tile's pieces lie a whole scanline apart in the file (64 KiB for a 1 GiB payload), so
    /// reading them one after another from a cold disk costs one device round trip each
    /// (measured: 13 ms for a 256-piece tile). When the first piece is not in the page cache
    /// (`RWF_NOWAIT` says so without blocking), ask the kernel to read every piece at once
    /// (`POSIX_FADV_WILLNEED` starts the reads and returns) so the device serves them in
    /// parallel: 3 ms. When the file is cached this costs one non-blocking read.
    fn prefetch_if_cold(&self, spans: &[PieceSpan]) {
        let Some(&PieceSpan { at: first_at, .. }) = spans.first() else {
            return;
        };
        if !self.is_cached(first_at) {
            self.advise_willneed(spans.iter());
        }
    }

    /// Reads each `(start, span)` into `out[start..start + span.len]`. A segment's bytes lie
    /// on a hundred scanlines or so, 64 KiB apart in a large image: read one after another
    /// from a cold disk, each costs a device round trip. So each span is first read only if
    /// the page cache has it (`RWF_NOWAIT`: one system call per span when the file is warm,
    /// as before), then the reads of all the others are started at once
    /// (`POSIX_FADV_WILLNEED`) and waited for one by one.
    fn read_spans(&self, spans: &[(usize, PieceSpan)], out: &mut [u8]) -> Result<()> {
        let mut missing = Vec::new();
        for &(start, span) in spans {
            let dst = &mut out[start..start + span.len as usize];
            if !self.read_if_cached(span.at, dst) {
                missing.push((start, span));
            }
        }
        if missing.len() > 1 {
            self.advise_willneed(missing.iter().map(|(_, span)| span));
        }
        for (start, span) in missing {
            self.read_stream(span.at, &mut out[start..start + span.len as usize])?;
        }
        Ok(())
    }

    /// Fills `out` from stream offset `at` if that needs no device I/O and the range lies in
    /// one IDAT chunk; false otherwise (nothing is known about `out` then).
    fn read_if_cached(&self, at: u64, out: &mut [u8]) -> bool {
        let c = u64::from(self.header.idat_chunk_size);
        if at % c + out.len() as u64 > c || at + out.len() as u64 > self.header.stream_length {
            return false;
        }
        let iov = libc::iovec {
            iov_base: out.as_mut_ptr().cast(),
            iov_len: out.len(),
        };
        let offset = self.stream_to_file_offset(at) as libc::off_t;
        // SAFETY: one iovec pointing at `out`, which lives through the call.
        let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        n == out.len() as isize
    }

    /// Starts the kernel reading these spans (best effort: a failure only means the reads
    /// that follow wait one at a time).
    fn advise_willneed<'a>(&self, spans: impl Iterator<Item = &'a PieceSpan>) {
        let fd = self.file.as_raw_fd();
        for &PieceSpan { at, len, .. } in spans {
            // The span may cross an IDAT boundary: advise the 12 framing bytes too.
            let offset = self.stream_to_file_offset(at);
            // SAFETY: no memory is passed.
            unsafe {
                libc::posix_fadvise(
                    fd,
                    offset as libc::off_t,
                    (len + 12) as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                );
            }
        }
    }

    /// Whether the stream byte at `at` can be read without waiting for the device.
    fn is_cached(&self, at: u64) -> bool {
        let mut probe = [0u8; 1];
        let iov = libc::iovec {
            iov_base: probe.as_mut_ptr().cast(),
            iov_len: probe.len(),
        };
        let offset = self.stream_to_file_offset(at) as libc::off_t;
        // SAFETY: one iovec pointing at a live 1-byte buffer.
        let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        // EAGAIN: not cached. Other errors (EOPNOTSUPP on filesystems without RWF_NOWAIT):
        // treat as cached, the plain reads below report any real error.
        n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
    }

    fn stream_to_file_offset(&self, at: u64) -> u64 {
        let c = u64::from(self.header.idat_chunk_size);
        self.first_idat_offset + (at / c) * (c + 12) + 8 + at % c
    }

    /// The index entries of the tile at (`column`, `stripe`), Hilbert index `j`.
    fn piece_entries(&self, stripe: u64, column: u64, j: u64) -> Result<Vec<u32>> {
        let side = self.header.tile_side() as usize;
        let mut raw = vec![0u8; 4 * side];
        let at = self.index_data_offset + self.header.piece_entries_of(stripe, column, j);
        self.file.read_exact_at(&mut raw, at).at(&self.path)?;
        Ok(raw
            .chunks_exact(4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
            .collect())
    }

    /// Stream offsets where stripe `stripe`'s pieces start and end.
    fn stripe_bounds(&self, stripe: u64) -> (u64, u64) {
        let start = self.stripe_starts[stripe as usize];
        let end = if stripe + 1 < self.header.tiles_per_side() {
            self.stripe_starts[stripe as usize + 1]
        } else {
            self.header.pieces_end
        };
        (start, end)
    }

    fn entry_out_of_range(&self, column: u64, stripe: u64) -> Error {
        Error::corrupt(
            &self.path,
            format!("index entry for tile ({column}, {stripe}) is out of range"),
        )
    }

    /// Where each piece of the tile at (`column`, `stripe`), Hilbert index `j`, lies.
    fn piece_spans(&self, stripe: u64, column: u64, j: u64) -> Result<Vec<PieceSpan>> {
        if j >= self.header.data_tiles() {
            // Padding: no reader needs it, and index v2 has no entries for it.
            return Err(Error::corrupt(
                &self.path,
                format!("tile {j} holds no payload bytes"),
            ));
        }
        if self.header.version == VERSION_DENSE {
            return self.piece_spans_dense(stripe, column);
        }
        let (start, end) = self.stripe_bounds(stripe);
        let row_len = 4 * self.header.tile_side() + u64::from(column == 0);
        let bound = self.header.max_piece_len();
        self.piece_entries(stripe, column, j)?
            .into_iter()
            .map(|entry| {
                let raw = entry & RAW_FLAG != 0;
                let at = start + u64::from(entry & !RAW_FLAG);
                if at >= end || (raw && at + row_len > end) {
                    return Err(self.entry_out_of_range(column, stripe));
                }
                let len = if raw { row_len } else { bound.min(end - at) };
                Ok(PieceSpan { at, len, raw })
            })
            .collect()
    }

    /// Index v1: a piece's length is the distance to the next piece in stream order.
    fn piece_spans_dense(&self, stripe: u64, column: u64) -> Result<Vec<PieceSpan>> {
        let side = self.header.tile_side() as usize;
        let m = self.header.tiles_per_side();
        let (start, end) = self.stripe_bounds(stripe);
        let entries = |column: u64| -> Result<Vec<u64>> {
            let js = 0; // v1 lists entries by place, not by Hilbert index.
            Ok(self
                .piece_entries(stripe, column, js)?
                .into_iter()
                .map(u64::from)
                .collect())
        };
        let own = entries(column)?;
        let next: Vec<u64> = if column + 1 < m {
            entries(column + 1)?
        } else {
            let firsts = entries(0)?;
            (0..side)
                .map(|r| {
                    if r + 1 < side {
                        firsts[r + 1]
                    } else {
                        end - start
                    }
                })
                .collect()
        };
        let max_len = self.header.max_piece_len();
        own.iter()
            .zip(&next)
            .map(|(&a, &b)| {
                if b <= a || b - a > max_len || start + b > end {
                    Err(self.entry_out_of_range(column, stripe))
                } else {
                    Ok(PieceSpan {
                        at: start + a,
                        len: b - a,
                        raw: false,
                    })
                }
            })
            .collect()
    }

    /// Inflates one piece (row `r` of the tile at `column`, `stripe`) into `row`.
    #[allow(clippy::too_many_arguments)]
    fn inflate_row(
        &self,
        j: u64,
        stripe: u64,
        column: u64,
        r: usize,
        piece: &[u8],
        span: PieceSpan,
        scratch: &mut TileScratch,
        row: &mut [u8],
    ) -> Result<()> {
        let dense = self.header.version == VERSION_DENSE;
        let mut inflate = |piece: &[u8], out: &mut [u8]| {
            if span.raw {
                out.copy_from_slice(piece);
                Ok(())
            } else if dense {
                inflate_piece(piece, out, &mut scratch.inflater)
            } else {
                inflate_piece_prefix(piece, out, &mut scratch.inflater)
            }
        };
        let result = if column == 0 {
            // The scanline's filter byte comes first; this layout always writes 0 (None).
            let mut with_filter = std::mem::take(&mut scratch.with_filter);
            let res = inflate(piece, &mut with_filter);
            let filter = with_filter[0];
            if res.is_ok() {
                row.copy_from_slice(&with_filter[1..]);
            }
            scratch.with_filter = with_filter;
            if res.is_ok() && filter != 0 {
                return Err(Error::corrupt(
                    &self.path,
                    format!(
                        "scanline {} uses filter {filter}, not None",
                        stripe * self.tables.tile_side() + r as u64,
                    ),
                ));
            }
            res
        } else {
            inflate(piece, row)
        };
        result.map_err(|e| Error::corrupt(&self.path, format!("tile {j}, row {r}: {e}")))
    }

    /// Copies payload bytes `[offset, offset + out.len())` straight out of raw pieces (index
    /// v2) without decoding whole tiles: each row of a tile that holds some of them is read in
    /// part, once. Nothing here checks the bytes — no tile CRC covers part of a tile — so only
    /// callers that verify what they make of them may use this (a compressed segment, whose
    /// CRC-32 is checked after inflating). Returns false when a piece it needs is not raw; the
    /// caller then decodes whole tiles. `band` is working memory (its contents do not matter;
    /// callers keep it between reads so that it is not zeroed and faulted in each time).
    pub fn read_raw_payload(
        &self,
        offset: u64,
        out: &mut [u8],
        band: &mut Vec<u8>,
    ) -> Result<bool> {
        if self.header.version == VERSION_DENSE {
            return Ok(false);
        }
        let side = self.tables.tile_side() as usize;
        let row_bytes = 4 * side;
        let tile_bytes = 4 * self.tables.tile_pixels();
        let end = offset + out.len() as u64;
        if end > self.header.payload_size {
            return Err(Error::corrupt(&self.path, "read past the payload"));
        }
        let mut lo = vec![0u32; side];
        let mut hi = vec![0u32; side];
        let mut spans = Vec::new();
        let mut at = offset;
        while at < end {
            let j = at / tile_bytes;
            let tile_start = j * tile_bytes;
            let tile_end = (tile_start + tile_bytes).min(end);
            let place = self.tables.place_of(j);
            let (first_px, end_px) = (
                ((at - tile_start) / 4) as usize,
                (tile_end - tile_start).div_ceil(4) as usize,
            );
            self.tables
                .row_extents(&place, first_px, end_px, &mut lo, &mut hi);
            let y0 = lo.iter().zip(&hi).position(|(l, h)| l <= h).unwrap_or(0);
            let y1 = lo.iter().zip(&hi).rposition(|(l, h)| l <= h).unwrap_or(0);
            // The tile's pieces, their entries checked against the stripe as for a decode.
            let pieces = self.piece_spans(place.row, place.column, j)?;
            let filter = u64::from(place.column == 0);
            spans.clear();
            for y in (y0..=y1).filter(|&y| lo[y] <= hi[y]) {
                if !pieces[y].raw {
                    return Ok(false);
                }
                spans.push((
                    (y - y0) * row_bytes + 4 * lo[y] as usize,
                    PieceSpan {
                        at: pieces[y].at + filter + 4 * u64::from(lo[y]),
                        len: 4 * u64::from(hi[y] - lo[y] + 1),
                        raw: true,
                    },
                ));
            }
            // The rows land where they lie in the band of the tile's rows y0..=y1 (~100 KiB
            // for a 128 KiB segment), so the gather is the whole-tile one; only the bytes
            // read are gathered.
            band.resize((y1 + 1 - y0) * row_bytes, 0);
            self.read_spans(&spans, band)?;
            gather_tile_range(
                self.tables.positions(&place),
                band,
                y0 * row_bytes,
                (at - tile_start) as usize,
                &mut out[(at - offset) as usize..(tile_end - offset) as usize],
            );
            at = tile_end;
        }
        Ok(true)
    }

    /// The piece spans of `count` tiles of `stripe` from `first_column` on, their reads
    /// started at once when the file is not in the page cache.
    fn run_spans(
        &self,
        stripe: u64,
        first_column: u64,
        tiles: &[u64],
    ) -> Result<Vec<Vec<PieceSpan>>> {
        let spans: Vec<Vec<PieceSpan>> = (first_column..)
            .zip(tiles)
            .map(|(column, &j)| self.piece_spans(stripe, column, j))
            .collect::<Result<_>>()?;
        let all: Vec<PieceSpan> = spans.iter().flatten().copied().collect();
        self.prefetch_if_cold(&all);
        Ok(spans)
    }

    /// Decodes the tiles of one stripe at consecutive columns `first_column..` together:
    /// their pieces in each scanline are adjacent in the stream, so one read per scanline
    /// fetches all of them. `outputs[k]` receives the payload of the tile at
    /// `first_column + k` (Hilbert index `tiles[k]`).
    pub fn decode_run(
        &self,
        stripe: u64,
        first_column: u64,
        tiles: &[u64],
        outputs: &mut [&mut [u8]],
        scratch: &mut TileScratch,
        pixels: &mut Vec<u8>,
    ) -> Result<()> {
        let spans = self.run_spans(stripe, first_column, tiles)?;
        let tile_len = scratch.tile_len;
        // Every byte is inflated into below before it is used: only growth is zeroed.
        pixels.resize(tile_len * tiles.len(), 0);
        let mut run_reads = std::mem::take(&mut scratch.run_reads);
        let inflated = self.inflate_run(
            stripe,
            first_column,
            tiles,
            scratch,
            &mut run_reads,
            &spans,
            pixels,
        );
        scratch.run_reads = run_reads;
        // Each tile checked and gathered while it is still in the CPU's cache.
        let result = inflated.and_then(|()| {
            for (k, (&j, out)) in tiles.iter().zip(outputs.iter_mut()).enumerate() {
                let tile = &pixels[k * tile_len..(k + 1) * tile_len];
                self.check_tile_crc(j, tile)?;
                let place = self.tables.place_of(j);
                gather_tile(self.tables.positions(&place), tile, out);
            }
            Ok(())
        });
        result
    }

    /// As [`decode_run`](Self::decode_run) but stops before the gather: `pixels` (`tiles.len()`
    /// row-major tiles) receives the CRC-checked pixels, for a [`crate::gpu::TileMapper`] to
    /// gather in a batch.
    pub fn decode_run_pixels(
        &self,
        stripe: u64,
        first_column: u64,
        tiles: &[u64],
        pixels: &mut [u8],
        scratch: &mut TileScratch,
        run_buf: &mut Vec<u8>,
    ) -> Result<()> {
        let spans = self.run_spans(stripe, first_column, tiles)?;
        self.inflate_run(
            stripe,
            first_column,
            tiles,
            scratch,
            run_buf,
            &spans,
            pixels,
        )?;
        let tile_len = scratch.tile_len;
        for (k, &j) in tiles.iter().enumerate() {
            self.check_tile_crc(j, &pixels[k * tile_len..(k + 1) * tile_len])?;
        }
        Ok(())
    }

    /// Inflates every scanline of a run of adjacent tiles into `pixels` (row-major tiles).
    #[allow(clippy::too_many_arguments)]
    fn inflate_run(
        &self,
        stripe: u64,
        first_column: u64,
        tiles: &[u64],
        scratch: &mut TileScratch,
        run_buf: &mut Vec<u8>,
        spans: &[Vec<PieceSpan>],
        pixels: &mut [u8],
    ) -> Result<()> {
        let row_bytes = 4 * self.tables.tile_side() as usize;
        let tile_len = scratch.tile_len;
        let mut lone = std::mem::take(&mut scratch.piece);
        for r in 0..self.tables.tile_side() as usize {
            // Index v2 bounds a deflated piece's length from above, so spans may overlap
            // their neighbours, and a zero piece points at the start of its zero run, which
            // may lie rows earlier: pieces close together come in one read, others alone.
            let start = spans
                .iter()
                .map(|t| t[r].at)
                .min()
                .expect("a run has tiles");
            let end = spans
                .iter()
                .map(|t| t[r].at + t[r].len)
                .max()
                .expect("a run has tiles");
            let together = end - start <= (tiles.len() * (row_bytes + 16)) as u64;
            if together {
                run_buf.resize((end - start) as usize, 0);
                self.read_stream(start, run_buf)?;
            }
            for (k, tile_spans) in spans.iter().enumerate() {
                let span = tile_spans[r];
                let piece = if together {
                    &run_buf[(span.at - start) as usize..(span.at - start + span.len) as usize]
                } else {
                    lone.resize(span.len as usize, 0);
                    self.read_stream(span.at, &mut lone)?;
                    &lone[..]
                };
                let row =
                    &mut pixels[k * tile_len + r * row_bytes..k * tile_len + (r + 1) * row_bytes];
                self.inflate_row(
                    tiles[k],
                    stripe,
                    first_column + k as u64,
                    r,
                    piece,
                    span,
                    scratch,
                    row,
                )?;
            }
        }
        scratch.piece = lone;
        Ok(())
    }

    fn check_tile_crc(&self, j: u64, tile: &[u8]) -> Result<()> {
        let crc = crc32fast::hash(tile);
        if crc != self.tile_crcs[j as usize] {
            return Err(Error::corrupt(
                &self.path,
                format!(
                    "tile {j} fails its CRC check (stored {:08x}, computed {crc:08x})",
                    self.tile_crcs[j as usize]
                ),
            ));
        }
        Ok(())
    }
}

/// Longest run of adjacent tiles decoded with one read per scanline.
const MAX_RUN_TILES: usize = 8;

/// Groups the tiles `js[i]`, `i` in `missing`, into runs of at most [`MAX_RUN_TILES`] tiles
/// of one stripe at adjacent columns (left to right), which decode with one read per
/// scanline.
pub(crate) fn adjacent_runs(tables: &TileTables, js: &[u64], missing: &[usize]) -> Vec<Vec<usize>> {
    let mut placed: Vec<(u64, u64, usize)> = missing
        .iter()
        .map(|&i| {
            let p = tables.place_of(js[i]);
            (p.row, p.column, i)
        })
        .collect();
    placed.sort_unstable();
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut previous: Option<(u64, u64)> = None;
    for (row, column, i) in placed {
        let extends = matches!(previous, Some((r, c)) if r == row && c + 1 == column)
            && runs.last().is_some_and(|run| run.len() < MAX_RUN_TILES);
        match runs.last_mut() {
            Some(run) if extends => run.push(i),
            _ => runs.push(vec![i]),
        }
        previous = Some((row, column));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::Container;
    use crate::encode::compressed::CompressMode;
    use crate::encode::{encode_file, EncodeOptions, Layout};
    use proptest::prelude::*;

    /// A seekable image of `len` random bytes with 16-pixel tiles (raw pieces: random data
    /// does not deflate), its payload.
    fn random_image(len: usize) -> (tempfile::TempDir, SeekableImage, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let input = dir.path().join("in.bin");
        std::fs::write(&input, &data).unwrap();
        let output = dir.path().join("in.rts.png");
        let opts = EncodeOptions {
            sidecar: false,
            layout: Layout::Seekable,
            compress: CompressMode::None,
            tile_side_log2: Some(4),
            ..Default::default()
        };
        encode_file(&input, &output, &opts).unwrap();
        let image = Container::open(&output).unwrap().seekable.unwrap();
        (dir, image, data)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Reads straight from raw pieces (any start, any length, across tiles) return the
        /// payload's bytes.
        #[test]
        fn raw_payload_reads_match_the_payload(start in 0usize..40_000, len in 1usize..5_000) {
            static IMAGE: std::sync::OnceLock<(tempfile::TempDir, SeekableImage, Vec<u8>)> =
                std::sync::OnceLock::new();
            let (_dir, image, data) = IMAGE.get_or_init(|| random_image(45_000));
            let end = (start + len).min(data.len());
            let mut out = vec![0u8; end - start];
            prop_assert!(image
                .read_raw_payload(start as u64, &mut out, &mut Vec::new())
                .unwrap());
            prop_assert_eq!(&out[..], &data[start..end]);
        }
    }
}
