//! PixelRTS metadata: the JSON in the `PixelRTS` tEXt chunk (FORMAT.md §2), how we write it
//! (compact, ASCII-only, the reference's key order) and how we find and read it in any file.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::format::png::ChunkHeader;

/// The text of the metadata chunk starts with this magic, directly followed by JSON.
pub const MAGIC: &str = "PixelRTS";
/// The tEXt keyword the reference uses.
pub const KEYWORD: &str = "PixelRTS";
pub const FORMAT_NAME: &str = "PixelRTS-2.0";
pub const MAPPING: &str = "Hilbert space-filling curve";
/// Key whose (possibly huge) value holds the code-mode payload.
pub const B64_KEY: &str = "original_data_b64";
/// Metadata text kept in memory is capped; a code-mode payload is streamed, not kept.
pub const MAX_METADATA_TEXT: usize = 16 << 20;
/// Compressed text chunks (zTXt/iTXt) are inflated in memory up to this size.
pub const MAX_COMPRESSED_TEXT: u64 = 64 << 20;

/// Keys the format owns; a user key with one of these names is ignored.
pub(crate) const RESERVED_KEYS: [&str; 12] = [
    "format",
    "format_version",
    "grid_size",
    "encoding",
    "offsets",
    "hashes",
    "encoding_mode",
    "data_hash",
    "data_size",
    B64_KEY,
    "compression",
    "encoded_size",
];

/// How pixels relate to the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// `RGBA-dense`: pixels are the payload bytes.
    #[default]
    Standard,
    /// `RGBA-code`: pixels are a picture of the code; the bytes live in `original_data_b64`.
    Code,
}

impl Mode {
    pub fn encoding_type(self) -> &'static str {
        match self {
            Mode::Standard => "RGBA-dense",
            Mode::Code => "RGBA-code",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "standard" | "RGBA-dense" => Ok(Mode::Standard),
            "code" | "RGBA-code" => Ok(Mode::Code),
            _ => Err(format!("unknown mode {s:?} (expected standard or code)")),
        }
    }
}

/// A data hash placeholder of the right length: the encoder writes the metadata before it has
/// hashed the input and patches these 64 characters at the end.
pub const HASH_PLACEHOLDER: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// Builds the metadata object in the reference's key order.
/// `user` holds the user's keys in their order; `version` becomes `content_version`.
pub fn build(
    grid: u64,
    mode: Mode,
    user: &Map<String, Value>,
    data_hash: &str,
    data_size: u64,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("format".into(), FORMAT_NAME.into());
    m.insert("format_version".into(), 2.into());
    m.insert("grid_size".into(), grid.into());
    let mut enc = Map::new();
    enc.insert("type".into(), mode.encoding_type().into());
    enc.insert("bytes_per_pixel".into(), 4.into());
    enc.insert("mapping".into(), MAPPING.into());
    m.insert("encoding".into(), Value::Object(enc));
    m.insert("offsets".into(), Value::Object(Map::new()));
    m.insert("hashes".into(), Value::Object(Map::new()));
    m.insert("encoding_mode".into(), mode.encoding_type().into());
    for (key, value) in user {
        let key = if key == "version" {
            "content_version"
        } else {
            key.as_str()
        };
        if RESERVED_KEYS.contains(&key) || m.contains_key(key) {
            continue;
        }
        m.insert(key.to_string(), value.clone());
    }
    m.insert("data_hash".into(), data_hash.into());
    m.insert("data_size".into(), data_size.into());
    if mode == Mode::Code {
        m.insert(B64_KEY.into(), "".into());
    }
    m
}

