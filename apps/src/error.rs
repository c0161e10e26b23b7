//! The crate's error type, [`AppError`]. It knows no HTTP status: the server's error table
//! (`server/src/error.rs`) maps each variant to one; the statuses in the variants' docs are
//! what that table answers.

use std::path::PathBuf;
use std::sync::Arc;

use ferrolabel_models::ModelsError;

/// Everything that can go wrong in an app task.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A request parameter has an invalid value (422).
    #[error("{0}")]
    InvalidParams(String),
    /// The model named by the request does not exist (404).
    #[error("model {0:?} not found")]
    ModelNotFound(String),
    /// The active-learning strategy named by the request does not exist (404).
    #[error("strategy {0:?} not found")]
    StrategyNotFound(String),
    /// The scoring method named by the request does not exist (404).
    #[error("scoring method {0:?} not found")]
    MethodNotFound(String),
    /// The weights of the requested resolution are not installed (503).
    #[error(
        "no weights for {model} ({resolution}): put the bundle's {file} at {} \
         (see README: Installing weights)",
        path.display()
    )]
    WeightsMissing {
        /// The model name.
        model: String,
        /// `highres` or `lowres`.
        resolution: &'static str,
        /// The expected file name, e.g. `model.pt`.
        file: &'static str,
        /// Where the file is expected.
        path: PathBuf,
    },
    /// The input image cannot be read or used (422).
    #[error("cannot read image: {0}")]
    BadImage(String),
    /// A label cannot be stored or used: unreadable, non-finite, or not on its image's grid
    /// (422). The message says which, and names both grids.
    #[error("{0}")]
    BadLabel(String),
    /// An uploaded weights file does not fit the network (422).
    #[error("weights file rejected: {0}")]
    BadWeights(String),
    /// The engine's queue is full, or a task of the kind already runs (429: try again later).
    #[error("server busy: {0}")]
    Busy(String),
    /// The inference engine cannot take jobs: it is shutting down or its thread has stopped
    /// (503: retrying this process will not help).
    #[error("inference engine unavailable: {0}")]
    EngineUnavailable(String),
    /// The job was cancelled (the client went away).
    #[error("inference cancelled")]
    Cancelled,
    /// The bundle folder is unusable (fatal at start-up).
    #[error("cannot open bundle {}: {message}", path.display())]
    Bundle {
        /// The bundle folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Any other engine failure, a crashed job included (500).
    #[error("inference failed: {0}")]
    Engine(ModelsError),
    /// Writing the result file failed (500).
    #[error("cannot write the result: {0}")]
    Encode(String),
    /// A background task panicked or was cancelled (500).
    #[error("background task failed: {0}")]
    Task(String),
    /// No job has this id (404).
    #[error("No task {0:?}")]
    JobNotFound(String),
    /// The job has already ended (409).
    #[error("{0}")]
    JobEnded(String),
    /// A job failed: the status of its error when this process still holds it (`cause`),
    /// else 500.
    #[error("{detail}")]
    JobFailed {
        /// The job's error, as recorded.
        detail: String,
        /// The error itself, when the job ran in this process (kept for the last few jobs).
        cause: Option<Arc<AppError>>,
    },
    /// File I/O failed (500).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A datastore operation failed (404 unknown image/label, 422 bad id, 409 conflict, else
    /// 500).
    #[error("{0}")]
    Datastore(#[from] ferrolabel_datastore::DatastoreError),
}

impl From<ModelsError> for AppError {
    fn from(e: ModelsError) -> Self {
        match e {
            ModelsError::Invalid(m) => AppError::BadImage(m),
            ModelsError::Imaging(e) => AppError::BadImage(e.to_string()),
            ModelsError::Unavailable(m) => AppError::EngineUnavailable(m),
            e @ ModelsError::QueueFull { .. } => AppError::Busy(e.to_string()),
            ModelsError::Cancelled => AppError::Cancelled,
            other => AppError::Engine(other),
        }
    }
}

/// `Result` with [`AppError`].
pub type Result<T, E = AppError> = std::result::Result<T, E>;

impl From<ferrolabel_datastore::TaskFailed> for AppError {
    fn from(e: ferrolabel_datastore::TaskFailed) -> Self {
        AppError::Task(e.0)
    }
}
