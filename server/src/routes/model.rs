//! `/model/*`: the model's weights file (docs/protocol.md §8.1). `?highres=false` selects the 3 mm weights
//! (`model_lowres.pt`); the default is the bundle's default resolution.

use std::path::PathBuf;

use actix_web::{web, HttpRequest, HttpResponse};
use ferrolabel_datastore::{blocking, ModelVersion};
use ferrolabel_models::Resolution;
use serde::Serialize;
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::multipart::read_form;
use crate::response;
use crate::routes::{q_bool, q_int, QueryMap};
use crate::state::AppState;
use ferrolabel_apps::versions;

/// A model version as the API answers it (`GET /model/versions/{model}`, the activation, the
/// upload): the datastore's record ([`ModelVersion`], whose schema is derived there) and two
/// fields derived from it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelVersionView {
    /// The record.
    #[serde(flatten)]
    pub record: ModelVersion,
    /// `true` for `highres`.
    pub highres: bool,
    /// Whether its file is kept (it can be activated).
    pub file_kept: bool,
}

impl From<ModelVersion> for ModelVersionView {
    fn from(record: ModelVersion) -> Self {
        ModelVersionView {
            highres: record.resolution == versions::resolution_name(Resolution::High),
            file_kept: record.pruned_at.is_none(),
            record,
        }
    }
}

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

/// `PUT /model/{model}` (multipart `file`): checks that the weights load strictly into the
/// network (422 otherwise, and nothing changes), keeps them as a new model version and makes it
/// active (the weights file replaced atomically); the engine picks it up on its next job.
#[utoipa::path(
    put,
    path = "/model/{model}",
    tag = "model",
    description = "Checks that the weights load strictly into the network (422 otherwise: nothing changes), keeps them as a new model version (docs/models.md) and makes it active: the weights file is replaced atomically and the next inference uses it.",
    params(
        ("model" = String, Path, description = "The model"),
        ("highres" = Option<bool>, Query, description = "`false`: the 3 mm weights (`model_lowres.pt`); default: the bundle's default"),
    ),
    request_body(content = crate::openapi::schemas::WeightsForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Replaced: the new file's checksum and the model version it became (docs/models.md)", body = crate::openapi::schemas::ModelUpload),
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
    // strict load first: a file that does not fit the network never becomes a version
    state.app.validate_weights(staged.clone()).await?;
    let user = crate::auth::Identity::of(&req).username;
    let prov = versions::Provenance {
        source: "upload".into(),
        user: Some(user),
        metrics: json!({}),
        ..versions::Provenance::default()
    };
    let v = versions::register(&state.app, &state.datastore, res, &staged, prov).await?;
    drop(staged_guard);
    let dest = state.app.weights_path(&model, res)?;
    let mut out = blocking(move || checksum_json(dest)).await?;
    let number = v.version;
    // a plain struct of strings and numbers: serializing it cannot fail
    out["version"] = json!(ModelVersionView::from(v));
    crate::auth::audit::record(
        &state.datastore,
        &req,
        "model.upload",
        &model,
        Some(&format!("v{}", number)),
    )
    .await;
    tracing::info!(model = %model, ?res, version = number, "weights replaced");
    Ok(response::json(out))
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

/// `GET /model/versions/{model}`: the versions of the model's weights at one resolution,
/// newest first, the active one marked (docs/models.md).
#[utoipa::path(
    get,
    path = "/model/versions/{model}",
    tag = "model",
    description = "The versions of the model's weights (one resolution), newest first: version number, SHA-256, parent, source (initial, external, upload, train, torchrun), job, user, the final labels (image, revision) it was trained on, metrics, times, whether it is active and whether its file is still kept (retention).",
    params(
        ("model" = String, Path, description = "The model"),
        ("highres" = Option<bool>, Query, description = "`false`: the 3 mm weights (`model_lowres.pt`); default: the bundle's default"),
    ),
    responses(
        (status = 200, description = "The versions", body = crate::openapi::schemas::ModelVersions),
        (status = 404, description = "Unknown model", body = crate::openapi::schemas::Detail),
        (status = 422, description = "A bad boolean", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn versions_list(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: QueryMap,
) -> ApiResult<HttpResponse> {
    let model = path.into_inner();
    let res = resolution(&state, &query)?;
    state.app.weights_path(&model, res)?;
    let active = versions::active(&state.app, &state.datastore, res).await?;
    let rname = versions::resolution_name(res);
    let list = state.datastore.model_versions(&model, rname).await?;
    Ok(response::json(json!({
        "model": model,
        "highres": res.is_high(),
        "active": active.map(|v| v.version),
        "keep": state.app.versions_keep(),
        "versions": list.into_iter().map(ModelVersionView::from).collect::<Vec<_>>(),
    })))
}

/// `POST /model/versions/{model}/activate?version=N`: makes an earlier (or later) version
/// active again — a rollback; the next inference uses it. Admin only with auth on; audited.
#[utoipa::path(
    post,
    path = "/model/versions/{model}/activate",
    tag = "model",
    description = "Makes version `version` the active weights again (rollback): its kept file is checked against its SHA-256 and copied over the weights file atomically; the next inference uses it. Needs the admin role with auth on; recorded in the audit log (`model.activate`).",
    params(
        ("model" = String, Path, description = "The model"),
        ("version" = i64, Query, description = "The version number (`GET /model/versions/{model}`)"),
        ("highres" = Option<bool>, Query, description = "`false`: the 3 mm weights (`model_lowres.pt`); default: the bundle's default"),
    ),
    responses(
        (status = 200, description = "The version, now active", body = ModelVersionView),
        (status = 404, description = "Unknown model or version", body = crate::openapi::schemas::Detail),
        (status = 409, description = "The version's file was pruned by the retention policy (or is damaged)", body = crate::openapi::schemas::Detail),
        (status = 422, description = "No or a bad `version`, a bad boolean", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn versions_activate(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: QueryMap,
) -> ApiResult<HttpResponse> {
    let model = path.into_inner();
    let res = resolution(&state, &query)?;
    state.app.weights_path(&model, res)?;
    crate::routes::q_required(&query, "version")?;
    let n = q_int(&query, "version", 0)?;
    let v = versions::activate(&state.app, &state.datastore, res, n).await?;
    crate::auth::audit::record(
        &state.datastore,
        &req,
        "model.activate",
        &model,
        Some(&format!("v{}", v.version)),
    )
    .await;
    Ok(response::json(ModelVersionView::from(v)))
}
