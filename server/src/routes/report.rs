//! `GET /datastore/label/report?label=<image id>&tag=<tag>`: the quantitative report
//! ([`ferrolabel_apps::report`]) of a stored label over its image — the same numbers every
//! `/infer` answer carries in `params.report`, plus `seconds` (the statistics alone, without
//! reading the files). An empty tag means `final`.

use actix_web::{web, HttpResponse};

use crate::error::{ApiError, ApiResult};
use crate::response;
use crate::routes::{q, q_required, QueryMap};
use crate::state::AppState;

/// Computes the report of a stored label (404 unknown image or label, 422 when the label's
/// grid differs from the image's or holds non-label values).
#[utoipa::path(
    get,
    path = "/datastore/label/report",
    tag = "datastore",
    description = "The quantitative report of a stored label over its image (ferrolabel's own).",
    params(
        ("label" = String, Query, description = "Image id"),
        ("tag" = Option<String>, Query, description = "Label tag (default `final`)"),
    ),
    responses(
        (status = 200, description = "Volumes and HU statistics per structure, plus `label`, `tag`, `seconds`", body = crate::openapi::schemas::AnyObject),
        (status = 404, description = "Unknown image or label", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Missing `label`, an unsafe id or tag, or a label off the image's grid", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn label_report(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let id = q_required(&query, "label")?;
    let tag = q(&query, "tag");
    let ds = &state.datastore;
    let image = ds.image_path(id).await.map_err(|e| match e {
        ferrolabel_datastore::DatastoreError::NotFound(_) => {
            ApiError::not_found(format!("Image NOT Found: {id}"))
        }
        other => other.into(),
    })?;
    let label = ds.label_path(id, tag).await.map_err(|e| match e {
        ferrolabel_datastore::DatastoreError::NotFound(_) => {
            ApiError::not_found(format!("Label NOT Found: {id} (tag {tag:?})"))
        }
        other => other.into(),
    })?;
    let mut report = state.app.label_report(image, label).await?;
    if let Some(m) = report.as_object_mut() {
        m.insert("label".into(), id.into());
        let tag = if tag.is_empty() { "final" } else { tag };
        m.insert("tag".into(), tag.into());
    }
    Ok(response::json(report))
}
