//! The blending accumulator of the sliding window, kept per cell.
//!
//! Every window start and end cuts its axis into segments; the volume is a grid of cells (one
//! segment per axis), and each cell holds its own `C`-channel weighted sum and weight sum.
//! A cell is allocated (zeroed) when the first window that touches it arrives and handed back
//! once the last window that touches it has been added, so only the cells between the windows
//! done and the windows to come are ever live, instead of the whole volume (MONAI) or one
//! window's depth of it.
//!
//! Windows are added in the order given, each one's weighted output added to every cell it
//! covers, so every voxel receives exactly the additions of a whole-volume accumulator, in the
//! same order, starting from zero: the sums are bit-identical (`inferer/tests.rs` proves it).

use crate::error::{ModelsError, Result};
use tch::{Kind, Tensor};

/// Shortest segment: boundaries closer than this to the previous one are dropped (a cell then
/// spans a little more than its windows' cut), which bounds the number of small cells when the
/// overlap is high. Any partition gives the same sums; this only trades memory for op count.
const MIN_SEGMENT: i64 = 8;

/// A finished cell: its weighted sums and weight sums, final.
#[derive(Debug)]
pub struct Block {
    /// Position of the cell's first voxel in the working volume.
    pub origin: [i64; 3],
    /// `[C, dx, dy, dz]` weighted sums (channels-last in memory when the outputs were).
    pub acc: Tensor,
    /// `[dx, dy, dz]` weight sums.
    pub count: Tensor,
}

/// A live cell.
#[derive(Debug)]
struct Cell {
    acc: Tensor,
    count: Tensor,
}

/// The per-cell accumulator of a fixed list of windows.
#[derive(Debug)]
pub struct Blender {
    /// Segment boundaries per axis (first 0, last the working size).
    bounds: [Vec<i64>; 3],
    roi: [i64; 3],
    windows: Vec<[i64; 3]>,
    classes: i64,
    /// Index of the last window touching each cell (flat cell index).
    last: Vec<usize>,
    cells: Vec<Option<Cell>>,
    /// The next window expected by [`Blender::add`].
    next: usize,
    peak_voxels: i64,
}

/// Segment boundaries of an axis of size `n` cut by windows of size `roi` at `starts`.
fn boundaries(n: i64, starts: &[i64], roi: i64) -> Vec<i64> {
    let mut cuts: Vec<i64> = starts
        .iter()
        .flat_map(|&s| [s, (s + roi).min(n)])
        .filter(|&c| c > 0 && c < n)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = vec![0];
    for c in cuts {
        if c - out[out.len() - 1] >= MIN_SEGMENT {
            out.push(c);
        }
    }
    if out.len() > 1 && n - out[out.len() - 1] < MIN_SEGMENT {
        out.pop();
    }
    out.push(n);
    out
}

/// Segments of `bounds` that intersect `[s, e)`.
fn segment_range(bounds: &[i64], s: i64, e: i64) -> std::ops::Range<usize> {
    let lo = bounds.partition_point(|&b| b <= s) - 1;
    let hi = bounds.partition_point(|&b| b < e);
    lo..hi
}

