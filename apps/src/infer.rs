//! Infer-task glue: request params → an [`InferPlan`], and a segmentation → the result file and
//! its params JSON.
//!
//! Param rules (anything else in the request, e.g. `client_id`, `result_dtype: "uint8"` or
//! `device` naming the configured device, is accepted and ignored):
//!
//! | param | accepted values | default |
//! |---|---|---|
//! | `highres` | `true`/`false`, or those words (any case), `1`/`0` | the bundle's (`true`) |
//! | `sw_overlap` | a number, or numeric string, `0 <= x < 1` | the bundle's (0.25) |
//! | `sw_batch_size` | an integer, or integer string, `1..=64` | the bundle's (1) |
//! | `result_extension` | `.nii.gz`, `.nii`, `.nrrd`, `.seg.nrrd` (→ `.nrrd`) | the input's, else `.nii.gz` |
//! | `result_dtype` | `uint8` | `uint8` |
//! | `save_label` | boolean | `false` |
//! | `label_tag` | a valid tag | `original` |
//! | `report` | boolean: add the quantitative report ([`crate::report`]) to the params | `true` |
//! | `device` | one of the configured device names, `cpu`, `cuda`, `cuda:N` of the configured device | ignored |
//! | `precision` | `fp32` (exact) or `bf16` (faster; a CPU without native bf16 answers 422) | the server's `--precision` |

use std::path::Path;

use ferrolabel_imaging::{encode_label_nifti, encode_label_nrrd, DataType, Header, Volume};
use ferrolabel_models::Resolution;
use serde_json::{Map, Value};

use crate::error::{AppError, Result};

/// Largest accepted `sw_batch_size`.
pub const MAX_SW_BATCH_SIZE: usize = 64;

/// The label file formats a result can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultExt {
    /// gzip-compressed NIfTI-1.
    NiiGz,
    /// Plain NIfTI-1.
    Nii,
    /// NRRD (gzip encoding), LPS space.
    Nrrd,
}

impl ResultExt {
    /// The file extension, with its leading dot.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultExt::NiiGz => ".nii.gz",
            ResultExt::Nii => ".nii",
            ResultExt::Nrrd => ".nrrd",
        }
    }

    /// Parses an extension (leading dot optional, any case); `.seg.nrrd` is written as `.nrrd`.
    pub fn parse(s: &str) -> Option<ResultExt> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_prefix('.').unwrap_or(&s);
        match s {
            "nii.gz" => Some(ResultExt::NiiGz),
            "nii" => Some(ResultExt::Nii),
            "nrrd" | "seg.nrrd" => Some(ResultExt::Nrrd),
            _ => None,
        }
    }

    /// The format matching a file name's extension, if it is one of ours.
    pub fn from_file_name(name: &str) -> Option<ResultExt> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".nii.gz") {
            Some(ResultExt::NiiGz)
        } else if lower.ends_with(".nii") {
            Some(ResultExt::Nii)
        } else if lower.ends_with(".nrrd") {
            Some(ResultExt::Nrrd)
        } else {
            None
        }
    }
}

/// A validated infer request: what to run and how to write the result.
#[derive(Debug, Clone, PartialEq)]
pub struct InferPlan {
    /// The model name.
    pub model: String,
    /// Which weights (and target spacing).
    pub resolution: Resolution,
    /// Sliding-window overlap (`None`: the bundle's).
    pub sw_overlap: Option<f64>,
    /// Windows per network call (`None`: the bundle's).
    pub sw_batch_size: Option<usize>,
    /// Requested result format (`None`: the input's, else `.nii.gz`).
    pub result_ext: Option<ResultExt>,
    /// Store the result in the datastore.
    pub save_label: bool,
    /// The tag to store it under.
    pub label_tag: String,
    /// Add the quantitative report ([`crate::report`]) to the result params.
    pub report: bool,
    /// Network precision (`None`: the server's default).
    pub precision: Option<ferrolabel_models::Precision>,
}

/// The outcome of an infer task.
#[derive(Debug, Clone)]
pub struct InferOutput {
    /// The encoded label file.
    pub bytes: Vec<u8>,
    /// Its format.
    pub ext: ResultExt,
    /// The result params JSON (`label_names`, `latencies`, `centroids`, ...).
    pub params: Map<String, Value>,
}

