//! Streaming PNG unfiltering for 8-bit RGBA scanlines (4 bytes per pixel).
//!
//! The filtered stream is a sequence of scanlines of `1 + bpr` bytes: a filter type byte
//! followed by `bpr` filtered bytes. [`RowUnfilter`] accepts that stream in pieces of any
//! size, can be snapshotted at any byte position and resumed from a snapshot.

const BPP: usize = 4;

/// A filter type byte outside 0..=4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadFilter {
    pub row: u64,
    pub filter: u8,
}

pub(crate) struct RowUnfilter {
    bpr: usize,
    /// Row being decoded.
    row: u64,
    /// Position inside the filtered row: 0 = the filter byte comes next, else `col - 1`
    /// pixel bytes of the row are done.
    col: usize,
    filter: u8,
    prev: Vec<u8>,
    cur: Vec<u8>,
}

impl RowUnfilter {
    /// Starts at the beginning of the image (the row above row 0 is all zeros).
    pub fn new(bpr: usize) -> Self {
        Self {
            bpr,
            row: 0,
            col: 0,
            filter: 0,
            prev: vec![0; bpr],
            cur: vec![0; bpr],
        }
    }

    /// Resumes at byte `pos` of the filtered stream from a [`snapshot`](Self::snapshot)
    /// taken there. Returns `None` if the snapshot has the wrong length or a bad filter byte.
    pub fn resume(bpr: usize, pos: u64, snapshot: &[u8]) -> Option<Self> {
        let stride = bpr as u64 + 1;
        if snapshot.len() != Self::snapshot_len(bpr, pos) {
            return None;
        }
        let mut s = Self::new(bpr);
        s.row = pos / stride;
        s.col = (pos % stride) as usize;
        if s.col == 0 {
            s.prev.copy_from_slice(snapshot);
            return Some(s);
        }
        let x0 = s.col - 1;
        let lo = x0.saturating_sub(BPP);
        let (filter, rest) = snapshot.split_first()?;
        let (cur, prev) = rest.split_at(x0);
        s.filter = *filter;
        if s.filter > 4 {
            return None;
        }
        s.cur[..x0].copy_from_slice(cur);
        // prev[..lo] is never read again: the rest of this row reads prev[x] and
        // prev[x - 4] for x >= x0 only, and the next row uses `cur` as its `prev`.
        s.prev[lo..].copy_from_slice(prev);
        Some(s)
    }

    /// Length of a snapshot taken at filtered-stream position `pos`.
    pub fn snapshot_len(bpr: usize, pos: u64) -> usize {
        let col = (pos % (bpr as u64 + 1)) as usize;
        if col == 0 {
            bpr
        } else {
            let x0 = col - 1;
            1 + x0 + (bpr - x0.saturating_sub(BPP))
        }
    }

    /// Appends the state needed to resume here: at a row start the previous unfiltered
    /// row; inside a row its filter byte, its unfiltered bytes so far, and the part of the
    /// previous row that the rest of the row still needs (from 4 bytes before the
    /// current position), i.e. about one row in all.
    pub fn snapshot(&self, dst: &mut Vec<u8>) {
        if self.col == 0 {
            dst.extend_from_slice(&self.prev);
        } else {
            let x0 = self.col - 1;
            dst.push(self.filter);
            dst.extend_from_slice(&self.cur[..x0]);
            dst.extend_from_slice(&self.prev[x0.saturating_sub(BPP)..]);
        }
    }

    /// Feeds filtered bytes; `sink(row, pixels)` gets every row that completes.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        sink: &mut impl FnMut(u64, &[u8]),
    ) -> Result<(), BadFilter> {
        while !data.is_empty() {
            if self.col == 0 {
                let f = data[0];
                if f > 4 {
                    return Err(BadFilter {
                        row: self.row,
                        filter: f,
                    });
                }
                self.filter = f;
                self.col = 1;
                data = &data[1..];
                if self.bpr > 0 {
                    continue;
                }
            }
            let x0 = self.col - 1;
            let n = (self.bpr - x0).min(data.len());
            unfilter_span(self.filter, &self.prev, &mut self.cur, x0, &data[..n]);
            data = &data[n..];
            self.col += n;
            if self.col == self.bpr + 1 {
                sink(self.row, &self.cur);
                std::mem::swap(&mut self.prev, &mut self.cur);
                self.row += 1;
                self.col = 0;
            }
        }
        Ok(())
    }
}

