//! The training request's options (`POST /train/{model}` body) turned into a [`TrainJob`], and
//! the split of the `final` pairs into training and validation.

use ferrolabel_models::train::{Pair, TrainConfig, TrainJob};
use ferrolabel_models::{Bundle, Resolution};
use serde_json::{json, Map, Value};

use crate::error::{AppError, Result};
use crate::infer::param_bool;

/// Trainer defaults shown in `/info/` (`trainers.<name>.config`).
pub(super) fn default_config(device_names: &[String], default_highres: bool) -> Value {
    json!({
        "device": device_names,
        "pretrained": true,
        "highres": [default_highres, !default_highres],
        "max_epochs": 50,
        "val_split": 0.2,
        "val_interval": 20,
        "train_batch_size": 4,
        "init_LR": 1e-4,
        "amp": true,
        "cache_size": 4,
        "seed": 123,
        "resume": false,
        // distributed training through torchrun (docs/training.md)
        "multi_gpu": false,
        "gpus": "all",
    })
}

/// What the job is built from besides the request: the bundle and the devices.
pub(super) struct JobSource<'a> {
    pub bundle: &'a Bundle,
    pub device_names: &'a [String],
    pub default_device: &'a str,
}

fn bad(m: String) -> AppError {
    AppError::InvalidParams(m)
}

/// An integer option in `min..=max` (a JSON number or a numeric string); `None` when absent.
fn uint(params: &Map<String, Value>, k: &str, min: u64, max: u64) -> Result<Option<u64>> {
    match params.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|n| (min..=max).contains(n))
            .map(Some)
            .ok_or_else(|| bad(format!("{k}: {v} is not an integer in {min}..={max}"))),
    }
}

/// A finite number option in `min..=max`; `None` when absent.
fn float(params: &Map<String, Value>, k: &str, min: f64, max: f64) -> Result<Option<f64>> {
    match params.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|x: &f64| x.is_finite() && *x >= min && *x <= max)
            .map(Some)
            .ok_or_else(|| bad(format!("{k}: {v} is not a number in {min}..={max}"))),
    }
}

/// Builds the job from the request `params` and the training `pairs`: 422
/// ([`AppError::InvalidParams`]) for a bad option or when there is nothing to train on.
pub(super) fn build_job(
    src: &JobSource<'_>,
    params: &Map<String, Value>,
    pairs: Vec<Pair>,
) -> Result<(TrainJob, Resolution)> {
    let highres = param_bool(params, "highres")?.unwrap_or(src.bundle.default_highres);
    let res = Resolution::from_highres(highres);
    let mut cfg = TrainConfig::default();
    cfg.prepare.pixdim = res.pixdim();
    cfg.prepare.classes = src.bundle.network.out_channels;
    cfg.max_epochs = uint(params, "max_epochs", 1, 1_000_000)?.unwrap_or(50) as usize;
    cfg.val_interval = uint(params, "val_interval", 1, 1_000_000)?.unwrap_or(20) as usize;
    if let Some(b) = uint(params, "train_batch_size", 1, 64)?.or(uint(params, "batch_size", 1, 64)?)
    {
        cfg.batch_size = b as usize;
    }
    if let Some(lr) = float(params, "init_LR", 0.0, 1.0)?.or(float(params, "lr", 0.0, 1.0)?) {
        cfg.lr = lr;
    }
    if let Some(c) = uint(params, "cache_size", 0, 1000)? {
        cfg.cache_size = c as usize;
    }
    if let Some(s) = uint(params, "seed", 0, u64::MAX)? {
        cfg.seed = s;
    }
    if let Some(a) = param_bool(params, "amp")? {
        cfg.amp = a;
    }
    if let Some(r) = uint(params, "roi_size", 8, 512)? {
        cfg.roi = [r as i64; 3];
    }
    if let Some(r) = uint(params, "val_roi_size", 8, 1024)? {
        cfg.val_roi = [r as i64; 3];
    }
    let val_split = float(params, "val_split", 0.0, 0.9)?.unwrap_or(0.2);
    let pretrained = param_bool(params, "pretrained")?.unwrap_or(true);
    // exact resume (docs/training.md "Resume"): continue from the resume state of this
    // resolution, which must exist
    let resume = param_bool(params, "resume")?.unwrap_or(false);
    let known = |s: &str| src.device_names.iter().any(|d| d == s);
    let device = match params.get("device") {
        None | Some(Value::Null) => src.default_device.to_string(),
        Some(Value::String(s)) if known(s) => src.default_device.to_string(),
        Some(Value::String(s)) => {
            ferrolabel_models::parse_device(s).map_err(|e| bad(e.to_string()))?;
            s.clone()
        }
        Some(Value::Array(a)) if a.first().and_then(Value::as_str).is_some_and(known) => {
            src.default_device.to_string()
        }
        Some(v) => return Err(bad(format!("device: {v} is not a device name"))),
    };
    if pairs.is_empty() {
        return Err(bad(
            "nothing to train on: no image has a label saved with the tag 'final'".into(),
        ));
    }
    let (train, val) = split(pairs, val_split, cfg.seed);
    let output = src.bundle.root.join("models").join(res.model_file());
    let state = ferrolabel_models::train::state_path(&output);
    if resume && !state.is_file() {
        return Err(bad(format!(
            "resume: nothing to resume: no resume state at {} (a training of this resolution \
             writes one at every epoch end)",
            state.display()
        )));
    }
    let init_weights =
        (pretrained && src.bundle.has_weights(res)).then(|| src.bundle.weights_path(res));
    Ok((
        TrainJob {
            network: src.bundle.network.clone(),
            device,
            init_weights,
            output,
            train,
            val,
            config: cfg,
            max_voxels: None,
            state: Some(state),
            resume,
            tag: String::new(),
        },
        res,
    ))
}

