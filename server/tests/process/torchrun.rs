//! Distributed training through `torchrun`, driven by the official `monailabel` client
//! (`MONAILabelClient.train_start` with MONAI Label's `multi_gpu` options, `train_status`,
//! `infer`, `train_stop`: `torchrun_client.py`) against the real binary and the project's Python:
//! two gloo processes on the CPU train a small network (the test bundle's `init_filters` 8) for 2
//! epochs on the 30-slice CT and its mapped labels → DONE, progress in the task, `train_stats`
//! and the curve; the checkpoint becomes a `torchrun` model version, loads strictly in
//! ferrolabel (`ferrolabel infer` with the bundle) and the client's next infer uses it. Then a
//! stop during a run leaves no process of it behind (found here independently: every process
//! whose environment carries the run's marker). The client and process helpers here serve
//! `slurm.rs` too.

use crate::common;
use crate::common::spawned::Server;
use crate::common::training::{cli_infer_lowres, gunzip, mapped_label, python, wait_until};
use crate::common::Opts;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub(crate) const MODEL: &str = "wholeBody_ct_segmentation";

/// Runs `torchrun_client.py <server> <args>` (the official client) and answers the JSON line it
/// prints.
pub(crate) fn client(s: &Server, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/process/torchrun_client.py");
    let out = Command::new(python())
        .arg(script)
        .arg(&s.base)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the client failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.stderr()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The client's low-resolution label of the example CT, gunzipped.
pub(crate) fn client_infer(s: &Server, dir: &Path) -> Vec<u8> {
    let out = dir.join("client-infer.nii.gz");
    client(s, &["infer", "example_ct", out.to_str().unwrap()]);
    gunzip(&std::fs::read(&out).unwrap())
}

pub(crate) fn details(task: &Value) -> Vec<String> {
    task["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Live (not zombie) processes whose environment holds `FERROLABEL_TORCHRUN_RUN=<marker>`.
pub(crate) fn processes_of(marker: &str) -> Vec<u32> {
    ferrolabel_testkit::processes_with_env(&format!("FERROLABEL_TORCHRUN_RUN={marker}"))
}

pub(crate) use ferrolabel_testkit::alive;

pub(crate) fn leftovers(bundle: &Path) -> Vec<String> {
    std::fs::read_dir(bundle.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn torchrun_through_the_official_client_and_a_stop_leaves_no_process() {
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
    s.save_final("example_ct", mapped_label(tmp.path()));
    // bad distributed options are refused before anything starts
    for bad in [
        json!({"multi_gpu": true, "gpus": "0,1"}),
        json!({"multi_gpu": true, "nodes": 2}),
        json!({"multi_gpu": true, "nproc_per_node": 0}),
        json!({"multi_gpu": true, "rdzv_endpoint": "nohost"}),
    ] {
        let r = s.start_training(MODEL, &bad);
        assert_eq!(r.status(), 422, "{bad}");
        let body: Value = r.json().unwrap();
        assert!(body["detail"].is_string(), "{body}");
    }

    let before = client_infer(&s, tmp.path());
    let weights_before = std::fs::read(bundle.path().join("models/model_lowres.pt")).unwrap();
    // MONAI Label's options for a multi-GPU run (`gpus: "all"`), on the CPU here
    let params = json!({
        "multi_gpu": true, "gpus": "all", "device": "cpu", "nproc_per_node": 2,
        "num_workers": 0, "highres": false, "max_epochs": 2, "val_interval": 2,
        "train_batch_size": 1, "roi_size": 32, "val_roi_size": 32, "init_LR": 0.01
    });
    let last = client(&s, &["train", &params.to_string()]);
    eprintln!("2 epochs on 2 gloo processes took {}", last["seconds"]);
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

    // the new checkpoint is the active `torchrun` version, loads strictly in ferrolabel, and
    // the client's next infer uses it
    let weights_after = std::fs::read(bundle.path().join("models/model_lowres.pt")).unwrap();
    assert!(
        weights_before != weights_after,
        "the weights file was not replaced"
    );
    assert_eq!(leftovers(bundle.path()), Vec::<String>::new());
    let (_, v) = s.get_json(&format!("/model/versions/{MODEL}?highres=false"));
    let newest = &v["versions"][0];
    assert_eq!(v["active"], newest["version"], "{v}");
    assert_eq!(newest["source"], "torchrun", "{v}");
    assert_eq!(newest["job_id"], last["id"], "{v}");
    let sha = newest["sha256"].as_str().unwrap();
    assert!(
        std::fs::read(bundle.path().join(format!("models/versions/{sha}.pt"))).unwrap()
            == weights_after,
        "the version's kept file is not the weights file"
    );
    let after = client_infer(&s, tmp.path());
    assert_ne!(before, after, "infer still uses the old weights");
    assert_eq!(after, cli_infer_lowres(bundle.path(), tmp.path()));

    // a stop during a run: torchrun, its ranks and their data loader workers all end
    let params = json!({
        "multi_gpu": true, "gpus": "all", "device": "cpu", "nproc_per_node": 2,
        "num_workers": 1, "highres": false, "max_epochs": 100000, "val_interval": 100000,
        "train_batch_size": 1, "roi_size": 32
    });
    let task = client(&s, &["start", &params.to_string()]);
    let marker = format!("ferrolabel-{}", task["id"].as_str().unwrap());
    s.wait_train_steps(1, Duration::from_secs(300));
    let running = processes_of(&marker);
    // the agent and two ranks at least (each rank in a session of its own)
    assert!(running.len() >= 3, "{running:?}");
    let stopped = client(&s, &["stop"]);
    assert_eq!(stopped["status"], "STOPPED", "{stopped}");
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
    assert!(
        std::fs::read(bundle.path().join("models/model_lowres.pt")).unwrap() == weights_after,
        "the stopped run changed the weights file"
    );
    eprintln!("torchrun test took {:?}", t_start.elapsed());
}
