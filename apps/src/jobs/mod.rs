//! The job scheduler: every background job of the server in one place (docs/jobs.md).
//!
//! * **Jobs are rows** of the datastore's `jobs` table (kind, lane, priority, state, params,
//!   progress, checkpoint, result or error, owner, lease, attempts and their history), so a
//!   restart forgets nothing and `GET /tasks/` can show the queue.
//! * **One runner per process** ([`runner`]), on its own thread and tokio runtime, claims jobs
//!   in priority order (one at a time per lane: a lane per kind, as MONAI Label runs one task of
//!   a kind at a time, and one per periodic job), runs each under `catch_unwind`, and keeps its
//!   lease alive with a heartbeat. A job whose runner died is taken up again when its lease runs
//!   out, as a new attempt that continues from the job's checkpoint.
//! * **Job code** sees a [`JobHandle`]; the typed tasks are in [`spec`], their submission
//!   (validation first, so that bad requests are refused before a job exists) in [`submit`],
//!   and the JSON views (the protocol's task object plus queue position and estimates) in
//!   [`view`].
//! * **Interactive first**: jobs run their windows on the engine at background priority, so
//!   an interactive `/infer` goes ahead of them (the engine's own guarantee, untouched here).

mod handle;
mod runner;
pub mod spec;
pub mod submit;
pub mod view;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrolabel_datastore::{Datastore, JobState, NewJob};
use serde_json::Value;
use tokio::sync::Notify;

pub use handle::{JobHandle, MAX_DETAILS};
pub use spec::{PeriodicFn, TaskSpec};
pub use submit::Submit;

use crate::error::{AppError, Result};
use crate::WholeBodyApp;

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// How long a claimed job stays ours without a heartbeat; a job whose runner died is taken
    /// up again this long after its last heartbeat.
    pub lease: Duration,
    /// Jobs this process runs at once (over all lanes).
    pub max_running: usize,
    /// Whether this process runs submitted jobs (batch inference, scoring, training); `false`
    /// (`start_server --no-jobs`): it runs only its periodic jobs and leaves the others to the
    /// workers on the same database.
    pub run_submitted: bool,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            lease: Duration::from_secs(30),
            max_running: 4,
            run_submitted: true,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new job id (a random UUID v4, as MONAI Label's task ids).
pub fn new_id() -> String {
    use rand::Rng;
    let mut b: [u8; 16] = rand::thread_rng().gen();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Errors of failed jobs kept for `run_sync` callers in this process (their status code).
const KEPT_ERRORS: usize = 64;

pub(crate) struct Inner {
    pub(crate) app: Arc<WholeBodyApp>,
    pub(crate) ds: Datastore,
    pub(crate) runner_id: String,
    pub(crate) opts: SchedulerOptions,
    /// Jobs running here, with their lanes.
    live: Mutex<Vec<(String, Arc<handle::Live>)>>,
    periodic: Mutex<HashMap<String, PeriodicFn>>,
    pub(crate) wake: Notify,
    /// Notified when the runner has taken a job.
    pub(crate) claimed: Notify,
    pub(crate) ended: Notify,
    pub(crate) shutting_down: AtomicBool,
    errors: Mutex<Vec<(String, Arc<AppError>)>>,
}

impl Inner {
    pub(crate) fn lease_ms(&self) -> i64 {
        self.opts.lease.as_millis().max(1) as i64
    }

    fn live_list(&self) -> std::sync::MutexGuard<'_, Vec<(String, Arc<handle::Live>)>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn live_ids(&self) -> Vec<String> {
        self.live_list().iter().map(|(_, l)| l.id.clone()).collect()
    }

    pub(crate) fn live_lanes(&self) -> Vec<String> {
        self.live_list()
            .iter()
            .map(|(lane, _)| lane.clone())
            .collect()
    }

    pub(crate) fn live(&self, id: &str) -> Option<Arc<handle::Live>> {
        self.live_list()
            .iter()
            .find(|(_, l)| l.id == id)
            .map(|(_, l)| l.clone())
    }

    pub(crate) fn add_live(&self, lane: &str, live: Arc<handle::Live>) {
        self.live_list().push((lane.to_string(), live));
    }

    pub(crate) fn remove_live(&self, id: &str) {
        self.live_list().retain(|(_, l)| l.id != id);
    }

    pub(crate) fn periodic_fn(&self, name: &str) -> Option<PeriodicFn> {
        self.periodic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Whether this process has the code of the periodic job of `lane`.
    pub(crate) fn has_periodic_lane(&self, lane: &str) -> bool {
        self.periodic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .any(|n| periodic_lane(n) == lane)
    }

    pub(crate) fn remember_error(&self, id: &str, error: AppError) {
        let mut e = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if e.len() == KEPT_ERRORS {
            e.remove(0);
        }
        e.push((id.to_string(), Arc::new(error)));
    }

    fn error_of(&self, id: &str) -> Option<Arc<AppError>> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, e)| e.clone())
    }
}

