//! A self-contained HTML dashboard: inline CSS and inline SVG charts, no scripts,
//! no network resources. Every string from the records is HTML-escaped.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::history::{now_rfc3339, parse_timestamp, rfc3339, BenchRecord};
use super::regression::{RegressionReport, RegressionRow};
use super::{html_escape as esc, size_label};

const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#7f7f7f", "#393b79",
];

const CSS: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:1.5em;margin:0 0 4px}
h2{font-size:1.15em;margin:28px 0 8px}
.meta{color:#555;font-size:.9em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:12px 0;overflow-x:auto}
table{border-collapse:collapse;font-size:.85em;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #e5e5e5;text-align:right;white-space:nowrap}
th{background:#f0f0f0;position:sticky;top:0}
td.l,th.l{text-align:left}
tr.regressed td{background:#fde2e2;color:#8b0000}
tr.failed td{background:#fde2e2;color:#8b0000;font-weight:bold}
.badge{display:inline-block;padding:1px 6px;border-radius:8px;font-size:.8em;font-weight:bold;color:#fff;background:#c62828;margin-left:4px}
.badge.ok{background:#2e7d32}
.badge.new{background:#757575}
.summary-bad{color:#c62828;font-weight:bold}
.summary-good{color:#2e7d32;font-weight:bold}
svg{font-family:inherit;font-size:11px}
svg .grid{stroke:#e6e6e6}
svg .axis{stroke:#333}
svg .lbl{fill:#333}
svg .title{font-size:13px;font-weight:bold;fill:#222}
details summary{cursor:pointer;margin:8px 0}
.empty{color:#777;font-style:italic}
"#;

/// Renders the dashboard for `records` (in history order), marking the rows of
/// `report` that regressed.
pub fn render_dashboard(records: &[BenchRecord], report: &RegressionReport) -> String {
    let mut h = String::with_capacity(16 * 1024 + records.len() * 512);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str("<title>PixelRTS benchmark dashboard</title>\n<style>");
    h.push_str(CSS);
    h.push_str("</style>\n</head>\n<body>\n<h1>PixelRTS benchmark dashboard</h1>\n");

    let tests = test_names(records);
    let regressed = report.rows.iter().filter(|r| r.regressed).count();
    let failed = report.rows.iter().filter(|r| !r.roundtrip_ok).count();
    let _ = writeln!(
        h,
        "<p class=\"meta\">Generated {} &middot; {} record(s) &middot; {} test(s) &middot; MB = 10<sup>6</sup> bytes &middot; regression threshold {:.1}% against {}</p>",
        esc(&now_rfc3339()),
        records.len(),
        tests.len(),
        report.threshold * 100.0,
        if report.against_baseline { "the baseline" } else { "the best earlier run" },
    );
    if let Some(last) = records.last() {
        let _ = writeln!(
            h,
            "<p class=\"meta\">Latest run: {} &middot; commit {} &middot; version {} &middot; CPU {} ({} cores) &middot; threads {} &middot; GPU {}</p>",
            esc(&last.timestamp),
            esc(last.git_commit.as_deref().unwrap_or("unknown")),
            esc(&last.version),
            esc(&last.machine.cpu_model),
            last.machine.cores,
            last.threads,
            esc(&last.gpu),
        );
    }
    if regressed + failed > 0 {
        let _ = writeln!(
            h,
            "<p class=\"summary-bad\">{regressed} regression(s), {failed} round-trip failure(s): {}</p>",
            esc(&report
                .rows
                .iter()
                .filter(|r| r.regressed || !r.roundtrip_ok)
                .map(|r| r.test_name.as_str())
                .collect::<Vec<_>>()
                .join(", "))
        );
    } else if !records.is_empty() {
        h.push_str("<p class=\"summary-good\">No regressions.</p>\n");
    }

    if records.is_empty() {
        h.push_str("<p class=\"empty\">No benchmark records yet. Run <code>pixelrts benchmark</code> to add some.</p>\n");
        h.push_str("</body>\n</html>\n");
        return h;
    }

    // X positions: time when every timestamp parses, otherwise the record's index.
    let times: Vec<Option<f64>> = records
        .iter()
        .map(|r| parse_timestamp(&r.timestamp))
        .collect();
    let by_time = times.iter().all(Option::is_some);
    let xs: Vec<f64> = if by_time {
        times.iter().map(|t| t.unwrap_or(0.0)).collect()
    } else {
        (0..records.len()).map(|i| i as f64).collect()
    };

    h.push_str("<h2>Throughput over time</h2>\n<div class=\"card\">\n");
    h.push_str(&chart(
        records,
        &xs,
        by_time,
        &tests,
        report,
        "series",
        "Round-trip throughput (MB/s)",
        |r| Some(r.throughput_mb_sec).filter(|v| v.is_finite()),
        "MB/s",
    ));
    h.push_str("</div>\n");

    if records.iter().any(|r| r.normalized_throughput().is_some()) {
        h.push_str("<h2>Normalized throughput (throughput &divide; SHA-256 MB/s of the same run)</h2>\n<div class=\"card\">\n");
        h.push_str(&chart(
            records,
            &xs,
            by_time,
            &tests,
            report,
            "series-normalized",
            "Normalized throughput",
            BenchRecord::normalized_throughput,
            "",
        ));
        h.push_str("</div>\n");
    }

    h.push_str("<h2>Latest results</h2>\n<div class=\"card\">\n");
    latest_table(&mut h, records, &tests, report);
    h.push_str("</div>\n");

    h.push_str("<h2>All records</h2>\n<div class=\"card\">\n<details><summary>Show the ");
    let shown = records.len().min(500);
    let _ = writeln!(h, "{shown} most recent record(s)</summary>");
    all_table(&mut h, &records[records.len() - shown..]);
    h.push_str("</details>\n</div>\n</body>\n</html>\n");
    h
}

fn test_names(records: &[BenchRecord]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for r in records {
        if !names.contains(&r.test_name.as_str()) {
            names.push(&r.test_name);
        }
    }
    names
}

fn short_commit(c: Option<&str>) -> &str {
    match c {
        Some(c) => c.get(..10).unwrap_or(c),
        None => "-",
    }
}

/// 1, 2 or 5 × 10^k, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let f = raw / p;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * p
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

fn time_label(t: f64, span: f64) -> String {
    let s = rfc3339(UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0)));
    if span > 300.0 * 86_400.0 {
        s[..10].to_string() // YYYY-MM-DD
    } else if span > 2.0 * 86_400.0 {
        format!("{} {}", &s[5..10], &s[11..16]) // MM-DD HH:MM
    } else {
        format!("{} {}", &s[5..10], &s[11..19]) // MM-DD HH:MM:SS
    }
}

#[allow(clippy::too_many_arguments)]
fn chart(
    records: &[BenchRecord],
    xs: &[f64],
    by_time: bool,
    tests: &[&str],
    report: &RegressionReport,
    class: &str,
    title: &str,
    value: impl Fn(&BenchRecord) -> Option<f64>,
    unit: &str,
) -> String {
    const W: f64 = 980.0;
    const LEFT: f64 = 70.0;
    const TOP: f64 = 30.0;
    const PLOT_W: f64 = 640.0;
    const PLOT_H: f64 = 300.0;
    const LEGEND_X: f64 = LEFT + PLOT_W + 20.0;
    let height = (TOP + PLOT_H + 50.0).max(TOP + 10.0 + 18.0 * tests.len() as f64 + 10.0);

    let pts: Vec<(usize, f64, f64)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| value(r).map(|v| (i, xs[i], v)))
        .collect();
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 - x0 <= 0.0 {
        let pad = if by_time { 3600.0 } else { 1.0 };
        x0 -= pad;
        x1 += pad;
    }
    let ymax_data = pts.iter().map(|p| p.2).fold(0.0f64, f64::max);
    let step = nice_step(if ymax_data > 0.0 {
        ymax_data / 5.0
    } else {
        0.2
    });
    let ymax = ((ymax_data / step).floor() + 1.0) * step;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * PLOT_W;
    let sy = |y: f64| TOP + PLOT_H - (y / ymax) * PLOT_H;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" viewBox=\"0 0 {W} {height:.0}\" width=\"{W}\" height=\"{height:.0}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    let _ = writeln!(s, "<title>{}</title>", esc(title));
    let _ = writeln!(
        s,
        "<text class=\"title\" x=\"{LEFT}\" y=\"18\">{}</text>",
        esc(title)
    );
    // Y grid, ticks and labels.
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    let mut k = 0.0;
    while k <= ymax + step * 1e-9 {
        let y = sy(k);
        let _ = writeln!(
            s,
            "<line class=\"grid\" stroke=\"#e6e6e6\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/><line class=\"axis\" stroke=\"#333\" x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{LEFT}\" y2=\"{y:.1}\"/><text class=\"lbl\" fill=\"#333\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + PLOT_W,
            LEFT - 5.0,
            LEFT - 8.0,
            y + 4.0,
            esc(&format!("{k:.decimals$}"))
        );
        k += step;
    }
    // X ticks and labels.
    let nticks = 5;
    for i in 0..=nticks {
        let xv = x0 + (x1 - x0) * i as f64 / nticks as f64;
        let x = sx(xv);
        let label = if by_time {
            time_label(xv, x1 - x0)
        } else {
            format!("#{}", xv.round() as i64 + 1)
        };
        let _ = writeln!(
            s,
            "<line class=\"axis\" stroke=\"#333\" x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/><text class=\"lbl\" fill=\"#333\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + PLOT_H,
            TOP + PLOT_H + 5.0,
            TOP + PLOT_H + 18.0,
            esc(&label)
        );
    }
    // Axes and axis titles.
    let _ = writeln!(
        s,
        "<line class=\"axis\" stroke=\"#333\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{:.1}\"/><line class=\"axis\" stroke=\"#333\" x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>",
        TOP + PLOT_H,
        TOP + PLOT_H,
        LEFT + PLOT_W,
        TOP + PLOT_H
    );
    let _ = writeln!(
        s,
        "<text class=\"lbl\" fill=\"#333\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        LEFT + PLOT_W / 2.0,
        TOP + PLOT_H + 38.0,
        if by_time { "time (UTC)" } else { "run" }
    );
    let ylab = if unit.is_empty() { "ratio" } else { unit };
    let _ = writeln!(
        s,
        "<text class=\"lbl\" fill=\"#333\" transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        TOP + PLOT_H / 2.0,
        esc(ylab)
    );

    // One polyline per test, then its points with tooltips, then its legend entry.
    for (ti, name) in tests.iter().enumerate() {
        let color = PALETTE[ti % PALETTE.len()];
        let dash = if ti >= PALETTE.len() {
            " stroke-dasharray=\"6 3\""
        } else {
            ""
        };
        let series: Vec<&(usize, f64, f64)> = pts
            .iter()
            .filter(|p| records[p.0].test_name == *name)
            .collect();
        let coords: Vec<String> = series
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.1), sy(p.2)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline class=\"{class}\" data-test=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            esc(name),
            coords.join(" ")
        );
        let row = report.row(name);
        let latest_idx = series.last().map(|p| p.0);
        for p in &series {
            let r = &records[p.0];
            let flagged = Some(p.0) == latest_idx
                && row.is_some_and(|row| row.regressed || !row.roundtrip_ok);
            let (radius, extra) = if flagged {
                (5.5, " stroke=\"#c62828\" stroke-width=\"2.5\"")
            } else {
                (3.5, "")
            };
            let tip = format!(
                "{}\n{}\n{} {}\ncommit {}\nsize {}{}{}",
                r.test_name,
                r.timestamp,
                fmt_num(p.2),
                unit,
                short_commit(r.git_commit.as_deref()),
                size_label(r.data_size),
                if r.roundtrip_ok {
                    ""
                } else {
                    "\nROUND TRIP FAILED"
                },
                if flagged { "\nREGRESSION" } else { "" },
            );
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{radius}\" fill=\"{color}\"{extra}><title>{}</title></circle>",
                sx(p.1),
                sy(p.2),
                esc(&tip)
            );
        }
        let ly = TOP + 10.0 + 18.0 * ti as f64;
        let label: String = if name.chars().count() > 36 {
            name.chars().take(35).chain(['…']).collect()
        } else {
            name.to_string()
        };
        let mark = if row.is_some_and(|r| r.regressed) {
            " \u{26a0} regressed"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "<g class=\"legend\"><title>{}</title><line x1=\"{LEGEND_X}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"3\"{dash}/><text class=\"lbl\" fill=\"#333\" x=\"{:.1}\" y=\"{:.1}\">{}{}</text></g>",
            esc(name),
            LEGEND_X + 22.0,
            LEGEND_X + 28.0,
            ly + 4.0,
            esc(&label),
            mark
        );
    }
    s.push_str("</svg>\n");
    s
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

fn status_cell(row: Option<&RegressionRow>) -> (&'static str, String) {
    match row {
        Some(r) if !r.roundtrip_ok => (
            " class=\"failed\"",
            "<span class=\"badge\">ROUND-TRIP FAILED</span>".to_string(),
        ),
        Some(r) if r.regressed => (
            " class=\"regressed\"",
            "<span class=\"badge regression\">REGRESSION</span>".to_string(),
        ),
        Some(r) if r.baseline.is_none() => ("", "<span class=\"badge new\">new</span>".into()),
        Some(_) => ("", "<span class=\"badge ok\">ok</span>".into()),
        None => ("", "-".into()),
    }
}

fn latest_table(
    h: &mut String,
    records: &[BenchRecord],
    tests: &[&str],
    report: &RegressionReport,
) {
    h.push_str("<table class=\"latest\">\n<thead><tr><th class=\"l\">Test</th><th class=\"l\">When (UTC)</th><th class=\"l\">Commit</th><th>Size</th><th>Grid</th><th>Encode MB/s</th><th>Decode MB/s</th><th>Throughput MB/s</th><th>SHA-256 MB/s</th><th>Normalized</th><th>Size ratio</th><th>Peak MB</th><th>Iter.</th><th class=\"l\">Metric</th><th>Baseline</th><th>Change</th><th class=\"l\">Status</th></tr></thead>\n<tbody>\n");
    for name in tests {
        let Some(r) = records.iter().rev().find(|r| r.test_name == *name) else {
            continue;
        };
        let row = report.row(name);
        let (cls, badge) = status_cell(row);
        let _ = writeln!(
            h,
            "<tr{cls} data-test=\"{}\"><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\" title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.1}</td><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            esc(name),
            esc(name),
            esc(&r.timestamp),
            esc(r.git_commit.as_deref().unwrap_or("")),
            esc(short_commit(r.git_commit.as_deref())),
            esc(&size_label(r.data_size)),
            r.grid_size,
            r.encode_mb_sec,
            r.decode_mb_sec,
            r.throughput_mb_sec,
            opt(r.reference_mb_sec, |v| format!("{v:.2}")),
            opt(r.normalized_throughput(), |v| format!("{v:.4}")),
            r.size_ratio,
            r.peak_memory_mb,
            r.metadata.iterations,
            esc(row.map_or("-", |x| x.metric.name())),
            opt(row.and_then(|x| x.baseline), fmt_num),
            opt(row.and_then(|x| x.change_pct), |c| format!("{c:+.1}%")),
            badge,
        );
    }
    h.push_str("</tbody>\n</table>\n");
}

fn all_table(h: &mut String, records: &[BenchRecord]) {
    h.push_str("<table class=\"all\">\n<thead><tr><th class=\"l\">When (UTC)</th><th class=\"l\">Test</th><th class=\"l\">Commit</th><th class=\"l\">Version</th><th>Encode s (min/med/max)</th><th>Decode s (min/med/max)</th><th>Throughput MB/s</th><th>SHA-256 MB/s</th><th>Peak MB</th><th>Threads</th><th class=\"l\">GPU</th><th class=\"l\">Round trip</th></tr></thead>\n<tbody>\n");
    for r in records.iter().rev() {
        let _ = writeln!(
            h,
            "<tr{}><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{:.4} / {:.4} / {:.4}</td><td>{:.4} / {:.4} / {:.4}</td><td>{:.2}</td><td>{}</td><td>{:.1}</td><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            if r.roundtrip_ok { "" } else { " class=\"failed\"" },
            esc(&r.timestamp),
            esc(&r.test_name),
            esc(short_commit(r.git_commit.as_deref())),
            esc(&r.version),
            r.encode_time_min,
            r.encode_time_median,
            r.encode_time_max,
            r.decode_time_min,
            r.decode_time_median,
            r.decode_time_max,
            r.throughput_mb_sec,
            opt(r.reference_mb_sec, |v| format!("{v:.2}")),
            r.peak_memory_mb,
            r.threads,
            esc(&r.gpu),
            if r.roundtrip_ok { "ok" } else { "FAILED" },
        );
    }
    h.push_str("</tbody>\n</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.5), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(130.0), 200.0);
        assert_eq!(nice_step(f64::NAN), 1.0);
    }
}
