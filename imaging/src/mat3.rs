//! 3 × 3 matrix helpers for the linear part of an [`Affine`]: determinant, inverse, and the
//! orthogonal polar factor. The workspace's one copy: image validation, the NIfTI qform
//! encoding, orientation to RAS (models) and per-structure volumes (apps) all use these.
//!
//! # When a matrix counts as singular
//!
//! One rule, [`is_singular`]: a non-finite entry, or
//! `|det(m)| <= SINGULAR_TOLERANCE × |c0| × |c1| × |c2|` with `c0..c2` the columns. The ratio
//! `|det| / (|c0| |c1| |c2|)` is the volume of the parallelepiped spanned by the unit columns:
//! 1 for orthogonal axes, 0 for dependent ones, and independent of the voxel size, so the
//! same rule holds for 0.1 mm and 10 mm voxels. A zero column is singular (0 <= 0).
//! [`SINGULAR_TOLERANCE`] is 10⁻⁶: axes that span less than a millionth of the volume of
//! orthogonal ones are refused as images (see [`crate::affine::singular_reason`]), so nothing
//! that passed validation is ever called singular later on, and scanner geometry (ratios
//! near 1; a 60° gantry tilt still gives 0.87) is far from it.

use crate::affine::Affine;

/// A 3 × 3 matrix, row-major: `m[row][col]`.
pub type Mat3 = [[f64; 3]; 3];

/// The 3 × 3 identity.
pub const IDENTITY3: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// The relative determinant below which a matrix is singular (see the module docs).
pub const SINGULAR_TOLERANCE: f64 = 1e-6;

/// The linear (rotation, zoom, shear) part of an affine: its upper-left 3 × 3 block.
pub fn linear_part(a: &Affine) -> Mat3 {
    std::array::from_fn(|r| std::array::from_fn(|c| a[r][c]))
}

/// The determinant (cofactor expansion along the first row).
pub fn det(m: &Mat3) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// Euclidean norms of the columns.
pub fn column_norms(m: &Mat3) -> [f64; 3] {
    std::array::from_fn(|c| (0..3).map(|r| m[r][c] * m[r][c]).sum::<f64>().sqrt())
}

/// Whether `m` is singular by the workspace's one rule (see the module docs).
pub fn is_singular(m: &Mat3) -> bool {
    if !m.iter().flatten().all(|v| v.is_finite()) {
        return true;
    }
    let d = det(m);
    let [n0, n1, n2] = column_norms(m);
    !d.is_finite() || d.abs() <= SINGULAR_TOLERANCE * (n0 * n1 * n2)
}

/// The inverse transpose `m⁻ᵀ` (the cofactor matrix over the determinant), or `None` when
/// `m` is singular ([`is_singular`]).
pub fn inverse_transpose(m: &Mat3) -> Option<Mat3> {
    if is_singular(m) {
        return None;
    }
    cofactor_over_det(m)
}

/// The inverse `m⁻¹`, or `None` when `m` is singular ([`is_singular`]).
pub fn inverse(m: &Mat3) -> Option<Mat3> {
    inverse_transpose(m).map(|it| transpose(&it))
}

/// The transpose.
pub fn transpose(m: &Mat3) -> Mat3 {
    std::array::from_fn(|r| std::array::from_fn(|c| m[c][r]))
}

/// The orthogonal polar factor of `m` (the orthogonal matrix nearest to it; a reflection when
/// `det(m) < 0`), or `None` when `m` is singular ([`is_singular`]).
///
/// Newton's iteration `X ← (X + X⁻ᵀ) / 2` from `X = m`, until no entry moves by 10⁻¹⁵ (at
/// most 100 steps): it converges to the same factor as an SVD (`U Vᵀ`, as nibabel computes
/// it) for every non-singular matrix. After the first step every singular value is at least
/// 1, so only the input needs the singularity check.
pub fn polar_factor(m: &Mat3) -> Option<Mat3> {
    if is_singular(m) {
        return None;
    }
    let mut x = *m;
    for _ in 0..100 {
        let it = cofactor_over_det(&x)?;
        let mut change = 0.0f64;
        for r in 0..3 {
            for c in 0..3 {
                let next = 0.5 * (x[r][c] + it[r][c]);
                change = change.max((next - x[r][c]).abs());
                x[r][c] = next;
            }
        }
        if change < 1e-15 {
            break;
        }
    }
    Some(x)
}

