//! What a job does: the typed task stored in a job's `params` column, and the code that runs
//! each kind. A task carries everything a later attempt needs (a batch's image list is fixed
//! when the batch is submitted), so a job taken up again after a restart does the same work.

use std::sync::Arc;

use ferrolabel_datastore::blocking;
use ferrolabel_datastore::Datastore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{AppError, Result};
use crate::jobs::JobHandle;
use crate::scoring::{self, ScoringMethod};
use crate::{batch, WholeBodyApp};

/// Kind of the training jobs (`/train/`).
pub const TRAIN: &str = "train";
/// Kind of the batch-inference jobs (`/batch/infer`).
pub const BATCH_INFER: &str = "batch_infer";
/// Kind of the scoring jobs (`/scoring/`).
pub const SCORING: &str = "scoring";
/// Kind of the periodic jobs (sweeps, PACS sync).
pub const PERIODIC: &str = "periodic";
/// The kinds clients submit (each its own lane), which `start_server --no-jobs` leaves to
/// the workers.
pub const SUBMITTED_KINDS: [&str; 3] = [TRAIN, BATCH_INFER, SCORING];

/// The protocol's capitalised kind name, used in its messages (`Train`, `Batch_infer`,
/// `Scoring`).
pub fn kind_title(kind: &str) -> String {
    let mut c = kind.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A job's task, stored as JSON in its row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum TaskSpec {
    /// Segment `images` (fixed at submission) with `model`.
    BatchInfer {
        /// The model.
        model: String,
        /// The images, in order.
        images: Vec<String>,
        /// The request's params (infer options, `save_label`, `label_tag`...).
        params: Map<String, Value>,
    },
    /// Run scoring methods one after another.
    Scoring {
        /// The methods' names.
        methods: Vec<String>,
        /// `POST /scoring/` (every method): a failing method is logged, not fatal, and the
        /// result is `{method: result}`.
        all: bool,
        /// The request's params.
        params: Map<String, Value>,
    },
    /// Train the model on the datastore's `final` labels.
    Train {
        /// The trainer options.
        params: Map<String, Value>,
    },
    /// A periodic job registered by the server under `name`.
    Periodic {
        /// The registered name.
        name: String,
    },
}

impl TaskSpec {
    /// The job kind (one lane per kind, as MONAI Label runs one task of a kind at a time).
    pub fn kind(&self) -> &'static str {
        match self {
            TaskSpec::BatchInfer { .. } => BATCH_INFER,
            TaskSpec::Scoring { .. } => SCORING,
            TaskSpec::Train { .. } => TRAIN,
            TaskSpec::Periodic { .. } => PERIODIC,
        }
    }

    /// How many items the job works through (images, epochs), when known before it runs.
    pub fn items(&self) -> Option<usize> {
        match self {
            TaskSpec::BatchInfer { images, .. } => Some(images.len()),
            TaskSpec::Train { params } => Some(
                params
                    .get("max_epochs")
                    .and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
                    .unwrap_or(50) as usize,
            ),
            _ => None,
        }
    }
}

/// A periodic job's work.
pub type PeriodicFn = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value>> + Send>>
        + Send
        + Sync,
>;

/// Runs one attempt of `spec`.
pub(crate) async fn execute(
    app: &Arc<WholeBodyApp>,
    ds: &Datastore,
    spec: &TaskSpec,
    handle: &JobHandle,
    periodic: Option<PeriodicFn>,
) -> Result<Value> {
    match spec {
        TaskSpec::BatchInfer {
            model,
            images,
            params,
        } => {
            let plan = batch::BatchPlan::from_task(app, model, images, params)?;
            batch::run(app, ds, &plan, handle).await
        }
        TaskSpec::Scoring {
            methods,
            all,
            params,
        } => run_scoring(app, ds, methods, *all, params, handle).await,
        TaskSpec::Train { params } => {
            let pairs = crate::train::pairs_from_datalist(ds.datalist_local().await?);
            // every checkpoint that becomes active is recorded as a model version
            let (promote, registrar) =
                crate::versions::promoter(app.clone(), ds.clone(), handle.id()).await?;
            let (app, params, handle) = (app.clone(), params.clone(), handle.clone());
            let run = blocking(move || {
                app.trainer()
                    .run_promoting(&handle, &params, pairs, &promote)
            });
            let (out, ()) = tokio::join!(run, registrar);
            out
        }
        TaskSpec::Periodic { name } => match periodic {
            Some(f) => f().await,
            None => Err(AppError::Task(format!(
                "no periodic job {name:?} in this server"
            ))),
        },
    }
}

async fn run_scoring(
    app: &WholeBodyApp,
    ds: &Datastore,
    methods: &[String],
    all: bool,
    params: &Map<String, Value>,
    handle: &JobHandle,
) -> Result<Value> {
    // results of methods finished by an earlier attempt
    let mut results: Map<String, Value> = handle
        .checkpoint()
        .and_then(|c| c.get("results").and_then(Value::as_object).cloned())
        .unwrap_or_default();
    for name in methods {
        if results.contains_key(name) {
            handle.log(format!("scoring method {name}: done by an earlier attempt"));
            continue;
        }
        handle.log(format!("scoring method {name}"));
        let m = ScoringMethod::from_name(name)?;
        match scoring::run(app, ds, m, params, handle).await {
            Ok(r) => {
                results.insert(name.clone(), r);
                handle.save_checkpoint(json!({ "results": results }));
            }
            Err(AppError::Cancelled) => return Err(AppError::Cancelled),
            Err(e) if all => {
                handle.log(format!("{name} failed: {e}"));
                results.insert(name.clone(), Value::Null);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(if all {
        Value::Object(results)
    } else {
        results
            .into_iter()
            .next()
            .map(|(_, v)| v)
            .unwrap_or_default()
    })
}
