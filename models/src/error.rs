//! The error type of the engine crate.

use thiserror::Error;

/// Everything that can go wrong in the engine. The HTTP layer maps these to status codes.
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
    /// The engine thread is gone or its queue is full.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// File I/O failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with [`ModelsError`].
pub type Result<T> = std::result::Result<T, ModelsError>;
