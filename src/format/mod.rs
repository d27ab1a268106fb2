//! The PixelRTS v2 container format: Hilbert mapping, PNG chunks, metadata, the seekable index.
pub mod code_mode;
pub mod hilbert;
pub mod index;
pub mod metadata;
pub mod png;
pub mod rewrite;
pub mod segment;
pub mod zindex;

/// Automatic grid size (FORMAT.md §1): 1 for empty input, else the smallest power of two
/// `g ≥ 4` with `4·g² ≥ n`.
pub fn auto_grid(n: u64) -> u64 {
    if n == 0 {
        return 1;
    }
    let mut g = 4u64;
    while 4 * (g as u128) * (g as u128) < n as u128 {
        g *= 2;
    }
    g
}

/// Bytes a `grid × grid` image holds.
pub fn capacity(grid: u64) -> u128 {
    4 * grid as u128 * grid as u128
}

/// The largest grid this implementation writes or reads (2^20 a side: 4 TiB of pixels).
pub const MAX_GRID: u64 = 1 << 20;

/// Checks an explicit grid size against the data, with the reference's wording.
pub fn check_grid(grid: u64, n: u64) -> Result<(), String> {
    if grid == 0 || !grid.is_power_of_two() {
        return Err(format!("Grid size must be power of 2, got {grid}"));
    }
    if grid > MAX_GRID {
        return Err(format!(
            "Grid size {grid} is larger than the supported maximum {MAX_GRID}"
        ));
    }
    if capacity(grid) < n as u128 {
        return Err(format!(
            "data of {n} bytes exceeds grid capacity {}",
            capacity(grid)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_grid_matches_format_examples() {
        let cases = [
            (0u64, 1u64),
            (1, 4),
            (64, 4),
            (65, 8),
            (1000, 16),
            (1025, 32),
            (65536, 128),
            (65537, 256),
            (1 << 20, 512),
            (5 << 20, 2048),
            (1 << 30, 16384),
            (10 << 30, 65536),
        ];
        for (n, g) in cases {
            assert_eq!(auto_grid(n), g, "n={n}");
        }
    }

    #[test]
    fn explicit_grid_errors_use_reference_wording() {
        assert_eq!(
            check_grid(12, 1).unwrap_err(),
            "Grid size must be power of 2, got 12"
        );
        assert_eq!(
            check_grid(4, 65).unwrap_err(),
            "data of 65 bytes exceeds grid capacity 64"
        );
        assert!(check_grid(4, 64).is_ok());
    }
}
