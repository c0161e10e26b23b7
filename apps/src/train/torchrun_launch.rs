//! What a `torchrun` training is asked to be: the server's settings ([`TorchrunSettings`], the
//! `--conf` keys) and the request's distributed options ([`Launch`]: processes, GPUs, machines,
//! rendezvous), checked before anything starts (422 on bad ones).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferrolabel_models::train::TrainJob;
use serde_json::{json, Map, Value};

use crate::error::{AppError, Result};
use crate::infer::param_bool;

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
