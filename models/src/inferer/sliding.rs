//! Sliding-window inference with bounded memory.
//!
//! MONAI keeps a `C`-channel float32 accumulator for the whole volume (8.4 GB for the
//! 274x274x267 grid of a 512x512x400 CT at 1.5 mm with 105 classes). Here the accumulator is
//! kept per cell of the grid the window edges cut ([`super::blend`]): a cell lives from the
//! first window that touches it to the last, then it is divided by its weight sum,
//! soft-maxed, arg-maxed and kept only as one byte per voxel. Every voxel gets MONAI's
//! additions in MONAI's order and the same division, so the blended values are identical; the
//! live cells of that grid peak at 2.1 GB instead of 8.4 (or 2.9 for one window's depth).

use super::blend::{Blender, Block};
use super::window::{constant_importance_map, gaussian_importance_map, windows};
use crate::error::{ModelsError, Result};
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

/// [`predict_labels`], also returning the seconds spent finalising cells (division, softmax,
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
    .to_device(dev);
    let weight5 = weight.view([1, 1, cfg.roi[0], cfg.roi[1], cfg.roi[2]]);
    let mut blender = Blender::new(work, cfg.roi, &wins, num_classes)?;
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
        drop(x);
        let mut finished = Vec::new();
        for i in 0..chunk.len() {
            let mut buf = logits.narrow(0, i as i64, 1);
            let _ = buf.g_mul_(&weight5);
            finished.extend(blender.add(done, &buf.squeeze_dim(0), &weight)?);
            done += 1;
            if !observer.window_done(done, total) {
                return Err(ModelsError::Cancelled);
            }
        }
        // the window outputs go before the finished cells' softmax temporaries come
        drop(logits);
        let t = std::time::Instant::now();
        for block in finished {
            finish(block, &labels)?;
        }
        finalize_secs += t.elapsed().as_secs_f64();
    }
    let labels = labels
        .narrow(0, pads[0].0, size[0])
        .narrow(1, pads[1].0, size[1])
        .narrow(2, pads[2].0, size[2]);
    Ok((labels.contiguous(), finalize_secs))
}

/// Voxels finalised per step: bounds the temporaries of the division and the softmax.
const FINALIZE_VOXELS: i64 = 1 << 17;

/// Finishes a cell: divide by the weight sum, softmax over the classes, argmax into `labels`.
/// The softmax runs over the contiguous last dimension (channels-last), whose per-voxel
/// arithmetic does not depend on how many voxels a step holds, so the labels do not depend on
/// the cell grid either.
fn finish(block: Block, labels: &Tensor) -> Result<()> {
    let s = block.count.size();
    let [ox, oy, oz] = block.origin;
    let planes = (FINALIZE_VOXELS / (s[1] * s[2]).max(1)).clamp(1, s[0]);
    let mut start = 0;
    while start < s[0] {
        let n = planes.min(s[0] - start);
        let out = block.acc.narrow(1, start, n) / block.count.narrow(0, start, n);
        let probs = out.permute([1, 2, 3, 0]).softmax(-1, Kind::Float);
        drop(out);
        let lab = probs
            .argmax(-1, false)
            .to_kind(Kind::Uint8)
            .to_device(Device::Cpu);
        labels
            .narrow(0, ox + start, n)
            .narrow(1, oy, s[1])
            .narrow(2, oz, s[2])
            .copy_(&lab);
        start += n;
    }
    Ok(())
}
