//! Model versions shared through object storage (`--storage-url`, docs/team.md): every kept
//! version file is also the blob `<prefix>/sha256/<hex>` (put before its row is committed), and
//! the database's active version is the deployment's. A server that lacks a version's file
//! fetches it from the bucket when it activates the version ([`fetch_missing`]) or when another
//! server made it active ([`follow`], run by [`super::active`], so by every inference, the
//! version listing, the pickup poll and the start: [`share`]).

use std::path::Path;

use ferrolabel_datastore::{blocking, Datastore, DatastoreError, ModelVersion};
use ferrolabel_models::Resolution;

use super::files::{hash_file, install_checked};
use super::{
    active, changes, resolution_name, version_file, AppError, Result, WholeBodyApp, MODEL_NAME,
};

/// With object storage, fetches the file of version `v` from the bucket into `kept` (its
/// place in the versions folder) when this server does not have it (another server recorded
/// the version). Nothing to do without object storage or when the file is here; a blob the
/// bucket lacks is [`DatastoreError::Conflict`] (409, as a pruned file).
pub(super) async fn fetch_missing(ds: &Datastore, v: &ModelVersion, kept: &Path) -> Result<()> {
    if ds.storage_url().is_none() || kept.is_file() {
        return Ok(());
    }
    match ds.fetch_blob(&v.sha256, kept).await {
        Ok(()) => {
            tracing::info!(
                version = v.version,
                resolution = %v.resolution,
                "model version fetched from object storage"
            );
            Ok(())
        }
        Err(DatastoreError::NotFound(what)) => Err(DatastoreError::Conflict(format!(
            "the file of version {} is neither here nor in object storage ({what})",
            v.version
        ))
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// With object storage, the database's active version is the whole deployment's, and every
/// server's weights file follows it: when this server's file is missing, or holds another
/// version the table knows (another server activated a newer one, or rolled back), the active
/// version's file (kept here, else fetched from the bucket) is installed in its place.
/// `local` is the SHA-256 of the file in place. A file the table does not know is left alone
/// (the Rust trainer writes its checkpoints in place; a file put there by hand): answers
/// `None`, and [`active`] records it. Also `None` when no version is active.
pub(super) async fn follow(
    app: &WholeBodyApp,
    ds: &Datastore,
    res: Resolution,
    local: Option<&str>,
) -> Result<Option<ModelVersion>> {
    let rname = resolution_name(res);
    let in_line = |a: &ModelVersion, local: Option<&str>| local == Some(a.sha256.as_str());
    let Some(a) = ds.active_model_version(MODEL_NAME, rname).await? else {
        return Ok(None);
    };
    if in_line(&a, local) {
        return Ok(Some(a));
    }
    let unknown = |sha: Option<String>| async move {
        match sha {
            Some(sha) => Ok::<_, AppError>(
                ds.model_version_by_sha256(MODEL_NAME, rname, &sha)
                    .await?
                    .is_none(),
            ),
            None => Ok(false),
        }
    };
    if unknown(local.map(String::from)).await? {
        return Ok(None);
    }
    // again under this process's lock: an activation here may have changed both meanwhile
    let _one = changes().lock().await;
    let Some(a) = ds.active_model_version(MODEL_NAME, rname).await? else {
        return Ok(None);
    };
    let path = app.weights_path(MODEL_NAME, res)?;
    let now = blocking(move || hash_file(&path))
        .await?
        .map(|(sha, _)| sha);
    if in_line(&a, now.as_deref()) {
        return Ok(Some(a));
    }
    if unknown(now).await? {
        return Ok(None);
    }
    let kept = version_file(app, &a);
    fetch_missing(ds, &a, &kept).await?;
    let (bundle_dir, sha, ext) = (
        app.bundle_dir().to_path_buf(),
        a.sha256.clone(),
        a.ext.clone(),
    );
    blocking(move || install_checked(&bundle_dir, res, &kept, &ext, &sha)).await?;
    tracing::info!(
        version = a.version,
        resolution = rname,
        "weights now follow the deployment's active model version"
    );
    Ok(Some(a))
}

/// With object storage, at start: puts the kept file of every version that is not pruned as a
/// blob (versions recorded before the storage was configured; a blob that exists is left
/// alone), then brings this server's weights in line with the active versions ([`active`],
/// fetching from the bucket what is missing here). Failures are logged, not raised: a server
/// starts with the weights it has.
pub async fn share(app: &WholeBodyApp, ds: &Datastore) {
    if ds.storage_url().is_none() {
        return;
    }
    for res in [Resolution::High, Resolution::Low] {
        let shared = async {
            for v in ds.model_versions(MODEL_NAME, resolution_name(res)).await? {
                let kept = version_file(app, &v);
                if v.pruned_at.is_none() && kept.is_file() {
                    ds.put_blob(&kept, &v.sha256).await?;
                }
            }
            active(app, ds, res).await
        };
        match shared.await {
            Ok(v) => tracing::info!(
                resolution = resolution_name(res),
                version = v.map(|v| v.version),
                "model versions shared through object storage"
            ),
            Err(e) => tracing::warn!(
                resolution = resolution_name(res),
                "model versions not shared through object storage: {e}"
            ),
        }
    }
}
