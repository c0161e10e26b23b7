//! The bundle's optimiser (`docs/bundle.md` §5.3): `torch.optim.AdamW(params, lr,
//! weight_decay)` with torch's other defaults (betas 0.9/0.999, eps 1e-8, no AMSGrad).

use crate::error::Result;
use tch::nn::{Optimizer, OptimizerConfig, VarStore};

/// AdamW over every trainable variable of `vs`, as `torch.optim.AdamW(lr=lr,
/// weight_decay=weight_decay)`: decoupled decay `p -= lr * wd * p`, then the bias-corrected
/// Adam update.
pub fn adamw(vs: &VarStore, lr: f64, weight_decay: f64) -> Result<Optimizer> {
    Ok(tch::nn::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        wd: weight_decay,
        eps: 1e-8,
        amsgrad: false,
    }
    .build(vs, lr)?)
}
