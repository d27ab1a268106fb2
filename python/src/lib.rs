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

/// A Python callable as the core's progress callback: `callback(done, total)` in bytes, at
/// most once per percent (each call takes the GIL), and once at the end.
fn progress_from(callback: Option<Py<PyAny>>) -> Option<pixelrts::encode::Progress> {
    let callback = callback?;
    let last = std::sync::Mutex::new(u64::MAX);
    Some(Arc::new(move |done: u64, total: u64| {
        let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
        {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if *last == pct {
                return;
            }
            *last = pct;
        }
        Python::attach(|py| {
            if let Err(e) = callback.call1(py, (done, total)) {
                e.print(py);
            }
        });
    }))
}

#[pyfunction]
#[pyo3(signature = (input, output, *, mode="standard", compression="auto", level=None,
    threads=None, gpu="auto", metadata_json=None, overwrite=true, sidecar=false,
    grid_size=None, segment_size=None, progress=None))]
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
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let mut opts = EncodeOptions {
        progress: progress_from(progress),
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
#[pyo3(signature = (input, output, *, verify=true, threads=None, overwrite=true, gpu="auto",
    progress=None))]
#[allow(clippy::too_many_arguments)]
fn decode(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    verify: bool,
    threads: Option<usize>,
    overwrite: bool,
    gpu: &str,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let opts = DecodeOptions {
        progress: progress_from(progress),
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
            disk_cache: None,
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
    /// Read straight into the new bytes object, with the GIL released: no other Python code
    /// can see that object before it is returned.
    fn pread<'py>(&self, py: Python<'py>, offset: u64, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        let want = (n as u64).min(self.inner.len().saturating_sub(offset)) as usize;
        PyBytes::new_with(py, want, |buf| {
            py.detach(|| self.inner.read_at(offset, buf))
                .map(|_| ())
                .map_err(to_py)
        })
    }
}

/// Runs a batch of (input, output) pairs through `go` (the core's [`pixelrts::batch`]: one
/// pool, small files spread across it, a big file split inside it; a later input whose output
/// an earlier one takes fails, naming it), calling `progress(done, total)` as files finish;
/// returns the results in input order as JSON.
fn run_batch(
    py: Python<'_>,
    inputs: Vec<PathBuf>,
    outputs: Vec<PathBuf>,
    progress: Option<Py<PyAny>>,
    go: impl FnOnce(
            &[pixelrts::batch::Job],
            &(dyn Fn(&pixelrts::batch::JobResult) + Sync),
        ) -> Result<Vec<pixelrts::batch::JobResult>, Error>
        + Send,
) -> PyResult<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    if inputs.len() != outputs.len() {
        return Err(PyValueError::new_err("inputs and outputs differ in length"));
    }
    let jobs: Vec<pixelrts::batch::Job> = inputs
        .into_iter()
        .zip(outputs)
        .map(|(input, output)| pixelrts::batch::Job { input, output })
        .collect();
    let total = jobs.len();
    let done = AtomicUsize::new(0);
    let on_done = |_: &pixelrts::batch::JobResult| {
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(cb) = &progress {
            Python::attach(|py| {
                if let Err(e) = cb.call1(py, (n, total)) {
                    e.print(py);
                }
            });
        }
    };
    let results = py.detach(|| go(&jobs, &on_done)).map_err(to_py)?;
    serde_json::to_string(&results).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Encodes `inputs[i]` into `outputs[i]` for every i, in parallel inside the core.
#[pyfunction]
#[pyo3(signature = (inputs, outputs, *, mode="standard", compression="auto", workers=None,
    metadata_json=None, sidecar=false, progress=None))]
