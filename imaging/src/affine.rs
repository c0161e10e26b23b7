//! Voxel <-> world geometry: 4 × 4 affine helpers and the NIfTI-1 quaternion (qform) encoding.
//!
//! An [`Affine`] maps voxel indices `(i, j, k, 1)` to world coordinates `(x, y, z, 1)` in
//! millimetres, RAS+ (NIfTI/nibabel convention): `world = affine · voxel`. The 3 × 3 helpers
//! (determinant, inverse, polar factor, the singularity rule) are in [`crate::mat3`].

use crate::mat3::{self, Mat3};

/// A 4 × 4 homogeneous transform, row-major: `affine[row][col]`.
pub type Affine = [[f64; 4]; 4];

/// The identity transform.
pub const IDENTITY: Affine = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// Matrix product `a · b`.
pub fn matmul(a: &Affine, b: &Affine) -> Affine {
    let mut out = [[0.0; 4]; 4];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, cell) in row.iter_mut().enumerate() {
            *cell = (0..4).map(|k| a[r][k] * b[k][c]).sum();
        }
    }
    out
}

/// Inverse of a general 4 × 4 matrix (Gauss–Jordan with partial pivoting), or `None` when the
/// matrix is singular or not finite.
pub fn inverse(a: &Affine) -> Option<Affine> {
    let mut m = *a;
    let mut inv = IDENTITY;
    for col in 0..4 {
        let pivot_row = (col..4).max_by(|&x, &y| m[x][col].abs().total_cmp(&m[y][col].abs()))?;
        let pivot = m[pivot_row][col];
        if pivot == 0.0 || !pivot.is_finite() {
            return None;
        }
        m.swap(col, pivot_row);
        inv.swap(col, pivot_row);
        for c in 0..4 {
            m[col][c] /= pivot;
            inv[col][c] /= pivot;
        }
        for r in 0..4 {
            if r != col {
                let f = m[r][col];
                if f != 0.0 {
                    for c in 0..4 {
                        m[r][c] -= f * m[col][c];
                        inv[r][c] -= f * inv[col][c];
                    }
                }
            }
        }
    }
    is_finite(&inv).then_some(inv)
}

/// Solves `a · x = b` for `x`, or `None` when `a` is singular.
pub fn solve(a: &Affine, b: &[f64; 4]) -> Option<[f64; 4]> {
    let inv = inverse(a)?;
    let mut x = [0.0; 4];
    for (r, out) in x.iter_mut().enumerate() {
        *out = (0..4).map(|k| inv[r][k] * b[k]).sum();
    }
    Some(x)
}

/// Applies the transform to a point: `affine · (p, 1)`, dropping the homogeneous coordinate.
pub fn apply(a: &Affine, p: [f64; 3]) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (r, o) in out.iter_mut().enumerate() {
        *o = a[r][0] * p[0] + a[r][1] * p[1] + a[r][2] * p[2] + a[r][3];
    }
    out
}

/// Euclidean norms of the first three columns: the voxel spacing in world units.
pub fn column_norms(a: &Affine) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        *o = (0..3).map(|r| a[r][c] * a[r][c]).sum::<f64>().sqrt();
    }
    out
}

/// Whether every entry is finite.
pub fn is_finite(a: &Affine) -> bool {
    a.iter().flatten().all(|v| v.is_finite())
}

/// Why the voxel-to-world matrix cannot be inverted, or `None` when it can: a non-finite
/// entry, a voxel axis of length zero, or axes so close to parallel that the 3 × 3 part is
/// singular by the workspace's one rule ([`mat3::is_singular`]: determinant at most
/// [`mat3::SINGULAR_TOLERANCE`] × the product of the axis lengths).
pub fn singular_reason(a: &Affine) -> Option<String> {
    if !is_finite(a) {
        return Some("the affine has a non-finite entry".into());
    }
    let norms = column_norms(a);
    if let Some(c) = norms.iter().position(|&n| n == 0.0) {
        return Some(format!("voxel axis {c} has length 0"));
    }
    let m = mat3::linear_part(a);
    if mat3::is_singular(&m) {
        return Some(format!(
            "the voxel axes are linearly dependent (determinant {:e})",
            mat3::det(&m)
        ));
    }
    None
}

