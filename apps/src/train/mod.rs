//! Training as a background task (docs/protocol.md §10): `POST /train/{model}` turns the request and
//! the datastore's `final` labels into a [`TrainJob`], and a worker **process**
//! (`ferrolabel dev train-worker JOB.json`, the same binary) runs it with the bundle's recipe.
//!
//! * The worker prints one JSON [`TrainEvent`] per line; this side turns them into the task's
//!   `details` and `progress`, into `train_stats.json` next to the weights (what `/info/`
//!   shows) and into the training curve ([`curve_svg`]).
//! * `DELETE /train/` kills the worker (SIGKILL, checked every 100 ms), so a stop takes effect
//!   at once and all of its memory goes back to the system. Checkpoints are written with
//!   temp + fsync + rename, so a kill at any moment leaves the previous `model.pt` intact;
//!   the dead worker's temp file is removed here.
//! * The engine reloads weights whose modification time changed, so the next `/infer` uses a
//!   better checkpoint without a restart.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferrolabel_models::train::{
    EpochRecord, Pair, TrainConfig, TrainEvent, TrainJob, TrainOutcome,
};
use ferrolabel_models::{Bundle, Resolution};
use serde_json::{json, Map, Value};

use crate::error::{AppError, Result};
use crate::infer::param_bool;
use crate::tasks::{TaskHandle, TaskQueue};

/// What the worker process reads: the job plus process settings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerRequest {
    /// The training job.
    pub job: TrainJob,
    /// libtorch intra-op threads (`None`: libtorch's default).
    pub threads: Option<i32>,
}

/// The last line a worker prints.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Finished {
    finished: TrainOutcome,
}

/// Runs a worker: reads the [`WorkerRequest`] from `request_path` (`-`: standard input),
/// trains, and prints events as JSON lines on stdout.
pub fn run_worker(request_path: &Path) -> Result<()> {
    let text = if request_path == Path::new("-") {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map(|_| t)
    } else {
        std::fs::read_to_string(request_path)
    }
    .map_err(|e| AppError::InvalidParams(format!("cannot read the training request: {e}")))?;
    let req: WorkerRequest = serde_json::from_str(&text)
        .map_err(|e| AppError::InvalidParams(format!("bad training request: {e}")))?;
    if let Some(t) = req.threads {
        ferrolabel_models::device::set_threads(t);
    }
    struct Printer;
    impl ferrolabel_models::train::TrainObserver for Printer {
        fn event(&mut self, event: &TrainEvent) {
            let mut out = std::io::stdout().lock();
            let written = serde_json::to_writer(&mut out, event)
                .map_err(std::io::Error::from)
                .and_then(|_| out.write_all(b"\n"))
                .and_then(|_| out.flush());
            if written.is_err() {
                // the server that reads us is gone (killed): stop rather than keep
                // overwriting its checkpoints unwatched (events come after every step, and
                // never during a checkpoint write)
                std::process::exit(3);
            }
        }
        fn stop_requested(&self) -> bool {
            false
        }
    }
    let outcome = ferrolabel_models::train::train(&req.job, &mut Printer)?;
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &Finished { finished: outcome });
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    Ok(())
}

/// The trainer of the app: its task queue, where it writes, how it starts workers.
#[derive(Debug, Clone)]
pub struct Trainer {
    tasks: TaskQueue,
    bundle: Bundle,
    device_names: Vec<String>,
    default_device: String,
    threads: Option<i32>,
    worker_exe: Arc<Mutex<Option<PathBuf>>>,
    child: Arc<Mutex<Option<Child>>>,
}

