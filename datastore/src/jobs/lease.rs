//! The lease protocol: claiming a job, keeping it with heartbeats, finishing it.

use serde_json::{json, Value};
use sqlx::Row;

use super::{job_of_row, Heartbeat, JobOutcome, JobRow, JobState, JobUpdate, COLUMNS};
use super::{DETAILS_KEEP, HISTORY_KEEP};
use crate::error::{DatastoreError, Result};
use crate::store::{Backend, Datastore};

/// The candidates of a claim: queued and due, or running with a lapsed lease; in a lane that
/// is neither busy nor excluded. Binds: `$1` now, `$2` the excluded lanes (a JSON array).
const CANDIDATES: &str = "SELECT j.id, j.lane, j.state, j.lease_until, j.attempts, j.history \
     FROM jobs j \
     WHERE ((j.state = 'queued' AND (j.not_before IS NULL OR j.not_before <= $1)) \
        OR (j.state = 'running' AND (j.lease_owner IS NULL OR j.lease_until IS NULL \
                                     OR j.lease_until < $1))) \
       AND j.lane NOT IN (SELECT b.lane FROM jobs b WHERE b.lease_owner IS NOT NULL \
                          AND b.lease_until >= $1) ";

/// SQLite: the best candidate (the whole claim holds the database's write lock).
fn pick_sqlite() -> String {
    format!(
        "{CANDIDATES} AND j.lane NOT IN (SELECT value FROM json_each($2)) \
         ORDER BY j.priority DESC, j.seq LIMIT 1"
    )
}

/// PostgreSQL: the best candidate that no other claim has locked (`FOR UPDATE SKIP LOCKED`:
/// concurrent claims take different rows and never wait for each other).
fn pick_postgres() -> String {
    format!(
        "{CANDIDATES} AND j.lane NOT IN (SELECT jsonb_array_elements_text(CAST($2 AS jsonb))) \
         ORDER BY j.priority DESC, j.seq LIMIT 1 FOR UPDATE OF j SKIP LOCKED"
    )
}

/// PostgreSQL: takes the lane's claim lock for the rest of the transaction, without waiting
/// (`false`: another claim holds it now). Binds: `$1` the lane.
const LANE_LOCK: &str =
    "SELECT pg_try_advisory_xact_lock(hashtextextended('ferrolabel-lane:' || $1, 0))";

/// How many live leases a lane holds on rows other than job `$3`. Binds: `$1` lane, `$2` now.
const LANE_BUSY: &str = "SELECT COUNT(*) FROM jobs WHERE lane = $1 AND id <> $3 \
     AND lease_owner IS NOT NULL AND lease_until >= $2";

/// How many lanes a PostgreSQL claim passes over (busy, or being claimed by another runner)
/// before it gives up until the next poll.
const MAX_LANE_SKIPS: usize = 16;

