//! S3-compatible object storage for a team's files (`--storage-url s3://bucket/prefix`).
//!
//! With a storage URL, the content of every image, label and label revision saved through the
//! store is a **blob** in the bucket, named by its content: `<prefix>/sha256/<hex>`. A blob is
//! written once and never overwritten in place (a put only if absent: a `HEAD` first, then a
//! conditional `PUT` with `If-None-Match: *`); two saves of the same bytes share one blob. The
//! database names the hash of every image (`images.sha256`), label (`labels.sha256`) and
//! revision (`label_revisions.sha256`), so any process on the same database and bucket serves
//! any other's files.
//!
//! Each process keeps a local **cache** folder (`<studies>/.cache/objects` unless
//! [`StorageOptions::cache_dir`] says otherwise) of blobs as `<hex><ext>` files, filled on
//! demand: code that needs a file path (inference reads an image path, training reads the
//! datalist) gets the cached copy, fetched and checked against its hash on first use. A save
//! stages its bytes in the cache folder, uploads the blob, then renames the staged file into
//! the cache; only then is the row committed (blob first, row last: a crash in between leaves
//! an unreferenced blob, never a row without content).
//!
//! The connection settings come from the standard `AWS_*` environment variables
//! (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ALLOW_HTTP`...), which [`StorageOptions::settings`] can override (the tests do).
//!
//! The sync/async split is the crate's: object requests are async, file work (hashing, the
//! cache's temp file + rename) runs on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};

#[path = "objects_gc.rs"]
mod gc;
#[path = "objects_refs.rs"]
mod refs;

pub use gc::{BlobClaim, BlobGc};
pub use refs::BlobRef;

use crate::blocking::blocking;
use crate::error::{DatastoreError, IoContext, Result};
use crate::files;
use crate::store::Datastore;

/// The folder of the bucket (under the URL's prefix) that holds the blobs.
pub const BLOB_DIR: &str = "sha256";

/// The default cache folder, relative to the studies folder.
pub const DEFAULT_CACHE_DIR: &str = ".cache/objects";

/// How a datastore reaches its object storage.
#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// The local cache of blobs; `None` → `<studies>/.cache/objects`.
    pub cache_dir: Option<PathBuf>,
    /// Settings on top of the `AWS_*` environment, as `(name, value)` with names as the
    /// environment spells them (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...).
    pub settings: Vec<(String, String)>,
}

/// The bucket and the local cache of one datastore.
pub(crate) struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    cache: PathBuf,
    url: String,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("url", &self.url)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// `(bucket, prefix)` of `s3://bucket[/prefix]`.
