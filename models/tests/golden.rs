//! Fidelity against golden fixtures made by real MONAI 1.4.0 (tests/golden/make_golden.py).
//!
//! Same libtorch version and thread count as the fixtures, so the tolerances are the
//! "same libtorch, same threads" column of docs/bundle.md §7: transforms bit-exact (or
//! within 1e-6), logits within 1e-4, labels identical on >= 99.99% of voxels, and every
//! mismatching voxel must have a top-2 probability gap below 1e-4 in MONAI's own output.
//! Where the fixture keeps MONAI's blended sliding-window logits (all channels of the five
//! cases within one window, the first 8 channels of the lowres CT, which spans 8 overlapping
//! windows), those are compared too (<= 1e-4), and every fixture's label map must hold many
//! distinct labels with no label covering most of the volume, so agreement cannot be trivial.

use ferrolabel_imaging::{read_nifti, Limits};
use ferrolabel_models::bundle::{Bundle, Resolution};
use ferrolabel_models::inferer::window::{gaussian_importance_map, windows};
use ferrolabel_models::inferer::{predict_labels, BlendMode, SlidingWindow};
use ferrolabel_models::network::{weights, SegResNet};
use ferrolabel_models::pipeline::{invert_labels, labels_to_vec, preprocess, volume_tensor};
use ferrolabel_models::transforms::{intensity, orientation, spacing};
use ferrolabel_models::Precision;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{nn, Kind, Tensor};

fn golden_dir() -> PathBuf {
    let dir = std::env::var_os("FERROLABEL_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/golden")));
    assert!(
        dir.join("manifest.json").exists(),
        "golden fixtures missing at {}: run `.venv/bin/python tests/golden/make_golden.py target/golden` \
         (scripts/test.sh does this)",
        dir.display()
    );
    dir
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(golden_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn set_threads() {
    let threads = manifest()["threads"].as_i64().unwrap();
    tch::set_num_threads(threads as i32);
}

fn load(path: PathBuf) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    f64::try_from(
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max(),
    )
    .unwrap()
}

fn affine_of(v: &serde_json::Value) -> [[f64; 4]; 4] {
    let mut a = [[0.0; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            a[i][j] = v[i][j].as_f64().unwrap();
        }
    }
    a
}

