//! Scoring methods (spec §3.7, §9): numbers about the images and labels of the datastore,
//! stored in their info as MONAI Label stores them.
//!
//! | method | what | stored in | sync result |
//! |---|---|---|---|
//! | `dice` | Dice between each image's `y` (default `final`) and `y_pred` (default `original`) labels | image info `dice` | `{image_id: dice}` |
//! | `sum` | labeled voxels (`sum`) and planes along the first array axis holding any (`slices`) of every `final` and `original` label (`tags` param) | label info `sum`, `slices` | `{image_id: {tag: {"sum", "slices"}}}` |
//! | `epistemic` | Monte Carlo dropout uncertainty ([`EpistemicOptions`]) of the unlabeled images (`images`: `unlabeled`, `all` or a list of ids) | image info `epistemic_entropy`, `epistemic_ts`, `epistemic_samples` | `{image_id: {"epistemic_entropy", "epistemic_ts"}}` |
//!
//! Dice is the mean over the label values present in either label of `2|Y∩P| / (|Y| + |P|)`
//! (1.0 when both are empty). MONAI Label's `dice` multiplies the raw label values instead,
//! which is only meaningful for binary labels; for binary labels both agree. Likewise `sum`
//! counts labeled voxels, which is MONAI Label's sum of values for binary labels.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferrolabel_datastore::{Datastore, FINAL_TAG, ORIGINAL_TAG};
use ferrolabel_imaging::{read_volume, Limits};
use ferrolabel_models::engine::UncertaintyRequest;
use ferrolabel_models::pipeline::McDropout;
use ferrolabel_models::{Priority, Resolution};
use serde_json::{json, Map, Value};

use crate::batch::select_images;
use crate::error::{blocking, AppError, Result};
use crate::infer::param_bool;
use crate::report::label_bytes;
use crate::tasks::TaskHandle;
use crate::WholeBodyApp;

/// The scoring methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoringMethod {
    /// Dice between two label tags.
    Dice,
    /// Labeled voxel counts.
    Sum,
    /// Monte Carlo dropout uncertainty.
    Epistemic,
}

impl ScoringMethod {
    /// All methods, in `/info/` order.
    pub const ALL: [ScoringMethod; 3] = [
        ScoringMethod::Dice,
        ScoringMethod::Sum,
        ScoringMethod::Epistemic,
    ];

    /// The protocol name.
    pub fn name(self) -> &'static str {
        match self {
            ScoringMethod::Dice => "dice",
            ScoringMethod::Sum => "sum",
            ScoringMethod::Epistemic => "epistemic",
        }
    }

    /// The description `/info/` shows.
    pub fn description(self) -> &'static str {
        match self {
            ScoringMethod::Dice => {
                "Compute Dice between predicted (original) and submitted (final) labels"
            }
            ScoringMethod::Sum => "Count labeled voxels and slices of final/original labels",
            ScoringMethod::Epistemic => {
                "Epistemic uncertainty (Monte Carlo dropout entropy) of unlabeled images"
            }
        }
    }

    /// Looks a method up by name (404 otherwise).
    pub fn from_name(name: &str) -> Result<ScoringMethod> {
        ScoringMethod::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| AppError::MethodNotFound(name.to_string()))
    }
}

/// Monte Carlo dropout options, read from request params:
///
/// | param | meaning | default |
/// |---|---|---|
/// | `samples` | forward passes per window, 1..=64 | 5 |
/// | `highres` | which weights (`true`: model.pt, 1.5 mm) | `false` (model_lowres.pt, 3 mm) |
/// | `spacing` | resample to this isotropic spacing (mm, 0.5..=50) instead of the weights' | the weights' |
/// | `sw_overlap` | window overlap, 0 <= x < 1 | 0 |
/// | `sw_roi` | window edge in voxels, a multiple of 8 in 16..=96 (smaller is faster on small grids) | 96 |
/// | `seed` | seed of the dropout masks (deterministic scores) | none |
#[derive(Debug, Clone, PartialEq)]
pub struct EpistemicOptions {
    /// Which weights.
    pub resolution: Resolution,
    /// Samples, spacing, overlap, seed.
    pub mc: McDropout,
}

fn num(params: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|x: &f64| x.is_finite())
            .map(Some)
            .ok_or_else(|| AppError::InvalidParams(format!("invalid value {v} for param {key:?}"))),
    }
}

fn in_range(key: &str, x: f64, lo: f64, hi: f64) -> Result<f64> {
    if (lo..=hi).contains(&x) {
        Ok(x)
    } else {
        Err(AppError::InvalidParams(format!(
            "param {key:?} must be between {lo} and {hi}, not {x}"
        )))
    }
}

