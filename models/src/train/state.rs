//! Exact resume: the **resume state** of a training run, one file next to its checkpoint
//! (`model.pt` → `model.resume.pt`, [`state_path`]), rewritten atomically (temp file, fsync,
//! rename) at every epoch end and when a stop request ends the run.
//!
//! It is a `torch.save` state_dict (written by `ferrolabel-checkpoint`, so
//! `torch.load(path, weights_only=True)` reads it) holding:
//!
//! * `model.<name>`: the **current** weights (not the best: those are `model.pt`), float32;
//! * `optimizer.exp_avg.<name>`, `optimizer.exp_avg_sq.<name>`: AdamW's moments, float32;
//! * `meta`: a uint8 tensor of UTF-8 JSON ([`ResumeMeta`]): the position (last finished
//!   epoch, optimiser steps done in the epoch under way, optimiser steps of the run, the
//!   epoch's partial loss sum), each parameter's AdamW step count, the learning rate (constant:
//!   the bundle has no scheduler, so the step count is the schedule's whole position), the fp16
//!   loss scaler (scale, growth tracker), the best metric and epoch, the per-epoch history, the
//!   seed, and a fingerprint of the settings that decide the next step.
//!
//! No random-generator state is stored: every random decision is drawn from a generator seeded
//! by [`step_seed`]`(seed, epoch, step)` (the epoch's shuffle at step 0; each optimiser step's
//! crops, and libtorch's generator for dropout, at its own step), so the position alone
//! reproduces them.

use super::optim::{cpu_f32, AdamW, ParamState};
use super::scaler::GradScaler;
use super::trainer::{EpochRecord, TrainJob};
use crate::error::{ModelsError, Result};
use ferrolabel_checkpoint::{DType, TensorRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::Tensor;

/// `ResumeMeta::format`.
pub const FORMAT: &str = "ferrolabel-train-resume";
/// `ResumeMeta::version`.
pub const VERSION: u32 = 1;
/// How the random decisions are drawn (recorded in the file, checked on load).
pub const RNG_SCHEME: &str =
    "rand 0.8 StdRng and tch::manual_seed, both seeded per step with splitmix64(seed, epoch, step)";

/// Where the resume state of a run whose checkpoint is `output` goes:
/// `<dir>/<stem>.resume.pt` (`models/model_lowres.pt` → `models/model_lowres.resume.pt`).
pub fn state_path(output: &Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    output.with_file_name(format!("{stem}.resume.pt"))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of the random decisions of optimiser step `step` (1-based; 0: the epoch's
/// shuffle) of 1-based `epoch` in a run seeded with `seed`.
pub fn step_seed(seed: u64, epoch: usize, step: usize) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ epoch as u64) ^ step as u64)
}

/// Where a run stands: what the next step continues from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The last finished epoch (0: none).
    pub epoch: usize,
    /// Optimiser steps done in epoch `epoch + 1` (0 at an epoch end; all of them when a stop
    /// came during that epoch's validation).
    pub step: usize,
    /// Optimiser steps of the whole run.
    pub iteration: u64,
    /// The sum of the step losses of epoch `epoch + 1` so far.
    pub epoch_loss_sum: f64,
}

/// The JSON part of a resume state (the `meta` entry).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeMeta {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The run's tag ([`TrainJob::tag`]: the server's task id).
    pub tag: String,
    /// Where the run stands.
    pub position: Position,
    /// The best metric so far (its weights are the checkpoint `model.pt`).
    pub best_metric: Option<f64>,
    /// The epoch of the best metric.
    pub best_epoch: Option<usize>,
    /// The fp16 loss scaler.
    pub scaler: GradScaler,
    /// AdamW's learning rate (constant).
    pub lr: f64,
    /// The learning-rate schedule: `"constant"` (its position is the step count).
    pub lr_schedule: String,
    /// AdamW's step count per parameter.
    pub optimizer_steps: BTreeMap<String, i64>,
    /// [`RNG_SCHEME`].
    pub rng: String,
    /// The per-epoch records of the run so far.
    pub history: Vec<EpochRecord>,
    /// The settings that decide the next step ([`fingerprint`]).
    pub fingerprint: Map<String, Value>,
}

