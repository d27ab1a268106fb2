//! Regression check: for each test, the latest record against the best earlier
//! record (or the best record of a baseline file).

use std::fmt;
use std::str::FromStr;

use super::history::BenchRecord;

/// Default regression threshold: latest more than 10 % worse than the best.
pub const DEFAULT_THRESHOLD: f64 = 0.10;

/// Slack for floating-point noise at the threshold's edge.
const EPS: f64 = 1e-9;

/// What is compared. Every metric is higher-is-better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// `Normalized` when the latest record and at least one candidate have a
    /// reference throughput (only candidates with one are then considered),
    /// otherwise `Throughput`.
    #[default]
    Auto,
    /// `throughput_mb_sec / reference_mb_sec`: robust to a machine's speed and load.
    Normalized,
    /// `throughput_mb_sec`.
    Throughput,
    /// `encode_mb_sec`.
    Encode,
    /// `decode_mb_sec`.
    Decode,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Auto => "auto",
            Metric::Normalized => "normalized",
            Metric::Throughput => "throughput_mb_sec",
            Metric::Encode => "encode_mb_sec",
            Metric::Decode => "decode_mb_sec",
        }
    }

    /// The record's value for this metric (`Auto` reads as `Throughput`); `None`
    /// when missing, non-finite or not positive.
    pub fn value(self, r: &BenchRecord) -> Option<f64> {
        let v = match self {
            Metric::Normalized => r.normalized_throughput()?,
            Metric::Auto | Metric::Throughput => r.throughput_mb_sec,
            Metric::Encode => r.encode_mb_sec,
            Metric::Decode => r.decode_mb_sec,
        };
        (v.is_finite() && v > 0.0).then_some(v)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Metric::Auto,
            "normalized" | "normalised" => Metric::Normalized,
            "throughput" | "throughput_mb_sec" => Metric::Throughput,
            "encode" | "encode_mb_sec" => Metric::Encode,
            "decode" | "decode_mb_sec" => Metric::Decode,
            other => anyhow::bail!(
                "unknown metric {other:?} (expected auto, normalized, throughput, encode or decode)"
            ),
        })
    }
}

/// Options of [`check_regression_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegressionOptions {
    /// Fraction: a regression is `latest < best × (1 − threshold)`. Negative or
    /// non-finite values are read as 0 and the default respectively.
    pub threshold: f64,
    pub metric: Metric,
}

impl Default for RegressionOptions {
    fn default() -> Self {
        RegressionOptions {
            threshold: DEFAULT_THRESHOLD,
            metric: Metric::Auto,
        }
    }
}

/// One test's comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct RegressionRow {
    pub test_name: String,
    /// The metric actually compared (`Auto` resolved).
    pub metric: Metric,
    /// Best earlier (or baseline) value; `None` when there is nothing to compare with.
    pub baseline: Option<f64>,
    /// Latest value (`None` when the latest record lacks the metric).
    pub latest: Option<f64>,
    /// `(latest − baseline) / baseline × 100`.
    pub change_pct: Option<f64>,
    /// Latest worse than the baseline by more than the threshold.
    pub regressed: bool,
    /// The latest record's round-trip check.
    pub roundtrip_ok: bool,
    pub latest_timestamp: String,
    pub baseline_timestamp: Option<String>,
    pub latest_commit: Option<String>,
    pub baseline_commit: Option<String>,
}

impl RegressionRow {
    /// `ROUNDTRIP FAILED`, `REGRESSED`, `new` (nothing to compare with), `no data`
    /// (the latest record lacks the metric) or `ok`.
    pub fn status(&self) -> &'static str {
        if !self.roundtrip_ok {
            "ROUNDTRIP FAILED"
        } else if self.regressed {
            "REGRESSED"
        } else if self.baseline.is_none() {
            "new"
        } else if self.latest.is_none() {
            "no data"
        } else {
            "ok"
        }
    }
}

/// The result of a regression check.
#[derive(Debug, Clone, PartialEq)]
pub struct RegressionReport {
    pub threshold: f64,
    /// The metric asked for (rows say which one each compared).
    pub metric: Metric,
    /// Whether a baseline file was compared against (else each test's own history).
    pub against_baseline: bool,
    /// One row per test, in order of first appearance in the history.
    pub rows: Vec<RegressionRow>,
}

impl RegressionReport {
    pub fn any_regressed(&self) -> bool {
        self.rows.iter().any(|r| r.regressed)
    }

    pub fn any_roundtrip_failed(&self) -> bool {
        self.rows.iter().any(|r| !r.roundtrip_ok)
    }

