//! The DICOMweb (PACS) datastore: `--studies http(s)://HOST/dicom-web` (docs/dicomweb.md).
//!
//! Images are the series the PACS lists with QIDO-RS (the configured search filter,
//! `Modality=CT` by default), registered in the local SQLite datastore as remote images (id =
//! SeriesInstanceUID; [`Pacs::sync_listing`], at start and then periodically). Labels, their
//! revisions, info and sessions stay local. An image's voxels are fetched with WADO-RS on first
//! use, assembled once and kept in the size-bounded [`SeriesCache`]: the datastore's
//! `image_path` calls [`Pacs`] through [`RemoteSource`], so inference, training, scoring,
//! batch inference, reports and downloads all make the image local the same way. SEG series
//! that the PACS already holds for a series become its `final` label on first use (when it has
//! none). A saved `final` label goes back to the PACS as a DICOM SEG through the outbox
//! ([`outbox`]).

pub mod outbox;
mod segs;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferrolabel_datastore::remote::BoxFuture;
use ferrolabel_datastore::{
    blocking, Datastore, DatastoreError, RemoteImage, RemoteSource, SyncStats,
};
use ferrolabel_dicom::seg::Structure;
use ferrolabel_dicom::AssembleOptions;
use ferrolabel_dicomweb::{
    CachedSeries, DicomWebClient, DicomWebConfig, DicomWebError, SeriesCache, SeriesSummary,
};
use ferrolabel_imaging::Limits;
use serde_json::{Map, Value};

/// Key of the StudyInstanceUID in an image's remote name.
const STUDY: &str = "StudyInstanceUID";

/// A PACS as the image source of the datastore.
pub struct Pacs {
    client: DicomWebClient,
    cache: SeriesCache,
    options: AssembleOptions,
    datastore: Datastore,
    /// The bundle's structures (value, name): SEG segments and label values map through them.
    structures: Vec<Structure>,
    /// Series whose PACS SEGs were looked at since the start.
    seg_checked: Mutex<HashSet<String>>,
    /// One outbox sender at a time.
    outbox_lock: tokio::sync::Mutex<()>,
    /// This PACS, for work started in the background.
    this: std::sync::OnceLock<std::sync::Weak<Pacs>>,
}

impl std::fmt::Debug for Pacs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacs")
            .field("base_url", &self.client.config().base_url)
            .finish_non_exhaustive()
    }
}

/// The datastore's error for a failed PACS operation (502/504/422 by
/// [`crate::error::dicomweb_status`]).
pub fn remote_error(e: DicomWebError) -> DatastoreError {
    DatastoreError::Remote {
        status: crate::error::dicomweb_status(&e).as_u16(),
        detail: e.to_string(),
    }
}

impl Pacs {
    /// Opens the cache and the client, and installs the PACS as the datastore's remote source.
    pub fn open(
        config: DicomWebConfig,
        cache_dir: &std::path::Path,
        cache_bytes: u64,
        datastore: Datastore,
        limits: Limits,
        structures: Vec<Structure>,
    ) -> anyhow::Result<Arc<Pacs>> {
        let client = DicomWebClient::new(config)?;
        let cache = SeriesCache::open(cache_dir, cache_bytes)?;
        let options = AssembleOptions {
            image: limits,
            ..AssembleOptions::default()
        };
        let pacs = Arc::new(Pacs {
            client,
            cache,
            options,
            datastore: datastore.clone(),
            structures,
            seg_checked: Mutex::default(),
            outbox_lock: tokio::sync::Mutex::new(()),
            this: std::sync::OnceLock::new(),
        });
        let _ = pacs.this.set(Arc::downgrade(&pacs));
        datastore.set_remote_source(pacs.clone());
        Ok(pacs)
    }

    /// Lists the PACS's series (QIDO-RS, paged) and registers them as remote images: new ones
    /// added, vanished unlabelled ones dropped. No pixel data moves.
    pub async fn sync_listing(&self) -> Result<SyncStats, DatastoreError> {
        let listed = self.client.list_ct_series().await.map_err(remote_error)?;
        let images: Vec<RemoteImage> = listed.iter().map(remote_image).collect();
        self.datastore.sync_remote_images(&images, true).await
    }

    /// The cached series of a remote image, fetched with WADO-RS when not cached.
    pub async fn cached(
        &self,
        id: &str,
        remote: &Map<String, Value>,
    ) -> Result<CachedSeries, DatastoreError> {
        let study = remote.get(STUDY).and_then(Value::as_str).ok_or_else(|| {
            DatastoreError::Invalid(format!("image {id} has no StudyInstanceUID"))
        })?;
        self.cache
            .get_or_fetch(&self.client, study, id, &self.options)
            .await
            .map_err(remote_error)
    }

