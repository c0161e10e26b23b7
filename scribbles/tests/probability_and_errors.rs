//! `probability_graphcut`'s own behaviour (hard scribbles, the ROI border, a leak removed on the
//! real CT) and the bad inputs both cuts refuse.

mod common;

use ferrolabel_scribbles::{
    histogram_graphcut, probability_graphcut, Error, GraphCutOptions, Grid3, HistogramOptions, Roi,
    ScribbleValues,
};

const BG: u8 = 2;
const FG: u8 = 3;

fn count(labels: &[u8]) -> usize {
    labels.iter().filter(|&&l| l == 1).count()
}

#[test]
fn scribbles_are_hard_constraints() {
    // the model is sure of the opposite and the pairwise term is strong: scribbles still win
    let grid = Grid3::new([12, 10, 8], [1.0; 3]).unwrap();
    let n = grid.len();
    let image = vec![40.0f32; n];
    let mut prob = vec![1.0f32; n];
    let mut scribbles = vec![0u8; n];
    let bg_at = grid.index(5, 5, 4);
    scribbles[bg_at] = BG;
    let fg_at = grid.index(1, 1, 1);
    for i in 0..grid.dims[0] {
        prob[grid.index(i, 1, 1)] = 0.0;
    }
    scribbles[fg_at] = FG;
    let opts = GraphCutOptions {
        lamda: 50.0,
        ..GraphCutOptions::default()
    };
    let r = probability_graphcut(&image, &prob, &scribbles, None, &grid, &opts).unwrap();
    assert_eq!(r.roi, Roi::full(&grid));
    assert_eq!(r.labels[bg_at], 0, "background scribble lost");
    assert_eq!(r.labels[fg_at], 1, "foreground scribble lost");
    // without the scribbles (and the pairwise term) the model decides them the other way
    let mut other = vec![0u8; n];
    other[grid.index(11, 9, 7)] = BG;
    let unary_only = GraphCutOptions { lamda: 0.0, ..opts };
    let free = probability_graphcut(&image, &prob, &other, None, &grid, &unary_only).unwrap();
    assert_eq!((free.labels[bg_at], free.labels[fg_at]), (1, 0));
}

#[test]
fn roi_border_takes_the_class_outside() {
    // a flat image and an undecided model (p = 0.5): only the edges across the ROI's border
    // decide, and they pull the ROI to the class of the mask around it
    let grid = Grid3::new([10, 9, 8], [1.0; 3]).unwrap();
    let n = grid.len();
    let image = vec![0.0f32; n];
    let roi = Roi {
        start: [2, 2, 2],
        end: [8, 7, 6],
    };
    let prob = vec![0.5f32; roi.len()];
    let mut scribbles = vec![0u8; n];
    scribbles[0] = BG; // outside the ROI: not used, but the volume is not empty
    let opts = GraphCutOptions {
        roi: Some(roi),
        ..GraphCutOptions::default()
    };
    let all_fg = vec![1u8; n];
    let r = probability_graphcut(&image, &prob, &scribbles, Some(&all_fg), &grid, &opts).unwrap();
    assert_eq!(r.roi, roi);
    assert_eq!(r.labels.len(), roi.len());
    assert_eq!(
        count(&r.labels),
        roi.len(),
        "a structure all around the ROI fills it"
    );
    let none = vec![0u8; n];
    let r = probability_graphcut(&image, &prob, &scribbles, Some(&none), &grid, &opts).unwrap();
    assert_eq!(
        count(&r.labels),
        0,
        "no structure around the ROI empties it"
    );
}

