//! Counters of a running mount, answered as JSON by `getfattr -n user.pixelrts.stats
//! MOUNTPOINT` and printed by `pixelrts stats MOUNTPOINT`. Counting is a few relaxed atomic
//! adds per request: cheap enough to be always on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cache::CacheStats;

/// The attribute of the mount's root that holds the counters.
pub const STATS_XATTR: &str = "user.pixelrts.stats";

/// Latency buckets: bucket `i` counts reads that took less than 2^i microseconds (the last
/// one, everything slower). Percentiles are reported as a bucket's upper bound: within a
/// factor of two, which is what an operator needs to tell 50 µs from 5 ms.
const BUCKETS: usize = 32;

/// What the FUSE layer counts as requests come and go.
#[derive(Debug)]
pub struct MountStats {
    started: Instant,
    reads: AtomicU64,
    bytes_served: AtomicU64,
    read_latency: [AtomicU64; BUCKETS],
    errors: Mutex<BTreeMap<i32, u64>>,
}

impl Default for MountStats {
    fn default() -> Self {
        MountStats {
            started: Instant::now(),
            reads: AtomicU64::new(0),
            bytes_served: AtomicU64::new(0),
            read_latency: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Counters other parts of the mount own, gathered when the stats are read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gathered {
    pub cache: CacheStats,
    /// Open handles on decoded files.
    pub open_decoded: u64,
    /// Open handles in the encode folder.
    pub open_encode: u64,
    pub encodes_done: u64,
    pub encodes_failed: u64,
    /// Files written into the encode folder and not yet encoded.
    pub encodes_pending: u64,
}

impl MountStats {
    /// One read of a decoded file that served `bytes` (0 for an error) in `took`.
    pub fn read_done(&self, bytes: usize, took: Duration) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes_served.fetch_add(bytes as u64, Ordering::Relaxed);
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.read_latency[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// A request answered with `errno`.
    pub fn error(&self, errno: i32) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(errno).or_insert(0) += 1;
        }
    }

    /// The latency below which `fraction` of the reads finished, in microseconds (a bucket's
    /// upper bound); None before the first read.
    fn percentile_us(counts: &[u64; BUCKETS], fraction: f64) -> Option<u64> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * fraction).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(1u64 << i);
            }
        }
        Some(1u64 << (BUCKETS - 1))
    }

    /// Everything as one JSON object (the attribute's value).
    pub fn snapshot(&self, g: &Gathered) -> Value {
        let counts: [u64; BUCKETS] =
            std::array::from_fn(|i| self.read_latency[i].load(Ordering::Relaxed));
        let latency = json!({
            "p50": Self::percentile_us(&counts, 0.50),
            "p90": Self::percentile_us(&counts, 0.90),
            "p99": Self::percentile_us(&counts, 0.99),
            "max": counts.iter().rposition(|&c| c > 0).map(|i| 1u64 << i),
        });
        let errors: serde_json::Map<String, Value> = self
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(code, n)| (errno_name(code), Value::from(n)))
            .collect();
        json!({
            "uptime_s": self.started.elapsed().as_secs(),
            "reads": self.reads.load(Ordering::Relaxed),
            "bytes_served": self.bytes_served.load(Ordering::Relaxed),
            "bytes_inflated": g.cache.bytes_inflated,
            "read_latency_us": latency,
            "cache": {
                "hits": g.cache.hits,
                "misses": g.cache.misses,
                "evictions": g.cache.evictions,
                "bytes_held": g.cache.bytes_cached,
                "entries": g.cache.entries,
                "budget": g.cache.budget,
            },
            "open_files": {"decoded": g.open_decoded, "encode": g.open_encode},
            "encodes": {
                "done": g.encodes_done,
                "failed": g.encodes_failed,
                "pending": g.encodes_pending,
            },
            "errors": errors,
        })
    }
}

/// The attribute's bytes: the JSON and a newline (`getfattr --only-values` output ends a line).
pub fn attribute_value(snapshot: &Value) -> Vec<u8> {
    let mut v = snapshot.to_string().into_bytes();
    v.push(b'\n');
    v
}

/// Keeps the value a size query (`getxattr` with size 0) answered, for the fetch that follows:
/// counters move between the two calls, and a value grown by a digit would not fit the buffer
/// sized by the first (ERANGE in `getfattr`).
#[derive(Debug, Default)]
pub struct SizedOnce {
    last: Mutex<Option<(Instant, Vec<u8>)>>,
}

/// How long a sized value is kept for its fetch.
const SIZED_KEEP: Duration = Duration::from_secs(1);

impl SizedOnce {
    /// The value to answer a request of `size` bytes with, from `render` or kept from the size
    /// query just before.
    pub fn value(&self, size: u32, render: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if size == 0 {
            let v = render();
            *last = Some((Instant::now(), v.clone()));
            return v;
        }
        match last.take() {
            Some((at, v)) if at.elapsed() < SIZED_KEEP && v.len() <= size as usize => v,
            _ => render(),
        }
    }
}

/// `ENOENT` for 2, and so on; `errno N` for codes without a name here.
pub fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::ENOTSUP => "ENOTSUP",
        libc::ERANGE => "ERANGE",
        libc::E2BIG => "E2BIG",
        libc::ENOSYS => "ENOSYS",
        libc::EDQUOT => "EDQUOT",
        _ => return format!("errno {code}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_bucket_bounds_and_errors_are_named() {
        let s = MountStats::default();
        for _ in 0..90 {
            s.read_done(4096, Duration::from_micros(30)); // bucket < 32 µs
        }
        for _ in 0..10 {
            s.read_done(4096, Duration::from_millis(3)); // < 4096 µs
        }
        s.error(libc::EIO);
        s.error(libc::EIO);
        s.error(12345);
        let v = s.snapshot(&Gathered::default());
        assert_eq!(v["reads"], 100);
        assert_eq!(v["bytes_served"], 409_600);
        assert_eq!(v["read_latency_us"]["p50"], 32);
        assert_eq!(v["read_latency_us"]["p90"], 32);
        assert_eq!(v["read_latency_us"]["p99"], 4096);
        assert_eq!(v["read_latency_us"]["max"], 4096);
        assert_eq!(v["errors"]["EIO"], 2);
        assert_eq!(v["errors"]["errno 12345"], 1);
        let back: Value = serde_json::from_slice(&attribute_value(&v)).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn a_fetch_after_a_size_query_gets_the_sized_value() {
        let once = SizedOnce::default();
        let sized = once.value(0, || b"short".to_vec());
        assert_eq!(once.value(5, || b"longer now".to_vec()), sized);
        // Kept for one fetch only.
        assert_eq!(once.value(64, || b"longer now".to_vec()), b"longer now");
    }

    #[test]
    fn no_reads_means_no_percentiles() {
        let v = MountStats::default().snapshot(&Gathered::default());
        assert_eq!(v["read_latency_us"]["p50"], Value::Null);
        assert_eq!(v["reads"], 0);
    }
}
