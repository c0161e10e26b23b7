//! Window placement and the gaussian importance map of MONAI's sliding-window inference.

use tch::{Kind, Tensor};

/// Start offsets of the windows along one dimension of working size `n`
/// (`dense_patch_slices`): interval `int(roi * (1 - overlap))`, the last start clamped to
/// `n - roi`; a dimension no larger than the window gets one window at 0.
pub fn window_starts(n: i64, roi: i64, overlap: f64) -> Vec<i64> {
    if n <= roi {
        return vec![0];
    }
    let interval = if n == roi {
        roi
    } else {
        ((roi as f64) * (1.0 - overlap)) as i64
    }
    .max(1);
    let num = (n as f64 / interval as f64).ceil() as i64;
    let mut count = num;
    for d in 0..num {
        if d * interval + roi >= n {
            count = d + 1;
            break;
        }
    }
    (0..count).map(|d| (d * interval).min(n - roi)).collect()
}

/// All windows of a volume in MONAI's order: first spatial dimension slowest.
pub fn windows(size: [i64; 3], roi: [i64; 3], overlap: f64) -> Vec<[i64; 3]> {
    let s0 = window_starts(size[0], roi[0], overlap);
    let s1 = window_starts(size[1], roi[1], overlap);
    let s2 = window_starts(size[2], roi[2], overlap);
    let mut out = Vec::with_capacity(s0.len() * s1.len() * s2.len());
    for &a in &s0 {
        for &b in &s1 {
            for &c in &s2 {
                out.push([a, b, c]);
            }
        }
    }
    out
}

/// The gaussian importance map (`compute_importance_map`, mode gaussian): per axis
/// `exp(x^2 / (-2 sigma^2))` with `x = arange(-(n-1)/2, (n-1)/2 + 1)` and
/// `sigma = sigma_scale * n`, multiplied in float32 as `(g0 * g1) * g2`, then clamped to at
/// least `max(min(map), 1e-3)`. Shape `[roi0, roi1, roi2]`, float32, not normalised.
pub fn gaussian_importance_map(roi: [i64; 3], sigma_scale: f64) -> Tensor {
    let axis = |n: i64| {
        let start = -((n - 1) as f64) / 2.0;
        let end = (n - 1) as f64 / 2.0 + 1.0;
        let x = Tensor::arange_start_step(start, end, 1.0, (Kind::Float, tch::Device::Cpu));
        let sigma = sigma_scale * n as f64;
        (x.square() / (-2.0 * sigma * sigma)).exp()
    };
    let g0 = axis(roi[0]);
    let g1 = axis(roi[1]);
    let g2 = axis(roi[2]);
    let g = g0.unsqueeze(-1) * g1.unsqueeze(0);
    let g = g.unsqueeze(-1) * g2.view([1, 1, -1]);
    let floor = f64::try_from(g.min()).unwrap_or(0.0).max(1e-3);
    g.clamp_min(floor)
}

/// A uniform map (MONAI `mode="constant"`), used by validation during training.
pub fn constant_importance_map(roi: [i64; 3]) -> Tensor {
    Tensor::ones(roi, (Kind::Float, tch::Device::Cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_match_monai_examples() {
        assert_eq!(window_starts(96, 96, 0.25), vec![0]);
        assert_eq!(window_starts(60, 96, 0.25), vec![0]);
        assert_eq!(window_starts(97, 96, 0.25), vec![0, 1]);
        assert_eq!(window_starts(120, 96, 0.25), vec![0, 24]);
        assert_eq!(window_starts(168, 96, 0.25), vec![0, 72]);
        assert_eq!(window_starts(169, 96, 0.25), vec![0, 72, 73]);
        assert_eq!(window_starts(287, 96, 0.25), vec![0, 72, 144, 191]);
        assert_eq!(
            window_starts(397, 96, 0.25),
            vec![0, 72, 144, 216, 288, 301]
        );
    }

    #[test]
    fn importance_map_has_the_bundle_extremes() {
        let m = gaussian_importance_map([96, 96, 96], 0.125);
        let max = f64::try_from(m.max()).unwrap();
        let min = f64::try_from(m.min()).unwrap();
        assert!((max - 0.997399271).abs() < 1e-8, "max {max}");
        assert!((min - 1e-3).abs() < 1e-9, "min {min}");
        let frac = f64::try_from(m.eq(min).to_kind(Kind::Float).mean(Kind::Float)).unwrap();
        assert!((frac - 0.5797).abs() < 1e-3, "clamped fraction {frac}");
    }
}
