//! `POST /infer/{model}?image=&session_id=&output=image|json|all|dicom_seg` (docs/protocol.md
//! §4; `dicom_seg`: docs/dicom.md).
//!
//! Order of checks: output type (422) → body type (415, from the headers, before the body is
//! read) → body (400/413) → params JSON (422) → model (404) →
//! param values (422) → weights (503) → input image (404/422) → engine (429 when the queue is
//! full). The image is read on the blocking pool, the network runs on the engine thread and the
//! label is encoded on the blocking pool, so the HTTP workers stay free. If the client goes
//! away, the job is cancelled between two sliding windows.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use ferrolabel_apps::versions;
use ferrolabel_datastore::{validate_session_id, Source};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::error::{ApiError, ApiResult};
use crate::multipart::read_form;
use crate::response;
use crate::routes::{q, QueryMap};
use crate::state::AppState;

mod scribbles;

/// The response formats of `output=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Image,
    Json,
    All,
    /// A DICOM SEG of the result on the input's DICOM source (`crate::dicom_source`).
    DicomSeg(ferrolabel_dicom::seg::SegmentationType),
}

/// Sets the cancel flag when dropped before [`CancelOnDrop::disarm`] (i.e. when actix drops the
/// handler because the client disconnected).
struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::SeqCst);
            tracing::info!("client went away: inference cancelled");
        }
    }
}

/// Where the input image comes from.
enum Input {
    /// A datastore image (results may be saved as labels).
    Datastore(String, PathBuf),
    /// An uploaded file or session image (never saved).
    File(PathBuf),
}

