//! The pieces of the energy: intensity mapping, intensity histograms, unary and pairwise terms.
//!
//! Arithmetic follows MONAI Label 0.8.5 + MONAI 1.4 + numpymaxflow 0.0.7 step by step (in `f32`
//! where they compute in `float32`), so that the same inputs give the same cut; see
//! `docs/scribbles.md` for the formulas.

use crate::{Error, Intensity, Result};

/// `f32::EPSILON`, numpy's `np.finfo(np.float32).eps` and C++'s
/// `std::numeric_limits<float>::epsilon()`: the floor of every probability.
pub(crate) const EPS: f32 = f32::EPSILON;

/// Maps raw intensities to `[0, 1]`: the optional window, then the histogram step's min–max
/// normalisation when a value is still outside `[0, 1]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scaler {
    window: Option<(f32, f32)>,
    minmax: Option<(f32, f32)>,
}

impl Scaler {
    /// Looks at the whole image once (non-finite values are an error).
    pub(crate) fn new(image: &[f32], intensity: Intensity) -> Result<Scaler> {
        let window = match intensity {
            Intensity::Window { a_min, a_max } => {
                if !(a_min.is_finite() && a_max.is_finite() && a_max > a_min) {
                    return Err(Error::Option(format!(
                        "intensity window {a_min}..{a_max} must be finite and increasing"
                    )));
                }
                Some((a_min, (a_max as f64 - a_min as f64) as f32))
            }
            Intensity::MinMax => None,
        };
        let mut s = Scaler {
            window,
            minmax: None,
        };
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for (i, &v) in image.iter().enumerate() {
            if !v.is_finite() {
                return Err(Error::Value {
                    what: "image intensity",
                    index: i,
                    value: v,
                });
            }
            let w = s.windowed(v);
            lo = lo.min(w);
            hi = hi.max(w);
        }
        if lo < 0.0 || hi > 1.0 {
            s.minmax = Some((lo, hi - lo));
        }
        Ok(s)
    }

    #[inline]
    fn windowed(&self, v: f32) -> f32 {
        match self.window {
            // ScaleIntensityRange: (v - a_min) / (a_max - a_min) * (1 - 0) + 0, clipped
            Some((a_min, range)) => ((v - a_min) / range).clamp(0.0, 1.0),
            None => v,
        }
    }

    /// The `[0, 1]` intensity of a raw value.
    #[inline]
    pub(crate) fn apply(&self, v: f32) -> f32 {
        let w = self.windowed(v);
        match self.minmax {
            Some((lo, range)) => (w - lo) / range,
            None => w,
        }
    }
}

/// Bin edges `k / num_bins` as numpy's `histogram(a, bins, range=(0, 1))` makes them for a
/// `float32` image: `linspace(0, 1, num_bins + 1)` (`k * (1 / num_bins)` in `f64`, last edge
/// exactly 1) cast to `f32`. MONAI Label's look-up (`digitize` with these edges) uses the same.
pub(crate) fn bin_edges(num_bins: usize) -> Vec<f32> {
    let step = 1.0 / num_bins as f64;
    let mut e: Vec<f32> = (0..=num_bins).map(|k| (k as f64 * step) as f32).collect();
    e[num_bins] = 1.0;
    e
}

/// Bin of a `[0, 1]` value: the last edge (of the first `num_bins`) at or below it, the last
/// bin closed, as numpy's `histogram` counts and `digitize(v, edges[:-1]) - 1` looks up.
#[inline]
pub(crate) fn bin_of(v: f32, edges: &[f32]) -> usize {
    let nb = edges.len() - 1;
    // a first guess, then exact comparisons against the f32 edges
    let mut k = ((v as f64 * nb as f64) as usize).min(nb - 1);
    while k > 0 && v < edges[k] {
        k -= 1;
    }
    while k + 1 < nb && v >= edges[k + 1] {
        k += 1;
    }
    k
}

