//! The bundle's inference pipeline end to end (`docs/bundle.md` §3): orientation to
//! RAS, spacing, normalise (non-zero), scale to [-1, 1], sliding window, softmax + argmax,
//! and the nearest inversion back to the input grid.

use crate::engine::JobRecord;
use crate::error::{ModelsError, Result};
use crate::inferer::{predict_labels_timed, SlidingWindow, WindowObserver};
use crate::network::SegResNet;
use crate::transforms::{intensity, orientation, spacing};
use ferrolabel_imaging::Volume;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A preprocessed image on the network's grid, with what is needed to invert it.
#[derive(Debug)]
pub struct Prepared {
    /// `[1, X', Y', Z']` float32 network input (scaled to [-1, 1]).
    pub image: Tensor,
    /// The orientation step.
    pub orientation: orientation::OrientationOp,
    /// The spacing step.
    pub spacing: spacing::SpacingOp,
}

/// Seconds spent in each stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimes {
    /// Orientation, spacing, intensity.
    pub pre: f64,
    /// Sliding-window network passes and blending.
    pub infer: f64,
    /// Softmax + argmax of the blended logits and the inversion to the input grid (what MONAI
    /// counts as post-processing).
    pub invert: f64,
}

/// A label map on the input grid.
#[derive(Debug)]
pub struct Segmentation {
    /// Class index per voxel, NIfTI order (x fastest), input dims.
    pub labels: Vec<u8>,
    /// Input dims.
    pub dims: [usize; 3],
    /// Shape of the network grid (after orientation and spacing).
    pub network_shape: [i64; 3],
    /// Number of sliding windows run.
    pub windows: usize,
    /// Time per stage.
    pub times: StageTimes,
    /// The engine's record of the job (default when run outside the engine).
    pub engine: JobRecord,
}

/// The volume as a channel-first `[1, X, Y, Z]` float32 tensor (a view of its data).
pub fn volume_tensor(vol: &Volume) -> Tensor {
    let [nx, ny, nz] = vol.dims;
    Tensor::from_slice(&vol.data)
        .view([nz as i64, ny as i64, nx as i64])
        .permute([2, 1, 0])
        .unsqueeze(0)
}

/// `[X, Y, Z]` labels to NIfTI order bytes.
pub fn labels_to_vec(labels: &Tensor) -> Result<Vec<u8>> {
    let t = labels
        .to_kind(Kind::Uint8)
        .to_device(Device::Cpu)
        .permute([2, 1, 0])
        .contiguous();
    Ok(Vec::<u8>::try_from(t.view([-1]))?)
}

/// Orientation + spacing of a volume (the geometric part of the preprocessing).
pub fn orient_and_resample(vol: &Volume, pixdim: [f64; 3]) -> Result<Prepared> {
    let shape = [vol.dims[0] as i64, vol.dims[1] as i64, vol.dims[2] as i64];
    let orient = orientation::plan(&vol.affine, shape).ok_or_else(|| {
        ModelsError::Invalid("the image affine is degenerate (no orientation)".into())
    })?;
    let x = orient.apply(&volume_tensor(vol));
    let a1 = orient.new_affine(&vol.affine);
    let s = x.size();
    let spacing = spacing::plan(&a1, [s[1], s[2], s[3]], pixdim).ok_or_else(|| {
        ModelsError::Invalid("cannot resample this image to the model spacing".into())
    })?;
    let image = spacing.apply(&x, spacing::Interp::Bilinear);
    Ok(Prepared {
        image,
        orientation: orient,
        spacing,
    })
}

/// The full preprocessing: orientation, spacing, normalise non-zero, scale to [-1, 1].
pub fn preprocess(vol: &Volume, pixdim: [f64; 3]) -> Result<Prepared> {
    if vol.has_non_finite() {
        return Err(ModelsError::Invalid(
            "the image contains NaN or infinite voxel values".into(),
        ));
    }
    let mut p = orient_and_resample(vol, pixdim)?;
    p.image = intensity::scale_to_unit_range(&intensity::normalize_nonzero(&p.image));
    Ok(p)
}

/// Inverts network-grid labels `[X', Y', Z']` back to the input grid `[X, Y, Z]`
/// (nearest, float64, border; then un-orient), as MONAI's `Invertd(nearest_interp=True)`.
///
/// The float64 sampling grid is built a slab at a time ([`spacing::CHUNK_VOXELS`]) and the
/// result is written straight into uint8, so no input-sized float buffer is ever allocated.
pub fn invert_labels(labels: &Tensor, prepared: &Prepared) -> Result<Tensor> {
    invert_labels_chunked(labels, prepared, spacing::CHUNK_VOXELS)
}

