//! Model versions with provenance (migration `0006_model_versions`): one row per distinct
//! weights file that became active for a model and resolution, with its content hash, the
//! version active before it (`parent`), where it came from (an upload, a training job, a file
//! found in place), who made it, the `final` labels (image, revision) it was trained on, its
//! metrics, and whether its file is still kept (the retention policy prunes files, never rows).
//!
//! The files themselves live beside the weights (the app crate keeps them); this module only
//! records them. Writes take the `model_versions` advisory lock on PostgreSQL (SQLite's
//! `BEGIN IMMEDIATE` serialises them already), so version numbers never race between servers.
//! Times are epoch milliseconds passed in by the caller.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{DatastoreError, Result};
use crate::locks::PgLock;
use crate::store::Datastore;
use crate::FINAL_TAG;

/// One (image, `final` label revision) a model was trained on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrainedOn {
    /// The image id.
    pub image: String,
    /// The `final` label's revision at the time (`null`: a label never saved through the
    /// datastore).
    pub rev: Option<i64>,
}

/// What to record about a new version.
#[derive(Debug, Clone, Default)]
pub struct NewModelVersion {
    /// The model name.
    pub model: String,
    /// `highres` or `lowres`.
    pub resolution: String,
    /// Hex SHA-256 of the weights file.
    pub sha256: String,
    /// `pt` or `safetensors`.
    pub ext: String,
    /// File size in bytes.
    pub size: i64,
    /// `initial`, `external`, `upload`, `train`, `torchrun`.
    pub source: String,
    /// The job that made it.
    pub job_id: Option<String>,
    /// Who uploaded it or started the job.
    pub username: Option<String>,
    /// The training data.
    pub trained_on: Vec<TrainedOn>,
    /// Metrics (`best_metric`, `best_epoch`...): a JSON object.
    pub metrics: Value,
}

/// A recorded version (docs/models.md). Its serialized form is what the HTTP API shows of it
/// (with `highres` and `file_kept` added by the server), and its OpenAPI schema is derived here.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelVersion {
    /// Row id.
    #[serde(skip)]
    pub id: i64,
    /// The model.
    pub model: String,
    /// `highres` or `lowres`.
    pub resolution: String,
    /// 1, 2, ... per model and resolution.
    pub version: i64,
    /// SHA-256 of the weights file (hex); kept as `models/versions/<sha256>.<ext>`.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: String,
    /// `pt` or `safetensors`.
    pub ext: String,
    /// File size in bytes.
    pub size: i64,
    /// The version that was active when this one was recorded.
    pub parent: Option<i64>,
    /// `initial` (the file found at the first look), `external` (a file put in place by hand),
    /// `upload`, `train` or `torchrun`.
    pub source: String,
    /// The training job that made it.
    pub job_id: Option<String>,
    /// Who uploaded it or started the training.
    pub user: Option<String>,
    /// The `final` labels it was trained on.
    pub trained_on: Vec<TrainedOn>,
    /// Metrics (`best_metric`, `best_epoch` for a training): a JSON object.
    #[schema(value_type = Object)]
    pub metrics: Value,
    /// When it was recorded (epoch ms).
    pub created_at: i64,
    /// When it last became active (epoch ms).
    pub activated_at: Option<i64>,
    /// Whether it is the active version (what `model.pt` holds).
    pub active: bool,
    /// When the retention policy removed its file (epoch ms); `null`: the file is kept.
    pub pruned_at: Option<i64>,
}

const COLUMNS: &str = "id, model, resolution, version, sha256, ext, size, parent, source, job_id, \
                       username, trained_on, metrics, created_at, activated_at, active, pruned_at";

fn from_row(r: &AnyRow) -> Result<ModelVersion> {
    Ok(ModelVersion {
        id: r.try_get("id")?,
        model: r.try_get("model")?,
        resolution: r.try_get("resolution")?,
        version: r.try_get("version")?,
        sha256: r.try_get("sha256")?,
        ext: r.try_get("ext")?,
        size: r.try_get("size")?,
        parent: r.try_get("parent")?,
        source: r.try_get("source")?,
        job_id: r.try_get("job_id")?,
        user: r.try_get("username")?,
        trained_on: serde_json::from_str(&r.try_get::<String, _>("trained_on")?)?,
        metrics: serde_json::from_str(&r.try_get::<String, _>("metrics")?)?,
        created_at: r.try_get("created_at")?,
        activated_at: r.try_get("activated_at")?,
        active: r.try_get::<i64, _>("active")? != 0,
        pruned_at: r.try_get("pruned_at")?,
    })
}

