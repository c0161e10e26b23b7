//! The annotation workbench over real HTTP: active learning (`random` with a seed, `first`,
//! `epistemic`), scoring (`dice`, `sum`, `epistemic`), batch inference (progress, cancel,
//! 429, interactive infers going first) and the quantitative report.

use crate::server::Server;
use std::time::{Duration, Instant};

use crate::common::*;
use ferrolabel_imaging::{encode_label_nifti, encode_nifti_f32, DataType, Header, Limits};
use serde_json::{json, Value};

const MODEL: &str = "wholeBody_ct_segmentation";

/// 2 mm voxels, origin at -48/-48/-24 (the grid of [`small_ct_bytes`]).
const AFFINE: [[f64; 4]; 4] = [
    [2.0, 0.0, 0.0, -48.0],
    [0.0, 2.0, 0.0, -48.0],
    [0.0, 0.0, 2.0, -24.0],
    [0.0, 0.0, 0.0, 1.0],
];
const DIMS: [usize; 3] = [48, 48, 24];

/// A small synthetic CT that differs with `v`: a body of radius `10 + 2v` and a texture.
fn ct_variant(v: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(DIMS.iter().product());
    for k in 0..DIMS[2] {
        for j in 0..DIMS[1] {
            for i in 0..DIMS[0] {
                let (x, y, z) = (i as f32 - 24.0, j as f32 - 24.0, k as f32 - 12.0);
                let r = (x * x + y * y + 4.0 * z * z).sqrt();
                let body = 10.0 + 2.0 * v as f32;
                data.push(if r < body {
                    30.0 + ((i * (v + 3) + j * 7 + k) % 11) as f32 * 20.0
                } else if r < body + 5.0 {
                    300.0 + 100.0 * v as f32
                } else {
                    -1000.0
                });
            }
        }
    }
    encode_nifti_f32(&data, DIMS, &AFFINE, true).unwrap()
}

fn label_file(labels: &[u8]) -> Vec<u8> {
    let h = Header::new_3d(DIMS, DataType::U8, &AFFINE).unwrap();
    encode_label_nifti(labels, &h, true).unwrap()
}

fn start(images: usize) -> Server {
    let mut opts = Opts::new();
    opts.with_example = false;
    opts.files = (0..images)
        .map(|v| (format!("case{v}.nii.gz"), ct_variant(v)))
        .collect();
    Server::start(opts)
}

fn post_json(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = s.http.post(s.url(path)).json(&body).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn save_label(s: &Server, id: &str, tag: &str, labels: &[u8]) {
    let form = reqwest::blocking::multipart::Form::new().part(
        "label",
        reqwest::blocking::multipart::Part::bytes(label_file(labels))
            .file_name(format!("{id}.nii.gz")),
    );
    let r = s
        .http
        .put(s.url(&format!("/datastore/label?image={id}&tag={tag}")))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "save label {id}/{tag}");
}

