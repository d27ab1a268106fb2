//! Rewriting the metadata of an existing PixelRTS file without re-encoding it (used when the
//! encode directory sees `chmod`/`utimens` after a commit: `rsync -a`, `cp -p`, `touch -d`).
//!
//! The file is streamed into a temporary file beside it: the signature and every chunk are
//! copied verbatim (the IDAT part with `std::io::copy`, which uses `copy_file_range` on Linux,
//! so nothing large is held in memory), except the metadata tEXt chunk, which is written anew.
//! Then fsync, rename over the original, fsync of the folder.
//!
//! Moving every later chunk by the change in length is safe: nothing in the file stores an
//! absolute file offset. The `rtIX` index (`format::index`) holds zlib-stream offsets only
//! (stripe starts, piece offsets relative to them, stream length, IDAT chunk size); the decoder
//! finds the index chunk and the first IDAT by walking the chunks, and a code-mode payload's
//! position in the text chunk is found the same way at open. The checkpoint cache of plain
//! PNGs (`reader::checkpoint`) does record IDAT file offsets, but it is keyed by inode, size
//! and mtime and compares the IDAT layout on load, so a rewritten file never matches it.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::format::metadata::{self, RawText, B64_KEY, MAGIC};
use crate::format::png::{self, ChunkHeader, ChunkWalker, MAX_CHUNK_LEN};
use crate::io_util::AtomicOutput;

/// Rewrites the PixelRTS metadata of the PNG at `png`: `update` gets the metadata (every key,
/// in file order) and changes it; the file is then replaced atomically by a copy whose only
/// difference is the metadata chunk. Keys `update` adds go where the reference puts user keys
/// (before `data_hash`); every other key keeps its place and its exact bytes.
///
/// When `update` changes nothing, the file is left alone. Refused, with the file untouched: a PNG whose metadata is not in a tEXt chunk (sidecar only,
/// or zTXt/iTXt), metadata that would not serialize back to the same bytes (not compact ASCII
/// JSON, or numbers beyond what a JSON round trip keeps), and an `update` that changes a key
/// the format owns (`data_hash`, `data_size`, `grid_size`, `original_data_b64`…).
///
/// The file's permission bits (and owner, where it differs from ours) are kept; its mtime is
/// the time of the rewrite. Readers that opened the file before keep reading the old inode.
pub fn rewrite_metadata(png: &Path, update: impl FnOnce(&mut Map<String, Value>)) -> Result<()> {
    let link = fs::symlink_metadata(png).at(png)?;
    if !link.file_type().is_file() {
        // Renaming over a symlink would replace the link, not the file it names.
        return Err(Error::unsupported(
            png,
            "not a regular file; metadata can only be rewritten in a regular file",
        ));
    }
    let file = File::open(png).at(png)?;
    let info = file.metadata().at(png)?;
    let mut walker = ChunkWalker::new(&file, png)?;
    let file_len = walker.file_len();
    png::read_ihdr(&mut walker, png)?;

    // The chunk the decoder would take (the first text chunk holding PixelRTS metadata),
    // walking on to IEND so that a truncated file is refused before anything is written.
    let mut found: Option<(ChunkHeader, RawText)> = None;
    for chunk in walker {
        let chunk = chunk?;
        if found.is_some() {
            continue;
        }
        match &chunk.kind {
            b"tEXt" => {
                if let Some(raw) = metadata::read_text_raw(&file, png, &chunk)? {
                    found = Some((chunk, raw));
                }
            }
            // Compressed text would have to be recompressed; no writer we know uses it.
            b"zTXt" | b"iTXt" if metadata::read_text_chunk(&file, png, &chunk)?.is_some() => {
                return Err(Error::unsupported(
                    png,
                    format!(
                        "metadata is in a {} chunk; only tEXt metadata can be rewritten",
                        chunk.kind_str()
                    ),
                ));
            }
            _ => {}
        }
    }
    let Some((chunk, raw)) = found else {
        return Err(Error::unsupported(
            png,
            "no PixelRTS metadata in a tEXt chunk (a sidecar is not rewritten)",
        ));
    };

    let old = metadata::parse_json_object(png, &raw.json)?;
    // Keys not touched must keep their bytes: refuse what a parse/serialize round trip changes
    // (whitespace, escapes, integers beyond 64 bits) instead of silently rewriting it.
    if metadata::to_ascii_json(&Value::Object(old.clone()), false).as_bytes() != raw.json {
        return Err(Error::bad_metadata(
            png,
            "metadata is not compact ASCII JSON that serializes back to the same bytes; not rewritten",
        ));
    }
    let mut map = old.clone();
    update(&mut map);
    for key in metadata::RESERVED_KEYS {
        if map.get(key) != old.get(key) {
            return Err(Error::InvalidArgument(format!(
                "{}: metadata key {key:?} belongs to the format and cannot be rewritten",
                png.display()
            )));
        }
    }
    if map == old {
        // Nothing to record (`chmod` to the mode it has): the file stays as it is.
        return Ok(());
    }
    let map = reference_order(&old, map);
    let (text_a, text_c) = serialize_around_b64(&map, raw.b64.is_some());

    let b64_len = raw.b64.map_or(0, |(_, len)| len);
    let new_len =
        raw.keyword.len() as u64 + 1 + (MAGIC.len() + text_a.len() + text_c.len()) as u64 + b64_len;
    if new_len > u64::from(MAX_CHUNK_LEN) {
        return Err(Error::limit(
            png,
            format!("the new metadata chunk would be {new_len} bytes, more than a PNG chunk holds"),
        ));
    }

    let mut out = AtomicOutput::create(png, true)?;
    let dst = &mut out.file;
    let fresh = dst.metadata().at(png)?;
    // Owner first: fchown clears set-id bits, the mode below restores them.
    if (info.uid(), info.gid()) != (fresh.uid(), fresh.gid()) {
        std::os::unix::fs::fchown(&*dst, Some(info.uid()), Some(info.gid())).at(png)?;
    }
    dst.set_permissions(fs::Permissions::from_mode(info.mode() & 0o7777))
        .at(png)?;

    copy_range(&file, dst, 0, chunk.offset, png)?;
    let mut head = Vec::with_capacity(raw.keyword.len() + 1 + MAGIC.len() + text_a.len());
    head.extend_from_slice(&raw.keyword);
    head.push(0);
    head.extend_from_slice(MAGIC.as_bytes());
    head.extend_from_slice(text_a.as_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&chunk.kind);
    crc.update(&head);
    dst.write_all(&(new_len as u32).to_be_bytes()).at(png)?;
    dst.write_all(&chunk.kind).at(png)?;
    dst.write_all(&head).at(png)?;
    if let Some((offset, len)) = raw.b64 {
        // The payload goes through the CRC, so it is read here rather than copied in-kernel.
        copy_hashing(&file, dst, offset, len, &mut crc, png)?;
    }
    crc.update(text_c.as_bytes());
    dst.write_all(text_c.as_bytes()).at(png)?;
    dst.write_all(&crc.finalize().to_be_bytes()).at(png)?;
    copy_range(&file, dst, chunk.end(), file_len - chunk.end(), png)?;
    out.commit(true)
}

