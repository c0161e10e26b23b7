//! The training job's checkpoint (what the scheduler keeps in the `jobs` table) and how a later
//! attempt continues from it.
//!
//! The checkpoint is saved when the worker starts and at every `epoch` and `checkpoint` event.
//!
//! **Exact resume**: the trainer itself writes a resume state next to the weights at every
//! epoch end (`model_lowres.pt` → `model_lowres.resume.pt`: current weights, AdamW moments and
//! step counts, loss scaler, position, best metric, history; see
//! `ferrolabel_models::train::state`). A run continues from it exactly ([`exact_state`]) when
//! the request says `resume: true` (whichever run wrote it) or when a restart takes the job up
//! again and the state is the job's own (its tag is the task id).
//!
//! Without a usable state (none written yet, another job's) a taken-up attempt falls back to
//! the weights only: it starts from the best weights this job wrote (or the original
//! initialisation when it wrote none), runs only the epochs left, and carries the best metric
//! over so that a worse epoch never overwrites a better `model.pt`; AdamW's moments start at
//! zero again.

use std::path::{Path, PathBuf};

use ferrolabel_models::train::state::{self, ResumeMeta};
use ferrolabel_models::train::{EpochRecord, TrainJob};
use serde::{Deserialize, Serialize};

use crate::error::{AppError, Result};

/// The resume state `job` continues from exactly, if any: with `resume: true` the state must
/// be readable (else an error); otherwise (a restart taking the job up) only a state that
/// this job wrote (its tag is `job.tag`) is used. Sets `job.resume` accordingly.
pub fn exact_state(job: &mut TrainJob) -> Result<Option<ResumeMeta>> {
    let Some(path) = job.state.clone() else {
        job.resume = false;
        return Ok(None);
    };
    if job.resume {
        let meta = state::read_meta(&path).map_err(|e| {
            AppError::InvalidParams(format!(
                "resume: cannot continue from {}: {e}",
                path.display()
            ))
        })?;
        return Ok(Some(meta));
    }
    let own = path
        .is_file()
        .then(|| state::read_meta(&path).ok())
        .flatten()
        .filter(|m| !job.tag.is_empty() && m.tag == job.tag);
    job.resume = own.is_some();
    Ok(own)
}

/// The checkpoint of a training job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainCheckpoint {
    /// The last finished epoch (0: none yet).
    pub epoch: usize,
    /// The run's `max_epochs` (for the log).
    pub max_epochs: usize,
    /// The best metric so far.
    pub best_metric: Option<f64>,
    /// The epoch of the best metric.
    pub best_epoch: Option<usize>,
    /// The best checkpoint written by this job (by any of its attempts), if any.
    pub checkpoint: Option<PathBuf>,
    /// The worker process of the attempt that saved this.
    pub worker_pid: Option<u32>,
    /// The per-epoch records so far (for `train_stats.json` and the curve).
    pub history: Vec<EpochRecord>,
    /// When the first attempt started (Unix seconds), for `train_stats.json`.
    pub start_ts: u64,
}

/// The log line of an exact resume (it names the epoch the run continues after).
pub fn exact_line(meta: &ResumeMeta, job: &TrainJob, attempt: i64) -> String {
    let p = meta.position;
    let max = job.config.max_epochs;
    format!(
        "resumed exactly at epoch {} of {max}{} (attempt {attempt}) from {}: {} epoch(s) left{}",
        p.epoch,
        if p.step > 0 {
            format!(", step {} of the next", p.step)
        } else {
            String::new()
        },
        job.state
            .as_ref()
            .map(|s| s.display().to_string())
            .unwrap_or_default(),
        max.saturating_sub(p.epoch),
        meta.best_metric
            .map(|b| format!(
                ", best metric {b:.4} at epoch {}",
                meta.best_epoch.unwrap_or(0)
            ))
            .unwrap_or_default(),
    )
}

impl TrainCheckpoint {
    /// The checkpoint of a run continuing exactly from the resume state `meta` of `job`
    /// (see [`exact_state`]): its position, best metric and history; `job`'s `start_epoch`
    /// and best metric follow (for the progress count; the trainer takes them from the
    /// state).
    pub fn from_state(meta: &ResumeMeta, job: &mut TrainJob, start_ts: u64) -> TrainCheckpoint {
        let epoch = meta.position.epoch;
        let cfg = &mut job.config;
        cfg.start_epoch = epoch.min(cfg.max_epochs);
        cfg.best_metric = meta.best_metric;
        cfg.best_epoch = meta.best_epoch;
        TrainCheckpoint {
            epoch: cfg.start_epoch,
            max_epochs: cfg.max_epochs,
            best_metric: meta.best_metric,
            best_epoch: meta.best_epoch,
            // the best epoch of this lineage wrote the job's checkpoint file
            checkpoint: meta.best_epoch.map(|_| job.output.clone()),
            worker_pid: None,
            history: meta
                .history
                .iter()
                .filter(|r| r.epoch <= epoch)
                .cloned()
                .collect(),
            start_ts,
        }
    }

