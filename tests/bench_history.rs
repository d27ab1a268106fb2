//! History file and regression check.

use std::fs;

use pixelrts::bench::history::{now_rfc3339, parse_timestamp};
use pixelrts::bench::{
    append_history, check_regression, check_regression_with, history_path, load_history,
    load_records_file, BenchRecord, Metric, RegressionOptions, DEFAULT_THRESHOLD, HISTORY_FILE,
};
use serde_json::Value;

fn rec(name: &str, mb_sec: f64, reference: Option<f64>, ts: &str) -> BenchRecord {
    let mut r = BenchRecord::new(name, 1 << 20);
    r.grid_size = 512;
    r.total_time = (1 << 20) as f64 / 1e6 / mb_sec;
    r.encode_time = r.total_time / 2.0;
    r.decode_time = r.total_time / 2.0;
    r.throughput_mb_sec = mb_sec;
    r.encode_mb_sec = mb_sec * 2.0;
    r.decode_mb_sec = mb_sec * 2.0;
    r.reference_mb_sec = reference;
    r.timestamp = ts.to_string();
    r.metadata.iterations = 3;
    r.metadata.pattern = "random".into();
    r.metadata.mode = "dense".into();
    r
}

const EXPECTED_KEYS: [&str; 26] = [
    "test_name",
    "data_size",
    "grid_size",
    "encode_time",
    "decode_time",
    "total_time",
    "throughput_mb_sec",
    "peak_memory_mb",
    "metadata",
    "timestamp",
    "git_commit",
    "version",
    "machine",
    "threads",
    "gpu",
    "encode_time_min",
    "encode_time_median",
    "encode_time_max",
    "decode_time_min",
    "decode_time_median",
    "decode_time_max",
    "encode_mb_sec",
    "decode_mb_sec",
    "size_ratio",
    "roundtrip_ok",
    "reference_mb_sec",
];

#[test]
fn history_round_trip_and_field_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("out");
    let mut a = rec(
        "random_1MiB_dense",
        50.0,
        Some(400.0),
        "2025-01-01T00:00:00.000Z",
    );
    a.metadata
        .extra
        .insert("codec".into(), Value::from("fake \"codec\" <x>"));
    a.git_commit = Some("0123456789abcdef".into());
    a.machine.cpu_model = "Test CPU".into();
    a.machine.cores = 8;
    a.threads = 4;
    a.gpu = "none".into();
    let b = rec("zeros_1MiB_dense", 80.0, None, "2025-01-01T00:00:01.000Z");
    let c = rec(
        "random_1MiB_dense",
        55.5,
        Some(410.0),
        "2025-01-02T00:00:00.000Z",
    );

    let path = append_history(&dir, &[a.clone(), b.clone()]).unwrap();
    assert_eq!(path, dir.join(HISTORY_FILE));
    assert_eq!(path, history_path(&dir));
    append_history(&dir, std::slice::from_ref(&c)).unwrap();

    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "one JSON object per line");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        let obj = v.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, EXPECTED_KEYS);
        let meta: Vec<&str> = obj["metadata"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(&meta[..3], ["iterations", "pattern", "mode"]);
        let machine: Vec<&str> = obj["machine"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(machine, ["cpu_model", "cores"]);
    }
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["metadata"]["codec"], "fake \"codec\" <x>");
    assert_eq!(first["git_commit"], "0123456789abcdef");
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));

    // Loading takes the directory or the file itself.
    for p in [dir.as_path(), path.as_path()] {
        let loaded = load_history(p).unwrap();
        assert!(loaded.bad_lines.is_empty(), "{:?}", loaded.bad_lines);
        assert_eq!(loaded.records, vec![a.clone(), b.clone(), c.clone()]);
    }
}

#[test]
fn new_record_describes_this_run() {
    let r = BenchRecord::new("t", 10);
    let t = parse_timestamp(&r.timestamp).expect("RFC 3339");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - t).abs() < 60.0);
    assert!(
        r.timestamp.ends_with('Z') && r.timestamp.len() == 24,
        "{}",
        r.timestamp
    );
    assert!(now_rfc3339().starts_with("20"));
    assert_eq!(r.version, env!("CARGO_PKG_VERSION"));
    assert!(r.machine.cores >= 1);
    assert!(!r.machine.cpu_model.is_empty());
}

