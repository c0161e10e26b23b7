//! [`ApiError`]: every handled failure becomes `{"detail": "<message>"}` with a status code; and
//! the one table from the library crates' errors to HTTP statuses ([`app_status`],
//! [`models_status`], [`datastore_status`], [`dicomweb_status`], [`form_status`]). The library crates know no
//! HTTP status; this module is the only place that picks one for their errors.
//!
//! Statuses (documented in docs/protocol.md):
//! * 400 — malformed request framing (broken multipart body, unreadable form), fetching a
//!   DICOM series by frame;
//! * 404 — unknown model, strategy, scoring method, image, label, session, task or path;
//! * 405 — wrong method for a known path;
//! * 406 — sessions disabled (`MONAI_LABEL_SESSIONS=false`);
//! * 409 — an id clash in the datastore, a task that has already ended;
//! * 413 — an upload over `--max-upload-mb`;
//! * 415 — an infer body that is neither multipart nor urlencoded (refused from the headers);
//! * 422 — invalid input: bad params JSON or values, unknown `output`, ids or tags with path
//!   separators, `..` or a leading dot, corrupt / truncated / non-NIfTI / NaN or infinite /
//!   singular-geometry images, labels off their image's grid, a PACS series that is not a CT;
//! * 429 — busy, try again: the inference queue is full, or a task of the kind already runs;
//! * 499 — the client went away before its inference ran (nobody reads the answer);
//! * 502 / 504 — the PACS failed / timed out;
//! * 503 — the model weights are not installed, or the inference engine is stopped (shutting
//!   down): retrying this process will not help;
//! * 500 — anything else. The client reads only `{"detail": "Internal Server Error"}`; the
//!   cause, with its chain of sources, goes to the log (`tracing::error!`).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use ferrolabel_apps::AppError;
use ferrolabel_datastore::DatastoreError;
use ferrolabel_dicomweb::DicomWebError;
use ferrolabel_forms::FormError;
use ferrolabel_models::ModelsError;

/// The body of every 500: the cause is in the log, not in the answer.
pub const INTERNAL_DETAIL: &str = "Internal Server Error";

