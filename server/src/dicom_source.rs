//! The DICOM source of an image, and DICOM SEGs of label maps on it.
//!
//! An image assembled from an uploaded DICOM series keeps its source series (a
//! [`SeriesInfo`]: UIDs, frame of reference, per-slice SOP references and positions, patient
//! and study identity) in a sidecar next to it in the studies folder,
//! `.<id>.dicom-source.json` (a dot file: the datastore's scan ignores it). The sidecar
//! records the image file's size and modification time; when the image is replaced by a
//! non-DICOM upload (or removed), the stale sidecar is ignored and deleted. A PACS image's
//! source is the PACS's series itself (`crate::pacs`).
//!
//! With object storage (`--storage-url`) the sidecar is a blob instead, recorded in the
//! database (`blob_refs` kind `dicom_source`) with the SHA-256 of the image content it
//! describes: every server on that database and bucket finds it (a SEG export on another server
//! than the one that received the DICOM), and an image replaced by other content has none.
//!
//! With a source, `POST /infer/{model}?output=dicom_seg` and
//! `GET /datastore/label?...&format=dicom_seg` answer the label as a DICOM Segmentation
//! (`seg_type=binary`, the default, or `labelmap`; docs/dicom.md).

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use actix_web::http::header;
use actix_web::HttpResponse;
use ferrolabel_datastore::blocking;
use ferrolabel_dicom::seg::{write_seg, SegOptions, SegmentationType, Structure};
use ferrolabel_dicom::{DicomError, SeriesInfo};
use serde_json::{json, Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Version of the sidecar layout.
const VERSION: u64 = 1;

/// MONAI Label's answer to `output=dicom_seg` for an image without a DICOM source.
pub const NOT_DICOM: &str = "DICOM SEG format is not supported in a non-DICOM datastore";

fn sidecar_path(state: &AppState, image_id: &str) -> PathBuf {
    state
        .datastore
        .studies()
        .join(format!(".{image_id}.dicom-source.json"))
}

/// Size and modification time (ns since the epoch) of the image file.
fn stamp(path: &Path) -> std::io::Result<(u64, u128)> {
    let meta = std::fs::metadata(path)?;
    let modified = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok((meta.len(), modified))
}

/// The `blob_refs` kind of DICOM sources, and the name of the one blob of an image.
const KIND: &str = "dicom_source";
const BLOB_NAME: &str = "series.json";

/// With object storage: the SHA-256 of image `image_id`'s content (`None` without object
/// storage, or for content saved before it was configured: the sidecar file is used then).
async fn shared_sha(state: &AppState, image_id: &str) -> ApiResult<Option<String>> {
    if state.datastore.storage_url().is_none() {
        return Ok(None);
    }
    Ok(state.datastore.image_sha256(image_id).await?)
}

/// Keeps `series` as the DICOM source of the image whose content is `image_sha` in object
/// storage (a blob named in the database).
async fn save_shared(
    state: &AppState,
    image_id: &str,
    image_sha: &str,
    series: Value,
) -> ApiResult<()> {
    let doc = json!({"version": VERSION, "image": {"sha256": image_sha}, "series": series});
    let dir = tempfile::tempdir_in(state.datastore.studies())?;
    let file = dir.path().join(BLOB_NAME);
    tokio::fs::write(&file, doc.to_string()).await?;
    state
        .datastore
        .put_blob_refs(
            KIND,
            image_id,
            &[(BLOB_NAME.to_string(), file.as_path())],
            &json!({"image_sha256": image_sha}),
        )
        .await?;
    Ok(())
}

/// The DICOM source of image `image_id` recorded in the database for its content `image_sha`;
/// `None` when none is recorded, or (removed then) when it describes other content.
async fn load_shared(
    state: &AppState,
    image_id: &str,
    image_sha: &str,
) -> ApiResult<Option<SeriesInfo>> {
    let ds = &state.datastore;
    let Some(r) = ds.blob_refs(KIND, image_id).await?.into_iter().next() else {
        return Ok(None);
    };
    if r.info["image_sha256"].as_str() != Some(image_sha) {
        tracing::info!(image = image_id, "stale DICOM source forgotten");
        ds.remove_blob_refs(KIND, image_id).await?;
        return Ok(None);
    }
    let dir = tempfile::tempdir_in(ds.studies())?;
    let file = dir.path().join(BLOB_NAME);
    ds.fetch_blob(&r.sha256, &file).await?;
    let doc: Value = serde_json::from_slice(&tokio::fs::read(&file).await?).unwrap_or(Value::Null);
    if doc["version"].as_u64() != Some(VERSION) {
        return Ok(None);
    }
    SeriesInfo::from_json(&doc["series"])
        .map(Some)
        .map_err(|e| ApiError::internal(format!("DICOM source of {image_id}: {e}")))
}

/// Keeps `info` as the DICOM source of the stored (local) image `image_id`. Call it after the
/// image file is written: the sidecar is bound to that file (with object storage: to its
/// content's hash).
pub async fn save(state: &AppState, image_id: &str, info: &SeriesInfo) -> ApiResult<()> {
    if let Some(sha) = shared_sha(state, image_id).await? {
        return save_shared(state, image_id, &sha, info.to_json()).await;
    }
    let rec = state
        .datastore
        .image(image_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Image NOT Found: {image_id}")))?;
    let sidecar = sidecar_path(state, image_id);
    let series = info.to_json();
    blocking(move || -> std::io::Result<()> {
        let (bytes, modified) = stamp(&rec.path)?;
        let doc = json!({
            "version": VERSION,
            "image": {"name": format!("{}{}", rec.id, rec.ext), "bytes": bytes,
                      "modified_ns": modified.to_string()},
            "series": series,
        });
        let dir = sidecar.parent().unwrap_or(Path::new("."));
        // a dot-named .tmp file: the datastore sweeps it if a crash leaves it behind
        let mut tmp = tempfile::Builder::new()
            .prefix(".dicom-source-")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        std::io::Write::write_all(&mut tmp, doc.to_string().as_bytes())?;
        tmp.persist(&sidecar).map_err(|e| e.error)?;
        Ok(())
    })
    .await
    .map_err(ApiError::from)
}

/// The DICOM source of image `image_id`: its sidecar (when it still describes the image
/// file), or the PACS series of a PACS image; `None` when the image did not come from DICOM
/// or is unknown.
pub async fn load(state: &AppState, image_id: &str) -> ApiResult<Option<SeriesInfo>> {
    let Some(rec) = state.datastore.image(image_id).await? else {
        return Ok(None);
    };
    if rec.remote {
        let (Some(pacs), Some(remote)) = (&state.pacs, state.datastore.remote_of(image_id).await?)
        else {
            return Ok(None);
        };
        let cached = pacs.cached(image_id, &remote).await?;
        return Ok(Some(pacs.series_info(&cached).await?));
    }
    if let Some(sha) = shared_sha(state, image_id).await? {
        return load_shared(state, image_id, &sha).await;
    }
    let sidecar = sidecar_path(state, image_id);
    let name = format!("{}{}", rec.id, rec.ext);
    blocking(move || -> ApiResult<Option<SeriesInfo>> {
        let text = match std::fs::read(&sidecar) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let doc: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        let current = stamp(&rec.path).ok();
        let recorded = (
            doc["image"]["name"].as_str(),
            doc["image"]["bytes"].as_u64(),
            doc["image"]["modified_ns"]
                .as_str()
                .and_then(|s| s.parse::<u128>().ok()),
        );
        let fresh = doc["version"].as_u64() == Some(VERSION)
            && current.is_some_and(|(b, m)| recorded == (Some(&name), Some(b), Some(m)));
        if !fresh {
            // the image was replaced (or the sidecar is damaged): it has no DICOM source
            tracing::info!(sidecar = %sidecar.display(), "stale DICOM source removed");
            let _ = std::fs::remove_file(&sidecar);
            return Ok(None);
        }
        SeriesInfo::from_json(&doc["series"])
            .map(Some)
            .map_err(|e| ApiError::internal(format!("DICOM source {}: {e}", sidecar.display())))
    })
    .await
}

/// Deletes the DICOM source of image `image_id`, if any (when the image is removed).
pub async fn remove(state: &AppState, image_id: &str) {
    let sidecar = sidecar_path(state, image_id);
    let _ = tokio::fs::remove_file(&sidecar).await;
    if state.datastore.storage_url().is_some() {
        if let Err(e) = state.datastore.remove_blob_refs(KIND, image_id).await {
            tracing::warn!(image = image_id, "DICOM source not forgotten: {e}");
        }
    }
}

/// The SEG type chosen by `seg_type` (`binary`, the default, or `labelmap`).
pub fn seg_type(value: &str) -> ApiResult<SegmentationType> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "binary" => Ok(SegmentationType::Binary),
        "labelmap" | "label_map" => Ok(SegmentationType::Labelmap),
        other => Err(ApiError::unprocessable(format!(
            "query parameter \"seg_type\": {other:?} is not one of binary, labelmap"
        ))),
    }
}

