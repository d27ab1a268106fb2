//! `pixelrts bench` and `pixelrts dashboard`: wiring the library's bench module to the codec.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use pixelrts::bench::{self, BenchConfig, Pattern};
use pixelrts::Mode;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Input sizes (bytes; suffixes KiB, MiB, GiB accepted).
    #[arg(long, num_args = 1.., value_parser = parse_size, default_values = ["1MiB", "10MiB", "100MiB"])]
    sizes: Vec<u64>,
    /// Timed repetitions per size.
    #[arg(long, default_value_t = 5)]
    iterations: u32,
    /// Input data: random, zeros, ones, sequential or text.
    #[arg(long, default_value = "random")]
    pattern: Pattern,
    /// Encoding mode: standard or code.
    #[arg(long, default_value = "standard")]
    mode: Mode,
    /// GPU use: auto, on or off (this build's encoder runs on the CPU).
    #[arg(long, default_value = "auto")]
    gpu: String,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Results directory (history is DIR/benchmark_history.jsonl).
    #[arg(long, default_value = "benchmark_results")]
    output: PathBuf,
    /// Print the records as JSON.
    #[arg(long)]
    json: bool,
    /// Instead of benchmarking: compare each test's latest result with the best earlier one
    /// (or the baseline) and exit 1 if any regressed by more than the threshold.
    #[arg(long)]
    check_regression: bool,
    /// Allowed slowdown as a fraction (0.10 = 10%).
    #[arg(long, default_value_t = bench::DEFAULT_THRESHOLD)]
    threshold: f64,
    /// Baseline records (JSONL or JSON) to compare against instead of the history's best.
    #[arg(long)]
    baseline: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DashboardArgs {
    /// Directory holding benchmark_history.jsonl.
    #[arg(long, default_value = "benchmark_results")]
    results_dir: PathBuf,
    /// The HTML file to write.
    #[arg(long, default_value = "benchmark_results/dashboard.html")]
    output: PathBuf,
    /// Mark regressions beyond this fraction.
    #[arg(long, default_value_t = bench::DEFAULT_THRESHOLD)]
    threshold: f64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    bench::parse_size(s).map_err(|e| e.to_string())
}

fn load(dir: &Path) -> anyhow::Result<Vec<bench::BenchRecord>> {
    let loaded = bench::load_history(dir)?;
    for line in loaded.report_bad_lines(&bench::history_path(dir)) {
        eprintln!("warning: {line}");
    }
    Ok(loaded.records)
}

pub fn cmd_bench(a: BenchArgs) -> anyhow::Result<i32> {
    if a.check_regression {
        let history = load(&a.output)?;
        let baseline = match &a.baseline {
            Some(p) => Some(
                bench::load_records_file(p)
                    .with_context(|| format!("baseline {}", p.display()))?
                    .records,
            ),
            None => None,
        };
        let report = bench::check_regression(&history, baseline.as_deref(), a.threshold);
        print!("{}", report.render_table());
        return Ok(report.exit_code());
    }
    let mode = a.mode;
    let threads = a.threads;
    let codec = bench::pixelrts_codec(mode, threads);
    let config = BenchConfig {
        sizes: a.sizes,
        iterations: a.iterations,
        pattern: a.pattern,
        mode: bench::mode_label(mode).into(),
        gpu: if a.gpu == "on" {
            "on".into()
        } else {
            "none".into()
        },
        threads: threads.unwrap_or(0),
        output_dir: Some(a.output.clone()),
        check_roundtrip: true,
        quiet: a.json,
        ..Default::default()
    };
    let records = bench::run(&config, &codec)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    }
    Ok(if records.iter().all(|r| r.roundtrip_ok) {
        0
    } else {
        1
    })
}

pub fn cmd_dashboard(a: DashboardArgs) -> anyhow::Result<i32> {
    let records = load(&a.results_dir)?;
    let report = bench::check_regression(&records, None, a.threshold);
    let html = bench::render_dashboard(&records, &report);
    if let Some(dir) = a.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    std::fs::write(&a.output, html).with_context(|| format!("{}", a.output.display()))?;
    eprintln!("wrote {} ({} records)", a.output.display(), records.len());
    Ok(0)
}
