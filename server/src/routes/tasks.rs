//! The job endpoints: `GET /tasks/` and `DELETE /tasks/{id}` (ferrolabel's view of the whole
//! queue, docs/jobs.md). What the protocol's per-kind endpoints share is in [`crate::jobs`].
//!
//! * `GET /tasks/?kind=&state=` → every job (oldest first; the newest 1,000) as task objects
//!   with `kind`, `state`, `position` (running 0, queued 1.. in its lane), `attempts`,
//!   `history` and an `estimate` of start and end (`null` until a rate was measured).
//! * `GET /tasks/{id}` → one job; `DELETE /tasks/{id}` → stops it (a queued job never runs, a
//!   running one ends between two windows or steps): the task, 404 unknown, 409 already ended.

use actix_web::{web, HttpResponse};
use ferrolabel_datastore::JobState;

use crate::error::{ApiError, ApiResult};
use crate::response;
use crate::routes::{q, QueryMap};
use crate::state::AppState;

/// `GET /tasks/`.
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
pub async fn get(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    Ok(response::json(state.jobs.task(&path.into_inner()).await?))
}

/// `DELETE /tasks/{id}`.
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
pub async fn cancel(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    Ok(response::json(state.jobs.cancel(&path.into_inner()).await?))
}