/// [`invert_labels`] with `chunk_voxels` input-grid voxels resampled per slab (the result
/// does not depend on it).
pub fn invert_labels_chunked(
    labels: &Tensor,
    prepared: &Prepared,
    chunk_voxels: i64,
) -> Result<Tensor> {
    let inv = prepared
        .spacing
        .inverse()
        .ok_or_else(|| ModelsError::Invalid("the spacing transform is not invertible".into()))?;
    let x = labels.unsqueeze(0);
    let back = inv.resample(&x, spacing::Interp::Nearest, Kind::Uint8, chunk_voxels);
    let back = prepared.orientation.invert(&back);
    Ok(back.squeeze_dim(0))
}

/// Runs the whole pipeline with `net` on `device`. With `amp` (CUDA only) the network runs
/// under fp16 autocast, as the bundle's evaluator does.
pub fn segment(
    net: &SegResNet,
    vol: &Volume,
    pixdim: [f64; 3],
    sw: &SlidingWindow,
    device: Device,
    amp: bool,
    observer: &mut dyn WindowObserver,
) -> Result<Segmentation> {
    segment_with(
        net,
        || Ok((preprocess(vol, pixdim)?, vol.dims)),
        sw,
        device,
        amp,
        observer,
    )
}

/// [`segment`] of a shared volume whose handle is given up once the image is preprocessed:
/// when no one else holds the volume its voxels (0.4 GB for a 512x512x400 CT) are freed
/// before the sliding window, whose accumulator is the memory peak.
pub fn segment_shared(
    net: &SegResNet,
    vol: Arc<Volume>,
    pixdim: [f64; 3],
    sw: &SlidingWindow,
    device: Device,
    amp: bool,
    observer: &mut dyn WindowObserver,
) -> Result<Segmentation> {
    segment_with(
        net,
        move || Ok((preprocess(&vol, pixdim)?, vol.dims)),
        sw,
        device,
        amp,
        observer,
    )
}

/// The pipeline after `prepare` (the preprocessed image and the input dims); everything
/// `prepare` owns is dropped before the sliding window starts.
fn segment_with(
    net: &SegResNet,
    prepare: impl FnOnce() -> Result<(Prepared, [usize; 3])>,
    sw: &SlidingWindow,
    device: Device,
    amp: bool,
    observer: &mut dyn WindowObserver,
) -> Result<Segmentation> {
    let t0 = Instant::now();
    let (prepared, dims) = prepare()?;
    let input = prepared.image.unsqueeze(0).to_device(device);
    let s = input.size();
    let network_shape = [s[2], s[3], s[4]];
    let t1 = Instant::now();
    let mut windows = 0;
    let classes = net.config().out_channels;
    let (labels, finalize_secs) = tch::no_grad(|| {
        predict_labels_timed(
            &input,
            sw,
            classes,
            |x| {
                windows += x.size()[0] as usize;
                let y = if amp && device.is_cuda() {
                    tch::autocast(true, || net.forward_t(x, false))
                } else {
                    net.forward_t(x, false)
                };
                Ok(y)
            },
            observer,
        )
    })?;
    drop(input);
    let t2 = Instant::now();
    let back = invert_labels(&labels, &prepared)?;
    let out = labels_to_vec(&back)?;
    let t3 = Instant::now();
    Ok(Segmentation {
        labels: out,
        dims,
        network_shape,
        windows,
        times: StageTimes {
            pre: (t1 - t0).as_secs_f64(),
            infer: (t2 - t1).as_secs_f64() - finalize_secs,
            invert: (t3 - t2).as_secs_f64() + finalize_secs,
        },
        engine: JobRecord::default(),
    })
}

/// Settings of a Monte Carlo dropout run (epistemic uncertainty, docs/protocol.md §11.3).
#[derive(Debug, Clone, PartialEq)]
pub struct McDropout {
    /// Forward passes per window with Dropout3d active.
    pub samples: usize,
    /// Spacing (mm) the image is resampled to; coarser than the model's spacing is faster.
    pub pixdim: [f64; 3],
    /// Sliding-window overlap.
    pub overlap: f64,
    /// Window edge (voxels, a multiple of 8; the bundle's is 96). Smaller windows on a small
    /// image cost less padding.
    pub roi: i64,
    /// Seed of the dropout masks (`None`: the generator is not reseeded).
    pub seed: Option<i64>,
}

