//! The max-flow against `numpymaxflow` (PyPI, pinned in scripts/requirements-torch.txt), the
//! Boykov–Kolmogorov solver MONAI Label's scribbles run, on random energies and on energies of
//! a real CT crop: the same minimum cut value, and the same labels wherever the cut is not a tie.
//!
//! numpymaxflow takes an image and a two-channel probability and builds its own capacities:
//! source `-ln max(p_bg, eps)`, sink `-ln max(p_fg, eps)`, and `lamda exp(-(Ip - Iq)^2 / 2 sigma^2)`
//! on the 6-neighbour edges. The test builds those capacities itself, cuts them with
//! `maxflow_grid`, and prices both labellings with the same capacities.

mod common;

use ferrolabel_scribbles::{maxflow_grid, Grid3, GridCapacities};
use rand::{Rng, SeedableRng};
use serde_json::json;

struct Case {
    name: String,
    dims: [usize; 3],
    image: Vec<f32>,
    p_bg: Vec<f32>,
    p_fg: Vec<f32>,
    lamda: f32,
    sigma: f32,
    /// Whether ties are impossible in practice (continuous random energies): then the labels
    /// must be equal everywhere.
    expect_identical: bool,
}

/// numpymaxflow's capacities of a case: (source, sink, [x, y, z] edges).
fn capacities(c: &Case) -> (Vec<f32>, Vec<f32>, [Vec<f32>; 3]) {
    let nl = |p: f32| -((p.max(f32::EPSILON) as f64).ln()) as f32;
    let source = c.p_bg.iter().map(|&p| nl(p)).collect();
    let sink = c.p_fg.iter().map(|&p| nl(p)).collect();
    let n = c.image.len();
    let step = [1, c.dims[0], c.dims[0] * c.dims[1]];
    let mut edges = [vec![0f32; n], vec![0f32; n], vec![0f32; n]];
    for (a, e) in edges.iter_mut().enumerate() {
        for i in 0..n - step[a] {
            let d = (c.image[i] - c.image[i + step[a]]).abs();
            e[i] = c.lamda * ((-(d * d) / (2.0 * c.sigma * c.sigma)) as f64).exp() as f32;
        }
    }
    (source, sink, edges)
}

fn random_case(seed: u64, dims: [usize; 3], lamda: f32, sigma: f32) -> Case {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = dims.iter().product();
    let prob = |rng: &mut rand::rngs::StdRng| -> f32 {
        match rng.gen_range(0..50) {
            0 => 0.0,
            1 => 1.0,
            _ => rng.gen::<f32>(),
        }
    };
    let p_bg: Vec<f32> = (0..n).map(|_| prob(&mut rng)).collect();
    let p_fg: Vec<f32> = (0..n).map(|_| prob(&mut rng)).collect();
    // a smooth ramp plus noise, so that some edges are strong and some weak
    let image = (0..n)
        .map(|i| {
            let x = (i % dims[0]) as f32 / dims[0] as f32;
            0.5 * x + 0.5 * rng.gen::<f32>()
        })
        .collect();
    Case {
        name: format!("random{seed}"),
        dims,
        image,
        p_bg,
        p_fg,
        lamda,
        sigma,
        expect_identical: true,
    }
}

/// Energies of the real CT (`data/totalseg/example_ct_sm.nii.gz`, a 64×64×30 crop around the
/// liver): intensities in MONAI Label's window -300..200 HU → [0, 1], a liver likelihood from
/// the HU value, and the liver core / far corners as seeds (probability exactly 1 / 0).
fn ct_case(lamda: f32) -> Case {
    let (dims, hu, seg) = common::ct_crop([30, 20, 0], [94, 84, 30]);
    let image: Vec<f32> = hu
        .iter()
        .map(|&v| ((v + 300.0) / 500.0).clamp(0.0, 1.0))
        .collect();
    let mut p_fg: Vec<f32> = hu
        .iter()
        .map(|&v| (0.05 + 0.9 * (-((v - 45.0) / 40.0).powi(2) / 2.0).exp()).clamp(0.0, 1.0))
        .collect();
    for (i, &l) in seg.iter().enumerate() {
        let (x, y) = (i % dims[0], (i / dims[0]) % dims[1]);
        if l == 5 && x % 9 == 0 && y % 7 == 0 {
            p_fg[i] = 1.0;
        }
        if x < 3 && y < 3 {
            p_fg[i] = 0.0;
        }
    }
    let p_bg = p_fg.iter().map(|&p| 1.0 - p).collect();
    Case {
        name: format!("ct_lamda{lamda}"),
        dims,
        image,
        p_bg,
        p_fg,
        lamda,
        sigma: 0.1,
        expect_identical: false,
    }
}

#[test]
fn same_minimum_cut_as_numpymaxflow() {
    let Some(python) = common::python() else {
        return;
    };
    let cases = vec![
        random_case(1, [21, 17, 13], 1.0, 0.1),
        random_case(2, [9, 30, 7], 3.0, 0.3),
        random_case(3, [16, 16, 16], 1.2, 0.5),
        random_case(4, [40, 3, 11], 0.2, 0.05),
        ct_case(1.0),
        ct_case(5.0),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut params = Vec::new();
    for c in &cases {
        let probs: Vec<f32> = c.p_bg.iter().chain(&c.p_fg).copied().collect();
        common::write_f32(&dir.path().join(format!("{}.image.f32", c.name)), &c.image);
        common::write_f32(&dir.path().join(format!("{}.prob.f32", c.name)), &probs);
        params.push(json!({"name": c.name, "dims": c.dims, "lamda": c.lamda, "sigma": c.sigma}));
    }
    std::fs::write(
        dir.path().join("params.json"),
        json!({ "cases": params }).to_string(),
    )
    .unwrap();
    common::run_py(&python, "numpymaxflow_ref.py", dir.path());

    for c in &cases {
        let (source, sink, edges) = capacities(c);
        let caps = GridCapacities {
            source: &source,
            sink: &sink,
            edges: [&edges[0], &edges[1], &edges[2]],
        };
        let grid = Grid3::new(c.dims, [1.0; 3]).unwrap();
        let cut = maxflow_grid(&grid, &caps).unwrap();
        let theirs = common::read_u8(&dir.path().join(format!("{}.labels.u8", c.name)));
        assert_eq!(theirs.len(), grid.len());
        let e_ours = common::cut_energy(c.dims, &caps, &cut.source_side);
        let e_theirs = common::cut_energy(c.dims, &caps, &theirs);
        let tol = 1e-6 * e_theirs.max(1.0);
        let differing = cut
            .source_side
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a != b)
            .count();
        let fg = cut.source_side.iter().filter(|&&l| l == 1).count();
        println!(
            "{}: {} voxels, flow {:.6}, cut {e_ours:.6}, numpymaxflow's cut {e_theirs:.6}, {fg} foreground, {differing} labels differ",
            c.name,
            grid.len(),
            cut.flow
        );
        assert!(
            (e_ours - e_theirs).abs() <= tol,
            "{}: our cut {e_ours} vs numpymaxflow's {e_theirs}",
            c.name
        );
        assert!(
            (cut.flow - e_ours).abs() <= tol,
            "{}: flow {} vs its cut {e_ours}",
            c.name,
            cut.flow
        );
        // a non-trivial cut: both sides non-empty
        assert!(fg > 0 && fg < grid.len(), "{}: trivial cut", c.name);
        if c.expect_identical {
            assert_eq!(differing, 0, "{}: labels differ without a tie", c.name);
        }
    }
}