pub fn parse_storage_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| {
        DatastoreError::Invalid(format!(
            "storage URL {url:?} must be s3://BUCKET or s3://BUCKET/PREFIX"
        ))
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(DatastoreError::Invalid(format!(
            "storage URL {url:?} names no bucket"
        )));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// An object storage failure as the crate's error.
fn storage_err(url: &str, e: object_store::Error) -> DatastoreError {
    DatastoreError::Storage(format!("{url}: {e}"))
}

impl Objects {
    /// Builds the S3 client (no request yet) and creates the cache folder.
    pub(crate) async fn open(opts: &StorageOptions, studies: &Path) -> Result<Objects> {
        let (bucket, prefix) = parse_storage_url(&opts.url)?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // a storage server that is down fails a request within seconds, not minutes
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            });
        for (name, value) in &opts.settings {
            let key: AmazonS3ConfigKey = name.to_ascii_lowercase().parse().map_err(|_| {
                DatastoreError::Invalid(format!("unknown object storage setting {name:?}"))
            })?;
            builder = builder.with_config(key, value);
        }
        let store = builder.build().map_err(|e| storage_err(&opts.url, e))?;
        let cache = opts
            .cache_dir
            .clone()
            .unwrap_or_else(|| studies.join(DEFAULT_CACHE_DIR));
        let dir = cache.clone();
        // the cache is this process's: leftovers of interrupted fetches and saves go
        blocking(move || {
            files::create_dir_durable(&dir)?;
            files::remove_temp_files(&dir)
        })
        .await?;
        let prefix = if prefix.is_empty() {
            Key::default()
        } else {
            Key::parse(&prefix).map_err(|e| {
                DatastoreError::Invalid(format!("storage URL prefix {prefix:?}: {e}"))
            })?
        };
        Ok(Objects {
            store: Arc::new(store),
            prefix,
            cache,
            url: opts.url.clone(),
        })
    }

    /// Fails unless the bucket answers (a listing of the prefix): a process refuses to start
    /// on a storage it cannot reach.
    pub(crate) async fn check(&self) -> Result<()> {
        self.store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map(|_| ())
            .map_err(|e| storage_err(&self.url, e))
    }

    /// The storage URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The local cache folder.
    pub(crate) fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// The key of the blob of `sha` (hex SHA-256): `<prefix>/sha256/<sha>`.
    pub(crate) fn key(&self, sha: &str) -> Key {
        self.prefix.child(BLOB_DIR).child(sha)
    }

    /// Where the blob `sha` is (or will be) cached locally, with `ext` (readers pick their
    /// format by extension).
    pub(crate) fn cache_path(&self, sha: &str, ext: &str) -> PathBuf {
        self.cache.join(format!("{sha}{ext}"))
    }

    /// Uploads the file at `path` (whose SHA-256 is `sha`) unless its blob exists; returns
    /// whether it uploaded. Never overwrites: an existing key is left as it is.
    pub(crate) async fn put_file(&self, path: &Path, sha: &str) -> Result<bool> {
        let key = self.key(sha);
        match self.store.head(&key).await {
            Ok(_) => return Ok(false),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage_err(&self.url, e)),
        }
        let p = path.to_path_buf();
        let bytes = blocking(move || std::fs::read(&p).at(&p)).await?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&key, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            // another process put the same content first
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(storage_err(&self.url, e)),
        }
    }

    /// Puts the file at `path` again if blob `sha` is gone (a collection deleted it while a
    /// save that found it was committing its row: SQLite's side of `objects_gc.rs`).
    pub(crate) async fn ensure(&self, path: &Path, sha: &str) -> Result<()> {
        if self.put_file(path, sha).await? {
            tracing::warn!(sha, "blob deleted by a collection during a save: put again");
        }
        Ok(())
    }

    /// Writes blob `sha` to `dest` (temp file + rename), checked against its hash first; a
    /// blob missing from the bucket is `NotFound`, one holding other content is `Storage`.
    pub(crate) async fn fetch_to(&self, sha: &str, dest: &Path) -> Result<()> {
        let key = self.key(sha);
        let got = match self.store.get(&key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(DatastoreError::NotFound(format!(
                    "blob {key} in {}",
                    self.url
                )))
            }
            Err(e) => return Err(storage_err(&self.url, e)),
        };
        let bytes = got.bytes().await.map_err(|e| storage_err(&self.url, e))?;
        let (want, url, dest) = (sha.to_string(), self.url.clone(), dest.to_path_buf());
        blocking(move || {
            let got = hex::encode(Sha256::digest(&bytes));
            if got != want {
                return Err(DatastoreError::Storage(format!(
                    "{url}: blob {want} holds content with SHA-256 {got}"
                )));
            }
            if let Some(dir) = dest.parent() {
                files::create_dir_durable(dir)?;
            }
            files::write_atomic(&dest, &bytes)
        })
        .await
    }

    /// The local path of blob `sha` as a `<sha><ext>` file, fetched into the cache (and
    /// checked against its hash) unless already there. A blob missing from the bucket is
    /// `NotFound`, unless `fallback` names an existing local file (content saved before the
    /// storage URL was set), which is returned instead.
    pub(crate) async fn local(
        &self,
        sha: &str,
        ext: &str,
        fallback: Option<PathBuf>,
    ) -> Result<PathBuf> {
        let dest = self.cache_path(sha, ext);
        if files::is_file(&dest) {
            return Ok(dest);
        }
        match self.fetch_to(sha, &dest).await {
            Err(DatastoreError::NotFound(what)) => match fallback.filter(|f| files::is_file(f)) {
                Some(f) => Ok(f),
                None => Err(DatastoreError::NotFound(what)),
            },
            done => done.map(|()| dest),
        }
    }

    /// `(sha, last modified in epoch seconds, size)` of every blob (names that are not a
    /// SHA-256 are left out: they are not ours).
    pub(crate) async fn list_meta(&self) -> Result<Vec<(String, i64, u64)>> {
        // the blobs are flat under `sha256/`: one level lists them all
        let prefix = self.prefix.child(BLOB_DIR);
        let metas = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| storage_err(&self.url, e))?
            .objects;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let sha = m.location.filename()?.to_string();
                check_sha(&sha).ok()?;
                Some((sha, m.last_modified.timestamp(), m.size))
            })
            .collect())
    }

    /// Deletes blob `sha` (garbage collection only: no other code deletes).
    pub(crate) async fn delete(&self, sha: &str) -> Result<()> {
        match self.store.delete(&self.key(sha)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_err(&self.url, e)),
        }
    }

    /// The keys of every blob, sorted (tests and tools).
    pub(crate) async fn list(&self) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .list_meta()
            .await?
            .into_iter()
            .map(|(sha, _, _)| self.key(&sha).to_string())
            .collect();
        keys.sort();
        Ok(keys)
    }
}