/// Trainer defaults shown in `/info/` (`trainers.<name>.config`).
fn default_config(device_names: &[String], default_highres: bool) -> Value {
    json!({
        "device": device_names,
        "pretrained": true,
        "highres": [default_highres, !default_highres],
        "max_epochs": 50,
        "val_split": 0.2,
        "val_interval": 20,
        "train_batch_size": 4,
        "init_LR": 1e-4,
        "amp": true,
        "cache_size": 4,
        "seed": 123,
    })
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
            tasks: TaskQueue::new("Train"),
            bundle,
            device_names,
            default_device,
            threads,
            worker_exe: Arc::new(Mutex::new(None)),
            child: Arc::new(Mutex::new(None)),
        }
    }

    /// Sets the executable that runs `dev train-worker` (the server binary itself).
    pub fn set_worker_exe(&self, exe: PathBuf) {
        *self.worker_exe.lock().unwrap_or_else(|e| e.into_inner()) = Some(exe);
    }

    /// The task queue (`GET /train/`, `DELETE /train/`).
    pub fn tasks(&self) -> &TaskQueue {
        &self.tasks
    }

    /// `/info/` `trainers.<name>`.
    pub fn info(&self) -> Value {
        json!({
            "description": "Train the whole-body CT SegResNet on the labels saved as 'final' (the bundle's recipe: DiceCE, AdamW, random 96^3 crops)",
            "config": default_config(&self.device_names, self.bundle.default_highres),
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

    /// Stops the running training: kills the worker and answers the task marked `STOPPED`
    /// (`None` when nothing runs).
    pub fn stop(&self) -> Option<Value> {
        let task = self.tasks.stop()?;
        if let Some(c) = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            let _ = c.kill();
        }
        Some(task)
    }

    /// Builds the job from the request `params` and the training `pairs` and starts the
    /// worker; answers the task object. 429 while a training runs.
    pub fn start(&self, params: &Map<String, Value>, pairs: Vec<Pair>) -> Result<Value> {
        let exe = self
            .worker_exe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                AppError::InvalidParams("training is not available in this process".into())
            })?;
        let (job, res) = self.job(params, pairs)?;
        let mut request = params.clone();
        request.insert("model".into(), crate::MODEL_NAME.into());
        let handle = self.tasks.start(Value::Object(request))?;
        std::fs::create_dir_all(self.bundle.root.join("models"))?;
        let worker = WorkerRequest {
            job: job.clone(),
            threads: self.threads,
        };
        let spawned = Command::new(&exe)
            .arg("dev")
            .arg("train-worker")
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let err = AppError::InvalidParams(format!("cannot start the training worker: {e}"));
                handle.finish(&Err(AppError::InvalidParams(err.to_string())));
                return Err(err);
            }
        };
        handle.log(format!(
            "worker pid {}: training {} on {} pair(s), validating on {}; {} epochs, batch {}, lr {}, device {}",
            child.id(),
            res.model_file(),
            job.train.len(),
            if job.val.is_empty() {
                "the training pairs".to_string()
            } else {
                format!("{} held-out pair(s)", job.val.len())
            },
            job.config.max_epochs,
            job.config.batch_size,
            job.config.lr,
            job.device
        ));
        // the job goes in on stdin (no file to clean up); closing it starts the run
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&serde_json::to_vec(&worker).unwrap_or_default());
        }
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let pid = child.id();
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let task = handle.to_json();
        let this = self.clone();
        std::thread::Builder::new()
            .name("train-monitor".into())
            .spawn(move || this.monitor(handle, job, res, stdout, stderr, pid))
            .map_err(AppError::Io)?;
        Ok(task)
    }

    fn job(&self, params: &Map<String, Value>, pairs: Vec<Pair>) -> Result<(TrainJob, Resolution)> {
        let bad = |m: String| AppError::InvalidParams(m);
        let highres = param_bool(params, "highres")?.unwrap_or(self.bundle.default_highres);
        let res = Resolution::from_highres(highres);
        let mut cfg = TrainConfig::default();
        cfg.prepare.pixdim = res.pixdim();
        cfg.prepare.classes = self.bundle.network.out_channels;
        let uint = |k: &str, min: u64, max: u64| -> Result<Option<u64>> {
            match params.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    let n = v
                        .as_u64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                        .filter(|n| (min..=max).contains(n))
                        .ok_or_else(|| {
                            bad(format!("{k}: {v} is not an integer in {min}..={max}"))
                        })?;
                    Ok(Some(n))
                }
            }
        };
        let float = |k: &str, min: f64, max: f64| -> Result<Option<f64>> {
            match params.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    let x = v
                        .as_f64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                        .filter(|x: &f64| x.is_finite() && *x >= min && *x <= max)
                        .ok_or_else(|| bad(format!("{k}: {v} is not a number in {min}..={max}")))?;
                    Ok(Some(x))
                }
            }
        };
        cfg.max_epochs = uint("max_epochs", 1, 1_000_000)?.unwrap_or(50) as usize;
        cfg.val_interval = uint("val_interval", 1, 1_000_000)?.unwrap_or(20) as usize;
        if let Some(b) = uint("train_batch_size", 1, 64)?.or(uint("batch_size", 1, 64)?) {
            cfg.batch_size = b as usize;
        }
        if let Some(lr) = float("init_LR", 0.0, 1.0)?.or(float("lr", 0.0, 1.0)?) {
            cfg.lr = lr;
        }
        if let Some(c) = uint("cache_size", 0, 1000)? {
            cfg.cache_size = c as usize;
        }
        if let Some(s) = uint("seed", 0, u64::MAX)? {
            cfg.seed = s;
        }
        if let Some(a) = param_bool(params, "amp")? {
            cfg.amp = a;
        }
        if let Some(r) = uint("roi_size", 8, 512)? {
            cfg.roi = [r as i64; 3];
        }
        if let Some(r) = uint("val_roi_size", 8, 1024)? {
            cfg.val_roi = [r as i64; 3];
        }
        let val_split = float("val_split", 0.0, 0.9)?.unwrap_or(0.2);
        let pretrained = param_bool(params, "pretrained")?.unwrap_or(true);
        let device = match params.get("device") {
            None | Some(Value::Null) => self.default_device.clone(),
            Some(Value::String(s)) if self.device_names.contains(s) => self.default_device.clone(),
            Some(Value::String(s)) => {
                ferrolabel_models::parse_device(s).map_err(|e| bad(e.to_string()))?;
                s.clone()
            }
            Some(Value::Array(a))
                if a.first()
                    .and_then(Value::as_str)
                    .is_some_and(|s| self.device_names.iter().any(|d| d == s)) =>
            {
                self.default_device.clone()
            }
            Some(v) => return Err(bad(format!("device: {v} is not a device name"))),
        };
        if pairs.is_empty() {
            return Err(bad(
                "nothing to train on: no image has a label saved with the tag 'final'".into(),
            ));
        }
        let (train, val) = split(pairs, val_split, cfg.seed);
        let output = self.bundle.root.join("models").join(res.model_file());
        let init_weights =
            (pretrained && self.bundle.has_weights(res)).then(|| self.bundle.weights_path(res));
        Ok((
            TrainJob {
                network: self.bundle.network.clone(),
                device,
                init_weights,
                output,
                train,
                val,
                config: cfg,
                max_voxels: None,
            },
            res,
        ))
    }

    fn monitor(
        &self,
        handle: TaskHandle,
        job: TrainJob,
        res: Resolution,
        stdout: Option<std::process::ChildStdout>,
        stderr: Option<std::process::ChildStderr>,
        pid: u32,
    ) {
        let _span = tracing::info_span!("train", task = %handle.id()).entered();
        let stderr_tail = Arc::new(Mutex::new(Vec::<String>::new()));
        let err_thread = stderr.map(|s| {
            let tail = stderr_tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(s).lines().map_while(|l| l.ok()) {
                    tracing::warn!(target: "train_worker", "{line}");
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    t.push(line);
                    if t.len() > 5 {
                        t.remove(0);
                    }
                }
            })
        });
        // the killer: polls the cancel flag so that a stop kills the worker within 100 ms
        let cancel = handle.cancel_flag();
        let child_slot = self.child.clone();
        let killer_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let kd = killer_done.clone();
        let killer = std::thread::spawn(move || {
            while !kd.load(std::sync::atomic::Ordering::SeqCst) {
                if cancel.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Some(c) = child_slot
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_mut()
                    {
                        let _ = c.kill();
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut stats = Stats::new(&job, res, &handle.id());
        let mut outcome: Option<TrainOutcome> = None;
        if let Some(out) = stdout {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if let Ok(ev) = serde_json::from_str::<TrainEvent>(&line) {
                    self.on_event(&handle, &mut stats, &ev);
                } else if let Ok(f) = serde_json::from_str::<Finished>(&line) {
                    outcome = Some(f.finished);
                } else {
                    handle.log(line);
                }
            }
        }
        let status = {
            let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let s = slot.as_mut().map(|c| c.wait());
            *slot = None;
            s
        };
        killer_done.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = killer.join();
        if let Some(t) = err_thread {
            let _ = t.join();
        }
        remove_worker_temp_files(job.output.parent().unwrap_or(Path::new(".")), pid);
        stats.finish(outcome.as_ref());
        self.write_stats(&stats);
        let result = match (status, outcome) {
            (_, Some(o)) => Ok(json!({
                "epochs": o.epochs,
                "best_metric": o.best_metric,
                "best_epoch": o.best_epoch,
                "validated_on_holdout": o.validated_on_holdout,
                "model_file": res.model_file(),
            })),
            (Some(Ok(s)), None) => {
                let tail = stderr_tail
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .join(" | ");
                Err(AppError::InvalidParams(format!(
                    "the training worker ended ({s}): {tail}"
                )))
            }
            (Some(Err(e)), None) => Err(AppError::Io(e)),
            (None, None) => Err(AppError::InvalidParams(
                "the training worker vanished".into(),
            )),
        };
        handle.finish(&result);
    }

    fn on_event(&self, handle: &TaskHandle, stats: &mut Stats, ev: &TrainEvent) {
        match ev {
            TrainEvent::Started {
                train,
                val,
                iterations_per_epoch,
                parameters,
            } => {
                stats.iterations_per_epoch = *iterations_per_epoch;
                handle.log(format!(
                    "started: {train} training pair(s), {val} validation pair(s), {iterations_per_epoch} step(s)/epoch, {parameters} parameters"
                ));
            }
            TrainEvent::Iteration {
                epoch,
                iteration,
                loss,
                seconds,
            } => {
                stats.iteration += 1;
                let total = stats.iterations_per_epoch * stats.total_epochs;
                handle.progress(stats.iteration, total, Some(&format!("epoch {epoch}")));
                tracing::debug!(epoch, iteration, loss, seconds, "train step");
            }
            TrainEvent::Epoch(r) => {
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
                stats.history.push(r.clone());
                self.write_stats(stats);
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
            }
        }
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

/// Splits `pairs` into training and validation: a seeded shuffle, then the last
/// `floor(n * val_split)` pairs validate (at least one pair always trains).
fn split(mut pairs: Vec<Pair>, val_split: f64, seed: u64) -> (Vec<Pair>, Vec<Pair>) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    pairs.sort_by(|a, b| a.id.cmp(&b.id));
    pairs.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let n = pairs.len();
    let n_val = ((n as f64 * val_split).floor() as usize).min(n.saturating_sub(1));
    let val = pairs.split_off(n - n_val);
    (pairs, val)
}

/// Removes the temp checkpoint file a killed worker may leave (`.<name>.<pid>.tmp`).
fn remove_worker_temp_files(dir: &Path, pid: u32) {
    let suffix = format!(".{pid}.tmp");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(&suffix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// `train_stats.json`: MONAI Label's keys (what Slicer reads: `epoch`, `total_epochs`,
/// `total_time` when finished, `best_metric`) plus the per-epoch history.
#[derive(Debug)]
struct Stats {
    task_id: String,
    start: Instant,
    start_ts: u64,
    total_epochs: usize,
    iterations_per_epoch: usize,
    iteration: usize,
    metric_name: &'static str,
    model_file: &'static str,
    highres: bool,
    history: Vec<EpochRecord>,
    finished: Option<&'static str>,
}

impl Stats {
    fn new(job: &TrainJob, res: Resolution, task_id: &str) -> Stats {
        Stats {
            task_id: task_id.to_string(),
            start: Instant::now(),
            start_ts: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            total_epochs: job.config.max_epochs,
            iterations_per_epoch: 0,
            iteration: 0,
            metric_name: if job.val.is_empty() {
                "train_mean_dice"
            } else {
                "val_mean_dice"
            },
            model_file: res.model_file(),
            highres: res.is_high(),
            history: Vec::new(),
            finished: None,
        }
    }

    fn finish(&mut self, outcome: Option<&TrainOutcome>) {
        self.finished = Some(match outcome {
            Some(o) if !o.stopped => "DONE",
            Some(_) => "STOPPED",
            None => "STOPPED_OR_FAILED",
        });
    }

    fn to_json(&self) -> Value {
        let elapsed = hms(self.start.elapsed().as_secs());
        let last = self.history.last();
        let best = self
            .history
            .iter()
            .filter_map(|r| r.val_dice.map(|d| (d, r.epoch)))
            .fold(None, |acc: Option<(f64, usize)>, (d, e)| match acc {
                Some((b, _)) if b >= d => acc,
                _ => Some((d, e)),
            });
        let last_metric = self.history.iter().rev().find_map(|r| r.val_dice);
        let epoch = last.map(|r| r.epoch).unwrap_or(0);
        let mut m = Map::new();
        m.insert("rank".into(), 0.into());
        m.insert("current_epoch".into(), epoch.into());
        m.insert("current_iteration".into(), self.iteration.into());
        m.insert("total_epochs".into(), self.total_epochs.into());
        m.insert("total_iterations".into(), self.iterations_per_epoch.into());
        m.insert("epoch".into(), epoch.into());
        m.insert("start_ts".into(), self.start_ts.into());
        if self.finished.is_some() {
            m.insert("total_time".into(), elapsed.into());
        } else {
            m.insert("current_time".into(), elapsed.into());
        }
        m.insert(
            "best_metric".into(),
            best.map(|b| b.0).unwrap_or(0.0).into(),
        );
        m.insert(
            "train".into(),
            json!({
                "metrics": {"train_loss": last.map(|r| r.loss)},
                "key_metric_name": "train_loss",
            }),
        );
        m.insert(
            "eval".into(),
            json!({
                "metrics": {self.metric_name: last_metric},
                "key_metric_name": self.metric_name,
                "best_metric": best.map(|b| b.0),
                "best_metric_epoch": best.map(|b| b.1),
            }),
        );
        m.insert("task_id".into(), self.task_id.clone().into());
        m.insert("status".into(), self.finished.unwrap_or("RUNNING").into());
        m.insert("model_file".into(), self.model_file.into());
        m.insert("highres".into(), self.highres.into());
        m.insert(
            "history".into(),
            serde_json::to_value(&self.history).unwrap_or_default(),
        );
        Value::Object(m)
    }
}

fn hms(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The training curves of `stats` (its `history`) as an SVG image: loss per epoch (left
/// axis) and the Dice of each validation (right axis, 0..1).
pub fn curve_svg(stats: &Value) -> Option<String> {
    let hist: Vec<EpochRecord> = serde_json::from_value(stats.get("history")?.clone()).ok()?;
    if hist.is_empty() {
        return None;
    }
    let metric = stats
        .pointer("/eval/key_metric_name")
        .and_then(Value::as_str)
        .unwrap_or("val_mean_dice");
    let (w, h, l, r, t, b) = (640.0, 360.0, 60.0, 60.0, 30.0, 40.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let max_epoch = hist.iter().map(|e| e.epoch).max().unwrap_or(1).max(2) as f64;
    let losses: Vec<f64> = hist
        .iter()
        .map(|e| e.loss)
        .filter(|x| x.is_finite())
        .collect();
    let max_loss = losses.iter().cloned().fold(0.0, f64::max).max(1e-6) * 1.05;
    let x = |e: usize| l + (e as f64 - 1.0) / (max_epoch - 1.0) * pw;
    let y_loss = |v: f64| t + ph - v / max_loss * ph;
    let y_dice = |v: f64| t + ph - v.clamp(0.0, 1.0) * ph;
    let poly = |pts: Vec<(f64, f64)>| {
        pts.iter()
            .map(|(a, b)| format!("{a:.1},{b:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let loss_pts = poly(
        hist.iter()
            .filter(|e| e.loss.is_finite())
            .map(|e| (x(e.epoch), y_loss(e.loss)))
            .collect(),
    );
    let dice: Vec<(f64, f64)> = hist
        .iter()
        .filter_map(|e| e.val_dice.map(|d| (x(e.epoch), y_dice(d))))
        .collect();
    let dots: String = dice
        .iter()
        .map(|(a, b)| format!(r##"<circle cx="{a:.1}" cy="{b:.1}" r="3" fill="#d62728"/>"##))
        .collect();
    let mut s = String::new();
    s.push_str(&format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"##
    ));
    s.push_str(&format!(
        r##"<rect width="{w}" height="{h}" fill="white"/>"##
    ));
    s.push_str(&format!(
        r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    ));
    s.push_str(&format!(
        r##"<text x="{}" y="20" text-anchor="middle">training loss (blue) and {metric} (red) per epoch</text>"##,
        w / 2.0
    ));
    s.push_str(&format!(
        r##"<text x="{l}" y="{}" text-anchor="middle">1</text><text x="{}" y="{}" text-anchor="middle">{max_epoch}</text><text x="{}" y="{}" text-anchor="middle">epoch</text>"##,
        h - 22.0,
        l + pw,
        h - 22.0,
        l + pw / 2.0,
        h - 8.0
    ));
    s.push_str(&format!(
        r##"<text x="{}" y="{}" text-anchor="end" fill="#1f77b4">{max_loss:.3}</text><text x="{}" y="{}" text-anchor="end" fill="#1f77b4">0</text>"##,
        l - 4.0,
        t + 10.0,
        l - 4.0,
        t + ph
    ));
    s.push_str(&format!(
        r##"<text x="{}" y="{}" fill="#d62728">1.0</text><text x="{}" y="{}" fill="#d62728">0</text>"##,
        l + pw + 4.0,
        t + 10.0,
        l + pw + 4.0,
        t + ph
    ));
    s.push_str(&format!(
        r##"<polyline points="{loss_pts}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##
    ));
    if dice.len() > 1 {
        s.push_str(&format!(
            r##"<polyline points="{}" fill="none" stroke="#d62728" stroke-width="1.5" stroke-dasharray="4 3"/>"##,
            poly(dice.clone())
        ));
    }
    s.push_str(&dots);
    s.push_str("</svg>");
    Some(s)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(i: usize) -> Pair {
        Pair {
            id: format!("img{i}"),
            image: PathBuf::from(format!("/i{i}")),
            label: PathBuf::from(format!("/l{i}")),
        }
    }

    #[test]
    fn split_keeps_one_for_training() {
        let (t, v) = split(vec![pair(0)], 0.5, 1);
        assert_eq!((t.len(), v.len()), (1, 0));
        let (t, v) = split((0..10).map(pair).collect(), 0.2, 1);
        assert_eq!((t.len(), v.len()), (8, 2));
        let (t2, v2) = split((0..10).rev().map(pair).collect(), 0.2, 1);
        assert_eq!(
            v.iter().map(|p| &p.id).collect::<Vec<_>>(),
            v2.iter().map(|p| &p.id).collect::<Vec<_>>()
        );
        assert_eq!(t.len(), t2.len());
    }

    #[test]
    fn curve_has_both_series() {
        let stats = json!({
            "eval": {"key_metric_name": "val_mean_dice"},
            "history": [
                {"epoch": 1, "loss": 3.0, "val_dice": null, "best_metric": null, "best_epoch": null, "seconds": 1.0},
                {"epoch": 2, "loss": 2.0, "val_dice": 0.3, "best_metric": 0.3, "best_epoch": 2, "seconds": 1.0},
                {"epoch": 3, "loss": 1.5, "val_dice": 0.5, "best_metric": 0.5, "best_epoch": 3, "seconds": 1.0}
            ]
        });
        let svg = curve_svg(&stats).unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(curve_svg(&json!({})).is_none());
    }
}