impl Blender {
    /// An accumulator for `windows` (in the order they will be added) of size `roi` over a
    /// working volume of size `work` with `classes` output channels. Every window must lie
    /// inside the volume.
    pub fn new(work: [i64; 3], roi: [i64; 3], windows: &[[i64; 3]], classes: i64) -> Result<Self> {
        for w in windows {
            if (0..3).any(|a| w[a] < 0 || w[a] + roi[a] > work[a]) {
                return Err(ModelsError::Invalid(format!(
                    "window {w:?} of size {roi:?} is outside the volume {work:?}"
                )));
            }
        }
        let bounds: [Vec<i64>; 3] = std::array::from_fn(|a| {
            let mut starts: Vec<i64> = windows.iter().map(|w| w[a]).collect();
            starts.sort_unstable();
            starts.dedup();
            boundaries(work[a], &starts, roi[a])
        });
        let dims: [usize; 3] = std::array::from_fn(|a| bounds[a].len() - 1);
        let n_cells = dims[0] * dims[1] * dims[2];
        let mut first = vec![usize::MAX; n_cells];
        let mut last = vec![usize::MAX; n_cells];
        let mut blender = Blender {
            bounds,
            roi,
            windows: windows.to_vec(),
            classes,
            last: Vec::new(),
            cells: Vec::new(),
            next: 0,
            peak_voxels: 0,
        };
        for i in 0..windows.len() {
            for c in blender.cells_of(i) {
                if first[c] == usize::MAX {
                    first[c] = i;
                }
                last[c] = i;
            }
        }
        // voxels live while window i is added: cells first touched at or before i, last after or at i
        let mut live = 0i64;
        for i in 0..windows.len() {
            for c in blender.cells_of(i) {
                if first[c] == i {
                    live += blender.cell_voxels(c);
                }
            }
            blender.peak_voxels = blender.peak_voxels.max(live);
            for c in blender.cells_of(i) {
                if last[c] == i {
                    live -= blender.cell_voxels(c);
                }
            }
        }
        blender.last = last;
        blender.cells = (0..n_cells).map(|_| None).collect();
        Ok(blender)
    }

    /// Cells per axis.
    fn dims(&self) -> [usize; 3] {
        std::array::from_fn(|a| self.bounds[a].len() - 1)
    }

    /// Flat indices of the cells window `i` touches.
    fn cells_of(&self, i: usize) -> Vec<usize> {
        let w = self.windows[i];
        let r: [std::ops::Range<usize>; 3] =
            std::array::from_fn(|a| segment_range(&self.bounds[a], w[a], w[a] + self.roi[a]));
        let d = self.dims();
        let mut out = Vec::with_capacity(r[0].len() * r[1].len() * r[2].len());
        for x in r[0].clone() {
            for y in r[1].clone() {
                for z in r[2].clone() {
                    out.push((x * d[1] + y) * d[2] + z);
                }
            }
        }
        out
    }

    /// `(origin, size)` of a flat cell index.
    fn cell_box(&self, c: usize) -> ([i64; 3], [i64; 3]) {
        let d = self.dims();
        let idx = [c / (d[1] * d[2]), (c / d[2]) % d[1], c % d[2]];
        let origin = std::array::from_fn(|a| self.bounds[a][idx[a]]);
        let size = std::array::from_fn(|a| self.bounds[a][idx[a] + 1] - self.bounds[a][idx[a]]);
        (origin, size)
    }

    fn cell_voxels(&self, c: usize) -> i64 {
        let (_, s) = self.cell_box(c);
        s[0] * s[1] * s[2]
    }

    /// The most voxels ever held at once (the accumulator's peak is this times `C + 1`
    /// floats), known before the first window.
    pub fn peak_voxels(&self) -> i64 {
        self.peak_voxels
    }

    /// Number of cells.
    pub fn cell_count(&self) -> usize {
        self.last.len()
    }

