//! Form bodies as bytes: the `multipart/form-data` reader (file parts streamed to temp files
//! under a size cap), urlencoded text, and text fields holding JSON objects.
//!
//! Nothing here knows of handlers or HTTP statuses: the server's `multipart` module feeds these
//! functions actix payloads and maps [`FormError`] to answers.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_multipart::{Multipart, MultipartError};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::web::{self, Bytes};
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value};
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use crate::FormError;

/// Field names that always hold files, even when a client omits the filename.
pub const FILE_FIELDS: [&str; 3] = ["file", "label", "files"];

/// Largest text field (e.g. `params`).
pub const MAX_TEXT_FIELD: usize = 16 << 20;

/// How much of an oversized body is read and discarded before the connection is given up.
pub const MAX_DRAIN: u64 = 64 << 20;

/// Most file parts in one form (a DICOM series of many files; ferrolabel-dicom's default
/// file limit). Past it, the temp files are deleted, the rest of the body is read and
/// discarded as for an oversized one, and the form is a [`FormError::BadRequest`].
pub const MAX_FILE_PARTS: usize = 4096;

/// Turns a client's file name into `(basename, extension)`, the extension being a known,
/// valid one or `""` (the server passes the datastore's rule).
pub type FileNamer = fn(&str) -> (String, String);

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
    /// Text fields, in order.
    pub fields: Vec<(String, String)>,
    /// File parts, in order.
    pub files: Vec<UploadedFile>,
}

impl Form {
    /// The first text field named `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The text field `name` as a JSON object (absent or blank → `{}`); anything else is a
    /// [`FormError::Unprocessable`] naming the field.
    pub fn json_object(&self, name: &str) -> Result<Map<String, Value>, FormError> {
        parse_json_object(
            self.field(name).unwrap_or(""),
            &format!("form field {name:?}"),
        )
        .map_err(FormError::Unprocessable)
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

/// Parses a JSON object from text (blank → `{}`); otherwise the error message names `what`.
pub fn parse_json_object(text: &str, what: &str) -> Result<Map<String, Value>, String> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!(
            "{what} must be a JSON object, got {}",
            json_kind(&other)
        )),
        Err(e) => Err(format!("{what} is not valid JSON: {e}")),
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

/// Parses an `application/x-www-form-urlencoded` body into its fields.
pub fn parse_urlencoded(body: &[u8]) -> Result<Form, FormError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| FormError::BadRequest("form body is not UTF-8".into()))?;
    let pairs = web::Query::<Vec<(String, String)>>::from_query(text)
        .map_err(|e| FormError::BadRequest(format!("malformed urlencoded form: {e}")))?;
    Ok(Form {
        fields: pairs.into_inner(),
        files: Vec::new(),
    })
}

/// The `filename` parameter of a part's raw Content-Disposition header, without treating `\`
/// as an escape (Windows clients send `C:\Users\...` unescaped).
pub fn raw_filename(headers: &header::HeaderMap) -> Option<String> {
    let raw = headers.get(header::CONTENT_DISPOSITION)?;
    let raw = String::from_utf8_lossy(raw.as_bytes()).into_owned();
    // ASCII lowering keeps byte offsets, so indices found in `lower` are valid in `raw`
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

fn malformed(e: MultipartError) -> FormError {
    FormError::BadRequest(format!("malformed multipart body: {e}"))
}

/// The request body, remembering when it has ended.
struct Tracked<S> {
    inner: Pin<Box<S>>,
    ended: Rc<Cell<bool>>,
}

impl<S: Stream> Stream for Tracked<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let next = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(None) = next {
            self.ended.set(true);
        }
        next
    }
}

/// The next item of the multipart parser or of one of its fields.
///
/// The parser is driven by the body alone, so once the body has ended a `Pending` from it can
/// never be woken. actix-multipart 0.7 answered `Pending` at the end of a body cut inside a
/// boundary line (found by `fuzz/`: the request hung until the client gave up; 0.8.5 fixes it
/// upstream); this guard keeps such a body a 400 whatever the parser does.
async fn next_item<T, S>(s: &mut S, ended: &Cell<bool>) -> Option<Result<T, MultipartError>>
where
    S: Stream<Item = Result<T, MultipartError>> + Unpin,
{
    futures_util::future::poll_fn(|cx| match s.poll_next_unpin(cx) {
        Poll::Pending if ended.get() => Poll::Ready(Some(Err(MultipartError::Incomplete))),
        other => other,
    })
    .await
}

