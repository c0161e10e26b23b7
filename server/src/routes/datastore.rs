//! `/datastore/*`: listing, image and label upload / download / delete, info, dataset export
//! (docs/protocol.md §6).
//!
//! Differences from MONAI Label, all towards clearer errors: unknown ids on writes and deletes
//! are 404 (upstream: 500), unsafe ids are 422, and uploads are checked before they are stored
//! (422 otherwise): the format is decided by the content (NIfTI-1 or NRRD; an image that is a zip
//! or one or more DICOM files is a DICOM series, stored as the NIfTI it assembles to by
//! `crate::dicom_upload`; any other zip or text file is refused whatever its name), images must
//! be readable with finite voxels and an invertible geometry, and labels must lie on their
//! image's grid.

use std::path::PathBuf;

use actix_web::{web, HttpRequest, HttpResponse};
use ferrolabel_datastore::{blocking, TaskFailed};
use ferrolabel_datastore::{id_from_filename, DatastoreError, Source, FINAL_TAG};
use serde_json::{json, Map, Value};

use crate::auth::Identity;
use crate::error::{ApiError, ApiResult};
use crate::multipart::{read_form, UploadedFile};
use crate::routes::{q, q_int, q_required, QueryMap};
use crate::state::AppState;
use crate::{response, zip_export};

const IMAGE_NOT_FOUND: &str = "Image NOT Found or is a directory";
const LABEL_NOT_FOUND: &str = "Label NOT Found or is a directory";

/// The extension to store an upload under, decided by its content alone (a name such as
/// `x.zip` or `x.nii.gz` proves nothing): NIfTI-1, plain or gzip, or NRRD; anything else is a
/// 422 that names the file.
async fn content_ext(file: &UploadedFile, what: &str) -> ApiResult<String> {
    let path = file.path();
    let sniffed =
        blocking(move || Ok::<_, TaskFailed>(ferrolabel_imaging::sniff_image_file(&path)))
            .await?
            .map_err(|e| ApiError::unprocessable(format!("cannot read {what}: {e}")))?;
    if let Some(ext) = sniffed.filter(|ext| *ext != file.ext) {
        tracing::info!(file = %file.filename, ext, "the content decides the extension, not the name");
    }
    sniffed.map(String::from).ok_or_else(|| {
        ApiError::unprocessable(format!(
            "cannot read {what} {:?}: its content is not a NIfTI-1 (.nii, .nii.gz) or NRRD \
             (.nrrd) image (the format is decided by the bytes, not the name)",
            file.filename
        ))
    })
}

/// Checks an uploaded image (format by content, readable, finite voxels, invertible
/// geometry: [`ferrolabel_apps::validate::read_image`]); the extension to store it under.
async fn checked_image(state: &AppState, file: &UploadedFile) -> ApiResult<String> {
    let ext = content_ext(file, "image").await?;
    state.app.load_image(file.path()).await?;
    Ok(ext)
}

/// Checks an uploaded label for the image at `image` (format by content, readable, finite, on
/// the image's grid: [`ferrolabel_apps::validate::check_label`]); the extension to store it
/// under.
async fn checked_label(state: &AppState, file: &UploadedFile, image: PathBuf) -> ApiResult<String> {
    let ext = content_ext(file, "label").await?;
    state.app.check_label(image, file.path()).await?;
    Ok(ext)
}

