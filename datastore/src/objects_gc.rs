//! Blob garbage collection, and the claim that keeps it from deleting a blob a save is about to
//! name.
//!
//! A save of bytes whose blob exists already reuses it (no put): between its `HEAD` and the
//! commit of its row, the blob is named by no row. A collection in that window would delete it
//! and the row would name a missing blob. So:
//!
//! * **PostgreSQL**: every save that may name a blob holds the advisory lock `ferrolabel:blob-gc`
//!   *shared* from before its `HEAD` until its row is committed (a label or image save: in its
//!   write transaction, `locks.rs`; any other caller: a [`BlobClaim`]); the collection takes it
//!   *exclusively* around each batch's "read the references, delete the unnamed" step. A save
//!   either committed before the batch (its row is read) or waits until the batch is done (its
//!   `HEAD` sees the deletion and puts the blob again).
//! * **SQLite**: the batch runs in a write transaction (`BEGIN IMMEDIATE`), so no row commits
//!   during it; a save checks its blob again after its commit and puts it back if a batch
//!   deleted it meanwhile ([`BlobClaim::release`]; label and image saves likewise).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::{Any, Transaction};

use super::check_sha;
use crate::error::{DatastoreError, Result};
use crate::locks::PgLock;
use crate::store::{now_secs, Backend, Datastore};

/// Unreferenced blobs deleted per locked batch.
const BATCH: usize = 100;

/// What a blob garbage collection found and did ([`Datastore::collect_blob_garbage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BlobGc {
    /// Blobs in the bucket.
    pub blobs: usize,
    /// Blobs a row names (an image, a label, a label revision, a model version whose file is
    /// kept or that is active, a session file, a DICOM source, a resume state).
    pub referenced: usize,
    /// Unreferenced blobs younger than the grace period: left for a later run.
    pub young: usize,
    /// Keys of the unreferenced blobs older than the grace period: deleted (or, in a dry run,
    /// that would be).
    pub deleted: Vec<String>,
    /// Bytes of the deleted blobs.
    pub deleted_bytes: u64,
}

/// Every SHA-256 a row names: the content that must stay in the bucket.
const REFERENCED: &str = "SELECT sha256 FROM images WHERE sha256 IS NOT NULL \
     UNION SELECT sha256 FROM labels WHERE sha256 IS NOT NULL \
     UNION SELECT sha256 FROM label_revisions WHERE sha256 IS NOT NULL \
     UNION SELECT sha256 FROM model_versions WHERE pruned_at IS NULL OR active = 1 \
     UNION SELECT sha256 FROM blob_refs";

/// A blob put (or found) for a row not yet committed: until [`BlobClaim::release`], no
/// collection deletes it (see the module docs). Release it after the row naming it is
/// committed; dropping it without releasing (the save failed) only lets the collections go on.
#[must_use = "release the claim after the row naming the blob is committed"]
pub struct BlobClaim {
    /// PostgreSQL: the transaction holding the collection lock shared.
    pin: Option<Transaction<'static, Any>>,
    /// SQLite: the files and hashes to put again if a collection deleted a blob meanwhile.
    recheck: Vec<(PathBuf, String)>,
    ds: Option<Datastore>,
}

impl std::fmt::Debug for BlobClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobClaim")
            .field("pinned", &self.pin.is_some())
            .field("recheck", &self.recheck)
            .finish()
    }
}

impl BlobClaim {
    /// Ends the claim once the row naming the blob is committed: PostgreSQL releases the
    /// lock; SQLite puts the blob again if a collection deleted it before the commit.
    pub async fn release(self) -> Result<()> {
        if let Some(tx) = self.pin {
            tx.commit().await?;
        }
        if let Some(ds) = self.ds {
            for (path, sha) in &self.recheck {
                ds.recheck_blob(path, sha).await?;
            }
        }
        Ok(())
    }
}

impl Datastore {
    /// With object storage: uploads the file at `path` (SHA-256 `sha`) unless its blob exists,
    /// like [`Datastore::put_blob`], and keeps collections from deleting it until the returned
    /// claim is released; release it after committing the row that names the blob. Without
    /// object storage: a claim that does nothing.
    pub async fn claim_blob(&self, path: &Path, sha: &str) -> Result<BlobClaim> {
        self.claim_blobs(&[(path, sha)]).await
    }

