//! Writing a state_dict in the `torch.save` zip format.

use crate::archive::write_archive;
use crate::error::{CheckpointError, Result};
use crate::pickle::write::state_dict;
use crate::tensor::TensorRecord;
use std::collections::HashSet;

/// Serializes `tensors` as a bare `OrderedDict` state_dict file.
pub(crate) fn write_bytes(tensors: &[TensorRecord]) -> Result<Vec<u8>> {
    let mut seen = HashSet::with_capacity(tensors.len());
    for t in tensors {
        t.validate()?;
        if !seen.insert(t.name.as_str()) {
            return Err(CheckpointError::tensor(&t.name, "duplicate name"));
        }
        if u32::try_from(t.name.len()).is_err() {
            return Err(CheckpointError::tensor("", "name longer than 4 GiB"));
        }
    }
    let pickle = state_dict(tensors);
    let storages: Vec<&[u8]> = tensors.iter().map(|t| t.data.as_slice()).collect();
    write_archive(&pickle, &storages)
}
