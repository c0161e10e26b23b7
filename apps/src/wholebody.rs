//! [`WholeBodyApp`]: MONAI's `wholeBody_ct_segmentation` bundle (SegResNet, 104 structures plus
//! background) served as one segmentation model.
//!
//! The bundle folder defaults to `<app dir>/model/wholeBody_ct_segmentation` and can be moved with
//! `--conf bundle_dir PATH`. Missing weights never stop the app: `/info/` still lists the model,
//! with `weights_available: false` and a hint in its description, and infer requests fail with
//! [`AppError::WeightsMissing`] (503) until the file is installed. The engine checks the weights
//! file before every job, so installing it needs no restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use ferrolabel_datastore::blocking;
use ferrolabel_imaging::{read_volume, Grid, Limits, Volume};
use ferrolabel_models::engine::EngineStatus;
use ferrolabel_models::pipeline::StageTimes;
use ferrolabel_models::{Bundle, Engine, EngineOptions, InferRequest, Priority, Resolution};
use serde_json::{json, Map, Value};

use crate::error::{AppError, Result};
use crate::infer::{self, InferOutput, InferPlan};
use crate::report;
use crate::scoring::ScoringMethod;
use crate::strategy::Strategy;

/// The name of the model and of its trainer.
pub const MODEL_NAME: &str = "wholeBody_ct_segmentation";

/// Where the bundle lives inside the app folder unless `--conf bundle_dir` says otherwise.
pub const DEFAULT_BUNDLE_DIR: &str = "model/wholeBody_ct_segmentation";

/// How to build a [`WholeBodyApp`].
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// The app folder (`--app`).
    pub app_dir: PathBuf,
    /// `--conf KEY VALUE` pairs. Known keys: `bundle_dir`, `skip_strategies`,
    /// `model_versions_keep` (the server also reads `preload`).
    pub conf: BTreeMap<String, String>,
    /// Engine settings (device, threads, queue size).
    pub engine: EngineOptions,
    /// Display names of the device(s), as `/info/` lists them in `config.device`
    /// (`["cpu"]`, or GPU names).
    pub device_names: Vec<String>,
    /// Limits applied when reading input images.
    pub limits: Limits,
    /// Whether active-learning strategies are offered (`MONAI_LABEL_TASKS_STRATEGY`).
    pub strategies_enabled: bool,
    /// The server version shown in the app name.
    pub server_version: String,
}

/// The whole-body CT segmentation app.
#[derive(Debug)]
pub struct WholeBodyApp {
    name: String,
    version: String,
    bundle_dir: PathBuf,
    bundle: Bundle,
    /// `(name, index)` for 1..=N, by index.
    labels: Vec<(String, i64)>,
    engine: Engine,
    device_names: Vec<String>,
    limits: Limits,
    strategies: Vec<Strategy>,
    trainer: crate::train::Trainer,
    /// Class probabilities of the scribbles models (`crate::scribbles`).
    pub(crate) scribbles_cache: crate::scribbles::ProbabilityCache,
    /// Model versions whose files retention keeps (`--conf model_versions_keep`, 0: all).
    versions_keep: usize,
}

