//! The Hilbert curve of FORMAT.md §1 and the per-tile lookup tables that make it fast.
//!
//! `d2xy`/`xy2d` are the classic per-point conversions; they are exact but cost a loop per pixel.
//! The codec never calls them per pixel: it relies on the property that the Hilbert indices
//! `[j·T², (j+1)·T²)` always fill one aligned `T×T` square (a *tile*), and that inside every tile
//! the curve is the canonical order-`log2 T` curve under one of the eight symmetries of the
//! square. [`TileTables`] precomputes, for each symmetry that occurs, the row-major position of
//! every local index, so scatter and gather become table lookups. Those tables depend on the
//! tile side only and are shared by every [`TileTables`] of that side in the process (a mount
//! opens a reader per file and per version; each used to build its own 4 MiB of tables).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Hilbert index → (x, y) in an `n × n` grid (`n` a power of two); x is the column, y the row.
pub fn d2xy(n: u64, d: u64) -> (u64, u64) {
    let (mut x, mut y) = (0u64, 0u64);
    let mut t = d;
    let mut s = 1u64;
    while s < n {
        let rx = 1 & (t >> 1);
        let ry = 1 & (t ^ rx);
        if ry == 0 {
            if rx == 1 {
                x = s - 1 - x;
                y = s - 1 - y;
            }
            std::mem::swap(&mut x, &mut y);
        }
        x += s * rx;
        y += s * ry;
        t >>= 2;
        s <<= 1;
    }
    (x, y)
}

/// (x, y) → Hilbert index in an `n × n` grid; the inverse of [`d2xy`] (Wikipedia's `xy2d`).
pub fn xy2d(n: u64, x: u64, y: u64) -> u64 {
    let (mut x, mut y) = (x, y);
    let mut d = 0u64;
    let mut s = n / 2;
    while s > 0 {
        let rx = u64::from(x & s > 0);
        let ry = u64::from(y & s > 0);
        d += s * s * ((3 * rx) ^ ry);
        // Rotate so that the next, smaller square is seen in the canonical orientation.
        if ry == 0 {
            if rx == 1 {
                x = n - 1 - x;
                y = n - 1 - y;
            }
            std::mem::swap(&mut x, &mut y);
        }
        s /= 2;
    }
    d
}

/// One of the eight symmetries of a square of side `t`, applied to canonical coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Symmetry {
    swap: bool,
    flip_x: bool,
    flip_y: bool,
}

impl Symmetry {
    const ALL: [Symmetry; 8] = {
        let mut all = [Symmetry {
            swap: false,
            flip_x: false,
            flip_y: false,
        }; 8];
        let mut i = 0;
        while i < 8 {
            all[i] = Symmetry {
                swap: i & 4 != 0,
                flip_x: i & 1 != 0,
                flip_y: i & 2 != 0,
            };
            i += 1;
        }
        all
    };

    fn id(self) -> usize {
        (self.swap as usize) << 2 | (self.flip_y as usize) << 1 | self.flip_x as usize
    }

    fn apply(self, side: u64, (x, y): (u64, u64)) -> (u64, u64) {
        let (x, y) = if self.swap { (y, x) } else { (x, y) };
        let x = if self.flip_x { side - 1 - x } else { x };
        let y = if self.flip_y { side - 1 - y } else { y };
        (x, y)
    }
}

/// The tiles of a grid: side `tile_side` pixels, `tiles_per_side` of them along each axis.
#[derive(Debug)]
pub struct TileTables {
    grid: u64,
    tile_side: u64,
    tiles_per_side: u64,
    shapes: Arc<TileShapes>,
}

/// The lookup tables of one tile side, shared (see the module documentation).
#[derive(Debug)]
struct TileShapes {
    /// `d2xy(tile_side, i)` for every local index, canonical orientation.
    canonical: Vec<(u16, u16)>,
    /// Per symmetry id, built on first use: local index → row-major position in the tile.
    position_of_local: [OnceLock<Vec<u32>>; 8],
    /// Per symmetry id, built on first use: row-major position → local index (the inverse).
    local_of_position: [OnceLock<Vec<u32>>; 8],
}

