//! DICOM series uploads (`PUT /datastore/?image=`, `PUT /session/`): the file parts of an
//! upload — one zip, or many DICOM files — become one NIfTI image, assembled by
//! `ferrolabel-dicom` on the blocking pool and written as a gzip NIfTI-1 (`f32`, RAS affine)
//! into the private temp folder, from where it is stored like any uploaded image.
//!
//! The parts are already on disk (the multipart reader streams them to temp files); a zip is
//! extracted entry by entry into a temp folder (its names never become paths) under the
//! archive checks of [`ferrolabel_dicom::extract_zip`]; the series is assembled streaming
//! (headers first, then one file at a time into the volume). Anything that is not one clean CT
//! series (see `docs/dicom.md`) is a 422 naming the cause, and every temp file and folder is
//! gone when the request ends, whatever the outcome.

use std::io::Read;
use std::path::Path;

use ferrolabel_datastore::blocking;
use ferrolabel_dicom::{
    assemble_files, extract_zip, looks_like_zip, AssembleOptions, DicomError, NamedPath, SeriesInfo,
};
use serde_json::{Map, Value};
use tempfile::TempPath;

use crate::error::{ApiError, ApiResult};
use crate::multipart::UploadedFile;
use crate::state::AppState;

/// A series assembled from an upload.
pub struct AssembledSeries {
    /// The gzip NIfTI-1 image in the private temp folder (deleted on drop).
    pub nifti: TempPath,
    /// The source series: identity, per-slice references (what a DICOM SEG needs).
    pub info: SeriesInfo,
}

/// What one uploaded file is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Zip,
    Dicom,
    Other,
}

fn sniff(path: &Path) -> std::io::Result<Kind> {
    let mut head = Vec::with_capacity(132);
    std::fs::File::open(path)?
        .take(132)
        .read_to_end(&mut head)?;
    Ok(if looks_like_zip(&head) {
        Kind::Zip
    } else if head.starts_with(b"DICM") || head.get(128..132) == Some(&b"DICM"[..]) {
        Kind::Dicom
    } else {
        Kind::Other
    })
}

/// The SeriesInstanceUID the client chose, if any: the `series` query parameter, else a
/// `series` string in `params`.
pub fn chosen_series(query_value: &str, params: &Map<String, Value>) -> Option<String> {
    let v = match query_value.trim() {
        "" => params.get("series").and_then(Value::as_str).unwrap_or(""),
        q => q,
    };
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Assembles the DICOM series held in the file parts `files`: one zip, or one or more DICOM
/// files (any order, any names). `series_uid` chooses one series when the upload holds
/// several.
///
/// `None` when the upload is not DICOM at all: one file that is neither a zip nor DICOM
/// Part 10, or — with `plain_folder_ok` (sessions: several files make a folder, as in MONAI
/// Label) — several files none of which is. Otherwise every file must belong to the series:
/// a non-DICOM file among DICOM ones, a zip with other files, and every refusal of the
/// assembler is a 422 that names the cause; nothing is left in the temp folder.
pub async fn series_to_nifti(
    state: &AppState,
    files: &[UploadedFile],
    series_uid: Option<String>,
    plain_folder_ok: bool,
) -> ApiResult<Option<AssembledSeries>> {
    if files.is_empty() {
        return Ok(None);
    }
    let parts: Vec<NamedPath> = files
        .iter()
        .map(|f| NamedPath {
            name: f.filename.clone(),
            path: f.path(),
        })
        .collect();
    let tmp_dir = state.settings.tmp_dir.clone();
    blocking(move || assemble_upload(parts, series_uid, plain_folder_ok, &tmp_dir)).await
}

fn assemble_upload(
    parts: Vec<NamedPath>,
    series_uid: Option<String>,
    plain_folder_ok: bool,
    tmp_dir: &Path,
) -> ApiResult<Option<AssembledSeries>> {
    let io = |e: std::io::Error| ApiError::internal(format!("reading the upload: {e}"));
    let kinds = parts
        .iter()
        .map(|p| sniff(&p.path))
        .collect::<std::io::Result<Vec<Kind>>>()
        .map_err(io)?;
    let dicom_like = kinds.iter().filter(|k| **k != Kind::Other).count();
    if dicom_like == 0 && (parts.len() == 1 || plain_folder_ok) {
        return Ok(None);
    }
    let options = AssembleOptions {
        series_uid,
        ..AssembleOptions::default()
    };
    let what = match parts.as_slice() {
        [one] => format!("image {:?}", one.name),
        many => format!("the {} uploaded files", many.len()),
    };
    let refused = |e: DicomError| {
        let detail = format!("cannot read {what} as a DICOM series: {e}");
        if e.is_client_error() {
            ApiError::unprocessable(detail)
        } else {
            ApiError::internal(detail)
        }
    };
    // extracted zip entries live in this folder until the end of the request
    let work = tempfile::Builder::new()
        .prefix(".dicom-")
        .tempdir_in(tmp_dir)
        .map_err(io)?;
    let series = match kinds.iter().position(|k| *k == Kind::Zip) {
        Some(z) if parts.len() > 1 => {
            return Err(ApiError::unprocessable(format!(
                "cannot read {what} as a DICOM series: {:?} is a zip archive; upload a zip \
                 alone or the DICOM files themselves, not both",
                parts[z].name
            )))
        }
        Some(z) => {
            let entries =
                extract_zip(&parts[z].path, work.path(), &options.input).map_err(refused)?;
            assemble_files(&entries, &options).map_err(refused)?
        }
        None => assemble_files(&parts, &options).map_err(refused)?,
    };
    drop(work);
    let v = &series.volume;
    let nifti = ferrolabel_imaging::encode_nifti_f32(&v.data, v.dims, &v.affine, true)
        .map_err(|e| ApiError::internal(format!("writing the assembled series: {e}")))?;
    let info = series.info;
    drop(series.volume);
    let mut tmp = tempfile::Builder::new()
        .prefix(".dicom-")
        .suffix(".tmp")
        .tempfile_in(tmp_dir)
        .map_err(io)?;
    std::io::Write::write_all(&mut tmp, &nifti).map_err(io)?;
    Ok(Some(AssembledSeries {
        nifti: tmp.into_temp_path(),
        info,
    }))
}

/// Stores an assembled series in the datastore as image `id` (`.nii.gz`), after the checks
/// every uploaded image passes; returns the stored id.
pub async fn store_series(
    state: &AppState,
    id: &str,
    series: AssembledSeries,
    params: Map<String, Value>,
    user: &str,
) -> ApiResult<String> {
    let nifti = series.nifti.to_path_buf();
    state.app.load_image(nifti.clone()).await?;
    let rec = state
        .datastore
        .add_image(
            id,
            ".nii.gz",
            ferrolabel_datastore::Source::File(nifti),
            params,
            Some(user),
        )
        .await?;
    // the source series, for DICOM SEGs of its labels (crate::dicom_source)
    crate::dicom_source::save(state, &rec.id, &series.info).await?;
    tracing::info!(
        image = %rec.id,
        slices = series.info.slices.len(),
        series = %series.info.series_instance_uid,
        "DICOM series stored"
    );
    Ok(rec.id)
}
