//! The training loop of the bundle (`docs/bundle.md` §5.3-5.4): SegResNet in train mode
//! (Dropout3d active), one random crop per image per epoch, DiceCE, AdamW with a constant
//! learning rate, validation by sliding window (constant blending and padding) with the mean
//! Dice without background, and the best checkpoint written atomically.
//!
//! A batch of `B` crops is run as `B` forward/backward passes whose gradients accumulate
//! (each scaled by `1/B`): DiceCE with `batch=False` is the mean of the per-sample losses and
//! GroupNorm is per sample, so the step is the same as for one `[B, ...]` batch, while peak
//! memory is that of one sample and a stop request is honoured between two samples.

use super::data::{prepare, Pair, PrepareOptions, SampleCache};
use super::loss::dice_ce_loss;
use super::metric::{class_dice, mean_dice};
use super::optim::adamw;
use super::scaler::GradScaler;
use crate::error::{ModelsError, Result};
use crate::inferer::{predict_labels, BlendMode, PadMode, SlidingWindow};
use crate::network::{weights, SegResNet, SegResNetConfig};
use ferrolabel_imaging::Limits;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;
use tch::nn::VarStore;
use tch::Device;
use tracing::info_span;

/// Hyper-parameters (defaults = the bundle's `train.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Epochs to run.
    pub max_epochs: usize,
    /// Crops per optimiser step.
    pub batch_size: usize,
    /// Validate every this many epochs (and after the last epoch).
    pub val_interval: usize,
    /// AdamW learning rate (`init_LR`).
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Training crop size.
    pub roi: [i64; 3],
    /// Validation centre crop.
    pub val_roi: [i64; 3],
    /// Validation sliding-window overlap.
    pub sw_overlap: f64,
    /// fp16 autocast and loss scaling (CUDA only; ignored on the CPU).
    pub amp: bool,
    /// Seed of the crop positions, the shuffling, dropout and a from-scratch initialisation.
    pub seed: u64,
    /// Prepared pairs kept in memory between epochs.
    pub cache_size: usize,
    /// Deterministic preprocessing.
    pub prepare: PrepareOptions,
    /// Epochs an earlier, interrupted attempt of this run already finished: the loop runs
    /// epochs `start_epoch + 1 ..= max_epochs` (validation keeps its schedule, epoch numbers
    /// continue). Only the weights carry over (start from that attempt's best checkpoint via
    /// [`TrainJob::init_weights`]); the optimiser state (AdamW moments, the loss scale) starts
    /// afresh and the crop positions follow a seed derived from `seed` and `start_epoch`, so a
    /// resumed run is not bit-identical to an uninterrupted one.
    pub start_epoch: usize,
    /// The best metric the earlier attempt reached: a new checkpoint is written only when an
    /// epoch beats it.
    pub best_metric: Option<f64>,
    /// The epoch of [`TrainConfig::best_metric`].
    pub best_epoch: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            max_epochs: 50,
            batch_size: 4,
            val_interval: 20,
            lr: 1e-4,
            weight_decay: 1e-5,
            roi: [96, 96, 96],
            val_roi: [160, 160, 160],
            sw_overlap: 0.25,
            amp: true,
            seed: 123,
            cache_size: 4,
            prepare: PrepareOptions {
                pixdim: [1.5, 1.5, 1.5],
                margin: 10,
                k_divisible: 96,
                sigma: 0.4,
                classes: 105,
            },
            start_epoch: 0,
            best_metric: None,
            best_epoch: None,
        }
    }
}

/// Everything one training run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainJob {
    /// Network constructor arguments.
    pub network: SegResNetConfig,
    /// `"cpu"`, `"cuda"`, `"cuda:N"`.
    pub device: String,
    /// Start from these weights (pretrained) or, when `None`, from a seeded initialisation.
    pub init_weights: Option<PathBuf>,
    /// Where the best checkpoint goes (`model.pt` / `model_lowres.pt`).
    pub output: PathBuf,
    /// Training pairs.
    pub train: Vec<Pair>,
    /// Validation pairs; when empty the training pairs are evaluated instead (the metric is
    /// then a training Dice).
    pub val: Vec<Pair>,
    /// Hyper-parameters.
    pub config: TrainConfig,
    /// Image size limits for reading the pairs.
    #[serde(default)]
    pub max_voxels: Option<u64>,
}

/// One line of progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    /// The run has begun.
    Started {
        /// Training pairs.
        train: usize,
        /// Validation pairs (0: the training pairs are evaluated).
        val: usize,
        /// Optimiser steps per epoch.
        iterations_per_epoch: usize,
        /// Trainable parameters.
        parameters: i64,
    },
    /// One optimiser step.
    Iteration {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        iteration: usize,
        /// Mean loss of the step's crops.
        loss: f64,
        /// Seconds the step took.
        seconds: f64,
    },
    /// An epoch ended.
    Epoch(EpochRecord),
    /// A better checkpoint was written.
    Checkpoint {
        /// Epoch of the checkpoint.
        epoch: usize,
        /// Its metric.
        metric: f64,
        /// The file.
        path: PathBuf,
    },
}

