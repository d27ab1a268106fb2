//! Readers for PixelRTS PNG files.

pub mod checkpoint;
mod inflate;
pub mod png_chunks;
mod unfilter;