/// The settings of `job` that decide its steps: a resumed run with other values continues,
/// but not as the stopped run would have (see [`changed`]).
pub fn fingerprint(job: &TrainJob) -> Map<String, Value> {
    let c = &job.config;
    let ids = |v: &[super::Pair]| Value::from(v.iter().map(|p| p.id.clone()).collect::<Vec<_>>());
    let mut m = Map::new();
    m.insert(
        "network".into(),
        serde_json::to_value(&job.network).unwrap_or_default(),
    );
    m.insert("batch_size".into(), c.batch_size.into());
    m.insert("roi".into(), Value::from(c.roi.to_vec()));
    m.insert("val_roi".into(), Value::from(c.val_roi.to_vec()));
    m.insert("lr".into(), c.lr.into());
    m.insert("weight_decay".into(), c.weight_decay.into());
    m.insert("amp".into(), c.amp.into());
    m.insert("seed".into(), c.seed.into());
    m.insert(
        "prepare".into(),
        serde_json::to_value(&c.prepare).unwrap_or_default(),
    );
    m.insert("val_interval".into(), c.val_interval.into());
    m.insert("train".into(), ids(&job.train));
    m.insert("val".into(), ids(&job.val));
    m
}

/// The fingerprint keys whose values differ between `saved` and `now`.
pub fn changed(saved: &Map<String, Value>, now: &Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<&String> = saved.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| saved.get(*k) != now.get(*k))
        .cloned()
        .collect()
}

/// A resume state read back.
#[derive(Debug)]
pub struct Loaded {
    /// The JSON part.
    pub meta: ResumeMeta,
    /// The current weights, by variable name (CPU float32).
    pub weights: BTreeMap<String, Tensor>,
    /// AdamW's state, by variable name (CPU float32).
    pub optimizer: BTreeMap<String, ParamState>,
}

fn f32_record(name: String, t: &Tensor) -> Result<TensorRecord> {
    let t = cpu_f32(t)?;
    let values: Vec<f32> = Vec::<f32>::try_from(t.f_view([-1])?)?;
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    Ok(TensorRecord {
        name,
        dtype: DType::F32,
        shape: t.size().iter().map(|&s| s as usize).collect(),
        data,
    })
}

/// Writes the resume state of a run to `path`, atomically: `vs`'s variables (in `order`),
/// `opt`'s moments and `meta` (whose `optimizer_steps` is filled from `opt`).
pub fn save(
    path: &Path,
    vs: &VarStore,
    order: &[String],
    opt: &AdamW,
    mut meta: ResumeMeta,
) -> Result<()> {
    let vars = vs.variables();
    let mut records = Vec::with_capacity(order.len() * 3 + 1);
    for name in order {
        let t = vars
            .get(name)
            .ok_or_else(|| ModelsError::WeightsMismatch(format!("no variable {name}")))?;
        records.push(f32_record(format!("model.{name}"), t)?);
    }
    meta.optimizer_steps.clear();
    for (name, s) in opt.state() {
        records.push(f32_record(format!("optimizer.exp_avg.{name}"), &s.exp_avg)?);
        records.push(f32_record(
            format!("optimizer.exp_avg_sq.{name}"),
            &s.exp_avg_sq,
        )?);
        meta.optimizer_steps.insert(name.clone(), s.step);
    }
    let json = serde_json::to_vec(&meta)
        .map_err(|e| ModelsError::Invalid(format!("resume state: {e}")))?;
    records.push(TensorRecord {
        name: "meta".into(),
        dtype: DType::U8,
        shape: vec![json.len()],
        data: json,
    });
    let bytes = ferrolabel_checkpoint::write_state_dict_bytes(&records)?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through `.<name>.<pid>.tmp` (fsync, rename, fsync of the folder):
/// the temp-file name the server's leftover sweep knows.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn bad(path: &Path, what: impl std::fmt::Display) -> ModelsError {
    ModelsError::Invalid(format!(
        "{} is not a usable resume state: {what}",
        path.display()
    ))
}

fn parse_meta(path: &Path, r: &TensorRecord) -> Result<ResumeMeta> {
    let meta: ResumeMeta = serde_json::from_slice(&r.data).map_err(|e| bad(path, e))?;
    if meta.format != FORMAT || meta.version != VERSION {
        return Err(bad(
            path,
            format!("format {} version {}", meta.format, meta.version),
        ));
    }
    if meta.rng != RNG_SCHEME {
        return Err(bad(path, format!("random scheme {:?}", meta.rng)));
    }
    Ok(meta)
}

