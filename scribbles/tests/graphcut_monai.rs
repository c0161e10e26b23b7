//! `histogram_graphcut` and `probability_graphcut` against MONAI Label 0.8.5's own scribbles
//! steps run in Python (`tests/python/monai_scribbles_ref.py`: MONAI's ScaleIntensityRange,
//! monailabel.scribbles.utils' histogram likelihood and Equation-7 unary, numpymaxflow's cut) on
//! synthetic volumes with scribbles and on a real CT crop: the labels must be equal voxel for
//! voxel. For the probability cut MONAI Label's steps get the model probability as `[1 - p, p]`
//! (its ISeg use of the same unary and cut).

mod common;

use ferrolabel_scribbles::{
    histogram_graphcut, probability_graphcut, GraphCutOptions, Grid3, HistogramOptions, Intensity,
    Roi, ScribbleValues, Seeds,
};
use rand::{Rng, SeedableRng};
use serde_json::json;

struct Case {
    name: &'static str,
    dims: [usize; 3],
    image: Vec<f32>,
    scribbles: Vec<u8>,
    opts: HistogramOptions,
    /// A model's foreground probability: cut with `probability_graphcut` instead.
    prob: Option<Vec<f32>>,
}

fn inside_ellipsoid(p: [usize; 3], c: [f32; 3], r: [f32; 3]) -> bool {
    (0..3)
        .map(|a| ((p[a] as f32 - c[a]) / r[a]).powi(2))
        .sum::<f32>()
        <= 1.0
}

