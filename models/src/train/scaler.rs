//! A dynamic loss scaler for fp16 training on CUDA with `torch.amp.GradScaler`'s defaults:
//! initial scale 2^16, growth x2 after 2000 consecutive finite steps, backoff x0.5 and a
//! skipped optimiser step when a gradient is not finite.

use crate::error::Result;
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;

/// `torch.amp.GradScaler(init_scale=...)` default.
pub const INIT_SCALE: f64 = 65536.0;
/// `growth_factor` default.
pub const GROWTH_FACTOR: f64 = 2.0;
/// `backoff_factor` default.
pub const BACKOFF_FACTOR: f64 = 0.5;
/// `growth_interval` default: finite steps in a row before the scale grows.
pub const GROWTH_INTERVAL: u32 = 2000;

/// The scaler state (`GradScaler.state_dict()`'s `scale` and `_growth_tracker`; saved for
/// exact resume, [`super::state`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    scale: f64,
    growth_tracker: u32,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self {
            scale: INIT_SCALE,
            growth_tracker: 0,
        }
    }
}

impl GradScaler {
    /// The factor the loss is multiplied by before `backward`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Finite steps since the scale last changed.
    pub fn growth_tracker(&self) -> u32 {
        self.growth_tracker
    }

    /// Divides every gradient by the scale and updates the scale as `GradScaler.update` does.
    /// Returns `Ok(false)` (and backs the scale off) when a gradient holds an infinity or NaN:
    /// the optimiser step must then be skipped. A libtorch error is returned, not swallowed,
    /// and leaves the scale unchanged.
    pub fn unscale(&mut self, vs: &VarStore) -> Result<bool> {
        let inv = 1.0 / self.scale;
        let mut finite = true;
        for v in vs.trainable_variables() {
            let mut g = v.grad();
            if !g.defined() {
                continue;
            }
            let _ = g.f_mul_scalar_(inv)?;
            if finite && !bool::try_from(g.f_isfinite()?.f_all()?)? {
                finite = false;
            }
        }
        self.update(finite);
        Ok(finite)
    }

    /// Unscales the gradients and runs the optimiser step `step` only when they are all
    /// finite (the `scaler.step(opt); scaler.update()` pair). Returns whether the step ran.
    pub fn step(&mut self, vs: &VarStore, step: impl FnOnce() -> Result<()>) -> Result<bool> {
        let finite = self.unscale(vs)?;
        if finite {
            step()?;
        }
        Ok(finite)
    }

