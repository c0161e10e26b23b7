//! Scribbles models (issue 17, `docs/scribbles.md`): Slicer's Scribbles panel sends the
//! scribbles volume as the `label` upload, and the answer is the corrected mask of one
//! structure.
//!
//! * `Histogram+GraphCut`: MONAI Label's weight-free method (intensity histograms of the
//!   scribbled voxels, contrast-sensitive pairwise term, graph cut in the ROI).
//! * `Model+GraphCut`: the bundle's softmax probability of the selected structure is the
//!   likelihood, the scribbles are hard constraints. The probability comes from the engine
//!   (only the windows covering the ROI run, at interactive priority) and is cached per image
//!   file and class ([`cache`]), so the next correction does not run the network.
//!
//! **What is answered.** Slicer imports the answer into the selected segment alone (value 1 →
//! that segment, replacing it), so the answer is a binary mask on the image grid: the selected
//! structure as the client sent it (the segment's value in the `label` upload, from
//! `label_info`) outside the ROI, and the graph cut inside it, minus the voxels of every other
//! segment of the upload (another structure is never taken over). Slicer therefore sees only
//! the selected structure change, and only inside the ROI. Scribbled voxels outside the ROI
//! count as what their scribble says. Without a `label_info` entry for the structure (e.g. a
//! client that uploads the scribbles alone) the structure outside the ROI is empty, as MONAI
//! Label answers.

pub mod cache;
pub mod params;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use ferrolabel_imaging::{read_volume, Grid, Volume};
use ferrolabel_models::engine::ProbabilityRequest;
use ferrolabel_models::{Priority, Resolution};
use ferrolabel_scribbles::{GraphCutOptions, Grid3, HistogramOptions, Roi, ScribbleValues, Seeds};
use serde_json::{json, Map, Value};

pub use cache::ProbabilityCache;
use ferrolabel_datastore::blocking;
pub use params::{Method, ScribblesPlan};

use crate::error::{AppError, Result};
use crate::infer::{self, InferOutput, ResultExt};
use crate::WholeBodyApp;

/// The uploaded scribbles volume.
#[derive(Debug, Clone)]
pub struct ScribblesUpload {
    /// The temp file.
    pub path: PathBuf,
    /// Its extension as the client named it (`.bin`: raw uint8 voxels in Fortran order on the
    /// image grid, as OHIF sends them).
    pub ext: String,
}

/// The `/info/` entries of the scribbles models (`type: "scribbles"`, the bundle's labels);
/// `highres` is the bundle's default resolution, offered first for `Model+GraphCut`.
pub fn models_info(
    labels: &Map<String, Value>,
    devices: &Value,
    highres: bool,
) -> Map<String, Value> {
    Method::ALL
        .iter()
        .map(|m| {
            let mut config = json!({"lamda": 1.0, "sigma": 0.1});
            match m {
                Method::Histogram => config["num_bins"] = 64.into(),
                Method::Model => {
                    config["histogram_weight"] = json!(params::DEFAULT_HISTOGRAM_WEIGHT);
                    config["highres"] = json!([highres, !highres]);
                }
            }
            config["device"] = devices.clone();
            (
                m.name().to_string(),
                json!({
                    "type": "scribbles",
                    "labels": labels,
                    "dimension": 3,
                    "description": m.description(),
                    "config": config,
                }),
            )
        })
        .collect()
}

fn scribbles_error(e: ferrolabel_scribbles::Error) -> AppError {
    AppError::InvalidParams(format!("scribbles: {e}"))
}

