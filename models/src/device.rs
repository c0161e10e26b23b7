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

/// The numeric precision the network runs in for inference.
///
/// `Fp32` is the exact mode (labels match MONAI's fp32 pipeline); `Bf16` runs the
/// convolutions in bfloat16 (opt-in, faster on CPUs with AVX512-BF16 or AMX), keeping the
/// group norms' statistics, the final 1x1x1 convolution, the blending, softmax and argmax in
/// float32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// float32 throughout (the default).
    #[default]
    Fp32,
    /// bfloat16 convolutions.
    Bf16,
}

impl Precision {
    /// Every precision, in the order `/info/` lists them.
    pub const ALL: [Precision; 2] = [Precision::Fp32, Precision::Bf16];

    /// The spelling [`Precision::parse`] reads back: `fp32` or `bf16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Reads `fp32` or `bf16` (any case, surrounding spaces ignored).
    pub fn parse(s: &str) -> Result<Precision> {
        let t = s.trim();
        Precision::ALL
            .into_iter()
            .find(|p| t.eq_ignore_ascii_case(p.as_str()))
            .ok_or_else(|| {
                ModelsError::Invalid(format!("unknown precision {s:?} (use fp32 or bf16)"))
            })
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = ModelsError;
    fn from_str(s: &str) -> Result<Self> {
        Precision::parse(s)
    }
}

/// Test-only: when this environment variable is `1`, [`cpu_has_bf16`] answers `false`, so
/// the refusal of bf16 on a CPU without native support can be exercised on any machine.
pub const PRETEND_NO_BF16_ENV: &str = "FERROLABEL_TEST_PRETEND_NO_BF16";

/// Whether this CPU computes bfloat16 natively: the `avx512_bf16` or `amx_bf16` flag on
/// x86-64, `bf16` among the features on aarch64 (`/proc/cpuinfo`). Without it libtorch
/// emulates bf16 and the mode would be slower than fp32.
pub fn cpu_has_bf16() -> bool {
    if std::env::var(PRETEND_NO_BF16_ENV).is_ok_and(|v| v == "1") {
        return false;
    }
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|s| cpuinfo_has_bf16(&s))
}

/// [`cpu_has_bf16`] on the text of `/proc/cpuinfo`.
pub fn cpuinfo_has_bf16(cpuinfo: &str) -> bool {
    cpuinfo.lines().any(|l| {
        let Some((key, flags)) = l.split_once(':') else {
            return false;
        };
        let key = key.trim();
        (key == "flags" || key == "Features")
            && flags
                .split_whitespace()
                .any(|f| matches!(f, "avx512_bf16" | "amx_bf16" | "bf16"))
    })
}

/// The precisions that can run on `device`: fp32 always, bf16 on CUDA and on CPUs with
/// native bfloat16 ([`cpu_has_bf16`]).
pub fn available_precisions(device: Device) -> Vec<Precision> {
    Precision::ALL
        .into_iter()
        .filter(|&p| check_precision(p, device).is_ok())
        .collect()
}

/// Refuses a precision `device` cannot run fast: bf16 on a CPU without native bfloat16 is
/// [`ModelsError::Invalid`] (HTTP 422) rather than a silently slow emulation.
pub fn check_precision(precision: Precision, device: Device) -> Result<()> {
    if precision == Precision::Bf16 && !device.is_cuda() && !cpu_has_bf16() {
        return Err(ModelsError::Invalid(
            "precision bf16 needs a CPU with native bfloat16 (AVX512-BF16 or AMX); this one has \
             neither, use fp32"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_parses_and_bf16_needs_the_cpu_flags() {
        assert_eq!(Precision::parse(" BF16").unwrap(), Precision::Bf16);
        assert_eq!(Precision::parse("fp32").unwrap(), Precision::Fp32);
        assert!(Precision::parse("fp16").is_err());
        assert!(cpuinfo_has_bf16(
            "flags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n"
        ));
        assert!(cpuinfo_has_bf16("Features\t: fp asimd bf16 i8mm\n"));
        assert!(!cpuinfo_has_bf16(
            "flags\t\t: fpu sse avx512f avx512_vnni\n"
        ));
        assert!(check_precision(Precision::Fp32, Device::Cpu).is_ok());
    }
}
