//! `/scoring/` (docs/protocol.md §10): run a scoring method over the datastore, see its status, stop it.
//!
//! * `POST /scoring/{method}?run_sync=false` with an optional JSON body (the method's params;
//!   `params.method` overrides the path): 429 while a scoring task runs; otherwise the task
//!   object, or with `run_sync=true` the method's result once it is done.
//! * `POST /scoring/` (deprecated): every method, one after another, in one task →
//!   `{method: {"result": ..., "detail": null}}`.
//! * `GET /scoring/?all=&check_if_running=`, `DELETE /scoring/`: as for training.
//!
//! The work runs on the engine thread and the blocking pool; the handler only awaits it.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use ferrolabel_apps::scoring::{self, ScoringMethod};
use ferrolabel_apps::tasks::TaskQueue;
use ferrolabel_apps::AppError;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::multipart::{parse_json_object, read_body};
use crate::response;
use crate::routes::{q_bool, QueryMap};
use crate::state::AppState;

/// Largest accepted JSON body.
const MAX_BODY: u64 = 1 << 20;

/// Reads an optional JSON object body (no body → `{}`; anything else → 422).
pub async fn json_params(payload: web::Payload) -> ApiResult<Map<String, Value>> {
    let body = read_body(payload, MAX_BODY).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::unprocessable("the body is not UTF-8 JSON"))?;
    parse_json_object(text, "the request body")
}

/// `GET /<kind>/?all=&check_if_running=` for a task queue.
pub fn task_status(tasks: &TaskQueue, query: &QueryMap) -> ApiResult<HttpResponse> {
    let kind = tasks.kind();
    if q_bool(query, "check_if_running", false)? {
        return tasks
            .running()
            .map(response::json)
            .ok_or_else(|| ApiError::not_found(format!("No {kind} Tasks are currently Running")));
    }
    if q_bool(query, "all", false)? {
        let all = tasks.all();
        if all.is_empty() {
            return Err(ApiError::not_found(format!("No {kind} Tasks Found")));
        }
        return Ok(response::json(all));
    }
    tasks
        .last()
        .map(response::json)
        .ok_or_else(|| ApiError::not_found(format!("No {kind} Tasks Found")))
}

/// `DELETE /<kind>/`: the stopped task, or `null` when nothing runs.
pub fn task_stop(tasks: &TaskQueue) -> HttpResponse {
    match tasks.stop() {
        Some(t) => response::json(t),
        None => response::null(),
    }
}

/// `GET /scoring/`.
pub async fn status(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    task_status(state.app.scoring_tasks(), &query)
}

/// `DELETE /scoring/`.
pub async fn stop(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    Ok(task_stop(state.app.scoring_tasks()))
}

/// `POST /scoring/{method}`.
pub async fn run_one(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let params = json_params(payload).await?;
    let name = match params.get("method") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => path.into_inner(),
    };
    let method = ScoringMethod::from_name(&name)?;
    run(state, vec![method], params, &query, false).await
}

/// `POST /scoring/` (deprecated): every method.
pub async fn run_all(
    state: web::Data<AppState>,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let params = json_params(payload).await?;
    run(state, ScoringMethod::ALL.to_vec(), params, &query, true).await
}

async fn run(
    state: web::Data<AppState>,
    methods: Vec<ScoringMethod>,
    params: Map<String, Value>,
    query: &QueryMap,
    wrap: bool,
) -> ApiResult<HttpResponse> {
    let run_sync = q_bool(query, "run_sync", false)?;
    if !wrap {
        // refuse bad options before a task exists
        for m in &methods {
            scoring::validate(&state.app, *m, &params)?;
        }
    }
    let mut request = params.clone();
    let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
    request.insert("method".into(), json!(names.join(",")));
    let task = state.app.scoring_tasks().start(Value::Object(request))?;
    let submitted = task.to_json();
    let app = state.app.clone();
    let ds = state.datastore.clone();
    let params = Arc::new(params);
    let job = actix_web::rt::spawn(async move {
        let mut results = Map::new();
        let mut outcome = Ok(Value::Null);
        for m in &methods {
            task.log(format!("scoring method {}", m.name()));
            match scoring::run(&app, &ds, *m, &params, &task).await {
                Ok(r) => {
                    results.insert(m.name().to_string(), r);
                }
                Err(AppError::Cancelled) => {
                    outcome = Err(AppError::Cancelled);
                    break;
                }
                Err(e) if wrap => {
                    task.log(format!("{} failed: {e}", m.name()));
                    results.insert(m.name().to_string(), Value::Null);
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        let outcome = outcome.map(|_| {
            if wrap {
                Value::Object(results)
            } else {
                results
                    .into_iter()
                    .next()
                    .map(|(_, v)| v)
                    .unwrap_or_default()
            }
        });
        task.finish(&outcome);
        (outcome, task_json_after(&app))
    });
    let body = if run_sync {
        let (outcome, last) = job
            .await
            .map_err(|e| ApiError::internal(format!("scoring task failed: {e}")))?;
        match outcome {
            Ok(v) => v,
            // stopped while the client waited: answer the stopped task
            Err(AppError::Cancelled) => last.unwrap_or(Value::Null),
            Err(e) => return Err(e.into()),
        }
    } else {
        submitted
    };
    if wrap {
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
        return Ok(response::json(per_method));
    }
    Ok(response::json(body))
}

fn task_json_after(app: &ferrolabel_apps::WholeBodyApp) -> Option<Value> {
    app.scoring_tasks().last()
}
