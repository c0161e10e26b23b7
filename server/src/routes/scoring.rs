//! `/scoring/` (docs/protocol.md §10): run a scoring method over the datastore, see its status, stop it.
//!
//! * `POST /scoring/{method}?run_sync=false&enqueue=false` with an optional JSON body (the
//!   method's params; `params.method` overrides the path): 429 while a scoring task runs
//!   (unless `enqueue=true`); otherwise the task object, or with `run_sync=true` the method's
//!   result once it is done.
//! * `POST /scoring/` (deprecated): every method, one after another, in one task →
//!   `{method: {"result": ..., "detail": null}}` (queued behind a running one, as MONAI Label
//!   enqueues these).
//! * `GET /scoring/?all=&check_if_running=`, `DELETE /scoring/`: as for training.
//!
//! The work is a scheduler job ([`ferrolabel_apps::jobs`]); the handler only submits it.

use actix_web::{web, HttpRequest, HttpResponse};
use ferrolabel_apps::jobs::spec::SCORING;
use ferrolabel_apps::scoring::ScoringMethod;
use serde_json::{json, Map, Value};

use crate::error::ApiResult;
use crate::jobs::{json_params, kind_status, kind_stop, submit_options};
use crate::response;
use crate::routes::QueryMap;
use crate::state::AppState;

/// `GET /scoring/`.
#[utoipa::path(
    get,
    path = "/scoring/",
    tag = "scoring",
    params(
        ("all" = Option<bool>, Query, description = "Every task of the kind"),
        ("check_if_running" = Option<bool>, Query, description = "Only the running one (404 if none)"),
    ),
    responses(
        (status = 200, description = "The latest scoring task, or every one with `all=true`, or the running one with `check_if_running=true`", body = crate::openapi::schemas::TaskOrList),
        (status = 404, description = "No scoring task (running)", body = crate::openapi::schemas::Detail),
        (status = 422, description = "A bad boolean", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn status(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    kind_status(&state, SCORING, &query).await
}

/// `DELETE /scoring/`.
#[utoipa::path(
    delete,
    path = "/scoring/",
    tag = "scoring",
    responses(
        (status = 200, description = "The stopped scoring task, or `null` when none ran", body = crate::openapi::schemas::TaskOrNull),
    )
)]
pub async fn stop(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    kind_stop(&state, SCORING).await
}

/// `POST /scoring/{method}`.
#[utoipa::path(
    post,
    path = "/scoring/{method}",
    tag = "scoring",
    description = "Runs a scoring method over the datastore as a background task (heavy).",
    params(
        ("method" = String, Path, description = "`dice`, `sum` or `epistemic`"),
        ("run_sync" = Option<bool>, Query, description = "Answer once the task has ended"),
        ("enqueue" = Option<bool>, Query, description = "Queue behind a running task instead of 429"),
    ),
    request_body(content = Option<crate::openapi::schemas::AnyObject>, content_type = "application/json", description = "Optional: the method's options; `method` overrides the path."),
    responses(
        (status = 200, description = "The task (with `run_sync=true`: its outcome)", body = crate::openapi::schemas::AnyObject),
        (status = 413, description = "Body over 1 MiB", body = crate::openapi::schemas::Detail),
        (status = 404, description = "Unknown scoring method", body = crate::openapi::schemas::Detail),
        (status = 422, description = "A body that is not a JSON object, a bad option or boolean", body = crate::openapi::schemas::Detail),
        (status = 503, description = "The model's weights are not installed", body = crate::openapi::schemas::Detail),
        (status = 429, description = "A task of this kind runs (and `enqueue` is false)", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn run_one(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let opts = submit_options(&req, &query)?;
    let params = json_params(payload).await?;
    let name = match params.get("method") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => path.into_inner(),
    };
    let method = ScoringMethod::from_name(&name)?;
    let answer = state
        .jobs
        .scoring(vec![method], false, params, opts)
        .await?;
    Ok(response::json(answer))
}

/// `POST /scoring/` (deprecated): every method.
#[utoipa::path(
    post,
    path = "/scoring/",
    tag = "scoring",
    description = "Deprecated (as in MONAI Label): every scoring method, one after another, in one queued task (heavy).",
    params(
        ("run_sync" = Option<bool>, Query, description = "Answer once the task has ended"),
        ("enqueue" = Option<bool>, Query, description = "Queue behind a running task instead of 429"),
    ),
    request_body(content = Option<crate::openapi::schemas::AnyObject>, content_type = "application/json", description = "Optional: the methods' options."),
    responses(
        (status = 200, description = "Per method, `{\"result\": task, \"detail\": null}`", body = crate::openapi::schemas::PerName),
        (status = 413, description = "Body over 1 MiB", body = crate::openapi::schemas::Detail),
        (status = 422, description = "A body that is not a JSON object, a bad option or boolean", body = crate::openapi::schemas::Detail),
        (status = 503, description = "The model's weights are not installed", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn run_all(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let mut opts = submit_options(&req, &query)?;
    opts.enqueue = true;
    let run_sync = opts.run_sync;
    let params = json_params(payload).await?;
    let methods = ScoringMethod::ALL.to_vec();
    let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
    let body = state
        .jobs
        .scoring(methods.clone(), true, params, opts)
        .await?;
    let per_method: Map<String, Value> = names
        .iter()
        .map(|n| {
            let result = if run_sync {
                body.get(*n).cloned().unwrap_or(Value::Null)
            } else {
                body.clone()
            };
            (n.to_string(), json!({"result": result, "detail": null}))
        })
        .collect();
    Ok(response::json(per_method))
}