fn conf_flag(conf: &BTreeMap<String, String>, key: &str) -> bool {
    conf.get(key)
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

impl WholeBodyApp {
    /// Opens the bundle's configs and starts the engine thread (weights load on first use).
    pub fn open(opts: AppOptions) -> Result<WholeBodyApp> {
        let bundle_dir = match opts.conf.get("bundle_dir") {
            Some(p) => PathBuf::from(p),
            None => opts.app_dir.join(DEFAULT_BUNDLE_DIR),
        };
        let bundle = Bundle::open(&bundle_dir).map_err(|e| AppError::Bundle {
            path: bundle_dir.clone(),
            message: e.to_string(),
        })?;
        if bundle.labels.len() > 256 {
            return Err(AppError::Bundle {
                path: bundle_dir,
                message: format!(
                    "{} classes do not fit in a uint8 label map",
                    bundle.labels.len()
                ),
            });
        }
        let labels = bundle
            .labels
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, n)| (n.clone(), i as i64))
            .collect();
        let engine = Engine::start(bundle.clone(), opts.engine.clone())?;
        let trainer = crate::train::Trainer::new(
            bundle.clone(),
            if opts.device_names.is_empty() {
                vec!["cpu".to_string()]
            } else {
                opts.device_names.clone()
            },
            ferrolabel_models::device::device_string(opts.engine.device),
            opts.engine.threads,
        );
        trainer.configure_torchrun(&opts.conf, &opts.app_dir);
        let strategies = if opts.strategies_enabled && !conf_flag(&opts.conf, "skip_strategies") {
            Strategy::ALL.to_vec()
        } else {
            Vec::new()
        };
        let device_names = if opts.device_names.is_empty() {
            vec!["cpu".to_string()]
        } else {
            opts.device_names
        };
        let versions_keep = match opts.conf.get("model_versions_keep") {
            None => crate::versions::DEFAULT_KEEP,
            Some(v) => v.trim().parse().map_err(|_| {
                AppError::InvalidParams(format!(
                    "--conf model_versions_keep {v:?}: not a whole number (0 keeps every version)"
                ))
            })?,
        };
        Ok(WholeBodyApp {
            name: format!(
                "MONAILabel - {MODEL_NAME} (ferrolabel {})",
                opts.server_version
            ),
            version: opts.server_version,
            bundle_dir,
            bundle,
            labels,
            engine,
            device_names,
            limits: opts.limits,
            strategies,
            trainer,
            scribbles_cache: Default::default(),
            versions_keep,
        })
    }

    /// The app name shown by `/info/`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bundle folder.
    pub fn bundle_dir(&self) -> &Path {
        &self.bundle_dir
    }

    /// How many model versions' files retention keeps besides the best and the active one
    /// (`--conf model_versions_keep`; 0 keeps all; see [`crate::versions`]).
    pub fn versions_keep(&self) -> usize {
        self.versions_keep
    }

    /// The model names this app serves.
    pub fn model_names(&self) -> Vec<&'static str> {
        vec![MODEL_NAME]
    }

    /// Whether `name` is one of this app's models.
    pub fn has_model(&self, name: &str) -> bool {
        name == MODEL_NAME
    }

    /// The trainer (`/train/`).
    pub fn trainer(&self) -> &crate::train::Trainer {
        &self.trainer
    }

    /// The engine (for Monte Carlo dropout jobs and weight timestamps).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The name of a label value: the bundle's structure name, else `label_<v>`.
    pub fn label_name(&self, value: u8) -> String {
        self.labels
            .get((value as usize).wrapping_sub(1))
            .filter(|(_, i)| *i == value as i64)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("label_{value}"))
    }

    /// The engine's queue state.
    pub fn engine_status(&self) -> EngineStatus {
        self.engine.status()
    }

    /// The image-reading limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// `{name: index}` for every foreground label, by index (background excluded).
    pub fn label_map(&self) -> Map<String, Value> {
        self.labels
            .iter()
            .map(|(n, i)| (n.clone(), Value::from(*i)))
            .collect()
    }

    fn resolution_name(res: Resolution) -> &'static str {
        if res.is_high() {
            "highres"
        } else {
            "lowres"
        }
    }

    /// The 503 error if the weights of `res` are not installed.
    pub fn check_weights(&self, res: Resolution) -> Result<()> {
        if self.bundle.has_weights(res) {
            Ok(())
        } else {
            Err(AppError::WeightsMissing {
                model: MODEL_NAME.to_string(),
                resolution: Self::resolution_name(res),
                file: res.model_file(),
                path: self.bundle.weights_path(res),
            })
        }
    }

    /// The weights file of a model and resolution (which may not exist); 404 for an unknown model.
    pub fn weights_path(&self, model: &str, res: Resolution) -> Result<PathBuf> {
        if !self.has_model(model) {
            return Err(AppError::ModelNotFound(model.to_string()));
        }
        Ok(self.bundle.weights_path(res))
    }

    /// The resolution used when a request does not choose one.
    pub fn default_resolution(&self) -> Resolution {
        Resolution::from_highres(self.bundle.default_highres)
    }

    /// The model's entry in `/info/` `models` (MONAI Label's InferInfo plus `weights_available`).
    pub fn model_info(&self) -> Value {
        let default = self.bundle.default_highres;
        let res = self.default_resolution();
        let available = self.bundle.has_weights(res);
        let mut description = self.bundle.description.clone();
        if !available {
            if let Err(e) = self.check_weights(res) {
                description.push_str(&format!(" [not usable yet: {e}]"));
            }
        }
        json!({
            "type": "segmentation",
            "labels": self.label_map(),
            "dimension": 3,
            "description": description,
            "version": self.bundle.version,
            "config": {
                "highres": [default, !default],
                "sw_overlap": self.bundle.sw_overlap,
                "sw_batch_size": self.bundle.sw_batch_size,
                "device": self.device_names,
            },
            "weights_available": available,
        })
    }

    /// The whole `/info/` document; `datastore` is the datastore's status JSON.
    ///
    /// It never has a top-level `config` key (Slicer refuses servers that send one) and no
    /// config list is empty (Slicer's options panel crashes on those).
    pub fn info(&self, datastore: Value) -> Value {
        let strategies: Map<String, Value> = self
            .strategies
            .iter()
            .map(|s| {
                (
                    s.name().to_string(),
                    json!({"description": s.description()}),
                )
            })
            .collect();
        let mut models = Map::new();
        models.insert(MODEL_NAME.into(), self.model_info());
        let devices = json!(self.device_names);
        models.extend(crate::scribbles::models_info(
            &self.label_map(),
            &devices,
            self.default_resolution().is_high(),
        ));
        json!({
            "name": self.name,
            "description": format!(
                "Whole-body CT segmentation of {} structures (MONAI bundle {MODEL_NAME} {}) served by ferrolabel",
                self.labels.len(),
                self.bundle.version
            ),
            "version": self.version,
            "labels": self.labels.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            "models": models,
            "trainers": {MODEL_NAME: self.trainer.info()},
            "strategies": strategies,
            "scoring": ScoringMethod::ALL
                .iter()
                .map(|m| (m.name().to_string(), json!({"description": m.description()})))
                .collect::<Map<String, Value>>(),
            "train_stats": {MODEL_NAME: self.trainer.stats()},
            "datastore": datastore,
        })
    }

    /// Looks up an active-learning strategy (404 if unknown or disabled).
    pub fn strategy(&self, name: &str) -> Result<Strategy> {
        Strategy::from_name(name)
            .filter(|s| self.strategies.contains(s))
            .ok_or_else(|| AppError::StrategyNotFound(name.to_string()))
    }

    /// Validates an infer request: 404 for an unknown model, 422 for bad params, 503 when the
    /// requested weights are missing. Cheap; call it before touching the image.
    pub fn plan_infer(&self, model: &str, params: &Map<String, Value>) -> Result<InferPlan> {
        if !self.has_model(model) {
            return Err(AppError::ModelNotFound(model.to_string()));
        }
        let plan = infer::plan(
            model,
            params,
            self.bundle.default_highres,
            &self.device_names,
        )?;
        self.check_weights(plan.resolution)?;
        Ok(plan)
    }

    /// Reads an image file on the blocking pool; unreadable, unsupported, singular or
    /// non-finite images are [`AppError::BadImage`] (see [`crate::validate::read_image`]).
    pub async fn load_image(&self, path: PathBuf) -> Result<Arc<Volume>> {
        let limits = self.limits;
        blocking(move || crate::validate::read_image(&path, &limits).map(Arc::new)).await
    }

    /// Checks on the blocking pool that the label file at `label` may be stored for the image
    /// at `image` ([`AppError::BadLabel`] otherwise; see [`crate::validate::check_label`]).
    pub async fn check_label(&self, image: PathBuf, label: PathBuf) -> Result<()> {
        let limits = self.limits;
        blocking(move || crate::validate::check_label(&image, &label, &limits)).await
    }

    /// Runs a planned infer task on `image`: read (blocking pool), segment (engine thread),
    /// encode (blocking pool). Setting `cancel` stops the job between two windows.
    pub async fn run_infer(
        &self,
        plan: &InferPlan,
        image: &Path,
        cancel: Arc<AtomicBool>,
    ) -> Result<InferOutput> {
        self.run_infer_as(plan, image, cancel, Priority::Interactive)
            .await
    }

    /// [`WholeBodyApp::run_infer`] at a queue priority: batch work runs as
    /// [`Priority::Background`], so interactive requests go between two of its windows.
    /// The params carry the quantitative report ([`report`]) unless `report: false`.
    pub async fn run_infer_as(
        &self,
        plan: &InferPlan,
        image: &Path,
        cancel: Arc<AtomicBool>,
        priority: Priority,
    ) -> Result<InferOutput> {
        let t0 = Instant::now();
        let volume = self.load_image(image.to_path_buf()).await?;
        let t_load = t0.elapsed().as_secs_f64();
        let req = InferRequest {
            volume: volume.clone(),
            resolution: plan.resolution,
            sw_overlap: plan.sw_overlap,
            sw_batch_size: plan.sw_batch_size,
            precision: plan.precision,
            priority,
            cancel,
        };
        let seg = self.engine.infer(req).await.map_err(|e| match e {
            ferrolabel_models::ModelsError::WeightsMissing(_) => self
                .check_weights(plan.resolution)
                .err()
                .unwrap_or(AppError::Engine(e)),
            other => other.into(),
        })?;
        let ext = infer::result_ext(plan, image);
        let t_write = Instant::now();
        let labels = seg.labels;
        let want_report = plan.report;
        let (bytes, stats, report_secs) = blocking(move || -> Result<_> {
            let t = Instant::now();
            let stats = if want_report {
                Some(report::compute(&labels, &volume)?)
            } else {
                None
            };
            let report_secs = t.elapsed().as_secs_f64();
            Ok((infer::encode(&labels, &volume, ext)?, stats, report_secs))
        })
        .await?;
        let write = t_write.elapsed().as_secs_f64() - report_secs;
        let mut params = Map::new();
        params.insert("label_names".into(), Value::Object(self.label_map()));
        let total = t0.elapsed().as_secs_f64();
        params.insert(
            "latencies".into(),
            latencies(t_load, &seg.times, write, report_secs, total),
        );
        params.insert("centroids".into(), json!({}));
        params.insert("highres".into(), plan.resolution.is_high().into());
        params.insert("windows".into(), seg.windows.into());
        params.insert("network_shape".into(), json!(seg.network_shape));
        // the engine's record: background windows run while this job waited (JobRecord)
        params.insert("engine".into(), json!(seg.engine));
        if let Some(stats) = stats {
            params.insert("report".into(), stats.to_json(|v| self.label_name(v)));
        }
        Ok(InferOutput { bytes, ext, params })
    }

    /// The quantitative report of a stored label file over its image (both on the same grid),
    /// read and computed on the blocking pool.
    pub async fn label_report(&self, image: PathBuf, label: PathBuf) -> Result<Value> {
        let limits = self.limits;
        let image_vol = self.load_image(image).await?;
        let (stats, secs) = blocking(move || -> Result<_> {
            let lab = read_volume(&label, &limits)
                .map_err(|e| AppError::BadLabel(format!("cannot read label: {e}")))?;
            crate::validate::same_grid(&Grid::of(&image_vol), &Grid::of(&lab))?;
            let bytes = report::label_bytes(&lab)?;
            drop(lab);
            let t = Instant::now();
            let stats = report::compute(&bytes, &image_vol)?;
            Ok((stats, t.elapsed().as_secs_f64()))
        })
        .await?;
        let mut out = stats.to_json(|v| self.label_name(v));
        if let Some(m) = out.as_object_mut() {
            m.insert("seconds".into(), json!(secs));
        }
        Ok(out)
    }

    /// Loads the default resolution's weights on the engine thread, so that the first request
    /// does not pay for it; [`AppError::WeightsMissing`] if they are not installed.
    pub async fn preload(&self) -> Result<()> {
        let res = self.default_resolution();
        self.check_weights(res)?;
        self.engine.preload(res).await.map_err(AppError::from)
    }

    /// Checks on the blocking pool that a weights file loads strictly into this app's network
    /// (right keys and shapes); anything else is [`AppError::BadWeights`].
    pub async fn validate_weights(&self, path: PathBuf) -> Result<()> {
        let config = self.bundle.network.clone();
        blocking(move || {
            ferrolabel_models::network::weights::validate_file(&config, &path)
                .map_err(|e| AppError::BadWeights(e.to_string()))
        })
        .await
    }
}