/// JSON with every non-ASCII character escaped as `\uXXXX`, as Python's `json.dumps` writes it.
/// Non-ASCII characters can only occur inside JSON strings, where an escape means the same.
pub fn to_ascii_json(value: &Value, pretty: bool) -> String {
    let raw = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .expect("serializing a serde_json::Value cannot fail");
    if raw.is_ascii() {
        return raw;
    }
    let mut out = String::with_capacity(raw.len() + 16);
    for ch in raw.chars() {
        if ch.is_ascii() {
            out.push(ch);
        } else {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The tEXt chunk text: magic + compact JSON.
pub fn png_text(map: &Map<String, Value>) -> String {
    format!(
        "{MAGIC}{}",
        to_ascii_json(&Value::Object(map.clone()), false)
    )
}

/// The sidecar file's contents: the same JSON, indented by 2.
pub fn sidecar_text(map: &Map<String, Value>) -> String {
    to_ascii_json(&Value::Object(map.clone()), true)
}

/// The sidecar path for a PNG path: `X.rts.png` → `X.rts.png.meta.json`.
pub fn sidecar_path(png: &Path) -> PathBuf {
    let mut s = png.as_os_str().to_os_string();
    s.push(".meta.json");
    PathBuf::from(s)
}

/// Where a code-mode payload's base64 text is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum B64Source {
    /// In an uncompressed chunk: `len` base64 characters at file offset `offset`.
    File { offset: u64, len: u64 },
    /// Already in memory (from a compressed chunk or a sidecar).
    Inline(String),
}

/// Metadata found in a text chunk: the JSON (payload value excised) and where the payload is.
pub type FoundMetadata = (Map<String, Value>, Option<B64Source>);

/// Where the metadata came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataSource {
    Chunk { kind: String, offset: u64 },
    Sidecar(PathBuf),
}

/// Parsed metadata with the fields the codec relies on, checked.
#[derive(Clone, Debug)]
pub struct Metadata {
    /// Every key, in file order; a code-mode payload's value is replaced by "" (see `b64`).
    pub map: Map<String, Value>,
    pub mode: Mode,
    pub data_size: u64,
    pub data_hash: Option<String>,
    /// Bytes the pixels hold: `encoded_size` for a compressed payload, else `data_size`.
    pub pixel_payload_size: u64,
    pub compressed: bool,
    pub b64: Option<B64Source>,
    pub source: MetadataSource,
}

impl Metadata {
    /// Checks the keys the decoder needs. `grid` is the image side.
    pub fn from_map(
        path: &Path,
        mut map: Map<String, Value>,
        b64: Option<B64Source>,
        source: MetadataSource,
        grid: u64,
    ) -> Result<Self> {
        let bad = |reason: String| Error::bad_metadata(path, reason);
        let data_size = map
            .get("data_size")
            .ok_or_else(|| bad("no data_size".into()))?
            .as_u64()
            .ok_or_else(|| bad("data_size is not a non-negative integer".into()))?;
        let data_hash = match map.get("data_hash") {
            None | Some(Value::Null) => None,
            Some(Value::String(h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(h.to_ascii_lowercase())
            }
            Some(other) => {
                return Err(bad(format!(
                    "data_hash {other} is not a SHA-256 hex digest"
                )))
            }
        };
        let mode_name = map
            .get("encoding")
            .and_then(|e| e.get("type"))
            .or_else(|| map.get("encoding_mode"))
            .and_then(Value::as_str)
            .unwrap_or("RGBA-dense")
            .to_string();
        let mode = match mode_name.as_str() {
            "RGBA-dense" => Mode::Standard,
            "RGBA-code" | "RGBA-semantic" => Mode::Code,
            other => return Err(bad(format!("unknown encoding type {other:?}"))),
        };
        if let Some(g) = map.get("grid_size") {
            if g.as_u64() != Some(grid) {
                return Err(bad(format!(
                    "grid_size {g} does not match the {grid}x{grid} image"
                )));
            }
        }
        let compressed = map.get("compression").is_some_and(|c| !c.is_null());
        let pixel_payload_size = if compressed {
            map.get("encoded_size")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("compression is set but encoded_size is missing".into()))?
        } else {
            data_size
        };
        let b64 = match b64 {
            Some(b) => Some(b),
            None => match map.get_mut(B64_KEY) {
                Some(Value::String(s)) => Some(B64Source::Inline(std::mem::take(s))),
                Some(Value::Null) | None => None,
                Some(_) => return Err(bad(format!("{B64_KEY} is not a string"))),
            },
        };
        if b64.is_none() {
            let capacity = 4u128 * u128::from(grid) * u128::from(grid);
            if u128::from(pixel_payload_size) > capacity {
                return Err(bad(format!(
                    "data of {pixel_payload_size} bytes exceeds grid capacity {capacity} ({grid}x{grid} pixels)"
                )));
            }
            if mode == Mode::Code {
                return Err(bad(format!(
                    "code-mode file without {B64_KEY}: its pixels are a picture of the code and cannot be turned back into bytes"
                )));
            }
        }
        Ok(Metadata {
            map,
            mode,
            data_size,
            data_hash,
            pixel_payload_size,
            compressed,
            b64,
            source,
        })
    }

    /// The metadata as it is in the file, the code-mode payload shown by its size only.
    pub fn display_map(&self) -> Map<String, Value> {
        let mut m = self.map.clone();
        if let Some(b64) = &self.b64 {
            let len = match b64 {
                B64Source::File { len, .. } => *len,
                B64Source::Inline(s) => s.len() as u64,
            };
            m.insert(B64_KEY.into(), format!("<{len} base64 characters>").into());
        }
        m
    }
}

/// Tracks JSON nesting while bytes stream by, so the code-mode payload is recognised only as a
/// top-level key and its value can be skipped without holding it.
#[derive(Default)]
struct JsonScanner {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Inside the value of a top-level `original_data_b64`: bytes are not kept.
    skipping_b64: bool,
}

const B64_MARKER: &[u8] = b"\"original_data_b64\":\"";

/// Outcome of scanning one text chunk.
struct ScannedText {
    json: Vec<u8>,
    /// (start, len) of the base64 value, as offsets into the text.
    b64: Option<(u64, u64)>,
}

/// Scans metadata text from `reader` (the text after the magic check), keeping the JSON but not
/// a top-level `original_data_b64` value. Returns None where the text is not PixelRTS metadata.
fn scan_text(reader: &mut dyn Read, path: &Path) -> Result<Option<ScannedText>> {
    let mut kept: Vec<u8> = Vec::new();
    let mut scanner = JsonScanner::default();
    let mut offset: u64 = 0;
    let mut b64: Option<(u64, u64)> = None;
    let mut block = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut block).at(path)?;
        if n == 0 {
            break;
        }
        for &byte in &block[..n] {
            if offset < MAGIC.len() as u64 + 1 {
                let expected = format!("{MAGIC}{{");
                if byte != expected.as_bytes()[offset as usize] {
                    return Ok(None);
                }
            }
            if scanner.skipping_b64 {
                if byte == b'"' {
                    scanner.skipping_b64 = false;
                    scanner.in_string = false;
                    let (start, _) = b64.expect("set when skipping starts");
                    b64 = Some((start, offset - start));
                    kept.push(b'"');
                }
                offset += 1;
                continue;
            }
            kept.push(byte);
            offset += 1;
            if scanner.in_string {
                if scanner.escaped {
                    scanner.escaped = false;
                } else if byte == b'\\' {
                    scanner.escaped = true;
                } else if byte == b'"' {
                    scanner.in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => {
                    scanner.in_string = true;
                    if scanner.depth == 1 && b64.is_none() && kept.ends_with(B64_MARKER) {
                        scanner.skipping_b64 = true;
                        b64 = Some((offset, 0));
                    }
                }
                b'{' | b'[' => scanner.depth += 1,
                b'}' | b']' => scanner.depth = scanner.depth.saturating_sub(1),
                _ => {}
            }
            if kept.len() > MAX_METADATA_TEXT {
                return Err(Error::limit(
                    path,
                    format!("metadata text is larger than {MAX_METADATA_TEXT} bytes"),
                ));
            }
        }
    }
    if offset <= MAGIC.len() as u64 || scanner.skipping_b64 {
        return Ok(None);
    }
    Ok(Some(ScannedText {
        json: kept.split_off(MAGIC.len()),
        b64,
    }))
}

