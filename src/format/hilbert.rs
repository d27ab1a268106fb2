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
    let whole = payload.len() / 4;
    for (pixel, &pos) in payload.chunks_exact_mut(4).zip(positions) {
        let p = pos as usize * 4;
        pixel.copy_from_slice(&tile[p..p + 4]);
    }
    let rest_len = payload.len() - whole * 4;
    if rest_len > 0 {
        let p = positions[whole] as usize * 4;
        payload[whole * 4..].copy_from_slice(&tile[p..p + rest_len]);
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
}