    /// The source `SeriesInfo` of a cached series: read from `series.json` in its cache entry,
    /// else assembled again from its instances (on a blocking thread) and kept there.
    pub async fn series_info(
        &self,
        cached: &CachedSeries,
    ) -> Result<ferrolabel_dicom::SeriesInfo, DatastoreError> {
        let (cached, options) = (cached.clone(), self.options.clone());
        blocking(
            move || -> Result<ferrolabel_dicom::SeriesInfo, DatastoreError> {
                let kept = cached.image.with_file_name("series.json");
                let read = std::fs::read(&kept)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|v| ferrolabel_dicom::SeriesInfo::from_json(&v).ok());
                if let Some(info) = read {
                    return Ok(info);
                }
                let info = cached.load_series(&options).map_err(remote_error)?.info;
                // best effort: a failed write only means assembling again next time
                let tmp = kept.with_extension("json.tmp");
                if std::fs::write(&tmp, info.to_json().to_string()).is_ok() {
                    let _ = std::fs::rename(&tmp, &kept);
                }
                Ok(info)
            },
        )
        .await
    }
}

impl Pacs {
    /// [`Pacs::import_segs`], its failure logged; a PACS failure lets the next use try again.
    async fn import_segs_logged(
        &self,
        id: &str,
        remote: &Map<String, Value>,
        cached: &CachedSeries,
    ) {
        if let Err(e) = self.import_segs(id, remote, cached).await {
            tracing::warn!(image = %id, error = %e, "PACS SEGs of the series not imported");
            if matches!(e, DatastoreError::Remote { status, .. } if status >= 500) {
                self.seg_checked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
            }
        }
    }
}

/// One round of the PACS's periodic work: re-list its series, then retry unsent SEGs
/// ([`outbox::retry`]). Failures are logged; the next round tries again.
pub async fn sync_once(pacs: &Arc<Pacs>) -> serde_json::Value {
    let listing = match pacs.sync_listing().await {
        Ok(stats) => {
            tracing::info!(
                added = stats.added,
                updated = stats.updated,
                removed = stats.removed,
                "PACS series listed"
            );
            serde_json::json!({"added": stats.added, "updated": stats.updated, "removed": stats.removed})
        }
        Err(e) => {
            tracing::warn!(error = %e, "PACS listing failed; keeping the last one");
            serde_json::json!({"error": e.to_string()})
        }
    };
    outbox::retry(pacs).await;
    serde_json::json!({ "listing": listing })
}

/// A QIDO-RS series as a remote image: id = SeriesInstanceUID, info with what the listing said.
fn remote_image(s: &SeriesSummary) -> RemoteImage {
    let mut remote = Map::new();
    remote.insert(STUDY.into(), s.study_instance_uid.clone().into());
    remote.insert(
        "SeriesInstanceUID".into(),
        s.series_instance_uid.clone().into(),
    );
    let mut info = Map::new();
    info.insert(
        "StudyInstanceUID".into(),
        s.study_instance_uid.clone().into(),
    );
    if let Some(p) = &s.patient_id {
        info.insert("PatientID".into(), p.clone().into());
    }
    if let Some(d) = &s.description {
        info.insert("SeriesDescription".into(), d.clone().into());
    }
    if let Some(n) = s.number_of_instances {
        info.insert("NumberOfSeriesRelatedInstances".into(), n.into());
    }
    if let Some(n) = s.series_number {
        info.insert("SeriesNumber".into(), n.into());
    }
    if let Some(m) = &s.modality {
        info.insert("Modality".into(), m.clone().into());
    }
    RemoteImage {
        id: s.series_instance_uid.clone(),
        remote,
        info,
    }
}

impl RemoteSource for Pacs {
    fn local_path(&self, id: &str, _remote: &Map<String, Value>) -> PathBuf {
        self.cache.root().join(id).join("image.nii")
    }

    fn fetch<'a>(
        &'a self,
        id: &'a str,
        remote: &'a Map<String, Value>,
    ) -> BoxFuture<'a, Result<PathBuf, DatastoreError>> {
        Box::pin(async move {
            let was_cached = self.cache.get(id).is_some();
            let cached = self.cached(id, remote).await?;
            let first = self
                .seg_checked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_string());
            if first {
                if was_cached {
                    // the PACS may be down now: look for its SEGs without holding up this use
                    if let Some(pacs) = self.this.get().and_then(std::sync::Weak::upgrade) {
                        let (id, remote, cached) = (id.to_string(), remote.clone(), cached.clone());
                        tokio::spawn(async move {
                            pacs.import_segs_logged(&id, &remote, &cached).await
                        });
                    }
                } else {
                    // just fetched: the PACS answers, and the label is there for this use
                    self.import_segs_logged(id, remote, &cached).await;
                }
            }
            Ok(cached.image)
        })
    }
}