impl EpistemicOptions {
    /// Reads the options (422 for bad values).
    pub fn from_params(params: &Map<String, Value>) -> Result<EpistemicOptions> {
        let resolution = Resolution::from_highres(param_bool(params, "highres")?.unwrap_or(false));
        let samples = match num(params, "samples")? {
            None => 5,
            Some(x) if x.fract() == 0.0 => in_range("samples", x, 1.0, 64.0)? as usize,
            Some(x) => {
                return Err(AppError::InvalidParams(format!(
                    "param \"samples\" must be an integer, not {x}"
                )))
            }
        };
        let pixdim = match num(params, "spacing")? {
            None => resolution.pixdim(),
            Some(x) => [in_range("spacing", x, 0.5, 50.0)?; 3],
        };
        let overlap = match num(params, "sw_overlap")? {
            None => 0.0,
            Some(x) if (0.0..1.0).contains(&x) => x,
            Some(x) => {
                return Err(AppError::InvalidParams(format!(
                    "param \"sw_overlap\" must be >= 0 and < 1, not {x}"
                )))
            }
        };
        let roi = match num(params, "sw_roi")? {
            None => 96,
            Some(x) if x.fract() == 0.0 && (x as i64) % 8 == 0 => {
                in_range("sw_roi", x, 16.0, 96.0)? as i64
            }
            Some(x) => {
                return Err(AppError::InvalidParams(format!(
                    "param \"sw_roi\" must be a multiple of 8, not {x}"
                )))
            }
        };
        let seed = match num(params, "seed")? {
            None => None,
            Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Some(x as i64),
            Some(x) => {
                return Err(AppError::InvalidParams(format!(
                    "param \"seed\" must be an integer, not {x}"
                )))
            }
        };
        Ok(EpistemicOptions {
            resolution,
            mc: McDropout {
                samples,
                pixdim,
                overlap,
                roi,
                seed,
            },
        })
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs Monte Carlo dropout on one datastore image and stores `epistemic_entropy`,
/// `epistemic_ts` and `epistemic_samples` in its info; returns the entropy.
pub async fn score_epistemic(
    app: &WholeBodyApp,
    ds: &Datastore,
    id: &str,
    opts: &EpistemicOptions,
    priority: Priority,
    cancel: Arc<AtomicBool>,
) -> Result<(f64, i64)> {
    app.check_weights(opts.resolution)?;
    let path = ds.image_path(id).await?;
    let volume = app.load_image(path).await?;
    let u = app
        .engine()
        .uncertainty(UncertaintyRequest {
            volume,
            resolution: opts.resolution,
            mc: opts.mc.clone(),
            priority,
            cancel,
        })
        .await?;
    let ts = now_secs();
    let mut patch = Map::new();
    patch.insert("epistemic_entropy".into(), json!(u.entropy));
    patch.insert("epistemic_ts".into(), ts.into());
    patch.insert("epistemic_samples".into(), u.samples.into());
    ds.update_image_info(id, patch, None).await?;
    tracing::info!(image = %id, entropy = u.entropy, secs = u.seconds, "epistemic score");
    Ok((u.entropy, ts))
}

/// Whether an image's stored score is newer than the weights it would be computed with.
pub fn epistemic_is_current(
    app: &WholeBodyApp,
    info: &Map<String, Value>,
    res: Resolution,
) -> bool {
    let Some(ts) = info.get("epistemic_ts").and_then(Value::as_i64) else {
        return false;
    };
    if crate::strategy::epistemic_score(info).is_none() {
        return false;
    }
    let weights = app
        .engine()
        .weights_mtime(res)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(i64::MAX);
    ts >= weights
}

/// Sets the flag when dropped (the request that waits for the scores went away).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Scores, for the `epistemic` strategy, the images among `ids` whose score is missing or
/// older than the weights (background priority, so interactive infers go first). Returns how
/// many were scored.
pub async fn ensure_epistemic(
    app: &WholeBodyApp,
    ds: &Datastore,
    ids: &[String],
    opts: &EpistemicOptions,
) -> Result<usize> {
    let cancel = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancel.clone());
    let mut scored = 0;
    for id in ids {
        let info = ds.image_info(id).await?.unwrap_or_default();
        if epistemic_is_current(app, &info, opts.resolution) {
            continue;
        }
        score_epistemic(app, ds, id, opts, Priority::Background, cancel.clone()).await?;
        scored += 1;
    }
    Ok(scored)
}

/// Mean Dice over the label values present in either map (1.0 when both are empty).
pub fn dice(y: &[u8], y_pred: &[u8]) -> f64 {
    let mut inter = [0u64; 256];
    let mut cy = [0u64; 256];
    let mut cp = [0u64; 256];
    for (&a, &b) in y.iter().zip(y_pred) {
        cy[a as usize] += 1;
        cp[b as usize] += 1;
        if a == b {
            inter[a as usize] += 1;
        }
    }
    let per_class: Vec<f64> = (1..256)
        .filter(|&l| cy[l] + cp[l] > 0)
        .map(|l| 2.0 * inter[l] as f64 / (cy[l] + cp[l]) as f64)
        .collect();
    if per_class.is_empty() {
        1.0
    } else {
        per_class.iter().sum::<f64>() / per_class.len() as f64
    }
}

/// `(labeled voxels, planes along the first axis with a label)` of a label map on `dims`.
pub fn sum_and_slices(labels: &[u8], dims: [usize; 3]) -> (u64, u64) {
    let nx = dims[0].max(1);
    let mut planes = vec![false; nx];
    let mut sum = 0u64;
    for (n, &l) in labels.iter().enumerate() {
        if l != 0 {
            sum += 1;
            planes[n % nx] = true;
        }
    }
    (sum, planes.iter().filter(|&&p| p).count() as u64)
}

fn read_label(path: PathBuf, limits: Limits) -> Result<(Vec<u8>, [usize; 3])> {
    let v = read_volume(&path, &limits)
        .map_err(|e| AppError::BadImage(format!("{}: {e}", path.display())))?;
    Ok((label_bytes(&v)?, v.dims))
}

fn tag_param(params: &Map<String, Value>, key: &str, default: &str) -> Result<String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(default.to_string()),
        Some(Value::String(s)) => {
            ferrolabel_datastore::validate_tag(s)?;
            Ok(s.clone())
        }
        Some(v) => Err(AppError::InvalidParams(format!(
            "invalid value {v} for param {key:?}: expected a tag"
        ))),
    }
}

