//! The `pixelrts mount` filesystem: a decoded read-only view of SOURCE plus the encode directory.
pub mod encode_dir;
