//! Exact resume (issue 14 item 3): a run stopped (or crashed) and continued from its resume
//! state ends with the same weights, AdamW moments and step counts, per-epoch losses and best
//! checkpoint, bit for bit, as the same run done straight through. The small network of the
//! training tests (init_filters 8), the shared 30-slice CT at 3 mm, 32³ crops, lr 1e-2, dropout
//! on, the pair listed twice so that an epoch has two optimiser steps (the shuffle matters, and a
//! stop can fall inside an epoch), validation every epoch (the best metric carries over).

use ferrolabel_models::network::SegResNetConfig;
use ferrolabel_models::train::state::{self, Loaded};
use ferrolabel_models::train::{
    state_path, train, Pair, TrainConfig, TrainEvent, TrainJob, TrainObserver,
};
use std::path::{Path, PathBuf};

mod common;
use common::{bundle, pair};

/// Epochs of every run.
const EPOCHS: usize = 2;

/// Records events; asks to stop once `stop_after` optimiser steps were seen, and copies the
/// resume state aside when epoch `snapshot_at` ends (what a crash after it leaves on disk).
struct Obs {
    events: Vec<TrainEvent>,
    steps: usize,
    stop_after: Option<usize>,
    snapshot_at: Option<(usize, PathBuf, PathBuf)>,
}

impl Obs {
    fn new(stop_after: Option<usize>) -> Obs {
        Obs {
            events: Vec::new(),
            steps: 0,
            stop_after,
            snapshot_at: None,
        }
    }

    /// `(epoch, loss)` of every epoch this run finished.
    fn losses(&self) -> Vec<(usize, f64)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Epoch(r) => Some((r.epoch, r.loss)),
                _ => None,
            })
            .collect()
    }
}

impl TrainObserver for Obs {
    fn event(&mut self, event: &TrainEvent) {
        if matches!(event, TrainEvent::Iteration { .. }) {
            self.steps += 1;
        }
        // the state is written before the epoch's event
        if let (TrainEvent::Epoch(r), Some((at, from, to))) = (event, &self.snapshot_at) {
            if r.epoch == *at {
                std::fs::copy(from, to).unwrap();
            }
        }
        self.events.push(event.clone());
    }
    fn stop_requested(&self) -> bool {
        self.stop_after.is_some_and(|n| self.steps >= n)
    }
}

fn small_network() -> SegResNetConfig {
    let def: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle().join("configs/train.json")).unwrap(),
    )
    .unwrap();
    let mut cfg = SegResNetConfig::from_network_def(&def["network_def"]).unwrap();
    cfg.init_filters = 8;
    cfg
}

/// A run of `EPOCHS` epochs writing into `dir`.
fn job(dir: &Path, p: &Pair) -> TrainJob {
    let mut cfg = TrainConfig::default();
    cfg.prepare.pixdim = [3.0, 3.0, 3.0];
    cfg.max_epochs = EPOCHS;
    cfg.val_interval = 1;
    cfg.batch_size = 1;
    cfg.roi = [32, 32, 32];
    cfg.val_roi = [32, 32, 32];
    cfg.lr = 1e-2;
    cfg.seed = 5;
    let twice = |id: &str| Pair {
        id: id.into(),
        ..p.clone()
    };
    let output = dir.join("models/model_lowres.pt");
    TrainJob {
        network: small_network(),
        device: "cpu".into(),
        init_weights: None,
        state: Some(state_path(&output)),
        output,
        train: vec![twice("ct-a"), twice("ct-b")],
        val: vec![],
        config: cfg,
        max_voxels: None,
        resume: false,
        tag: "run".into(),
    }
}

/// Whether two resume states hold the same tensors (weights and moments), bit for bit.
fn same_tensors(a: &Loaded, b: &Loaded) -> Result<(), String> {
    for (name, t) in &a.weights {
        if !t.equal(&b.weights[name]) {
            return Err(format!("weight {name} differs"));
        }
    }
    for (name, s) in &a.optimizer {
        let o = &b.optimizer[name];
        if s.step != o.step || !s.exp_avg.equal(&o.exp_avg) || !s.exp_avg_sq.equal(&o.exp_avg_sq) {
            return Err(format!("AdamW state of {name} differs"));
        }
    }
    if a.weights.len() != b.weights.len() || a.optimizer.len() != b.optimizer.len() {
        return Err("different tensor sets".into());
    }
    Ok(())
}