    /// [`Datastore::claim_blob`] of several files `(path, sha)`, under one claim.
    pub async fn claim_blobs(&self, blobs: &[(&Path, &str)]) -> Result<BlobClaim> {
        for (_, sha) in blobs {
            check_sha(sha)?;
        }
        let Some(objects) = self.objects() else {
            return Ok(BlobClaim {
                pin: None,
                recheck: Vec::new(),
                ds: None,
            });
        };
        let pin = self.pg_locks(&[PgLock::Gc { exclusive: false }]).await?;
        for (path, sha) in blobs {
            objects.put_file(path, sha).await?;
        }
        let recheck = if self.backend() == Backend::Sqlite {
            blobs
                .iter()
                .map(|(p, s)| (p.to_path_buf(), s.to_string()))
                .collect()
        } else {
            Vec::new()
        };
        Ok(BlobClaim {
            pin,
            recheck,
            ds: Some(self.clone()),
        })
    }

    /// After a save's row naming blob `sha` is committed, on SQLite: puts the blob again from
    /// `path` if a collection deleted it meanwhile (PostgreSQL saves hold the lock instead).
    pub(crate) async fn recheck_blob(&self, path: &Path, sha: &str) -> Result<()> {
        match self.objects() {
            Some(objects) if self.backend() == Backend::Sqlite => objects.ensure(path, sha).await,
            _ => Ok(()),
        }
    }

    /// The hashes every row names, read on `conn`.
    async fn referenced(conn: &mut sqlx::AnyConnection) -> Result<HashSet<String>> {
        Ok(sqlx::query_scalar::<_, String>(REFERENCED)
            .fetch_all(conn)
            .await?
            .into_iter()
            .collect())
    }

    /// Deletes the blobs no row names that are older than `grace` (by their last
    /// modification in the bucket); `dry_run` only counts them. The grace period covers
    /// saves of new content in flight (a save puts its blob before it commits its row); a save
    /// reusing an existing blob is covered by the lock (see the module docs). Without object
    /// storage: `Invalid`.
    pub async fn collect_blob_garbage(&self, grace: Duration, dry_run: bool) -> Result<BlobGc> {
        let Some(objects) = self.objects() else {
            return Err(DatastoreError::Invalid(
                "blob garbage collection needs object storage (--storage-url)".into(),
            ));
        };
        // the listing first, the references after: a blob put and named in between is
        // referenced; one put after the listing is not looked at
        let listed = objects.list_meta().await?;
        let referenced = Self::referenced(&mut *self.pool().acquire().await?).await?;
        let cutoff = now_secs().saturating_sub(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX));
        let mut gc = BlobGc {
            blobs: listed.len(),
            ..BlobGc::default()
        };
        let mut old = Vec::new();
        for (sha, modified, size) in listed {
            if referenced.contains(&sha) {
                gc.referenced += 1;
            } else if modified > cutoff {
                gc.young += 1;
            } else {
                old.push((sha, size));
            }
        }
        for batch in old.chunks(BATCH) {
            // the lock (PostgreSQL) or the write transaction (SQLite) keeps every save that
            // may name one of these blobs out until the batch is done
            let mut tx = self.begin_write().await?;
            if !dry_run {
                self.lock_in(&mut tx, PgLock::Gc { exclusive: true })
                    .await?;
            }
            let named = Self::referenced(&mut tx).await?;
            for (sha, size) in batch {
                if named.contains(sha) {
                    // named meanwhile by a save
                    gc.referenced += 1;
                    continue;
                }
                if !dry_run {
                    objects.delete(sha).await?;
                }
                gc.deleted.push(objects.key(sha).to_string());
                gc.deleted_bytes += size;
            }
            tx.commit().await?;
        }
        if !dry_run && !gc.deleted.is_empty() {
            tracing::info!(
                deleted = gc.deleted.len(),
                bytes = gc.deleted_bytes,
                "unreferenced blobs deleted"
            );
        }
        Ok(gc)
    }
}
