//! A dynamic loss scaler for fp16 training on CUDA with `torch.cuda.amp.GradScaler`'s
//! defaults: initial scale 65536, growth x2 after 2000 finite steps, backoff x0.5 and a
//! skipped step when a gradient is not finite.

use tch::nn::VarStore;

/// The scaler state.
#[derive(Debug, Clone)]
pub struct GradScaler {
    scale: f64,
    growth_tracker: u32,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            growth_tracker: 0,
        }
    }
}

impl GradScaler {
    /// The factor the loss is multiplied by before `backward`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Divides every gradient by the scale. Returns `false` (and backs the scale off) when a
    /// gradient holds an infinity or NaN: the optimiser step must then be skipped.
    pub fn unscale(&mut self, vs: &VarStore) -> bool {
        let inv = 1.0 / self.scale;
        let mut finite = true;
        for v in vs.trainable_variables() {
            let mut g = v.grad();
            if !g.defined() {
                continue;
            }
            let _ = g.g_mul_scalar_(inv);
            if finite && !bool::try_from(g.isfinite().all()).unwrap_or(false) {
                finite = false;
            }
        }
        if finite {
            self.growth_tracker += 1;
            if self.growth_tracker >= 2000 {
                self.scale *= 2.0;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= 0.5;
            self.growth_tracker = 0;
        }
        finite
    }
}