/// The updated map with keys it did not have before moved to where the reference puts user
/// keys: just before `data_hash` (at the end when there is none). Existing keys keep their order.
fn reference_order(old: &Map<String, Value>, map: Map<String, Value>) -> Map<String, Value> {
    let added: Vec<&String> = map.keys().filter(|k| !old.contains_key(*k)).collect();
    if added.is_empty() || !map.contains_key("data_hash") {
        return map;
    }
    let mut out = Map::with_capacity(map.len());
    for (k, v) in &map {
        if !old.contains_key(k) {
            continue;
        }
        if k == "data_hash" {
            for a in &added {
                out.insert((*a).clone(), map[*a].clone());
            }
        }
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Compact ASCII JSON of `map` (what `metadata::to_ascii_json` writes), split around the
/// code-mode payload's value when `b64` (its value is then `""` in `map`): the payload's
/// characters go between the two parts.
fn serialize_around_b64(map: &Map<String, Value>, b64: bool) -> (String, String) {
    // serde_json's compact form of an object is exactly `{` key:value,… `}`; writing the entries
    // one by one says where the payload value sits without searching the text for it.
    let mut a = String::from("{");
    let mut c = String::new();
    let mut past_b64 = false;
    for (i, (k, v)) in map.iter().enumerate() {
        let part = if past_b64 { &mut c } else { &mut a };
        if i > 0 {
            part.push(',');
        }
        part.push_str(&metadata::to_ascii_json(&Value::String(k.clone()), false));
        part.push(':');
        if b64 && k == B64_KEY && !past_b64 {
            part.push('"');
            c.push('"');
            past_b64 = true;
        } else {
            part.push_str(&metadata::to_ascii_json(v, false));
        }
    }
    if past_b64 { &mut c } else { &mut a }.push('}');
    (a, c)
}

/// Copies `len` bytes at `offset` of `src` to the current end of `dst`. `io::copy` between
/// files uses `copy_file_range`/`sendfile` where the kernel allows, so the data need not pass
/// through user space.
fn copy_range(src: &File, dst: &mut File, offset: u64, len: u64, path: &Path) -> Result<()> {
    let mut src = src;
    src.seek(SeekFrom::Start(offset)).at(path)?;
    // `Take<&File>` to `File`: the pair std copies in the kernel.
    let copied = std::io::copy(&mut src.take(len), dst).at(path)?;
    if copied != len {
        return Err(Error::corrupt(
            path,
            format!("file ended while copying: {copied} of {len} bytes at offset {offset}"),
        ));
    }
    Ok(())
}

/// Copies `len` bytes at `offset` of `src` to `dst`, feeding them to `crc`.
fn copy_hashing(
    src: &File,
    dst: &mut File,
    mut offset: u64,
    len: u64,
    crc: &mut crc32fast::Hasher,
    path: &Path,
) -> Result<()> {
    let mut buf = vec![0u8; len.clamp(1, 1 << 20) as usize];
    let end = offset + len;
    while offset < end {
        let n = (end - offset).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], offset).at(path)?;
        crc.update(&buf[..n]);
        dst.write_all(&buf[..n]).at(path)?;
        offset += n as u64;
    }
    Ok(())
}