/// The versions whose files the retention policy removes, given every version of one model and
/// resolution: all but the `keep` newest, the best (highest `metrics.best_metric`), the active
/// one and those already pruned. `keep == 0` keeps every file.
pub fn to_prune(versions: &[ModelVersion], keep: usize) -> Vec<i64> {
    if keep == 0 {
        return Vec::new();
    }
    let mut by_new: Vec<&ModelVersion> = versions.iter().collect();
    by_new.sort_by_key(|v| std::cmp::Reverse(v.version));
    let metric = |v: &ModelVersion| v.metrics.get("best_metric").and_then(Value::as_f64);
    let best = versions
        .iter()
        .filter(|v| metric(v).is_some_and(f64::is_finite))
        .max_by(|a, b| {
            metric(a)
                .partial_cmp(&metric(b))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.version.cmp(&b.version))
        })
        .map(|v| v.id);
    by_new
        .into_iter()
        .skip(keep)
        .filter(|v| !v.active && v.pruned_at.is_none() && Some(v.id) != best)
        .map(|v| v.id)
        .collect()
}

impl Datastore {
    /// Records a version and, with `activate`, makes it the active one; a file already recorded
    /// for that model and resolution (same SHA-256) is not recorded twice: its row is answered
    /// (and activated when asked). Answers the row and whether it is new.
    pub async fn record_model_version(
        &self,
        v: &NewModelVersion,
        activate: bool,
        now_ms: i64,
    ) -> Result<(ModelVersion, bool)> {
        if v.model.is_empty() || v.resolution.is_empty() || v.sha256.len() != 64 {
            return Err(DatastoreError::Invalid(format!(
                "model version {:?}/{:?} with sha256 {:?}",
                v.model, v.resolution, v.sha256
            )));
        }
        let mut tx = self.begin_write().await?;
        self.lock_in(&mut tx, PgLock::Named("model_versions"))
            .await?;
        let existing = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM model_versions WHERE model = $1 AND resolution = $2 AND sha256 = $3"
        ))
        .bind(&v.model)
        .bind(&v.resolution)
        .bind(&v.sha256)
        .fetch_optional(&mut *tx)
        .await?;
        let (id, new) = match existing {
            Some(r) => (from_row(&r)?.id, false),
            None => {
                let next: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions \
                     WHERE model = $1 AND resolution = $2",
                )
                .bind(&v.model)
                .bind(&v.resolution)
                .fetch_one(&mut *tx)
                .await?;
                let parent: Option<i64> = sqlx::query_scalar(
                    "SELECT version FROM model_versions \
                     WHERE model = $1 AND resolution = $2 AND active = 1",
                )
                .bind(&v.model)
                .bind(&v.resolution)
                .fetch_optional(&mut *tx)
                .await?;
                let metrics = if v.metrics.is_object() {
                    v.metrics.clone()
                } else {
                    json!({})
                };
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO model_versions (model, resolution, version, sha256, ext, size, \
                     parent, source, job_id, username, trained_on, metrics, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
                )
                .bind(&v.model)
                .bind(&v.resolution)
                .bind(next)
                .bind(&v.sha256)
                .bind(&v.ext)
                .bind(v.size)
                .bind(parent)
                .bind(&v.source)
                .bind(&v.job_id)
                .bind(&v.username)
                .bind(serde_json::to_string(&v.trained_on)?)
                .bind(serde_json::to_string(&metrics)?)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await?;
                (id, true)
            }
        };
        if activate {
            activate_in(&mut tx, &v.model, &v.resolution, Some(id), now_ms).await?;
        }
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM model_versions WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let out = from_row(&row)?;
        tx.commit().await?;
        Ok((out, new))
    }

    /// Every version of `model` at `resolution`, newest first.
    pub async fn model_versions(&self, model: &str, resolution: &str) -> Result<Vec<ModelVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM model_versions WHERE model = $1 AND resolution = $2 \
             ORDER BY version DESC"
        ))
        .bind(model)
        .bind(resolution)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Version number `version` of `model` at `resolution`.
    pub async fn model_version(
        &self,
        model: &str,
        resolution: &str,
        version: i64,
    ) -> Result<Option<ModelVersion>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM model_versions WHERE model = $1 AND resolution = $2 AND version = $3"
        ))
        .bind(model)
        .bind(resolution)
        .bind(version)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The version of `model` at `resolution` whose file has this SHA-256.
    pub async fn model_version_by_sha256(
        &self,
        model: &str,
        resolution: &str,
        sha256: &str,
    ) -> Result<Option<ModelVersion>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM model_versions WHERE model = $1 AND resolution = $2 AND sha256 = $3"
        ))
        .bind(model)
        .bind(resolution)
        .bind(sha256)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The version marked active for `model` at `resolution`.
    pub async fn active_model_version(
        &self,
        model: &str,
        resolution: &str,
    ) -> Result<Option<ModelVersion>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM model_versions WHERE model = $1 AND resolution = $2 AND active = 1"
        ))
        .bind(model)
        .bind(resolution)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Marks `version` active for `model` at `resolution` (`None`: none is, the weights file is
    /// gone). An unknown version is [`DatastoreError::NotFound`].
    pub async fn set_active_model_version(
        &self,
        model: &str,
        resolution: &str,
        version: Option<i64>,
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        self.lock_in(&mut tx, PgLock::Named("model_versions"))
            .await?;
        let id = match version {
            None => None,
            Some(n) => Some(
                sqlx::query_scalar::<_, i64>(
                    "SELECT id FROM model_versions WHERE model = $1 AND resolution = $2 AND version = $3",
                )
                .bind(model)
                .bind(resolution)
                .bind(n)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| {
                    DatastoreError::NotFound(format!(
                        "no version {n} of {model} ({resolution})"
                    ))
                })?,
            ),
        };
        activate_in(&mut tx, model, resolution, id, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that the retention policy removed the file of the version with row id `id`.
    pub async fn mark_model_version_pruned(&self, id: i64, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE model_versions SET pruned_at = $1 WHERE id = $2 AND pruned_at IS NULL")
            .bind(now_ms)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The `final` labels a training would read now: (image id, revision served), in the
    /// datalist's order.
    pub async fn final_label_revisions(&self) -> Result<Vec<TrainedOn>> {
        let rows = sqlx::query(
            "SELECT i.id, l.rev FROM images i JOIN labels l \
             ON l.image_id = i.id AND l.tag = $1 AND l.deleted = 0 ORDER BY i.seq",
        )
        .bind(FINAL_TAG)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TrainedOn {
                    image: r.try_get("id")?,
                    rev: r.try_get("rev")?,
                })
            })
            .collect()
    }
}