/// The NIfTI-1 qform parameters: a unit quaternion `(a, b, c, d)` with `a >= 0` stored as
/// `(b, c, d)`, the handedness factor `qfac`, voxel sizes and the offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quaternion {
    /// `quatern_b`.
    pub b: f64,
    /// `quatern_c`.
    pub c: f64,
    /// `quatern_d`.
    pub d: f64,
    /// `pixdim[0]`: -1 flips the third axis; anything else (0 included) counts as +1.
    pub qfac: f64,
    /// `pixdim[1..=3]`: voxel sizes along i, j, k.
    pub pixdim: [f64; 3],
    /// `qoffset_x`, `qoffset_y`, `qoffset_z`.
    pub offset: [f64; 3],
}

/// The qform matrix, as section "Method 2" of the NIfTI-1 standard (nifti1.h) defines it.
///
/// `a = sqrt(1 - b² - c² - d²)`; when that is (numerically) zero, `(b, c, d)` is normalised
/// and `a = 0` (a 180° rotation). A voxel size that is zero, negative or not finite counts
/// as its absolute value, or 1 when that is zero or not finite; `qfac < 0` negates the
/// third column.
pub fn quaternion_to_affine(q: &Quaternion) -> Affine {
    let (mut b, mut c, mut d) = (q.b, q.c, q.d);
    let sum = b * b + c * c + d * d;
    let mut a = 1.0 - sum;
    if a < 1.0e-7 {
        let norm = 1.0 / sum.sqrt();
        b *= norm;
        c *= norm;
        d *= norm;
        a = 0.0;
    } else {
        a = a.sqrt();
    }
    let size = |s: f64| {
        let s = s.abs();
        if s > 0.0 && s.is_finite() {
            s
        } else {
            1.0
        }
    };
    let xd = size(q.pixdim[0]);
    let yd = size(q.pixdim[1]);
    let mut zd = size(q.pixdim[2]);
    if q.qfac < 0.0 {
        zd = -zd;
    }
    [
        [
            (a * a + b * b - c * c - d * d) * xd,
            2.0 * (b * c - a * d) * yd,
            2.0 * (b * d + a * c) * zd,
            q.offset[0],
        ],
        [
            2.0 * (b * c + a * d) * xd,
            (a * a + c * c - b * b - d * d) * yd,
            2.0 * (c * d - a * b) * zd,
            q.offset[1],
        ],
        [
            2.0 * (b * d - a * c) * xd,
            2.0 * (c * d + a * b) * yd,
            (a * a + d * d - c * c - b * b) * zd,
            q.offset[2],
        ],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

/// Decomposes an affine into qform parameters, the inverse of [`quaternion_to_affine`].
///
/// Voxel sizes are the column norms; the 3 × 3 part is divided by them and replaced by its
/// nearest rotation ([`mat3::polar_factor`]), so a slightly sheared affine still gives a valid
/// quaternion. A negative determinant gives `qfac = -1`. A zero column counts as the
/// matching unit axis with size 1; axes that are singular together
/// ([`mat3::is_singular`]) give the identity rotation.
pub fn affine_to_quaternion(affine: &Affine) -> Quaternion {
    let mut pixdim = column_norms(affine);
    let mut m = [[0.0f64; 3]; 3];
    for c in 0..3 {
        if pixdim[c] > 0.0 && pixdim[c].is_finite() {
            for (r, row) in m.iter_mut().enumerate() {
                row[c] = affine[r][c] / pixdim[c];
            }
        } else {
            pixdim[c] = 1.0;
            m[c][c] = 1.0;
        }
    }
    let mut rot = mat3::polar_factor(&m).unwrap_or(mat3::IDENTITY3);
    let mut qfac = 1.0;
    if mat3::det(&rot) < 0.0 {
        qfac = -1.0;
        for row in rot.iter_mut() {
            row[2] = -row[2];
        }
    }
    let [_, b, c, d] = rotation_to_quaternion(&rot);
    Quaternion {
        b,
        c,
        d,
        qfac,
        pixdim,
        offset: [affine[0][3], affine[1][3], affine[2][3]],
    }
}

/// Unit quaternion `[a, b, c, d]` (with `a >= 0`) of a proper rotation matrix, by picking the
/// largest of the four diagonal combinations for numerical stability.
fn rotation_to_quaternion(r: &Mat3) -> [f64; 4] {
    let trace = r[0][0] + r[1][1] + r[2][2];
    let q = if trace > 0.0 {
        let s = 0.5 / (trace + 1.0).sqrt();
        [
            0.25 / s,
            (r[2][1] - r[1][2]) * s,
            (r[0][2] - r[2][0]) * s,
            (r[1][0] - r[0][1]) * s,
        ]
    } else if r[0][0] > r[1][1] && r[0][0] > r[2][2] {
        let s = 2.0 * (1.0 + r[0][0] - r[1][1] - r[2][2]).sqrt();
        [
            (r[2][1] - r[1][2]) / s,
            0.25 * s,
            (r[0][1] + r[1][0]) / s,
            (r[0][2] + r[2][0]) / s,
        ]
    } else if r[1][1] > r[2][2] {
        let s = 2.0 * (1.0 + r[1][1] - r[0][0] - r[2][2]).sqrt();
        [
            (r[0][2] - r[2][0]) / s,
            (r[0][1] + r[1][0]) / s,
            0.25 * s,
            (r[1][2] + r[2][1]) / s,
        ]
    } else {
        let s = 2.0 * (1.0 + r[2][2] - r[0][0] - r[1][1]).sqrt();
        [
            (r[1][0] - r[0][1]) / s,
            (r[0][2] + r[2][0]) / s,
            (r[1][2] + r[2][1]) / s,
            0.25 * s,
        ]
    };
    if q[0] < 0.0 {
        [-q[0], -q[1], -q[2], -q[3]]
    } else {
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Affine, b: &Affine, tol: f64) -> bool {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .all(|(x, y)| (x - y).abs() <= tol)
    }

    fn rotation(axis: [f64; 3], angle: f64) -> Mat3 {
        let n = (axis[0] * axis[0] + axis[1] * axis[1] + axis[2] * axis[2]).sqrt();
        let (x, y, z) = (axis[0] / n, axis[1] / n, axis[2] / n);
        let (s, c) = angle.sin_cos();
        let t = 1.0 - c;
        [
            [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
            [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
            [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
        ]
    }

    fn compose(rot: &Mat3, zooms: [f64; 3], flip: bool, offset: [f64; 3]) -> Affine {
        let mut a = IDENTITY;
        for r in 0..3 {
            for c in 0..3 {
                let z = if c == 2 && flip { -zooms[c] } else { zooms[c] };
                a[r][c] = rot[r][c] * z;
            }
            a[r][3] = offset[r];
        }
        a
    }

    #[test]
    fn inverse_and_solve() {
        let a = [
            [2.0, 0.5, 0.0, 10.0],
            [0.0, -3.0, 0.1, -4.0],
            [0.3, 0.0, 1.5, 7.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let inv = inverse(&a).unwrap();
        assert!(close(&matmul(&a, &inv), &IDENTITY, 1e-12));
        let x = solve(&a, &[1.0, 2.0, 3.0, 1.0]).unwrap();
        let back = apply(&a, [x[0], x[1], x[2]]);
        assert!((back[0] - 1.0).abs() < 1e-12 && (back[1] - 2.0).abs() < 1e-12);
        let mut singular = a;
        singular[1] = singular[0];
        assert!(inverse(&singular).is_none());
        assert_eq!(column_norms(&IDENTITY), [1.0, 1.0, 1.0]);
    }

    #[test]
    fn identity_quaternion() {
        let q = Quaternion {
            b: 0.0,
            c: 0.0,
            d: 0.0,
            qfac: 0.0,
            pixdim: [0.5, 0.75, 2.0],
            offset: [1.0, 2.0, 3.0],
        };
        let a = quaternion_to_affine(&q);
        let want = [
            [0.5, 0.0, 0.0, 1.0],
            [0.0, 0.75, 0.0, 2.0],
            [0.0, 0.0, 2.0, 3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(a, want);
    }

    #[test]
    fn quaternion_round_trip() {
        let axes = [
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [1.0, -2.0, 0.5],
        ];
        let angles = [0.0, 0.3, 1.5, 3.0, std::f64::consts::PI, -2.0];
        for axis in axes {
            for angle in angles {
                for flip in [false, true] {
                    let rot = rotation(axis, angle);
                    let a = compose(&rot, [0.8, 1.2, 3.0], flip, [-100.0, 20.5, 7.0]);
                    let q = affine_to_quaternion(&a);
                    assert_eq!(q.qfac, if flip { -1.0 } else { 1.0 });
                    let back = quaternion_to_affine(&q);
                    assert!(
                        close(&a, &back, 1e-9),
                        "axis {axis:?} angle {angle} flip {flip}"
                    );
                }
            }
        }
    }

    #[test]
    fn ras_to_las_is_a_flip_and_180_degree_turn() {
        // diag(-1, 1, 1): det < 0, so qfac = -1 with a 180° rotation about y.
        let mut a = IDENTITY;
        a[0][0] = -2.0;
        let q = affine_to_quaternion(&a);
        assert_eq!(q.qfac, -1.0);
        assert!(close(&quaternion_to_affine(&q), &a, 1e-12));
    }
}
