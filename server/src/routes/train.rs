//! `/train/` (docs/protocol.md §10): start, watch and stop training; the training curve.
//!
//! * `POST /train/{model}?run_sync=false` with an optional JSON body (the trainer options; a
//!   `model` key overrides the path): 429 while a training runs, 404 for an unknown model,
//!   422 for bad options or when no image has a `final` label; otherwise the task object (or,
//!   with `run_sync=true`, the run's outcome once it ends).
//! * `POST /train/` (deprecated): every trainer → `{model: {"result": task, "detail": null}}`.
//! * `GET /train/?all=&check_if_running=`, `DELETE /train/` (kills the worker at once).
//! * `GET /train/curve`: loss and validation Dice per epoch of the last run, as an SVG image
//!   (a ferrolabel addition; 404 before the first epoch).
//!
//! The run itself is a worker process ([`ferrolabel_apps::train`]); handlers only start it,
//! read its state or kill it.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use ferrolabel_apps::train::pairs_from_datalist;
use ferrolabel_apps::{AppError, MODEL_NAME};
use serde_json::{json, Map, Value};

use crate::error::{joined, ApiError, ApiResult};
use crate::response;
use crate::routes::scoring::{json_params, task_status};
use crate::routes::{q_bool, QueryMap};
use crate::state::AppState;

/// `GET /train/`.
pub async fn status(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    task_status(state.app.trainer().tasks(), &query)
}

/// `DELETE /train/`: the stopped task, or `null` when nothing runs.
pub async fn stop(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    Ok(match state.app.trainer().stop() {
        Some(t) => response::json(t),
        None => response::null(),
    })
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
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let params = json_params(payload).await?;
    let model = match params.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => path.into_inner(),
    };
    let run_sync = q_bool(&query, "run_sync", false)?;
    let task = start(&state, &model, params).await?;
    if run_sync {
        return Ok(response::json(wait(&state, &task).await));
    }
    Ok(response::json(task))
}

/// `POST /train/` (deprecated): every trainer.
pub async fn start_all(
    state: web::Data<AppState>,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let params = json_params(payload).await?;
    let run_sync = q_bool(&query, "run_sync", false)?;
    let model = match params.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => MODEL_NAME.to_string(),
    };
    let task = start(&state, &model, params).await?;
    let result = if run_sync {
        wait(&state, &task).await
    } else {
        task
    };
    Ok(response::json(
        json!({ MODEL_NAME: {"result": result, "detail": null} }),
    ))
}

async fn start(
    state: &web::Data<AppState>,
    model: &str,
    params: Map<String, Value>,
) -> ApiResult<Value> {
    if !state.app.has_model(model) {
        return Err(AppError::ModelNotFound(model.to_string()).into());
    }
    if state.app.trainer().tasks().running().is_some() {
        return Err(AppError::Busy("Train Task is Already Running".into()).into());
    }
    let pairs = pairs_from_datalist(state.datastore.datalist_local().await?);
    let app = state.app.clone();
    let task =
        joined(tokio::task::spawn_blocking(move || app.trainer().start(&params, pairs)).await)??;
    Ok(task)
}

/// Waits until the task `task` ends and answers its final object (`run_sync=true`).
async fn wait(state: &web::Data<AppState>, task: &Value) -> Value {
    let id = task.get("id").cloned().unwrap_or(Value::Null);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let tasks = state.app.trainer().tasks();
        let current = tasks.all().into_iter().find(|t| t.get("id") == Some(&id));
        match current {
            Some(t) if t.get("end_ts").is_some() && tasks.running().is_none() => {
                return t.get("result").cloned().unwrap_or(t);
            }
            Some(_) => continue,
            None => return Value::Null,
        }
    }
}
