//! The per-cell accumulator against a straightforward whole-volume one: the same sums to the
//! bit and the same labels, on small odd-sized volumes, several overlaps, both layouts of the
//! network's output, batches of one and of three, and the bundle's own 96^3 / 0.25 windows
//! (both resolutions' inferer).

use super::blend::Blender;
use super::sliding::{predict_labels, BlendMode, PadMode, SlidingWindow};
use super::window::{gaussian_importance_map, windows};
use tch::{Device, Kind, Tensor};

/// One case: volume size, window, overlap, classes.
struct Case {
    size: [i64; 3],
    roi: [i64; 3],
    overlap: f64,
    classes: i64,
}

const CASES: &[Case] = &[
    Case {
        size: [31, 27, 23],
        roi: [12, 10, 8],
        overlap: 0.25,
        classes: 5,
    },
    Case {
        size: [29, 17, 40],
        roi: [12, 12, 12],
        overlap: 0.5,
        classes: 4,
    },
    Case {
        size: [23, 19, 17],
        roi: [10, 10, 10],
        overlap: 0.75,
        classes: 3,
    },
    // smaller than the window along y: padded
    Case {
        size: [25, 9, 19],
        roi: [12, 12, 12],
        overlap: 0.0,
        classes: 4,
    },
    // the bundle's inferer (highres and lowres alike): 96^3, overlap 0.25, a clamped last window
    Case {
        size: [171, 101, 97],
        roi: [96, 96, 96],
        overlap: 0.25,
        classes: 3,
    },
];

/// The working size (each dimension at least the window).
fn work_of(c: &Case) -> [i64; 3] {
    std::array::from_fn(|a| c.size[a].max(c.roi[a]))
}

/// Seeded random logits `[C, rx, ry, rz]` for every window, channels-last in memory or not.
fn window_logits(c: &Case, n: usize, channels_last: bool) -> Vec<Tensor> {
    tch::manual_seed(7);
    (0..n)
        .map(|_| {
            let t = Tensor::randn(
                [c.classes, c.roi[0], c.roi[1], c.roi[2]],
                (Kind::Float, Device::Cpu),
            ) * 3.0;
            if channels_last {
                t.permute([1, 2, 3, 0]).contiguous().permute([3, 0, 1, 2])
            } else {
                t
            }
        })
        .collect()
}

/// MONAI's accumulation: a whole-volume sum of weighted outputs and of weights, window by
/// window in `order`.
fn whole_volume(
    c: &Case,
    wins: &[[i64; 3]],
    logits: &[Tensor],
    weight: &Tensor,
    order: &[usize],
) -> (Tensor, Tensor) {
    let work = work_of(c);
    let acc = Tensor::zeros(
        [c.classes, work[0], work[1], work[2]],
        (Kind::Float, Device::Cpu),
    );
    let count = Tensor::zeros(work, (Kind::Float, Device::Cpu));
    for &i in order {
        let w = wins[i];
        let region = |t: &Tensor, d: i64| {
            t.narrow(d, w[0], c.roi[0])
                .narrow(d + 1, w[1], c.roi[1])
                .narrow(d + 2, w[2], c.roi[2])
        };
        let _ = region(&acc, 1).g_add_(&(&logits[i] * weight));
        let _ = region(&count, 0).g_add_(weight);
    }
    (acc, count)
}

/// Labels of whole-volume sums: divide, softmax over the classes, argmax, cropped as the
/// sliding window crops its padding.
fn labels_of(c: &Case, acc: &Tensor, count: &Tensor) -> Tensor {
    let out = (acc / count).permute([1, 2, 3, 0]).contiguous();
    let lab = out
        .softmax(-1, Kind::Float)
        .argmax(-1, false)
        .to_kind(Kind::Uint8);
    let work = work_of(c);
    let mut lab = lab;
    for a in 0..3 {
        let before = (work[a] - c.size[a]) / 2;
        lab = lab.narrow(a as i64, before, c.size[a]);
    }
    lab
}

