//! The plain layout for small images: the pixels as one ordinary zlib stream, no `rtIX` index.
//!
//! The seekable layout pays for random access with a restart point per 1 KiB piece, an index
//! entry per piece (0.39%), and a switch from stored bytes to coded zeros wherever payload and
//! padding meet inside a scanline — about 25 bytes a scanline. In a small image the scanlines
//! are short, so those switches dominate: random 1 MiB + 1 B (grid 1024) came out 2.7% larger
//! than its input, 300,000 B 5%. A small image is decoded whole in a few milliseconds anyway,
//! so the index buys nothing there; one zlib stream gets the reference's size (docs/LAYOUT.md,
//! "Small images"). Readers treat these files like the reference's: a sequential decode, or a
//! checkpoint pass before random reads.

use std::io::{self, Write};

use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Status, Strategy};

use super::idat::IdatWriter;
use crate::format::hilbert::TileTables;

/// `--layout auto|seekable|plain`: how the pixels' zlib stream is laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// Plain up to [`PLAIN_MAX_GRID`] (a compressed payload only below it), seekable above.
    #[default]
    Auto,
    /// Restart points and an `rtIX` index (docs/LAYOUT.md): random access at any size.
    Seekable,
    /// One ordinary zlib stream, as the reference writes.
    Plain,
}

impl Layout {
    /// Whether a `grid × grid` image is written plain; `compressed_payload`: its pixels hold
    /// a compressed payload (zlib segments), not the input's bytes.
    ///
    /// A compressed payload of more than 4 MiB (grid 2048) is written seekable: its pixels do
    /// not compress, so the layout costs little (real content, 12 and 16 MiB: +0.41% and
    /// +0.39% over plain), while a plain PNG must be inflated twice to read it, once for the
    /// checkpoint pass and once more around each segment: a cold `cp` of 16 MiB through the
    /// mount took 71 ms plain and 44 ms seekable (squashfuse over zstd: 22 ms).
    pub fn is_plain(self, grid: u64, compressed_payload: bool) -> bool {
        match self {
            Layout::Auto if compressed_payload => grid < PLAIN_MAX_GRID,
            Layout::Auto => grid <= PLAIN_MAX_GRID,
            Layout::Seekable => false,
            Layout::Plain => true,
        }
    }
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Layout::Auto),
            "seekable" => Ok(Layout::Seekable),
            "plain" => Ok(Layout::Plain),
            other => Err(format!(
                "unknown layout '{other}' (expected auto, seekable or plain)"
            )),
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Auto => "auto",
            Layout::Seekable => "seekable",
            Layout::Plain => "plain",
        })
    }
}

/// The largest grid [`Layout::Auto`] writes plain: 2048×2048 pixels, payloads up to 16 MiB
/// (measured in docs/LAYOUT.md: above it the seekable layout stays within 1% + 4 KiB of random
/// input; at or below it, it does not).
pub const PLAIN_MAX_GRID: u64 = 2048;

/// The largest plain grid deflated whole with zlib (payloads up to 4 MiB, ~40 ms for random
/// data with the RLE strategy). Larger plain images go through the piece pipeline without its index — stored
/// runs and zero runs on every core — which is ~20× faster and, with scanlines this long, as
/// small: zlib's Huffman codes charge random bytes about as much as the switches cost.
pub const ZLIB_MAX_GRID: u64 = 1024;

/// How the plain stream is deflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlainCoding {
    pub level: u32,
    /// zlib's RLE strategy (matches at distance 1 only): for payloads that do not compress —
    /// random data, or a compressed payload — where the only redundancy is the zero padding.
    /// Measured with zlib-rs on half-padded random images (grids 512–2048): 2–3× faster than
    /// level 2 and 0.05–0.1% smaller; on compressible pixels it would give up most of the gain.
    pub rle: bool,
}

impl PlainCoding {
    /// For a pieces `level` (0 stores everything) and whether the payload compresses.
    pub fn new(level: u32, compressible: bool) -> Self {
        PlainCoding {
            // zlib-rs level 1 codes with static trees only: random data comes out 1% larger.
            level: if level == 0 { 0 } else { level.max(2) },
            rle: !compressible && level > 0,
        }
    }
}

