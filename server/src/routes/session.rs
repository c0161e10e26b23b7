//! `/session/`: images kept outside the datastore for interactive work (docs/protocol.md §7). Every
//! endpoint answers 406 when sessions are disabled (`MONAI_LABEL_SESSIONS=false`). A one-file
//! session is refused (422) unless the file is a usable image, as a datastore upload is. A DICOM
//! series (one zip, or DICOM files) becomes one image, the NIfTI it assembles to
//! (`crate::dicom_upload`), refused with a 422 naming the cause when it is not one clean CT
//! series; several files none of which is DICOM make a folder, as in MONAI Label.

use actix_web::{web, HttpRequest, HttpResponse};
use ferrolabel_datastore::{validate_session_id, Source};
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::multipart::read_form;
use crate::response;
use crate::routes::{q, q_bool, q_int, QueryMap};
use crate::state::AppState;

/// The file name of a session image assembled from a DICOM series.
const SERIES_IMAGE: &str = "series.nii.gz";

/// `PUT /session/?expiry=&uncompress=false&series=` (multipart `files`, one or more; a
/// `series` query parameter or form field chooses one series of a DICOM upload).
#[utoipa::path(
    put,
    path = "/session/",
    tag = "session",
    description = "Keeps an image outside the datastore (one file, a DICOM series, or several files as a folder).",
    params(
        ("expiry" = Option<i64>, Query, description = "Seconds until it expires (0 or absent: the server's default)"),
        ("uncompress" = Option<bool>, Query, description = "Must be false (not supported)"),
        ("series" = Option<String>, Query, description = "A DICOM series instance UID, to pick one series of several"),
    ),
    request_body(content = crate::openapi::schemas::SessionForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Created", body = crate::openapi::schemas::SessionCreated),
        (status = 400, description = "A broken multipart body", body = crate::openapi::schemas::Detail),
        (status = 413, description = "Body over `--max-upload-mb`", body = crate::openapi::schemas::Detail),
        (status = 406, description = "Sessions are disabled (`MONAI_LABEL_SESSIONS=false`)", body = crate::openapi::schemas::Detail),
        (status = 422, description = "No `files` part, `uncompress=true`, a bad `expiry`, or an image that cannot be read", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: QueryMap,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let sessions = state.sessions()?.clone();
    let expiry = q_int(&query, "expiry", 0)?;
    if q_bool(&query, "uncompress", false)? {
        return Err(ApiError::unprocessable(
            "uncompress=true is not supported: upload the image files themselves",
        ));
    }
    let mut form = read_form(&req, payload, state.upload_limits()).await?;
    let files = form.take_files("files");
    if files.is_empty() {
        return Err(ApiError::unprocessable("missing file part \"files\""));
    }
    let uid = match q(&query, "series") {
        "" => form.field("series").unwrap_or(""),
        v => v,
    };
    let uid = crate::dicom_upload::chosen_series(uid, &Default::default());
    if let Some(series) = crate::dicom_upload::series_to_nifti(&state, &files, uid, true).await? {
        let nifti = series.nifti.to_path_buf();
        state.app.load_image(nifti.clone()).await?;
        let info = sessions
            .create(
                vec![(SERIES_IMAGE.to_string(), Source::File(nifti))],
                expiry,
            )
            .await?;
        drop(series);
        drop(files);
        return Ok(response::json(
            json!({"session_id": info.name, "session_info": info}),
        ));
    }
    // one file is the session image: checked as an upload is (readable NIfTI/NRRD, finite
    // voxels, invertible geometry); several non-DICOM files are a folder, checked when used
    if let [file] = files.as_slice() {
        state.app.load_image(file.path()).await?;
    }
    let sources = files
        .iter()
        .map(|f| (f.filename.clone(), Source::File(f.path())))
        .collect();
    let info = sessions.create(sources, expiry).await?;
    drop(files);
    Ok(response::json(
        json!({"session_id": info.name, "session_info": info}),
    ))
}

fn session_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Session ({id}) Not Found"))
}

/// `GET /session/{id}?update_ts=false&image=false`: the session info, or its image file.
#[utoipa::path(
    get,
    path = "/session/{id}",
    tag = "session",
    params(
        ("id" = String, Path, description = "Session id"),
        ("update_ts" = Option<bool>, Query, description = "Extend the expiry"),
        ("image" = Option<bool>, Query, description = "Answer the image file"),
    ),
    responses(
        (status = 200, description = "The session info, or with `image=true` its image file", content(
            (crate::openapi::schemas::SessionInfo = "application/json"),
            (String = "application/octet-stream"),
        )),
        (status = 404, description = "Unknown session", body = crate::openapi::schemas::Detail),
        (status = 406, description = "Sessions are disabled (`MONAI_LABEL_SESSIONS=false`)", body = crate::openapi::schemas::Detail),
        (status = 422, description = "A bad boolean, or `image=true` for a folder session", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: QueryMap,
) -> ApiResult<HttpResponse> {
    let sessions = state.sessions()?;
    let id = path.into_inner();
    if validate_session_id(&id).is_err() {
        return Err(session_not_found(&id));
    }
    let update_ts = q_bool(&query, "update_ts", false)?;
    let info = sessions
        .get(&id, update_ts)
        .await?
        .ok_or_else(|| session_not_found(&id))?;
    if q_bool(&query, "image", false)? {
        if info.image.is_dir() {
            return Err(ApiError::unprocessable(
                "the session image is a folder of files",
            ));
        }
        let name = info
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return response::stream_file(&info.image, &name, ()).await;
    }
    Ok(response::json(info))
}

/// `DELETE /session/{id}`: the removed session's info.
#[utoipa::path(
    delete,
    path = "/session/{id}",
    tag = "session",
    params(
        ("id" = String, Path, description = "Session id"),
    ),
    responses(
        (status = 200, description = "The removed session's info", body = crate::openapi::schemas::SessionInfo),
        (status = 404, description = "Unknown session", body = crate::openapi::schemas::Detail),
        (status = 406, description = "Sessions are disabled (`MONAI_LABEL_SESSIONS=false`)", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn remove(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let sessions = state.sessions()?;
    let id = path.into_inner();
    if validate_session_id(&id).is_err() {
        return Err(ApiError::not_found("Session Not Found"));
    }
    let info = sessions
        .remove(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("Session Not Found"))?;
    Ok(response::json(info))
}
