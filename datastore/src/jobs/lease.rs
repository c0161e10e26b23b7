//! The lease protocol: claiming a job, keeping it with heartbeats, finishing it.

use serde_json::{json, Value};
use sqlx::Row;

use super::{job_of_row, Heartbeat, JobOutcome, JobRow, JobState, JobUpdate, COLUMNS};
use super::{DETAILS_KEEP, HISTORY_KEEP};
use crate::error::{DatastoreError, Result};
use crate::store::Datastore;

/// The best claimable job: queued and due, or running with a lapsed lease; in a lane that is
/// neither busy nor excluded. Binds: now, now, now, excluded lanes (JSON array).
const PICK: &str = "SELECT j.id, j.state, j.lease_until, j.attempts, j.history FROM jobs j \
     WHERE ((j.state = 'queued' AND (j.not_before IS NULL OR j.not_before <= ?)) \
        OR (j.state = 'running' AND (j.lease_owner IS NULL OR j.lease_until IS NULL \
                                     OR j.lease_until < ?))) \
       AND j.lane NOT IN (SELECT b.lane FROM jobs b WHERE b.lease_owner IS NOT NULL \
                          AND b.lease_until >= ?) \
       AND j.lane NOT IN (SELECT value FROM json_each(?)) \
     ORDER BY j.priority DESC, j.seq LIMIT 1";

impl Datastore {
    /// Claims the best job `runner` may run now, or `None`.
    ///
    /// Candidates are queued jobs that are due (`not_before` passed) and running jobs whose
    /// lease lapsed (their runner died), in lanes that are not busy and not in `exclude_lanes`;
    /// the highest priority wins, then the oldest. The job becomes `running` with a lease for
    /// `runner` until `now_ms + lease_ms`, one more attempt, `started_at` set at its first
    /// attempt, and a new history entry (the previous one, for a job taken up again, is closed
    /// at its lease's end as `"lease expired"`). One `BEGIN IMMEDIATE` transaction: runners on
    /// one database file never claim the same job, nor two jobs of one lane.
    ///
    /// The same transaction first releases the lapsed leases of stopped jobs (closing their
    /// attempt as `"lease expired"`), so a runner that died while winding down leaves no trace
    /// of a lease behind.
    pub async fn claim_job(
        &self,
        runner: &str,
        lease_ms: i64,
        now_ms: i64,
        exclude_lanes: &[String],
    ) -> Result<Option<JobRow>> {
        if runner.is_empty() || lease_ms <= 0 {
            return Err(DatastoreError::Invalid(format!(
                "claim by runner {runner:?} with lease {lease_ms} ms"
            )));
        }
        let excluded = serde_json::to_string(exclude_lanes)?;
        let mut tx = self.begin_write().await?;
        release_lapsed_stopped(&mut tx, now_ms).await?;
        let Some(pick) = sqlx::query(PICK)
            .bind(now_ms)
            .bind(now_ms)
            .bind(now_ms)
            .bind(&excluded)
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.commit().await?;
            return Ok(None);
        };
        let id: String = pick.try_get("id")?;
        let attempts: i64 = pick.try_get::<i64, _>("attempts")? + 1;
        let mut history = parse_history(&pick.try_get::<String, _>("history")?)?;
        if pick.try_get::<String, _>("state")? == JobState::Running.as_str() {
            let lapsed: Option<i64> = pick.try_get("lease_until")?;
            close_attempt(&mut history, lapsed.unwrap_or(now_ms), "lease expired");
        }
        history.push(json!({
            "attempt": attempts, "runner": runner, "started_at": now_ms,
            "ended_at": null, "end": null,
        }));
        let sql = format!(
            "UPDATE jobs SET state = 'running', lease_owner = ?, lease_until = ?, \
             heartbeat_at = ?, attempts = ?, started_at = COALESCE(started_at, ?), history = ? \
             WHERE id = ? RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(runner)
            .bind(now_ms.saturating_add(lease_ms))
            .bind(now_ms)
            .bind(attempts)
            .bind(now_ms)
            .bind(history_json(history)?)
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        let job = job_of_row(&row)?;
        tx.commit().await?;
        Ok(Some(job))
    }

