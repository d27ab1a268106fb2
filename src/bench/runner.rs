//! The benchmark runner: generates inputs, times any [`Codec`], checks round trips
//! and measures memory.
//!
//! Units: MB = 10^6 bytes ([`MB`]); times in seconds.
//!
//! Peak memory is the **benchmarking process's** peak resident set (VmHWM from
//! /proc/self/status), reset to the current RSS before each encode and each decode
//! by writing `5` to /proc/self/clear_refs. It therefore covers only work done in
//! this process (a codec that runs a child process is not counted), and includes
//! whatever the process already held. Where the reset is not possible the figure
//! is the process's lifetime peak, and `metadata.peak_memory_reset` is `false`.

use std::fs::{self, File};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::history::{append_history, BenchMetadata, BenchRecord};
use super::patterns::{write_pattern, Pattern};
use super::size_label;

/// One megabyte as used for every MB and MB/s figure: 10^6 bytes.
pub const MB: f64 = 1e6;

/// What an encode reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncodeOutcome {
    /// Side of the square image, in pixels.
    pub grid_size: u64,
    /// Size of the encoded file in bytes (0: the runner reads the file's size).
    pub output_bytes: u64,
}

/// The thing being benchmarked: file-to-file encode and decode.
pub trait Codec {
    /// A short description (recorded in `metadata.codec`).
    fn name(&self) -> String;
    /// Encodes `input` into `output`.
    fn encode(&self, input: &Path, output: &Path) -> Result<EncodeOutcome>;
    /// Decodes `input` (an encoded file) into `output`.
    fn decode(&self, input: &Path, output: &Path) -> Result<()>;
}

/// A [`Codec`] made of two closures.
pub struct FnCodec<E, D> {
    name: String,
    encode: E,
    decode: D,
}

impl<E, D> FnCodec<E, D>
where
    E: Fn(&Path, &Path) -> Result<EncodeOutcome>,
    D: Fn(&Path, &Path) -> Result<()>,
{
    pub fn new(name: impl Into<String>, encode: E, decode: D) -> Self {
        FnCodec {
            name: name.into(),
            encode,
            decode,
        }
    }
}

impl<E, D> Codec for FnCodec<E, D>
where
    E: Fn(&Path, &Path) -> Result<EncodeOutcome>,
    D: Fn(&Path, &Path) -> Result<()>,
{
    fn name(&self) -> String {
        self.name.clone()
    }
    fn encode(&self, input: &Path, output: &Path) -> Result<EncodeOutcome> {
        (self.encode)(input, output)
    }
    fn decode(&self, input: &Path, output: &Path) -> Result<()> {
        (self.decode)(input, output)
    }
}

/// What to benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// Input sizes in bytes; one record per size.
    pub sizes: Vec<u64>,
    /// Timed encode + decode repetitions per size (at least 1).
    pub iterations: u32,
    pub pattern: Pattern,
    /// Encoding mode, recorded in `metadata.mode` and the test name (e.g. "dense").
    pub mode: String,
    /// GPU used, recorded as is ("none" for the CPU path).
    pub gpu: String,
    /// Threads the codec may use, recorded as is; 0 records rayon's current pool size.
    pub threads: usize,
    /// When set, each record is appended to `output_dir/benchmark_history.jsonl`
    /// as soon as it is measured.
    pub output_dir: Option<PathBuf>,
    /// Compare the SHA-256 of every decoded file with the input's.
    pub check_roundtrip: bool,
    /// Seed of the `random` and `text` patterns.
    pub seed: u64,
    /// Where the temporary inputs and outputs go (default: the system's temp dir).
    pub work_dir: Option<PathBuf>,
    /// No progress bar and no results table.
    pub quiet: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            sizes: vec![1 << 20],
            iterations: 3,
            pattern: Pattern::Random,
            mode: "dense".to_string(),
            gpu: "none".to_string(),
            threads: 0,
            output_dir: None,
            check_roundtrip: true,
            seed: 0x5049_5845_4C52_5453, // "PIXELRTS"
            work_dir: None,
            quiet: false,
        }
    }
}

impl BenchConfig {
    /// `PATTERN_SIZE_MODE`, e.g. `random_1MiB_dense`.
    pub fn test_name(&self, size: u64) -> String {
        let mut n = format!("{}_{}", self.pattern, size_label(size));
        if !self.mode.is_empty() {
            n.push('_');
            n.push_str(&self.mode);
        }
        n
    }
}

