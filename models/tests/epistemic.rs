//! The epistemic score (`pipeline::mc_dropout_entropy`) against an independent computation:
//! the test runs the same network passes itself (same input windows, same dropout seed),
//! saves their raw outputs, and `epistemic_reference.py` computes the score from them in
//! float64 with torch (softmax, mean over the passes, entropy, MONAI's gaussian blend, crop,
//! mean). Two cases: one pass without dropout (the plain softmax entropy of the logits) and
//! several passes with dropout (the mean over passes).

use ferrolabel_imaging::Volume;
use ferrolabel_models::inferer::window::windows;
use ferrolabel_models::network::{SegResNet, SegResNetConfig};
use ferrolabel_models::pipeline::{mc_dropout_entropy, preprocess, McDropout};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use tch::{nn, Device, Kind, Tensor};

/// Relative tolerance between the score (float32 tensors, float64 final mean) and the
/// float64 reference: float32 rounding (about 6e-8 per operation) over the softmax, the
/// mean of a few passes, the log and the blend of at most a few windows stays well under it
/// (measured: 3e-9 and 4e-10 for the two cases here).
const REL_TOL: f64 = 1e-6;

fn python() -> PathBuf {
    std::env::var_os("FERROLABEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"))
        })
}

/// A network with seeded random weights: 3 classes, 4 filters, 2 levels.
fn network(dropout: Option<f64>) -> (nn::VarStore, SegResNet) {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = SegResNetConfig {
        in_channels: 1,
        out_channels: 3,
        init_filters: 4,
        blocks_down: vec![1, 1],
        blocks_up: vec![1],
        dropout_prob: dropout,
        norm_groups: 2,
    };
    let net = SegResNet::new(&vs.root(), &cfg);
    (vs, net)
}

/// 40 x 24 x 10 voxels at 1.5 mm: with 16-voxel windows and overlap 0.25, 3 x 2 x 1 windows
/// (overlapping in x and y), the z axis padded 3 + 3.
fn volume() -> Volume {
    let dims = [40usize, 24, 10];
    let mut data = Vec::with_capacity(dims.iter().product());
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                let r = ((i as f32 - 20.0).powi(2) + (j as f32 - 12.0).powi(2)).sqrt();
                data.push(if r < 9.0 {
                    40.0 + ((i * 7 + j * 3 + k) % 13) as f32 * 15.0
                } else {
                    -800.0 + (k * 10) as f32
                });
            }
        }
    }
    let mut affine = [[0.0; 4]; 4];
    for (i, row) in affine.iter_mut().enumerate() {
        row[i] = if i < 3 { 1.5 } else { 1.0 };
    }
    Volume::new(dims, data, affine).unwrap()
}

/// Runs the passes of `mc` as the score does (the same windows of the same padded input, the
/// generator reseeded the same way), saves their outputs for the reference and returns its
/// answer.
fn reference(net: &SegResNet, vol: &Volume, mc: &McDropout, train: bool) -> Value {
    let input = preprocess(vol, mc.pixdim).unwrap().image.unsqueeze(0);
    let s = input.size();
    let size = [s[2], s[3], s[4]];
    let roi = [mc.roi; 3];
    let pads: Vec<[i64; 2]> = (0..3)
        .map(|i| {
            let d = (roi[i] - size[i]).max(0);
            [d / 2, d - d / 2]
        })
        .collect();
    let padded = input.pad(
        [
            pads[2][0], pads[2][1], pads[1][0], pads[1][1], pads[0][0], pads[0][1],
        ],
        "replicate",
        None,
    );
    let work = [0, 1, 2].map(|i| size[i] + pads[i][0] + pads[i][1]);
    let starts = windows(work, roi, mc.overlap);
    if let Some(seed) = mc.seed {
        tch::manual_seed(seed);
    }
    let logits: Vec<Tensor> = tch::no_grad(|| {
        starts
            .iter()
            .map(|w| {
                let x = padded
                    .narrow(2, w[0], roi[0])
                    .narrow(3, w[1], roi[1])
                    .narrow(4, w[2], roi[2]);
                let passes: Vec<Tensor> = (0..mc.samples)
                    .map(|_| net.forward_t(&x, train).squeeze_dim(0))
                    .collect();
                Tensor::stack(&passes, 0)
            })
            .collect()
    });
    let dir = tempfile::tempdir().unwrap();
    Tensor::stack(&logits, 0)
        .to_kind(Kind::Float)
        .contiguous()
        .write_npy(dir.path().join("logits.npy"))
        .unwrap();
    let meta = json!({"starts": starts, "pads": pads, "size": size});
    std::fs::write(dir.path().join("meta.json"), meta.to_string()).unwrap();
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/epistemic_reference.py"
        ))
        .arg(dir.path())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check(ours: f64, theirs: f64) {
    assert!(ours.is_finite() && ours > 0.0, "{ours}");
    assert!(
        (ours - theirs).abs() <= REL_TOL * theirs.abs(),
        "ferrolabel {ours} vs reference {theirs} (relative {:.2e})",
        (ours - theirs).abs() / theirs.abs()
    );
    println!(
        "epistemic {ours:.9} vs reference {theirs:.9}: relative {:.2e}",
        (ours - theirs).abs() / theirs.abs()
    );
}

fn options(samples: usize, seed: Option<i64>) -> McDropout {
    McDropout {
        samples,
        pixdim: [1.5; 3],
        overlap: 0.25,
        roi: 16,
        seed,
    }
}

#[test]
fn one_pass_without_dropout_is_the_softmax_entropy_of_the_logits() {
    let (_vs, net) = network(None);
    let vol = volume();
    let mc = options(1, None);
    let u = mc_dropout_entropy(
        &net,
        &vol,
        &mc,
        Device::Cpu,
        false,
        &mut |_: usize, _: usize| true,
    )
    .unwrap();
    assert_eq!(u.windows, 6);
    assert_eq!(u.network_shape, [40, 24, 10]);
    // dropout off: the pass is the plain evaluation of the network
    let r = reference(&net, &vol, &mc, false);
    assert_eq!(r["windows"], 6);
    check(u.entropy, r["entropy"].as_f64().unwrap());
}

#[test]
fn the_mean_over_dropout_passes_matches_the_reference() {
    let (_vs, net) = network(Some(0.5));
    let vol = volume();
    let mc = options(4, Some(17));
    let u = mc_dropout_entropy(
        &net,
        &vol,
        &mc,
        Device::Cpu,
        false,
        &mut |_: usize, _: usize| true,
    )
    .unwrap();
    assert_eq!((u.samples, u.windows), (4, 6));
    let r = reference(&net, &vol, &mc, true);
    assert_eq!(r["passes"], 4);
    check(u.entropy, r["entropy"].as_f64().unwrap());

    // the passes differ (dropout is on), so the mean is not one pass: the score of the first
    // pass alone is another number
    let one = mc_dropout_entropy(
        &net,
        &vol,
        &options(1, Some(17)),
        Device::Cpu,
        false,
        &mut |_: usize, _: usize| true,
    )
    .unwrap();
    assert!(
        (one.entropy - u.entropy).abs() > 1e-4,
        "{} vs {}",
        one.entropy,
        u.entropy
    );
}
