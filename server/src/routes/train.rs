//! `/train/` (docs/protocol.md §10): start, watch and stop training; the training curve.
//!
//! * `POST /train/{model}?run_sync=false&enqueue=false` with an optional JSON body (the trainer
//!   options; a `model` key overrides the path): 429 while a training runs (unless
//!   `enqueue=true`: then it waits its turn), 404 for an unknown model,
//!   422 for bad options or when no image has a `final` label; otherwise the task object (or,
//!   with `run_sync=true`, the run's outcome once it ends).
//! * `POST /train/` (deprecated): every trainer → `{model: {"result": task, "detail": null}}`.
//! * `GET /train/?all=&check_if_running=`, `DELETE /train/` (kills the worker at once).
//! * `GET /train/curve`: loss and validation Dice per epoch of the last run, as an SVG image
//!   (a ferrolabel addition; 404 before the first epoch).
//!
//! The run is a scheduler job ([`ferrolabel_apps::jobs`]) whose work is a worker process
//! ([`ferrolabel_apps::train`]); handlers only submit it, read its state or stop it.

use actix_web::{web, HttpRequest, HttpResponse};
use ferrolabel_apps::jobs::spec::TRAIN;
use ferrolabel_apps::MODEL_NAME;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::jobs::{json_params, kind_status, kind_stop, submit_options};
use crate::response;
use crate::routes::QueryMap;
use crate::state::AppState;

/// `GET /train/`.
#[utoipa::path(
    get,
    path = "/train/",
    tag = "train",
    params(
        ("all" = Option<bool>, Query, description = "Every task of the kind"),
        ("check_if_running" = Option<bool>, Query, description = "Only the running one (404 if none)"),
    ),
    responses(
        (status = 200, description = "The latest training task, or every one with `all=true`, or the running one with `check_if_running=true`", body = crate::openapi::schemas::TaskOrList),
        (status = 404, description = "No training task (running)", body = crate::openapi::schemas::Detail),
        (status = 422, description = "A bad boolean", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn status(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    kind_status(&state, TRAIN, &query).await
}

/// `DELETE /train/`: the stopped task, or `null` when nothing runs.
#[utoipa::path(
    delete,
    path = "/train/",
    tag = "train",
    responses(
        (status = 200, description = "The stopped training task, or `null` when none ran", body = crate::openapi::schemas::TaskOrNull),
    )
)]
pub async fn stop(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    kind_stop(&state, TRAIN).await
}

/// `GET /train/curve`.
#[utoipa::path(
    get,
    path = "/train/curve",
    tag = "train",
    description = "The training curve (ferrolabel's own).",
    responses(
        (status = 200, description = "Loss and validation Dice per epoch of the last run", content_type = "image/svg+xml", body = String),
        (status = 404, description = "No training statistics yet", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn curve(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let stats = state.app.trainer().stats();
    let svg = ferrolabel_apps::train::curve_svg(&stats)
        .ok_or_else(|| ApiError::not_found("no training statistics yet: start a training first"))?;
    Ok(HttpResponse::Ok()
        .content_type("image/svg+xml")
        .insert_header(("Cache-Control", "no-store"))
        .body(svg))
}

/// `POST /train/{model}`.
#[utoipa::path(
    post,
    path = "/train/{model}",
    tag = "train",
    description = "Starts a training run as a background task (heavy: a worker process).",
    params(
        ("model" = String, Path, description = "The model"),
        ("run_sync" = Option<bool>, Query, description = "Answer once the task has ended"),
        ("enqueue" = Option<bool>, Query, description = "Queue behind a running task instead of 429"),
    ),
    request_body(content = Option<crate::openapi::schemas::AnyObject>, content_type = "application/json", description = "Optional: the trainer options (`max_epochs`, `val_split`, ...); `model` overrides the path."),
    responses(
        (status = 200, description = "The task (with `run_sync=true`: its outcome)", body = crate::openapi::schemas::AnyObject),
        (status = 413, description = "Body over 1 MiB", body = crate::openapi::schemas::Detail),
        (status = 404, description = "Unknown model", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Bad options, a body that is not a JSON object, or no image with a `final` label", body = crate::openapi::schemas::Detail),
        (status = 429, description = "A task of this kind runs (and `enqueue` is false)", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn start_one(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let opts = submit_options(&req, &query)?;
    let params = json_params(payload).await?;
    let model = match params.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => path.into_inner(),
    };
    Ok(response::json(
        state.jobs.train(&model, params, opts).await?,
    ))
}

/// `POST /train/` (deprecated): every trainer.
#[utoipa::path(
    post,
    path = "/train/",
    tag = "train",
    description = "Deprecated (as in MONAI Label): starts every trainer, queued (heavy).",
    params(
        ("run_sync" = Option<bool>, Query, description = "Answer once the task has ended"),
        ("enqueue" = Option<bool>, Query, description = "Queue behind a running task instead of 429"),
    ),
    request_body(content = Option<crate::openapi::schemas::AnyObject>, content_type = "application/json", description = "Optional: the trainer options; `model` picks the trainer."),
    responses(
        (status = 200, description = "`{model: {\"result\": task, \"detail\": null}}`", body = crate::openapi::schemas::PerName),
        (status = 413, description = "Body over 1 MiB", body = crate::openapi::schemas::Detail),
        (status = 404, description = "Unknown model", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Bad options, a body that is not a JSON object, or no image with a `final` label", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn start_all(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let mut opts = submit_options(&req, &query)?;
    // MONAI Label queues each trainer's task
    opts.enqueue = true;
    let params = json_params(payload).await?;
    let model = match params.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => MODEL_NAME.to_string(),
    };
    let result = state.jobs.train(&model, params, opts).await?;
    Ok(response::json(
        json!({ MODEL_NAME: {"result": result, "detail": null} }),
    ))
}