/// Splits `pairs` into training and validation: a seeded shuffle, then the last
/// `floor(n * val_split)` pairs validate (at least one pair always trains).
fn split(mut pairs: Vec<Pair>, val_split: f64, seed: u64) -> (Vec<Pair>, Vec<Pair>) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    pairs.sort_by(|a, b| a.id.cmp(&b.id));
    pairs.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let n = pairs.len();
    let n_val = ((n as f64 * val_split).floor() as usize).min(n.saturating_sub(1));
    let val = pairs.split_off(n - n_val);
    (pairs, val)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn pair(i: usize) -> Pair {
        Pair {
            id: format!("img{i}"),
            image: PathBuf::from(format!("/i{i}")),
            label: PathBuf::from(format!("/l{i}")),
        }
    }

    fn bundle() -> Bundle {
        let root = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/wholebody/model/wholeBody_ct_segmentation"
        ));
        let mut b = Bundle::open(&root).unwrap();
        // no weights there: `pretrained` falls back to a seeded initialisation
        b.root = PathBuf::from("/nonexistent-bundle");
        b
    }

    fn build(params: Value, pairs: Vec<Pair>) -> Result<(TrainJob, Resolution)> {
        let b = bundle();
        let names = vec!["cpu".to_string()];
        let src = JobSource {
            bundle: &b,
            device_names: &names,
            default_device: "cpu",
        };
        build_job(&src, params.as_object().unwrap(), pairs)
    }

    #[test]
    fn split_keeps_one_for_training() {
        let (t, v) = split(vec![pair(0)], 0.5, 1);
        assert_eq!((t.len(), v.len()), (1, 0));
        let (t, v) = split((0..10).map(pair).collect(), 0.2, 1);
        assert_eq!((t.len(), v.len()), (8, 2));
        let (t2, v2) = split((0..10).rev().map(pair).collect(), 0.2, 1);
        assert_eq!(
            v.iter().map(|p| &p.id).collect::<Vec<_>>(),
            v2.iter().map(|p| &p.id).collect::<Vec<_>>()
        );
        assert_eq!(t.len(), t2.len());
    }

    #[test]
    fn options_become_the_job() {
        let (job, res) = build(
            json!({"highres": false, "max_epochs": "3", "val_interval": 1, "train_batch_size": 2,
                   "init_LR": 0.01, "roi_size": 32, "val_roi_size": 64, "seed": 7,
                   "val_split": 0.5, "amp": false, "cache_size": 0, "device": ["cpu"]}),
            (0..4).map(pair).collect(),
        )
        .unwrap();
        assert!(!res.is_high());
        let c = &job.config;
        assert_eq!((c.max_epochs, c.val_interval, c.batch_size), (3, 1, 2));
        assert_eq!((c.lr, c.seed, c.amp, c.cache_size), (0.01, 7, false, 0));
        assert_eq!((c.roi, c.val_roi), ([32; 3], [64; 3]));
        assert_eq!(c.prepare.pixdim, res.pixdim());
        assert_eq!((job.train.len(), job.val.len()), (2, 2));
        assert_eq!(job.device, "cpu");
        assert_eq!(job.init_weights, None);
        assert!(job.output.ends_with("models/model_lowres.pt"));
        assert!(job
            .state
            .as_ref()
            .unwrap()
            .ends_with("models/model_lowres.resume.pt"));
        assert!(!job.resume);
        assert_eq!((c.start_epoch, c.best_metric), (0, None));
        // the defaults of /info/
        let (job, _) = build(json!({}), vec![pair(0)]).unwrap();
        assert_eq!((job.config.max_epochs, job.config.val_interval), (50, 20));
    }

    #[test]
    fn bad_options_and_no_pairs_are_invalid_params() {
        for params in [
            json!({"max_epochs": "many"}),
            json!({"max_epochs": 0}),
            json!({"train_batch_size": 65}),
            json!({"init_LR": -1}),
            json!({"val_split": 0.95}),
            json!({"roi_size": 4}),
            json!({"highres": "sometimes"}),
            json!({"device": 3}),
            json!({"device": "tpu:0"}),
            json!({"resume": "sometimes"}),
            // no resume state in this bundle
            json!({"resume": true}),
        ] {
            let e = build(params.clone(), vec![pair(0)]).unwrap_err();
            assert!(matches!(e, AppError::InvalidParams(_)), "{params}: {e:?}");
        }
        let e = build(json!({}), Vec::new()).unwrap_err();
        assert!(
            matches!(&e, AppError::InvalidParams(m) if m.contains("final")),
            "{e:?}"
        );
    }
}