/// Polls `GET path` until `done(json)` or the deadline.
fn wait_for(s: &Server, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let (_, v) = s.get_json(path);
        if done(&v) {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "timed out waiting for {what}: {v}\n{}",
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Monte Carlo options that keep the test fast: 2 samples, 6 mm, 32³ windows.
fn mc(seed: i64) -> Value {
    json!({"samples": 2, "spacing": 6, "sw_roi": 32, "seed": seed})
}

#[test]
fn epistemic_picks_the_most_uncertain_unlabeled_image() {
    let s = start(4);
    let (st, info) = s.get_json("/info/");
    assert_eq!(st, 200);
    assert!(info["strategies"]["epistemic"].is_object());
    for m in ["dice", "sum", "epistemic"] {
        assert!(info["scoring"][m]["description"].is_string(), "{m}");
    }

    // scores for every unlabeled image, stored in the image info
    let (st, scores) = post_json(&s, "/scoring/epistemic?run_sync=true", mc(11));
    assert_eq!(st, 200, "{scores}");
    let scores = scores.as_object().unwrap().clone();
    assert_eq!(scores.len(), 4);
    let mut best = (String::new(), f64::MIN);
    for (id, v) in &scores {
        let e = v["epistemic_entropy"].as_f64().unwrap();
        assert!(e.is_finite() && e > 0.0, "{id}: {e}");
        let (_, info) = s.get_json(&format!("/datastore/image/info?image={id}"));
        assert_eq!(info["epistemic_entropy"].as_f64(), Some(e));
        assert_eq!(info["epistemic_samples"], 2);
        assert!(info["epistemic_ts"].as_i64().unwrap() > 0);
        if e > best.1 {
            best = (id.clone(), e);
        }
    }
    let distinct: std::collections::BTreeSet<u64> = scores
        .values()
        .map(|v| v["epistemic_entropy"].as_f64().unwrap().to_bits())
        .collect();
    assert!(distinct.len() > 1, "different images, different scores");

    // the strategy returns the image whose score is highest
    let (st, next) = post_json(&s, "/activelearning/epistemic", json!({}));
    assert_eq!(st, 200, "{next}");
    assert_eq!(next["id"], best.0.as_str());
    assert_eq!(next["epistemic_entropy"].as_f64(), Some(best.1));

    // the same seed gives the same scores
    let (st, again) = post_json(&s, "/scoring/epistemic?run_sync=true", mc(11));
    assert_eq!(st, 200);
    for (id, v) in &scores {
        assert_eq!(
            again[id]["epistemic_entropy"], v["epistemic_entropy"],
            "{id}"
        );
    }

    // once labeled, the image leaves the pool: the next one is the runner-up
    save_label(&s, &best.0, "final", &vec![1u8; DIMS.iter().product()]);
    let second = scores
        .iter()
        .filter(|(id, _)| **id != best.0)
        .max_by(|a, b| {
            let (x, y) = (
                a.1["epistemic_entropy"].as_f64().unwrap(),
                b.1["epistemic_entropy"].as_f64().unwrap(),
            );
            x.total_cmp(&y)
        })
        .unwrap()
        .0
        .clone();
    let (_, next) = post_json(&s, "/activelearning/epistemic", json!({}));
    assert_eq!(next["id"], second.as_str());

    // an image without a score is scored on demand by the strategy
    let up = reqwest::blocking::multipart::Form::new().part(
        "file",
        reqwest::blocking::multipart::Part::bytes(ct_variant(7)).file_name("fresh.nii.gz"),
    );
    let r = s
        .http
        .put(s.url("/datastore/?image=fresh"))
        .multipart(up)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (st, next) = post_json(&s, "/activelearning/epistemic", mc(5));
    assert_eq!(st, 200, "{next}");
    let (_, info) = s.get_json("/datastore/image/info?image=fresh");
    assert!(info["epistemic_entropy"].as_f64().is_some(), "{info}");

    // random takes a seed (its determinism is a unit test: each call changes the weights);
    // first is the smallest unlabeled id
    let (st, r) = post_json(&s, "/activelearning/random", json!({"seed": 3}));
    assert_eq!(st, 200);
    assert!(r["id"].as_str().is_some_and(|id| id != best.0), "{r}");
    let (_, first) = post_json(&s, "/activelearning/first", json!({}));
    let expected = if best.0 == "case0" { "case1" } else { "case0" };
    assert_eq!(first["id"], expected);

    // bad options
    let (st, e) = post_json(&s, "/activelearning/epistemic", json!({"samples": 0}));
    assert_eq!(st, 422, "{e}");
    let (st, _) = post_json(&s, "/activelearning/random", json!({"seed": "x"}));
    assert_eq!(st, 422);
}

/// Dice as the test computes it: the mean over the label values present in either map.
fn reference_dice(y: &[u8], p: &[u8]) -> f64 {
    let mut classes: Vec<u8> = y.iter().chain(p).copied().filter(|&v| v != 0).collect();
    classes.sort();
    classes.dedup();
    let per: Vec<f64> = classes
        .iter()
        .map(|&c| {
            let a = y.iter().filter(|&&v| v == c).count() as f64;
            let b = p.iter().filter(|&&v| v == c).count() as f64;
            let i = y.iter().zip(p).filter(|(&u, &v)| u == c && v == c).count() as f64;
            2.0 * i / (a + b)
        })
        .collect();
    per.iter().sum::<f64>() / per.len() as f64
}

#[test]
fn dice_and_sum_scoring() {
    let s = start(2);
    let n: usize = DIMS.iter().product();
    // a known pair: two overlapping boxes of label 5 and a label 9 only in the prediction
    let mut y = vec![0u8; n];
    let mut p = vec![0u8; n];
    let idx = |i: usize, j: usize, k: usize| i + DIMS[0] * (j + DIMS[1] * k);
    for k in 4..12 {
        for j in 10..30 {
            for i in 10..30 {
                y[idx(i, j, k)] = 5;
            }
            for i in 14..34 {
                p[idx(i, j, k)] = 5;
            }
        }
    }
    for i in 0..6 {
        p[idx(40 + i, 40, 20)] = 9;
    }
    save_label(&s, "case0", "final", &y);
    save_label(&s, "case0", "original", &p);
    save_label(&s, "case1", "final", &y); // no original: not scored by dice

    let expected = reference_dice(&y, &p);
    let (st, r) = post_json(&s, "/scoring/dice?run_sync=true", json!({}));
    assert_eq!(st, 200, "{r}");
    let got = r["case0"].as_f64().unwrap();
    assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    assert!(r.get("case1").is_none());
    let (_, info) = s.get_json("/datastore/image/info?image=case0");
    assert_eq!(info["dice"].as_f64(), Some(got));

    // sum: labeled voxels and x planes holding a label, in the label info
    let (st, r) = post_json(&s, "/scoring/sum?run_sync=true", json!({}));
    assert_eq!(st, 200, "{r}");
    let y_sum = y.iter().filter(|&&v| v != 0).count() as u64;
    let p_sum = p.iter().filter(|&&v| v != 0).count() as u64;
    assert_eq!(r["case0"]["final"]["sum"], y_sum);
    assert_eq!(r["case0"]["final"]["slices"], 20);
    assert_eq!(r["case0"]["original"]["sum"], p_sum);
    assert_eq!(r["case0"]["original"]["slices"], 26);
    let (_, li) = s.get_json("/datastore/label/info?label=case0&tag=original");
    assert_eq!(li["sum"], p_sum);
    assert_eq!(li["slices"], 26);

    // status endpoints and the task object
    let (st, last) = s.get_json("/scoring/");
    assert_eq!(st, 200);
    assert_eq!(last["status"], "DONE");
    assert!(last["details"].as_array().is_some_and(|d| !d.is_empty()));
    let (st, _) = s.get_json("/scoring/?check_if_running=true");
    assert_eq!(st, 404);
    let (st, all) = s.get_json("/scoring/?all=true");
    assert_eq!(st, 200);
    assert_eq!(all.as_array().unwrap().len(), 2);
    let r = s.http.delete(s.url("/scoring/")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "null");

    // one scoring task at a time: a second one while the first runs gets 429
    let slow =
        json!({"images": "all", "samples": 4, "spacing": 1, "sw_roi": 32, "sw_overlap": 0.5});
    let (st, task) = post_json(&s, "/scoring/epistemic", slow);
    assert_eq!(st, 200, "{task}");
    assert_eq!(task["status"], "RUNNING");
    let (st, busy) = post_json(&s, "/scoring/dice", json!({}));
    assert_eq!(st, 429, "{busy}");
    assert!(detail(&busy).contains("Already Running"));
    let (st, stopped) = {
        let r = s.http.delete(s.url("/scoring/")).send().unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    assert_eq!(st, 200);
    assert_eq!(stopped["status"], "STOPPED");
    wait_for(&s, "/scoring/", "the stopped task to wind down", |v| {
        v["details"]
            .as_array()
            .is_some_and(|d| d.iter().any(|l| l == "Scoring task stopped"))
    });

    // bad input
    let (st, e) = post_json(&s, "/scoring/nope", json!({}));
    assert_eq!(st, 404, "{e}");
    let (st, e) = post_json(&s, "/scoring/epistemic", json!({"sw_roi": 20}));
    assert_eq!(st, 422, "{e}");
    let (st, e) = post_json(&s, "/scoring/dice", json!({"y": "../x"}));
    assert_eq!(st, 422, "{e}");
    let (st, e) = post_json(&s, "/scoring/sum", json!({"tags": "final"}));
    assert_eq!(st, 422, "{e}");
    let r = s
        .http
        .post(s.url("/scoring/dice"))
        .body("not json")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
}

#[test]
fn batch_infer_fills_original_labels_and_can_be_cancelled() {
    let s = start(3);
    save_label(&s, "case2", "final", &vec![1u8; DIMS.iter().product()]);

    let (st, r) = post_json(
        &s,
        &format!("/batch/infer/{MODEL}?images=unlabeled&run_sync=true"),
        json!({"highres": false}),
    );
    assert_eq!(st, 200, "{r}");
    let r = r.as_object().unwrap();
    assert_eq!(r.keys().collect::<Vec<_>>(), ["case0", "case1"]);
    for id in ["case0", "case1"] {
        assert_eq!(r[id]["tag"], "original");
        assert_eq!(r[id]["label"], id);
        let (st, li) = s.get_json(&format!("/datastore/label/info?label={id}&tag=original"));
        assert_eq!(st, 200);
        assert_eq!(li["model"], MODEL);
        assert!(li["params"]["report"]["structures"].is_object(), "{li}");
        let bytes = s
            .http
            .get(s.url(&format!("/datastore/label?label={id}&tag=original")))
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        assert_eq!(label_dims(&bytes, "l.nii.gz"), DIMS);
    }
    let (_, stats) = s.get_json("/datastore/?output=stats");
    assert_eq!(stats["label_tags"]["original"], 2);
    let (_, last) = s.get_json("/batch/infer");
    assert_eq!(last["status"], "DONE");
    assert_eq!(last["progress"]["done"], 2);

    // async over all images, cancelled while it runs
    let (st, task) = post_json(
        &s,
        &format!("/batch/infer/{MODEL}?images=all"),
        json!({"highres": true, "label_tag": "cancelled", "sw_overlap": 0.5}),
    );
    assert_eq!(st, 200, "{task}");
    assert_eq!(task["status"], "RUNNING");
    assert_eq!(task["progress"]["total"], 3);
    let (st, busy) = post_json(&s, &format!("/batch/infer/{MODEL}"), json!({}));
    assert_eq!(st, 429, "{busy}");
    let (st, running) = s.get_json("/batch/infer?check_if_running=true");
    assert_eq!(st, 200);
    assert_eq!(running["id"], task["id"]);
    let r = s.http.delete(s.url("/batch/infer")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().unwrap()["status"], "STOPPED");
    let ended = wait_for(&s, "/batch/infer", "the batch to stop", |v| {
        v["details"]
            .as_array()
            .is_some_and(|d| d.iter().any(|l| l == "Batch_infer task stopped"))
    });
    assert_eq!(ended["status"], "STOPPED");
    let (_, stats) = s.get_json("/datastore/?output=stats");
    let cancelled = stats["label_tags"]["cancelled"].as_u64().unwrap_or(0);
    assert!(
        cancelled < 3,
        "the batch was stopped before the last image: {stats}"
    );
    let (st, _) = s.get_json("/batch/infer?check_if_running=true");
    assert_eq!(st, 404);

    // a listed batch after the stop
    let (st, r) = post_json(
        &s,
        &format!("/batch/infer/{MODEL}?run_sync=true"),
        json!({"images": ["case2"], "highres": false, "label_tag": "listed", "report": false}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r.as_object().unwrap().len(), 1);
    assert!(r["case2"]["params"].get("report").is_none());

    // bad input
    let (st, _) = post_json(&s, &format!("/batch/infer/{MODEL}?images=some"), json!({}));
    assert_eq!(st, 422);
    let (st, _) = post_json(
        &s,
        &format!("/batch/infer/{MODEL}"),
        json!({"images": ["nope"]}),
    );
    assert_eq!(st, 404);
    let (st, _) = post_json(&s, "/batch/infer/nope", json!({}));
    assert_eq!(st, 404);
    let (st, _) = post_json(
        &s,
        &format!("/batch/infer/{MODEL}"),
        json!({"sw_overlap": 2}),
    );
    assert_eq!(st, 422);
}

/// A long synthetic CT, 108 x 48 x 24 voxels at 2 mm: on the 1.5 mm grid (144 x 64 x 32) with
/// overlap 0.9 (a 96-voxel window steps 9 voxels) it takes 7 sliding windows.
fn ct_long() -> Vec<u8> {
    let dims = [108usize, 48, 24];
    let mut data = Vec::with_capacity(dims.iter().product());
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                let (x, y, z) = (i as f32 - 54.0, j as f32 - 24.0, k as f32 - 12.0);
                let r = (0.2 * x * x + y * y + 4.0 * z * z).sqrt();
                data.push(if r < 18.0 {
                    40.0 + ((i * 5 + j * 3 + k) % 11) as f32 * 15.0
                } else {
                    -1000.0
                });
            }
        }
    }
    encode_nifti_f32(&data, dims, &AFFINE, true).unwrap()
}

/// An interactive infer that arrives while a batch image still has windows to run waits for
/// at most one of them: the engine's own record (`params.engine`) says how many background
/// windows ran between its queueing and its start. A first-in-first-out engine would make it
/// wait for every window left (`background_windows_left`).
#[test]
fn interactive_infer_goes_ahead_of_a_running_batch() {
    let mut opts = Opts::new();
    opts.with_example = false;
    opts.files = vec![
        ("case0.nii.gz".into(), ct_variant(0)),
        ("long.nii.gz".into(), ct_long()),
    ];
    let s = Server::start(opts);
    let (st, task) = post_json(
        &s,
        &format!("/batch/infer/{MODEL}"),
        json!({"images": ["long"], "highres": true, "sw_overlap": 0.9, "report": false}),
    );
    assert_eq!(st, 200, "{task}");
    wait_for(&s, "/batch/infer", "the batch to start", |v| {
        v["progress"]["current"] == "long"
    });
    // small interactive infers (one window each) until one is queued with two or more of the
    // batch's windows to go (one queued before the batch reached its windows proves less)
    let mut probe = None;
    for _ in 0..100 {
        let form = reqwest::blocking::multipart::Form::new().text("params", r#"{"highres": true}"#);
        let r = s
            .http
            .post(s.url(&format!("/infer/{MODEL}?image=case0&output=json")))
            .multipart(form)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let params: Value = r.json().unwrap();
        let rec = params["engine"].clone();
        // whenever it arrived, at most one batch window ran before it
        assert!(
            rec["waited_windows"].as_u64().unwrap() <= 1,
            "an interactive infer waited for more than one batch window: {rec}"
        );
        if rec["background_windows_left"].as_u64().unwrap() >= 2 {
            probe = Some(rec);
            break;
        }
        let (_, now) = s.get_json("/batch/infer");
        assert_eq!(
            now["status"], "RUNNING",
            "the batch ended before an interactive infer arrived during its windows: {now}"
        );
    }
    let i = probe.expect("an interactive infer queued during the batch's windows");
    assert_eq!(i["between_windows"], true, "{i}");

    // the batch image's own record: its windows, and the interactive job ran among them
    let done = wait_for(&s, "/batch/infer", "the batch to finish", |v| {
        v["status"] == "DONE"
    });
    assert_eq!(done["progress"]["done"], 1, "{done}");
    let (st, li) = s.get_json("/datastore/label/info?label=long&tag=original");
    assert_eq!(st, 200, "{li}");
    let windows = li["params"]["windows"].as_u64().unwrap();
    assert!(windows >= 6, "{li}");
    let b = &li["params"]["engine"];
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert_eq!(n(b, "finished_at") - n(b, "started_at"), windows, "{b}");
    assert_eq!(b["between_windows"], false);
    assert!(n(b, "started_at") <= n(&i, "queued_at"), "{b} {i}");
    assert!(n(&i, "started_at") < n(b, "finished_at"), "{b} {i}");
    assert!(n(&i, "order") > n(b, "order"));
    println!(
        "interactive infer queued with {} batch windows to go, started after {} of them \
         (batch image: {windows} windows)",
        n(&i, "background_windows_left"),
        n(&i, "waited_windows")
    );
}

/// The report's tolerance, the same in `tests/conformance/test_workbench.py`: ferrolabel holds
/// voxels as `f32` (exact for int16 and float32 files) and sums values and squares in `f64`;
/// the hand count here sums in `f64` in another order with a two-pass variance, ~1e-12
/// relative apart. 1e-6 relative (absolute below 1) leaves that a wide margin, yet fails an
/// `f32` accumulation: summing the squares of 10^3..10^5 voxels of the shared CT in `f32`
/// moves the std by 6e-6..3e-5 relative (measured with numpy).
const REPORT_TOL: f64 = 1e-6;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= REPORT_TOL * b.abs().max(1.0)
}

#[test]
fn report_agrees_with_an_independent_computation() {
    let s = start(1);
    let form = reqwest::blocking::multipart::Form::new()
        .text("params", r#"{"highres": false, "save_label": true}"#);
    let r = s
        .http
        .post(s.url(&format!("/infer/{MODEL}?image=case0&output=json")))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let params: Value = r.json().unwrap();
    let report = &params["report"];
    assert!(params["latencies"]["report"].as_f64().is_some());

    // decode the saved label and the image, and count by hand
    let label = s
        .http
        .get(s.url("/datastore/label?label=case0&tag=original"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let lab =
        ferrolabel_imaging::read_volume_bytes(&label, "l.nii.gz", &Limits::default()).unwrap();
    let img = ferrolabel_imaging::read_volume_bytes(&ct_variant(0), "i.nii.gz", &Limits::default())
        .unwrap();
    let structures = report["structures"].as_object().unwrap();
    assert!(!structures.is_empty());
    let mut present = 0;
    for v in 1..=104u8 {
        let vox: Vec<usize> = (0..lab.data.len())
            .filter(|&n| lab.data[n] == v as f32)
            .collect();
        if vox.is_empty() {
            continue;
        }
        present += 1;
        let entry = structures
            .values()
            .find(|e| e["label"] == v)
            .unwrap_or_else(|| panic!("label {v} missing from {report}"));
        let mean = vox.iter().map(|&n| img.data[n] as f64).sum::<f64>() / vox.len() as f64;
        let var = vox
            .iter()
            .map(|&n| (img.data[n] as f64 - mean).powi(2))
            .sum::<f64>()
            / vox.len() as f64;
        let border = vox.iter().any(|&n| {
            let (i, j, k) = (n % 48, (n / 48) % 48, n / (48 * 48));
            i == 0 || j == 0 || k == 0 || i == 47 || j == 47 || k == 23
        });
        assert_eq!(entry["voxels"], vox.len());
        let ml = entry["volume_ml"].as_f64().unwrap();
        assert!(close(ml, vox.len() as f64 * 0.008), "{ml}");
        let m = entry["mean_hu"].as_f64().unwrap();
        assert!(close(m, mean), "{m} vs {mean}");
        let sd = entry["std_hu"].as_f64().unwrap();
        assert!(close(sd, var.sqrt()), "{sd} vs {}", var.sqrt());
        assert_eq!(entry["touches_border"], border);
    }
    assert_eq!(structures.len(), present);

    // the same report for the stored label
    let (st, stored) = s.get_json("/datastore/label/report?label=case0&tag=original");
    assert_eq!(st, 200, "{stored}");
    assert_eq!(stored["structures"], report["structures"]);
    let (st, _) = s.get_json("/datastore/label/report?label=case0&tag=final");
    assert_eq!(st, 404);
    let (st, _) = s.get_json("/datastore/label/report?label=nope");
    assert_eq!(st, 404);
    let (st, _) = s.get_json("/datastore/label/report");
    assert_eq!(st, 422);
}
