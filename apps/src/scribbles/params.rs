//! The request params of a scribbles model, checked before any file is read.
//!
//! | param | meaning | default |
//! |---|---|---|
//! | `selected_label_name` | the structure to correct (required): one of the bundle's labels; `Histogram+GraphCut` also takes any other non-scribble name of `label_info` | — |
//! | `label_info` | `[{"name", "id"}]`: the value of each segment in the `label` upload (Slicer sends every segment of its segmentation, the scribbles layers included) | `[]` |
//! | `roi` | `[i0, i1, j0, j1, k0, k1]` voxel indices, each pair in either order, ends exclusive; `[]` or absent: the whole image | whole image |
//! | `lamda`, `sigma` | weight and intensity scale of the pairwise term | 1.0, 0.1 |
//! | `num_bins` | histogram bins (`Histogram+GraphCut`) | 64 |
//! | `histogram_weight` | weight in `[0, 1]` of the strokes' intensity histograms pooled with the model's probability (`Model+GraphCut`; `ferrolabel_scribbles::GraphCutOptions::histogram_weight`) | 0.5 |
//! | `highres` | which weights give the probabilities (`Model+GraphCut`) | the bundle's |
//! | `result_extension` | `.nii.gz`, `.nii`, `.nrrd`, `.seg.nrrd` | the input's, else `.nii.gz` |
//!
//! Anything else (`client_id`, `device`, `result_dtype`, ...) is accepted and ignored.

use serde_json::{Map, Value};

use crate::error::{AppError, Result};
use crate::infer::{param_bool, ResultExt};

/// Segment name Slicer gives the background scribbles layer.
pub const BACKGROUND_SCRIBBLES: &str = "background_scribbles";
/// Segment name Slicer gives the foreground scribbles layer.
pub const FOREGROUND_SCRIBBLES: &str = "foreground_scribbles";

/// `histogram_weight` of `Model+GraphCut` when the request has none: half model, half strokes,
/// which in the crate's real-CT test removes a leak the model is 70 % sure of and keeps the
/// liver (docs/scribbles.md, "The likelihoods").
pub const DEFAULT_HISTOGRAM_WEIGHT: f64 = 0.5;

/// Largest accepted `num_bins`.
pub const MAX_BINS: usize = 4096;

/// The two scribbles methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// MONAI Label's weight-free method: intensity histograms of the scribbled voxels.
    Histogram,
    /// The bundle's softmax probability of the structure as the likelihood.
    Model,
}

impl Method {
    /// Both methods, in `/info/` order.
    pub const ALL: [Method; 2] = [Method::Histogram, Method::Model];

    /// The model name (`/info/`, `/infer/{model}`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Histogram => "Histogram+GraphCut",
            Method::Model => "Model+GraphCut",
        }
    }

    /// The method a model name designates: exact or any case, `+` also percent-encoded (the
    /// clients quote the model name with `quote_plus`).
    pub fn from_name(name: &str) -> Option<Method> {
        let n = name.replace("%2B", "+").replace("%2b", "+");
        Method::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(n.trim()))
    }

    /// The `/info/` description.
    pub fn description(self) -> &'static str {
        match self {
            Method::Histogram => {
                "A post processing step with histogram-based GraphCut for Generic segmentation \
                 (weight-free; the selected structure is replaced inside the ROI)"
            }
            Method::Model => {
                "Scribbles correction with GraphCut, using the whole-body model's softmax \
                 probability of the selected structure as the likelihood (the selected structure \
                 is replaced inside the ROI)"
            }
        }
    }
}

/// A validated scribbles request.
#[derive(Debug, Clone, PartialEq)]
pub struct ScribblesPlan {
    /// Which method.
    pub method: Method,
    /// The structure to correct.
    pub selected: String,
    /// Its value in the `label` upload (from `label_info`), if listed.
    pub selected_id: Option<i64>,
    /// `(name, id)` of every segment in the upload.
    pub label_info: Vec<(String, i64)>,
    /// The ROI as sent (`None`: the whole image).
    pub roi: Option<[i64; 6]>,
    /// Pairwise weight.
    pub lamda: f32,
    /// Pairwise intensity scale.
    pub sigma: f32,
    /// Histogram bins.
    pub num_bins: usize,
    /// Weight of the strokes' histograms pooled with the model (`Model+GraphCut`).
    pub histogram_weight: f32,
    /// `highres` for the probabilities (`None`: the bundle's).
    pub highres: Option<bool>,
    /// Requested result format.
    pub result_ext: Option<ResultExt>,
}

fn bad(key: &str, v: &Value, why: &str) -> AppError {
    AppError::InvalidParams(format!("invalid value {v} for param {key:?}: {why}"))
}

