//! Benchmark records and their history file (`DIR/benchmark_history.jsonl`,
//! one JSON object per line, appended to by each run).
//!
//! The first nine fields keep the names the reference (Python) tool uses, so its
//! records load here too; the remaining fields are this tool's additions and
//! default to empty values when a line lacks them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Name of the history file inside the benchmark output directory.
pub const HISTORY_FILE: &str = "benchmark_history.jsonl";

/// Free-form metadata of a record: `iterations`, `pattern`, `mode`, plus any other keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchMetadata {
    #[serde(default)]
    pub iterations: u32,
    #[serde(default)]
    pub pattern: String,
    #[serde(default)]
    pub mode: String,
    /// Any other keys, kept in order.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The machine a record was measured on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// `model name` from /proc/cpuinfo ("unknown" when absent).
    #[serde(default)]
    pub cpu_model: String,
    /// Logical CPUs available to the process.
    #[serde(default)]
    pub cores: usize,
}

impl MachineInfo {
    /// Describes the current machine.
    pub fn detect() -> Self {
        MachineInfo {
            cpu_model: cpu_model(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

/// One benchmark result: one test (pattern × size × mode) of one run.
///
/// Times are seconds; `*_mb_sec` are MB/s with MB = 10^6 bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRecord {
    // --- the reference's fields ---
    pub test_name: String,
    /// Input size in bytes.
    pub data_size: u64,
    /// Side of the square image, in pixels.
    pub grid_size: u64,
    /// Median encode time over the iterations, seconds.
    pub encode_time: f64,
    /// Median decode time over the iterations, seconds.
    pub decode_time: f64,
    /// `encode_time + decode_time`.
    pub total_time: f64,
    /// Round-trip throughput: `data_size / 1e6 / total_time`.
    pub throughput_mb_sec: f64,
    /// Peak resident memory of the benchmarking process during the measurements, MB (10^6 bytes).
    pub peak_memory_mb: f64,
    #[serde(default)]
    pub metadata: BenchMetadata,

    // --- additions that make runs comparable ---
    /// RFC 3339 UTC, e.g. `2025-01-02T03:04:05.678Z`.
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub git_commit: Option<String>,
    /// Version of this crate that measured the record.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub machine: MachineInfo,
    /// Worker threads the codec was allowed.
    #[serde(default)]
    pub threads: usize,
    /// GPU used ("none" when the CPU path ran).
    #[serde(default)]
    pub gpu: String,
    #[serde(default)]
    pub encode_time_min: f64,
    #[serde(default)]
    pub encode_time_median: f64,
    #[serde(default)]
    pub encode_time_max: f64,
    #[serde(default)]
    pub decode_time_min: f64,
    #[serde(default)]
    pub decode_time_median: f64,
    #[serde(default)]
    pub decode_time_max: f64,
    /// `data_size / 1e6 / encode_time`.
    #[serde(default)]
    pub encode_mb_sec: f64,
    /// `data_size / 1e6 / decode_time`.
    #[serde(default)]
    pub decode_mb_sec: f64,
    /// Encoded size / input size.
    #[serde(default)]
    pub size_ratio: f64,
    /// Whether every decode reproduced the input (SHA-256). `true` when not checked.
    #[serde(default = "default_true")]
    pub roundtrip_ok: bool,
    /// Throughput of a same-run reference workload (SHA-256 of the same input), MB/s.
    /// `throughput_mb_sec / reference_mb_sec` compares runs on noisy machines.
    #[serde(default)]
    pub reference_mb_sec: Option<f64>,
}

fn default_true() -> bool {
    true
}

impl BenchRecord {
    /// A record with the given reference fields and this machine's environment
    /// (timestamp now, git commit, version, machine); derived fields are zero.
    pub fn new(test_name: impl Into<String>, data_size: u64) -> Self {
        BenchRecord {
            test_name: test_name.into(),
            data_size,
            grid_size: 0,
            encode_time: 0.0,
            decode_time: 0.0,
            total_time: 0.0,
            throughput_mb_sec: 0.0,
            peak_memory_mb: 0.0,
            metadata: BenchMetadata::default(),
            timestamp: now_rfc3339(),
            git_commit: git_commit(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            machine: MachineInfo::detect(),
            threads: 0,
            gpu: "none".to_string(),
            encode_time_min: 0.0,
            encode_time_median: 0.0,
            encode_time_max: 0.0,
            decode_time_min: 0.0,
            decode_time_median: 0.0,
            decode_time_max: 0.0,
            encode_mb_sec: 0.0,
            decode_mb_sec: 0.0,
            size_ratio: 0.0,
            roundtrip_ok: true,
            reference_mb_sec: None,
        }
    }

    /// `throughput_mb_sec / reference_mb_sec`, when the record has a usable reference.
    pub fn normalized_throughput(&self) -> Option<f64> {
        match self.reference_mb_sec {
            Some(r) if r.is_finite() && r > 0.0 && self.throughput_mb_sec.is_finite() => {
                Some(self.throughput_mb_sec / r)
            }
            _ => None,
        }
    }

    /// Replaces non-finite numbers (which JSON cannot hold) with 0.
    pub fn sanitize(&mut self) {
        for v in [
            &mut self.encode_time,
            &mut self.decode_time,
            &mut self.total_time,
            &mut self.throughput_mb_sec,
            &mut self.peak_memory_mb,
            &mut self.encode_time_min,
            &mut self.encode_time_median,
            &mut self.encode_time_max,
            &mut self.decode_time_min,
            &mut self.decode_time_median,
            &mut self.decode_time_max,
            &mut self.encode_mb_sec,
            &mut self.decode_mb_sec,
            &mut self.size_ratio,
        ] {
            if !v.is_finite() {
                *v = 0.0;
            }
        }
        if matches!(self.reference_mb_sec, Some(r) if !r.is_finite()) {
            self.reference_mb_sec = None;
        }
    }
}

/// Records loaded from a file, plus the lines that could not be read.
#[derive(Debug, Clone, Default)]
pub struct LoadedHistory {
    pub records: Vec<BenchRecord>,
    /// `(line number (1-based; element index + 1 for a JSON array), error)`.
    pub bad_lines: Vec<(usize, String)>,
}

impl LoadedHistory {
    /// One line per bad entry, e.g. for a warning on stderr.
    pub fn report_bad_lines(&self, path: &Path) -> Vec<String> {
        self.bad_lines
            .iter()
            .map(|(line, e)| format!("{}:{line}: skipped: {e}", path.display()))
            .collect()
    }
}

/// `dir/benchmark_history.jsonl`.
pub fn history_path(dir: &Path) -> PathBuf {
    dir.join(HISTORY_FILE)
}

/// Fields of a record that describe the run's environment: [`BenchRecord::new`] fills them,
/// never the caller of [`complete_records`].
const ENVIRONMENT_FIELDS: [&str; 4] = ["timestamp", "git_commit", "version", "machine"];

/// Records measured outside this program (scripts/bench-fuse.sh): each non-empty line of
/// `text` is a JSON object with `test_name`, `data_size` and any other [`BenchRecord`]
/// fields (`metadata` merged key by key); the rest is filled as [`BenchRecord::new`] does, so
/// the environment fields have one writer. A line that is not such an object, or sets an
/// environment field, is an error naming the line.
pub fn complete_records(text: &str) -> Result<Vec<BenchRecord>> {
    let mut records = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("line {}", n + 1);
        let partial: Map<String, Value> = serde_json::from_str(line).with_context(at)?;
        let name = partial
            .get("test_name")
            .and_then(Value::as_str)
            .with_context(|| format!("{}: no test_name", at()))?;
        let size = partial
            .get("data_size")
            .and_then(Value::as_u64)
            .with_context(|| format!("{}: no data_size", at()))?;
        if let Some(k) = ENVIRONMENT_FIELDS
            .iter()
            .find(|k| partial.contains_key(**k))
        {
            anyhow::bail!("{}: {k} is filled in by pixelrts, not by the caller", at());
        }
        let mut full = match serde_json::to_value(BenchRecord::new(name, size))? {
            Value::Object(m) => m,
            _ => unreachable!("a record serializes to an object"),
        };
        for (k, v) in partial {
            match (full.get_mut(&k), v) {
                (Some(Value::Object(base)), Value::Object(extra)) if k == "metadata" => {
                    base.extend(extra)
                }
                (_, v) => {
                    full.insert(k, v);
                }
            }
        }
        let record: BenchRecord = serde_json::from_value(Value::Object(full)).with_context(at)?;
        records.push(record);
    }
    Ok(records)
}

/// Appends `records` to `dir/benchmark_history.jsonl`, one JSON object per line,
/// creating `dir` and the file as needed. Returns the file's path.
pub fn append_history(dir: &Path, records: &[BenchRecord]) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = history_path(dir);
    let mut buf = String::new();
    for r in records {
        let mut r = r.clone();
        r.sanitize();
        buf.push_str(&serde_json::to_string(&r).context("serializing a benchmark record")?);
        buf.push('\n');
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // One write of whole lines, so concurrent appenders do not interleave inside a line.
    f.write_all(buf.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Loads the history of `path`: a directory (its `benchmark_history.jsonl`) or a
/// records file (see [`load_records_file`]). A missing history is empty, not an error.
pub fn load_history(path: &Path) -> Result<LoadedHistory> {
    let file = if path.is_dir() {
        history_path(path)
    } else {
        path.to_path_buf()
    };
    if !file.exists() {
        return Ok(LoadedHistory::default());
    }
    load_records_file(&file)
}

/// Loads records from a file holding JSON Lines (one record per line), a JSON array
/// of records, a single record, or an object with a `records`/`results`/`benchmarks`
/// array. Entries that are not valid records are skipped and listed in `bad_lines`.
/// Fails only when the file cannot be read.
pub fn load_records_file(path: &Path) -> Result<LoadedHistory> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(parse_records(&text))
}

/// Parses records from text (see [`load_records_file`]).
pub fn parse_records(text: &str) -> LoadedHistory {
    let mut out = LoadedHistory::default();
    let trimmed = text.trim_start();
    // A whole-document JSON value (array, wrapper object, or one record). JSON Lines
    // with two or more records is not one value, and falls through to line parsing.
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        if let Ok(v) = serde_json::from_str::<Value>(text) {
            let items = match v {
                Value::Array(items) => items,
                Value::Object(mut m) => {
                    let key = ["records", "results", "benchmarks"]
                        .into_iter()
                        .find(|k| matches!(m.get(*k), Some(Value::Array(_))));
                    match key.and_then(|k| m.remove(k)) {
                        Some(Value::Array(items)) => items,
                        _ => vec![Value::Object(m)],
                    }
                }
                other => vec![other],
            };
            for (i, item) in items.into_iter().enumerate() {
                match serde_json::from_value::<BenchRecord>(item) {
                    Ok(r) => out.records.push(r),
                    Err(e) => out.bad_lines.push((i + 1, e.to_string())),
                }
            }
            return out;
        }
    }
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<BenchRecord>(line) {
            Ok(r) => out.records.push(r),
            Err(e) => out.bad_lines.push((i + 1, e.to_string())),
        }
    }
    out
}

/// The current time as RFC 3339 UTC with milliseconds: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// Formats a time as RFC 3339 UTC with milliseconds (times before 1970 print as 1970).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let millis = d.subsec_millis();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses an RFC 3339 / ISO 8601 date-time (`YYYY-MM-DD[T ]HH:MM:SS[.frac][Z|±HH:MM]`,
/// no offset meaning UTC) to seconds since the Unix epoch.
pub fn parse_timestamp(s: &str) -> Option<f64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        frac = format!("0.{}", &r[..n]).parse().ok()?;
        rest = &r[n..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                return None;
            }
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let o = oh * 3600 + om * 60;
            if rb[0] == b'-' {
                -o
            } else {
                o
            }
        }
    };
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset) as f64 + frac)
}

