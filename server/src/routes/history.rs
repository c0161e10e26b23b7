//! Who did what, when (ferrolabel's own, read by the dashboard, docs/dashboard.md):
//!
//! * `GET /audit/?limit=N`: the newest `N` entries of the audit log
//!   ([`ferrolabel_datastore::AuditEntry`], newest first). Admins only (the role table,
//!   [`crate::auth::rbac`]): the log names every user and every refused attempt.
//! * `GET /datastore/revisions?limit=N`: the newest `N` label revisions of the datastore (every
//!   image and tag, deleted labels included), newest first: image, tag, revision, the revision it
//!   replaced, author, time, SHA-256. Anyone who may read the datastore may read it.
//!
//! `limit` defaults to 100 and must lie in `1..=10000` (422 otherwise).

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::response;
use crate::routes::{q_int, QueryMap};
use crate::state::AppState;

/// The default of `limit`.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: i64 = 10_000;

fn limit(query: &QueryMap) -> ApiResult<u32> {
    let n = q_int(query, "limit", DEFAULT_LIMIT)?;
    if !(1..=MAX_LIMIT).contains(&n) {
        return Err(ApiError::unprocessable(format!(
            "query parameter \"limit\": {n} is not in 1..={MAX_LIMIT}"
        )));
    }
    Ok(n as u32)
}

/// One audit log entry (`GET /audit/`).
#[derive(Serialize, ToSchema)]
pub struct AuditRow {
    /// Row id (insertion order).
    pub id: i64,
    /// When, in epoch milliseconds.
    pub ts_ms: i64,
    /// The authenticated user (`admin` with authentication off, `""` without a valid token).
    pub username: String,
    /// `label.save`, `label.delete`, `label.info`, `image.upload`, `image.delete`, `image.info`,
    /// `infer.label`...
    pub action: String,
    /// The image (and label) id, when the request named one.
    pub image_id: Option<String>,
    /// The label tag, for label actions.
    pub tag: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
    /// Method, path and query as received.
    pub request: String,
}

/// One label revision (`GET /datastore/revisions`).
#[derive(Serialize, ToSchema)]
pub struct RevisionRow {
    /// The image (and label) id.
    pub image: String,
    /// The label tag.
    pub tag: String,
    /// Revision number, 1-based, increasing per (image, tag).
    pub rev: i64,
    /// The revision it replaced (`null` for a first save or after a removal).
    pub parent_rev: Option<i64>,
    /// Who saved it: the logged-in user with authentication on, else the client's `client_id`.
    pub author: Option<String>,
    /// When it was saved, in epoch seconds.
    pub ts: i64,
    /// Hex SHA-256 of the label file.
    pub sha256: String,
    /// The label file's extension.
    pub ext: String,
}

/// `GET /audit/`.
#[utoipa::path(
    get,
    path = "/audit/",
    tag = "history",
    description = "The newest entries of the audit log, newest first: who wrote or deleted which image or label, when, and the answer (refused attempts included). ferrolabel's own; admins only with `--auth-enable`.",
    params(("limit" = Option<i64>, Query, description = "How many entries (1..=10000, default 100)")),
    responses(
        (status = 200, description = "The entries, newest first", body = Vec<AuditRow>),
        (status = 422, description = "A bad `limit`", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn audit_log(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let rows: Vec<AuditRow> = state
        .datastore
        .recent_audit(limit(&query)?)
        .await?
        .into_iter()
        .map(|e| AuditRow {
            id: e.id,
            ts_ms: e.ts_ms,
            username: e.username,
            action: e.action,
            image_id: e.image_id,
            tag: e.tag,
            status: e.status,
            request: e.request,
        })
        .collect();
    Ok(response::json(rows))
}

/// `GET /datastore/revisions`.
#[utoipa::path(
    get,
    path = "/datastore/revisions",
    tag = "datastore",
    description = "The newest label revisions of the datastore (every image and tag, deleted labels included), newest first. ferrolabel's own.",
    params(("limit" = Option<i64>, Query, description = "How many revisions (1..=10000, default 100)")),
    responses(
        (status = 200, description = "The revisions, newest first", body = Vec<RevisionRow>),
        (status = 422, description = "A bad `limit`", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn revisions(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let rows: Vec<RevisionRow> = state
        .datastore
        .recent_revisions(limit(&query)?)
        .await?
        .into_iter()
        .map(|r| RevisionRow {
            image: r.image_id,
            tag: r.tag,
            rev: r.rev,
            parent_rev: r.parent_rev,
            author: r.author,
            ts: r.created_at,
            sha256: r.sha256,
            ext: r.ext,
        })
        .collect();
    Ok(response::json(rows))
}