fn number(params: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    let Some(v) = params.get(key) else {
        return Ok(None);
    };
    let x = match v {
        Value::Null => return Ok(None),
        // Slicer's options table collapses lists to their first element; accept a list too
        Value::Array(a) if !a.is_empty() => return number(&single(key, &a[0]), key),
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    x.filter(|x| x.is_finite())
        .map(Some)
        .ok_or_else(|| bad(key, v, "expected a number"))
}

fn single(key: &str, v: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.to_string(), v.clone());
    m
}

fn parse_roi(v: &Value) -> Result<Option<[i64; 6]>> {
    let arr = match v {
        Value::Null => return Ok(None),
        Value::Array(a) if a.is_empty() => return Ok(None),
        Value::Array(a) => a,
        _ => return Err(bad("roi", v, "expected [i0, i1, j0, j1, k0, k1]")),
    };
    if arr.len() != 6 {
        return Err(bad(
            "roi",
            v,
            "expected 6 voxel indices [i0, i1, j0, j1, k0, k1]",
        ));
    }
    let mut out = [0i64; 6];
    for (o, x) in out.iter_mut().zip(arr) {
        *o = match x {
            Value::Number(n) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 1e12)
                    .map(|f| f as i64)
            }),
            _ => None,
        }
        .ok_or_else(|| bad("roi", v, "expected integer voxel indices"))?;
    }
    Ok(Some(out))
}

fn parse_label_info(v: &Value) -> Result<Vec<(String, i64)>> {
    let arr = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        _ => {
            return Err(bad(
                "label_info",
                v,
                "expected [{\"name\": ..., \"id\": n}, ...]",
            ))
        }
    };
    let mut out = Vec::with_capacity(arr.len());
    for e in arr {
        let name = e.get("name").and_then(Value::as_str);
        let id = e.get("id").and_then(|i| {
            i.as_i64()
                .or_else(|| i.as_str().and_then(|s| s.trim().parse().ok()))
        });
        match (name, id) {
            (Some(n), Some(i)) if (0..=255).contains(&i) => out.push((n.to_string(), i)),
            _ => {
                return Err(bad(
                    "label_info",
                    e,
                    "each entry needs a \"name\" and an \"id\" between 0 and 255",
                ))
            }
        }
    }
    Ok(out)
}

/// Validates the params of a scribbles request. `labels` are the bundle's structure names
/// (`selected_label_name` must be one of them for [`Method::Model`]).
pub fn plan(
    method: Method,
    params: &Map<String, Value>,
    labels: &[String],
) -> Result<ScribblesPlan> {
    let label_info = parse_label_info(params.get("label_info").unwrap_or(&Value::Null))?;
    let selected =
        match params.get("selected_label_name") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            None | Some(Value::Null) => return Err(AppError::InvalidParams(
                "param \"selected_label_name\" is required: the name of the structure to correct"
                    .into(),
            )),
            Some(v) => return Err(bad("selected_label_name", v, "expected a structure name")),
        };
    let is_scribble = |n: &str| n == BACKGROUND_SCRIBBLES || n == FOREGROUND_SCRIBBLES;
    let in_bundle = labels.iter().any(|l| l.eq_ignore_ascii_case(&selected));
    let in_info = label_info
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(&selected) && !is_scribble(n));
    let known = match method {
        Method::Model => in_bundle,
        Method::Histogram => in_bundle || in_info,
    };
    if !known || is_scribble(&selected) {
        let what = if method == Method::Model {
            "one of the model's labels (see /info/)"
        } else {
            "one of the model's labels or a segment named in label_info"
        };
        return Err(AppError::InvalidParams(format!(
            "unknown selected_label_name {selected:?}: it must be {what}"
        )));
    }
    let selected_id = label_info
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(&selected))
        .map(|(_, i)| *i);
    let roi = parse_roi(params.get("roi").unwrap_or(&Value::Null))?;
    let lamda = number(params, "lamda")?.unwrap_or(1.0);
    if !(0.0..=1e6).contains(&lamda) {
        return Err(bad("lamda", &params["lamda"], "must be between 0 and 1e6"));
    }
    let sigma = number(params, "sigma")?.unwrap_or(0.1);
    if !(sigma > 0.0 && sigma <= 1e6) {
        return Err(bad("sigma", &params["sigma"], "must be > 0"));
    }
    let num_bins = number(params, "num_bins")?.unwrap_or(64.0);
    if num_bins.fract() != 0.0 || !(2.0..=MAX_BINS as f64).contains(&num_bins) {
        return Err(bad(
            "num_bins",
            &params["num_bins"],
            &format!("must be an integer between 2 and {MAX_BINS}"),
        ));
    }
    let histogram_weight = number(params, "histogram_weight")?.unwrap_or(DEFAULT_HISTOGRAM_WEIGHT);
    if !(0.0..=1.0).contains(&histogram_weight) {
        return Err(bad(
            "histogram_weight",
            &params["histogram_weight"],
            "must be between 0 and 1",
        ));
    }
    let result_ext = match params.get("result_extension") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(ResultExt::parse(s).ok_or_else(|| {
            bad(
                "result_extension",
                &params["result_extension"],
                "supported: .nii.gz, .nii, .nrrd, .seg.nrrd",
            )
        })?),
        Some(v) => return Err(bad("result_extension", v, "expected a string")),
    };
    Ok(ScribblesPlan {
        method,
        selected,
        selected_id,
        label_info,
        roi,
        lamda: lamda as f32,
        sigma: sigma as f32,
        num_bins: num_bins as usize,
        histogram_weight: histogram_weight as f32,
        highres: param_bool(params, "highres")?,
        result_ext,
    })
}

