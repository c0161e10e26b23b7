//! Scoring methods (docs/protocol.md §10.5, §11.3): numbers about the images and labels of the datastore,
//! stored in their info as MONAI Label stores them.
//!
//! | method | what | stored in | sync result |
//! |---|---|---|---|
//! | `dice` | Dice between each image's `y` (default `final`) and `y_pred` (default `original`) labels | image info `dice` | `{image_id: dice}` |
//! | `sum` | labeled voxels (`sum`) and planes along the first array axis holding any (`slices`) of every `final` and `original` label (`tags` param) | label info `sum`, `slices` | `{image_id: {tag: {"sum", "slices"}}}` |
//! | `epistemic` | Monte Carlo dropout uncertainty ([`crate::epistemic`]) of the unlabeled images (`images`: `unlabeled`, `all` or a list of ids) | image info `epistemic_entropy`, `epistemic_ts`, `epistemic_samples` | `{image_id: {"epistemic_entropy", "epistemic_ts"}}` |
//!
//! Dice is the mean over the label values present in either label of `2|Y∩P| / (|Y| + |P|)`
//! (1.0 when both are empty). MONAI Label's `dice` multiplies the raw label values instead,
//! which is only meaningful for binary labels; for binary labels both agree. Likewise `sum`
//! counts labeled voxels, which is MONAI Label's sum of values for binary labels.

use std::path::PathBuf;

use ferrolabel_datastore::blocking;
use ferrolabel_datastore::{Datastore, LabelRecord, FINAL_TAG, ORIGINAL_TAG};
use ferrolabel_imaging::{read_volume, Grid, Limits};
use ferrolabel_models::Priority;
use serde_json::{json, Map, Value};

use crate::batch::select_images;
pub use crate::epistemic::{ensure_epistemic, score_epistemic, EpistemicOptions};
use crate::error::{AppError, Result};
use crate::jobs::JobHandle;
use crate::report::label_bytes;
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

/// The file to read a label from: with object storage its blob, fetched into this process's
/// cache unless there; else the file in the studies folder (as it is, unchecked).
async fn local_label(ds: &Datastore, rec: &LabelRecord) -> Result<PathBuf> {
    if ds.storage_url().is_none() {
        return Ok(rec.path.clone());
    }
    Ok(ds.label_path(&rec.image_id, &rec.tag).await?)
}

fn read_label(path: PathBuf, limits: Limits) -> Result<(Vec<u8>, Grid)> {
    let v = read_volume(&path, &limits)
        .map_err(|e| AppError::BadLabel(format!("{}: {e}", path.display())))?;
    Ok((label_bytes(&v)?, Grid::of(&v)))
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

/// The per-image results an earlier attempt of this job saved for `method` (the checkpoint's
/// `partial`), so a restarted run scores only the images not yet scored.
fn partial(task: &JobHandle, method: ScoringMethod) -> Map<String, Value> {
    task.checkpoint()
        .and_then(|c| {
            let p = c.get("partial")?;
            (p.get("method")?.as_str()? == method.name())
                .then(|| p.get("items")?.as_object().cloned())?
        })
        .unwrap_or_default()
}

/// Records `items` (this method's per-image results so far) in the job's checkpoint, next to
/// the results of the methods already finished.
fn save_partial(task: &JobHandle, method: ScoringMethod, items: &Map<String, Value>) {
    let results = task
        .checkpoint()
        .and_then(|c| c.get("results").cloned())
        .unwrap_or_else(|| json!({}));
    task.save_checkpoint(json!({
        "results": results,
        "partial": {"method": method.name(), "items": items},
    }));
}

/// Runs a scoring method over the datastore, reporting progress to `task`; returns the sync
/// result (see the module table). A stop ends the run after the current image; images scored
/// by an earlier attempt of the job (its checkpoint) are not scored again.
pub async fn run(
    app: &WholeBodyApp,
    ds: &Datastore,
    method: ScoringMethod,
    params: &Map<String, Value>,
    task: &JobHandle,
) -> Result<Value> {
    let limits = *app.limits();
    let mut result = partial(task, method);
    let scored_before = result.len();
    if scored_before > 0 {
        task.log(format!(
            "{}: {scored_before} image(s) scored by an earlier attempt",
            method.name()
        ));
    }
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
                if result.contains_key(id) {
                    continue;
                }
                let (Some(a), Some(b)) = (ds.label(id, &y).await?, ds.label(id, &y_pred).await?)
                else {
                    continue;
                };
                // with object storage, the blobs fetched into this process's cache
                let (pa, pb) = match (local_label(ds, &a).await, local_label(ds, &b).await) {
                    (Ok(pa), Ok(pb)) => (pa, pb),
                    (Err(e), _) | (_, Err(e)) => {
                        task.log(format!("dice {id} skipped: {e}"));
                        continue;
                    }
                };
                let (ty, tp) = (y.clone(), y_pred.clone());
                let d = blocking(move || {
                    let (la, da) = read_label(pa, limits)?;
                    let (lb, db) = read_label(pb, limits)?;
                    if !da.matches(&db) {
                        return Err(AppError::BadLabel(format!(
                            "the labels are not on one grid: {ty} {da}; {tp} {db}"
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
                        save_partial(task, method, &result);
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
                if result.contains_key(id) {
                    continue;
                }
                let mut per_tag = Map::new();
                for tag in &tags {
                    let Some(rec) = ds.label(id, tag).await? else {
                        continue;
                    };
                    let path = match local_label(ds, &rec).await {
                        Ok(path) => path,
                        Err(e) => {
                            task.log(format!("sum {id}/{tag} skipped: {e}"));
                            continue;
                        }
                    };
                    let r = blocking(move || -> Result<_> {
                        let (l, grid) = read_label(path, limits)?;
                        Ok(sum_and_slices(&l, grid.dims))
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
                    save_partial(task, method, &result);
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
                if result.contains_key(id) {
                    continue;
                }
                let (entropy, ts) =
                    score_epistemic(app, ds, id, &opts, Priority::Background, task.cancel_flag())
                        .await?;
                task.log(format!("epistemic {id}: {entropy:.6}"));
                result.insert(
                    id.clone(),
                    json!({"epistemic_entropy": entropy, "epistemic_ts": ts}),
                );
                save_partial(task, method, &result);
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
}
