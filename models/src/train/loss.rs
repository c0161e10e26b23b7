//! `DiceCELoss(to_onehot_y=True, softmax=True)` with MONAI's defaults (`docs/bundle.md`
//! §5.3): background included, `smooth_nr = smooth_dr = 1e-5`, mean over batch x classes,
//! plus `CrossEntropyLoss(reduction="mean")`, weights 1 and 1.

use tch::{Kind, Reduction, Tensor};

/// The Dice part: `1 - (2 sum(p y) + 1e-5) / (sum(y) + sum(p) + 1e-5)` per sample and class,
/// averaged. `logits` `[B, C, X, Y, Z]` float, `target` `[B, X, Y, Z]` int64.
///
/// The one-hot target is never built (it would be `C` times the crop, 372 MB in float32 for
/// 105 classes at 96^3): `sum(p y)` per class is a scatter-add of the probability at each
/// voxel's true class, and `sum(y)` a per-class count.
pub fn dice_loss(logits: &Tensor, target: &Tensor) -> Tensor {
    let s = logits.size();
    let (b, classes) = (s[0], s[1]);
    let p = logits.softmax(1, Kind::Float).view([b, classes, -1]);
    let t = target.view([b, 1, -1]);
    let p_true = p.gather(1, &t, false).view([b, -1]);
    let t = t.view([b, -1]);
    let zeros = Tensor::zeros([b, classes], (Kind::Float, logits.device()));
    let inter = zeros.scatter_add(1, &t, &p_true);
    let ground = zeros.scatter_add(1, &t, &p_true.ones_like());
    let pred = p.sum_dim_intlist(&[2i64][..], false, Kind::Float);
    let ratio: Tensor = (inter * 2.0 + 1e-5) / (ground + pred + 1e-5);
    let f: Tensor = 1.0 - ratio;
    f.mean(Kind::Float)
}

/// Cross entropy of the logits against class indices, averaged over all voxels.
pub fn ce_loss(logits: &Tensor, target: &Tensor) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(target, None, Reduction::Mean, -100, 0.0)
}

/// Dice + cross entropy, as the bundle trains.
pub fn dice_ce_loss(logits: &Tensor, target: &Tensor) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    dice_loss(&logits, target) + ce_loss(&logits, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn perfect_prediction_has_low_dice_loss() {
        let target = Tensor::from_slice(&[0i64, 1, 1, 0, 2, 2, 0, 1]).view([1, 2, 2, 2]);
        let logits = target
            .one_hot(3)
            .permute([0, 4, 1, 2, 3])
            .to_kind(Kind::Float)
            * 50.0;
        let d = dice_loss(&logits, &target).double_value(&[]);
        assert!(d.abs() < 1e-4, "{d}");
        let ce = ce_loss(&logits, &target).double_value(&[]);
        assert!(ce < 1e-6);
    }

    #[test]
    fn uniform_prediction_matches_the_formula() {
        let target = Tensor::zeros([1, 2, 2, 2], (Kind::Int64, Device::Cpu));
        let logits = Tensor::zeros([1, 2, 2, 2, 2], (Kind::Float, Device::Cpu));
        // class 0: inter 4, ground 8, pred 4; class 1: inter 0, ground 0, pred 4
        let c0 = 1.0 - (8.0 + 1e-5) / (12.0 + 1e-5);
        let c1 = 1.0 - (1e-5) / (4.0 + 1e-5);
        let d = dice_loss(&logits, &target).double_value(&[]);
        assert!((d - (c0 + c1) / 2.0).abs() < 1e-6);
        let ce = ce_loss(&logits, &target).double_value(&[]);
        assert!((ce - 2f64.ln()).abs() < 1e-6);
    }
}