/// Runs a model and answers with the label map and/or the result params.
#[utoipa::path(
    post,
    path = "/infer/{model}",
    tag = "infer",
    description = "Runs a model. The result may be saved as a label of the datastore image (tag `original` by default; `params.label_tag`). Heavy: the network runs on the engine thread.",
    params(
        ("model" = String, Path, description = "The model (`wholeBody_ct_segmentation`) or a scribbles method (`Histogram+GraphCut`, `Model+GraphCut`)"),
        ("image" = Option<String>, Query, description = "Datastore image id (or `params.image`, or a `file` part)"),
        ("session_id" = Option<String>, Query, description = "A session whose image is the input"),
        ("output" = Option<crate::openapi::schemas::InferOutput>, Query, description = "The answer's form (default `all`)"),
        ("seg_type" = Option<crate::openapi::schemas::SegType>, Query, description = "With `output=dicom_seg` (default `binary`)"),
    ),
    request_body(content = Option<crate::openapi::schemas::InferForm>, content_type = "multipart/form-data", description = "Fields `params` (JSON object) and optionally `file` (an input image, not stored). `application/x-www-form-urlencoded` with `params` is accepted too; an empty body is allowed."),
    responses(
        (status = 200, description = "`output=all` (the default): `multipart/form-data` with a `params` part (JSON) and an `image` part (the label file); `image`: the label file; `json`: the result params; `dicom_seg`: a DICOM SEG", content(
            (crate::openapi::schemas::AnyObject = "multipart/form-data"),
            (crate::openapi::schemas::AnyObject = "application/json"),
            (String = "application/octet-stream"),
            (String = "application/dicom"),
        )),
        (status = 400, description = "A broken multipart body", body = crate::openapi::schemas::Detail),
        (status = 404, description = "Unknown model, image or session", body = crate::openapi::schemas::Detail),
        (status = 413, description = "Body over `--max-upload-mb`", body = crate::openapi::schemas::Detail),
        (status = 415, description = "A body that is neither multipart/form-data nor urlencoded", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Bad `output`, params JSON or values, no input image, an unreadable image, or `dicom_seg` for an image without a DICOM source", body = crate::openapi::schemas::Detail),
        (status = 429, description = "The inference queue is full", body = crate::openapi::schemas::Detail),
        (status = 503, description = "The model's weights are not installed", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn infer(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let model = path.into_inner();
    let span = tracing::info_span!("infer", model = %model, image = q(&query, "image"));
    run(state, req, model, query, payload)
        .instrument(span)
        .await
}

async fn run(
    state: web::Data<AppState>,
    req: HttpRequest,
    model: String,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let output = match q(&query, "output") {
        "" | "all" => Output::All,
        "image" => Output::Image,
        "json" => Output::Json,
        "dicom_seg" => Output::DicomSeg(crate::dicom_source::seg_type(q(&query, "seg_type"))?),
        other => {
            return Err(ApiError::unprocessable(format!(
                "query parameter \"output\": {other:?} is not one of image, json, all, dicom_seg"
            )))
        }
    };
    check_body_type(&req)?;
    let mut form = read_form(&req, payload, state.upload_limits()).await?;
    let params = form.json_object("params")?;
    if scribbles::is_scribbles_model(&model) {
        return scribbles::run(state, &model, &query, form, params).await;
    }
    let plan = state.app.plan_infer(&model, &params)?;
    let upload = form.take_file("file");

    let input = if let Some(file) = &upload {
        Input::File(file.path())
    } else {
        resolve(&state, &query, &params).await?
    };
    let image_path = match &input {
        Input::Datastore(_, p) | Input::File(p) => p.clone(),
    };
    // output=dicom_seg needs the input's DICOM source: checked before the model runs
    let source = match (output, &input) {
        (Output::DicomSeg(_), Input::Datastore(id, _)) => Some(
            crate::dicom_source::load(&state, id)
                .await?
                .ok_or_else(|| ApiError::unprocessable(crate::dicom_source::NOT_DICOM))?,
        ),
        (Output::DicomSeg(_), Input::File(_)) => {
            return Err(ApiError::unprocessable(crate::dicom_source::NOT_DICOM))
        }
        _ => None,
    };

    let cancel = Arc::new(AtomicBool::new(false));
    let mut guard = CancelOnDrop(Some(cancel.clone()));
    // the model version it runs with (docs/models.md): active before and after the job
    let before = versions::active_for_infer(&state.app, &state.datastore, plan.resolution).await;
    let result = state.app.run_infer(&plan, &image_path, cancel).await;
    guard.disarm();
    drop(upload);
    let mut out = result?;
    tracing::info!(bytes = out.bytes.len(), "inference done");
    let after = versions::active_for_infer(&state.app, &state.datastore, plan.resolution).await;
    let used = versions::used_by_infer(before.as_ref(), after.as_ref());
    if let Some(u) = used.as_object() {
        out.params.extend(u.clone());
    }

    let mut result_params = Value::Object(out.params);
    if plan.save_label {
        if let Input::Datastore(id, _) = &input {
            let mut info = json!({"model": model, "params": result_params.clone()});
            if let (Some(i), Some(u)) = (info.as_object_mut(), used.as_object()) {
                i.extend(u.clone());
            }
            let info = info.as_object().cloned().unwrap_or_default();
            state
                .datastore
                .save_label(
                    id,
                    &plan.label_tag,
                    out.ext.as_str(),
                    Source::Bytes(out.bytes.clone()),
                    info,
                    None,
                )
                .await?;
            crate::auth::audit::record(
                &state.datastore,
                &req,
                "infer.label",
                id,
                Some(&plan.label_tag),
            )
            .await;
            if let Some(m) = result_params.as_object_mut() {
                m.insert("label".into(), id.clone().into());
                m.insert("tag".into(), plan.label_tag.clone().into());
            }
        }
    }

    let name = format!(
        "tmp{}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12],
        out.ext.as_str()
    );
    Ok(match (output, source) {
        (Output::DicomSeg(kind), Some(series)) => {
            let structures = crate::dicom_source::structures(&state, &params);
            let label = crate::dicom_source::LabelInput::Bytes(out.bytes, name);
            let description = format!("ferrolabel {model}");
            let seg = crate::dicom_source::label_seg(
                &state,
                series,
                label,
                structures,
                kind,
                description,
            )
            .await?;
            let seg_name = format!("{}.dcm", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            crate::dicom_source::seg_response(seg, &format!("tmp{seg_name}"))
        }
        (Output::Json, _) => response::json(result_params),
        (Output::Image | Output::DicomSeg(_), _) => response::bytes_file(out.bytes, &name),
        (Output::All, _) => response::infer_multipart(&result_params, &name, &out.bytes),
    })
}

/// Refuses (415), from the headers alone and before a byte of it is read, a body that is
/// neither `multipart/form-data` nor `application/x-www-form-urlencoded` (what the clients and
/// Slicer send), e.g. a JSON body that MONAI Label would read and silently ignore. A request
/// without a `Content-Type` passes only with no body (`Content-Length: 0` or none, not chunked),
/// as the official client sends for some calls.
fn check_body_type(req: &HttpRequest) -> ApiResult<()> {
    let headers = req.headers();
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let is_form = ct.starts_with("multipart/form-data")
        || ct.starts_with("application/x-www-form-urlencoded");
    if is_form {
        return Ok(());
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let has_body = chunked || length.is_some_and(|n| n > 0);
    if ct.is_empty() && !has_body {
        return Ok(());
    }
    let what = if ct.is_empty() {
        "a body without a Content-Type".to_string()
    } else {
        format!("Content-Type {ct:?}")
    };
    Err(ApiError::unsupported_media_type(format!(
        "unsupported request body: {what}; send multipart/form-data or \
             application/x-www-form-urlencoded (fields \"params\", \"file\")"
    )))
}

/// Finds the input image of a request without an uploaded file: a live session, else the
/// datastore id from `?image=` (or the `image` param).
async fn resolve(
    state: &AppState,
    query: &QueryMap,
    params: &serde_json::Map<String, Value>,
) -> ApiResult<Input> {
    let image_id = match q(query, "image") {
        "" => params.get("image").and_then(Value::as_str).unwrap_or(""),
        id => id,
    };
    let session_id = q(query, "session_id");
    if !session_id.is_empty() {
        let session = match (&state.sessions, validate_session_id(session_id)) {
            (Some(s), Ok(())) => s.get(session_id, true).await?,
            _ => None,
        };
        if let Some(info) = session {
            return Ok(Input::File(info.image));
        }
        let known_image = !image_id.is_empty()
            && ferrolabel_datastore::validate_id(image_id).is_ok()
            && state.datastore.image(image_id).await?.is_some();
        if !known_image {
            return Err(ApiError::not_found(format!(
                "Session ({session_id}) Not Found"
            )));
        }
    }
    if image_id.is_empty() {
        return Err(ApiError::unprocessable(
            "no input image: give ?image=<datastore id>, ?session_id=<session> or a \"file\" part",
        ));
    }
    let path = state
        .datastore
        .image_path(image_id)
        .await
        .map_err(|e| match e {
            ferrolabel_datastore::DatastoreError::NotFound(_) => {
                ApiError::not_found(format!("Image NOT Found: {image_id}"))
            }
            other => other.into(),
        })?;
    Ok(Input::Datastore(image_id.to_string(), path))
}
