//! Compute devices, so that crates above the engine never name tch themselves.

use crate::error::{ModelsError, Result};

pub use tch::Device;

/// Parses `cpu`, `cuda` or `cuda:N`; a CUDA device must be visible to libtorch.
pub fn parse_device(s: &str) -> Result<Device> {
    let dev = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => {
                return Err(ModelsError::Invalid(format!(
                    "unknown device {other:?} (use cpu, cuda or cuda:N)"
                )))
            }
        },
    };
    if let Device::Cuda(n) = dev {
        let count = tch::Cuda::device_count();
        if (n as i64) >= count {
            return Err(ModelsError::Invalid(format!(
                "device {s} requested but libtorch sees {count} CUDA device(s)"
            )));
        }
    }
    Ok(dev)
}

/// The CUDA device index, if `device` is a GPU.
pub fn cuda_index(device: Device) -> Option<usize> {
    match device {
        Device::Cuda(n) => Some(n),
        _ => None,
    }
}

/// Sets libtorch's intra-op thread count for this process (training workers honour the
/// server's `--threads`).
pub fn set_threads(n: i32) {
    tch::set_num_threads(n);
}

/// The spelling [`parse_device`] reads back: `cpu` or `cuda:N`.
pub fn device_string(device: Device) -> String {
    match cuda_index(device) {
        Some(i) => format!("cuda:{i}"),
        None => "cpu".to_string(),
    }
}
