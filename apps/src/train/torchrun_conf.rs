//! What a `torchrun` training is made of, as pure functions: the request's distributed options
//! ([`Launch`]), the datalist exported from the `final` labels, the per-run override that goes
//! after the bundle's `train.json` and `multi_gpu_train.json`, the command line, and the Slurm
//! batch script. [`super::torchrun`] runs them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferrolabel_models::train::TrainJob;
use serde_json::{json, Map, Value};

use crate::error::{AppError, Result};
use crate::infer::param_bool;

/// The environment variable that marks every process of one run (the agent, the ranks and their
/// data loader workers inherit it): a stop kills every process that carries it.
pub(super) const MARKER_VAR: &str = "FERROLABEL_TORCHRUN_RUN";

/// The glue module the override names (written into each run's folder).
pub(super) const GLUE_NAME: &str = "ferrolabel_torchrun.py";
/// Its text (`apps/wholebody/scripts/ferrolabel_torchrun.py`).
pub(super) const GLUE: &str = include_str!("../../wholebody/scripts/ferrolabel_torchrun.py");

/// How the server starts distributed trainings (`--conf` keys `python`, `slurm`,
/// `sbatch_args`, `slurm_rdzv_port`; env `FERROLABEL_PYTHON`).
#[derive(Debug, Clone, Default)]
pub struct TorchrunSettings {
    /// The Python with torch and MONAI (`--conf python`, else `$FERROLABEL_PYTHON`, else the
    /// repository's `.venv/bin/python` next to the app, else `python3`).
    pub python: PathBuf,
    /// Hand jobs to Slurm (`--conf slurm true`).
    pub slurm: Option<Slurm>,
}

/// Slurm settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Slurm {
    /// Extra `sbatch` arguments (`--conf sbatch_args "--partition gpu --time 24:00:00"`).
    pub sbatch_args: Vec<String>,
    /// The rendezvous port on the allocation's first node (`--conf slurm_rdzv_port`, 29500).
    pub rdzv_port: u16,
}

impl TorchrunSettings {
    /// The settings of `conf` (the `--conf` pairs) for the app in `app_dir`.
    pub fn from_conf(conf: &BTreeMap<String, String>, app_dir: &Path) -> TorchrunSettings {
        let venv = app_dir.join("../../.venv/bin/python");
        let python = conf
            .get("python")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("FERROLABEL_PYTHON").map(PathBuf::from))
            .or_else(|| venv.exists().then_some(venv))
            .unwrap_or_else(|| PathBuf::from("python3"));
        let on = |k: &str| {
            conf.get(k).is_some_and(|v| {
                matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes")
            })
        };
        let slurm = on("slurm").then(|| Slurm {
            sbatch_args: conf
                .get("sbatch_args")
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            rdzv_port: conf
                .get("slurm_rdzv_port")
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(29500),
        });
        TorchrunSettings { python, slurm }
    }
}

/// The distributed options of a request.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Launch {
    /// Processes on this node.
    pub nproc_per_node: usize,
    /// `CUDA_VISIBLE_DEVICES` (GPU runs); `None`: a CPU run (gloo).
    pub gpus: Option<Vec<usize>>,
    /// Machines.
    pub nodes: usize,
    /// This machine's rank (several machines without Slurm).
    pub node_rank: usize,
    /// `host:port` of the rendezvous (several machines without Slurm).
    pub rdzv_endpoint: Option<String>,
    /// The rendezvous id, the same on every machine.
    pub rdzv_id: String,
    /// Data loader workers per process (`None`: the bundle's 4).
    pub num_workers: Option<usize>,
}

impl Launch {
    /// Processes in the whole run.
    pub fn world_size(&self) -> usize {
        self.nproc_per_node * self.nodes
    }
}

fn bad(m: impl Into<String>) -> AppError {
    AppError::InvalidParams(m.into())
}

