//! Training over HTTP with the real binary: start, 429 while running, progress and
//! `train_stats`, the curve image, hot reload of the new checkpoint by `/infer`, a stop that
//! kills the worker within seconds without leaving a torn or temporary file, and `resume: true`
//! continuing the stopped run from its last epoch (exactness itself: models/tests/resume.rs).

use crate::common;
use crate::common::spawned::Server;
use crate::common::training::{cli_infer_lowres, exact_resume, mapped_label, wait_until};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{detail, Opts};
use serde_json::{json, Value};

const MODEL: &str = "wholeBody_ct_segmentation";

fn infer_lowres(s: &Server) -> Vec<u8> {
    s.infer_lowres(MODEL, "example_ct")
}

fn models_dir_files(bundle: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(bundle.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn train_reports_progress_and_the_next_infer_uses_the_new_weights() {
    let bundle = common::bundle_copy();
    let s = Server::start(Opts {
        bundle: bundle.path().to_path_buf(),
        ..Opts::new()
    });
    let (code, body) = s.get_json("/train/");
    assert_eq!((code, detail(&body)), (404, "No Train Tasks Found"));
    let (code, body) = s.get_json("/train/?check_if_running=true");
    assert_eq!(
        (code, detail(&body)),
        (404, "No Train Tasks are currently Running")
    );
    let (_, info) = s.get_json("/info/");
    assert_eq!(info["trainers"][MODEL]["config"]["max_epochs"], 50);
    assert_eq!(info["train_stats"][MODEL], json!({}));

    // nothing labelled yet
    let r = s.start_training(MODEL, &json!({}));
    assert_eq!(r.status(), 422);
    assert!(r.text().unwrap().contains("final"));
    // bad options and unknown models are refused before anything starts
    let r = s.start_training(MODEL, &json!({"max_epochs": "many"}));
    assert_eq!(r.status(), 422);
    let r = s
        .http
        .post(s.url("/train/nope"))
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);

    let tmp = tempfile::tempdir().unwrap();
    s.save_final("example_ct", mapped_label(tmp.path()));
    let before = infer_lowres(&s);
    let weights_before = std::fs::read(bundle.path().join("models/model_lowres.pt")).unwrap();

    let r = s.start_training(
        MODEL,
        &json!({"highres": false, "max_epochs": 3, "val_interval": 1, "train_batch_size": 1,
               "roi_size": 32, "val_roi_size": 64, "init_LR": 0.01, "client_id": "user-xyz"}),
    );
    assert_eq!(r.status(), 200);
    let task: Value = r.json().unwrap();
    assert_eq!(task["status"], "RUNNING");
    assert!(task["start_ts"].is_string() && task["id"].is_string());
    // a second start while the first runs
    let r = s.start_training(MODEL, &json!({"highres": false}));
    assert_eq!(r.status(), 429, "{}", r.text().unwrap());
    let (code, running) = s.get_json("/train/?check_if_running=true");
    assert_eq!(code, 200);
    assert_eq!(running["id"], task["id"]);

    let last = s.wait_train_end(Duration::from_secs(600));
    assert_eq!(last["status"], "DONE", "{last}");
    assert!(last["end_ts"].is_string());
    assert_eq!(last["result"]["epochs"], 3);
    let details = last["details"].as_array().unwrap();
    assert!(
        details
            .iter()
            .any(|d| d.as_str().unwrap().contains("epoch 3/3")),
        "{details:?}"
    );
    let (_, all) = s.get_json("/train/?all=true");
    assert_eq!(all.as_array().unwrap().len(), 1);

    // train_stats as Slicer reads them
    let (_, info) = s.get_json("/info/");
    let stats = &info["train_stats"][MODEL];
    assert_eq!(stats["epoch"], 3);
    assert_eq!(stats["total_epochs"], 3);
    assert!(stats["total_time"].is_string());
    let best = stats["best_metric"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&best));
    assert_eq!(stats["history"].as_array().unwrap().len(), 3);
    assert_eq!(stats["eval"]["key_metric_name"], "train_mean_dice");

    // the curve
    let r = s.http.get(s.url("/train/curve")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    assert!(r.text().unwrap().starts_with("<svg"));

    // a new checkpoint, no temporary files, and /infer uses it without a restart
    let weights_after = std::fs::read(bundle.path().join("models/model_lowres.pt")).unwrap();
    assert_ne!(weights_before, weights_after);
    assert_eq!(
        models_dir_files(bundle.path()),
        [
            "model.pt",
            "model_lowres.pt",
            "model_lowres.resume.pt",
            "train_stats.json",
            "versions"
        ]
    );
    // the better checkpoint is a model version with its provenance (docs/models.md)
    let (_, v) = s.get_json(&format!("/model/versions/{MODEL}?highres=false"));
    let newest = &v["versions"][0];
    assert_eq!(v["active"], newest["version"], "{v}");
    assert_eq!(newest["source"], "train", "{v}");
    assert_eq!(newest["job_id"], task["id"]);
    assert_eq!(
        newest["parent"], 1,
        "the weights before the training: version 1"
    );
    assert_eq!(
        newest["trained_on"],
        json!([{"image": "example_ct", "rev": 1}])
    );
    assert!((newest["metrics"]["best_metric"].as_f64().unwrap() - best).abs() < 1e-6);
    assert!(newest["metrics"]["best_epoch"].as_u64().is_some());
    let sha = newest["sha256"].as_str().unwrap();
    assert_eq!(
        std::fs::read(bundle.path().join(format!("models/versions/{sha}.pt"))).unwrap(),
        weights_after
    );
    let after = infer_lowres(&s);
    assert_ne!(before, after, "infer still uses the old weights");
    assert_eq!(after, cli_infer_lowres(bundle.path(), tmp.path()));

    let logs = s
        .http
        .get(s.url("/logs/?lines=2000"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(logs.contains("epoch 3/3"), "progress is not in /logs/");
}

#[test]
fn stop_kills_the_worker_within_seconds_and_resume_continues() {
    let bundle = common::bundle_copy();
    let s = Server::start(Opts {
        bundle: bundle.path().to_path_buf(),
        ..Opts::new()
    });
    let tmp = tempfile::tempdir().unwrap();
    s.save_final("example_ct", mapped_label(tmp.path()));
    let weights_before = std::fs::read(bundle.path().join("models/model_lowres.pt")).unwrap();
    let r = s.start_training(
        MODEL,
        &json!({"highres": false, "max_epochs": 100000, "val_interval": 1, "train_batch_size": 1,
               "roi_size": 32, "val_roi_size": 64}),
    );
    assert_eq!(r.status(), 200);
    // wait for the first optimiser steps
    s.wait_train_steps(2, Duration::from_secs(300));
    let r = s.http.delete(s.url("/train/")).send().unwrap();
    assert_eq!(r.status(), 200);
    let stopped: Value = r.json().unwrap();
    assert_eq!(stopped["status"], "STOPPED");
    assert!(stopped["end_ts"].is_string());
    assert!(!stopped["details"].as_array().unwrap().is_empty());
    // the epochs recorded before the stop (each epoch's resume state is written before its
    // record: the state can be one epoch further, never behind)
    let before_stop = s.get_json("/info/").1["train_stats"][MODEL]["history"].clone();
    let k = before_stop.as_array().unwrap().len() as u64;
    assert!(k >= 1, "{before_stop}");
    let max_epochs = k + 2;
    // the second run continues the stopped one (`resume: true`), accepted once it is gone
    let took = wait_until("the worker to end", Duration::from_secs(10), || {
        s.get_json("/train/?check_if_running=true").0 == 404
            && s.http
                .post(s.url(&format!("/train/{MODEL}")))
                .json(
                    &json!({"highres": false, "max_epochs": max_epochs, "val_interval": 1,
                              "train_batch_size": 1, "roi_size": 32, "val_roi_size": 64,
                              "resume": true}),
                )
                .send()
                .map(|r| r.status() == 200)
                .unwrap_or(false)
    });
    eprintln!("stop took {took:?}");
    // let it finish, then nothing is left behind
    let resumed = s.wait_train_end(Duration::from_secs(300));
    assert_eq!(resumed["status"], "DONE", "{resumed}");
    assert_eq!(resumed["result"]["epochs"], max_epochs, "{resumed}");
    let (lines, from) = exact_resume(&resumed);
    assert!(
        (k..max_epochs).contains(&from),
        "resumed at {from}, {k} recorded: {lines:?}"
    );
    // it ran only the epochs after the stop: no epoch 1 again
    assert!(
        !lines.iter().any(|l| l.starts_with("epoch 1/")),
        "the run restarted: {lines:?}"
    );
    // train_stats continue: epochs 1..=max, those before the stop kept as they were
    let stats = s.get_json("/info/").1["train_stats"][MODEL].clone();
    assert_eq!(stats["epoch"], max_epochs, "{stats}");
    let history = stats["history"].as_array().unwrap();
    let epochs: Vec<u64> = history
        .iter()
        .map(|r| r["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, (1..=max_epochs).collect::<Vec<_>>(), "{stats}");
    assert_eq!(
        history[..k as usize],
        before_stop.as_array().unwrap()[..],
        "{stats}"
    );
    let r = s.http.delete(s.url("/train/")).send().unwrap();
    assert_eq!(r.text().unwrap(), "null");
    let (_, all) = s.get_json("/train/?all=true");
    assert_eq!(all[0]["status"], "STOPPED");
    let files = models_dir_files(bundle.path());
    assert_eq!(
        files,
        [
            "model.pt",
            "model_lowres.pt",
            "model_lowres.resume.pt",
            "train_stats.json",
            "versions"
        ],
        "{files:?}"
    );
    // whatever checkpoint is there loads (the infer answers 200)
    let _ = weights_before;
    let _ = infer_lowres(&s);
}

#[test]
fn a_worker_does_not_outlive_a_killed_server() {
    let bundle = common::bundle_copy();
    let mut s = Server::start(Opts {
        bundle: bundle.path().to_path_buf(),
        ..Opts::new()
    });
    let tmp = tempfile::tempdir().unwrap();
    s.save_final("example_ct", mapped_label(tmp.path()));
    let r = s.start_training(
        MODEL,
        &json!({"highres": false, "max_epochs": 100000, "val_interval": 1000, "train_batch_size": 1,
               "roi_size": 32}),
    );
    assert_eq!(r.status(), 200);
    // the job answers once the scheduler took it; its worker starts right after
    let worker_line = |task: &Value| {
        task["details"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|l| l.starts_with("worker pid "))
            .map(str::to_string)
    };
    wait_until(
        "the task to name its worker",
        Duration::from_secs(60),
        || worker_line(&s.get_json("/train/").1).is_some(),
    );
    let line = worker_line(&s.get_json("/train/").1).expect("the task names its worker");
    let pid: u32 = line["worker pid ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    s.wait_train_steps(1, Duration::from_secs(300));
    assert!(proc_dir.exists());
    s.kill();
    // the worker notices at its next step that nobody reads its progress, and exits
    let took = wait_until(
        "the orphaned worker to exit",
        Duration::from_secs(60),
        || {
            !proc_dir.exists()
                || std::fs::read_to_string(proc_dir.join("stat"))
                    .map(|st| st.contains(") Z "))
                    .unwrap_or(true)
        },
    );
    eprintln!("orphaned worker exited {took:?} after the server was killed");
}
