//! Opening a container: the PNG's chunks walked once, the metadata (tEXt, or the sidecar),
//! the geometry, and — for files this project wrote — the seekable index (`rtIX`) and the
//! segment index of a compressed payload (`rtZX`), each checked before use. Decode, the
//! random-access reader, the mount's view and its xattrs all start here.

mod seekable;

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub(crate) use seekable::adjacent_runs;
pub use seekable::{SeekableImage, TileScratch};

use crate::error::{Error, IoContext, Result};
use crate::format::metadata::{self, B64Source, Metadata, MetadataSource};
use crate::format::png::{read_ihdr, ChunkHeader, ChunkWalker};

/// An opened container: geometry, metadata, and where the payload is.
pub struct Container {
    pub path: PathBuf,
    pub file: File,
    pub grid: u64,
    pub metadata: Metadata,
    pub seekable: Option<SeekableImage>,
    pub first_idat: Option<ChunkHeader>,
    /// The segment index of a compressed payload written by this project (`rtZX`); None for
    /// uncompressed payloads and for the reference's compressed files.
    pub segments: Option<crate::format::zindex::SegmentIndex>,
    /// A sidecar that disagrees with the PNG's own metadata (the PNG wins).
    pub sidecar_conflict: Option<String>,
}

impl Container {
    /// Opens the file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_file(File::open(path).at(path)?, path)
    }

    /// Opens a file already open as `file` (`path` names it in messages and finds its
    /// sidecar): the container is of that file even if `path` has been replaced since.
    pub fn from_file(file: File, path: &Path) -> Result<Self> {
        if file.metadata().at(path)?.is_dir() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
            ));
        }
        let mut walker = ChunkWalker::new(&file, path)?;
        let ihdr = read_ihdr(&mut walker, path)?;
        let grid = ihdr.pixelrts_grid(path)?;
        if grid > crate::format::MAX_GRID {
            return Err(Error::unsupported(
                path,
                format!(
                    "image side {grid} exceeds the supported maximum {}",
                    crate::format::MAX_GRID
                ),
            ));
        }
        let mut found: Option<(Map<String, Value>, Option<B64Source>, MetadataSource)> = None;
        let mut index_chunk = None;
        let mut segment_chunk = None;
        let mut first_idat = None;
        for chunk in walker.by_ref() {
            let chunk = chunk?;
            match &chunk.kind {
                b"IDAT" => {
                    if first_idat.is_none() {
                        first_idat = Some(chunk);
                    }
                    if found.is_some() {
                        break;
                    }
                }
                b"tEXt" | b"zTXt" | b"iTXt" if found.is_none() => {
                    if let Some((map, b64)) = metadata::read_text_chunk(&file, path, &chunk)? {
                        found = Some((
                            map,
                            b64,
                            MetadataSource::Chunk {
                                kind: chunk.kind_str(),
                                offset: chunk.offset,
                            },
                        ));
                    }
                }
                b"rtIX" if first_idat.is_none() => index_chunk = Some(chunk),
                b"rtZX" if first_idat.is_none() => segment_chunk = Some(chunk),
                _ => {}
            }
        }
        let first_idat_chunk = first_idat;
        let mut sidecar_conflict = None;
        let (map, b64, source) = match found {
            Some(f) => {
                for candidate in metadata::sidecar_candidates(path) {
                    if let Ok(side) = metadata::read_sidecar(&candidate) {
                        for key in ["data_hash", "data_size", "grid_size"] {
                            if side.get(key).is_some() && side.get(key) != f.0.get(key) {
                                sidecar_conflict = Some(format!(
                                    "sidecar {} disagrees on {key} ({} vs {} in the PNG); using the PNG",
                                    candidate.display(),
                                    side[key],
                                    f.0.get(key).cloned().unwrap_or(Value::Null)
                                ));
                            }
                        }
                        break;
                    }
                }
                f
            }
            None => {
                let sidecar = metadata::sidecar_candidates(path)
                    .into_iter()
                    .find(|p| p.is_file());
                match sidecar {
                    Some(p) => (
                        metadata::read_sidecar(&p)?,
                        None,
                        MetadataSource::Sidecar(p),
                    ),
                    None => {
                        return Err(Error::NoMetadata {
                            path: path.to_path_buf(),
                        })
                    }
                }
            }
        };
        let metadata = Metadata::from_map(path, map, b64, source, grid)?;
        let seekable = match (index_chunk, first_idat_chunk) {
            (Some(index), Some(idat)) if metadata.b64.is_none() => {
                let image = SeekableImage::open(path, &file, grid, &index, &idat)?;
                if image.header.payload_size != metadata.pixel_payload_size {
                    return Err(Error::corrupt(
                        path,
                        format!(
                            "index covers {} bytes but metadata says {}",
                            image.header.payload_size, metadata.pixel_payload_size
                        ),
                    ));
                }
                Some(image)
            }
            _ => None,
        };
        let segments = match segment_chunk {
            Some(chunk) if metadata.compressed && metadata.b64.is_none() => {
                let data = crate::format::png::read_chunk_data(
                    &file,
                    path,
                    &chunk,
                    MAX_SEGMENT_INDEX_BYTES,
                )?;
                let index = crate::format::zindex::SegmentIndex::parse(
                    &data,
                    metadata.data_size,
                    metadata.pixel_payload_size,
                )
                .map_err(|e| Error::corrupt(path, e))?;
                check_compression_object(path, &metadata, &index)?;
                Some(index)
            }
            _ => None,
        };
        if metadata.b64.is_none() && first_idat_chunk.is_none() {
            return Err(Error::corrupt(
                path,
                "no IDAT chunk: the image has no pixel data",
            ));
        }
        Ok(Container {
            path: path.to_path_buf(),
            file,
            grid,
            metadata,
            seekable,
            first_idat: first_idat_chunk,
            segments,
            sidecar_conflict,
        })
    }

    /// A JSON summary for `pixelrts info`.
    pub fn info(&self) -> Value {
        let mut info = Map::new();
        info.insert("file".into(), self.path.display().to_string().into());
        info.insert("grid_size".into(), self.grid.into());
        info.insert("data_size".into(), self.metadata.data_size.into());
        info.insert("encoding".into(), self.metadata.mode.encoding_type().into());
        info.insert("seekable".into(), self.seekable.is_some().into());
        if let Some(s) = &self.seekable {
            let h = &s.header;
            info.insert(
                "segments".into(),
                serde_json::json!({
                    "tile_side": h.tile_side(),
                    "tiles": h.tile_count(),
                    "stripes": h.tiles_per_side(),
                    "indexed_pieces": h.indexed_tiles() * h.tile_side(),
                    "index_version": h.version,
                    "piece_bytes": 4 * h.tile_side(),
                    "idat_chunk_size": h.idat_chunk_size,
                    "zlib_stream_bytes": h.stream_length,
                }),
            );
        }
        let source = match &self.metadata.source {
            MetadataSource::Chunk { kind, offset } => format!("{kind} chunk at offset {offset}"),
            MetadataSource::Sidecar(p) => format!("sidecar {}", p.display()),
        };
        info.insert("metadata_source".into(), source.into());
        if let Some(c) = &self.sidecar_conflict {
            info.insert("warning".into(), c.clone().into());
        }
        info.insert(
            "metadata".into(),
            Value::Object(self.metadata.display_map()),
        );
        Value::Object(info)
    }
}

/// The largest segment index accepted (a 10 GiB payload in 64 KiB segments needs 2 MiB).
const MAX_SEGMENT_INDEX_BYTES: u32 = 64 << 20;

/// The `compression` object must agree with the segment index it is read with: a file whose
/// metadata lies about sizes is corrupt, not decoded on trust.
fn check_compression_object(
    path: &Path,
    md: &Metadata,
    index: &crate::format::zindex::SegmentIndex,
) -> Result<()> {
    let c = md.map.get("compression");
    let field = |k: &str| c.and_then(|c| c.get(k)).and_then(Value::as_u64);
    if c.and_then(|c| c.get("type")).and_then(Value::as_str) != Some("zlib") {
        return Err(Error::bad_metadata(
            path,
            "the payload has a zlib segment index but compression.type is not \"zlib\"",
        ));
    }
    for (key, want) in [
        ("original_size", index.original_size),
        ("compressed_size", index.encoded_size),
    ] {
        if let Some(have) = field(key) {
            if have != want {
                return Err(Error::bad_metadata(
                    path,
                    format!("compression.{key} is {have}, the segment index says {want}"),
                ));
            }
        }
    }
    Ok(())
}
