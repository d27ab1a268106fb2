//! The compressed-payload segment index (`rtZX`) and segment inflation: any bytes parse to an
//! error or to an index whose ranges are consistent; inflating any bytes into a segment's
//! buffer fills exactly that buffer or fails (a zlib bomb cannot grow it).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pixelrts::format::segment::inflate_segment;
use pixelrts::format::zindex::SegmentIndex;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let original = u64::from_le_bytes(data[0..8].try_into().unwrap()) % (1 << 40);
    let encoded = u64::from_le_bytes(data[8..16].try_into().unwrap()) % (1 << 40);
    let body = &data[16..];
    if let Ok(ix) = SegmentIndex::parse(body, original, encoded) {
        assert_eq!(ix.original_size, original);
        assert_eq!(ix.encoded_size, encoded);
        let mut covered = 0;
        for s in 0..ix.count() {
            let (x, y) = ix.original_range(s);
            let (a, z) = ix.coded_range(s);
            assert_eq!(x, covered, "segments must tile the original");
            assert!(x < y && a <= z && z <= encoded);
            assert_eq!(ix.segment_of(x), s);
            covered = y;
        }
        assert_eq!(covered, original);
    }
    // The body as one segment's stream, into a buffer sized by the first bytes.
    let out_len = (u16::from_le_bytes([data[0], data[1]]) as usize) * 4;
    let mut out = vec![0u8; out_len];
    let _ = inflate_segment(body, &mut out);
});
