//! Just enough PNG: the signature, chunk framing with CRC-32, IHDR, and a chunk walker that reads
//! headers only (so finding the metadata of a 10 GiB file costs a few small reads).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

pub const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
/// The largest chunk length PNG allows (2^31 - 1).
pub const MAX_CHUNK_LEN: u32 = 0x7fff_ffff;

/// CRC-32 of a chunk: over its type and data.
pub fn chunk_crc(kind: &[u8; 4], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(kind);
    h.update(data);
    h.finalize()
}

/// A complete chunk (length, type, data, CRC) as bytes.
pub fn chunk_bytes(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 12);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&chunk_crc(kind, data).to_be_bytes());
    out
}

/// IHDR contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ihdr {
    pub width: u32,
    pub height: u32,
    pub bit_depth: u8,
    pub color_type: u8,
    pub compression: u8,
    pub filter: u8,
    pub interlace: u8,
}

impl Ihdr {
    /// An 8-bit RGBA, non-interlaced, square image of side `grid`.
    pub fn rgba8(grid: u32) -> Self {
        Ihdr {
            width: grid,
            height: grid,
            bit_depth: 8,
            color_type: 6,
            compression: 0,
            filter: 0,
            interlace: 0,
        }
    }

    pub fn to_bytes(self) -> [u8; 13] {
        let mut b = [0u8; 13];
        b[0..4].copy_from_slice(&self.width.to_be_bytes());
        b[4..8].copy_from_slice(&self.height.to_be_bytes());
        b[8] = self.bit_depth;
        b[9] = self.color_type;
        b[10] = self.compression;
        b[11] = self.filter;
        b[12] = self.interlace;
        b
    }

    pub fn parse(data: &[u8]) -> Option<Self> {
        if data.len() != 13 {
            return None;
        }
        Some(Ihdr {
            width: u32::from_be_bytes(data[0..4].try_into().ok()?),
            height: u32::from_be_bytes(data[4..8].try_into().ok()?),
            bit_depth: data[8],
            color_type: data[9],
            compression: data[10],
            filter: data[11],
            interlace: data[12],
        })
    }

    /// Checks that this is an image pixelrts can stream: 8-bit RGBA, not interlaced, of a
    /// possible size, with the only compression and filter methods PNG defines.
    pub fn check_rgba8(&self, path: &Path) -> Result<()> {
        if self.width == 0
            || self.height == 0
            || self.width > MAX_CHUNK_LEN
            || self.height > MAX_CHUNK_LEN
        {
            return Err(Error::not_png(
                path,
                format!(
                    "malformed IHDR: size {}x{} is not in 1..2^31-1",
                    self.width, self.height
                ),
            ));
        }
        if self.compression != 0 || self.filter != 0 {
            return Err(Error::not_png(
                path,
                format!(
                    "malformed IHDR: compression method {}, filter method {}",
                    self.compression, self.filter
                ),
            ));
        }
        if self.color_type != 6 || self.bit_depth != 8 {
            let kind = match self.color_type {
                0 => "greyscale",
                2 => "RGB",
                3 => "palette",
                4 => "greyscale+alpha",
                6 => "RGBA",
                _ => "unknown colour type",
            };
            return Err(Error::unsupported(
                path,
                format!(
                    "image is {}-bit {kind} (colour type {}, bit depth {}); 8-bit RGBA is needed",
                    self.bit_depth, self.color_type, self.bit_depth
                ),
            ));
        }
        match self.interlace {
            0 => Ok(()),
            1 => Err(Error::unsupported(path, "interlaced (Adam7) image")),
            i => Err(Error::not_png(
                path,
                format!("malformed IHDR: interlace method {i}"),
            )),
        }
    }

    /// Checks that this image can be a PixelRTS container and returns its grid side.
    pub fn pixelrts_grid(&self, path: &Path) -> Result<u64> {
        self.check_rgba8(path)?;
        if self.width != self.height {
            return Err(Error::unsupported(
                path,
                format!("image is {}x{}, not square", self.width, self.height),
            ));
        }
        if !self.width.is_power_of_two() {
            return Err(Error::unsupported(
                path,
                format!("image side {} is not a power of two", self.width),
            ));
        }
        Ok(u64::from(self.width))
    }
}

