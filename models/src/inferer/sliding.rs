//! Sliding-window inference with bounded memory.
//!
//! MONAI keeps a `C`-channel float32 accumulator for the whole volume (13.7 GB for a
//! 287x287x397 grid with 105 classes). Windows run first-dimension-slowest, so once every
//! window that starts at a given offset along dimension 0 is done, the part of the volume
//! before the next offset is final: it is divided by the weight sum, soft-maxed, arg-maxed
//! and kept only as one byte per voxel. The accumulator therefore spans one window along
//! dimension 0 instead of the whole volume, with exactly MONAI's per-voxel arithmetic
//! (same accumulation order, same division), so the labels are identical.

use super::window::{constant_importance_map, gaussian_importance_map, windows};
use crate::error::{ModelsError, Result};
use crate::network::segresnet::is_channels_last;
use tch::{Device, Kind, Tensor};

/// How windows are weighted when they overlap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BlendMode {
    /// Gaussian weights with `sigma = sigma_scale * roi` (the bundle's inference).
    Gaussian {
        /// Sigma as a fraction of the window size (MONAI default 0.125).
        sigma_scale: f64,
    },
    /// Uniform weights (MONAI's default mode, used by training validation).
    Constant,
}

/// How a volume smaller than the window is padded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PadMode {
    /// Repeat the edge voxels (the bundle's inference).
    Replicate,
    /// Pad with a constant (MONAI's default, used by training validation).
    Constant(f64),
}

/// Sliding-window settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    /// Window size.
    pub roi: [i64; 3],
    /// Fractional overlap between neighbouring windows.
    pub overlap: f64,
    /// Windows per network call.
    pub sw_batch_size: usize,
    /// Blending of overlapping windows.
    pub blend: BlendMode,
    /// Padding of small volumes.
    pub pad: PadMode,
}

impl SlidingWindow {
    /// The bundle's inferer: 96^3, overlap 0.25, batch 1, gaussian, replicate padding.
    pub fn bundle_default() -> Self {
        Self {
            roi: [96, 96, 96],
            overlap: 0.25,
            sw_batch_size: 1,
            blend: BlendMode::Gaussian { sigma_scale: 0.125 },
            pad: PadMode::Replicate,
        }
    }
}

/// Progress and cancellation hooks of a sliding-window run.
pub trait WindowObserver {
    /// Called after each window; return `false` to cancel the run.
    fn window_done(&mut self, done: usize, total: usize) -> bool;
}

impl<F: FnMut(usize, usize) -> bool> WindowObserver for F {
    fn window_done(&mut self, done: usize, total: usize) -> bool {
        self(done, total)
    }
}

/// Padding `(before, after)` per spatial dimension so each is at least the window size.
fn padding(size: [i64; 3], roi: [i64; 3]) -> [(i64, i64); 3] {
    let mut p = [(0, 0); 3];
    for i in 0..3 {
        let diff = (roi[i] - size[i]).max(0);
        p[i] = (diff / 2, diff - diff / 2);
    }
    p
}

/// The accumulator of the live slab along dimension 0.
struct Slab {
    /// `[1, C, L, Y, Z]` weighted logit sums for x in `[base, base + L)`.
    acc: Tensor,
    /// `[1, 1, L, Y, Z]` weight sums.
    count: Tensor,
    base: i64,
    /// `acc` is channels-last (`[1, L, Y, Z, C]` in memory), as the logits it adds up.
    channels_last: bool,
}

impl Slab {
    /// A zeroed slab of `span` (`[L, Y, Z]`) whose accumulator has the layout of `logits`
    /// (channels-last logits are added without a strided gather). The per-voxel arithmetic
    /// is the same in both layouts.
    fn new(logits: &Tensor, num_classes: i64, span: [i64; 3]) -> Slab {
        let dev = logits.device();
        let [l, y, z] = span;
        let channels_last = is_channels_last(logits);
        let acc = if channels_last {
            Tensor::zeros([1, l, y, z, num_classes], (Kind::Float, dev)).permute([0, 4, 1, 2, 3])
        } else {
            Tensor::zeros([1, num_classes, l, y, z], (Kind::Float, dev))
        };
        Slab {
            acc,
            count: Tensor::zeros([1, 1, l, y, z], (Kind::Float, dev)),
            base: 0,
            channels_last,
        }
    }
}

/// Runs `predict` over windows of `input` (`[1, 1, X, Y, Z]`, float32) and returns the
/// `argmax(softmax)` label map `[X, Y, Z]` as uint8 on the CPU (`num_classes <= 256`).
///
/// `predict` maps a `[B, 1, rx, ry, rz]` batch to `[B, C, rx, ry, rz]` logits.
pub fn predict_labels(
    input: &Tensor,
    cfg: &SlidingWindow,
    num_classes: i64,
    predict: impl FnMut(&Tensor) -> Result<Tensor>,
    observer: &mut dyn WindowObserver,
) -> Result<Tensor> {
    predict_labels_timed(input, cfg, num_classes, predict, observer).map(|(labels, _)| labels)
}