impl TileShapes {
    /// The tables of `tile_side`: the live ones if any [`TileTables`] holds them, else new.
    fn of(tile_side: u64) -> Arc<TileShapes> {
        static LIVE: OnceLock<Mutex<HashMap<u64, Weak<TileShapes>>>> = OnceLock::new();
        let mut live = LIVE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(shapes) = live.get(&tile_side).and_then(Weak::upgrade) {
            return shapes;
        }
        let shapes = Arc::new(TileShapes {
            canonical: (0..tile_side * tile_side)
                .map(|i| {
                    let (x, y) = d2xy(tile_side, i);
                    (x as u16, y as u16)
                })
                .collect(),
            position_of_local: Default::default(),
            local_of_position: Default::default(),
        });
        live.retain(|_, w| w.strong_count() > 0);
        live.insert(tile_side, Arc::downgrade(&shapes));
        shapes
    }
}

/// Where one tile sits and how its curve is oriented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TilePlace {
    /// Hilbert index of the tile among tiles: its payload is pixels `[j·T², (j+1)·T²)`.
    pub hilbert_index: u64,
    /// Tile column and row.
    pub column: u64,
    pub row: u64,
    symmetry: usize,
}

impl TileTables {
    /// Tables for a `grid × grid` image cut into tiles of `tile_side` (both powers of two,
    /// `tile_side <= grid`, `tile_side <= 4096`).
    pub fn new(grid: u64, tile_side: u64) -> Self {
        assert!(grid.is_power_of_two() && tile_side.is_power_of_two());
        assert!(tile_side <= grid && tile_side <= 4096);
        TileTables {
            grid,
            tile_side,
            tiles_per_side: grid / tile_side,
            shapes: TileShapes::of(tile_side),
        }
    }

    pub fn grid(&self) -> u64 {
        self.grid
    }

    pub fn tile_side(&self) -> u64 {
        self.tile_side
    }

    pub fn tiles_per_side(&self) -> u64 {
        self.tiles_per_side
    }

    /// Pixels per tile.
    pub fn tile_pixels(&self) -> u64 {
        self.tile_side * self.tile_side
    }

    /// The tile at tile column `column`, tile row `row`.
    pub fn place_at(&self, column: u64, row: u64) -> TilePlace {
        let j = xy2d(self.tiles_per_side, column, row);
        self.place(j, column, row)
    }

    /// The tile with Hilbert index `j` among tiles.
    pub fn place_of(&self, j: u64) -> TilePlace {
        let (column, row) = d2xy(self.tiles_per_side, j);
        self.place(j, column, row)
    }

    fn place(&self, j: u64, column: u64, row: u64) -> TilePlace {
        let t = self.tile_side;
        let base = j * t * t;
        let origin = (column * t, row * t);
        let local = |i: u64| {
            let (x, y) = d2xy(self.grid, base + i);
            (x - origin.0, y - origin.1)
        };
        // A handful of points pins the symmetry down; the tests check whole grids.
        let n = t * t;
        let samples: Vec<u64> = [1, 2, 3, n / 4, n / 2, n.saturating_sub(2), n - 1]
            .into_iter()
            .filter(|&i| i < n)
            .collect();
        let symmetry = Symmetry::ALL
            .iter()
            .find(|s| {
                samples.iter().all(|&i| {
                    let (cx, cy) = self.shapes.canonical[i as usize];
                    s.apply(t, (u64::from(cx), u64::from(cy))) == local(i)
                })
            })
            .map(|s| s.id())
            .unwrap_or(0);
        TilePlace {
            hilbert_index: j,
            column,
            row,
            symmetry,
        }
    }

    /// For the tile at `place`: local index `i` (payload pixel `j·T² + i`) → row-major position
    /// `y·T + x` inside the tile.
    pub fn positions(&self, place: &TilePlace) -> &[u32] {
        self.shapes.position_of_local[place.symmetry].get_or_init(|| {
            let s = Symmetry::ALL[place.symmetry];
            let t = self.tile_side;
            self.shapes
                .canonical
                .iter()
                .map(|&(x, y)| {
                    let (x, y) = s.apply(t, (u64::from(x), u64::from(y)));
                    (y * t + x) as u32
                })
                .collect()
        })
    }
}

