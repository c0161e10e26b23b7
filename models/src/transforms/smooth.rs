//! `GaussianSmoothd(sigma)` of the bundle's training pipeline: a separable, truncated
//! (4 sigma), not renormalised "erf" Gaussian, applied along x, then y, then z with zero
//! padding, as MONAI's `GaussianFilter` does.

use tch::{Device, Kind, Tensor};

/// The 1-D kernel: taps `0.5 * (erf((t + 0.5) / (sigma sqrt 2)) - erf((t - 0.5) / (sigma sqrt 2)))`
/// for `t` in `[-tail, tail]`, `tail = int(max(4 sigma, 0.5) + 0.5)`, in float32.
pub fn gaussian_kernel(sigma: f64) -> Tensor {
    let tail = ((sigma * 4.0).max(0.5) + 0.5) as i64;
    let x = Tensor::arange_start(-tail, tail + 1, (Kind::Float, Device::Cpu));
    let t = std::f64::consts::FRAC_1_SQRT_2 / sigma.abs();
    let hi = ((&x + 0.5) * t).erf();
    let lo = ((&x - 0.5) * t).erf();
    ((hi - lo) * 0.5).clamp_min(0.0)
}

/// Smooths a `[C, X, Y, Z]` float tensor channel by channel.
pub fn gaussian_smooth(img: &Tensor, sigma: f64) -> Tensor {
    let k = gaussian_kernel(sigma).to_device(img.device());
    let n = k.size()[0];
    let tail = n / 2;
    let c = img.size()[0];
    let mut x = img.unsqueeze(0);
    for d in 0..3usize {
        let mut shape = [1i64, 1, 1, 1, 1];
        shape[d + 2] = n;
        let w = k.view(&shape[..]).repeat([c, 1, 1, 1, 1]);
        let mut pad = [0i64; 3];
        pad[d] = tail;
        x = x.conv3d(&w, None::<Tensor>, [1, 1, 1], pad, [1, 1, 1], c);
    }
    x.squeeze_dim(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_matches_the_bundle_taps() {
        let k = gaussian_kernel(0.4);
        let want = [
            8.84234905e-05,
            0.105561346,
            0.788700461,
            0.105561346,
            8.84234905e-05,
        ];
        assert_eq!(k.size(), vec![5]);
        for (i, w) in want.iter().enumerate() {
            assert!((k.double_value(&[i as i64]) - w).abs() < 1e-7);
        }
    }

    #[test]
    fn impulse_spreads_separably() {
        let img = Tensor::zeros([1, 7, 7, 7], (Kind::Float, Device::Cpu));
        let _ = img.get(0).get(3).get(3).get(3).fill_(1.0);
        let out = gaussian_smooth(&img, 0.4);
        let c = 0.788700461f64;
        assert!((out.double_value(&[0, 3, 3, 3]) - c * c * c).abs() < 1e-6);
        assert!((out.double_value(&[0, 2, 3, 3]) - 0.105561346 * c * c).abs() < 1e-6);
    }
}
