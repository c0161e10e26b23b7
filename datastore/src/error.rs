//! The crate's single error type.

#[cfg(feature = "store")]
use std::path::Path;
use std::path::PathBuf;

/// Everything that can go wrong in the datastore.
///
/// The HTTP layer maps the variants to status codes: `NotFound` → 404 (or the upstream 500 where
/// MONAI Label answers that), `InvalidId`/`Invalid` → 422, `Conflict` → 409,
/// `Storage` → 502, the rest → 500.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// An image, label, revision or session that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An id, tag or file name that is not safe to use in a path.
    #[error("invalid id: {0}")]
    InvalidId(String),
    /// A request that is malformed for another reason (bad extension, bad input file...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A request that clashes with existing state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A file-system operation failed.
    #[error("I/O error at {path}: {source}")]
    Io {
        /// The path being worked on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The database (SQLite or PostgreSQL) failed.
    #[cfg(feature = "store")]
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying the embedded migrations failed.
    #[cfg(feature = "store")]
    #[error("database migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// JSON (de)serialisation failed.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// A `datastore_v2.json` (or session `meta.info`) that cannot be parsed.
    #[error("malformed {path}: {message}")]
    MalformedJson {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The remote source of an image (a PACS) failed; `status` is the HTTP status a server
    /// answers (502: unreachable or a bad answer, 504: it timed out, 422: what it holds is not
    /// a usable image).
    #[error("{detail}")]
    Remote {
        /// The HTTP status to answer.
        status: u16,
        /// What went wrong, naming the source.
        detail: String,
    },
    /// A blocking file task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
    /// The object storage (`--storage-url`) failed: unreachable, refused the request, or
    /// served a blob whose content does not match its hash. Servers answer 502.
    #[error("object storage error: {0}")]
    Storage(String),
}

/// Shorthand for `Result<T, DatastoreError>`.
pub type Result<T, E = DatastoreError> = std::result::Result<T, E>;

/// Attaches a path to an [`std::io::Error`].
#[cfg(feature = "store")]
pub(crate) trait IoContext<T> {
    /// Converts the error into [`DatastoreError::Io`] naming `path`.
    fn at(self, path: &Path) -> Result<T>;
}

#[cfg(feature = "store")]
impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| DatastoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(feature = "store")]
impl From<crate::blocking::TaskFailed> for DatastoreError {
    fn from(e: crate::blocking::TaskFailed) -> Self {
        DatastoreError::Task(e.0)
    }
}
