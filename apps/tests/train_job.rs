//! Training as a restartable job, with the real worker process: `Trainer::run` trains a tiny
//! network on a tiny synthetic volume, then a second attempt resumes from the first one's
//! checkpoint (only the epochs left, the best metric carried over, the checkpoint loaded), a
//! worker left over by an earlier attempt is killed first, and a cancel kills the worker.
//!
//! This test binary is its own training worker (`harness = false`): started as
//! `<this binary> dev train-worker -` it runs `ferrolabel_apps::train::run_worker`, exactly
//! what `ferrolabel dev train-worker -` runs, so the test needs no server binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrolabel_apps::jobs::JobHandle;
use ferrolabel_apps::train::resume::TrainCheckpoint;
use ferrolabel_apps::train::{pairs_from_datalist, Trainer};
use ferrolabel_apps::AppError;
use ferrolabel_models::network::weights;
use ferrolabel_models::Bundle;
use serde_json::{json, Map, Value};

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A 40^3 CT-like volume at 3 mm (the low-res spacing: no resampling): a body of soft tissue
/// in air with a brighter sphere, labelled 1.
fn write_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let n = 40usize;
    let mut img = vec![0f32; n * n * n];
    let mut lbl = vec![0f32; n * n * n];
    for z in 0..n {
        for y in 0..n {
            for x in 0..n {
                let d = |c: [f32; 3]| {
                    ((x as f32 - c[0]).powi(2)
                        + (y as f32 - c[1]).powi(2)
                        + (z as f32 - c[2]).powi(2))
                    .sqrt()
                };
                let i = x + n * (y + n * z);
                img[i] = if d([20.0, 20.0, 20.0]) < 16.0 {
                    40.0
                } else {
                    -1000.0
                };
                if d([16.0, 22.0, 18.0]) < 7.0 {
                    img[i] = 150.0 + ((i * 7919) % 13) as f32;
                    lbl[i] = 1.0;
                }
            }
        }
    }
    let mut affine = [[0f64; 4]; 4];
    for (k, row) in affine.iter_mut().enumerate() {
        row[k] = if k < 3 { 3.0 } else { 1.0 };
    }
    let image = dir.join("tiny_ct.nii.gz");
    let label = dir.join("tiny_ct_label.nii.gz");
    ferrolabel_imaging::nifti::write_nifti_f32(&image, &img, [n, n, n], &affine).unwrap();
    ferrolabel_imaging::nifti::write_nifti_f32(&label, &lbl, [n, n, n], &affine).unwrap();
    (image, label)
}

/// The bundle's configs with an 8-filter network, rooted in `root` (no weights there).
fn tiny_bundle(root: &Path) -> Bundle {
    let mut b =
        Bundle::open(&repo().join("apps/wholebody/model/wholeBody_ct_segmentation")).unwrap();
    b.root = root.to_path_buf();
    b.network.init_filters = 8;
    b
}

fn params() -> Map<String, Value> {
    json!({"highres": false, "max_epochs": 2, "val_interval": 1, "train_batch_size": 1,
           "roi_size": 32, "val_roi_size": 32, "init_LR": 0.01, "pretrained": false,
           "amp": false, "val_split": 0, "cache_size": 1})
    .as_object()
    .unwrap()
    .clone()
}

struct Setup {
    _dir: tempfile::TempDir,
    trainer: Trainer,
    bundle: Bundle,
    pairs: Vec<ferrolabel_models::train::Pair>,
    model: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let pairs = pairs_from_datalist(vec![write_pair(&data)]);
    let bundle = tiny_bundle(&dir.path().join("bundle"));
    let trainer = Trainer::new(bundle.clone(), vec!["cpu".into()], "cpu".into(), Some(2));
    trainer.set_worker_exe(std::env::current_exe().unwrap());
    let model = dir.path().join("bundle/models/model_lowres.pt");
    Setup {
        _dir: dir,
        trainer,
        bundle,
        pairs,
        model,
    }
}

fn checkpoint(h: &JobHandle) -> TrainCheckpoint {
    TrainCheckpoint::from_value(&h.checkpoint().expect("a checkpoint")).unwrap()
}

fn epochs_logged(h: &JobHandle) -> Vec<String> {
    h.details()
        .into_iter()
        .filter(|d| d.starts_with("epoch ") && d.contains(": loss "))
        .collect()
}

