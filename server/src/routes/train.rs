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
use crate::response;
use crate::routes::tasks::{json_params, kind_status, kind_stop, submit_options};
use crate::routes::QueryMap;
use crate::state::AppState;

/// `GET /train/`.
pub async fn status(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    kind_status(&state, TRAIN, &query).await
}

/// `DELETE /train/`: the stopped task, or `null` when nothing runs.
pub async fn stop(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    kind_stop(&state, TRAIN).await
}

/// `GET /train/curve`.
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
