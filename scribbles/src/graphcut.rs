//! The two scribble graph cuts: histogram likelihoods (MONAI Label's `Histogram+GraphCut`) and
//! model probabilities.

use crate::energy::{bin_edges, bin_of, likelihood_table, unary, Pairwise, Scaler, EPS};
use crate::maxflow::{maxflow_grid, GridCapacities};
use crate::{Error, GraphCutOptions, Grid3, HistogramOptions, Result, Roi, RoiLabels, Seeds};

/// Half the side of the foreground cube MONAI Label puts at the ROI centre when there are no
/// foreground scribbles.
const CENTRE_CUBE_HALF: usize = 5;

/// A scribble class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    None,
    Background,
    Foreground,
}

/// What the voxels outside the ROI are, for the pairwise edges that cross its border.
enum Outside<'a> {
    /// All background (MONAI Label turns everything outside the ROI into background scribbles).
    Background,
    /// The given mask (non-zero = foreground), one value per grid voxel.
    Mask(&'a [u8]),
    /// No edges across the border.
    Free,
}

fn check_options(o: &GraphCutOptions) -> Result<()> {
    if !(o.lamda.is_finite() && o.lamda >= 0.0) {
        return Err(Error::Option(format!(
            "lamda {} must be finite and >= 0",
            o.lamda
        )));
    }
    if !(o.sigma.is_finite() && o.sigma > 0.0) {
        return Err(Error::Option(format!(
            "sigma {} must be finite and > 0",
            o.sigma
        )));
    }
    if !(0.0..=1.0).contains(&o.histogram_weight) {
        return Err(Error::Option(format!(
            "histogram_weight {} must be in [0, 1]",
            o.histogram_weight
        )));
    }
    if o.scribbles.foreground == o.scribbles.background {
        return Err(Error::Option(format!(
            "foreground and background scribble values are both {}",
            o.scribbles.foreground
        )));
    }
    Ok(())
}

fn pairwise(grid: &Grid3, o: &GraphCutOptions) -> Pairwise {
    let min = grid.spacing.iter().cloned().fold(f64::INFINITY, f64::min);
    let axis_factor = if o.spacing_weighted {
        [0, 1, 2].map(|a| (min / grid.spacing[a]) as f32)
    } else {
        [1.0; 3]
    };
    Pairwise {
        lamda: o.lamda,
        two_sigma2: 2.0 * o.sigma * o.sigma,
        axis_factor,
    }
}

/// Iterates the grid indices of a box's voxels, x fastest.
fn roi_indices<'g>(grid: &'g Grid3, roi: &Roi) -> impl Iterator<Item = usize> + 'g {
    let r = *roi;
    (r.start[2]..r.end[2]).flat_map(move |z| {
        (r.start[1]..r.end[1])
            .flat_map(move |y| (r.start[0]..r.end[0]).map(move |x| grid.index(x, y, z)))
    })
}

fn class_of(v: u8, o: &GraphCutOptions) -> Class {
    if v == o.scribbles.foreground {
        Class::Foreground
    } else if v == o.scribbles.background {
        Class::Background
    } else {
        Class::None
    }
}

/// [`Error::NoScribbles`] when the volume holds neither scribble value anywhere.
fn check_not_empty(scribbles: &[u8], o: &GraphCutOptions) -> Result<()> {
    let (f, b) = (o.scribbles.foreground, o.scribbles.background);
    if scribbles.iter().any(|&v| v == f || v == b) {
        return Ok(());
    }
    Err(Error::NoScribbles {
        foreground: f,
        background: b,
    })
}

/// Capacities `(source, sink)` of a scribbled voxel.
fn seed_caps(class: Class, seeds: Seeds) -> (f32, f32) {
    match (class, seeds) {
        (Class::Foreground, Seeds::Hard) => (f32::INFINITY, 0.0),
        (Class::Background, Seeds::Hard) => (0.0, f32::INFINITY),
        // Equation 7: the likelihoods become (eps, 1 - eps) / (1 - eps, eps)
        (Class::Foreground, Seeds::Soft) => unary(EPS, 1.0 - EPS),
        (Class::Background, Seeds::Soft) => unary(1.0 - EPS, EPS),
        (Class::None, _) => unreachable!("only scribbled voxels are seeds"),
    }
}

