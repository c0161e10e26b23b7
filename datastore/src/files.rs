//! Durable, atomic file writes.
//!
//! Every file this crate publishes goes through the same steps: write (or move) the content into a
//! temp file named `.<stem>.<uuid>.tmp` **in the destination folder**, `fsync` it, `rename` it
//! over the destination, then `fsync` the folder so the rename itself survives a power cut. A
//! reader therefore sees either the old file or the new one, never a torn one. Leftover temp
//! files (a crash before the rename) are deleted when the datastore opens.
//!
//! All functions here block; async callers run them through [`crate::blocking()`].

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{DatastoreError, IoContext, Result};

/// The content of an upload: bytes in memory, or a file the caller already wrote.
///
/// A `File` source is **moved** (renamed) into place when it is on the same file system as the
/// studies folder, else copied; either way the caller must not rely on the path afterwards.
#[derive(Debug, Clone)]
pub enum Source {
    /// The content itself.
    Bytes(Vec<u8>),
    /// A path to a complete temp file holding the content.
    File(PathBuf),
}

impl From<Vec<u8>> for Source {
    fn from(v: Vec<u8>) -> Self {
        Source::Bytes(v)
    }
}

impl From<&[u8]> for Source {
    fn from(v: &[u8]) -> Self {
        Source::Bytes(v.to_vec())
    }
}

impl From<PathBuf> for Source {
    fn from(p: PathBuf) -> Self {
        Source::File(p)
    }
}

impl From<&Path> for Source {
    fn from(p: &Path) -> Self {
        Source::File(p.to_path_buf())
    }
}

/// A fresh temp-file path in `dir`: `.<stem>.<uuid>.tmp`.
pub(crate) fn temp_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!(".{stem}.{}.tmp", uuid::Uuid::new_v4()))
}

/// True for names produced by [`temp_path`] (any `.*.tmp`).
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.len() > 5 && name.starts_with('.') && name.ends_with(".tmp")
}

/// `fsync`s a folder so that renames and unlinks in it are durable (a no-op off Unix).
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir).and_then(|f| f.sync_all()).at(dir)?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Puts `source` into a new, fsynced temp file in `dir` and returns the temp path.
pub(crate) fn stage(source: Source, dir: &Path, stem: &str) -> Result<PathBuf> {
    let tmp = temp_path(dir, stem);
    let res = stage_into(source, &tmp);
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map(|()| tmp)
}

fn stage_into(source: Source, tmp: &Path) -> Result<()> {
    match source {
        Source::Bytes(bytes) => {
            let mut f = File::create_new(tmp).at(tmp)?;
            f.write_all(&bytes).at(tmp)?;
            f.sync_all().at(tmp)?;
        }
        Source::File(src) => {
            if !fs::metadata(&src).at(&src)?.is_file() {
                return Err(DatastoreError::Invalid(format!(
                    "{} is not a regular file",
                    src.display()
                )));
            }
            // Same file system: a rename moves the data without copying. Otherwise copy.
            if fs::rename(&src, tmp).is_err() {
                fs::copy(&src, tmp).at(&src)?;
            }
            File::options()
                .write(true)
                .open(tmp)
                .and_then(|f| f.sync_all())
                .at(tmp)?;
        }
    }
    Ok(())
}

/// Renames `tmp` over `dest` and fsyncs the destination folder.
pub(crate) fn publish(tmp: &Path, dest: &Path) -> Result<()> {
    if let Err(e) = fs::rename(tmp, dest) {
        let _ = fs::remove_file(tmp);
        return Err(e).at(dest);
    }
    fsync_dir(parent(dest))
}

/// Writes `bytes` to `dest` atomically and durably.
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let stem = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = stage(Source::Bytes(bytes.to_vec()), parent(dest), &stem)?;
    publish(&tmp, dest)
}

/// Creates `dir` and any missing parents, fsyncing the parent of each folder it creates so the
/// new entries survive a power cut.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).at(dir)?;
    for created in missing.iter().rev() {
        fsync_dir(parent(created))?;
    }
    Ok(())
}

/// Durably copies `src` to `dest` through a temp file in `dest`'s folder (created if missing).
pub(crate) fn copy_atomic(src: &Path, dest: &Path) -> Result<()> {
    let dir = parent(dest);
    create_dir_durable(dir)?;
    let stem = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = temp_path(dir, &stem);
    let res = fs::copy(src, &tmp).at(src).and_then(|_| {
        File::options()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.sync_all())
            .at(&tmp)
    });
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    publish(&tmp, dest)
}

/// Removes `path` if it exists; returns whether it did. Fsyncs the folder after a removal.
pub(crate) fn remove_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            fsync_dir(parent(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at(path),
    }
}

/// Hex SHA-256 of a file's content (lower case): the workspace's one file checksum (label
/// revisions, reconciliation, the server's `check_sum` and model checksums).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Deletes leftover temp files (see [`is_temp_name`]) directly inside `dir`; returns how many.
pub(crate) fn remove_temp_files(dir: &Path) -> Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).at(dir),
    };
    let mut n = 0;
    for entry in entries {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        if is_temp_name(&name.to_string_lossy()) && entry.file_type().at(dir)?.is_file() {
            let p = entry.path();
            tracing::warn!(path = %p.display(), "removing leftover temp file");
            fs::remove_file(&p).at(&p)?;
            n += 1;
        }
    }
    Ok(n)
}

/// True if `path` exists and is a regular file (following symlinks).
pub(crate) fn is_file(path: &Path) -> bool {
    fs::metadata(path).map(|m| m.is_file()).unwrap_or(false)
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_moves_or_writes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("upload.bin");
        fs::write(&src, b"abc").unwrap();
        let tmp = stage(Source::File(src.clone()), dir.path(), "x").unwrap();
        assert!(!src.exists(), "same-fs source is moved");
        assert!(is_temp_name(&tmp.file_name().unwrap().to_string_lossy()));
        let dest = dir.path().join("x.bin");
        publish(&tmp, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"abc");

        write_atomic(&dest, b"new").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        fs::write(dir.path().join(".junk.1234.tmp"), b"").unwrap();
        assert_eq!(remove_temp_files(dir.path()).unwrap(), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(
            sha256_file(&dest).unwrap(),
            hex::encode(Sha256::digest(b"new"))
        );
    }
}
