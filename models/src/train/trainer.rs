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
pub use super::events::{EpochRecord, TrainEvent, TrainObserver, TrainOutcome};
use super::loss::dice_ce_loss;
use super::metric::{class_dice, mean_dice};
use super::optim::{adamw, AdamW};
use super::scaler::GradScaler;
use super::state::{self, step_seed, Position, ResumeMeta};
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
    /// Epochs an earlier, interrupted attempt of this run already finished, when it is
    /// continued **without** a resume state (weights only): the loop runs epochs
    /// `start_epoch + 1 ..= max_epochs` (validation keeps its schedule, epoch numbers
    /// continue) from [`TrainJob::init_weights`], with AdamW's moments and the loss scale
    /// afresh. A run resumed from its resume state ([`TrainJob::resume`]) takes its position
    /// from there instead and is exact.
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
    /// Where the resume state is written at every epoch end and when a stop ends the run
    /// (`None`: nowhere); see [`state`] and [`state::state_path`].
    #[serde(default)]
    pub state: Option<PathBuf>,
    /// Continue exactly from the resume state at [`TrainJob::state`] (it must exist): its
    /// weights, AdamW state, loss scaler, position, best metric and history.
    #[serde(default)]
    pub resume: bool,
    /// Recorded in the resume state (the server's task id), so that a later attempt knows
    /// whether the state is its own.
    #[serde(default)]
    pub tag: String,
}

/// The network, its optimiser state and where it runs.
struct Model {
    vs: VarStore,
    net: SegResNet,
    device: Device,
    amp: bool,
    opt: AdamW,
    scaler: GradScaler,
    /// The variable names, sorted (the order of the saved files).
    order: Vec<String>,
}

/// Where a run stands, besides its tensors.
struct Run {
    pos: Position,
    outcome: TrainOutcome,
    history: Vec<EpochRecord>,
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

    /// Writes the resume state, when the job names a place for it.
    fn save_state(&self, job: &TrainJob, run: &Run) -> Result<()> {
        let Some(path) = &job.state else {
            return Ok(());
        };
        let meta = ResumeMeta {
            format: state::FORMAT.into(),
            version: state::VERSION,
            tag: job.tag.clone(),
            position: run.pos,
            best_metric: run.outcome.best_metric,
            best_epoch: run.outcome.best_epoch,
            scaler: self.scaler.clone(),
            lr: self.opt.lr(),
            lr_schedule: "constant".into(),
            optimizer_steps: Default::default(),
            rng: state::RNG_SCHEME.into(),
            history: run.history.clone(),
            fingerprint: state::fingerprint(job),
        };
        state::save(path, &self.vs, &self.order, &self.opt, meta)
    }

    /// Ends the run on a stop request at `pos`: saves the resume state there.
    fn stop(&self, job: &TrainJob, mut run: Run, pos: Position) -> Result<TrainOutcome> {
        run.pos = pos;
        self.save_state(job, &run)?;
        run.outcome.stopped = true;
        Ok(run.outcome)
    }
}