/// Whether the request asks for the distributed path (`multi_gpu: true`).
pub(super) fn requested(params: &Map<String, Value>) -> Result<bool> {
    Ok(param_bool(params, "multi_gpu")?.unwrap_or(false))
}

fn count(params: &Map<String, Value>, k: &str, min: usize, max: usize) -> Result<Option<usize>> {
    match params.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|n| (min..=max).contains(n))
            .map(Some)
            .ok_or_else(|| bad(format!("{k}: {v} is not an integer in {min}..={max}"))),
    }
}

/// `gpus`: `"all"`, `"0,1"` or `[0, 1]` (`None`: all).
fn gpu_list(v: Option<&Value>) -> Result<Option<Vec<usize>>> {
    let list: Vec<usize> = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("all") || s.trim().is_empty() => {
            return Ok(None)
        }
        Some(Value::String(s)) => s
            .split(',')
            .map(|g| g.trim().parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad(format!("gpus: {s:?} is not \"all\" or a list like \"0,1\"")))?,
        Some(Value::Array(a)) => a
            .iter()
            .map(|g| g.as_u64().map(|n| n as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(format!("gpus: {} is not a list of GPU indices", json!(a))))?,
        Some(other) => {
            return Err(bad(format!(
                "gpus: {other} is not \"all\" or a list of GPU indices"
            )))
        }
    };
    let mut seen = list.clone();
    seen.sort_unstable();
    seen.dedup();
    if list.is_empty() || seen.len() != list.len() {
        return Err(bad("gpus: the list is empty or names a GPU twice"));
    }
    Ok(Some(list))
}

/// The distributed options of `params` for `job` (its device decides CPU/gloo or CUDA/NCCL);
/// `cuda_count`: the CUDA devices this machine has; `slurm`: whether Slurm finds the rendezvous.
pub(super) fn launch(
    params: &Map<String, Value>,
    job: &TrainJob,
    cuda_count: usize,
    slurm: bool,
) -> Result<Launch> {
    let nodes = count(params, "nodes", 1, 1024)?.unwrap_or(1);
    let node_rank = count(params, "node_rank", 0, 1023)?.unwrap_or(0);
    if node_rank >= nodes {
        return Err(bad(format!(
            "node_rank: {node_rank} is not below nodes ({nodes})"
        )));
    }
    let rdzv_endpoint = match params.get("rdzv_endpoint") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                && !s.contains(char::is_whitespace);
            if !ok {
                return Err(bad(format!("rdzv_endpoint: {s:?} is not host:port")));
            }
            Some(s.clone())
        }
        Some(v) => return Err(bad(format!("rdzv_endpoint: {v} is not host:port"))),
    };
    if nodes > 1 && rdzv_endpoint.is_none() && !slurm {
        return Err(bad(
            "nodes > 1 needs rdzv_endpoint (host:port of the machine with node_rank 0), or Slurm",
        ));
    }
    let rdzv_id = match params.get("rdzv_id") {
        None | Some(Value::Null) => "ferrolabel".to_string(),
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            s.clone()
        }
        Some(v) => {
            return Err(bad(format!(
                "rdzv_id: {v} is not 1-64 letters, digits, '-' or '_'"
            )))
        }
    };
    let num_workers = count(params, "num_workers", 0, 64)?;
    let requested_gpus = gpu_list(params.get("gpus"))?;
    let (nproc_per_node, gpus) = if job.device.starts_with("cuda") {
        let list = match requested_gpus {
            Some(l) => l,
            None => (0..cuda_count).collect(),
        };
        if list.is_empty() {
            return Err(bad("multi_gpu: this machine has no CUDA device"));
        }
        if let Some(g) = list.iter().find(|&&g| g >= cuda_count) {
            return Err(bad(format!(
                "gpus: GPU {g} requested but this machine has {cuda_count}"
            )));
        }
        (list.len(), Some(list))
    } else {
        if requested_gpus.is_some() {
            return Err(bad(
                "gpus: a list of GPUs needs a CUDA device (device is cpu)",
            ));
        }
        (count(params, "nproc_per_node", 1, 64)?.unwrap_or(2), None)
    };
    Ok(Launch {
        nproc_per_node,
        gpus,
        nodes,
        node_rank,
        rdzv_endpoint,
        rdzv_id,
        num_workers,
    })
}

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

