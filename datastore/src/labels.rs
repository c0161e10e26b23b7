//! Labels and their immutable revisions.
//!
//! A label is one file per (image, tag): `<studies>/labels/<tag>/<image_id><ext>`, which is what
//! the protocol serves. Every save also keeps a copy under
//! `<studies>/.ferrolabel/revisions/<tag>/<image_id>/<rev><ext>` with a `label_revisions` row
//! (author, time, parent revision, SHA-256, info). A label that reached the store without a
//! revision (imported, or dropped into the folder) is preserved as a revision of its own before
//! its first replacement, so no saved label content is ever lost.
//!
//! Revisions are copies, not hard links: tools that write the live file in place (MONAI Label's
//! `shutil.copy` truncates the destination) would otherwise rewrite history too.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::Row;

use crate::blocking::blocking;
use crate::error::{DatastoreError, Result};
use crate::files::{self, Source};
use crate::ids::{normalize_tag, validate_ext, validate_id};
use crate::locks::Held;
use crate::store::{now_secs, parse_info, Datastore};

/// The label currently served for an (image, tag).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelRecord {
    /// The image id (also the label id).
    pub image_id: String,
    /// The tag, e.g. `final`.
    pub tag: String,
    /// The file extension.
    pub ext: String,
    /// Absolute path of the live file, `<studies>/labels/<tag>/<image_id><ext>`; with object
    /// storage, where the blob's cached copy is or will be ([`Datastore::label_path`] fetches).
    pub path: PathBuf,
    /// The info object (`ts`, `name`, client keys...).
    pub info: Map<String, Value>,
    /// The revision being served; `None` for a label never saved through this store.
    pub rev: Option<i64>,
}

/// One immutable saved version of a label.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevisionRecord {
    /// The image id.
    pub image_id: String,
    /// The tag.
    pub tag: String,
    /// Revision number, 1-based, increasing per (image, tag).
    pub rev: i64,
    /// The revision this one replaced (`None` for a first save or after a removal).
    pub parent_rev: Option<i64>,
    /// Who saved it, if known.
    pub author: Option<String>,
    /// Epoch seconds when it was saved.
    pub created_at: i64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// The file extension.
    pub ext: String,
    /// Absolute path of the revision file (with object storage: of its blob's cached copy,
    /// which [`Datastore::label_revision_path`] fetches).
    pub path: PathBuf,
    /// The label info saved with it.
    pub info: Map<String, Value>,
}

/// The live label row, deleted or not.
struct LabelRow {
    ext: String,
    info: Map<String, Value>,
    rev: Option<i64>,
    deleted: bool,
    /// The blob of its content (object storage), if any.
    sha: Option<String>,
}

