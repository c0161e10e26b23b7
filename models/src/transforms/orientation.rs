//! Orientation to RAS (MONAI `Orientationd(axcodes="RAS")` with nibabel 5.2 semantics):
//! flip the axes that point the wrong way, then permute; values are moved, never interpolated.

use super::affine::matmul;
use ferrolabel_imaging::{mat3, Affine};
use tch::Tensor;

/// What the orientation step did, so that it can be undone exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct OrientationOp {
    /// For each input axis: the RAS output axis it becomes.
    pub out_axis: [usize; 3],
    /// For each input axis: whether it is flipped.
    pub flip: [bool; 3],
    /// Spatial shape before the step.
    pub in_shape: [i64; 3],
}

impl OrientationOp {
    /// True when the step changes nothing (the volume is already RAS).
    pub fn is_identity(&self) -> bool {
        self.out_axis == [0, 1, 2] && self.flip == [false; 3]
    }

    /// Permutation (over `[C, X, Y, Z]`) applied after the flips.
    fn permutation(&self) -> [i64; 4] {
        // new axis j takes the input axis i with out_axis[i] == j (argsort of out_axis)
        let mut perm = [0i64, 0, 0, 0];
        for (i, &o) in self.out_axis.iter().enumerate() {
            perm[o + 1] = i as i64 + 1;
        }
        perm
    }

    /// Applies the step to a channel-first `[C, X, Y, Z]` tensor.
    pub fn apply(&self, data: &Tensor) -> Tensor {
        let flips: Vec<i64> = (0..3)
            .filter(|&i| self.flip[i])
            .map(|i| i as i64 + 1)
            .collect();
        let t = if flips.is_empty() {
            data.shallow_clone()
        } else {
            data.flip(&flips)
        };
        let perm = self.permutation();
        if perm == [0, 1, 2, 3] {
            t
        } else {
            t.permute(perm)
        }
    }

    /// Undoes the step on a channel-first tensor in the RAS layout.
    pub fn invert(&self, data: &Tensor) -> Tensor {
        let perm = self.permutation();
        let mut inv = [0i64; 4];
        for (j, &p) in perm.iter().enumerate() {
            inv[p as usize] = j as i64;
        }
        let t = if perm == [0, 1, 2, 3] {
            data.shallow_clone()
        } else {
            data.permute(inv)
        };
        let flips: Vec<i64> = (0..3)
            .filter(|&i| self.flip[i])
            .map(|i| i as i64 + 1)
            .collect();
        if flips.is_empty() {
            t
        } else {
            t.flip(&flips)
        }
    }

    /// The affine after the step: `affine @ M`, where M maps new voxel indices to old ones
    /// (nibabel's `inv_ornt_aff`).
    pub fn new_affine(&self, affine: &Affine) -> Affine {
        let mut m = [[0.0f64; 4]; 4];
        m[3][3] = 1.0;
        for i in 0..3 {
            let o = self.out_axis[i];
            if self.flip[i] {
                m[i][o] = -1.0;
                m[i][3] = (self.in_shape[i] - 1) as f64;
            } else {
                m[i][o] = 1.0;
            }
        }
        matmul(affine, &m)
    }
}

/// nibabel's `io_orientation`: for each voxel axis the closest world axis and its sign,
/// from the orthogonal polar factor of the column-normalised rotation block
/// ([`mat3::polar_factor`], the same factor as nibabel's SVD); `None` when that block is
/// singular ([`mat3::is_singular`]), which no validated image is.
pub fn io_orientation(affine: &Affine) -> Option<([usize; 3], [bool; 3])> {
    let mut r = [[0.0f64; 3]; 3];
    for j in 0..3 {
        let norm = (0..3)
            .map(|i| affine[i][j] * affine[i][j])
            .sum::<f64>()
            .sqrt();
        let norm = if norm == 0.0 { 1.0 } else { norm };
        for i in 0..3 {
            r[i][j] = affine[i][j] / norm;
        }
    }
    let mut r = mat3::polar_factor(&r)?;
    let mut out_axis = [usize::MAX; 3];
    let mut flip = [false; 3];
    for in_ax in 0..3 {
        let col = [r[0][in_ax], r[1][in_ax], r[2][in_ax]];
        if col.iter().all(|v| v.abs() <= 1e-8) {
            return None;
        }
        let mut best = 0;
        for k in 1..3 {
            if col[k].abs() > col[best].abs() {
                best = k;
            }
        }
        out_axis[in_ax] = best;
        flip[in_ax] = col[best] < 0.0;
        r[best] = [0.0; 3];
    }
    let mut seen = [false; 3];
    for &o in &out_axis {
        if o > 2 || seen[o] {
            return None;
        }
        seen[o] = true;
    }
    Some((out_axis, flip))
}

/// Plans the orientation of a volume of `shape` with `affine` to RAS.
pub fn plan(affine: &Affine, shape: [i64; 3]) -> Option<OrientationOp> {
    let (out_axis, flip) = io_orientation(affine)?;
    Some(OrientationOp {
        out_axis,
        flip,
        in_shape: shape,
    })
}
