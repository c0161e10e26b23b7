//! Epistemic uncertainty of datastore images by Monte Carlo dropout (docs/protocol.md §11.3): the engine runs
//! every sliding window several times with the network's Dropout3d active
//! ([`ferrolabel_models::pipeline::mc_dropout_entropy`]); the mean voxel entropy of the
//! averaged softmax is stored in the image info as `epistemic_entropy` (with `epistemic_ts` and
//! `epistemic_samples`), where the `epistemic` strategy and scoring method read it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferrolabel_datastore::Datastore;
use ferrolabel_models::engine::UncertaintyRequest;
use ferrolabel_models::pipeline::McDropout;
use ferrolabel_models::{Priority, Resolution};
use serde_json::{json, Map, Value};

use crate::error::{AppError, Result};
use crate::infer::param_bool;
use crate::WholeBodyApp;

/// Monte Carlo dropout options, read from request params:
///
/// | param | meaning | default |
/// |---|---|---|
/// | `samples` | forward passes per window, 1..=64 | 5 |
/// | `highres` | which weights (`true`: model.pt, 1.5 mm) | `false` (model_lowres.pt, 3 mm) |
/// | `spacing` | resample to this isotropic spacing (mm, 0.5..=50) instead of the weights' | the weights' |
/// | `sw_overlap` | window overlap, 0 <= x < 1 | 0 |
/// | `sw_roi` | window edge in voxels, a multiple of 8 in 16..=96 (smaller is faster on small grids) | 96 |
/// | `seed` | seed of the dropout masks (deterministic scores) | none |
#[derive(Debug, Clone, PartialEq)]
pub struct EpistemicOptions {
    /// Which weights.
    pub resolution: Resolution,
    /// Samples, spacing, overlap, seed.
    pub mc: McDropout,
}

fn num(params: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|x: &f64| x.is_finite())
            .map(Some)
            .ok_or_else(|| AppError::InvalidParams(format!("invalid value {v} for param {key:?}"))),
    }
}

fn in_range(key: &str, x: f64, lo: f64, hi: f64) -> Result<f64> {
    if (lo..=hi).contains(&x) {
        Ok(x)
    } else {
        Err(AppError::InvalidParams(format!(
            "param {key:?} must be between {lo} and {hi}, not {x}"
        )))
    }
}

