//! The error type of the engine crate.

use thiserror::Error;

/// Everything that can go wrong in the engine. The server's error table (`server/src/error.rs`)
/// maps these to HTTP status codes; this crate knows none.
#[derive(Debug, Error)]
pub enum ModelsError {
    /// The input volume or a request parameter is unusable.
    #[error("{0}")]
    Invalid(String),
    /// Reading or decoding an image failed.
    #[error(transparent)]
    Imaging(#[from] ferrolabel_imaging::ImagingError),
    /// A weights file is missing.
    #[error("model weights not found: {0}")]
    WeightsMissing(String),
    /// A weights file does not fit the network (missing, extra or mis-shaped keys).
    #[error("weights do not match the network: {0}")]
    WeightsMismatch(String),
    /// A checkpoint file could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] ferrolabel_checkpoint::CheckpointError),
    /// The bundle folder or its configs are unusable.
    #[error("bundle: {0}")]
    Bundle(String),
    /// libtorch reported an error.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The engine cannot take jobs: it is shutting down or its thread has stopped. Waiting
    /// will not help (unlike [`ModelsError::QueueFull`]).
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The engine's queue is full: the job was refused at once; a later try may succeed.
    #[error("{waiting} inference jobs are already waiting (limit {limit})")]
    QueueFull {
        /// Jobs waiting when this one came.
        waiting: usize,
        /// The queue's limit (`EngineOptions::queue_limit`).
        limit: usize,
    },
    /// The job panicked in the engine thread (libtorch answers a failed op, such as running
    /// out of memory, with a panic). That job alone fails; the engine serves the next.
    #[error("the inference job crashed: {0}")]
    Panicked(String),
    /// File I/O failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with [`ModelsError`].
pub type Result<T> = std::result::Result<T, ModelsError>;
