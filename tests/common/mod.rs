//! Helpers shared by the integration tests: running the CLI, reading PNGs independently of the
//! library (png crate + Hilbert walk), assembling hand-made PNG files, deterministic data.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Map, Value};

/// The `pixelrts` binary built by cargo for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pixelrts"))
}

/// The reference vectors (copied into the repository from ../shared/vectors/reference, so a
/// clean clone runs its tests on its own).
pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

/// Runs `pixelrts ARGS…` and returns its output (never panics on a non-zero exit).
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    Command::new(bin())
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} {:?}: {e}", bin().display(), args))
}

/// Describes a command's outcome for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
            .chars()
            .take(4000)
            .collect::<String>(),
        String::from_utf8_lossy(&out.stderr)
            .chars()
            .take(4000)
            .collect::<String>()
    )
}

/// Runs the CLI and asserts success.
#[track_caller]
pub fn run_ok<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let out = run(&args);
    assert!(
        out.status.success(),
        "pixelrts {:?} failed: {}",
        args,
        describe(&out)
    );
    out
}

/// Asserts a clean failure: non-zero exit, not a panic (101), not killed by a signal, and a
/// stderr that names `file_name` and contains at least one of `words` (case-insensitive).
#[track_caller]
pub fn assert_clean_failure(out: &Output, what: &str, file_name: &str, words: &[&str]) {
    let code = out.status.code();
    assert!(
        code.is_some(),
        "{what}: killed by a signal: {}",
        describe(out)
    );
    let code = code.unwrap();
    assert_ne!(code, 0, "{what}: should fail: {}", describe(out));
    assert_ne!(code, 101, "{what}: panicked: {}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked at"),
        "{what}: panic message on stderr: {}",
        describe(out)
    );
    assert!(
        stderr.contains(file_name),
        "{what}: stderr does not name {file_name}: {}",
        describe(out)
    );
    let lower = stderr.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(&w.to_lowercase())),
        "{what}: stderr mentions none of {words:?}: {}",
        describe(out)
    );
}

/// Deterministic pseudo-random bytes (xorshift64*), stable across runs and platforms.
pub fn prng_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        v.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(n);
    v
}

/// FORMAT.md §1 automatic grid rule, written out independently of the library.
pub fn expected_grid(n: u64) -> u64 {
    if n == 0 {
        return 1;
    }
    let mut g = 4u64;
    while 4 * g * g < n {
        g *= 2;
    }
    g
}

/// Classic Hilbert d2xy from FORMAT.md (independent copy, to check the library's).
pub fn d2xy(n: u64, d: u64) -> (u64, u64) {
    let (mut x, mut y, mut t, mut s) = (0u64, 0u64, d, 1u64);
    while s < n {
        let rx = 1 & (t >> 1);
        let ry = 1 & (t ^ rx);
        if ry == 0 {
            if rx == 1 {
                x = s - 1 - x;
                y = s - 1 - y;
            }
            std::mem::swap(&mut x, &mut y);
        }
        x += s * rx;
        y += s * ry;
        t >>= 2;
        s <<= 1;
    }
    (x, y)
}

/// A decoded PNG: size, RGBA8 pixels in row-major order, and the raw chunks.
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

/// Decodes a PNG with the `png` crate (no transformations: must be 8-bit RGBA already).
pub fn png_decode(bytes: &[u8]) -> Result<Decoded, String> {
    let mut dec = png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: 1 << 30 });
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec.read_info().map_err(|e| format!("png read_info: {e}"))?;
    let info = reader.info();
    if info.color_type != png::ColorType::Rgba || info.bit_depth != png::BitDepth::Eight {
        return Err(format!(
            "not RGBA8: {:?} {:?}",
            info.color_type, info.bit_depth
        ));
    }
    let (width, height) = (info.width, info.height);
    let mut rgba = vec![0u8; reader.output_buffer_size().ok_or("no buffer size")?];
    reader
        .next_frame(&mut rgba)
        .map_err(|e| format!("png next_frame: {e}"))?;
    reader.finish().map_err(|e| format!("png finish: {e}"))?;
    Ok(Decoded {
        width,
        height,
        rgba,
    })
}

/// One PNG chunk as found in a file.
pub struct Chunk {
    pub kind: [u8; 4],
    pub data: Vec<u8>,
}

/// Splits a PNG into chunks, checking the signature and every CRC.
pub fn png_chunks(bytes: &[u8]) -> Result<Vec<Chunk>, String> {
    if bytes.len() < 8 || bytes[..8] != PNG_SIG {
        return Err("bad signature".into());
    }
    let mut pos = 8usize;
    let mut out = Vec::new();
    while pos < bytes.len() {
        if pos + 12 > bytes.len() {
            return Err(format!("truncated chunk header at {pos}"));
        }
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = bytes[pos + 4..pos + 8].try_into().unwrap();
        let end = pos + 12 + len;
        if end > bytes.len() {
            return Err(format!(
                "truncated chunk {:?}",
                String::from_utf8_lossy(&kind)
            ));
        }
        let data = bytes[pos + 8..pos + 8 + len].to_vec();
        let crc = u32::from_be_bytes(bytes[end - 4..end].try_into().unwrap());
        if crc != chunk_crc(&kind, &data) {
            return Err(format!(
                "CRC mismatch in {:?}",
                String::from_utf8_lossy(&kind)
            ));
        }
        let is_end = &kind == b"IEND";
        out.push(Chunk { kind, data });
        pos = end;
        if is_end {
            break;
        }
    }
    Ok(out)
}