/// Reads a tEXt/zTXt/iTXt chunk and returns its metadata if it is PixelRTS metadata.
/// The chunk's CRC is checked (streamed, for large tEXt chunks).
pub fn read_text_chunk(
    file: &File,
    path: &Path,
    chunk: &ChunkHeader,
) -> Result<Option<FoundMetadata>> {
    let kind = &chunk.kind;
    // Keyword (1-79 bytes) and a NUL come first in all three chunk types.
    let head_len = chunk.length.min(80 + 2 + 80) as usize;
    let mut head = vec![0u8; head_len];
    file.read_exact_at(&mut head, chunk.data_offset())
        .at(path)?;
    let Some(nul) = head.iter().position(|&b| b == 0) else {
        return Ok(None);
    };
    let mut text_start = nul as u64 + 1;
    let compressed = match kind {
        b"tEXt" => false,
        b"zTXt" => {
            text_start += 1; // compression method
            true
        }
        b"iTXt" => {
            let flag = *head.get(nul + 1).unwrap_or(&0);
            // flag, method, language tag\0, translated keyword\0
            let rest = &head[(nul + 3).min(head.len())..];
            let lang_end = rest.iter().position(|&b| b == 0);
            let Some(lang_end) = lang_end else {
                return read_itxt_slow(file, path, chunk);
            };
            let trans_end = rest[lang_end + 1..].iter().position(|&b| b == 0);
            let Some(trans_end) = trans_end else {
                return read_itxt_slow(file, path, chunk);
            };
            text_start += 2 + lang_end as u64 + 1 + trans_end as u64 + 1;
            flag == 1
        }
        _ => return Ok(None),
    };
    if text_start > u64::from(chunk.length) {
        return Ok(None);
    }
    let text_offset = chunk.data_offset() + text_start;
    let text_len = u64::from(chunk.length) - text_start;
    // Verify the CRC over the whole chunk first (streamed).
    crate::format::png::verify_chunk_crc_streamed(file, path, chunk)?;
    if compressed {
        let mut compressed_bytes = vec![0u8; text_len as usize];
        file.read_exact_at(&mut compressed_bytes, text_offset)
            .at(path)?;
        let mut inflated = Vec::new();
        flate2::read::ZlibDecoder::new(&compressed_bytes[..])
            .take(MAX_COMPRESSED_TEXT + 1)
            .read_to_end(&mut inflated)
            .map_err(|e| {
                Error::corrupt(
                    path,
                    format!("{} chunk does not inflate: {e}", chunk.kind_str()),
                )
            })?;
        if inflated.len() as u64 > MAX_COMPRESSED_TEXT {
            return Err(Error::limit(
                path,
                format!("compressed metadata inflates past {MAX_COMPRESSED_TEXT} bytes"),
            ));
        }
        if !inflated.starts_with(format!("{MAGIC}{{").as_bytes()) {
            return Ok(None);
        }
        let map = parse_json_object(path, &inflated[MAGIC.len()..])?;
        return Ok(Some((map, None)));
    }
    let mut reader = PositionalReader {
        file,
        offset: text_offset,
        remaining: text_len,
    };
    let Some(scanned) = scan_text(&mut reader, path)? else {
        return Ok(None);
    };
    let map = parse_json_object(path, &scanned.json)?;
    let b64 = scanned.b64.map(|(start, len)| B64Source::File {
        offset: text_offset + start,
        len,
    });
    Ok(Some((map, b64)))
}

