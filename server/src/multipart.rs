//! Request bodies: streaming `multipart/form-data` to temp files under a size cap, urlencoded
//! forms and small JSON bodies.
//!
//! Uploads are written chunk by chunk to `<studies>/.ferrolabel/tmp/.upload-*<ext>` (same file
//! system as the studies, so the datastore can move them into place) and deleted when the
//! [`UploadedFile`] is dropped. The total body size is checked while streaming: past the limit
//! the request fails with 413 and nothing more is stored (the rest of the body is read and
//! discarded, up to a bound, so that the client sees the answer instead of a broken pipe).
//!
//! The byte-level parsing lives in [`ferrolabel_forms`] (fuzzed by `fuzz/`); this module feeds it
//! actix payloads and maps its errors to HTTP answers.

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::HttpRequest;
use ferrolabel_datastore::ids::upload_name;
use futures_util::StreamExt;
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
pub use ferrolabel_forms::{Form, UploadLimits, UploadedFile};
use ferrolabel_forms::{MAX_DRAIN, MAX_TEXT_FIELD};

/// Parses a JSON object from text (blank → `{}`); 422 with `what` in the message otherwise.
pub fn parse_json_object(text: &str, what: &str) -> ApiResult<Map<String, Value>> {
    ferrolabel_forms::parse_json_object(text, what).map_err(ApiError::unprocessable)
}

fn content_type(req: &HttpRequest) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn too_large(max: u64) -> ApiError {
    ApiError::too_large(crate::error::upload_too_large(max))
}

/// Reads a form body: `multipart/form-data` (files streamed to temp files) or
/// `application/x-www-form-urlencoded`. Any other content type (e.g. JSON) gives an empty form,
/// as MONAI Label ignores such bodies on form endpoints.
pub async fn read_form(
    req: &HttpRequest,
    payload: web::Payload,
    limits: UploadLimits<'_>,
) -> ApiResult<Form> {
    let ct = content_type(req);
    if ct.starts_with("multipart/") {
        ferrolabel_forms::parse_multipart(req.headers(), payload.into_inner(), limits, upload_name)
            .await
            .map_err(ApiError::from)
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        let cap = limits.max_bytes.min(MAX_TEXT_FIELD as u64 * 4);
        let body = read_body(payload, cap).await?;
        ferrolabel_forms::parse_urlencoded(&body).map_err(ApiError::from)
    } else {
        Ok(Form::default())
    }
}

/// Reads a whole body into memory, refusing (413) more than `cap` bytes.
pub async fn read_body(mut payload: web::Payload, cap: u64) -> ApiResult<Bytes> {
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if (buf.len() + chunk.len()) as u64 > cap {
            drain(&mut payload, (buf.len() + chunk.len()) as u64).await;
            return Err(too_large(cap));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

async fn drain(payload: &mut web::Payload, mut seen: u64) {
    while let Some(Ok(chunk)) = payload.next().await {
        seen += chunk.len() as u64;
        if seen > MAX_DRAIN {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_are_422() {
        assert!(parse_json_object("", "p").unwrap().is_empty());
        assert!(parse_json_object("[1]", "p").is_err());
    }
}
