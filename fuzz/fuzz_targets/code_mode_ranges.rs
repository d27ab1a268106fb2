//! Code mode end to end on any bytes: encode as WebAssembly (the input prefixed with the wasm
//! magic), then every range through the reader and the whole decode must give the input back.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pixelrts::cache::TileCache;
use pixelrts::encode::{encode_file, EncodeOptions};
use pixelrts::reader::{Reader, ReaderOptions};
use pixelrts::Mode;

fuzz_target!(|data: &[u8]| {
    let mut input = b"\0asm\x01\0\0\0".to_vec();
    input.extend_from_slice(data);
    let src = pixelrts_fuzz::write_scratch("code.wasm", &input);
    let png = pixelrts_fuzz::scratch_dir().join("code.rts.png");
    let opts = EncodeOptions {
        mode: Mode::Code,
        sidecar: false,
        overwrite: true,
        threads: Some(1),
        pool: Some(pixelrts_fuzz::encode_pool()),
        ..Default::default()
    };
    encode_file(&src, &png, &opts).expect("code-mode encode of valid input");
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        pixelrts::decode::decode_to_vec(&bytes).unwrap() == input,
        "decode differs"
    );
    let reader = Reader::open(
        &png,
        &ReaderOptions {
            cache: Arc::new(TileCache::new(1 << 20)),
            checkpoint_dir: None,
            disk_cache: None,
        },
    )
    .expect("open what was just encoded");
    assert_eq!(reader.len(), input.len() as u64);
    for (off, n) in pixelrts_fuzz::ranges(data, reader.len(), 8) {
        // Not zeroed: the mount reuses its buffers, so the reader must write every byte.
        let mut buf = vec![0xA5u8; n];
        let got = reader.read_at(off, &mut buf).expect("read");
        let end = (off as usize + n).min(input.len());
        assert!(
            buf[..got] == input[off as usize..end],
            "range {off}+{n} differs"
        );
    }
});
