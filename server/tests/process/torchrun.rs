//! Distributed training through `torchrun` with the real binary and the project's Python: two
//! gloo processes on the CPU train a small network (the test bundle's `init_filters` 8) for 2
//! epochs on the 30-slice CT and its mapped labels → DONE, progress in the task,
//! `train_stats` and the curve; the checkpoint loads strictly in ferrolabel (`ferrolabel
//! infer` with the bundle) and the next `/infer` uses it. Then a stop during a run leaves no
//! process of it behind (found here independently: every process whose environment carries the
//! run's marker).

use crate::common;
use crate::common::spawned::Server;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{form_with_file, repo, Opts, BIN};
use serde_json::{json, Value};

const MODEL: &str = "wholeBody_ct_segmentation";

fn python() -> PathBuf {
    std::env::var_os("FERROLABEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"))
}

/// The example's TotalSegmentator v2 reference mapped onto the bundle's labels by name.
fn mapped_label(dir: &Path) -> Vec<u8> {
    let out_path = dir.join("seg_v1.nii.gz");
    let out = Command::new(python())
        .arg(repo().join("tests/reference/train_reference.py"))
        .arg("map-v2")
        .arg(repo().join("data/totalseg/example_seg.nii.gz"))
        .arg(repo().join("data/totalseg/totalseg_v2_classes.json"))
        .arg(repo().join("apps/wholebody/model/wholeBody_ct_segmentation/configs/metadata.json"))
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(out_path).unwrap()
}

