//! One class's softmax probability inside a box of the input grid, computed from only the
//! sliding windows that cover that box (the likelihood of `model+graphcut` scribbles,
//! `docs/scribbles.md`).
//!
//! The whole image is preprocessed as for a segmentation (orientation, spacing, non-zero
//! normalisation: its statistics are global), then the box is mapped to the network grid,
//! grown by a margin of context and to at least one window, and only that crop runs through
//! the network. Each window's softmax of the class is blended with the bundle's gaussian
//! weights (blending probabilities, not logits, keeps one channel in memory instead of 105),
//! and the result is sampled back onto the box's input voxels with trilinear interpolation.

use crate::engine::JobRecord;
use crate::error::{ModelsError, Result};
use crate::inferer::window::{gaussian_importance_map, windows};
use crate::inferer::WindowObserver;
use crate::network::SegResNet;
use crate::pipeline::preprocess;
use ferrolabel_imaging::{affine, Volume};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Voxels of network-grid context added on each side of the box before it is cropped.
pub const CONTEXT_MARGIN: i64 = 16;

/// A box of the input grid: `[lo, hi)` per axis, in voxel indices.
pub type VoxelBox = [[usize; 2]; 3];

/// One class's probability on a box of the input grid.
#[derive(Debug, Clone)]
pub struct ClassProbability {
    /// The box (input grid).
    pub roi: VoxelBox,
    /// Probability per box voxel, x fastest (NIfTI order within the box), in `[0, 1]`.
    pub prob: Vec<f32>,
    /// The class (channel) index.
    pub class: usize,
    /// Sliding windows run.
    pub windows: usize,
    /// The crop of the network grid that ran, `[lo, hi)` per axis.
    pub network_box: [[i64; 2]; 3],
    /// Seconds spent (preprocessing, windows, resampling).
    pub seconds: f64,
    /// The engine's record of the job (default when run outside the engine).
    pub engine: JobRecord,
}

/// Settings of a class-probability run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbabilitySettings {
    /// Spacing (mm) of the network grid.
    pub pixdim: [f64; 3],
    /// Window edge (the bundle's 96).
    pub roi: i64,
    /// Sliding-window overlap.
    pub overlap: f64,
    /// Windows per network call.
    pub sw_batch_size: usize,
}

/// The network-grid crop `[lo, hi)` holding the input box plus [`CONTEXT_MARGIN`], grown to
/// at least `window` per axis where the grid allows, clamped to `shape`. `to_net` maps input
/// voxel indices to network voxel indices.
fn network_box(
    to_net: &affine::Affine,
    roi: &VoxelBox,
    shape: [i64; 3],
    window: i64,
) -> [[i64; 2]; 3] {
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for c in 0..8 {
        let p = [0, 1, 2].map(|a| {
            let [l, h] = roi[a];
            if c >> a & 1 == 0 {
                l as f64
            } else {
                h.saturating_sub(1) as f64
            }
        });
        let q = affine::apply(to_net, p);
        for a in 0..3 {
            lo[a] = lo[a].min(q[a]);
            hi[a] = hi[a].max(q[a]);
        }
    }
    let mut out = [[0i64; 2]; 3];
    for a in 0..3 {
        let n = shape[a];
        let mut l = (lo[a].floor() as i64 - CONTEXT_MARGIN).max(0);
        let mut h = (hi[a].ceil() as i64 + 1 + CONTEXT_MARGIN).min(n);
        let want = window.min(n);
        while h - l < want {
            if l > 0 {
                l -= 1;
            }
            if h - l < want && h < n {
                h += 1;
            }
        }
        if l >= h {
            l = 0;
            h = n;
        }
        out[a] = [l, h];
    }
    out
}

/// Trilinear sample of `data` (`[nx][ny][nz]`, z fastest) at a continuous index, clamped to
/// the border.
fn trilinear(data: &[f32], n: [usize; 3], p: [f64; 3]) -> f32 {
    let mut i0 = [0usize; 3];
    let mut i1 = [0usize; 3];
    let mut f = [0f64; 3];
    for a in 0..3 {
        let max = (n[a] - 1) as f64;
        let x = p[a].clamp(0.0, max);
        let fl = x.floor();
        i0[a] = fl as usize;
        i1[a] = (i0[a] + 1).min(n[a] - 1);
        f[a] = x - fl;
    }
    let at = |x: usize, y: usize, z: usize| data[(x * n[1] + y) * n[2] + z] as f64;
    let mut v = 0.0;
    for c in 0..8 {
        let (x, wx) = if c & 1 == 0 {
            (i0[0], 1.0 - f[0])
        } else {
            (i1[0], f[0])
        };
        let (y, wy) = if c & 2 == 0 {
            (i0[1], 1.0 - f[1])
        } else {
            (i1[1], f[1])
        };
        let (z, wz) = if c & 4 == 0 {
            (i0[2], 1.0 - f[2])
        } else {
            (i1[2], f[2])
        };
        let w = wx * wy * wz;
        if w != 0.0 {
            v += w * at(x, y, z);
        }
    }
    v as f32
}