    /// Reads a saved checkpoint; `None` when it is not one (then the run starts over).
    pub fn from_value(v: &serde_json::Value) -> Option<TrainCheckpoint> {
        serde_json::from_value(v.clone()).ok()
    }

    /// As JSON, for [`crate::jobs::JobHandle::save_checkpoint`].
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The epochs left of `max_epochs`.
    pub fn remaining(&self, max_epochs: usize) -> usize {
        max_epochs.saturating_sub(self.epoch)
    }

    /// Makes `job` continue from this checkpoint: the epochs done are skipped, the best metric
    /// carries over, and the weights start from this job's best checkpoint when it wrote one
    /// that is still there (else from the job's own initialisation). The history is cut to
    /// the epochs done.
    pub fn apply(&mut self, job: &mut TrainJob) {
        let cfg = &mut job.config;
        self.epoch = self.epoch.min(cfg.max_epochs);
        self.max_epochs = cfg.max_epochs;
        self.history.retain(|r| r.epoch <= self.epoch);
        cfg.start_epoch = self.epoch;
        cfg.best_metric = self.best_metric;
        cfg.best_epoch = self.best_epoch;
        if let Some(p) = &self.checkpoint {
            // only the file this job writes (a different resolution's file is not ours)
            if *p == job.output && p.is_file() {
                job.init_weights = Some(p.clone());
            }
        }
    }

    /// What `train_stats.json` (`stats`) says about job `task_id`, whose checkpoint file is
    /// `output`: the stats are written at every epoch, before the job's checkpoint reaches the
    /// jobs table (at the next heartbeat), so after a crash they can be a little further.
    /// `None` when they are another job's or hold no epoch.
    pub fn from_stats(stats: &serde_json::Value, task_id: &str, output: &Path) -> Option<Self> {
        if stats.get("task_id").and_then(|v| v.as_str()) != Some(task_id) {
            return None;
        }
        let history: Vec<EpochRecord> =
            serde_json::from_value(stats.get("history")?.clone()).ok()?;
        let last = history.last()?;
        Some(TrainCheckpoint {
            epoch: last.epoch,
            max_epochs: 0,
            best_metric: last.best_metric,
            best_epoch: last.best_epoch,
            // a best epoch in this job's records: this job wrote the checkpoint
            checkpoint: last.best_epoch.map(|_| output.to_path_buf()),
            worker_pid: None,
            start_ts: stats.get("start_ts").and_then(|v| v.as_u64()).unwrap_or(0),
            history,
        })
    }

    /// The later of the saved checkpoint and the one read from the stats: the one with more
    /// epochs, keeping the saved worker pid (the leftover worker to kill).
    pub fn later(saved: Option<Self>, from_stats: Option<Self>) -> Option<Self> {
        match (saved, from_stats) {
            (Some(mut c), Some(d)) if d.epoch > c.epoch => {
                c.epoch = d.epoch;
                c.history = d.history;
                if d.best_metric.is_some() {
                    c.best_metric = d.best_metric;
                    c.best_epoch = d.best_epoch;
                }
                c.checkpoint = c.checkpoint.or(d.checkpoint);
                Some(c)
            }
            (Some(c), _) => Some(c),
            (None, d) => d,
        }
    }

    /// Records an epoch's end.
    pub fn on_epoch(&mut self, r: &EpochRecord) {
        self.epoch = r.epoch;
        if r.best_metric.is_some() {
            self.best_metric = r.best_metric;
            self.best_epoch = r.best_epoch;
        }
        self.history.retain(|h| h.epoch < r.epoch);
        self.history.push(r.clone());
    }

    /// Records a new best checkpoint (written before its epoch ends).
    pub fn on_checkpoint(&mut self, epoch: usize, metric: f64, path: PathBuf) {
        self.best_metric = Some(metric);
        self.best_epoch = Some(epoch);
        self.checkpoint = Some(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolabel_models::train::TrainConfig;
    use serde_json::json;

    fn job(output: PathBuf, max_epochs: usize) -> TrainJob {
        let b = ferrolabel_models::Bundle::open(&PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/wholebody/model/wholeBody_ct_segmentation"
        )))
        .unwrap();
        TrainJob {
            network: b.network,
            device: "cpu".into(),
            init_weights: Some(PathBuf::from("/pretrained.pt")),
            output,
            train: Vec::new(),
            val: Vec::new(),
            config: TrainConfig {
                max_epochs,
                ..TrainConfig::default()
            },
            max_voxels: None,
            state: None,
            resume: false,
            tag: String::new(),
        }
    }