/// Reads a `multipart/form-data` body whose request headers are `headers`.
///
/// File parts (a `filename`, or a field named in [`FILE_FIELDS`]) are written chunk by chunk
/// to temp files `.upload-*<ext>` in [`UploadLimits::tmp_dir`]; text parts are kept in memory
/// up to [`MAX_TEXT_FIELD`] bytes and must be UTF-8. Past [`UploadLimits::max_bytes`] in all,
/// every temp file is deleted and the rest of the body is read and discarded (up to
/// [`MAX_DRAIN`] more bytes) before [`FormError::TooLarge`] is returned. More than
/// [`MAX_FILE_PARTS`] file parts are refused the same way, as a [`FormError::BadRequest`].
pub async fn parse_multipart<S>(
    headers: &header::HeaderMap,
    stream: S,
    limits: UploadLimits<'_>,
    name_file: FileNamer,
) -> Result<Form, FormError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + 'static,
{
    let ended = Rc::new(Cell::new(false));
    let body = Tracked {
        inner: Box::pin(stream),
        ended: ended.clone(),
    };
    let mut mp = Multipart::new(headers, body);
    let mut form = Form::default();
    let mut total: u64 = 0;
    let mut overflow = false;
    let mut too_many = false;
    while let Some(item) = next_item(&mut mp, &ended).await {
        let mut field = match item {
            Ok(f) => f,
            Err(_) if overflow || too_many => break,
            Err(e) => return Err(malformed(e)),
        };
        if overflow || too_many {
            while let Some(Ok(chunk)) = next_item(&mut field, &ended).await {
                total += chunk.len() as u64;
                if total > limits.max_bytes.saturating_add(MAX_DRAIN) {
                    return Err(FormError::TooLarge {
                        max_bytes: limits.max_bytes,
                    });
                }
            }
            continue;
        }
        let name = field.name().unwrap_or("").to_string();
        let filename = raw_filename(field.headers());
        if filename.is_some() || FILE_FIELDS.contains(&name.as_str()) {
            if form.files.len() >= MAX_FILE_PARTS {
                // delete the temp files now; the rest of the body is drained above
                form.files.clear();
                too_many = true;
                while let Some(Ok(chunk)) = next_item(&mut field, &ended).await {
                    total += chunk.len() as u64;
                    if total > limits.max_bytes.saturating_add(MAX_DRAIN) {
                        return Err(FormError::TooLarge {
                            max_bytes: limits.max_bytes,
                        });
                    }
                }
                continue;
            }
            let (base, ext) = name_file(&filename.unwrap_or_default());
            let tmp = tempfile::Builder::new()
                .prefix(".upload-")
                .suffix(&ext)
                .tempfile_in(limits.tmp_dir)?;
            let (file, path) = tmp.into_parts();
            let mut file = tokio::fs::File::from_std(file);
            let mut size = 0u64;
            while let Some(chunk) = next_item(&mut field, &ended).await {
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
            while let Some(chunk) = next_item(&mut field, &ended).await {
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
                FormError::BadRequest(format!("form field {name:?} is not UTF-8 text"))
            })?;
            form.fields.push((name, text));
        }
    }
    if overflow || total > limits.max_bytes {
        return Err(FormError::TooLarge {
            max_bytes: limits.max_bytes,
        });
    }
    if too_many {
        return Err(FormError::BadRequest(format!(
            "the form has more than {MAX_FILE_PARTS} file parts"
        )));
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

    /// Bodies cut inside a boundary line: actix-multipart 0.7 waited forever for more; we
    /// answer 400 and leave no temp file (found by the `multipart` fuzz target).
    #[tokio::test]
    async fn bodies_cut_at_a_boundary_are_400_not_a_hang() {
        let head: &[u8] = b"--abcdefgh\r\nContent-Disposition: form-data; name=\"label\"; \
                            filename=\"x.nii\"\r\n\r\ndata";
        for tail in [&b"\r\n--abc"[..], b"\r", b"\r\n--abcdefg"] {
            let dir = tempfile::tempdir().unwrap();
            let mut h = header::HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("multipart/form-data; boundary=abcdefgh"),
            );
            let body = Bytes::from([head, tail].concat());
            let stream = futures_util::stream::iter(vec![Ok::<_, PayloadError>(body)]);
            let limits = UploadLimits {
                tmp_dir: dir.path(),
                max_bytes: 1 << 20,
            };
            let read = parse_multipart(&h, stream, limits, |n| (n.to_string(), String::new()));
            let r = tokio::time::timeout(std::time::Duration::from_secs(20), read)
                .await
                .expect("the parser must not hang");
            match r {
                Err(FormError::BadRequest(m)) => assert!(m.contains("incomplete"), "{m}"),
                other => panic!("{tail:?}: {other:?}"),
            }
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    /// One-byte boundaries and short lines: actix-multipart 0.7 panicked slicing them (found
    /// by the `multipart` fuzz target; a panic takes down the whole worker thread).
    #[tokio::test]
    async fn short_boundaries_do_not_panic() {
        for (boundary, body) in [
            ("b", &b"\n\n--b\r\n"[..]),
            (
                "b",
                b"x\n--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b--\r\n",
            ),
            ("abc", b"--\n--abc--\r\n"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut h = header::HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
                    .unwrap(),
            );
            let stream = futures_util::stream::iter(vec![Ok::<_, PayloadError>(
                Bytes::copy_from_slice(body),
            )]);
            let limits = UploadLimits {
                tmp_dir: dir.path(),
                max_bytes: 1 << 20,
            };
            let read = parse_multipart(&h, stream, limits, |n| (n.to_string(), String::new()));
            let _ = tokio::time::timeout(std::time::Duration::from_secs(20), read)
                .await
                .expect("the parser must not hang");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn json_objects() {
        assert!(parse_json_object("", "p").unwrap().is_empty());
        assert_eq!(parse_json_object("{\"a\":1}", "p").unwrap()["a"], 1);
        assert!(parse_json_object("[1]", "p").is_err());
        assert!(parse_json_object("{bad", "p").is_err());
        let form = Form {
            fields: vec![("params".into(), "[1]".into()), ("info".into(), " ".into())],
            files: Vec::new(),
        };
        match form.json_object("params") {
            Err(FormError::Unprocessable(m)) => {
                assert!(m.starts_with("form field \"params\""), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(form.json_object("info").unwrap().is_empty());
        assert!(form.json_object("absent").unwrap().is_empty());
    }
}
