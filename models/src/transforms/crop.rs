//! The cropping transforms of the bundle's training pipeline (`docs/bundle.md` §5.2, §5.4):
//! `CropForegroundd(margin=10, k_divisible=96)`, `CenterSpatialCropd(160)` and the random
//! 96^3 corner of `RandSpatialCropd`. All work on channel-first `[C, X, Y, Z]` tensors.

use tch::Tensor;

/// A box `[start, end)` per spatial axis; `start` may be negative and `end` may exceed the
/// image, in which case cropping pads with zeros (MONAI's `mode="constant"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First voxel per axis (inclusive).
    pub start: [i64; 3],
    /// Last voxel per axis (exclusive).
    pub end: [i64; 3],
}

impl CropBox {
    /// Size of the box per axis.
    pub fn size(&self) -> [i64; 3] {
        [
            self.end[0] - self.start[0],
            self.end[1] - self.start[1],
            self.end[2] - self.start[2],
        ]
    }

    /// Cuts the box out of `img` (`[C, X, Y, Z]`), padding with zeros where it leaves the image.
    pub fn apply(&self, img: &Tensor) -> Tensor {
        let s = img.size();
        let shape = [s[1], s[2], s[3]];
        let mut out = img.shallow_clone();
        let mut pad = [0i64; 6];
        for d in 0..3 {
            let lo = self.start[d].clamp(0, shape[d]);
            let hi = self.end[d].clamp(lo, shape[d]);
            out = out.narrow((d + 1) as i64, lo, hi - lo);
            let before = (lo - self.start[d]).max(0);
            let after = (self.end[d] - hi).max(0);
            // torch's pad lists the last dimension first
            pad[2 * (2 - d)] = before;
            pad[2 * (2 - d) + 1] = after;
        }
        if pad.iter().any(|&p| p > 0) {
            out.constant_pad_nd(pad)
        } else {
            out.contiguous()
        }
    }
}

/// The foreground box of `img` (`[C, X, Y, Z]`, foreground = any channel `> 0`), widened by
/// `margin` and clipped to the image (`allow_smaller=True`), then grown to a multiple of `k`
/// per axis: `floor(extra / 2)` before and the rest after. `None` when nothing is foreground.
pub fn foreground_box(img: &Tensor, margin: i64, k: [i64; 3]) -> Option<CropBox> {
    let s = img.size();
    let shape = [s[1], s[2], s[3]];
    let fg = img.gt(0.0).any_dims(&[0i64][..], false);
    let mut start = [0i64; 3];
    let mut end = [0i64; 3];
    for d in 0..3 {
        let others: Vec<i64> = (0..3).filter(|&o| o != d as i64).collect();
        let along = fg.any_dims(&others[..], false);
        let idx = along.nonzero().view([-1]);
        let n = idx.size()[0];
        if n == 0 {
            return None;
        }
        let first = idx.int64_value(&[0]);
        let last = idx.int64_value(&[n - 1]);
        let lo = (first - margin).max(0);
        let hi = (last + margin + 1).min(shape[d]);
        let size = hi - lo;
        let kd = k[d];
        let want = if kd > 0 {
            (size + kd - 1) / kd * kd
        } else {
            size
        };
        let st = lo - (want - size) / 2;
        start[d] = st;
        end[d] = st + want;
    }
    Some(CropBox { start, end })
}

/// `CenterSpatialCrop(roi)`: axes longer than `roi` keep the `roi` voxels around `n / 2`;
/// shorter axes are left whole.
pub fn center_box(shape: [i64; 3], roi: [i64; 3]) -> CropBox {
    let mut start = [0i64; 3];
    let mut end = shape;
    for d in 0..3 {
        if shape[d] > roi[d] {
            start[d] = shape[d] / 2 - roi[d] / 2;
            end[d] = start[d] + roi[d];
        }
    }
    CropBox { start, end }
}

/// The box of a random `roi` crop with the corner `corner_draw(n - roi + 1)` per axis (the
/// caller supplies a uniform integer draw in `[0, bound)`); axes shorter than `roi` are
/// taken whole.
pub fn random_box(
    shape: [i64; 3],
    roi: [i64; 3],
    mut corner_draw: impl FnMut(i64) -> i64,
) -> CropBox {
    let mut start = [0i64; 3];
    let mut end = shape;
    for d in 0..3 {
        if shape[d] > roi[d] {
            start[d] = corner_draw(shape[d] - roi[d] + 1);
            end[d] = start[d] + roi[d];
        }
    }
    CropBox { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn foreground_box_is_widened_and_rounded_up() {
        let img = Tensor::zeros([1, 40, 30, 20], (Kind::Float, tch::Device::Cpu));
        let _ = img
            .narrow(1, 12, 5)
            .narrow(2, 3, 2)
            .narrow(3, 9, 1)
            .fill_(1.0);
        let b = foreground_box(&img, 2, [8, 8, 8]).unwrap();
        // x: fg 12..17, margin -> 10..19 (9), k 8 -> 16: start 10 - 3 = 7
        assert_eq!(b.start[0], 7);
        assert_eq!(b.size(), [16, 8, 8]);
        let c = b.apply(&img);
        assert_eq!(c.size(), vec![1, 16, 8, 8]);
        assert_eq!(c.sum(Kind::Float).double_value(&[]), 10.0);
    }

    #[test]
    fn crop_outside_pads_with_zeros() {
        let img = Tensor::ones([1, 4, 4, 4], (Kind::Float, tch::Device::Cpu));
        let b = CropBox {
            start: [-2, 0, 0],
            end: [6, 4, 4],
        };
        let c = b.apply(&img);
        assert_eq!(c.size(), vec![1, 8, 4, 4]);
        assert_eq!(c.sum(Kind::Float).double_value(&[]), 64.0);
        assert_eq!(c.double_value(&[0, 0, 0, 0]), 0.0);
    }

    #[test]
    fn center_box_keeps_short_axes() {
        let b = center_box([192, 96, 288], [160, 160, 160]);
        assert_eq!(b.start, [16, 0, 64]);
        assert_eq!(b.end, [176, 96, 224]);
    }

    #[test]
    fn no_foreground_is_none() {
        let img = Tensor::zeros([1, 4, 4, 4], (Kind::Float, tch::Device::Cpu));
        assert!(foreground_box(&img, 10, [96, 96, 96]).is_none());
    }
}
