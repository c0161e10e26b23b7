//! Shared by the training tests: repository paths, the MONAI reference script, and the shared
//! 30-slice CT with its reference segmentation mapped onto the bundle's labels.

#![allow(dead_code)]

use ferrolabel_models::train::data::Pair;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

pub fn python() -> PathBuf {
    std::env::var_os("FERROLABEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"))
}

pub fn reference(args: &[&str]) -> String {
    run_script("train_reference.py", args)
}

/// Runs `tests/reference/train_step_reference.py` (AdamW, train-mode forward and gradients).
pub fn step_reference(args: &[&str]) -> String {
    run_script("train_step_reference.py", args)
}

fn run_script(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/reference").join(script))
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn bundle() -> PathBuf {
    root().join("apps/wholebody/model/wholeBody_ct_segmentation")
}

/// The shared 30-slice CT and its TotalSegmentator v2 segmentation mapped onto the bundle's
/// labels by name (by the reference script, independently of ferrolabel's own mapping).
pub fn pair(dir: &Path) -> Pair {
    let label = dir.join("seg_v1.nii.gz");
    reference(&[
        "map-v2",
        root()
            .join("data/totalseg/example_seg.nii.gz")
            .to_str()
            .unwrap(),
        root()
            .join("data/totalseg/totalseg_v2_classes.json")
            .to_str()
            .unwrap(),
        bundle().join("configs/metadata.json").to_str().unwrap(),
        label.to_str().unwrap(),
    ]);
    Pair {
        id: "example_ct_sm".into(),
        image: root().join("data/totalseg/example_ct_sm.nii.gz"),
        label,
    }
}