/// Where a chunk sits in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// File offset of the chunk's length field.
    pub offset: u64,
    pub length: u32,
    pub kind: [u8; 4],
}

impl ChunkHeader {
    pub fn data_offset(&self) -> u64 {
        self.offset + 8
    }
    pub fn end(&self) -> u64 {
        self.offset + 12 + u64::from(self.length)
    }
    pub fn kind_str(&self) -> String {
        String::from_utf8_lossy(&self.kind).into_owned()
    }
}

/// Reads chunk headers one after another with positional reads, checking that each one fits in
/// the file. It does not read chunk data: callers read (and CRC-check) what they need.
pub struct ChunkWalker<'a> {
    file: &'a File,
    path: &'a Path,
    file_len: u64,
    next: u64,
    done: bool,
}

impl<'a> ChunkWalker<'a> {
    /// Checks the signature and positions the walker on the first chunk.
    pub fn new(file: &'a File, path: &'a Path) -> Result<Self> {
        let file_len = file.metadata().at(path)?.len();
        let mut sig = [0u8; 8];
        if file_len < 8 {
            return Err(Error::not_png(
                path,
                format!("file is {file_len} bytes, too short for a PNG signature"),
            ));
        }
        file.read_exact_at(&mut sig, 0).at(path)?;
        if sig != SIGNATURE {
            return Err(Error::not_png(path, "bad PNG signature"));
        }
        Ok(ChunkWalker {
            file,
            path,
            file_len,
            next: 8,
            done: false,
        })
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Continue walking from an arbitrary chunk boundary.
    pub fn seek_to(&mut self, offset: u64) {
        self.next = offset;
        self.done = false;
    }

    /// Reads and CRC-checks a chunk's data; `limit` caps the length accepted.
    pub fn read_data(&self, chunk: &ChunkHeader, limit: u32) -> Result<Vec<u8>> {
        read_chunk_data(self.file, self.path, chunk, limit)
    }
}

impl Iterator for ChunkWalker<'_> {
    type Item = Result<ChunkHeader>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.next + 12 > self.file_len {
            self.done = true;
            return Some(Err(Error::corrupt(
                self.path,
                format!("file truncated: chunk header at offset {} runs past the end ({} bytes), no IEND", self.next, self.file_len),
            )));
        }
        let mut head = [0u8; 8];
        if let Err(e) = self.file.read_exact_at(&mut head, self.next) {
            self.done = true;
            return Some(Err(Error::io(self.path, e)));
        }
        let length = u32::from_be_bytes(head[0..4].try_into().unwrap());
        let kind: [u8; 4] = head[4..8].try_into().unwrap();
        if length > MAX_CHUNK_LEN || !kind.iter().all(u8::is_ascii_alphabetic) {
            self.done = true;
            return Some(Err(Error::not_png(
                self.path,
                format!("malformed chunk header at offset {}", self.next),
            )));
        }
        let chunk = ChunkHeader {
            offset: self.next,
            length,
            kind,
        };
        if chunk.end() > self.file_len {
            self.done = true;
            return Some(Err(Error::corrupt(
                self.path,
                format!(
                    "file truncated: {} chunk at offset {} needs {} bytes, file has {}",
                    chunk.kind_str(),
                    chunk.offset,
                    chunk.end(),
                    self.file_len
                ),
            )));
        }
        self.next = chunk.end();
        if &kind == b"IEND" {
            self.done = true;
        }
        Some(Ok(chunk))
    }
}

/// Reads and CRC-checks one chunk's data (at most `limit` bytes accepted).
pub fn read_chunk_data(
    file: &File,
    path: &Path,
    chunk: &ChunkHeader,
    limit: u32,
) -> Result<Vec<u8>> {
    if chunk.length > limit {
        return Err(Error::limit(
            path,
            format!(
                "{} chunk of {} bytes exceeds the {} bytes allowed",
                chunk.kind_str(),
                chunk.length,
                limit
            ),
        ));
    }
    let mut buf = vec![0u8; chunk.length as usize + 4];
    file.read_exact_at(&mut buf, chunk.data_offset()).at(path)?;
    let stored = u32::from_be_bytes(buf[chunk.length as usize..].try_into().unwrap());
    buf.truncate(chunk.length as usize);
    if chunk_crc(&chunk.kind, &buf) != stored {
        return Err(crc_mismatch(path, chunk));
    }
    Ok(buf)
}

