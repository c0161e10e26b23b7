//! The quantitative report that comes with every segmentation: per structure present, its
//! voxel count, volume in ml, the mean and standard deviation of the input intensity (HU for
//! CT) inside it, and whether the mask touches the image border (the structure may go on
//! beyond the scan, so its volume is a lower bound).
//!
//! Everything is computed in the input image's grid (after the inversion), in one pass over
//! the label map and the image: per label value a count, a sum and a sum of squares in `f64`,
//! and a border flag. The standard deviation is the population one (`ddof = 0`, numpy's
//! default); the volume is `count * |det(A)| / 1000` with `A` the 3x3 part of the affine.
//!
//! JSON shape (the `report` key of the infer params):
//!
//! ```json
//! {"voxel_volume_ml": 0.003375,
//!  "structures": {"liver": {"label": 5, "voxels": 412345, "volume_ml": 1391.66,
//!                           "mean_hu": 57.3, "std_hu": 21.4, "touches_border": false}}}
//! ```

use ferrolabel_imaging::Volume;
use serde_json::{json, Map, Value};

use crate::error::{AppError, Result};

/// Statistics of one label value.
#[derive(Debug, Clone, PartialEq)]
pub struct StructureStats {
    /// The label value.
    pub label: u8,
    /// Voxels with that value.
    pub voxels: u64,
    /// Their volume in millilitres.
    pub volume_ml: f64,
    /// Mean input intensity inside the mask.
    pub mean: f64,
    /// Population standard deviation of the input intensity inside the mask.
    pub std: f64,
    /// Whether a voxel of the mask lies on a face of the grid.
    pub touches_border: bool,
}

/// The report of one label map.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Volume of one voxel in millilitres.
    pub voxel_volume_ml: f64,
    /// One entry per label value present (background excluded), by value.
    pub structures: Vec<StructureStats>,
}

/// Volume of one voxel of `vol`, in millilitres.
pub fn voxel_volume_ml(vol: &Volume) -> f64 {
    let det = ferrolabel_imaging::mat3::det(&ferrolabel_imaging::mat3::linear_part(&vol.affine));
    det.abs() / 1000.0
}

/// Computes the report of `labels` (NIfTI order, on `image`'s grid) over `image`'s intensities.
pub fn compute(labels: &[u8], image: &Volume) -> Result<Report> {
    let [nx, ny, nz] = image.dims;
    if labels.len() != image.data.len() || nx == 0 || ny == 0 || nz == 0 {
        return Err(AppError::InvalidParams(format!(
            "the label map has {} voxels but the image grid {nx} x {ny} x {nz} has {}",
            labels.len(),
            image.data.len()
        )));
    }
    let mut count = [0u64; 256];
    let mut sum = [0f64; 256];
    let mut sumsq = [0f64; 256];
    let mut border = [false; 256];
    for k in 0..nz {
        for j in 0..ny {
            let start = nx * (j + ny * k);
            let lrow = &labels[start..start + nx];
            let drow = &image.data[start..start + nx];
            // runs of one label: sums kept in registers, flushed once per run
            let mut i = 0;
            while i < nx {
                let l = lrow[i];
                let mut end = i + 1;
                while end < nx && lrow[end] == l {
                    end += 1;
                }
                if l != 0 {
                    let (s, q) = run_sums(&drow[i..end]);
                    let l = l as usize;
                    count[l] += (end - i) as u64;
                    sum[l] += s;
                    sumsq[l] += q;
                }
                i = end;
            }
            if j == 0 || k == 0 || j == ny - 1 || k == nz - 1 {
                for &l in lrow {
                    border[l as usize] = true;
                }
            } else {
                border[lrow[0] as usize] = true;
                border[lrow[nx - 1] as usize] = true;
            }
        }
    }
    let voxel_ml = voxel_volume_ml(image);
    let structures = (1..256)
        .filter(|&l| count[l] > 0)
        .map(|l| {
            let n = count[l] as f64;
            let mean = sum[l] / n;
            let var = (sumsq[l] / n - mean * mean).max(0.0);
            StructureStats {
                label: l as u8,
                voxels: count[l],
                volume_ml: n * voxel_ml,
                mean,
                std: var.sqrt(),
                touches_border: border[l],
            }
        })
        .collect();
    Ok(Report {
        voxel_volume_ml: voxel_ml,
        structures,
    })
}

/// Sum and sum of squares of a run, in `f64`, with four independent accumulators.
fn run_sums(values: &[f32]) -> (f64, f64) {
    let mut s = [0f64; 4];
    let mut q = [0f64; 4];
    let chunks = values.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..4 {
            let v = c[k] as f64;
            s[k] += v;
            q[k] += v * v;
        }
    }
    for &v in rest {
        let v = v as f64;
        s[0] += v;
        q[0] += v * v;
    }
    ((s[0] + s[1]) + (s[2] + s[3]), (q[0] + q[1]) + (q[2] + q[3]))
}

