//! The library's error type. Every variant that concerns a file names it, so a message printed
//! as-is tells the user which file and what is wrong.

use std::io;
use std::path::{Path, PathBuf};

/// Errors from encoding, decoding and reading PixelRTS containers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error while touching `path`.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The file is not a PNG, or its PNG structure is broken (bad signature, CRC, chunk order…).
    #[error("{}: not a valid PNG: {reason}", path.display())]
    NotPng { path: PathBuf, reason: String },

    /// A valid PNG whose image cannot hold PixelRTS data (size, colour type, bit depth…).
    #[error("{}: unsupported image: {reason}", path.display())]
    UnsupportedImage { path: PathBuf, reason: String },

    /// No PixelRTS metadata in the PNG (nor in a sidecar).
    #[error("{}: no PixelRTS metadata (no tEXt/zTXt/iTXt chunk starting with \"PixelRTS{{\" and no sidecar)", path.display())]
    NoMetadata { path: PathBuf },

    /// Metadata was found but is inconsistent or malformed.
    #[error("{}: invalid PixelRTS metadata: {reason}", path.display())]
    BadMetadata { path: PathBuf, reason: String },

    /// The image data (zlib stream, segments, index) is corrupt or truncated.
    #[error("{}: corrupt image data: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },

    /// Decoded bytes do not hash to `data_hash`.
    #[error("{}: hash mismatch: expected {expected}, got {actual}", path.display())]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    /// Bad arguments or options (grid size, mode…), not tied to file contents.
    #[error("{0}")]
    InvalidArgument(String),

    /// The output already exists and overwriting was not asked for.
    #[error("{}: already exists (use --force to overwrite)", path.display())]
    OutputExists { path: PathBuf },

    /// A limit that protects memory or time was reached (decompression bomb, huge metadata…).
    #[error("{}: limit exceeded: {reason}", path.display())]
    LimitExceeded { path: PathBuf, reason: String },

    /// A GPU was required (`--gpu on`) but cannot be used.
    #[error("{0}")]
    Gpu(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn not_png(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::NotPng {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }
    pub fn unsupported(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::UnsupportedImage {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }
    pub fn bad_metadata(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::BadMetadata {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }
    pub fn corrupt(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }
    pub fn limit(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::LimitExceeded {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The errno a filesystem should answer with for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::OutputExists { .. } => libc::EEXIST,
            Error::LimitExceeded { .. } => libc::EFBIG,
            _ => libc::EIO,
        }
    }
}

/// Attach a path to `io::Result`s.
pub trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