/// The record of one epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Mean Dice without background, when validated this epoch.
    pub val_dice: Option<f64>,
    /// Best metric so far.
    pub best_metric: Option<f64>,
    /// Epoch of the best metric.
    pub best_epoch: Option<usize>,
    /// Seconds for the epoch (training and validation).
    pub seconds: f64,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// Epochs completed.
    pub epochs: usize,
    /// Whether a stop request ended it early.
    pub stopped: bool,
    /// Best metric reached (and written as the checkpoint).
    pub best_metric: Option<f64>,
    /// Epoch of the best metric.
    pub best_epoch: Option<usize>,
    /// Whether the metric is a validation Dice (`false`: evaluated on the training pairs).
    pub validated_on_holdout: bool,
}

/// Receives the progress of a run and tells it when to stop.
pub trait TrainObserver {
    /// Called for every event.
    fn event(&mut self, event: &TrainEvent);
    /// Polled between samples and between validation windows; `true` ends the run there.
    fn stop_requested(&self) -> bool;
}

/// The network, its optimiser state and where it runs.
struct Model {
    vs: VarStore,
    net: SegResNet,
    device: Device,
    amp: bool,
}

impl Model {
    /// The network under fp16 autocast when AMP is on.
    fn forward(&self, x: &tch::Tensor, train: bool) -> tch::Tensor {
        if self.amp {
            tch::autocast(true, || self.net.forward_t(x, train))
        } else {
            self.net.forward_t(x, train)
        }
    }
}

