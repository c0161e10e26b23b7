//! Slice stacking: orientation checks, sorting along the slice normal, spacing and shear
//! checks, and the LPS → RAS voxel-to-world affine.

use ferrolabel_imaging::Affine;

use crate::error::{DicomError, Result};

/// Tolerances of the geometry checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeometryTolerance {
    /// Largest difference between two slices' direction cosines (and the deviation from unit
    /// length and orthogonality of one slice's).
    pub orientation: f64,
    /// Largest relative deviation of one gap between neighbouring slices from the mean gap
    /// (0.05 = 5 %); beyond it a slice is taken as missing or the series as mixed.
    pub spacing: f64,
    /// Largest in-plane offset of a slice from the line through the first slice along the
    /// normal, in mm plus this fraction of the distance along the normal (gantry tilt moves
    /// slices sideways by `tan(tilt)` per mm).
    pub shear: f64,
}

impl Default for GeometryTolerance {
    fn default() -> Self {
        GeometryTolerance {
            orientation: 1e-4,
            spacing: 0.05,
            shear: 1e-3,
        }
    }
}

/// A 3-vector.
pub type Vec3 = [f64; 3];

pub(crate) fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn sub(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn norm(a: Vec3) -> f64 {
    dot(a, a).sqrt()
}

/// Row direction, column direction and their normal (row × column) of an
/// ImageOrientationPatient, after checking the two directions are unit and orthogonal.
pub(crate) fn frame_axes(iop: &[f64; 6], tol: f64, file: &str) -> Result<[Vec3; 3]> {
    let row = [iop[0], iop[1], iop[2]];
    let col = [iop[3], iop[4], iop[5]];
    // direction cosines are often stored with 6 decimals: allow a little slack
    let slack = tol.max(1e-4) * 10.0;
    if (norm(row) - 1.0).abs() > slack
        || (norm(col) - 1.0).abs() > slack
        || dot(row, col).abs() > slack
    {
        return Err(DicomError::Sheared(format!(
            "{file}: ImageOrientationPatient {iop:?} is not two orthogonal unit vectors"
        )));
    }
    let (nr, nc) = (norm(row), norm(col));
    let row = [row[0] / nr, row[1] / nr, row[2] / nr];
    let col = [col[0] / nc, col[1] / nc, col[2] / nc];
    let n = cross(row, col);
    let nn = norm(n);
    Ok([row, col, [n[0] / nn, n[1] / nn, n[2] / nn]])
}

/// The stacking of sorted slices: the order and the spacing between slices.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stack {
    /// Indices into the input positions, sorted by distance along the normal (ascending).
    pub order: Vec<usize>,
    /// Distance between neighbouring slices (mean), mm; `None` for a single slice.
    pub spacing: Option<f64>,
}

/// Sorts slice positions along `normal` and checks the stack: no two slices at one position,
/// even gaps (within `tol.spacing`), and every slice on the line through the first one along
/// the normal (within `tol.shear`). `names` name the slices in messages.
pub(crate) fn stack(
    positions: &[Vec3],
    normal: Vec3,
    names: &[String],
    tol: &GeometryTolerance,
) -> Result<Stack> {
    let mut order: Vec<usize> = (0..positions.len()).collect();
    let dist: Vec<f64> = positions.iter().map(|p| dot(*p, normal)).collect();
    order.sort_by(|&a, &b| dist[a].total_cmp(&dist[b]));
    if order.len() < 2 {
        return Ok(Stack {
            order,
            spacing: None,
        });
    }
    let first = order[0];
    let last = order[order.len() - 1];
    let mean = (dist[last] - dist[first]) / (order.len() - 1) as f64;
    for w in order.windows(2) {
        let gap = dist[w[1]] - dist[w[0]];
        if gap <= 1e-3 + mean * 1e-3 {
            return Err(DicomError::DuplicateSlice(format!(
                "{} and {} are both at {:.4} mm along the slice normal",
                names[w[0]], names[w[1]], dist[w[0]]
            )));
        }
    }
    for w in order.windows(2) {
        let gap = dist[w[1]] - dist[w[0]];
        if (gap - mean).abs() > tol.spacing * mean {
            return Err(DicomError::UnevenSpacing(format!(
                "{:.4} mm between {} and {}, but {:.4} mm on average over {} slices",
                gap,
                names[w[0]],
                names[w[1]],
                mean,
                order.len()
            )));
        }
    }
    let origin = positions[first];
    for &i in &order[1..] {
        let d = sub(positions[i], origin);
        let along = dot(d, normal);
        let side = norm(sub(
            d,
            [along * normal[0], along * normal[1], along * normal[2]],
        ));
        if side > 0.01 + tol.shear * along.abs() {
            let angle = side.atan2(along.abs()).to_degrees();
            return Err(DicomError::Sheared(format!(
                "{} lies {:.3} mm off the slice normal through {} ({:.2}° tilt)",
                names[i], side, names[first], angle
            )));
        }
    }
    Ok(Stack {
        order,
        spacing: Some(mean),
    })
}

