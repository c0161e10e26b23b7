//! Model versions with provenance (docs/models.md): every weights file that becomes active — an
//! upload (`PUT /model/{model}`), a better checkpoint of a Rust training, a torchrun training's
//! checkpoint, or a file found in place — is kept content-addressed at
//! `<bundle>/models/versions/<sha256>.<ext>` and recorded in the datastore
//! ([`ferrolabel_datastore::versions`]) with its parent, job, user, training data and metrics.
//!
//! The bundle's `models/model.pt` (`model_lowres.pt` at 3 mm) stays what the engine loads: it
//! is a copy of the active version, replaced by temp file + fsync + rename, so the engine's
//! modification-time check and every server's pickup poll see a new version as before. The file
//! decides which version is active: [`active`] hashes it (once per new file identity) and brings
//! the table in line, recording an unknown file as a new version (`initial` when the table is
//! empty, else `external`). With object storage (`--storage-url`) every version file is also a
//! blob and the table's active version is the deployment's: a server's file that is missing or
//! stale follows it (`versions/shared.rs`). Retention ([`prune`]) keeps the files of the last
//! `model_versions_keep` versions (`--conf`, default [`DEFAULT_KEEP`]; 0 keeps all), the best
//! one and the active one; rows are never deleted.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use ferrolabel_datastore::{blocking, Datastore, DatastoreError, ModelVersion, NewModelVersion};
use ferrolabel_models::Resolution;
use serde_json::{json, Value};

pub use ferrolabel_datastore::TrainedOn;

use crate::error::{AppError, Result};
use crate::{WholeBodyApp, MODEL_NAME};

mod files;
mod promote;
mod resume_share;
mod shared;

use files::{hash_file, install_checked, install_in, keep_file};
pub use promote::{promoter, NoVersions, Promote, Promoter, Promotion};
pub use shared::share;
use shared::{fetch_missing, follow};

/// Versions whose files are kept unless `--conf model_versions_keep N` says otherwise.
pub const DEFAULT_KEEP: usize = 5;

/// Where a version came from and what made it.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// `upload`, `train`, `torchrun` (`initial` and `external` are given by [`active`]).
    pub source: String,
    /// The job that made it.
    pub job_id: Option<String>,
    /// Who uploaded it or started the job.
    pub user: Option<String>,
    /// The `final` labels (image, revision) it was trained on ([`trained_on`]).
    pub trained_on: Vec<TrainedOn>,
    /// A JSON object: `best_metric`, `best_epoch`, ...
    pub metrics: Value,
}

/// `highres` or `lowres`: the `resolution` column.
pub fn resolution_name(res: Resolution) -> &'static str {
    if res.is_high() {
        "highres"
    } else {
        "lowres"
    }
}

/// The folder of the version files.
pub fn versions_dir(app: &WholeBodyApp) -> PathBuf {
    app.bundle_dir().join("models").join("versions")
}

fn version_file(app: &WholeBodyApp, v: &ModelVersion) -> PathBuf {
    versions_dir(app).join(format!("{}.{}", v.sha256, v.ext))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ext_of(path: &Path) -> &'static str {
    if path.extension().is_some_and(|e| e == "safetensors") {
        "safetensors"
    } else {
        "pt"
    }
}

/// Serialises this process's version changes (other processes: the file's rename and the
/// table's lock order them; [`active`] reconciles).
fn changes() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(Default::default)
}

