//! Support for the training tests (`process/train.rs`, `process/torchrun.rs`): the project's
//! Python, the example CT's mapped `final` label, a bounded wait, gzip decoding and the one-shot
//! `ferrolabel infer` that a served checkpoint is compared with.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{example_ct, repo, BIN};

/// The Python with torch, MONAI and the `monailabel` client (`$FERROLABEL_PYTHON`, else the
/// repository's `.venv`).
pub fn python() -> PathBuf {
    std::env::var_os("FERROLABEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"))
}

/// The example's TotalSegmentator v2 reference mapped onto the bundle's labels by name (written
/// into `dir`; answers its bytes).
pub fn mapped_label(dir: &Path) -> Vec<u8> {
    let out_path = dir.join("seg_v1.nii.gz");
    run(Command::new(python())
        .arg(repo().join("tests/reference/train_reference.py"))
        .arg("map-v2")
        .arg(repo().join("data/totalseg/example_seg.nii.gz"))
        .arg(repo().join("data/totalseg/totalseg_v2_classes.json"))
        .arg(repo().join("apps/wholebody/model/wholeBody_ct_segmentation/configs/metadata.json"))
        .arg(&out_path));
    std::fs::read(out_path).unwrap()
}

/// Runs `cmd` to its end; panics with its standard error unless it succeeded.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `done` every 100 ms until it holds; panics naming `what` after `limit` (a guard
/// against a hang, not a timing assertion). Answers how long it took.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

/// A finished training task's log lines (`details`) and the epoch its "resumed exactly at epoch N"
/// line names; panics when there is no such line.
pub fn exact_resume(task: &serde_json::Value) -> (Vec<String>, u64) {
    let lines: Vec<String> = task["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str().map(str::to_string))
        .collect();
    let from = lines
        .iter()
        .find_map(|l| l.strip_prefix("resumed exactly at epoch "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exact resume line: {lines:?}"));
    (lines, from)
}

/// The gunzipped bytes of a `.nii.gz`.
pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// `ferrolabel infer` at low resolution on the example CT with the weights now in `bundle`
/// (a strict load in a fresh process): the label, gunzipped.
pub fn cli_infer_lowres(bundle: &Path, dir: &Path) -> Vec<u8> {
    let out_path = dir.join("cli.nii.gz");
    run(Command::new(BIN)
        .args(["infer", "--bundle"])
        .arg(bundle)
        .arg("--image")
        .arg(example_ct())
        .arg("--output")
        .arg(&out_path)
        .args(["--highres", "false", "--threads", "1"]));
    gunzip(&std::fs::read(&out_path).unwrap())
}
