//! Images: upload, replace, remove, info, listings, status and the exported models.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::Row;

use crate::blocking::blocking;
use crate::error::{DatastoreError, Result};
use crate::files::{self, Source};
use crate::ids::{validate_ext, validate_id, FINAL_TAG};
use crate::monai_json::{self, Entry, Object};
use crate::store::{now_secs, parse_info, Datastore};

/// A registered image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageRecord {
    /// The image id (file name minus extension).
    pub id: String,
    /// The file extension, e.g. `.nii.gz`.
    pub ext: String,
    /// Absolute path of the image file, `<studies>/<id><ext>`; for a remote image or one in
    /// object storage, where its local copy is or will be (it may not exist yet:
    /// [`Datastore::image_path`] fetches it).
    pub path: PathBuf,
    /// Whether the image lives in a remote source (a PACS).
    pub remote: bool,
    /// The info object (`ts`, `name`, client keys...).
    pub info: Map<String, Value>,
}

/// Counts for `GET /datastore/?output=stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatastoreStatus {
    /// Number of images.
    pub total: u64,
    /// Number of images with a `final` label.
    pub completed: u64,
    /// Number of images per label tag (only tags in use).
    pub label_tags: BTreeMap<String, u64>,
}

impl Datastore {
    /// Stores an image as `<studies>/<id><ext>` and registers it.
    ///
    /// `info` is the client's params; `ts`, `name` (`<id><ext>`) and, if given, `user` are added.
    /// Re-uploading an existing id replaces the file and the info but keeps the labels (and the
    /// image's place in the listing order).
    #[tracing::instrument(skip(self, source, info))]
    pub async fn add_image(
        &self,
        id: &str,
        ext: &str,
        source: Source,
        mut info: Map<String, Value>,
        user: Option<&str>,
    ) -> Result<ImageRecord> {
        validate_id(id)?;
        validate_ext(ext)?;
        let _guard = self.lock_image(id).await;
        let mut held = self.hold_image(id).await?;
        let name = format!("{id}{ext}");
        let clash: Option<String> =
            sqlx::query_scalar("SELECT id FROM images WHERE id || ext = $1 AND id != $2")
                .bind(&name)
                .bind(id)
                .fetch_optional(held.conn())
                .await?;
        if let Some(other) = clash {
            return Err(DatastoreError::Conflict(format!(
                "file {name:?} already belongs to image {other:?}"
            )));
        }
        let old_ext: Option<String> = sqlx::query_scalar("SELECT ext FROM images WHERE id = $1")
            .bind(id)
            .fetch_optional(held.conn())
            .await?;

        let ts = now_secs();
        info.insert("ts".into(), ts.into());
        info.insert("name".into(), name.into());
        if let Some(user) = user {
            info.insert("user".into(), user.into());
        }

        // object storage: the blob (and this process's cached copy) first; else the file
        let (dest, sha) = match self.objects() {
            Some(objects) => {
                let (sha, cached) = crate::objects::store_source(objects, source, ext).await?;
                (cached, Some(sha))
            }
            None => {
                let dest = self.image_file(id, ext);
                let (studies, stem, d) =
                    (self.studies().to_path_buf(), id.to_string(), dest.clone());
                blocking(move || {
                    let tmp = files::stage(source, &studies, &stem)?;
                    files::publish(&tmp, &d)
                })
                .await?;
                (dest, None)
            }
        };

        let mut tx = held.write().await?;
        sqlx::query(
            "INSERT INTO images (id, ext, info, created_at, updated_at, sha256) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT(id) DO UPDATE SET ext = excluded.ext, info = excluded.info, \
             updated_at = excluded.updated_at, sha256 = excluded.sha256",
        )
        .bind(id)
        .bind(ext)
        .bind(serde_json::to_string(&info)?)
        .bind(ts)
        .bind(ts)
        .bind(sha.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        held.finish().await?;
        if let Some(sha) = &sha {
            self.recheck_blob(&dest, sha).await?;
        }

        if let Some(old) = old_ext.filter(|o| o != ext) {
            let old = self.image_file(id, &old);
            blocking(move || files::remove_if_exists(&old)).await?;
        }
        self.committed().await;
        Ok(ImageRecord {
            id: id.to_string(),
            ext: ext.to_string(),
            path: dest,
            remote: false,
            info,
        })
    }

    /// Deletes an image, its label files (every tag) and its rows. Label revisions are kept.
    ///
    /// Files go first, rows last: after a crash in between, the next scan drops the rows whose
    /// files are gone, rather than resurrecting a half-deleted image.
    #[tracing::instrument(skip(self))]
    pub async fn remove_image(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let _guard = self.lock_image(id).await;
        let mut held = self.hold_image(id).await?;
        let ext = self.require_image_ext_on(held.conn(), id).await?;
        let labels = sqlx::query("SELECT tag, ext FROM labels WHERE image_id = $1 AND deleted = 0")
            .bind(id)
            .fetch_all(held.conn())
            .await?;
        let mut doomed = Vec::with_capacity(labels.len() + 1);
        for row in labels {
            let tag: String = row.try_get("tag")?;
            let lext: String = row.try_get("ext")?;
            doomed.push(self.label_file(&tag, id, &lext));
        }
        doomed.push(self.image_file(id, &ext));
        blocking(move || -> Result<_> {
            for p in &doomed {
                files::remove_if_exists(p)?;
            }
            Ok(())
        })
        .await?;
        let mut tx = held.write().await?;
        sqlx::query("DELETE FROM images WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        held.finish().await?;
        self.committed().await;
        Ok(())
    }

    /// The image, if registered.
    pub async fn image(&self, id: &str) -> Result<Option<ImageRecord>> {
        validate_id(id)?;
        let row = sqlx::query("SELECT ext, info, remote, sha256 FROM images WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let ext: String = row.try_get("ext")?;
        let remote: Option<String> = row.try_get("remote")?;
        let sha: Option<String> = row.try_get("sha256")?;
        let path = match &remote {
            Some(r) => self.remote_hint(id, &parse_info(r)?),
            None => self.content_path(sha.as_deref(), || self.image_file(id, &ext), &ext),
        };
        Ok(Some(ImageRecord {
            id: id.to_string(),
            path,
            ext,
            remote: remote.is_some(),
            info: parse_info(row.try_get("info")?)?,
        }))
    }

    /// Absolute path of the image file; `NotFound` if the id is unknown or the file is missing.
    /// A remote image is made local first (fetched and converted unless cached; a source that
    /// is down is [`DatastoreError::Remote`]): the one call every reader of voxels goes through.
    pub async fn image_path(&self, id: &str) -> Result<PathBuf> {
        let ext = {
            validate_id(id)?;
            self.require_image_ext(id).await?
        };
        if let Some(remote) = self.remote_of(id).await? {
            return self.fetch_remote(id, &remote).await;
        }
        let path = self.image_file(id, &ext);
        if let Some(objects) = self.objects() {
            let sha: Option<String> = sqlx::query_scalar("SELECT sha256 FROM images WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .flatten();
            if let Some(sha) = sha {
                return objects.local(&sha, &ext, Some(path)).await;
            }
        }
        if files::is_file(&path) {
            Ok(path)
        } else {
            Err(DatastoreError::NotFound(format!(
                "image file {}",
                path.display()
            )))
        }
    }

    /// The image's info plus `path` (absolute); `None` if unknown (the endpoint answers `{}`).
    pub async fn image_info(&self, id: &str) -> Result<Option<Map<String, Value>>> {
        Ok(self.image(id).await?.map(|rec| {
            let mut info = rec.info;
            info.insert(
                "path".into(),
                rec.path.to_string_lossy().into_owned().into(),
            );
            info
        }))
    }

    /// Shallow-merges `patch` (and `user`, if given) into the image's info.
    #[tracing::instrument(skip(self, patch))]
    pub async fn update_image_info(
        &self,
        id: &str,
        patch: Map<String, Value>,
        user: Option<&str>,
    ) -> Result<()> {
        validate_id(id)?;
        let mut tx = self.begin_write().await?;
        let sql = format!("SELECT info FROM images WHERE id = $1{}", self.for_update());
        let info: Option<String> = sqlx::query_scalar(&sql)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let mut info =
            parse_info(&info.ok_or_else(|| DatastoreError::NotFound(format!("image {id:?}")))?)?;
        info.extend(patch);
        if let Some(user) = user {
            info.insert("user".into(), user.into());
        }
        sqlx::query("UPDATE images SET info = $1, updated_at = $2 WHERE id = $3")
            .bind(serde_json::to_string(&info)?)
            .bind(now_secs())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.committed().await;
        Ok(())
    }

    /// All image ids, in insertion order.
    pub async fn list_images(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM images ORDER BY seq")
            .fetch_all(self.pool())
            .await?)
    }

    /// Ids of images that have a `final` label, in insertion order.
    pub async fn labeled_images(&self) -> Result<Vec<String>> {
        self.images_by_final(true).await
    }

    /// Ids of images without a `final` label, in insertion order.
    pub async fn unlabeled_images(&self) -> Result<Vec<String>> {
        self.images_by_final(false).await
    }

    async fn images_by_final(&self, labeled: bool) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT id FROM images i WHERE {} EXISTS (SELECT 1 FROM labels l \
             WHERE l.image_id = i.id AND l.tag = $1 AND l.deleted = 0) ORDER BY seq",
            if labeled { "" } else { "NOT" }
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(FINAL_TAG)
            .fetch_all(self.pool())
            .await?)
    }

    /// Totals for `GET /datastore/?output=stats`.
    pub async fn status(&self) -> Result<DatastoreStatus> {
        let mut tx = self.pool().begin().await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images")
            .fetch_one(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT tag, COUNT(*) AS n FROM labels WHERE deleted = 0 GROUP BY tag ORDER BY tag",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut label_tags = BTreeMap::new();
        for row in rows {
            label_tags.insert(row.try_get("tag")?, row.try_get::<i64, _>("n")? as u64);
        }
        Ok(DatastoreStatus {
            total: total as u64,
            completed: label_tags.get(FINAL_TAG).copied().unwrap_or(0),
            label_tags,
        })
    }

    /// The whole datastore in MONAI Label's `datastore_v2.json` schema (`?output=all`); the same
    /// value is mirrored to `<studies>/datastore_v2.json` after every write.
    pub async fn datastore_json(&self) -> Result<Value> {
        let mut tx = self.pool().begin().await?;
        let meta = sqlx::query("SELECT key, value FROM meta WHERE key IN ('name', 'description')")
            .fetch_all(&mut *tx)
            .await?;
        let images = sqlx::query("SELECT id, ext, info FROM images ORDER BY seq")
            .fetch_all(&mut *tx)
            .await?;
        let labels = sqlx::query(
            "SELECT image_id, tag, ext, info FROM labels WHERE deleted = 0 ORDER BY seq",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        let mut name = monai_json::DEFAULT_NAME.to_string();
        let mut description = monai_json::DEFAULT_DESCRIPTION.to_string();
        for row in meta {
            let (k, v): (String, String) = (row.try_get("key")?, row.try_get("value")?);
            if k == "name" {
                name = v;
            } else {
                description = v;
            }
        }
        let mut objects = Vec::with_capacity(images.len());
        let mut index = std::collections::HashMap::with_capacity(images.len());
        for row in images {
            let id: String = row.try_get("id")?;
            index.insert(id.clone(), objects.len());
            objects.push(Object {
                id,
                image: Entry {
                    ext: row.try_get("ext")?,
                    info: parse_info(row.try_get("info")?)?,
                },
                labels: Vec::new(),
            });
        }
        for row in labels {
            let image_id: String = row.try_get("image_id")?;
            if let Some(&i) = index.get(&image_id) {
                objects[i].labels.push((
                    row.try_get("tag")?,
                    Entry {
                        ext: row.try_get("ext")?,
                        info: parse_info(row.try_get("info")?)?,
                    },
                ));
            }
        }
        Ok(monai_json::render(&name, &description, objects))
    }

    /// `(image, final label)` absolute paths for every image with a `final` label
    /// (`?output=train`), in insertion order. A remote image's path is where its local copy is
    /// or will be (no fetch; [`Datastore::datalist_local`] fetches).
    pub async fn datalist(&self) -> Result<Vec<(PathBuf, PathBuf)>> {
        let rows = sqlx::query(
            "SELECT i.id, i.ext AS iext, i.remote, i.sha256 AS isha, l.ext AS lext, \
             l.sha256 AS lsha FROM images i JOIN labels l \
             ON l.image_id = i.id AND l.tag = $1 AND l.deleted = 0 ORDER BY i.seq",
        )
        .bind(FINAL_TAG)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let iext: String = row.try_get("iext")?;
                let lext: String = row.try_get("lext")?;
                let isha: Option<String> = row.try_get("isha")?;
                let lsha: Option<String> = row.try_get("lsha")?;
                let image = match row.try_get::<Option<String>, _>("remote")? {
                    Some(r) => self.remote_hint(&id, &parse_info(&r)?),
                    None => {
                        self.content_path(isha.as_deref(), || self.image_file(&id, &iext), &iext)
                    }
                };
                let label = self.content_path(
                    lsha.as_deref(),
                    || self.label_file(FINAL_TAG, &id, &lext),
                    &lext,
                );
                Ok((image, label))
            })
            .collect()
    }
}
