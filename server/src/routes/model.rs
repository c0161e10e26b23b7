//! `/model/*`: the model's weights file (docs/protocol.md §8.1). `?highres=false` selects the 3 mm weights
//! (`model_lowres.pt`); the default is the bundle's default resolution.

use std::path::{Path, PathBuf};

use actix_web::{web, HttpRequest, HttpResponse};
use ferrolabel_datastore::blocking;
use ferrolabel_models::Resolution;
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::multipart::read_form;
use crate::response;
use crate::routes::{q_bool, QueryMap};
use crate::state::AppState;

fn resolution(state: &AppState, query: &QueryMap) -> ApiResult<Resolution> {
    let default = state.app.default_resolution().is_high();
    Ok(Resolution::from_highres(q_bool(query, "highres", default)?))
}

fn not_found(model: &str) -> ApiError {
    ApiError::not_found(format!("Model File NOT Found for {model}"))
}

async fn existing_weights(state: &AppState, model: &str, query: &QueryMap) -> ApiResult<PathBuf> {
    let path = state.app.weights_path(model, resolution(state, query)?)?;
    if tokio::fs::metadata(&path)
        .await
        .map(|m| m.is_file())
        .unwrap_or(false)
    {
        Ok(path)
    } else {
        Err(not_found(model))
    }
}

fn checksum_json(path: PathBuf) -> ApiResult<serde_json::Value> {
    let sum = ferrolabel_datastore::files::sha256_file(&path)?;
    let mtime = std::fs::metadata(&path)?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(json!({"checksum": format!("SHA256:{sum}"), "modified_time": mtime}))
}

/// `GET /model/info/{model}`: `{"checksum": "SHA256:<hex>", "modified_time": <epoch s>}`.
#[utoipa::path(
    get,
    path = "/model/info/{model}",
    tag = "model",
    params(
        ("model" = String, Path, description = "The model"),
        ("highres" = Option<bool>, Query, description = "`false`: the 3 mm weights (`model_lowres.pt`); default: the bundle's default"),
    ),
    responses(
        (status = 200, description = "Checksum and time of the weights file", body = crate::openapi::schemas::ModelChecksum),
        (status = 404, description = "Unknown model or no weights file", body = crate::openapi::schemas::Detail),
        (status = 422, description = "A bad boolean", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn info(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: QueryMap,
) -> ApiResult<HttpResponse> {
    let model = path.into_inner();
    let file = existing_weights(&state, &model, &query).await?;
    let v = blocking(move || checksum_json(file)).await?;
    Ok(response::json(v))
}

/// `GET /model/{model}`: the weights file, named `<model>.pt`.
#[utoipa::path(
    get,
    path = "/model/{model}",
    tag = "model",
    params(
        ("model" = String, Path, description = "The model"),
        ("highres" = Option<bool>, Query, description = "`false`: the 3 mm weights (`model_lowres.pt`); default: the bundle's default"),
    ),
    responses(
        (status = 200, description = "The weights file, named `<model>.pt`", content_type = "application/octet-stream", body = String),
        (status = 404, description = "Unknown model or no weights file", body = crate::openapi::schemas::Detail),
        (status = 422, description = "A bad boolean", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn download(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: QueryMap,
) -> ApiResult<HttpResponse> {
    let model = path.into_inner();
    let file = existing_weights(&state, &model, &query).await?;
    let ext = file
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    response::stream_file(&file, &format!("{model}{ext}"), ()).await
}

/// `PUT /model/{model}` (multipart `file`): checks that the weights load into the network,
/// then replaces the weights file atomically; the engine picks it up on its next job.
#[utoipa::path(
    put,
    path = "/model/{model}",
    tag = "model",
    description = "Checks that the weights load into the network, then replaces the weights file atomically.",
    params(
        ("model" = String, Path, description = "The model"),
        ("highres" = Option<bool>, Query, description = "`false`: the 3 mm weights (`model_lowres.pt`); default: the bundle's default"),
    ),
    request_body(content = crate::openapi::schemas::WeightsForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Replaced: the new file's checksum", body = crate::openapi::schemas::ModelChecksum),
        (status = 400, description = "A broken multipart body", body = crate::openapi::schemas::Detail),
        (status = 413, description = "Body over `--max-upload-mb`", body = crate::openapi::schemas::Detail),
        (status = 404, description = "Unknown model", body = crate::openapi::schemas::Detail),
        (status = 422, description = "No `file` part, a bad boolean, or weights that do not load into the network", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let model = path.into_inner();
    let res = resolution(&state, &query)?;
    state.app.weights_path(&model, res)?;
    let mut form = read_form(&req, payload, state.upload_limits()).await?;
    let file = form
        .take_file("file")
        .ok_or_else(|| ApiError::unprocessable("missing file part \"file\""))?;
    let upload = file.path();
    let ext = if file.filename.to_ascii_lowercase().ends_with(".safetensors") {
        "safetensors"
    } else {
        "pt"
    };
    let staged = upload.with_extension(ext);
    tokio::fs::rename(&upload, &staged).await?;
    let staged_guard = tempfile::TempPath::try_from_path(staged.clone())?;
    state.app.validate_weights(staged.clone()).await?;
    let dest = state
        .app
        .bundle_dir()
        .join("models")
        .join(res.model_file())
        .with_extension(ext);
    let v = blocking(move || -> ApiResult<serde_json::Value> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".upload.{}.tmp", uuid::Uuid::new_v4().simple()));
        std::fs::copy(&staged, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &dest)?;
        checksum_json(dest)
    })
    .await?;
    drop(staged_guard);
    tracing::info!(model = %model, ?res, "weights replaced");
    Ok(response::json(v))
}

/// `DELETE /model/{model}`: renames the weights to `<file>.<YYYYmmdd_HHMMSS>.deleted`.
#[utoipa::path(
    delete,
    path = "/model/{model}",
    tag = "model",
    params(
        ("model" = String, Path, description = "The model"),
        ("highres" = Option<bool>, Query, description = "`false`: the 3 mm weights (`model_lowres.pt`); default: the bundle's default"),
    ),
    responses(
        (status = 200, description = "Renamed to `<file>.<YYYYmmdd_HHMMSS>.deleted`", body = crate::openapi::schemas::Empty),
        (status = 404, description = "Unknown model or no weights file", body = crate::openapi::schemas::Detail),
        (status = 422, description = "A bad boolean", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn remove(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: QueryMap,
) -> ApiResult<HttpResponse> {
    let model = path.into_inner();
    let file = existing_weights(&state, &model, &query).await?;
    let stamp = chrono::Local::now().format("%Y%m%d_%H%M%S");
    let mut target = file.clone().into_os_string();
    target.push(format!(".{stamp}.deleted"));
    tokio::fs::rename(&file, PathBuf::from(target)).await?;
    tracing::info!(model = %model, file = %file.display(), "weights deleted");
    Ok(response::empty_object())
}
