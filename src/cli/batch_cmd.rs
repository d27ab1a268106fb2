//! `pixelrts encode|decode IN... --output-dir DIR`: the batch forms of the two commands, on
//! [`pixelrts::batch`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Args;

use pixelrts::batch::{self, Direction, JobResult};
use pixelrts::decode::DecodeOptions;
use pixelrts::encode::EncodeOptions;

use super::{exit, progress};

/// The options that make `encode`/`decode` a batch.
#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Batch: write the outputs under DIR (created if needed) instead of beside the inputs;
    /// the files of a folder given with -r keep their subfolders.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Batch: write a JSON list with input, output, size, hash, status and error for every
    /// input [default: DIR/batch_summary.json with --output-dir, none otherwise].
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,
    /// Batch: take the files in folders given as INPUT, and in their subfolders.
    #[arg(short, long)]
    recursive: bool,
}

impl BatchArgs {
    /// The single-file form's INPUT and OUTPUT, or None for a batch: one or two paths and no
    /// batch option is the single form (`encode IN [OUT]`, as before batches existed).
    ///
    /// An existing OUTPUT that looks like a second input (encode: not a `.png`; decode: a
    /// `.rts.png`) is refused even with --force: `encode a.bin b.bin` meant as a batch must not
    /// replace b.bin with a picture of a.bin.
    pub fn single<'a>(
        &self,
        inputs: &'a [PathBuf],
        direction: Direction,
    ) -> anyhow::Result<Option<(&'a Path, Option<PathBuf>)>> {
        let batch = self.output_dir.is_some() || self.summary.is_some() || self.recursive;
        if batch || inputs.len() > 2 {
            return Ok(None);
        }
        if inputs[0].is_dir() {
            return Err(pixelrts::Error::InvalidArgument(format!(
                "{}: is a folder; add -r to take the files in it",
                inputs[0].display()
            ))
            .into());
        }
        if let Some(output) = inputs.get(1) {
            let name = output.to_string_lossy();
            let looks_like_input = match direction {
                Direction::Encode => !name.ends_with(".png"),
                Direction::Decode => name.ends_with(".rts.png"),
            };
            if looks_like_input && output.exists() {
                return Err(pixelrts::Error::InvalidArgument(format!(
                    "{name}: exists and looks like a second input, not an output; to take both \
                     as a batch give --output-dir DIR; to write over it, remove it first"
                ))
                .into());
            }
        }
        Ok(Some((&inputs[0], inputs.get(1).cloned())))
    }

    fn summary_path(&self) -> Option<PathBuf> {
        self.summary.clone().or_else(|| {
            self.output_dir
                .as_ref()
                .map(|d| d.join("batch_summary.json"))
        })
    }
}

pub fn encode(
    inputs: &[PathBuf],
    args: &BatchArgs,
    opts: &EncodeOptions,
    threads: Option<usize>,
) -> anyhow::Result<i32> {
    run(inputs, args, Direction::Encode, |jobs, on_done| {
        batch::encode(jobs, opts, threads, on_done)
    })
}

pub fn decode(
    inputs: &[PathBuf],
    args: &BatchArgs,
    opts: &DecodeOptions,
    threads: Option<usize>,
) -> anyhow::Result<i32> {
    run(inputs, args, Direction::Decode, |jobs, on_done| {
        batch::decode(jobs, opts, threads, on_done)
    })
}

/// Plans the batch, runs it (`go`) with one progress bar, reports each failure as it happens,
/// writes the summary, and returns the exit status: 0 when every file succeeded,
/// [`exit::BATCH_PARTIAL`] otherwise.
fn run(
    inputs: &[PathBuf],
    args: &BatchArgs,
    direction: Direction,
    go: impl FnOnce(&[batch::Job], &(dyn Fn(&JobResult) + Sync)) -> pixelrts::Result<Vec<JobResult>>,
) -> anyhow::Result<i32> {
    let jobs = batch::plan(
        inputs,
        args.output_dir.as_deref(),
        args.recursive,
        direction,
    )?;
    let (label, past) = match direction {
        Direction::Encode => ("encoding", "encoded"),
        Direction::Decode => ("decoding", "decoded"),
    };
    let bar = progress::Bar::files(label, jobs.len() as u64);
    let tick = bar.callback();
    let done = AtomicUsize::new(0);
    let on_done = |r: &JobResult| {
        if let Some(e) = &r.error {
            bar.println(&format!("error: {e}"));
        }
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        tick(n as u64, jobs.len() as u64);
    };
    let results = go(&jobs, &on_done)?;
    bar.finish();
    let failed = results.iter().filter(|r| !r.ok()).count();
    let bytes: u64 = results.iter().filter_map(|r| r.size).sum();
    let summary = args.summary_path();
    if let Some(path) = &summary {
        batch::write_summary(path, &results)?;
    }
    eprintln!(
        "{past} {} of {} files ({bytes} bytes){}{}",
        results.len() - failed,
        results.len(),
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        },
        summary
            .map(|p| format!("; summary in {}", p.display()))
            .unwrap_or_default()
    );
    Ok(if failed == 0 {
        exit::OK
    } else {
        exit::BATCH_PARTIAL
    })
}
