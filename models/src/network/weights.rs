//! Loading and saving network weights by MONAI state_dict key.
//!
//! Reads `torch.save` files (a bare state_dict, or a dict with a `"model"` key, as MONAI's
//! CheckpointSaver/CheckpointLoader use) and safetensors. Loading is strict: a missing, extra
//! or mis-shaped key is an error that names it. Saving writes a bare state_dict that
//! `torch.load` and MONAI's `CheckpointLoader(strict=True)` accept.

use crate::error::{ModelsError, Result};
use ferrolabel_checkpoint::{DType, TensorRecord};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Reads every tensor of a weights file as float32 CPU tensors, by name.
pub fn read_named_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.exists() {
        return Err(ModelsError::WeightsMissing(path.display().to_string()));
    }
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if is_safetensors {
        return Ok(Tensor::read_safetensors(path)?);
    }
    let records = ferrolabel_checkpoint::read_state_dict(path)?;
    records
        .into_iter()
        .map(|r| {
            let shape: Vec<i64> = r.shape.iter().map(|&s| s as i64).collect();
            let values = r.to_f32_vec()?;
            Ok((r.name, Tensor::from_slice(&values).view(shape.as_slice())))
        })
        .collect()
}

/// Copies the tensors of `path` into `vs`, strictly by name and shape.
pub fn load_strict(vs: &mut VarStore, path: &Path) -> Result<()> {
    let named: BTreeMap<String, Tensor> = read_named_tensors(path)?.into_iter().collect();
    let vars = vs.variables();
    let mut missing: Vec<&str> = vars
        .keys()
        .filter(|k| !named.contains_key(*k))
        .map(|s| s.as_str())
        .collect();
    missing.sort();
    let mut extra: Vec<&str> = named
        .keys()
        .filter(|k| !vars.contains_key(*k))
        .map(|s| s.as_str())
        .collect();
    extra.sort();
    if !missing.is_empty() || !extra.is_empty() {
        let mut msg = String::new();
        if !missing.is_empty() {
            msg.push_str(&format!("missing keys: {}", missing.join(", ")));
        }
        if !extra.is_empty() {
            if !msg.is_empty() {
                msg.push_str("; ");
            }
            msg.push_str(&format!("unexpected keys: {}", extra.join(", ")));
        }
        return Err(ModelsError::WeightsMismatch(format!(
            "{}: {msg}",
            path.display()
        )));
    }
    for (name, var) in &vars {
        let src = &named[name];
        if src.size() != var.size() {
            return Err(ModelsError::WeightsMismatch(format!(
                "{}: {name} has shape {:?}, the network expects {:?}",
                path.display(),
                src.size(),
                var.size()
            )));
        }
    }
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vars {
            let src = named[&name].to_kind(var.kind()).to_device(var.device());
            var.f_copy_(&src)?;
        }
        Ok(())
    })
}

/// Writes the variables of `vs` as a bare state_dict in `torch.save` format, atomically
/// (temporary file, fsync, rename): a crash leaves the previous file intact.
pub fn save_state_dict(vs: &VarStore, order: &[String], path: &Path) -> Result<()> {
    let vars = vs.variables();
    let mut records = Vec::with_capacity(order.len());
    for name in order {
        let t = vars
            .get(name)
            .ok_or_else(|| ModelsError::WeightsMismatch(format!("no variable {name}")))?;
        let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let values: Vec<f32> = Vec::<f32>::try_from(t.view([-1]))?;
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        records.push(TensorRecord {
            name: name.clone(),
            dtype: DType::F32,
            shape: t.size().iter().map(|&s| s as usize).collect(),
            data,
        });
    }
    let bytes = ferrolabel_checkpoint::write_state_dict_bytes(&records)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("weights"),
        std::process::id()
    ));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Checks that a weights file loads strictly into a network of `config` (on the CPU), without
/// keeping it: used to vet an uploaded checkpoint before it replaces the current one.
pub fn validate_file(config: &crate::network::SegResNetConfig, path: &Path) -> Result<()> {
    let mut vs = VarStore::new(Device::Cpu);
    let _net = crate::network::SegResNet::new(&vs.root(), config);
    load_strict(&mut vs, path)
}

/// Writes seeded random weights (PyTorch's default initialisation) for a network of `config` to
/// `path`, for demos and tests: not a model.
pub fn write_random(
    config: &crate::network::SegResNetConfig,
    seed: i64,
    path: &Path,
) -> Result<()> {
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let _net = crate::network::SegResNet::new(&vs.root(), config);
    let mut order: Vec<String> = vs.variables().keys().cloned().collect();
    order.sort();
    save_state_dict(&vs, &order, path)
}