/// Cofactor matrix over the determinant (`m⁻ᵀ`); `None` only for a zero or non-finite
/// determinant (callers check [`is_singular`] first).
fn cofactor_over_det(m: &Mat3) -> Option<Mat3> {
    let d = det(m);
    if d == 0.0 || !d.is_finite() {
        return None;
    }
    let mut out = [[0.0; 3]; 3];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, cell) in row.iter_mut().enumerate() {
            let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
            let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
            *cell = (m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]) / d;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mul(a: &Mat3, b: &Mat3) -> Mat3 {
        std::array::from_fn(|r| std::array::from_fn(|c| (0..3).map(|k| a[r][k] * b[k][c]).sum()))
    }

    fn close(a: &Mat3, b: &Mat3, tol: f64) -> bool {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .all(|(x, y)| (x - y).abs() <= tol)
    }

    /// Unit columns `e0`, `e1` and `(e0 + eps e2) / |..|`: the ratio `|det| / Π|c|` is
    /// `eps / sqrt(1 + eps²)`.
    fn sheared(eps: f64) -> Mat3 {
        let n = (1.0 + eps * eps).sqrt();
        [[1.0, 0.0, 1.0 / n], [0.0, 1.0, 0.0], [0.0, 0.0, eps / n]]
    }

    #[test]
    fn determinant() {
        assert_eq!(det(&IDENTITY3), 1.0);
        let m = [[2.0, 0.5, 0.0], [0.0, -3.0, 0.1], [0.3, 0.0, 1.5]];
        // 2·(-4.5 - 0) - 0.5·(0 - 0.03) + 0 = -8.985
        assert!((det(&m) + 8.985).abs() < 1e-12, "{}", det(&m));
        // swapping two rows flips the sign; scaling a column scales it
        assert!((det(&[m[1], m[0], m[2]]) - 8.985).abs() < 1e-12);
        let scaled = [[4.0, 0.5, 0.0], [0.0, -3.0, 0.1], [0.6, 0.0, 1.5]];
        assert!((det(&scaled) + 2.0 * 8.985).abs() < 1e-12);
        let affine = [
            [0.0, 0.0, -2.5, 1.0],
            [0.0, 0.8, 0.0, 2.0],
            [1.5, 0.0, 0.0, 3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert!((det(&linear_part(&affine)) - 3.0).abs() < 1e-12);
    }

    #[test]
    fn inverse_of_a_regular_matrix() {
        let m = [[2.0, 0.5, 0.0], [0.0, -3.0, 0.1], [0.3, 0.0, 1.5]];
        let inv = inverse(&m).unwrap();
        assert!(close(&mul(&m, &inv), &IDENTITY3, 1e-12));
        assert!(close(&mul(&inv, &m), &IDENTITY3, 1e-12));
        assert_eq!(inverse_transpose(&m).unwrap(), transpose(&inv));
        // the rule is scale-free: tiny voxels are not singular
        let tiny: Mat3 = std::array::from_fn(|r| std::array::from_fn(|c| m[r][c] * 1e-4));
        let inv = inverse(&tiny).unwrap();
        assert!(close(&mul(&tiny, &inv), &IDENTITY3, 1e-9));
    }

    #[test]
    fn singular_and_near_singular_matrices_have_no_inverse() {
        let dependent = [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.5, 0.1, 7.0]];
        assert!(is_singular(&dependent));
        assert!(inverse(&dependent).is_none());
        let zero_column = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]];
        assert!(inverse(&zero_column).is_none());
        let mut nan = IDENTITY3;
        nan[1][2] = f64::NAN;
        assert!(inverse(&nan).is_none());
        assert!(inverse(&[[f64::INFINITY, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).is_none());
        // just inside and just outside the tolerance (the ratio is eps / sqrt(1 + eps²))
        assert!(inverse(&sheared(0.5e-6)).is_none());
        assert!(polar_factor(&sheared(0.5e-6)).is_none());
        assert!(inverse(&sheared(2e-6)).is_some());
        // near-singular but accepted: the inverse is still accurate
        let m = sheared(1e-5);
        assert!(close(&mul(&m, &inverse(&m).unwrap()), &IDENTITY3, 1e-9));
        // a tiny absolute determinant is not singular when the axes are short
        assert!(!is_singular(&[
            [1e-5, 0.0, 0.0],
            [0.0, 1e-5, 0.0],
            [0.0, 0.0, 1e-5]
        ]));
    }

    #[test]
    fn polar_factor_is_orthogonal_and_nearest() {
        // a rotation times a symmetric positive definite stretch: the factor is the rotation
        let (s, c) = 0.7f64.sin_cos();
        let rot = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let stretch = [[1.2, 0.1, 0.0], [0.1, 0.9, 0.05], [0.0, 0.05, 1.1]];
        let q = polar_factor(&mul(&rot, &stretch)).unwrap();
        assert!(close(&q, &rot, 1e-12));
        assert!(close(&mul(&q, &transpose(&q)), &IDENTITY3, 1e-12));
        // a reflection stays a reflection
        let flip = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -2.0]];
        let q = polar_factor(&flip).unwrap();
        assert!(close(
            &q,
            &[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]],
            1e-15
        ));
        // badly conditioned yet valid input still converges
        let q = polar_factor(&sheared(2e-6)).unwrap();
        assert!(close(&mul(&q, &transpose(&q)), &IDENTITY3, 1e-9));
    }
}