/// Runs the benchmark and returns one record per size, in order.
///
/// Fails when the configuration is unusable, a file cannot be written, or the codec
/// returns an error; a decode that does not reproduce the input is not an error but
/// `roundtrip_ok: false` in its record.
pub fn run(config: &BenchConfig, codec: &dyn Codec) -> Result<Vec<BenchRecord>> {
    if config.iterations == 0 {
        bail!("iterations must be at least 1");
    }
    if config.sizes.is_empty() {
        bail!("no sizes to benchmark");
    }
    let work = match &config.work_dir {
        Some(d) => {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => std::env::temp_dir(),
    };
    let tmp = tempfile::Builder::new()
        .prefix("pixelrts-bench-")
        .tempdir_in(&work)
        .with_context(|| format!("creating a temporary directory in {}", work.display()))?;

    let total = config.sizes.len() as u64 * u64::from(config.iterations);
    let bar = if !config.quiet && std::io::stderr().is_terminal() {
        let b = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
        {
            b.set_style(style);
        }
        Some(b)
    } else {
        None
    };

    let mut records = Vec::with_capacity(config.sizes.len());
    for &size in &config.sizes {
        let name = config.test_name(size);
        if let Some(b) = &bar {
            b.set_message(name.clone());
        }
        let rec = run_one(config, codec, size, &name, tmp.path(), bar.as_ref())
            .with_context(|| format!("benchmark {name}"))?;
        if let Some(dir) = &config.output_dir {
            append_history(dir, std::slice::from_ref(&rec))?;
        }
        records.push(rec);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if !config.quiet {
        print!("{}", render_results_table(&records));
        let _ = std::io::stdout().flush();
    }
    Ok(records)
}

fn run_one(
    config: &BenchConfig,
    codec: &dyn Codec,
    size: u64,
    name: &str,
    dir: &Path,
    bar: Option<&ProgressBar>,
) -> Result<BenchRecord> {
    let input = dir.join(format!("input-{size}.bin"));
    let encoded = dir.join(format!("encoded-{size}.rts.png"));
    let decoded = dir.join(format!("decoded-{size}.bin"));
    write_pattern(&input, config.pattern, size, config.seed)?;
    let (input_hash, _) = sha256_file(&input)?; // warms the page cache too

    let mut enc_times = Vec::new();
    let mut dec_times = Vec::new();
    let mut ref_times = Vec::new();
    let mut peak_kb = 0u64;
    let mut enc_peak_kb = 0u64;
    let mut dec_peak_kb = 0u64;
    let mut reset_ok = true;
    let mut roundtrip_ok = true;
    let mut outcome = EncodeOutcome::default();
    let mut output_bytes = 0u64;

    for _ in 0..config.iterations {
        // Same-run reference workload: SHA-256 of the same input.
        let t = Instant::now();
        let (h, _) = sha256_file(&input)?;
        ref_times.push(t.elapsed().as_secs_f64());
        if h != input_hash {
            bail!(
                "input file {} changed during the benchmark",
                input.display()
            );
        }

        reset_ok &= reset_peak_rss();
        let t = Instant::now();
        outcome = codec.encode(&input, &encoded).context("encode failed")?;
        enc_times.push(t.elapsed().as_secs_f64());
        let p = read_peak_rss_kb().unwrap_or(0);
        enc_peak_kb = enc_peak_kb.max(p);

        reset_ok &= reset_peak_rss();
        let t = Instant::now();
        codec.decode(&encoded, &decoded).context("decode failed")?;
        dec_times.push(t.elapsed().as_secs_f64());
        let p2 = read_peak_rss_kb().unwrap_or(0);
        dec_peak_kb = dec_peak_kb.max(p2);
        peak_kb = peak_kb.max(p).max(p2);

        output_bytes = if outcome.output_bytes > 0 {
            outcome.output_bytes
        } else {
            fs::metadata(&encoded).map(|m| m.len()).unwrap_or(0)
        };
        if config.check_roundtrip {
            let same = match sha256_file(&decoded) {
                Ok((h, n)) => n == size && h == input_hash,
                Err(_) => false,
            };
            roundtrip_ok &= same;
        }
        let _ = fs::remove_file(&encoded);
        let _ = fs::remove_file(&decoded);
        if let Some(b) = bar {
            b.inc(1);
        }
    }
    let _ = fs::remove_file(&input);

    let (enc_min, enc_med, enc_max) = stats(&enc_times);
    let (dec_min, dec_med, dec_max) = stats(&dec_times);
    let (_, ref_med, _) = stats(&ref_times);
    let mut r = BenchRecord::new(name, size);
    r.grid_size = outcome.grid_size;
    r.encode_time = enc_med;
    r.decode_time = dec_med;
    r.total_time = enc_med + dec_med;
    r.throughput_mb_sec = mb_per_sec(size, r.total_time);
    r.peak_memory_mb = kb_to_mb(peak_kb);
    r.metadata = BenchMetadata {
        iterations: config.iterations,
        pattern: config.pattern.to_string(),
        mode: config.mode.clone(),
        extra: Default::default(),
    };
    let extra = &mut r.metadata.extra;
    extra.insert("codec".into(), Value::from(codec.name()));
    extra.insert("seed".into(), Value::from(config.seed));
    extra.insert("reference".into(), Value::from("sha256"));
    extra.insert("mb".into(), Value::from("1e6 bytes"));
    extra.insert("peak_memory_scope".into(), Value::from("process"));
    extra.insert("peak_memory_reset".into(), Value::from(reset_ok));
    extra.insert(
        "encode_peak_memory_mb".into(),
        Value::from(kb_to_mb(enc_peak_kb)),
    );
    extra.insert(
        "decode_peak_memory_mb".into(),
        Value::from(kb_to_mb(dec_peak_kb)),
    );
    extra.insert(
        "roundtrip_checked".into(),
        Value::from(config.check_roundtrip),
    );
    r.threads = if config.threads > 0 {
        config.threads
    } else {
        rayon::current_num_threads()
    };
    r.gpu = config.gpu.clone();
    r.encode_time_min = enc_min;
    r.encode_time_median = enc_med;
    r.encode_time_max = enc_max;
    r.decode_time_min = dec_min;
    r.decode_time_median = dec_med;
    r.decode_time_max = dec_max;
    r.encode_mb_sec = mb_per_sec(size, enc_med);
    r.decode_mb_sec = mb_per_sec(size, dec_med);
    r.size_ratio = if size > 0 {
        output_bytes as f64 / size as f64
    } else {
        0.0
    };
    r.roundtrip_ok = roundtrip_ok;
    r.reference_mb_sec = (ref_med > 0.0 && size > 0).then(|| mb_per_sec(size, ref_med));
    r.sanitize();
    Ok(r)
}

/// `bytes / 1e6 / secs`, 0 when `secs` is not positive.
pub fn mb_per_sec(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 && secs.is_finite() {
        bytes as f64 / MB / secs
    } else {
        0.0
    }
}

fn kb_to_mb(kb: u64) -> f64 {
    (kb * 1024) as f64 / MB
}

/// (min, median, max); the median of an even count is the mean of the middle two.
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (s[0], med, s[n - 1])
}

/// Streams a file through SHA-256; returns (digest, length).
pub fn sha256_file(path: &Path) -> Result<(Vec<u8>, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let hint = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = vec![0u8; (hint.clamp(8 << 10, 1 << 20)) as usize];
    let mut len = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((h.finalize().to_vec(), len))
}

/// Resets the kernel's peak-RSS counter (VmHWM) of this process to its current RSS.
fn reset_peak_rss() -> bool {
    fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// VmHWM of this process, in kB, from /proc/self/status.
fn read_peak_rss_kb() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A plain-text table of results (MB = 10^6 bytes).
pub fn render_results_table(records: &[BenchRecord]) -> String {
    let header = [
        "TEST",
        "SIZE",
        "GRID",
        "ENC MB/s",
        "DEC MB/s",
        "MB/s",
        "REF MB/s",
        "NORM",
        "RATIO",
        "PEAK MB",
        "ROUNDTRIP",
    ];
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.test_name.clone(),
                r.data_size.to_string(),
                r.grid_size.to_string(),
                format!("{:.2}", r.encode_mb_sec),
                format!("{:.2}", r.decode_mb_sec),
                format!("{:.2}", r.throughput_mb_sec),
                r.reference_mb_sec
                    .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
                r.normalized_throughput()
                    .map_or_else(|| "-".into(), |v| format!("{v:.4}")),
                format!("{:.4}", r.size_ratio),
                format!("{:.1}", r.peak_memory_mb),
                if r.roundtrip_ok { "ok" } else { "FAILED" }.to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut push = |cells: Vec<String>| {
        let mut line = String::new();
        for (i, (c, &w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            if i == 0 || i == cells.len() - 1 {
                line.push_str(&format!("{c:<w$}"));
            } else {
                line.push_str(&format!("{c:>w$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push(header.iter().map(|h| h.to_string()).collect());
    push(widths.iter().map(|&w| "-".repeat(w)).collect());
    for row in rows {
        push(row);
    }
    out.push_str("MB = 10^6 bytes; times are medians over the iterations; NORM = MB/s / REF MB/s (SHA-256 of the same input).\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_values() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
        assert_eq!(stats(&[]), (0.0, 0.0, 0.0));
        assert_eq!(mb_per_sec(2_000_000, 0.5), 4.0);
        assert_eq!(mb_per_sec(2_000_000, 0.0), 0.0);
    }

    #[test]
    fn peak_rss_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(read_peak_rss_kb().unwrap() > 0);
        }
    }
}
