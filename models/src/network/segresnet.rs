//! MONAI's `SegResNet` (3-D, pre-activation residual encoder/decoder) in tch.
//!
//! Every parameter lives at the variable-store path that equals MONAI's `state_dict` key
//! (`convInit.conv.weight`, `down_layers.1.2.norm1.weight`, `conv_final.2.conv.bias`, ...),
//! so real MONAI checkpoints load by name. Semantics follow `docs/bundle.md` §2.

use crate::device::Precision;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
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

/// `t` (5-D) with the same values in the channels-last-3d layout (`N, D, H, W, C` in
/// memory): tch has no memory-format argument, so permute, make contiguous, permute back.
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 4, 1])
        .contiguous()
        .permute([0, 4, 1, 2, 3])
}

/// Whether a 5-D tensor is laid out channels-last (its channel stride is 1).
pub fn is_channels_last(t: &Tensor) -> bool {
    let st = t.stride();
    t.dim() == 5 && t.size()[1] > 1 && st[1] == 1
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
    /// The inference path on channels-last input: on the CPU, a 1x1x1 convolution is one
    /// matrix product of the `[voxels, C]` view (libtorch's oneDNN 1x1 kernel is several
    /// times slower for the 105 output classes), and every other convolution calls oneDNN
    /// directly (libtorch's dispatch sends the 1-channel first convolution and the deepest
    /// level's small windows to its slow unfold-and-multiply fallback). The output is
    /// channels-last. Elsewhere (CUDA): `conv3d`.
    fn fast_forward(&self, x: &Tensor) -> Tensor {
        if x.device() != tch::Device::Cpu {
            return self.forward(x);
        }
        let k = self.ws.size();
        if k[2..] == [1, 1, 1] && self.stride == 1 && is_channels_last(x) {
            let s = x.size();
            let rows = x.permute([0, 2, 3, 4, 1]).reshape([-1, s[1]]);
            let w = self.ws.view([k[0], k[1]]).transpose(0, 1);
            let y = match &self.bs {
                Some(b) => b.addmm(&rows, &w),
                None => rows.matmul(&w),
            };
            return y
                .view([s[0], s[2], s[3], s[4], k[0]])
                .permute([0, 4, 1, 2, 3]);
        }
        x.mkldnn_convolution(
            &self.ws,
            self.bs.as_ref(),
            [self.padding; 3],
            [self.stride; 3],
            [1, 1, 1],
            1,
        )
    }
    /// A detached copy in the channels-last layout and dtype `kind` (weights and bias).
    fn inference_copy(&self, kind: Kind) -> Conv {
        Conv {
            ws: channels_last(&self.ws.detach()).to_kind(kind),
            bs: self.bs.as_ref().map(|b| b.detach().to_kind(kind)),
            stride: self.stride,
            padding: self.padding,
        }
    }
}

/// How a [`GroupNorm`] computes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum NormMode {
    /// libtorch's kernel on the tensor as it comes (training: the default layout; bf16
    /// inference: channels-last bf16 input, float32 affine parameters and statistics).
    Native,
    /// Float32 channels-last inference, exact: libtorch's channels-last float32 kernel takes
    /// its statistics differently (logits then differ from MONAI's by ~1e-3 on the bundle's
    /// network instead of ~2e-5), and a contiguous copy for its default-layout kernel costs
    /// two layout conversions per norm. So [`channels_last_group_norm`].
    ExactChannelsLast,
}

#[derive(Debug)]
struct GroupNorm {
    ws: Tensor,
    bs: Tensor,
    groups: i64,
    mode: NormMode,
}

