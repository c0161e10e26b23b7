//! Training as a job of the scheduler (docs/protocol.md §10): `POST /train/{model}` checks the
//! request ([`Trainer::validate`]) and submits a job; the job ([`Trainer::run`]) turns the
//! request and the datastore's `final` labels into a [`TrainJob`], and a worker **process**
//! (`ferrolabel dev train-worker -`, the same binary; [`run_worker`]) runs it with the bundle's
//! recipe while the job's thread watches it.
//!
//! * The worker prints one JSON [`TrainEvent`] per line; this side turns them into the job's
//!   `details` and `progress`, into `train_stats.json` next to the weights (what `/info/`
//!   shows) and into the training curve ([`curve_svg`]).
//! * A stop (`DELETE /train/`, `DELETE /tasks/{id}`, shutdown) sets the job's cancel flag and
//!   the worker is killed (SIGKILL, checked every 50 ms), so a stop takes effect at once and all
//!   of its memory goes back to the system. Checkpoints are written with temp + fsync +
//!   rename, so a kill at any moment leaves the previous `model.pt` intact; the dead worker's
//!   temp file is removed here.
//! * Restart-safe ([`resume`]): the job's checkpoint (last epoch, best metric, the best
//!   checkpoint it wrote, the worker's pid, the history) is saved at every epoch; an attempt
//!   that takes the job up after a restart kills a worker still left over, then runs only the
//!   epochs left, exactly from the trainer's resume state (`model*.resume.pt`) when it is this
//!   job's, else from that checkpoint. `resume: true` continues exactly from the last resume
//!   state. The worker dies with the server (`PR_SET_PDEATHSIG`).
//! * The engine reloads weights whose modification time changed, so the next `/infer` uses a
//!   better checkpoint without a restart.

mod options;
pub mod resume;
mod stats;
mod torchrun;
mod torchrun_cmd;
mod torchrun_conf;
mod torchrun_launch;
mod torchrun_procs;
mod worker;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolabel_models::train::{EpochRecord, Pair, TrainEvent, TrainJob, TrainOutcome};
use ferrolabel_models::{Bundle, Resolution};
use serde_json::{json, Map, Value};

use crate::error::{AppError, Result};
use crate::jobs::JobHandle;
use resume::TrainCheckpoint;
use stats::Stats;
use worker::Finished;

pub use stats::curve_svg;
pub use torchrun_launch::TorchrunSettings;
pub use torchrun_procs::marked_processes;
pub use worker::{run_worker, WorkerRequest};

/// The trainer of the app: where it writes, how it starts workers.
#[derive(Debug, Clone)]
pub struct Trainer {
    bundle: Bundle,
    device_names: Vec<String>,
    default_device: String,
    threads: Option<i32>,
    worker_exe: Arc<Mutex<Option<PathBuf>>>,
    /// How `multi_gpu` trainings start (`torchrun`, see [`torchrun`]).
    torchrun: Arc<Mutex<TorchrunSettings>>,
}

impl Trainer {
    /// A trainer for `bundle`; `default_device` is the engine's device (`"cpu"`, `"cuda:0"`).
    pub fn new(
        bundle: Bundle,
        device_names: Vec<String>,
        default_device: String,
        threads: Option<i32>,
    ) -> Trainer {
        Trainer {
            bundle,
            device_names,
            default_device,
            threads,
            worker_exe: Arc::new(Mutex::new(None)),
            torchrun: Arc::new(Mutex::new(TorchrunSettings::from_conf(
                &Default::default(),
                Path::new("."),
            ))),
        }
    }

    /// Sets how `multi_gpu` trainings start, from the `--conf` pairs (`python`, `slurm`,
    /// `sbatch_args`, `slurm_rdzv_port`) of the app in `app_dir`.
    pub fn configure_torchrun(
        &self,
        conf: &std::collections::BTreeMap<String, String>,
        app_dir: &Path,
    ) {
        *self.torchrun.lock().unwrap_or_else(|e| e.into_inner()) =
            TorchrunSettings::from_conf(conf, app_dir);
    }

