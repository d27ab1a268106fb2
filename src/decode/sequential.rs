//! Decoding any PNG without our index (everything the reference wrote): one sequential pass
//! with the `png` crate, which undoes the adaptive filters; scanlines are gathered a stripe of
//! tiles at a time and each tile's payload is written at its place in the output.

use std::io::BufReader;
use std::os::unix::fs::FileExt;

use super::{Container, HashingWriter, Sink};
use crate::decode::DecodeOptions;
use crate::error::{Error, IoContext, Result};
use crate::format::hilbert::{band_tables, gather_tile_from_band};

/// Stripe buffers stay under this size whatever the grid.
const STRIPE_BUDGET: u64 = 16 << 20;

pub(super) fn decode_sequential(
    c: &Container,
    out: &mut HashingWriter<'_>,
    opts: &DecodeOptions,
) -> Result<()> {
    let path = &c.path;
    let payload = c.metadata.pixel_payload_size;
    let grid = c.grid;
    let tables = band_tables(grid, STRIPE_BUDGET);
    let side = tables.tile_side();
    let tile_bytes = 4 * tables.tile_pixels();
    let tiles_with_data = payload.div_ceil(tile_bytes);
    // Only the stripes that hold payload need decoding: a small payload in a huge (or hostile)
    // image stops early.
    let stripes_needed = (0..tiles_with_data)
        .map(|j| tables.place_of(j).row + 1)
        .max()
        .unwrap_or(0);

    // Positional writes need a file; a stream gets a temporary file first, then a copy.
    let temp;
    let target: &std::fs::File = match &out.sink {
        Sink::File(f) => f,
        Sink::Stream(_) => {
            temp = tempfile::tempfile().map_err(|e| Error::io("<temporary file>", e))?;
            &temp
        }
    };

    let file = c.file.try_clone().at(path)?;
    let mut decoder = png::Decoder::new(BufReader::with_capacity(1 << 20, file));
    decoder.ignore_checksums(false);
    let mut reader = decoder.read_info().map_err(|e| png_error(c, e))?;
    let row_bytes = 4 * grid as usize;
    let mut stripe = vec![0u8; row_bytes * side as usize];
    let mut tile = vec![0u8; tile_bytes as usize];
    let mut part = vec![0u8; tile_bytes as usize];
    for s in 0..stripes_needed {
        for r in 0..side as usize {
            let row = reader
                .next_row()
                .map_err(|e| png_error(c, e))?
                .ok_or_else(|| {
                    Error::corrupt(
                        path,
                        format!("image data ends at scanline {}", s * side + r as u64),
                    )
                })?;
            let data = row.data();
            if data.len() != row_bytes {
                return Err(Error::corrupt(path, "scanline has the wrong length"));
            }
            stripe[r * row_bytes..(r + 1) * row_bytes].copy_from_slice(data);
        }
        for column in 0..tables.tiles_per_side() {
            let place = tables.place_at(column, s);
            let start = place.hilbert_index * tile_bytes;
            if start >= payload {
                continue;
            }
            let len = (payload - start).min(tile_bytes) as usize;
            gather_tile_from_band(&tables, &place, &stripe, &mut tile, &mut part[..len]);
            target
                .write_all_at(&part[..len], start)
                .map_err(|e| Error::io("<output>", e))?;
        }
        if let Some(p) = &opts.progress {
            p(payload * (s + 1) / stripes_needed.max(1), payload);
        }
    }
    // The png crate checks a chunk's CRC when it reads past the chunk's end, which a decode
    // that stops at the last row it needs never does for the chunks after that row, nor for the
    // last IDAT chunk when the last row ends the stream. The random-access reader checks them
    // all: so does the decode, or the two would disagree on a damaged file (the fuzz finding
    // `decode_and_reader_agree_on_a_bad_crc_in_the_last_idat_chunk`). Each CRC is streamed:
    // no inflate, even for a huge image holding a small payload.
    verify_idat_crcs(c)?;
    // Hash (and, for a stream, copy) the payload in order.
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0u64;
    while at < payload {
        let n = (payload - at).min(buf.len() as u64) as usize;
        target
            .read_exact_at(&mut buf[..n], at)
            .map_err(|e| Error::io("<output>", e))?;
        match &mut out.sink {
            Sink::File(_) => {
                use sha2::Digest;
                out.sha.update(&buf[..n]);
                out.written += n as u64;
            }
            Sink::Stream(_) => out.write(&buf[..n]).map_err(|e| Error::io("<output>", e))?,
        }
        at += n as u64;
    }
    Ok(())
}

fn verify_idat_crcs(c: &Container) -> Result<()> {
    use crate::format::png::{layout, verify_chunk_crc_streamed, ChunkHeader};
    for chunk in layout(&c.file, &c.path)?.idat {
        let header = ChunkHeader {
            offset: chunk.data_offset - 8,
            length: chunk.len,
            kind: *b"IDAT",
        };
        verify_chunk_crc_streamed(&c.file, &c.path, &header)?;
    }
    Ok(())
}

fn png_error(c: &Container, e: png::DecodingError) -> Error {
    match e {
        png::DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::corrupt(&c.path, "file truncated inside the image data")
        }
        png::DecodingError::IoError(io) => Error::io(&c.path, io),
        png::DecodingError::Format(f) => Error::corrupt(&c.path, f.to_string()),
        png::DecodingError::LimitsExceeded => {
            Error::limit(&c.path, "image exceeds the decoder's memory limits")
        }
        other => Error::corrupt(&c.path, other.to_string()),
    }
}
