//! Images that live in a remote source (a DICOMweb PACS) and the outbox of work that must
//! reach it.
//!
//! A remote image is an `images` row whose `remote` column names it in the source (a JSON
//! object: StudyInstanceUID, SeriesInstanceUID, ...). It has no file in the studies folder; its
//! labels, their revisions and its info are stored like those of any image. The folder scan
//! leaves remote rows alone. [`Datastore::image_path`] makes a remote image local through the
//! [`RemoteSource`] the server installs ([`Datastore::set_remote_source`]): every caller that
//! needs voxels (inference, training, scoring, batch, reports, downloads) goes through it.
//!
//! The outbox is a table of tasks (for instance "store the SEG of label revision 3 of image X
//! in the PACS") kept until done, so a task survives the source being down and a restart.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};
use sqlx::Row;

use crate::error::{DatastoreError, Result};
use crate::ids::{validate_id, FINAL_TAG};
use crate::locks::PgLock;
use crate::store::{now_secs, parse_info, Datastore};

/// A boxed future, as [`RemoteSource::fetch`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where remote images come from; installed once by the server.
pub trait RemoteSource: Send + Sync + 'static {
    /// The path the image's local copy has (or will have once fetched); no I/O.
    fn local_path(&self, id: &str, remote: &Map<String, Value>) -> PathBuf;
    /// Makes the local copy exist (fetching and converting it if needed) and returns its path.
    /// A source that is down answers [`DatastoreError::Remote`].
    fn fetch<'a>(
        &'a self,
        id: &'a str,
        remote: &'a Map<String, Value>,
    ) -> BoxFuture<'a, Result<PathBuf>>;
}

/// One image as the remote source lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteImage {
    /// The image id (a SeriesInstanceUID).
    pub id: String,
    /// How the source names it (stored in `images.remote`).
    pub remote: Map<String, Value>,
    /// Info keys to set on the image (description, patient id, ...); merged into the info.
    pub info: Map<String, Value>,
}

/// What [`Datastore::sync_remote_images`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Images registered.
    pub added: usize,
    /// Images whose remote name or info changed.
    pub updated: usize,
    /// Remote images no longer listed (and without labels) dropped.
    pub removed: usize,
}

/// A pending outbox task.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    /// Row id.
    pub id: i64,
    /// Task kind (e.g. `stow_seg`).
    pub kind: String,
    /// The image.
    pub image_id: String,
    /// The label tag.
    pub tag: String,
    /// The label revision.
    pub rev: Option<i64>,
    /// Attempts so far.
    pub attempts: i64,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

impl Datastore {
    /// Installs the remote source (once; a second call is ignored and answers `false`).
    pub fn set_remote_source(&self, source: Arc<dyn RemoteSource>) -> bool {
        self.inner.remote.set(source).is_ok()
    }

    pub(crate) fn remote_source(&self) -> Option<&Arc<dyn RemoteSource>> {
        self.inner.remote.get()
    }

    /// The remote name of an image (`None`: unknown image or a local file).
    pub async fn remote_of(&self, id: &str) -> Result<Option<Map<String, Value>>> {
        validate_id(id)?;
        let s: Option<Option<String>> =
            sqlx::query_scalar("SELECT remote FROM images WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        s.flatten().map(|s| parse_info(&s)).transpose()
    }

    /// The local path of a remote image's copy (fetched if needed).
    pub(crate) async fn fetch_remote(
        &self,
        id: &str,
        remote: &Map<String, Value>,
    ) -> Result<PathBuf> {
        let source = self.remote_source().ok_or_else(|| DatastoreError::Remote {
            status: 502,
            detail: format!("image {id} lives in a remote source that is not configured"),
        })?;
        source.fetch(id, remote).await
    }

    /// Where a remote image's copy is or will be (no fetch); `<studies>/<id>` without a source.
    pub(crate) fn remote_hint(&self, id: &str, remote: &Map<String, Value>) -> PathBuf {
        match self.remote_source() {
            Some(s) => s.local_path(id, remote),
            None => self.studies().join(id),
        }
    }

    /// Makes the remote images match a listing of the source: new ones are registered (ext
    /// `.nii`, info `{ts, name}` plus the listed keys), changed ones updated, and, when
    /// `complete` (the listing was not cut short), remote images no longer listed are dropped
    /// unless they have labels (a label is never lost because the PACS forgot a series).
    /// One transaction; no file is touched.
    pub async fn sync_remote_images(
        &self,
        listed: &[RemoteImage],
        complete: bool,
    ) -> Result<SyncStats> {
        for img in listed {
            validate_id(&img.id)?;
        }
        let _scan = self.lock_scan_shared().await;
        let mut stats = SyncStats::default();
        let now = now_secs();
        let mut tx = self.begin_write().await?;
        // Several servers: one sync at a time, none during a folder scan.
        self.lock_in(&mut tx, PgLock::Scan { exclusive: false })
            .await?;
        self.lock_in(&mut tx, PgLock::Named("remote_sync")).await?;
        let known: std::collections::HashMap<String, (Option<String>, String)> =
            sqlx::query("SELECT id, remote, info FROM images")
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|r| Ok((r.try_get("id")?, (r.try_get("remote")?, r.try_get("info")?))))
                .collect::<Result<_>>()?;
        let mut seen = std::collections::HashSet::with_capacity(listed.len());
        for img in listed {
            if !seen.insert(img.id.as_str()) {
                continue;
            }
            let remote = serde_json::to_string(&img.remote)?;
            match known.get(&img.id) {
                None => {
                    let mut info = img.info.clone();
                    info.insert("ts".into(), now.into());
                    info.insert("name".into(), format!("{}.nii", img.id).into());
                    sqlx::query(
                        "INSERT INTO images (id, ext, info, created_at, updated_at, remote) \
                         VALUES ($1, '.nii', $2, $3, $4, $5)",
                    )
                    .bind(&img.id)
                    .bind(serde_json::to_string(&info)?)
                    .bind(now)
                    .bind(now)
                    .bind(&remote)
                    .execute(&mut *tx)
                    .await?;
                    stats.added += 1;
                }
                Some((None, _)) => {
                    tracing::warn!(id = %img.id, "a local image has the id of a PACS series; kept local");
                }
                Some((Some(old_remote), old_info)) => {
                    let mut info = parse_info(old_info)?;
                    let before = info.clone();
                    info.extend(img.info.clone());
                    if *old_remote != remote || info != before {
                        sqlx::query(
                            "UPDATE images SET remote = $1, info = $2, updated_at = $3 WHERE id = $4",
                        )
                        .bind(&remote)
                        .bind(serde_json::to_string(&info)?)
                        .bind(now)
                        .bind(&img.id)
                        .execute(&mut *tx)
                        .await?;
                        stats.updated += 1;
                    }
                }
            }
        }
        if complete {
            for (id, (remote, _)) in &known {
                if remote.is_none() || seen.contains(id.as_str()) {
                    continue;
                }
                let labelled: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM labels WHERE image_id = $1 AND deleted = 0",
                )
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                if labelled > 0 {
                    continue;
                }
                sqlx::query("DELETE FROM images WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                stats.removed += 1;
            }
        }
        tx.commit().await?;
        if stats != SyncStats::default() {
            self.committed().await;
        }
        Ok(stats)
    }