    fn torchrun_settings(&self) -> TorchrunSettings {
        self.torchrun
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the executable that runs `dev train-worker` (the server binary itself).
    pub fn set_worker_exe(&self, exe: PathBuf) {
        *self.worker_exe.lock().unwrap_or_else(|e| e.into_inner()) = Some(exe);
    }

    fn worker_exe(&self) -> Result<PathBuf> {
        self.worker_exe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                AppError::InvalidParams("training is not available in this process".into())
            })
    }

    /// `/info/` `trainers.<name>`.
    pub fn info(&self) -> Value {
        json!({
            "description": "Train the whole-body CT SegResNet on the labels saved as 'final' (the bundle's recipe: DiceCE, AdamW, random 96^3 crops)",
            "config": options::default_config(&self.device_names, self.bundle.default_highres),
            "version": self.bundle.version,
        })
    }

    /// Where the statistics of the last run are kept.
    pub fn stats_path(&self) -> PathBuf {
        self.bundle.root.join("models").join("train_stats.json")
    }

    /// The statistics of the last run (`{}` before any).
    pub fn stats(&self) -> Value {
        std::fs::read_to_string(self.stats_path())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| json!({}))
    }

    /// The checks made before a training job exists: bad options or nothing labelled `final`
    /// ([`AppError::InvalidParams`], 422), no worker executable in this process.
    pub fn validate(&self, params: &Map<String, Value>, pairs: &[Pair]) -> Result<()> {
        if torchrun_launch::requested(params)? {
            return torchrun::validate(self, params, pairs);
        }
        self.worker_exe()?;
        self.job(params, pairs.to_vec()).map(|_| ())
    }

    fn job(&self, params: &Map<String, Value>, pairs: Vec<Pair>) -> Result<(TrainJob, Resolution)> {
        let src = options::JobSource {
            bundle: &self.bundle,
            device_names: &self.device_names,
            default_device: &self.default_device,
        };
        options::build_job(&src, params, pairs)
    }

    /// Runs a training job to its end (blocking: the scheduler calls it on the blocking pool).
    ///
    /// Starts the worker and watches it in this thread: events become `handle`'s log and
    /// progress, `train_stats.json` and the job's checkpoint. A cancel (`handle`'s flag) kills
    /// the worker within 50 ms and answers [`AppError::Cancelled`]. When `handle` carries a
    /// checkpoint (a restart took the job up again) the run continues from it (see
    /// [`resume`]). Answers the task's `result`: `epochs`, `best_metric`, `best_epoch`,
    /// `validated_on_holdout`, `model_file`. Records no model version: see
    /// [`Trainer::run_promoting`].
    pub fn run(
        &self,
        handle: &JobHandle,
        params: &Map<String, Value>,
        pairs: Vec<Pair>,
    ) -> Result<Value> {
        self.run_promoting(handle, params, pairs, &crate::versions::NoVersions)
    }

    /// [`Trainer::run`], handing every checkpoint that becomes active to `promote` (the
    /// scheduler's [`crate::versions::Promoter`] records each as a model version).
    pub fn run_promoting(
        &self,
        handle: &JobHandle,
        params: &Map<String, Value>,
        pairs: Vec<Pair>,
        promote: &dyn crate::versions::Promote,
    ) -> Result<Value> {
        if torchrun_launch::requested(params)? {
            return torchrun::run(self, handle, params, pairs, promote);
        }
        let _span = tracing::info_span!("train", task = %handle.id()).entered();
        let exe = self.worker_exe()?;
        let (mut job, res) = self.job(params, pairs)?;
        job.tag = handle.id();
        let dir = job.output.parent().unwrap_or(Path::new(".")).to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let max_epochs = job.config.max_epochs;
        let mut stats = Stats::new(&job, res, &handle.id());
        let mut ck = TrainCheckpoint {
            max_epochs,
            start_ts: stats.start_ts,
            ..TrainCheckpoint::default()
        };
        let saved = handle.checkpoint().and_then(|v| {
            let c = TrainCheckpoint::from_value(&v);
            if c.is_none() {
                handle.log("the saved checkpoint is unreadable: training starts over");
            }
            c
        });
        let on_disk = TrainCheckpoint::from_stats(&self.stats(), &handle.id(), &job.output);
        let mut prev = TrainCheckpoint::later(saved, on_disk);
        if let Some(pid) = prev.as_mut().and_then(|p| p.worker_pid.take()) {
            if worker::kill_stale(pid, &exe)? {
                handle.log(format!("killed the earlier attempt's worker (pid {pid})"));
            }
            worker::remove_temp_files(&dir, pid);
        }
        // exact resume from the resume state (`resume: true`, or this job's own after a restart)
        if let Some(meta) = resume::exact_state(&mut job)? {
            let start_ts = prev.as_ref().map_or(stats.start_ts, |p| p.start_ts);
            let c = TrainCheckpoint::from_state(&meta, &mut job, start_ts);
            handle.log(resume::exact_line(&meta, &job, handle.attempt()));
            stats.history = c.history.clone();
            if c.start_ts > 0 {
                stats.start_ts = c.start_ts;
            }
            ck = c;
            prev = None;
        }
        if let Some(mut prev) = prev {
            prev.apply(&mut job);
            handle.log(format!(
                "resumed at epoch {} of {} (attempt {}, weights only: no resume state of this job): {} epoch(s) left, from {}{}",
                prev.epoch,
                max_epochs,
                handle.attempt(),
                prev.remaining(max_epochs),
                job.init_weights
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "a seeded initialisation".into()),
                prev.best_metric
                    .map(|b| format!(", best {} {b:.4} so far", stats.metric_name))
                    .unwrap_or_default(),
            ));
            stats.history = prev.history.clone();
            if prev.start_ts > 0 {
                stats.start_ts = prev.start_ts;
            }
            ck = prev;
        }
        if ck.remaining(max_epochs) == 0 {
            // every epoch ended before the restart: only the outcome was not recorded
            let outcome = TrainOutcome {
                epochs: max_epochs,
                stopped: false,
                best_metric: ck.best_metric,
                best_epoch: ck.best_epoch,
                validated_on_holdout: !job.val.is_empty(),
            };
            stats.finish(Some(&outcome));
            self.write_stats(&stats);
            return Ok(result_json(&outcome, res));
        }
        if handle.is_cancelled() {
            return Err(AppError::Cancelled);
        }
        let request = WorkerRequest {
            job: job.clone(),
            threads: self.threads,
        };
        let child = worker::spawn(&exe, &request)?;
        ck.worker_pid = Some(child.id());
        handle.save_checkpoint(ck.to_value());
        handle.log(format!(
            "worker pid {}: training {} on {} pair(s), validating on {}; epochs {}..={}, batch {}, lr {}, device {}",
            child.id(),
            res.model_file(),
            job.train.len(),
            if job.val.is_empty() {
                "the training pairs".to_string()
            } else {
                format!("{} held-out pair(s)", job.val.len())
            },
            job.config.start_epoch + 1,
            max_epochs,
            job.config.batch_size,
            job.config.lr,
            job.device
        ));
        let mut watch = Watch {
            trainer: self,
            handle,
            stats,
            ck,
            start_epoch: job.config.start_epoch,
            promote,
            res,
        };
        let pid = child.id();
        let (outcome, status, tail) = watch.follow(child);
        worker::remove_temp_files(&dir, pid);
        watch.stats.finish(outcome.as_ref());
        self.write_stats(&watch.stats);
        match (outcome, status) {
            (Some(o), _) => Ok(result_json(&o, res)),
            (None, _) if handle.is_cancelled() => Err(AppError::Cancelled),
            (None, Ok(s)) => Err(AppError::Task(format!(
                "the training worker ended ({s}): {tail}"
            ))),
            (None, Err(e)) => Err(AppError::Io(e)),
        }
    }

    /// One finished epoch, the same for the Rust trainer and torchrun: the task's log line,
    /// the history (an epoch run again after a resume replaces its record), `train_stats`.
    fn record_epoch(&self, handle: &JobHandle, stats: &mut Stats, r: &EpochRecord) {
        handle.log(format!(
            "epoch {}/{}: loss {:.4}{}, {:.1} s",
            r.epoch,
            stats.total_epochs,
            r.loss,
            r.val_dice
                .map(|d| format!(", {} {d:.4}", stats.metric_name))
                .unwrap_or_default(),
            r.seconds
        ));
        stats.history.retain(|h| h.epoch < r.epoch);
        stats.history.push(r.clone());
        self.write_stats(stats);
    }

    fn write_stats(&self, stats: &Stats) {
        let path = self.stats_path();
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&stats.to_json()).unwrap_or_default();
        let ok = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = ok {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
}