fn affine_diff(a: &[[f64; 4]; 4], b: &[[f64; 4]; 4]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn net_for(bundle: &Bundle, res: Resolution) -> (nn::VarStore, SegResNet) {
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = SegResNet::new(&vs.root(), &bundle.network);
    weights::load_strict(&mut vs, &bundle.weights_path(res)).unwrap();
    // the engine's exact path: channels-last fp32 inference copy
    net.set_inference(Some(Precision::Fp32));
    (vs, net)
}

#[test]
fn network_logits_match_monai_on_one_window() {
    set_threads();
    let g = golden_dir();
    let bundle = Bundle::open(&g.join("bundle_full")).unwrap();
    let (vs, net) = net_for(&bundle, Resolution::High);
    assert_eq!(SegResNet::num_parameters(&vs), 18_799_401);
    let f = load(g.join("unit_full.safetensors"));
    let y = tch::no_grad(|| net.forward_t(&f["input"], false));
    let d = max_abs_diff(&y, &f["logits"]);
    eprintln!("full network, one 96^3 window, channels-last: max |logit diff| = {d:e}");
    assert!(d <= 1e-4, "logits differ by {d}");
    // the variable-store path (training's) too
    net.set_inference(None);
    let y = tch::no_grad(|| net.forward_t(&f["input"], false));
    let d = max_abs_diff(&y, &f["logits"]);
    eprintln!("full network, one 96^3 window, default layout: max |logit diff| = {d:e}");
    assert!(d <= 1e-4, "logits differ by {d}");
}

#[test]
fn weights_load_from_pt_wrapped_pt_and_safetensors_identically() {
    let g = golden_dir();
    let bundle = Bundle::open(&g.join("bundle_full")).unwrap();
    let mut first: Option<Vec<(String, Tensor)>> = None;
    for f in ["full_bare.pt", "full_wrapped.pt", "full.safetensors"] {
        let mut vs = nn::VarStore::new(tch::Device::Cpu);
        let _net = SegResNet::new(&vs.root(), &bundle.network);
        weights::load_strict(&mut vs, &g.join("weights").join(f)).unwrap();
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        match &first {
            None => first = Some(vars),
            Some(prev) => {
                for ((n1, t1), (n2, t2)) in prev.iter().zip(&vars) {
                    assert_eq!(n1, n2);
                    assert!(t1.equal(t2), "{f}: {n1} differs");
                }
            }
        }
    }
}

#[test]
fn strict_loading_names_the_offending_key() {
    let g = golden_dir();
    let bundle = Bundle::open(&g.join("bundle_full")).unwrap();
    for (file, needle) in [
        ("missing_key.pt", "up_layers.1.0.norm2.bias"),
        ("extra_key.pt", "extra.weight"),
        ("bad_shape.pt", "conv_final.2.conv.bias"),
    ] {
        let mut vs = nn::VarStore::new(tch::Device::Cpu);
        let _net = SegResNet::new(&vs.root(), &bundle.network);
        let err = weights::load_strict(&mut vs, &g.join("weights").join(file))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle),
            "{file}: error {err:?} does not name {needle}"
        );
    }
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let _net = SegResNet::new(&vs.root(), &bundle.network);
    let err = weights::load_strict(&mut vs, &g.join("weights/nope.pt"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found"), "{err}");
}

/// Compares two label maps; returns (agreement, worst gap at a mismatch).
fn compare_labels(ours: &Tensor, theirs: &Tensor, gap: Option<&Tensor>) -> (f64, f64) {
    assert_eq!(ours.size(), theirs.size());
    let diff = ours
        .to_kind(Kind::Int64)
        .ne_tensor(&theirs.to_kind(Kind::Int64));
    let n = diff.numel() as f64;
    let bad = i64::try_from(diff.sum(Kind::Int64)).unwrap() as f64;
    let worst = match gap {
        Some(g) if bad > 0.0 => f64::try_from(g.masked_select(&diff).max()).unwrap(),
        _ => 0.0,
    };
    (1.0 - bad / n, worst)
}

/// Fewest distinct labels a fixture's label map may hold. make_golden.py's weights give 32 to
/// 72 per case (its manifest records each count); without its final-weight scaling they gave
/// 7 to 29, mostly below this bound.
const MIN_DISTINCT_LABELS: usize = 25;
/// Largest share of the voxels one label may cover.
const MAX_LARGEST_SHARE: f64 = 0.6;

/// Asserts that a label map is not near-constant: at least [`MIN_DISTINCT_LABELS`] labels and
/// none covering more than [`MAX_LARGEST_SHARE`] of the voxels.
fn assert_many_labels(what: &str, labels: &Tensor) {
    let counts = labels
        .to_kind(Kind::Int64)
        .view([-1])
        .bincount::<Tensor>(None, 256);
    let counts: Vec<i64> = Vec::try_from(counts).unwrap();
    let distinct = counts.iter().filter(|&&c| c > 0).count();
    let largest = *counts.iter().max().unwrap() as f64 / labels.numel() as f64;
    eprintln!(
        "{what}: {distinct} distinct labels, the largest covers {:.1}%",
        largest * 100.0
    );
    assert!(
        distinct >= MIN_DISTINCT_LABELS,
        "{what}: only {distinct} distinct labels (at least {MIN_DISTINCT_LABELS} required)"
    );
    assert!(
        largest <= MAX_LARGEST_SHARE,
        "{what}: one label covers {largest} of the voxels"
    );
}

/// Blends the first `channels` logits of the windows `predict_labels` ran (`outputs`, in its
/// call order, on an input of spatial `size`) the way MONAI's `SlidingWindowInferer` does:
/// gaussian-weighted sum over the windows / weight sum, padding cropped. Returns
/// `[channels, X, Y, Z]`, to compare with MONAI's blended logits.
fn blend(outputs: &[Tensor], size: [i64; 3], channels: i64) -> Tensor {
    let sw = SlidingWindow::bundle_default();
    let sigma = match sw.blend {
        BlendMode::Gaussian { sigma_scale } => sigma_scale,
        BlendMode::Constant => unreachable!("the bundle blends with a gaussian"),
    };
    let work: Vec<i64> = (0..3).map(|i| size[i].max(sw.roi[i])).collect();
    let before: Vec<i64> = (0..3).map(|i| (work[i] - size[i]) / 2).collect();
    let wins = windows([work[0], work[1], work[2]], sw.roi, sw.overlap);
    assert_eq!(outputs.len(), wins.len(), "one network call per window");
    let weight = gaussian_importance_map(sw.roi, sigma);
    let opts = (Kind::Float, tch::Device::Cpu);
    let acc = Tensor::zeros([channels, work[0], work[1], work[2]], opts);
    let count = Tensor::zeros([1, work[0], work[1], work[2]], opts);
    for (w, y) in wins.iter().zip(outputs) {
        let region = |t: &Tensor| {
            t.narrow(1, w[0], sw.roi[0])
                .narrow(2, w[1], sw.roi[1])
                .narrow(3, w[2], sw.roi[2])
        };
        let _ = region(&acc).g_add_(&(y.squeeze_dim(0) * &weight));
        let _ = region(&count).g_add_(&weight.unsqueeze(0));
    }
    (acc / count)
        .narrow(1, before[0], size[0])
        .narrow(2, before[1], size[1])
        .narrow(3, before[2], size[2])
}

fn run_case(name: &str) {
    set_threads();
    let g = golden_dir();
    let m = manifest();
    let case = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone();
    let f = load(g.join("cases").join(format!("{name}.safetensors")));
    let input = g.join(case["input"].as_str().unwrap());
    let input = if input.exists() {
        input
    } else {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .join(case["input"].as_str().unwrap().trim_start_matches("../../"))
    };
    let vol = read_nifti(&input, &Limits::default()).unwrap();
    let highres = case["highres"].as_bool().unwrap();
    let res = Resolution::from_highres(highres);

    // stage by stage
    let shape = [vol.dims[0] as i64, vol.dims[1] as i64, vol.dims[2] as i64];
    let orient = orientation::plan(&vol.affine, shape).unwrap();
    let x = orient.apply(&volume_tensor(&vol));
    let d = max_abs_diff(&x.squeeze_dim(0), &f["orient"]);
    assert!(d <= 1e-6, "{name}: orientation differs by {d}");
    let a1 = orient.new_affine(&vol.affine);
    let ad = affine_diff(&a1, &affine_of(&case["affines"]["orient"]));
    assert!(ad <= 1e-6, "{name}: orientation affine differs by {ad}");
    let s = x.size();
    let sp = spacing::plan(&a1, [s[1], s[2], s[3]], res.pixdim()).unwrap();
    let y = sp.apply(&x, spacing::Interp::Bilinear);
    let d_sp = max_abs_diff(&y.squeeze_dim(0), &f["spacing"]);
    let ad = affine_diff(&sp.dst_affine, &affine_of(&case["affines"]["spacing"]));
    assert!(ad <= 1e-6, "{name}: spacing affine differs by {ad}");
    let z = intensity::normalize_nonzero(&y);
    let d_n = max_abs_diff(&z.squeeze_dim(0), &f["normalize"]);
    let w = intensity::scale_to_unit_range(&z);
    let d_s = max_abs_diff(&w.squeeze_dim(0), &f["scale"]);
    eprintln!("{name}: spacing {d_sp:e}, normalize {d_n:e}, scale {d_s:e}");
    assert!(
        d_sp <= 1e-6 && d_n <= 1e-6 && d_s <= 1e-6,
        "{name}: transforms differ"
    );

    // network + sliding window + argmax on the network grid
    let bundle_dir = if name.ends_with("_full") {
        "bundle_full"
    } else {
        "bundle_small"
    };
    let bundle = Bundle::open(&g.join(bundle_dir)).unwrap();
    let (_vs, net) = net_for(&bundle, res);
    let prepared = preprocess(&vol, res.pixdim()).unwrap();
    let input = prepared.image.unsqueeze(0);
    let mut never_cancel = |_: usize, _: usize| true;
    // MONAI's blended logits: all channels of the cases within one window, the first channels
    // of a case spanning several windows; the window outputs are kept to blend ours alike
    let theirs = f.get("logits").or_else(|| f.get("logits_head"));
    let keep = theirs.map_or(0, |t| t.size()[0]);
    let mut outputs = Vec::new();
    let labels = tch::no_grad(|| {
        predict_labels(
            &input,
            &SlidingWindow::bundle_default(),
            105,
            |b| {
                let y = net.forward_t(b, false);
                if keep > 0 {
                    // predict_labels weights its batch in place: keep a copy
                    outputs.push(y.narrow(1, 0, keep).copy());
                }
                Ok(y)
            },
            &mut never_cancel,
        )
    })
    .unwrap();
    assert_many_labels(&format!("{name} (MONAI)"), &f["labels_net"]);
    assert_many_labels(&format!("{name} (inverted, MONAI)"), &f["labels_inv"]);
    assert_many_labels(&format!("{name} (ferrolabel)"), &labels);
    if let Some(theirs) = theirs {
        let sz = input.size();
        let ours = blend(&outputs, [sz[2], sz[3], sz[4]], keep);
        let d = max_abs_diff(&ours, theirs);
        let range = f64::try_from(theirs.abs().max()).unwrap();
        eprintln!(
            "{name}: blended logits ({keep} channels, {} windows, |max| {range:.1}) differ by at most {d:e}",
            outputs.len()
        );
        assert!(d <= 1e-4, "{name}: blended logits differ by {d}");
    }
    let (agree, worst) = compare_labels(&labels, &f["labels_net"], Some(&f["gap"]));
    eprintln!(
        "{name}: network-grid labels agree on {:.6}%, worst gap at a mismatch {worst:e}",
        agree * 100.0
    );
    assert!(agree >= 0.9999, "{name}: labels agree on only {agree}");
    assert!(
        worst < 1e-4,
        "{name}: a mismatch where MONAI's top-2 gap is {worst}"
    );

    // inversion to the input grid
    let back = invert_labels(&labels, &prepared).unwrap();
    let (agree_inv, _) = compare_labels(&back, &f["labels_inv"], None);
    eprintln!("{name}: inverted labels agree on {:.6}%", agree_inv * 100.0);
    assert!(
        agree_inv >= 0.9999,
        "{name}: inverted labels agree on only {agree_inv}"
    );
    assert_eq!(labels_to_vec(&back).unwrap().len(), vol.data.len());
}

#[test]
fn the_fixture_keeps_logits_for_the_five_small_cases_and_a_multi_window_one() {
    let g = golden_dir();
    let f = load(g.join("cases/ct_lowres_full.safetensors"));
    assert_eq!(
        f["logits_head"].size(),
        [8, 122, 101, 112],
        "8 channels, 8 windows"
    );
    for name in [
        "lps_u16",
        "permuted",
        "small_lowres",
        "oblique",
        "half_ties",
    ] {
        let f = load(g.join("cases").join(format!("{name}.safetensors")));
        assert!(f.contains_key("logits"), "{name}: no logits in the fixture");
        assert!(
            f.contains_key("gap_inv"),
            "{name}: no inverted gap in the fixture"
        );
    }
}

#[test]
fn ct_lowres_full_network() {
    run_case("ct_lowres_full");
}

#[test]
fn ct_highres() {
    run_case("ct_highres_small");
}

#[test]
fn lps_uint16_with_intercept_anisotropic() {
    run_case("lps_u16");
}

#[test]
fn permuted_axes() {
    run_case("permuted");
}

#[test]
fn smaller_than_the_window_lowres() {
    run_case("small_lowres");
}

#[test]
fn oblique_ten_degrees() {
    run_case("oblique");
}

#[test]
fn half_voxel_ties_in_nearest_inversion() {
    run_case("half_ties");
}
