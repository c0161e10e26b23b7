//! `ferrolabel infer` end to end: the real binary against MONAI's own bundle entry point
//! (`python -m monai.bundle run --config_file configs/inference.json`, run by
//! tests/golden/make_golden.py on the shared CT with the same weights, lowres, with torch pinned
//! to the fixtures' thread count). Same libtorch and threads, so the criterion is that of
//! `models/tests/golden.rs`: >= 99.99% of voxels agree and every mismatch is a near-tie (MONAI's
//! top-2 probability gap, carried to the input grid, below 1e-4).

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

/// One float32 tensor of a safetensors file, flattened in its (C) order.
fn read_f32(path: &Path, key: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let entry = &header[key];
    assert_eq!(entry["dtype"], "F32", "{key} in {}", path.display());
    let start = 8 + n + entry["data_offsets"][0].as_u64().unwrap() as usize;
    let end = 8 + n + entry["data_offsets"][1].as_u64().unwrap() as usize;
    bytes[start..end]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Shape of one tensor of a safetensors file.
fn shape_of(path: &Path, key: &str) -> Vec<usize> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    serde_json::from_value(header[key]["shape"].clone()).unwrap()
}

#[test]
fn cli_matches_monai_bundle_run_on_the_shared_ct() {
    let g = golden();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(g.join("manifest.json")).unwrap()).unwrap();
    let expected = g.join(manifest["bundle_run_lowres"].as_str().unwrap());
    let threads = manifest["threads"].as_i64().unwrap().to_string();
    let case = g.join("cases").join(format!(
        "{}.safetensors",
        manifest["bundle_run_case"].as_str().unwrap()
    ));
    let out = tempfile::tempdir().unwrap();
    let result = out.path().join("labels.nii.gz");
    let status = Command::new(env!("CARGO_BIN_EXE_ferrolabel"))
        .args(["infer", "--bundle"])
        .arg(g.join("bundle_full"))
        .arg("--image")
        .arg(repo().join("data/totalseg/example_ct.nii.gz"))
        .arg("--output")
        .arg(&result)
        .args(["--highres", "false", "--threads", &threads])
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
    // MONAI's top-2 probability gap on the input grid, in the fixture's (C) order: x slowest
    let gap = read_f32(&case, "gap_inv");
    let dims = ours.dims.to_vec();
    assert_eq!(
        shape_of(&case, "gap_inv"),
        dims,
        "the gap is on the input grid"
    );
    let (nx, ny, nz) = (dims[0], dims[1], dims[2]);
    let mut distinct = std::collections::BTreeSet::new();
    let mut mismatches = 0usize;
    let mut worst_gap = 0.0f32;
    // the volumes hold x fastest (NIfTI order)
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let i = x + nx * (y + ny * z);
                let (a, b) = (ours.data[i], theirs.data[i]);
                distinct.insert(b as i64);
                if a != b {
                    mismatches += 1;
                    worst_gap = worst_gap.max(gap[(x * ny + y) * nz + z]);
                }
            }
        }
    }
    let agreement = 1.0 - mismatches as f64 / ours.data.len() as f64;
    eprintln!(
        "ferrolabel infer vs monai.bundle run: {:.5}% of voxels agree ({mismatches} differ, \
         largest MONAI top-2 gap at a mismatch {worst_gap:e}); {} distinct labels",
        agreement * 100.0,
        distinct.len()
    );
    assert!(
        distinct.len() >= 25,
        "monai.bundle run's labels hold only {} distinct values: agreement would be trivial",
        distinct.len()
    );
    assert!(agreement >= 0.9999, "only {agreement} of voxels agree");
    assert!(
        worst_gap < 1e-4,
        "a mismatch where MONAI's top-2 probability gap is {worst_gap}: not a near-tie"
    );
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

/// The binary's allocator is jemalloc, configured to keep freed pages for reuse, and libtorch's
/// tensors are allocated through it: c10's `posix_memalign` and `free` bind to the executable's
/// definitions (what the dynamic linker reports with `LD_DEBUG=bindings`), not glibc's. With
/// glibc's allocator every window's activations were mapped afresh (docs/benchmarks.md).
#[test]
fn libtorch_allocates_through_the_binarys_jemalloc() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_ferrolabel");
    let out = Command::new(bin)
        .args(["infer", "--bundle"])
        .arg(g.join("bundle_small"))
        .arg("--image")
        .arg(repo().join("data/totalseg/example_ct_sm.nii.gz"))
        .arg("--output")
        .arg(tmp.path().join("labels.nii.gz"))
        .args(["--highres", "false", "--threads", "1"])
        .env("LD_DEBUG", "bindings")
        .env("LD_DEBUG_OUTPUT", tmp.path().join("ld"))
        .env("MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for opt in [
        "opt.oversize_threshold: 0",
        "opt.dirty_decay_ms: 60000",
        "opt.narenas: 1",
        "opt.background_thread: true",
    ] {
        assert!(
            stderr.contains(opt),
            "jemalloc's statistics at exit lack {opt:?}: {stderr}"
        );
    }
    let mut bindings = String::new();
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ld.")
        {
            bindings.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    for symbol in ["posix_memalign", "free"] {
        let bound_to: Vec<&str> = bindings
            .lines()
            .filter(|l| l.contains("/libc10.so ") && l.contains(&format!("`{symbol}'")))
            .collect();
        assert!(
            !bound_to.is_empty(),
            "libc10 never bound {symbol}: the run allocated no tensor?"
        );
        for line in bound_to {
            assert!(
                line.contains(&format!(" to {bin} ")),
                "libtorch's {symbol} is not the binary's: {line}"
            );
        }
    }
}
