//! `GET /info/`: the app description Slicer and the Python client read first.

use actix_web::{web, HttpResponse};

use crate::error::ApiResult;
use crate::response;
use crate::state::AppState;

/// The `/info/` document (docs/protocol.md §5); cheap (one datastore query), so it answers at once even
/// while an inference runs.
#[utoipa::path(
    get,
    path = "/info/",
    tag = "info",
    description = "The app description Slicer and the `monailabel` client read first: models, labels, trainers, strategies, scoring methods, datastore counts.",
    responses(
        (status = 200, description = "The app description", body = crate::openapi::schemas::Info),
    )
)]
pub async fn info(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let status = state.datastore.status().await?;
    let status = serde_json::to_value(status).unwrap_or_default();
    Ok(response::json(state.app.info(status)))
}