/// Unfilters `src` into `cur[x0..x0 + src.len()]`.
fn unfilter_span(filter: u8, prev: &[u8], cur: &mut [u8], x0: usize, src: &[u8]) {
    let end = x0 + src.len();
    match filter {
        0 => cur[x0..end].copy_from_slice(src),
        2 => {
            for ((c, &s), &p) in cur[x0..end].iter_mut().zip(src).zip(&prev[x0..end]) {
                *c = s.wrapping_add(p);
            }
        }
        _ => {
            // Sub, Average and Paeth need the byte to the left (`x - 4`).
            let head = end.min(BPP).saturating_sub(x0);
            for (i, &s) in src[..head].iter().enumerate() {
                let x = x0 + i;
                let up = prev[x];
                cur[x] = match filter {
                    1 => s,
                    3 => s.wrapping_add(up >> 1),
                    _ => s.wrapping_add(up), // Paeth with a = c = 0 predicts b
                };
            }
            let start = x0 + head;
            if start >= end {
                return;
            }
            let src = &src[head..];
            match filter {
                1 => {
                    for (i, &s) in src.iter().enumerate() {
                        let x = start + i;
                        cur[x] = s.wrapping_add(cur[x - BPP]);
                    }
                }
                3 => {
                    for (i, &s) in src.iter().enumerate() {
                        let x = start + i;
                        let avg = ((u16::from(cur[x - BPP]) + u16::from(prev[x])) >> 1) as u8;
                        cur[x] = s.wrapping_add(avg);
                    }
                }
                _ => {
                    for (i, &s) in src.iter().enumerate() {
                        let x = start + i;
                        let pred = paeth(cur[x - BPP], prev[x], prev[x - BPP]);
                        cur[x] = s.wrapping_add(pred);
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let (ia, ib, ic) = (i16::from(a), i16::from(b), i16::from(c));
    let p = ia + ib - ic;
    let pa = (p - ia).abs();
    let pb = (p - ib).abs();
    let pc = (p - ic).abs();
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Filters `rows` (each `bpr` bytes) with the given per-row filter types.
    fn filter_rows(rows: &[Vec<u8>], types: &[u8]) -> Vec<u8> {
        let bpr = rows[0].len();
        let zero = vec![0u8; bpr];
        let mut out = Vec::new();
        for (r, row) in rows.iter().enumerate() {
            let prev = if r == 0 { &zero } else { &rows[r - 1] };
            out.push(types[r]);
            for x in 0..bpr {
                let a = if x >= 4 { row[x - 4] } else { 0 };
                let b = prev[x];
                let c = if x >= 4 { prev[x - 4] } else { 0 };
                let pred = match types[r] {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                    _ => paeth(a, b, c),
                };
                out.push(row[x].wrapping_sub(pred));
            }
        }
        out
    }

    fn sample(bpr: usize, nrows: usize) -> Vec<Vec<u8>> {
        let mut x: u32 = 12345;
        (0..nrows)
            .map(|_| {
                (0..bpr)
                    .map(|_| {
                        x = x.wrapping_mul(1103515245).wrapping_add(12345);
                        (x >> 16) as u8
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn roundtrip_all_filters_any_piece_size_and_resume() {
        let bpr = 12;
        let rows = sample(bpr, 10);
        let types = [0, 1, 2, 3, 4, 4, 3, 2, 1, 0];
        let filtered = filter_rows(&rows, &types);
        for piece in [1, 2, 3, 5, 13, 100] {
            let mut u = RowUnfilter::new(bpr);
            let mut got = Vec::new();
            for p in filtered.chunks(piece) {
                u.feed(p, &mut |_, r| got.push(r.to_vec())).unwrap();
            }
            assert_eq!(got, rows);
        }
        // Snapshot at every position and resume.
        for pos in 0..filtered.len() {
            let mut u = RowUnfilter::new(bpr);
            u.feed(&filtered[..pos], &mut |_, _| {}).unwrap();
            let mut snap = Vec::new();
            u.snapshot(&mut snap);
            let mut v = RowUnfilter::resume(bpr, pos as u64, &snap).unwrap();
            let mut got = Vec::new();
            v.feed(&filtered[pos..], &mut |row, r| got.push((row, r.to_vec())))
                .unwrap();
            // The row in progress at `pos` is the first to complete.
            let first = pos / (bpr + 1);
            for (k, (row, r)) in got.iter().enumerate() {
                assert_eq!(*row as usize, first + k);
                assert_eq!(r, &rows[first + k]);
            }
        }
    }

    #[test]
    fn bad_filter_type() {
        let mut u = RowUnfilter::new(4);
        let err = u.feed(&[0, 1, 2, 3, 4, 5, 0], &mut |_, _| {}).unwrap_err();
        assert_eq!(err, BadFilter { row: 1, filter: 5 });
    }
}