/// The structures of a label: the bundle's names by value, renamed where `info`'s
/// `label_info` (`[{"name", "idx"}]`, as Slicer sends it) names a value.
pub fn structures(state: &AppState, info: &Map<String, Value>) -> Vec<Structure> {
    let bundle: Vec<Structure> = state
        .app
        .label_map()
        .iter()
        .filter_map(|(name, v)| {
            let value = u8::try_from(v.as_i64()?).ok().filter(|v| *v > 0)?;
            Some(Structure {
                value,
                name: name.clone(),
            })
        })
        .collect();
    crate::pacs::outbox::structures_for(&bundle, info)
}

/// Where the label map comes from.
pub enum LabelInput {
    /// A label file (NIfTI or NRRD).
    File(PathBuf),
    /// A label encoded in memory, with a file name for its format.
    Bytes(Vec<u8>, String),
}

/// The DICOM SEG (`kind`) of a label map on the grid of `series`, on the blocking pool. A
/// label that is not on the series' grid or holds no named structure is a 422.
pub async fn label_seg(
    state: &AppState,
    series: SeriesInfo,
    label: LabelInput,
    structures: Vec<Structure>,
    kind: SegmentationType,
    description: String,
) -> ApiResult<Vec<u8>> {
    let limits = *state.app.limits();
    blocking(move || -> ApiResult<Vec<u8>> {
        let volume = match &label {
            LabelInput::File(p) => ferrolabel_imaging::read_volume(p, &limits),
            LabelInput::Bytes(b, name) => ferrolabel_imaging::read_volume_bytes(b, name, &limits),
        }
        .map_err(|e| ApiError::internal(format!("reading the label: {e}")))?;
        let want = [series.columns, series.rows, series.slices.len()];
        if volume.dims != want {
            return Err(ApiError::unprocessable(format!(
                "the label's grid {:?} is not the DICOM series' {want:?}",
                volume.dims
            )));
        }
        let labels: Vec<u8> = volume
            .data
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect();
        drop(volume);
        let options = SegOptions {
            series_description: description,
            ..SegOptions::default()
        };
        write_seg(kind, &series, &labels, &structures, &options).map_err(|e| match e {
            DicomError::InvalidLabels(m) => ApiError::unprocessable(m),
            other if other.is_client_error() => ApiError::unprocessable(other.to_string()),
            other => ApiError::internal(other.to_string()),
        })
    })
    .await
}

/// A SEG as a download (`application/dicom`, MONAI Label's FileResponse), named `name`.
pub fn seg_response(bytes: Vec<u8>, name: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/dicom")
        .insert_header((
            header::CONTENT_DISPOSITION,
            crate::response::content_disposition(name),
        ))
        .body(bytes)
}
