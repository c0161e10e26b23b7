//! The command lines of a `torchrun` training: `python -m torch.distributed.run` for one node,
//! `-m monai.bundle run` with the configs in merge order, and the Slurm batch script that runs
//! the same on every node of an allocation.

use std::path::{Path, PathBuf};

use super::torchrun_launch::{Launch, Slurm};

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
/// the allocation's first node; progress goes to the run folder (shared by the nodes). The job
/// is named `job_name` (the run's marker), so that a stop or a restart finds it by name.
pub(super) fn sbatch_script(
    python: &Path,
    launch: &Launch,
    slurm: &Slurm,
    env: &[(String, String)],
    bundle: &[String],
    run_dir: &Path,
    job_name: &str,
) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!("#SBATCH --job-name={job_name}\n"));
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
