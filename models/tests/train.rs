//! Training fidelity against real MONAI 1.4.0 and torch (tests/reference/train_reference.py and
//! train_step_reference.py): the deterministic training and validation preprocessing, DiceCE,
//! the train-mode forward with its loss and gradients, AdamW steps against
//! `torch.optim.AdamW`, and a checkpoint written by a ferrolabel training run loading strictly
//! in MONAI's `CheckpointLoader` with the same logits.

use ferrolabel_imaging::Limits;
use ferrolabel_models::network::{weights, SegResNet, SegResNetConfig};
use ferrolabel_models::train::data::prepare;
use ferrolabel_models::train::loss::dice_ce_loss;
use ferrolabel_models::train::optim::adamw;
use ferrolabel_models::train::{train, TrainConfig, TrainEvent, TrainJob, TrainObserver};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Kind, Tensor};

mod common;
use common::{bundle, pair, reference, step_reference};

fn read_raw(path: &Path, shape: &[i64]) -> Tensor {
    let bytes = std::fs::read(path).unwrap();
    let v: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Tensor::from_slice(&v).view(shape)
}

fn write_raw(path: &Path, t: &Tensor) {
    let v: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).unwrap();
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn shape_json(path: &Path, shape: &[i64]) {
    std::fs::write(path, serde_json::json!({ "shape": shape }).to_string()).unwrap();
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn lowres_config() -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.prepare.pixdim = [3.0, 3.0, 3.0];
    cfg
}

#[test]
fn training_and_validation_preprocessing_match_monai() {
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let p = pair(dir.path());
    let cfg = lowres_config();
    let ours = prepare(&p, &cfg.prepare, &Limits::default()).unwrap();
    for mode in ["train", "validate"] {
        let out = dir.path().join(mode);
        let out_s = out.to_str().unwrap();
        reference(&[
            "prepare",
            bundle().join("configs/train.json").to_str().unwrap(),
            p.image.to_str().unwrap(),
            p.label.to_str().unwrap(),
            "0",
            mode,
            out_s,
        ]);
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{out_s}.json")).unwrap())
                .unwrap();
        let shape: Vec<i64> = serde_json::from_value(meta["shape"].clone()).unwrap();
        let img = read_raw(Path::new(&format!("{out_s}.image.raw")), &shape);
        let lbl = read_raw(Path::new(&format!("{out_s}.label.raw")), &shape);
        let view = if mode == "train" {
            ferrolabel_models::train::data::Sample {
                image: ours.image.shallow_clone(),
                label: ours.label.shallow_clone(),
            }
        } else {
            ours.center_crop(cfg.val_roi)
        };
        let d = max_abs_diff(&view.image, &img);
        assert!(d < 1e-5, "{mode}: image differs from MONAI by {d}");
        let same = view
            .label
            .to_kind(Kind::Float)
            .eq_tensor(&lbl)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        assert!(same >= 0.9999, "{mode}: labels agree on {same}");
        eprintln!("{mode}: shape {shape:?}, image max diff {d:e}, labels agree {same}");
    }
}

#[test]
fn dice_ce_matches_monai() {
    tch::manual_seed(7);
    let dir = tempfile::tempdir().unwrap();
    let shape = [2i64, 5, 6, 7, 8];
    let logits = Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)) * 3.0;
    // class 4 is absent from the target: Dice of an empty class with background included
    let target = Tensor::randint(4, [2, 6, 7, 8], (Kind::Int64, tch::Device::Cpu));
    write_raw(&dir.path().join("logits.raw"), &logits);
    write_raw(&dir.path().join("target.raw"), &target.unsqueeze(1));
    shape_json(&dir.path().join("shape.json"), &shape);
    let want: f64 = reference(&[
        "loss",
        dir.path().join("logits.raw").to_str().unwrap(),
        dir.path().join("target.raw").to_str().unwrap(),
        dir.path().join("shape.json").to_str().unwrap(),
    ])
    .trim()
    .parse()
    .unwrap();
    let got = dice_ce_loss(&logits, &target).double_value(&[]);
    assert!((got - want).abs() < 1e-5, "ours {got}, MONAI {want}");
}

struct Quiet(Vec<TrainEvent>);

