//! A MONAI bundle folder: `configs/metadata.json` (labels), `configs/inference.json`
//! (network_def, inferer values), `models/model.pt` (1.5 mm) and `models/model_lowres.pt`
//! (3.0 mm).

use crate::error::{ModelsError, Result};
use crate::network::SegResNetConfig;
use std::path::{Path, PathBuf};

/// One resolution variant of the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// 1.5 mm isotropic, `models/model.pt` (`highres: true`, the bundle's default).
    High,
    /// 3.0 mm isotropic, `models/model_lowres.pt` (`highres: false`).
    Low,
}

impl Resolution {
    /// From the bundle's `highres` flag.
    pub fn from_highres(highres: bool) -> Self {
        if highres {
            Resolution::High
        } else {
            Resolution::Low
        }
    }

    /// Target spacing in mm.
    pub fn pixdim(self) -> [f64; 3] {
        match self {
            Resolution::High => [1.5; 3],
            Resolution::Low => [3.0; 3],
        }
    }

    /// File name of the weights inside `models/`.
    pub fn model_file(self) -> &'static str {
        match self {
            Resolution::High => "model.pt",
            Resolution::Low => "model_lowres.pt",
        }
    }

    /// `true` for [`Resolution::High`].
    pub fn is_high(self) -> bool {
        self == Resolution::High
    }
}

/// What the engine needs from a bundle folder.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle folder.
    pub root: PathBuf,
    /// Network constructor arguments.
    pub network: SegResNetConfig,
    /// Output channel index -> structure name (index 0 is `background`).
    pub labels: Vec<String>,
    /// `displayable_configs.highres` default.
    pub default_highres: bool,
    /// Default sliding-window overlap.
    pub sw_overlap: f64,
    /// Default windows per network call.
    pub sw_batch_size: usize,
    /// Bundle version from metadata.json.
    pub version: String,
    /// Bundle description from metadata.json.
    pub description: String,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelsError::Bundle(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| ModelsError::Bundle(format!("{}: {e}", path.display())))
}

impl Bundle {
    /// Reads the bundle's configs (weights are loaded separately, on demand).
    pub fn open(root: &Path) -> Result<Self> {
        let inference = read_json(&root.join("configs/inference.json"))?;
        let metadata = read_json(&root.join("configs/metadata.json"))?;
        let def = inference.get("network_def").ok_or_else(|| {
            ModelsError::Bundle("configs/inference.json has no network_def".into())
        })?;
        let network = SegResNetConfig::from_network_def(def).map_err(ModelsError::Bundle)?;
        let channel_def = metadata
            .pointer("/network_data_format/outputs/pred/channel_def")
            .and_then(|v| v.as_object())
            .ok_or_else(|| {
                ModelsError::Bundle("metadata.json lacks outputs.pred.channel_def".into())
            })?;
        let mut labels = vec![String::new(); network.out_channels as usize];
        for (k, v) in channel_def {
            let idx: usize = k
                .parse()
                .map_err(|_| ModelsError::Bundle(format!("channel_def key {k}")))?;
            let name = v
                .as_str()
                .ok_or_else(|| ModelsError::Bundle(format!("channel_def[{k}]")))?;
            if idx >= labels.len() {
                return Err(ModelsError::Bundle(format!(
                    "channel_def index {idx} >= out_channels"
                )));
            }
            labels[idx] = name.to_lowercase();
        }
        if let Some(i) = labels.iter().position(|l| l.is_empty()) {
            return Err(ModelsError::Bundle(format!(
                "channel_def has no name for channel {i}"
            )));
        }
        let disp = inference.get("displayable_configs");
        let get = |k: &str| disp.and_then(|d| d.get(k));
        Ok(Self {
            root: root.to_path_buf(),
            network,
            labels,
            default_highres: get("highres").and_then(|v| v.as_bool()).unwrap_or(true),
            sw_overlap: get("sw_overlap").and_then(|v| v.as_f64()).unwrap_or(0.25),
            sw_batch_size: get("sw_batch_size").and_then(|v| v.as_u64()).unwrap_or(1) as usize,
            version: metadata
                .get("version")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string(),
            description: metadata
                .get("description")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string(),
        })
    }

    /// Path of the weights of a resolution (it may not exist).
    pub fn weights_path(&self, res: Resolution) -> PathBuf {
        let dir = self.root.join("models");
        let pt = dir.join(res.model_file());
        if pt.exists() {
            return pt;
        }
        let st = pt.with_extension("safetensors");
        if st.exists() {
            st
        } else {
            pt
        }
    }

    /// Whether the weights of a resolution are present.
    pub fn has_weights(&self, res: Resolution) -> bool {
        self.weights_path(res).exists()
    }
}