fn tags_param(params: &Map<String, Value>) -> Result<Vec<String>> {
    match params.get("tags") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| match t {
                Value::String(s) => {
                    ferrolabel_datastore::validate_tag(s)?;
                    Ok(s.clone())
                }
                _ => Err(AppError::InvalidParams("\"tags\" must be strings".into())),
            })
            .collect(),
        None | Some(Value::Null) => Ok(vec![FINAL_TAG.into(), ORIGINAL_TAG.into()]),
        Some(v) => Err(AppError::InvalidParams(format!(
            "invalid value {v} for param \"tags\": expected a list of tags"
        ))),
    }
}

/// Checks a method's params before a task starts (422 for bad values, 503 when the epistemic
/// weights are missing).
pub fn validate(
    app: &WholeBodyApp,
    method: ScoringMethod,
    params: &Map<String, Value>,
) -> Result<()> {
    match method {
        ScoringMethod::Dice => {
            tag_param(params, "y", FINAL_TAG)?;
            tag_param(params, "y_pred", ORIGINAL_TAG)?;
        }
        ScoringMethod::Sum => {
            tags_param(params)?;
        }
        ScoringMethod::Epistemic => {
            let opts = EpistemicOptions::from_params(params)?;
            app.check_weights(opts.resolution)?;
        }
    }
    Ok(())
}

