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
use crate::response;
use crate::routes::tasks::{json_params, kind_status, kind_stop, submit_options};
use crate::routes::QueryMap;
use crate::state::AppState;

/// `GET /scoring/`.
pub async fn status(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    kind_status(&state, SCORING, &query).await
}

/// `DELETE /scoring/`.
pub async fn stop(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    kind_stop(&state, SCORING).await
}

/// `POST /scoring/{method}`.
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
