//! A DICOM series uploaded as one zip becomes a NIfTI image: assembled by `ferrolabel-dicom`
//! (on the blocking pool) and written as a gzip NIfTI-1 (`f32`, RAS affine) into the private
//! temp folder, from where the datastore stores it like any uploaded image.

use std::io::Read;

use ferrolabel_dicom::{assemble_zip, looks_like_zip, AssembleOptions};
use tempfile::TempPath;

use crate::error::{joined, ApiError, ApiResult};
use crate::form::UploadedFile;
use crate::state::AppState;

/// When `file` holds a zip, assembles the DICOM series in it and returns the temp path of the
/// NIfTI image (`.nii.gz`); `None` for anything else. A zip that is not one clean CT series
/// (see `docs/dicom.md`) is a 422 naming the file and the cause; nothing is kept.
pub async fn series_to_nifti(state: &AppState, file: &UploadedFile) -> ApiResult<Option<TempPath>> {
    let path = file.path();
    let name = file.filename.clone();
    let tmp_dir = state.settings.tmp_dir.clone();
    joined(
        tokio::task::spawn_blocking(move || -> ApiResult<Option<TempPath>> {
            let io = |e: std::io::Error| ApiError::internal(format!("reading the upload: {e}"));
            let mut head = [0u8; 4];
            let n = std::fs::File::open(&path)
                .and_then(|f| f.take(4).read(&mut head))
                .map_err(io)?;
            if !looks_like_zip(&head[..n]) {
                return Ok(None);
            }
            let bytes = std::fs::read(&path).map_err(io)?;
            let series = assemble_zip(&bytes, &AssembleOptions::default()).map_err(|e| {
                let detail = format!("cannot read image {name:?} as a DICOM series: {e}");
                if e.is_client_error() {
                    ApiError::unprocessable(detail)
                } else {
                    ApiError::internal(detail)
                }
            })?;
            drop(bytes);
            let v = &series.volume;
            let nifti = ferrolabel_imaging::encode_nifti_f32(&v.data, v.dims, &v.affine, true)
                .map_err(|e| ApiError::internal(format!("writing the assembled series: {e}")))?;
            let mut tmp = tempfile::Builder::new()
                .prefix(".dicom-")
                .suffix(".tmp")
                .tempfile_in(&tmp_dir)
                .map_err(io)?;
            std::io::Write::write_all(&mut tmp, &nifti).map_err(io)?;
            Ok(Some(tmp.into_temp_path()))
        })
        .await,
    )?
}