fn bad(key: &str, v: &Value, why: &str) -> AppError {
    AppError::InvalidParams(format!("invalid value {v} for param {key:?}: {why}"))
}

/// Reads a boolean param: JSON bool, `"true"`/`"false"`/`"1"`/`"0"`/`"yes"`/`"no"` (any case),
/// or the numbers 1 and 0.
pub fn param_bool(params: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    let Some(v) = params.get(key) else {
        return Ok(None);
    };
    let parsed = match v {
        Value::Null => return Ok(None),
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
            "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
            _ => None,
        },
        _ => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| bad(key, v, "expected true or false"))
}

fn param_f64(params: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    let Some(v) = params.get(key) else {
        return Ok(None);
    };
    let parsed = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    parsed
        .filter(|x| x.is_finite())
        .map(Some)
        .ok_or_else(|| bad(key, v, "expected a number"))
}

fn param_usize(params: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    let Some(v) = params.get(key) else {
        return Ok(None);
    };
    let parsed = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e9)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    parsed
        .map(|n| Some(n as usize))
        .ok_or_else(|| bad(key, v, "expected a non-negative integer"))
}

fn param_str<'a>(params: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(bad(key, v, "expected a string")),
    }
}

/// Validates the request params of an infer task on this app's model. `default_highres` is the
/// bundle's default; `devices` are the names `/info/` lists for `device`.
pub(crate) fn plan(
    model: &str,
    params: &Map<String, Value>,
    default_highres: bool,
    devices: &[String],
) -> Result<InferPlan> {
    let highres = param_bool(params, "highres")?.unwrap_or(default_highres);
    let sw_overlap = param_f64(params, "sw_overlap")?;
    if let Some(o) = sw_overlap {
        if !(0.0..1.0).contains(&o) {
            return Err(bad(
                "sw_overlap",
                &params["sw_overlap"],
                "must be >= 0 and < 1",
            ));
        }
    }
    let sw_batch_size = param_usize(params, "sw_batch_size")?;
    if let Some(b) = sw_batch_size {
        if !(1..=MAX_SW_BATCH_SIZE).contains(&b) {
            return Err(bad(
                "sw_batch_size",
                &params["sw_batch_size"],
                &format!("must be between 1 and {MAX_SW_BATCH_SIZE}"),
            ));
        }
    }
    let result_ext = match param_str(params, "result_extension")? {
        None | Some("") => None,
        Some(s) => Some(ResultExt::parse(s).ok_or_else(|| {
            bad(
                "result_extension",
                &params["result_extension"],
                "supported: .nii.gz, .nii, .nrrd, .seg.nrrd",
            )
        })?),
    };
    match param_str(params, "result_dtype")? {
        None | Some("") => {}
        Some(s) if s.eq_ignore_ascii_case("uint8") => {}
        Some(_) => {
            return Err(bad(
                "result_dtype",
                &params["result_dtype"],
                "only uint8 is supported (104 classes fit in a byte)",
            ))
        }
    }
    if let Some(d) = param_str(params, "device")? {
        check_device(d, devices).map_err(|why| bad("device", &params["device"], &why))?;
    }
    let precision = match param_str(params, "precision")? {
        None | Some("") => None,
        Some(p) => Some(
            ferrolabel_models::Precision::parse(p)
                .map_err(|_| bad("precision", &params["precision"], "supported: fp32, bf16"))?,
        ),
    };
    let save_label = param_bool(params, "save_label")?.unwrap_or(false);
    let report = param_bool(params, "report")?.unwrap_or(true);
    let label_tag = match param_str(params, "label_tag")? {
        None | Some("") => ferrolabel_datastore::ORIGINAL_TAG.to_string(),
        Some(t) => {
            ferrolabel_datastore::validate_tag(t)
                .map_err(|e| bad("label_tag", &params["label_tag"], &e.to_string()))?;
            t.to_string()
        }
    };
    Ok(InferPlan {
        model: model.to_string(),
        resolution: Resolution::from_highres(highres),
        sw_overlap,
        sw_batch_size,
        result_ext,
        save_label,
        label_tag,
        report,
        precision,
    })
}

