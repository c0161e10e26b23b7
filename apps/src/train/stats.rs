//! `train_stats.json` (what `/info/` shows, in MONAI Label's shape) and the training curve.

use std::time::{SystemTime, UNIX_EPOCH};

use ferrolabel_models::train::{EpochRecord, TrainEvent, TrainJob, TrainOutcome};
use ferrolabel_models::Resolution;
use serde_json::{json, Map, Value};

use crate::jobs::JobHandle;

/// Now, in Unix seconds.
pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `train_stats.json`: MONAI Label's keys (what Slicer reads: `epoch`, `total_epochs`,
/// `total_time` when finished, `best_metric`) plus the per-epoch history.
#[derive(Debug)]
pub(super) struct Stats {
    pub(super) task_id: String,
    /// When the job's first attempt started (Unix seconds): times run across restarts.
    pub(super) start_ts: u64,
    pub(super) total_epochs: usize,
    pub(super) iterations_per_epoch: usize,
    pub(super) iteration: usize,
    pub(super) metric_name: &'static str,
    model_file: &'static str,
    highres: bool,
    /// Every epoch of the job, the earlier attempts' included.
    pub(super) history: Vec<EpochRecord>,
    finished: Option<&'static str>,
}

impl Stats {
    pub(super) fn new(job: &TrainJob, res: Resolution, task_id: &str) -> Stats {
        Stats {
            task_id: task_id.to_string(),
            start_ts: now_secs(),
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

    /// What both trainers (the Rust one and torchrun's ranks) report alike: `Started` sets the
    /// steps per epoch and logs the run's sizes (`per`: what a step is counted per, e.g.
    /// " per process"); `Iteration` is one step more of the job's progress. False for the other
    /// events.
    pub(super) fn on_progress(&mut self, handle: &JobHandle, ev: &TrainEvent, per: &str) -> bool {
        match ev {
            TrainEvent::Started {
                train,
                val,
                iterations_per_epoch,
                parameters,
            } => {
                self.iterations_per_epoch = *iterations_per_epoch;
                handle.log(format!(
                    "started: {train} training pair(s), {val} validation pair(s), {iterations_per_epoch} step(s)/epoch{per}, {parameters} parameters"
                ));
            }
            TrainEvent::Iteration { epoch, .. } => {
                self.iteration += 1;
                let total = self.iterations_per_epoch * self.total_epochs;
                handle.progress(self.iteration, total, Some(&format!("epoch {epoch}")));
            }
            _ => return false,
        }
        true
    }

    pub(super) fn finish(&mut self, outcome: Option<&TrainOutcome>) {
        self.finished = Some(match outcome {
            Some(o) if !o.stopped => "DONE",
            Some(_) => "STOPPED",
            None => "STOPPED_OR_FAILED",
        });
    }

    pub(super) fn to_json(&self) -> Value {
        let elapsed = hms(now_secs().saturating_sub(self.start_ts));
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

#[cfg(test)]
mod tests {
    use super::*;

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