/// A noisy soft-tissue background (around 0 HU), a brighter organ (an ellipsoid around 70 HU),
/// a bone-like block above the window, and an air pocket below it; foreground strokes in the
/// organ, background strokes around it.
fn synthetic(
    seed: u64,
    dims: [usize; 3],
    scribbles: ScribbleValues,
    fg_strokes: bool,
) -> (Vec<f32>, Vec<u8>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let c = [
        dims[0] as f32 * 0.45,
        dims[1] as f32 * 0.5,
        dims[2] as f32 * 0.5,
    ];
    let r = [
        dims[0] as f32 * 0.25,
        dims[1] as f32 * 0.3,
        dims[2] as f32 * 0.3,
    ];
    let mut image = Vec::new();
    let mut scrib = Vec::new();
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                let p = [x, y, z];
                let noise: f32 = rng.gen_range(-1.0..1.0) + rng.gen_range(-1.0..1.0);
                let v = if inside_ellipsoid(p, c, r) {
                    70.0 + 18.0 * noise
                } else if x + 4 >= dims[0] && y < dims[1] / 2 {
                    450.0 + 50.0 * noise
                } else if x < 3 && y < 4 {
                    -800.0 + 30.0 * noise
                } else {
                    0.0 + 25.0 * noise
                };
                image.push(v);
                let (cx, cy, cz) = (c[0] as usize, c[1] as usize, c[2] as usize);
                let in_organ = inside_ellipsoid(p, c, [r[0] * 0.7, r[1] * 0.7, r[2] * 0.7]);
                let s = if fg_strokes && in_organ && (y == cy || x == cx) && z % 3 == cz % 3 {
                    scribbles.foreground
                } else if (z == cz && y == 1)
                    || (x == 1 && z.abs_diff(cz) <= 2)
                    || (y + 2 == dims[1] && x % 2 == 0)
                {
                    scribbles.background
                } else if x == 0 && y == 0 {
                    1 // some other label value: not a scribble
                } else {
                    0
                };
                scrib.push(s);
            }
        }
    }
    (image, scrib)
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let dims = [40, 36, 24];
    let sv = ScribbleValues::default();
    let (image, scribbles) = synthetic(1, dims, sv, true);
    v.push(Case {
        name: "whole_image",
        dims,
        image: image.clone(),
        scribbles: scribbles.clone(),
        opts: HistogramOptions::default(),
        prob: None,
    });
    // a weak pairwise term: the histograms decide most voxels
    let mut opts = HistogramOptions::default();
    opts.cut.lamda = 0.1;
    v.push(Case {
        name: "whole_image_lamda0.1",
        dims,
        image,
        scribbles,
        opts,
        prob: None,
    });

    let (image, scribbles) = synthetic(2, dims, sv, true);
    let roi = Roi {
        start: [4, 3, 2],
        end: [33, 33, 21],
    };
    let mut opts = HistogramOptions::default();
    opts.cut.roi = Some(roi);
    v.push(Case {
        name: "roi",
        dims,
        image: image.clone(),
        scribbles: scribbles.clone(),
        opts,
        prob: None,
    });
    opts.cut.lamda = 0.2;
    v.push(Case {
        name: "roi_lamda0.2",
        dims,
        image,
        scribbles,
        opts,
        prob: None,
    });

    let (image, scribbles) = synthetic(3, dims, sv, false);
    let mut opts = HistogramOptions::default();
    opts.cut.roi = Some(Roi {
        start: [1, 1, 1],
        end: [30, 34, 23],
    });
    v.push(Case {
        name: "roi_no_foreground_strokes",
        dims,
        image,
        scribbles,
        opts,
        prob: None,
    });

    let sv105 = ScribbleValues::monai_default(104);
    let (image, scribbles) = synthetic(4, [30, 28, 20], sv105, true);
    let opts = HistogramOptions {
        num_bins: 50,
        cut: GraphCutOptions {
            lamda: 2.0,
            sigma: 0.2,
            scribbles: sv105,
            ..GraphCutOptions::default()
        },
    };
    v.push(Case {
        name: "bins50_lamda2_values105",
        dims: [30, 28, 20],
        image,
        scribbles,
        opts,
        prob: None,
    });

    // the real CT: liver strokes as foreground, strokes in the spleen, stomach and fat as background
    let (dims, hu, seg) = common::ct_crop([30, 20, 0], [94, 84, 30]);
    let scribbles: Vec<u8> = seg
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let (x, y, z) = (
                i % dims[0],
                (i / dims[0]) % dims[1],
                i / (dims[0] * dims[1]),
            );
            let stroke = z % 6 == 3 && (x % 11 == 5 || y == 40);
            match l {
                5 if stroke => sv.foreground,
                1 | 6 if stroke => sv.background,
                0 if stroke && x < 12 => sv.background,
                _ => 0,
            }
        })
        .collect();
    let mut opts = HistogramOptions::default();
    opts.cut.roi = Some(Roi {
        start: [6, 4, 2],
        end: [60, 62, 28],
    });
    v.push(Case {
        name: "real_ct",
        dims,
        image: hu.clone(),
        scribbles: scribbles.clone(),
        opts,
        prob: None,
    });
    opts.cut.lamda = 0.15;
    v.push(Case {
        name: "real_ct_lamda0.15",
        dims,
        image: hu.clone(),
        scribbles,
        opts,
        prob: None,
    });

    // a model that leaks from the liver (5) into the stomach (6); background strokes in the
    // stomach, a few foreground strokes in the liver
    let prob: Vec<f32> = seg
        .iter()
        .enumerate()
        .map(|(i, &l)| match l {
            5 => 0.9,
            6 => 0.6 + 0.1 * ((i % 7) as f32 / 7.0),
            1 => 0.2,
            _ => 0.03,
        })
        .collect();
    let scribbles: Vec<u8> = seg
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let (x, z) = (i % dims[0], i / (dims[0] * dims[1]));
            match l {
                6 if z % 4 == 1 && x % 3 == 0 => sv.background,
                5 if z == 15 && x % 10 == 0 => sv.foreground,
                _ => 0,
            }
        })
        .collect();
    for lamda in [1.0, 0.3] {
        let mut opts = HistogramOptions::default();
        opts.cut.lamda = lamda;
        v.push(Case {
            name: if lamda == 1.0 {
                "real_ct_model_leak"
            } else {
                "real_ct_model_leak_lamda0.3"
            },
            dims,
            image: hu.clone(),
            scribbles: scribbles.clone(),
            opts,
            prob: Some(prob.clone()),
        });
    }
    v
}

