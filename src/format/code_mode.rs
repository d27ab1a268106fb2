//! Code mode (`RGBA-code`, FORMAT.md §3): WebAssembly input drawn as a picture of its opcodes.
//!
//! For each 4-byte group `b0..b3` (zero-padded) in Hilbert order the pixel is
//! `R = class(b0), G = b1, B = b2, A = 255 if b0 is a known opcode else 0`; `b3` is not drawn.
//! The bytes themselves travel in the metadata (`original_data_b64`), not in the pixels.

/// `R` channel for every value of `b0` (FORMAT.md §3 table; 0 for everything not listed).
pub const CLASS: [u8; 256] = build_class();

/// `A` channel for every value of `b0`: 255 for a known opcode, else 0.
pub const ALPHA: [u8; 256] = build_alpha();

/// Inclusive `b0` ranges and the class (`R` value) they get.
const CLASS_RANGES: &[(u8, u8, u8)] = &[
    (0x00, 0x00, 255),
    (0x02, 0x04, 200),
    (0x0C, 0x0D, 150),
    (0x0F, 0x10, 150),
    (0x05, 0x05, 100),
    (0x0B, 0x0B, 100),
    (0x0E, 0x0E, 100),
    (0x11, 0x11, 100),
    (0x45, 0x66, 80),
    (0x6A, 0x78, 80),
    (0x7C, 0x8A, 80),
    (0x92, 0x97, 80),
    (0xA0, 0xA5, 80),
    (0x20, 0x24, 50),
    (0x28, 0x40, 50),
    (0x41, 0x44, 30),
];

/// Inclusive `b0` ranges of known opcodes (`A` = 255).
const KNOWN_OPCODES: &[(u8, u8)] = &[
    (0x00, 0x05),
    (0x0A, 0x11),
    (0x1B, 0x1C),
    (0x20, 0x24),
    (0x28, 0x66),
    (0x6A, 0x78),
    (0x7C, 0x8A),
    (0x92, 0x97),
    (0xA0, 0xA5),
];

const fn build_class() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut r = 0;
    while r < CLASS_RANGES.len() {
        let (lo, hi, class) = CLASS_RANGES[r];
        let mut b = lo as usize;
        while b <= hi as usize {
            table[b] = class;
            b += 1;
        }
        r += 1;
    }
    table
}

const fn build_alpha() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut r = 0;
    while r < KNOWN_OPCODES.len() {
        let (lo, hi) = KNOWN_OPCODES[r];
        let mut b = lo as usize;
        while b <= hi as usize {
            table[b] = 255;
            b += 1;
        }
        r += 1;
    }
    table
}

/// The code-mode pixel (RGBA) of one 4-byte group.
#[inline]
pub fn code_pixel(group: [u8; 4]) -> [u8; 4] {
    let b0 = usize::from(group[0]);
    [CLASS[b0], group[1], group[2], ALPHA[b0]]
}

/// Colours a whole input: `out` receives one code pixel per 4-byte group of `input` (the last
/// group zero-padded), in the same (Hilbert payload) order. `out.len()` must be
/// `input.len().div_ceil(4) * 4`.
pub fn code_colour(input: &[u8], out: &mut [u8]) {
    assert_eq!(
        out.len(),
        input.len().div_ceil(4) * 4,
        "code_colour: output length"
    );
    let whole = input.len() / 4;
    let (out_whole, out_rest) = out.split_at_mut(whole * 4);
    for (src, dst) in input.chunks_exact(4).zip(out_whole.chunks_exact_mut(4)) {
        dst.copy_from_slice(&code_pixel([src[0], src[1], src[2], src[3]]));
    }
    let rest = &input[whole * 4..];
    if !rest.is_empty() {
        let mut group = [0u8; 4];
        group[..rest.len()].copy_from_slice(rest);
        out_rest.copy_from_slice(&code_pixel(group));
    }
}

/// WebAssembly modules start with these four bytes.
pub const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// Whether code mode draws `data` as code (otherwise it keeps the standard pixels).
pub fn is_wasm(data: &[u8]) -> bool {
    data.starts_with(WASM_MAGIC)
}

/// Base64 length of `n` bytes (standard alphabet, padded).
pub fn b64_len(n: u64) -> u64 {
    n.div_ceil(3) * 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::hilbert::d2xy;
    use std::path::PathBuf;

    fn reference(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/reference")
            .join(name)
    }

    #[test]
    fn table_spot_checks() {
        assert_eq!(code_pixel([0x00, 1, 2, 3]), [255, 1, 2, 255]);
        assert_eq!(code_pixel([0x01, 1, 2, 3]), [0, 1, 2, 255]);
        assert_eq!(code_pixel([0x06, 0, 0, 0]), [0, 0, 0, 0]);
        assert_eq!(code_pixel([0x0A, 0, 0, 0]), [0, 0, 0, 255]);
        assert_eq!(code_pixel([0x0E, 0, 0, 0]), [100, 0, 0, 255]);
        assert_eq!(code_pixel([0x1B, 0, 0, 0]), [0, 0, 0, 255]);
        assert_eq!(code_pixel([0x25, 0, 0, 0]), [0, 0, 0, 0]);
        assert_eq!(code_pixel([0x40, 0, 0, 0]), [50, 0, 0, 255]);
        assert_eq!(code_pixel([0x44, 0, 0, 0]), [30, 0, 0, 255]);
        assert_eq!(code_pixel([0x67, 0, 0, 0]), [0, 0, 0, 0]);
        assert_eq!(code_pixel([0xA5, 0, 0, 0]), [80, 0, 0, 255]);
        assert_eq!(code_pixel([0xA6, 0, 0, 0]), [0, 0, 0, 0]);
        assert_eq!(code_pixel([0xFF, 0, 0, 0]), [0, 0, 0, 0]);
        // Every class but 0 is a known opcode.
        for b in 0..256 {
            if CLASS[b] != 0 {
                assert_eq!(ALPHA[b], 255, "b0 = {b:#04x}");
            }
        }
    }

    #[test]
    fn code_colour_pads_the_last_group() {
        let input = [0x00u8, 7, 8, 9, 0x20, 5];
        let mut out = [0u8; 8];
        code_colour(&input, &mut out);
        assert_eq!(out, [255, 7, 8, 255, 50, 5, 0, 255]);
    }

    /// `f_add.wasm` drawn by the reference encoder: pixels in Hilbert order must be the code
    /// pixels of the input's groups, then `(0,0,0,0)` after the data.
    #[test]
    fn matches_reference_vector_f_add() {
        let input = std::fs::read(reference("f_add.wasm")).expect("f_add.wasm");
        let file = std::fs::File::open(reference("f_add_wasm_code.rts.png")).expect("png");
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let mut image = vec![0u8; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut image).unwrap();
        assert_eq!((info.width, info.color_type), (4, png::ColorType::Rgba));
        let grid = u64::from(info.width);

        let mut expected = vec![0u8; input.len().div_ceil(4) * 4];
        code_colour(&input, &mut expected);
        for d in 0..grid * grid {
            let (x, y) = d2xy(grid, d);
            let p = ((y * grid + x) * 4) as usize;
            let got = &image[p..p + 4];
            let want = expected
                .get(d as usize * 4..d as usize * 4 + 4)
                .unwrap_or(&[0; 4]);
            assert_eq!(got, want, "pixel d={d} at ({x},{y})");
        }
    }
}
