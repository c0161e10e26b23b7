//! SEG series the PACS already holds for a series become the image's `final` label.

use ferrolabel_datastore::{blocking, DatastoreError, Source, FINAL_TAG};
use ferrolabel_dicomweb::CachedSeries;
use serde_json::{Map, Value};

use super::{remote_error, Pacs, STUDY};

impl Pacs {
    /// On an image's first use: when it has no `final` label, the newest SEG series of the PACS
    /// that references it (and that this server did not store itself) is decoded onto its grid
    /// and saved as its `final` label (info `source: pacs`, `seg_series`). Not sent back.
    pub(crate) async fn import_segs(
        &self,
        id: &str,
        remote: &Map<String, Value>,
        cached: &CachedSeries,
    ) -> Result<(), DatastoreError> {
        if self.datastore.label(id, FINAL_TAG).await?.is_some() {
            return Ok(());
        }
        let Some(study) = remote.get(STUDY).and_then(Value::as_str) else {
            return Ok(());
        };
        let ours: Vec<String> = self
            .datastore
            .outbox_results(id)
            .await?
            .iter()
            .filter_map(|r| {
                r.get("seg_series")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .collect();
        let segs = self
            .client
            .list_seg_series(study, id)
            .await
            .map_err(remote_error)?;
        let Some(seg) = segs
            .iter()
            .rev()
            .find(|s| !ours.contains(&s.series.series_instance_uid))
        else {
            return Ok(());
        };
        let seg_uid = seg.series.series_instance_uid.clone();
        let dir = tempfile::Builder::new()
            .prefix(".partial-seg-")
            .tempdir_in(self.cache.root())
            .map_err(|e| DatastoreError::Task(format!("temp folder: {e}")))?;
        let files = self
            .client
            .retrieve_series_to_dir(study, &seg_uid, dir.path())
            .await
            .map_err(remote_error)?;
        let Some(first) = files.paths.first().cloned() else {
            return Ok(());
        };
        let series = self.series_info(cached).await?;
        let structures = self.structures.clone();
        let image = cached.image.clone();
        let limits = self.options.image;
        let label = blocking(move || -> Result<Vec<u8>, DatastoreError> {
            let bytes = std::fs::read(&first)
                .map_err(|e| DatastoreError::Task(format!("reading the SEG: {e}")))?;
            let decoded = ferrolabel_dicom::seg::read_seg(&bytes, &series, &structures)
                .map_err(|e| DatastoreError::Invalid(format!("SEG {}: {e}", first.display())))?;
            let volume = ferrolabel_imaging::read_nifti(&image, &limits)
                .map_err(|e| DatastoreError::Task(format!("cached image: {e}")))?;
            let header = volume
                .header
                .ok_or_else(|| DatastoreError::Task("cached image without a header".into()))?;
            ferrolabel_imaging::encode_label_nifti(&decoded.labels, &header, true)
                .map_err(|e| DatastoreError::Task(format!("encoding the label: {e}")))
        })
        .await?;
        drop(dir);
        let mut info = Map::new();
        info.insert("source".into(), "pacs".into());
        info.insert("seg_series".into(), seg_uid.clone().into());
        self.datastore
            .save_label(
                id,
                FINAL_TAG,
                ".nii.gz",
                Source::Bytes(label),
                info,
                Some("pacs"),
            )
            .await?;
        tracing::info!(image = %id, seg = %seg_uid, "PACS SEG imported as the final label");
        Ok(())
    }
}
