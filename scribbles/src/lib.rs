//! Scribble-guided binary segmentation by graph cut, on plain voxel slices.
//!
//! This crate is the numeric core of ferrolabel's scribbles models (issue 17): no tensors, no
//! HTTP, no datastore. Volumes are `&[f32]` / `&[u8]` slices on a [`Grid3`] with **x fastest**
//! (`index = x + nx * (y + ny * z)`), the voxel order of `ferrolabel_imaging::Volume`.
//!
//! * [`maxflow_grid`]: Boykov–Kolmogorov max-flow / min-cut on a 6-connected 3-D grid with a
//!   source and a sink capacity per voxel and one symmetric capacity per grid edge.
//! * [`histogram_graphcut`]: MONAI Label's weight-free `Histogram+GraphCut` (intensity histograms
//!   of the scribbled voxels as likelihoods, a contrast-sensitive pairwise term).
//! * [`probability_graphcut`]: the same energy with a model's foreground probability as the
//!   likelihood and the scribbles as hard constraints.
//!
//! The energies and the reasons for an own max-flow are written up in `docs/scribbles.md`
//! ("Algorithm").

mod energy;
mod graphcut;
mod maxflow;

pub use graphcut::{histogram_graphcut, probability_graphcut};
pub use maxflow::{maxflow_grid, Cut, GridCapacities};

/// Everything that can go wrong in this crate; each variant is a caller error (bad input), so a
/// server maps all of them to 422.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// A slice does not have the length its grid (or region) asks for.
    #[error("{what} has {got} values, expected {expected}")]
    Size {
        /// Which input.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length the grid or region asks for.
        expected: usize,
    },
    /// The grid is empty, too large, or has a spacing that is not finite and positive.
    #[error("bad grid: {0}")]
    Grid(String),
    /// The region of interest is empty or reaches outside the grid.
    #[error("bad region of interest: {0}")]
    Roi(String),
    /// Neither the foreground nor the background scribble value occurs in the scribbles volume.
    #[error("no scribbles: neither the foreground value {foreground} nor the background value {background} occurs in the scribbles volume")]
    NoScribbles {
        /// Foreground scribble value looked for.
        foreground: u8,
        /// Background scribble value looked for.
        background: u8,
    },
    /// An option is out of range (e.g. `sigma <= 0`, `num_bins == 0`, equal scribble values).
    #[error("bad option: {0}")]
    Option(String),
    /// A capacity or probability is negative, NaN or otherwise unusable.
    #[error("bad {what} at voxel {index}: {value}")]
    Value {
        /// Which input.
        what: &'static str,
        /// Voxel index (x fastest) of the first bad value.
        index: usize,
        /// The value found.
        value: f32,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// A 3-D voxel grid: size and voxel spacing; voxels are stored x fastest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid3 {
    /// `[nx, ny, nz]`.
    pub dims: [usize; 3],
    /// Voxel spacing along x, y, z (mm); only used when [`GraphCutOptions::spacing_weighted`].
    pub spacing: [f64; 3],
}

impl Grid3 {
    /// A grid, checked: every size at least 1, at most `u32::MAX - 1` voxels in all (node ids are
    /// `u32`), spacings finite and positive.
    pub fn new(dims: [usize; 3], spacing: [f64; 3]) -> Result<Grid3> {
        let n = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::Grid(format!("size {dims:?} overflows")))?;
        if n == 0 {
            return Err(Error::Grid(format!("size {dims:?} has no voxels")));
        }
        if n >= u32::MAX as usize {
            return Err(Error::Grid(format!("size {dims:?} has too many voxels")));
        }
        if spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::Grid(format!(
                "spacing {spacing:?} must be finite and positive"
            )));
        }
        Ok(Grid3 { dims, spacing })
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    /// Whether the grid has no voxels (never true for a grid made by [`Grid3::new`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index of voxel `(x, y, z)`, x fastest.
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.dims[0] * (y + self.dims[1] * z)
    }

    /// Checks a slice's length against the grid.
    pub(crate) fn check_len(&self, what: &'static str, got: usize) -> Result<()> {
        if got != self.len() {
            return Err(Error::Size {
                what,
                got,
                expected: self.len(),
            });
        }
        Ok(())
    }
}

/// A box of voxels `start[a] <= i[a] < end[a]` (half-open, like the Python slices MONAI Label
/// applies Slicer's `roi` with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roi {
    /// First voxel (inclusive) along x, y, z.
    pub start: [usize; 3],
    /// End (exclusive) along x, y, z.
    pub end: [usize; 3],
}

impl Roi {
    /// The whole grid.
    pub fn full(grid: &Grid3) -> Roi {
        Roi {
            start: [0; 3],
            end: grid.dims,
        }
    }

    /// Slicer's `roi` parameter `[i0, i1, j0, j1, k0, k1]` (voxel indices; each pair in either
    /// order, end exclusive as MONAI Label slices it), checked against the grid: not empty, not
    /// outside it.
    pub fn from_ijk_bounds(bounds: [i64; 6], grid: &Grid3) -> Result<Roi> {
        let mut start = [0usize; 3];
        let mut end = [0usize; 3];
        for a in 0..3 {
            let (lo, hi) = (
                bounds[2 * a].min(bounds[2 * a + 1]),
                bounds[2 * a].max(bounds[2 * a + 1]),
            );
            if lo < 0 || hi as u64 > grid.dims[a] as u64 {
                return Err(Error::Roi(format!(
                    "{bounds:?} reaches outside the image of size {:?}",
                    grid.dims
                )));
            }
            start[a] = lo as usize;
            end[a] = hi as usize;
        }
        let roi = Roi { start, end };
        roi.check(grid)?;
        Ok(roi)
    }

