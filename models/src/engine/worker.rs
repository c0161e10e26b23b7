//! The engine thread: it owns the loaded networks, takes jobs from the shared queue and runs
//! them, interactive jobs between the windows of a background job. Each job runs under
//! `catch_unwind`: a panic (libtorch answers a failed op with one) fails that job alone with
//! [`ModelsError::Panicked`]; the thread then hands over to a fresh one, since the panic may
//! have left libtorch's thread-local modes (no-grad, autocast) changed.

use super::queue::Queued;
use super::{mtime, EngineOptions, InferRequest, Job, Priority, ProbabilityRequest, Shared};
use super::{JobRecord, UncertaintyRequest};
use crate::bundle::{Bundle, Resolution};
use crate::device::Precision;
use crate::error::{ModelsError, Result};
use crate::inferer::{BlendMode, PadMode, SlidingWindow};
use crate::network::{weights, SegResNet};
use crate::pipeline::{mc_dropout_entropy, segment_shared, Segmentation, Uncertainty};
use crate::probability::{class_probability, ClassProbability, ProbabilitySettings};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tch::nn;

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
    /// A job panicked on this thread: its libtorch thread-local state (grad mode, autocast)
    /// may be left changed, so the thread hands over to a fresh one after its current job.
    tainted: Cell<bool>,
}

/// Starts an engine thread on the shared queue. It runs jobs until the engine shuts down; after
/// a job that panicked it starts its successor and ends, so the engine keeps serving.
pub(super) fn spawn(
    bundle: Arc<Bundle>,
    opts: EngineOptions,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ferrolabel-engine".into())
        .spawn(move || {
            let worker = Worker {
                bundle,
                opts,
                shared,
                cache: RefCell::new(HashMap::new()),
                tainted: Cell::new(false),
            };
            while let Some(job) = worker.next_job() {
                worker.run(job, false);
                if worker.tainted.get() {
                    let (bundle, opts, shared) = (&worker.bundle, &worker.opts, &worker.shared);
                    match spawn(bundle.clone(), opts.clone(), shared.clone()) {
                        Ok(()) => {
                            tracing::warn!("a job panicked: the engine goes on in a fresh thread");
                            return;
                        }
                        // no thread to hand over to: serve on here rather than not at all
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start a fresh engine thread");
                            worker.tainted.set(false);
                        }
                    }
                }
            }
        })?;
    Ok(())
}

/// Runs one job's work, turning a panic (libtorch's `unwrap`s on a failed op: out of memory, a
/// shape it refuses) into [`ModelsError::Panicked`] for that job alone.
fn guarded<T>(tainted: &Cell<bool>, what: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    match panic::catch_unwind(AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(payload) => {
            tainted.set(true);
            let message = panic_message(payload.as_ref());
            tracing::error!(job = what, panic = %message, "engine job panicked; it alone fails");
            Err(ModelsError::Panicked(first_line(&message).to_string()))
        }
    }
}

/// A panic message up to its first line break, raw or escaped (a tch `unwrap` prints the
/// error's `Debug`, where libtorch's C++ backtrace follows an escaped `\n`).
fn first_line(message: &str) -> &str {
    let end = [message.find('\n'), message.find("\\n")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(message.len());
    &message[..end]
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

pub(super) fn job_priority(job: &Job) -> Priority {
    match job {
        Job::Infer { req, .. } => req.priority,
        Job::Uncertainty { req, .. } => req.priority,
        Job::Probability { req, .. } => req.priority,
        Job::Load { .. } => Priority::Interactive,
    }
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
        // the inference copy of the default precision is made with the load, not in a job
        net.set_inference(Some(self.opts.precision));
        net.set_inference(None);
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
                let result = guarded(&self.tainted, "infer", || self.segment(req)).map(|mut s| {
                    record.finished_at = self.background_windows();
                    s.engine = record;
                    s
                });
                Box::new(move || {
                    let _ = reply.send(result);
                })
            }
            Job::Uncertainty { req, reply } => {
                let result =
                    guarded(&self.tainted, "mc_dropout", || self.uncertainty(&req)).map(|mut u| {
                        record.finished_at = self.background_windows();
                        u.engine = record;
                        u
                    });
                Box::new(move || {
                    let _ = reply.send(result);
                })
            }
            Job::Probability { req, reply } => {
                let result = guarded(&self.tainted, "probability", || self.probability(&req)).map(
                    |mut p| {
                        record.finished_at = self.background_windows();
                        p.engine = record;
                        p
                    },
                );
                Box::new(move || {
                    let _ = reply.send(result);
                })
            }
            Job::Load { res, reply } => {
                let result = guarded(&self.tainted, "load", || self.network(res).map(|_| ()));
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

    /// Runs an inference job; the job's handle on the image is given up after preprocessing
    /// (see [`segment_shared`]).
    fn segment(&self, req: InferRequest) -> Result<Segmentation> {
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
        let precision = req.precision.unwrap_or(self.opts.precision);
        crate::device::check_precision(precision, self.opts.device)?;
        let mut observer = self.window_observer(req.priority, req.cancel.clone());
        self.in_precision(&loaded.net, precision, |amp| {
            segment_shared(
                &loaded.net,
                req.volume,
                req.resolution.pixdim(),
                &sw,
                self.opts.device,
                amp,
                &mut observer,
            )
        })
    }

    /// Runs `work` with `net` switched to `precision` (see [`SegResNet::set_inference`]) and
    /// switches it back afterwards, so an interactive job run between two windows of a
    /// background job in another precision leaves that job's setting alone. `work` gets
    /// whether to wrap the network in CUDA fp16 autocast: on CUDA, fp32 with `amp` keeps the
    /// default-layout path under autocast, as the bundle's evaluator does.
    fn in_precision<T>(
        &self,
        net: &SegResNet,
        precision: Precision,
        work: impl FnOnce(bool) -> T,
    ) -> T {
        let cuda_amp = self.opts.amp && self.opts.device.is_cuda() && precision == Precision::Fp32;
        let mode = (!cuda_amp).then_some(precision);
        let previous = net.set_inference(mode);
        let out = work(cuda_amp);
        net.set_inference(previous);
        out
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
        self.in_precision(&loaded.net, self.opts.precision, |amp| {
            mc_dropout_entropy(
                &loaded.net,
                &req.volume,
                &req.mc,
                self.opts.device,
                amp,
                &mut observer,
            )
        })
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
        self.in_precision(&loaded.net, self.opts.precision, |amp| {
            class_probability(
                &loaded.net,
                &req.volume,
                &req.roi,
                req.class,
                &settings,
                self.opts.device,
                amp,
                &mut observer,
            )
        })
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