/// A status by number (every number used in this table is a valid status code).
fn code(n: u16) -> StatusCode {
    StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The status answered for an app error.
pub fn app_status(e: &AppError) -> StatusCode {
    match e {
        AppError::InvalidParams(_)
        | AppError::BadImage(_)
        | AppError::BadLabel(_)
        | AppError::BadWeights(_) => StatusCode::UNPROCESSABLE_ENTITY,
        AppError::ModelNotFound(_)
        | AppError::StrategyNotFound(_)
        | AppError::MethodNotFound(_)
        | AppError::JobNotFound(_) => StatusCode::NOT_FOUND,
        AppError::JobEnded(_) => StatusCode::CONFLICT,
        AppError::JobFailed { cause, .. } => cause
            .as_deref()
            .map_or(StatusCode::INTERNAL_SERVER_ERROR, app_status),
        AppError::WeightsMissing { .. } | AppError::EngineUnavailable(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        AppError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
        // nobody is listening any more; 499 is nginx's "client closed request"
        AppError::Cancelled => code(499),
        AppError::Engine(e) => models_status(e),
        AppError::Datastore(e) => datastore_status(e),
        AppError::Bundle { .. } | AppError::Encode(_) | AppError::Task(_) | AppError::Io(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The status answered for an engine error that reaches the server as
/// [`AppError::Engine`]: a stopped engine is 503, a full queue 429, the rest (a crashed job,
/// libtorch, weights that fail to load) 500. (`From<ModelsError> for AppError` turns bad input
/// into 422s and a cancelled job into [`AppError::Cancelled`] before this.)
pub fn models_status(e: &ModelsError) -> StatusCode {
    match e {
        ModelsError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ModelsError::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
        ModelsError::Invalid(_) | ModelsError::Imaging(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ModelsError::Cancelled => code(499),
        ModelsError::WeightsMissing(_)
        | ModelsError::WeightsMismatch(_)
        | ModelsError::Checkpoint(_)
        | ModelsError::Bundle(_)
        | ModelsError::Torch(_)
        | ModelsError::Panicked(_)
        | ModelsError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status answered for a datastore error: 404 unknown, 422 bad id or request, 409 clash,
/// the PACS's own status for a remote failure (502/504/422), 502 for the object storage, else 500.
pub fn datastore_status(e: &DatastoreError) -> StatusCode {
    match e {
        DatastoreError::NotFound(_) => StatusCode::NOT_FOUND,
        DatastoreError::InvalidId(_) | DatastoreError::Invalid(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        DatastoreError::Conflict(_) => StatusCode::CONFLICT,
        DatastoreError::Remote { status, .. } => {
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
        }
        // the object storage (`--storage-url`) is an upstream server
        DatastoreError::Storage(_) => StatusCode::BAD_GATEWAY,
        DatastoreError::Io { .. }
        | DatastoreError::Db(_)
        | DatastoreError::Migrate(_)
        | DatastoreError::Json(_)
        | DatastoreError::MalformedJson { .. }
        | DatastoreError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status answered for a DICOMweb error: 504 for a PACS that timed out, 502 for its other
/// faults (unreachable, an error status, garbage, a refused STOW), 422 for a series that is not
/// a usable CT, 400 for fetching by frame, 500 for the rest (settings, local disk).
pub fn dicomweb_status(e: &DicomWebError) -> StatusCode {
    match e {
        DicomWebError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        e if e.is_gateway_error() => StatusCode::BAD_GATEWAY,
        DicomWebError::Series { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        DicomWebError::Unsupported(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status answered for a refused form body ([`ferrolabel_forms`]): malformed 400, a text
/// field that is not a JSON object 422, over the upload limit 413, temp-file I/O 500.
pub fn form_status(e: &FormError) -> StatusCode {
    match e {
        FormError::BadRequest(_) => StatusCode::BAD_REQUEST,
        FormError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        FormError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        FormError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The detail of a 413: the upload limit in MiB and the flag that sets it.
pub fn upload_too_large(max_bytes: u64) -> String {
    format!(
        "request body larger than the upload limit of {} MiB (--max-upload-mb)",
        max_bytes >> 20
    )
}

/// The detail of a datastore error: `Invalid` and `Conflict` answer their message alone, the
/// rest their display (`not found: …`, `invalid id: …`).
fn datastore_detail(e: &DatastoreError) -> String {
    match e {
        DatastoreError::Invalid(m) | DatastoreError::Conflict(m) => m.clone(),
        other => other.to_string(),
    }
}

/// The detail of an app error (its display; a datastore error's as [`datastore_detail`]).
fn app_detail(e: &AppError) -> String {
    match e {
        AppError::Datastore(d) => datastore_detail(d),
        AppError::JobFailed {
            cause: Some(cause), ..
        } => app_detail(cause),
        other => other.to_string(),
    }
}

/// An error and its sources, `: `-joined (a source whose text the message already holds is
/// left out).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// An error answered as `{"detail": ...}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
    allow: Option<&'static str>,
}

impl ApiError {
    /// An error with a status and a message. A 500's message is the cause: it is logged here
    /// and the client reads [`INTERNAL_DETAIL`].
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(cause = %detail, "internal server error");
        }
        Self {
            status,
            detail,
            allow: None,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404 Not Found.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 405 Method Not Allowed, with the `Allow` header.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            detail: "Method Not Allowed".into(),
            allow: Some(allow),
        }
    }

    /// 413 Payload Too Large.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, detail)
    }

    /// 415 Unsupported Media Type.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail)
    }

    /// 422 Unprocessable Entity.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    /// 500 Internal Server Error: `cause` goes to the log, the client reads
    /// [`INTERNAL_DETAIL`].
    pub fn internal(cause: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, cause)
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `detail` the client reads ([`INTERNAL_DETAIL`] for a 500).
    pub fn detail(&self) -> &str {
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            INTERNAL_DETAIL
        } else {
            &self.detail
        }
    }
}

impl std::fmt::Display for ApiError {
    /// The status and the whole message (a 500's cause included): for logs, not for clients.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if let Some(allow) = self.allow {
            res.insert_header((header::ALLOW, allow));
        }
        res.json(serde_json::json!({ "detail": self.detail() }))
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        let status = app_status(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            return ApiError::internal(format!("app task failed: {}", error_chain(&e)));
        }
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %e, "app task refused");
        }
        ApiError::new(status, app_detail(&e))
    }
}

impl From<DatastoreError> for ApiError {
    fn from(e: DatastoreError) -> Self {
        let status = datastore_status(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            return ApiError::internal(format!("datastore failure: {}", error_chain(&e)));
        }
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %e, "PACS failure");
        }
        ApiError::new(status, datastore_detail(&e))
    }
}

impl From<DicomWebError> for ApiError {
    fn from(e: DicomWebError) -> Self {
        let status = dicomweb_status(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            return ApiError::internal(format!("DICOMweb failure: {}", error_chain(&e)));
        }
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %e, "PACS failure");
        }
        ApiError::new(status, e.to_string())
    }
}

impl From<FormError> for ApiError {
    fn from(e: FormError) -> Self {
        let status = form_status(&e);
        match e {
            FormError::BadRequest(m) | FormError::Unprocessable(m) => ApiError::new(status, m),
            FormError::TooLarge { max_bytes } => ApiError::new(status, upload_too_large(max_bytes)),
            FormError::Io(e) => e.into(),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::internal(format!("I/O error: {}", error_chain(&e)))
    }
}

/// A blocking task that panicked ([`ferrolabel_datastore::blocking`]): a 500.
impl From<ferrolabel_datastore::TaskFailed> for ApiError {
    fn from(e: ferrolabel_datastore::TaskFailed) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// `Result` with [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests;