    /// Names of the tests that regressed.
    pub fn regressed_tests(&self) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|r| r.regressed)
            .map(|r| r.test_name.as_str())
            .collect()
    }

    pub fn row(&self, test_name: &str) -> Option<&RegressionRow> {
        self.rows.iter().find(|r| r.test_name == test_name)
    }

    /// The CLI's exit status: 1 when any test regressed or failed its round trip, else 0.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.any_regressed() || self.any_roundtrip_failed())
    }

    /// A plain-text table of the rows and a summary line.
    pub fn render_table(&self) -> String {
        let header = ["TEST", "METRIC", "BASELINE", "LATEST", "CHANGE", "STATUS"];
        let fmt_v = |v: Option<f64>| v.map_or_else(|| "-".to_string(), fmt_value);
        let body: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.test_name.clone(),
                    r.metric.name().to_string(),
                    fmt_v(r.baseline),
                    fmt_v(r.latest),
                    r.change_pct
                        .map_or_else(|| "-".to_string(), |c| format!("{c:+.1}%")),
                    r.status().to_string(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &body {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                // Text left-aligned, numbers right-aligned.
                if (2..=4).contains(&i) {
                    s.push_str(&format!("{c:>w$}"));
                } else {
                    s.push_str(&format!("{c:<w$}"));
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(&header.map(String::from));
        line(&widths.map(|w| "-".repeat(w)));
        for row in &body {
            line(row);
        }
        let regressed = self.rows.iter().filter(|r| r.regressed).count();
        let failed = self.rows.iter().filter(|r| !r.roundtrip_ok).count();
        out.push_str(&format!(
            "{} test(s), {regressed} regressed, {failed} round-trip failure(s); threshold {:.1}% against {}\n",
            self.rows.len(),
            self.threshold * 100.0,
            if self.against_baseline {
                "the baseline"
            } else {
                "the best earlier run"
            }
        ));
        out
    }
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

/// [`check_regression_with`] on the default metric ([`Metric::Auto`]).
///
/// Without a baseline, each test's last record in `history` is compared with the
/// best of its earlier records; with one, with the best baseline record of the same
/// test. Records whose round trip failed never serve as a baseline.
pub fn check_regression(
    history: &[BenchRecord],
    baseline: Option<&[BenchRecord]>,
    threshold: f64,
) -> RegressionReport {
    check_regression_with(
        history,
        baseline,
        &RegressionOptions {
            threshold,
            metric: Metric::Auto,
        },
    )
}

/// See [`check_regression`].
pub fn check_regression_with(
    history: &[BenchRecord],
    baseline: Option<&[BenchRecord]>,
    opts: &RegressionOptions,
) -> RegressionReport {
    let threshold = if opts.threshold.is_nan() {
        DEFAULT_THRESHOLD
    } else {
        opts.threshold.max(0.0)
    };
    let mut names: Vec<&str> = Vec::new();
    for r in history {
        if !names.contains(&r.test_name.as_str()) {
            names.push(&r.test_name);
        }
    }
    let rows = names
        .into_iter()
        .map(|name| {
            let (idx, latest) = history
                .iter()
                .enumerate()
                .rev()
                .find(|(_, r)| r.test_name == name)
                .expect("name comes from history");
            let candidates: Vec<&BenchRecord> = match baseline {
                Some(b) => b.iter().filter(|r| r.test_name == name).collect(),
                None => history[..idx]
                    .iter()
                    .filter(|r| r.test_name == name)
                    .collect(),
            };
            compare(latest, &candidates, opts.metric, threshold)
        })
        .collect();
    RegressionReport {
        threshold,
        metric: opts.metric,
        against_baseline: baseline.is_some(),
        rows,
    }
}

fn compare(
    latest: &BenchRecord,
    candidates: &[&BenchRecord],
    metric: Metric,
    threshold: f64,
) -> RegressionRow {
    let usable = candidates.iter().filter(|r| r.roundtrip_ok);
    let metric = match metric {
        Metric::Auto => {
            let normalized = latest.normalized_throughput().is_some()
                && usable.clone().any(|r| r.normalized_throughput().is_some());
            if normalized {
                Metric::Normalized
            } else {
                Metric::Throughput
            }
        }
        m => m,
    };
    let best = usable
        .filter_map(|r| metric.value(r).map(|v| (v, *r)))
        .fold(None::<(f64, &BenchRecord)>, |acc, (v, r)| match acc {
            Some((bv, _)) if bv >= v => acc,
            _ => Some((v, r)),
        });
    let latest_v = metric.value(latest);
    let change = match (best, latest_v) {
        (Some((b, _)), Some(l)) => Some((l - b) / b),
        _ => None,
    };
    RegressionRow {
        test_name: latest.test_name.clone(),
        metric,
        baseline: best.map(|(v, _)| v),
        latest: latest_v,
        change_pct: change.map(|c| c * 100.0),
        regressed: change.is_some_and(|c| c < -threshold - EPS),
        roundtrip_ok: latest.roundtrip_ok,
        latest_timestamp: latest.timestamp.clone(),
        baseline_timestamp: best.map(|(_, r)| r.timestamp.clone()),
        latest_commit: latest.git_commit.clone(),
        baseline_commit: best.and_then(|(_, r)| r.git_commit.clone()),
    }
}