/// Checks that `roi` is a non-empty box inside `dims`.
pub fn check_box(roi: &VoxelBox, dims: [usize; 3]) -> Result<()> {
    for a in 0..3 {
        let [l, h] = roi[a];
        if l >= h || h > dims[a] {
            return Err(ModelsError::Invalid(format!(
                "box {roi:?} is empty or outside the image {dims:?}"
            )));
        }
    }
    Ok(())
}

/// Runs `net` on the windows covering `roi` of `vol` and returns the softmax probability of
/// `class` on the box's input voxels. The observer is called after every window (cancel,
/// background bookkeeping), as for a segmentation.
#[allow(clippy::too_many_arguments)]
pub fn class_probability(
    net: &SegResNet,
    vol: &Volume,
    roi: &VoxelBox,
    class: usize,
    settings: &ProbabilitySettings,
    device: Device,
    amp: bool,
    observer: &mut dyn WindowObserver,
) -> Result<ClassProbability> {
    let t0 = Instant::now();
    check_box(roi, vol.dims)?;
    let classes = net.config().out_channels;
    if class as i64 >= classes {
        return Err(ModelsError::Invalid(format!(
            "class {class} is not one of the network's {classes} channels"
        )));
    }
    if settings.roi < 8 || settings.roi % 8 != 0 {
        return Err(ModelsError::Invalid(format!(
            "the window edge must be a positive multiple of 8, not {}",
            settings.roi
        )));
    }
    let prepared = preprocess(vol, settings.pixdim)?;
    let s = prepared.image.size();
    let shape = [s[1], s[2], s[3]];
    let net_affine = prepared.spacing.dst_affine;
    let to_net = affine::inverse(&net_affine)
        .map(|inv| affine::matmul(&inv, &vol.affine))
        .ok_or_else(|| ModelsError::Invalid("the network grid is singular".into()))?;
    let nb = network_box(&to_net, roi, shape, settings.roi);
    let crop = prepared
        .image
        .narrow(1, nb[0][0], nb[0][1] - nb[0][0])
        .narrow(2, nb[1][0], nb[1][1] - nb[1][0])
        .narrow(3, nb[2][0], nb[2][1] - nb[2][0])
        .unsqueeze(0)
        .to_device(device);
    drop(prepared);
    let size = [
        nb[0][1] - nb[0][0],
        nb[1][1] - nb[1][0],
        nb[2][1] - nb[2][0],
    ];
    let w = settings.roi;
    let pads: Vec<(i64, i64)> = (0..3)
        .map(|a| {
            let d = (w - size[a]).max(0);
            (d / 2, d - d / 2)
        })
        .collect();
    let padded = if pads.iter().any(|&(a, b)| a > 0 || b > 0) {
        crop.pad(
            [
                pads[2].0, pads[2].1, pads[1].0, pads[1].1, pads[0].0, pads[0].1,
            ],
            "replicate",
            None,
        )
    } else {
        crop.shallow_clone()
    };
    drop(crop);
    let work = [size[0].max(w), size[1].max(w), size[2].max(w)];
    let wins = windows(work, [w; 3], settings.overlap);
    let weight = gaussian_importance_map([w; 3], 0.125).to_device(device);
    let acc = Tensor::zeros(work, (Kind::Float, device));
    let wsum = Tensor::zeros(work, (Kind::Float, device));
    let total = wins.len();
    let mut done = 0usize;
    tch::no_grad(|| -> Result<()> {
        for chunk in wins.chunks(settings.sw_batch_size.max(1)) {
            let parts: Vec<Tensor> = chunk
                .iter()
                .map(|o| {
                    padded
                        .narrow(2, o[0], w)
                        .narrow(3, o[1], w)
                        .narrow(4, o[2], w)
                })
                .collect();
            let x = Tensor::cat(&parts, 0);
            let y = if amp && device.is_cuda() {
                tch::autocast(true, || net.forward_t(&x, false))
            } else {
                net.forward_t(&x, false)
            };
            let p = y
                .to_kind(Kind::Float)
                .softmax(1, Kind::Float)
                .select(1, class as i64);
            for (i, o) in chunk.iter().enumerate() {
                let region =
                    |t: &Tensor| t.narrow(0, o[0], w).narrow(1, o[1], w).narrow(2, o[2], w);
                let _ = region(&acc).g_add_(&(p.get(i as i64) * &weight));
                let _ = region(&wsum).g_add_(&weight);
                done += 1;
                if !observer.window_done(done, total) {
                    return Err(ModelsError::Cancelled);
                }
            }
        }
        Ok(())
    })?;
    let map = (acc / wsum)
        .narrow(0, pads[0].0, size[0])
        .narrow(1, pads[1].0, size[1])
        .narrow(2, pads[2].0, size[2])
        .to_device(Device::Cpu)
        .contiguous();
    let data = Vec::<f32>::try_from(map.view([-1]))?;
    let n = [size[0] as usize, size[1] as usize, size[2] as usize];
    let [[x0, x1], [y0, y1], [z0, z1]] = *roi;
    let mut prob = Vec::with_capacity((x1 - x0) * (y1 - y0) * (z1 - z0));
    for k in z0..z1 {
        for j in y0..y1 {
            for i in x0..x1 {
                let q = affine::apply(&to_net, [i as f64, j as f64, k as f64]);
                let local = [
                    q[0] - nb[0][0] as f64,
                    q[1] - nb[1][0] as f64,
                    q[2] - nb[2][0] as f64,
                ];
                prob.push(trilinear(&data, n, local).clamp(0.0, 1.0));
            }
        }
    }
    Ok(ClassProbability {
        roi: *roi,
        prob,
        class,
        windows: total,
        network_box: nb,
        seconds: t0.elapsed().as_secs_f64(),
        engine: JobRecord::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_holds_the_roi_and_one_window() {
        let to_net = affine::IDENTITY;
        let nb = network_box(&to_net, &[[40, 60], [0, 10], [5, 6]], [200, 50, 30], 32);
        assert_eq!(nb[0], [24, 76]);
        assert_eq!(nb[1], [0, 32]);
        assert_eq!(nb[2], [0, 30]);
    }

    #[test]
    fn trilinear_interpolates_and_clamps() {
        // 2 x 1 x 1: values 0 and 1 along x
        let data = [0.0f32, 1.0];
        assert!((trilinear(&data, [2, 1, 1], [0.25, 0.0, 0.0]) - 0.25).abs() < 1e-6);
        assert_eq!(trilinear(&data, [2, 1, 1], [-3.0, 0.0, 0.0]), 0.0);
        assert_eq!(trilinear(&data, [2, 1, 1], [5.0, 2.0, -1.0]), 1.0);
    }

    fn tiny_net(vs: &tch::nn::VarStore) -> SegResNet {
        let config = crate::network::SegResNetConfig {
            in_channels: 1,
            out_channels: 3,
            init_filters: 2,
            blocks_down: vec![1, 1],
            blocks_up: vec![1],
            dropout_prob: None,
            norm_groups: 1,
        };
        SegResNet::new(&vs.root(), &config)
    }

    #[test]
    fn class_probabilities_sum_to_one_on_the_box() {
        tch::manual_seed(3);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let net = tiny_net(&vs);
        let dims = [20usize, 18, 12];
        let data: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|i| ((i * 37) % 101) as f32 - 50.0)
            .collect();
        let mut aff = affine::IDENTITY;
        aff[0][0] = 2.0;
        aff[1][1] = 2.0;
        aff[2][2] = 3.0;
        let vol = Volume::new(dims, data, aff).unwrap();
        let settings = ProbabilitySettings {
            pixdim: [3.0; 3],
            roi: 8,
            overlap: 0.25,
            sw_batch_size: 2,
        };
        let roi = [[3, 15], [2, 9], [1, 11]];
        let mut never = |_: usize, _: usize| true;
        let ps: Vec<ClassProbability> = (0..3)
            .map(|c| {
                class_probability(
                    &net,
                    &vol,
                    &roi,
                    c,
                    &settings,
                    Device::Cpu,
                    false,
                    &mut never,
                )
                .unwrap()
            })
            .collect();
        assert_eq!(ps[0].prob.len(), 12 * 7 * 10);
        assert!(ps[0].windows >= 1);
        for v in 0..ps[0].prob.len() {
            let sum: f32 = ps.iter().map(|p| p.prob[v]).sum();
            assert!((sum - 1.0).abs() < 1e-4, "voxel {v}: {sum}");
        }
        let mut stop = |_: usize, _: usize| false;
        let e = class_probability(
            &net,
            &vol,
            &roi,
            0,
            &settings,
            Device::Cpu,
            false,
            &mut stop,
        );
        assert!(matches!(e, Err(ModelsError::Cancelled)));
        let e = class_probability(
            &net,
            &vol,
            &roi,
            3,
            &settings,
            Device::Cpu,
            false,
            &mut never,
        );
        assert!(matches!(e, Err(ModelsError::Invalid(_))));
    }

    #[test]
    fn refuses_empty_or_outside_boxes() {
        assert!(check_box(&[[0, 4], [0, 4], [0, 4]], [4, 4, 4]).is_ok());
        assert!(check_box(&[[2, 2], [0, 4], [0, 4]], [4, 4, 4]).is_err());
        assert!(check_box(&[[0, 5], [0, 4], [0, 4]], [4, 4, 4]).is_err());
    }
}