/// A finite number as JSON (non-finite values, impossible for finite input, become `null`).
fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

impl Report {
    /// The report as JSON; `name` gives a structure's name from its label value.
    pub fn to_json(&self, name: impl Fn(u8) -> String) -> Value {
        let mut structures = Map::new();
        for s in &self.structures {
            structures.insert(
                name(s.label),
                json!({
                    "label": s.label,
                    "voxels": s.voxels,
                    "volume_ml": num(s.volume_ml),
                    "mean_hu": num(s.mean),
                    "std_hu": num(s.std),
                    "touches_border": s.touches_border,
                }),
            );
        }
        json!({
            "voxel_volume_ml": num(self.voxel_volume_ml),
            "structures": structures,
        })
    }
}

/// Turns a decoded label volume into label bytes: every value must be an integer in 0..=255.
pub fn label_bytes(label: &Volume) -> Result<Vec<u8>> {
    label
        .data
        .iter()
        .map(|&v| {
            if v.fract() == 0.0 && (0.0..=255.0).contains(&v) {
                Ok(v as u8)
            } else {
                Err(AppError::InvalidParams(format!(
                    "the label holds the value {v}; labels must be integers 0..=255"
                )))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(dims: [usize; 3], data: Vec<f32>, spacing: f64) -> Volume {
        let mut a = ferrolabel_imaging::affine::IDENTITY;
        for i in 0..3 {
            a[i][i] = spacing;
        }
        Volume::new(dims, data, a).unwrap()
    }

    #[test]
    fn stats_of_a_small_grid() {
        // 4 x 3 x 3 grid; label 1 is one interior voxel, label 2 two voxels on the border
        let dims = [4, 3, 3];
        let n = 36;
        let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut labels = vec![0u8; n];
        let idx = |i: usize, j: usize, k: usize| i + 4 * (j + 3 * k);
        labels[idx(1, 1, 1)] = 1;
        labels[idx(0, 1, 1)] = 2;
        labels[idx(3, 2, 2)] = 2;
        let r = compute(&labels, &vol(dims, data, 2.0)).unwrap();
        assert_eq!(r.voxel_volume_ml, 0.008);
        assert_eq!(r.structures.len(), 2);
        let s1 = &r.structures[0];
        assert_eq!((s1.label, s1.voxels, s1.touches_border), (1, 1, false));
        assert_eq!(s1.mean, idx(1, 1, 1) as f64);
        assert_eq!(s1.std, 0.0);
        let s2 = &r.structures[1];
        let (a, b) = (idx(0, 1, 1) as f64, idx(3, 2, 2) as f64);
        assert_eq!((s2.voxels, s2.touches_border), (2, true));
        assert!((s2.mean - (a + b) / 2.0).abs() < 1e-12);
        assert!((s2.std - (b - a) / 2.0).abs() < 1e-12);
        assert!((s2.volume_ml - 0.016).abs() < 1e-15);
        let j = r.to_json(|l| format!("label_{l}"));
        assert_eq!(j["structures"]["label_2"]["voxels"], 2);
        assert_eq!(j["structures"]["label_1"]["touches_border"], false);
    }

    #[test]
    fn matches_a_naive_count() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(3);
        let dims = [37, 11, 9];
        let n = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.gen_range(-1000.0..1500.0)).collect();
        // runs of random length and label, so that run sums and remainders are exercised
        let mut labels = Vec::with_capacity(n);
        while labels.len() < n {
            let (l, len) = (rng.gen_range(0..5u8), rng.gen_range(1..15));
            labels.extend(std::iter::repeat_n(l, len.min(n - labels.len())));
        }
        let r = compute(&labels, &vol(dims, data.clone(), 1.5)).unwrap();
        for s in &r.structures {
            let vals: Vec<f64> = (0..n)
                .filter(|&i| labels[i] == s.label)
                .map(|i| data[i] as f64)
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            assert_eq!(s.voxels, vals.len() as u64);
            assert!((s.mean - mean).abs() < 1e-9, "{} vs {mean}", s.mean);
            assert!(
                (s.std - var.sqrt()).abs() < 1e-6,
                "{} vs {}",
                s.std,
                var.sqrt()
            );
        }
        assert_eq!(r.structures.len(), 4);
    }

    #[test]
    fn rejects_mismatched_grids_and_values() {
        let v = vol([2, 2, 2], vec![0.0; 8], 1.0);
        assert!(compute(&[0u8; 7], &v).is_err());
        let bad = vol([2, 2, 2], vec![0.5; 8], 1.0);
        assert!(label_bytes(&bad).is_err());
        assert_eq!(label_bytes(&v).unwrap(), vec![0u8; 8]);
    }
}
