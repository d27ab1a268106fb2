//! The exit statuses of `pixelrts`, one per kind of failure, so scripts can tell a damaged image
//! from a missing file from a full disk. README, `pixelrts --help` and the man pages list them
//! from [`TABLE`].

use pixelrts::fs::MountError;

/// Success.
pub const OK: i32 = 0;
/// A check ran and failed: `verify` found a hash mismatch or damaged pixels, `decode --verify`
/// a hash mismatch, `bench --check-regression` a regression.
pub const CHECK_FAILED: i32 = 1;
/// Bad command line: unknown command or option, bad value, missing argument, bad `-o` option.
pub const USAGE: i32 = 2;
/// An operating-system error on a file: missing, unreadable, not writable, disk full.
pub const IO: i32 = 3;
/// The input is not a PixelRTS image, is damaged, or exceeds a safety limit.
pub const CORRUPT: i32 = 4;
/// The output exists and --force was not given.
pub const OUTPUT_EXISTS: i32 = 5;
/// A batch ran, but some of its files failed (the others are done; see the summary).
pub const BATCH_PARTIAL: i32 = 6;
/// `--gpu on` (or `-o gpu=on`) and no usable GPU.
pub const GPU_UNAVAILABLE: i32 = 7;
/// Any other failure.
pub const OTHER: i32 = 8;
/// The mount failed (mount(8)'s own status for this).
pub const MOUNT_FAILED: i32 = 32;

/// Every status and what it means, for help texts and man pages.
pub const TABLE: &[(i32, &str)] = &[
    (OK, "success"),
    (
        CHECK_FAILED,
        "a check failed (verify, decode --verify, bench --check-regression)",
    ),
    (
        USAGE,
        "usage error (unknown option, bad value, bad -o mount option)",
    ),
    (
        IO,
        "I/O error (a file missing or unreadable, not writable, disk full)",
    ),
    (
        CORRUPT,
        "corrupt or unsupported input (not a PixelRTS PNG, damaged, over a limit)",
    ),
    (OUTPUT_EXISTS, "the output exists (--force replaces it)"),
    (
        BATCH_PARTIAL,
        "a batch finished but some files failed (see the summary)",
    ),
    (GPU_UNAVAILABLE, "--gpu on and no usable GPU"),
    (OTHER, "any other failure"),
    (MOUNT_FAILED, "the mount failed (as mount(8))"),
];

/// The table as text for `--help`.
pub fn help_text() -> String {
    let mut s = String::from("Exit status:\n");
    for (code, what) in TABLE {
        s.push_str(&format!("  {code:>2}  {what}\n"));
    }
    s
}

/// A failure whose exit status the command decided (a mount that failed in its background
/// process, where only the message came back).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub code: i32,
    pub message: String,
}

/// The exit status for a library error.
pub fn for_library(e: &pixelrts::Error) -> i32 {
    use pixelrts::Error as E;
    match e {
        E::Io { .. } => IO,
        E::NotPng { .. }
        | E::UnsupportedImage { .. }
        | E::NoMetadata { .. }
        | E::BadMetadata { .. }
        | E::Corrupt { .. }
        | E::LimitExceeded { .. } => CORRUPT,
        E::HashMismatch { .. } => CHECK_FAILED,
        E::InvalidArgument(_) => USAGE,
        E::OutputExists { .. } => OUTPUT_EXISTS,
        E::Gpu(_) => GPU_UNAVAILABLE,
    }
}

/// The exit status for an error that ended a command: the first error in its chain that has a
/// kind decides.
pub fn for_error(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return c.code;
        }
        if let Some(m) = cause.downcast_ref::<MountError>() {
            return match m {
                MountError::Option { .. } => USAGE,
                MountError::Codec(e) => for_library(e),
                _ => MOUNT_FAILED,
            };
        }
        if let Some(l) = cause.downcast_ref::<pixelrts::Error>() {
            return for_library(l);
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return IO;
        }
    }
    OTHER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_distinct_and_documented() {
        let mut codes: Vec<i32> = TABLE.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
        assert!(help_text().contains(" 32  the mount failed"));
    }

    #[test]
    fn a_wrapped_library_error_keeps_its_status() {
        let e = anyhow::Error::from(pixelrts::Error::corrupt("x.png", "bad")).context("decoding");
        assert_eq!(for_error(&e), CORRUPT);
        let io = anyhow::Error::from(std::io::Error::other("disk full")).context("writing");
        assert_eq!(for_error(&io), IO);
        assert_eq!(for_error(&anyhow::anyhow!("something else")), OTHER);
    }
}