impl TileTables {
    /// For the pixels of local indices `[first, end)` of the tile at `place`: the leftmost
    /// (`lo[y]`) and rightmost (`hi[y]`) column of each tile row `y` that holds some of them;
    /// `lo[y] > hi[y]` for rows that hold none. Both slices have `tile_side` entries.
    ///
    /// The curve fills each aligned square of `4^k` indices before the next, so the range is a
    /// few dozen such squares (the largest aligned ones that fit, from each end) and each marks
    /// its rows: a few hundred steps where visiting every pixel took thousands (a 128 KiB
    /// segment's stream is ~8,000 pixels). In `perf` of a loop-mounted `tar` with the PNG
    /// cached, that pixel loop and the gather after it took 10% of the mount's CPU; with this
    /// and [`gather_tile_range`], 5%.
    pub fn row_extents(
        &self,
        place: &TilePlace,
        first: usize,
        end: usize,
        lo: &mut [u32],
        hi: &mut [u32],
    ) {
        let positions = self.positions(place);
        let shift = self.tile_side.trailing_zeros();
        let mask = (self.tile_side - 1) as u32;
        lo.fill(u32::MAX);
        hi.fill(0);
        let mut p = first;
        while p < end {
            // The largest aligned square (of 4^k indices) that starts at p and ends by `end`.
            let mut k = 0;
            while k < shift {
                let next = 1usize << (2 * (k + 1));
                if p % next != 0 || p + next > end {
                    break;
                }
                k += 1;
            }
            let side = 1u32 << k;
            let pos = positions[p];
            let (x0, y0) = (pos & mask & !(side - 1), (pos >> shift) & !(side - 1));
            for y in y0 as usize..(y0 + side) as usize {
                lo[y] = lo[y].min(x0);
                hi[y] = hi[y].max(x0 + side - 1);
            }
            p += 1 << (2 * k);
        }
    }

    /// For the tile at `place`: row-major position `y·T + x` → local index (the inverse of
    /// [`TileTables::positions`]), so a scanline of the tile can be gathered straight from the
    /// payload.
    pub fn locals(&self, place: &TilePlace) -> &[u32] {
        self.shapes.local_of_position[place.symmetry].get_or_init(|| {
            let positions = self.positions(place);
            let mut locals = vec![0u32; positions.len()];
            for (local, &pos) in positions.iter().enumerate() {
                locals[pos as usize] = local as u32;
            }
            locals
        })
    }
}

/// Payload pixels (Hilbert order, 4 bytes each) → row-major tile pixels.
/// `payload` may be shorter than a whole tile; the rest of the tile is zero.
pub fn scatter_tile(positions: &[u32], payload: &[u8], tile: &mut [u8]) {
    debug_assert_eq!(tile.len(), positions.len() * 4);
    let whole = payload.len() / 4;
    if whole < positions.len() {
        tile.fill(0);
    }
    for (pixel, &pos) in payload.chunks_exact(4).zip(positions) {
        let p = pos as usize * 4;
        tile[p..p + 4].copy_from_slice(pixel);
    }
    let rest = &payload[whole * 4..];
    if !rest.is_empty() {
        let p = positions[whole] as usize * 4;
        tile[p..p + rest.len()].copy_from_slice(rest);
    }
}

/// Row-major tile pixels → payload pixels in Hilbert order; fills all of `payload`
/// (which may be shorter than the tile).
pub fn gather_tile(positions: &[u32], tile: &[u8], payload: &mut [u8]) {
    debug_assert_eq!(tile.len(), positions.len() * 4);
    gather_tile_range(positions, tile, 0, 0, payload);
}

