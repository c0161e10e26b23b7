//! `/batch/infer` (docs/protocol.md §10): segment many datastore images in one request.
//!
//! * `POST /batch/infer/{model}?images=all|labeled|unlabeled&run_sync=false&enqueue=false` with
//!   an optional JSON body (see [`ferrolabel_apps::batch`]): 429 while a batch runs (unless
//!   `enqueue=true`: then it waits its turn); the task object, or with `run_sync=true`
//!   `{image_id: {"label","tag","params"}}` once every image is done. The task's `progress`
//!   says how many images are done.
//! * `GET /batch/infer?all=&check_if_running=`, `DELETE /batch/infer` (stops between two
//!   windows; labels already saved stay).
//!
//! The batch is a scheduler job ([`ferrolabel_apps::jobs`]); every image runs as a background
//! engine job, so interactive `/infer` requests go between two of its windows.

use actix_web::{web, HttpRequest, HttpResponse};
use ferrolabel_apps::jobs::spec::BATCH_INFER;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::jobs::{json_params, kind_status, kind_stop, submit_options};
use crate::response;
use crate::routes::{q, QueryMap};
use crate::state::AppState;

/// `GET /batch/infer`.
#[utoipa::path(
    get,
    path = "/batch/infer",
    tag = "batch",
    params(
        ("all" = Option<bool>, Query, description = "Every task of the kind"),
        ("check_if_running" = Option<bool>, Query, description = "Only the running one (404 if none)"),
    ),
    responses(
        (status = 200, description = "The latest batch inference task, or every one with `all=true`, or the running one with `check_if_running=true`", body = crate::openapi::schemas::TaskOrList),
        (status = 404, description = "No batch inference task (running)", body = crate::openapi::schemas::Detail),
        (status = 422, description = "A bad boolean", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn status(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    kind_status(&state, BATCH_INFER, &query).await
}

/// `DELETE /batch/infer`.
#[utoipa::path(
    delete,
    path = "/batch/infer",
    tag = "batch",
    responses(
        (status = 200, description = "The stopped batch inference task, or `null` when none ran", body = crate::openapi::schemas::TaskOrNull),
    )
)]
pub async fn stop(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    kind_stop(&state, BATCH_INFER).await
}

/// `POST /batch/infer/{model}`.
#[utoipa::path(
    post,
    path = "/batch/infer/{model}",
    tag = "batch",
    description = "Segments many datastore images as a background task (heavy).",
    params(
        ("model" = String, Path, description = "The model"),
        ("images" = Option<crate::openapi::schemas::BatchImages>, Query, description = "Which images (default `all`)"),
        ("run_sync" = Option<bool>, Query, description = "Answer once the task has ended"),
        ("enqueue" = Option<bool>, Query, description = "Queue behind a running task instead of 429"),
    ),
    request_body(content = Option<crate::openapi::schemas::AnyObject>, content_type = "application/json", description = "Optional: infer params for every image; `model` overrides the path."),
    responses(
        (status = 200, description = "The task (with `run_sync=true`: its outcome)", body = crate::openapi::schemas::AnyObject),
        (status = 413, description = "Body over 1 MiB", body = crate::openapi::schemas::Detail),
        (status = 404, description = "Unknown model", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Bad `images`, a body that is not a JSON object, a bad option or boolean", body = crate::openapi::schemas::Detail),
        (status = 503, description = "The model's weights are not installed", body = crate::openapi::schemas::Detail),
        (status = 429, description = "A task of this kind runs (and `enqueue` is false)", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn run(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let opts = submit_options(&req, &query)?;
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
    let answer = state
        .jobs
        .batch_infer(&model, &images, params, opts)
        .await?;
    Ok(response::json(answer))
}
