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
//! * A full queue is refused at once ([`ModelsError::Unavailable`]), never blocks.
//! * The engine keeps its own record of that promise: a counter of the background windows it
//!   has run, and for every job a [`JobRecord`] (the counter when the job was queued, started
//!   and finished, and how many windows the running background job still had to run when it
//!   was queued), returned with the job's result.

use crate::bundle::{Bundle, Resolution};
use crate::error::{ModelsError, Result};
use crate::inferer::{BlendMode, PadMode, SlidingWindow};
use crate::network::{weights, SegResNet};
use crate::pipeline::{mc_dropout_entropy, segment, McDropout, Segmentation, Uncertainty};
use crate::probability::{class_probability, ClassProbability, ProbabilitySettings, VoxelBox};
use ferrolabel_imaging::Volume;
pub use queue::JobRecord;
use queue::{Queued, Queues};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;
use tch::{nn, Device};
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
    /// Jobs that may wait; more are refused.
    pub queue_limit: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            threads: None,
            amp: true,
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

struct Loaded {
    net: SegResNet,
    _vs: nn::VarStore,
    mtime: Option<SystemTime>,
}

struct Worker {
    bundle: Arc<Bundle>,
    opts: EngineOptions,
    shared: Arc<Shared>,
    cache: RefCell<HashMap<Resolution, Rc<Loaded>>>,
}

