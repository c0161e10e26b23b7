//! The validation metric `MeanDice(include_background=False)` with `ignore_empty=True`
//! (`docs/bundle.md` §5.4): per image and class `2|P and G| / (|P| + |G|)`, classes absent
//! from the ground truth skipped, mean over classes, then over images.

use tch::{Kind, Tensor};

/// Per-class Dice of one label pair (`pred` and `truth` are integer maps of the same shape
/// with values in `[0, classes)`): `None` for classes absent from `truth`. Index 0
/// (background) is always `None`.
pub fn class_dice(pred: &Tensor, truth: &Tensor, classes: i64) -> Vec<Option<f64>> {
    let p = pred.to_kind(Kind::Int64).view([-1]);
    let g = truth.to_kind(Kind::Int64).view([-1]);
    let pair = &g * classes + &p;
    let counts = pair
        .bincount::<Tensor>(None, classes * classes)
        .to_kind(Kind::Double)
        .view([classes, classes]);
    let cm: Vec<f64> = Vec::<f64>::try_from(counts.view([-1])).unwrap_or_default();
    let k = classes as usize;
    let mut out = vec![None; k];
    for c in 1..k {
        let ground: f64 = (0..k).map(|j| cm[c * k + j]).sum();
        if ground == 0.0 {
            continue;
        }
        let predicted: f64 = (0..k).map(|i| cm[i * k + c]).sum();
        let inter = cm[c * k + c];
        out[c] = Some(2.0 * inter / (ground + predicted));
    }
    out
}

/// Mean over the classes present in the ground truth (background excluded); `None` when the
/// ground truth has no foreground.
pub fn mean_dice(per_class: &[Option<f64>]) -> Option<f64> {
    let v: Vec<f64> = per_class.iter().flatten().copied().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_by_hand() {
        let truth = Tensor::from_slice(&[0i64, 1, 1, 1, 2, 0]);
        let pred = Tensor::from_slice(&[0i64, 1, 1, 0, 0, 3]);
        let d = class_dice(&pred, &truth, 4);
        assert_eq!(d[0], None);
        assert!((d[1].unwrap() - 0.8).abs() < 1e-12); // 2*2 / (3 + 2)
        assert_eq!(d[2], Some(0.0));
        assert_eq!(d[3], None); // a false positive on an absent class is ignored
        assert!((mean_dice(&d).unwrap() - 0.4).abs() < 1e-12);
    }
}
