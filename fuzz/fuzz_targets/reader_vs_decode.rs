//! The random-access reader against the verified sequential decode: whenever the decode
//! succeeds (every byte checked against data_hash), every range the reader returns must equal
//! it; when it fails, reads may fail but must not panic or return bytes past the end.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pixelrts::cache::TileCache;
use pixelrts::reader::{Reader, ReaderOptions};

fuzz_target!(|data: &[u8]| {
    let png = pixelrts_fuzz::png_from_input(data);
    let path = pixelrts_fuzz::write_scratch("read.rts.png", &png);
    let decoded = pixelrts::decode::decode_to_vec(&png).ok();
    let opts = ReaderOptions {
        cache: Arc::new(TileCache::new(1 << 20)),
        checkpoint_dir: Some(pixelrts_fuzz::scratch_dir().join("ckpt")),
        disk_cache: None,
    };
    let Ok(reader) = Reader::open(&path, &opts) else {
        return;
    };
    if let Some(d) = &decoded {
        assert_eq!(
            reader.len(),
            d.len() as u64,
            "reader length differs from the decode"
        );
    }
    for (off, n) in pixelrts_fuzz::ranges(data, reader.len(), 8) {
        // Not zeroed: the mount reuses its buffers, so the reader must write every byte.
        let mut buf = vec![0xA5u8; n];
        match reader.read_at(off, &mut buf) {
            Ok(got) => {
                let end = (off + n as u64).min(reader.len());
                assert_eq!(
                    got as u64,
                    end.saturating_sub(off),
                    "short read at {off}+{n}"
                );
                if let Some(d) = &decoded {
                    assert!(
                        buf[..got] == d[off as usize..end as usize],
                        "reader and verified decode differ at {off}+{n}"
                    );
                }
            }
            Err(_) => assert!(
                decoded.is_none() || n == 0,
                "the decode verified but the reader failed at {off}+{n}"
            ),
        }
    }
});