/// Resumes the run whose state is in `dir` to its end; answers its events.
fn resume(dir: &Path, p: &Pair) -> Obs {
    let mut j = job(dir, p);
    j.resume = true;
    let mut obs = Obs::new(None);
    let out = train(&j, &mut obs).unwrap();
    assert_eq!((out.epochs, out.stopped), (EPOCHS, false));
    obs
}

#[test]
fn a_stopped_or_crashed_run_resumes_exactly() {
    tch::set_num_threads(2);
    let tmp = tempfile::tempdir().unwrap();
    let p = pair(tmp.path());
    let t0 = std::time::Instant::now();

    // straight through
    let straight_dir = tmp.path().join("straight");
    let mut straight = Obs::new(None);
    let out = train(&job(&straight_dir, &p), &mut straight).unwrap();
    assert_eq!(out.epochs, EPOCHS);
    let want = state::load(&state_path(&job(&straight_dir, &p).output)).unwrap();
    assert_eq!(want.meta.position.epoch, EPOCHS);
    assert_eq!(want.meta.position.iteration, 2 * EPOCHS as u64);
    assert_eq!(want.meta.history.len(), EPOCHS);
    let losses = straight.losses();
    assert_eq!(losses.len(), EPOCHS);
    // the steps really differ (crops, dropout): otherwise equal losses would prove little
    assert!(losses[0].1 != losses[1].1, "{losses:?}");
    eprintln!(
        "straight: {:.1} s, losses {losses:?}",
        t0.elapsed().as_secs_f64()
    );

    // stopped inside epoch 2 (after its first step): the stop saves that step's state; the
    // state of epoch 1's end, copied aside, is what a crash during epoch 2 leaves on disk
    let stop_dir = tmp.path().join("stop");
    let stop_state = state_path(&job(&stop_dir, &p).output);
    let crash_dir = tmp.path().join("crash");
    let crash_state = state_path(&job(&crash_dir, &p).output);
    std::fs::create_dir_all(crash_state.parent().unwrap()).unwrap();
    let mut stopped = Obs::new(Some(3));
    stopped.snapshot_at = Some((1, stop_state.clone(), crash_state.clone()));
    let out = train(&job(&stop_dir, &p), &mut stopped).unwrap();
    assert!(out.stopped);
    let at_stop = state::read_meta(&stop_state).unwrap();
    assert_eq!(
        (at_stop.position.epoch, at_stop.position.step),
        (1, 1),
        "{:?}",
        at_stop.position
    );
    std::fs::copy(
        stop_dir.join("models/model_lowres.pt"),
        crash_dir.join("models/model_lowres.pt"),
    )
    .unwrap();

    // 1. resumed after the stop
    let resumed = resume(&stop_dir, &p);
    assert!(
        matches!(&resumed.events[0], TrainEvent::Resumed { epoch: 1, step: 1, iteration: 3, changed } if changed.is_empty()),
        "{:?}",
        resumed.events[0]
    );
    assert_eq!(resumed.losses(), losses[1..], "losses after the stop");
    let got = state::load(&stop_state).unwrap();
    same_tensors(&want, &got).unwrap();
    // the history (the seconds are measured: the rest must agree)
    let records = |l: &Loaded| -> Vec<_> {
        l.meta
            .history
            .iter()
            .map(|r| (r.epoch, r.loss, r.val_dice, r.best_metric, r.best_epoch))
            .collect()
    };
    assert_eq!(records(&got), records(&want));
    assert_eq!(got.meta.best_metric, want.meta.best_metric);
    assert_eq!(got.meta.scaler, want.meta.scaler);

    // 2. resumed after the crash
    let resumed = resume(&crash_dir, &p);
    assert!(
        matches!(
            &resumed.events[0],
            TrainEvent::Resumed {
                epoch: 1,
                step: 0,
                iteration: 2,
                ..
            }
        ),
        "{:?}",
        resumed.events[0]
    );
    assert_eq!(resumed.losses(), losses[1..], "losses after the crash");
    let got = state::load(&crash_state).unwrap();
    same_tensors(&want, &got).unwrap();
    assert_eq!(records(&got), records(&want));

    // the best checkpoints agree too
    let best = |d: &Path| std::fs::read(d.join("models/model_lowres.pt")).unwrap();
    assert!(best(&straight_dir) == best(&stop_dir) && best(&stop_dir) == best(&crash_dir));
    eprintln!("all four runs: {:.1} s", t0.elapsed().as_secs_f64());
}