/// In `tx`: clears the active mark of `model`/`resolution` and sets it on row `id`.
async fn activate_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    model: &str,
    resolution: &str,
    id: Option<i64>,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE model_versions SET active = 0 WHERE model = $1 AND resolution = $2 AND active = 1",
    )
    .bind(model)
    .bind(resolution)
    .execute(&mut **tx)
    .await?;
    if let Some(id) = id {
        sqlx::query("UPDATE model_versions SET active = 1, activated_at = $1 WHERE id = $2")
            .bind(now_ms)
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: i64, metric: Option<f64>, active: bool) -> ModelVersion {
        ModelVersion {
            id: version * 10,
            model: "m".into(),
            resolution: "highres".into(),
            version,
            sha256: format!("{version:064}"),
            ext: "pt".into(),
            size: 1,
            parent: None,
            source: "train".into(),
            job_id: None,
            user: None,
            trained_on: vec![],
            metrics: metric
                .map(|m| json!({"best_metric": m}))
                .unwrap_or(json!({})),
            created_at: version,
            activated_at: None,
            active,
            pruned_at: None,
        }
    }

    #[test]
    fn retention_keeps_the_newest_the_best_and_the_active() {
        let all = vec![
            v(1, None, false),
            v(2, Some(0.9), false),
            v(3, Some(0.5), true),
            v(4, Some(0.6), false),
            v(5, Some(0.7), false),
            v(6, Some(0.8), false),
        ];
        // keep 2: 6 and 5 (newest), 2 (best), 3 (active)
        assert_eq!(to_prune(&all, 2), vec![40, 10]);
        assert!(to_prune(&all, 0).is_empty());
        assert!(to_prune(&all, 6).is_empty());
        let mut pruned = all.clone();
        pruned[0].pruned_at = Some(1);
        assert_eq!(to_prune(&pruned, 2), vec![40]);
    }
}
