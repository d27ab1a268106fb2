//! `pixelrts._core`: the Rust side of the Python package (python/pixelrts/). Thin: each
//! function parses its options, releases the GIL, calls the library and hands JSON text back
//! for `json.loads` (metadata keeps its key order that way). Errors become Python exceptions
//! whose message names the file (the library's `Display`).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde_json::{Map, Value};

use pixelrts::cache::TileCache;
use pixelrts::decode::{decode_file, verify_file, DecodeOptions};
use pixelrts::encode::{encode_file, EncodeOptions};
use pixelrts::error::Error;
use pixelrts::reader::{Reader as CoreReader, ReaderOptions};

/// Library errors as Python exceptions: operating-system errors as `OSError` (with errno, so
/// `FileNotFoundError` and friends), bad arguments as `ValueError`, damaged or foreign files
/// as `ValueError` too (as the reference raises for them).
fn to_py(e: Error) -> PyErr {
    match &e {
        Error::Io { source, .. } => match source.raw_os_error() {
            Some(code) => PyOSError::new_err((code, e.to_string())),
            None => PyOSError::new_err(e.to_string()),
        },
        Error::OutputExists { .. } => PyOSError::new_err((libc::EEXIST, e.to_string())),
        // Worded as the reference's ValueError ("Hash mismatch…"), with the file named.
        Error::HashMismatch {
            path,
            expected,
            actual,
        } => PyValueError::new_err(format!(
            "Hash mismatch for {}: expected {expected}, got {actual}",
            path.display()
        )),
        _ => PyValueError::new_err(e.to_string()),
    }
}

fn parse<T: std::str::FromStr>(what: &str, v: &str) -> PyResult<T>
where
    T::Err: std::fmt::Display,
{
    v.parse()
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

fn metadata_from_json(text: Option<&str>) -> PyResult<Map<String, Value>> {
    match text {
        None => Ok(Map::new()),
        Some(t) => match serde_json::from_str(t) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(PyValueError::new_err("metadata must be a JSON object")),
        },
    }
}

/// One tile cache for every reader this process opens (as the mount shares one).
fn shared_cache() -> Arc<TileCache> {
    static CACHE: OnceLock<Arc<TileCache>> = OnceLock::new();
    CACHE.get_or_init(|| TileCache::shared(256 << 20)).clone()
}

#[pyfunction]
#[pyo3(signature = (input, output, *, mode="standard", compression="auto", level=None,
    threads=None, gpu="auto", metadata_json=None, overwrite=true, sidecar=false,
    grid_size=None, segment_size=None))]
#[allow(clippy::too_many_arguments)]
fn encode(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    mode: &str,
    compression: &str,
    level: Option<u32>,
    threads: Option<usize>,
    gpu: &str,
    metadata_json: Option<&str>,
    overwrite: bool,
    sidecar: bool,
    grid_size: Option<u64>,
    segment_size: Option<u32>,
) -> PyResult<String> {
    let mut opts = EncodeOptions {
        mode: parse("mode", mode)?,
        compress: parse("compression", compression)?,
        gpu: parse("gpu", gpu)?,
        threads,
        metadata: metadata_from_json(metadata_json)?,
        overwrite,
        sidecar,
        grid_size,
        ..Default::default()
    };
    if let Some(l) = level {
        opts.compress_level = l;
    }
    if let Some(s) = segment_size {
        opts.segment_size = s;
    }
    let meta = py
        .detach(|| encode_file(&input, &output, &opts))
        .map_err(to_py)?;
    Ok(Value::Object(meta).to_string())
}

#[pyfunction]
#[pyo3(signature = (input, output, *, verify=true, threads=None, overwrite=true, gpu="auto"))]
fn decode(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    verify: bool,
    threads: Option<usize>,
    overwrite: bool,
    gpu: &str,
) -> PyResult<String> {
    let opts = DecodeOptions {
        verify,
        threads,
        overwrite,
        gpu: parse("gpu", gpu)?,
        ..Default::default()
    };
    let report = py
        .detach(|| decode_file(&input, &output, &opts))
        .map_err(to_py)?;
    Ok(serde_json::json!({
        "bytes": report.bytes,
        "sha256": report.sha256,
        "metadata": report.metadata,
    })
    .to_string())
}

#[pyfunction]
fn info(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    let c = py
        .detach(|| pixelrts::container::Container::open(&path))
        .map_err(to_py)?;
    Ok(c.info().to_string())
}

#[pyfunction]
#[pyo3(signature = (path, *, threads=None))]
fn verify(py: Python<'_>, path: PathBuf, threads: Option<usize>) -> PyResult<bool> {
    let r = py.detach(|| verify_file(&path, threads)).map_err(to_py)?;
    Ok(r.ok())
}

/// Random access to the decoded bytes of one image (what `pixelrts.open` reads through).
/// Thread-safe: any number of threads may `pread` at once, each without the GIL.
#[pyclass(frozen, module = "pixelrts._core")]
struct Reader {
    inner: CoreReader,
}

#[pymethods]
impl Reader {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let opts = ReaderOptions {
            cache: shared_cache(),
            checkpoint_dir: None,
        };
        let inner = py
            .detach(|| CoreReader::open(&path, &opts))
            .map_err(to_py)?;
        Ok(Reader { inner })
    }

    /// The decoded size in bytes.
    fn __len__(&self) -> usize {
        self.inner.len() as usize
    }

    #[getter]
    fn size(&self) -> u64 {
        self.inner.len()
    }

    /// Up to `n` bytes from `offset` (fewer at the end, none past it); every byte verified.
    fn pread<'py>(&self, py: Python<'py>, offset: u64, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        let want = (n as u64).min(self.inner.len().saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; want];
        let got = py
            .detach(|| self.inner.read_at(offset, &mut buf))
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &buf[..got]))
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(info, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_class::<Reader>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