fn infer_lowres(s: &Server) -> Vec<u8> {
    let form = reqwest::blocking::multipart::Form::new().text("params", r#"{"highres": false}"#);
    let r = s
        .http
        .post(s.url(&format!("/infer/{MODEL}?image=example_ct&output=image")))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    decoded(&r.bytes().unwrap())
}

fn decoded(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

fn details(task: &Value) -> Vec<String> {
    task["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Live (not zombie) processes whose environment holds `FERROLABEL_TORCHRUN_RUN=<marker>`.
fn processes_of(marker: &str) -> Vec<u32> {
    let want = format!("FERROLABEL_TORCHRUN_RUN={marker}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|kv| kv == want.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
}

fn leftovers(bundle: &Path) -> Vec<String> {
    std::fs::read_dir(bundle.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn torchrun_trains_with_two_gloo_processes_and_a_stop_leaves_no_process() {
    let t_start = Instant::now();
    let bundle = common::bundle_copy();
    let s = Server::start(Opts {
        bundle: bundle.path().to_path_buf(),
        args: vec![
            "--conf".into(),
            "python".into(),
            python().to_string_lossy().into_owned(),
        ],
        ..Opts::new()
    });
    let tmp = tempfile::tempdir().unwrap();
    let form = form_with_file("label", "label.nii.gz", mapped_label(tmp.path()), "{}");
    let r = s
        .http
        .put(s.url("/datastore/label?image=example_ct&tag=final"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let start = |body: Value| {
        s.http
            .post(s.url(&format!("/train/{MODEL}")))
            .json(&body)
            .send()
            .unwrap()
    };
    // bad distributed options are refused before anything starts
    for bad in [
        json!({"multi_gpu": true, "gpus": "0,1"}),
        json!({"multi_gpu": true, "nodes": 2}),
        json!({"multi_gpu": true, "nproc_per_node": 0}),
        json!({"multi_gpu": true, "rdzv_endpoint": "nohost"}),
    ] {
        let r = start(bad.clone());
        assert_eq!(r.status(), 422, "{bad}");
        let body: Value = r.json().unwrap();
        assert!(body["detail"].is_string(), "{body}");
    }

    let before = infer_lowres(&s);
    let weights_before = std::fs::read(bundle.path().join("models/model_lowres.pt")).unwrap();
    let r = start(json!({
        "multi_gpu": true, "device": "cpu", "nproc_per_node": 2, "num_workers": 0,
        "highres": false, "max_epochs": 2, "val_interval": 2, "train_batch_size": 1,
        "roi_size": 32, "val_roi_size": 32, "init_LR": 0.01
    }));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let task: Value = r.json().unwrap();
    assert_eq!(task["status"], "RUNNING");
    let t_train = Instant::now();
    wait_until("the torchrun training", Duration::from_secs(600), || {
        s.get_json("/train/").1["status"] != "RUNNING"
    });
    eprintln!("2 epochs on 2 gloo processes took {:?}", t_train.elapsed());
    let (_, last) = s.get_json("/train/");
    let lines = details(&last);
    assert_eq!(last["status"], "DONE", "{last}\n{}", s.stderr());
    assert_eq!(last["result"]["epochs"], 2);
    assert_eq!(last["result"]["processes"], 2);
    assert_eq!(last["result"]["checkpoints_promoted"], 1);
    for want in [
        "rank 0 of 2 started",
        "rank 1 of 2 started",
        "epoch 1/2: loss",
        "epoch 2/2: loss",
        "new best train_mean_dice",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "{want:?} not in {lines:?}"
        );
    }
    assert_eq!(last["progress"]["done"], last["progress"]["total"]);

    // train_stats and the curve, as for the Rust trainer
    let (_, info) = s.get_json("/info/");
    let stats = &info["train_stats"][MODEL];
    assert_eq!(stats["epoch"], 2);
    assert_eq!(stats["total_epochs"], 2);
    assert_eq!(stats["status"], "DONE");
    assert_eq!(stats["history"].as_array().unwrap().len(), 2);
    assert_eq!(stats["eval"]["key_metric_name"], "train_mean_dice");
    let best = stats["best_metric"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&best));
    let r = s.http.get(s.url("/train/curve")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().starts_with("<svg"));

    // the new checkpoint is active, loads strictly in ferrolabel, and the next infer uses it
    let weights_after = std::fs::read(bundle.path().join("models/model_lowres.pt")).unwrap();
    assert_ne!(weights_before, weights_after);
    assert_eq!(leftovers(bundle.path()), Vec::<String>::new());
    let after = infer_lowres(&s);
    assert_ne!(before, after, "infer still uses the old weights");
    let cli_out = tmp.path().join("cli.nii.gz");
    let out = Command::new(BIN)
        .args(["infer", "--bundle"])
        .arg(bundle.path())
        .arg("--image")
        .arg(common::example_ct())
        .arg("--output")
        .arg(&cli_out)
        .args(["--highres", "false", "--threads", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(after, decoded(&std::fs::read(&cli_out).unwrap()));

    // a stop during a run: torchrun, its ranks and their data loader workers all end
    let r = start(json!({
        "multi_gpu": true, "device": "cpu", "nproc_per_node": 2, "num_workers": 1,
        "highres": false, "max_epochs": 100000, "val_interval": 100000,
        "train_batch_size": 1, "roi_size": 32
    }));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let marker = format!("ferrolabel-{id}");
    wait_until("the first steps", Duration::from_secs(300), || {
        s.get_json("/train/").1["progress"]["done"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    let running = processes_of(&marker);
    // the agent and two ranks at least (each rank in a session of its own)
    assert!(running.len() >= 3, "{running:?}");
    let r = s.http.delete(s.url("/train/")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["status"], "STOPPED");
    let took = wait_until(
        "every process of the run to end",
        Duration::from_secs(30),
        || running.iter().all(|p| !alive(*p)) && processes_of(&marker).is_empty(),
    );
    eprintln!("{} processes ended {took:?} after the stop", running.len());
    wait_until("the task to let go", Duration::from_secs(30), || {
        s.get_json("/train/?check_if_running=true").0 == 404
    });
    wait_until("the run folder to go", Duration::from_secs(30), || {
        leftovers(bundle.path()).is_empty()
    });
    assert_eq!(
        std::fs::read(bundle.path().join("models/model_lowres.pt")).unwrap(),
        weights_after
    );
    eprintln!("torchrun test took {:?}", t_start.elapsed());
}
