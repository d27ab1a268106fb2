//! `pixelrts stats MOUNTPOINT [--json] [--watch [SECS]]`: a running mount's counters, read from
//! the `user.pixelrts.stats` attribute of its root (what `getfattr -n user.pixelrts.stats`
//! shows).

use std::ffi::CString;
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use pixelrts::fs::stats::STATS_XATTR;

use super::exit;

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Where a pixelrts filesystem is mounted.
    mountpoint: PathBuf,
    /// Print the counters as JSON (with --watch, one line per sample).
    #[arg(long)]
    json: bool,
    /// Print again every SECS seconds (default 1) with the rates since the last sample, until
    /// interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
    watch: Option<f64>,
}

pub fn cmd_stats(a: StatsArgs) -> anyhow::Result<i32> {
    let Some(every) = a.watch else {
        let v = read_stats(&a.mountpoint)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", render(&a.mountpoint, &v, None));
        }
        return Ok(exit::OK);
    };
    if !(every.is_finite() && every >= 0.1) {
        return Err(pixelrts::Error::InvalidArgument(format!(
            "--watch {every}: give at least 0.1 seconds"
        ))
        .into());
    }
    let clear = !a.json && std::io::stdout().is_terminal();
    let mut last: Option<(Instant, Value)> = None;
    loop {
        let v = read_stats(&a.mountpoint)?;
        let now = Instant::now();
        let mut out = std::io::stdout().lock();
        let written = if a.json {
            writeln!(out, "{v}")
        } else {
            let rates = last
                .as_ref()
                .map(|(t, prev)| (now.duration_since(*t).as_secs_f64(), prev));
            let text = render(&a.mountpoint, &v, rates);
            // Home and clear on a terminal; a plain separator in a pipe or log.
            if clear {
                write!(out, "\x1b[H\x1b[2J{text}")
            } else {
                writeln!(out, "{text}")
            }
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(exit::OK);
            }
            return Err(e).context("writing to standard output");
        }
        drop(out);
        last = Some((now, v));
        std::thread::sleep(Duration::from_secs_f64(every));
    }
}

/// The attribute's JSON, or an error saying why there is none.
fn read_stats(mountpoint: &Path) -> anyhow::Result<Value> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())
        .with_context(|| format!("{}: not a valid path", mountpoint.display()))?;
    let name = CString::new(STATS_XATTR).expect("no NUL in the name");
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: both strings are NUL-terminated; the buffer is writable for its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => {
                "not a pixelrts mount (its root has no user.pixelrts.stats attribute)".to_string()
            }
            _ => e.to_string(),
        };
        return Err(anyhow::Error::from(e)).context(format!("{}: {why}", mountpoint.display()));
    }
    buf.truncate(n as usize);
    serde_json::from_slice(&buf)
        .with_context(|| format!("{}: user.pixelrts.stats is not JSON", mountpoint.display()))
}

/// A byte count as the benchmarks label sizes (`305.2MiB`, `256MiB`).
fn bytes(n: f64) -> String {
    pixelrts::bench::size_label(n.max(0.0) as u64)
}

fn micros(v: &Value) -> String {
    match v.as_u64() {
        None => "-".into(),
        Some(us) if us < 1000 => format!("<{us} µs"),
        Some(us) if us < 1_000_000 => format!("<{} ms", us / 1000),
        Some(us) => format!("<{:.1} s", us as f64 / 1e6),
    }
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[p];
    }
    cur.as_f64().unwrap_or(0.0)
}

/// The counters as a few lines of text; with the previous sample and the seconds since it,
/// also the rates.
fn render(mountpoint: &Path, v: &Value, since: Option<(f64, &Value)>) -> String {
    let up = num(v, &["uptime_s"]) as u64;
    let mut s = format!(
        "{} — up {}h{:02}m{:02}s\n",
        mountpoint.display(),
        up / 3600,
        up / 60 % 60,
        up % 60
    );
    let rate = |path: &[&str]| -> Option<f64> {
        since.and_then(|(dt, prev)| (dt > 0.0).then(|| (num(v, path) - num(prev, path)) / dt))
    };
    s.push_str(&format!(
        "reads        {:.0}  served {}  inflated {}",
        num(v, &["reads"]),
        bytes(num(v, &["bytes_served"])),
        bytes(num(v, &["bytes_inflated"]))
    ));
    if let (Some(r), Some(b)) = (rate(&["reads"]), rate(&["bytes_served"])) {
        s.push_str(&format!("  ({r:.0} reads/s, {}/s)", bytes(b)));
    }
    s.push('\n');
    let l = &v["read_latency_us"];
    s.push_str(&format!(
        "latency      p50 {}  p90 {}  p99 {}  max {}\n",
        micros(&l["p50"]),
        micros(&l["p90"]),
        micros(&l["p99"]),
        micros(&l["max"])
    ));
    let c = &v["cache"];
    let lookups = num(c, &["hits"]) + num(c, &["misses"]);
    s.push_str(&format!(
        "cache        hits {:.0}  misses {:.0}{}  evictions {:.0}  held {} of {} ({:.0} tiles)\n",
        num(c, &["hits"]),
        num(c, &["misses"]),
        if lookups > 0.0 {
            format!(" ({:.1}% hits)", 100.0 * num(c, &["hits"]) / lookups)
        } else {
            String::new()
        },
        num(c, &["evictions"]),
        bytes(num(c, &["bytes_held"])),
        bytes(num(c, &["budget"])),
        num(c, &["entries"])
    ));
    s.push_str(&format!(
        "open files   decoded {:.0}  encode {:.0}\n",
        num(v, &["open_files", "decoded"]),
        num(v, &["open_files", "encode"])
    ));
    s.push_str(&format!(
        "encodes      done {:.0}  failed {:.0}  pending {:.0}\n",
        num(v, &["encodes", "done"]),
        num(v, &["encodes", "failed"]),
        num(v, &["encodes", "pending"])
    ));
    let errors: Vec<String> = v["errors"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| format!("{k} {n}")).collect())
        .unwrap_or_default();
    s.push_str(&format!(
        "errors       {}\n",
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join(", ")
        }
    ));
    s
}
