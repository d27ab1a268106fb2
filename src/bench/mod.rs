//! Benchmark subsystem: data generators, a runner that times any [`Codec`],
//! a JSONL history, regression checks and a self-contained HTML dashboard.
//!
//! Units: throughput is in MB/s with **MB = 1 000 000 bytes**; memory figures
//! (`peak_memory_mb`) are in the same MB. Times are in seconds.
//!
//! The CLI (clap) lives elsewhere and calls the plain functions re-exported here:
//! [`run`], [`append_history`], [`load_history`], [`check_regression`],
//! [`render_dashboard`].

pub mod dashboard;
pub mod history;
pub mod patterns;
pub mod regression;
pub mod runner;

pub use dashboard::render_dashboard;
pub use history::{
    append_history, complete_records, history_path, load_history, load_records_file, BenchMetadata,
    BenchRecord, LoadedHistory, MachineInfo, HISTORY_FILE,
};
pub use patterns::{write_pattern, write_pattern_to, Pattern};
pub use regression::{
    check_regression, check_regression_with, Metric, RegressionOptions, RegressionReport,
    RegressionRow, DEFAULT_THRESHOLD,
};
pub use runner::{render_results_table, run, BenchConfig, Codec, EncodeOutcome, FnCodec, MB};

/// The codec `pixelrts bench` and the Python package's benchmark time: this crate's encode
/// and decode of whole files (no sidecar, decode unverified: the runner compares SHA-256
/// itself).
pub fn pixelrts_codec(mode: crate::Mode, threads: Option<usize>) -> impl Codec {
    use crate::decode::{decode_file, DecodeOptions};
    use crate::encode::{encode_file, EncodeOptions};
    FnCodec::new(
        "pixelrts",
        move |input: &std::path::Path, output: &std::path::Path| {
            let opts = EncodeOptions {
                mode,
                threads,
                overwrite: true,
                sidecar: false,
                ..Default::default()
            };
            let meta = encode_file(input, output, &opts)?;
            Ok(EncodeOutcome {
                grid_size: meta["grid_size"].as_u64().unwrap_or(0),
                output_bytes: 0,
            })
        },
        move |input: &std::path::Path, output: &std::path::Path| {
            let opts = DecodeOptions {
                verify: false,
                overwrite: true,
                threads,
                ..Default::default()
            };
            decode_file(input, output, &opts)?;
            Ok(())
        },
    )
}

/// A mode as benchmark records name it (the reference's "dense" for standard).
pub fn mode_label(mode: crate::Mode) -> &'static str {
    match mode {
        crate::Mode::Standard => "dense",
        crate::Mode::Code => "code",
    }
}

/// Formats a byte count as a short label: `64KiB`, `1MiB`, `1.5MiB`, `1000B`.
pub fn size_label(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            if bytes % unit == 0 {
                return format!("{}{}", bytes / unit, name);
            }
            return format!("{:.1}{}", bytes as f64 / unit as f64, name);
        }
    }
    format!("{bytes}B")
}

/// Parses a size such as `65536`, `64K`, `64KiB`, `1M`, `1MiB`, `1MB` (MB = 10^6), `2G`.
/// `K`/`M`/`G` alone and `KiB`/`MiB`/`GiB` are binary; `KB`/`MB`/`GB` are decimal.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| {
        anyhow::anyhow!("invalid size {s:?}: expected a number with an optional unit")
    })?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        other => anyhow::bail!("invalid size {s:?}: unknown unit {other:?}"),
    };
    let v = num * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        anyhow::bail!("invalid size {s:?}");
    }
    Ok(v.round() as u64)
}

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size_label(65536), "64KiB");
        assert_eq!(size_label(1 << 20), "1MiB");
        assert_eq!(size_label(1000), "1000B");
        assert_eq!(size_label(1536 * 1024), "1.5MiB");
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("abc").is_err());
        assert!(parse_size("12Q").is_err());
    }

    #[test]
    fn escape() {
        assert_eq!(
            html_escape("<script>alert('x&y')</script>\""),
            "&lt;script&gt;alert(&#39;x&amp;y&#39;)&lt;/script&gt;&quot;"
        );
    }
}
