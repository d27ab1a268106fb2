//! The PixelRTS v2 container format: Hilbert mapping, PNG chunks, metadata, the seekable index.
pub mod code_mode;
pub mod hilbert;