/// Builds the graph of the box and cuts it. `caps` holds `(source, sink)` per box voxel.
fn cut_box(
    grid: &Grid3,
    roi: &Roi,
    image: &[f32],
    scaler: &Scaler,
    mut caps: Vec<(f32, f32)>,
    outside: Outside<'_>,
    pw: &Pairwise,
) -> Result<RoiLabels> {
    let rd = roi.dims();
    let sub = Grid3 {
        dims: rd,
        spacing: grid.spacing,
    };
    let inten: Vec<f32> = roi_indices(grid, roi)
        .map(|g| scaler.apply(image[g]))
        .collect();
    let m = inten.len();
    let rstep = [1usize, rd[0], rd[0] * rd[1]];
    let gstep = [1usize, grid.dims[0], grid.dims[0] * grid.dims[1]];
    let mut edges = [vec![0f32; m], vec![0f32; m], vec![0f32; m]];
    let mut i = 0usize;
    for z in 0..rd[2] {
        for y in 0..rd[1] {
            for x in 0..rd[0] {
                let c = [x, y, z];
                let gc = [x + roi.start[0], y + roi.start[1], z + roi.start[2]];
                let g = grid.index(gc[0], gc[1], gc[2]);
                for a in 0..3 {
                    if c[a] + 1 < rd[a] {
                        edges[a][i] = pw.weight(inten[i], inten[i + rstep[a]], a);
                    }
                    // edges leaving the box: the outside voxel's class is fixed
                    let mask = match outside {
                        Outside::Free => continue,
                        Outside::Background => None,
                        Outside::Mask(m) => Some(m),
                    };
                    let below = (c[a] == 0 && gc[a] > 0).then(|| g - gstep[a]);
                    let above =
                        (c[a] + 1 == rd[a] && gc[a] + 1 < grid.dims[a]).then(|| g + gstep[a]);
                    for q in below.into_iter().chain(above) {
                        let w = pw.weight(inten[i], scaler.apply(image[q]), a);
                        let q_fg = mask.is_some_and(|m| m[q] != 0);
                        if q_fg {
                            caps[i].0 += w; // paid when this voxel is background
                        } else {
                            caps[i].1 += w; // paid when this voxel is foreground
                        }
                    }
                }
                i += 1;
            }
        }
    }
    let (source, sink): (Vec<f32>, Vec<f32>) = caps.into_iter().unzip();
    let cut = maxflow_grid(
        &sub,
        &GridCapacities {
            source: &source,
            sink: &sink,
            edges: [&edges[0], &edges[1], &edges[2]],
        },
    )?;
    Ok(RoiLabels {
        roi: *roi,
        labels: cut.source_side,
    })
}

