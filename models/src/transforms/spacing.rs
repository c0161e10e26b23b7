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
    /// The data is resampled in float64 as MONAI does (`dtype=float64`), then cast back, in
    /// slabs of [`CHUNK_VOXELS`] destination voxels (see [`SpacingOp::resample`]).
    pub fn apply(&self, data: &Tensor, interp: Interp) -> Tensor {
        self.resample(data, interp, Kind::Float, CHUNK_VOXELS)
    }

    /// Torch's `theta` (`[1, 3, 4]`, float64) of this resampling: MONAI's
    /// `normalize_transform(align_corners=False)` on both grids around `xform`, with the index
    /// order (i, j, k) reversed to torch's (x, y, z).
    fn theta(&self) -> Tensor {
        // diag(2/n), last column 1/n - 1
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
        let rev = Tensor::from_slice(&[2i64, 1, 0, 3]);
        let rows = Tensor::from_slice(&[2i64, 1, 0]);
        theta
            .index_select(0, &rows)
            .index_select(1, &rev)
            .unsqueeze(0)
    }

    /// Resamples a channel-first `[C, X, Y, Z]` tensor into a tensor of `kind`, computing the
    /// float64 sampling grid and the float64 samples for at most `chunk_voxels` destination
    /// voxels at a time (whole planes along the first axis, at least one).
    ///
    /// Each slab's grid is built exactly as torch's `affine_grid_generator` builds the whole
    /// one (the same linspaces, the same `bmm` with `theta`), and `grid_sampler` treats every
    /// output voxel on its own, so the result does not depend on the slab size; what it saves
    /// is the whole-volume grid (32 + 24 bytes a voxel: ~6 GB for 512x512x400).
    pub fn resample(&self, data: &Tensor, interp: Interp, kind: Kind, chunk_voxels: i64) -> Tensor {
        if self.unchanged {
            return data.to_kind(kind);
        }
        let dev = data.device();
        let theta_t = self.theta().to_device(dev).transpose(1, 2);
        let [d0, d1, d2] = self.dst_shape;
        let mode = match interp {
            Interp::Bilinear => 0,
            Interp::Nearest => 1,
        };
        let x = data.to_kind(Kind::Double).unsqueeze(0).contiguous();
        let c = x.size()[1];
        let out = Tensor::empty([c, d0, d1, d2], (kind, dev));
        let plane = (d1 * d2).max(1);
        let planes = (chunk_voxels / plane).clamp(1, d0.max(1));
        let lin_d = linspace_from_neg_one(d0, dev);
        let lin_h = linspace_from_neg_one(d1, dev).unsqueeze(-1);
        let lin_w = linspace_from_neg_one(d2, dev);
        let mut p0 = 0;
        while p0 < d0 {
            let n = planes.min(d0 - p0);
            // torch's make_base_grid_5D for planes [p0, p0 + n) of the destination
            let base = Tensor::empty([1, n, d1, d2, 4], (Kind::Double, dev));
            base.select(-1, 0).copy_(&lin_w);
            base.select(-1, 1).copy_(&lin_h);
            base.select(-1, 2)
                .copy_(&lin_d.narrow(0, p0, n).unsqueeze(-1).unsqueeze(-1));
            let _ = base.select(-1, 3).fill_(1.0);
            let grid = base
                .view([1, n * d1 * d2, 4])
                .bmm(&theta_t)
                .view([1, n, d1, d2, 3]);
            drop(base);
            let y = Tensor::grid_sampler(&x, &grid, mode, 1, false);
            out.narrow(1, p0, n).copy_(&y.squeeze_dim(0));
            p0 += n;
        }
        out
    }
}

/// Destination voxels resampled per slab by [`SpacingOp::apply`]: the float64 grid of a slab
/// takes 56 bytes a voxel (base grid + grid), so 2^21 voxels keep it near 112 MB.
pub const CHUNK_VOXELS: i64 = 1 << 21;