/// Reads the scribbles upload as one byte per image voxel (x fastest).
fn read_scribbles(
    up: &ScribblesUpload,
    image: &Volume,
    limits: &ferrolabel_imaging::Limits,
) -> Result<Vec<u8>> {
    let n = image.len();
    if up.ext.eq_ignore_ascii_case(".bin") {
        let bytes = std::fs::read(&up.path)?;
        if bytes.len() != n {
            return Err(AppError::BadLabel(format!(
                "the scribbles (.bin) have {} bytes, the image has {n} voxels ({} x {} x {})",
                bytes.len(),
                image.dims[0],
                image.dims[1],
                image.dims[2]
            )));
        }
        // Fortran order = x fastest: the voxel order of a Volume
        return Ok(bytes);
    }
    let vol = read_volume(&up.path, limits)
        .map_err(|e| AppError::BadLabel(format!("cannot read the scribbles volume: {e}")))?;
    crate::validate::same_grid(&Grid::of(image), &Grid::of(&vol)).map_err(|_| {
        AppError::BadLabel(format!(
            "the scribbles volume is not on the image's grid: scribbles {}; image {}",
            Grid::of(&vol),
            Grid::of(image)
        ))
    })?;
    vol.data
        .iter()
        .map(|&v| {
            if v.fract() == 0.0 && (0.0..=255.0).contains(&v) {
                Ok(v as u8)
            } else {
                Err(AppError::BadLabel(format!(
                    "the scribbles volume holds {v}: expected label values 0..255"
                )))
            }
        })
        .collect()
}

/// The ROI of a request on `grid`: the whole grid without one; a box reaching past the image is
/// clipped to it; a box with nothing inside the image is refused.
fn roi_of(plan: &ScribblesPlan, grid: &Grid3) -> Result<Roi> {
    let Some(b) = plan.roi else {
        return Ok(Roi::full(grid));
    };
    let mut clipped = [0i64; 6];
    for a in 0..3 {
        let (lo, hi) = (b[2 * a].min(b[2 * a + 1]), b[2 * a].max(b[2 * a + 1]));
        let n = grid.dims[a] as i64;
        if hi <= 0 || lo >= n || lo == hi {
            return Err(AppError::InvalidParams(format!(
                "roi {b:?} is empty or outside the image of {} x {} x {} voxels",
                grid.dims[0], grid.dims[1], grid.dims[2]
            )));
        }
        clipped[2 * a] = lo.max(0);
        clipped[2 * a + 1] = hi.min(n);
    }
    Roi::from_ijk_bounds(clipped, grid).map_err(scribbles_error)
}

/// Seconds with 3 decimals (the parts of a correction are short).
fn ms(x: f64) -> Value {
    json!((x * 1000.0).round() / 1000.0)
}

impl WholeBodyApp {
    /// The probability cache of `Model+GraphCut`.
    pub fn probability_cache(&self) -> &ProbabilityCache {
        &self.scribbles_cache
    }

    /// Validates a scribbles request (404 unknown model, 422 bad params, 503 missing weights
    /// for `Model+GraphCut`). Cheap; call it before reading any file.
    pub fn plan_scribbles(
        &self,
        model: &str,
        params: &Map<String, Value>,
    ) -> Result<ScribblesPlan> {
        let method =
            Method::from_name(model).ok_or_else(|| AppError::ModelNotFound(model.to_string()))?;
        let labels: Vec<String> = self.label_map().keys().cloned().collect();
        let plan = params::plan(method, params, &labels)?;
        if method == Method::Model {
            self.check_weights(self.scribbles_resolution(&plan))?;
        }
        Ok(plan)
    }

    fn scribbles_resolution(&self, plan: &ScribblesPlan) -> Resolution {
        plan.highres
            .map(Resolution::from_highres)
            .unwrap_or_else(|| self.default_resolution())
    }

