//! Distributed training through `torchrun` (`POST /train/{model}` with `multi_gpu: true`):
//! PyTorch DistributedDataParallel as the bundle ships it (`train.json` +
//! `multi_gpu_train.json`), run by MONAI in the project's Python, on a datalist exported from
//! the `final` labels, with ferrolabel's override last: the options in
//! [`super::torchrun_launch`], the run's files in [`super::torchrun_conf`], the command lines in
//! [`super::torchrun_cmd`], the processes in [`super::torchrun_procs`].
//!
//! * The run lives in `<bundle>/models/.torchrun-<task>/` (the override, the datalist, the
//!   glue module, the progress file, the bundle's checkpoint); it is removed when the run ends,
//!   kept when it fails (the error names it).
//! * Progress: rank 0's `ferrolabel_torchrun.Progress` appends ferrolabel's own events
//!   (`TrainEvent`) to the progress file; this side tails it into the task, `train_stats.json`
//!   and the curve, as for the Rust trainer.
//! * Stop: torchrun starts in a session of its own (`setsid`), and each rank in another (torch's
//!   elastic agent does that), so a stop kills torchrun's process group and then every process
//!   carrying the run's marker variable (`FERROLABEL_TORCHRUN_RUN`: the ranks and their data
//!   loader workers inherit it) until none is left. The ranks also end by themselves once their
//!   agent is gone, and torchrun dies with the server (`PR_SET_PDEATHSIG`).
//! * Checkpoints: each better checkpoint the bundle writes is checked to load strictly into the
//!   engine's network, then replaces the active weights atomically (temp + fsync + rename), so
//!   the next `/infer` uses it.
//! * Slurm (`--conf slurm true`): the same torchrun command in a batch script named after the
//!   run's marker, submitted with `sbatch --wait`; Slurm owns the processes, so a stop runs
//!   `scancel` and waits until the job has left the queue (no local killing), and a failed job's
//!   error carries the tail of its output file.
//! * A job taken up again after a restart starts over (the bundle's checkpoints carry no
//!   optimiser state), after killing what the earlier attempt left.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferrolabel_models::Resolution;
use serde_json::{json, Map, Value};

use super::stats::Stats;
use super::torchrun_cmd as cmd;
use super::torchrun_conf::{self as conf, RunFiles};
use super::torchrun_launch::{self as launching, Launch, TorchrunSettings};
use super::torchrun_procs::{kill_marked, own_session, scancel, MARKER_VAR};
use super::{result_json, Trainer};
use crate::error::{AppError, Result};
use crate::jobs::JobHandle;
use ferrolabel_models::train::Pair;

#[path = "torchrun_follow.rs"]
mod follow;
use follow::{Follow, SCANCEL_WAIT};

/// The CUDA devices libtorch sees here.
fn cuda_count() -> usize {
    (0..64)
        .take_while(|i| ferrolabel_models::parse_device(&format!("cuda:{i}")).is_ok())
        .count()
}

/// The checks made at `POST /train/` for a distributed request (422 on bad options).
pub(super) fn validate(
    trainer: &Trainer,
    params: &Map<String, Value>,
    pairs: &[Pair],
) -> Result<()> {
    prepare(trainer, params, pairs.to_vec()).map(|_| ())
}

type Prepared = (
    ferrolabel_models::train::TrainJob,
    Resolution,
    Launch,
    TorchrunSettings,
);

fn prepare(trainer: &Trainer, params: &Map<String, Value>, pairs: Vec<Pair>) -> Result<Prepared> {
    let settings = trainer.torchrun_settings();
    if crate::infer::param_bool(params, "resume")? == Some(true) {
        return Err(AppError::InvalidParams(
            "resume: not available with multi_gpu (the bundle's checkpoints carry no optimiser state)"
                .into(),
        ));
    }
    let (job, res) = trainer.job(params, pairs)?;
    let launch = launching::launch(params, &job, cuda_count(), settings.slurm.is_some())?;
    let root = &trainer.bundle.root;
    for f in [
        "configs/train.json",
        "configs/multi_gpu_train.json",
        "configs/metadata.json",
    ] {
        if !root.join(f).is_file() {
            return Err(AppError::InvalidParams(format!(
                "multi_gpu: the bundle has no {f} ({})",
                root.display()
            )));
        }
    }
    Ok((job, res, launch, settings))
}

