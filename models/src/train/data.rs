//! Training data: the deterministic part of the bundle's training transforms for one
//! image/label pair (`docs/bundle.md` §5.2), the validation crop, the random crop, and a
//! bounded cache of prepared pairs (no whole-dataset cache: MONAI's `CacheDataset` needed
//! 83 GB for 1,000 CTs).

use crate::error::{ModelsError, Result};
use crate::pipeline::{orient_and_resample, volume_tensor};
use crate::transforms::crop::{center_box, foreground_box, random_box};
use crate::transforms::{intensity, smooth, spacing};
use ferrolabel_imaging::{read_volume, Grid, Limits};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use tch::{Kind, Tensor};

/// One training example: an image and its label map on the same grid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pair {
    /// Image id (for messages).
    pub id: String,
    /// The image file (NIfTI or NRRD).
    pub image: PathBuf,
    /// The label file: values `0..classes` in the bundle's channel order.
    pub label: PathBuf,
}

/// The deterministic preprocessing settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareOptions {
    /// Target spacing in mm.
    pub pixdim: [f64; 3],
    /// Foreground crop margin in voxels (10).
    pub margin: i64,
    /// Foreground crop sizes are rounded up to multiples of this (96).
    pub k_divisible: i64,
    /// Gaussian smoothing sigma in voxels (0.4).
    pub sigma: f64,
    /// Number of classes (label values must be below it).
    pub classes: i64,
}

/// A prepared pair: channel-first `[1, X, Y, Z]` image (float32, scaled to [-1, 1]) and label
/// (uint8) on the CPU.
#[derive(Debug)]
pub struct Sample {
    /// The image.
    pub image: Tensor,
    /// The label map.
    pub label: Tensor,
}

impl Sample {
    /// Spatial shape.
    pub fn shape(&self) -> [i64; 3] {
        let s = self.image.size();
        [s[1], s[2], s[3]]
    }

    /// A random `roi` crop as an `([1, 1, ...] float, [1, ...] int64)` batch of one.
    pub fn random_crop(&self, roi: [i64; 3], draw: impl FnMut(i64) -> i64) -> (Tensor, Tensor) {
        let b = random_box(self.shape(), roi, draw);
        let x = b.apply(&self.image).unsqueeze(0);
        let y = b.apply(&self.label).to_kind(Kind::Int64);
        (x, y)
    }

    /// The validation view: `CenterSpatialCrop(roi)` of both.
    pub fn center_crop(&self, roi: [i64; 3]) -> Sample {
        let b = center_box(self.shape(), roi);
        Sample {
            image: b.apply(&self.image),
            label: b.apply(&self.label),
        }
    }
}

/// Loads and prepares one pair: orientation to RAS, spacing (bilinear image, nearest label),
/// normalise non-zero, crop foreground (margin, k-divisible, zero padding), Gaussian smooth,
/// scale to [-1, 1].
pub fn prepare(pair: &Pair, opts: &PrepareOptions, limits: &Limits) -> Result<Sample> {
    let bad = |what: String| ModelsError::Invalid(format!("training pair {:?}: {what}", pair.id));
    let img = read_volume(&pair.image, limits)?;
    let lbl = read_volume(&pair.label, limits)?;
    if img.has_non_finite() {
        return Err(bad("the image contains NaN or infinite values".into()));
    }
    if img.dims != lbl.dims {
        return Err(bad(format!(
            "label dims {:?} differ from image dims {:?}",
            lbl.dims, img.dims
        )));
    }
    // the dims agree: what is left of the grid check is the affine, with the tolerance every
    // label-storing route uses
    if !Grid::of(&img).matches(&Grid::of(&lbl)) {
        return Err(bad("label geometry (affine) differs from the image".into()));
    }
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in &lbl.data {
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(bad(format!("label value {v} is not a class index")));
        }
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo < 0.0 || hi >= opts.classes as f32 {
        return Err(bad(format!(
            "label values span {lo}..{hi}, outside 0..{}",
            opts.classes - 1
        )));
    }
    let prepared = orient_and_resample(&img, opts.pixdim)?;
    let label = prepared.orientation.apply(&volume_tensor(&lbl));
    let label = prepared.spacing.apply(&label, spacing::Interp::Nearest);
    drop((img, lbl));
    let image = intensity::normalize_nonzero(&prepared.image);
    let k = [opts.k_divisible; 3];
    let b = foreground_box(&image, opts.margin, k)
        .ok_or_else(|| bad("the image has no foreground above its mean".into()))?;
    let image = b.apply(&image);
    let label = b.apply(&label).round().to_kind(Kind::Uint8);
    let image = smooth::gaussian_smooth(&image, opts.sigma);
    let image = intensity::scale_to_unit_range(&image);
    Ok(Sample { image, label })
}

/// A least-recently-used cache of prepared samples holding at most `capacity` of them;
/// capacity 0 prepares every pair on every use.
#[derive(Debug)]
pub struct SampleCache {
    capacity: usize,
    entries: VecDeque<(usize, Rc<Sample>)>,
}

impl SampleCache {
    /// An empty cache.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: VecDeque::new(),
        }
    }

    /// The prepared sample `index`, from the cache or made by `make`.
    pub fn get(
        &mut self,
        index: usize,
        make: impl FnOnce() -> Result<Sample>,
    ) -> Result<Rc<Sample>> {
        if let Some(pos) = self.entries.iter().position(|(i, _)| *i == index) {
            let e = self.entries.remove(pos).expect("position is in range");
            let s = e.1.clone();
            self.entries.push_back(e);
            return Ok(s);
        }
        let s = Rc::new(make()?);
        if self.capacity > 0 {
            if self.entries.len() >= self.capacity {
                self.entries.pop_front();
            }
            self.entries.push_back((index, s.clone()));
        }
        Ok(s)
    }

    /// Number of cached samples.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
