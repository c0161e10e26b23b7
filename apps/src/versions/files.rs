//! The version files on disk: hashing a weights file (once per new file identity), keeping a
//! version's file content-addressed in `models/versions/`, and installing one as the weights
//! the engine loads (all blocking).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use ferrolabel_datastore::DatastoreError;
use ferrolabel_models::Resolution;

use super::now_ms;
use crate::error::{AppError, Result};

/// Size and modification time: what tells a new file at the same path.
type FileId = (u64, Option<SystemTime>);

pub(super) fn file_id(path: &Path) -> std::io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    Ok((m.len(), m.modified().ok()))
}

/// SHA-256 of the files last hashed, by path and identity (hashing a 18 MB checkpoint takes a
/// few tens of ms: done once per new file, not per request).
fn hash_cache() -> &'static Mutex<HashMap<PathBuf, (FileId, String)>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, (FileId, String)>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// `(sha256, size)` of the file at `path`, `None` when it is missing or not a regular file
/// (blocking). A FIFO or a device in place of the weights is never opened here: reading it
/// would block a request and take the bytes meant for the engine's loader.
pub(super) fn hash_file(path: &Path) -> Result<Option<(String, u64)>> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => return Ok(None),
        _ => {}
    }
    for _ in 0..3 {
        let before = match file_id(path) {
            Ok(id) => id,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let cached = hash_cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .filter(|(id, _)| *id == before)
            .map(|(_, h)| h.clone());
        if let Some(h) = cached {
            return Ok(Some((h, before.0)));
        }
        let sum = match ferrolabel_datastore::files::sha256_file(path) {
            Ok(s) => s,
            Err(_) if !path.exists() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // replaced while it was read: hash the new one
        if file_id(path).ok() == Some(before) {
            hash_cache()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(path.to_path_buf(), (before, sum.clone()));
            return Ok(Some((sum, before.0)));
        }
    }
    Err(AppError::Task(format!(
        "{} keeps changing while it is read",
        path.display()
    )))
}

/// Copies `src` to `dest` by temp file + fsync + rename (+ fsync of the folder).
fn copy_atomic(src: &Path, dest: &Path) -> std::io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".version.{}.{}.tmp", std::process::id(), now_ms()));
    let copied = std::fs::copy(src, &tmp)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, dest));
    if copied.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    copied?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Keeps `file` as the version file of `sha256` (blocking; nothing to do when it is there).
pub(super) fn keep_file(dir: &Path, file: &Path, sha256: &str, ext: &str) -> Result<PathBuf> {
    let dest = dir.join(format!("{sha256}.{ext}"));
    if !dest.exists() {
        copy_atomic(file, &dest)?;
    }
    Ok(dest)
}

/// Makes the version file `kept` the weights the engine loads (blocking): replaces
/// `model.<ext>` atomically, then removes the other format's file of that resolution so the
/// bundle never prefers a stale one.
pub(super) fn install_in(
    bundle_dir: &Path,
    res: Resolution,
    kept: &Path,
    ext: &str,
    sha256: &str,
) -> Result<()> {
    let pt = bundle_dir.join("models").join(res.model_file());
    let dest = pt.with_extension(ext);
    copy_atomic(kept, &dest)?;
    if let Ok(id) = file_id(&dest) {
        hash_cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dest.clone(), (id, sha256.to_string()));
    }
    let other = pt.with_extension(if ext == "pt" { "safetensors" } else { "pt" });
    match std::fs::remove_file(&other) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Checks that `kept` holds the version's content (`sha256`), then [`install_in`]s it. A file
/// that cannot be read (gone) or holds other content is [`DatastoreError::Conflict`] (409).
pub(super) fn install_checked(
    bundle_dir: &Path,
    res: Resolution,
    kept: &Path,
    ext: &str,
    sha256: &str,
) -> Result<()> {
    let sum = ferrolabel_datastore::files::sha256_file(kept).map_err(|e| {
        DatastoreError::Conflict(format!("the file of this version is missing: {e}"))
    })?;
    if sum != sha256 {
        return Err(DatastoreError::Conflict(format!(
            "{} does not hold the version's content (sha256 {sum})",
            kept.display()
        ))
        .into());
    }
    install_in(bundle_dir, res, kept, ext, sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(r: Result<()>) -> String {
        match r {
            Err(AppError::Datastore(DatastoreError::Conflict(m))) => m,
            other => panic!("want a conflict (409), got {other:?}"),
        }
    }

    /// The check every install of a kept version goes through (activate, and following the
    /// deployment's active version): a missing or wrong file is a 409 and leaves the weights
    /// alone; the right one is installed (and the other format's file removed).
    #[test]
    fn install_checked_refuses_a_missing_or_wrong_file() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path();
        let models = bundle.join("models");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::write(models.join("model.pt"), b"old").unwrap();
        std::fs::write(models.join("model.safetensors"), b"stale").unwrap();
        let kept = tmp.path().join("kept.pt");
        let new = tmp.path().join("new.pt");
        std::fs::write(&new, b"new").unwrap();
        let sha = ferrolabel_datastore::files::sha256_file(&new).unwrap();
        let m = conflict(install_checked(bundle, Resolution::High, &kept, "pt", &sha));
        assert!(m.contains("missing"), "{m}");
        std::fs::write(&kept, b"other").unwrap();
        let m = conflict(install_checked(bundle, Resolution::High, &kept, "pt", &sha));
        assert!(m.contains("does not hold"), "{m}");
        assert_eq!(std::fs::read(models.join("model.pt")).unwrap(), b"old");
        std::fs::write(&kept, b"new").unwrap();
        install_checked(bundle, Resolution::High, &kept, "pt", &sha).unwrap();
        assert_eq!(std::fs::read(models.join("model.pt")).unwrap(), b"new");
        assert!(!models.join("model.safetensors").exists());
    }
}
