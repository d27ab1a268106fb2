//! Many files at once (`pixelrts encode IN... --output-dir DIR`, the Python package's
//! `encode_batch`): inputs gathered from files and folders, each given its output, run on one
//! thread pool — small files spread across it, a big file's own work split inside it — with one
//! result per input in the reference's summary shape.
//!
//! Two inputs never write the same output: the first (in the order given) keeps it, the later
//! ones fail with an error naming the earlier input (the reference's batch encoded them over
//! each other). One failing file does not stop the rest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::decode::{self, DecodeOptions};
use crate::encode::{self, EncodeOptions};
use crate::error::{Error, IoContext, Result};

/// One input and where its result goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub input: PathBuf,
    pub output: PathBuf,
}

/// `ok` or `error`, as the summary writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Error,
}

/// One line of a batch summary: the reference's `input`, `output`, `size` (bytes of the
/// original) and `hash` (its SHA-256), plus `status` and `error`.
#[derive(Clone, Debug, Serialize)]
pub struct JobResult {
    pub input: PathBuf,
    pub output: PathBuf,
    pub size: Option<u64>,
    pub hash: Option<String>,
    pub status: Status,
    pub error: Option<String>,
}

impl JobResult {
    fn new(job: &Job, outcome: Result<(u64, String)>) -> Self {
        let (size, hash, error) = match outcome {
            Ok((size, hash)) => (Some(size), Some(hash), None),
            Err(e) => (None, None, Some(e.to_string())),
        };
        JobResult {
            input: job.input.clone(),
            output: job.output.clone(),
            size,
            hash,
            status: if error.is_none() {
                Status::Ok
            } else {
                Status::Error
            },
            error,
        }
    }

    pub fn ok(&self) -> bool {
        self.status == Status::Ok
    }
}

/// Which files a folder given with `-r` contributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Every regular file but this tool's own outputs (`*.rts.png`, `*.rts.png.meta.json`),
    /// so encoding a folder twice in place does not encode the images.
    Encode,
    /// `*.rts.png` files.
    Decode,
}

impl Direction {
    fn wants(self, name: &str) -> bool {
        match self {
            Direction::Encode => {
                !name.ends_with(".rts.png") && !name.ends_with(".rts.png.meta.json")
            }
            Direction::Decode => name.ends_with(".rts.png"),
        }
    }

    /// The output's name for an input's path relative to where it was found.
    fn output_name(self, relative: &Path) -> PathBuf {
        match self {
            Direction::Encode => encode::default_output(relative),
            Direction::Decode => decode::default_output(relative),
        }
    }
}

/// The jobs for `inputs` (files, and with `recursive` folders, walked in name order): each
/// output beside its input, or under `output_dir` — a file by its name, a folder's files by
/// their path inside it (subfolders mirrored). A folder without `recursive` is an error before
/// anything runs; a missing input fails its own job.
pub fn plan(
    inputs: &[PathBuf],
    output_dir: Option<&Path>,
    recursive: bool,
    direction: Direction,
) -> Result<Vec<Job>> {
    // Never walk into the output folder: a second run would take the first run's outputs
    // (and its summary) for inputs.
    let skip = output_dir.and_then(|d| std::fs::canonicalize(d).ok());
    let mut jobs = Vec::new();
    for input in inputs {
        // A file that cannot be read is that job's failure, not the batch's.
        if !std::fs::metadata(input).is_ok_and(|m| m.is_dir()) {
            let name = Path::new(input.file_name().unwrap_or(input.as_os_str()));
            let output = match output_dir {
                Some(dir) => dir.join(direction.output_name(name)),
                None => direction.output_name(input),
            };
            jobs.push(Job {
                input: input.clone(),
                output,
            });
            continue;
        }
        if !recursive {
            return Err(Error::InvalidArgument(format!(
                "{}: is a folder; add -r to take the files in it",
                input.display()
            )));
        }
        let walk = walkdir::WalkDir::new(input)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                skip.is_none()
                    || !e.file_type().is_dir()
                    || std::fs::canonicalize(e.path()).ok() != skip
            });
        for entry in walk {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(input).to_path_buf();
                Error::io(&path, e.into())
            })?;
            // A link to a file is taken (as `cp -r` would read it), a link to a folder is
            // not followed (no cycles).
            let is_file = entry.file_type().is_file()
                || (entry.file_type().is_symlink()
                    && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()));
            if !is_file || !direction.wants(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let relative = entry.path().strip_prefix(input).unwrap_or(entry.path());
            let output = match output_dir {
                Some(dir) => dir.join(direction.output_name(relative)),
                None => direction.output_name(entry.path()),
            };
            jobs.push(Job {
                input: entry.path().to_path_buf(),
                output,
            });
        }
    }
    Ok(jobs)
}

/// For each job, the error that stops it before it runs: its output is an earlier job's.
fn collisions(jobs: &[Job]) -> Vec<Option<Error>> {
    let mut first: HashMap<PathBuf, &Path> = HashMap::new();
    jobs.iter()
        .map(|job| {
            let key = std::path::absolute(&job.output).unwrap_or_else(|_| job.output.clone());
            match first.get(&key) {
                Some(earlier) => Some(Error::InvalidArgument(format!(
                    "{}: its output {} is also the output of {}; not encoded",
                    job.input.display(),
                    job.output.display(),
                    earlier.display()
                ))),
                None => {
                    first.insert(key, &job.input);
                    None
                }
            }
        })
        .collect()
}

