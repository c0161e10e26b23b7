//! The bundle's optimiser (`docs/bundle.md` §5.3): `torch.optim.AdamW(params, lr,
//! weight_decay)` with torch's other defaults (betas 0.9/0.999, eps 1e-8, no AMSGrad).
//!
//! Written here rather than taken from `tch::nn::Optimizer` because libtorch's optimiser
//! keeps its state (the moments and step counts) out of reach, and exact resume
//! ([`super::state`]) must save and restore it. The update is libtorch's `AdamW::step`, per
//! parameter: decoupled decay `p *= 1 - lr * wd`, then `m = lerp(m, g, 1 - β1)`,
//! `v = β2 v + (1 - β2) g²`, `p -= lr / (1 - β1^t) * m / (sqrt(v) / sqrt(1 - β2^t) + eps)`,
//! with `t` the parameter's own step count. A parameter without a gradient is skipped (its
//! step count does not advance), as in torch.

use crate::error::{ModelsError, Result};
use std::collections::BTreeMap;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// `betas[0]` default.
pub const BETA1: f64 = 0.9;
/// `betas[1]` default.
pub const BETA2: f64 = 0.999;
/// `eps` default.
pub const EPS: f64 = 1e-8;

/// The state torch keeps per parameter (`optimizer.state_dict()["state"][i]`).
#[derive(Debug)]
pub struct ParamState {
    /// Steps taken with a gradient.
    pub step: i64,
    /// First moment (`exp_avg`), on the parameter's device.
    pub exp_avg: Tensor,
    /// Second moment (`exp_avg_sq`), on the parameter's device.
    pub exp_avg_sq: Tensor,
}

/// AdamW over the trainable variables of a [`VarStore`], with its state in reach.
#[derive(Debug)]
pub struct AdamW {
    lr: f64,
    weight_decay: f64,
    params: Vec<(String, Tensor)>,
    state: BTreeMap<String, ParamState>,
}

/// AdamW over every trainable variable of `vs`, as `torch.optim.AdamW(lr=lr,
/// weight_decay=weight_decay)`.
pub fn adamw(vs: &VarStore, lr: f64, weight_decay: f64) -> Result<AdamW> {
    let mut params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(AdamW {
        lr,
        weight_decay,
        params,
        state: BTreeMap::new(),
    })
}

impl AdamW {
    /// The learning rate (constant: the bundle uses no scheduler).
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Clears every gradient (to zero; the next backward accumulates into it).
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One AdamW step over the parameters that have a gradient.
    pub fn step(&mut self) -> Result<()> {
        let (lr, wd) = (self.lr, self.weight_decay);
        tch::no_grad(|| -> Result<()> {
            for (name, p) in &mut self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                if wd != 0.0 {
                    let _ = p.f_mul_scalar_(1.0 - lr * wd)?;
                }
                let st = match self.state.get_mut(name.as_str()) {
                    Some(s) => s,
                    None => self.state.entry(name.clone()).or_insert(ParamState {
                        step: 0,
                        exp_avg: p.f_zeros_like()?,
                        exp_avg_sq: p.f_zeros_like()?,
                    }),
                };
                st.step += 1;
                let bc1 = 1.0 - BETA1.powi(st.step as i32);
                let bc2 = 1.0 - BETA2.powi(st.step as i32);
                let _ = st.exp_avg.f_lerp_(&g, 1.0 - BETA1)?;
                let _ = st.exp_avg_sq.f_mul_scalar_(BETA2)?;
                let _ = st
                    .exp_avg_sq
                    .f_addcmul_(&g, &g.f_mul_scalar(1.0 - BETA2)?)?;
                let denom = st
                    .exp_avg_sq
                    .f_sqrt()?
                    .f_div_scalar(bc2.sqrt())?
                    .f_add_scalar(EPS)?;
                let _ = p.f_addcdiv_(&st.exp_avg.f_mul_scalar(-lr / bc1)?, &denom)?;
            }
            Ok(())
        })
    }

    /// The state of every parameter that has taken a step, by variable name.
    pub fn state(&self) -> &BTreeMap<String, ParamState> {
        &self.state
    }

    /// Replaces the state with `state` (moments on any device, copied to each parameter's
    /// device and kind). Every name must be a parameter of this optimiser with the same shape.
    pub fn load_state(&mut self, state: BTreeMap<String, ParamState>) -> Result<()> {
        let mut out = BTreeMap::new();
        for (name, s) in state {
            let p = self
                .params
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, p)| p)
                .ok_or_else(|| {
                    ModelsError::WeightsMismatch(format!("optimiser state for unknown {name}"))
                })?;
            for m in [&s.exp_avg, &s.exp_avg_sq] {
                if m.size() != p.size() {
                    return Err(ModelsError::WeightsMismatch(format!(
                        "optimiser state of {name} has shape {:?}, the parameter {:?}",
                        m.size(),
                        p.size()
                    )));
                }
            }
            let to = |t: &Tensor| -> Result<Tensor> {
                Ok(t.f_to_device(p.device())?
                    .f_to_kind(p.kind())?
                    .f_contiguous()?)
            };
            out.insert(
                name,
                ParamState {
                    step: s.step,
                    exp_avg: to(&s.exp_avg)?,
                    exp_avg_sq: to(&s.exp_avg_sq)?,
                },
            );
        }
        self.state = out;
        Ok(())
    }
}

/// A CPU float32 copy of `t` (for saving).
pub(super) fn cpu_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?)
}