    /// Keeps `runner`'s lease on job `id` (until `now_ms + lease_ms`) and writes `update`.
    /// Only the lease holder's heartbeat counts: for anyone else nothing changes and the answer
    /// is `owned: false`. `cancel_requested` tells the holder a stop was requested.
    pub async fn heartbeat_job(
        &self,
        id: &str,
        runner: &str,
        lease_ms: i64,
        now_ms: i64,
        update: &JobUpdate,
    ) -> Result<Heartbeat> {
        let (progress, checkpoint, details) = update_columns(update)?;
        let cancel: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET lease_until = ?, heartbeat_at = ?, \
             progress = COALESCE(?, progress), checkpoint = COALESCE(?, checkpoint), \
             details = COALESCE(?, details) \
             WHERE id = ? AND lease_owner = ? RETURNING cancel_requested",
        )
        .bind(now_ms.saturating_add(lease_ms))
        .bind(now_ms)
        .bind(progress)
        .bind(checkpoint)
        .bind(details)
        .bind(id)
        .bind(runner)
        .fetch_optional(self.pool())
        .await?;
        if let Some(cancel_requested) = cancel {
            return Ok(Heartbeat {
                owned: true,
                cancel_requested: cancel_requested != 0,
            });
        }
        let cancel: Option<i64> =
            sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = ?")
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        Ok(Heartbeat {
            owned: false,
            cancel_requested: cancel.unwrap_or(0) != 0,
        })
    }

    /// Ends `runner`'s run of job `id` with `outcome`, writing `update` first; `None` (and no
    /// change) when `runner` does not hold the lease.
    ///
    /// The lease is released and the attempt closed in the history (`"done"`, `"error"` or
    /// `"stopped"`). A job already stopped on request stays `stopped` (its `finished_at`
    /// kept); otherwise the state becomes done, error or stopped, with the result or error and
    /// `finished_at = now`. A periodic job whose run ended done or error is queued again, not
    /// before `now + every_ms`, keeping this run's result or error and `finished_at`.
    pub async fn finish_job(
        &self,
        id: &str,
        runner: &str,
        outcome: JobOutcome,
        update: &JobUpdate,
        now_ms: i64,
    ) -> Result<Option<JobRow>> {
        let (progress, checkpoint, details) = update_columns(update)?;
        let mut tx = self.begin_write().await?;
        let Some(cur) = sqlx::query(
            "SELECT state, history, every_ms, result, error, finished_at, not_before \
             FROM jobs WHERE id = ? AND lease_owner = ?",
        )
        .bind(id)
        .bind(runner)
        .fetch_optional(&mut *tx)
        .await?
        else {
            tx.commit().await?;
            return Ok(None);
        };
        let was_stopped = cur.try_get::<String, _>("state")? == JobState::Stopped.as_str();
        let every_ms: Option<i64> = cur.try_get("every_ms")?;
        let mut result: Option<String> = cur.try_get("result")?;
        let mut error: Option<String> = cur.try_get("error")?;
        let mut history = parse_history(&cur.try_get::<String, _>("history")?)?;
        let end = match &outcome {
            JobOutcome::Done(v) => {
                result = Some(serde_json::to_string(v)?);
                error = None;
                JobState::Done
            }
            JobOutcome::Error(e) => {
                result = None;
                error = Some(e.clone());
                JobState::Error
            }
            JobOutcome::Stopped => JobState::Stopped,
        };
        close_attempt(&mut history, now_ms, end.as_str());
        let mut not_before: Option<i64> = cur.try_get("not_before")?;
        let (state, finished_at) = if was_stopped {
            let kept: Option<i64> = cur.try_get("finished_at")?;
            (JobState::Stopped, kept.unwrap_or(now_ms))
        } else if let (Some(every), JobState::Done | JobState::Error) = (every_ms, end) {
            not_before = Some(now_ms.saturating_add(every));
            (JobState::Queued, now_ms)
        } else {
            (end, now_ms)
        };
        let sql = format!(
            "UPDATE jobs SET state = ?, result = ?, error = ?, finished_at = ?, not_before = ?, \
             progress = COALESCE(?, progress), checkpoint = COALESCE(?, checkpoint), \
             details = COALESCE(?, details), history = ?, lease_owner = NULL, \
             lease_until = NULL WHERE id = ? RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(state.as_str())
            .bind(result)
            .bind(error)
            .bind(finished_at)
            .bind(not_before)
            .bind(progress)
            .bind(checkpoint)
            .bind(details)
            .bind(history_json(history)?)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let job = job_of_row(&row)?;
        tx.commit().await?;
        Ok(Some(job))
    }

    /// Hands job `id` back without ending it (its runner is shutting down): only if `runner`
    /// holds the lease, writes `update`, closes the attempt as `"released"`, clears the lease
    /// and queues the job again (a job stopped on request stays stopped), so the next runner
    /// takes it up at once instead of waiting for the lease to run out.
    pub async fn release_job(
        &self,
        id: &str,
        runner: &str,
        update: &JobUpdate,
        now_ms: i64,
    ) -> Result<Option<JobRow>> {
        let (progress, checkpoint, details) = update_columns(update)?;
        let mut tx = self.begin_write().await?;
        let Some(cur) =
            sqlx::query("SELECT state, history FROM jobs WHERE id = ? AND lease_owner = ?")
                .bind(id)
                .bind(runner)
                .fetch_optional(&mut *tx)
                .await?
        else {
            tx.commit().await?;
            return Ok(None);
        };
        let state: String = cur.try_get("state")?;
        let state = if state == JobState::Running.as_str() {
            JobState::Queued.as_str().to_string()
        } else {
            state
        };
        let mut history = parse_history(&cur.try_get::<String, _>("history")?)?;
        close_attempt(&mut history, now_ms, "released");
        let sql = format!(
            "UPDATE jobs SET state = ?, progress = COALESCE(?, progress), \
             checkpoint = COALESCE(?, checkpoint), details = COALESCE(?, details), history = ?, \
             lease_owner = NULL, lease_until = NULL WHERE id = ? RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(state)
            .bind(progress)
            .bind(checkpoint)
            .bind(details)
            .bind(history_json(history)?)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let job = job_of_row(&row)?;
        tx.commit().await?;
        Ok(Some(job))
    }
}

/// Releases the lapsed leases of stopped jobs, closing their attempt as `"lease expired"`.
async fn release_lapsed_stopped(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    now_ms: i64,
) -> Result<()> {
    let rows = sqlx::query(
        "SELECT id, lease_until, history FROM jobs WHERE state = 'stopped' \
         AND lease_owner IS NOT NULL AND (lease_until IS NULL OR lease_until < ?)",
    )
    .bind(now_ms)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let mut history = parse_history(&row.try_get::<String, _>("history")?)?;
        let lapsed: Option<i64> = row.try_get("lease_until")?;
        close_attempt(&mut history, lapsed.unwrap_or(now_ms), "lease expired");
        sqlx::query(
            "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, history = ? WHERE id = ?",
        )
        .bind(history_json(history)?)
        .bind(row.try_get::<String, _>("id")?)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The JSON texts of an update's fields (`None`: leave the column as it is).
fn update_columns(u: &JobUpdate) -> Result<(Option<String>, Option<String>, Option<String>)> {
    let text = |v: &Option<Value>| v.as_ref().map(serde_json::to_string).transpose();
    let details = u.details.as_ref().map(|lines| {
        let skip = lines.len().saturating_sub(DETAILS_KEEP);
        serde_json::to_string(&lines[skip..])
    });
    Ok((
        text(&u.progress)?,
        text(&u.checkpoint)?,
        details.transpose()?,
    ))
}

/// Parses the history column.
fn parse_history(s: &str) -> Result<Vec<Value>> {
    Ok(serde_json::from_str(s)?)
}

/// The newest [`HISTORY_KEEP`] entries as JSON text.
fn history_json(mut history: Vec<Value>) -> Result<String> {
    let skip = history.len().saturating_sub(HISTORY_KEEP);
    history.drain(..skip);
    Ok(serde_json::to_string(&history)?)
}

/// Closes the last attempt, if it is open.
fn close_attempt(history: &mut [Value], ended_at: i64, end: &str) {
    if let Some(Value::Object(last)) = history.last_mut() {
        if last.get("ended_at").is_none_or(Value::is_null) {
            last.insert("ended_at".into(), ended_at.into());
            last.insert("end".into(), end.into());
        }
    }
}
