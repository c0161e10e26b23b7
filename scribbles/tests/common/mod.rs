//! Shared helpers of the scribbles tests: the project's Python, raw little-endian files, the
//! real CT crop, and the graph-cut energy of a labelling.
//!
//! Python is `$FERROLABEL_PYTHON`, else `../.venv/bin/python` relative to this crate. Without it a
//! test prints why and passes on a developer machine, but fails under `CI=true`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrolabel_scribbles::GridCapacities;

/// The interpreter, or `None` (outside CI) when there is none.
pub fn python() -> Option<PathBuf> {
    let p = match std::env::var_os("FERROLABEL_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
    };
    if p.exists() {
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    assert!(
        !ci,
        "no Python at {} (set FERROLABEL_PYTHON): under CI=true these tests must run",
        p.display()
    );
    eprintln!("skipping: no Python at {}", p.display());
    None
}

/// Runs `tests/python/<script>` with `dir` as its argument; panics with its output on failure.
pub fn run_py(python: &Path, script: &str, dir: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(python)
        .arg(&path)
        .arg(dir)
        .output()
        .expect("failed to start Python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// Writes `f32` values little-endian.
pub fn write_f32(path: &Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// Reads a file of bytes (labels written by Python as `uint8`).
pub fn read_u8(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A crop of the real abdominal CT in `data/totalseg/example_ct_sm.nii.gz` (122×101×30, 3 mm)
/// and of TotalSegmentator's segmentation of it (`example_seg.nii.gz`): `(dims, HU, labels)`,
/// x fastest. The box `[x0, x1) × [y0, y1) × [z0, z1)`.
pub fn ct_crop(start: [usize; 3], end: [usize; 3]) -> ([usize; 3], Vec<f32>, Vec<u8>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/totalseg");
    let limits = ferrolabel_imaging::Limits::default();
    let ct = ferrolabel_imaging::read_volume(&dir.join("example_ct_sm.nii.gz"), &limits).unwrap();
    let seg = ferrolabel_imaging::read_volume(&dir.join("example_seg.nii.gz"), &limits).unwrap();
    assert_eq!(ct.dims, seg.dims);
    let d = [end[0] - start[0], end[1] - start[1], end[2] - start[2]];
    let (mut hu, mut lab) = (Vec::new(), Vec::new());
    for z in start[2]..end[2] {
        for y in start[1]..end[1] {
            for x in start[0]..end[0] {
                let i = x + ct.dims[0] * (y + ct.dims[1] * z);
                hu.push(ct.data[i]);
                lab.push(seg.data[i] as u8);
            }
        }
    }
    (d, hu, lab)
}

/// The cut's cost of a labelling (1 = source side), in `f64`: source capacity of every sink-side
/// voxel, sink capacity of every source-side voxel, and every edge between the two sides.
pub fn cut_energy(dims: [usize; 3], caps: &GridCapacities<'_>, labels: &[u8]) -> f64 {
    let step = [1, dims[0], dims[0] * dims[1]];
    let mut e = 0f64;
    let mut i = 0;
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                e += if labels[i] == 1 {
                    caps.sink[i]
                } else {
                    caps.source[i]
                } as f64;
                for (a, c) in [x, y, z].into_iter().enumerate() {
                    if c + 1 < dims[a] && labels[i] != labels[i + step[a]] {
                        e += caps.edges[a][i] as f64;
                    }
                }
                i += 1;
            }
        }
    }
    e
}
