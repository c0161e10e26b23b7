//! Submitting jobs: each kind's request is checked first (so that a bad one is refused with its
//! 4xx before any job exists), then queued; with `run_sync` the caller waits for the outcome.
//!
//! MONAI Label's rules (docs/protocol.md §4): a kind already running answers 429 unless the
//! request says `enqueue=true`, in which case the job waits its turn (`SUBMITTED`); a queued
//! job does not count as running.

use std::time::Duration;

use ferrolabel_datastore::{JobState, NewJob};
use serde_json::{Map, Value};

use super::spec::{kind_title, TaskSpec};
use super::{new_id, now_ms, Scheduler};
use crate::error::{AppError, Result};
use crate::scoring::{self, ScoringMethod};
use crate::train::pairs_from_datalist;
use crate::{batch, MODEL_NAME};

/// How long a submission into a free lane waits for the runner to take the job, so that the
/// answer says `RUNNING` (a job queued behind another answers `SUBMITTED` at once).
const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// How often [`Scheduler::until_claimed`] looks at the table.
const CLAIM_POLL: Duration = Duration::from_millis(100);

/// How a job is submitted.
#[derive(Debug, Clone, Default)]
pub struct Submit {
    /// Queue behind a running job of the same kind instead of answering 429.
    pub enqueue: bool,
    /// Wait for the outcome and answer it instead of the task object.
    pub run_sync: bool,
    /// Who asked (the authenticated user, else the request's `client_id`).
    pub owner: Option<String>,
}

/// The `priority` param: an integer in -100..=100 (higher runs first), default 0.
fn priority(params: &Map<String, Value>) -> Result<i64> {
    match params.get("priority") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|p| (-100..=100).contains(p))
            .ok_or_else(|| {
                AppError::InvalidParams(format!("priority: {v} is not an integer in -100..=100"))
            }),
    }
}

impl Scheduler {
    /// `POST /batch/infer/{model}`: validates the request (404 unknown model or image, 422 bad
    /// params, 503 no weights), fixes the image list, and queues the batch.
    pub async fn batch_infer(
        &self,
        model: &str,
        images: &str,
        params: Map<String, Value>,
        opts: Submit,
    ) -> Result<Value> {
        let plan = batch::plan(&self.inner.app, &self.inner.ds, model, images, &params).await?;
        let mut request = params.clone();
        request.insert("model".into(), model.into());
        request.insert(
            "images".into(),
            Value::Array(plan.images.iter().cloned().map(Value::from).collect()),
        );
        let spec = TaskSpec::BatchInfer {
            model: model.to_string(),
            images: plan.images,
            params: params.clone(),
        };
        self.submit(spec, request, &params, opts).await
    }

    /// `POST /scoring/{method}` (`all = false`, one method) and `POST /scoring/` (`all = true`,
    /// every method, a failing one logged). 422/503 for bad options before a job exists.
    pub async fn scoring(
        &self,
        methods: Vec<ScoringMethod>,
        all: bool,
        params: Map<String, Value>,
        opts: Submit,
    ) -> Result<Value> {
        if !all {
            for m in &methods {
                scoring::validate(&self.inner.app, *m, &params)?;
            }
        }
        let names: Vec<String> = methods.iter().map(|m| m.name().to_string()).collect();
        let mut request = params.clone();
        request.insert("method".into(), names.join(",").into());
        let spec = TaskSpec::Scoring {
            methods: names,
            all,
            params: params.clone(),
        };
        self.submit(spec, request, &params, opts).await
    }

    /// `POST /train/{model}`: 404 unknown model, 422 bad options or no `final` label; then
    /// queues the training. With `run_sync` the answer is the run's result, or the task object
    /// when it did not end done.
    pub async fn train(
        &self,
        model: &str,
        params: Map<String, Value>,
        opts: Submit,
    ) -> Result<Value> {
        let app = &self.inner.app;
        if !app.has_model(model) {
            return Err(AppError::ModelNotFound(model.to_string()));
        }
        let pairs = pairs_from_datalist(self.inner.ds.datalist_local().await?);
        app.trainer().validate(&params, &pairs)?;
        let mut request = params.clone();
        request.insert("model".into(), MODEL_NAME.into());
        let spec = TaskSpec::Train {
            params: params.clone(),
        };
        let run_sync = opts.run_sync;
        let answer = self
            .submit(
                spec,
                request,
                &params,
                Submit {
                    run_sync: false,
                    ..opts
                },
            )
            .await?;
        if !run_sync {
            return Ok(answer);
        }
        let id = answer["id"].as_str().unwrap_or_default().to_string();
        match self.wait(&id).await {
            Ok(v) => Ok(v),
            Err(AppError::Cancelled | AppError::JobFailed { .. }) => self.task(&id).await,
            Err(e) => Err(e),
        }
    }

    /// Whether a job of `kind` is queued, running, or stopped but still winding down (then a
    /// new one has to wait: 429 without `enqueue`).
    async fn busy(&self, kind: &str) -> Result<bool> {
        let now = now_ms();
        Ok(self
            .inner
            .ds
            .list_jobs(Some(kind), super::view::LIST_LIMIT)
            .await?
            .iter()
            .any(|r| matches!(r.state, JobState::Queued | JobState::Running) || r.lease_live(now)))
    }

    /// Waits (at most [`CLAIM_WAIT`]) until job `id` has left the queue: woken by this
    /// process's runner, and looking every [`CLAIM_POLL`] for a runner elsewhere (a worker).
    async fn until_claimed(&self, id: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        loop {
            let claimed = self.inner.claimed.notified();
            let state = self.inner.ds.get_job(id).await?.map(|r| r.state);
            if state != Some(JobState::Queued) || tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::select! {
                _ = claimed => {}
                _ = tokio::time::sleep(CLAIM_POLL) => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
            }
        }
    }

    /// Queues `spec` (429 when its kind runs and `enqueue` is off) and answers the task object,
    /// or with `run_sync` the outcome (a stopped job answers its task object).
    async fn submit(
        &self,
        spec: TaskSpec,
        request: Map<String, Value>,
        params: &Map<String, Value>,
        opts: Submit,
    ) -> Result<Value> {
        let kind = spec.kind();
        let busy = self.busy(kind).await?;
        if busy && !opts.enqueue {
            return Err(AppError::Busy(format!(
                "{} Task is Already Running",
                kind_title(kind)
            )));
        }
        let owner = opts.owner.clone().or_else(|| {
            params
                .get("client_id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        });
        let job = NewJob {
            id: new_id(),
            kind: kind.to_string(),
            lane: kind.to_string(),
            priority: priority(params)?,
            params: serde_json::to_value(&spec).map_err(|e| AppError::Task(e.to_string()))?,
            request: Value::Object(request),
            owner,
            not_before: None,
            every_ms: None,
        };
        let row = self.inner.ds.insert_job(&job, now_ms()).await?;
        tracing::info!(job = %row.id, kind, "job queued");
        self.inner.wake.notify_one();
        if !opts.run_sync {
            if !busy {
                // its lane is free: answer once the runner has taken it (RUNNING)
                self.until_claimed(&row.id).await?;
            }
            return self.task(&row.id).await;
        }
        match self.wait(&row.id).await {
            Err(AppError::Cancelled) => self.task(&row.id).await,
            other => other,
        }
    }
}