fn job_priority(job: &Job) -> Priority {
    match job {
        Job::Infer { req, .. } => req.priority,
        Job::Uncertainty { req, .. } => req.priority,
        Job::Probability { req, .. } => req.priority,
        Job::Load { .. } => Priority::Interactive,
    }
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Worker {
    fn network(&self, res: Resolution) -> Result<Rc<Loaded>> {
        let path = self.bundle.weights_path(res);
        let current = mtime(&path);
        if current.is_none() {
            self.cache.borrow_mut().remove(&res);
            return Err(ModelsError::WeightsMissing(path.display().to_string()));
        }
        if let Some(l) = self.cache.borrow().get(&res) {
            if l.mtime == current {
                return Ok(l.clone());
            }
        }
        let _span = tracing::info_span!("load_weights", path = %path.display()).entered();
        let mut vs = nn::VarStore::new(self.opts.device);
        let net = SegResNet::new(&vs.root(), &self.bundle.network);
        weights::load_strict(&mut vs, &path)?;
        vs.freeze();
        let loaded = Rc::new(Loaded {
            net,
            _vs: vs,
            mtime: current,
        });
        self.cache.borrow_mut().insert(res, loaded.clone());
        tracing::info!(?res, "weights loaded");
        Ok(loaded)
    }

    /// The background-window counter (only this thread changes it).
    fn background_windows(&self) -> u64 {
        self.shared
            .queues
            .lock()
            .map(|q| q.background_windows)
            .unwrap_or(0)
    }

    /// Marks the start or the end of a background job: its windows are not known yet / any more.
    fn reset_background_progress(&self) {
        if let Ok(mut q) = self.shared.queues.lock() {
            q.background_done = 0;
            q.background_total = 0;
        }
    }

    /// Runs a job; `between_windows` when it runs inside a background job's observer.
    fn run(&self, queued: Queued, between_windows: bool) {
        self.shared.running.fetch_add(1, Ordering::SeqCst);
        let Queued {
            job,
            queued_at,
            background_windows_left,
        } = queued;
        let started_at = self.background_windows();
        let mut record = JobRecord {
            order: self.shared.started.fetch_add(1, Ordering::SeqCst) + 1,
            queued_at,
            started_at,
            finished_at: started_at,
            waited_windows: started_at.saturating_sub(queued_at),
            background_windows_left,
            between_windows,
        };
        let background = job_priority(&job) == Priority::Background;
        if background {
            self.reset_background_progress();
        }
        let answer: Box<dyn FnOnce()> = match job {
            Job::Infer { req, reply } => {
                let result = self.segment(&req).map(|mut s| {
                    record.finished_at = self.background_windows();
                    s.engine = record;
                    s
                });
                Box::new(move || {
                    let _ = reply.send(result);
                })
            }
            Job::Uncertainty { req, reply } => {
                let result = self.uncertainty(&req).map(|mut u| {
                    record.finished_at = self.background_windows();
                    u.engine = record;
                    u
                });
                Box::new(move || {
                    let _ = reply.send(result);
                })
            }
            Job::Probability { req, reply } => {
                let result = self.probability(&req).map(|mut p| {
                    record.finished_at = self.background_windows();
                    p.engine = record;
                    p
                });
                Box::new(move || {
                    let _ = reply.send(result);
                })
            }
            Job::Load { res, reply } => {
                let result = self.network(res).map(|_| ());
                Box::new(move || {
                    let _ = reply.send(result);
                })
            }
        };
        if background {
            self.reset_background_progress();
        }
        // counted before the answer goes out: a caller holding its answer sees the job completed
        self.shared.running.fetch_sub(1, Ordering::SeqCst);
        self.shared.completed.fetch_add(1, Ordering::SeqCst);
        answer();
    }

    fn segment(&self, req: &InferRequest) -> Result<Segmentation> {
        let span =
            tracing::info_span!("engine_infer", res = ?req.resolution, dims = ?req.volume.dims);
        let _g = span.enter();
        if req.cancel.load(Ordering::SeqCst) {
            return Err(ModelsError::Cancelled);
        }
        let loaded = self.network(req.resolution)?;
        let sw = SlidingWindow {
            roi: [96, 96, 96],
            overlap: req.sw_overlap.unwrap_or(self.bundle.sw_overlap),
            sw_batch_size: req
                .sw_batch_size
                .unwrap_or(self.bundle.sw_batch_size)
                .max(1),
            blend: BlendMode::Gaussian { sigma_scale: 0.125 },
            pad: PadMode::Replicate,
        };
        let mut observer = self.window_observer(req.priority, req.cancel.clone());
        segment(
            &loaded.net,
            &req.volume,
            req.resolution.pixdim(),
            &sw,
            self.opts.device,
            self.opts.amp,
            &mut observer,
        )
    }

    fn uncertainty(&self, req: &UncertaintyRequest) -> Result<Uncertainty> {
        let span = tracing::info_span!(
            "engine_mc_dropout",
            res = ?req.resolution,
            samples = req.mc.samples,
            dims = ?req.volume.dims
        );
        let _g = span.enter();
        if req.cancel.load(Ordering::SeqCst) {
            return Err(ModelsError::Cancelled);
        }
        let loaded = self.network(req.resolution)?;
        let mut observer = self.window_observer(req.priority, req.cancel.clone());
        mc_dropout_entropy(
            &loaded.net,
            &req.volume,
            &req.mc,
            self.opts.device,
            self.opts.amp,
            &mut observer,
        )
    }

    fn probability(&self, req: &ProbabilityRequest) -> Result<ClassProbability> {
        let span = tracing::info_span!(
            "engine_probability",
            res = ?req.resolution,
            class = req.class,
            roi = ?req.roi
        );
        let _g = span.enter();
        if req.cancel.load(Ordering::SeqCst) {
            return Err(ModelsError::Cancelled);
        }
        let loaded = self.network(req.resolution)?;
        let settings = ProbabilitySettings {
            pixdim: req.resolution.pixdim(),
            roi: 96,
            overlap: self.bundle.sw_overlap,
            sw_batch_size: self.bundle.sw_batch_size.max(1),
        };
        let mut observer = self.window_observer(req.priority, req.cancel.clone());
        class_probability(
            &loaded.net,
            &req.volume,
            &req.roi,
            req.class,
            &settings,
            self.opts.device,
            self.opts.amp,
            &mut observer,
        )
    }

    /// The observer of a sliding-window run: a background job counts the window and lets
    /// queued interactive jobs run before its next window; any job ends when its cancel flag
    /// is set.
    fn window_observer(
        &self,
        priority: Priority,
        cancel: Arc<AtomicBool>,
    ) -> impl FnMut(usize, usize) -> bool + '_ {
        let background = priority == Priority::Background;
        move |done: usize, total: usize| {
            if background {
                if let Ok(mut q) = self.shared.queues.lock() {
                    q.background_windows += 1;
                    q.background_done = done as u64;
                    q.background_total = total as u64;
                }
                while let Some(job) = self.pop_interactive() {
                    self.run(job, true);
                }
            }
            !cancel.load(Ordering::SeqCst)
        }
    }

    fn pop_interactive(&self) -> Option<Queued> {
        self.shared.queues.lock().ok()?.interactive.pop_front()
    }

    fn next_job(&self) -> Option<Queued> {
        let mut q = self.shared.queues.lock().ok()?;
        loop {
            if let Some(j) = q.interactive.pop_front() {
                return Some(j);
            }
            if let Some(j) = q.background.pop_front() {
                return Some(j);
            }
            if q.shutdown {
                return None;
            }
            q = self.shared.cv.wait(q).ok()?;
        }
    }
}

