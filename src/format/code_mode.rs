//! Code mode (`RGBA-code`, FORMAT.md §3): for WebAssembly input the pixels are a picture of the
//! code, and the bytes themselves travel base64-encoded in the metadata.

/// WebAssembly modules start with these four bytes.
pub const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// Red channel: a coarse class of the first byte of each 4-byte group.
fn class(b0: u8) -> u8 {
    match b0 {
        0x00 => 255,
        0x02..=0x04 => 200,
        0x0C..=0x0D | 0x0F..=0x10 => 150,
        0x05 | 0x0B | 0x0E | 0x11 => 100,
        0x45..=0x66 | 0x6A..=0x78 | 0x7C..=0x8A | 0x92..=0x97 | 0xA0..=0xA5 => 80,
        0x20..=0x24 | 0x28..=0x40 => 50,
        0x41..=0x44 => 30,
        _ => 0,
    }
}

/// Whether `b0` is an opcode the reference's visualiser knows (alpha 255).
fn known_opcode(b0: u8) -> bool {
    matches!(
        b0,
        0x00..=0x05
            | 0x0A..=0x11
            | 0x1B..=0x1C
            | 0x20..=0x24
            | 0x28..=0x66
            | 0x6A..=0x78
            | 0x7C..=0x8A
            | 0x92..=0x97
            | 0xA0..=0xA5
    )
}

/// The pixel drawn for one zero-padded 4-byte group b0..b3 (b3 is not drawn).
pub fn code_pixel(group: [u8; 4]) -> [u8; 4] {
    let [b0, b1, b2, _] = group;
    [class(b0), b1, b2, if known_opcode(b0) { 255 } else { 0 }]
}

/// Whether code mode draws `data` as code (otherwise it keeps the standard pixels).
pub fn is_wasm(data: &[u8]) -> bool {
    data.starts_with(WASM_MAGIC)
}

/// Base64 length of `n` bytes (standard alphabet, padded).
pub fn b64_len(n: u64) -> u64 {
    n.div_ceil(3) * 4
}