/// Row-major tile pixels → the tile's payload bytes `[start, start + out.len())` (offsets in
/// the tile's payload, which need not fall on pixel boundaries). `tile` holds the tile's
/// bytes from byte `base` on (a band of its rows: the pixels of the range must lie in it);
/// only the pixels of the range are read.
pub fn gather_tile_range(
    positions: &[u32],
    tile: &[u8],
    base: usize,
    start: usize,
    out: &mut [u8],
) {
    let mut px = start / 4;
    let skip = start % 4;
    let mut done = 0;
    let tile_at = |pos: u32| pos as usize * 4 - base;
    if skip != 0 && !out.is_empty() {
        let p = tile_at(positions[px]) + skip;
        done = (4 - skip).min(out.len());
        out[..done].copy_from_slice(&tile[p..p + done]);
        px += 1;
    }
    let body = &mut out[done..];
    let whole = body.len() / 4;
    for (pixel, &pos) in body.chunks_exact_mut(4).zip(&positions[px..px + whole]) {
        let p = tile_at(pos);
        pixel.copy_from_slice(&tile[p..p + 4]);
    }
    let rest = &mut body[whole * 4..];
    if !rest.is_empty() {
        let p = tile_at(positions[px + whole]);
        let n = rest.len();
        rest.copy_from_slice(&tile[p..p + n]);
    }
}

/// Tiles for reading a plain PNG a stripe of scanlines at a time: the largest side up to 256
/// whose stripe (`side` full scanlines) stays within `budget` bytes.
pub fn band_tables(grid: u64, budget: u64) -> TileTables {
    let mut side = grid.min(256);
    while side > 1 && side * grid * 4 > budget {
        side /= 2;
    }
    TileTables::new(grid, side)
}

