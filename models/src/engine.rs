//! The engine actor: one OS thread owns the loaded networks (tch tensors are not `Sync`),
//! takes jobs from a two-level priority queue and answers through oneshot channels. HTTP
//! handlers only await answers; they never run torch code.
//!
//! * Networks load lazily per resolution and stay warm. Before each job the weights file's
//!   modification time is checked, so a new checkpoint (training) is picked up without a
//!   restart (hot reload).
//! * Interactive jobs go ahead of background (batch) jobs. While a background job runs,
//!   queued interactive jobs run between two of its windows, so an interactive request
//!   waits at most one window.
//! * A full queue is refused at once ([`ModelsError::QueueFull`]), never blocks; a stopped
//!   engine answers [`ModelsError::Unavailable`].
//! * A job that panics (libtorch answers a failed op such as an out-of-memory with a panic)
//!   fails alone with [`ModelsError::Panicked`]; the engine goes on with the next job
//!   (`engine/worker.rs`).
//! * The engine keeps its own record of that promise: a counter of the background windows it
//!   has run, and for every job a [`JobRecord`] (the counter when the job was queued, started
//!   and finished, and how many windows the running background job still had to run when it
//!   was queued), returned with the job's result.

use crate::bundle::{Bundle, Resolution};
use crate::device::Precision;
use crate::error::{ModelsError, Result};
use crate::pipeline::{McDropout, Segmentation, Uncertainty};
use crate::probability::{ClassProbability, VoxelBox};
use ferrolabel_imaging::Volume;
pub use queue::JobRecord;
use queue::{Queued, Queues};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;
use tch::Device;
use tokio::sync::oneshot;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Device the networks run on.
    pub device: Device,
    /// Intra-op threads for libtorch (set once, at start).
    pub threads: Option<i32>,
    /// fp16 autocast around the network on CUDA (the bundle's `amp: true`).
    pub amp: bool,
    /// The precision of requests that name none ([`crate::device::check_precision`] must
    /// accept it on `device`; [`Engine::start`] checks).
    pub precision: Precision,
    /// Jobs that may wait; more are refused.
    pub queue_limit: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            threads: None,
            amp: true,
            precision: Precision::Fp32,
            queue_limit: 8,
        }
    }
}

/// Who is waiting for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A user waiting at a viewer (`/infer`).
    Interactive,
    /// Batch inference, scoring.
    Background,
}

/// One segmentation request.
#[derive(Debug, Clone)]
pub struct InferRequest {
    /// The image.
    pub volume: Arc<Volume>,
    /// Which weights and spacing.
    pub resolution: Resolution,
    /// Sliding-window overlap (default: the bundle's).
    pub sw_overlap: Option<f64>,
    /// Windows per network call (default: the bundle's).
    pub sw_batch_size: Option<usize>,
    /// Network precision (default: the engine's [`EngineOptions::precision`]); a precision
    /// the device cannot run fast fails the job with [`ModelsError::Invalid`].
    pub precision: Option<Precision>,
    /// Queue priority.
    pub priority: Priority,
    /// Set to cancel the job between two windows.
    pub cancel: Arc<AtomicBool>,
}

/// One Monte Carlo dropout request (epistemic uncertainty of an image).
#[derive(Debug, Clone)]
pub struct UncertaintyRequest {
    /// The image.
    pub volume: Arc<Volume>,
    /// Which weights.
    pub resolution: Resolution,
    /// Samples, spacing, overlap and seed.
    pub mc: McDropout,
    /// Queue priority.
    pub priority: Priority,
    /// Set to cancel the job between two forward passes.
    pub cancel: Arc<AtomicBool>,
}

/// One class-probability request: the softmax of one class on a box of the input grid, from
/// the windows covering that box only (see [`crate::probability`]).
#[derive(Debug, Clone)]
pub struct ProbabilityRequest {
    /// The image.
    pub volume: Arc<Volume>,
    /// Which weights and spacing.
    pub resolution: Resolution,
    /// The box of the input grid, `[lo, hi)` per axis.
    pub roi: VoxelBox,
    /// The class (channel) index.
    pub class: usize,
    /// Queue priority.
    pub priority: Priority,
    /// Set to cancel the job between two windows.
    pub cancel: Arc<AtomicBool>,
}

enum Job {
    Infer {
        req: InferRequest,
        reply: oneshot::Sender<Result<Segmentation>>,
    },
    Uncertainty {
        req: UncertaintyRequest,
        reply: oneshot::Sender<Result<Uncertainty>>,
    },
    Load {
        res: Resolution,
        reply: oneshot::Sender<Result<()>>,
    },
    Probability {
        req: ProbabilityRequest,
        reply: oneshot::Sender<Result<ClassProbability>>,
    },
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

struct Shared {
    queues: Mutex<Queues>,
    cv: Condvar,
    running: AtomicUsize,
    completed: AtomicUsize,
    started: AtomicU64,
}

/// Snapshot of the engine's state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineStatus {
    /// Jobs waiting.
    pub queued: usize,
    /// Jobs running (nested interactive jobs count too).
    pub running: usize,
    /// Jobs finished since start.
    pub completed: usize,
    /// Background windows run since start (see [`JobRecord`]).
    pub background_windows: u64,
}

