//! Resampling to a target voxel spacing (MONAI `Spacingd` with the bundle's defaults) and its
//! nearest-neighbour inverse (MONAI `Invertd` with `nearest_interp=True`).
//!
//! Geometry follows `docs/bundle.md` §3.4: keep spacings within 1e-3 of the target,
//! `zoom_affine` via Cholesky, `compute_shape_offset` with round-half-to-even, min-corner origin,
//! and a float64 `affine_grid` + `grid_sample` (border padding, `align_corners=False`).

use super::affine::{allclose, from_tensor, solve, to_tensor};
use ferrolabel_imaging::affine::{column_norms, IDENTITY};
use ferrolabel_imaging::Affine;
use tch::{Kind, Tensor};

/// MONAI's AFFINE_TOL.
pub const AFFINE_TOL: f64 = 1e-3;

/// Interpolation of a resampling step (torch `grid_sampler` mode codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interp {
    /// Trilinear (code 0).
    Bilinear,
    /// Nearest, rounding half to even (code 1).
    Nearest,
}

/// A planned resampling from a source grid to a destination grid.
#[derive(Debug, Clone, PartialEq)]
pub struct SpacingOp {
    /// Affine of the source grid.
    pub src_affine: Affine,
    /// Spatial shape of the source grid.
    pub src_shape: [i64; 3],
    /// Affine of the destination grid as MONAI records it (`src_affine @ xform`).
    pub dst_affine: Affine,
    /// Spatial shape of the destination grid.
    pub dst_shape: [i64; 3],
    /// Destination voxel index -> source voxel index.
    pub xform: Affine,
    /// True when MONAI's fast path applies (no resampling, data only cast to float32).
    pub unchanged: bool,
}

/// Cholesky factor (lower) of a 3x3 symmetric positive definite matrix, LAPACK order.
fn cholesky3(a: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let mut l = [[0.0; 3]; 3];
    for j in 0..3 {
        let mut d = a[j][j];
        for k in 0..j {
            d -= l[j][k] * l[j][k];
        }
        if d.is_nan() || d <= 0.0 {
            return None;
        }
        l[j][j] = d.sqrt();
        for i in j + 1..3 {
            let mut s = a[i][j];
            for k in 0..j {
                s -= l[i][k] * l[j][k];
            }
            l[i][j] = s / l[j][j];
        }
    }
    Some(l)
}

/// MONAI `zoom_affine(affine, out_d, diagonal=False)`.
fn zoom_affine(a: &Affine, out_d: [f64; 3]) -> Option<Affine> {
    let t = to_tensor(a).narrow(0, 0, 3).narrow(1, 0, 3);
    let rtr = t.transpose(0, 1).matmul(&t);
    let m: Vec<f64> = Vec::<f64>::try_from(rtr.contiguous().view([-1])).ok()?;
    let l = cholesky3(&[[m[0], m[1], m[2]], [m[3], m[4], m[5]], [m[6], m[7], m[8]]])?;
    let flat: Vec<f64> = (0..3)
        .flat_map(|i| (0..3).map(move |j| (i, j)))
        .map(|(i, j)| l[j][i])
        .collect();
    let zs = Tensor::from_slice(&flat).view([3, 3]); // upper = L^T
    let rot = t.matmul(&zs.inverse());
    let mut s = [0.0; 3];
    for i in 0..3 {
        let d = flat[i * 4];
        let sign = if d > 0.0 {
            1.0
        } else if d < 0.0 {
            -1.0
        } else {
            0.0
        };
        s[i] = sign * out_d[i].abs();
    }
    let z = rot.matmul(&Tensor::from_slice(&s).diag(0));
    let z: Vec<f64> = Vec::<f64>::try_from(z.contiguous().view([-1])).ok()?;
    let mut out = IDENTITY;
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = z[i * 3 + j];
        }
    }
    Some(out)
}

