//! Shared helpers of the DICOM tests: the project's Python (pydicom, SimpleITK, highdicom) as
//! the writer of test series and the independent reader, and paths to the shipped data.
//!
//! Python is `$FERROLABEL_PYTHON`, else `../.venv/bin/python` relative to this crate. Without
//! it a test prints why and passes on a developer machine, but fails under `CI=true`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether the tests run in CI (`CI` set to `true` or `1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The project's Python, or `None` (outside CI only) when it is missing.
pub fn python() -> Option<PathBuf> {
    let p = match std::env::var_os("FERROLABEL_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
    };
    if p.exists() {
        return Some(p);
    }
    assert!(
        !in_ci(),
        "no Python at {} (set FERROLABEL_PYTHON or run scripts/setup-torch.sh): under CI=true \
         the DICOM reference tests must run, not skip",
        p.display()
    );
    eprintln!("skipping: no Python at {}", p.display());
    None
}

/// Runs `dicom_reference.py` with `args`, panicking with its output on failure.
pub fn run_py(python: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dicom_reference.py");
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .expect("running Python");
    assert!(
        out.status.success(),
        "dicom_reference.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shared JPEG 2000 series copied into the repository.
pub fn shared_series() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/totalseg/example_ct_dicom")
}

/// A path as `&str`.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Reads little-endian `f32`s.
pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("reading reference voxels")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// SimpleITK's reading of a folder: voxels (x fastest) and the RAS affine.
pub struct Reference {
    /// Grid size.
    pub dims: [usize; 3],
    /// Voxels as `f32`.
    pub data: Vec<f32>,
    /// RAS voxel-to-world affine.
    pub affine: [[f64; 4]; 4],
}

/// Reads `dir` with SimpleITK's ImageSeriesReader.
pub fn sitk_read(python: &Path, dir: &Path, work: &Path) -> Reference {
    let prefix = work.join("sitk");
    run_py(python, &["sitk-read", s(dir), s(&prefix)]);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(prefix.with_extension("json")).unwrap()).unwrap();
    let dims: Vec<usize> = serde_json::from_value(meta["dims"].clone()).unwrap();
    let affine: Vec<Vec<f64>> = serde_json::from_value(meta["affine"].clone()).unwrap();
    let mut a = [[0.0; 4]; 4];
    for r in 0..4 {
        for c in 0..4 {
            a[r][c] = affine[r][c];
        }
    }
    Reference {
        dims: [dims[0], dims[1], dims[2]],
        data: read_f32(&prefix.with_extension("f32")),
        affine: a,
    }
}

/// Largest absolute difference between two affines.
pub fn affine_diff(a: &[[f64; 4]; 4], b: &[[f64; 4]; 4]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The files of a folder, sorted by name.
pub fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}
