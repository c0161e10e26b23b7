//! Scribbles models end to end against the real binary (`docs/scribbles.md`): `/info/`, both
//! methods on a small synthetic CT, what changes in the answer (the selected structure, inside
//! the ROI only), the probability cache, the `.bin` upload and the bad inputs (422, nothing
//! stored). One server for the whole file.

use crate::common::{boundary_of, detail, parse_multipart, small_ct_bytes, Opts};
use crate::server::Server;
use ferrolabel_imaging::{encode_nifti_f32, read_volume_bytes, Limits};
use serde_json::{json, Value};

/// A bad request: what it is, its params, its `label` part and a word its detail must hold.
type BadCase<'a> = (&'a str, Value, Option<(&'a str, Vec<u8>)>, &'a str);

/// The grid of `small_ct_bytes`.
const DIMS: [usize; 3] = [48, 48, 24];
const AFFINE: [[f64; 4]; 4] = [
    [2.0, 0.0, 0.0, -48.0],
    [0.0, 2.0, 0.0, -48.0],
    [0.0, 0.0, 2.0, -24.0],
    [0.0, 0.0, 0.0, 1.0],
];
/// Upload values, as Slicer numbers its segments (`label_info`).
const LIVER: u8 = 1;
const SPLEEN: u8 = 2;
const BG: u8 = 3;
const FG: u8 = 4;
/// `[i0, i1, j0, j1, k0, k1]`, ends exclusive.
const ROI: [usize; 6] = [10, 38, 10, 38, 4, 20];

fn idx(i: usize, j: usize, k: usize) -> usize {
    i + DIMS[0] * (j + DIMS[1] * k)
}

fn in_roi(i: usize, j: usize, k: usize) -> bool {
    (ROI[0]..ROI[1]).contains(&i) && (ROI[2]..ROI[3]).contains(&j) && (ROI[4]..ROI[5]).contains(&k)
}

/// Whether voxel (i, j, k) is inside the bright sphere of `small_ct_bytes` (r < 14).
fn in_sphere(i: usize, j: usize, k: usize) -> bool {
    let (x, y, z) = (i as f32 - 24.0, j as f32 - 24.0, k as f32 - 12.0);
    (x * x + y * y + 4.0 * z * z).sqrt() < 14.0
}

/// What Slicer uploads: the current segmentation (a "liver" that misses half of the sphere and
/// leaks outside it at the ROI's far corner and outside the ROI, a "spleen" inside the sphere),
/// with the scribbles layers painted over it.
fn upload() -> Vec<u8> {
    let mut v = vec![0u8; DIMS.iter().product()];
    for k in 0..DIMS[2] {
        for j in 0..DIMS[1] {
            for i in 0..DIMS[0] {
                let g = idx(i, j, k);
                if in_sphere(i, j, k) && i < 24 {
                    v[g] = LIVER;
                }
                // a leak inside the ROI and a piece outside it
                if (30..36).contains(&i) && (30..36).contains(&j) && (14..18).contains(&k) {
                    v[g] = LIVER;
                }
                if (2..6).contains(&i) && (2..6).contains(&j) && (1..3).contains(&k) {
                    v[g] = LIVER;
                }
                if (26..30).contains(&i) && (26..30).contains(&j) && (12..15).contains(&k) {
                    v[g] = SPLEEN;
                }
            }
        }
    }
    // foreground strokes across the sphere, background strokes in the shell and the air
    let mut paint = |i: usize, j: usize, k: usize, value: u8| {
        if in_sphere(i, j, k) == (value == FG) {
            v[idx(i, j, k)] = value;
        }
    };
    for i in 16..33 {
        paint(i, 24, 12, FG);
        paint(i, 22, 11, FG);
    }
    for j in 12..37 {
        paint(12, j, 12, BG);
        paint(36, j, 12, BG);
    }
    for i in 28..37 {
        paint(i, 33, 16, BG);
    }
    v
}

fn nifti(labels: &[u8], dims: [usize; 3], affine: &[[f64; 4]; 4]) -> Vec<u8> {
    let data: Vec<f32> = labels.iter().map(|&x| x as f32).collect();
    encode_nifti_f32(&data, dims, affine, true).unwrap()
}

fn label_info() -> Value {
    json!([
        {"name": "liver", "id": LIVER}, {"name": "spleen", "id": SPLEEN},
        {"name": "background_scribbles", "id": BG}, {"name": "foreground_scribbles", "id": FG}
    ])
}

