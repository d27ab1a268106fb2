//! The runner, with fake codecs (the real codec is not needed).

use std::cell::Cell;
use std::fs;
use std::path::Path;

use anyhow::Result;
use pixelrts::bench::{
    check_regression, load_history, render_results_table, run, BenchConfig, Codec, EncodeOutcome,
    FnCodec, Pattern, DEFAULT_THRESHOLD,
};

/// "Encodes" by copying; reports the grid the format would use.
struct CopyCodec {
    encodes: Cell<u32>,
    decodes: Cell<u32>,
}

impl Codec for CopyCodec {
    fn name(&self) -> String {
        "copy".into()
    }
    fn encode(&self, input: &Path, output: &Path) -> Result<EncodeOutcome> {
        self.encodes.set(self.encodes.get() + 1);
        let n = fs::copy(input, output)?;
        let mut g = 4u64;
        while 4 * g * g < n {
            g *= 2;
        }
        Ok(EncodeOutcome {
            grid_size: g,
            output_bytes: n,
        })
    }
    fn decode(&self, input: &Path, output: &Path) -> Result<()> {
        self.decodes.set(self.decodes.get() + 1);
        fs::copy(input, output)?;
        Ok(())
    }
}

fn copy_codec() -> CopyCodec {
    CopyCodec {
        encodes: Cell::new(0),
        decodes: Cell::new(0),
    }
}

fn config(work: &Path) -> BenchConfig {
    BenchConfig {
        sizes: vec![64 * 1024, 1000],
        iterations: 3,
        pattern: Pattern::Random,
        mode: "dense".into(),
        gpu: "none".into(),
        threads: 2,
        output_dir: None,
        check_roundtrip: true,
        seed: 1,
        work_dir: Some(work.to_path_buf()),
        quiet: true,
    }
}

#[test]
fn copy_codec_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let out = tmp.path().join("out");
    let mut cfg = config(&work);
    cfg.output_dir = Some(out.clone());
    let codec = copy_codec();
    let recs = run(&cfg, &codec).unwrap();

    assert_eq!(codec.encodes.get(), 6);
    assert_eq!(codec.decodes.get(), 6);
    assert_eq!(recs.len(), 2);
    let r = &recs[0];
    assert_eq!(r.test_name, "random_64KiB_dense");
    assert_eq!(recs[1].test_name, "random_1000B_dense");
    assert_eq!(r.data_size, 65536);
    assert_eq!(r.grid_size, 128);
    assert_eq!(recs[1].grid_size, 16);
    assert!(r.roundtrip_ok);
    assert_eq!(r.metadata.iterations, 3);
    assert_eq!(r.metadata.pattern, "random");
    assert_eq!(r.metadata.mode, "dense");
    assert_eq!(r.metadata.extra["codec"], "copy");
    assert_eq!(r.threads, 2);
    assert_eq!(r.gpu, "none");
    assert!((r.size_ratio - 1.0).abs() < 1e-12);
    assert!(r.encode_time_min > 0.0);
    assert!(r.encode_time_min <= r.encode_time_median && r.encode_time_median <= r.encode_time_max);
    assert!(r.decode_time_min <= r.decode_time_median && r.decode_time_median <= r.decode_time_max);
    assert_eq!(r.encode_time, r.encode_time_median);
    assert_eq!(r.total_time, r.encode_time + r.decode_time);
    let expect = 65536.0 / 1e6 / r.total_time;
    assert!((r.throughput_mb_sec - expect).abs() < 1e-9 * expect);
    assert!((r.encode_mb_sec - 65536.0 / 1e6 / r.encode_time).abs() < 1e-6 * r.encode_mb_sec);
    assert!(r.reference_mb_sec.unwrap() > 0.0);
    assert!(r.normalized_throughput().unwrap() > 0.0);
    if cfg!(target_os = "linux") {
        assert!(r.peak_memory_mb > 0.0);
    }

    // Records were appended to the history as they were measured.
    let loaded = load_history(&out).unwrap();
    assert!(loaded.bad_lines.is_empty());
    assert_eq!(loaded.records, recs);

    // Temporary files are gone; the work dir itself stays.
    assert!(work.is_dir());
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0);

    let table = render_results_table(&recs);
    assert!(table.contains("random_64KiB_dense"));
    assert!(table.contains("MB = 10^6 bytes"));
    assert_eq!(
        table.lines().filter(|l| l.ends_with(" ok")).count(),
        2,
        "{table}"
    );
}