#[allow(clippy::too_many_arguments)]
fn encode_batch(
    py: Python<'_>,
    inputs: Vec<PathBuf>,
    outputs: Vec<PathBuf>,
    mode: &str,
    compression: &str,
    workers: Option<usize>,
    metadata_json: Option<&str>,
    sidecar: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let opts = EncodeOptions {
        mode: parse("mode", mode)?,
        compress: parse("compression", compression)?,
        metadata: metadata_from_json(metadata_json)?,
        overwrite: true,
        sidecar,
        ..Default::default()
    };
    run_batch(py, inputs, outputs, progress, |jobs, on_done| {
        pixelrts::batch::encode(jobs, &opts, workers, on_done)
    })
}

/// Decodes `inputs[i]` into `outputs[i]` for every i, in parallel inside the core.
#[pyfunction]
#[pyo3(signature = (inputs, outputs, *, verify=false, workers=None, progress=None))]
fn decode_batch(
    py: Python<'_>,
    inputs: Vec<PathBuf>,
    outputs: Vec<PathBuf>,
    verify: bool,
    workers: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let opts = DecodeOptions {
        verify,
        overwrite: true,
        ..Default::default()
    };
    run_batch(py, inputs, outputs, progress, |jobs, on_done| {
        pixelrts::batch::decode(jobs, &opts, workers, on_done)
    })
}

/// Benchmarks encode + decode of generated inputs (`pixelrts bench`'s runner and codec) and
/// returns the records as JSON; with `output_dir`, appends them to its
/// `benchmark_history.jsonl`, the history `pixelrts bench` keeps.
#[pyfunction]
#[pyo3(signature = (sizes, *, iterations=5, pattern="random", mode="standard", threads=None,
    output_dir=None))]
fn bench_run(
    py: Python<'_>,
    sizes: Vec<u64>,
    iterations: u32,
    pattern: &str,
    mode: &str,
    threads: Option<usize>,
    output_dir: Option<PathBuf>,
) -> PyResult<String> {
    let mode: pixelrts::Mode = parse("mode", mode)?;
    let config = pixelrts::bench::BenchConfig {
        sizes,
        iterations,
        pattern: parse("pattern", pattern)?,
        mode: pixelrts::bench::mode_label(mode).into(),
        gpu: "none".into(),
        threads: threads.unwrap_or(0),
        output_dir,
        check_roundtrip: true,
        quiet: true,
        ..Default::default()
    };
    let records = py
        .detach(|| {
            let codec = pixelrts::bench::pixelrts_codec(mode, threads);
            pixelrts::bench::run(&config, &codec)
        })
        .map_err(|e| PyValueError::new_err(format!("{e:#}")))?;
    serde_json::to_string(&records).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Each test's latest record against its best earlier one in `history` (a results folder or
/// a records file), as `pixelrts bench --check-regression` compares them: JSON rows of
/// `test_name`, `metric`, `baseline`, `latest`, `regression_percent` (the slowdown, positive
/// when worse), `regressed`, `roundtrip_ok`.
#[pyfunction]
#[pyo3(signature = (history, *, threshold=0.1))]
fn bench_check(history: PathBuf, threshold: f64) -> PyResult<String> {
    let loaded = pixelrts::bench::load_history(&history)
        .map_err(|e| PyValueError::new_err(format!("{}: {e:#}", history.display())))?;
    let report = pixelrts::bench::check_regression(&loaded.records, None, threshold);
    let rows: Vec<Value> = report
        .rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "test_name": r.test_name,
                "metric": r.metric.name(),
                "baseline": r.baseline,
                "latest": r.latest,
                // Every metric is a throughput: a slowdown is a negative change.
                "regression_percent": r.change_pct.map(|c| -c),
                "regressed": r.regressed,
                "roundtrip_ok": r.roundtrip_ok,
            })
        })
        .collect();
    Ok(Value::Array(rows).to_string())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(info, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(encode_batch, m)?)?;
    m.add_function(wrap_pyfunction!(decode_batch, m)?)?;
    m.add_function(wrap_pyfunction!(bench_run, m)?)?;
    m.add_function(wrap_pyfunction!(bench_check, m)?)?;
    m.add_class::<Reader>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
