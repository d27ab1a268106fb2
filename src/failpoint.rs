//! Crash points for tests: with `PIXELRTS_CRASH_AT=NAME` (or `NAME:N`, the N-th time, from 1)
//! in its environment, the process kills itself with SIGKILL when it reaches the step `NAME`,
//! the way a power cut or `kill -9` would stop it there. Without the variable a crash point
//! costs one load of a cached value. `tests/crash_points.rs` mounts with each point in turn
//! and checks what the next mount finds (docs/SEMANTICS.md, "Crashes").
//!
//! The points, in the order a file written into the encode directory passes them:
//! `write` (a write request, before its bytes reach the spool), `flush` (a close, before the
//! spool is made durable), `closed` (the close recorded, before the encode), `encode` (the
//! PNG written under its temporary name, not yet fsynced), `fsynced` (before the rename),
//! `renamed` (the PNG in place, its spool copy not yet deleted), `cleaned` (spool copy
//! deleted, the close not yet answered).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The variable read once, at the first crash point.
pub const ENV: &str = "PIXELRTS_CRASH_AT";

struct Armed {
    name: String,
    /// Which hit kills (1: the first).
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var(ENV).ok()?;
            let (name, nth) = match v.split_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().ok()?),
                None => (v, 1),
            };
            Some(Armed {
                name,
                nth,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Kills this process here if `PIXELRTS_CRASH_AT` names this point (and this hit).
pub fn crash_point(name: &str) {
    let Some(a) = armed() else {
        return;
    };
    if a.name == name && a.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.nth {
        tracing::warn!("crash point {name}: killing this process ({ENV})");
        // SAFETY: kill(2) with our own pid has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
