//! pixelrts: PixelRTS v2 containers — arbitrary files packed into PNG images.
pub mod doctor;
pub mod format;
pub mod gpu;
