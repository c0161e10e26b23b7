//! Training fidelity against real MONAI 1.4.0 (tests/reference/train_reference.py): the
//! deterministic training and validation preprocessing, DiceCE, and a checkpoint written by a
//! ferrolabel training run loading strictly in MONAI's `CheckpointLoader` with the same logits.

use ferrolabel_imaging::Limits;
use ferrolabel_models::network::{weights, SegResNet, SegResNetConfig};
use ferrolabel_models::train::data::prepare;
use ferrolabel_models::train::loss::dice_ce_loss;
use ferrolabel_models::train::{train, TrainConfig, TrainEvent, TrainJob, TrainObserver};
use std::path::Path;
use tch::{nn, Kind, Tensor};

mod common;
use common::{bundle, pair, reference};

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
