//! The `pixelrts` command line: argument parsing (clap) and the glue from each command to the
//! library. `main.rs` only calls [`run`].

mod batch_cmd;
mod bench_cmd;
mod docs_cmd;
pub mod exit;
mod mount_cmd;
mod progress;
mod stats_cmd;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};

use pixelrts::batch::Direction;
use pixelrts::decode::{self, DecodeOptions};
use pixelrts::encode::{self, EncodeOptions};
use pixelrts::gpu::GpuMode;
use pixelrts::Mode;

#[derive(Parser, Debug)]
#[command(name = "pixelrts", version, about = "Pack any file into a PNG image (PixelRTS v2) and get it back — fast, seekable, verified.", long_about = None, after_help = exit::help_text())]
pub struct Cli {
    /// More logging (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Encode a file into a .rts.png image.
    #[command(
        after_help = "Examples:\n  pixelrts encode kernel.bin                 # writes kernel.bin.rts.png and its .meta.json sidecar\n  pixelrts encode app.wasm --mode code       # code mode: pixels show the WebAssembly opcodes\n  pixelrts encode disk.img out.rts.png --type disk --meta arch='\"x86_64\"' --level 6"
    )]
    Encode(EncodeArgs),
    /// Decode a .rts.png image back into the original file.
    #[command(
        after_help = "Examples:\n  pixelrts decode kernel.bin.rts.png                # writes kernel.bin\n  pixelrts decode kernel.bin.rts.png - | sha256sum   # to standard output\n  pixelrts decode x.rts.png x.bin --verify --force"
    )]
    Decode(DecodeArgs),
    /// Show a container's metadata and layout without decoding pixels.
    #[command(
        after_help = "Examples:\n  pixelrts info kernel.bin.rts.png\n  pixelrts info kernel.bin.rts.png --json | jq .metadata"
    )]
    Info(InfoArgs),
    /// Check that the payload matches its SHA-256 (exit 0 when it does, 1 when not).
    #[command(after_help = "Example:\n  pixelrts verify kernel.bin.rts.png && echo intact")]
    Verify(VerifyArgs),
    /// Benchmark encode/decode and keep a history; check for regressions.
    #[command(
        after_help = "Examples:\n  pixelrts bench --sizes 1MiB 10MiB --iterations 3\n  pixelrts bench --check-regression --threshold 0.10\n  pixelrts bench --check-regression --baseline benches/baseline.jsonl"
    )]
    Bench(bench_cmd::BenchArgs),
    /// Report what this machine offers: GPU, FUSE, cores, cache directory.
    #[command(after_help = "Example:\n  pixelrts doctor --json")]
    Doctor(DoctorArgs),
    /// Render the benchmark history as one self-contained HTML page.
    #[command(
        after_help = "Example:\n  pixelrts dashboard --results-dir benchmark_results --output dashboard.html"
    )]
    Dashboard(bench_cmd::DashboardArgs),
    /// Write a byte range of the original file to standard output (random access: only the
    /// tiles that hold the range are inflated).
    #[command(
        after_help = "Examples:\n  pixelrts cat disk.img.rts.png --offset 1048576 --length 512 | xxd\n  pixelrts cat kernel.bin.rts.png | sha256sum"
    )]
    Cat(CatArgs),
    /// Random-access benchmark of one file (cold/warm latency, sequential throughput).
    #[command(hide = true)]
    BenchRandom(BenchRandomArgs),
    /// CPU against GPU, stage by stage: scatter, gather and code colouring alone, and whole
    /// encode/decode jobs (`scripts/bench-gpu.sh`).
    #[command(hide = true)]
    BenchGpu(BenchGpuArgs),
    /// Append records measured by a script to the benchmark history, filling in the
    /// environment fields (`scripts/bench-fuse.sh`).
    #[command(hide = true)]
    BenchAppend(BenchAppendArgs),
    /// Mount a folder of .rts.png files: each appears as its decoded file; files written to
    /// MOUNTPOINT/encode/ become .rts.png files in SOURCE when closed.
    #[command(
        after_help = "Examples:\n  pixelrts mount ~/images /mnt/rts                 # returns once mounted\n  pixelrts mount ~/images /mnt/rts -o ro,allow_other -f\n  mount -t fuse.pixelrts ~/images /mnt/rts -o cache_size=1G   # via mount.fuse3\n  pixelrts umount /mnt/rts\n\nA background mount logs nowhere unless PIXELRTS_LOG_FILE=FILE is set (PIXELRTS_LOG=debug for more).\nSIGTERM or SIGINT unmounts and exits 0; with $NOTIFY_SOCKET set, READY=1 is sent once mounted."
    )]
    Mount(mount_cmd::MountArgs),
    /// Unmount a pixelrts mount (fusermount3 -u; umount(2) as root).
    Umount(mount_cmd::UmountArgs),
    /// Show a running mount's counters: reads, bytes served and inflated, cache, open files,
    /// encodes, errors, read latency (the user.pixelrts.stats attribute of its root).
    #[command(
        after_help = "Examples:\n  pixelrts stats /mnt/rts\n  pixelrts stats /mnt/rts --watch 2\n  pixelrts stats /mnt/rts --json | jq .cache\n  getfattr -n user.pixelrts.stats --only-values /mnt/rts"
    )]
    Stats(stats_cmd::StatsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  pixelrts completions bash > /usr/share/bash-completion/completions/pixelrts\n  pixelrts completions zsh > /usr/local/share/zsh/site-functions/_pixelrts\n  pixelrts completions fish > ~/.config/fish/completions/pixelrts.fish\n\nscripts/install.sh installs all three."
    )]
    Completions(docs_cmd::CompletionsArgs),
    /// Write the man pages (pixelrts.1, one per subcommand, mount.fuse.pixelrts.8) into DIR.
    #[command(hide = true)]
    Man(docs_cmd::ManArgs),
}