#[test]
fn background_strokes_remove_a_leak_on_real_ct() {
    // the model takes the stomach (6) for liver (5); background strokes on every fourth slice of
    // the stomach take it back: all of it when the model is unsure (p = 0.6), only near the
    // strokes when it is surer (p = 0.7), unless the strokes' histograms are pooled in
    let (dims, hu, seg) = common::ct_crop([30, 20, 0], [94, 84, 30]);
    let grid = Grid3::new(dims, [3.0; 3]).unwrap();
    let stroke = |bg: bool| -> Vec<u8> {
        seg.iter()
            .enumerate()
            .map(|(i, &l)| {
                let (x, z) = (i % dims[0], i / (dims[0] * dims[1]));
                match l {
                    6 if bg && z % 4 == 1 && x % 3 == 0 => BG,
                    5 if z == 15 && x % 10 == 0 => FG,
                    _ => 0,
                }
            })
            .collect()
    };
    let of = |labels: &[u8], structure: u8| {
        seg.iter()
            .zip(labels)
            .filter(|(&s, &l)| s == structure && l == 1)
            .count()
    };
    let total_stomach = seg.iter().filter(|&&s| s == 6).count();
    // (stomach probability, histogram weight, most stomach voxels left after the strokes, in %)
    for (p_stomach, w, max_left) in [(0.6f32, 0.0f32, 15), (0.7, 0.0, 100), (0.7, 0.5, 10)] {
        let prob: Vec<f32> = seg
            .iter()
            .map(|&l| match l {
                5 => 0.9,
                6 => p_stomach,
                _ => 0.03,
            })
            .collect();
        let opts = GraphCutOptions {
            histogram_weight: w,
            ..GraphCutOptions::default()
        };
        let before = probability_graphcut(&hu, &prob, &stroke(false), None, &grid, &opts).unwrap();
        let after = probability_graphcut(&hu, &prob, &stroke(true), None, &grid, &opts).unwrap();
        let (s0, s1) = (of(&before.labels, 6), of(&after.labels, 6));
        let (l0, l1) = (of(&before.labels, 5), of(&after.labels, 5));
        println!(
            "p(stomach) {p_stomach}, histogram weight {w}: stomach voxels labelled liver {s0} before, \
             {s1} after the strokes (of {total_stomach}); liver {l0} before, {l1} after"
        );
        assert!(s0 * 10 > total_stomach * 8, "the leak is there before");
        assert!(
            s1 * 100 <= total_stomach * max_left,
            "p {p_stomach} w {w}: {s1} left"
        );
        if max_left == 100 {
            assert!(
                s1 * 10 > total_stomach * 8,
                "a sure leak stays away from the strokes"
            );
        }
        assert!(l1 * 100 > l0 * 95, "the liver stays");
    }
}