    /// Size along x, y, z.
    pub fn dims(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.end[a].saturating_sub(self.start[a]))
    }

    /// Number of voxels in the box.
    pub fn len(&self) -> usize {
        self.dims().iter().product()
    }

    /// Whether the box has no voxels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the box is the whole grid.
    pub fn is_full(&self, grid: &Grid3) -> bool {
        self.start == [0; 3] && self.end == grid.dims
    }

    /// Checks that the box is non-empty and inside the grid.
    pub fn check(&self, grid: &Grid3) -> Result<()> {
        for a in 0..3 {
            if self.start[a] >= self.end[a] {
                return Err(Error::Roi(format!("{self:?} is empty")));
            }
            if self.end[a] > grid.dims[a] {
                return Err(Error::Roi(format!(
                    "{self:?} reaches outside the image of size {:?}",
                    grid.dims
                )));
            }
        }
        Ok(())
    }
}

/// The voxel values that mark foreground and background scribbles in the scribbles volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScribbleValues {
    /// Background scribbles.
    pub background: u8,
    /// Foreground scribbles.
    pub foreground: u8,
}

impl ScribbleValues {
    /// MONAI Label's defaults for a model with `num_labels` labels: background `num_labels + 1`,
    /// foreground `num_labels + 2` (2 and 3 with no labels; capped at 254 and 255); a request's `label_info` entries named
    /// `background_scribbles` / `foreground_scribbles` override them.
    pub fn monai_default(num_labels: usize) -> ScribbleValues {
        let bg = (num_labels.max(1) + 1).min(254) as u8;
        ScribbleValues {
            background: bg,
            foreground: bg + 1,
        }
    }
}

impl Default for ScribbleValues {
    fn default() -> Self {
        ScribbleValues::monai_default(0)
    }
}

/// How image intensities are mapped to `[0, 1]` before the histograms and the pairwise term.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Intensity {
    /// `(v - a_min) / (a_max - a_min)` clipped to `[0, 1]`: MONAI Label's
    /// `ScaleIntensityRanged(a_min, a_max, 0, 1, clip=True)` (its default CT window is -300..200).
    Window {
        /// Intensity mapped to 0.
        a_min: f32,
        /// Intensity mapped to 1.
        a_max: f32,
    },
    /// No window: only the histogram step's own normalisation, `(v - min) / (max - min)` over
    /// the whole image when some value is outside `[0, 1]`.
    MinMax,
}

/// How scribbled voxels enter the unary term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeds {
    /// MONAI Label's Equation 7 (Wang et al. 2018): a scribbled voxel's likelihood becomes
    /// `1 - eps` for its own class and `eps` for the other (`eps` = `f32::EPSILON`), so going
    /// against a scribble costs `-ln(eps) ≈ 15.94`. Identical to [`Seeds::Hard`] unless
    /// `6 * lamda` exceeds that.
    Soft,
    /// Infinite terminal capacities: a scribbled voxel always keeps its scribble's class.
    Hard,
}

/// Options shared by both graph cuts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphCutOptions {
    /// Weight of the pairwise term (MONAI Label's `lamda`, default 1.0).
    pub lamda: f32,
    /// Intensity scale of the pairwise term, on the `[0, 1]` intensities (default 0.1).
    pub sigma: f32,
    /// Intensity mapping (default: MONAI Label's CT window -300..200).
    pub intensity: Intensity,
    /// Scribble values (default 2 = background, 3 = foreground).
    pub scribbles: ScribbleValues,
    /// How scribbles constrain the cut.
    pub seeds: Seeds,
    /// Divide each pairwise weight by the edge length relative to the smallest spacing
    /// (`min(spacing) / spacing[axis]`); MONAI Label does not (it resamples to a fixed spacing
    /// first and weighs all six neighbours alike), so the default is `false`.
    pub spacing_weighted: bool,
    /// Where to cut; `None` = the whole grid. See each function for what happens outside it.
    pub roi: Option<Roi>,
    /// [`probability_graphcut`] only: weight `w` in `[0, 1]` of the strokes' own intensity
    /// histograms pooled with the model's probability,
    /// `logit P(fg) = (1 - w) logit p_model + w ln(h_fg / h_bg)` (64 bins, one pseudo-count
    /// each; a class without strokes in the ROI takes the voxels the model gives it instead).
    /// With it, strokes reach every voxel that looks like them, not only their neighbourhood.
    /// 0 (default): the model alone.
    pub histogram_weight: f32,
}

impl Default for GraphCutOptions {
    fn default() -> Self {
        GraphCutOptions {
            lamda: 1.0,
            sigma: 0.1,
            intensity: Intensity::Window {
                a_min: -300.0,
                a_max: 200.0,
            },
            scribbles: ScribbleValues::default(),
            seeds: Seeds::Soft,
            spacing_weighted: false,
            histogram_weight: 0.0,
            roi: None,
        }
    }
}

/// Options of [`histogram_graphcut`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramOptions {
    /// Bins of the foreground and background intensity histograms over `[0, 1]` (default 64).
    pub num_bins: usize,
    /// The graph-cut options.
    pub cut: GraphCutOptions,
}

impl Default for HistogramOptions {
    fn default() -> Self {
        HistogramOptions {
            num_bins: 64,
            cut: GraphCutOptions::default(),
        }
    }
}

/// A binary result on a region: `labels[i]` is 1 (foreground) or 0, for the voxels of `roi`,
/// x fastest within the box.
#[derive(Debug, Clone, PartialEq)]
pub struct RoiLabels {
    /// The box the labels cover.
    pub roi: Roi,
    /// One value per voxel of the box.
    pub labels: Vec<u8>,
}
