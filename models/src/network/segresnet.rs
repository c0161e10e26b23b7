//! MONAI's `SegResNet` (3-D, pre-activation residual encoder/decoder) in tch.
//!
//! Every parameter lives at the variable-store path that equals MONAI's `state_dict` key
//! (`convInit.conv.weight`, `down_layers.1.2.norm1.weight`, `conv_final.2.conv.bias`, ...),
//! so real MONAI checkpoints load by name. Semantics follow `docs/bundle.md` §2.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// The constructor arguments of MONAI's SegResNet that the bundle's `network_def` sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegResNetConfig {
    /// Input channels (1 for CT).
    pub in_channels: i64,
    /// Output channels (105 for the whole-body bundle: background + 104 structures).
    pub out_channels: i64,
    /// Filters of the first level; doubled at every level down.
    pub init_filters: i64,
    /// Residual blocks per encoder level.
    pub blocks_down: Vec<i64>,
    /// Residual blocks per decoder level.
    pub blocks_up: Vec<i64>,
    /// Channel dropout (Dropout3d) after `convInit`, active in training only.
    pub dropout_prob: Option<f64>,
    /// GroupNorm groups (MONAI default 8).
    pub norm_groups: i64,
}

impl Default for SegResNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            out_channels: 105,
            init_filters: 32,
            blocks_down: vec![1, 2, 2, 4],
            blocks_up: vec![1, 1, 1],
            dropout_prob: Some(0.2),
            norm_groups: 8,
        }
    }
}

impl SegResNetConfig {
    /// Reads the `network_def` object of a MONAI bundle config (`configs/inference.json`).
    ///
    /// Only the arguments MONAI's SegResNet defaults would otherwise fill are read; an
    /// argument this port does not implement (another norm, act, upsample mode) is an error.
    pub fn from_network_def(def: &serde_json::Value) -> Result<Self, String> {
        let obj = def.as_object().ok_or("network_def is not an object")?;
        if let Some(target) = obj.get("_target_").and_then(|v| v.as_str()) {
            if !target.ends_with("SegResNet") {
                return Err(format!(
                    "network_def._target_ is {target}, only SegResNet is supported"
                ));
            }
        }
        let int = |k: &str, d: i64| -> Result<i64, String> {
            match obj.get(k) {
                None => Ok(d),
                Some(v) => v
                    .as_i64()
                    .ok_or(format!("network_def.{k} is not an integer")),
            }
        };
        let list = |k: &str, d: &[i64]| -> Result<Vec<i64>, String> {
            match obj.get(k) {
                None => Ok(d.to_vec()),
                Some(v) => v
                    .as_array()
                    .ok_or(format!("network_def.{k} is not a list"))?
                    .iter()
                    .map(|x| {
                        x.as_i64()
                            .ok_or(format!("network_def.{k} holds a non-integer"))
                    })
                    .collect(),
            }
        };
        if int("spatial_dims", 3)? != 3 {
            return Err("only spatial_dims = 3 is supported".into());
        }
        for unsupported in [
            "norm",
            "act",
            "upsample_mode",
            "use_conv_final",
            "norm_name",
            "num_groups",
        ] {
            if obj.contains_key(unsupported) {
                return Err(format!(
                    "network_def.{unsupported} is not supported (MONAI defaults only)"
                ));
            }
        }
        let cfg = Self {
            in_channels: int("in_channels", 1)?,
            out_channels: int("out_channels", 2)?,
            init_filters: int("init_filters", 8)?,
            blocks_down: list("blocks_down", &[1, 2, 2, 4])?,
            blocks_up: list("blocks_up", &[1, 1, 1])?,
            dropout_prob: obj.get("dropout_prob").and_then(|v| v.as_f64()),
            norm_groups: 8,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the shape constraints the architecture relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.blocks_down.is_empty() || self.blocks_up.len() + 1 != self.blocks_down.len() {
            return Err("blocks_up must have one entry fewer than blocks_down".into());
        }
        if self.in_channels < 1 || self.out_channels < 1 || self.init_filters < self.norm_groups {
            return Err("channel counts must be positive and init_filters >= 8".into());
        }
        if self.init_filters % self.norm_groups != 0 {
            return Err("init_filters must be a multiple of 8 (GroupNorm groups)".into());
        }
        if self
            .blocks_down
            .iter()
            .chain(&self.blocks_up)
            .any(|&b| b < 1)
        {
            return Err("every level needs at least one block".into());
        }
        if let Some(p) = self.dropout_prob {
            if !(0.0..1.0).contains(&p) {
                return Err("dropout_prob must be in [0, 1)".into());
            }
        }
        Ok(())
    }

    /// The spatial divisor the network needs (2^(levels-1)).
    pub fn divisor(&self) -> i64 {
        1 << (self.blocks_down.len() - 1)
    }
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, bias: bool) -> Conv {
    let ws = p.var(
        "weight",
        &[cout, cin, k, k, k],
        nn::init::DEFAULT_KAIMING_UNIFORM,
    );
    let bs = if bias {
        Some(p.var("bias", &[cout], nn::Init::Const(0.0)))
    } else {
        None
    };
    Conv {
        ws,
        bs,
        stride,
        padding: (k - 1) / 2,
    }
}

#[derive(Debug)]
struct Conv {
    ws: Tensor,
    bs: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv3d(
            &self.ws,
            self.bs.as_ref(),
            [self.stride; 3],
            [self.padding; 3],
            [1, 1, 1],
            1,
        )
    }
}

