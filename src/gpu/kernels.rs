//! CUDA C source of the kernels, compiled by NVRTC when a [`super::Gpu`] is opened.
//!
//! Pixels are moved as 32-bit words: every buffer the kernels see starts on a 256-byte
//! boundary (`cuMemAlloc`) and holds whole pixels (inputs are zero-padded by the host).

use crate::format::code_mode::{ALPHA, CLASS};

pub(crate) const SCATTER: &str = "pixelrts_scatter_tiles";
pub(crate) const GATHER: &str = "pixelrts_gather_tiles";
pub(crate) const COLOUR: &str = "pixelrts_code_colour";

const BODY: &str = r#"
// Tile k of the batch holds pixels [k*tile_pixels, (k+1)*tile_pixels) of `in`/`out`;
// tables + slots[k]*tile_pixels is its table: local (Hilbert) index -> row-major position.
extern "C" __global__ void pixelrts_scatter_tiles(
    const unsigned int* __restrict__ in, unsigned int* __restrict__ out,
    const unsigned int* __restrict__ tables, const unsigned int* __restrict__ slots,
    unsigned int log2_tile_pixels, unsigned long long total_pixels)
{
    const unsigned long long mask = (1ull << log2_tile_pixels) - 1ull;
    for (unsigned long long p = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         p < total_pixels; p += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long tile = p >> log2_tile_pixels;
        const unsigned long long base = tile << log2_tile_pixels;
        const unsigned long long table = (unsigned long long)slots[tile] << log2_tile_pixels;
        out[base + tables[table + (p & mask)]] = in[p];
    }
}

extern "C" __global__ void pixelrts_gather_tiles(
    const unsigned int* __restrict__ in, unsigned int* __restrict__ out,
    const unsigned int* __restrict__ tables, const unsigned int* __restrict__ slots,
    unsigned int log2_tile_pixels, unsigned long long total_pixels)
{
    const unsigned long long mask = (1ull << log2_tile_pixels) - 1ull;
    for (unsigned long long p = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         p < total_pixels; p += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long tile = p >> log2_tile_pixels;
        const unsigned long long base = tile << log2_tile_pixels;
        const unsigned long long table = (unsigned long long)slots[tile] << log2_tile_pixels;
        out[p] = in[base + tables[table + (p & mask)]];
    }
}

// Code mode (FORMAT.md section 3): group b0 b1 b2 b3 -> R = CLASS[b0], G = b1, B = b2, A = ALPHA[b0].
// Little-endian words: byte 0 is the low byte.
extern "C" __global__ void pixelrts_code_colour(
    const unsigned int* __restrict__ in, unsigned int* __restrict__ out,
    unsigned long long groups)
{
    for (unsigned long long g = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         g < groups; g += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned int w = in[g];
        const unsigned int b0 = w & 0xffu;
        out[g] = (unsigned int)PIXELRTS_CLASS[b0] | (w & 0x00ffff00u)
               | ((unsigned int)PIXELRTS_ALPHA[b0] << 24);
    }
}
"#;

fn table(name: &str, values: &[u8; 256]) -> String {
    let list: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    format!(
        "__constant__ unsigned char {name}[256] = {{{}}};\n",
        list.join(",")
    )
}

/// The whole CUDA source; the code-mode tables are generated from [`CLASS`] and [`ALPHA`], so
/// the GPU cannot disagree with [`crate::format::code_mode::code_pixel`] about them.
pub(crate) fn source() -> String {
    let mut src = String::with_capacity(8 << 10);
    src.push_str(&table("PIXELRTS_CLASS", &CLASS));
    src.push_str(&table("PIXELRTS_ALPHA", &ALPHA));
    src.push_str(BODY);
    src
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_embeds_both_tables_and_all_kernels() {
        let src = source();
        for name in [
            SCATTER,
            GATHER,
            COLOUR,
            "PIXELRTS_CLASS[256] = {255,0,200,200,200,100,",
        ] {
            assert!(src.contains(name), "{name}");
        }
        assert!(src.contains("PIXELRTS_ALPHA[256] = {255,255,255,255,255,255,0,"));
        assert_eq!(src.matches("__global__").count(), 3);
    }
}