/// MONAI Label's `Histogram+GraphCut` on one image.
///
/// * `image`: raw intensities, one per grid voxel (x fastest), finite.
/// * `scribbles`: one value per grid voxel; `opts.cut.scribbles` says which values are
///   foreground and background scribbles, anything else is unlabelled.
/// * With `opts.cut.roi` set, as in MONAI Label: every voxel outside the ROI counts as a
///   background scribble (in the background histogram too), and when the ROI holds no
///   foreground scribble a foreground cube of 10 voxels a side is put at its centre (clipped
///   to the ROI here; MONAI Label lets it reach past a thin ROI). Only the ROI is cut; the
///   outside voxels are fixed background, which is what MONAI Label's full-image cut gives
///   whenever `6 * lamda < -ln(f32::EPSILON) ≈ 15.9`.
///
/// The intensities are mapped to `[0, 1]` (`opts.cut.intensity`), foreground and background
/// histograms of `num_bins` bins are taken over the scribbled voxels (plus one pseudo-count per
/// bin), each voxel's pair of histogram values is softmax-normalised into `(p_bg, p_fg)`,
/// scribbled voxels get MONAI Label's Equation 7 (or hard constraints, `opts.cut.seeds`), and
/// the energy `sum -ln p(label) + sum_{6-neighbours, labels differ} lamda exp(-(Ip-Iq)^2 / 2 sigma^2)`
/// is minimised by [`crate::maxflow_grid`]. Returns the labels of the ROI (the whole grid
/// without one): 1 foreground, 0 background.
///
/// Errors: sizes that do not match the grid, bad options, a ROI outside the grid, a non-finite
/// intensity, and [`Error::NoScribbles`] when the scribbles volume holds neither scribble value
/// (a ROI without scribbles inside is fine: its outside is background, its centre foreground).
pub fn histogram_graphcut(
    image: &[f32],
    scribbles: &[u8],
    grid: &Grid3,
    opts: &HistogramOptions,
) -> Result<RoiLabels> {
    let o = &opts.cut;
    check_options(o)?;
    if opts.num_bins == 0 || opts.num_bins > 1 << 20 {
        return Err(Error::Option(format!(
            "num_bins {} must be in 1..=1048576",
            opts.num_bins
        )));
    }
    grid.check_len("image", image.len())?;
    grid.check_len("scribbles", scribbles.len())?;
    let roi = o.roi.unwrap_or_else(|| Roi::full(grid));
    roi.check(grid)?;
    let full = roi.is_full(grid);

    // scribble classes inside the box
    check_not_empty(scribbles, o)?;
    let mut class: Vec<Class> = roi_indices(grid, &roi)
        .map(|g| class_of(scribbles[g], o))
        .collect();
    if o.roi.is_some() && !class.contains(&Class::Foreground) {
        // MONAI Label's fallback: a foreground cube [c-5, c+5) at the ROI centre
        let rd = roi.dims();
        let lo = [0, 1, 2].map(|a| {
            ((roi.start[a] + roi.end[a]) / 2)
                .saturating_sub(CENTRE_CUBE_HALF)
                .max(roi.start[a])
        });
        let hi =
            [0, 1, 2].map(|a| ((roi.start[a] + roi.end[a]) / 2 + CENTRE_CUBE_HALF).min(roi.end[a]));
        for z in lo[2]..hi[2] {
            for y in lo[1]..hi[1] {
                for x in lo[0]..hi[0] {
                    let i = (x - roi.start[0])
                        + rd[0] * ((y - roi.start[1]) + rd[1] * (z - roi.start[2]));
                    class[i] = Class::Foreground;
                }
            }
        }
    }

    let scaler = Scaler::new(image, o.intensity)?;
    let nb = opts.num_bins;
    let edges = bin_edges(nb);
    let mut bg = vec![0u64; nb];
    let mut fg = vec![0u64; nb];
    let mut occupied = vec![false; nb];
    let mut box_bins = Vec::with_capacity(class.len());
    let mut i = 0usize;
    let [rx, ry, rz] = [0, 1, 2].map(|a| roi.start[a]..roi.end[a]);
    for z in 0..grid.dims[2] {
        for y in 0..grid.dims[1] {
            let row_in = rz.contains(&z) && ry.contains(&y);
            for x in 0..grid.dims[0] {
                let v = scaler.apply(image[grid.index(x, y, z)]);
                let k = bin_of(v, &edges);
                occupied[k] = true;
                if row_in && rx.contains(&x) {
                    box_bins.push(k);
                    match class[i] {
                        Class::Foreground => fg[k] += 1,
                        Class::Background => bg[k] += 1,
                        Class::None => {}
                    }
                    i += 1;
                } else {
                    bg[k] += 1;
                }
            }
        }
    }
    let table = likelihood_table(&bg, &fg, &occupied);
    let caps: Vec<(f32, f32)> = class
        .iter()
        .zip(&box_bins)
        .map(|(&c, &k)| match c {
            Class::None => unary(table[k].0, table[k].1),
            c => seed_caps(c, o.seeds),
        })
        .collect();
    let outside = if full {
        Outside::Free
    } else {
        Outside::Background
    };
    cut_box(
        grid,
        &roi,
        image,
        &scaler,
        caps,
        outside,
        &pairwise(grid, o),
    )
}

