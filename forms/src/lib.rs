//! `ferrolabel-forms` owns the request bodies the HTTP layer takes from clients, as bytes: the
//! `multipart/form-data` reader (file parts streamed to temp files under a size cap, text
//! fields, a bound on file parts), urlencoded forms, text holding a JSON object (`params`), and
//! the Python `json.dumps` layout params are echoed back in ([`python_json`]).
//!
//! It works on a header map and a byte stream, and must not depend on libtorch, SQLite, the
//! datastore or the server: the fuzz targets under `fuzz/` link it as it is, with
//! AddressSanitizer, and build in minutes. Naming rules for uploaded files come in as a
//! [`FileNamer`] (the server passes the datastore's `upload_name`); mapping a [`FormError`] to
//! an HTTP status is the server's job (`server/src/multipart.rs`).

pub mod form;
pub mod pyjson;

pub use form::{
    parse_json_object, parse_multipart, parse_urlencoded, raw_filename, FileNamer, Form,
    UploadLimits, UploadedFile, FILE_FIELDS, MAX_DRAIN, MAX_FILE_PARTS, MAX_TEXT_FIELD,
};
pub use pyjson::python_json;

/// Why a form body was refused.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    /// The body is malformed (400); the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// A text field that must hold a JSON object does not (422); the message says how.
    #[error("{0}")]
    Unprocessable(String),
    /// The body is larger than [`UploadLimits::max_bytes`] (413).
    #[error("request body larger than the upload limit of {max_bytes} bytes")]
    TooLarge {
        /// The limit it went over.
        max_bytes: u64,
    },
    /// A temp file could not be written.
    #[error("cannot store the upload: {0}")]
    Io(#[from] std::io::Error),
}
