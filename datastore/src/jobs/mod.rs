//! The persistent jobs table of the scheduler (migration `0004_jobs`).
//!
//! Every background job (training, batch inference, scoring, periodic sweeps) is one row. A
//! *runner* (one server instance, named by a unique string) takes a job with
//! [`Datastore::claim_job`], which gives it a *lease* until `now + lease_ms`; it keeps the lease
//! with [`Datastore::heartbeat_job`] and gives it back with [`Datastore::finish_job`]. A job
//! whose runner died (its lease ran out while it was `running`) is taken up again by the next
//! claim, as a new attempt; the attempts are recorded in [`JobRow::history`].
//!
//! Jobs of one *lane* run one at a time: a lane is busy while some row of it holds a live lease
//! (`lease_owner` set and `lease_until >= now`), whatever its state — a job stopped with
//! [`Datastore::request_stop`] keeps its lane busy until its runner has wound down. Claims are
//! one transaction each (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: `FOR UPDATE SKIP LOCKED` on the
//! job and an advisory lock on its lane), so runners sharing a database (several [`Datastore`]
//! handles, several servers and workers) never take the same job nor two jobs of one lane.
//!
//! Times are integer milliseconds since the Unix epoch, passed in by the caller.
//!
//! The submodule `queue` inserts, stops and lists jobs; `lease` holds the lease protocol (claim,
//! heartbeat, finish).

mod lease;
mod queue;

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{DatastoreError, Result};
#[allow(unused_imports)] // named by the docs
use crate::store::Datastore;

/// How many log lines [`JobRow::details`] keeps (the newest).
pub const DETAILS_KEEP: usize = 20;

/// How many attempts [`JobRow::history`] keeps (the newest; periodic jobs run forever).
pub const HISTORY_KEEP: usize = 50;

/// The state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be claimed.
    Queued,
    /// Claimed by a runner.
    Running,
    /// Ended with a result.
    Done,
    /// Ended with an error.
    Error,
    /// Stopped on request (its runner may still hold the lease while it winds down).
    Stopped,
}

impl JobState {
    /// The name stored in the `state` column: `queued`, `running`, `done`, `error`, `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Error => "error",
            JobState::Stopped => "stopped",
        }
    }

    /// The state named `s` (as [`JobState::as_str`] writes it), `None` for anything else.
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "error" => JobState::Error,
            "stopped" => JobState::Stopped,
            _ => return None,
        })
    }

    /// `true` for the end states: done, error and stopped.
    pub fn is_ended(self) -> bool {
        matches!(self, JobState::Done | JobState::Error | JobState::Stopped)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to insert with [`Datastore::insert_job`] or [`Datastore::upsert_periodic`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewJob {
    /// Unique id (a uuid).
    pub id: String,
    /// What it is: `train`, `batch_infer`, `scoring`, `sweep_sessions`...
    pub kind: String,
    /// Jobs of one lane run one at a time.
    pub lane: String,
    /// Higher runs first; FIFO within a priority.
    pub priority: i64,
    /// The typed task, as JSON (what the runner needs).
    pub params: Value,
    /// The protocol's request object (shown to clients).
    pub request: Value,
    /// Who asked (client id or user name).
    pub owner: Option<String>,
    /// Not claimed before this time (ms).
    pub not_before: Option<i64>,
    /// Periodic jobs: the period (ms); after each run the job is queued again.
    pub every_ms: Option<i64>,
}

/// One row of the jobs table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobRow {
    /// Insertion order.
    pub seq: i64,
    /// Unique id.
    pub id: String,
    /// What it is.
    pub kind: String,
    /// Its lane.
    pub lane: String,
    /// Higher runs first.
    pub priority: i64,
    /// Its state.
    pub state: JobState,
    /// The typed task.
    pub params: Value,
    /// The protocol's request object.
    pub request: Value,
    /// The last progress reported.
    pub progress: Option<Value>,
    /// What a resumed attempt needs (items done, last epoch...).
    pub checkpoint: Option<Value>,
    /// The last [`DETAILS_KEEP`] log lines.
    pub details: Vec<String>,
    /// The result of the last run that ended done.
    pub result: Option<Value>,
    /// The error of the last run that ended in error.
    pub error: Option<String>,
    /// Who asked.
    pub owner: Option<String>,
    /// The runner holding the lease (`None` when none).
    pub lease_owner: Option<String>,
    /// When the lease runs out (ms).
    pub lease_until: Option<i64>,
    /// The last heartbeat (ms).
    pub heartbeat_at: Option<i64>,
    /// Attempts so far (claims).
    pub attempts: i64,
    /// A JSON array with one object per attempt (the newest [`HISTORY_KEEP`]):
    /// `{"attempt": n, "runner": "...", "started_at": ms, "ended_at": ms|null,
    /// "end": "done"|"error"|"stopped"|"lease expired"|null}`.
    pub history: Value,
    /// A stop was requested while it ran.
    pub cancel_requested: bool,
    /// Not claimed before this time (ms).
    pub not_before: Option<i64>,
    /// Periodic jobs: the period (ms).
    pub every_ms: Option<i64>,
    /// When it was inserted (ms).
    pub created_at: i64,
    /// When its first attempt started (ms).
    pub started_at: Option<i64>,
    /// When it ended (ms; for a periodic job, when its last run ended).
    pub finished_at: Option<i64>,
}

impl JobRow {
    /// Whether the row holds a live lease at `now_ms` (which makes its lane busy).
    pub fn lease_live(&self, now_ms: i64) -> bool {
        self.lease_owner.is_some() && self.lease_until.is_some_and(|t| t >= now_ms)
    }
}

/// Fields a runner writes with a heartbeat or at the end; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobUpdate {
    /// The progress (JSON).
    pub progress: Option<Value>,
    /// What a resumed attempt needs (JSON).
    pub checkpoint: Option<Value>,
    /// The log lines (only the last [`DETAILS_KEEP`] are kept).
    pub details: Option<Vec<String>>,
}