impl TrainObserver for Quiet {
    fn event(&mut self, event: &TrainEvent) {
        self.0.push(event.clone());
    }
    fn stop_requested(&self) -> bool {
        false
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

#[test]
fn a_trained_checkpoint_loads_in_monai_with_the_same_logits() {
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let p = pair(dir.path());
    let mut cfg = lowres_config();
    cfg.max_epochs = 2;
    cfg.val_interval = 1;
    cfg.batch_size = 1;
    cfg.roi = [32, 32, 32];
    cfg.val_roi = [64, 64, 64];
    let output = dir.path().join("models/model_lowres.pt");
    let job = TrainJob {
        network: small_network(),
        device: "cpu".into(),
        init_weights: None,
        output: output.clone(),
        train: vec![p],
        val: vec![],
        config: cfg,
        max_voxels: None,
        state: None,
        resume: false,
        tag: String::new(),
    };
    let mut obs = Quiet(Vec::new());
    let outcome = train(&job, &mut obs).unwrap();
    assert_eq!(outcome.epochs, 2);
    assert!(outcome.best_metric.is_some(), "{:?}", obs.0);
    assert!(output.exists());
    let epochs = obs
        .0
        .iter()
        .filter(|e| matches!(e, TrainEvent::Epoch(_)))
        .count();
    assert_eq!(epochs, 2);
    // no temporary file is left next to the checkpoint
    let leftovers: Vec<_> = std::fs::read_dir(output.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "model_lowres.pt")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // our network with the checkpoint vs MONAI's CheckpointLoader(strict) + SegResNet
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = SegResNet::new(&vs.root(), &small_network());
    weights::load_strict(&mut vs, &output).unwrap();
    tch::manual_seed(11);
    let x = Tensor::randn([1, 1, 32, 32, 32], (Kind::Float, tch::Device::Cpu));
    let ours = tch::no_grad(|| net.forward_t(&x, false));
    write_raw(&dir.path().join("x.raw"), &x);
    shape_json(&dir.path().join("x.json"), &[1, 1, 32, 32, 32]);
    reference(&[
        "logits",
        output.to_str().unwrap(),
        "8",
        dir.path().join("x.raw").to_str().unwrap(),
        dir.path().join("x.json").to_str().unwrap(),
        dir.path().join("y.raw").to_str().unwrap(),
    ]);
    let theirs = read_raw(&dir.path().join("y.raw"), &[1, 105, 32, 32, 32]);
    let d = max_abs_diff(&ours, &theirs);
    assert!(d < 1e-4, "logits differ by {d}");
}

fn read_st(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// The small network of these tests built from `seed`, with the given channel dropout, and
/// every GroupNorm weight ~ U(0.5, 1.5), every bias ~ N(0, 0.1) (as make_golden.py does, so
/// that affine parameters and their gradients matter). Returns the sorted variable names.
fn seeded_network(seed: i64, dropout: f64) -> (nn::VarStore, SegResNet, Vec<String>) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let mut cfg = small_network();
    cfg.dropout_prob = Some(dropout);
    let net = SegResNet::new(&vs.root(), &cfg);
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            if v.dim() == 1 && name.ends_with("weight") {
                v.copy_(&(v.rand_like() + 0.5));
            } else if v.dim() == 1 {
                v.copy_(&(v.randn_like() * 0.1));
            }
        }
    });
    let mut order: Vec<String> = vs.variables().keys().cloned().collect();
    order.sort();
    (vs, net, order)
}