#[test]
fn missing_history_is_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let l = load_history(tmp.path()).unwrap();
    assert!(l.records.is_empty() && l.bad_lines.is_empty());
    let l = load_history(&tmp.path().join("nope.jsonl")).unwrap();
    assert!(l.records.is_empty());
    assert!(load_records_file(&tmp.path().join("nope.jsonl")).is_err());
}

#[test]
fn bad_lines_are_reported_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let good = serde_json::to_string(&rec("a", 10.0, None, "2025-01-01T00:00:00Z")).unwrap();
    let good2 = serde_json::to_string(&rec("b", 20.0, None, "2025-01-01T00:00:00Z")).unwrap();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(good.as_bytes());
    bytes.extend_from_slice(b"\nthis is not json\n\n{}\n");
    bytes.extend_from_slice(&good.as_bytes()[..good.len() / 2]);
    bytes.extend_from_slice(b"\n\xff\xfe\x00 binary\n{\"test_name\": 5}\n");
    bytes.extend_from_slice(good2.as_bytes());
    bytes.push(b'\n');
    let path = tmp.path().join(HISTORY_FILE);
    fs::write(&path, bytes).unwrap();

    let l = load_history(tmp.path()).unwrap();
    let names: Vec<&str> = l.records.iter().map(|r| r.test_name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let bad: Vec<usize> = l.bad_lines.iter().map(|(n, _)| *n).collect();
    assert_eq!(bad, [2, 4, 5, 6, 7]);
    let report = l.report_bad_lines(&path);
    assert_eq!(report.len(), 5);
    assert!(report[0].contains(":2: skipped"), "{}", report[0]);
}

#[test]
fn reference_format_records_load_with_defaults() {
    // A record with only the reference tool's fields.
    let line = r#"{"test_name":"encode_1MB","data_size":1048576,"grid_size":512,"encode_time":0.5,"decode_time":0.25,"total_time":0.75,"throughput_mb_sec":1.4,"peak_memory_mb":30.5,"metadata":{"iterations":3,"pattern":"random","mode":"standard","compression":6}}"#;
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("ref.jsonl");
    fs::write(&p, format!("{line}\n")).unwrap();
    let l = load_records_file(&p).unwrap();
    assert!(l.bad_lines.is_empty(), "{:?}", l.bad_lines);
    let r = &l.records[0];
    assert_eq!(r.test_name, "encode_1MB");
    assert_eq!(r.metadata.mode, "standard");
    assert_eq!(r.metadata.extra["compression"], 6);
    assert!(r.roundtrip_ok);
    assert_eq!(r.reference_mb_sec, None);
    assert_eq!(r.git_commit, None);
}

#[test]
fn non_finite_numbers_survive_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = rec("nan", 10.0, Some(f64::NAN), "2025-01-01T00:00:00Z");
    r.size_ratio = f64::INFINITY;
    r.throughput_mb_sec = f64::NAN;
    append_history(tmp.path(), &[r]).unwrap();
    let l = load_history(tmp.path()).unwrap();
    assert!(l.bad_lines.is_empty(), "{:?}", l.bad_lines);
    assert_eq!(l.records[0].size_ratio, 0.0);
    assert_eq!(l.records[0].throughput_mb_sec, 0.0);
    assert_eq!(l.records[0].reference_mb_sec, None);
}

