//! `POST /activelearning/{strategy}`: the next image to annotate (docs/protocol.md §11).
//!
//! Strategies: `random` (option `seed` makes it deterministic), `first`, and `epistemic`
//! (the unlabeled image with the highest Monte Carlo dropout uncertainty; images whose score
//! is missing or older than the weights are scored first, as background engine jobs, with the
//! options of [`ferrolabel_apps::scoring::EpistemicOptions`] from the body).

use actix_web::{web, HttpRequest, HttpResponse};
use ferrolabel_apps::scoring::{ensure_epistemic, EpistemicOptions};
use ferrolabel_apps::{Candidate, Strategy};
use serde_json::{json, Map, Value};

use crate::auth::Identity;
use crate::error::{ApiError, ApiResult};
use crate::multipart::{parse_json_object, read_body};
use crate::response;
use crate::state::AppState;

/// Largest accepted JSON body.
const MAX_BODY: u64 = 1 << 20;

/// Picks an image without a `final` label. The body (optional JSON object) is merged over
/// `{"strategy": <path>}`. Answers `{}` when every image is labeled; otherwise the strategy's
/// result plus `path`, overlaid with the image's info, and records
/// `strategy.<name> = {ts, client_id}` in the image info.
#[utoipa::path(
    post,
    path = "/activelearning/{strategy}",
    tag = "activelearning",
    description = "Picks the next image without a `final` label and records the choice in its info. `epistemic` first scores unscored images (heavy).",
    params(
        ("strategy" = String, Path, description = "`random`, `first` or `epistemic`"),
    ),
    request_body(content = Option<crate::openapi::schemas::AnyObject>, content_type = "application/json", description = "Optional: `strategy` (overrides the path), `client_id`, `seed` (random), the epistemic options."),
    responses(
        (status = 200, description = "The chosen image (`id`, `path`, its info); `{}` when every image has a `final` label", body = crate::openapi::schemas::AnyObject),
        (status = 404, description = "Unknown strategy", body = crate::openapi::schemas::Detail),
        (status = 413, description = "Body over 1 MiB", body = crate::openapi::schemas::Detail),
        (status = 422, description = "A body that is not a JSON object, a bad `seed` or option", body = crate::openapi::schemas::Detail),
        (status = 429, description = "`epistemic`: the engine queue is full", body = crate::openapi::schemas::Detail),
        (status = 503, description = "`epistemic`: the model's weights are not installed", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn next_sample(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let body = read_body(payload, MAX_BODY).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::unprocessable("the body is not UTF-8 JSON"))?;
    let params = parse_json_object(text, "the request body")?;
    let name = match params.get("strategy") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => path.into_inner(),
    };
    let strategy = state.app.strategy(&name)?;
    let seed = match params.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| {
                    ApiError::unprocessable(format!(
                        "invalid value {v} for param \"seed\": expected a non-negative integer"
                    ))
                })?,
        ),
    };
    let ds = &state.datastore;
    if strategy == Strategy::Epistemic {
        let opts = EpistemicOptions::from_params(&params)?;
        state.app.check_weights(opts.resolution)?;
        let ids = ds.unlabeled_images().await?;
        let scored = ensure_epistemic(&state.app, ds, &ids, &opts).await?;
        if scored > 0 {
            tracing::info!(scored, "epistemic scores computed for next sample");
        }
    }
    let mut candidates = Vec::new();
    for id in ds.unlabeled_images().await? {
        if let Some(rec) = ds.image(&id).await? {
            candidates.push(Candidate { id, info: rec.info });
        }
    }
    let now = chrono::Utc::now().timestamp();
    let Some(mut result) = strategy.select(&candidates, now, seed) else {
        return Ok(response::empty_object());
    };
    let id = result
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let info = ds.image_info(&id).await?.unwrap_or_default();
    if let Some(p) = info.get("path") {
        result.insert("path".into(), p.clone());
    }
    let mut strategies: Map<String, Value> = info
        .get("strategy")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in info {
        result.insert(k, v);
    }
    let who = Identity::of(&req);
    let client_id = params
        .get("client_id")
        .and_then(Value::as_str)
        .unwrap_or(&who.username);
    strategies.insert(
        strategy.name().into(),
        json!({"ts": now, "client_id": client_id}),
    );
    let mut patch = Map::new();
    patch.insert("strategy".into(), Value::Object(strategies));
    ds.update_image_info(&id, patch, None).await?;
    tracing::info!(strategy = strategy.name(), image = %id, "next sample");
    Ok(response::json(result))
}
