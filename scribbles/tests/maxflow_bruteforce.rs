//! The max-flow against exhaustive search on tiny grids: every labelling of up to 12 voxels is
//! tried, the cheapest one's cost must equal the flow, and the returned cut must cost that much.

mod common;

use ferrolabel_scribbles::{maxflow_grid, Error, Grid3, GridCapacities};
use rand::{Rng, SeedableRng};

fn random_caps(rng: &mut rand::rngs::StdRng, n: usize, with_inf: bool) -> [Vec<f32>; 5] {
    let mut v = |scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                if rng.gen_bool(0.15) {
                    0.0
                } else {
                    rng.gen::<f32>() * scale
                }
            })
            .collect()
    };
    let (mut s, mut t) = (v(3.0), v(3.0));
    let (ex, ey, ez) = (v(2.0), v(2.0), v(2.0));
    if with_inf {
        s[0] = f32::INFINITY;
        t[0] = 0.5;
        t[n - 1] = f32::INFINITY;
    }
    [s, t, ex, ey, ez]
}

#[test]
fn flow_equals_exhaustive_minimum_cut() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let shapes = [
        [2, 2, 3],
        [3, 2, 2],
        [2, 3, 2],
        [12, 1, 1],
        [1, 1, 12],
        [3, 4, 1],
        [2, 2, 2],
    ];
    let mut cases = 0;
    for round in 0..40 {
        for dims in shapes {
            let grid = Grid3::new(dims, [1.0; 3]).unwrap();
            let n = grid.len();
            let [s, t, ex, ey, ez] = random_caps(&mut rng, n, round % 4 == 3);
            let caps = GridCapacities {
                source: &s,
                sink: &t,
                edges: [&ex, &ey, &ez],
            };
            let cut = maxflow_grid(&grid, &caps).unwrap();
            let mut best = f64::INFINITY;
            for bits in 0u32..(1 << n) {
                let labels: Vec<u8> = (0..n).map(|i| ((bits >> i) & 1) as u8).collect();
                best = best.min(common::cut_energy(dims, &caps, &labels));
            }
            let got = common::cut_energy(dims, &caps, &cut.source_side);
            assert!(
                (cut.flow - best).abs() <= 1e-5 * best.max(1.0),
                "{dims:?}: flow {} vs minimum {best}",
                cut.flow
            );
            assert!(
                (got - best).abs() <= 1e-5 * best.max(1.0),
                "{dims:?}: cut costs {got}, minimum {best}"
            );
            cases += 1;
        }
    }
    assert_eq!(cases, 280);
}

#[test]
fn bad_capacities_are_refused() {
    let grid = Grid3::new([2, 2, 2], [1.0; 3]).unwrap();
    let ok = vec![1.0f32; 8];
    let mut neg = ok.clone();
    neg[3] = -1.0;
    let short = vec![1.0f32; 7];
    let e = maxflow_grid(
        &grid,
        &GridCapacities {
            source: &neg,
            sink: &ok,
            edges: [&ok, &ok, &ok],
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Value { index: 3, .. }), "{e}");
    let e = maxflow_grid(
        &grid,
        &GridCapacities {
            source: &ok,
            sink: &ok,
            edges: [&ok, &short, &ok],
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Size {
                got: 7,
                expected: 8,
                ..
            }
        ),
        "{e}"
    );
    let mut inf = ok.clone();
    inf[0] = f32::INFINITY;
    let e = maxflow_grid(
        &grid,
        &GridCapacities {
            source: &inf,
            sink: &inf,
            edges: [&ok, &ok, &ok],
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Value { index: 0, .. }), "{e}");
    let e = maxflow_grid(
        &grid,
        &GridCapacities {
            source: &ok,
            sink: &ok,
            edges: [&ok, &ok, &inf],
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Value { index: 0, .. }), "{e}");
}