    /// Adds window `index` (which must be the next one): `weighted` is its output already
    /// multiplied by the weight map, `[C, rx, ry, rz]`, and `weight` the map, `[rx, ry, rz]`.
    /// Returns the cells this window was the last to touch: they are final and no longer held.
    pub fn add(&mut self, index: usize, weighted: &Tensor, weight: &Tensor) -> Result<Vec<Block>> {
        if index != self.next || index >= self.windows.len() {
            return Err(ModelsError::Invalid(format!(
                "window {index} added out of order (expected {})",
                self.next
            )));
        }
        let w = self.windows[index];
        let channels_last = weighted.size()[0] > 1 && weighted.stride()[0] == 1;
        let mut finished = Vec::new();
        for c in self.cells_of(index) {
            let (origin, size) = self.cell_box(c);
            if self.cells[c].is_none() {
                self.cells[c] = Some(self.new_cell(weighted, size, channels_last));
            }
            let Some(cell) = &self.cells[c] else {
                continue;
            };
            // the intersection of the window and the cell, in each one's coordinates
            let mut acc = cell.acc.shallow_clone();
            let mut count = cell.count.shallow_clone();
            let mut src = weighted.shallow_clone();
            let mut wt = weight.shallow_clone();
            for a in 0..3 {
                let lo = origin[a].max(w[a]);
                let hi = (origin[a] + size[a]).min(w[a] + self.roi[a]);
                let dim = a as i64;
                acc = acc.narrow(dim + 1, lo - origin[a], hi - lo);
                count = count.narrow(dim, lo - origin[a], hi - lo);
                src = src.narrow(dim + 1, lo - w[a], hi - lo);
                wt = wt.narrow(dim, lo - w[a], hi - lo);
            }
            let _ = acc.g_add_(&src);
            let _ = count.g_add_(&wt);
            if self.last[c] == index {
                if let Some(cell) = self.cells[c].take() {
                    finished.push(Block {
                        origin,
                        acc: cell.acc,
                        count: cell.count,
                    });
                }
            }
        }
        self.next += 1;
        Ok(finished)
    }

    /// A zeroed cell of `size` in the layout of `like` (channels-last outputs are added without
    /// a strided gather; the per-voxel arithmetic is the same in both layouts).
    fn new_cell(&self, like: &Tensor, size: [i64; 3], channels_last: bool) -> Cell {
        let opts = (Kind::Float, like.device());
        let [dx, dy, dz] = size;
        let acc = if channels_last {
            Tensor::zeros([dx, dy, dz, self.classes], opts).permute([3, 0, 1, 2])
        } else {
            Tensor::zeros([self.classes, dx, dy, dz], opts)
        };
        Cell {
            acc,
            count: Tensor::zeros([dx, dy, dz], opts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inferer::window::windows;

    #[test]
    fn boundaries_cut_at_window_edges_and_merge_short_segments() {
        assert_eq!(
            boundaries(274, &[0, 72, 144, 178], 96),
            vec![0, 72, 96, 144, 168, 178, 240, 274]
        );
        // 171 is 3 past 168: merged into the previous segment
        assert_eq!(
            boundaries(267, &[0, 72, 144, 171], 96),
            vec![0, 72, 96, 144, 168, 240, 267]
        );
        assert_eq!(boundaries(96, &[0], 96), vec![0, 96]);
        // a short last segment is merged into the one before
        assert_eq!(boundaries(100, &[0, 4], 96), vec![0, 100]);
    }

    #[test]
    fn the_big_scan_holds_far_less_than_a_window_deep_slab() {
        // the 512x512x400 CT at 1.5 mm: 274x274x267, 64 windows
        let work = [274, 274, 267];
        let wins = windows(work, [96; 3], 0.25);
        let b = Blender::new(work, [96; 3], &wins, 105).unwrap();
        let slab = 96 * 274 * 267;
        let peak = b.peak_voxels();
        assert!(peak * 10 < slab * 8, "peak {peak} voxels vs slab {slab}");
    }

    #[test]
    fn out_of_order_and_outside_windows_are_refused() {
        let work = [20, 20, 20];
        let wins = windows(work, [12; 3], 0.5);
        let mut b = Blender::new(work, [12; 3], &wins, 2).unwrap();
        let out = Tensor::zeros([2, 12, 12, 12], (Kind::Float, tch::Device::Cpu));
        let wt = Tensor::ones([12, 12, 12], (Kind::Float, tch::Device::Cpu));
        assert!(b.add(1, &out, &wt).is_err());
        assert!(b.add(0, &out, &wt).is_ok());
        assert!(Blender::new(work, [12; 3], &[[9, 0, 0]], 2).is_err());
    }
}