/// The PixelRTS metadata JSON of a PNG (first tEXt whose text starts with `PixelRTS{`).
pub fn png_metadata(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    for c in png_chunks(bytes)? {
        if &c.kind == b"tEXt" {
            if let Some(nul) = c.data.iter().position(|&b| b == 0) {
                let text = &c.data[nul + 1..];
                if let Some(json) = text.strip_prefix(b"PixelRTS") {
                    if json.first() == Some(&b'{') {
                        let v: Value = serde_json::from_slice(json)
                            .map_err(|e| format!("metadata JSON: {e}"))?;
                        return v
                            .as_object()
                            .cloned()
                            .ok_or_else(|| "metadata is not an object".into());
                    }
                }
            }
        }
    }
    Err("no PixelRTS tEXt chunk".into())
}

/// Gathers `n` payload bytes from row-major RGBA pixels along the Hilbert curve.
pub fn hilbert_gather(rgba: &[u8], grid: u64, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 4);
    let pixels = n.div_ceil(4) as u64;
    for d in 0..pixels {
        let (x, y) = d2xy(grid, d);
        let p = 4 * (y * grid + x) as usize;
        out.extend_from_slice(&rgba[p..p + 4]);
    }
    out.truncate(n);
    out
}

/// Decodes a standard-mode PixelRTS PNG with the png crate only: pixels along the Hilbert
/// curve, `data_size` from the metadata; code mode returns `original_data_b64`. Also checks
/// that every pixel after the data is zero (FORMAT.md §1).
pub fn independent_rust_decode(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let meta = png_metadata(bytes)?;
    let size = meta
        .get("data_size")
        .and_then(Value::as_u64)
        .ok_or("no data_size")? as usize;
    let dec = png_decode(bytes)?;
    if dec.width != dec.height || !dec.width.is_power_of_two() {
        return Err(format!(
            "image {}x{} is not a power-of-two square",
            dec.width, dec.height
        ));
    }
    let grid = dec.width as u64;
    if let Some(b64) = meta.get("original_data_b64") {
        let b64 = b64.as_str().ok_or("original_data_b64 is not a string")?;
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("base64: {e}"));
    }
    if size as u64 > 4 * grid * grid {
        return Err("data_size exceeds grid".into());
    }
    let full = hilbert_gather(&dec.rgba, grid, (4 * grid * grid) as usize);
    if full[size..].iter().any(|&b| b != 0) {
        return Err("non-zero padding after the data".into());
    }
    Ok(full[..size].to_vec())
}

pub const PNG_SIG: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

pub fn chunk_crc(kind: &[u8; 4], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(kind);
    h.update(data);
    h.finalize()
}

/// Assembles PNG files chunk by chunk, with correct lengths and CRCs.
pub struct PngBuilder {
    pub bytes: Vec<u8>,
}

impl Default for PngBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PngBuilder {
    pub fn new() -> Self {
        PngBuilder {
            bytes: PNG_SIG.to_vec(),
        }
    }
    pub fn chunk(mut self, kind: &[u8; 4], data: &[u8]) -> Self {
        self.bytes
            .extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(kind);
        self.bytes.extend_from_slice(data);
        self.bytes
            .extend_from_slice(&chunk_crc(kind, data).to_be_bytes());
        self
    }
    pub fn ihdr(self, w: u32, h: u32, depth: u8, color: u8) -> Self {
        let mut d = Vec::with_capacity(13);
        d.extend_from_slice(&w.to_be_bytes());
        d.extend_from_slice(&h.to_be_bytes());
        d.extend_from_slice(&[depth, color, 0, 0, 0]);
        self.chunk(b"IHDR", &d)
    }
    /// A `tEXt` chunk with keyword `PixelRTS` and text `PixelRTS` + compact JSON.
    pub fn metadata(self, meta: &Value) -> Self {
        let mut d = b"PixelRTS\0PixelRTS".to_vec();
        d.extend_from_slice(serde_json::to_string(meta).unwrap().as_bytes());
        self.chunk(b"tEXt", &d)
    }
    /// IDAT chunks (at most 64 KiB each) holding `zlib`.
    pub fn idat(mut self, zlib: &[u8]) -> Self {
        if zlib.is_empty() {
            return self.chunk(b"IDAT", &[]);
        }
        for part in zlib.chunks(65536) {
            self = self.chunk(b"IDAT", part);
        }
        self
    }
    pub fn iend(self) -> Vec<u8> {
        self.chunk(b"IEND", &[]).bytes
    }
}

