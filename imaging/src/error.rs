//! The one error type of the crate, [`ImagingError`].

use thiserror::Error;

/// Everything that can go wrong while reading, writing or checking an image.
///
/// Every variant renders as one line that says what is wrong with the input.
#[derive(Debug, Error)]
pub enum ImagingError {
    /// An I/O error from the operating system or a decompressor, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. "reading voxel data".
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes contradict the file format (bad magic, impossible field values, ...).
    #[error("malformed {format} file: {message}")]
    Malformed {
        /// The format being read: "NIfTI" or "NRRD".
        format: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The file is well-formed but uses a feature this crate does not support.
    #[error("{0}")]
    Unsupported(String),
    /// The file declares more than the configured [`crate::Limits`] allow.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The voxel data ends before the declared number of voxels.
    #[error("truncated voxel data: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes of voxel data the header declares.
        expected: u64,
        /// Bytes actually present.
        got: u64,
    },
    /// The voxel-to-world matrix cannot be inverted (a zero voxel size with no other
    /// geometry, parallel axes, ...): voxel positions would have no place in the world.
    #[error("singular geometry: {0}")]
    SingularGeometry(String),
    /// The caller passed inconsistent arguments (e.g. a label buffer of the wrong length).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// `Result` with [`ImagingError`].
pub type Result<T> = std::result::Result<T, ImagingError>;

impl ImagingError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImagingError::Io {
            context: context.into(),
            source,
        }
    }

    /// A malformed-NIfTI error.
    pub(crate) fn nifti(message: impl Into<String>) -> Self {
        ImagingError::Malformed {
            format: "NIfTI",
            message: message.into(),
        }
    }

    /// A malformed-NRRD error.
    pub(crate) fn nrrd(message: impl Into<String>) -> Self {
        ImagingError::Malformed {
            format: "NRRD",
            message: message.into(),
        }
    }
}