impl Engine {
    /// Starts the engine thread for `bundle`.
    pub fn start(bundle: Bundle, opts: EngineOptions) -> Result<Engine> {
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
        let worker_shared = shared.clone();
        let worker_bundle = bundle.clone();
        let worker_opts = opts.clone();
        std::thread::Builder::new()
            .name("ferrolabel-engine".into())
            .spawn(move || {
                let worker = Worker {
                    bundle: worker_bundle,
                    opts: worker_opts,
                    shared: worker_shared,
                    cache: RefCell::new(HashMap::new()),
                };
                while let Some(job) = worker.next_job() {
                    worker.run(job, false);
                }
            })?;
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
            .map_err(|_| ModelsError::Unavailable("engine thread stopped".into()))?
    }

    /// Queues a class-probability job and waits for its answer (async).
    pub async fn probability(&self, req: ProbabilityRequest) -> Result<ClassProbability> {
        let (tx, rx) = oneshot::channel();
        let priority = req.priority;
        self.enqueue(Job::Probability { req, reply: tx }, priority)?;
        rx.await
            .map_err(|_| ModelsError::Unavailable("engine thread stopped".into()))?
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
            .map_err(|_| ModelsError::Unavailable("engine queue poisoned".into()))?;
        if q.shutdown {
            return Err(ModelsError::Unavailable("engine is shutting down".into()));
        }
        let waiting = q.interactive.len() + q.background.len();
        if waiting >= self.opts.queue_limit {
            return Err(ModelsError::Unavailable(format!(
                "{waiting} inference jobs are already waiting (limit {})",
                self.opts.queue_limit
            )));
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
            .map_err(|_| ModelsError::Unavailable("engine thread stopped".into()))?
    }

    /// Loads the weights of a resolution (async).
    pub async fn preload(&self, res: Resolution) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Job::Load { res, reply: tx }, Priority::Interactive)?;
        rx.await
            .map_err(|_| ModelsError::Unavailable("engine thread stopped".into()))?
    }

    /// Runs a job and waits for its answer (async).
    pub async fn infer(&self, req: InferRequest) -> Result<Segmentation> {
        let rx = self.submit(req)?;
        rx.await
            .map_err(|_| ModelsError::Unavailable("engine thread stopped".into()))?
    }

    /// Runs a job and waits for its answer (blocking; for the CLI and jobs).
    pub fn infer_blocking(&self, req: InferRequest) -> Result<Segmentation> {
        let rx = self.submit(req)?;
        rx.blocking_recv()
            .map_err(|_| ModelsError::Unavailable("engine thread stopped".into()))?
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
