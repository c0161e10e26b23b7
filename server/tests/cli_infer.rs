//! `ferrolabel infer` end to end: the real binary against MONAI's own bundle entry point
//! (`python -m monai.bundle run --config_file configs/inference.json`, run by
//! tests/golden/make_golden.py on the shared CT with the same weights, lowres).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

fn golden() -> PathBuf {
    let dir = std::env::var_os("FERROLABEL_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/golden")));
    assert!(
        dir.join("manifest.json").exists(),
        "golden fixtures missing at {}: run scripts/test.sh",
        dir.display()
    );
    dir
}

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn read_labels(path: &Path) -> ferrolabel_imaging::Volume {
    ferrolabel_imaging::read_volume(path, &ferrolabel_imaging::Limits::default()).unwrap()
}

#[test]
fn cli_matches_monai_bundle_run_on_the_shared_ct() {
    let g = golden();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(g.join("manifest.json")).unwrap()).unwrap();
    let expected = g.join(manifest["bundle_run_lowres"].as_str().unwrap());
    let out = tempfile::tempdir().unwrap();
    let result = out.path().join("labels.nii.gz");
    let status = Command::new(env!("CARGO_BIN_EXE_ferrolabel"))
        .args(["infer", "--bundle"])
        .arg(g.join("bundle_full"))
        .arg("--image")
        .arg(repo().join("data/totalseg/example_ct.nii.gz"))
        .arg("--output")
        .arg(&result)
        .args(["--highres", "false", "--threads", "2"])
        .status()
        .unwrap();
    assert!(status.success());
    let ours = read_labels(&result);
    let theirs = read_labels(&expected);
    assert_eq!(ours.dims, theirs.dims);
    for (a, b) in ours
        .affine
        .iter()
        .flatten()
        .zip(theirs.affine.iter().flatten())
    {
        assert!(
            (a - b).abs() < 1e-4,
            "affines differ: {:?} vs {:?}",
            ours.affine,
            theirs.affine
        );
    }
    let same = ours
        .data
        .iter()
        .zip(&theirs.data)
        .filter(|(a, b)| a == b)
        .count();
    let agreement = same as f64 / ours.data.len() as f64;
    eprintln!(
        "ferrolabel infer vs monai.bundle run: {:.5}% of voxels agree",
        agreement * 100.0
    );
    assert!(agreement >= 0.999, "only {agreement} of voxels agree");
    let header = ours.header.as_ref().unwrap();
    assert_eq!(header.datatype, 2, "labels are written as uint8");
}

fn run_infer(args: &[OsString], output: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolabel"))
        .arg("infer")
        .args(args)
        .arg("--output")
        .arg(output)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_fails_with_a_one_line_reason() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.nii.gz");
    std::fs::write(&garbage, b"this is not a nifti file at all").unwrap();
    let small_ct: OsString = repo().join("data/totalseg/example_ct_sm.nii.gz").into();
    let nb = tmp.path().join("noweights");
    std::fs::create_dir_all(nb.join("configs")).unwrap();
    for f in ["inference.json", "metadata.json"] {
        std::fs::copy(
            g.join("bundle_small/configs").join(f),
            nb.join("configs").join(f),
        )
        .unwrap();
    }
    let cases: Vec<(Vec<OsString>, &str)> = vec![
        (
            vec![
                "--bundle".into(),
                g.join("bundle_small").into(),
                "--image".into(),
                garbage.clone().into(),
            ],
            "cannot read",
        ),
        (
            vec![
                "--bundle".into(),
                tmp.path().into(),
                "--image".into(),
                small_ct.clone(),
            ],
            "bundle",
        ),
        (
            vec![
                "--bundle".into(),
                g.join("bundle_small").into(),
                "--image".into(),
                small_ct.clone(),
                "--device".into(),
                "tpu".into(),
            ],
            "unknown device",
        ),
        (
            vec!["--bundle".into(), nb.into(), "--image".into(), small_ct],
            "no weights",
        ),
    ];
    for (args, needle) in cases {
        let (ok, err) = run_infer(&args, &tmp.path().join("x.nii.gz"));
        assert!(!ok, "{args:?} should fail");
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("ferrolabel:"))
            .collect();
        assert_eq!(lines.len(), 1, "stderr: {err}");
        assert!(lines[0].contains(needle), "{needle:?} not in {err:?}");
        assert!(
            !tmp.path().join("x.nii.gz").exists(),
            "no output on failure"
        );
    }
}