/// Reads only the JSON part of the resume state at `path`.
pub fn read_meta(path: &Path) -> Result<ResumeMeta> {
    let records = ferrolabel_checkpoint::read_state_dict(path)?;
    let r = records
        .iter()
        .find(|r| r.name == "meta" && r.dtype == DType::U8)
        .ok_or_else(|| bad(path, "no meta entry"))?;
    parse_meta(path, r)
}

/// Reads the resume state at `path`.
pub fn load(path: &Path) -> Result<Loaded> {
    let records = ferrolabel_checkpoint::read_state_dict(path)?;
    let mut meta = None;
    let mut weights = BTreeMap::new();
    let mut avg = BTreeMap::new();
    let mut avg_sq = BTreeMap::new();
    for r in records {
        if r.name == "meta" && r.dtype == DType::U8 {
            meta = Some(parse_meta(path, &r)?);
            continue;
        }
        let shape: Vec<i64> = r.shape.iter().map(|&s| s as i64).collect();
        let t = Tensor::from_slice(&r.to_f32_vec()?).view(shape.as_slice());
        if let Some(n) = r.name.strip_prefix("model.") {
            weights.insert(n.to_string(), t);
        } else if let Some(n) = r.name.strip_prefix("optimizer.exp_avg_sq.") {
            avg_sq.insert(n.to_string(), t);
        } else if let Some(n) = r.name.strip_prefix("optimizer.exp_avg.") {
            avg.insert(n.to_string(), t);
        } else {
            return Err(bad(path, format!("unexpected entry {}", r.name)));
        }
    }
    let meta = meta.ok_or_else(|| bad(path, "no meta entry"))?;
    let mut optimizer = BTreeMap::new();
    for (name, step) in &meta.optimizer_steps {
        let (Some(m), Some(v)) = (avg.remove(name), avg_sq.remove(name)) else {
            return Err(bad(path, format!("no AdamW moments for {name}")));
        };
        optimizer.insert(
            name.clone(),
            ParamState {
                step: *step,
                exp_avg: m,
                exp_avg_sq: v,
            },
        );
    }
    if let Some(n) = avg.keys().chain(avg_sq.keys()).next() {
        return Err(bad(
            path,
            format!("AdamW moments without a step count: {n}"),
        ));
    }
    Ok(Loaded {
        meta,
        weights,
        optimizer,
    })
}

/// Copies `weights` into `vs`, strictly: the same names, the same shapes.
pub fn load_weights(vs: &mut VarStore, weights: &BTreeMap<String, Tensor>) -> Result<()> {
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut theirs: Vec<&String> = weights.keys().collect();
    theirs.sort();
    if names != theirs {
        return Err(ModelsError::WeightsMismatch(
            "the resume state's weights do not have the network's variables".into(),
        ));
    }
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vars {
            let src = &weights[&name];
            if src.size() != var.size() {
                return Err(ModelsError::WeightsMismatch(format!(
                    "resume state: {name} has shape {:?}, the network expects {:?}",
                    src.size(),
                    var.size()
                )));
            }
            var.f_copy_(&src.f_to_kind(var.kind())?.f_to_device(var.device())?)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_seeds() {
        assert_eq!(
            state_path(Path::new("/b/models/model_lowres.pt")),
            Path::new("/b/models/model_lowres.resume.pt")
        );
        assert_eq!(
            state_path(Path::new("model.pt")),
            Path::new("model.resume.pt")
        );
        // distinct per seed, epoch and step, and stable (a resumed run draws the same)
        let mut seen = std::collections::HashSet::new();
        for seed in [0, 1, 123] {
            for epoch in 1..20 {
                for step in 0..20 {
                    assert!(seen.insert(step_seed(seed, epoch, step)));
                }
            }
        }
        assert_eq!(step_seed(123, 4, 2), step_seed(123, 4, 2));
    }

    #[test]
    fn changed_names_the_differing_settings() {
        let mut a = Map::new();
        a.insert("lr".into(), 0.1.into());
        a.insert("seed".into(), 1.into());
        let mut b = a.clone();
        assert!(changed(&a, &b).is_empty());
        b.insert("lr".into(), 0.2.into());
        b.insert("new".into(), true.into());
        assert_eq!(changed(&a, &b), ["lr", "new"]);
    }
}