#[test]
fn bad_inputs_are_refused() {
    let grid = Grid3::new([6, 5, 4], [1.0, 1.0, 2.5]).unwrap();
    let n = grid.len();
    let image = vec![10.0f32; n];
    let prob = vec![0.5f32; n];
    let mut scribbles = vec![0u8; n];
    scribbles[7] = FG;
    let opts = GraphCutOptions::default();
    let hopts = HistogramOptions::default();
    let pc = |image: &[f32], prob: &[f32], scribbles: &[u8], o: &GraphCutOptions| {
        probability_graphcut(image, prob, scribbles, None, &grid, o).unwrap_err()
    };
    let hc = |image: &[f32], scribbles: &[u8], o: &HistogramOptions| {
        histogram_graphcut(image, scribbles, &grid, o).unwrap_err()
    };

    // sizes
    assert!(matches!(
        pc(&image[1..], &prob, &scribbles, &opts),
        Error::Size { what: "image", .. }
    ));
    assert!(matches!(
        pc(&image, &prob[1..], &scribbles, &opts),
        Error::Size { .. }
    ));
    assert!(matches!(
        hc(&image, &scribbles[1..], &hopts),
        Error::Size {
            what: "scribbles",
            ..
        }
    ));
    let roi = Roi {
        start: [1, 1, 1],
        end: [4, 4, 3],
    };
    let o = GraphCutOptions {
        roi: Some(roi),
        ..opts
    };
    // the probabilities cover the ROI, not the grid
    assert!(matches!(
        pc(&image, &prob, &scribbles, &o),
        Error::Size { expected: 18, .. }
    ));
    let e = probability_graphcut(
        &image,
        &prob,
        &scribbles,
        Some(&scribbles[1..]),
        &grid,
        &opts,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Size {
                what: "outside mask",
                ..
            }
        ),
        "{e}"
    );

    // empty scribbles (other label values are not scribbles)
    let empty = vec![1u8; n];
    let e = hc(&image, &empty, &hopts);
    assert_eq!(
        e,
        Error::NoScribbles {
            foreground: FG,
            background: BG
        }
    );
    assert!(e.to_string().contains("no scribbles"), "{e}");
    assert_eq!(
        pc(&image, &prob, &empty, &opts),
        Error::NoScribbles {
            foreground: FG,
            background: BG
        }
    );

    // values
    let mut p = prob.clone();
    p[3] = 1.5;
    assert!(matches!(
        pc(&image, &p, &scribbles, &opts),
        Error::Value { index: 3, .. }
    ));
    p[3] = f32::NAN;
    assert!(matches!(
        pc(&image, &p, &scribbles, &opts),
        Error::Value { index: 3, .. }
    ));
    let mut im = image.clone();
    im[9] = f32::INFINITY;
    assert!(matches!(
        hc(&im, &scribbles, &hopts),
        Error::Value { index: 9, .. }
    ));

    // options
    for o in [
        GraphCutOptions { sigma: 0.0, ..opts },
        GraphCutOptions {
            histogram_weight: 1.5,
            ..opts
        },
        GraphCutOptions {
            histogram_weight: f32::NAN,
            ..opts
        },
        GraphCutOptions {
            lamda: -1.0,
            ..opts
        },
        GraphCutOptions {
            lamda: f32::NAN,
            ..opts
        },
        GraphCutOptions {
            scribbles: ScribbleValues {
                background: 4,
                foreground: 4,
            },
            ..opts
        },
    ] {
        assert!(
            matches!(pc(&image, &prob, &scribbles, &o), Error::Option(_)),
            "{o:?}"
        );
        assert!(matches!(
            hc(
                &image,
                &scribbles,
                &HistogramOptions {
                    num_bins: 64,
                    cut: o
                }
            ),
            Error::Option(_)
        ));
    }
    assert!(matches!(
        hc(
            &image,
            &scribbles,
            &HistogramOptions {
                num_bins: 0,
                cut: opts
            }
        ),
        Error::Option(_)
    ));

    // regions
    let outside = Roi {
        start: [0, 0, 0],
        end: [7, 5, 4],
    };
    let e = hc(
        &image,
        &scribbles,
        &HistogramOptions {
            num_bins: 64,
            cut: GraphCutOptions {
                roi: Some(outside),
                ..opts
            },
        },
    );
    assert!(matches!(e, Error::Roi(_)), "{e}");
    let flat = Roi {
        start: [2, 2, 2],
        end: [2, 5, 4],
    };
    assert!(matches!(flat.check(&grid), Err(Error::Roi(_))));
    assert!(matches!(
        Roi::from_ijk_bounds([0, 7, 0, 5, 0, 4], &grid),
        Err(Error::Roi(_))
    ));
    assert!(matches!(
        Roi::from_ijk_bounds([-1, 3, 0, 5, 0, 4], &grid),
        Err(Error::Roi(_))
    ));
    assert!(matches!(
        Roi::from_ijk_bounds([3, 3, 0, 5, 0, 4], &grid),
        Err(Error::Roi(_))
    ));
    // Slicer's pairs come in either order
    assert_eq!(
        Roi::from_ijk_bounds([5, 1, 0, 5, 4, 2], &grid).unwrap(),
        Roi {
            start: [1, 0, 2],
            end: [5, 5, 4]
        }
    );

    // grids
    assert!(matches!(
        Grid3::new([0, 3, 3], [1.0; 3]),
        Err(Error::Grid(_))
    ));
    assert!(matches!(
        Grid3::new([3, 3, 3], [1.0, 0.0, 1.0]),
        Err(Error::Grid(_))
    ));
    assert!(matches!(
        Grid3::new([1 << 22, 1 << 22, 1], [1.0; 3]),
        Err(Error::Grid(_))
    ));
}

#[test]
fn spacing_weighting_weakens_long_edges() {
    // two voxels along z, 4 mm apart (x and y 1 mm): the first is a foreground scribble, the
    // second prefers background by 0.5. Unweighted the edge costs lamda = 1 and pulls it to the
    // foreground; weighted by 1 mm / 4 mm it costs 0.25 and the voxel stays background.
    let grid = Grid3::new([1, 1, 2], [1.0, 1.0, 4.0]).unwrap();
    let image = vec![0.0f32; 2];
    let scribbles = vec![FG, 0];
    let p = 1.0 / (1.0 + 0.5f32.exp());
    let prob = vec![0.5, p];
    let cut = |spacing_weighted| {
        let o = GraphCutOptions {
            spacing_weighted,
            ..GraphCutOptions::default()
        };
        probability_graphcut(&image, &prob, &scribbles, None, &grid, &o)
            .unwrap()
            .labels
    };
    assert_eq!(cut(false), vec![1, 1]);
    assert_eq!(cut(true), vec![1, 0]);
    // along x, the finest spacing, the weight stays 1 either way
    let grid = Grid3::new([2, 1, 1], [1.0, 1.0, 4.0]).unwrap();
    let o = GraphCutOptions {
        spacing_weighted: true,
        ..GraphCutOptions::default()
    };
    let r = probability_graphcut(&image, &prob, &scribbles, None, &grid, &o).unwrap();
    assert_eq!(r.labels, vec![1, 1]);
}