#[derive(Args, Debug)]
struct CatArgs {
    /// Image to read.
    input: PathBuf,
    /// First byte to write.
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Bytes to write [default: to the end].
    #[arg(long)]
    length: Option<u64>,
    /// Directory for checkpoint indexes of plain PNGs [default: ~/.cache/pixelrts].
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BenchAppendArgs {
    /// JSON lines, each with test_name, data_size and any other record fields ("-": stdin).
    input: PathBuf,
    /// History directory (DIR/benchmark_history.jsonl).
    #[arg(long, default_value = "benchmark_results")]
    history: PathBuf,
}

#[derive(Args, Debug)]
struct BenchGpuArgs {
    /// Sizes in MiB [default: 64 1024 4096].
    #[arg(long, num_args = 1..)]
    sizes_mib: Vec<u64>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Folder for the scratch files (about three times the largest size) [default: the
    /// system's temporary folder].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Measure the CPU rows alone (no GPU needed): the fast path and the mapper path.
    #[arg(long)]
    cpu_only: bool,
}

#[derive(Args, Debug)]
struct BenchRandomArgs {
    /// Image to benchmark.
    input: PathBuf,
    /// Random reads per size.
    #[arg(long, default_value_t = 1000)]
    reads: usize,
    /// Read sizes in bytes.
    #[arg(long, num_args = 1.., default_values_t = [4096usize, 131072])]
    sizes: Vec<usize>,
    /// Thread counts for the sequential comparison.
    #[arg(long, num_args = 1.., default_values_t = [1usize, 2])]
    threads: Vec<usize>,
    /// Skip the plain-PNG size comparison.
    #[arg(long)]
    no_plain_png: bool,
    /// Directory for checkpoint indexes of plain PNGs.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also append the results to DIR/benchmark_history.jsonl (shown by `pixelrts dashboard`).
    #[arg(long, value_name = "DIR")]
    history: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct EncodeArgs {
    /// File(s) to encode. One INPUT and an optional OUTPUT image [default: INPUT.rts.png]; or,
    /// with three or more, or any of --output-dir, --summary, -r, a batch: every INPUT (files,
    /// and folders with -r) is encoded to INPUT.rts.png, beside it or under --output-dir.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    batch: batch_cmd::BatchArgs,
    /// standard (pixels are the bytes) or code (pixels picture WebAssembly opcodes; bytes kept in metadata).
    #[arg(long, default_value = "standard", value_parser = parse_mode)]
    mode: Mode,
    /// Image side in pixels (a power of two that holds the data) [default: smallest that fits].
    #[arg(long)]
    grid_size: Option<u64>,
    /// Content type recorded in the metadata (e.g. kernel, initrd, wasm).
    #[arg(long = "type")]
    kind: Option<String>,
    /// Name recorded in the metadata.
    #[arg(long)]
    name: Option<String>,
    /// Content version recorded in the metadata (stored as content_version).
    #[arg(long)]
    content_version: Option<String>,
    /// Description recorded in the metadata.
    #[arg(long)]
    description: Option<String>,
    /// Extra metadata KEY=VALUE (VALUE is parsed as JSON when it is valid JSON); repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Do not write the OUTPUT.meta.json sidecar.
    #[arg(long)]
    no_sidecar: bool,
    /// Worker threads [default: one per core but one, which SHA-256 keeps].
    #[arg(long)]
    threads: Option<usize>,
    /// Compression effort 0-9 of the pixels' own deflate (0 stores; incompressible data is always stored).
    #[arg(long, default_value_t = encode::DEFAULT_LEVEL, value_parser = clap::value_parser!(u32).range(0..=9))]
    level: u32,
    /// auto (compress when a sample shows it pays), zlib (the pixels hold a zlib stream of the
    /// input, as the reference's compressed files), none (pixels are the input bytes).
    #[arg(long, default_value = "auto")]
    compress: encode::compressed::CompressMode,
    /// zlib level 1-9 of a compressed payload.
    #[arg(long, default_value_t = encode::compressed::DEFAULT_COMPRESS_LEVEL, value_parser = clap::value_parser!(u32).range(1..=9))]
    compress_level: u32,
    /// Original bytes per independently inflatable segment of a compressed payload (K/M suffixes).
    #[arg(long, default_value = "128K", value_parser = parse_segment_size)]
    segment_size: u32,
    /// auto (plain up to 1024x1024 pixels, i.e. payloads up to 4 MiB; seekable above),
    /// seekable (restart points and an index: random access without a first pass), plain (one
    /// zlib stream, as the reference writes).
    #[arg(long, default_value = "auto")]
    layout: encode::Layout,
    /// Record the input's mode bits, mtime, owner and group (file_mode, file_mtime, file_uid,
    /// file_gid), which the mount shows for the decoded file; without it the mount shows 0444,
    /// the image's own mtime and the mount's user.
    #[arg(long)]
    preserve: bool,
    /// Overwrite OUTPUT if it exists.
    #[arg(long)]
    force: bool,
    /// Print the resulting metadata as JSON.
    #[arg(long)]
    json: bool,
    /// GPU use: auto (only where present and measured to win), on (fail if no usable GPU), off.
    #[arg(long, default_value = "auto")]
    gpu: GpuMode,
}

#[derive(Args, Debug)]
struct DecodeArgs {
    /// Image(s) to decode. One INPUT and an optional OUTPUT file, - for standard output
    /// [default: INPUT without .rts.png]; or, with three or more, or any of --output-dir,
    /// --summary, -r, a batch: every INPUT (and every *.rts.png in folders with -r) is decoded
    /// beside it or under --output-dir.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    batch: batch_cmd::BatchArgs,
    /// Check the SHA-256 of the result against the metadata's data_hash.
    #[arg(long)]
    verify: bool,
    /// Overwrite OUTPUT if it exists.
    #[arg(long)]
    force: bool,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// GPU use: auto (only where present and measured to win), on (fail if no usable GPU), off.
    #[arg(long, default_value = "auto")]
    gpu: GpuMode,
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Threads that would be used [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct InfoArgs {
    /// Image to describe.
    input: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Image to verify.
    input: PathBuf,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_segment_size(s: &str) -> Result<u32, String> {
    let n = pixelrts::fs::parse_size(s)?;
    let max = pixelrts::format::zindex::MAX_SEGMENT_SIZE;
    if n == 0 || n > u64::from(max) {
        return Err(format!("segment size must be 1 byte to {} MiB", max >> 20));
    }
    Ok(n as u32)
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

/// Whether `name` is a subcommand (or `help`): what a first argument must not be for the
/// mount.fuse3 calling convention.
fn is_subcommand(name: &str) -> bool {
    use clap::CommandFactory;
    name == "help" || Cli::command().find_subcommand(name).is_some()
}

/// Runs the command line; returns the process exit status.
pub fn run() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(call) = mount_cmd::helper_call(&args, is_subcommand) {
        return match call {
            Ok(call) => {
                init_logging(call.verbose);
                report(mount_cmd::run_helper(call))
            }
            Err(e) => {
                eprintln!("error: {e}\nusage: pixelrts SOURCE MOUNTPOINT [-o OPTIONS] (the mount.fuse3 convention); see pixelrts mount --help");
                exit::USAGE
            }
        };
    }
    let cli = Cli::parse_from(args);
    init_logging(cli.verbose);
    let verbose = cli.verbose;
    report(dispatch(cli.command, verbose))
}

fn report(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {}", error_message(&e));
            exit::for_error(&e)
        }
    }
}

/// The error and its causes, `a: b: c`, leaving out a cause its parent already quotes (the
/// library's errors print their source themselves: "x.png: No such file or directory").
fn error_message(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::prelude::*;
    let journal = stderr_is_the_journal();
    let default = match verbose {
        // The journal filters by priority itself: mounts and unmounts (info) are kept there.
        0 if journal => "info",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // fuser warns when its own unmount-on-exit finds the mount already gone (our unmount
    // came first): routine, so only its errors are shown unless PIXELRTS_LOG asks.
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIXELRTS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},fuser=error")));
    if journal {
        // Under systemd: records with fields the journal can filter on (MOUNTPOINT, FILE,
        // ERRNO — the journal's own name for it), their levels as priorities.
        match tracing_journald::layer() {
            Ok(layer) => {
                use tracing_journald::{Priority, PriorityMappings};
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("pixelrts".into())
                    // Levels as their journal namesakes (the crate's default makes info a
                    // notice).
                    .with_priority_mappings(PriorityMappings {
                        info: Priority::Informational,
                        debug: Priority::Debug,
                        ..PriorityMappings::new()
                    });
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) => eprintln!(
                "pixelrts: JOURNAL_STREAM is set but the journal cannot be reached ({e}); logging to standard error"
            ),
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a background mount's log file stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
}

/// Whether standard error is the journal stream systemd connected: `JOURNAL_STREAM` holds its
/// `device:inode`, and stays set in children whose stderr was redirected elsewhere (systemd's
/// documented check).
fn stderr_is_the_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    // SAFETY: fstat fills the zeroed struct for descriptor 2.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}

fn dispatch(command: Command, verbose: u8) -> anyhow::Result<i32> {
    match command {
        Command::Mount(a) => mount_cmd::cmd_mount(a, verbose),
        Command::Umount(a) => mount_cmd::cmd_umount(a),
        Command::Encode(a) => cmd_encode(a),
        Command::Decode(a) => cmd_decode(a),
        Command::Info(a) => cmd_info(a),
        Command::Verify(a) => cmd_verify(a),
        Command::Bench(a) => bench_cmd::cmd_bench(a),
        Command::Dashboard(a) => bench_cmd::cmd_dashboard(a),
        Command::Cat(a) => cmd_cat(a),
        Command::BenchRandom(a) => cmd_bench_random(a),
        Command::BenchGpu(a) => cmd_bench_gpu(a),
        Command::BenchAppend(a) => cmd_bench_append(a),
        Command::Completions(a) => docs_cmd::cmd_completions(a),
        Command::Stats(a) => stats_cmd::cmd_stats(a),
        Command::Man(a) => docs_cmd::cmd_man(a),
        Command::Doctor(a) => {
            let report = pixelrts::doctor::doctor_report(a.threads.unwrap_or(0));
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(0)
        }
    }
}

fn user_metadata(a: &EncodeArgs) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    if let Some(v) = &a.kind {
        m.insert("type".into(), v.clone().into());
    }
    if let Some(v) = &a.name {
        m.insert("name".into(), v.clone().into());
    }
    if let Some(v) = &a.content_version {
        m.insert("version".into(), v.clone().into());
    }
    if let Some(v) = &a.description {
        m.insert("description".into(), v.clone().into());
    }
    for kv in &a.meta {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--meta {kv:?}: expected KEY=VALUE"))?;
        if k.is_empty() {
            bail!("--meta {kv:?}: empty key");
        }
        let value =
            serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.to_string()));
        m.insert(k.to_string(), value);
    }
    Ok(m)
}

/// The options every file of an `encode` gets (progress is the caller's).
fn encode_options(a: &EncodeArgs) -> anyhow::Result<EncodeOptions> {
    Ok(EncodeOptions {
        mode: a.mode,
        grid_size: a.grid_size,
        metadata: user_metadata(a)?,
        sidecar: !a.no_sidecar,
        threads: a.threads,
        level: a.level,
        compress: a.compress,
        compress_level: a.compress_level,
        segment_size: a.segment_size,
        layout: a.layout,
        record_file_attributes: a.preserve,
        overwrite: a.force,
        // `on` without a usable GPU fails in the pipeline before any output is written.
        gpu: a.gpu,
        ..Default::default()
    })
}

fn cmd_encode(a: EncodeArgs) -> anyhow::Result<i32> {
    let opts = encode_options(&a)?;
    let Some((input, output)) = a.batch.single(&a.inputs, Direction::Encode)? else {
        return batch_cmd::encode(&a.inputs, &a.batch, &opts, a.threads);
    };
    let output = output.unwrap_or_else(|| encode::default_output(input));
    let size = std::fs::metadata(input).map(|m| m.len()).unwrap_or(0);
    let bar = progress::Bar::new("encoding", size);
    let opts = EncodeOptions {
        progress: Some(bar.callback()),
        ..opts
    };
    // A run killed before its rename left its temporary file here; this one replaces it.
    pixelrts::remove_stale_temps_of(&output);
    let meta = encode::encode_file(input, &output, &opts)?;
    bar.finish();
    if a.json {
        let mut shown = meta.clone();
        if let Some(Value::String(b64)) = shown.get(pixelrts::format::metadata::B64_KEY) {
            let len = b64.len();
            shown.insert(
                pixelrts::format::metadata::B64_KEY.into(),
                format!("<{len} base64 characters>").into(),
            );
        }
        println!("{}", serde_json::to_string_pretty(&Value::Object(shown))?);
    } else {
        eprintln!(
            "{} -> {} ({} bytes, grid {}x{}, sha256 {})",
            input.display(),
            output.display(),
            meta["data_size"],
            meta["grid_size"],
            meta["grid_size"],
            meta["data_hash"].as_str().unwrap_or("")
        );
    }
    Ok(exit::OK)
}

fn cmd_decode(a: DecodeArgs) -> anyhow::Result<i32> {
    let base = DecodeOptions {
        verify: a.verify,
        overwrite: a.force,
        threads: a.threads,
        gpu: a.gpu,
        ..Default::default()
    };
    let Some((input, output)) = a.batch.single(&a.inputs, Direction::Decode)? else {
        return batch_cmd::decode(&a.inputs, &a.batch, &base, a.threads);
    };
    let to_stdout = output.as_deref() == Some(Path::new("-"));
    let output = output.unwrap_or_else(|| decode::default_output(input));
    let bar = progress::Bar::new("decoding", 0);
    let opts = DecodeOptions {
        progress: Some(bar.callback()),
        ..base
    };
    let report = if to_stdout {
        let mut stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
        decode::decode_to_writer(input, &mut stdout, &opts)?
    } else {
        pixelrts::remove_stale_temps_of(&output);
        decode::decode_file(input, &output, &opts)?
    };
    bar.finish();
    if !to_stdout {
        eprintln!(
            "{} -> {} ({} bytes{})",
            input.display(),
            output.display(),
            report.bytes,
            if a.verify { ", sha256 verified" } else { "" }
        );
    }
    Ok(exit::OK)
}

fn cmd_info(a: InfoArgs) -> anyhow::Result<i32> {
    let container = pixelrts::container::Container::open(&a.input)?;
    let info = container.info();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(0);
    }
    println!("file:       {}", a.input.display());
    println!("grid:       {0}x{0}", container.grid);
    println!("data size:  {} bytes", container.metadata.data_size);
    println!("encoding:   {}", container.metadata.mode.encoding_type());
    println!(
        "hash:       {}",
        container.metadata.data_hash.as_deref().unwrap_or("(none)")
    );
    println!(
        "metadata:   {}",
        info["metadata_source"].as_str().unwrap_or("")
    );
    match &info.get("segments") {
        Some(s) => println!(
            "seekable:   yes (index v{}) — {} tiles of {}x{} px, {} indexed pieces of {} bytes, IDAT chunks of {} bytes",
            s["index_version"], s["tiles"], s["tile_side"], s["tile_side"], s["indexed_pieces"], s["piece_bytes"], s["idat_chunk_size"]
        ),
        None => println!("seekable:   no (plain PNG stream)"),
    }
    if let Some(w) = info.get("warning") {
        println!("warning:    {}", w.as_str().unwrap_or(""));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&info["metadata"]).context("metadata")?
    );
    Ok(0)
}

fn cmd_verify(a: VerifyArgs) -> anyhow::Result<i32> {
    let report = match decode::verify_file(&a.input, a.threads) {
        Ok(r) => r,
        // Damaged pixel data is a payload that does not match: exit 1, like a hash mismatch.
        Err(e @ pixelrts::Error::Corrupt { .. }) => {
            eprintln!("error: {e}");
            println!("{}: FAILED", a.input.display());
            return Ok(exit::CHECK_FAILED);
        }
        Err(e) => return Err(e.into()),
    };
    if report.ok() {
        println!(
            "{}: OK ({} bytes, sha256 {})",
            a.input.display(),
            report.bytes,
            report.actual
        );
        Ok(0)
    } else {
        println!(
            "{}: hash mismatch: expected {}, got {}",
            a.input.display(),
            report.expected,
            report.actual
        );
        Ok(exit::CHECK_FAILED)
    }
}

fn cmd_cat(a: CatArgs) -> anyhow::Result<i32> {
    use pixelrts::reader::{Reader, ReaderOptions};
    let reader = Reader::open(
        &a.input,
        &ReaderOptions {
            checkpoint_dir: a.checkpoint_dir.clone(),
            ..Default::default()
        },
    )?;
    let end = match a.length {
        Some(l) => a.offset.saturating_add(l).min(reader.len()),
        None => reader.len(),
    };
    let mut off = a.offset;
    let mut buf = vec![0u8; 1 << 20];
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while off < end {
        let want = ((end - off) as usize).min(buf.len());
        let n = reader.read_at(off, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        match out.write_all(&buf[..n]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            Err(e) => return Err(e).context("writing to standard output"),
        }
        off += n as u64;
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(0),
    }
}

/// All lines or none: a bad line leaves the history as it was.
fn cmd_bench_append(a: BenchAppendArgs) -> anyhow::Result<i32> {
    let text = if a.input.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&a.input)
            .with_context(|| format!("reading {}", a.input.display()))?
    };
    let records = pixelrts::bench::complete_records(&text)
        .with_context(|| format!("{}: not benchmark records", a.input.display()))?;
    let path = pixelrts::bench::append_history(&a.history, &records)?;
    eprintln!("appended {} records to {}", records.len(), path.display());
    Ok(0)
}