/// Accepts a `device` param that names the configured device; anything else is an error.
fn check_device(d: &str, devices: &[String]) -> std::result::Result<(), String> {
    let d = d.trim();
    if d.is_empty() || devices.iter().any(|n| n == d) {
        return Ok(());
    }
    let on_cpu = devices.iter().all(|n| n == "cpu");
    let generic_ok = if on_cpu {
        d.eq_ignore_ascii_case("cpu")
    } else {
        d.eq_ignore_ascii_case("cuda") || d.to_ascii_lowercase().starts_with("cuda:")
    };
    if generic_ok {
        Ok(())
    } else {
        Err(format!("this server runs on {}", devices.join(", ")))
    }
}

/// Encodes a label map on the grid of `volume` in the requested format.
pub(crate) fn encode(labels: &[u8], volume: &Volume, ext: ResultExt) -> Result<Vec<u8>> {
    let enc = |e: ferrolabel_imaging::ImagingError| AppError::Encode(e.to_string());
    match ext {
        ResultExt::Nrrd => {
            encode_label_nrrd(labels, volume.dims, &volume.affine, true).map_err(enc)
        }
        ResultExt::NiiGz | ResultExt::Nii => {
            let gzip = ext == ResultExt::NiiGz;
            match &volume.header {
                Some(h) => encode_label_nifti(labels, h, gzip).map_err(enc),
                None => {
                    let h =
                        Header::new_3d(volume.dims, DataType::U8, &volume.affine).map_err(enc)?;
                    encode_label_nifti(labels, &h, gzip).map_err(enc)
                }
            }
        }
    }
}

/// The result format: the requested one, else the input's if it is one of ours, else `.nii.gz`.
pub(crate) fn result_ext(plan: &InferPlan, input: &Path) -> ResultExt {
    plan.result_ext.unwrap_or_else(|| {
        input
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(ResultExt::from_file_name)
            .unwrap_or(ResultExt::NiiGz)
    })
}

/// Rounds seconds to 2 decimals, as MONAI Label reports latencies.
pub(crate) fn secs(x: f64) -> Value {
    let r = (x * 100.0).round() / 100.0;
    serde_json::Number::from_f64(r)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn run(v: Value) -> Result<InferPlan> {
        plan("m", &p(v), true, &["cpu".to_string()])
    }

    #[test]
    fn defaults() {
        let plan = run(json!({"client_id": "user-xyz"})).unwrap();
        assert_eq!(plan.resolution, Resolution::High);
        assert_eq!(plan.sw_overlap, None);
        assert_eq!(plan.result_ext, None);
        assert!(!plan.save_label);
        assert_eq!(plan.label_tag, "original");
    }

    #[test]
    fn slicer_params() {
        let plan = run(
            json!({"highres": "False", "sw_overlap": "0.5", "sw_batch_size": 2,
            "device": "cpu", "result_extension": ".seg.nrrd", "result_dtype": "uint8"}),
        )
        .unwrap();
        assert_eq!(plan.resolution, Resolution::Low);
        assert_eq!(plan.sw_overlap, Some(0.5));
        assert_eq!(plan.sw_batch_size, Some(2));
        assert_eq!(plan.result_ext, Some(ResultExt::Nrrd));
        assert_eq!(plan.precision, None);
        let plan = run(json!({"precision": "BF16"})).unwrap();
        assert_eq!(plan.precision, Some(ferrolabel_models::Precision::Bf16));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            json!({"highres": "maybe"}),
            json!({"sw_overlap": 1.0}),
            json!({"sw_overlap": -0.1}),
            json!({"sw_overlap": "x"}),
            json!({"sw_batch_size": 0}),
            json!({"sw_batch_size": 65}),
            json!({"sw_batch_size": 1.5}),
            json!({"result_extension": ".png"}),
            json!({"result_dtype": "float32"}),
            json!({"device": "NVIDIA A100"}),
            json!({"label_tag": "../x"}),
            json!({"precision": "fp16"}),
        ] {
            let e = run(bad.clone()).unwrap_err();
            assert!(matches!(e, AppError::InvalidParams(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn extensions() {
        assert_eq!(ResultExt::parse("nii.gz"), Some(ResultExt::NiiGz));
        assert_eq!(ResultExt::parse(".NRRD"), Some(ResultExt::Nrrd));
        assert_eq!(ResultExt::from_file_name("/a/b.nii"), Some(ResultExt::Nii));
        assert_eq!(ResultExt::from_file_name("x.dcm"), None);
    }
}