/// Handle to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    bundle: Arc<Bundle>,
    opts: EngineOptions,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("bundle", &self.bundle.root)
            .finish()
    }
}

impl Engine {
    /// Starts the engine thread for `bundle`.
    pub fn start(bundle: Bundle, opts: EngineOptions) -> Result<Engine> {
        crate::device::check_precision(opts.precision, opts.device)?;
        if let Some(t) = opts.threads {
            tch::set_num_threads(t);
        }
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            cv: Condvar::new(),
            running: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            started: AtomicU64::new(0),
        });
        let bundle = Arc::new(bundle);
        worker::spawn(bundle.clone(), opts.clone(), shared.clone())?;
        Ok(Engine {
            shared,
            bundle,
            opts,
        })
    }

    /// The bundle this engine serves.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The engine's settings.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Queues a job and returns the receiver of its answer.
    pub fn submit(&self, req: InferRequest) -> Result<oneshot::Receiver<Result<Segmentation>>> {
        let (tx, rx) = oneshot::channel();
        let priority = req.priority;
        self.enqueue(Job::Infer { req, reply: tx }, priority)?;
        Ok(rx)
    }

    /// Queues a Monte Carlo dropout job and waits for its answer (async).
    pub async fn uncertainty(&self, req: UncertaintyRequest) -> Result<Uncertainty> {
        let (tx, rx) = oneshot::channel();
        let priority = req.priority;
        self.enqueue(Job::Uncertainty { req, reply: tx }, priority)?;
        rx.await
            .map_err(|_| ModelsError::Unavailable("the engine thread has stopped".into()))?
    }

    /// Queues a class-probability job and waits for its answer (async).
    pub async fn probability(&self, req: ProbabilityRequest) -> Result<ClassProbability> {
        let (tx, rx) = oneshot::channel();
        let priority = req.priority;
        self.enqueue(Job::Probability { req, reply: tx }, priority)?;
        rx.await
            .map_err(|_| ModelsError::Unavailable("the engine thread has stopped".into()))?
    }

    /// The modification time of the weights file of `res` (`None` if missing): results
    /// computed before it are stale.
    pub fn weights_mtime(&self, res: Resolution) -> Option<SystemTime> {
        mtime(&self.bundle.weights_path(res))
    }

    fn enqueue(&self, job: Job, priority: Priority) -> Result<()> {
        let mut q = self
            .shared
            .queues
            .lock()
            .map_err(|_| ModelsError::Unavailable("the engine queue is poisoned".into()))?;
        if q.shutdown {
            return Err(ModelsError::Unavailable(
                "the engine is shutting down".into(),
            ));
        }
        let waiting = q.interactive.len() + q.background.len();
        if waiting >= self.opts.queue_limit {
            return Err(ModelsError::QueueFull {
                waiting,
                limit: self.opts.queue_limit,
            });
        }
        let queued = Queued {
            job,
            queued_at: q.background_windows,
            background_windows_left: q.background_total.saturating_sub(q.background_done),
        };
        match priority {
            Priority::Interactive => q.interactive.push_back(queued),
            Priority::Background => q.background.push_back(queued),
        }
        drop(q);
        self.shared.cv.notify_one();
        Ok(())
    }

    /// Loads (or reloads, if the file changed) the weights of a resolution and waits.
    pub fn preload_blocking(&self, res: Resolution) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Job::Load { res, reply: tx }, Priority::Interactive)?;
        rx.blocking_recv()
            .map_err(|_| ModelsError::Unavailable("the engine thread has stopped".into()))?
    }

    /// Loads the weights of a resolution (async).
    pub async fn preload(&self, res: Resolution) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Job::Load { res, reply: tx }, Priority::Interactive)?;
        rx.await
            .map_err(|_| ModelsError::Unavailable("the engine thread has stopped".into()))?
    }

    /// Runs a job and waits for its answer (async).
    pub async fn infer(&self, req: InferRequest) -> Result<Segmentation> {
        let rx = self.submit(req)?;
        rx.await
            .map_err(|_| ModelsError::Unavailable("the engine thread has stopped".into()))?
    }

    /// Runs a job and waits for its answer (blocking; for the CLI and jobs).
    pub fn infer_blocking(&self, req: InferRequest) -> Result<Segmentation> {
        let rx = self.submit(req)?;
        rx.blocking_recv()
            .map_err(|_| ModelsError::Unavailable("the engine thread has stopped".into()))?
    }

    /// Queue and run counts.
    pub fn status(&self) -> EngineStatus {
        let (queued, background_windows) = self
            .shared
            .queues
            .lock()
            .map(|q| {
                (
                    q.interactive.len() + q.background.len(),
                    q.background_windows,
                )
            })
            .unwrap_or((0, 0));
        EngineStatus {
            queued,
            running: self.shared.running.load(Ordering::SeqCst),
            completed: self.shared.completed.load(Ordering::SeqCst),
            background_windows,
        }
    }

    /// Stops the thread after the queued jobs.
    pub fn shutdown(&self) {
        if let Ok(mut q) = self.shared.queues.lock() {
            q.shutdown = true;
        }
        self.shared.cv.notify_all();
    }
}

mod queue;
#[cfg(test)]
mod tests;
mod worker;