/// Per-bin likelihoods `(p_bg, p_fg)` from the raw counts: `(count + 1) / (total + num_bins)`
/// (a Dirichlet prior of one pseudo-count per bin), then — unless every voxel's two values
/// already sum to 1 (`occupied` tells which bins occur in the image) — a softmax over the pair,
/// as MONAI Label's `_normalise_logits` does.
pub(crate) fn likelihood_table(bg: &[u64], fg: &[u64], occupied: &[bool]) -> Vec<(f32, f32)> {
    let nb = bg.len();
    let norm = |h: &[u64]| -> Vec<f32> {
        let total: f64 = h.iter().map(|&c| c as f64 + 1.0).sum();
        h.iter()
            .map(|&c| ((c as f64 + 1.0) / total) as f32)
            .collect()
    };
    let (b, f) = (norm(bg), norm(fg));
    let sums_to_one = (0..nb).filter(|&k| occupied[k]).all(|k| {
        let s = (b[k] + f[k]) as f64;
        (s - 1.0).abs() <= 1e-8 + 1e-5
    });
    (0..nb)
        .map(|k| {
            if sums_to_one {
                (b[k], f[k])
            } else {
                softmax2(b[k], f[k])
            }
        })
        .collect()
}

/// Softmax of a pair in `f32`, shifted by the maximum as scipy computes it.
pub(crate) fn softmax2(b: f32, f: f32) -> (f32, f32) {
    let m = b.max(f);
    let (eb, ef) = ((b - m).exp(), (f - m).exp());
    let s = eb + ef;
    (eb / s, ef / s)
}

/// Terminal capacities `(source, sink)` of a voxel with likelihoods `(p_bg, p_fg)`:
/// `(-ln max(p_bg, eps), -ln max(p_fg, eps))`. The source side is foreground.
#[inline]
pub(crate) fn unary(p_bg: f32, p_fg: f32) -> (f32, f32) {
    let nl = |p: f32| -((p.max(EPS) as f64).ln()) as f32;
    (nl(p_bg), nl(p_fg))
}

/// The contrast-sensitive pairwise weight `lamda * exp(-(a - b)^2 / (2 sigma^2))`, in `f32`
/// like numpymaxflow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pairwise {
    pub(crate) lamda: f32,
    /// `2 * sigma * sigma`.
    pub(crate) two_sigma2: f32,
    /// Per-axis factor (1, or `min(spacing) / spacing[axis]`).
    pub(crate) axis_factor: [f32; 3],
}

impl Pairwise {
    #[inline]
    pub(crate) fn weight(&self, a: f32, b: f32, axis: usize) -> f32 {
        let d = (a - b).abs();
        let e = ((-(d * d) / self.two_sigma2) as f64).exp() as f32;
        self.lamda * e * self.axis_factor[axis]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_match_numpy() {
        // (num_bins, f32 bits, the bin numpy 1.26's histogram and digitize give): values just
        // above an f32 edge where `floor(v * num_bins)` is one too low, found with numpy
        let cases: &[(usize, u32, usize)] = &[
            (6, 1062557013, 5),
            (10, 1060320051, 7),
            (10, 1063675494, 9),
            (12, 1054168405, 5),
            (12, 1058362709, 7),
            (12, 1062557013, 10),
            (50, 1017370378, 1),
            (50, 1025758986, 2),
            (50, 1031127695, 3),
            (50, 1034147594, 4),
            (50, 1039516303, 6),
            (50, 1042536202, 8),
        ];
        for &(nb, bits, k) in cases {
            let v = f32::from_bits(bits);
            assert_eq!(bin_of(v, &bin_edges(nb)), k, "{v} in {nb} bins");
        }
        let e = bin_edges(64);
        for &(v, k) in &[
            (0.0f32, 0usize),
            (1.0, 63),
            (0.5, 32),
            (0.499_999_97, 31),
            (1.0 / 64.0, 1),
        ] {
            assert_eq!(bin_of(v, &e), k, "{v}");
        }
    }

    #[test]
    fn softmax_of_equal_pair_is_half() {
        assert_eq!(softmax2(0.3, 0.3), (0.5, 0.5));
        let (b, f) = softmax2(0.01, 0.3);
        assert!(f > 0.5 && (b + f - 1.0).abs() < 1e-6);
    }
}
