//! Blobs named outside the image, label and model version tables (`blob_refs`, migration 0008):
//! a session's files, the DICOM source of an image, the resume state of a training. Each row
//! is `(kind, owner, name) → sha256` plus the owner's JSON `info`; any process on the same
//! database and bucket finds the content through it, and the garbage collection keeps what it
//! names.

use std::path::Path;

use serde_json::Value;

use crate::blocking::blocking;
use crate::error::{DatastoreError, Result};
use crate::files;
use crate::ids::validate_id;
use crate::store::{now_secs, Datastore};

/// One row of `blob_refs`.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobRef {
    /// The file's name within its owner.
    pub name: String,
    /// The blob's SHA-256 (hex).
    pub sha256: String,
    /// The owner's JSON (the same on every row of an owner).
    pub info: Value,
    /// Epoch seconds of the last write or touch.
    pub updated_at: i64,
}

type Row = (String, String, String, i64);

fn to_ref((name, sha256, info, updated_at): Row) -> BlobRef {
    BlobRef {
        name,
        sha256,
        info: serde_json::from_str(&info).unwrap_or(Value::Null),
        updated_at,
    }
}

fn check_kind(kind: &str) -> Result<()> {
    match kind {
        "session" | "dicom_source" | "resume" => Ok(()),
        other => Err(DatastoreError::Invalid(format!(
            "unknown blob reference kind {other:?}"
        ))),
    }
}

impl Datastore {
    /// With object storage: puts the files `parts` (`(name, path)`) as blobs and records them as the
    /// content of `(kind, owner)` (replacing what it named before), with `info`; answers their
    /// hashes in order. Kinds: `session`, `dicom_source`, `resume`. Without object storage:
    /// `Invalid` (the files stay where the caller keeps them).
    pub async fn put_blob_refs(
        &self,
        kind: &str,
        owner: &str,
        parts: &[(String, &Path)],
        info: &Value,
    ) -> Result<Vec<String>> {
        check_kind(kind)?;
        validate_id(owner)?;
        if self.objects().is_none() {
            return Err(DatastoreError::Invalid(
                "blob references need object storage (--storage-url)".into(),
            ));
        }
        let mut shas = Vec::with_capacity(parts.len());
        for (name, path) in parts {
            validate_id(name)?;
            let p = path.to_path_buf();
            shas.push(blocking(move || files::sha256_file(&p)).await?);
        }
        let blobs: Vec<(&Path, &str)> = parts
            .iter()
            .zip(&shas)
            .map(|((_, p), s)| (*p, s.as_str()))
            .collect();
        let claim = self.claim_blobs(&blobs).await?;
        let info = serde_json::to_string(info)?;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM blob_refs WHERE kind = $1 AND owner = $2")
            .bind(kind)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        for ((name, _), sha) in parts.iter().zip(&shas) {
            sqlx::query(
                "INSERT INTO blob_refs (kind, owner, name, sha256, info, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(kind)
            .bind(owner)
            .bind(name)
            .bind(sha)
            .bind(&info)
            .bind(now_secs())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        claim.release().await?;
        Ok(shas)
    }

    /// The files of `(kind, owner)`, by name; empty when it has none.
    pub async fn blob_refs(&self, kind: &str, owner: &str) -> Result<Vec<BlobRef>> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT name, sha256, info, updated_at FROM blob_refs \
             WHERE kind = $1 AND owner = $2 ORDER BY name",
        )
        .bind(kind)
        .bind(owner)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(to_ref).collect())
    }

    /// The owners of `kind` with their info and last update, `(owner, info, updated_at)`.
    pub async fn blob_ref_owners(&self, kind: &str) -> Result<Vec<(String, Value, i64)>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT owner, MIN(info), MAX(updated_at) FROM blob_refs WHERE kind = $1 \
             GROUP BY owner ORDER BY owner",
        )
        .bind(kind)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(o, i, t)| (o, serde_json::from_str(&i).unwrap_or(Value::Null), t))
            .collect())
    }

    /// Replaces the info of `(kind, owner)`; answers whether it has rows.
    pub async fn set_blob_ref_info(&self, kind: &str, owner: &str, info: &Value) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE blob_refs SET info = $1, updated_at = $2 WHERE kind = $3 AND owner = $4",
        )
        .bind(serde_json::to_string(info)?)
        .bind(now_secs())
        .bind(kind)
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Forgets the files of `(kind, owner)` (their blobs go at the next collection); answers
    /// whether there were any.
    pub async fn remove_blob_refs(&self, kind: &str, owner: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM blob_refs WHERE kind = $1 AND owner = $2")
            .bind(kind)
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }
}

impl Datastore {
    /// The SHA-256 the database names as image `id`'s content (object storage), `None` for an
    /// unknown image or one whose content is a file in the studies folder.
    pub async fn image_sha256(&self, id: &str) -> Result<Option<String>> {
        validate_id(id)?;
        Ok(
            sqlx::query_scalar::<_, Option<String>>("SELECT sha256 FROM images WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .flatten(),
        )
    }
}
