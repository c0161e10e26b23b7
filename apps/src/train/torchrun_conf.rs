//! The files one `torchrun` training is made of, as pure functions: the datalist exported from
//! the `final` labels, the run folder's layout ([`RunFiles`]) and the per-run override that goes
//! after the bundle's `train.json` and `multi_gpu_train.json`. [`super::torchrun_launch`] holds
//! the options, [`super::torchrun_cmd`] the command lines, [`super::torchrun`] runs them.

use std::path::{Path, PathBuf};

use ferrolabel_models::train::TrainJob;
use serde_json::{json, Map, Value};

use super::torchrun_launch::Launch;

/// The glue module the override names (written into each run's folder).
pub(super) const GLUE_NAME: &str = "ferrolabel_torchrun.py";
/// Its text (`apps/wholebody/scripts/ferrolabel_torchrun.py`).
pub(super) const GLUE: &str = include_str!("../../wholebody/scripts/ferrolabel_torchrun.py");

fn pair_list(pairs: &[ferrolabel_models::train::Pair]) -> Vec<Value> {
    pairs
        .iter()
        .map(|p| json!({"image": p.image, "label": p.label}))
        .collect()
}

/// The datalist: `{"training": [{image, label}], "validation": [...]}`. Without held-out pairs
/// the training pairs validate (as in ferrolabel's own trainer).
pub(super) fn datalist(job: &TrainJob) -> Value {
    let val = if job.val.is_empty() {
        &job.train
    } else {
        &job.val
    };
    json!({"training": pair_list(&job.train), "validation": pair_list(val)})
}

/// A Python string literal for `s` (a JSON string is one).
fn py(s: &Path) -> String {
    serde_json::to_string(&s.to_string_lossy()).unwrap_or_default()
}

/// Where a run keeps its files.
pub(super) struct RunFiles {
    pub dir: PathBuf,
    pub datalist: PathBuf,
    pub progress: PathBuf,
    /// The checkpoint the bundle's `CheckpointSaver` writes (`<dir>/models/<model file>`).
    pub checkpoint: PathBuf,
}

impl RunFiles {
    pub fn new(dir: &Path, model_file: &str) -> RunFiles {
        RunFiles {
            dir: dir.to_path_buf(),
            datalist: dir.join("datalist.json"),
            progress: dir.join("progress.jsonl"),
            checkpoint: dir.join("models").join(model_file),
        }
    }
}

