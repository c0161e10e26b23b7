//! `/batch/infer` (docs/protocol.md §10): segment many datastore images in one request.
//!
//! * `POST /batch/infer/{model}?images=all|labeled|unlabeled&run_sync=false` with an optional
//!   JSON body (see [`ferrolabel_apps::batch`]): 429 while a batch runs; the task object, or
//!   with `run_sync=true` `{image_id: {"label","tag","params"}}` once every image is done.
//!   The task's `progress` says how many images are done.
//! * `GET /batch/infer?all=&check_if_running=`, `DELETE /batch/infer` (stops between two
//!   windows; labels already saved stay).
//!
//! Every image runs as a background engine job: interactive `/infer` requests go between two of
//! its windows.

use actix_web::{web, HttpResponse};
use ferrolabel_apps::{batch, AppError};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::response;
use crate::routes::scoring::{json_params, task_status, task_stop};
use crate::routes::{q, q_bool, QueryMap};
use crate::state::AppState;

/// `GET /batch/infer`.
pub async fn status(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    task_status(state.app.batch_tasks(), &query)
}

/// `DELETE /batch/infer`.
pub async fn stop(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    Ok(task_stop(state.app.batch_tasks()))
}

/// `POST /batch/infer/{model}`.
pub async fn run(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let run_sync = q_bool(&query, "run_sync", false)?;
    let images = match q(&query, "images") {
        s @ ("" | "all" | "labeled" | "unlabeled") => s.to_string(),
        other => {
            return Err(ApiError::unprocessable(format!(
                "query parameter \"images\": {other:?} is not one of all, labeled, unlabeled"
            )))
        }
    };
    let params = json_params(payload).await?;
    let model = match params.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => path.into_inner(),
    };
    let plan = batch::plan(&state.app, &state.datastore, &model, &images, &params).await?;
    let mut request = params.clone();
    request.insert("model".into(), model.clone().into());
    request.insert(
        "images".into(),
        Value::Array(plan.images.iter().cloned().map(Value::from).collect()),
    );
    let task = state.app.batch_tasks().start(Value::Object(request))?;
    task.progress(0, plan.images.len(), None);
    let submitted = task.to_json();
    let app = state.app.clone();
    let ds = state.datastore.clone();
    let job = actix_web::rt::spawn(async move {
        let outcome = batch::run(&app, &ds, &plan, &task).await;
        task.finish(&outcome);
        (outcome, app.batch_tasks().last())
    });
    if !run_sync {
        return Ok(response::json(submitted));
    }
    let (outcome, last) = job
        .await
        .map_err(|e| ApiError::internal(format!("batch task failed: {e}")))?;
    match outcome {
        Ok(v) => Ok(response::json(v)),
        Err(AppError::Cancelled) => Ok(response::json(last.unwrap_or(Value::Null))),
        Err(e) => Err(e.into()),
    }
}