/// The active version of `res`: the one whose content the weights file has (`None`: no weights
/// file). A file the table does not know yet is recorded (kept in the versions folder) as a
/// new version: `initial` (no parent) when none is recorded, else `external`.
pub async fn active(
    app: &WholeBodyApp,
    ds: &Datastore,
    res: Resolution,
) -> Result<Option<ModelVersion>> {
    let rname = resolution_name(res);
    let path = app.weights_path(MODEL_NAME, res)?;
    let hashed = {
        let path = path.clone();
        blocking(move || hash_file(&path)).await?
    };
    if ds.storage_url().is_some() {
        // the resume state follows the deployment too (another process's training)
        if let Err(e) = resume_share::sync(app, ds, res).await {
            tracing::warn!(resolution = rname, "resume state not shared: {e}");
        }
        let local = hashed.as_ref().map(|(sha, _)| sha.as_str());
        if let Some(v) = follow(app, ds, res, local).await? {
            return Ok(Some(v));
        }
    }
    let Some((sha, size)) = hashed else {
        if ds.active_model_version(MODEL_NAME, rname).await?.is_some() {
            ds.set_active_model_version(MODEL_NAME, rname, None, now_ms())
                .await?;
        }
        return Ok(None);
    };
    if let Some(v) = ds.model_version_by_sha256(MODEL_NAME, rname, &sha).await? {
        if v.active {
            return Ok(Some(v));
        }
        ds.set_active_model_version(MODEL_NAME, rname, Some(v.version), now_ms())
            .await?;
        return Ok(ds.model_version(MODEL_NAME, rname, v.version).await?);
    }
    let _one = changes().lock().await;
    let source = if ds.model_versions(MODEL_NAME, rname).await?.is_empty() {
        "initial"
    } else {
        "external"
    };
    let ext = ext_of(&path);
    let kept = {
        let (dir, path, sha) = (versions_dir(app), path.clone(), sha.clone());
        blocking(move || keep_file(&dir, &path, &sha, ext)).await?
    };
    // with object storage the blob goes first, the row last (as for labels); the claim keeps
    // a garbage collection off the blob until the row names it
    let claim = ds.claim_blob(&kept, &sha).await?;
    let new = NewModelVersion {
        model: MODEL_NAME.into(),
        resolution: rname.into(),
        sha256: sha,
        ext: ext.into(),
        size: size as i64,
        source: source.into(),
        metrics: json!({}),
        ..NewModelVersion::default()
    };
    let (v, _) = ds.record_model_version(&new, true, now_ms()).await?;
    claim.release().await?;
    tracing::info!(
        version = v.version,
        source,
        resolution = rname,
        "model version recorded"
    );
    Ok(Some(v))
}

/// The `final` labels a training started now reads, as (image, revision): what
/// [`Provenance::trained_on`] records.
pub async fn trained_on(ds: &Datastore) -> Result<Vec<TrainedOn>> {
    Ok(ds.final_label_revisions().await?)
}

/// Records the weights file `file` as a version of `res` and makes it active (copied over
/// `model.pt` unless it is that file already), then prunes by the retention policy. The file
/// must already be known to load (see [`register_trained`]).
pub async fn register(
    app: &WholeBodyApp,
    ds: &Datastore,
    res: Resolution,
    file: &Path,
    prov: Provenance,
) -> Result<ModelVersion> {
    let rname = resolution_name(res);
    let active_path = app.weights_path(MODEL_NAME, res)?;
    let in_place = file == active_path;
    if !in_place {
        // the file in place before this one is a version too (the parent)
        active(app, ds, res).await?;
    }
    let _one = changes().lock().await;
    let ext = ext_of(file);
    let (sha, size, kept) = {
        let (dir, file) = (versions_dir(app), file.to_path_buf());
        blocking(move || -> Result<(String, u64, PathBuf)> {
            let (sha, size) = hash_file(&file)?.ok_or_else(|| {
                AppError::InvalidParams(format!("no weights file at {}", file.display()))
            })?;
            let kept = keep_file(&dir, &file, &sha, ext)?;
            Ok((sha, size, kept))
        })
        .await?
    };
    let claim = ds.claim_blob(&kept, &sha).await?;
    if !in_place {
        let (bundle_dir, sha) = (app.bundle_dir().to_path_buf(), sha.clone());
        blocking(move || install_in(&bundle_dir, res, &kept, ext, &sha)).await?;
    }
    let new = NewModelVersion {
        model: MODEL_NAME.into(),
        resolution: rname.into(),
        sha256: sha,
        ext: ext.into(),
        size: size as i64,
        source: prov.source,
        job_id: prov.job_id,
        username: prov.user,
        trained_on: prov.trained_on,
        metrics: prov.metrics,
    };
    let (v, created) = ds.record_model_version(&new, true, now_ms()).await?;
    claim.release().await?;
    tracing::info!(
        version = v.version,
        created,
        source = %v.source,
        resolution = rname,
        "model version active"
    );
    drop(_one);
    prune(app, ds, res).await?;
    Ok(v)
}

/// A checkpoint from a training (the torchrun path, or any file outside the bundle): loads it
/// strictly into the network first ([`AppError::BadWeights`], 422, when it does not fit; it
/// then never becomes active), then [`register`]s it with `prov`.
pub async fn register_trained(
    app: &WholeBodyApp,
    ds: &Datastore,
    res: Resolution,
    checkpoint: &Path,
    prov: Provenance,
) -> Result<ModelVersion> {
    app.validate_weights(checkpoint.to_path_buf()).await?;
    register(app, ds, res, checkpoint, prov).await
}