/// `GET /datastore/?output=stats|all|train`.
#[utoipa::path(
    get,
    path = "/datastore/",
    tag = "datastore",
    params(
        ("output" = Option<crate::openapi::schemas::DatastoreOutput>, Query, description = "What to list (default `stats`)"),
    ),
    responses(
        (status = 200, description = "`stats`: counts; `all`: MONAI Label's datastore model; `train`: image/label pairs", body = crate::openapi::schemas::DatastoreListing),
        (status = 422, description = "Unknown `output`", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn list(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let ds = &state.datastore;
    match q(&query, "output") {
        "" | "stats" => Ok(response::json(ds.status().await?)),
        "all" => Ok(response::json(ds.datastore_json().await?)),
        "train" => {
            let list: Vec<Value> = ds
                .datalist()
                .await?
                .into_iter()
                .map(|(i, l)| json!({"image": i.to_string_lossy(), "label": l.to_string_lossy()}))
                .collect();
            Ok(response::json(list))
        }
        other => Err(ApiError::unprocessable(format!(
            "query parameter \"output\": {other:?} is not one of stats, all, train"
        ))),
    }
}

/// `PUT /datastore/?image=` and `PUT /datastore/image?image=`: multipart `file` + `params`;
/// a DICOM series as one zip or as many `file`/`files` parts (`?series=` or a `series` param
/// chooses one series of several).
#[utoipa::path(
    put,
    path = "/datastore/",
    tag = "datastore",
    description = "Stores an image: the format is decided by the content (NIfTI-1, NRRD, or a DICOM series as a zip or as several DICOM files, stored as the NIfTI it assembles to). The id is `image`, else the file name without its extension.",
    params(
        ("image" = Option<String>, Query, description = "Image id (default: from the file name)"),
        ("series" = Option<String>, Query, description = "A DICOM series instance UID, to pick one series of several"),
    ),
    request_body(content = crate::openapi::schemas::ImageForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Stored", body = crate::openapi::schemas::ImageSaved),
        (status = 400, description = "A broken multipart body", body = crate::openapi::schemas::Detail),
        (status = 413, description = "Body over `--max-upload-mb`", body = crate::openapi::schemas::Detail),
        (status = 409, description = "An id clash", body = crate::openapi::schemas::Detail),
        (status = 422, description = "No `file` part, bad params JSON, an unsafe id, or an image that cannot be read (corrupt, not NIfTI/NRRD/DICOM, NaN voxels, singular geometry)", body = crate::openapi::schemas::Detail),
        (status = 502, description = "DICOMweb datastore: the PACS refused the upload or is unreachable", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn upload_image(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let mut form = read_form(&req, payload, state.upload_limits()).await?;
    let params = form.json_object("params")?;
    // one `file` part, or many (`file` or `files`) holding a DICOM series
    let mut files = form.take_files("file");
    files.extend(form.take_files("files"));
    let first = files
        .first()
        .ok_or_else(|| ApiError::unprocessable("missing file part \"file\""))?;
    let id = match q(&query, "image") {
        "" => id_from_filename(&first.filename).0,
        id => id.to_string(),
    };
    ferrolabel_datastore::validate_id(&id)?;
    let user = Identity::of(&req).username;
    // a zip or DICOM files: stored as the NIfTI the series assembles to (crate::dicom_upload)
    let uid = crate::dicom_upload::chosen_series(q(&query, "series"), &params);
    if let Some(series) = crate::dicom_upload::series_to_nifti(&state, &files, uid, false).await? {
        let id = crate::dicom_upload::store_series(&state, &id, series, params, &user).await?;
        return Ok(response::json(json!({ "image": id })));
    }
    // not DICOM: exactly one file (series_to_nifti refuses several)
    let file = &files[0];
    let ext = checked_image(&state, file).await?;
    let rec = state
        .datastore
        .add_image(&id, &ext, Source::File(file.path()), params, Some(&user))
        .await?;
    tracing::info!(image = %rec.id, bytes = file.size, "image stored");
    Ok(response::json(json!({"image": rec.id})))
}

fn image_not_found(e: DatastoreError) -> ApiError {
    match e {
        DatastoreError::NotFound(_) => ApiError::not_found(IMAGE_NOT_FOUND),
        other => other.into(),
    }
}

fn label_not_found(e: DatastoreError) -> ApiError {
    match e {
        DatastoreError::NotFound(_) => ApiError::not_found(LABEL_NOT_FOUND),
        other => other.into(),
    }
}

/// `DELETE /datastore/?id=` and `DELETE /datastore/image?id=`: the image and its labels.
#[utoipa::path(
    delete,
    path = "/datastore/",
    tag = "datastore",
    description = "Removes an image and its labels.",
    params(
        ("id" = String, Query, description = "Image id"),
    ),
    responses(
        (status = 200, description = "Removed", body = crate::openapi::schemas::Empty),
        (status = 404, description = "Unknown image", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Missing or unsafe `id`", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn remove_image(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let id = q_required(&query, "id")?;
    state
        .datastore
        .remove_image(id)
        .await
        .map_err(|e| match e {
            DatastoreError::NotFound(_) => ApiError::not_found(format!("Image NOT Found: {id}")),
            other => other.into(),
        })?;
    crate::dicom_source::remove(&state, id).await;
    Ok(response::empty_object())
}

/// `HEAD /datastore/image?image=&check_sum=SHA256:<hex>`: 200 `{}` if the file exists (and
/// matches the checksum, when one is given).
#[utoipa::path(
    head,
    path = "/datastore/image",
    tag = "datastore",
    params(
        ("image" = String, Query, description = "Image id"),
        ("check_sum" = Option<String>, Query, description = "`SHA256:<hex>`: also compare the file's checksum"),
    ),
    responses(
        (status = 200, description = "The image exists (and matches the checksum)"),
        (status = 404, description = "Unknown image, or the checksum differs", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Missing or unsafe `image`", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn head_image(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let id = q_required(&query, "image")?;
    let path = state
        .datastore
        .image_path(id)
        .await
        .map_err(image_not_found)?;
    let check = q(&query, "check_sum");
    if !check.is_empty() {
        let actual = blocking(move || ferrolabel_datastore::files::sha256_file(&path)).await?;
        let want = check
            .strip_prefix("SHA256:")
            .or_else(|| check.strip_prefix("sha256:"))
            .unwrap_or(check);
        if !actual.eq_ignore_ascii_case(want) {
            return Err(ApiError::not_found("Image NOT Found (checksum failed)"));
        }
    }
    Ok(response::empty_object())
}

/// `GET /datastore/image?image=`: the image file, named `<id><ext>`.
#[utoipa::path(
    get,
    path = "/datastore/image",
    tag = "datastore",
    params(
        ("image" = String, Query, description = "Image id"),
    ),
    responses(
        (status = 200, description = "The image file, named `<id><ext>`", content_type = "application/octet-stream", body = String),
        (status = 404, description = "Unknown image", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Missing or unsafe `image`", body = crate::openapi::schemas::Detail),
        (status = 502, description = "DICOMweb datastore: the PACS failed", body = crate::openapi::schemas::Detail),
        (status = 504, description = "DICOMweb datastore: the PACS timed out", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn download_image(
    state: web::Data<AppState>,
    query: QueryMap,
) -> ApiResult<HttpResponse> {
    let id = q_required(&query, "image")?;
    let rec = state
        .datastore
        .image(id)
        .await?
        .ok_or_else(|| ApiError::not_found(IMAGE_NOT_FOUND))?;
    let name = format!("{}{}", rec.id, rec.ext);
    // a PACS image is fetched on first use (502/504 when the PACS fails); with object storage
    // the record's path is this server's cache, which holds the blob only once it was fetched
    // (an image another server stored is not there yet)
    let path = if rec.remote || state.datastore.storage_url().is_some() {
        state
            .datastore
            .image_path(id)
            .await
            .map_err(image_not_found)?
    } else {
        rec.path
    };
    response::stream_file(&path, &name, ())
        .await
        .map_err(|_| ApiError::not_found(IMAGE_NOT_FOUND))
}

/// `GET /datastore/image/info?image=`: the info plus `path`; `{}` for an unknown id.
#[utoipa::path(
    get,
    path = "/datastore/image/info",
    tag = "datastore",
    params(
        ("image" = String, Query, description = "Image id"),
    ),
    responses(
        (status = 200, description = "The image info plus `path`; `{}` for an unknown id", body = crate::openapi::schemas::AnyObject),
        (status = 422, description = "Missing or unsafe `image`", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn image_info(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let id = q_required(&query, "image")?;
    let info = state.datastore.image_info(id).await?.unwrap_or_default();
    Ok(response::json(info))
}

async fn info_patch(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    field: &str,
) -> ApiResult<Map<String, Value>> {
    let form = read_form(req, payload, state.upload_limits()).await?;
    Ok(form.json_object(field)?)
}

/// `PUT /datastore/image/info?image=` (form field `info`): shallow merge; answers `null`.
#[utoipa::path(
    put,
    path = "/datastore/image/info",
    tag = "datastore",
    params(
        ("image" = String, Query, description = "Image id"),
    ),
    request_body(content = crate::openapi::schemas::InfoForm, content_type = "multipart/form-data", description = "Field `info`: a JSON object merged (shallowly) over the stored info; urlencoded works too."),
    responses(
        (status = 200, description = "Merged", body = crate::openapi::schemas::Null),
        (status = 400, description = "A broken multipart body", body = crate::openapi::schemas::Detail),
        (status = 413, description = "Body over `--max-upload-mb`", body = crate::openapi::schemas::Detail),
        (status = 404, description = "Unknown image", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Missing `image`, a missing or bad `info` JSON object", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn update_image_info(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let id = q_required(&query, "image")?.to_string();
    let patch = info_patch(&state, &req, payload, "info").await?;
    state
        .datastore
        .update_image_info(&id, patch, Some(&Identity::of(&req).username))
        .await
        .map_err(image_not_found)?;
    Ok(response::null())
}

/// `PUT /datastore/label?image=&tag=` (multipart `label` + `params`; tag defaults to `final`).
#[utoipa::path(
    put,
    path = "/datastore/label",
    tag = "datastore",
    description = "Stores a label (a new revision of `image`'s label under `tag`).",
    params(
        ("image" = String, Query, description = "Image id"),
        ("tag" = Option<String>, Query, description = "Label tag (default `final`)"),
    ),
    request_body(content = crate::openapi::schemas::LabelForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Stored", body = crate::openapi::schemas::LabelSaved),
        (status = 400, description = "A broken multipart body", body = crate::openapi::schemas::Detail),
        (status = 413, description = "Body over `--max-upload-mb`", body = crate::openapi::schemas::Detail),
        (status = 404, description = "Unknown image", body = crate::openapi::schemas::Detail),
        (status = 422, description = "No `label` part, bad params JSON, an unsafe id or tag, or a label that cannot be read or lies off the image's grid", body = crate::openapi::schemas::Detail),
        (status = 502, description = "DICOMweb datastore: the PACS failed", body = crate::openapi::schemas::Detail),
        (status = 504, description = "DICOMweb datastore: the PACS timed out", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn save_label(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let id = q_required(&query, "image")?.to_string();
    let tag = ferrolabel_datastore::normalize_tag(q(&query, "tag"))?.to_string();
    let mut form = read_form(&req, payload, state.upload_limits()).await?;
    let params = form.json_object("params")?;
    let label = form
        .take_file("label")
        .ok_or_else(|| ApiError::unprocessable("missing file part \"label\""))?;
    let Some(image) = state.datastore.image(&id).await? else {
        return Err(ApiError::not_found(format!("Image NOT Found: {id}")));
    };
    // a PACS image is made local (fetched on first use) for the grid check; when the PACS is
    // down and the series is not cached, the label is still kept (checked when its SEG is made)
    let ext = if image.remote {
        match state.datastore.image_path(&id).await {
            Ok(path) => checked_label(&state, &label, path).await?,
            Err(DatastoreError::Remote { status, detail }) if status >= 500 => {
                tracing::warn!(image = %id, %detail, "PACS down: label saved without the grid check");
                content_ext(&label, "label").await?
            }
            Err(e) => return Err(e.into()),
        }
    } else if state.datastore.storage_url().is_some() {
        // object storage: the image's blob, fetched into this server's cache if another
        // server stored it
        let path = state.datastore.image_path(&id).await?;
        checked_label(&state, &label, path).await?
    } else {
        checked_label(&state, &label, image.path).await?
    };
    // with auth on, the revision author is the logged-in user; otherwise the client's id
    let who = Identity::of(&req);
    let author = if who.authenticated {
        Some(who.username)
    } else {
        params
            .get("client_id")
            .and_then(Value::as_str)
            .map(String::from)
    };
    let rec = state
        .datastore
        .save_label(
            &id,
            &tag,
            &ext,
            Source::File(label.path()),
            params,
            author.as_deref(),
        )
        .await?;
    tracing::info!(image = %id, tag = %tag, rev = ?rec.rev, "label saved");
    let mut answer = json!({"image": id, "label": id});
    if let (Some(pacs), true) = (&state.pacs, image.remote && tag == FINAL_TAG) {
        // the label is saved; the SEG goes to the PACS now or later (docs/dicomweb.md)
        answer["pacs"] = crate::pacs::outbox::queue_final(pacs.clone(), &id, rec.rev).await?;
    }
    Ok(response::json(answer))
}

/// `GET /datastore/label?label=&tag=`: the label file, named `<id><ext>`; with
/// `format=dicom_seg` (and `seg_type=binary|labelmap`), its DICOM SEG on the image's DICOM
/// source (`crate::dicom_source`, docs/dicom.md).
#[utoipa::path(
    get,
    path = "/datastore/label",
    tag = "datastore",
    params(
        ("label" = String, Query, description = "Image id"),
        ("tag" = String, Query, description = "Label tag (may be empty: `final`)"),
        ("format" = Option<crate::openapi::schemas::LabelFormat>, Query, description = "Default `label`"),
        ("seg_type" = Option<crate::openapi::schemas::SegType>, Query, description = "With `format=dicom_seg` (default `binary`)"),
    ),
    responses(
        (status = 200, description = "The label file, named `<id><ext>`, or with `format=dicom_seg` a DICOM SEG", content(
            (String = "application/octet-stream"),
            (String = "application/dicom"),
        )),
        (status = 404, description = "Unknown label", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Missing `label` or `tag`, a bad `format` or `seg_type`, or `dicom_seg` for an image without a DICOM source", body = crate::openapi::schemas::Detail),
        (status = 502, description = "DICOMweb datastore: the PACS failed", body = crate::openapi::schemas::Detail),
        (status = 504, description = "DICOMweb datastore: the PACS timed out", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn download_label(
    state: web::Data<AppState>,
    query: QueryMap,
) -> ApiResult<HttpResponse> {
    let id = q_required(&query, "label")?;
    let tag = query
        .get("tag")
        .ok_or_else(|| ApiError::unprocessable("missing query parameter \"tag\""))?;
    let seg_type = match q(&query, "format") {
        "" | "label" => None,
        "dicom_seg" => Some(crate::dicom_source::seg_type(q(&query, "seg_type"))?),
        other => {
            return Err(ApiError::unprocessable(format!(
                "query parameter \"format\": {other:?} is not one of label, dicom_seg"
            )))
        }
    };
    let mut rec = state
        .datastore
        .label(id, tag)
        .await?
        .ok_or_else(|| ApiError::not_found(LABEL_NOT_FOUND))?;
    if state.datastore.storage_url().is_some() {
        // the blob, fetched into this server's cache unless there (another server saved it)
        rec.path = state
            .datastore
            .label_path(id, tag)
            .await
            .map_err(label_not_found)?;
    }
    if let Some(kind) = seg_type {
        let series = crate::dicom_source::load(&state, &rec.image_id)
            .await?
            .ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "image {} has no DICOM source: {}",
                    rec.image_id,
                    crate::dicom_source::NOT_DICOM
                ))
            })?;
        let structures = crate::dicom_source::structures(&state, &rec.info);
        let label = crate::dicom_source::LabelInput::File(rec.path.clone());
        let description = format!("ferrolabel {tag} label");
        let seg =
            crate::dicom_source::label_seg(&state, series, label, structures, kind, description)
                .await?;
        return Ok(crate::dicom_source::seg_response(
            seg,
            &format!("{}.dcm", rec.image_id),
        ));
    }
    let name = format!("{}{}", rec.image_id, rec.ext);
    response::stream_file(&rec.path, &name, ())
        .await
        .map_err(|_| ApiError::not_found(LABEL_NOT_FOUND))
}

/// `HEAD /datastore/label?image=&tag=` (the id is in `image`).
#[utoipa::path(
    head,
    path = "/datastore/label",
    tag = "datastore",
    params(
        ("image" = String, Query, description = "Image id"),
        ("tag" = Option<String>, Query, description = "Label tag (default `final`)"),
    ),
    responses(
        (status = 200, description = "The label exists"),
        (status = 404, description = "Unknown label", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Missing or unsafe `image`, or an unsafe tag", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn head_label(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let id = q_required(&query, "image")?;
    state
        .datastore
        .label_path(id, q(&query, "tag"))
        .await
        .map_err(label_not_found)?;
    Ok(response::empty_object())
}

/// `DELETE /datastore/label?id=&tag=`: `{}` whether or not the label existed.
#[utoipa::path(
    delete,
    path = "/datastore/label",
    tag = "datastore",
    params(
        ("id" = String, Query, description = "Image id"),
        ("tag" = Option<String>, Query, description = "Label tag (default `final`)"),
    ),
    responses(
        (status = 200, description = "Removed (or there was none)", body = crate::openapi::schemas::Empty),
        (status = 422, description = "Missing or unsafe `id`, or an unsafe tag", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn remove_label(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let id = q_required(&query, "id")?;
    state.datastore.remove_label(id, q(&query, "tag")).await?;
    Ok(response::empty_object())
}

/// `GET /datastore/label/info?label=&tag=`: the label info, `{}` if unknown.
#[utoipa::path(
    get,
    path = "/datastore/label/info",
    tag = "datastore",
    params(
        ("label" = String, Query, description = "Image id"),
        ("tag" = Option<String>, Query, description = "Label tag (default `final`)"),
    ),
    responses(
        (status = 200, description = "The label info; `{}` if unknown", body = crate::openapi::schemas::AnyObject),
        (status = 422, description = "Missing or unsafe `label`, or an unsafe tag", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn label_info(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let id = q_required(&query, "label")?;
    let info = state
        .datastore
        .label_info(id, q(&query, "tag"))
        .await?
        .unwrap_or_default();
    Ok(response::json(info))
}

async fn update_label(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: QueryMap,
    payload: web::Payload,
    field: &str,
) -> ApiResult<HttpResponse> {
    let id = q_required(&query, "label")?.to_string();
    let tag = q(&query, "tag").to_string();
    let patch = info_patch(&state, &req, payload, field).await?;
    state
        .datastore
        .update_label_info(&id, &tag, patch, Some(&Identity::of(&req).username))
        .await
        .map_err(label_not_found)?;
    Ok(response::null())
}

/// `PUT /datastore/label/info?label=&tag=` (form field `info`): answers `null`.
#[utoipa::path(
    put,
    path = "/datastore/label/info",
    tag = "datastore",
    params(
        ("label" = String, Query, description = "Image id"),
        ("tag" = Option<String>, Query, description = "Label tag (default `final`)"),
    ),
    request_body(content = crate::openapi::schemas::InfoForm, content_type = "multipart/form-data", description = "Field `info`: a JSON object merged over the stored label info; urlencoded works too."),
    responses(
        (status = 200, description = "Merged", body = crate::openapi::schemas::Null),
        (status = 400, description = "A broken multipart body", body = crate::openapi::schemas::Detail),
        (status = 413, description = "Body over `--max-upload-mb`", body = crate::openapi::schemas::Detail),
        (status = 404, description = "Unknown label", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Missing `label`, an unsafe tag, a missing or bad JSON object", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn update_label_info(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    update_label(state, req, query, payload, "info").await
}

/// `PUT /datastore/updatelabelinfo?label=&tag=` (form field `params`): answers `null`.
#[utoipa::path(
    put,
    path = "/datastore/updatelabelinfo",
    tag = "datastore",
    params(
        ("label" = String, Query, description = "Image id"),
        ("tag" = Option<String>, Query, description = "Label tag (default `final`)"),
    ),
    request_body(content = crate::openapi::schemas::ParamsForm, content_type = "multipart/form-data", description = "Field `params`: a JSON object merged over the stored label info; urlencoded works too."),
    responses(
        (status = 200, description = "Merged", body = crate::openapi::schemas::Null),
        (status = 400, description = "A broken multipart body", body = crate::openapi::schemas::Detail),
        (status = 413, description = "Body over `--max-upload-mb`", body = crate::openapi::schemas::Detail),
        (status = 404, description = "Unknown label", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Missing `label`, an unsafe tag, a missing or bad JSON object", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn update_label_info_params(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    update_label(state, req, query, payload, "params").await
}

/// `GET /datastore/dataset?limit_cases=`: a zip of every `final` label with its image, plus
/// `metadata.json` (the datastore model).
#[utoipa::path(
    get,
    path = "/datastore/dataset",
    tag = "datastore",
    params(
        ("limit_cases" = Option<i64>, Query, description = "At most this many cases (0 or absent: all)"),
    ),
    responses(
        (status = 200, description = "A zip of every `final` label with its image and `metadata.json`", content_type = "application/zip", body = String),
        (status = 404, description = "No image has a `final` label", body = crate::openapi::schemas::Detail),
        (status = 422, description = "`limit_cases` is not an integer", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn dataset(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let mut pairs = state.datastore.datalist_local().await?;
    if pairs.is_empty() {
        return Err(ApiError::not_found(format!(
            "no images with a {FINAL_TAG} label: nothing to export"
        )));
    }
    let limit = q_int(&query, "limit_cases", 0)?;
    if limit >= 1 && (limit as usize) < pairs.len() {
        pairs.truncate(limit as usize);
    }
    let meta = state.datastore.datastore_json().await?;
    let tmp_dir = state.settings.tmp_dir.clone();
    let zip = blocking(move || zip_export::write(&tmp_dir, &pairs, &meta)).await?;
    let path = zip.to_path_buf();
    response::stream_file(&path, "dataset.zip", zip).await
}