/// Runs a distributed training job to its end (blocking), as [`Trainer::run`] does for the
/// Rust trainer; answers the task's `result`.
pub(super) fn run(
    trainer: &Trainer,
    handle: &JobHandle,
    params: &Map<String, Value>,
    pairs: Vec<Pair>,
    promote: &dyn crate::versions::Promote,
) -> Result<Value> {
    let _span = tracing::info_span!("torchrun", task = %handle.id()).entered();
    let (job, res, launch, settings) = prepare(trainer, params, pairs)?;
    let marker = format!("ferrolabel-{}", handle.id());
    if let Some(prev) = handle.checkpoint().and_then(|c| {
        c.get("torchrun_marker")
            .and_then(Value::as_str)
            .map(String::from)
    }) {
        let killed = kill_marked(&prev, Duration::from_secs(30));
        handle.log(format!(
            "a restart took the job up: it starts over ({killed} leftover process(es) killed)"
        ));
        if settings.slurm.is_some() {
            match scancel(None, &prev, SCANCEL_WAIT) {
                Ok(t) => handle.log(format!(
                    "the earlier attempt's Slurm job (if any) is gone ({t:.1?})"
                )),
                Err(e) => handle.log(format!("the earlier attempt's Slurm job: {e}")),
            }
        }
    }
    let models = job.output.parent().unwrap_or(Path::new(".")).to_path_buf();
    let files = RunFiles::new(
        &models.join(format!(".torchrun-{}", handle.id())),
        res.model_file(),
    );
    let _ = std::fs::remove_dir_all(&files.dir);
    std::fs::create_dir_all(files.dir.join("models"))?;
    std::fs::write(files.dir.join(conf::GLUE_NAME), conf::GLUE)?;
    write_json(&files.datalist, &conf::datalist(&job))?;
    let override_path = files.dir.join("override.json");
    write_json(&override_path, &conf::override_json(&job, &launch, &files))?;
    let configs = cmd::config_files(&trainer.bundle.root, &override_path);
    let bundle_args =
        cmd::bundle_args(&configs, &trainer.bundle.root.join("configs/metadata.json"));
    let mut env = vec![
        (MARKER_VAR.to_string(), marker.clone()),
        (
            "PYTHONPATH".to_string(),
            files.dir.to_string_lossy().into_owned(),
        ),
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
    ];
    if let Some(t) = trainer.threads {
        let per = (t.max(1) as usize / launch.nproc_per_node).max(1);
        env.push(("OMP_NUM_THREADS".into(), per.to_string()));
    }
    if let Some(g) = &launch.gpus {
        let list: Vec<String> = g.iter().map(usize::to_string).collect();
        env.push(("CUDA_VISIBLE_DEVICES".into(), list.join(",")));
    }
    let mut cmd = match &settings.slurm {
        None => {
            let mut c = Command::new(&settings.python);
            c.args(cmd::torchrun_args(&launch)).args(&bundle_args);
            c
        }
        Some(slurm) => {
            let script = files.dir.join("sbatch.sh");
            std::fs::write(
                &script,
                cmd::sbatch_script(
                    &settings.python,
                    &launch,
                    slurm,
                    &env,
                    &bundle_args,
                    &files.dir,
                    &marker,
                ),
            )?;
            let mut c = Command::new("sbatch");
            c.args(["--wait", "--parsable"])
                .args(&slurm.sbatch_args)
                .arg(&script);
            c
        }
    };
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&files.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    own_session(&mut cmd);
    let child = cmd.spawn().map_err(|e| {
        AppError::Task(format!(
            "cannot start {} (the Python with torch and MONAI: --conf python PATH or \
             FERROLABEL_PYTHON): {e}",
            settings.python.display()
        ))
    })?;
    let pid = child.id();
    handle.save_checkpoint(json!({"torchrun_marker": marker, "pid": pid}));
    handle.log(format!(
        "torchrun pid {pid}: {} process(es) ({} node(s) x {}, {}), training {} on {} pair(s), \
         validating on {}; epochs 1..={}, batch {} per process, lr {}{}",
        launch.world_size(),
        launch.nodes,
        launch.nproc_per_node,
        if launch.gpus.is_some() {
            "NCCL"
        } else {
            "gloo on the CPU"
        },
        res.model_file(),
        job.train.len(),
        if job.val.is_empty() {
            "the training pairs".to_string()
        } else {
            format!("{} held-out pair(s)", job.val.len())
        },
        job.config.max_epochs,
        job.config.batch_size,
        job.config.lr,
        if settings.slurm.is_some() {
            ", through sbatch --wait"
        } else {
            ""
        },
    ));
    let mut watch = Follow {
        trainer,
        handle,
        stats: Stats::new(&job, res, &handle.id()),
        output: job.output.clone(),
        network: job.network.clone(),
        outcome: None,
        promoted: 0,
        promote,
        res,
        slurm: settings.slurm.is_some(),
        slurm_job: None,
    };
    let (status, mut tail) = watch.follow(child, &files.progress, &marker);
    if let Some(id) = &watch.slurm_job {
        let out = files.dir.join(format!("slurm-{id}.out"));
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        tail = format!(
            "{tail} | {}: {}",
            out.display(),
            lines[lines.len().saturating_sub(8)..].join(" | ")
        );
    }
    watch.stats.finish(watch.outcome.as_ref());
    trainer.write_stats(&watch.stats);
    let cancelled = handle.is_cancelled();
    let ended = match (&watch.outcome, &status) {
        _ if cancelled => Err(AppError::Cancelled),
        (Some(o), Ok(s)) if s.success() => {
            let mut r = result_json(o, res);
            r["processes"] = launch.world_size().into();
            r["checkpoints_promoted"] = watch.promoted.into();
            Ok(r)
        }
        // a node without global rank 0 (several machines): nothing to report or save here
        (None, Ok(s)) if s.success() && launch.nodes > 1 => Ok(json!({
            "epochs": job.config.max_epochs, "processes": launch.nproc_per_node,
            "model_file": res.model_file(), "rank0": false,
        })),
        (_, Ok(s)) => Err(AppError::Task(format!(
            "torchrun ended ({s}); the run is kept in {}: {tail}",
            files.dir.display()
        ))),
        (_, Err(e)) => Err(AppError::Task(format!("torchrun: {e}"))),
    };
    if ended.is_ok() || cancelled {
        let _ = std::fs::remove_dir_all(&files.dir);
    }
    ended
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap_or_default())?;
    Ok(())
}