#[test]
fn baseline_files_in_several_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let a = rec("a", 10.0, None, "2025-01-01T00:00:00Z");
    let b = rec("b", 20.0, None, "2025-01-01T00:00:00Z");
    let both = vec![a.clone(), b.clone()];

    let arr = tmp.path().join("baseline.json");
    fs::write(&arr, serde_json::to_string_pretty(&both).unwrap()).unwrap();
    assert_eq!(load_records_file(&arr).unwrap().records, both);

    let one = tmp.path().join("one.json");
    fs::write(&one, serde_json::to_string_pretty(&a).unwrap()).unwrap();
    assert_eq!(load_records_file(&one).unwrap().records, vec![a.clone()]);

    let wrapped = tmp.path().join("wrapped.json");
    fs::write(
        &wrapped,
        serde_json::to_string(&serde_json::json!({ "results": both })).unwrap(),
    )
    .unwrap();
    assert_eq!(load_records_file(&wrapped).unwrap().records, both);

    // An array with a bad element keeps the good ones.
    let mixed = tmp.path().join("mixed.json");
    let mut v = serde_json::to_value(&both).unwrap();
    v.as_array_mut().unwrap().insert(1, Value::from("junk"));
    fs::write(&mixed, v.to_string()).unwrap();
    let l = load_records_file(&mixed).unwrap();
    assert_eq!(l.records, both);
    assert_eq!(l.bad_lines.len(), 1);
    assert_eq!(l.bad_lines[0].0, 2);

    // Garbage is reported, not a panic.
    let junk = tmp.path().join("junk.json");
    fs::write(&junk, "[1, 2").unwrap();
    let l = load_records_file(&junk).unwrap();
    assert!(l.records.is_empty());
    assert_eq!(l.bad_lines.len(), 1);
}

// ---------------------------------------------------------------- regression

#[test]
fn faster_earlier_run_is_a_regression() {
    let h = vec![
        rec("t", 100.0, None, "2025-01-01T00:00:00Z"),
        rec("t", 80.0, None, "2025-01-02T00:00:00Z"),
    ];
    let r = check_regression(&h, None, DEFAULT_THRESHOLD);
    assert_eq!(r.rows.len(), 1);
    let row = &r.rows[0];
    assert!(row.regressed);
    assert_eq!(row.metric, Metric::Throughput);
    assert_eq!(row.baseline, Some(100.0));
    assert_eq!(row.latest, Some(80.0));
    assert!((row.change_pct.unwrap() + 20.0).abs() < 1e-9);
    assert!(r.any_regressed());
    assert_eq!(r.exit_code(), 1, "the CLI would exit 1");
    assert_eq!(r.regressed_tests(), ["t"]);
    let table = r.render_table();
    assert!(table.contains("REGRESSED"), "{table}");
    assert!(table.contains("-20.0%"), "{table}");
    assert!(table.contains("1 regressed"), "{table}");
}

#[test]
fn equal_runs_and_improvements_are_not() {
    let h = vec![
        rec("t", 100.0, None, "2025-01-01T00:00:00Z"),
        rec("t", 100.0, None, "2025-01-02T00:00:00Z"),
        rec("u", 50.0, None, "2025-01-01T00:00:00Z"),
        rec("u", 70.0, None, "2025-01-02T00:00:00Z"),
    ];
    let r = check_regression(&h, None, DEFAULT_THRESHOLD);
    assert_eq!(r.rows.len(), 2);
    assert!(!r.any_regressed());
    assert_eq!(r.exit_code(), 0);
    assert_eq!(r.rows[0].change_pct, Some(0.0));
    assert!(r.rows[1].change_pct.unwrap() > 39.9);
    assert!(r.render_table().contains("ok"));
}

#[test]
fn single_run_has_nothing_to_compare() {
    let h = vec![rec("t", 100.0, None, "2025-01-01T00:00:00Z")];
    let r = check_regression(&h, None, DEFAULT_THRESHOLD);
    assert_eq!(r.rows[0].baseline, None);
    assert_eq!(r.rows[0].status(), "new");
    assert_eq!(r.exit_code(), 0);
    let empty = check_regression(&[], None, DEFAULT_THRESHOLD);
    assert!(empty.rows.is_empty());
    assert_eq!(empty.exit_code(), 0);
}