fn params(extra: Value) -> Value {
    let mut p = json!({
        "roi": ROI, "label_info": label_info(), "selected_label_name": "liver",
        "client_id": "user-xyz", "result_extension": ".nii.gz", "result_dtype": "uint8",
        "lamda": 1.0, "sigma": 0.1, "device": "cpu"
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

fn post(
    s: &Server,
    path: &str,
    p: &Value,
    label: Option<(&str, Vec<u8>)>,
) -> reqwest::blocking::Response {
    let mut form = reqwest::blocking::multipart::Form::new().text("params", p.to_string());
    if let Some((name, bytes)) = label {
        form = form.part(
            "label",
            reqwest::blocking::multipart::Part::bytes(bytes).file_name(name.to_string()),
        );
    }
    s.http.post(s.url(path)).multipart(form).send().unwrap()
}

/// Runs a correction (multipart answer) and returns the params and the decoded mask.
fn correct(s: &Server, path: &str, p: &Value, label: (&str, Vec<u8>)) -> (Value, Vec<u8>) {
    let r = post(s, path, p, Some(label));
    assert_eq!(r.status(), 200, "{path}");
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let body = r.bytes().unwrap();
    let parts = parse_multipart(&body, &boundary_of(&ct));
    assert_eq!(parts.len(), 2);
    let params: Value = serde_json::from_slice(&parts[0].body).unwrap();
    assert!(
        parts[1].headers.contains(".nii.gz\""),
        "{}",
        parts[1].headers
    );
    let vol = read_volume_bytes(&parts[1].body, "x.nii.gz", &Limits::default()).unwrap();
    assert_eq!(vol.dims, DIMS);
    let mask: Vec<u8> = vol.data.iter().map(|&x| x as u8).collect();
    assert!(
        vol.data.iter().all(|&x| x == 0.0 || x == 1.0),
        "a binary mask"
    );
    (params, mask)
}

/// The answer is the selected structure only: as uploaded outside the ROI, never over another
/// structure, scribbles obeyed; and inside the ROI it follows the sphere.
fn check_structure(up: &[u8], mask: &[u8], what: &str) -> usize {
    let mut changed = 0;
    for k in 0..DIMS[2] {
        for j in 0..DIMS[1] {
            for i in 0..DIMS[0] {
                let g = idx(i, j, k);
                let before = u8::from(up[g] == LIVER || up[g] == FG);
                if !in_roi(i, j, k) {
                    assert_eq!(
                        mask[g], before,
                        "{what}: ({i},{j},{k}) outside the ROI changed"
                    );
                    continue;
                }
                if up[g] == SPLEEN {
                    assert_eq!(mask[g], 0, "{what}: took over the spleen at ({i},{j},{k})");
                }
                if up[g] == FG {
                    assert_eq!(
                        mask[g], 1,
                        "{what}: foreground scribble lost at ({i},{j},{k})"
                    );
                }
                if up[g] == BG {
                    assert_eq!(
                        mask[g], 0,
                        "{what}: background scribble kept at ({i},{j},{k})"
                    );
                }
                changed += usize::from(mask[g] != u8::from(up[g] == LIVER));
            }
        }
    }
    changed
}

#[test]
fn scribbles_models() {
    let mut opts = Opts::new();
    opts.with_example = false;
    opts.files.push(("small.nii.gz".into(), small_ct_bytes()));
    let s = Server::start(opts);

    // /info/: both models, type scribbles, the bundle's labels, MONAI Label-like config
    let (st, info) = s.get_json("/info/");
    assert_eq!(st, 200);
    let seg_labels = info["models"]["wholeBody_ct_segmentation"]["labels"].clone();
    for (name, key) in [
        ("Histogram+GraphCut", "num_bins"),
        ("Model+GraphCut", "lamda"),
    ] {
        let m = &info["models"][name];
        assert_eq!(m["type"], "scribbles", "{name}");
        assert_eq!(m["labels"], seg_labels, "{name}");
        assert_eq!(m["dimension"], 3);
        assert!(m["config"][key].is_number(), "{name}: {}", m["config"]);
        assert_eq!(m["config"]["device"], json!(["cpu"]));
    }
    assert_eq!(
        info["models"]["Histogram+GraphCut"]["config"]["num_bins"],
        64
    );
    assert_eq!(
        info["models"]["Model+GraphCut"]["config"]["highres"],
        json!([true, false])
    );
    assert_eq!(
        info["models"]["Model+GraphCut"]["config"]["histogram_weight"],
        0.5
    );

    let up = upload();
    let upload_nii = || {
        (
            "/tmp/slicer-monai-label/tmpab12.nii.gz",
            nifti(&up, DIMS, &AFFINE),
        )
    };

    // Histogram+GraphCut, the model name quoted as the clients quote it
    let (p, hist) = correct(
        &s,
        "/infer/Histogram%2BGraphCut?image=small",
        &params(json!({})),
        upload_nii(),
    );
    assert_eq!(p["label_names"], json!({"liver": 1}));
    assert_eq!(p["scribbles"]["method"], "Histogram+GraphCut");
    let changed = check_structure(&up, &hist, "histogram");
    assert!(changed > 0, "the correction changed nothing");
    let (mut sphere, mut sphere_on, mut air_on) = (0, 0, 0);
    for k in ROI[4]..ROI[5] {
        for j in ROI[2]..ROI[3] {
            for i in ROI[0]..ROI[1] {
                let g = idx(i, j, k);
                if up[g] == SPLEEN {
                    continue;
                }
                if in_sphere(i, j, k) {
                    sphere += 1;
                    sphere_on += usize::from(hist[g] == 1);
                } else {
                    air_on += usize::from(hist[g] == 1);
                }
            }
        }
    }
    assert!(sphere_on * 10 >= sphere * 9, "sphere {sphere_on}/{sphere}");
    assert!(air_on * 20 < sphere, "outside the sphere {air_on}");

    // Model+GraphCut: probabilities from the engine once, then from the cache
    let path = "/infer/Model+GraphCut?image=small";
    let (p1, m1) = correct(&s, path, &params(json!({})), upload_nii());
    assert_eq!(p1["scribbles"]["probability_cached"], false);
    assert!(p1["scribbles"]["windows"].as_u64().unwrap() >= 1);
    check_structure(&up, &m1, "model");
    let (p2, m2) = correct(&s, path, &params(json!({})), upload_nii());
    assert_eq!(p2["scribbles"]["probability_cached"], true, "{p2}");
    assert_eq!(p2["scribbles"]["windows"], 0);
    assert_eq!(m1, m2, "cached probabilities give the same cut");
    // a smaller ROI inside the cached one is answered from the cache too
    let small_roi = json!({"roi": [38, 12, 12, 30, 6, 18]});
    let (p3, _) = correct(&s, path, &params(small_roi), upload_nii());
    assert_eq!(p3["scribbles"]["probability_cached"], true);

    // OHIF's .bin upload (raw uint8, Fortran order) gives the same answer as the NIfTI upload
    let (_, hist_bin) = correct(
        &s,
        "/infer/histogram+graphcut?image=small",
        &params(json!({})),
        ("scribbles.bin", up.clone()),
    );
    assert_eq!(hist_bin, hist);

    // output=json: the params alone
    let r = post(
        &s,
        "/infer/Histogram+GraphCut?image=small&output=json",
        &params(json!({})),
        Some(upload_nii()),
    );
    assert_eq!(r.status(), 200);
    let pj: Value = r.json().unwrap();
    assert_eq!(pj["label_names"], json!({"liver": 1}));

    // bad input: 422 with a detail
    let mut shifted = AFFINE;
    shifted[0][3] += 10.0;
    let no_scribbles: Vec<u8> = up
        .iter()
        .map(|&v| if v == BG || v == FG { 0 } else { v })
        .collect();
    let short: Vec<u8> = up[..idx(0, 0, 23)].to_vec();
    let mut outside_only = no_scribbles.clone();
    outside_only[idx(2, 2, 22)] = FG;
    outside_only[idx(45, 45, 1)] = BG;
    let cases: Vec<BadCase> = vec![
        (
            "wrong size",
            params(json!({})),
            Some(("s.nii.gz", nifti(&short, [48, 48, 23], &AFFINE))),
            "grid",
        ),
        (
            "wrong grid",
            params(json!({})),
            Some(("s.nii.gz", nifti(&up, DIMS, &shifted))),
            "grid",
        ),
        (
            "short .bin",
            params(json!({})),
            Some(("s.bin", short.clone())),
            "bytes",
        ),
        (
            "no scribbles",
            params(json!({})),
            Some(("s.nii.gz", nifti(&no_scribbles, DIMS, &AFFINE))),
            "no scribbles",
        ),
        (
            "scribbles outside the ROI only",
            params(json!({})),
            Some(("s.nii.gz", nifti(&outside_only, DIMS, &AFFINE))),
            "inside the ROI",
        ),
        (
            "roi outside",
            params(json!({"roi": [60, 70, 0, 10, 0, 10]})),
            Some(upload_nii()),
            "roi",
        ),
        (
            "unknown label",
            params(json!({"selected_label_name": "Segment_7"})),
            Some(upload_nii()),
            "selected_label_name",
        ),
        ("no label part", params(json!({})), None, "label"),
        (
            "bad roi",
            params(json!({"roi": [1, 2, 3]})),
            Some(upload_nii()),
            "roi",
        ),
    ];
    for model in ["Histogram+GraphCut", "Model+GraphCut"] {
        for (what, p, label, needle) in &cases {
            let r = post(&s, &format!("/infer/{model}?image=small"), p, label.clone());
            assert_eq!(r.status(), 422, "{model}: {what}");
            let v: Value = r.json().unwrap();
            assert!(detail(&v).contains(needle), "{model}: {what}: {v}");
        }
    }
    let r = post(
        &s,
        "/infer/Model+GraphCut?image=small&output=dicom_seg",
        &params(json!({})),
        Some(upload_nii()),
    );
    assert_eq!(r.status(), 422);

    // nothing was ever stored
    let (_, all) = s.get_json("/datastore/?output=all");
    assert_eq!(all["objects"]["small"]["labels"], json!({}), "{all}");
}
