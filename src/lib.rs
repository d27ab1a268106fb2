//! PixelRTS v2 library.

pub mod bench;