impl GroupNorm {
    fn new(p: nn::Path, channels: i64, groups: i64) -> Self {
        Self {
            ws: p.var("weight", &[channels], nn::Init::Const(1.0)),
            bs: p.var("bias", &[channels], nn::Init::Const(0.0)),
            groups,
            mode: NormMode::Native,
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        match self.mode {
            NormMode::ExactChannelsLast if is_channels_last(x) => {
                channels_last_group_norm(x, self.groups, &self.ws, &self.bs, 1e-5)
            }
            _ => x.group_norm(self.groups, Some(&self.ws), Some(&self.bs), 1e-5, true),
        }
    }
    /// A detached copy; the affine parameters stay float32 in every precision. Float32
    /// activations (`kind`) are normalised exactly on the channels-last tensor, bfloat16
    /// ones by libtorch's kernel.
    fn inference_copy(&self, kind: Kind) -> GroupNorm {
        GroupNorm {
            ws: self.ws.detach(),
            bs: self.bs.detach(),
            groups: self.groups,
            mode: if kind == Kind::Float {
                NormMode::ExactChannelsLast
            } else {
                NormMode::Native
            },
        }
    }
}

/// GroupNorm of a float32 channels-last `[N, C, D, H, W]` tensor, in that layout, with the
/// statistics of libtorch's default-layout kernel to float32 rounding: per channel the sum
/// over the voxels (libtorch's cascade summation), per group the mean, then the variance
/// from a second pass over the centred values (never `E[x^2] - E[x]^2`, which cancels), and
/// the output as one fused `centred * (weight * rstd) + bias`, written over the centred
/// copy. Four passes over the tensor and no layout conversion.
pub fn channels_last_group_norm(
    x: &Tensor,
    groups: i64,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Tensor {
    let s = x.size();
    let (n, c) = (s[0], s[1]);
    let k = c / groups;
    let count = (s[2] * s[3] * s[4] * k) as f64;
    let per_group = |t: &Tensor| {
        t.sum_dim_intlist([2i64, 3, 4].as_slice(), false, Kind::Float)
            .view([n, groups, k])
            .sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)
            / count
    };
    let mean = per_group(x);
    let centred = x - mean.expand([n, groups, k], false).reshape([n, c, 1, 1, 1]);
    let var = per_group(&(&centred * &centred));
    let scale = (weight.view([1, groups, k]) * (var + eps).rsqrt()).reshape([n, c, 1, 1, 1]);
    bias.view([1, c, 1, 1, 1])
        .addcmul_out(&centred, &centred, &scale)
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
    fn forward(&self, x: &Tensor, fast: bool) -> Tensor {
        let conv = |c: &Conv, x: &Tensor| {
            if fast {
                c.fast_forward(x)
            } else {
                c.forward(x)
            }
        };
        // in-place ReLU and residual add on fresh tensors, as MONAI (inplace=True, `x += identity`)
        let y = conv(&self.conv1, &self.norm1.forward(x).relu_());
        let mut y = conv(&self.conv2, &self.norm2.forward(&y).relu_());
        let _ = y.g_add_(x);
        y
    }
    fn inference_copy(&self, kind: Kind) -> ResBlock {
        ResBlock {
            norm1: self.norm1.inference_copy(kind),
            norm2: self.norm2.inference_copy(kind),
            conv1: self.conv1.inference_copy(kind),
            conv2: self.conv2.inference_copy(kind),
        }
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

/// The layers of the network: the variable-store ones, or an inference copy of them.
#[derive(Debug)]
struct Body {
    conv_init: Conv,
    down: Vec<DownLayer>,
    up: Vec<UpLayer>,
    final_norm: GroupNorm,
    final_conv: Conv,
}

impl Body {
    /// A detached copy for inference in `precision`: every convolution's weights
    /// channels-last (the layout libtorch's oneDNN convolutions run fastest in on CPU), in
    /// bfloat16 for [`Precision::Bf16`] except the final 1x1x1 convolution, which stays
    /// float32 (cheap, and the logits keep their float32 resolution).
    fn inference_copy(&self, precision: Precision) -> Body {
        let kind = match precision {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        };
        let blocks = |b: &[ResBlock]| b.iter().map(|b| b.inference_copy(kind)).collect();
        Body {
            conv_init: self.conv_init.inference_copy(kind),
            down: self
                .down
                .iter()
                .map(|l| DownLayer {
                    down: l.down.as_ref().map(|c| c.inference_copy(kind)),
                    blocks: blocks(&l.blocks),
                })
                .collect(),
            up: self
                .up
                .iter()
                .map(|l| UpLayer {
                    reduce: l.reduce.inference_copy(kind),
                    blocks: blocks(&l.blocks),
                })
                .collect(),
            final_norm: self.final_norm.inference_copy(kind),
            final_conv: self.final_conv.inference_copy(Kind::Float),
        }
    }

    /// `fast`: the input is cast to the weights' dtype, the activations are kept
    /// channels-last and the convolutions take [`Conv::fast_forward`]; the logits are
    /// float32 either way.
    fn forward(&self, x: &Tensor, dropout: Option<f64>, fast: bool) -> Tensor {
        let conv = |c: &Conv, x: &Tensor| {
            if fast {
                c.fast_forward(x)
            } else {
                c.forward(x)
            }
        };
        let mut x = if fast {
            let x = channels_last(&x.to_kind(self.conv_init.ws.kind()));
            let y = self.conv_init.fast_forward(&x);
            if is_channels_last(&y) {
                y
            } else {
                channels_last(&y)
            }
        } else {
            self.conv_init.forward(x)
        };
        if let Some(p) = dropout {
            x = x.feature_dropout(p, true);
        }
        let mut skips = Vec::with_capacity(self.down.len());
        for layer in &self.down {
            if let Some(d) = &layer.down {
                x = conv(d, &x);
            }
            for b in &layer.blocks {
                x = b.forward(&x, fast);
            }
            skips.push(x.shallow_clone());
        }
        skips.pop();
        for layer in &self.up {
            let y = conv(&layer.reduce, &x);
            let size = y.size();
            let out: Vec<i64> = size[2..].iter().map(|s| s * 2).collect();
            let mut y = y.upsample_trilinear3d(&out, false, Some(2.0), Some(2.0), Some(2.0));
            let _ = y.g_add_(&skips.pop().expect("one skip per decoder level"));
            x = y;
            for b in &layer.blocks {
                x = b.forward(&x, fast);
            }
        }
        // free the decoder output before the widest tensor (C x 96^3 logits) is allocated
        let mut h = self.final_norm.forward(&x).relu_();
        drop(x);
        if h.kind() != self.final_conv.ws.kind() {
            h = h.to_kind(self.final_conv.ws.kind());
        }
        conv(&self.final_conv, &h)
    }
}

/// Inference copies of the weights, made on demand per precision.
#[derive(Debug, Default)]
struct InferenceState {
    active: Option<Precision>,
    copies: Vec<(Precision, Body)>,
}

/// The SegResNet network. Build it on a [`nn::VarStore`], then load weights into that store.
#[derive(Debug)]
pub struct SegResNet {
    config: SegResNetConfig,
    body: Body,
    inference: RefCell<InferenceState>,
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
            body: Body {
                conv_init,
                down,
                up,
                final_norm,
                final_conv,
            },
            inference: RefCell::new(InferenceState::default()),
        }
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &SegResNetConfig {
        &self.config
    }

    /// Switches the inference path and returns the previous setting.
    ///
    /// `Some(p)`: [`SegResNet::forward_t`] runs on a detached copy of the weights made for
    /// `p` at its first use (channels-last, bf16 convolutions for [`Precision::Bf16`]) and
    /// produces no gradients. The copy is a snapshot: use this only on a network whose
    /// weights no longer change (the engine's loaded networks, reloaded as new objects).
    /// `None` (the default, what training uses): the variable-store weights in libtorch's
    /// default layout.
    pub fn set_inference(&self, precision: Option<Precision>) -> Option<Precision> {
        let mut st = self.inference.borrow_mut();
        if let Some(p) = precision {
            if !st.copies.iter().any(|(q, _)| *q == p) {
                let copy = tch::no_grad(|| self.body.inference_copy(p));
                st.copies.push((p, copy));
            }
        }
        std::mem::replace(&mut st.active, precision)
    }

    /// The inference path [`SegResNet::set_inference`] selected.
    pub fn inference(&self) -> Option<Precision> {
        self.inference.borrow().active
    }

    /// Forward pass on `(N, C, D, H, W)` float input whose spatial sizes are divisible by
    /// [`SegResNetConfig::divisor`]. `train` enables Dropout3d after `convInit`. The logits
    /// are float32 (outside CUDA autocast) in every precision.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let dropout = self.config.dropout_prob.filter(|&p| train && p > 0.0);
        let st = self.inference.borrow();
        match st.active {
            Some(p) => {
                let body = st
                    .copies
                    .iter()
                    .find(|(q, _)| *q == p)
                    .map(|(_, b)| b)
                    .expect("set_inference made the copy");
                tch::no_grad(|| body.forward(x, dropout, true))
            }
            None => self.body.forward(x, dropout, false),
        }
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
