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
    let mut doc = state.app.info(status);
    // the active model version of each resolution (docs/models.md)
    let active = ferrolabel_apps::versions::info_json(&state.app, &state.datastore).await;
    if let Some(m) = doc
        .pointer_mut(&format!("/models/{}", ferrolabel_apps::MODEL_NAME))
        .and_then(|m| m.as_object_mut())
    {
        m.insert("model_version".into(), active);
    }
    add_precisions(
        &mut doc,
        &state.app.engine().options().device,
        state.app.engine().options().precision,
    );
    Ok(response::json(doc))
}

/// Lists the network precisions in the segmentation model's `config` (the server's default
/// first, as Slicer takes a list's first entry for the default): the ones this device runs.
fn add_precisions(
    doc: &mut serde_json::Value,
    device: &ferrolabel_models::Device,
    default: ferrolabel_models::Precision,
) {
    let mut list = vec![default.as_str()];
    list.extend(
        ferrolabel_models::device::available_precisions(*device)
            .into_iter()
            .filter(|&p| p != default)
            .map(|p| p.as_str()),
    );
    if let Some(config) = doc
        .pointer_mut(&format!("/models/{}/config", ferrolabel_apps::MODEL_NAME))
        .and_then(|c| c.as_object_mut())
    {
        config.insert("precision".into(), list.into());
    }
}