#[test]
fn threshold_edge() {
    let run = |latest: f64, threshold: f64| {
        let h = vec![
            rec("t", 100.0, None, "2025-01-01T00:00:00Z"),
            rec("t", latest, None, "2025-01-02T00:00:00Z"),
        ];
        check_regression(&h, None, threshold).any_regressed()
    };
    assert!(!run(90.0, 0.10), "exactly 10% worse is not more than 10%");
    assert!(run(89.9, 0.10));
    assert!(!run(85.0, 0.20));
    assert!(run(79.0, 0.20));
    assert!(run(99.0, 0.0));
    assert!(!run(100.0, 0.0));
    // Nonsense thresholds do not panic.
    assert!(run(50.0, f64::NAN));
    assert!(run(99.0, -1.0));
}

#[test]
fn compares_with_the_best_earlier_run_not_the_previous() {
    let h = vec![
        rec("t", 100.0, None, "2025-01-01T00:00:00Z"),
        rec("t", 150.0, None, "2025-01-02T00:00:00Z"),
        rec("t", 130.0, None, "2025-01-03T00:00:00Z"),
        rec("t", 125.0, None, "2025-01-04T00:00:00Z"),
    ];
    let r = check_regression(&h, None, DEFAULT_THRESHOLD);
    assert_eq!(r.rows[0].baseline, Some(150.0));
    assert_eq!(
        r.rows[0].baseline_timestamp.as_deref(),
        Some("2025-01-02T00:00:00Z")
    );
    assert!(r.rows[0].regressed);
}

#[test]
fn normalized_throughput_absorbs_machine_speed() {
    // The earlier run was on a machine twice as fast (its SHA-256 reference too).
    let h = vec![
        rec("t", 200.0, Some(1000.0), "2025-01-01T00:00:00Z"),
        rec("t", 100.0, Some(500.0), "2025-01-02T00:00:00Z"),
    ];
    let r = check_regression(&h, None, DEFAULT_THRESHOLD);
    assert_eq!(r.rows[0].metric, Metric::Normalized);
    assert!((r.rows[0].baseline.unwrap() - 0.2).abs() < 1e-12);
    assert!(!r.any_regressed());
    // On raw throughput the same data is a regression.
    let raw = check_regression_with(
        &h,
        None,
        &RegressionOptions {
            threshold: DEFAULT_THRESHOLD,
            metric: Metric::Throughput,
        },
    );
    assert!(raw.any_regressed());
    // A real slowdown at equal machine speed is caught normalized too.
    let h2 = vec![
        rec("t", 200.0, Some(1000.0), "2025-01-01T00:00:00Z"),
        rec("t", 150.0, Some(1000.0), "2025-01-02T00:00:00Z"),
    ];
    assert!(check_regression(&h2, None, DEFAULT_THRESHOLD).any_regressed());
}

#[test]
fn falls_back_to_raw_throughput_without_references() {
    let h = vec![
        rec("t", 200.0, None, "2025-01-01T00:00:00Z"),
        rec("t", 150.0, Some(1000.0), "2025-01-02T00:00:00Z"),
    ];
    let r = check_regression(&h, None, DEFAULT_THRESHOLD);
    assert_eq!(r.rows[0].metric, Metric::Throughput);
    assert!(r.any_regressed());
    // Explicit metrics.
    let enc = check_regression_with(
        &h,
        None,
        &RegressionOptions {
            threshold: 0.1,
            metric: "encode".parse().unwrap(),
        },
    );
    assert_eq!(enc.rows[0].metric, Metric::Encode);
    assert_eq!(enc.rows[0].baseline, Some(400.0));
    assert!("bogus".parse::<Metric>().is_err());
}