/// The task's `result`.
fn result_json(o: &TrainOutcome, res: Resolution) -> Value {
    json!({
        "epochs": o.epochs,
        "best_metric": o.best_metric,
        "best_epoch": o.best_epoch,
        "validated_on_holdout": o.validated_on_holdout,
        "model_file": res.model_file(),
    })
}

/// Follows one worker: its events, its stderr, the cancel flag.
struct Watch<'a> {
    trainer: &'a Trainer,
    handle: &'a JobHandle,
    stats: Stats,
    ck: TrainCheckpoint,
    /// Epochs done before this attempt.
    start_epoch: usize,
    /// Where better checkpoints are announced (model versions).
    promote: &'a dyn crate::versions::Promote,
    /// The resolution trained.
    res: Resolution,
}

impl Watch<'_> {
    /// Reads the worker's events until it ends; kills it once the job is cancelled. Answers
    /// its outcome (when it finished), its exit status and the tail of its stderr.
    fn follow(
        &mut self,
        mut child: Child,
    ) -> (
        Option<TrainOutcome>,
        std::io::Result<std::process::ExitStatus>,
        String,
    ) {
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let child = Mutex::new(child);
        let done = AtomicBool::new(false);
        let tail = Mutex::new(Vec::<String>::new());
        let cancel = self.handle.cancel_flag();
        let mut outcome = None;
        let status = std::thread::scope(|s| {
            if let Some(err) = stderr {
                let tail = &tail;
                s.spawn(move || {
                    for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                        tracing::warn!(target: "train_worker", "{line}");
                        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                        t.push(line);
                        if t.len() > 5 {
                            t.remove(0);
                        }
                    }
                });
            }
            // the killer: a stop kills the worker within 50 ms, wherever it is
            let (child, done) = (&child, &done);
            s.spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    if cancel.load(Ordering::SeqCst) {
                        let _ = child.lock().unwrap_or_else(|e| e.into_inner()).kill();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            if let Some(out) = stdout {
                for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                    if let Ok(ev) = serde_json::from_str::<TrainEvent>(&line) {
                        self.on_event(&ev);
                    } else if let Ok(f) = serde_json::from_str::<Finished>(&line) {
                        outcome = Some(f.finished);
                    } else {
                        self.handle.log(line);
                    }
                }
            }
            let status = child.lock().unwrap_or_else(|e| e.into_inner()).wait();
            done.store(true, Ordering::SeqCst);
            status
        });
        let tail = tail.into_inner().unwrap_or_else(|e| e.into_inner());
        (outcome, status, tail.join(" | "))
    }

    fn on_event(&mut self, ev: &TrainEvent) {
        let (handle, stats) = (self.handle, &mut self.stats);
        match ev {
            TrainEvent::Started {
                iterations_per_epoch,
                ..
            } => {
                stats.on_progress(handle, ev, "");
                // a resumed run's earlier epochs count as done
                stats.iteration = self.start_epoch * iterations_per_epoch;
            }
            TrainEvent::Iteration {
                epoch,
                iteration,
                loss,
                seconds,
            } => {
                stats.on_progress(handle, ev, "");
                tracing::debug!(epoch, iteration, loss, seconds, "train step");
            }
            TrainEvent::Resumed { changed, .. } if !changed.is_empty() => handle.log(format!(
                "not an exact continuation: {} changed since the stopped run",
                changed.join(", ")
            )),
            TrainEvent::Resumed { .. } => {}
            TrainEvent::Epoch(r) => {
                self.trainer.record_epoch(handle, stats, r);
                self.ck.on_epoch(r);
                handle.save_checkpoint(self.ck.to_value());
            }
            TrainEvent::Checkpoint {
                epoch,
                metric,
                path,
            } => {
                handle.log(format!(
                    "epoch {epoch}: new best {} {metric:.4}, saved {}",
                    stats.metric_name,
                    path.display()
                ));
                self.ck.on_checkpoint(*epoch, *metric, path.clone());
                self.promote.promoted(crate::versions::Promotion {
                    res: self.res,
                    path: path.clone(),
                    epoch: *epoch,
                    metric: *metric,
                    source: "train",
                });
                handle.save_checkpoint(self.ck.to_value());
            }
        }
    }
}

/// Training pairs from the datastore's datalist (`(image, final label)` paths).
pub fn pairs_from_datalist(list: Vec<(PathBuf, PathBuf)>) -> Vec<Pair> {
    list.into_iter()
        .map(|(image, label)| Pair {
            id: image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            image,
            label,
        })
        .collect()
}