// Howard Hinnant's civil calendar algorithms.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The commit being measured: env `PIXELRTS_GIT_COMMIT` if set and non-empty,
/// otherwise `git rev-parse HEAD` in the current directory, otherwise `None`.
pub fn git_commit() -> Option<String> {
    if let Ok(c) = std::env::var("PIXELRTS_GIT_COMMIT") {
        let c = c.trim();
        if !c.is_empty() {
            return Some(c.to_string());
        }
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let c = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!c.is_empty()).then_some(c)
}

/// The CPU's model name from /proc/cpuinfo, or "unknown".
pub fn cpu_model() -> String {
    let Ok(info) = fs::read_to_string("/proc/cpuinfo") else {
        return "unknown".to_string();
    };
    for key in ["model name", "Model", "Hardware", "cpu model", "cpu"] {
        for line in info.lines() {
            if let Some((k, v)) = line.split_once(':') {
                if k.trim() == key && !v.trim().is_empty() {
                    return v.trim().to_string();
                }
            }
        }
    }
    "unknown".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599); // last second of 2024
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59.000Z");
    }

    #[test]
    fn timestamp_parse_round_trip() {
        for secs in [0u64, 951_782_400, 1_735_689_599, 4_102_444_800] {
            let t = UNIX_EPOCH + Duration::from_millis(secs * 1000 + 250);
            let p = parse_timestamp(&rfc3339(t)).unwrap();
            assert!((p - (secs as f64 + 0.25)).abs() < 1e-6, "{secs}");
        }
        assert_eq!(parse_timestamp("1970-01-01T01:00:00+01:00"), Some(0.0));
        assert_eq!(parse_timestamp("1970-01-01 00:00:10.5"), Some(10.5));
        assert_eq!(parse_timestamp("garbage"), None);
        assert_eq!(parse_timestamp("1970-13-01T00:00:00Z"), None);
        assert_eq!(parse_timestamp("1970-01-01T00:00:00+0100"), None);
    }
}