/// A tEXt chunk's PixelRTS metadata exactly as stored, for rewriting it.
pub(crate) struct RawText {
    /// The chunk's keyword (without the NUL).
    pub keyword: Vec<u8>,
    /// The JSON text after the magic, a top-level code-mode payload's value cut out (`""`).
    pub json: Vec<u8>,
    /// File offset and length of the payload's base64 characters that were cut out.
    pub b64: Option<(u64, u64)>,
}

/// Reads a tEXt chunk (CRC checked, streamed) and returns its metadata text unparsed, or None
/// where it is not PixelRTS metadata. The same recognition as [`read_text_chunk`].
pub(crate) fn read_text_raw(
    file: &File,
    path: &Path,
    chunk: &ChunkHeader,
) -> Result<Option<RawText>> {
    if &chunk.kind != b"tEXt" {
        return Ok(None);
    }
    let head_len = chunk.length.min(80) as usize;
    let mut head = vec![0u8; head_len];
    file.read_exact_at(&mut head, chunk.data_offset())
        .at(path)?;
    let Some(nul) = head.iter().position(|&b| b == 0) else {
        return Ok(None);
    };
    crate::format::png::verify_chunk_crc_streamed(file, path, chunk)?;
    let text_start = nul as u64 + 1;
    let text_offset = chunk.data_offset() + text_start;
    let mut reader = PositionalReader {
        file,
        offset: text_offset,
        remaining: u64::from(chunk.length) - text_start,
    };
    let Some(scanned) = scan_text(&mut reader, path)? else {
        return Ok(None);
    };
    Ok(Some(RawText {
        keyword: head[..nul].to_vec(),
        json: scanned.json,
        b64: scanned.b64.map(|(start, len)| (text_offset + start, len)),
    }))
}