/// The override that follows `train.json` and `multi_gpu_train.json`: the datalist, the output
/// folder, the request's hyper-parameters, the engine's network, ferrolabel's progress
/// handlers in place of the TensorBoard ones, and for a CPU run the gloo backend.
pub(super) fn override_json(job: &TrainJob, launch: &Launch, files: &RunFiles) -> Value {
    let cfg = &job.config;
    let n = &job.network;
    let roi = json!([cfg.roi[0], cfg.roi[1], cfg.roi[2]]);
    let val_roi = json!([cfg.val_roi[0], cfg.val_roi[1], cfg.val_roi[2]]);
    let highres = files
        .checkpoint
        .file_name()
        .is_some_and(|f| f == "model.pt");
    let amp = cfg.amp && launch.gpus.is_some();
    let val_pairs = if job.val.is_empty() {
        job.train.len()
    } else {
        job.val.len()
    };
    let module = match &job.init_weights {
        Some(w) => format!(
            "$ferrolabel_torchrun.load_weights(@network_def, {}).to(@device)",
            py(w)
        ),
        None => "$@network_def.to(@device)".to_string(),
    };
    let backend = if launch.gpus.is_some() {
        "nccl"
    } else {
        "gloo"
    };
    let mut init = vec![
        "$import torch.distributed as dist".to_string(),
        format!("$dist.is_initialized() or dist.init_process_group(backend='{backend}')"),
    ];
    if launch.gpus.is_some() {
        init.push("$torch.cuda.set_device(@device)".into());
    }
    init.extend([
        "$import ferrolabel_torchrun".to_string(),
        format!("$ferrolabel_torchrun.start({})", py(&files.progress)),
        format!("$monai.utils.set_determinism(seed={})", cfg.seed),
        "$import logging".into(),
        "$@train#trainer.logger.setLevel(logging.WARNING if dist.get_rank() > 0 else logging.INFO)"
            .into(),
        "$@validate#evaluator.logger.setLevel(logging.WARNING if dist.get_rank() > 0 else logging.INFO)"
            .into(),
    ]);
    if launch.gpus.is_some() {
        init.push("$setattr(torch.backends.cudnn, 'benchmark', True)".into());
    }
    let mut o = Map::new();
    let mut set = |k: &str, v: Value| {
        o.insert(k.to_string(), v);
    };
    set("+imports", json!(["$import json"]));
    set("bundle_root", json!(files.dir));
    set("ckpt_dir", json!(files.dir.join("models")));
    set("output_dir", json!(files.dir.join("eval")));
    set(
        "ferrolabel_datalist",
        json!(format!("$json.load(open({}))", py(&files.datalist))),
    );
    set(
        "train#dataset#data",
        json!("$@ferrolabel_datalist['training']"),
    );
    set(
        "validate#dataset#data",
        json!("$@ferrolabel_datalist['validation']"),
    );
    set("displayable_configs#highres", json!(highres));
    set("displayable_configs#init_LR", json!(cfg.lr));
    set("batch_size", json!(cfg.batch_size));
    set("val_interval", json!(cfg.val_interval));
    set("train#trainer#max_epochs", json!(cfg.max_epochs));
    set("train#trainer#amp", json!(amp));
    set("validate#evaluator#amp", json!(amp));
    set("train#random_transforms#0#roi_size", roi.clone());
    set("validate#inferer#roi_size", roi);
    set("validate#inferer#overlap", json!(cfg.sw_overlap));
    set("validate#preprocessing#transforms#9#roi_size", val_roi);
    set(
        "network_def",
        json!({
            "_target_": "SegResNet",
            "spatial_dims": 3,
            "in_channels": n.in_channels,
            "out_channels": n.out_channels,
            "init_filters": n.init_filters,
            "blocks_down": n.blocks_down,
            "blocks_up": n.blocks_up,
            "dropout_prob": n.dropout_prob,
            "norm": ["GROUP", {"num_groups": n.norm_groups}],
        }),
    );
    set("network#module", json!(module));
    if let Some(w) = launch.num_workers {
        for k in [
            "train#dataset#num_workers",
            "train#dataloader#num_workers",
            "validate#dataloader#num_workers",
        ] {
            set(k, json!(w));
        }
    }
    if val_pairs < launch.world_size() {
        // fewer validation pairs than processes: a rank without any would fail
        set("validate#sampler#even_divisible", json!(true));
    }
    if launch.gpus.is_none() {
        set("device", json!("$torch.device('cpu')"));
        set("network#device_ids", Value::Null);
    }
    set(
        "train#handlers",
        json!([
            {"_target_": "ValidationHandler", "validator": "@validate#evaluator",
             "epoch_level": true, "interval": "@val_interval"},
            {"_target_": "ferrolabel_torchrun.FinalValidation", "validator": "@validate#evaluator",
             "interval": "@val_interval"},
            {"_target_": "StatsHandler", "tag_name": "train_loss",
             "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            {"_target_": "ferrolabel_torchrun.Progress", "progress_file": files.progress,
             "evaluator": "@validate#evaluator", "network": "@network_def",
             "train_pairs": job.train.len(), "val_pairs": job.val.len(),
             "checkpoint": files.checkpoint}
        ]),
    );
    // the bundle's TensorBoardStatsHandler (no tensorboard here): a silent StatsHandler
    set(
        "validate#handlers#1",
        json!({"_target_": "StatsHandler", "iteration_log": false, "epoch_log": false,
               "name": "ferrolabel_unused"}),
    );
    set("initialize", json!(init));
    Value::Object(o)
}

#[cfg(test)]
#[path = "torchrun_conf_tests.rs"]
mod tests;