/// Makes version `version` of `res` active again (rollback): its kept file is checked against
/// its SHA-256 and copied over the weights file; the next inference uses it. Unknown version:
/// [`DatastoreError::NotFound`] (404); its file pruned or damaged: [`DatastoreError::Conflict`]
/// (409).
pub async fn activate(
    app: &WholeBodyApp,
    ds: &Datastore,
    res: Resolution,
    version: i64,
) -> Result<ModelVersion> {
    let rname = resolution_name(res);
    // the file in place is recorded before it is replaced
    active(app, ds, res).await?;
    let v = ds
        .model_version(MODEL_NAME, rname, version)
        .await?
        .ok_or_else(|| {
            DatastoreError::NotFound(format!("no version {version} of {MODEL_NAME} ({rname})"))
        })?;
    if v.pruned_at.is_some() {
        return Err(DatastoreError::Conflict(format!(
            "the file of version {version} was pruned by the retention policy (model_versions_keep)"
        ))
        .into());
    }
    let _one = changes().lock().await;
    let kept = version_file(app, &v);
    fetch_missing(ds, &v, &kept).await?;
    let (bundle_dir, sha, ext) = (
        app.bundle_dir().to_path_buf(),
        v.sha256.clone(),
        v.ext.clone(),
    );
    blocking(move || install_checked(&bundle_dir, res, &kept, &ext, &sha)).await?;
    ds.set_active_model_version(MODEL_NAME, rname, Some(version), now_ms())
        .await?;
    tracing::info!(version, resolution = rname, "model version activated");
    Ok(ds
        .model_version(MODEL_NAME, rname, version)
        .await?
        .unwrap_or(v))
}

/// Applies the retention policy to `res`: removes the version files of all but the last
/// `model_versions_keep` versions, the best and the active one, and marks their rows pruned.
/// Answers the pruned version numbers.
pub async fn prune(app: &WholeBodyApp, ds: &Datastore, res: Resolution) -> Result<Vec<i64>> {
    let rname = resolution_name(res);
    let all = ds.model_versions(MODEL_NAME, rname).await?;
    let ids = ferrolabel_datastore::versions::to_prune(&all, app.versions_keep());
    let mut pruned = Vec::new();
    for v in all.iter().filter(|v| ids.contains(&v.id)) {
        let file = version_file(app, v);
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("cannot prune {}: {e}", file.display());
                continue;
            }
            _ => {}
        }
        ds.mark_model_version_pruned(v.id, now_ms()).await?;
        pruned.push(v.version);
    }
    if !pruned.is_empty() {
        tracing::info!(?pruned, resolution = rname, "model version files pruned");
    }
    Ok(pruned)
}

/// A version as the API shows it: its fields, `highres`, and `file` (kept or pruned).
pub fn version_json(v: &ModelVersion) -> Value {
    let mut out = serde_json::to_value(v).unwrap_or_default();
    if let Some(m) = out.as_object_mut() {
        m.insert("highres".into(), (v.resolution == "highres").into());
        m.insert("file_kept".into(), v.pruned_at.is_none().into());
    }
    out
}

/// What an inference records about the weights it ran with: `{"model_version": N,
/// "model_sha256": hex}` when the same version was active before and after it, else
/// `{"model_version": null, "model_version_candidates": [before, after]}` (the file changed
/// while it ran; the engine loads at the start of its job).
pub fn used_by_infer(before: Option<&ModelVersion>, after: Option<&ModelVersion>) -> Value {
    match (before, after) {
        (Some(b), Some(a)) if a.sha256 == b.sha256 => {
            json!({"model_version": b.version, "model_sha256": b.sha256})
        }
        (None, None) => json!({"model_version": null}),
        (b, a) => json!({
            "model_version": null,
            "model_version_candidates": [b.map(|v| v.version), a.map(|v| v.version)],
        }),
    }
}

/// The active version of `res`, for an inference's record: failures are logged, not raised
/// (an inference never fails because the version table cannot be read).
pub async fn active_for_infer(
    app: &WholeBodyApp,
    ds: &Datastore,
    res: Resolution,
) -> Option<ModelVersion> {
    match active(app, ds, res).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("cannot tell the active model version: {e}");
            None
        }
    }
}

/// `/info/`'s `models.<model>.model_version`: the active version of each resolution
/// (`{"highres": {"version", "sha256", "source", "created_at"} | null, "lowres": ...}`).
pub async fn info_json(app: &WholeBodyApp, ds: &Datastore) -> Value {
    let mut out = serde_json::Map::new();
    for res in [Resolution::High, Resolution::Low] {
        let v = active_for_infer(app, ds, res).await;
        out.insert(
            resolution_name(res).into(),
            v.map(|v| {
                json!({"version": v.version, "sha256": v.sha256, "source": v.source,
                       "created_at": v.created_at})
            })
            .unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
}