/// The voxel → world affine, RAS+ as the imaging crate's NIfTI affines: voxel `(i, j, k)` is
/// column `i`, row `j` of sorted slice `k`. DICOM's patient space is LPS, so the first two
/// rows of the LPS affine are negated.
pub(crate) fn ras_affine(
    axes: &[Vec3; 3],
    pixel_spacing: [f64; 2],
    slice_spacing: f64,
    origin: Vec3,
) -> Affine {
    let [row, col, normal] = *axes;
    // PixelSpacing is (between rows, between columns): i walks along a row
    let steps = [pixel_spacing[1], pixel_spacing[0], slice_spacing];
    let dirs = [row, col, normal];
    let mut a = ferrolabel_imaging::affine::IDENTITY;
    for r in 0..3 {
        let flip = if r < 2 { -1.0 } else { 1.0 };
        for c in 0..3 {
            a[r][c] = flip * dirs[c][r] * steps[c];
        }
        a[r][3] = flip * origin[r];
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    #[test]
    fn sorts_and_measures() {
        let pos = vec![[0.0, 0.0, 5.0], [0.0, 0.0, 1.0], [0.0, 0.0, 3.0]];
        let s = stack(
            &pos,
            [0.0, 0.0, 1.0],
            &names(3),
            &GeometryTolerance::default(),
        )
        .unwrap();
        assert_eq!(s.order, vec![1, 2, 0]);
        assert_eq!(s.spacing, Some(2.0));
    }

    #[test]
    fn refuses_duplicates_gaps_and_tilt() {
        let tol = GeometryTolerance::default();
        let n = [0.0, 0.0, 1.0];
        let dup = vec![[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]];
        assert!(matches!(
            stack(&dup, n, &names(3), &tol),
            Err(DicomError::DuplicateSlice(_))
        ));
        let gap = vec![
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, 3.0],
            [0.0, 0.0, 4.0],
        ];
        assert!(matches!(
            stack(&gap, n, &names(4), &tol),
            Err(DicomError::UnevenSpacing(_))
        ));
        let tilt = vec![[0.0, 0.0, 0.0], [0.0, 0.2, 1.0], [0.0, 0.4, 2.0]];
        assert!(matches!(
            stack(&tilt, n, &names(3), &tol),
            Err(DicomError::Sheared(_))
        ));
    }

    #[test]
    fn affine_is_ras() {
        let axes = frame_axes(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 1e-4, "f").unwrap();
        let a = ras_affine(&axes, [0.5, 0.7], 2.0, [10.0, 20.0, 30.0]);
        assert_eq!(a[0], [-0.7, 0.0, 0.0, -10.0]);
        assert_eq!(a[1], [0.0, -0.5, 0.0, -20.0]);
        assert_eq!(a[2], [0.0, 0.0, 2.0, 30.0]);
    }
}
