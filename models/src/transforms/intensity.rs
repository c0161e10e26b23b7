//! Intensity transforms of the bundle: `NormalizeIntensityd(nonzero=True)` and
//! `ScaleIntensityd(minv=-1, maxv=1)`, with the same torch reductions MONAI uses so the
//! results are bit-identical.

use tch::{Kind, Tensor};

/// Z-score normalisation over the voxels that are exactly non-zero; zeros stay zero.
///
/// Mean and population standard deviation are float32 reductions read back as f64
/// (MONAI's `.item()`); a zero std is replaced by 1. An all-zero image is returned as is.
pub fn normalize_nonzero(img: &Tensor) -> Tensor {
    let mask = img.ne(0.0);
    let values = img.masked_select(&mask);
    if values.numel() == 0 {
        return img.shallow_clone();
    }
    let mean = f64::try_from(values.mean(Kind::Float)).unwrap_or(0.0);
    let mut std = f64::try_from(values.std(false)).unwrap_or(1.0);
    if std == 0.0 {
        std = 1.0;
    }
    let normed = (img - mean) / std;
    normed.where_self(&mask, img)
}

/// Min-max scaling of the whole volume to [-1, 1]: `((x - mn) / (mx - mn)) * 2 + (-1)`.
/// A constant image becomes `x * -1`, as in MONAI's `rescale_array`.
pub fn scale_to_unit_range(img: &Tensor) -> Tensor {
    let mn = img.min();
    let mx = img.max();
    let equal = bool::try_from(mn.eq_tensor(&mx)).unwrap_or(false);
    if equal {
        return img * -1.0;
    }
    let norm = (img - &mn) / (&mx - &mn);
    norm * 2.0 + (-1.0)
}
