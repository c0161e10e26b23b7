//! Batch inference (docs/protocol.md §10.6): segment a set of datastore images and store each result as a
//! label (tag `original` unless `label_tag` says otherwise), one image after another.
//!
//! Every image runs as a [`Priority::Background`] engine job, so an interactive `/infer`
//! waits at most one sliding window; a stop (`DELETE /batch/infer`, `DELETE /tasks/{id}`) cancels
//! the current image between two windows and keeps the labels already saved.
//!
//! A batch is a scheduler job ([`crate::jobs`]): its image list is fixed at submission, and every
//! label it stores records the job's id in its info (`job`). An attempt taken up again after a
//! restart skips the images whose label already carries that id, so each image is labelled
//! exactly once whatever moment the previous process died at.
//!
//! Request params (the JSON body, merged over the query's `images`):
//!
//! | param | meaning | default |
//! |---|---|---|
//! | `images` | `all`, `labeled`, `unlabeled` (has / lacks a `final` label), or a list of ids | the query's, else `all` |
//! | `max_batch_size` | keep only the first N ids (sorted), when > 0 | 0 |
//! | `save_label` | store the results | `true` |
//! | `label_tag` | the tag to store them under | `original` |
//! | infer params | `highres`, `sw_overlap`, `sw_batch_size`, `result_extension`, `report`, ... | as `/infer` |
//!
//! The sync result is `{image_id: {"label": id, "tag": tag, "params": {...}}}`, `{}` for an
//! image that failed (its error goes to the task's `details`).

use std::collections::BTreeSet;

use ferrolabel_datastore::{Datastore, Source};
use ferrolabel_models::Priority;
use serde_json::{json, Map, Value};

use crate::error::{AppError, Result};
use crate::infer::{param_bool, InferPlan};
use crate::jobs::JobHandle;
use crate::WholeBodyApp;

/// Resolves an image selection: `all`, `labeled`, `unlabeled` (sorted ids) or a list of ids
/// (in the given order, duplicates dropped; an unknown id is a 404). `None` → `default`.
pub async fn select_images(
    ds: &Datastore,
    selection: Option<&Value>,
    default: &str,
) -> Result<Vec<String>> {
    let which = match selection {
        None | Some(Value::Null) => default.to_string(),
        Some(Value::String(s)) if s.is_empty() => default.to_string(),
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        Some(Value::Array(list)) => {
            let mut seen = BTreeSet::new();
            let mut ids = Vec::new();
            for v in list {
                let Some(id) = v.as_str() else {
                    return Err(AppError::InvalidParams(format!(
                        "\"images\" lists {v}, not an image id"
                    )));
                };
                if ds.image(id).await?.is_none() {
                    return Err(AppError::Datastore(
                        ferrolabel_datastore::DatastoreError::NotFound(format!("image {id:?}")),
                    ));
                }
                if seen.insert(id.to_string()) {
                    ids.push(id.to_string());
                }
            }
            return Ok(ids);
        }
        Some(v) => {
            return Err(AppError::InvalidParams(format!(
                "invalid value {v} for \"images\": all, labeled, unlabeled or a list of ids"
            )))
        }
    };
    let mut ids = match which.as_str() {
        "all" => ds.list_images().await?,
        "labeled" => ds.labeled_images().await?,
        "unlabeled" => ds.unlabeled_images().await?,
        other => {
            return Err(AppError::InvalidParams(format!(
                "invalid value {other:?} for \"images\": all, labeled, unlabeled or a list of ids"
            )))
        }
    };
    ids.sort();
    Ok(ids)
}

/// A validated batch: which images, and how to run and store each.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    /// The model.
    pub model: String,
    /// The images, in run order.
    pub images: Vec<String>,
    /// How each image runs and is stored.
    pub infer: InferPlan,
}

/// Validates a batch request (404 unknown model or image, 422 bad params, 503 no weights).
/// `images` is the query's selection.
pub async fn plan(
    app: &WholeBodyApp,
    ds: &Datastore,
    model: &str,
    images: &str,
    params: &Map<String, Value>,
) -> Result<BatchPlan> {
    let mut infer = app.plan_infer(model, params)?;
    infer.save_label = param_bool(params, "save_label")?.unwrap_or(true);
    let query = (!images.is_empty()).then(|| Value::String(images.to_string()));
    let selection = params.get("images").or(query.as_ref());
    let mut ids = select_images(ds, selection, "all").await?;
    match params.get("max_batch_size") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let n = v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| {
                    AppError::InvalidParams(format!(
                        "invalid value {v} for \"max_batch_size\": expected a non-negative integer"
                    ))
                })?;
            if n > 0 {
                ids.truncate(n as usize);
            }
        }
    }
    Ok(BatchPlan {
        model: model.to_string(),
        images: ids,
        infer,
    })
}