/// Runs a training job. `obs` sees every event; a stop request ends the run at the next sample
/// or window boundary (the last checkpoint written stays in place, and the resume state is
/// written at the last finished optimiser step). A job with [`TrainJob::resume`] continues
/// exactly from its resume state; one whose [`TrainConfig::start_epoch`] is set continues an
/// interrupted run from its weights only (see there).
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
    let loaded = match (&job.state, job.resume) {
        (Some(p), true) => Some(state::load(p)?),
        (None, true) => {
            return Err(ModelsError::Invalid(
                "resume: the job names no resume state".into(),
            ))
        }
        (_, false) => None,
    };
    let steps = job.train.len().div_ceil(cfg.batch_size);
    let mut run = Run {
        pos: Position {
            epoch: cfg.start_epoch,
            iteration: (cfg.start_epoch * steps) as u64,
            ..Position::default()
        },
        outcome: TrainOutcome {
            epochs: 0,
            stopped: false,
            best_metric: cfg.best_metric,
            best_epoch: cfg.best_epoch,
            validated_on_holdout: !job.val.is_empty(),
        },
        history: Vec::new(),
    };
    // the initialisation of a from-scratch network depends on `seed` only, resumed or not
    tch::manual_seed(cfg.seed as i64);
    let mut vs = VarStore::new(device);
    let net = SegResNet::new(&vs.root(), &job.network);
    let mut order: Vec<String> = vs.variables().keys().cloned().collect();
    order.sort();
    let mut opt = adamw(&vs, cfg.lr, cfg.weight_decay)?;
    let mut scaler = GradScaler::default();
    match loaded {
        Some(l) => {
            state::load_weights(&mut vs, &l.weights)?;
            opt.load_state(l.optimizer)?;
            scaler = l.meta.scaler;
            run.pos = l.meta.position;
            run.outcome.best_metric = l.meta.best_metric;
            run.outcome.best_epoch = l.meta.best_epoch;
            run.history = l.meta.history;
            obs.event(&TrainEvent::Resumed {
                epoch: run.pos.epoch,
                step: run.pos.step,
                iteration: run.pos.iteration,
                changed: state::changed(&l.meta.fingerprint, &state::fingerprint(job)),
            });
        }
        None => {
            if let Some(p) = &job.init_weights {
                weights::load_strict(&mut vs, p)?;
            }
        }
    }
    run.outcome.epochs = run.pos.epoch.min(cfg.max_epochs);
    if run.pos.epoch >= cfg.max_epochs {
        return Ok(run.outcome);
    }
    let mut model = Model {
        vs,
        net,
        device,
        amp: cfg.amp && device.is_cuda(),
        opt,
        scaler,
        order,
    };
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
    obs.event(&TrainEvent::Started {
        train: job.train.len(),
        val: job.val.len(),
        iterations_per_epoch: steps,
        parameters: SegResNet::num_parameters(&model.vs),
    });
    let first = run.pos.epoch + 1;
    for epoch in first..=cfg.max_epochs {
        let _span = info_span!("train_epoch", epoch).entered();
        let t_epoch = Instant::now();
        // every random decision comes from (seed, epoch, step): see `state`
        let mut indices: Vec<usize> = (0..job.train.len()).collect();
        indices.shuffle(&mut StdRng::seed_from_u64(step_seed(cfg.seed, epoch, 0)));
        let (done, mut loss_sum) = if epoch == first {
            (run.pos.step, run.pos.epoch_loss_sum)
        } else {
            (0, 0.0)
        };
        for (it, batch) in indices.chunks(cfg.batch_size).enumerate().skip(done) {
            let t_step = Instant::now();
            let seed = step_seed(cfg.seed, epoch, it + 1);
            tch::manual_seed(seed as i64);
            let mut rng = StdRng::seed_from_u64(seed);
            model.opt.zero_grad();
            let mut step_loss = 0.0;
            for &i in batch {
                if obs.stop_requested() {
                    let pos = Position {
                        epoch: epoch - 1,
                        step: it,
                        iteration: run.pos.iteration,
                        epoch_loss_sum: loss_sum,
                    };
                    return model.stop(job, run, pos);
                }
                let sample = cache.get(i, || prepare(&job.train[i], &cfg.prepare, &limits))?;
                let (x, y) = sample.random_crop(cfg.roi, |n| rng.gen_range(0..n));
                let x = x.to_device(model.device);
                let y = y.to_device(model.device);
                let logits = model.forward(&x, true);
                let loss = dice_ce_loss(&logits, &y) / batch.len() as f64;
                step_loss += loss.double_value(&[]);
                if model.amp {
                    (loss * model.scaler.scale()).backward();
                } else {
                    loss.backward();
                }
            }
            // under AMP a step whose gradients overflowed is skipped (and the scale backs off)
            if model.amp {
                let opt = &mut model.opt;
                model.scaler.step(&model.vs, || opt.step())?;
            } else {
                model.opt.step()?;
            }
            loss_sum += step_loss;
            run.pos.iteration += 1;
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
            best_metric: run.outcome.best_metric,
            best_epoch: run.outcome.best_epoch,
            seconds: 0.0,
        };
        if epoch % cfg.val_interval == 0 || epoch == cfg.max_epochs {
            let dice = match validate(&model, val_pairs, cfg, &limits, &mut cache, holdout, obs)? {
                Some(d) => d,
                None => {
                    let pos = Position {
                        epoch: epoch - 1,
                        step: steps,
                        iteration: run.pos.iteration,
                        epoch_loss_sum: loss_sum,
                    };
                    return model.stop(job, run, pos);
                }
            };
            record.val_dice = dice;
            if let Some(d) = dice {
                if run.outcome.best_metric.is_none_or(|b| d > b) {
                    weights::save_state_dict(&model.vs, &model.order, &job.output)?;
                    run.outcome.best_metric = Some(d);
                    run.outcome.best_epoch = Some(epoch);
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
        run.outcome.epochs = epoch;
        run.history.retain(|h| h.epoch < epoch);
        run.history.push(record.clone());
        run.pos = Position {
            epoch,
            step: 0,
            iteration: run.pos.iteration,
            epoch_loss_sum: 0.0,
        };
        // before the event: whoever records the epoch finds its state on disk
        model.save_state(job, &run)?;
        obs.event(&TrainEvent::Epoch(record));
    }
    Ok(run.outcome)
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
