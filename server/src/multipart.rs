//! Request bodies: streaming `multipart/form-data` to temp files under a size cap, urlencoded
//! forms and small JSON bodies.
//!
//! Uploads are written chunk by chunk to `<studies>/.ferrolabel/tmp/.upload-*<ext>` (same file
//! system as the studies, so the datastore can move them into place) and deleted when the
//! [`UploadedFile`] is dropped. The total body size is checked while streaming: past the limit
//! the request fails with 413 and nothing more is stored (the rest of the body is read and
//! discarded, up to a bound, so that the client sees the answer instead of a broken pipe).

use std::path::{Path, PathBuf};

use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::HttpRequest;
use ferrolabel_datastore::{id_from_filename, validate_ext};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, ApiResult};

/// Field names that always hold files, even when a client omits the filename.
const FILE_FIELDS: [&str; 3] = ["file", "label", "files"];

/// Largest text field (e.g. `params`).
const MAX_TEXT_FIELD: usize = 16 << 20;

/// How much of an oversized body is read and discarded before the connection is given up.
const MAX_DRAIN: u64 = 64 << 20;

/// Where uploads go and how large they may be.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits<'a> {
    /// Folder for the temp files.
    pub tmp_dir: &'a Path,
    /// Largest accepted body, in bytes.
    pub max_bytes: u64,
}

/// A file part, stored in a temp file that is deleted on drop.
#[derive(Debug)]
pub struct UploadedFile {
    /// The form field name (`file`, `label`, `files`).
    pub field: String,
    /// The client's file name reduced to its basename (clients send full local paths).
    pub filename: String,
    /// The known extension of `filename` (`.nii.gz`, `.nrrd`, ...), or `""`.
    pub ext: String,
    /// The temp file.
    pub path: TempPath,
    /// Bytes received.
    pub size: u64,
}

impl UploadedFile {
    /// The temp file's path.
    pub fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }
}

/// A parsed form: text fields and file parts.
#[derive(Debug, Default)]
pub struct Form {
    fields: Vec<(String, String)>,
    files: Vec<UploadedFile>,
}

impl Form {
    /// The first text field named `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A text field holding a JSON object (absent or blank → `{}`); anything else is a 422.
    pub fn json_object(&self, name: &str) -> ApiResult<Map<String, Value>> {
        parse_json_object(
            self.field(name).unwrap_or(""),
            &format!("form field {name:?}"),
        )
    }

    /// Removes and returns the first file part named `name`.
    pub fn take_file(&mut self, name: &str) -> Option<UploadedFile> {
        let i = self.files.iter().position(|f| f.field == name)?;
        Some(self.files.remove(i))
    }

    /// Removes and returns every file part named `name`, in order.
    pub fn take_files(&mut self, name: &str) -> Vec<UploadedFile> {
        let (taken, rest) = std::mem::take(&mut self.files)
            .into_iter()
            .partition(|f| f.field == name);
        self.files = rest;
        taken
    }
}