#[test]
fn cells_sum_bit_for_bit_like_the_whole_volume() {
    for c in CASES {
        let work = work_of(c);
        let wins = windows(work, c.roi, c.overlap);
        let weight = gaussian_importance_map(c.roi, 0.125);
        let forward: Vec<usize> = (0..wins.len()).collect();
        for channels_last in [false, true] {
            let logits = window_logits(c, wins.len(), channels_last);
            let (acc, count) = whole_volume(c, &wins, &logits, &weight, &forward);
            let got_acc = Tensor::full(
                [c.classes, work[0], work[1], work[2]],
                f64::NAN,
                (Kind::Float, Device::Cpu),
            );
            let got_count = Tensor::full(work, f64::NAN, (Kind::Float, Device::Cpu));
            let mut blender = Blender::new(work, c.roi, &wins, c.classes).unwrap();
            let mut blocks = 0;
            for (i, l) in logits.iter().enumerate() {
                for b in blender.add(i, &(l * &weight), &weight).unwrap() {
                    let s = b.count.size();
                    let region = |t: &Tensor, d: i64| {
                        t.narrow(d, b.origin[0], s[0])
                            .narrow(d + 1, b.origin[1], s[1])
                            .narrow(d + 2, b.origin[2], s[2])
                    };
                    region(&got_acc, 1).copy_(&b.acc);
                    region(&got_count, 0).copy_(&b.count);
                    blocks += 1;
                }
            }
            assert_eq!(
                blocks,
                blender.cell_count(),
                "every cell is handed back once"
            );
            assert!(
                got_acc.equal(&acc),
                "{:?}/{:?}: weighted sums differ",
                c.size,
                c.roi
            );
            assert!(
                got_count.equal(&count),
                "{:?}/{:?}: weight sums differ",
                c.size,
                c.roi
            );
        }
    }
}

#[test]
fn the_comparison_sees_a_changed_order() {
    // the check above is not vacuous: adding the same windows in reverse order changes bits
    // wherever three or more windows meet
    let c = &CASES[1];
    let wins = windows(work_of(c), c.roi, c.overlap);
    let weight = gaussian_importance_map(c.roi, 0.125);
    let logits = window_logits(c, wins.len(), false);
    let forward: Vec<usize> = (0..wins.len()).collect();
    let backward: Vec<usize> = forward.iter().rev().copied().collect();
    let (a, _) = whole_volume(c, &wins, &logits, &weight, &forward);
    let (b, _) = whole_volume(c, &wins, &logits, &weight, &backward);
    assert!(!a.equal(&b));
}

#[test]
fn labels_match_the_whole_volume_labels() {
    for c in CASES {
        let work = work_of(c);
        let wins = windows(work, c.roi, c.overlap);
        let weight = gaussian_importance_map(c.roi, 0.125);
        let forward: Vec<usize> = (0..wins.len()).collect();
        let input = Tensor::zeros(
            [1, 1, c.size[0], c.size[1], c.size[2]],
            (Kind::Float, Device::Cpu),
        );
        for (channels_last, batch) in [(false, 1), (true, 1), (true, 3)] {
            let logits = window_logits(c, wins.len(), channels_last);
            let (acc, count) = whole_volume(c, &wins, &logits, &weight, &forward);
            let expected = labels_of(c, &acc, &count);
            let cfg = SlidingWindow {
                roi: c.roi,
                overlap: c.overlap,
                sw_batch_size: batch,
                blend: BlendMode::Gaussian { sigma_scale: 0.125 },
                pad: PadMode::Replicate,
            };
            let mut next = 0usize;
            let got = predict_labels(
                &input,
                &cfg,
                c.classes,
                |x| {
                    let n = x.size()[0] as usize;
                    let parts: Vec<Tensor> = logits[next..next + n]
                        .iter()
                        .map(|t| t.unsqueeze(0))
                        .collect();
                    next += n;
                    let out = Tensor::cat(&parts, 0);
                    Ok(if channels_last {
                        out.permute([0, 2, 3, 4, 1])
                            .contiguous()
                            .permute([0, 4, 1, 2, 3])
                    } else {
                        out
                    })
                },
                &mut |_, _| true,
            )
            .unwrap();
            assert_eq!(next, wins.len());
            assert_eq!(got.size(), expected.size());
            let differ = i64::try_from(got.ne_tensor(&expected).sum(Kind::Int64)).unwrap();
            assert_eq!(
                differ, 0,
                "{:?}/{:?} batch {batch}: {differ} labels differ",
                c.size, c.roi
            );
        }
    }
}