/// zlib-compresses `raw`.
pub fn zlib(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(raw).unwrap();
    e.finish().unwrap()
}

/// Filtered scanlines (filter type 0) for an image whose rows are `row_bytes` wide.
pub fn filter_none(pixels: &[u8], row_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pixels.len() + pixels.len() / row_bytes.max(1) + 1);
    for row in pixels.chunks(row_bytes) {
        out.push(0);
        out.extend_from_slice(row);
    }
    out
}

/// PixelRTS metadata in the reference's key order, for hand-made files.
pub fn reference_metadata(grid: u64, data: &[u8]) -> Value {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    serde_json::json!({
        "format": "PixelRTS-2.0",
        "format_version": 2,
        "grid_size": grid,
        "encoding": {"type": "RGBA-dense", "bytes_per_pixel": 4, "mapping": "Hilbert space-filling curve"},
        "offsets": {},
        "hashes": {},
        "encoding_mode": "RGBA-dense",
        "data_hash": hex,
        "data_size": data.len(),
    })
}

/// Row-major RGBA pixels of a `grid`-sided image holding `payload` along the Hilbert curve.
pub fn hilbert_scatter(payload: &[u8], grid: u64) -> Vec<u8> {
    let mut rgba = vec![0u8; (4 * grid * grid) as usize];
    for (d, px) in payload.chunks(4).enumerate() {
        let (x, y) = d2xy(grid, d as u64);
        let p = 4 * (y * grid + x) as usize;
        rgba[p..p + px.len()].copy_from_slice(px);
    }
    rgba
}

/// A complete, valid PixelRTS PNG written independently of the library (standard mode).
pub fn handmade_pixelrts(data: &[u8]) -> Vec<u8> {
    let grid = expected_grid(data.len() as u64);
    let rgba = hilbert_scatter(data, grid);
    PngBuilder::new()
        .ihdr(grid as u32, grid as u32, 8, 6)
        .metadata(&reference_metadata(grid, data))
        .idat(&zlib(&filter_none(&rgba, 4 * grid as usize)))
        .iend()
}

/// Files in `dir` (names only), sorted.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// True when `pngcheck` is on PATH.
pub fn pngcheck_available() -> bool {
    Command::new("pngcheck").arg("-h").output().is_ok()
}

/// Runs `pngcheck -q FILE`; panics with a clear message when pngcheck is not installed.
#[track_caller]
pub fn assert_pngcheck(file: &Path) {
    assert!(
        pngcheck_available(),
        "pngcheck is not installed: install it (Debian: `apt-get install -y pngcheck`, or run .ci/run, which does)"
    );
    let out = Command::new("pngcheck")
        .arg("-q")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pngcheck -q {} failed: {}",
        file.display(),
        describe(&out)
    );
}

/// Runs the independent Pillow decoder; returns the decoded bytes.
#[track_caller]
pub fn python_decode(file: &Path, out: &Path) -> Vec<u8> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent_decode.py");
    let res = Command::new("python3")
        .arg(&script)
        .arg(file)
        .arg(out)
        .output();
    let res = res.unwrap_or_else(|e| {
        panic!("cannot run python3 (install Python 3 with Pillow, or run .ci/run): {e}")
    });
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        !stderr.contains("No module named 'PIL'"),
        "Pillow is not installed for python3: run `python3 -m pip install Pillow` (or .ci/run, which does)"
    );
    assert!(
        res.status.success(),
        "independent_decode.py {} failed: {}",
        file.display(),
        describe(&res)
    );
    std::fs::read(out).unwrap()
}

/// A compressed file as the reference writes it: the pixels hold one zlib stream (or a zstd
/// frame) of the data, no segment index.
pub fn reference_compressed(data: &[u8], stream: &[u8], kind: &str) -> Vec<u8> {
    let grid = expected_grid(stream.len() as u64);
    let rgba = hilbert_scatter(stream, grid);
    let mut meta = reference_metadata(grid, data);
    let m = meta.as_object_mut().unwrap();
    m.insert(
        "compression".into(),
        serde_json::json!({"type": kind, "level": 2, "original_size": data.len(),
            "compressed_size": stream.len(), "ratio": stream.len() as f64 / data.len() as f64}),
    );
    m.insert("encoded_size".into(), stream.len().into());
    PngBuilder::new()
        .ihdr(grid as u32, grid as u32, 8, 6)
        .metadata(&meta)
        .idat(&zlib(&filter_none(&rgba, 4 * grid as usize)))
        .iend()
}

/// A tmpfs of a given size mounted at a folder (root only), unmounted (lazily) on drop: a
/// small disk that fills up.
pub struct SysMount(pub PathBuf);

impl SysMount {
    pub fn new(at: &Path, size: &str) -> Self {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (these tests need root): {}",
            describe(&out)
        );
        SysMount(at.to_path_buf())
    }
    pub fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "tmpfs remount: {}", describe(&out));
    }
}

impl Drop for SysMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