impl EpistemicOptions {
    /// Reads the options (422 for bad values).
    pub fn from_params(params: &Map<String, Value>) -> Result<EpistemicOptions> {
        let resolution = Resolution::from_highres(param_bool(params, "highres")?.unwrap_or(false));
        let samples = match num(params, "samples")? {
            None => 5,
            Some(x) if x.fract() == 0.0 => in_range("samples", x, 1.0, 64.0)? as usize,
            Some(x) => {
                return Err(AppError::InvalidParams(format!(
                    "param \"samples\" must be an integer, not {x}"
                )))
            }
        };
        let pixdim = match num(params, "spacing")? {
            None => resolution.pixdim(),
            Some(x) => [in_range("spacing", x, 0.5, 50.0)?; 3],
        };
        let overlap = match num(params, "sw_overlap")? {
            None => 0.0,
            Some(x) if (0.0..1.0).contains(&x) => x,
            Some(x) => {
                return Err(AppError::InvalidParams(format!(
                    "param \"sw_overlap\" must be >= 0 and < 1, not {x}"
                )))
            }
        };
        let roi = match num(params, "sw_roi")? {
            None => 96,
            Some(x) if x.fract() == 0.0 && (x as i64) % 8 == 0 => {
                in_range("sw_roi", x, 16.0, 96.0)? as i64
            }
            Some(x) => {
                return Err(AppError::InvalidParams(format!(
                    "param \"sw_roi\" must be a multiple of 8, not {x}"
                )))
            }
        };
        let seed = match num(params, "seed")? {
            None => None,
            Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Some(x as i64),
            Some(x) => {
                return Err(AppError::InvalidParams(format!(
                    "param \"seed\" must be an integer, not {x}"
                )))
            }
        };
        Ok(EpistemicOptions {
            resolution,
            mc: McDropout {
                samples,
                pixdim,
                overlap,
                roi,
                seed,
            },
        })
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs Monte Carlo dropout on one datastore image and stores `epistemic_entropy`,
/// `epistemic_ts` and `epistemic_samples` in its info; returns the entropy.
pub async fn score_epistemic(
    app: &WholeBodyApp,
    ds: &Datastore,
    id: &str,
    opts: &EpistemicOptions,
    priority: Priority,
    cancel: Arc<AtomicBool>,
) -> Result<(f64, i64)> {
    app.check_weights(opts.resolution)?;
    let path = ds.image_path(id).await?;
    let volume = app.load_image(path).await?;
    let u = app
        .engine()
        .uncertainty(UncertaintyRequest {
            volume,
            resolution: opts.resolution,
            mc: opts.mc.clone(),
            priority,
            cancel,
        })
        .await?;
    let ts = now_secs();
    let mut patch = Map::new();
    patch.insert("epistemic_entropy".into(), json!(u.entropy));
    patch.insert("epistemic_ts".into(), ts.into());
    patch.insert("epistemic_samples".into(), u.samples.into());
    ds.update_image_info(id, patch, None).await?;
    tracing::info!(image = %id, entropy = u.entropy, secs = u.seconds, "epistemic score");
    Ok((u.entropy, ts))
}

/// Whether an image's stored score is newer than the weights it would be computed with.
pub fn epistemic_is_current(
    app: &WholeBodyApp,
    info: &Map<String, Value>,
    res: Resolution,
) -> bool {
    let Some(ts) = info.get("epistemic_ts").and_then(Value::as_i64) else {
        return false;
    };
    if crate::strategy::epistemic_score(info).is_none() {
        return false;
    }
    let weights = app
        .engine()
        .weights_mtime(res)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(i64::MAX);
    ts >= weights
}

/// Sets the flag when dropped (the request that waits for the scores went away).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Scores, for the `epistemic` strategy, the images among `ids` whose score is missing or
/// older than the weights (background priority, so interactive infers go first). Returns how
/// many were scored.
pub async fn ensure_epistemic(
    app: &WholeBodyApp,
    ds: &Datastore,
    ids: &[String],
    opts: &EpistemicOptions,
) -> Result<usize> {
    let cancel = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancel.clone());
    let mut scored = 0;
    for id in ids {
        let info = ds.image_info(id).await?.unwrap_or_default();
        if epistemic_is_current(app, &info, opts.resolution) {
            continue;
        }
        score_epistemic(app, ds, id, opts, Priority::Background, cancel.clone()).await?;
        scored += 1;
    }
    Ok(scored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epistemic_options() {
        let p = |v: Value| v.as_object().unwrap().clone();
        let o = EpistemicOptions::from_params(&p(json!({}))).unwrap();
        assert_eq!(o.resolution, Resolution::Low);
        assert_eq!(o.mc.samples, 5);
        assert_eq!(o.mc.pixdim, [3.0; 3]);
        assert_eq!(o.mc.seed, None);
        let o = EpistemicOptions::from_params(&p(
            json!({"samples": "3", "spacing": 8, "seed": 7, "highres": true, "sw_overlap": 0.5}),
        ))
        .unwrap();
        assert_eq!(o.resolution, Resolution::High);
        assert_eq!(
            (o.mc.samples, o.mc.pixdim, o.mc.seed),
            (3, [8.0; 3], Some(7))
        );
        for bad in [
            json!({"samples": 0}),
            json!({"samples": 2.5}),
            json!({"spacing": 0.1}),
            json!({"sw_overlap": 1}),
            json!({"seed": "x"}),
            json!({"sw_roi": 20}),
            json!({"sw_roi": 128}),
        ] {
            let e = EpistemicOptions::from_params(&p(bad.clone())).unwrap_err();
            assert!(matches!(e, AppError::InvalidParams(_)), "{bad}: {e}");
        }
    }
}
