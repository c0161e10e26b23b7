//! Import of MONAI Label's `datastore_v2.json`.
//!
//! At open, an existing `datastore_v2.json` is imported unless it is byte-identical to the last
//! one we wrote (its SHA-256 is kept in the `meta` table): a changed file means MONAI Label or a
//! person edited it, so its images, labels and info win over the database. Entries whose files
//! are missing are skipped; the folder scan in [`crate::reconcile`], which runs right after,
//! decides which files exist.

use serde_json::Value;

use crate::blocking::blocking;
use crate::error::{DatastoreError, IoContext, Result};
use crate::files;
use crate::ids::{validate_ext, validate_id, validate_tag};
use crate::monai_json;
use crate::store::{now_secs, Datastore, DATASTORE_JSON};

impl Datastore {
    /// Imports `<studies>/datastore_v2.json` if present and changed since we last wrote it.
    pub(crate) async fn import_json(&self) -> Result<bool> {
        let path = self.studies().join(DATASTORE_JSON);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).at(&path),
        };
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if self.get_meta("json_sha256").await?.as_deref() == Some(sha.as_str()) {
            return Ok(false);
        }
        let text = String::from_utf8(bytes).map_err(|e| DatastoreError::MalformedJson {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let model = monai_json::parse(&path, &text)?;
        if model.images_dir != "." || model.labels_dir != "labels" {
            tracing::warn!(
                images_dir = %model.images_dir,
                labels_dir = %model.labels_dir,
                "{DATASTORE_JSON}: only images_dir \".\" and labels_dir \"labels\" are supported; \
                 reading the standard layout"
            );
        }

        // Keep only entries that are safe and whose files exist.
        let ds = self.clone();
        let objects = blocking(move || -> Result<_> {
            let mut kept = Vec::new();
            for mut obj in model.objects {
                if let Err(e) = validate_id(&obj.id).and(validate_ext(&obj.image.ext)) {
                    tracing::warn!(error = %e, "{DATASTORE_JSON}: skipping object");
                    continue;
                }
                if !files::is_file(&ds.image_file(&obj.id, &obj.image.ext)) {
                    tracing::warn!(id = %obj.id, "{DATASTORE_JSON}: image file missing, skipped");
                    continue;
                }
                obj.labels.retain(|(tag, e)| {
                    validate_tag(tag).is_ok()
                        && validate_ext(&e.ext).is_ok()
                        && files::is_file(&ds.label_file(tag, &obj.id, &e.ext))
                });
                kept.push(obj);
            }
            Ok(kept)
        })
        .await?;

        let now = now_secs();
        let mut tx = self.begin_write().await?;
        for (k, v) in [("name", &model.name), ("description", &model.description)] {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ($1, $2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )
            .bind(k)
            .bind(v)
            .execute(&mut *tx)
            .await?;
        }
        let n = objects.len();
        for obj in objects {
            let ts = obj
                .image
                .info
                .get("ts")
                .and_then(Value::as_i64)
                .unwrap_or(now);
            sqlx::query(
                "INSERT INTO images (id, ext, info, created_at, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT(id) DO UPDATE SET ext = excluded.ext, info = excluded.info, \
                 updated_at = excluded.updated_at",
            )
            .bind(&obj.id)
            .bind(&obj.image.ext)
            .bind(serde_json::to_string(&obj.image.info)?)
            .bind(ts)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            for (tag, e) in obj.labels {
                // A label whose ext and info are unchanged keeps its revision pointer; otherwise
                // the file may have been replaced outside, so it counts as un-revisioned.
                sqlx::query(
                    "INSERT INTO labels (image_id, tag, ext, info, rev, deleted, updated_at) \
                     VALUES ($1, $2, $3, $4, NULL, 0, $5) ON CONFLICT(image_id, tag) DO UPDATE SET \
                     rev = CASE WHEN labels.deleted = 0 AND labels.ext = excluded.ext \
                     AND labels.info = excluded.info THEN labels.rev ELSE NULL END, \
                     ext = excluded.ext, info = excluded.info, deleted = 0, \
                     updated_at = excluded.updated_at",
                )
                .bind(&obj.id)
                .bind(&tag)
                .bind(&e.ext)
                .bind(serde_json::to_string(&e.info)?)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        self.bump();
        tracing::info!(objects = n, path = %path.display(), "imported {DATASTORE_JSON}");
        Ok(true)
    }
}
