//! Inserting, stopping and listing jobs.

use super::{job_of_row, JobRow, NewJob, COLUMNS};
use crate::error::{DatastoreError, Result};
use crate::store::Datastore;

impl Datastore {
    /// Inserts a queued job (no details, no history) and returns its row. An id already in the
    /// table is [`DatastoreError::Conflict`]; an empty id, kind or lane or a period that is not
    /// positive is [`DatastoreError::Invalid`].
    pub async fn insert_job(&self, job: &NewJob, now_ms: i64) -> Result<JobRow> {
        check_new(job)?;
        self.insert_row(job, job.not_before, "", now_ms)
            .await
            .map_err(|e| match e {
                DatastoreError::Db(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                    DatastoreError::Conflict(format!("job {:?} exists", job.id))
                }
                e => e,
            })
    }

    /// Registers a periodic job: inserted queued when its id is absent (not before
    /// `job.not_before`, or now); when present, only its period and params are updated (its
    /// state, schedule and history stay). `job.every_ms` is required.
    pub async fn upsert_periodic(&self, job: &NewJob, now_ms: i64) -> Result<JobRow> {
        check_new(job)?;
        if job.every_ms.is_none() {
            return Err(DatastoreError::Invalid(format!(
                "periodic job {:?} without a period",
                job.id
            )));
        }
        let on_conflict =
            "ON CONFLICT(id) DO UPDATE SET every_ms = excluded.every_ms, params = excluded.params";
        self.insert_row(
            job,
            Some(job.not_before.unwrap_or(now_ms)),
            on_conflict,
            now_ms,
        )
        .await
    }

    /// The one `INSERT` of a queued job (`on_conflict`: an upsert clause, or empty).
    async fn insert_row(
        &self,
        job: &NewJob,
        not_before: Option<i64>,
        on_conflict: &str,
        now_ms: i64,
    ) -> Result<JobRow> {
        let sql = format!(
            "INSERT INTO jobs (id, kind, lane, priority, state, params, request, owner, \
             not_before, every_ms, created_at) \
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10) \
             {on_conflict} RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&job.id)
            .bind(&job.kind)
            .bind(&job.lane)
            .bind(job.priority)
            .bind(serde_json::to_string(&job.params)?)
            .bind(serde_json::to_string(&job.request)?)
            .bind(&job.owner)
            .bind(not_before)
            .bind(job.every_ms)
            .bind(now_ms)
            .fetch_one(self.pool())
            .await?;
        job_of_row(&row)
    }

    /// Asks job `id` to stop and returns its row after (`None`: no such job). A queued job is
    /// stopped at once; a running one becomes `stopped` with `cancel_requested` set (its runner
    /// keeps the lease, and so its lane, until it has wound down and finished it); both get
    /// `finished_at = now`. An ended job (done, error, stopped) is left unchanged.
    pub async fn request_stop(&self, id: &str, now_ms: i64) -> Result<Option<JobRow>> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE jobs SET cancel_requested = CASE WHEN state = 'running' THEN 1 ELSE 0 END, \
             state = 'stopped', finished_at = $1 WHERE id = $2 AND state IN ('queued', 'running')",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(job_of_row).transpose()
    }

    /// Job `id`, or `None`.
    pub async fn get_job(&self, id: &str) -> Result<Option<JobRow>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(job_of_row).transpose()
    }

    /// The newest `limit` jobs (of `kind`, when given), oldest first.
    pub async fn list_jobs(&self, kind: Option<&str>, limit: usize) -> Result<Vec<JobRow>> {
        let sql = format!(
            "SELECT * FROM (SELECT {COLUMNS} FROM jobs WHERE $1 IS NULL OR kind = $1 \
             ORDER BY seq DESC LIMIT $2) AS newest ORDER BY seq"
        );
        let rows = sqlx::query(&sql)
            .bind(kind)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(job_of_row).collect()
    }

    /// The last `n` jobs of `kind` that ended done (with `started_at` and `finished_at`),
    /// newest first: what estimates of run times are made from.
    pub async fn last_finished(&self, kind: &str, n: usize) -> Result<Vec<JobRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs WHERE kind = $1 AND state = 'done' \
             AND started_at IS NOT NULL AND finished_at IS NOT NULL \
             ORDER BY finished_at DESC, seq DESC LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(kind)
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(job_of_row).collect()
    }
}

/// Refuses a job without id, kind or lane, or with a period that is not positive.
fn check_new(job: &NewJob) -> Result<()> {
    if job.id.is_empty() || job.kind.is_empty() || job.lane.is_empty() {
        return Err(DatastoreError::Invalid(format!(
            "job {:?} needs an id, a kind and a lane",
            job.id
        )));
    }
    if job.every_ms.is_some_and(|e| e <= 0) {
        return Err(DatastoreError::Invalid(format!(
            "job {:?}: period {:?} ms",
            job.id, job.every_ms
        )));
    }
    Ok(())
}
