//! What the protocol's per-kind job endpoints (`/train/`, `/batch/infer`, `/scoring/`) share:
//! reading a job request (an optional JSON object body, the submit options) and the answers of
//! `GET /<kind>/?all=&check_if_running=` and `DELETE /<kind>/`. Route modules use these; none
//! imports another route module (the whole-queue view, `/tasks/`, is [`crate::routes::tasks`]).

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use ferrolabel_apps::jobs::Submit;
use serde_json::{Map, Value};

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

/// The submit options of a request: `enqueue` and `run_sync` from the query, the owner from
/// the authenticated user.
pub fn submit_options(req: &HttpRequest, query: &QueryMap) -> ApiResult<Submit> {
    Ok(Submit {
        enqueue: q_bool(query, "enqueue", false)?,
        run_sync: q_bool(query, "run_sync", false)?,
        owner: req
            .extensions()
            .get::<crate::auth::Identity>()
            .filter(|i| i.authenticated)
            .map(|i| i.username.clone()),
    })
}

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