/// Runs `work` for every job on one pool of `threads` threads (None: one per core), biggest
/// inputs first so a big file does not start last; `on_done` is called as each job ends.
/// Results come back in the jobs' order.
pub fn run(
    jobs: &[Job],
    threads: Option<usize>,
    on_done: &(dyn Fn(&JobResult) + Sync),
    work: impl Fn(&Job, &Arc<rayon::ThreadPool>) -> Result<(u64, String)> + Sync,
) -> Result<Vec<JobResult>> {
    use rayon::prelude::*;
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("pixelrts-batch-{i}"))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("cannot start {threads} threads: {e}")))?,
    );
    // Temporary files that killed runs left in the output folders (each listed once).
    let out_dirs: std::collections::BTreeSet<&Path> = jobs
        .iter()
        .map(|j| crate::io_util::folder_of(&j.output))
        .collect();
    for dir in out_dirs {
        crate::io_util::remove_stale_temps(dir, None);
    }
    let mut blocked = collisions(jobs);
    let mut order: Vec<(u64, usize)> = (0..jobs.len())
        .filter(|&i| blocked[i].is_none())
        .map(|i| {
            let len = std::fs::metadata(&jobs[i].input).map_or(0, |m| m.len());
            (len, i)
        })
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let ran: Vec<(usize, JobResult)> = pool.install(|| {
        order
            .par_iter()
            .map(|&(_, i)| {
                let job = &jobs[i];
                let outcome = match job.output.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                        std::fs::create_dir_all(dir).at(dir)
                    }
                    _ => Ok(()),
                }
                .and_then(|()| work(job, &pool));
                let result = JobResult::new(job, outcome);
                on_done(&result);
                (i, result)
            })
            .collect()
    });
    let mut results: Vec<Option<JobResult>> = vec![None; jobs.len()];
    for (i, r) in ran {
        results[i] = Some(r);
    }
    for (i, job) in jobs.iter().enumerate() {
        if let Some(e) = blocked[i].take() {
            let r = JobResult::new(job, Err(e));
            on_done(&r);
            results[i] = Some(r);
        }
    }
    Ok(results.into_iter().flatten().collect())
}

/// Encodes every job with `opts` (its `pool` and `progress` are the batch's own).
pub fn encode(
    jobs: &[Job],
    opts: &EncodeOptions,
    threads: Option<usize>,
    on_done: &(dyn Fn(&JobResult) + Sync),
) -> Result<Vec<JobResult>> {
    run(jobs, threads, on_done, |job, pool| {
        let opts = EncodeOptions {
            pool: Some(pool.clone()),
            progress: None,
            ..opts.clone()
        };
        let meta = encode::encode_file(&job.input, &job.output, &opts)?;
        Ok((
            meta.get("data_size").and_then(Value::as_u64).unwrap_or(0),
            meta.get("data_hash")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ))
    })
}

/// Decodes every job with `opts` (on the batch's pool: `threads` of `opts` is not used).
pub fn decode(
    jobs: &[Job],
    opts: &DecodeOptions,
    threads: Option<usize>,
    on_done: &(dyn Fn(&JobResult) + Sync),
) -> Result<Vec<JobResult>> {
    run(jobs, threads, on_done, |job, _pool| {
        // decode_file runs on the current pool (the batch's) when given no thread count.
        let opts = DecodeOptions {
            threads: None,
            progress: None,
            ..opts.clone()
        };
        let r = decode::decode_file(&job.input, &job.output, &opts)?;
        Ok((r.bytes, r.sha256))
    })
}

/// Writes `results` as a JSON list to `path` atomically (a temporary file renamed over it).
pub fn write_summary(path: &Path, results: &[JobResult]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).at(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".batch_summary.")
        .tempfile_in(dir)
        .at(dir)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        serde_json::to_writer_pretty(&mut w, results)
            .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
        std::io::Write::write_all(&mut w, b"\n").at(path)?;
        std::io::Write::flush(&mut w).at(path)?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(i: &str, o: &str) -> Job {
        Job {
            input: i.into(),
            output: o.into(),
        }
    }

    #[test]
    fn a_later_input_with_the_same_output_is_refused_naming_the_first() {
        let jobs = [
            job("d1/a.bin", "out/a.bin.rts.png"),
            job("d2/b.bin", "out/b.bin.rts.png"),
            job("d2/a.bin", "out/./a.bin.rts.png"),
        ];
        let c = collisions(&jobs);
        assert!(c[0].is_none() && c[1].is_none());
        let msg = c[2].as_ref().unwrap().to_string();
        assert!(
            msg.contains("d2/a.bin") && msg.contains("d1/a.bin"),
            "{msg}"
        );
    }

    #[test]
    fn a_folder_is_walked_only_with_recursive_and_outputs_mirror_it() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.txt"), b"a").unwrap();
        std::fs::write(src.join("sub/b.txt"), b"b").unwrap();
        std::fs::write(src.join("old.txt.rts.png"), b"x").unwrap();
        let out = dir.path().join("out");
        let err = plan(
            std::slice::from_ref(&src),
            Some(&out),
            false,
            Direction::Encode,
        )
        .unwrap_err();
        assert!(err.to_string().contains("add -r"), "{err}");
        let jobs = plan(
            std::slice::from_ref(&src),
            Some(&out),
            true,
            Direction::Encode,
        )
        .unwrap();
        assert_eq!(
            jobs,
            [
                job_path(src.join("a.txt"), out.join("a.txt.rts.png")),
                job_path(src.join("sub/b.txt"), out.join("sub/b.txt.rts.png")),
            ]
        );
        let back = plan(std::slice::from_ref(&src), None, true, Direction::Decode).unwrap();
        assert_eq!(
            back,
            [job_path(src.join("old.txt.rts.png"), src.join("old.txt"))],
            "a decode walk takes only images"
        );
    }

    fn job_path(input: PathBuf, output: PathBuf) -> Job {
        Job { input, output }
    }
}