/// Graph cut with a model's foreground probability as the likelihood.
///
/// * `image`: raw intensities, one per grid voxel, for the pairwise term (mapped to `[0, 1]` by
///   `opts.intensity` as in [`histogram_graphcut`]).
/// * `prob_fg`: the model's probability of the structure, **one per voxel of the ROI** (the
///   whole grid without one), x fastest within it, each in `[0, 1]`; `p_bg = 1 - p_fg`.
/// * `scribbles`: one value per grid voxel; scribbled voxels inside the ROI are hard
///   constraints (`opts.seeds` is not used here).
/// * `outside`: the structure's current mask (non-zero = the structure), one value per grid
///   voxel: the voxels next to the ROI keep their class, so the pairwise edges across the ROI's
///   border pull the result to join what is outside. `None`: no edges across the border.
///
/// Returns the labels of the ROI: 1 = the structure.
///
/// Errors: sizes, options, the ROI, non-finite intensities, probabilities outside `[0, 1]`,
/// and [`Error::NoScribbles`] when the scribbles volume holds neither scribble value (a ROI
/// without scribbles inside gives the model's own cut there).
pub fn probability_graphcut(
    image: &[f32],
    prob_fg: &[f32],
    scribbles: &[u8],
    outside: Option<&[u8]>,
    grid: &Grid3,
    opts: &GraphCutOptions,
) -> Result<RoiLabels> {
    check_options(opts)?;
    grid.check_len("image", image.len())?;
    grid.check_len("scribbles", scribbles.len())?;
    if let Some(m) = outside {
        grid.check_len("outside mask", m.len())?;
    }
    let roi = opts.roi.unwrap_or_else(|| Roi::full(grid));
    roi.check(grid)?;
    if prob_fg.len() != roi.len() {
        return Err(Error::Size {
            what: "foreground probabilities",
            got: prob_fg.len(),
            expected: roi.len(),
        });
    }
    if let Some((i, &p)) = prob_fg
        .iter()
        .enumerate()
        .find(|(_, p)| !(0.0..=1.0).contains(*p))
    {
        return Err(Error::Value {
            what: "foreground probability",
            index: i,
            value: p,
        });
    }
    check_not_empty(scribbles, opts)?;
    let class: Vec<Class> = roi_indices(grid, &roi)
        .map(|g| class_of(scribbles[g], opts))
        .collect();
    let scaler = Scaler::new(image, opts.intensity)?;
    let w = opts.histogram_weight;
    let pooled = (w > 0.0).then(|| stroke_histograms(grid, &roi, image, &scaler, &class, prob_fg));
    let caps: Vec<(f32, f32)> = class
        .iter()
        .zip(prob_fg)
        .enumerate()
        .map(|(i, (&c, &p))| match (c, &pooled) {
            (Class::None, None) => unary(1.0 - p, p),
            (Class::None, Some((bins, llr))) => {
                let pm = p.clamp(EPS, 1.0 - EPS) as f64;
                let l =
                    (1.0 - w as f64) * (pm / (1.0 - pm)).ln() + w as f64 * llr[bins[i] as usize];
                let pf = 1.0 / (1.0 + (-l).exp());
                unary((1.0 - pf) as f32, pf as f32)
            }
            (c, _) => seed_caps(c, Seeds::Hard),
        })
        .collect();
    let outside = match outside {
        Some(m) if !roi.is_full(grid) => Outside::Mask(m),
        _ => Outside::Free,
    };
    cut_box(
        grid,
        &roi,
        image,
        &scaler,
        caps,
        outside,
        &pairwise(grid, opts),
    )
}

/// Per box voxel its histogram bin (64 bins over `[0, 1]`), and per bin the log-likelihood ratio
/// `ln(h_fg / h_bg)` of the strokes' histograms (one pseudo-count per bin); a class without
/// strokes takes the unscribbled voxels the model gives it (`p >= 0.5` foreground).
fn stroke_histograms(
    grid: &Grid3,
    roi: &Roi,
    image: &[f32],
    scaler: &Scaler,
    class: &[Class],
    prob_fg: &[f32],
) -> (Vec<u16>, Vec<f64>) {
    const BINS: usize = 64;
    let edges = bin_edges(BINS);
    let bins: Vec<u16> = roi_indices(grid, roi)
        .map(|g| bin_of(scaler.apply(image[g]), &edges) as u16)
        .collect();
    let has = |k: Class| class.contains(&k);
    let (fg_strokes, bg_strokes) = (has(Class::Foreground), has(Class::Background));
    let (mut fg, mut bg) = ([0u64; BINS], [0u64; BINS]);
    for (i, (&c, &p)) in class.iter().zip(prob_fg).enumerate() {
        let k = bins[i] as usize;
        let model_fg = c == Class::None && p >= 0.5;
        let model_bg = c == Class::None && p < 0.5;
        if c == Class::Foreground || (!fg_strokes && model_fg) {
            fg[k] += 1;
        }
        if c == Class::Background || (!bg_strokes && model_bg) {
            bg[k] += 1;
        }
    }
    let norm = |h: &[u64; BINS]| -> Vec<f64> {
        let total: f64 = h.iter().map(|&c| c as f64 + 1.0).sum();
        h.iter().map(|&c| (c as f64 + 1.0) / total).collect()
    };
    let (hf, hb) = (norm(&fg), norm(&bg));
    (bins, (0..BINS).map(|k| (hf[k] / hb[k]).ln()).collect())
}
