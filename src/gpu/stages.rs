//! Where an encode's or a decode's time goes, stage by stage, for `pixelrts bench-gpu`.
//!
//! The pipelines add to a [`StageClock`] when [`crate::encode::EncodeOptions::stages`] or
//! [`crate::decode::DecodeOptions::stages`] holds one. The stages run on different threads at
//! the same time (that is the point of the pipeline), so they do not add up to the wall clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::GpuTimings;

/// Busy time per stage of one job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StageTimes {
    /// The mapper's calls (tile scatter and code colouring, or tile gather) with the mapper's
    /// own breakdown: host staging, transfers and kernels for a GPU. Zero on the CPU fast path,
    /// which fuses the scatter/gather into `codec`.
    pub mapper: GpuTimings,
    /// Deflate (encode), or inflate and CRC check (decode), on the rayon pool.
    pub codec: Duration,
    /// The writer thread: appending the PNG's chunks (encode), or writing and hashing the
    /// output (decode).
    pub write: Duration,
    /// SHA-256 of the input on its own thread (encode).
    pub hash: Duration,
}

/// A [`StageTimes`] that the pipeline's threads add to.
#[derive(Debug, Default)]
pub struct StageClock(Mutex<StageTimes>);

impl StageClock {
    /// What has been added so far.
    pub fn times(&self) -> StageTimes {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, f: impl FnOnce(&mut StageTimes)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub(crate) fn add_mapper(&self, t: &GpuTimings) {
        self.add(|s| s.mapper.accumulate(t));
    }
}

/// A stage [`timed`] adds to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stage {
    Codec,
    Write,
    Hash,
}

/// Runs `f`, adding its wall time to `stage` of `clock` when there is one.
pub(crate) fn timed<T>(clock: Option<&StageClock>, stage: Stage, f: impl FnOnce() -> T) -> T {
    let Some(clock) = clock else {
        return f();
    };
    let start = Instant::now();
    let result = f();
    let spent = start.elapsed();
    clock.add(|s| {
        *match stage {
            Stage::Codec => &mut s.codec,
            Stage::Write => &mut s.write,
            Stage::Hash => &mut s.hash,
        } += spent
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_add_up_per_stage() {
        let clock = StageClock::default();
        let value = timed(Some(&clock), Stage::Codec, || {
            std::thread::sleep(Duration::from_millis(2));
            7
        });
        assert_eq!(value, 7);
        timed(Some(&clock), Stage::Write, || ());
        clock.add_mapper(&GpuTimings {
            bytes: 10,
            kernel: Duration::from_millis(1),
            ..Default::default()
        });
        clock.add_mapper(&GpuTimings {
            bytes: 5,
            ..Default::default()
        });
        let t = clock.times();
        assert!(t.codec >= Duration::from_millis(2));
        assert!(t.write < t.codec);
        assert_eq!(t.hash, Duration::ZERO);
        assert_eq!(t.mapper.bytes, 15);
        assert_eq!(t.mapper.kernel, Duration::from_millis(1));
        assert_eq!(timed(None, Stage::Hash, || 3), 3);
    }
}