#[test]
fn train_mode_forward_loss_and_gradients_match_monai() {
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let (vs, net, order) = seeded_network(21, 0.0);
    let weights_path = dir.path().join("weights.pt");
    weights::save_state_dict(&vs, &order, &weights_path).unwrap();
    tch::manual_seed(22);
    let x = Tensor::randn([1, 1, 32, 32, 32], (Kind::Float, tch::Device::Cpu));
    // six classes present (0, 7, ..., 35), the other 99 absent
    let y = Tensor::randint(6, [1, 32, 32, 32], (Kind::Int64, tch::Device::Cpu)) * 7;
    let (x_path, y_path) = (dir.path().join("x.st"), dir.path().join("y.st"));
    Tensor::write_safetensors(&[("x", &x)], &x_path).unwrap();
    Tensor::write_safetensors(&[("y", y.unsqueeze(1).to_kind(Kind::Float))], &y_path).unwrap();
    let logits = net.forward_t(&x, true);
    let loss = dice_ce_loss(&logits, &y);
    loss.backward();
    let out = dir.path().join("monai.st");
    step_reference(&[
        "train-forward",
        weights_path.to_str().unwrap(),
        "8",
        x_path.to_str().unwrap(),
        y_path.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let theirs = read_st(&out);
    let d_logits = max_abs_diff(&logits, &theirs["logits"]);
    let d_loss = (loss.double_value(&[]) - theirs["loss"].double_value(&[0])).abs();
    // gradients: worst difference relative to the largest gradient of the same tensor
    let vars = vs.variables();
    let mut worst = (0.0f64, String::new());
    for name in &order {
        let ours = vars[name].grad();
        let want = &theirs[&format!("grad/{name}")];
        let rel = max_abs_diff(&ours, want) / want.abs().max().double_value(&[]).max(1e-12);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    eprintln!(
        "train mode vs MONAI: logits {d_logits:e}, loss {d_loss:e}, gradients {:e} ({}) of {} tensors",
        worst.0,
        worst.1,
        order.len()
    );
    assert!(d_logits <= 1e-4, "train-mode logits differ by {d_logits}");
    assert!(d_loss <= 1e-5, "losses differ by {d_loss}");
    assert!(
        worst.0 <= 1e-4,
        "gradient of {} differs by {} (relative)",
        worst.1,
        worst.0
    );

    // with the bundle's dropout (0.2) train mode really drops channels: not the eval output
    let (_vs, net, _) = seeded_network(21, 0.2);
    let (train, eval) = tch::no_grad(|| (net.forward_t(&x, true), net.forward_t(&x, false)));
    assert!(
        max_abs_diff(&train, &eval) > 1e-2,
        "dropout is inactive in train mode"
    );
}

/// Runs `steps` AdamW steps of ferrolabel's optimiser and of `torch.optim.AdamW` from the same
/// parameters with the same gradients (magnitudes 1e-9 to 10, so that eps, the bias corrections
/// and the decoupled decay all matter); returns the largest parameter difference.
fn adamw_against_torch(lr: f64, wd: f64, steps: usize) -> f64 {
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let (vs, _net, order) = seeded_network(31, 0.2);
    let vars = vs.variables();
    let initial: Vec<(String, Tensor)> =
        order.iter().map(|n| (n.clone(), vars[n].copy())).collect();
    let mut opt = adamw(&vs, lr, wd).unwrap();
    let mut grads: Vec<(String, Tensor)> = Vec::new();
    for k in 0..steps {
        opt.zero_grad();
        let mut loss = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        for (i, n) in order.iter().enumerate() {
            let p = &vars[n];
            let g = p.randn_like() * 10f64.powi((i + k) as i32 % 11 - 9);
            loss += (p * &g).sum(Kind::Float);
            grads.push((format!("{n}/{k}"), g));
        }
        loss.backward();
        opt.step().unwrap();
    }
    let (p_path, g_path, out) = (
        dir.path().join("params.st"),
        dir.path().join("grads.st"),
        dir.path().join("torch.st"),
    );
    Tensor::write_safetensors(&initial, &p_path).unwrap();
    Tensor::write_safetensors(&grads, &g_path).unwrap();
    step_reference(&[
        "adamw",
        p_path.to_str().unwrap(),
        g_path.to_str().unwrap(),
        &lr.to_string(),
        &wd.to_string(),
        &steps.to_string(),
        out.to_str().unwrap(),
    ]);
    let theirs = read_st(&out);
    let mut worst = 0.0f64;
    let mut moved = 0.0f64;
    for (n, p0) in &initial {
        worst = worst.max(max_abs_diff(&vars[n], &theirs[n]));
        moved = moved.max(max_abs_diff(&theirs[n], p0));
    }
    eprintln!("AdamW lr {lr} wd {wd}, {steps} steps: parameters moved up to {moved:e}, ours vs torch {worst:e}");
    assert!(moved > lr, "the reference did not move the parameters");
    worst
}

#[test]
fn adamw_steps_match_torch_adamw() {
    // the bundle's settings, then a large decay that makes decoupled vs L2 decay visible
    for (lr, wd) in [(1e-4, 1e-5), (1e-2, 0.5)] {
        let d = adamw_against_torch(lr, wd, 3);
        assert!(
            d <= lr * 1e-3,
            "lr {lr}, wd {wd}: parameters differ from torch's by {d}"
        );
    }
}