/// What [`Datastore::heartbeat_job`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// `false`: the runner no longer holds the job (another runner took it, or it was
    /// released): it must abandon the work without writing anything more.
    pub owned: bool,
    /// A stop was requested: the runner should wind down and finish the job.
    pub cancel_requested: bool,
}

/// How a run ended, for [`Datastore::finish_job`].
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Ended with this result.
    Done(Value),
    /// Failed with this error.
    Error(String),
    /// Stopped (cancelled) before the end.
    Stopped,
}

/// Every column, in the order [`job_of_row`] reads them.
pub(crate) const COLUMNS: &str =
    "seq, id, kind, lane, priority, state, params, request, progress, \
     checkpoint, details, result, error, owner, lease_owner, lease_until, heartbeat_at, attempts, \
     history, cancel_requested, not_before, every_ms, created_at, started_at, finished_at";

/// A nullable JSON column (`null` reads as `None`).
fn json_opt(r: &AnyRow, col: &str) -> Result<Option<Value>> {
    let text: Option<String> = r.try_get(col)?;
    Ok(text
        .map(|t| serde_json::from_str::<Value>(&t))
        .transpose()?
        .filter(|v| !v.is_null()))
}

/// Reads a row selected with [`COLUMNS`].
pub(crate) fn job_of_row(r: &AnyRow) -> Result<JobRow> {
    let state: String = r.try_get("state")?;
    Ok(JobRow {
        seq: r.try_get("seq")?,
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        lane: r.try_get("lane")?,
        priority: r.try_get("priority")?,
        state: JobState::parse(&state)
            .ok_or_else(|| DatastoreError::Invalid(format!("job state {state:?}")))?,
        params: serde_json::from_str(&r.try_get::<String, _>("params")?)?,
        request: serde_json::from_str(&r.try_get::<String, _>("request")?)?,
        progress: json_opt(r, "progress")?,
        checkpoint: json_opt(r, "checkpoint")?,
        details: serde_json::from_str(&r.try_get::<String, _>("details")?)?,
        result: json_opt(r, "result")?,
        error: r.try_get("error")?,
        owner: r.try_get("owner")?,
        lease_owner: r.try_get("lease_owner")?,
        lease_until: r.try_get("lease_until")?,
        heartbeat_at: r.try_get("heartbeat_at")?,
        attempts: r.try_get("attempts")?,
        history: serde_json::from_str(&r.try_get::<String, _>("history")?)?,
        cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
        not_before: r.try_get("not_before")?,
        every_ms: r.try_get("every_ms")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}
