//! The job endpoints: `GET /tasks/` and `DELETE /tasks/{id}` (ferrolabel's view of the whole
//! queue, docs/jobs.md), and the helpers the protocol's per-kind endpoints share
//! (`GET /<kind>/?all=&check_if_running=`, `DELETE /<kind>/`, JSON bodies, submit options).
//!
//! * `GET /tasks/?kind=&state=` → every job (oldest first; the newest 1,000) as task objects
//!   with `kind`, `state`, `position` (running 0, queued 1.. in its lane), `attempts`,
//!   `history` and an `estimate` of start and end (`null` until a rate was measured).
//! * `GET /tasks/{id}` → one job; `DELETE /tasks/{id}` → stops it (a queued job never runs, a
//!   running one ends between two windows or steps): the task, 404 unknown, 409 already ended.

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use ferrolabel_apps::jobs::Submit;
use ferrolabel_datastore::JobState;
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::multipart::{parse_json_object, read_body};
use crate::response;
#[utoipa::path(
    get,
    path = "/tasks/",
    tag = "tasks",
    description = "ferrolabel's view of the whole queue: each task with its `kind`, `state`, `position`, `attempts`, `history` and start/end `estimate`.",
    params(
        ("kind" = Option<crate::openapi::schemas::TaskKind>, Query, description = "Only this kind"),
        ("state" = Option<crate::openapi::schemas::TaskState>, Query, description = "Only this state"),
    ),
    responses(
        (status = 200, description = "Every task, oldest first (the newest 1,000)", body = Vec<crate::openapi::schemas::Task>),
        (status = 422, description = "Unknown `kind` or `state`", body = crate::openapi::schemas::Detail),
    )
)]
use crate::routes::{q, q_bool, QueryMap};
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

/// The submit options of a request: `enqueue` and `run_sync` from the query, the owner from
/// the authenticated user.
pub fn submit_options(req: &HttpRequest, query: &QueryMap) -> ApiResult<Submit> {
    Ok(Submit {
        enqueue: q_bool(query, "enqueue", false)?,
        run_sync: q_bool(query, "run_sync", false)?,
        owner: req
            .extensions()
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    tag = "tasks",
    params(
        ("id" = String, Path, description = "Task id"),
    ),
    responses(
        (status = 200, description = "The task", body = crate::openapi::schemas::Task),
        (status = 404, description = "Unknown task", body = crate::openapi::schemas::Detail),
    )
)]
            .get::<crate::auth::Identity>()
            .filter(|i| i.authenticated)
            .map(|i| i.username.clone()),
    })
}
#[utoipa::path(
    delete,
    path = "/tasks/{id}",
    tag = "tasks",
    description = "Stops a task: a queued one never runs, a running one ends between two windows or steps.",
    params(
        ("id" = String, Path, description = "Task id"),
    ),
    responses(
        (status = 200, description = "The stopped task", body = crate::openapi::schemas::Task),
        (status = 404, description = "Unknown task", body = crate::openapi::schemas::Detail),
        (status = 409, description = "The task has already ended", body = crate::openapi::schemas::Detail),
    )
)]

/// `GET /<kind>/?all=&check_if_running=` (`kind`: `train`, `batch_infer`, `scoring`).
pub async fn kind_status(
    state: &AppState,
    kind: &str,
    query: &QueryMap,
) -> ApiResult<HttpResponse> {
    let title = ferrolabel_apps::jobs::spec::kind_title(kind);
    if q_bool(query, "check_if_running", false)? {
        return state
            .jobs
            .running(kind)
            .await?
            .map(response::json)
            .ok_or_else(|| ApiError::not_found(format!("No {title} Tasks are currently Running")));
    }
    let mut all = state.jobs.list(Some(kind), None).await?;
    if all.is_empty() {
        return Err(ApiError::not_found(format!("No {title} Tasks Found")));
    }
    if q_bool(query, "all", false)? {
        return Ok(response::json(all));
    }
    Ok(response::json(all.pop().unwrap_or_default()))
}

/// `DELETE /<kind>/`: the stopped task, or `null` when none runs.
pub async fn kind_stop(state: &AppState, kind: &str) -> ApiResult<HttpResponse> {
    Ok(match state.jobs.stop_kind(kind).await? {
        Some(t) => response::json(t),
        None => response::null(),
    })
}

/// `GET /tasks/`.
pub async fn list(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let kind = match q(&query, "kind") {
        "" => None,
        k @ ("train" | "batch_infer" | "scoring" | "periodic") => Some(k),
        other => {
            return Err(ApiError::unprocessable(format!(
                "query parameter \"kind\": {other:?} is not one of train, batch_infer, scoring, periodic"
            )))
        }
    };
    let wanted = match q(&query, "state") {
        "" => None,
        s => Some(JobState::parse(&s.to_ascii_lowercase()).ok_or_else(|| {
            ApiError::unprocessable(format!(
                "query parameter \"state\": {s:?} is not one of queued, running, done, error, stopped"
            ))
        })?),
    };
    Ok(response::json(state.jobs.list(kind, wanted).await?))
}

/// `GET /tasks/{id}`.
pub async fn get(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    Ok(response::json(state.jobs.task(&path.into_inner()).await?))
}

/// `DELETE /tasks/{id}`.
pub async fn cancel(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    Ok(response::json(state.jobs.cancel(&path.into_inner()).await?))
}