#[test]
fn corrupting_codec_fails_the_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut cfg = config(tmp.path());
    cfg.sizes = vec![64 * 1024];
    cfg.pattern = Pattern::Text;
    cfg.output_dir = Some(out.clone());
    let flip = FnCodec::new(
        "flip-one-byte",
        |i: &Path, o: &Path| {
            fs::copy(i, o)?;
            Ok(EncodeOutcome::default())
        },
        |i: &Path, o: &Path| {
            let mut d = fs::read(i)?;
            d[1234] ^= 1;
            fs::write(o, d)?;
            Ok(())
        },
    );
    let recs = run(&cfg, &flip).unwrap();
    assert!(!recs[0].roundtrip_ok);
    assert_eq!(recs[0].metadata.pattern, "text");
    // output_bytes 0: the runner measured the file.
    assert!((recs[0].size_ratio - 1.0).abs() < 1e-12);
    assert!(render_results_table(&recs).contains("FAILED"));
    let hist = load_history(&out).unwrap().records;
    assert!(!hist[0].roundtrip_ok);
    assert_eq!(
        check_regression(&hist, None, DEFAULT_THRESHOLD).exit_code(),
        1
    );

    // Truncation is caught too.
    let trunc = FnCodec::new(
        "truncate",
        |i: &Path, o: &Path| {
            fs::copy(i, o)?;
            Ok(EncodeOutcome::default())
        },
        |i: &Path, o: &Path| {
            let d = fs::read(i)?;
            fs::write(o, &d[..d.len() - 1])?;
            Ok(())
        },
    );
    assert!(!run(&cfg, &trunc).unwrap()[0].roundtrip_ok);

    // Without the check, the record says nothing failed, and that it was not checked.
    cfg.check_roundtrip = false;
    cfg.output_dir = None;
    let r = &run(&cfg, &flip).unwrap()[0];
    assert!(r.roundtrip_ok);
    assert_eq!(r.metadata.extra["roundtrip_checked"], false);
}

#[test]
fn codec_errors_and_bad_configs_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let failing = FnCodec::new(
        "fails",
        |_: &Path, _: &Path| anyhow::bail!("no codec yet"),
        |_: &Path, _: &Path| Ok(()),
    );
    let e = run(&cfg, &failing).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("random_64KiB_dense"), "{msg}");
    assert!(msg.contains("no codec yet"), "{msg}");

    let no_output = FnCodec::new(
        "no-output",
        |_: &Path, _: &Path| Ok(EncodeOutcome::default()),
        |_: &Path, _: &Path| Ok(()),
    );
    let r = run(&cfg, &no_output).unwrap();
    assert!(
        !r[0].roundtrip_ok,
        "a missing decoded file is a failed round trip"
    );

    let mut zero = cfg.clone();
    zero.iterations = 0;
    assert!(run(&zero, &copy_codec()).is_err());
    let mut none = cfg.clone();
    none.sizes.clear();
    assert!(run(&none, &copy_codec()).is_err());
}

#[test]
fn every_pattern_and_an_empty_input() {
    let tmp = tempfile::tempdir().unwrap();
    for p in Pattern::ALL {
        let mut cfg = config(tmp.path());
        cfg.pattern = p;
        cfg.sizes = vec![0, 4097];
        cfg.iterations = 1;
        cfg.mode = String::new();
        let recs = run(&cfg, &copy_codec()).unwrap();
        assert_eq!(recs[0].test_name, format!("{p}_0B"));
        assert!(recs.iter().all(|r| r.roundtrip_ok), "{p}");
        assert_eq!(recs[0].throughput_mb_sec, 0.0);
        assert_eq!(recs[0].size_ratio, 0.0);
        assert_eq!(recs[0].reference_mb_sec, None);
    }
}
