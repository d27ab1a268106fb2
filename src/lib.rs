//! pixelrts: PixelRTS v2 containers — arbitrary files packed into PNG images.
//!
//! Modules by responsibility: [`format`] (Hilbert mapping, PNG chunks, metadata, the seekable
//! index), [`container`] (opening a file: metadata, index, layout), [`encode`] and [`decode`] (the streaming, parallel pipelines), [`reader`] (random
//! access), [`gpu`] (the optional CUDA path, loaded at run time), [`doctor`] (what this machine
//! offers), [`bench`] (benchmark history, regression checks, dashboard).
pub mod batch;
pub mod bench;
pub mod cache;
pub mod container;
pub mod decode;
pub mod doctor;
pub mod encode;
pub mod error;
pub mod failpoint;
pub mod format;
pub mod fs;
pub mod gpu;
mod io_util;
pub mod reader;

pub use error::{Error, Result};
pub use format::metadata::Mode;
pub use io_util::remove_stale_temps_of;