/// Plans `Spacing(pixdim)` for a volume with `affine` and spatial `shape`.
pub fn plan(affine: &Affine, shape: [i64; 3], pixdim: [f64; 3]) -> Option<SpacingOp> {
    let cur = column_norms(affine);
    let mut out_d = pixdim;
    for i in 0..3 {
        if (pixdim[i] - AFFINE_TOL) <= cur[i] && cur[i] <= (pixdim[i] + AFFINE_TOL) {
            out_d[i] = cur[i];
        }
    }
    let mut a2 = zoom_affine(affine, out_d)?;
    // compute_shape_offset: the 8 corner voxel centres, meshgrid "ij" order
    let mut corners = Vec::with_capacity(32);
    for row in 0..4 {
        for c in 0..8usize {
            let bit = |axis: usize| (c >> (2 - axis)) & 1;
            let v = if row == 3 {
                1.0
            } else if bit(row) == 1 {
                (shape[row] - 1) as f64
            } else {
                0.0
            };
            corners.push(v);
        }
    }
    let corners = Tensor::from_slice(&corners).view([4, 8]);
    let a1t = to_tensor(affine);
    let rel = Tensor::linalg_solve(&to_tensor(&a2), &a1t, true);
    let c_out = rel.matmul(&corners);
    let world = a1t.matmul(&corners);
    let c_out: Vec<f64> = Vec::<f64>::try_from(c_out.contiguous().view([-1])).ok()?;
    let world: Vec<f64> = Vec::<f64>::try_from(world.contiguous().view([-1])).ok()?;
    let mut dst_shape = [0i64; 3];
    for (i, d) in dst_shape.iter_mut().enumerate() {
        let row: Vec<f64> = (0..8).map(|c| c_out[i * 8 + c] / c_out[24 + c]).collect();
        let lo = row.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let n = ((hi - lo) + 1.0).round_ties_even();
        if !n.is_finite() || !(1.0..=1e5).contains(&n) {
            return None;
        }
        *d = n as i64;
    }
    let mut offset = None;
    for i in 0..8 {
        let ok = (0..3).all(|r| {
            let m = (0..8)
                .map(|c| c_out[r * 8 + c] - c_out[r * 8 + i])
                .fold(f64::INFINITY, f64::min);
            m.abs() <= 1e-8
        });
        if ok {
            offset = Some([world[i], world[8 + i], world[16 + i]]);
            break;
        }
    }
    let offset = match offset {
        Some(o) => o,
        None => {
            // centre alignment (oblique volumes)
            let mut o = [0.0; 3];
            for (r, or) in o.iter_mut().enumerate() {
                let mut v = 0.0;
                for k in 0..3 {
                    v += affine[r][k] * (shape[k] as f64 / 2.0);
                }
                v += affine[r][3];
                let mut w = 0.0;
                for k in 0..3 {
                    w += a2[r][k] * (dst_shape[k] as f64 / 2.0);
                }
                *or = v - w;
            }
            o
        }
    };
    for r in 0..3 {
        a2[r][3] = offset[r];
    }
    let xform = solve(affine, &a2)?;
    // MONAI's fast path: same shape and (same affine or identity index map)
    let unchanged = dst_shape == shape
        && (allclose(affine, &a2, AFFINE_TOL) || allclose(&xform, &IDENTITY, AFFINE_TOL));
    let dst_affine = if unchanged {
        *affine
    } else {
        from_tensor(&a1t.matmul(&to_tensor(&xform)))
    };
    Some(SpacingOp {
        src_affine: *affine,
        src_shape: shape,
        dst_affine,
        dst_shape,
        xform,
        unchanged,
    })
}

impl SpacingOp {
    /// The plan of the inverse step (destination grid back to the source grid).
    pub fn inverse(&self) -> Option<SpacingOp> {
        let xform = solve(&self.dst_affine, &self.src_affine)?;
        let unchanged = self.dst_shape == self.src_shape
            && (allclose(&self.dst_affine, &self.src_affine, AFFINE_TOL)
                || allclose(&xform, &IDENTITY, AFFINE_TOL));
        Some(SpacingOp {
            src_affine: self.dst_affine,
            src_shape: self.dst_shape,
            dst_affine: self.src_affine,
            dst_shape: self.src_shape,
            xform,
            unchanged,
        })
    }

    /// Resamples a channel-first `[C, X, Y, Z]` tensor; returns float32.
    ///
    /// The data is resampled in float64 as MONAI does (`dtype=float64`), then cast back.
    pub fn apply(&self, data: &Tensor, interp: Interp) -> Tensor {
        if self.unchanged {
            return data.to_kind(Kind::Float);
        }
        // MONAI normalize_transform(align_corners=False): diag(2/n), last column 1/n - 1
        let norm = |shape: [i64; 3]| {
            let mut m = IDENTITY;
            for i in 0..3 {
                let n = shape[i] as f64;
                m[i][i] = 2.0 / n;
                m[i][3] = 1.0 / n - 1.0;
            }
            to_tensor(&m)
        };
        let theta = norm(self.src_shape)
            .matmul(&to_tensor(&self.xform))
            .matmul(&norm(self.dst_shape).inverse());
        // (i, j, k) index order -> torch's (x, y, z): reverse the first 3 rows and columns
        let rev = Tensor::from_slice(&[2i64, 1, 0, 3]);
        let rows = Tensor::from_slice(&[2i64, 1, 0]);
        let theta = theta.index_select(0, &rows).index_select(1, &rev);
        let theta = theta.unsqueeze(0);
        let [d0, d1, d2] = self.dst_shape;
        let grid = Tensor::affine_grid_generator(&theta, [1, 1, d0, d1, d2], false);
        let mode = match interp {
            Interp::Bilinear => 0,
            Interp::Nearest => 1,
        };
        let x = data.to_kind(Kind::Double).unsqueeze(0).contiguous();
        let c = x.size()[1];
        let grid = if c > 1 {
            grid.expand([1, d0, d1, d2, 3], false)
        } else {
            grid
        };
        let out = Tensor::grid_sampler(&x, &grid, mode, 1, false);
        out.squeeze_dim(0).to_kind(Kind::Float)
    }
}
