//! The HTML dashboard.

use pixelrts::bench::{check_regression, render_dashboard, BenchRecord, DEFAULT_THRESHOLD};

fn rec(name: &str, mb_sec: f64, reference: Option<f64>, ts: &str) -> BenchRecord {
    let mut r = BenchRecord::new(name, 1 << 20);
    r.grid_size = 512;
    r.throughput_mb_sec = mb_sec;
    r.total_time = 1.048576 / mb_sec;
    r.reference_mb_sec = reference;
    r.timestamp = ts.to_string();
    r.git_commit = Some("deadbeefcafef00d".into());
    r
}

fn count(h: &str, needle: &str) -> usize {
    h.matches(needle).count()
}

/// Checks the document's skeleton and that it is self-contained.
fn check_page(h: &str) {
    assert!(h.starts_with("<!DOCTYPE html>"), "{}", &h[..50]);
    assert!(h.trim_end().ends_with("</html>"));
    assert_eq!(count(h, "<html"), 1);
    assert_eq!(count(h, "<head>"), 1);
    assert_eq!(count(h, "<body>"), 1);
    assert_eq!(count(h, "</body>"), 1);
    assert_eq!(count(h, "<svg"), count(h, "</svg>"));
    assert_eq!(count(h, "<table"), count(h, "</table>"));
    assert_eq!(count(h, "<tr"), count(h, "</tr>"));
    assert_eq!(count(h, "<style>"), 1);
    assert!(h.contains("<meta charset=\"utf-8\">"));
    // No scripts, no network: the only URL is the SVG namespace.
    assert!(!h.to_ascii_lowercase().contains("<script"));
    for bad in ["src=", "href=", "@import", "url(", "<link", "@font-face"] {
        assert!(!h.contains(bad), "found {bad}");
    }
    let urls = count(h, "http://") + count(h, "https://");
    assert_eq!(urls, count(h, "xmlns=\"http://www.w3.org/2000/svg\""));
}

#[test]
fn empty_history() {
    let report = check_regression(&[], None, DEFAULT_THRESHOLD);
    let h = render_dashboard(&[], &report);
    check_page(&h);
    assert!(!h.contains("<svg"));
    assert!(h.contains("No benchmark records yet"));
}

#[test]
fn one_record() {
    let records = vec![rec(
        "random_1MiB_dense",
        42.0,
        None,
        "2025-03-01T12:00:00.000Z",
    )];
    let report = check_regression(&records, None, DEFAULT_THRESHOLD);
    let h = render_dashboard(&records, &report);
    check_page(&h);
    assert_eq!(
        count(&h, "<svg"),
        1,
        "no normalized chart without references"
    );
    assert_eq!(count(&h, "<polyline class=\"series\""), 1);
    assert_eq!(count(&h, "<circle"), 1);
    assert!(h.contains("<table class=\"latest\""));
    assert!(h.contains("random_1MiB_dense"));
    assert!(h.contains("42.00"));
    assert!(!h.contains("class=\"regressed\""));
    assert!(h.contains("No regressions."));
}

#[test]
fn many_records_with_a_regression_and_a_hostile_name() {
    let evil = "<script>alert('x')</script>&\"";
    let mut records = Vec::new();
    for day in 1..=4 {
        let ts = format!("2025-03-{day:02}T08:30:00.000Z");
        records.push(rec(
            "random_1MiB_dense",
            100.0 + day as f64,
            Some(500.0),
            &ts,
        ));
        // Drops 30% on the last day: a regression.
        let z = if day == 4 { 140.0 } else { 200.0 };
        records.push(rec("zeros_1MiB_dense", z, Some(500.0), &ts));
        records.push(rec(evil, 10.0, Some(500.0), &ts));
    }
    let report = check_regression(&records, None, DEFAULT_THRESHOLD);
    assert_eq!(report.regressed_tests(), ["zeros_1MiB_dense"]);
    let h = render_dashboard(&records, &report);
    check_page(&h);

    // One line per test in the throughput chart (and in the normalized one).
    assert_eq!(count(&h, "<polyline class=\"series\""), 3);
    assert_eq!(count(&h, "<polyline class=\"series-normalized\""), 3);
    assert_eq!(count(&h, "<svg"), 2);
    // Every point has a tooltip.
    assert_eq!(count(&h, "<circle"), 24);
    assert_eq!(count(&h, "<circle"), count(&h, "</title></circle>"));
    // Axes ticks and labels, a legend.
    assert!(h.contains("time (UTC)"));
    assert!(h.contains("MB/s"));
    assert!(h.contains("03-01"));
    assert_eq!(count(&h, "class=\"legend\""), 6);

    // The latest-results table has one row per test; the regression is marked.
    let latest = &h[h.find("<table class=\"latest\"").unwrap()..];
    let latest = &latest[..latest.find("</table>").unwrap()];
    assert_eq!(count(latest, "<tr"), 4, "header + 3 tests");
    assert_eq!(count(latest, "<tr class=\"regressed\""), 1);
    let row_start = latest.find("<tr class=\"regressed\"").unwrap();
    let row = &latest[row_start..row_start + latest[row_start..].find("</tr>").unwrap()];
    assert!(row.contains("zeros_1MiB_dense"));
    assert!(row.contains("REGRESSION"));
    assert!(row.contains("-30.0%"));
    assert!(h.contains("1 regression(s)"));

    // The hostile name is escaped everywhere.
    assert!(!h.contains(evil));
    assert!(h.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
}

#[test]
fn unparseable_timestamps_and_failures() {
    let mut records = vec![
        rec("t", 10.0, None, "yesterday"),
        rec("t", 12.0, None, ""),
        rec("u", 5.0, None, "2025-01-01T00:00:00Z"),
    ];
    records[1].roundtrip_ok = false;
    let report = check_regression(&records, None, DEFAULT_THRESHOLD);
    let h = render_dashboard(&records, &report);
    check_page(&h);
    assert!(h.contains(">run<"), "falls back to an index axis");
    assert!(h.contains("ROUND-TRIP FAILED"));
    assert!(h.contains("<tr class=\"failed\""));
    assert_eq!(count(&h, "<polyline class=\"series\""), 2);
}

#[test]
fn many_tests_and_zero_values() {
    let mut records = Vec::new();
    for i in 0..14 {
        records.push(rec(
            &format!("test_{i}"),
            if i == 0 { 0.0 } else { i as f64 },
            None,
            "2025-01-01T00:00:00Z",
        ));
    }
    let report = check_regression(&records, None, DEFAULT_THRESHOLD);
    let h = render_dashboard(&records, &report);
    check_page(&h);
    assert_eq!(count(&h, "<polyline class=\"series\""), 14);
    assert!(
        h.contains("stroke-dasharray"),
        "series past the palette are dashed"
    );
}
