//! `ferrolabel-imaging` owns images as data: [`Volume`] (3-D `f32` voxels plus a voxel-to-world
//! affine), NIfTI-1 (`.nii`, `.nii.gz`) and NRRD (`.nrrd`) reading and writing, and voxel <->
//! world geometry ([`affine`], with the 3 × 3 helpers in [`mat3`]).
//!
//! It must not depend on torch, HTTP or SQL: model code, the server and the datastore build on
//! it, never the other way round.
//!
//! Every reader treats its input as untrusted: a malformed file is an [`ImagingError`] with a
//! one-line message, never a panic, and sizes declared by a header are checked against
//! [`Limits`] before anything is allocated or decompressed.

pub mod affine;
mod dtype;
mod error;
mod grid;
mod limits;
pub mod mat3;
pub mod nifti;
pub mod nrrd;
mod volume;

use std::io::Read;
use std::path::Path;

pub use affine::Affine;
pub use dtype::DataType;
pub use error::{ImagingError, Result};
pub use grid::{read_grid, Grid, GRID_TOLERANCE};
pub use limits::Limits;
pub use nifti::{
    encode_label_nifti, encode_label_nifti_u16, encode_nifti_f32, read_nifti, read_nifti_bytes,
    read_nifti_stream, write_label_nifti, write_label_nifti_u16, write_nifti_f32, Header,
};
pub use nrrd::{encode_label_nrrd, read_nrrd, read_nrrd_bytes, write_label_nrrd};
pub use volume::{NiftiVolume, Volume};

/// The image formats [`read_volume_bytes`] and [`read_volume`] recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// NIfTI-1, plain or gzip-compressed.
    Nifti,
    /// NRRD with an attached header.
    Nrrd,
}

/// Recognises the format from the first bytes (magic), or else from the file name's
/// extension (`.nii`, `.nii.gz`, `.nrrd`, any case).
pub fn detect_format(head: &[u8], file_name_hint: &str) -> Option<ImageFormat> {
    if head.starts_with(b"NRRD") {
        return Some(ImageFormat::Nrrd);
    }
    if head.starts_with(&nifti::GZIP_MAGIC) {
        return Some(ImageFormat::Nifti);
    }
    if head.len() >= 4 {
        let first = [head[0], head[1], head[2], head[3]];
        if i32::from_le_bytes(first) == 348 || i32::from_be_bytes(first) == 348 {
            return Some(ImageFormat::Nifti);
        }
    }
    let name = file_name_hint.to_ascii_lowercase();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        Some(ImageFormat::Nifti)
    } else if name.ends_with(".nrrd") {
        Some(ImageFormat::Nrrd)
    } else {
        None
    }
}

/// Recognises a file by its content alone, never its name: NRRD by its `NRRD` magic, NIfTI-1
/// by the `n+1\0` magic at byte 344, also inside a gzip stream (only the first 348 bytes are
/// decompressed). Returns the extension to store it under (`.nrrd`, `.nii`, `.nii.gz`), or
/// `None` for anything else (a zip, text, a DICOM file, a gzip of something else).
pub fn sniff_image_file(path: &Path) -> Result<Option<&'static str>> {
    let context = |e| ImagingError::io(format!("reading {}", path.display()), e);
    let mut head = Vec::with_capacity(nifti::HEADER_SIZE);
    std::fs::File::open(path)
        .and_then(|f| f.take(nifti::HEADER_SIZE as u64).read_to_end(&mut head))
        .map_err(context)?;
    if head.starts_with(b"NRRD") {
        return Ok(Some(".nrrd"));
    }
    let nifti_magic = |h: &[u8]| h.len() >= 348 && h[344..348] == nifti::MAGIC_SINGLE;
    if nifti_magic(&head) {
        return Ok(Some(".nii"));
    }
    if head.starts_with(&nifti::GZIP_MAGIC) {
        let file = std::fs::File::open(path).map_err(context)?;
        let mut inner = [0u8; nifti::HEADER_SIZE];
        // a broken gzip stream is simply not an image
        let n = dtype::read_full(
            &mut flate2::read::MultiGzDecoder::new(file),
            &mut inner,
            "decompressing",
        )
        .unwrap_or(0);
        if nifti_magic(&inner[..n]) {
            return Ok(Some(".nii.gz"));
        }
    }
    Ok(None)
}

fn unsupported(file_name_hint: &str) -> ImagingError {
    ImagingError::Unsupported(format!(
        "unsupported image format: {file_name_hint} (expected NIfTI .nii/.nii.gz or NRRD .nrrd)"
    ))
}

/// Reads a NIfTI-1 or NRRD image held in memory, choosing the reader by magic bytes and then
/// by `file_name_hint`'s extension. Anything else is "unsupported image format".
pub fn read_volume_bytes(bytes: &[u8], file_name_hint: &str, limits: &Limits) -> Result<Volume> {
    match detect_format(bytes, file_name_hint) {
        Some(ImageFormat::Nifti) => read_nifti_bytes(bytes, limits),
        Some(ImageFormat::Nrrd) => read_nrrd_bytes(bytes, limits),
        None => Err(unsupported(file_name_hint)),
    }
}

/// Reads a NIfTI-1 or NRRD image file, recognised as in [`read_volume_bytes`].
pub fn read_volume(path: &Path, limits: &Limits) -> Result<Volume> {
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|f| f.take(4).read(&mut head))
        .map_err(|e| ImagingError::io(format!("reading {}", path.display()), e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match detect_format(&head[..n], &name) {
        Some(ImageFormat::Nifti) => read_nifti(path, limits),
        Some(ImageFormat::Nrrd) => read_nrrd(path, limits),
        None => Err(unsupported(&name)),
    }
}