/// Cuts the tile at `place` out of `band` (its stripe's full scanlines, row-major) into
/// `tile` and gathers its payload into `out` (which may be shorter than a whole tile).
pub fn gather_tile_from_band(
    tables: &TileTables,
    place: &TilePlace,
    band: &[u8],
    tile: &mut [u8],
    out: &mut [u8],
) {
    let width = (4 * tables.tile_side()) as usize;
    let row_bytes = (4 * tables.grid()) as usize;
    let x0 = place.column as usize * width;
    for (r, tile_row) in tile.chunks_exact_mut(width).enumerate() {
        tile_row.copy_from_slice(&band[r * row_bytes + x0..r * row_bytes + x0 + width]);
    }
    gather_tile(tables.positions(place), tile, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values_from_format_md() {
        let order2: Vec<_> = (0..16).map(|d| d2xy(4, d)).collect();
        assert_eq!(
            order2,
            [
                (0, 0),
                (1, 0),
                (1, 1),
                (0, 1),
                (0, 2),
                (0, 3),
                (1, 3),
                (1, 2),
                (2, 2),
                (2, 3),
                (3, 3),
                (3, 2),
                (3, 1),
                (2, 1),
                (2, 0),
                (3, 0)
            ]
        );
        let order3: Vec<_> = (0..8).map(|d| d2xy(8, d)).collect();
        assert_eq!(
            order3,
            [
                (0, 0),
                (0, 1),
                (1, 1),
                (1, 0),
                (2, 0),
                (3, 0),
                (3, 1),
                (2, 1)
            ]
        );
        assert_eq!(d2xy(16, 64), (0, 8));
        assert_eq!(d2xy(16, 128), (8, 8));
        assert_eq!(d2xy(16, 255), (15, 0));
        assert_eq!(d2xy(1024, 12345), (62, 123));
        assert_eq!(d2xy(1024, 654321), (767, 802));
        assert_eq!(d2xy(2048, 1000000), (152, 784));
    }

    #[test]
    fn xy2d_inverts_d2xy() {
        for n in [1u64, 2, 4, 8, 16, 64] {
            for d in 0..n * n {
                let (x, y) = d2xy(n, d);
                assert_eq!(xy2d(n, x, y), d, "n={n} d={d}");
            }
        }
        for d in (0..1u64 << 30).step_by(7919 * 13) {
            let (x, y) = d2xy(1 << 15, d);
            assert_eq!(xy2d(1 << 15, x, y), d);
        }
    }

    /// Every tile table must agree with d2xy for every pixel of the grid.
    #[test]
    fn tile_tables_match_d2xy_everywhere() {
        for (grid, side) in [
            (1u64, 1u64),
            (4, 4),
            (8, 2),
            (16, 4),
            (64, 16),
            (256, 32),
            (512, 256),
        ] {
            let tables = TileTables::new(grid, side);
            for j in 0..tables.tiles_per_side() * tables.tiles_per_side() {
                let place = tables.place_of(j);
                assert_eq!(tables.place_at(place.column, place.row), place);
                let positions = tables.positions(&place);
                for (i, &pos) in positions.iter().enumerate() {
                    let (x, y) = d2xy(grid, j * side * side + i as u64);
                    let pos = u64::from(pos);
                    assert_eq!(
                        (
                            place.column * side + pos % side,
                            place.row * side + pos / side
                        ),
                        (x, y),
                        "grid {grid} side {side} tile {j} local {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn scatter_then_gather_round_trips_partial_tiles() {
        let tables = TileTables::new(64, 16);
        let place = tables.place_of(5);
        let positions = tables.positions(&place);
        for len in [0usize, 1, 3, 4, 5, 1023, 1024] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let mut tile = vec![0xAA; 1024];
            scatter_tile(positions, &payload, &mut tile);
            let mut back = vec![0u8; len];
            gather_tile(positions, &tile, &mut back);
            assert_eq!(back, payload);
            let mut rest = vec![0u8; 1024];
            gather_tile(positions, &tile, &mut rest);
            assert!(
                rest[len..].iter().all(|&b| b == 0),
                "padding is zero (len {len})"
            );
        }
    }

    /// `row_extents` against visiting every pixel, and `gather_tile_range` against a slice of
    /// the whole gather, for ranges of every length class in tiles of every orientation.
    #[test]
    fn row_extents_and_range_gathers_match_pixel_by_pixel() {
        let tables = TileTables::new(128, 16);
        let n = 256usize;
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next = |m: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % m as u64) as usize
        };
        let mut symmetries = std::collections::HashSet::new();
        for j in 0..tables.tiles_per_side().pow(2) {
            let place = tables.place_of(j);
            symmetries.insert(place.symmetry);
            let positions = tables.positions(&place);
            let tile: Vec<u8> = (0..4 * n).map(|i| (i * 31 + j as usize) as u8).collect();
            let mut whole = vec![0u8; 4 * n];
            gather_tile(positions, &tile, &mut whole);
            let mut ranges: Vec<(usize, usize)> = (0..40)
                .map(|_| {
                    let a = next(n);
                    (a, a + 1 + next(n - a))
                })
                .collect();
            ranges.extend([(0, n), (0, 1), (n - 1, n), (4, 20), (16, 32)]);
            for (first, end) in ranges {
                let (mut lo, mut hi) = (vec![0u32; 16], vec![0u32; 16]);
                tables.row_extents(&place, first, end, &mut lo, &mut hi);
                let (mut want_lo, mut want_hi) = (vec![u32::MAX; 16], vec![0u32; 16]);
                for &pos in &positions[first..end] {
                    let (x, y) = (pos % 16, (pos / 16) as usize);
                    want_lo[y] = want_lo[y].min(x);
                    want_hi[y] = want_hi[y].max(x);
                }
                assert_eq!(
                    (&lo, &hi),
                    (&want_lo, &want_hi),
                    "tile {j}, pixels {first}..{end}"
                );
                let (a, b) = (4 * first + next(4), 4 * end - next(4));
                let mut out = vec![0u8; b.saturating_sub(a)];
                gather_tile_range(positions, &tile, 0, a, &mut out);
                assert_eq!(out, whole[a..a + out.len()], "tile {j}, bytes {a}..{b}");
                // From the band of rows the range touches only.
                let rows = lo.iter().zip(&hi).enumerate().filter(|(_, (l, h))| l <= h);
                let y0 = rows.map(|(y, _)| y).min().unwrap();
                let mut band = vec![0u8; 4 * n - 64 * y0];
                band.copy_from_slice(&tile[64 * y0..]);
                let mut from_band = vec![0u8; out.len()];
                gather_tile_range(positions, &band, 64 * y0, a, &mut from_band);
                assert_eq!(from_band, out, "tile {j}, bytes {a}..{b} from row {y0}");
            }
        }
        assert!(
            symmetries.len() >= 4,
            "orientations covered: {symmetries:?}"
        );
    }
}
