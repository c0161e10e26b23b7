//! [`SeriesCache`]: retrieved and converted series on local disk, keyed by
//! SeriesInstanceUID, bounded in bytes, least recently used out.
//!
//! An entry is a folder `<root>/<SeriesInstanceUID>/` holding `instances/` (the DICOM files
//! as WADO-RS sent them: the source datasets a SEG references) and `image.nii` (the assembled
//! volume, `f32` NIfTI-1, uncompressed so that loading it costs a read, not a decode), plus an
//! empty `used` file whose modification time is the entry's last use (so the order survives a
//! restart). Entries are built in `<root>/.partial-*` and renamed into place, so a crash never
//! leaves a half-written entry under a UID; leftovers are removed by [`SeriesCache::open`].

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ferrolabel_dicom::{AssembleOptions, Series};
use ferrolabel_imaging::{DataType, Header, Limits, Volume};

use crate::client::DicomWebClient;
use crate::error::{DicomWebError, Result};

const IMAGE: &str = "image.nii";
const INSTANCES: &str = "instances";
const USED: &str = "used";

/// A series present in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedSeries {
    /// The SeriesInstanceUID.
    pub series_uid: String,
    /// The assembled volume as an `f32` NIfTI-1 file (read it with
    /// `ferrolabel_imaging::read_nifti` or hand its path to anything that reads images).
    pub image: PathBuf,
    /// The DICOM instances as retrieved (assemble them again with `ferrolabel-dicom` for the
    /// `SeriesInfo` a SEG needs).
    pub instances: PathBuf,
    /// Bytes the entry takes on disk.
    pub bytes: u64,
}

impl CachedSeries {
    /// Reads the cached volume (blocking: call it from a blocking thread in a server).
    pub fn load_volume(&self, limits: &Limits) -> Result<Volume> {
        ferrolabel_imaging::read_nifti(&self.image, limits).map_err(|e| {
            DicomWebError::io(
                format!("reading cached {}", self.image.display()),
                std::io::Error::other(e.to_string()),
            )
        })
    }

    /// Assembles the cached instances again: the volume and the source `SeriesInfo` for the
    /// SEG writer (blocking).
    pub fn load_series(&self, options: &AssembleOptions) -> Result<Series> {
        let mut options = options.clone();
        options.series_uid = Some(self.series_uid.clone());
        ferrolabel_dicom::assemble_dir(&self.instances, &options).map_err(|e| {
            DicomWebError::Series {
                series: self.series_uid.clone(),
                source: e,
            }
        })
    }
}