/// The configs in the order `monai.bundle run` merges them.
pub(super) fn config_files(bundle_root: &Path, override_path: &Path) -> Vec<PathBuf> {
    vec![
        bundle_root.join("configs/train.json"),
        bundle_root.join("configs/multi_gpu_train.json"),
        override_path.to_path_buf(),
    ]
}

/// `-m torch.distributed.run` (torchrun) arguments up to the script, for one node.
pub(super) fn torchrun_args(launch: &Launch) -> Vec<String> {
    let mut a = vec!["-m".to_string(), "torch.distributed.run".to_string()];
    if launch.nodes == 1 && launch.rdzv_endpoint.is_none() {
        a.push("--standalone".into());
        a.push("--nnodes=1".into());
    } else {
        a.push(format!("--nnodes={}", launch.nodes));
        a.push(format!("--node_rank={}", launch.node_rank));
        a.push("--rdzv-backend=c10d".into());
        if let Some(e) = &launch.rdzv_endpoint {
            a.push(format!("--rdzv-endpoint={e}"));
        }
        a.push(format!("--rdzv-id={}", launch.rdzv_id));
    }
    a.push(format!("--nproc_per_node={}", launch.nproc_per_node));
    a
}

/// `-m monai.bundle run` and its arguments.
pub(super) fn bundle_args(configs: &[PathBuf], meta: &Path) -> Vec<String> {
    let list: Vec<String> = configs
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    vec![
        "-m".into(),
        "monai.bundle".into(),
        "run".into(),
        "--config_file".into(),
        serde_json::to_string(&list).unwrap_or_default(),
        "--meta_file".into(),
        meta.to_string_lossy().into_owned(),
    ]
}

/// `s` quoted for a POSIX shell.
pub(super) fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The Slurm batch script: one task per node, each running torchrun with a c10d rendezvous on
/// the allocation's first node; progress goes to the run folder (shared by the nodes).
pub(super) fn sbatch_script(
    python: &Path,
    launch: &Launch,
    slurm: &Slurm,
    env: &[(String, String)],
    bundle: &[String],
    run_dir: &Path,
) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s.push_str("#SBATCH --job-name=ferrolabel-train\n");
    s.push_str(&format!("#SBATCH --nodes={}\n", launch.nodes));
    s.push_str("#SBATCH --ntasks-per-node=1\n");
    if launch.gpus.is_some() {
        s.push_str(&format!(
            "#SBATCH --gpus-per-node={}\n",
            launch.nproc_per_node
        ));
    }
    s.push_str(&format!(
        "#SBATCH --output={}\n",
        run_dir.join("slurm-%j.out").display()
    ));
    s.push_str("set -euo pipefail\n");
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", sh(v)));
    }
    s.push_str("head=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n");
    let mut cmd = vec![
        "srun".to_string(),
        "--kill-on-bad-exit=1".into(),
        sh(&python.to_string_lossy()),
        "-m".into(),
        "torch.distributed.run".into(),
        "--nnodes=\"$SLURM_NNODES\"".into(),
        format!("--nproc_per_node={}", launch.nproc_per_node),
        "--rdzv-backend=c10d".into(),
        format!("--rdzv-endpoint=\"$head:{}\"", slurm.rdzv_port),
        "--rdzv-id=\"$SLURM_JOB_ID\"".into(),
    ];
    cmd.extend(bundle.iter().map(|a| sh(a)));
    s.push_str(&cmd.join(" "));
    s.push('\n');
    s
}

#[cfg(test)]
#[path = "torchrun_conf_tests.rs"]
mod tests;