fn read_itxt_slow(file: &File, path: &Path, chunk: &ChunkHeader) -> Result<Option<FoundMetadata>> {
    // Language or translated keyword longer than our header read: rare; read the whole chunk.
    let data = crate::format::png::read_chunk_data(file, path, chunk, MAX_METADATA_TEXT as u32)?;
    // keyword\0 flag method language\0 translated-keyword\0 text
    let fields: Vec<&[u8]> = data.splitn(4, |&b| b == 0).collect();
    if fields.len() < 4 {
        return Ok(None);
    }
    let flag = fields[1].first().copied().unwrap_or(0);
    let text = fields[3];
    let text: Vec<u8> = if flag == 1 {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(text)
            .take(MAX_COMPRESSED_TEXT + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::corrupt(path, format!("iTXt chunk does not inflate: {e}")))?;
        out
    } else {
        text.to_vec()
    };
    if !text.starts_with(format!("{MAGIC}{{").as_bytes()) {
        return Ok(None);
    }
    Ok(Some((parse_json_object(path, &text[MAGIC.len()..])?, None)))
}

pub(crate) fn parse_json_object(path: &Path, json: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::bad_metadata(path, "metadata JSON is not an object")),
        Err(e) => Err(Error::bad_metadata(
            path,
            format!("metadata is not valid JSON: {e}"),
        )),
    }
}

/// Reads a sidecar JSON file (bounded).
pub fn read_sidecar(path: &Path) -> Result<Map<String, Value>> {
    let file = File::open(path).at(path)?;
    let len = file.metadata().at(path)?.len();
    if len > MAX_METADATA_TEXT as u64 * 2 {
        return Err(Error::limit(
            path,
            format!("sidecar of {len} bytes is too large"),
        ));
    }
    let mut text = Vec::with_capacity(len as usize);
    (&file).take(len).read_to_end(&mut text).at(path)?;
    parse_json_object(path, &text)
}

/// The sidecars the reference writes for `png`: `X.rts.png.meta.json`, or for its
/// memory-mapped encoder `X.rts.meta.json`.
pub fn sidecar_candidates(png: &Path) -> Vec<PathBuf> {
    let mut out = vec![sidecar_path(png)];
    let s = png.to_string_lossy();
    if let Some(stem) = s.strip_suffix(".png") {
        out.push(PathBuf::from(format!("{stem}.meta.json")));
    }
    out
}

/// `Read` over a byte range of a file with positional reads.
pub struct PositionalReader<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub remaining: u64,
}

impl Read for PositionalReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.offset)?;
        if got == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file ended inside a chunk",
            ));
        }
        self.offset += got as u64;
        self.remaining -= got as u64;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_follows_reference_key_order_and_renames_version() {
        let mut user = Map::new();
        user.insert("type".into(), "kernel".into());
        user.insert("version".into(), "1.2".into());
        user.insert("grid_size".into(), 99.into()); // collides: ignored
        let m = build(16, Mode::Standard, &user, HASH_PLACEHOLDER, 1000);
        let keys: Vec<_> = m.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "format",
                "format_version",
                "grid_size",
                "encoding",
                "offsets",
                "hashes",
                "encoding_mode",
                "type",
                "content_version",
                "data_hash",
                "data_size"
            ]
        );
        assert_eq!(m["grid_size"], 16);
    }

    #[test]
    fn json_is_ascii_like_python() {
        let v: Value = serde_json::json!({"name": "café 🦀", "n": 1});
        assert_eq!(
            to_ascii_json(&v, false),
            r#"{"name":"caf\u00e9 \ud83e\udd80","n":1}"#
        );
        assert_eq!(
            to_ascii_json(&serde_json::json!({"a": {}}), true),
            "{\n  \"a\": {}\n}"
        );
    }

    #[test]
    fn scanner_skips_only_top_level_payload() {
        let text = br#"PixelRTS{"offsets":{"original_data_b64":"nested"},"d":"x\"original_data_b64\":\"y","original_data_b64":"QUJD","z":1}"#;
        let scanned = scan_text(&mut &text[..], Path::new("t")).unwrap().unwrap();
        let json = String::from_utf8(scanned.json).unwrap();
        assert_eq!(
            json,
            r#"{"offsets":{"original_data_b64":"nested"},"d":"x\"original_data_b64\":\"y","original_data_b64":"","z":1}"#
        );
        let (start, len) = scanned.b64.unwrap();
        assert_eq!(&text[start as usize..(start + len) as usize], b"QUJD");
    }

    #[test]
    fn scanner_rejects_other_text() {
        assert!(scan_text(&mut &b"Comment hello"[..], Path::new("t"))
            .unwrap()
            .is_none());
        assert!(scan_text(&mut &b"PixelRTS-Blueprint{}"[..], Path::new("t"))
            .unwrap()
            .is_none());
    }
}