/// The scheduler of one server process; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("runner", &self.inner.runner_id)
            .finish()
    }
}

/// The lane of a periodic job.
fn periodic_lane(name: &str) -> String {
    format!("periodic:{name}")
}

impl Scheduler {
    /// Opens the scheduler of this process on `ds`: registers the periodic jobs `periodic`
    /// (name, interval, work) and starts the runner thread. Jobs left queued or running by an
    /// earlier process are taken up (a running one once its lease has run out).
    pub async fn start(
        app: Arc<WholeBodyApp>,
        ds: Datastore,
        opts: SchedulerOptions,
        periodic: Vec<(String, Duration, PeriodicFn)>,
    ) -> Result<Scheduler> {
        let now = now_ms();
        let mut fns = HashMap::new();
        for (name, every, f) in periodic {
            ds.upsert_periodic(
                &NewJob {
                    id: periodic_lane(&name),
                    kind: spec::PERIODIC.into(),
                    lane: periodic_lane(&name),
                    priority: 0,
                    params: serde_json::to_value(TaskSpec::Periodic { name: name.clone() })
                        .map_err(|e| AppError::Task(e.to_string()))?,
                    request: serde_json::json!({"name": name, "every_s": every.as_secs_f64()}),
                    owner: None,
                    not_before: Some(now + every.as_millis() as i64),
                    every_ms: Some(every.as_millis().max(1) as i64),
                },
                now,
            )
            .await?;
            fns.insert(name, f);
        }
        let inner = Arc::new(Inner {
            app,
            ds,
            runner_id: format!("{}@{}", std::process::id(), &new_id()[..8]),
            opts,
            live: Mutex::new(Vec::new()),
            periodic: Mutex::new(fns),
            wake: Notify::new(),
            claimed: Notify::new(),
            ended: Notify::new(),
            shutting_down: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("scheduler")
            .enable_all()
            .build()
            .map_err(AppError::Io)?;
        let runner = inner.clone();
        let thread = std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || {
                rt.block_on(runner::run(runner));
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .map_err(AppError::Io)?;
        tracing::info!(
            runner = %inner.runner_id,
            lease_s = inner.opts.lease.as_secs_f64(),
            submitted_jobs = inner.opts.run_submitted,
            "job scheduler started"
        );
        Ok(Scheduler {
            inner,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// This process's runner id (as the jobs' `history` names it).
    pub fn runner_id(&self) -> &str {
        &self.inner.runner_id
    }

    /// Stops taking jobs, hands the running ones back (they are cancelled here and queued
    /// again, so the next start continues them) and waits for the runner to end.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        for (_, l) in self.inner.live_list().iter() {
            l.cancel.store(true, Ordering::SeqCst);
        }
        self.inner.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = ferrolabel_datastore::blocking(move || {
                Ok::<_, ferrolabel_datastore::TaskFailed>(t.join())
            })
            .await;
        }
    }

    /// The row of job `id` (404 when unknown).
    async fn row(&self, id: &str) -> Result<ferrolabel_datastore::JobRow> {
        self.inner
            .ds
            .get_job(id)
            .await?
            .ok_or_else(|| AppError::JobNotFound(id.to_string()))
    }

    /// Waits until job `id` has ended and its lane is free: `Ok(result)` when it is done,
    /// [`AppError::Cancelled`] when it was stopped, its error otherwise.
    pub async fn wait(&self, id: &str) -> Result<Value> {
        loop {
            let ended = self.inner.ended.notified();
            let row = self.row(id).await?;
            if row.state.is_ended() && row.lease_owner.is_none() {
                return match row.state {
                    JobState::Done => Ok(row.result.unwrap_or(Value::Null)),
                    JobState::Stopped => Err(AppError::Cancelled),
                    _ => {
                        let cause = self.inner.error_of(id);
                        let detail = match &cause {
                            Some(e) => e.to_string(),
                            None => row.error.unwrap_or_else(|| "the job failed".into()),
                        };
                        Err(AppError::JobFailed { detail, cause })
                    }
                };
            }
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Stops job `id`: a queued job never runs, a running one is cancelled (between two
    /// windows, images or training steps). Answers the task object; 404 for an unknown id, 409
    /// for a job that has already ended.
    pub async fn cancel(&self, id: &str) -> Result<Value> {
        let before = self.row(id).await?;
        if before.state.is_ended() {
            return Err(AppError::JobEnded(format!(
                "task {id} has already ended ({})",
                view::status(before.state)
            )));
        }
        self.stop_row(id).await?;
        self.task(id).await
    }

    async fn stop_row(&self, id: &str) -> Result<()> {
        self.inner.ds.request_stop(id, now_ms()).await?;
        if let Some(l) = self.inner.live(id) {
            l.log("stop requested".into());
            l.request_stop();
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// `DELETE /<kind>/`: stops the running job of `kind`; the stopped task, or `None` when
    /// none runs.
    pub async fn stop_kind(&self, kind: &str) -> Result<Option<Value>> {
        let Some(row) = self.running_row(kind).await? else {
            return Ok(None);
        };
        self.stop_row(&row.id).await?;
        Ok(Some(self.task(&row.id).await?))
    }

    async fn running_row(&self, kind: &str) -> Result<Option<ferrolabel_datastore::JobRow>> {
        Ok(self
            .inner
            .ds
            .list_jobs(Some(kind), 1000)
            .await?
            .into_iter()
            .rev()
            .find(|r| r.state == JobState::Running))
    }

    /// The task object of job `id` (404 when unknown).
    pub async fn task(&self, id: &str) -> Result<Value> {
        let rows = self.inner.ds.list_jobs(None, view::LIST_LIMIT).await?;
        if let Some(v) = self.views(rows).await?.into_iter().find(|v| v["id"] == id) {
            return Ok(v);
        }
        let row = self.row(id).await?;
        Ok(view::task_object(
            &row,
            self.inner.live(id).as_deref(),
            None,
        ))
    }

    /// `GET /<kind>/?check_if_running=true`: the running task of `kind`, if any (a queued one
    /// does not count, as in MONAI Label).
    pub async fn running(&self, kind: &str) -> Result<Option<Value>> {
        match self.running_row(kind).await? {
            Some(r) => Ok(Some(self.task(&r.id).await?)),
            None => Ok(None),
        }
    }

    /// Every task of `kind` (oldest first), or of every kind; `state` keeps one state only.
    pub async fn list(&self, kind: Option<&str>, state: Option<JobState>) -> Result<Vec<Value>> {
        let rows = self.inner.ds.list_jobs(kind, view::LIST_LIMIT).await?;
        let mut all = self.views(rows).await?;
        if let Some(s) = state {
            all.retain(|v| v["state"] == s.as_str());
        }
        Ok(all)
    }

    /// Task objects for `rows`, with queue positions and estimates.
    async fn views(&self, rows: Vec<ferrolabel_datastore::JobRow>) -> Result<Vec<Value>> {
        let mut rates = HashMap::new();
        for kind in [spec::BATCH_INFER, spec::SCORING, spec::TRAIN] {
            let done = self.inner.ds.last_finished(kind, 5).await?;
            if let Some(r) = view::rate_of_finished(&done) {
                rates.insert(kind.to_string(), r);
            }
        }
        let live: HashMap<String, Arc<handle::Live>> = self
            .inner
            .live_list()
            .iter()
            .map(|(_, l)| (l.id.clone(), l.clone()))
            .collect();
        Ok(view::with_queue(&rows, &live, &rates, now_ms()))
    }
}
