//! [`ApiError`]: every handled failure becomes `{"detail": "<message>"}` with a status code.
//!
//! Status mapping (documented in the README's API notes):
//! * 400 — malformed request framing (broken multipart body, unreadable form);
//! * 404 — unknown model, strategy, image, label, session or path;
//! * 405 — wrong method for a known path;
//! * 406 — sessions disabled (`MONAI_LABEL_SESSIONS=false`);
//! * 409 — an id clash in the datastore;
//! * 413 — an upload over `--max-upload-mb`;
//! * 415 — an infer body that is neither multipart nor urlencoded (refused from the headers);
//! * 422 — invalid input: bad params JSON or values, unknown `output`, ids or tags with path
//!   separators, `..` or a leading dot, corrupt / truncated / non-NIfTI / NaN or infinite /
//!   singular-geometry images, labels off their image's grid;
//! * 429 — the inference queue is full;
//! * 503 — model weights are not installed;
//! * 500 — anything else (logged with its cause).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use ferrolabel_apps::AppError;
use ferrolabel_datastore::DatastoreError;

/// An error answered as `{"detail": ...}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
    allow: Option<&'static str>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
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

    /// 500 Internal Server Error (the cause is logged by the caller or by `From`).
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
    }
}

impl std::fmt::Display for ApiError {
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
        res.json(serde_json::json!({ "detail": self.detail }))
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %e, "app task failed");
        }
        ApiError::new(status, e.to_string())
    }
}

impl From<DatastoreError> for ApiError {
    fn from(e: DatastoreError) -> Self {
        match e {
            DatastoreError::NotFound(m) => ApiError::not_found(format!("not found: {m}")),
            DatastoreError::InvalidId(m) => ApiError::unprocessable(format!("invalid id: {m}")),
            DatastoreError::Invalid(m) => ApiError::unprocessable(m),
            DatastoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            DatastoreError::Remote { status, detail } => {
                tracing::warn!(status, %detail, "PACS failure");
                ApiError::new(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    detail,
                )
            }
            other => {
                tracing::error!(error = %other, "datastore failure");
                ApiError::internal(format!("datastore error: {other}"))
            }
        }
    }
}

impl From<ferrolabel_dicomweb::DicomWebError> for ApiError {
    /// The PACS's faults are 502 (unreachable, an error status, garbage, a refused STOW) or 504
    /// (timed out); a series that is not a usable CT is 422 (`DicomWebError::http_status`).
    fn from(e: ferrolabel_dicomweb::DicomWebError) -> Self {
        let status = e.http_status();
        if status >= 500 {
            tracing::warn!(status, error = %e, "PACS failure");
        }
        ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            e.to_string(),
        )
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        tracing::error!(error = %e, "I/O failure");
        ApiError::internal(format!("I/O error: {e}"))
    }
}

/// Joins a blocking task, turning a panic into a 500.
pub fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::internal(format!("background task failed: {e}")))
}

/// `Result` with [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;