/// Two epochs, then a second attempt resumed at epoch 1 that runs epoch 2 only.
fn resumes_from_the_checkpoint(s: &Setup) {
    assert!(s.trainer.validate(&params(), &s.pairs).is_ok());
    let first = JobHandle::detached("train");
    let result = s.trainer.run(&first, &params(), s.pairs.clone()).unwrap();
    assert_eq!(result["epochs"], 2, "{result}");
    assert_eq!(result["model_file"], "model_lowres.pt");
    let ck = checkpoint(&first);
    assert_eq!(ck.epoch, 2);
    assert_eq!(
        ck.history.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(ck.checkpoint.as_deref(), Some(s.model.as_path()));
    assert!(ck.worker_pid.is_some());
    assert_eq!(result["best_metric"].as_f64(), ck.best_metric);
    assert_eq!(epochs_logged(&first).len(), 2, "{:?}", first.details());
    weights::validate_file(&s.bundle.network, &s.model).unwrap();

    // the server died after epoch 1, whose metric was (say) perfect: the second attempt runs
    // epoch 2 only, from that checkpoint, and must not replace the better model
    let mut at1 = ck.clone();
    at1.epoch = 1;
    at1.history.truncate(1);
    at1.best_metric = Some(1.0);
    at1.best_epoch = Some(1);
    let before = std::fs::read(&s.model).unwrap();
    let second = JobHandle::with_checkpoint("train", 2, at1.to_value());
    let result = s.trainer.run(&second, &params(), s.pairs.clone()).unwrap();
    let details = second.details();
    let resumed = details
        .iter()
        .find(|d| d.starts_with("resumed at epoch 1 of 2 (attempt 2"))
        .unwrap_or_else(|| panic!("{details:?}"));
    assert!(
        resumed.contains(&s.model.display().to_string()),
        "{resumed}"
    );
    let epochs = epochs_logged(&second);
    assert_eq!(epochs.len(), 1, "{details:?}");
    assert!(epochs[0].starts_with("epoch 2/2"), "{epochs:?}");
    assert_eq!(result["epochs"], 2);
    assert_eq!(
        (
            result["best_metric"].as_f64(),
            result["best_epoch"].as_u64()
        ),
        (Some(1.0), Some(1))
    );
    assert_eq!(
        std::fs::read(&s.model).unwrap(),
        before,
        "a worse epoch replaced the best model"
    );
    weights::validate_file(&s.bundle.network, &s.model).unwrap();
    let ck = checkpoint(&second);
    assert_eq!(
        (ck.epoch, ck.best_metric, ck.best_epoch),
        (2, Some(1.0), Some(1))
    );
    // train_stats keep the earlier attempt's epoch
    let stats = s.trainer.stats();
    let hist = stats["history"].as_array().unwrap();
    assert_eq!(hist.len(), 2, "{stats}");
    assert_eq!(hist[0], serde_json::to_value(&at1.history[0]).unwrap());
    assert_eq!(
        (stats["epoch"].clone(), stats["status"].clone()),
        (json!(2), json!("DONE"))
    );

    // every epoch done, only the outcome lost: nothing runs again
    let third = JobHandle::with_checkpoint("train", 3, ck.to_value());
    let result = s.trainer.run(&third, &params(), s.pairs.clone()).unwrap();
    assert_eq!(
        (result["epochs"].as_u64(), result["best_metric"].as_f64()),
        (Some(2), Some(1.0))
    );
    assert!(
        !third.details().iter().any(|d| d.starts_with("worker pid")),
        "{:?}",
        third.details()
    );
}

/// A worker an earlier attempt left running is killed before the new one starts.
fn kills_a_leftover_worker(s: &Setup) {
    // a stand-in for the leftover: this binary as `dev train-worker -`, waiting on its stdin
    let mut stale = Command::new(std::env::current_exe().unwrap())
        .args(["dev", "train-worker", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // its command line is in place once /proc shows it (exec done)
    let t0 = Instant::now();
    while !std::fs::read(format!("/proc/{}/cmdline", stale.id()))
        .is_ok_and(|c| c.windows(12).any(|w| w == b"train-worker"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the stand-in never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ck = TrainCheckpoint {
        epoch: 2,
        max_epochs: 2,
        worker_pid: Some(stale.id()),
        ..TrainCheckpoint::default()
    };
    let h = JobHandle::with_checkpoint("train", 2, ck.to_value());
    s.trainer.run(&h, &params(), s.pairs.clone()).unwrap();
    let killed = format!("killed the earlier attempt's worker (pid {})", stale.id());
    assert!(h.details().contains(&killed), "{:?}", h.details());
    use std::os::unix::process::ExitStatusExt;
    let status = stale
        .try_wait()
        .unwrap()
        .expect("the leftover worker still runs");
    assert_eq!(status.signal(), Some(9));
}

/// A cancel kills the worker and the run answers `Cancelled`, leaving no temp file.
fn a_cancel_kills_the_worker(s: &Setup) {
    let mut p = params();
    // a worker the cancel does not kill trains these to the end and the run answers Ok
    p.insert("max_epochs".into(), json!(5));
    let h = JobHandle::detached("train");
    let watcher = {
        let h = h.clone();
        std::thread::spawn(move || {
            while !h.details().iter().any(|d| d.starts_with("epoch 1/")) {
                std::thread::sleep(Duration::from_millis(20));
            }
            h.cancel_flag()
                .store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let r = s.trainer.run(&h, &p, s.pairs.clone());
    watcher.join().unwrap();
    assert!(matches!(r, Err(AppError::Cancelled)), "{r:?}");
    let pid = checkpoint(&h).worker_pid.unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the worker outlived the cancel"
    );
    let left: Vec<_> = std::fs::read_dir(s.model.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(s.trainer.stats()["status"], "STOPPED_OR_FAILED");
}

/// One scenario of this binary.
type Test = (&'static str, fn(&Setup));

const TESTS: &[Test] = &[
    ("resumes_from_the_checkpoint", resumes_from_the_checkpoint),
    ("kills_a_leftover_worker", kills_a_leftover_worker),
    ("a_cancel_kills_the_worker", a_cancel_kills_the_worker),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("dev")
        && args.get(2).map(String::as_str) == Some("train-worker")
    {
        let request = args.get(3).map(String::as_str).unwrap_or("-");
        if let Err(e) = ferrolabel_apps::train::run_worker(Path::new(request)) {
            eprintln!("training failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return;
    }
    // libtest's options (`--test-threads=1`, ...) are accepted; a plain argument filters
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let s = setup();
    let mut ran = 0;
    for (name, test) in TESTS {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let t0 = Instant::now();
        print!("test {name} ... ");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        test(&s);
        println!("ok ({:.1} s)", t0.elapsed().as_secs_f64());
        ran += 1;
    }
    println!("test result: ok. {ran} passed");
}
