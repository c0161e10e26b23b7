//! The one error type of this crate.

use thiserror::Error;

/// Everything that can go wrong while reading or writing a `torch.save` file.
///
/// Malformed input is always reported as one of these variants, never as a panic.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// Reading or writing the file itself failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The zip container is damaged or uses a feature that is not supported.
    #[error("invalid zip archive: {0}")]
    Zip(String),
    /// The file was written by `torch.save` before PyTorch 1.6 (not a zip archive).
    #[error("legacy torch.save format; re-save with a recent PyTorch")]
    LegacyFormat,
    /// The zip archive is a TorchScript module (`torch.jit.save`), not a `torch.save` file.
    #[error("TorchScript archive, not a state_dict")]
    TorchScript,
    /// The bytes are neither a zip archive nor a legacy `torch.save` pickle.
    #[error("not a torch.save file: {0}")]
    NotCheckpoint(String),
    /// A record the format requires is absent from the archive.
    #[error("missing record {0} in the archive")]
    MissingRecord(String),
    /// The pickle uses an opcode this reader does not implement.
    #[error("unsupported pickle opcode {name} (0x{opcode:02x}) at byte {offset} of data.pkl")]
    UnsupportedOpcode {
        /// The opcode byte.
        opcode: u8,
        /// The opcode's name in Python's `pickletools`, or `"unknown"`.
        name: &'static str,
        /// Position of the opcode in the pickle stream.
        offset: usize,
    },
    /// The pickle stream is malformed (truncated, stack underflow, bad argument, ...).
    #[error("malformed pickle at byte {offset} of data.pkl: {msg}")]
    Pickle {
        /// Position of the offending opcode in the pickle stream.
        offset: usize,
        /// What was wrong.
        msg: String,
    },
    /// The unpickled object is not (and does not contain) a state_dict of tensors.
    #[error("not a state_dict: {0}")]
    NotStateDict(String),
    /// A tensor is malformed: bad shape/stride, out-of-bounds view, unsupported dtype, ...
    #[error("tensor {name}: {msg}")]
    Tensor {
        /// The state_dict key of the tensor (empty when unknown).
        name: String,
        /// What was wrong.
        msg: String,
    },
    /// The file would need more memory than allowed relative to its size.
    #[error("size limit exceeded: {0}")]
    TooLarge(String),
}

/// Result alias used throughout this crate.
pub type Result<T> = std::result::Result<T, CheckpointError>;

impl CheckpointError {
    pub(crate) fn tensor(name: &str, msg: impl Into<String>) -> Self {
        CheckpointError::Tensor {
            name: name.to_string(),
            msg: msg.into(),
        }
    }
}

impl From<zip::result::ZipError> for CheckpointError {
    fn from(e: zip::result::ZipError) -> Self {
        CheckpointError::Zip(e.to_string())
    }
}