    /// `(image, final label)` paths for every image with a `final` label, remote images and
    /// object-storage blobs made local first (fetched when not cached): what training and the dataset export read.
    pub async fn datalist_local(&self) -> Result<Vec<(PathBuf, PathBuf)>> {
        let rows = sqlx::query(
            "SELECT i.id, i.ext AS iext, i.remote, i.sha256 AS isha, l.ext AS lext, \
             l.sha256 AS lsha FROM images i JOIN labels l \
             ON l.image_id = i.id AND l.tag = $1 AND l.deleted = 0 ORDER BY i.seq",
        )
        .bind(FINAL_TAG)
        .fetch_all(self.pool())
        .await?;
        let mut pairs = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let lext: String = row.try_get("lext")?;
            let iext: String = row.try_get("iext")?;
            let isha: Option<String> = row.try_get("isha")?;
            let lsha: Option<String> = row.try_get("lsha")?;
            let image = match row.try_get::<Option<String>, _>("remote")? {
                Some(r) => self.fetch_remote(&id, &parse_info(&r)?).await?,
                None => {
                    let file = self.image_file(&id, &iext);
                    match (self.objects(), isha) {
                        (Some(o), Some(sha)) => o.local(&sha, &iext, Some(file)).await?,
                        _ => file,
                    }
                }
            };
            // object storage: the blobs fetched into this process's cache
            let file = self.label_file(FINAL_TAG, &id, &lext);
            let label = match (self.objects(), lsha) {
                (Some(o), Some(sha)) => o.local(&sha, &lext, Some(file)).await?,
                _ => file,
            };
            pairs.push((image, label));
        }
        Ok(pairs)
    }

    /// Queues a task for the remote source; returns its id.
    pub async fn outbox_add(
        &self,
        kind: &str,
        image_id: &str,
        tag: &str,
        rev: Option<i64>,
    ) -> Result<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (kind, image_id, tag, rev, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id",
        )
        .bind(kind)
        .bind(image_id)
        .bind(tag)
        .bind(rev)
        .bind(now_secs())
        .fetch_one(self.pool())
        .await?;
        Ok(id)
    }

    /// Tasks not done yet, oldest first (at most `limit`).
    pub async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxItem>> {
        sqlx::query(
            "SELECT id, kind, image_id, tag, rev, attempts, last_error FROM outbox \
             WHERE done_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(|r| {
            Ok(OutboxItem {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                image_id: r.try_get("image_id")?,
                tag: r.try_get("tag")?,
                rev: r.try_get("rev")?,
                attempts: r.try_get("attempts")?,
                last_error: r.try_get("last_error")?,
            })
        })
        .collect()
    }

    /// Records a failed attempt.
    pub async fn outbox_failed(&self, id: i64, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $1, last_try = $2 WHERE id = $3",
        )
        .bind(error)
        .bind(now_secs())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Marks a task done with its result.
    pub async fn outbox_done(&self, id: i64, result: &Map<String, Value>) -> Result<()> {
        let now = now_secs();
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_try = $1, done_at = $2, result = $3, \
             last_error = NULL WHERE id = $4",
        )
        .bind(now)
        .bind(now)
        .bind(serde_json::to_string(result)?)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Results of the done tasks of one image (e.g. the SEG UIDs stored), oldest first.
    pub async fn outbox_results(&self, image_id: &str) -> Result<Vec<Map<String, Value>>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT result FROM outbox WHERE image_id = $1 AND done_at IS NOT NULL \
             AND result IS NOT NULL ORDER BY id",
        )
        .bind(image_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|s| parse_info(s)).collect()
    }
}