impl Datastore {
    /// Saves a label for an image and returns it; `NotFound` if the image is unknown.
    ///
    /// An empty `tag` means `final`. `info` is the client's params; `ts` and `name` are added.
    /// Steps: stage the file (temp + fsync), copy it to the revision store, rename it over the
    /// live file, fsync the folder, then commit the revision row and the label row together.
    #[tracing::instrument(skip(self, source, info))]
    pub async fn save_label(
        &self,
        image_id: &str,
        tag: &str,
        ext: &str,
        source: Source,
        mut info: Map<String, Value>,
        author: Option<&str>,
    ) -> Result<LabelRecord> {
        validate_id(image_id)?;
        let tag = normalize_tag(tag)?;
        validate_ext(ext)?;
        let _guard = self.lock_label(image_id, tag).await;
        let mut held = self.hold_label(image_id, tag).await?;
        self.require_image_ext_on(held.conn(), image_id).await?;
        let name = format!("{image_id}{ext}");
        let clash: Option<String> = sqlx::query_scalar(
            "SELECT image_id FROM labels WHERE tag = $1 AND image_id || ext = $2 AND image_id != $3 \
             AND deleted = 0",
        )
        .bind(tag)
        .bind(&name)
        .bind(image_id)
        .fetch_optional(held.conn())
        .await?;
        if let Some(other) = clash {
            return Err(DatastoreError::Conflict(format!(
                "label file {tag}/{name} already belongs to image {other:?}"
            )));
        }

        let mut current = label_row(held.conn(), image_id, tag)
            .await?
            .filter(|r| !r.deleted);
        if let Some(cur) = current.as_mut().filter(|c| c.rev.is_none()) {
            cur.rev = self
                .preserve_unrevisioned(&mut held, image_id, tag, cur)
                .await?;
        }
        let parent = current.as_ref().and_then(|c| c.rev);
        let rev = max_rev(held.conn(), image_id, tag).await?.unwrap_or(0) + 1;

        let ts = now_secs();
        info.insert("ts".into(), ts.into());
        info.insert("name".into(), name.into());

        let mut live = self.label_file(tag, image_id, ext);
        let rev_rel = Self::revision_dir_rel(tag, image_id).join(format!("{rev}{ext}"));
        let (sha, blob) = match self.objects() {
            // object storage: one blob is the label and its revision (content-addressed,
            // immutable); this process's cached copy is what it serves
            Some(objects) => {
                let (sha, cached) = crate::objects::store_source(objects, source, ext).await?;
                live = cached;
                (sha.clone(), Some(sha))
            }
            None => {
                let rev_abs = self.studies().join(&rev_rel);
                let dir = self.label_dir(tag);
                let (stem, l, r) = (image_id.to_string(), live.clone(), rev_abs);
                let sha = blocking(move || {
                    files::create_dir_durable(&dir)?;
                    let tmp = files::stage(source, &dir, &stem)?;
                    let res = files::sha256_file(&tmp).and_then(|sha| {
                        files::copy_atomic(&tmp, &r)?;
                        files::publish(&tmp, &l)?;
                        Ok(sha)
                    });
                    if res.is_err() {
                        let _ = std::fs::remove_file(&tmp);
                    }
                    res
                })
                .await?;
                (sha, None)
            }
        };

        let info_json = serde_json::to_string(&info)?;
        let mut tx = held.write().await?;
        sqlx::query(
            "INSERT INTO label_revisions (image_id, tag, rev, parent_rev, author, created_at, \
             sha256, ext, path, info) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(image_id)
        .bind(tag)
        .bind(rev)
        .bind(parent)
        .bind(author)
        .bind(ts)
        .bind(&sha)
        .bind(ext)
        .bind(rev_rel.to_string_lossy().as_ref())
        .bind(&info_json)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO labels (image_id, tag, ext, info, rev, deleted, updated_at, sha256) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, $7) ON CONFLICT(image_id, tag) DO UPDATE SET \
             ext = excluded.ext, info = excluded.info, rev = excluded.rev, deleted = 0, \
             updated_at = excluded.updated_at, sha256 = excluded.sha256",
        )
        .bind(image_id)
        .bind(tag)
        .bind(ext)
        .bind(&info_json)
        .bind(rev)
        .bind(ts)
        .bind(blob)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        held.finish().await?;
        if self.objects().is_some() {
            self.recheck_blob(&live, &sha).await?;
        }

