//! JPEG series (Baseline, Extended, Lossless process 14 and its selection value 1) against
//! SimpleITK's ImageSeriesReader. Series are written by `dicom_reference.py` (Explicit VR LE),
//! narrowed to 8 or 12 bits by `jpeg_reference.py` for the lossy processes, and compressed
//! file by file by DCMTK's `dcmcjpeg` (Debian `dcmtk`, `scripts/setup-system.sh`), an encoder
//! independent of both decoders (dicom-rs' `jpeg-decoder` here, GDCM's IJG libjpeg in ITK).
//!
//! Lossless: voxels equal to SimpleITK's and to the uncompressed source. Lossy (8-bit, baseline
//! and extended process 2): the affine within 1e-4 mm as always, voxels within one stored value
//! (× RescaleSlope) of SimpleITK's — the JPEG standard leaves the IDCT's rounding to the decoder
//! (ISO 10918-1 only bounds its accuracy), so two conforming decoders may differ by ±1 — and
//! close to the source. 12-bit extended (process 4) is not decodable and is refused.
//!
//! Without `dcmcjpeg` (or the project's Python) the tests pass with a note on a developer
//! machine and fail under `CI=true`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{affine_diff, files_of, in_ci, python, run_py, s, sitk_read};
use dicom_dictionary_std::tags;
use ferrolabel_dicom::{assemble_paths, AssembleOptions, DicomError, Series};

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const BASELINE: &str = "1.2.840.10008.1.2.4.50";
const EXTENDED: &str = "1.2.840.10008.1.2.4.51";
const LOSSLESS_14: &str = "1.2.840.10008.1.2.4.57";
const LOSSLESS_SV1: &str = "1.2.840.10008.1.2.4.70";

/// `dcmcjpeg` from PATH, or `None` (outside CI only) when it is missing.
fn dcmcjpeg() -> Option<PathBuf> {
    let exe = PathBuf::from("dcmcjpeg");
    if Command::new(&exe)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some(exe);
    }
    assert!(
        !in_ci(),
        "no dcmcjpeg on PATH (Debian package dcmtk, scripts/setup-system.sh): under CI=true the \
         JPEG tests must run, not skip"
    );
    eprintln!("skipping: no dcmcjpeg on PATH (apt-get install dcmtk)");
    None
}

/// Writes a 64×64×6 series into `dir` with `dicom_reference.py write-series`.
fn write_series(py: &Path, dir: &Path, args: &[&str]) {
    let mut all = vec![
        "write-series",
        s(dir),
        "--rows",
        "64",
        "--cols",
        "64",
        "--slices",
        "6",
    ];
    all.extend_from_slice(args);
    run_py(py, &all);
}

