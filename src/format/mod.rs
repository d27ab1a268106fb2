//! The PixelRTS v2 container format: Hilbert mapping, PNG chunks, metadata, the seekable index.
pub mod hilbert;
pub mod code_mode;