/// Parses a JSON object from text (blank → `{}`); 422 with `what` in the message otherwise.
pub fn parse_json_object(text: &str, what: &str) -> ApiResult<Map<String, Value>> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::unprocessable(format!(
            "{what} must be a JSON object, got {}",
            json_kind(&other)
        ))),
        Err(e) => Err(ApiError::unprocessable(format!(
            "{what} is not valid JSON: {e}"
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
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
    ApiError::too_large(format!(
        "request body larger than the upload limit of {} MiB (--max-upload-mb)",
        max >> 20
    ))
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
        read_multipart(req, payload, limits).await
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        let cap = limits.max_bytes.min(MAX_TEXT_FIELD as u64 * 4);
        let body = read_body(payload, cap).await?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("form body is not UTF-8"))?;
        let pairs = web::Query::<Vec<(String, String)>>::from_query(text)
            .map_err(|e| ApiError::bad_request(format!("malformed urlencoded form: {e}")))?;
        Ok(Form {
            fields: pairs.into_inner(),
            files: Vec::new(),
        })
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

/// The `filename` parameter of a part's raw Content-Disposition header, without treating `\`
/// as an escape (Windows clients send `C:\Users\...` unescaped).
fn raw_filename(headers: &header::HeaderMap) -> Option<String> {
    let raw = headers.get(header::CONTENT_DISPOSITION)?;
    let raw = String::from_utf8_lossy(raw.as_bytes()).into_owned();
    let lower = raw.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("filename") {
        let start = from + i + "filename".len();
        let rest = raw[start..].trim_start();
        if let Some(rest) = rest.strip_prefix('=') {
            let rest = rest.trim_start();
            return Some(match rest.strip_prefix('"') {
                Some(q) => q.split('"').next().unwrap_or("").to_string(),
                None => rest.split(';').next().unwrap_or("").trim().to_string(),
            });
        }
        from = start;
    }
    None
}

fn malformed(e: actix_multipart::MultipartError) -> ApiError {
    ApiError::bad_request(format!("malformed multipart body: {e}"))
}

async fn read_multipart(
    req: &HttpRequest,
    payload: web::Payload,
    limits: UploadLimits<'_>,
) -> ApiResult<Form> {
    let mut mp = Multipart::new(req.headers(), payload.into_inner());
    let mut form = Form::default();
    let mut total: u64 = 0;
    let mut overflow = false;
    while let Some(item) = mp.next().await {
        let mut field = match item {
            Ok(f) => f,
            Err(_) if overflow => break,
            Err(e) => return Err(malformed(e)),
        };
        if overflow {
            while let Some(Ok(chunk)) = field.next().await {
                total += chunk.len() as u64;
                if total > limits.max_bytes.saturating_add(MAX_DRAIN) {
                    return Err(too_large(limits.max_bytes));
                }
            }
            continue;
        }
        let name = field.name().unwrap_or("").to_string();
        let filename = raw_filename(field.headers());
        if filename.is_some() || FILE_FIELDS.contains(&name.as_str()) {
            let client_name = filename.unwrap_or_default();
            let base = ferrolabel_datastore::ids::basename(&client_name).to_string();
            let (_, ext) = id_from_filename(&base);
            let ext = if validate_ext(&ext).is_ok() {
                ext
            } else {
                String::new()
            };
            let tmp = tempfile::Builder::new()
                .prefix(".upload-")
                .suffix(&ext)
                .tempfile_in(limits.tmp_dir)?;
            let (file, path) = tmp.into_parts();
            let mut file = tokio::fs::File::from_std(file);
            let mut size = 0u64;
            while let Some(chunk) = field.next().await {
                let chunk = chunk.map_err(malformed)?;
                total += chunk.len() as u64;
                if total > limits.max_bytes {
                    overflow = true;
                    break;
                }
                size += chunk.len() as u64;
                file.write_all(&chunk).await?;
            }
            if overflow {
                drop(file);
                drop(path);
                continue;
            }
            file.flush().await?;
            drop(file);
            form.files.push(UploadedFile {
                field: name,
                filename: base,
                ext,
                path,
                size,
            });
        } else {
            let mut buf = Vec::new();
            while let Some(chunk) = field.next().await {
                let chunk = chunk.map_err(malformed)?;
                total += chunk.len() as u64;
                if total > limits.max_bytes || buf.len() + chunk.len() > MAX_TEXT_FIELD {
                    overflow = true;
                    break;
                }
                buf.extend_from_slice(&chunk);
            }
            if overflow {
                continue;
            }
            let text = String::from_utf8(buf).map_err(|_| {
                ApiError::bad_request(format!("form field {name:?} is not UTF-8 text"))
            })?;
            form.fields.push((name, text));
        }
    }
    if overflow {
        return Err(too_large(limits.max_bytes));
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_filenames() {
        let mut h = header::HeaderMap::new();
        h.insert(
            header::CONTENT_DISPOSITION,
            header::HeaderValue::from_static(
                r#"form-data; name="file"; filename="C:\Users\me\x.nii.gz""#,
            ),
        );
        assert_eq!(raw_filename(&h).as_deref(), Some(r"C:\Users\me\x.nii.gz"));
        h.insert(
            header::CONTENT_DISPOSITION,
            header::HeaderValue::from_static(r#"form-data; name="params""#),
        );
        assert_eq!(raw_filename(&h), None);
        h.insert(
            header::CONTENT_DISPOSITION,
            header::HeaderValue::from_static("form-data; name=\"files\"; filename=a.nrrd"),
        );
        assert_eq!(raw_filename(&h).as_deref(), Some("a.nrrd"));
    }

    #[test]
    fn json_objects() {
        assert!(parse_json_object("", "p").unwrap().is_empty());
        assert_eq!(parse_json_object("{\"a\":1}", "p").unwrap()["a"], 1);
        assert!(parse_json_object("[1]", "p").is_err());
        assert!(parse_json_object("{bad", "p").is_err());
    }
}