    fn update(&mut self, finite: bool) {
        if finite {
            self.growth_tracker += 1;
            if self.growth_tracker >= GROWTH_INTERVAL {
                self.scale *= GROWTH_FACTOR;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= BACKOFF_FACTOR;
            self.growth_tracker = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;
    use tch::{Device, Kind, Tensor};

    /// A store with two variables whose gradients are set to `g1` and `g2` times the scale
    /// (through `backward` of `scale * (p1 * g1 + p2 * g2).sum()`), plus one without a
    /// gradient.
    fn store(scale: f64, g1: &[f32], g2: &[f32]) -> (VarStore, Tensor, Tensor) {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let p1 = root.var_copy("p1", &Tensor::from_slice(&[1.0f32, 2.0, 3.0]));
        let p2 = root.var_copy("p2", &Tensor::from_slice(&[-1.0f32, 0.5]));
        let _unused = root.var_copy("unused", &Tensor::from_slice(&[7.0f32]));
        let (t1, t2) = (Tensor::from_slice(g1), Tensor::from_slice(g2));
        (((&p1 * &t1).sum(Kind::Float) + (&p2 * &t2).sum(Kind::Float)) * scale).backward();
        (vs, t1, t2)
    }

    fn grad_of(vs: &VarStore, name: &str) -> Tensor {
        vs.variables()[name].grad()
    }

    fn finite_steps(s: &mut GradScaler, n: u32) {
        let (vs, _, _) = store(1.0, &[1.0, 1.0, 1.0], &[1.0, 1.0]);
        for _ in 0..n {
            assert!(s.unscale(&vs).unwrap());
        }
    }

    #[test]
    fn defaults_are_torch_grad_scaler_defaults() {
        let s = GradScaler::default();
        assert_eq!(s.scale(), 65536.0);
        assert_eq!(s.growth_tracker(), 0);
        assert_eq!(
            (GROWTH_FACTOR, BACKOFF_FACTOR, GROWTH_INTERVAL),
            (2.0, 0.5, 2000)
        );
    }

    #[test]
    fn unscale_divides_every_gradient_by_the_scale() {
        let mut s = GradScaler::default();
        let (vs, g1, g2) = store(s.scale(), &[0.25, -3.0, 1e-3], &[5.0, -0.125]);
        assert!(s.unscale(&vs).unwrap());
        // the scale is a power of two: the division is exact
        assert!(grad_of(&vs, "p1").equal(&g1), "{:?}", grad_of(&vs, "p1"));
        assert!(grad_of(&vs, "p2").equal(&g2), "{:?}", grad_of(&vs, "p2"));
        assert!(!grad_of(&vs, "unused").defined());
        assert_eq!(s.growth_tracker(), 1);
        assert_eq!(s.scale(), 65536.0);
    }

    #[test]
    fn an_infinite_or_nan_gradient_skips_the_step_and_backs_off() {
        for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            let mut s = GradScaler::default();
            finite_steps(&mut s, 5);
            let (vs, _, _) = store(s.scale(), &[1.0, 2.0, 3.0], &[4.0, bad]);
            let before: Vec<Tensor> = ["p1", "p2"]
                .iter()
                .map(|n| vs.variables()[*n].copy())
                .collect();
            let mut opt = tch::nn::Sgd::default().build(&vs, 0.1).unwrap();
            assert!(
                !s.step(&vs, || {
                    opt.step();
                    Ok(())
                })
                .unwrap(),
                "{bad} is not finite"
            );
            assert_eq!(s.scale(), 32768.0, "backoff after {bad}");
            assert_eq!(s.growth_tracker(), 0, "{bad} resets the growth tracker");
            for (n, b) in ["p1", "p2"].iter().zip(&before) {
                assert!(vs.variables()[*n].equal(b), "{n} moved on a skipped step");
            }
        }
    }

    #[test]
    fn a_finite_step_runs_the_optimiser_on_unscaled_gradients() {
        let mut s = GradScaler::default();
        let (vs, _, _) = store(s.scale(), &[1.0, 2.0, 3.0], &[4.0, -8.0]);
        let mut opt = tch::nn::Sgd::default().build(&vs, 0.5).unwrap();
        assert!(s
            .step(&vs, || {
                opt.step();
                Ok(())
            })
            .unwrap());
        // p - 0.5 * g, with g unscaled
        let p1 = Tensor::from_slice(&[0.5f32, 1.0, 1.5]);
        let p2 = Tensor::from_slice(&[-3.0f32, 4.5]);
        assert!(
            vs.variables()["p1"].equal(&p1),
            "{:?}",
            vs.variables()["p1"]
        );
        assert!(
            vs.variables()["p2"].equal(&p2),
            "{:?}",
            vs.variables()["p2"]
        );
    }

    #[test]
    fn the_scale_grows_after_2000_finite_steps_in_a_row() {
        let mut s = GradScaler::default();
        finite_steps(&mut s, 1999);
        assert_eq!(s.scale(), 65536.0);
        finite_steps(&mut s, 1);
        assert_eq!(s.scale(), 131072.0);
        assert_eq!(s.growth_tracker(), 0);
        // an overflow in between restarts the count
        finite_steps(&mut s, 1000);
        let (vs, _, _) = store(s.scale(), &[f32::INFINITY, 0.0, 0.0], &[0.0, 0.0]);
        assert!(!s.unscale(&vs).unwrap());
        assert_eq!(s.scale(), 65536.0);
        finite_steps(&mut s, 1999);
        assert_eq!(s.scale(), 65536.0);
        finite_steps(&mut s, 1);
        assert_eq!(s.scale(), 131072.0);
    }

    #[test]
    fn the_state_survives_json() {
        let mut s = GradScaler::default();
        finite_steps(&mut s, 3);
        let (vs, _, _) = store(1.0, &[f32::NAN, 0.0, 0.0], &[0.0, 0.0]);
        assert!(!s.unscale(&vs).unwrap());
        finite_steps(&mut s, 2);
        let back: GradScaler = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!((back.scale(), back.growth_tracker()), (32768.0, 2));
    }

    #[test]
    fn repeated_overflows_keep_halving() {
        let mut s = GradScaler::default();
        for k in 1..=4 {
            let (vs, _, _) = store(1.0, &[f32::NAN, 0.0, 0.0], &[0.0, 0.0]);
            assert!(!s.unscale(&vs).unwrap());
            assert_eq!(s.scale(), 65536.0 / f64::powi(2.0, k));
        }
    }
}