#[derive(Debug)]
struct Entry {
    bytes: u64,
    used: SystemTime,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    /// One lock per series being fetched, so concurrent requests fetch it once.
    fetching: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// Converted series on disk, at most `max_bytes` in all (the entry being added excepted: a
/// single series larger than the bound is kept alone until the next one arrives).
#[derive(Debug, Clone)]
pub struct SeriesCache {
    root: PathBuf,
    max_bytes: u64,
    index: Arc<Mutex<Index>>,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> DicomWebError {
    move |e| DicomWebError::io(context, e)
}

fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            total += dir_size(&e.path())?;
        } else {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn touch(entry: &Path) -> std::io::Result<SystemTime> {
    let now = SystemTime::now();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(entry.join(USED))?;
    f.set_modified(now)?;
    Ok(now)
}

/// Writes `v` as an uncompressed `f32` NIfTI-1 file, streaming the voxels (no second copy).
fn write_volume(path: &Path, v: &Volume) -> Result<()> {
    let header = Header::new_3d(v.dims, DataType::F32, &v.affine)
        .map_err(|e| DicomWebError::io("NIfTI header", std::io::Error::other(e.to_string())))?;
    let ctx = format!("writing {}", path.display());
    let f = std::fs::File::create(path).map_err(io(ctx.clone()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    w.write_all(&header.to_bytes()).map_err(io(ctx.clone()))?;
    w.write_all(&[0u8; 4]).map_err(io(ctx.clone()))?;
    let mut buf = Vec::with_capacity(64 * 1024);
    for chunk in v.data.chunks(16 * 1024) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
        w.write_all(&buf).map_err(io(ctx.clone()))?;
    }
    w.into_inner()
        .map_err(|e| DicomWebError::io(ctx.clone(), e.into_error()))?
        .sync_all()
        .map_err(io(ctx))
}

impl SeriesCache {
    /// Opens (creating it if needed) a cache under `root` bounded to `max_bytes`: indexes the
    /// complete entries there, removes partial ones, and evicts down to the bound.
    pub fn open(root: &Path, max_bytes: u64) -> Result<SeriesCache> {
        std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
        let mut index = Index::default();
        for e in std::fs::read_dir(root).map_err(io(format!("listing {}", root.display())))? {
            let e = e.map_err(io(format!("listing {}", root.display())))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let complete =
                is_uid(&name) && path.join(IMAGE).is_file() && path.join(INSTANCES).is_dir();
            if !complete {
                if name.starts_with(".partial-") || is_uid(&name) {
                    let _ = std::fs::remove_dir_all(&path);
                }
                continue;
            }
            let bytes = dir_size(&path).map_err(io(format!("sizing {}", path.display())))?;
            let used = std::fs::metadata(path.join(USED))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            index.entries.insert(name, Entry { bytes, used });
        }
        let cache = SeriesCache {
            root: root.to_path_buf(),
            max_bytes,
            index: Arc::new(Mutex::new(index)),
        };
        cache.evict(None);
        Ok(cache)
    }

    /// The cache folder (an entry is `<root>/<SeriesInstanceUID>/`, its volume `image.nii`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes held by all entries.
    pub fn total_bytes(&self) -> u64 {
        self.lock().entries.values().map(|e| e.bytes).sum()
    }

    /// SeriesInstanceUIDs held, least recently used first.
    pub fn series(&self) -> Vec<String> {
        let idx = self.lock();
        let mut v: Vec<_> = idx
            .entries
            .iter()
            .map(|(k, e)| (e.used, k.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, uid: &str, bytes: u64) -> CachedSeries {
        let dir = self.root.join(uid);
        CachedSeries {
            series_uid: uid.to_string(),
            image: dir.join(IMAGE),
            instances: dir.join(INSTANCES),
            bytes,
        }
    }

    /// The cached series `series_uid`, marked as just used, or `None`.
    pub fn get(&self, series_uid: &str) -> Option<CachedSeries> {
        let mut idx = self.lock();
        let e = idx.entries.get_mut(series_uid)?;
        e.used = touch(&self.root.join(series_uid)).unwrap_or_else(|_| SystemTime::now());
        let bytes = e.bytes;
        drop(idx);
        Some(self.entry(series_uid, bytes))
    }

    /// Takes into the index an entry that another process sharing the cache folder completed
    /// (entries are renamed into place whole, so a folder with its image is complete).
    fn adopt(&self, series_uid: &str) -> Option<CachedSeries> {
        let dir = self.root.join(series_uid);
        if !dir.join(IMAGE).is_file() {
            return None;
        }
        let bytes = dir_size(&dir).ok()?;
        let used = touch(&dir).unwrap_or_else(|_| SystemTime::now());
        self.lock()
            .entries
            .insert(series_uid.to_string(), Entry { bytes, used });
        self.evict(Some(series_uid));
        Some(self.entry(series_uid, bytes))
    }

    /// Removes least recently used entries (never `keep`) until the total fits the bound.
    fn evict(&self, keep: Option<&str>) {
        let mut idx = self.lock();
        let mut total: u64 = idx.entries.values().map(|e| e.bytes).sum();
        while total > self.max_bytes {
            let victim = idx
                .entries
                .iter()
                .filter(|(k, _)| Some(k.as_str()) != keep)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            let Some(v) = victim else { break };
            if let Some(e) = idx.entries.remove(&v) {
                total -= e.bytes;
            }
            let _ = std::fs::remove_dir_all(self.root.join(&v));
        }
    }

    /// The series from the cache, or retrieved with WADO-RS, assembled, written to the cache
    /// and the least recently used entries evicted. Concurrent calls for one series fetch it
    /// once. Assembly and file writing run on a blocking thread.
    pub async fn get_or_fetch(
        &self,
        client: &DicomWebClient,
        study_uid: &str,
        series_uid: &str,
        options: &AssembleOptions,
    ) -> Result<CachedSeries> {
        if !is_uid(series_uid) {
            return Err(DicomWebError::Config(format!(
                "{series_uid:?} is not a DICOM UID"
            )));
        }
        let gate = {
            let mut idx = self.lock();
            idx.fetching
                .entry(series_uid.to_string())
                .or_default()
                .clone()
        };
        let _guard = gate.lock().await;
        let result = self
            .fetch_locked(client, study_uid, series_uid, options)
            .await;
        let mut idx = self.lock();
        if Arc::strong_count(&gate) <= 2 {
            idx.fetching.remove(series_uid);
        }
        drop(idx);
        result
    }

    async fn fetch_locked(
        &self,
        client: &DicomWebClient,
        study_uid: &str,
        series_uid: &str,
        options: &AssembleOptions,
    ) -> Result<CachedSeries> {
        if let Some(hit) = self.get(series_uid).or_else(|| self.adopt(series_uid)) {
            return Ok(hit);
        }
        let partial = tempfile::Builder::new()
            .prefix(".partial-")
            .tempdir_in(&self.root)
            .map_err(io(format!("creating a folder in {}", self.root.display())))?;
        let instances = partial.path().join(INSTANCES);
        client
            .retrieve_series_to_dir(study_uid, series_uid, &instances)
            .await?;
        let mut options = options.clone();
        options.series_uid = Some(series_uid.to_string());
        let dir = partial.path().to_path_buf();
        let uid = series_uid.to_string();
        // names the retrieval in errors (parts that are not DICOM are the PACS's garbage)
        let url = format!("WADO-RS series {series_uid} of study {study_uid}");
        let built = tokio::task::spawn_blocking(move || -> Result<u64> {
            let series = ferrolabel_dicom::assemble_dir(&dir.join(INSTANCES), &options)
                .map_err(|e| crate::wado::assembly_error(&url, uid, e))?;
            write_volume(&dir.join(IMAGE), &series.volume)?;
            touch(&dir).map_err(io(format!("writing {}", dir.display())))?;
            dir_size(&dir).map_err(io(format!("sizing {}", dir.display())))
        })
        .await
        .map_err(|e| DicomWebError::io("cache thread", std::io::Error::other(e.to_string())))??;
        let dest = self.root.join(series_uid);
        let kept = partial.keep();
        if let Err(e) = std::fs::rename(&kept, &dest) {
            let _ = std::fs::remove_dir_all(&kept);
            // another process sharing the cache folder (a server of a team) filled it first
            if matches!(
                e.kind(),
                std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists
            ) {
                if let Some(hit) = self.adopt(series_uid) {
                    return Ok(hit);
                }
            }
            return Err(DicomWebError::io(
                format!("moving into {}", dest.display()),
                e,
            ));
        }
        self.lock().entries.insert(
            series_uid.to_string(),
            Entry {
                bytes: built,
                used: SystemTime::now(),
            },
        );
        self.evict(Some(series_uid));
        Ok(self.entry(series_uid, built))
    }
}