/// Writes the image data of the grid of `tables` (at most [`ZLIB_MAX_GRID`]) holding `payload`
/// (Hilbert order, zero padded) as IDAT chunks of at most `idat_chunk_size` bytes: one zlib
/// stream of scanlines, each filter type 0 (None). The tiles of `tables` only serve the Hilbert
/// mapping (any tile side will do): the encoder's own. `draw_code` colours the pixels as code
/// mode does.
pub fn write_plain_pixels<W: Write>(
    out: &mut W,
    payload: &[u8],
    tables: &TileTables,
    draw_code: bool,
    coding: PlainCoding,
    idat_chunk_size: usize,
) -> io::Result<()> {
    let grid = tables.grid();
    let side = tables.tile_side() as usize;
    let tile_bytes = 4 * tables.tile_pixels() as usize;
    let mut deflate = Deflate::new_with_config(DeflateConfig {
        level: coding.level as i32,
        strategy: if coding.rle {
            Strategy::Rle
        } else {
            Strategy::Default
        },
        ..DeflateConfig::default()
    });
    let mut idat = IdatWriter::new(out, idat_chunk_size);
    let mut scanline = vec![0u8; 1 + 4 * grid as usize];
    let mut coded = Vec::with_capacity(scanline.len() + 1024);
    for stripe in 0..tables.tiles_per_side() {
        let columns: Vec<(&[u32], &[u8])> = (0..tables.tiles_per_side())
            .map(|column| {
                let place = tables.place_at(column, stripe);
                let start = (place.hilbert_index as usize * tile_bytes).min(payload.len());
                let end = (start + tile_bytes).min(payload.len());
                (tables.locals(&place), &payload[start..end])
            })
            .collect();
        for row in 0..side {
            for (c, (locals, tile_payload)) in columns.iter().enumerate() {
                let dst = &mut scanline[1 + c * 4 * side..1 + (c + 1) * 4 * side];
                super::gather_row(
                    dst,
                    &locals[row * side..(row + 1) * side],
                    tile_payload,
                    draw_code,
                );
            }
            compress(&mut deflate, &scanline, DeflateFlush::NoFlush, &mut coded)?;
            idat.write_all(&coded)?;
        }
    }
    compress(&mut deflate, &[], DeflateFlush::Finish, &mut coded)?;
    idat.write_all(&coded)?;
    idat.finish()
}

/// Runs `deflate` over all of `input` (and, for `Finish`, to the end of the stream), replacing
/// `coded` with what it produced.
fn compress(
    deflate: &mut Deflate,
    mut input: &[u8],
    flush: DeflateFlush,
    coded: &mut Vec<u8>,
) -> io::Result<()> {
    coded.clear();
    loop {
        let start = coded.len();
        coded.resize(start + input.len() + 4096, 0);
        let (before_in, before_out) = (deflate.total_in(), deflate.total_out());
        let status = deflate
            .compress(input, &mut coded[start..], flush)
            .map_err(|e| io::Error::other(format!("deflate: {e:?}")))?;
        input = &input[(deflate.total_in() - before_in) as usize..];
        let produced = (deflate.total_out() - before_out) as usize;
        let room_left = produced < coded.len() - start;
        coded.truncate(start + produced);
        let done = match flush {
            DeflateFlush::Finish => status == Status::StreamEnd,
            _ => input.is_empty() && room_left,
        };
        if done {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::code_mode::code_pixel;

    #[test]
    fn plain_coding_avoids_static_trees_and_stores_at_zero() {
        assert_eq!(
            PlainCoding::new(0, false),
            PlainCoding {
                level: 0,
                rle: false
            }
        );
        assert_eq!(
            PlainCoding::new(1, false),
            PlainCoding {
                level: 2,
                rle: true
            }
        );
        assert_eq!(
            PlainCoding::new(6, true),
            PlainCoding {
                level: 6,
                rle: false
            }
        );
    }

    #[test]
    fn code_pixels_are_coloured() {
        // gather_row colours through code_pixel; a plain image of one pixel shows it.
        let mut png = Vec::new();
        let coding = PlainCoding::new(6, true);
        let tables = TileTables::new(1, 1);
        write_plain_pixels(&mut png, &[1, 2, 3, 4], &tables, true, coding, 1 << 20).unwrap();
        let data_len = u32::from_be_bytes(png[0..4].try_into().unwrap()) as usize;
        let mut raw = Vec::new();
        use std::io::Read;
        flate2::read::ZlibDecoder::new(&png[8..8 + data_len])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw[0], 0);
        assert_eq!(raw[1..5], code_pixel([1, 2, 3, 4]));
    }
}
