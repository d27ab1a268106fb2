//! A small streaming PNG chunk walker: signature, IHDR, and the list of IDAT chunks.
//!
//! It reads chunk headers with positioned reads and never loads the file. The CRCs of all
//! chunks except IDAT are verified here; IDAT data (and its CRCs) is verified by whoever
//! streams it (the checkpoint index pass).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::checkpoint::CheckpointError;

/// The 8-byte PNG file signature.
pub const PNG_SIGNATURE: [u8; 8] = [137, 80, 78, 71, 13, 10, 26, 10];

/// Largest chunk length the PNG specification allows.
const MAX_CHUNK_LEN: u32 = (1 << 31) - 1;

/// One IDAT chunk: where its data starts in the file and how long it is. Its CRC follows
/// the data directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdatChunk {
    pub data_offset: u64,
    pub len: u32,
}

/// What the walker found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PngLayout {
    pub width: u32,
    pub height: u32,
    /// The IDAT chunks in file order (they are consecutive in the file).
    pub idat: Vec<IdatChunk>,
    /// Total length of the IDAT data (the zlib stream).
    pub idat_len: u64,
}

fn read_exact_at(
    file: &File,
    path: &Path,
    buf: &mut [u8],
    off: u64,
) -> Result<(), CheckpointError> {
    file.read_exact_at(buf, off).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            CheckpointError::Truncated {
                path: path.to_path_buf(),
                what: format!("{} bytes at offset {off} cannot be read", buf.len()),
            }
        } else {
            CheckpointError::io(path, e)
        }
    })
}

fn type_name(t: &[u8; 4]) -> String {
    String::from_utf8_lossy(t).into_owned()
}

/// Walks the chunks of the PNG `file` (of `file_len` bytes) up to IEND.
pub fn walk(file: &File, path: &Path, file_len: u64) -> Result<PngLayout, CheckpointError> {
    let malformed = |reason: String| CheckpointError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let unsupported = |reason: String| CheckpointError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };
    let mut sig = [0u8; 8];
    if file_len < 8 {
        return Err(CheckpointError::NotPng {
            path: path.to_path_buf(),
        });
    }
    read_exact_at(file, path, &mut sig, 0)?;
    if sig != PNG_SIGNATURE {
        return Err(CheckpointError::NotPng {
            path: path.to_path_buf(),
        });
    }
    let mut off = 8u64;
    let mut ihdr: Option<(u32, u32)> = None;
    let mut idat = Vec::new();
    let mut idat_len = 0u64;
    let mut idat_done = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if off + 12 > file_len {
            return Err(CheckpointError::Truncated {
                path: path.to_path_buf(),
                what: format!("no IEND chunk (file ends at {file_len}, next chunk at {off})"),
            });
        }
        let mut head = [0u8; 8];
        read_exact_at(file, path, &mut head, off)?;
        let len = u32::from_be_bytes(head[..4].try_into().unwrap());
        let ctype: [u8; 4] = head[4..].try_into().unwrap();
        if len > MAX_CHUNK_LEN {
            return Err(malformed(format!(
                "chunk at offset {off} has length {len} > 2^31-1"
            )));
        }
        if !ctype.iter().all(u8::is_ascii_alphabetic) {
            return Err(malformed(format!(
                "chunk at offset {off} has an invalid type {:02x?}",
                ctype
            )));
        }
        let data_off = off + 8;
        let end = data_off + u64::from(len) + 4;
        if end > file_len {
            return Err(CheckpointError::Truncated {
                path: path.to_path_buf(),
                what: format!(
                    "{} chunk at offset {off} needs {} bytes, the file has {}",
                    type_name(&ctype),
                    end - off,
                    file_len - off
                ),
            });
        }
        if ihdr.is_none() && &ctype != b"IHDR" {
            return Err(malformed(format!(
                "first chunk is {}, not IHDR",
                type_name(&ctype)
            )));
        }
        match &ctype {
            b"IDAT" => {
                if idat_done {
                    return Err(malformed(format!(
                        "IDAT chunk at offset {off} after other chunks followed IDAT"
                    )));
                }
                idat.push(IdatChunk {
                    data_offset: data_off,
                    len,
                });
                idat_len += u64::from(len);
            }
            _ => {
                if !idat.is_empty() {
                    idat_done = true;
                }
                // Verify the CRC of every other chunk while reading it.
                let mut h = crc32fast::Hasher::new();
                h.update(&ctype);
                let mut pos = data_off;
                let data_end = data_off + u64::from(len);
                let mut first: Option<Vec<u8>> = None;
                while pos < data_end {
                    let n = ((data_end - pos) as usize).min(buf.len());
                    read_exact_at(file, path, &mut buf[..n], pos)?;
                    h.update(&buf[..n]);
                    if first.is_none() && &ctype == b"IHDR" {
                        first = Some(buf[..n].to_vec());
                    }
                    pos += n as u64;
                }
                let mut crc = [0u8; 4];
                read_exact_at(file, path, &mut crc, data_end)?;
                if h.finalize() != u32::from_be_bytes(crc) {
                    return Err(CheckpointError::ChunkCrc {
                        path: path.to_path_buf(),
                        chunk: type_name(&ctype),
                        offset: off,
                    });
                }
                match &ctype {
                    b"IHDR" => {
                        if ihdr.is_some() {
                            return Err(malformed("more than one IHDR chunk".into()));
                        }
                        if len != 13 {
                            return Err(malformed(format!("IHDR has length {len}, not 13")));
                        }
                        let d = first.unwrap_or_default();
                        ihdr = Some(parse_ihdr(&d, &malformed, &unsupported)?);
                    }
                    b"IEND" => break,
                    b"PLTE" => {}
                    _ if ctype[0].is_ascii_uppercase() => {
                        return Err(unsupported(format!(
                            "unknown critical chunk {}",
                            type_name(&ctype)
                        )));
                    }
                    _ => {}
                }
            }
        }
        off = end;
    }
    let (width, height) = ihdr.expect("IHDR is checked first");
    if idat.is_empty() {
        return Err(malformed("no IDAT chunk".into()));
    }
    Ok(PngLayout {
        width,
        height,
        idat,
        idat_len,
    })
}

fn parse_ihdr(
    d: &[u8],
    malformed: &impl Fn(String) -> CheckpointError,
    unsupported: &impl Fn(String) -> CheckpointError,
) -> Result<(u32, u32), CheckpointError> {
    let width = u32::from_be_bytes(d[0..4].try_into().unwrap());
    let height = u32::from_be_bytes(d[4..8].try_into().unwrap());
    let (depth, color, compression, filter, interlace) = (d[8], d[9], d[10], d[11], d[12]);
    if width == 0 || height == 0 || width > MAX_CHUNK_LEN || height > MAX_CHUNK_LEN {
        return Err(malformed(format!(
            "IHDR size {width}x{height} is not in 1..2^31-1"
        )));
    }
    if compression != 0 {
        return Err(malformed(format!("IHDR compression method {compression}")));
    }
    if filter != 0 {
        return Err(malformed(format!("IHDR filter method {filter}")));
    }
    if color != 6 || depth != 8 {
        return Err(unsupported(format!(
            "colour type {color} with bit depth {depth} (only 8-bit RGBA, colour type 6, is supported)"
        )));
    }
    match interlace {
        0 => Ok((width, height)),
        1 => Err(unsupported("interlaced (Adam7) image".into())),
        i => Err(malformed(format!("IHDR interlace method {i}"))),
    }
}
