//! Reads and writes PyTorch `torch.save` state_dict files, without Python or libtorch.
//!
//! This crate owns the `torch.save` file format for ferrolabel. Since PyTorch 1.6 that is a
//! zip archive with one top folder holding `data.pkl` (a pickle of the saved object, in which
//! tensors refer to storages by persistent id), the raw storages `data/<key>`, and small
//! records (`version`, `byteorder`, `.data/serialization_id`, ...). MONAI bundles ship their
//! network weights in this form.
//!
//! * [`read_state_dict`] accepts a bare state_dict (`dict`/`OrderedDict` of tensors) or a
//!   dict whose `"model"` or `"state_dict"` entry is one (MONAI `CheckpointSaver` and other
//!   training checkpoints); other entries (optimizer, epoch, ...) are ignored. Tensors come
//!   back in file order, as contiguous little-endian C-order bytes, whatever their offset
//!   and strides in the file.
//! * [`write_state_dict`] writes a bare `OrderedDict` that
//!   `torch.load(path, weights_only=True)` loads.
//!
//! Files are user input: every malformed byte yields a [`CheckpointError`], never a panic,
//! and memory use is bounded by a small multiple of the file size. The pickle is
//! interpreted, never executed. Pre-1.6 (non-zip) files and TorchScript archives are
//! rejected with their own errors. No libtorch is involved, by design: this crate must stay
//! usable where libtorch is not.

mod archive;
mod crc32;
mod error;
mod load;
mod pickle;
mod save;
mod tensor;
#[cfg(test)]
mod tests;

pub use error::{CheckpointError, Result};
pub use tensor::{DType, TensorRecord};

use std::path::Path;

/// Reads the tensors of a `torch.save` file, in file order.
///
/// See [`read_state_dict_bytes`] for what the file may contain.
pub fn read_state_dict(path: &Path) -> Result<Vec<TensorRecord>> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    })?;
    read_state_dict_bytes(&bytes)
}

/// Reads the tensors of an in-memory `torch.save` file, in file order.
///
/// The saved object must be a state_dict (a dict of tensors or `nn.Parameter`s), or a dict
/// with a `"model"` or `"state_dict"` entry holding one. Supported dtypes are those of
/// [`DType`]; any other tensor kind (complex, quantized, sparse) in the state_dict is an
/// error, as is a non-tensor value.
pub fn read_state_dict_bytes(bytes: &[u8]) -> Result<Vec<TensorRecord>> {
    load::read_bytes(bytes)
}

/// Writes `tensors` as a bare state_dict (an `OrderedDict` with exactly these names, in
/// this order) in the `torch.save` zip format.
///
/// The file is written in one piece after it has been fully serialized; making the
/// replacement of an existing file atomic is the caller's concern.
pub fn write_state_dict(path: &Path, tensors: &[TensorRecord]) -> Result<()> {
    let bytes = write_state_dict_bytes(tensors)?;
    std::fs::write(path, bytes).map_err(|source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Serializes `tensors` as a bare state_dict in the `torch.save` zip format.
///
/// Fails if a record's data length does not match its shape and dtype, or if two records
/// share a name.
pub fn write_state_dict_bytes(tensors: &[TensorRecord]) -> Result<Vec<u8>> {
    save::write_bytes(tensors)
}