impl ScribblesPlan {
    /// The upload values of the scribbles layers: `label_info`'s `background_scribbles` and
    /// `foreground_scribbles` ids, else MONAI Label's defaults for `num_labels` labels
    /// (`num_labels + 1`, `num_labels + 2`).
    pub fn scribble_values(&self, num_labels: usize) -> (u8, u8) {
        let find = |name: &str| {
            self.label_info
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, i)| *i as u8)
        };
        let bg_default = (num_labels + 1).min(254) as u8;
        (
            find(BACKGROUND_SCRIBBLES).unwrap_or(bg_default),
            find(FOREGROUND_SCRIBBLES).unwrap_or(bg_default + 1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels() -> Vec<String> {
        vec!["spleen".into(), "liver".into()]
    }

    fn run(m: Method, v: Value) -> Result<ScribblesPlan> {
        plan(m, v.as_object().unwrap(), &labels())
    }

    #[test]
    fn slicer_request() {
        let p = run(
            Method::Model,
            json!({"roi": [10, 2, 0, 5, 3, 4], "selected_label_name": "liver",
                "label_info": [{"name": "liver", "id": 1}, {"name": "background_scribbles", "id": 2},
                               {"name": "foreground_scribbles", "id": 3}],
                "lamda": "2.5", "sigma": [0.2], "client_id": "user-xyz", "device": "cpu"}),
        )
        .unwrap();
        assert_eq!(p.roi, Some([10, 2, 0, 5, 3, 4]));
        assert_eq!(p.selected_id, Some(1));
        assert_eq!(p.scribble_values(104), (2, 3));
        assert_eq!(p.lamda, 2.5);
        assert_eq!(p.sigma, 0.2);
        let p = run(
            Method::Histogram,
            json!({"selected_label_name": "Segment_1", "roi": [],
            "label_info": [{"name": "Segment_1", "id": 1}]}),
        )
        .unwrap();
        assert_eq!(p.roi, None);
        assert_eq!(p.scribble_values(104), (105, 106));
    }

    #[test]
    fn bad_requests() {
        for (m, v) in [
            (Method::Model, json!({})),
            (Method::Model, json!({"selected_label_name": "kidney"})),
            (
                Method::Model,
                json!({"selected_label_name": "Segment_1",
                "label_info": [{"name": "Segment_1", "id": 1}]}),
            ),
            (
                Method::Histogram,
                json!({"selected_label_name": "foreground_scribbles",
                "label_info": [{"name": "foreground_scribbles", "id": 3}]}),
            ),
            (
                Method::Model,
                json!({"selected_label_name": "liver", "roi": [1, 2, 3]}),
            ),
            (
                Method::Model,
                json!({"selected_label_name": "liver", "roi": "x"}),
            ),
            (
                Method::Model,
                json!({"selected_label_name": "liver", "sigma": 0}),
            ),
            (
                Method::Model,
                json!({"selected_label_name": "liver", "num_bins": 1.5}),
            ),
            (
                Method::Model,
                json!({"selected_label_name": "liver", "histogram_weight": 1.5}),
            ),
            (
                Method::Model,
                json!({"selected_label_name": "liver", "label_info": [{"name": "x"}]}),
            ),
        ] {
            let e = run(m, v.clone()).unwrap_err();
            assert!(matches!(e, AppError::InvalidParams(_)), "{v}: {e}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            Method::from_name("Histogram%2BGraphCut"),
            Some(Method::Histogram)
        );
        assert_eq!(Method::from_name("model+graphcut"), Some(Method::Model));
        assert_eq!(Method::from_name("wholeBody_ct_segmentation"), None);
    }
}