/// Exit 0 with the figures, or with "NO GPU: …" when no GPU is usable (the script reports the
/// reason); a failing comparison (a GPU result that differs from the CPU's) is an error.
fn cmd_bench_gpu(a: BenchGpuArgs) -> anyhow::Result<i32> {
    use pixelrts::gpu::bench;
    let sizes: Vec<u64> = if a.sizes_mib.is_empty() {
        bench::DEFAULT_SIZES.to_vec()
    } else {
        a.sizes_mib.iter().map(|m| m << 20).collect()
    };
    let gpu = match bench::open_gpu(a.cpu_only) {
        Ok(gpu) => gpu,
        Err(pixelrts::gpu::GpuError::Unavailable(reason)) => {
            println!("NO GPU: benchmark skipped: no usable NVIDIA GPU ({reason}); --cpu-only measures the CPU rows alone");
            return Ok(0);
        }
        Err(e) => return Err(anyhow::anyhow!("GPU benchmark failed: {e}")),
    };
    let dir = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let report = bench::compare(gpu.as_ref(), &sizes, &dir)
        .map_err(|e| anyhow::anyhow!("GPU benchmark failed: {e}"))?;
    println!("{report}");
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(0)
}

fn cmd_bench_random(a: BenchRandomArgs) -> anyhow::Result<i32> {
    use pixelrts::reader::bench::{self, BenchOptions};
    let report = bench::run(
        &a.input,
        &BenchOptions {
            reads: a.reads,
            sizes: a.sizes.clone(),
            threads: a.threads.clone(),
            plain_png: !a.no_plain_png,
            checkpoint_dir: a.checkpoint_dir.clone(),
            ..Default::default()
        },
    )?;
    if let Some(dir) = &a.history {
        pixelrts::bench::append_history(dir, &random_read_records(&report))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    println!(
        "{} ({:?}): data {} B, file {} B, tile {} B, first read {:.1} ms",
        report.file,
        report.kind,
        report.data_size,
        report.file_size,
        report.tile_bytes,
        report.first_read_ms
    );
    for l in &report.latency {
        println!(
            "  {:>7} B x{}: cold from disk p50 {:.0} us p99 {:.0} us | cold, file cached p50 {:.0} us p99 {:.0} us | warm p50 {:.1} us p99 {:.1} us | inflated/served {:.2}",
            l.size,
            l.reads,
            l.cold_p50_us,
            l.cold_p99_us,
            l.cold_cached_p50_us,
            l.cold_cached_p99_us,
            l.warm_p50_us,
            l.warm_p99_us,
            l.inflated_per_served
        );
    }
    for s in &report.sequential {
        println!(
            "  sequential, {} thread(s): reader {:.0} MiB/s, decode {:.0} MiB/s",
            s.threads, s.reader_mib_s, s.decode_mib_s
        );
    }
    if let Some(p) = report.plain_png_size {
        println!(
            "  size: this file {} B, plain PNG of the same pixels {} B ({:+.2}%)",
            report.file_size,
            p,
            (report.file_size as f64 / p as f64 - 1.0) * 100.0
        );
    }
    Ok(0)
}

/// History records for a random-access run: cold random reads (MB/s at the median latency)
/// and sequential reads through the reader, whose same-run reference is a full decode.
fn random_read_records(
    report: &pixelrts::reader::bench::BenchReport,
) -> Vec<pixelrts::bench::BenchRecord> {
    use pixelrts::bench::BenchRecord;
    let kind = format!("{:?}", report.kind).to_lowercase();
    let mut records = Vec::new();
    for l in &report.latency {
        let mut r = BenchRecord::new(format!("random_read_{}B_{kind}", l.size), l.size as u64);
        r.decode_time = l.cold_p50_us / 1e6;
        r.total_time = r.decode_time;
        r.throughput_mb_sec = if l.cold_p50_us > 0.0 {
            l.size as f64 / l.cold_p50_us
        } else {
            0.0
        };
        r.decode_mb_sec = r.throughput_mb_sec;
        r.metadata.iterations = l.reads as u32;
        r.metadata.pattern = "random-access".into();
        r.metadata.mode = kind.clone();
        r.metadata
            .extra
            .insert("file".into(), report.file.clone().into());
        r.metadata
            .extra
            .insert("cold_p99_us".into(), l.cold_p99_us.into());
        r.metadata
            .extra
            .insert("cold_cached_p50_us".into(), l.cold_cached_p50_us.into());
        r.metadata
            .extra
            .insert("cold_cached_p99_us".into(), l.cold_cached_p99_us.into());
        r.metadata
            .extra
            .insert("warm_p50_us".into(), l.warm_p50_us.into());
        r.metadata
            .extra
            .insert("inflated_per_served".into(), l.inflated_per_served.into());
        records.push(r);
    }
    for q in &report.sequential {
        let mut r = BenchRecord::new(
            format!("sequential_read_{}t_{kind}", q.threads),
            report.data_size,
        );
        r.threads = q.threads;
        r.throughput_mb_sec = q.reader_mib_s * 1.048576;
        r.decode_mb_sec = r.throughput_mb_sec;
        r.reference_mb_sec = Some(q.decode_mib_s * 1.048576);
        r.metadata.iterations = 1;
        r.metadata.pattern = "sequential".into();
        r.metadata.mode = kind.clone();
        r.metadata
            .extra
            .insert("file".into(), report.file.clone().into());
        records.push(r);
    }
    records
}