/// [`predict_labels`], also returning the seconds spent finalising slabs (division, softmax,
/// argmax): the part MONAI counts as post-processing rather than network time.
pub fn predict_labels_timed(
    input: &Tensor,
    cfg: &SlidingWindow,
    num_classes: i64,
    mut predict: impl FnMut(&Tensor) -> Result<Tensor>,
    observer: &mut dyn WindowObserver,
) -> Result<(Tensor, f64)> {
    let mut finalize_secs = 0.0;
    if !(1..=256).contains(&num_classes) {
        return Err(ModelsError::Invalid(format!(
            "{num_classes} classes do not fit in uint8 labels"
        )));
    }
    let dev = input.device();
    let sz = input.size();
    let size = [sz[2], sz[3], sz[4]];
    let pads = padding(size, cfg.roi);
    let padded = if pads.iter().any(|&(a, b)| a > 0 || b > 0) {
        let pad = [
            pads[2].0, pads[2].1, pads[1].0, pads[1].1, pads[0].0, pads[0].1,
        ];
        match cfg.pad {
            PadMode::Replicate => input.pad(pad, "replicate", None),
            PadMode::Constant(v) => input.pad(pad, "constant", Some(v)),
        }
    } else {
        input.shallow_clone()
    };
    let work = [
        size[0].max(cfg.roi[0]),
        size[1].max(cfg.roi[1]),
        size[2].max(cfg.roi[2]),
    ];
    let wins = windows(work, cfg.roi, cfg.overlap);
    let weight = match cfg.blend {
        BlendMode::Gaussian { sigma_scale } => gaussian_importance_map(cfg.roi, sigma_scale),
        BlendMode::Constant => constant_importance_map(cfg.roi),
    }
    .to_device(dev)
    .view([1, 1, cfg.roi[0], cfg.roi[1], cfg.roi[2]]);
    let slab_len = cfg.roi[0].min(work[0]);
    // allocated at the first window, in the layout of the network's logits
    let mut slab: Option<Slab> = None;
    let labels = Tensor::zeros(work, (Kind::Uint8, Device::Cpu));
    let total = wins.len();
    let batch = cfg.sw_batch_size.max(1);
    let mut done = 0usize;
    for chunk in wins.chunks(batch) {
        let parts: Vec<Tensor> = chunk
            .iter()
            .map(|w| {
                padded
                    .narrow(2, w[0], cfg.roi[0])
                    .narrow(3, w[1], cfg.roi[1])
                    .narrow(4, w[2], cfg.roi[2])
            })
            .collect();
        let x = if parts.len() == 1 {
            parts[0].shallow_clone()
        } else {
            Tensor::cat(&parts, 0)
        };
        let logits = predict(&x)?;
        let slab = slab
            .get_or_insert_with(|| Slab::new(&logits, num_classes, [slab_len, work[1], work[2]]));
        for (i, w) in chunk.iter().enumerate() {
            if w[0] > slab.base {
                let t = std::time::Instant::now();
                finalize(slab, w[0], &labels)?;
                finalize_secs += t.elapsed().as_secs_f64();
            }
            let mut buf = logits.narrow(0, i as i64, 1);
            let _ = buf.g_mul_(&weight);
            let off = w[0] - slab.base;
            let _ = slab
                .acc
                .narrow(2, off, cfg.roi[0])
                .narrow(3, w[1], cfg.roi[1])
                .narrow(4, w[2], cfg.roi[2])
                .g_add_(&buf);
            let _ = slab
                .count
                .narrow(2, off, cfg.roi[0])
                .narrow(3, w[1], cfg.roi[1])
                .narrow(4, w[2], cfg.roi[2])
                .g_add_(&weight);
            done += 1;
            if !observer.window_done(done, total) {
                return Err(ModelsError::Cancelled);
            }
        }
    }
    let t = std::time::Instant::now();
    if let Some(slab) = slab.as_mut() {
        finalize(slab, work[0], &labels)?;
    }
    finalize_secs += t.elapsed().as_secs_f64();
    let labels = labels
        .narrow(0, pads[0].0, size[0])
        .narrow(1, pads[1].0, size[1])
        .narrow(2, pads[2].0, size[2]);
    Ok((labels.contiguous(), finalize_secs))
}

/// Planes of dimension 0 finalised per step: bounds the temporaries of the division and the
/// softmax to a few planes instead of the whole slab.
const FINALIZE_PLANES: i64 = 8;

/// Finishes `[base, upto)` of the slab: divide, softmax, argmax into `labels`, then shift the
/// slab so that it starts at `upto`.
fn finalize(slab: &mut Slab, upto: i64, labels: &Tensor) -> Result<()> {
    let n = upto - slab.base;
    if n <= 0 {
        return Ok(());
    }
    let len = slab.acc.size()[2];
    let n_done = n.min(len);
    let mut start = 0;
    while start < n_done {
        let planes = FINALIZE_PLANES.min(n_done - start);
        let out = slab.acc.narrow(2, start, planes) / slab.count.narrow(2, start, planes);
        // channels-last: the classes are the innermost, contiguous dimension
        let (out, dim) = if slab.channels_last {
            (out.squeeze_dim(0).permute([1, 2, 3, 0]), -1)
        } else {
            (out.squeeze_dim(0), 0)
        };
        let probs = out.softmax(dim, Kind::Float);
        drop(out);
        let lab = probs
            .argmax(dim, false)
            .to_kind(Kind::Uint8)
            .to_device(Device::Cpu);
        labels.narrow(0, slab.base + start, planes).copy_(&lab);
        start += planes;
    }
    // shift the unfinished tail to the front plane by plane (the source is always ahead of
    // the destination, so an in-order copy is safe even when they overlap), clear the rest
    let keep = len - n_done;
    for i in 0..keep {
        let src = slab.acc.narrow(2, n_done + i, 1);
        slab.acc.narrow(2, i, 1).copy_(&src);
        let src = slab.count.narrow(2, n_done + i, 1);
        slab.count.narrow(2, i, 1).copy_(&src);
    }
    let _ = slab.acc.narrow(2, keep, n_done).zero_();
    let _ = slab.count.narrow(2, keep, n_done).zero_();
    slab.base = upto;
    Ok(())
}
