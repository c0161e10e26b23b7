//! The runner: one per process, on its own thread and tokio runtime (never on the HTTP
//! workers). It claims jobs from the `jobs` table in priority order while it has room, runs each
//! one under `catch_unwind` (a panic fails that job, not the runner), keeps each lease alive with
//! a heartbeat that also flushes progress, details and checkpoint and picks up stop requests,
//! and records the outcome.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferrolabel_datastore::{JobOutcome, JobRow, JobUpdate};
use futures_util::FutureExt;
use serde_json::Value;

use super::handle::{JobHandle, Live};
use super::spec::{execute, TaskSpec, PERIODIC, SUBMITTED_KINDS};
use super::{now_ms, Inner};
use crate::error::AppError;

/// How often the runner looks for due work when nothing woke it (periodic jobs, leases of
/// dead runners running out).
const POLL: Duration = Duration::from_millis(500);

/// The longest time between two heartbeats, in ms: a stop requested on another server reaches
/// the job within it, and other servers see its progress that fresh.
const HEARTBEAT_MAX_MS: i64 = 2000;

/// Attempts ended by a dead server (a lapsed lease) after which a job fails instead of being
/// taken up again: the job itself may be what kills the server. Hand-backs at a graceful
/// shutdown (`"released"`) do not count.
const MAX_CRASHES: usize = 5;