/// torch's `linspace_from_neg_one(num_steps, align_corners=False)`: `linspace(-1, 1, n)`
/// scaled by `(n - 1) / n`, float64 (one zero when `n <= 1`).
fn linspace_from_neg_one(n: i64, dev: tch::Device) -> Tensor {
    if n <= 1 {
        return Tensor::zeros([1], (Kind::Double, dev));
    }
    Tensor::linspace(-1.0, 1.0, n, (Kind::Double, dev)) * ((n - 1) as f64) / (n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole-volume resampling of before the slabs: one `affine_grid_generator` grid.
    fn whole(op: &SpacingOp, data: &Tensor, interp: Interp) -> Tensor {
        let [d0, d1, d2] = op.dst_shape;
        let grid = Tensor::affine_grid_generator(&op.theta(), [1, 1, d0, d1, d2], false);
        let x = data.to_kind(Kind::Double).unsqueeze(0).contiguous();
        let mode = if interp == Interp::Nearest { 1 } else { 0 };
        Tensor::grid_sampler(&x, &grid, mode, 1, false).squeeze_dim(0)
    }

    fn diag(s: [f64; 3]) -> Affine {
        let mut a = IDENTITY;
        for i in 0..3 {
            a[i][i] = s[i];
        }
        a
    }

    #[test]
    fn slabs_equal_the_whole_volume_with_half_ties() {
        // the golden `half_ties` geometry (tests/golden/make_golden.py): 0.75 mm voxels to a
        // 1.5 mm network grid; inverting samples the network grid at exact half-voxel points
        let fwd = plan(&diag([0.75; 3]), [30, 34, 26], [1.5; 3]).unwrap();
        let inv = fwd.inverse().unwrap();
        assert!(!inv.unchanged);
        let [d0, d1, d2] = inv.dst_shape;
        let grid = Tensor::affine_grid_generator(&inv.theta(), [1, 1, d0, d1, d2], false);
        let n = Tensor::from_slice(&[
            fwd.dst_shape[2] as f64,
            fwd.dst_shape[1] as f64,
            fwd.dst_shape[0] as f64,
        ]);
        let idx = ((grid + 1.0) * n - 1.0) / 2.0;
        let ties = i64::try_from(idx.frac().abs().eq(0.5).sum(Kind::Int64)).unwrap();
        assert!(ties > 1000, "only {ties} half-voxel ties");
        tch::manual_seed(11);
        let labels = Tensor::randint(105, fwd.dst_shape, (Kind::Uint8, tch::Device::Cpu));
        let x = labels.unsqueeze(0);
        let want = whole(&inv, &x, Interp::Nearest).to_kind(Kind::Uint8);
        // one plane per slab (30 slabs), 7 planes (a short last slab), the default (one slab)
        for chunk in [1, 7 * d1 * d2, CHUNK_VOXELS] {
            let got = inv.resample(&x, Interp::Nearest, Kind::Uint8, chunk);
            assert_eq!(got.size(), [1, d0, d1, d2]);
            assert!(got.equal(&want), "chunk {chunk}: labels differ");
        }
    }

    #[test]
    fn slabs_equal_the_whole_volume_bilinear_oblique() {
        let (s, c) = (10f64.to_radians().sin(), 10f64.to_radians().cos());
        let mut a = diag([0.9, 1.1, 2.0]);
        a[0][0] = 0.9 * c;
        a[1][0] = 0.9 * s;
        a[0][1] = -1.1 * s;
        a[1][1] = 1.1 * c;
        let op = plan(&a, [23, 19, 11], [1.5; 3]).unwrap();
        tch::manual_seed(5);
        let data = Tensor::randn([2, 23, 19, 11], (Kind::Float, tch::Device::Cpu));
        let want = whole(&op, &data, Interp::Bilinear).to_kind(Kind::Float);
        for chunk in [1, 3 * op.dst_shape[1] * op.dst_shape[2], CHUNK_VOXELS] {
            let got = op.resample(&data, Interp::Bilinear, Kind::Float, chunk);
            assert!(got.equal(&want), "chunk {chunk}: values differ");
        }
    }
}
