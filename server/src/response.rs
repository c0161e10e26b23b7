//! Response builders: files with `Content-Disposition`, the multipart `/infer` answer, and
//! Python-style JSON.
//!
//! Every response here carries `Content-Length` (sized bodies), never chunked encoding: the
//! MONAI Label clients parse multipart answers straight off the socket (docs/protocol.md §4.3).

use std::path::Path;

use actix_web::body::SizedStream;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::HttpResponse;
use futures_util::stream;
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::error::{ApiError, ApiResult};
pub use ferrolabel_forms::python_json;

/// The content type MONAI Label's `get_mime_type` gives a file name.
pub fn mime_for(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".json") {
        "application/json"
    } else if lower.ends_with(".zip") {
        "application/zip"
    } else if lower.ends_with(".png") {
        "image/png"
    } else {
        "application/octet-stream"
    }
}

/// `attachment; filename="<name>"`, or the RFC 5987 form for names that are not plain ASCII.
pub fn content_disposition(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\');
    if plain {
        format!("attachment; filename=\"{name}\"")
    } else {
        let mut enc = String::new();
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        format!("attachment; filename*=utf-8''{enc}")
    }
}

/// A file held in memory, as an attachment named `name`.
pub fn bytes_file(bytes: Vec<u8>, name: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(mime_for(name))
        .insert_header((header::CONTENT_DISPOSITION, content_disposition(name)))
        .body(bytes)
}

/// Streams a file from disk as an attachment named `name`, with `Content-Length`. `keep` is
/// dropped when the stream ends (e.g. a temp file guard that deletes the file).
pub async fn stream_file<K: 'static>(path: &Path, name: &str, keep: K) -> ApiResult<HttpResponse> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ApiError::not_found(format!("cannot open {name}: {e}")))?;
    let meta = file.metadata().await?;
    if !meta.is_file() {
        return Err(ApiError::not_found(format!("{name} is not a file")));
    }
    let len = meta.len();
    let body = stream::unfold((file, keep, false), |(mut file, keep, done)| async move {
        if done {
            return None;
        }
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<_, std::io::Error>(Bytes::from(buf)),
                    (file, keep, false),
                ))
            }
            Err(e) => Some((Err(e), (file, keep, true))),
        }
    });
    let mut res = HttpResponse::Ok();
    res.content_type(mime_for(name))
        .insert_header((header::CONTENT_DISPOSITION, content_disposition(name)));
    if let Ok(modified) = meta.modified() {
        let t: chrono::DateTime<chrono::Utc> = modified.into();
        res.insert_header((
            header::LAST_MODIFIED,
            t.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        ));
    }
    Ok(res.body(SizedStream::new(len, body)))
}

/// The `/infer` multipart answer: a `params` part (JSON, no filename) then an `image` part
/// (`filename="<name>"`, octet-stream), boundary = uuid4 hex, CRLF line ends.
pub fn infer_multipart(params: &Value, image_name: &str, image: &[u8]) -> HttpResponse {
    let boundary = uuid::Uuid::new_v4().simple().to_string();
    let params = python_json(params);
    let mut body = Vec::with_capacity(image.len() + params.len() + 512);
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(b"Content-Disposition: form-data; name=\"params\"\r\n");
    body.extend_from_slice(b"Content-Type: application/json\r\n\r\n");
    body.extend_from_slice(&params);
    body.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    body.extend_from_slice(
        format!("Content-Disposition: form-data; name=\"image\"; filename=\"{image_name}\"\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(format!("Content-Type: {}\r\n\r\n", mime_for(image_name)).as_bytes());
    body.extend_from_slice(image);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        ))
        .body(body)
}

/// `200` with a JSON body.
pub fn json(value: impl Serialize) -> HttpResponse {
    HttpResponse::Ok().json(value)
}

/// `200` with the body `null` (what MONAI Label answers for info updates).
pub fn null() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body("null")
}

/// `200 {}`.
pub fn empty_object() -> HttpResponse {
    HttpResponse::Ok().json(Value::Object(Default::default()))
}

/// A file compiled into the binary: name, content type, bytes (the dashboard's and Swagger UI's).
pub type EmbeddedFile = (&'static str, &'static str, &'static [u8]);

/// The file `name` of `files` with its content type and `Cache-Control: cache_control`; 404 when
/// `files` has none of that name. Serves `/ui/{file}` and `/docs/{file}`.
pub fn embedded_file(
    files: &[EmbeddedFile],
    name: &str,
    cache_control: &'static str,
) -> ApiResult<HttpResponse> {
    let (_, content_type, bytes) = files
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::not_found("Not Found"))?;
    Ok(HttpResponse::Ok()
        .content_type(*content_type)
        .insert_header((header::CACHE_CONTROL, cache_control))
        .body(*bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_layout() {
        let v = json!({"label_names": {"spleen": 1, "liver": 5}, "a": [1, 2.5], "s": "é"});
        assert_eq!(
            String::from_utf8(python_json(&v)).unwrap(),
            r#"{"label_names": {"spleen": 1, "liver": 5}, "a": [1, 2.5], "s": "\u00e9"}"#
        );
    }

    #[test]
    fn dispositions() {
        assert_eq!(
            content_disposition("a.nii.gz"),
            "attachment; filename=\"a.nii.gz\""
        );
        assert_eq!(
            content_disposition("é.nrrd"),
            "attachment; filename*=utf-8''%C3%A9.nrrd"
        );
    }
}