#[test]
fn same_labels_as_monai_label() {
    let Some(python) = common::python() else {
        return;
    };
    let cases = cases();
    let dir = tempfile::tempdir().unwrap();
    let mut params = Vec::new();
    for c in &cases {
        common::write_f32(&dir.path().join(format!("{}.image.f32", c.name)), &c.image);
        if let Some(p) = &c.prob {
            common::write_f32(&dir.path().join(format!("{}.prob.f32", c.name)), p);
        }
        std::fs::write(
            dir.path().join(format!("{}.scribbles.u8", c.name)),
            &c.scribbles,
        )
        .unwrap();
        let o = &c.opts.cut;
        let Intensity::Window { a_min, a_max } = o.intensity else {
            panic!("MONAI Label always windows")
        };
        let roi = o.roi.map(|r| {
            [
                r.start[0], r.end[0], r.start[1], r.end[1], r.start[2], r.end[2],
            ]
        });
        params.push(json!({
            "name": c.name, "dims": c.dims, "roi": roi, "bg": o.scribbles.background,
            "fg": o.scribbles.foreground, "num_bins": c.opts.num_bins, "lamda": o.lamda,
            "sigma": o.sigma, "window": [a_min, a_max],
            "likelihood": if c.prob.is_some() { "probability" } else { "histogram" },
        }));
    }
    std::fs::write(
        dir.path().join("params.json"),
        json!({ "cases": params }).to_string(),
    )
    .unwrap();
    common::run_py(&python, "monai_scribbles_ref.py", dir.path());

    for c in &cases {
        let grid = Grid3::new(c.dims, [1.0; 3]).unwrap();
        let cut = |opts: &HistogramOptions| match &c.prob {
            None => histogram_graphcut(&c.image, &c.scribbles, &grid, opts).unwrap(),
            Some(p) => {
                probability_graphcut(&c.image, p, &c.scribbles, None, &grid, &opts.cut).unwrap()
            }
        };
        let ours = cut(&c.opts);
        let theirs = common::read_u8(&dir.path().join(format!("{}.labels.u8", c.name)));
        assert_eq!(theirs.len(), grid.len());
        let roi = ours.roi;
        let mut differ = Vec::new();
        let (mut fg, mut outside_fg) = (0, 0);
        let mut k = 0;
        for z in 0..c.dims[2] {
            for y in 0..c.dims[1] {
                for x in 0..c.dims[0] {
                    let t = theirs[grid.index(x, y, z)];
                    let inside = (0..3).all(|a| (roi.start[a]..roi.end[a]).contains(&[x, y, z][a]));
                    if inside {
                        fg += ours.labels[k] as usize;
                        if ours.labels[k] != t {
                            differ.push([x, y, z]);
                        }
                        k += 1;
                    } else {
                        outside_fg += t as usize;
                    }
                }
            }
        }
        println!(
            "{}: {} voxels cut, {fg} foreground, {} differ from MONAI Label, MONAI Label's foreground outside the ROI: {outside_fg}",
            c.name,
            roi.len(),
            differ.len()
        );
        assert_eq!(
            outside_fg, 0,
            "{}: MONAI Label labels foreground outside the ROI",
            c.name
        );
        assert!(fg > 0 && fg < roi.len(), "{}: trivial result", c.name);
        assert!(
            differ.is_empty(),
            "{}: {} labels differ, first at {:?}",
            c.name,
            differ.len(),
            &differ[..differ.len().min(5)]
        );

        // with lamda 1 the scribbles never lose against 6 pairwise terms: hard seeds give the same cut
        if c.opts.cut.lamda <= 2.0 {
            let mut hard = c.opts;
            hard.cut.seeds = Seeds::Hard;
            let h = cut(&hard);
            assert_eq!(h, ours, "{}: hard seeds changed the cut", c.name);
        }
    }
}
