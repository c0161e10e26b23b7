//! `ferrolabel-dicom` owns DICOM: assembling a CT series (files or one zip) into a
//! [`ferrolabel_imaging::Volume`] as ITK does, and writing label maps back as DICOM
//! Segmentation objects (BINARY, one segment per structure) that reference the source series.
//!
//! It builds on the dicom-rs crates (`dicom-object`, `dicom-pixeldata`, ...) with pure-Rust
//! codecs only (JPEG 2000 through the `openjp2` port, JPEG through `jpeg-decoder`, RLE and
//! deflate natively): no hand-written DICOM parser or codec. It must not depend on torch,
//! HTTP or SQL.
//!
//! Everything it reads is untrusted: uploads are bounded by [`InputLimits`] before they are
//! read or decompressed, and every refusal is a [`DicomError`] that names its cause
//! (several series, non-CT modality, no pixel data, unsupported transfer syntax, missing or
//! duplicated slices, gantry tilt, non-DICOM or corrupt files, unsafe zip entries).
//!
//! Assembly ([`assemble`]): group by SeriesInstanceUID, check every image (CT, supported
//! syntax, one grey plane, same size, orientation and pixel spacing), sort the frames by
//! `ImagePositionPatient · (row × column)`, check even gaps and that the slices stack along
//! the normal, decode each frame with its RescaleSlope/Intercept, and place voxel `(i, j, k)`
//! (column, row, sorted slice) with the RAS+ affine the imaging crate's NIfTI volumes use.

mod attrs;
mod error;
mod geometry;
mod input;
mod parse;
pub mod seg;
mod series;

use std::path::Path;

pub use error::{DicomError, Result};
pub use geometry::GeometryTolerance;
pub use input::{
    check_files, check_paths, extract_zip, looks_like_zip, read_paths, read_zip, InputLimits,
    NamedBytes, NamedPath,
};
pub use parse::SUPPORTED_TRANSFER_SYNTAXES;
pub use series::{assemble, assemble_files, AssembleOptions, Series, SeriesInfo, SliceRef};

/// Assembles the series held in one zip archive (see [`read_zip`] for the archive checks).
pub fn assemble_zip(bytes: &[u8], options: &AssembleOptions) -> Result<Series> {
    let files = read_zip(bytes, &options.input)?;
    assemble(&files, options)
}

/// Assembles the series of files on disk, streaming (see [`assemble_files`]: peak memory is
/// about the volume plus one file); messages name each file by its file name.
pub fn assemble_paths<P: AsRef<Path>>(paths: &[P], options: &AssembleOptions) -> Result<Series> {
    let files: Vec<NamedPath> = paths
        .iter()
        .map(|p| NamedPath::from_path(p.as_ref()))
        .collect();
    assemble_files(&files, options)
}

/// Assembles every regular file of a folder (not recursive), in any order.
pub fn assemble_dir(dir: &Path, options: &AssembleOptions) -> Result<Series> {
    let io = |e| DicomError::Io {
        context: format!("listing {}", dir.display()),
        source: e,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_type().map_err(io)?.is_file() {
            paths.push(entry.path());
            if paths.len() > options.input.max_files {
                return Err(DicomError::LimitExceeded(format!(
                    "{} holds more than the limit of {} files",
                    dir.display(),
                    options.input.max_files
                )));
            }
        }
    }
    paths.sort();
    assemble_paths(&paths, options)
}