impl BatchPlan {
    /// The plan of a submitted batch job (its images already chosen).
    pub fn from_task(
        app: &WholeBodyApp,
        model: &str,
        images: &[String],
        params: &Map<String, Value>,
    ) -> Result<BatchPlan> {
        let mut infer = app.plan_infer(model, params)?;
        infer.save_label = param_bool(params, "save_label")?.unwrap_or(true);
        Ok(BatchPlan {
            model: model.to_string(),
            images: images.to_vec(),
            infer,
        })
    }
}

/// The sync result entry of an image whose label this job (`job`) already stored, if any.
async fn done_by(ds: &Datastore, batch: &BatchPlan, id: &str, job: &str) -> Result<Option<Value>> {
    if !batch.infer.save_label {
        return Ok(None);
    }
    let tag = &batch.infer.label_tag;
    let Some(label) = ds.label(id, tag).await? else {
        return Ok(None);
    };
    if label.info.get("job").and_then(Value::as_str) != Some(job) {
        return Ok(None);
    }
    let params = label
        .info
        .get("params")
        .cloned()
        .unwrap_or_else(|| json!({}));
    Ok(Some(json!({"label": id, "tag": tag, "params": params})))
}

/// Runs a batch, reporting progress to `task`; returns the sync result. Images whose label
/// this job already stored (an earlier attempt) are not run again.
pub async fn run(
    app: &WholeBodyApp,
    ds: &Datastore,
    batch: &BatchPlan,
    task: &JobHandle,
) -> Result<Value> {
    let total = batch.images.len();
    let mut result = Map::new();
    let mut failed = 0;
    let job = task.id();
    for (n, id) in batch.images.iter().enumerate() {
        if task.is_cancelled() {
            return Err(AppError::Cancelled);
        }
        task.progress(n, total, Some(id));
        if task.attempt() > 1 {
            if let Some(v) = done_by(ds, batch, id, &job).await? {
                task.log(format!("{id}: labelled by an earlier attempt"));
                result.insert(id.clone(), v);
                continue;
            }
        }
        match run_one(app, ds, batch, id, task).await {
            Ok(v) => {
                task.log(format!("{id}: done ({}/{total})", n + 1));
                result.insert(id.clone(), v);
            }
            Err(AppError::Cancelled) => return Err(AppError::Cancelled),
            Err(e) => {
                failed += 1;
                task.log(format!("{id}: failed: {e}"));
                result.insert(id.clone(), json!({}));
            }
        }
    }
    task.progress(total, total, None);
    task.log(format!("{} of {total} images segmented", total - failed));
    Ok(Value::Object(result))
}

async fn run_one(
    app: &WholeBodyApp,
    ds: &Datastore,
    batch: &BatchPlan,
    id: &str,
    task: &JobHandle,
) -> Result<Value> {
    let path = ds.image_path(id).await?;
    let res = batch.infer.resolution;
    let before = crate::versions::active_for_infer(app, ds, res).await;
    let mut out = app
        .run_infer_as(
            &batch.infer,
            &path,
            task.cancel_flag(),
            Priority::Background,
        )
        .await?;
    let after = crate::versions::active_for_infer(app, ds, res).await;
    let used = crate::versions::used_by_infer(before.as_ref(), after.as_ref());
    if let Some(u) = used.as_object() {
        out.params.extend(u.clone());
    }
    let params = Value::Object(out.params);
    let tag = &batch.infer.label_tag;
    if batch.infer.save_label {
        let mut info = json!({"model": batch.model, "params": params, "job": task.id()});
        if let (Some(i), Some(u)) = (info.as_object_mut(), used.as_object()) {
            i.extend(u.clone());
        }
        ds.save_label(
            id,
            tag,
            out.ext.as_str(),
            Source::Bytes(out.bytes),
            info.as_object().cloned().unwrap_or_default(),
            None,
        )
        .await?;
    }
    Ok(json!({"label": id, "tag": tag, "params": params}))
}