/// Stages `source` in the cache folder, hashes it, uploads its blob and renames it into the
/// cache as `<sha><ext>`; returns `(sha, cached path)`. What every object-mode write does
/// before its row is committed.
pub(crate) async fn store_source(
    objects: &Objects,
    source: files::Source,
    ext: &str,
) -> Result<(String, PathBuf)> {
    let dir = objects.cache_dir().to_path_buf();
    let (tmp, sha) = blocking(move || {
        let tmp = files::stage(source, &dir, "upload")?;
        match files::sha256_file(&tmp) {
            Ok(sha) => Ok((tmp, sha)),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    })
    .await?;
    if let Err(e) = objects.put_file(&tmp, &sha).await {
        let t = tmp.clone();
        let _ = blocking(move || std::fs::remove_file(&t).at(&t)).await;
        return Err(e);
    }
    let dest = objects.cache_path(&sha, ext);
    let d = dest.clone();
    blocking(move || files::publish(&tmp, &d)).await?;
    Ok((sha, dest))
}

/// Fails unless `sha` is a lowercase hex SHA-256 (64 characters): it becomes part of a key.
pub(crate) fn check_sha(sha: &str) -> Result<()> {
    if sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(DatastoreError::Invalid(format!(
            "{sha:?} is not a hex SHA-256"
        )))
    }
}

impl Datastore {
    /// With object storage: uploads the file at `path`, whose SHA-256 is `sha`, as the blob
    /// `<prefix>/sha256/<sha>` unless the bucket holds it already (a blob is never
    /// overwritten); answers whether it uploaded. Without object storage: nothing, `false`.
    /// Content a row will name takes a [`BlobClaim`] instead ([`Datastore::claim_blob`]): a
    /// put alone does not keep a concurrent garbage collection off an existing blob.
    pub async fn put_blob(&self, path: &Path, sha: &str) -> Result<bool> {
        check_sha(sha)?;
        match self.objects() {
            Some(objects) => objects.put_file(path, sha).await,
            None => Ok(false),
        }
    }

    /// With object storage: writes blob `sha` to `dest` (temp file + rename in its folder),
    /// checked against its hash. Without object storage, or a blob the bucket lacks:
    /// [`DatastoreError::NotFound`]; a blob holding other content: [`DatastoreError::Storage`].
    pub async fn fetch_blob(&self, sha: &str, dest: &Path) -> Result<()> {
        check_sha(sha)?;
        match self.objects() {
            Some(objects) => objects.fetch_to(sha, dest).await,
            None => Err(DatastoreError::NotFound(format!(
                "blob {sha}: no object storage"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls() {
        assert_eq!(
            parse_storage_url("s3://b").unwrap(),
            ("b".into(), String::new())
        );
        assert_eq!(
            parse_storage_url("s3://b/team/a/").unwrap(),
            ("b".into(), "team/a".into())
        );
        assert!(parse_storage_url("s3:///x").is_err());
        assert!(parse_storage_url("gs://b").is_err());
    }
}