    /// Runs a planned scribbles correction of the image at `image` with the uploaded
    /// scribbles: read (blocking pool), probabilities (engine thread, cached), graph cut and
    /// encoding (blocking pool). The answer's `label_names` is `{selected: 1}`.
    pub async fn run_scribbles(
        &self,
        plan: &ScribblesPlan,
        image: &Path,
        upload: &ScribblesUpload,
        cancel: Arc<AtomicBool>,
    ) -> Result<InferOutput> {
        let t0 = Instant::now();
        let volume = self.load_image(image.to_path_buf()).await?;
        let grid = Grid3::new(volume.dims, volume.spacing()).map_err(scribbles_error)?;
        let roi = roi_of(plan, &grid)?;
        let (bg, fg) = plan.scribble_values(self.label_map().len());
        let values = ScribbleValues {
            background: bg,
            foreground: fg,
        };
        let (scribbles, in_roi) = {
            let (up, vol) = (upload.clone(), volume.clone());
            let limits = *self.limits();
            blocking(move || -> Result<_> {
                let s = read_scribbles(&up, &vol, &limits)?;
                let counts = count_in_roi(&s, &grid, &roi, values);
                Ok((s, counts))
            })
            .await?
        };
        let t_load = t0.elapsed().as_secs_f64();
        if in_roi == (0, 0) {
            return Err(AppError::InvalidParams(format!(
                "no scribbles inside the ROI: no voxel of the scribbles volume has the foreground \
                 value {fg} or the background value {bg} (label_info names them \
                 \"foreground_scribbles\" and \"background_scribbles\")"
            )));
        }

        // the probabilities (Model+GraphCut): cache, else the engine
        let mut prob = None;
        let mut cached = false;
        let t_prob = Instant::now();
        let mut windows = 0usize;
        if plan.method == Method::Model {
            let res = self.scribbles_resolution(plan);
            let label_map = self.label_map();
            let class = label_map
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&plan.selected))
                .and_then(|(_, v)| v.as_u64())
                .ok_or_else(|| {
                    AppError::InvalidParams(format!("unknown label {:?}", plan.selected))
                })? as usize;
            let vbox = [0, 1, 2].map(|a| [roi.start[a], roi.end[a]]);
            let key = cache::ProbKey::of(image, res, self.engine().weights_mtime(res), class);
            if let Some(p) = self.scribbles_cache.get(&key, &vbox) {
                prob = Some(p);
                cached = true;
            } else {
                let req = ProbabilityRequest {
                    volume: volume.clone(),
                    resolution: res,
                    roi: vbox,
                    class,
                    priority: Priority::Interactive,
                    cancel,
                };
                let p = self.engine().probability(req).await.map_err(|e| match e {
                    ferrolabel_models::ModelsError::WeightsMissing(_) => {
                        self.check_weights(res).err().unwrap_or(AppError::Engine(e))
                    }
                    other => other.into(),
                })?;
                windows = p.windows;
                let shared = Arc::new(p.prob);
                self.scribbles_cache.put(key, vbox, shared.clone());
                prob = Some(Arc::try_unwrap(shared).unwrap_or_else(|a| a.as_ref().clone()));
            }
        }
        let t_prob = t_prob.elapsed().as_secs_f64();

        let plan2 = plan.clone();
        let ext = plan.result_ext.unwrap_or_else(|| {
            image
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(ResultExt::from_file_name)
                .unwrap_or(ResultExt::NiiGz)
        });
        let vol = volume.clone();
        let (bytes, stats) = blocking(move || {
            correct(
                &plan2,
                &vol,
                &scribbles,
                grid,
                roi,
                values,
                prob.as_deref(),
                ext,
            )
        })
        .await?;
        let mut params = Map::new();
        params.insert("label_names".into(), json!({ plan.selected.clone(): 1 }));
        let total = t0.elapsed().as_secs_f64();
        params.insert(
            "latencies".into(),
            json!({
                "pre": infer::secs(t_load),
                "infer": infer::secs(t_prob + stats.cut),
                "invert": infer::secs(0.0),
                "post": infer::secs(stats.merge),
                "write": infer::secs(stats.encode),
                "total": infer::secs(total),
                "transform": null,
                "parts": {
                    "load": ms(t_load),
                    "probabilities": ms(t_prob),
                    "graphcut": ms(stats.cut),
                    "merge": ms(stats.merge),
                    "encode": ms(stats.encode),
                },
            }),
        );
        params.insert("centroids".into(), json!({}));
        params.insert(
            "scribbles".into(),
            json!({
                "method": plan.method.name(),
                "selected_label_name": plan.selected,
                "roi": [roi.start[0], roi.end[0], roi.start[1], roi.end[1], roi.start[2], roi.end[2]],
                "foreground_value": fg,
                "background_value": bg,
                "foreground_voxels": in_roi.1,
                "background_voxels": in_roi.0,
                "probability_cached": cached,
                "windows": windows,
                "structure_from_upload": plan.selected_id.is_some(),
                "changed_voxels": stats.changed,
                "structure_voxels": stats.structure,
            }),
        );
        Ok(InferOutput { bytes, ext, params })
    }
}

