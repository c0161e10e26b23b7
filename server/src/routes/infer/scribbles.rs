//! `POST /infer/{scribbles model}` (`Histogram+GraphCut`, `Model+GraphCut`;
//! `docs/scribbles.md`): part of the infer route, which hands over once the form is read.
//!
//! Order of checks after the infer route's own (output type, body type, body, params JSON):
//! model and params (404/422, 503 without weights for `Model+GraphCut`) → `label` part (422) →
//! input image (404/422) → scribbles volume: readable, on the image's grid, scribbles inside
//! the ROI (422) → engine (429 when the queue is full). Nothing is ever stored: the answer is
//! the corrected mask of the selected structure, in the same encodings as any infer answer.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use ferrolabel_apps::scribbles::ScribblesUpload;
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::multipart::Form;
use crate::response;
use crate::routes::{q, QueryMap};
use crate::state::AppState;

use super::{resolve, CancelOnDrop, Input};

/// Whether `model` names a scribbles model (`+` may arrive percent-encoded).
pub fn is_scribbles_model(model: &str) -> bool {
    ferrolabel_apps::scribbles::Method::from_name(model).is_some()
}

/// Runs a scribbles correction; `form` and `params` are the parsed request body.
pub async fn run(
    state: web::Data<AppState>,
    model: &str,
    query: &QueryMap,
    mut form: Form,
    params: Map<String, Value>,
) -> ApiResult<HttpResponse> {
    let output = q(query, "output");
    if output == "dicom_seg" {
        return Err(ApiError::unprocessable(
            "output=dicom_seg is not available for scribbles models; use image, json or all",
        ));
    }
    let plan = state.app.plan_scribbles(model, &params)?;
    let label = form.take_file("label").ok_or_else(|| {
        ApiError::unprocessable(
            "scribbles models need the scribbles volume as the \"label\" file part \
             (NIfTI or NRRD on the image's grid, or .bin: raw uint8 voxels in Fortran order)",
        )
    })?;
    let upload = form.take_file("file");
    let image_path = match &upload {
        Some(file) => file.path(),
        None => match resolve(&state, query, &params).await? {
            Input::Datastore(_, p) | Input::File(p) => p,
        },
    };
    let scribbles = ScribblesUpload {
        path: label.path(),
        ext: label.ext.clone(),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let mut guard = CancelOnDrop(Some(cancel.clone()));
    let result = state
        .app
        .run_scribbles(&plan, &image_path, &scribbles, cancel)
        .await;
    guard.disarm();
    drop(label);
    drop(upload);
    let out = result?;
    tracing::info!(bytes = out.bytes.len(), "scribbles correction done");
    let params = Value::Object(out.params);
    let name = format!(
        "tmp{}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12],
        out.ext.as_str()
    );
    Ok(match output {
        "json" => response::json(params),
        "image" => response::bytes_file(out.bytes, &name),
        _ => response::infer_multipart(&params, &name, &out.bytes),
    })
}
