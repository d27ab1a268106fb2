//! The `bench`, `dashboard`, `doctor` commands and `--gpu`, run as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

fn pixelrts(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pixelrts"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run pixelrts")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn bench_appends_history_and_regression_check_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = pixelrts(
        &[
            "bench",
            "--sizes",
            "64KiB",
            "--iterations",
            "2",
            "--pattern",
            "text",
            "--output",
            "res",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let history = std::fs::read_to_string(dir.path().join("res/benchmark_history.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(history.lines().next().unwrap()).unwrap();
    for key in [
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
        "version",
        "machine",
        "threads",
        "gpu",
    ] {
        assert!(
            record.get(key).is_some(),
            "history record lacks {key}: {record}"
        );
    }
    assert_eq!(record["data_size"], 65536);
    assert_eq!(record["roundtrip_ok"], true);
    assert_eq!(record["metadata"]["pattern"], "text");

    // One run only: nothing to regress against.
    let check = pixelrts(
        &["bench", "--check-regression", "--output", "res"],
        dir.path(),
    );
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));

    // A fabricated earlier run twice as fast must make the check fail.
    let mut faster = record.clone();
    let tp = record["throughput_mb_sec"].as_f64().unwrap();
    faster["throughput_mb_sec"] = serde_json::json!(tp * 2.0);
    if let Some(r) = record["reference_mb_sec"].as_f64() {
        faster["reference_mb_sec"] = serde_json::json!(r);
    }
    faster["timestamp"] = serde_json::json!("2020-01-01T00:00:00Z");
    let with_faster = format!("{}\n{}", serde_json::to_string(&faster).unwrap(), history);
    std::fs::write(dir.path().join("res/benchmark_history.jsonl"), with_faster).unwrap();
    let check = pixelrts(
        &["bench", "--check-regression", "--output", "res"],
        dir.path(),
    );
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(text(&check).contains("REGRESSED"), "{}", text(&check));

    // The dashboard shows it.
    let dash = pixelrts(
        &["dashboard", "--results-dir", "res", "--output", "dash.html"],
        dir.path(),
    );
    assert!(dash.status.success(), "{}", text(&dash));
    let html = std::fs::read_to_string(dir.path().join("dash.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") || html.starts_with("<!doctype html>"));
    assert!(
        html.contains("<svg") && html.contains("polyline"),
        "dashboard has a chart"
    );
    assert!(
        !html.contains("<script src") && !html.contains("<link rel=\"stylesheet\" href"),
        "self-contained"
    );
}

#[test]
fn equal_runs_do_not_regress() {
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("res");
    std::fs::create_dir_all(&res).unwrap();
    let rec = serde_json::json!({"test_name":"t","data_size":1,"grid_size":4,"encode_time":1.0,"decode_time":1.0,"total_time":2.0,"throughput_mb_sec":100.0,"peak_memory_mb":1.0,"metadata":{"iterations":1,"pattern":"random","mode":"dense"}});
    let line = serde_json::to_string(&rec).unwrap();
    std::fs::write(
        res.join("benchmark_history.jsonl"),
        format!("{line}\n{line}\n"),
    )
    .unwrap();
    let check = pixelrts(
        &["bench", "--check-regression", "--output", "res"],
        dir.path(),
    );
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
}

#[test]
fn doctor_reports_gpu_fuse_cpu_and_cache() {
    let dir = tempfile::tempdir().unwrap();
    let out = pixelrts(&["doctor"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    for section in ["GPU", "FUSE", "CPU", "Cache"] {
        assert!(t.contains(section), "doctor output lacks {section}:\n{t}");
    }
    let json = pixelrts(&["doctor", "--json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("doctor --json is JSON");
    assert!(v.is_object());
}

/// `--gpu on` must fail clearly where no GPU can be used, and `auto`/`off` must fall back.
#[test]
fn gpu_on_fails_clearly_without_a_gpu_and_auto_falls_back() {
    if pixelrts::gpu::Gpu::open(pixelrts::gpu::GpuMode::Auto)
        .ok()
        .flatten()
        .is_some()
    {
        eprintln!(
            "skipped: this machine has a usable GPU, so `--gpu on` cannot be shown to fail here"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.bin"), b"hello gpu").unwrap();
    let on = pixelrts(&["encode", "in.bin", "--gpu", "on"], dir.path());
    assert_eq!(on.status.code(), Some(7), "{}", text(&on));
    assert!(text(&on).contains("no usable NVIDIA GPU"), "{}", text(&on));
    assert!(!dir.path().join("in.bin.rts.png").exists());
    for mode in ["auto", "off"] {
        let out = pixelrts(&["encode", "in.bin", "--gpu", mode, "--force"], dir.path());
        assert!(out.status.success(), "{}", text(&out));
        let dec = pixelrts(
            &[
                "decode",
                "in.bin.rts.png",
                "back.bin",
                "--verify",
                "--force",
                "--gpu",
                mode,
            ],
            dir.path(),
        );
        assert!(dec.status.success(), "{}", text(&dec));
        assert_eq!(
            std::fs::read(dir.path().join("back.bin")).unwrap(),
            b"hello gpu"
        );
    }
}

/// The random-access benchmark writes to the same history, under its own test names.
#[test]
fn random_access_benchmark_writes_to_the_shared_history() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..600_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("in.bin"), &data).unwrap();
    // Small images are plain by default; this benchmark is about the seekable reader.
    let enc = pixelrts(
        &["encode", "in.bin", "--no-sidecar", "--layout", "seekable"],
        dir.path(),
    );
    assert!(enc.status.success(), "{}", text(&enc));
    let out = pixelrts(
        &[
            "bench-random",
            "in.bin.rts.png",
            "--reads",
            "20",
            "--threads",
            "1",
            "--no-plain-png",
            "--history",
            "res",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let history = std::fs::read_to_string(dir.path().join("res/benchmark_history.jsonl")).unwrap();
    let names: Vec<String> = history
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["test_name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        names.contains(&"random_read_4096B_seekable".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"sequential_read_1t_seekable".to_string()),
        "{names:?}"
    );
    let dash = pixelrts(
        &["dashboard", "--results-dir", "res", "--output", "d.html"],
        dir.path(),
    );
    assert!(dash.status.success(), "{}", text(&dash));
    assert!(std::fs::read_to_string(dir.path().join("d.html"))
        .unwrap()
        .contains("random_read_4096B_seekable"));
}
