//! Sessions through object storage: with a storage URL ([`super::Sessions::shared_through`]),
//! a session's files are blobs and its metadata a `blob_refs` row set (kind `session`, owner:
//! the session id, one row per file, the [`SessionInfo`] as `info`), so any server on the same
//! database and bucket serves a session another one created. The database holds the truth
//! (expiry, last access, removal); each server's session folder is a cache, filled from the
//! bucket on first use, and marked with [`SHARED_MARK`] (a session folder without it was made
//! without object storage and stays local).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{remove_dir, SessionInfo, META_FILE, MULTI_FILE_DIR};
use crate::blocking::blocking;
use crate::error::{DatastoreError, IoContext, Result};
use crate::files;
use crate::store::{now_secs, Datastore};

/// The marker file of a session folder that caches a shared session.
pub const SHARED_MARK: &str = ".shared";

/// The `blob_refs` kind of session files.
const KIND: &str = "session";

/// The key of `info` telling a folder session (several files) from a one-file one.
const FOLDER: &str = "files_in_folder";

/// The files of session `info` as `(name, path)`: the image, or the files of the image folder
/// (blocking).
fn session_files(info: &SessionInfo) -> Result<Vec<(String, PathBuf)>> {
    if info.image.is_dir() {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&info.image).at(&info.image)? {
            let entry = entry.at(&info.image)?;
            out.push((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
        out.sort();
        Ok(out)
    } else {
        let name = info
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(vec![(name, info.image.clone())])
    }
}

/// Records the session `info` (its folder complete) in the database and its files in the
/// bucket.
pub(super) async fn record(ds: &Datastore, info: &SessionInfo) -> Result<()> {
    let i = info.clone();
    let parts = blocking(move || session_files(&i)).await?;
    let mut doc = serde_json::to_value(info)?;
    doc[FOLDER] = Value::Bool(info.image.is_dir());
    let refs: Vec<(String, &Path)> = parts
        .iter()
        .map(|(n, p)| (n.clone(), p.as_path()))
        .collect();
    ds.put_blob_refs(KIND, &info.name, &refs, &doc).await?;
    Ok(())
}

/// The session `id` as the database knows it, with this server's paths under `root`; `None`
/// when it has no rows.
pub(super) async fn load(ds: &Datastore, root: &Path, id: &str) -> Result<Option<SessionInfo>> {
    let refs = ds.blob_refs(KIND, id).await?;
    let Some(first) = refs.first() else {
        return Ok(None);
    };
    let folder = first.info[FOLDER].as_bool().unwrap_or(false);
    let mut info: SessionInfo =
        serde_json::from_value(first.info.clone()).map_err(|e| DatastoreError::MalformedJson {
            path: PathBuf::from(format!("blob_refs session {id}")),
            message: e.to_string(),
        })?;
    info.path = root.join(id);
    info.image = if folder {
        info.path.join(MULTI_FILE_DIR)
    } else {
        info.path.join(&first.name)
    };
    Ok(Some(info))
}

/// Fills this server's folder of session `info` from the bucket (built in a temp folder and
/// renamed into place, as a new session).
pub(super) async fn materialise(ds: &Datastore, root: &Path, info: &SessionInfo) -> Result<()> {
    let refs = ds.blob_refs(KIND, &info.name).await?;
    let build = files::temp_path(root, &info.name);
    let folder = info.image == info.path.join(MULTI_FILE_DIR);
    let dir = if folder {
        build.join(MULTI_FILE_DIR)
    } else {
        build.clone()
    };
    let fetched = async {
        for r in &refs {
            ds.fetch_blob(&r.sha256, &dir.join(&r.name)).await?;
        }
        let mut line = serde_json::to_vec(info)?;
        line.push(b'\n');
        let (b, p, root) = (build.clone(), info.path.clone(), root.to_path_buf());
        blocking(move || {
            files::write_atomic(&b.join(META_FILE), &line)?;
            files::write_atomic(&b.join(SHARED_MARK), b"")?;
            std::fs::rename(&b, &p).at(&p)?;
            files::fsync_dir(&root)
        })
        .await
    };
    if let Err(e) = fetched.await {
        let _ = remove_dir(&build).await;
        return Err(e);
    }
    tracing::info!(session = %info.name, "session fetched from object storage");
    Ok(())
}

/// Records a new last access of session `info` for every server.
pub(super) async fn touch(ds: &Datastore, info: &SessionInfo) -> Result<()> {
    let mut doc = serde_json::to_value(info)?;
    doc[FOLDER] = Value::Bool(info.image == info.path.join(MULTI_FILE_DIR));
    ds.set_blob_ref_info(KIND, &info.name, &doc).await?;
    Ok(())
}

/// Forgets session `id` (its blobs go at the next collection).
pub(super) async fn forget(ds: &Datastore, id: &str) -> Result<bool> {
    ds.remove_blob_refs(KIND, id).await
}

/// Forgets every expired shared session; answers how many.
pub(super) async fn sweep(ds: &Datastore) -> Result<usize> {
    let now = now_secs();
    let mut n = 0;
    for (id, info, _) in ds.blob_ref_owners(KIND).await? {
        let last = info["last_access_ts"].as_i64().unwrap_or(0);
        let expiry = info["expiry"].as_i64().unwrap_or(0);
        if last.saturating_add(expiry) < now && forget(ds, &id).await? {
            tracing::info!(session = %id, "shared session expired");
            n += 1;
        }
    }
    Ok(n)
}