impl Datastore {
    /// Claims the best job `runner` may run now, or `None`.
    ///
    /// Candidates are queued jobs that are due (`not_before` passed) and running jobs whose
    /// lease lapsed (their runner died), in lanes that are not busy and not in `exclude_lanes`;
    /// the highest priority wins, then the oldest. The job becomes `running` with a lease for
    /// `runner` until `now_ms + lease_ms`, one more attempt, `started_at` set at its first
    /// attempt, and a new history entry (the previous one, for a job taken up again, is closed
    /// at its lease's end as `"lease expired"`). One transaction: on SQLite `BEGIN IMMEDIATE`
    /// (the database's write lock); on PostgreSQL the best candidate row is taken with
    /// `SELECT ... FOR UPDATE SKIP LOCKED` and its lane with a transaction-scoped advisory lock
    /// (taken without waiting; a lane another claim holds is passed over), then the lane is
    /// checked again for a live lease that a claim committed meanwhile. So runners sharing a
    /// database (several servers and workers) never claim the same job, nor two jobs of one
    /// lane.
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
        let backend = self.backend();
        let mut excluded: Vec<String> = exclude_lanes.to_vec();
        let mut tx = self.begin_write().await?;
        release_lapsed_stopped(&mut tx, backend, now_ms).await?;
        let pick_sql = match backend {
            Backend::Sqlite => pick_sqlite(),
            Backend::Postgres => pick_postgres(),
        };
        let mut skips = 0;
        let pick = loop {
            let Some(pick) = sqlx::query(&pick_sql)
                .bind(now_ms)
                .bind(serde_json::to_string(&excluded)?)
                .fetch_optional(&mut *tx)
                .await?
            else {
                tx.commit().await?;
                return Ok(None);
            };
            if backend == Backend::Sqlite {
                break pick;
            }
            let lane: String = pick.try_get("lane")?;
            let id: String = pick.try_get("id")?;
            let locked: bool = sqlx::query_scalar(LANE_LOCK)
                .bind(&lane)
                .fetch_one(&mut *tx)
                .await?;
            let busy: i64 = if locked {
                sqlx::query_scalar(LANE_BUSY)
                    .bind(&lane)
                    .bind(now_ms)
                    .bind(&id)
                    .fetch_one(&mut *tx)
                    .await?
            } else {
                1
            };
            if busy == 0 {
                break pick;
            }
            // another runner is claiming in this lane, or has just claimed in it
            skips += 1;
            if skips >= MAX_LANE_SKIPS {
                tx.commit().await?;
                return Ok(None);
            }
            excluded.push(lane);
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
            "UPDATE jobs SET state = 'running', lease_owner = $1, lease_until = $2, \
             heartbeat_at = $3, attempts = $4, started_at = COALESCE(started_at, $3), \
             history = $5 WHERE id = $6 RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(runner)
            .bind(now_ms.saturating_add(lease_ms))
            .bind(now_ms)
            .bind(attempts)
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
            "UPDATE jobs SET lease_until = $1, heartbeat_at = $2, \
             progress = COALESCE($3, progress), checkpoint = COALESCE($4, checkpoint), \
             details = COALESCE($5, details) \
             WHERE id = $6 AND lease_owner = $7 RETURNING cancel_requested",
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
            sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = $1")
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
        let Some(cur) = sqlx::query(&format!(
            "SELECT state, history, every_ms, result, error, finished_at, not_before \
             FROM jobs WHERE id = $1 AND lease_owner = $2{}",
            row_lock(self.backend())
        ))
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
            "UPDATE jobs SET state = $1, result = $2, error = $3, finished_at = $4, \
             not_before = $5, progress = COALESCE($6, progress), \
             checkpoint = COALESCE($7, checkpoint), details = COALESCE($8, details), \
             history = $9, lease_owner = NULL, lease_until = NULL WHERE id = $10 \
             RETURNING {COLUMNS}"
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
        let Some(cur) = sqlx::query(&format!(
            "SELECT state, history FROM jobs WHERE id = $1 AND lease_owner = $2{}",
            row_lock(self.backend())
        ))
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
            "UPDATE jobs SET state = $1, progress = COALESCE($2, progress), \
             checkpoint = COALESCE($3, checkpoint), details = COALESCE($4, details), \
             history = $5, lease_owner = NULL, lease_until = NULL WHERE id = $6 \
             RETURNING {COLUMNS}"
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

/// Releases the lapsed leases of stopped jobs, closing their attempt as `"lease expired"`
/// (on PostgreSQL, the rows no concurrent claim is releasing).
async fn release_lapsed_stopped(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    now_ms: i64,
) -> Result<()> {
    let lock = match backend {
        Backend::Sqlite => "",
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
    };
    let rows = sqlx::query(&format!(
        "SELECT id, lease_until, history FROM jobs WHERE state = 'stopped' \
         AND lease_owner IS NOT NULL AND (lease_until IS NULL OR lease_until < $1){lock}"
    ))
    .bind(now_ms)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let mut history = parse_history(&row.try_get::<String, _>("history")?)?;
        let lapsed: Option<i64> = row.try_get("lease_until")?;
        close_attempt(&mut history, lapsed.unwrap_or(now_ms), "lease expired");
        sqlx::query(
            "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, history = $1 WHERE id = $2",
        )
        .bind(history_json(history)?)
        .bind(row.try_get::<String, _>("id")?)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// What a read-then-write of one row adds to its `SELECT`: on PostgreSQL `FOR UPDATE`, so a
/// stop requested by another server between the read and the write waits (SQLite's write
/// transaction already excludes it).
fn row_lock(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "",
        Backend::Postgres => " FOR UPDATE",
    }
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