/// The `latencies` of an infer answer, in MONAI Label's stages (seconds, 2 decimals, except
/// `report`): `pre` (reading the file, orientation, spacing, intensity), `infer` (the network
/// windows), `invert` (separate inverse pre-transforms: none, as for a bundle app upstream,
/// whose `BundleInferTask` runs none), `post` (the bundle's post-processing: softmax, argmax and
/// the inversion to the input grid, as measured by the engine), `write` (encoding the label
/// file), `report` (the quantitative report) and `total`.
fn latencies(load: f64, times: &StageTimes, write: f64, report: f64, total: f64) -> Value {
    json!({
        "pre": infer::secs(load + times.pre),
        "infer": infer::secs(times.infer),
        "invert": infer::secs(0.0),
        "post": infer::secs(times.invert),
        "write": infer::secs(write),
        "report": report,
        "total": infer::secs(total),
        "transform": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_latency_is_the_engine_post_processing_time() {
        let times = StageTimes {
            pre: 0.5,
            infer: 2.0,
            invert: 0.75,
        };
        let v = latencies(0.25, &times, 0.125, 0.001, 4.0);
        assert_eq!(v["pre"], 0.75);
        assert_eq!(v["infer"], 2.0);
        assert_eq!(v["post"], 0.75);
        assert_eq!(v["invert"], 0.0);
        assert_eq!(v["write"], 0.13);
        assert_eq!(v["report"], 0.001);
        assert_eq!(v["total"], 4.0);
    }
}