/// Runs a scoring method over the datastore, reporting progress to `task`; returns the sync
/// result (see the module table). A stop ends the run after the current image.
pub async fn run(
    app: &WholeBodyApp,
    ds: &Datastore,
    method: ScoringMethod,
    params: &Map<String, Value>,
    task: &TaskHandle,
) -> Result<Value> {
    let limits = *app.limits();
    let mut result = Map::new();
    match method {
        ScoringMethod::Dice => {
            let y = tag_param(params, "y", FINAL_TAG)?;
            let y_pred = tag_param(params, "y_pred", ORIGINAL_TAG)?;
            let ids = ds.list_images().await?;
            for (n, id) in ids.iter().enumerate() {
                if task.is_cancelled() {
                    return Err(AppError::Cancelled);
                }
                task.progress(n, ids.len(), Some(id));
                let (Some(a), Some(b)) = (ds.label(id, &y).await?, ds.label(id, &y_pred).await?)
                else {
                    continue;
                };
                let (pa, pb) = (a.path.clone(), b.path.clone());
                let d = blocking(move || {
                    let (la, da) = read_label(pa, limits)?;
                    let (lb, db) = read_label(pb, limits)?;
                    if da != db {
                        return Err(AppError::InvalidParams(format!(
                            "label grids differ: {da:?} vs {db:?}"
                        )));
                    }
                    Ok(dice(&la, &lb))
                })
                .await;
                match d {
                    Ok(d) => {
                        let mut patch = Map::new();
                        patch.insert("dice".into(), json!(d));
                        ds.update_image_info(id, patch, None).await?;
                        task.log(format!("dice {id}: {d:.6}"));
                        result.insert(id.clone(), json!(d));
                    }
                    Err(e) => task.log(format!("dice {id} skipped: {e}")),
                }
            }
            task.progress(ids.len(), ids.len(), None);
        }
        ScoringMethod::Sum => {
            let tags = tags_param(params)?;
            let ids = ds.list_images().await?;
            for (n, id) in ids.iter().enumerate() {
                if task.is_cancelled() {
                    return Err(AppError::Cancelled);
                }
                task.progress(n, ids.len(), Some(id));
                let mut per_tag = Map::new();
                for tag in &tags {
                    let Some(rec) = ds.label(id, tag).await? else {
                        continue;
                    };
                    let path = rec.path.clone();
                    let r = blocking(move || {
                        let (l, dims) = read_label(path, limits)?;
                        Ok(sum_and_slices(&l, dims))
                    })
                    .await;
                    match r {
                        Ok((sum, slices)) => {
                            let info = json!({"sum": sum, "slices": slices});
                            if let Some(m) = info.as_object() {
                                ds.update_label_info(id, tag, m.clone(), None).await?;
                            }
                            per_tag.insert(tag.clone(), info);
                        }
                        Err(e) => task.log(format!("sum {id}/{tag} skipped: {e}")),
                    }
                }
                if !per_tag.is_empty() {
                    result.insert(id.clone(), Value::Object(per_tag));
                }
            }
            task.progress(ids.len(), ids.len(), None);
        }
        ScoringMethod::Epistemic => {
            let opts = EpistemicOptions::from_params(params)?;
            app.check_weights(opts.resolution)?;
            let ids = select_images(ds, params.get("images"), "unlabeled").await?;
            for (n, id) in ids.iter().enumerate() {
                if task.is_cancelled() {
                    return Err(AppError::Cancelled);
                }
                task.progress(n, ids.len(), Some(id));
                let (entropy, ts) =
                    score_epistemic(app, ds, id, &opts, Priority::Background, task.cancel_flag())
                        .await?;
                task.log(format!("epistemic {id}: {entropy:.6}"));
                result.insert(
                    id.clone(),
                    json!({"epistemic_entropy": entropy, "epistemic_ts": ts}),
                );
            }
            task.progress(ids.len(), ids.len(), None);
        }
    }
    Ok(Value::Object(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_per_class_mean() {
        assert_eq!(dice(&[0, 0], &[0, 0]), 1.0);
        // class 1: |Y|=2 |P|=1 inter 1 -> 2/3; class 2: |Y|=1 |P|=1 inter 0 -> 0; class 3 only in P -> 0
        let y = [1, 1, 2, 0, 0];
        let p = [1, 0, 3, 2, 0];
        assert!((dice(&y, &p) - (2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert_eq!(dice(&y, &y), 1.0);
    }

    #[test]
    fn sum_counts_voxels_and_planes() {
        // 3 x 2 x 1: labels at x = 0 and x = 2
        assert_eq!(sum_and_slices(&[1, 0, 0, 0, 0, 5], [3, 2, 1]), (2, 2));
        assert_eq!(sum_and_slices(&[0; 6], [3, 2, 1]), (0, 0));
    }

    #[test]
    fn epistemic_options() {
        let p = |v: Value| v.as_object().unwrap().clone();
        let o = EpistemicOptions::from_params(&p(json!({}))).unwrap();
        assert_eq!(o.resolution, Resolution::Low);
        assert_eq!(o.mc.samples, 5);
        assert_eq!(o.mc.pixdim, [3.0; 3]);
        assert_eq!(o.mc.seed, None);
        let o = EpistemicOptions::from_params(&p(
            json!({"samples": "3", "spacing": 8, "seed": 7, "highres": true, "sw_overlap": 0.5}),
        ))
        .unwrap();
        assert_eq!(o.resolution, Resolution::High);
        assert_eq!(
            (o.mc.samples, o.mc.pixdim, o.mc.seed),
            (3, [8.0; 3], Some(7))
        );
        for bad in [
            json!({"samples": 0}),
            json!({"samples": 2.5}),
            json!({"spacing": 0.1}),
            json!({"sw_overlap": 1}),
            json!({"seed": "x"}),
            json!({"sw_roi": 20}),
            json!({"sw_roi": 128}),
        ] {
            assert_eq!(
                EpistemicOptions::from_params(&p(bad.clone()))
                    .unwrap_err()
                    .status(),
                422,
                "{bad}"
            );
        }
    }
}