/// Reads IHDR, which must be the first chunk.
pub fn read_ihdr(walker: &mut ChunkWalker<'_>, path: &Path) -> Result<Ihdr> {
    let first = walker
        .next()
        .ok_or_else(|| Error::not_png(path, "no chunks"))??;
    if &first.kind != b"IHDR" {
        return Err(Error::not_png(path, "first chunk is not IHDR"));
    }
    let data = walker.read_data(&first, 13)?;
    Ihdr::parse(&data).ok_or_else(|| Error::not_png(path, "IHDR is not 13 bytes"))
}

/// Checks a chunk's CRC, reading its data in blocks (for chunks too large to hold).
pub fn verify_chunk_crc_streamed(file: &File, path: &Path, chunk: &ChunkHeader) -> Result<()> {
    let mut h = crc32fast::Hasher::new();
    h.update(&chunk.kind);
    let mut buf = vec![0u8; (chunk.length as usize).clamp(1, 1 << 20)];
    let mut done = 0u64;
    while done < u64::from(chunk.length) {
        let n = (u64::from(chunk.length) - done).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], chunk.data_offset() + done)
            .at(path)?;
        h.update(&buf[..n]);
        done += n as u64;
    }
    let mut stored = [0u8; 4];
    file.read_exact_at(&mut stored, chunk.data_offset() + done)
        .at(path)?;
    if h.finalize() != u32::from_be_bytes(stored) {
        return Err(crc_mismatch(path, chunk));
    }
    Ok(())
}

fn crc_mismatch(path: &Path, chunk: &ChunkHeader) -> Error {
    Error::corrupt(
        path,
        format!(
            "CRC mismatch in {} chunk at offset {}",
            chunk.kind_str(),
            chunk.offset
        ),
    )
}

/// One IDAT chunk's data in the file (its CRC follows the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdatChunk {
    pub data_offset: u64,
    pub len: u32,
}

/// What a reader of the image data needs from a PNG: found by [`layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PngLayout {
    pub width: u32,
    pub height: u32,
    /// The IDAT chunks in file order (consecutive in the file).
    pub idat: Vec<IdatChunk>,
    /// Total length of the IDAT data (the zlib stream).
    pub idat_len: u64,
}

/// Walks every chunk of `file` to IEND: IHDR first (8-bit RGBA, [`Ihdr::check_rgba8`]), the
/// IDAT chunks consecutive, no unknown critical chunk, and the CRC of every chunk but IDAT
/// checked (IDAT data is checked by whoever streams it).
pub fn layout(file: &File, path: &Path) -> Result<PngLayout> {
    let mut walker = ChunkWalker::new(file, path)?;
    let ihdr = read_ihdr(&mut walker, path)?;
    ihdr.check_rgba8(path)?;
    let mut idat = Vec::new();
    let mut idat_len = 0u64;
    let mut idat_done = false;
    for chunk in walker {
        let chunk = chunk?;
        match &chunk.kind {
            b"IDAT" => {
                if idat_done {
                    return Err(Error::not_png(
                        path,
                        format!(
                            "IDAT chunk at offset {} after other chunks followed IDAT",
                            chunk.offset
                        ),
                    ));
                }
                idat.push(IdatChunk {
                    data_offset: chunk.data_offset(),
                    len: chunk.length,
                });
                idat_len += u64::from(chunk.length);
            }
            kind => {
                idat_done |= !idat.is_empty();
                verify_chunk_crc_streamed(file, path, &chunk)?;
                match kind {
                    b"IHDR" => return Err(Error::not_png(path, "more than one IHDR chunk")),
                    b"IEND" | b"PLTE" => {}
                    _ if kind[0].is_ascii_uppercase() => {
                        return Err(Error::unsupported(
                            path,
                            format!("unknown critical chunk {}", chunk.kind_str()),
                        ))
                    }
                    _ => {}
                }
            }
        }
    }
    if idat.is_empty() {
        return Err(Error::not_png(path, "no IDAT chunk"));
    }
    Ok(PngLayout {
        width: ihdr.width,
        height: ihdr.height,
        idat,
        idat_len,
    })
}
