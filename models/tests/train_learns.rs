//! Does training learn? The shared 30-slice CT with its TotalSegmentator reference mapped onto
//! the bundle's labels, a small network (init_filters 8) trained from scratch at 3 mm with the
//! bundle's recipe (DiceCE, AdamW, random 96^3 crops): the loss must fall and the Dice of the
//! largest structure on that image must rise above a threshold (see the README, Training).
//!
//! The small configuration: 80^3 crops (smaller crops of the zero-padded foreground box are
//! mostly background, and the network then learns to answer background: with the per-step
//! random stream of exact resume, 64^3 crops left the liver at Dice 0 after 100 steps), batch 1,
//! learning rate 1e-2 (the recipe's 1e-4 needs thousands of steps), 60 steps, validation on a
//! 96^3 centre crop. The run is deterministic (every random decision comes from the seed, the
//! epoch and the step). Environment overrides: FERROLABEL_TRAIN_EPOCHS, _ROI, _LR_E4 (in 1e-4 units),
//! _THREADS.

use ferrolabel_imaging::Limits;
use ferrolabel_models::inferer::{predict_labels, BlendMode, PadMode, SlidingWindow};
use ferrolabel_models::network::{weights, SegResNet, SegResNetConfig};
use ferrolabel_models::train::data::prepare;
use ferrolabel_models::train::metric::class_dice;
use ferrolabel_models::train::{train, TrainConfig, TrainEvent, TrainJob, TrainObserver};
use tch::{nn, Kind};

mod common;
use common::{bundle, pair};

struct Log(Vec<TrainEvent>);

impl TrainObserver for Log {
    fn event(&mut self, event: &TrainEvent) {
        if let TrainEvent::Epoch(r) = event {
            eprintln!(
                "epoch {:3} loss {:.4} dice {:?} {:.1}s",
                r.epoch, r.loss, r.val_dice, r.seconds
            );
        }
        self.0.push(event.clone());
    }
    fn stop_requested(&self) -> bool {
        false
    }
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn loss_falls_and_the_largest_structures_are_learned() {
    tch::set_num_threads(env_usize("FERROLABEL_TRAIN_THREADS", 2) as i32);
    let dir = tempfile::tempdir().unwrap();
    let pair = pair(dir.path());
    let def: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle().join("configs/train.json")).unwrap(),
    )
    .unwrap();
    let mut network = SegResNetConfig::from_network_def(&def["network_def"]).unwrap();
    network.init_filters = 8;
    let epochs = env_usize("FERROLABEL_TRAIN_EPOCHS", 60);
    let mut cfg = TrainConfig::default();
    cfg.prepare.pixdim = [3.0, 3.0, 3.0];
    cfg.max_epochs = epochs;
    cfg.val_interval = epochs;
    cfg.batch_size = 1;
    cfg.lr = env_usize("FERROLABEL_TRAIN_LR_E4", 100) as f64 * 1e-4;
    let roi = env_usize("FERROLABEL_TRAIN_ROI", 80) as i64;
    cfg.roi = [roi; 3];
    cfg.val_roi = [96, 96, 96];
    let output = dir.path().join("model_lowres.pt");
    let job = TrainJob {
        network: network.clone(),
        device: "cpu".into(),
        init_weights: None,
        output: output.clone(),
        train: vec![pair.clone()],
        val: vec![],
        config: cfg.clone(),
        max_voxels: None,
        state: None,
        resume: false,
        tag: String::new(),
    };
    let mut log = Log(Vec::new());
    let t0 = std::time::Instant::now();
    train(&job, &mut log).unwrap();
    let losses: Vec<f64> = log
        .0
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Epoch(r) => Some(r.loss),
            _ => None,
        })
        .collect();
    assert_eq!(losses.len(), epochs);
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[epochs - 5..].iter().sum::<f64>() / 5.0;
    eprintln!(
        "mean loss of the first 5 epochs {first:.4}, of the last 5 {last:.4}; {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(last < 0.5 * first, "loss did not fall: {first} -> {last}");

    // Dice per structure on the whole prepared image with the saved checkpoint
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = SegResNet::new(&vs.root(), &network);
    weights::load_strict(&mut vs, &output).unwrap();
    let s = prepare(&pair, &cfg.prepare, &Limits::default())
        .unwrap()
        .center_crop(cfg.val_roi);
    let sw = SlidingWindow {
        roi: cfg.roi,
        overlap: 0.25,
        sw_batch_size: 1,
        blend: BlendMode::Constant,
        pad: PadMode::Constant(0.0),
    };
    let labels = tch::no_grad(|| {
        predict_labels(
            &s.image.unsqueeze(0),
            &sw,
            105,
            |x| Ok(net.forward_t(x, false)),
            &mut |_: usize, _: usize| true,
        )
    })
    .unwrap();
    let truth = s.label.squeeze_dim(0);
    let dice = class_dice(&labels, &truth, 105);
    let counts = truth
        .to_kind(Kind::Int64)
        .view([-1])
        .bincount::<tch::Tensor>(None, 105);
    let mut by_size: Vec<(i64, usize)> = (1..105)
        .map(|c| (counts.int64_value(&[c as i64]), c))
        .filter(|(n, _)| *n > 0)
        .collect();
    by_size.sort_unstable_by(|a, b| b.cmp(a));
    let largest: Vec<(usize, i64, f64)> = by_size
        .iter()
        .take(5)
        .map(|&(n, c)| (c, n, dice[c].unwrap()))
        .collect();
    eprintln!("largest structures (class, voxels, dice): {largest:?}");
    let mean: f64 = largest.iter().map(|x| x.2).sum::<f64>() / largest.len() as f64;
    eprintln!("mean Dice of the 5 largest structures {mean:.3}");
    // The largest structure (the liver) must be localised: 0 means nothing learned, and
    // labelling every voxel of the body as liver would score about 0.3 on this crop.
    let (class, _, dice) = largest[0];
    assert!(
        dice > 0.35,
        "the largest structure (class {class}) was not learned: {largest:?}"
    );
}