#[test]
fn baseline_file_comparison() {
    let tmp = tempfile::tempdir().unwrap();
    let base_path = tmp.path().join("baseline.jsonl");
    fs::write(
        &base_path,
        [
            rec("a", 100.0, None, "2024-01-01T00:00:00Z"),
            rec("a", 120.0, None, "2024-01-02T00:00:00Z"),
            rec("b", 10.0, None, "2024-01-01T00:00:00Z"),
        ]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect::<String>(),
    )
    .unwrap();
    let baseline = load_records_file(&base_path).unwrap().records;
    let history = vec![
        // An earlier, faster run in the history does not count when a baseline is given.
        rec("b", 1000.0, None, "2025-01-01T00:00:00Z"),
        rec("a", 105.0, None, "2025-01-02T00:00:00Z"),
        rec("b", 10.5, None, "2025-01-02T00:00:00Z"),
        rec("c", 1.0, None, "2025-01-02T00:00:00Z"),
    ];
    let r = check_regression(&history, Some(&baseline), DEFAULT_THRESHOLD);
    assert!(r.against_baseline);
    let names: Vec<&str> = r.rows.iter().map(|x| x.test_name.as_str()).collect();
    assert_eq!(names, ["b", "a", "c"]);
    let a = r.row("a").unwrap();
    assert_eq!(a.baseline, Some(120.0));
    assert!(a.regressed, "105 is 12.5% below the baseline's best 120");
    assert!(!r.row("b").unwrap().regressed);
    assert_eq!(r.row("c").unwrap().status(), "new");
    assert_eq!(r.exit_code(), 1);
    let ok = check_regression(&history, Some(&baseline), 0.15);
    assert_eq!(ok.exit_code(), 0);
}

#[test]
fn failed_round_trips() {
    // A fast but broken earlier run is not a baseline.
    let mut broken = rec("t", 1000.0, None, "2025-01-01T00:00:00Z");
    broken.roundtrip_ok = false;
    let h = vec![broken, rec("t", 100.0, None, "2025-01-02T00:00:00Z")];
    let r = check_regression(&h, None, DEFAULT_THRESHOLD);
    assert_eq!(r.rows[0].baseline, None);
    assert_eq!(r.exit_code(), 0);
    // A broken latest run fails the check.
    let mut latest = rec("t", 100.0, None, "2025-01-03T00:00:00Z");
    latest.roundtrip_ok = false;
    let h = vec![rec("t", 100.0, None, "2025-01-02T00:00:00Z"), latest];
    let r = check_regression(&h, None, DEFAULT_THRESHOLD);
    assert!(!r.any_regressed());
    assert!(r.any_roundtrip_failed());
    assert_eq!(r.exit_code(), 1);
    assert!(r.render_table().contains("ROUNDTRIP FAILED"));
}

#[test]
fn records_from_scripts_are_completed_or_refused_whole() {
    use pixelrts::bench::complete_records;
    let text = concat!(
        r#"{"test_name":"fuse_cp_random_1GiB","data_size":1073741824,"decode_time":1.5,"#,
        r#""reference_mb_sec":700.5,"metadata":{"mode":"fuse-cp","cache_size":268435456}}"#,
        "\n\n",
        r#"{"test_name":"x","data_size":4096,"roundtrip_ok":false}"#,
        "\n"
    );
    let recs = complete_records(text).unwrap();
    assert_eq!(recs.len(), 2);
    let fresh = BenchRecord::new("fuse_cp_random_1GiB", 1 << 30);
    assert_eq!(recs[0].decode_time, 1.5);
    assert_eq!(recs[0].reference_mb_sec, Some(700.5));
    assert_eq!(recs[0].metadata.mode, "fuse-cp");
    assert_eq!(recs[0].metadata.extra["cache_size"], 268435456);
    // The environment comes from this program, as for every other record.
    assert_eq!(recs[0].version, fresh.version);
    assert_eq!(recs[0].machine, fresh.machine);
    assert!(!recs[0].timestamp.is_empty());
    assert!(!recs[1].roundtrip_ok);

    for (bad, why) in [
        ("{\"data_size\":1}", "no test_name"),
        ("{\"test_name\":\"a\"}", "no data_size"),
        (
            "{\"test_name\":\"a\",\"data_size\":1,\"version\":\"9\"}",
            "filled in by pixelrts",
        ),
        (
            "{\"test_name\":\"a\",\"data_size\":1,\"decode_time\":\"slow\"}",
            "line 2",
        ),
        ("not json", "line 2"),
    ] {
        let text = format!("{{\"test_name\":\"ok\",\"data_size\":1}}\n{bad}\n");
        let e = complete_records(&text).unwrap_err();
        assert!(format!("{e:#}").contains(why), "{bad}: {e:#}");
    }
}