/// The epistemic uncertainty of one image.
#[derive(Debug, Clone, Serialize)]
pub struct Uncertainty {
    /// Mean over the network grid of the per-voxel entropy (nats) of the softmax averaged over
    /// the Monte Carlo samples: `-sum_c p_c ln p_c` with `p = mean_t softmax(net_t(x))`.
    pub entropy: f64,
    /// Forward passes per window.
    pub samples: usize,
    /// Windows run (each `samples` times).
    pub windows: usize,
    /// Shape of the network grid.
    pub network_shape: [i64; 3],
    /// Seconds spent.
    pub seconds: f64,
    /// The engine's record of the job (default when run outside the engine).
    pub engine: JobRecord,
}

/// Monte Carlo dropout: every sliding window runs `mc.samples` times with Dropout3d active; the
/// voxel entropy of the mean softmax is blended across windows with the bundle's gaussian
/// weights and averaged over the grid. The observer is called after every forward pass
/// (`done` counts passes), so a caller can run other work between two passes or cancel.
pub fn mc_dropout_entropy(
    net: &SegResNet,
    vol: &Volume,
    mc: &McDropout,
    device: Device,
    amp: bool,
    observer: &mut dyn WindowObserver,
) -> Result<Uncertainty> {
    use crate::inferer::window::{gaussian_importance_map, windows};
    let t0 = Instant::now();
    if mc.samples == 0 {
        return Err(ModelsError::Invalid(
            "Monte Carlo dropout needs at least one sample".into(),
        ));
    }
    if mc.roi < 8 || mc.roi % 8 != 0 {
        return Err(ModelsError::Invalid(format!(
            "the Monte Carlo window edge must be a positive multiple of 8, not {}",
            mc.roi
        )));
    }
    let roi = [mc.roi; 3];
    let prepared = preprocess(vol, mc.pixdim)?;
    let input = prepared.image.unsqueeze(0).to_device(device);
    let s = input.size();
    let size = [s[2], s[3], s[4]];
    let pads: Vec<(i64, i64)> = (0..3)
        .map(|i| {
            let d = (roi[i] - size[i]).max(0);
            (d / 2, d - d / 2)
        })
        .collect();
    let padded = if pads.iter().any(|&(a, b)| a > 0 || b > 0) {
        input.pad(
            [
                pads[2].0, pads[2].1, pads[1].0, pads[1].1, pads[0].0, pads[0].1,
            ],
            "replicate",
            None,
        )
    } else {
        input.shallow_clone()
    };
    drop(input);
    let work = [
        size[0].max(roi[0]),
        size[1].max(roi[1]),
        size[2].max(roi[2]),
    ];
    let wins = windows(work, roi, mc.overlap);
    let weight = gaussian_importance_map(roi, 0.125).to_device(device);
    let acc = Tensor::zeros(work, (Kind::Float, device));
    let wsum = Tensor::zeros(work, (Kind::Float, device));
    if let Some(seed) = mc.seed {
        tch::manual_seed(seed);
    }
    let total = wins.len() * mc.samples;
    let mut done = 0usize;
    tch::no_grad(|| -> Result<()> {
        for w in &wins {
            let x = padded
                .narrow(2, w[0], roi[0])
                .narrow(3, w[1], roi[1])
                .narrow(4, w[2], roi[2]);
            let mut sum: Option<Tensor> = None;
            for _ in 0..mc.samples {
                let y = if amp && device.is_cuda() {
                    tch::autocast(true, || net.forward_t(&x, true))
                } else {
                    net.forward_t(&x, true)
                };
                let p = y.to_kind(Kind::Float).softmax(1, Kind::Float);
                sum = Some(match sum {
                    None => p,
                    Some(s) => s + p,
                });
                done += 1;
                if !observer.window_done(done, total) {
                    return Err(ModelsError::Cancelled);
                }
            }
            let Some(sum) = sum else { continue };
            let mean = sum / mc.samples as f64;
            let h = (mean.clamp_min(1e-8).log() * &mean)
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                .neg()
                .squeeze_dim(0);
            let region = |t: &Tensor| {
                t.narrow(0, w[0], roi[0])
                    .narrow(1, w[1], roi[1])
                    .narrow(2, w[2], roi[2])
            };
            let _ = region(&acc).g_add_(&(h * &weight));
            let _ = region(&wsum).g_add_(&weight);
        }
        Ok(())
    })?;
    let map = (acc / wsum)
        .narrow(0, pads[0].0, size[0])
        .narrow(1, pads[1].0, size[1])
        .narrow(2, pads[2].0, size[2]);
    let entropy = f64::try_from(map.mean(Kind::Double))?;
    Ok(Uncertainty {
        entropy,
        samples: mc.samples,
        windows: wins.len(),
        network_shape: size,
        seconds: t0.elapsed().as_secs_f64(),
        engine: JobRecord::default(),
    })
}