/// Narrows the stored values of `dir` to `bits` (8 or 12), unsigned.
fn requantize(py: &Path, dir: &Path, bits: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jpeg_reference.py");
    let out = Command::new(py)
        .arg(&script)
        .args(["requantize", s(dir), "--bits", bits])
        .output()
        .expect("running Python");
    assert!(
        out.status.success(),
        "jpeg_reference.py requantize failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compresses every file of `src` into `dst` with `dcmcjpeg <flag>`.
fn compress(exe: &Path, src: &Path, dst: &Path, flag: &str) {
    std::fs::create_dir_all(dst).unwrap();
    for f in files_of(src) {
        let out = Command::new(exe)
            .arg(flag)
            .arg(&f)
            .arg(dst.join(f.file_name().unwrap()))
            .output()
            .expect("running dcmcjpeg");
        assert!(
            out.status.success(),
            "dcmcjpeg {flag} {} failed:\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The transfer syntax every file of `dir` declares (they must agree).
fn syntax_of(dir: &Path) -> String {
    let mut uids: Vec<String> = files_of(dir)
        .iter()
        .map(|p| {
            let obj = dicom_object::open_file(p).unwrap();
            obj.meta()
                .transfer_syntax()
                .trim_end_matches('\0')
                .to_string()
        })
        .collect();
    uids.dedup();
    assert_eq!(uids.len(), 1, "{}: mixed syntaxes {uids:?}", dir.display());
    uids.pop().unwrap()
}

/// Assembles `dir` (files in reverse name order) and compares it with SimpleITK: same grid,
/// affine within 1e-4 mm, every voxel within `tolerance`. Returns our series and the largest
/// voxel difference.
fn against_sitk(py: &Path, dir: &Path, work: &Path, tolerance: f32) -> (Series, f32) {
    let reference = sitk_read(py, dir, work);
    let mut paths = files_of(dir);
    paths.reverse();
    let series = assemble_paths(&paths, &AssembleOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let v = &series.volume;
    assert_eq!(v.dims, reference.dims, "{}", dir.display());
    let diff = affine_diff(&v.affine, &reference.affine);
    assert!(
        diff <= 1e-4,
        "{}: affine differs by {diff} mm\nours {:?}\nsitk {:?}",
        dir.display(),
        v.affine,
        reference.affine
    );
    assert_eq!(v.data.len(), reference.data.len());
    let worst = max_abs_diff(&v.data, &reference.data);
    assert!(
        worst <= tolerance,
        "{}: voxels differ from SimpleITK's by up to {worst} (tolerance {tolerance})",
        dir.display()
    );
    (series, worst)
}

/// The largest RescaleSlope of the files of `dir`.
fn max_slope(dir: &Path) -> f32 {
    files_of(dir)
        .iter()
        .map(|p| {
            let obj = dicom_object::open_file(p).unwrap();
            obj.element(tags::RESCALE_SLOPE)
                .unwrap()
                .to_float32()
                .unwrap()
        })
        .fold(0.0, f32::max)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn jpeg_lossless_series_equal_simpleitk_and_the_source() {
    let Some(py) = python() else { return };
    let Some(exe) = dcmcjpeg() else { return };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // 16-bit signed, oblique, stored in reverse order, with a non-trivial rescale
    let src = w.join("source");
    write_series(
        &py,
        &src,
        &[
            "--angle",
            "25",
            "--reverse",
            "--slope",
            "0.5",
            "--intercept",
            "-1000.25",
        ],
    );
    assert_eq!(syntax_of(&src), EXPLICIT_LE);
    let source = assemble_paths(&files_of(&src), &AssembleOptions::default()).unwrap();
    for (flag, uid) in [("+e1", LOSSLESS_SV1), ("+el", LOSSLESS_14)] {
        let dir = w.join(format!("lossless{flag}"));
        compress(&exe, &src, &dir, flag);
        assert_eq!(syntax_of(&dir), uid, "dcmcjpeg {flag}");
        let out = w.join(format!("ref{flag}"));
        std::fs::create_dir_all(&out).unwrap();
        let (series, _) = against_sitk(&py, &dir, &out, 0.0);
        assert_eq!(series.volume.affine, source.volume.affine, "{uid}");
        assert!(
            series.volume.data == source.volume.data,
            "{uid}: lossless voxels differ from the uncompressed source"
        );
    }
}

#[test]
fn jpeg_baseline_and_extended_8_bit_series_match_simpleitk() {
    let Some(py) = python() else { return };
    let Some(exe) = dcmcjpeg() else { return };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // 8-bit unsigned (JPEG's 8-bit DCT processes: baseline, and extended process 2), oblique,
    // stored in reverse order, with slope 2 (one stored value = 2 HU)
    let src = w.join("source8");
    write_series(
        &py,
        &src,
        &[
            "--angle",
            "-30",
            "--reverse",
            "--slope",
            "2",
            "--intercept",
            "-200",
        ],
    );
    requantize(&py, &src, "8");
    let source = assemble_paths(&files_of(&src), &AssembleOptions::default()).unwrap();
    for (flag, uid) in [("+eb", BASELINE), ("+ee", EXTENDED)] {
        let dir = w.join(format!("lossy{flag}"));
        compress(&exe, &src, &dir, flag);
        assert_eq!(syntax_of(&dir), uid, "dcmcjpeg {flag}");
        let out = w.join(format!("ref{flag}"));
        std::fs::create_dir_all(&out).unwrap();
        // one stored value apart at most (IDCT rounding); dcmcjpeg stretches each image's
        // stored range to 0..255 and writes the slope that undoes it (2 × range / 255)
        let slope = max_slope(&dir);
        let (series, worst) = against_sitk(&py, &dir, &out, slope * 1.0001);
        assert_eq!(series.volume.affine, source.volume.affine, "{uid}");
        // and a faithful decoding of the source: quality 90 leaves a mean error of a few
        // stored values; a wrong sample order, shift or sign would be off by far more
        let mean = mean_abs_diff(&series.volume.data, &source.volume.data);
        eprintln!("{uid}: max |ours - sitk| = {worst} HU, mean |ours - source| = {mean:.3} HU");
        assert!(
            mean <= 16.0,
            "{uid}: mean error {mean} HU against the uncompressed source"
        );
    }
}

/// JPEG Extended process 4 (12-bit DCT) is not decoded: `jpeg-decoder` 0.3 (dicom-rs' pure-Rust
/// JPEG codec) supports 12/16-bit samples only in lossless mode, and no Cargo feature of
/// dicom-pixeldata adds another pure-Rust decoder. The series is refused from its header as an
/// unsupported transfer syntax (naming the file and the bits stored), while
/// SimpleITK (GDCM's IJG libjpeg) reads it — so the file itself is valid.
#[test]
fn jpeg_extended_12_bit_series_is_refused() {
    let Some(py) = python() else { return };
    let Some(exe) = dcmcjpeg() else { return };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let src = w.join("source12");
    write_series(&py, &src, &["--slices", "3"]);
    requantize(&py, &src, "12");
    let dir = w.join("lossy12");
    compress(&exe, &src, &dir, "+ee");
    assert_eq!(syntax_of(&dir), EXTENDED);
    let reference = sitk_read(&py, &dir, w);
    assert_eq!(reference.dims, [64, 64, 3]);
    let Err(e) = assemble_paths(&files_of(&dir), &AssembleOptions::default()) else {
        panic!("a 12-bit JPEG Extended series assembled: update this test and docs/dicom.md");
    };
    // refused by name from the header, not as a decoding failure
    assert!(
        matches!(e, DicomError::UnsupportedTransferSyntax { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("12 bits stored"), "{e}");
    assert!(e.to_string().contains(".dcm"), "{e}");
}