#[derive(Debug)]
struct GroupNorm {
    ws: Tensor,
    bs: Tensor,
    groups: i64,
}

impl GroupNorm {
    fn new(p: nn::Path, channels: i64, groups: i64) -> Self {
        Self {
            ws: p.var("weight", &[channels], nn::Init::Const(1.0)),
            bs: p.var("bias", &[channels], nn::Init::Const(0.0)),
            groups,
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(self.groups, Some(&self.ws), Some(&self.bs), 1e-5, true)
    }
}

/// Pre-activation residual block: `conv2(relu(gn2(conv1(relu(gn1(x)))))) + x`.
#[derive(Debug)]
struct ResBlock {
    norm1: GroupNorm,
    norm2: GroupNorm,
    conv1: Conv,
    conv2: Conv,
}

impl ResBlock {
    fn new(p: &nn::Path, c: i64, groups: i64) -> Self {
        Self {
            norm1: GroupNorm::new(p / "norm1", c, groups),
            norm2: GroupNorm::new(p / "norm2", c, groups),
            conv1: conv(p / "conv1" / "conv", c, c, 3, 1, false),
            conv2: conv(p / "conv2" / "conv", c, c, 3, 1, false),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        // in-place ReLU and residual add on fresh tensors, as MONAI (inplace=True, `x += identity`)
        let y = self.conv1.forward(&self.norm1.forward(x).relu_());
        let mut y = self.conv2.forward(&self.norm2.forward(&y).relu_());
        let _ = y.g_add_(x);
        y
    }
}

#[derive(Debug)]
struct DownLayer {
    /// `down_layers.i.0`: a stride-2 conv, or MONAI's Identity at level 0.
    down: Option<Conv>,
    blocks: Vec<ResBlock>,
}

#[derive(Debug)]
struct UpLayer {
    /// `up_samples.i.0`: 1x1 conv halving the channels (before the trilinear x2).
    reduce: Conv,
    blocks: Vec<ResBlock>,
}

/// The SegResNet network. Build it on a [`nn::VarStore`], then load weights into that store.
#[derive(Debug)]
pub struct SegResNet {
    config: SegResNetConfig,
    conv_init: Conv,
    down: Vec<DownLayer>,
    up: Vec<UpLayer>,
    final_norm: GroupNorm,
    final_conv: Conv,
}

impl SegResNet {
    /// Creates the variables under `root` (normally `vs.root()`) with MONAI's key names.
    pub fn new(root: &nn::Path, config: &SegResNetConfig) -> Self {
        let g = config.norm_groups;
        let f = config.init_filters;
        let conv_init = conv(
            root / "convInit" / "conv",
            config.in_channels,
            f,
            3,
            1,
            false,
        );
        let down = config
            .blocks_down
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let p = root / "down_layers" / i;
                let c = f << i;
                let down = (i > 0).then(|| conv(&p / 0 / "conv", c / 2, c, 3, 2, false));
                let blocks = (1..=n).map(|b| ResBlock::new(&(&p / b), c, g)).collect();
                DownLayer { down, blocks }
            })
            .collect();
        let levels = config.blocks_down.len();
        let up = config
            .blocks_up
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let c = f << (levels - 1 - i);
                let reduce = conv(root / "up_samples" / i / 0 / "conv", c, c / 2, 1, 1, false);
                let p = root / "up_layers" / i;
                let blocks = (0..n).map(|b| ResBlock::new(&(&p / b), c / 2, g)).collect();
                UpLayer { reduce, blocks }
            })
            .collect();
        let final_norm = GroupNorm::new(root / "conv_final" / 0, f, g);
        let final_conv = conv(
            root / "conv_final" / 2 / "conv",
            f,
            config.out_channels,
            1,
            1,
            true,
        );
        Self {
            config: config.clone(),
            conv_init,
            down,
            up,
            final_norm,
            final_conv,
        }
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &SegResNetConfig {
        &self.config
    }

    /// Forward pass on `(N, C, D, H, W)` float input whose spatial sizes are divisible by
    /// [`SegResNetConfig::divisor`]. `train` enables Dropout3d after `convInit`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = self.conv_init.forward(x);
        if let Some(p) = self.config.dropout_prob {
            if train && p > 0.0 {
                x = x.feature_dropout(p, true);
            }
        }
        let mut skips = Vec::with_capacity(self.down.len());
        for layer in &self.down {
            if let Some(d) = &layer.down {
                x = d.forward(&x);
            }
            for b in &layer.blocks {
                x = b.forward(&x);
            }
            skips.push(x.shallow_clone());
        }
        skips.pop();
        for layer in &self.up {
            let y = layer.reduce.forward(&x);
            let size = y.size();
            let out: Vec<i64> = size[2..].iter().map(|s| s * 2).collect();
            let mut y = y.upsample_trilinear3d(&out, false, Some(2.0), Some(2.0), Some(2.0));
            let _ = y.g_add_(&skips.pop().expect("one skip per decoder level"));
            x = y;
            for b in &layer.blocks {
                x = b.forward(&x);
            }
        }
        // free the decoder output before the widest tensor (C x 96^3 logits) is allocated
        let h = self.final_norm.forward(&x).relu_();
        drop(x);
        self.final_conv.forward(&h)
    }

    /// Number of parameters (18,799,401 for the bundle's network).
    pub fn num_parameters(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    /// Output dtype of the logits (always float32 outside autocast).
    pub fn output_kind() -> Kind {
        Kind::Float
    }
}
