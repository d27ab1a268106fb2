//! Opening any bytes as a container: chunk framing, metadata (tEXt/zTXt/iTXt), the seekable
//! index and the segment index. Must return an error, never panic or allocate without bound;
//! when it opens, `info` works too.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let png = pixelrts_fuzz::png_from_input(data);
    let path = pixelrts_fuzz::write_scratch("open.rts.png", &png);
    if let Ok(c) = pixelrts::container::Container::open(&path) {
        let _ = c.info();
    }
});