/// The seed of a run's random crops and dropout: `seed` for a fresh run, a value derived
/// from it and the epochs already done for a resumed one (so a resumed run does not replay
/// the crops of its first epochs).
pub fn run_seed(seed: u64, start_epoch: usize) -> u64 {
    if start_epoch == 0 {
        seed
    } else {
        seed.wrapping_add((start_epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// Runs a training job. `obs` sees every event; a stop request ends the run at the next sample
/// or window boundary (the last checkpoint written stays in place). A job whose
/// [`TrainConfig::start_epoch`] is set continues an interrupted run (see there).
pub fn train(job: &TrainJob, obs: &mut dyn TrainObserver) -> Result<TrainOutcome> {
    let cfg = &job.config;
    if job.train.is_empty() {
        return Err(ModelsError::Invalid(
            "no training pairs: save at least one label as 'final'".into(),
        ));
    }
    if cfg.batch_size == 0 || cfg.max_epochs == 0 || cfg.val_interval == 0 {
        return Err(ModelsError::Invalid(
            "max_epochs, batch size and val_interval must be at least 1".into(),
        ));
    }
    let device = crate::device::parse_device(&job.device)?;
    let div = job.network.divisor();
    if cfg.roi.iter().any(|&r| r <= 0 || r % div != 0) {
        return Err(ModelsError::Invalid(format!(
            "roi {:?} must be positive multiples of {div}",
            cfg.roi
        )));
    }
    let start = cfg.start_epoch;
    let mut outcome = TrainOutcome {
        epochs: start.min(cfg.max_epochs),
        stopped: false,
        best_metric: cfg.best_metric,
        best_epoch: cfg.best_epoch,
        validated_on_holdout: !job.val.is_empty(),
    };
    if start >= cfg.max_epochs {
        return Ok(outcome);
    }
    // the initialisation of a from-scratch network depends on `seed` only, resumed or not
    tch::manual_seed(cfg.seed as i64);
    let mut vs = VarStore::new(device);
    let net = SegResNet::new(&vs.root(), &job.network);
    if let Some(p) = &job.init_weights {
        weights::load_strict(&mut vs, p)?;
    }
    let seed = run_seed(cfg.seed, start);
    tch::manual_seed(seed as i64);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<String> = vs.variables().keys().cloned().collect();
    order.sort();
    let model = Model {
        vs,
        net,
        device,
        amp: cfg.amp && device.is_cuda(),
    };
    let mut opt = adamw(&model.vs, cfg.lr, cfg.weight_decay)?;
    let mut scaler = GradScaler::default();
    let limits = match job.max_voxels {
        Some(v) => Limits {
            max_voxels: v,
            ..Limits::default()
        },
        None => Limits::default(),
    };
    let holdout = !job.val.is_empty();
    let val_pairs = if holdout { &job.val } else { &job.train };
    let mut cache = SampleCache::new(cfg.cache_size);
    let steps = job.train.len().div_ceil(cfg.batch_size);
    obs.event(&TrainEvent::Started {
        train: job.train.len(),
        val: job.val.len(),
        iterations_per_epoch: steps,
        parameters: SegResNet::num_parameters(&model.vs),
    });
    let mut indices: Vec<usize> = (0..job.train.len()).collect();
    for epoch in start + 1..=cfg.max_epochs {
        let _span = info_span!("train_epoch", epoch).entered();
        let t_epoch = Instant::now();
        indices.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for (it, batch) in indices.chunks(cfg.batch_size).enumerate() {
            let t_step = Instant::now();
            opt.zero_grad();
            let mut step_loss = 0.0;
            for &i in batch {
                if obs.stop_requested() {
                    outcome.stopped = true;
                    return Ok(outcome);
                }
                let sample = cache.get(i, || prepare(&job.train[i], &cfg.prepare, &limits))?;
                let (x, y) = sample.random_crop(cfg.roi, |n| rng.gen_range(0..n));
                let x = x.to_device(model.device);
                let y = y.to_device(model.device);
                let logits = model.forward(&x, true);
                let loss = dice_ce_loss(&logits, &y) / batch.len() as f64;
                step_loss += loss.double_value(&[]);
                if model.amp {
                    (loss * scaler.scale()).backward();
                } else {
                    loss.backward();
                }
            }
            // under AMP a step whose gradients overflowed is skipped (and the scale backs off)
            if model.amp {
                scaler.step(&mut opt, &model.vs)?;
            } else {
                opt.step();
            }
            loss_sum += step_loss;
            obs.event(&TrainEvent::Iteration {
                epoch,
                iteration: it + 1,
                loss: step_loss,
                seconds: t_step.elapsed().as_secs_f64(),
            });
        }
        let mut record = EpochRecord {
            epoch,
            loss: loss_sum / steps as f64,
            val_dice: None,
            best_metric: outcome.best_metric,
            best_epoch: outcome.best_epoch,
            seconds: 0.0,
        };
        if epoch % cfg.val_interval == 0 || epoch == cfg.max_epochs {
            let dice = match validate(&model, val_pairs, cfg, &limits, &mut cache, holdout, obs)? {
                Some(d) => d,
                None => {
                    outcome.stopped = true;
                    return Ok(outcome);
                }
            };
            record.val_dice = dice;
            if let Some(d) = dice {
                if outcome.best_metric.is_none_or(|b| d > b) {
                    weights::save_state_dict(&model.vs, &order, &job.output)?;
                    outcome.best_metric = Some(d);
                    outcome.best_epoch = Some(epoch);
                    record.best_metric = Some(d);
                    record.best_epoch = Some(epoch);
                    obs.event(&TrainEvent::Checkpoint {
                        epoch,
                        metric: d,
                        path: job.output.clone(),
                    });
                }
            }
        }
        record.seconds = t_epoch.elapsed().as_secs_f64();
        outcome.epochs = epoch;
        obs.event(&TrainEvent::Epoch(record));
    }
    Ok(outcome)
}

/// Mean Dice over `pairs` (`Ok(None)`: stopped; `Ok(Some(None))`: no pair had foreground).
fn validate(
    model: &Model,
    pairs: &[Pair],
    cfg: &TrainConfig,
    limits: &Limits,
    cache: &mut SampleCache,
    holdout: bool,
    obs: &mut dyn TrainObserver,
) -> Result<Option<Option<f64>>> {
    let _span = info_span!("validate", images = pairs.len()).entered();
    let sw = SlidingWindow {
        roi: cfg.roi,
        overlap: cfg.sw_overlap,
        sw_batch_size: 1,
        blend: BlendMode::Constant,
        pad: PadMode::Constant(0.0),
    };
    let classes = model.net.config().out_channels;
    let mut scores = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        if obs.stop_requested() {
            return Ok(None);
        }
        // held-out pairs are prepared per use so they never evict training samples
        let v = if holdout {
            prepare(pair, &cfg.prepare, limits)?.center_crop(cfg.val_roi)
        } else {
            cache
                .get(i, || prepare(pair, &cfg.prepare, limits))?
                .center_crop(cfg.val_roi)
        };
        let input = v.image.unsqueeze(0).to_device(model.device);
        let labels = tch::no_grad(|| {
            predict_labels(
                &input,
                &sw,
                classes,
                |x| Ok(model.forward(x, false)),
                &mut |_: usize, _: usize| !obs.stop_requested(),
            )
        });
        let labels = match labels {
            Ok(l) => l,
            Err(ModelsError::Cancelled) => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(d) = mean_dice(&class_dice(&labels, &v.label.squeeze_dim(0), classes)) {
            scores.push(d);
        }
    }
    Ok(Some(
        (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64),
    ))
}
