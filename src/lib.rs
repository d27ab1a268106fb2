//! pixelrts: PixelRTS v2 containers — arbitrary files packed into PNG images.
//!
//! Modules by responsibility: [`format`] (Hilbert mapping, PNG chunks, metadata, the seekable
//! index), [`encode`] and [`decode`] (the streaming, parallel pipelines), [`bench`]
//! (benchmark history, regression checks, dashboard).
pub mod bench;
pub mod decode;
pub mod encode;
pub mod error;
pub mod format;
mod io_util;

pub use error::{Error, Result};
pub use format::metadata::Mode;