    fn rec(epoch: usize, dice: Option<f64>, best: Option<(f64, usize)>) -> EpochRecord {
        EpochRecord {
            epoch,
            loss: 1.0 / epoch as f64,
            val_dice: dice,
            best_metric: best.map(|b| b.0),
            best_epoch: best.map(|b| b.1),
            seconds: 1.0,
        }
    }

    #[test]
    fn events_build_the_checkpoint_and_apply_resumes_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model.pt");
        let mut ck = TrainCheckpoint::default();
        ck.on_epoch(&rec(1, Some(0.2), None));
        ck.on_checkpoint(2, 0.4, out.clone());
        ck.on_epoch(&rec(2, Some(0.4), Some((0.4, 2))));
        ck.on_epoch(&rec(3, Some(0.3), Some((0.4, 2))));
        assert_eq!(
            (ck.epoch, ck.best_metric, ck.best_epoch),
            (3, Some(0.4), Some(2))
        );
        assert_eq!(ck.history.len(), 3);
        // through JSON, as the jobs table keeps it
        let back = TrainCheckpoint::from_value(&ck.to_value()).unwrap();
        assert_eq!(back, ck);
        assert!(TrainCheckpoint::from_value(&json!({"epoch": "x"})).is_none());

        // the checkpoint file is gone: the job's own initialisation, still the best metric
        let mut j = job(out.clone(), 5);
        let mut c = back.clone();
        c.apply(&mut j);
        assert_eq!(j.init_weights, Some(PathBuf::from("/pretrained.pt")));
        assert_eq!(
            (
                j.config.start_epoch,
                j.config.best_metric,
                j.config.best_epoch
            ),
            (3, Some(0.4), Some(2))
        );
        assert_eq!(c.remaining(5), 2);
        std::fs::write(&out, b"weights").unwrap();
        let mut j = job(out.clone(), 5);
        back.clone().apply(&mut j);
        assert_eq!(j.init_weights, Some(out.clone()));
        // another resolution's file is not this job's
        let mut j = job(dir.path().join("model_lowres.pt"), 5);
        back.clone().apply(&mut j);
        assert_eq!(j.init_weights, Some(PathBuf::from("/pretrained.pt")));
        // fewer epochs than done (never more epochs than asked): nothing left, history cut
        let mut j = job(out, 2);
        let mut c = back.clone();
        c.apply(&mut j);
        assert_eq!(
            (j.config.start_epoch, c.remaining(2), c.history.len()),
            (2, 0, 2)
        );
    }

    #[test]
    fn the_stats_of_this_job_can_be_further_than_its_checkpoint() {
        let out = PathBuf::from("/b/models/model.pt");
        let mut ck = TrainCheckpoint {
            worker_pid: Some(77),
            ..TrainCheckpoint::default()
        };
        ck.on_epoch(&rec(1, Some(0.2), Some((0.2, 1))));
        let hist = vec![
            rec(1, Some(0.2), Some((0.2, 1))),
            rec(2, Some(0.5), Some((0.5, 2))),
        ];
        let stats = json!({"task_id": "t1", "start_ts": 5, "history": hist});
        assert!(TrainCheckpoint::from_stats(&stats, "t2", &out).is_none());
        assert!(
            TrainCheckpoint::from_stats(&json!({"task_id": "t1", "history": []}), "t1", &out)
                .is_none()
        );
        let d = TrainCheckpoint::from_stats(&stats, "t1", &out).unwrap();
        assert_eq!((d.epoch, d.best_metric, d.start_ts), (2, Some(0.5), 5));
        assert_eq!(d.checkpoint.as_deref(), Some(out.as_path()));
        let c = TrainCheckpoint::later(Some(ck.clone()), Some(d.clone())).unwrap();
        assert_eq!(
            (c.epoch, c.best_metric, c.best_epoch),
            (2, Some(0.5), Some(2))
        );
        assert_eq!((c.worker_pid, c.history.len()), (Some(77), 2));
        assert_eq!(c.checkpoint.as_deref(), Some(out.as_path()));
        // the saved checkpoint is as far: it wins; nothing saved: the stats
        let c = TrainCheckpoint::later(Some(c.clone()), Some(d.clone())).unwrap();
        assert_eq!(c.worker_pid, Some(77));
        assert_eq!(TrainCheckpoint::later(None, Some(d.clone())), Some(d));
        assert_eq!(TrainCheckpoint::later(None, None), None);
    }

    #[test]
    fn a_repeated_epoch_replaces_its_record() {
        let mut ck = TrainCheckpoint::default();
        ck.on_epoch(&rec(1, None, None));
        ck.on_epoch(&rec(2, None, None));
        // an attempt resumed at epoch 1 runs epoch 2 again
        ck.epoch = 1;
        ck.on_epoch(&rec(2, Some(0.5), Some((0.5, 2))));
        assert_eq!(
            ck.history.iter().map(|r| r.epoch).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(ck.history[1].val_dice, Some(0.5));
    }
}