/// Voxels of the background and the foreground scribble value inside the ROI.
fn count_in_roi(scribbles: &[u8], grid: &Grid3, roi: &Roi, v: ScribbleValues) -> (usize, usize) {
    let (mut bg, mut fg) = (0, 0);
    for z in roi.start[2]..roi.end[2] {
        for y in roi.start[1]..roi.end[1] {
            let row = grid.index(roi.start[0], y, z);
            for &s in &scribbles[row..row + (roi.end[0] - roi.start[0])] {
                if s == v.background {
                    bg += 1;
                } else if s == v.foreground {
                    fg += 1;
                }
            }
        }
    }
    (bg, fg)
}

/// Seconds and counts of the blocking part of a correction.
#[derive(Debug, Default)]
struct Stats {
    cut: f64,
    merge: f64,
    encode: f64,
    changed: usize,
    structure: usize,
}

/// The graph cut, the merge into the structure's mask, and the encoding.
#[allow(clippy::too_many_arguments)]
fn correct(
    plan: &ScribblesPlan,
    vol: &Volume,
    scribbles: &[u8],
    grid: Grid3,
    roi: Roi,
    values: ScribbleValues,
    prob: Option<&[f32]>,
    ext: ResultExt,
) -> Result<(Vec<u8>, Stats)> {
    let mut stats = Stats::default();
    let sel = plan.selected_id;
    let is_structure = |s: u8| Some(s as i64) == sel;
    let is_other =
        |s: u8| s != 0 && s != values.background && s != values.foreground && !is_structure(s);
    // the structure as the client has it; scribbles say what their voxels are
    let current: Vec<u8> = scribbles
        .iter()
        .map(|&s| u8::from(s == values.foreground || is_structure(s)))
        .collect();
    let t = Instant::now();
    let opts = GraphCutOptions {
        lamda: plan.lamda,
        sigma: plan.sigma,
        scribbles: values,
        roi: Some(roi),
        ..GraphCutOptions::default()
    };
    let cut = match (plan.method, prob) {
        (Method::Histogram, _) => ferrolabel_scribbles::histogram_graphcut(
            &vol.data,
            scribbles,
            &grid,
            &HistogramOptions {
                num_bins: plan.num_bins,
                cut: opts,
            },
        ),
        (Method::Model, Some(p)) => ferrolabel_scribbles::probability_graphcut(
            &vol.data,
            p,
            scribbles,
            Some(&current),
            &grid,
            &GraphCutOptions {
                seeds: Seeds::Hard,
                histogram_weight: plan.histogram_weight,
                ..opts
            },
        ),
        (Method::Model, None) => {
            return Err(AppError::Task("no probabilities for Model+GraphCut".into()))
        }
    }
    .map_err(scribbles_error)?;
    stats.cut = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut out = current;
    let mut i = 0usize;
    for z in roi.start[2]..roi.end[2] {
        for y in roi.start[1]..roi.end[1] {
            for x in roi.start[0]..roi.end[0] {
                let g = grid.index(x, y, z);
                let new = u8::from(cut.labels[i] == 1 && !is_other(scribbles[g]));
                let before = u8::from(is_structure(scribbles[g]));
                if new != before {
                    stats.changed += 1;
                }
                out[g] = new;
                i += 1;
            }
        }
    }
    stats.structure = out.iter().filter(|&&v| v == 1).count();
    stats.merge = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let bytes = infer::encode(&out, vol, ext)?;
    stats.encode = t.elapsed().as_secs_f64();
    Ok((bytes, stats))
}