        if let Some(old) = current.filter(|c| c.ext != ext) {
            let old = self.label_file(tag, image_id, &old.ext);
            blocking(move || files::remove_if_exists(&old)).await?;
        }
        self.committed().await;
        tracing::debug!(rev, "label saved");
        Ok(LabelRecord {
            image_id: image_id.to_string(),
            tag: tag.to_string(),
            ext: ext.to_string(),
            path: live,
            info,
            rev: Some(rev),
        })
    }

    /// Copies a live label that has no revision yet into the revision store and records it, so
    /// that replacing it loses nothing. Returns the new revision number (`None` if the live file
    /// is missing).
    async fn preserve_unrevisioned(
        &self,
        held: &mut Held,
        image_id: &str,
        tag: &str,
        cur: &LabelRow,
    ) -> Result<Option<i64>> {
        let live = self.label_file(tag, image_id, &cur.ext);
        if !files::is_file(&live) {
            return Ok(None);
        }
        let parent = max_rev(held.conn(), image_id, tag).await?;
        let rev = parent.unwrap_or(0) + 1;
        let rev_rel = Self::revision_dir_rel(tag, image_id).join(format!("{rev}{}", cur.ext));
        let rev_abs = self.studies().join(&rev_rel);
        let sha = blocking(move || {
            files::copy_atomic(&live, &rev_abs)?;
            files::sha256_file(&rev_abs)
        })
        .await?;
        // object storage: the preserved content becomes a blob too (before its rows)
        let blob = match self.objects() {
            Some(objects) => {
                let rev_abs = self.studies().join(&rev_rel);
                objects.put_file(&rev_abs, &sha).await?;
                Some(sha.clone())
            }
            None => None,
        };
        let created = cur
            .info
            .get("ts")
            .and_then(Value::as_i64)
            .unwrap_or_else(now_secs);
        let mut tx = held.write().await?;
        sqlx::query(
            "INSERT INTO label_revisions (image_id, tag, rev, parent_rev, author, created_at, \
             sha256, ext, path, info) VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, $8, $9)",
        )
        .bind(image_id)
        .bind(tag)
        .bind(rev)
        .bind(parent)
        .bind(created)
        .bind(&sha)
        .bind(&cur.ext)
        .bind(rev_rel.to_string_lossy().as_ref())
        .bind(serde_json::to_string(&cur.info)?)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE labels SET rev = $1, sha256 = COALESCE($2, sha256) \
             WHERE image_id = $3 AND tag = $4",
        )
        .bind(rev)
        .bind(blob)
        .bind(image_id)
        .bind(tag)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if self.objects().is_some() {
            // SQLite: a collection may have deleted an identical unnamed blob before the commit
            self.recheck_blob(&self.studies().join(&rev_rel), &sha)
                .await?;
        }
        Ok(Some(rev))
    }

    /// The label served for (image, tag), if any. An empty tag means `final`.
    pub async fn label(&self, image_id: &str, tag: &str) -> Result<Option<LabelRecord>> {
        validate_id(image_id)?;
        let tag = normalize_tag(tag)?;
        Ok(label_row(self.pool(), image_id, tag)
            .await?
            .filter(|r| !r.deleted)
            .map(|r| LabelRecord {
                image_id: image_id.to_string(),
                tag: tag.to_string(),
                path: self.content_path(
                    r.sha.as_deref(),
                    || self.label_file(tag, image_id, &r.ext),
                    &r.ext,
                ),
                ext: r.ext,
                info: r.info,
                rev: r.rev,
            }))
    }

    /// Absolute path of the live label file; `NotFound` if there is no label or no file.
    /// With object storage, the blob is fetched into the cache first.
    pub async fn label_path(&self, image_id: &str, tag: &str) -> Result<PathBuf> {
        if let Some(objects) = self.objects() {
            validate_id(image_id)?;
            let t = normalize_tag(tag)?;
            let row = label_row(self.pool(), image_id, t)
                .await?
                .filter(|r| !r.deleted);
            if let Some(LabelRow {
                sha: Some(sha),
                ext,
                ..
            }) = row
            {
                let file = self.label_file(t, image_id, &ext);
                return objects.local(&sha, &ext, Some(file)).await;
            }
        }
        let rec = self.label(image_id, tag).await?;
        match rec {
            Some(rec) if files::is_file(&rec.path) => Ok(rec.path),
            _ => Err(DatastoreError::NotFound(format!(
                "label {image_id:?} with tag {tag:?}"
            ))),
        }
    }

    /// The label's info; `None` if there is no label (the endpoint answers `{}`).
    pub async fn label_info(
        &self,
        image_id: &str,
        tag: &str,
    ) -> Result<Option<Map<String, Value>>> {
        Ok(self.label(image_id, tag).await?.map(|r| r.info))
    }

    /// Shallow-merges `patch` (and `user`, if given) into the label's info; `NotFound` if there
    /// is no label. Revisions keep the info they were saved with.
    #[tracing::instrument(skip(self, patch))]
    pub async fn update_label_info(
        &self,
        image_id: &str,
        tag: &str,
        patch: Map<String, Value>,
        user: Option<&str>,
    ) -> Result<()> {
        validate_id(image_id)?;
        let tag = normalize_tag(tag)?;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT info FROM labels WHERE image_id = $1 AND tag = $2 AND deleted = 0{}",
            self.for_update()
        );
        let info: Option<String> = sqlx::query_scalar(&sql)
            .bind(image_id)
            .bind(tag)
            .fetch_optional(&mut *tx)
            .await?;
        let info = info.ok_or_else(|| {
            DatastoreError::NotFound(format!("label {image_id:?} with tag {tag:?}"))
        })?;
        let mut info = parse_info(&info)?;
        info.extend(patch);
        if let Some(user) = user {
            info.insert("user".into(), user.into());
        }
        sqlx::query(
            "UPDATE labels SET info = $1, updated_at = $2 WHERE image_id = $3 AND tag = $4",
        )
        .bind(serde_json::to_string(&info)?)
        .bind(now_secs())
        .bind(image_id)
        .bind(tag)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.committed().await;
        Ok(())
    }

    /// Deletes the live label file and marks the label deleted. Idempotent: `Ok` when there is
    /// nothing to delete. Revisions are kept.
    #[tracing::instrument(skip(self))]
    pub async fn remove_label(&self, image_id: &str, tag: &str) -> Result<()> {
        validate_id(image_id)?;
        let tag = normalize_tag(tag)?;
        let _guard = self.lock_label(image_id, tag).await;
        let mut held = self.hold_label(image_id, tag).await?;
        let Some(row) = label_row(held.conn(), image_id, tag)
            .await?
            .filter(|r| !r.deleted)
        else {
            return Ok(());
        };
        let live = self.label_file(tag, image_id, &row.ext);
        blocking(move || files::remove_if_exists(&live)).await?;
        let mut tx = held.write().await?;
        sqlx::query(
            "UPDATE labels SET deleted = 1, updated_at = $1 WHERE image_id = $2 AND tag = $3",
        )
        .bind(now_secs())
        .bind(image_id)
        .bind(tag)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        held.finish().await?;
        self.committed().await;
        Ok(())
    }

    /// Every revision of (image, tag), oldest first. Empty if none.
    pub async fn label_revisions(&self, image_id: &str, tag: &str) -> Result<Vec<RevisionRecord>> {
        validate_id(image_id)?;
        let tag = normalize_tag(tag)?;
        let rows = sqlx::query(
            "SELECT rev, parent_rev, author, created_at, sha256, ext, path, info \
             FROM label_revisions WHERE image_id = $1 AND tag = $2 ORDER BY rev",
        )
        .bind(image_id)
        .bind(tag)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(RevisionRecord {
                    image_id: image_id.to_string(),
                    tag: tag.to_string(),
                    rev: row.try_get("rev")?,
                    parent_rev: row.try_get("parent_rev")?,
                    author: row.try_get("author")?,
                    created_at: row.try_get("created_at")?,
                    path: self.revision_path(&row)?,
                    sha256: row.try_get("sha256")?,
                    ext: row.try_get("ext")?,
                    info: parse_info(&row.try_get::<String, _>("info")?)?,
                })
            })
            .collect()
    }

    /// The last `limit` revisions recorded, of every label (deleted ones included), newest first.
    pub async fn recent_revisions(&self, limit: u32) -> Result<Vec<RevisionRecord>> {
        let rows = sqlx::query(
            "SELECT image_id, tag, rev, parent_rev, author, created_at, sha256, ext, path, info \
             FROM label_revisions ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(RevisionRecord {
                    image_id: row.try_get("image_id")?,
                    tag: row.try_get("tag")?,
                    rev: row.try_get("rev")?,
                    parent_rev: row.try_get("parent_rev")?,
                    author: row.try_get("author")?,
                    created_at: row.try_get("created_at")?,
                    path: self.revision_path(&row)?,
                    sha256: row.try_get("sha256")?,
                    ext: row.try_get("ext")?,
                    info: parse_info(&row.try_get::<String, _>("info")?)?,
                })
            })
            .collect()
    }

    /// Absolute path of one revision file; `NotFound` if there is no such revision.
    pub async fn label_revision_path(
        &self,
        image_id: &str,
        tag: &str,
        rev: i64,
    ) -> Result<PathBuf> {
        validate_id(image_id)?;
        let tag = normalize_tag(tag)?;
        let row = sqlx::query(
            "SELECT path, sha256, ext FROM label_revisions \
             WHERE image_id = $1 AND tag = $2 AND rev = $3",
        )
        .bind(image_id)
        .bind(tag)
        .bind(rev)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| {
            DatastoreError::NotFound(format!("revision {rev} of label {image_id:?}/{tag:?}"))
        })?;
        let file = self.studies().join(row.try_get::<String, _>("path")?);
        match self.objects() {
            // the revision's blob (a revision saved before the storage URL: its file)
            Some(objects) => {
                let (sha, ext): (String, String) = (row.try_get("sha256")?, row.try_get("ext")?);
                objects.local(&sha, &ext, Some(file)).await
            }
            None => Ok(file),
        }
    }

    /// The path a revision row's content is read from: its blob's cache path with object
    /// storage, else its file in the studies folder.
    fn revision_path(&self, row: &sqlx::any::AnyRow) -> Result<PathBuf> {
        let file = self.studies().join(row.try_get::<String, _>("path")?);
        Ok(match self.objects() {
            Some(objects) => {
                let (sha, ext): (String, String) = (row.try_get("sha256")?, row.try_get("ext")?);
                objects.cache_path(&sha, &ext)
            }
            None => file,
        })
    }
}

/// The live label row of (image, tag), deleted or not.
async fn label_row<'e, E>(ex: E, image_id: &str, tag: &str) -> Result<Option<LabelRow>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT ext, info, rev, deleted, sha256 FROM labels WHERE image_id = $1 AND tag = $2",
    )
    .bind(image_id)
    .bind(tag)
    .fetch_optional(ex)
    .await?;
    row.map(|row| {
        Ok(LabelRow {
            ext: row.try_get("ext")?,
            info: parse_info(&row.try_get::<String, _>("info")?)?,
            rev: row.try_get("rev")?,
            deleted: row.try_get::<i64, _>("deleted")? != 0,
            sha: row.try_get("sha256")?,
        })
    })
    .transpose()
}

/// The highest revision number of (image, tag), if any.
async fn max_rev<'e, E>(ex: E, image_id: &str, tag: &str) -> Result<Option<i64>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    Ok(
        sqlx::query_scalar("SELECT MAX(rev) FROM label_revisions WHERE image_id = $1 AND tag = $2")
            .bind(image_id)
            .bind(tag)
            .fetch_one(ex)
            .await?,
    )
}