/// The runner loop; returns once shutdown was requested and every job here has ended.
pub(crate) async fn run(inner: Arc<Inner>) {
    loop {
        if inner.shutting_down.load(Ordering::SeqCst) {
            break;
        }
        claim_while_room(&inner).await;
        let woken = inner.wake.notified();
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    // let the jobs here wind down (their cancel flags are set) before the runtime goes
    while !inner.live_ids().is_empty() {
        let ended = inner.ended.notified();
        tokio::select! {
            _ = ended => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

async fn claim_while_room(inner: &Arc<Inner>) {
    loop {
        let running = inner.live_ids();
        if running.len() >= inner.opts.max_running {
            return;
        }
        let Some(exclude) = excluded_lanes(inner).await else {
            return;
        };
        let claimed = inner
            .ds
            .claim_job(&inner.runner_id, inner.lease_ms(), now_ms(), &exclude)
            .await;
        match claimed {
            Ok(Some(row)) => {
                start(inner, row);
                inner.claimed.notify_waiters();
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a job");
                return;
            }
        }
    }
}

/// The lanes this process must not claim from: the lanes of the jobs it runs (never take up
/// again a job still running here, after a heartbeat that came too late), the periodic jobs
/// registered by other processes that it has no code for, and with `run_submitted` off the
/// submitted kinds (workers run them). `None` when the table cannot be read.
async fn excluded_lanes(inner: &Inner) -> Option<Vec<String>> {
    let mut exclude: Vec<String> = inner.live_lanes();
    if !inner.opts.run_submitted {
        exclude.extend(SUBMITTED_KINDS.iter().map(|k| k.to_string()));
    }
    match inner.ds.list_jobs(Some(PERIODIC), 10_000).await {
        Ok(rows) => exclude.extend(
            rows.into_iter()
                .filter(|r| !inner.has_periodic_lane(&r.lane))
                .map(|r| r.lane),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the periodic jobs");
            return None;
        }
    }
    Some(exclude)
}

/// Starts a claimed job on the runtime.
fn start(inner: &Arc<Inner>, row: JobRow) {
    let live = Arc::new(Live::new(
        row.id.clone(),
        row.kind.clone(),
        row.attempts,
        row.details.clone(),
        row.progress.clone(),
        row.checkpoint.clone(),
    ));
    let handle = JobHandle { live: live.clone() };
    let ends: Vec<&str> = row
        .history
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("end")?.as_str())
        .collect();
    let crashes = ends.iter().filter(|e| **e == "lease expired").count();
    if row.attempts > 1 {
        let why = match ends.last() {
            Some(&"released") => "its server was shut down",
            _ => "its server died: the lease ran out",
        };
        handle.log(format!("attempt {}: taken up again ({why})", row.attempts));
    } else {
        handle.log(format!(
            "{} task started",
            super::spec::kind_title(&row.kind)
        ));
    }
    inner.add_live(&row.lane, live.clone());
    let inner = inner.clone();
    let span = tracing::info_span!("job", id = %row.id, kind = %row.kind, attempt = row.attempts);
    let job = async move {
        let beat = tokio::spawn(heartbeat(inner.clone(), live.clone()));
        let outcome = match serde_json::from_value::<TaskSpec>(row.params.clone()) {
            // a job whose process died this often is what kills it: stop trying
            Ok(_) if crashes >= MAX_CRASHES => Err(AppError::Task(format!(
                "given up: the server died during {crashes} attempts of this job"
            ))),
            Ok(spec) => {
                let periodic = match &spec {
                    TaskSpec::Periodic { name } => inner.periodic_fn(name),
                    _ => None,
                };
                let app = inner.app.clone();
                let ds = inner.ds.clone();
                let work = execute(&app, &ds, &spec, &handle, periodic);
                match AssertUnwindSafe(work).catch_unwind().await {
                    Ok(r) => r,
                    Err(panic) => Err(AppError::Task(format!(
                        "the job panicked: {}",
                        panic_message(&panic)
                    ))),
                }
            }
            Err(e) => Err(AppError::Task(format!("unreadable job: {e}"))),
        };
        beat.abort();
        finish(&inner, &live, outcome).await;
    };
    tokio::spawn(tracing::Instrument::instrument(job, span));
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// What changed since the last flush (and clears the flag).
fn take_update(live: &Live, all: bool) -> Option<JobUpdate> {
    let mut s = live.lock();
    if !s.dirty && !all {
        return None;
    }
    s.dirty = false;
    Some(JobUpdate {
        progress: s.progress.clone(),
        checkpoint: s.checkpoint.clone(),
        details: Some(s.details.iter().cloned().collect()),
    })
}

/// Keeps the lease of `live` while it runs: every third of the lease (at most every
/// [`HEARTBEAT_MAX`]), writes what changed, and turns a stop requested elsewhere (another
/// server's `DELETE`, through `cancel_requested`) or a lost lease into the cancel flag.
async fn heartbeat(inner: Arc<Inner>, live: Arc<Live>) {
    let every = Duration::from_millis((inner.lease_ms() / 3).clamp(50, HEARTBEAT_MAX_MS) as u64);
    loop {
        tokio::time::sleep(every).await;
        let update = take_update(&live, false).unwrap_or_default();
        match inner
            .ds
            .heartbeat_job(
                &live.id,
                &inner.runner_id,
                inner.lease_ms(),
                now_ms(),
                &update,
            )
            .await
        {
            Ok(hb) if !hb.owned => {
                tracing::warn!(job = %live.id, "lease lost: abandoning the job");
                live.cancel.store(true, Ordering::SeqCst);
                return;
            }
            Ok(hb) => {
                if hb.cancel_requested {
                    live.request_stop();
                }
            }
            Err(e) => {
                // keep what changed for the next beat
                live.lock().dirty = true;
                tracing::warn!(job = %live.id, error = %e, "heartbeat failed");
            }
        }
    }
}

/// Records the outcome of `live`'s run and frees its place.
async fn finish(inner: &Arc<Inner>, live: &Arc<Live>, outcome: crate::Result<Value>) {
    let kind = super::spec::kind_title(&live.kind);
    let shutting_down = inner.shutting_down.load(Ordering::SeqCst);
    let state = match &outcome {
        Ok(_) => JobOutcome::Done(Value::Null),
        Err(AppError::Cancelled) => JobOutcome::Stopped,
        Err(e) => JobOutcome::Error(e.to_string()),
    };
    let state = match (state, outcome) {
        (JobOutcome::Done(_), Ok(v)) => {
            live.log(format!("{kind} task done"));
            JobOutcome::Done(v)
        }
        (JobOutcome::Stopped, _) => {
            live.log(format!("{kind} task stopped"));
            JobOutcome::Stopped
        }
        (s, Err(e)) => {
            live.log(format!("{kind} task failed: {e}"));
            inner.remember_error(&live.id, e);
            s
        }
        (s, Ok(_)) => s,
    };
    let update = take_update(live, true).unwrap_or_default();
    let now = now_ms();
    let result = if shutting_down && matches!(state, JobOutcome::Stopped) && !live.stop_requested()
    {
        // a server shutting down hands the job back: the next start takes it up at once
        inner
            .ds
            .release_job(&live.id, &inner.runner_id, &update, now)
            .await
            .map(|_| ())
    } else {
        inner
            .ds
            .finish_job(&live.id, &inner.runner_id, state, &update, now)
            .await
            .map(|_| ())
    };
    if let Err(e) = result {
        tracing::warn!(job = %live.id, error = %e, "cannot record the end of a job");
    }
    inner.remove_live(&live.id);
    inner.ended.notify_waiters();
    inner.wake.notify_one();
}
