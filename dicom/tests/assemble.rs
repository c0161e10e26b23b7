//! Series assembly against SimpleITK's ImageSeriesReader (voxels equal, affine within
//! 1e-4 mm), on the shipped JPEG 2000 series and on series pydicom writes, and the refusals.

mod common;

use std::io::Write;
use std::path::Path;

use common::{affine_diff, files_of, python, run_py, s, shared_series, sitk_read};
use ferrolabel_dicom::{
    assemble, assemble_dir, assemble_zip, read_paths, AssembleOptions, DicomError, NamedBytes,
};

fn write_series(py: &Path, dir: &Path, args: &[&str]) {
    let mut all = vec!["write-series", s(dir)];
    all.extend_from_slice(args);
    run_py(py, &all);
}

fn zip_dir(dir: &Path) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for p in files_of(dir).iter().rev() {
        let name = format!("series/{}", p.file_name().unwrap().to_string_lossy());
        w.start_file(name, opts).unwrap();
        w.write_all(&std::fs::read(p).unwrap()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Assembles `dir` (files handed over in reverse name order) and compares with SimpleITK.
fn check_against_sitk(py: &Path, dir: &Path, work: &Path) -> ferrolabel_dicom::Series {
    let reference = sitk_read(py, dir, work);
    let mut paths = files_of(dir);
    paths.reverse();
    let series = ferrolabel_dicom::assemble_paths(&paths, &AssembleOptions::default())
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
    let mismatches = v
        .data
        .iter()
        .zip(&reference.data)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        mismatches,
        0,
        "{}: voxels differ from SimpleITK's",
        dir.display()
    );
    assert_eq!(v.data.len(), reference.data.len());
    series
}

#[test]
fn shared_jpeg2000_series_matches_simpleitk() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let series = check_against_sitk(&py, &shared_series(), work.path());
    assert_eq!(series.volume.dims, [512, 512, 20]);
    assert_eq!(series.info.slices.len(), 20);
    // the same bytes as one zip and from a folder
    let zipped = assemble_zip(&zip_dir(&shared_series()), &AssembleOptions::default()).unwrap();
    assert_eq!(zipped.volume.data, series.volume.data);
    assert_eq!(zipped.volume.affine, series.volume.affine);
    let from_dir = assemble_dir(&shared_series(), &AssembleOptions::default()).unwrap();
    assert_eq!(from_dir.volume.data, series.volume.data);
}

#[test]
fn written_series_match_simpleitk() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("lps_explicit", &["--syntax", "explicit"]),
        (
            "lps_implicit_reversed",
            &["--syntax", "implicit", "--reverse"],
        ),
        (
            "oblique_rle_reversed",
            &["--angle", "25", "--syntax", "rle", "--reverse"],
        ),
        (
            "oblique_deflate_scaled",
            &[
                "--angle",
                "-40",
                "--axis",
                "1",
                "0.2",
                "-0.5",
                "--syntax",
                "deflate",
                "--slope",
                "0.5",
                "--intercept",
                "-1000.25",
            ],
        ),
        (
            "coronal",
            &[
                "--angle",
                "90",
                "--axis",
                "1",
                "0",
                "0",
                "--spacing",
                "1.25",
            ],
        ),
    ];
    for (name, args) in cases {
        let dir = work.path().join(name);
        write_series(&py, &dir, args);
        let out = work.path().join(format!("{name}_ref"));
        std::fs::create_dir_all(&out).unwrap();
        let series = check_against_sitk(&py, &dir, &out);
        // in memory, reversed, and as a zip: the same volume
        let mut files: Vec<NamedBytes> = read_paths(&files_of(&dir), &Default::default()).unwrap();
        files.reverse();
        let mem = assemble(&files, &AssembleOptions::default()).unwrap();
        assert_eq!(mem.volume.data, series.volume.data, "{name}");
        let zipped = assemble_zip(&zip_dir(&dir), &AssembleOptions::default()).unwrap();
        assert_eq!(zipped.volume.affine, series.volume.affine, "{name}");
    }
}

fn refusal(py: &Path, work: &Path, name: &str, args: &[&str]) -> DicomError {
    let dir = work.join(name);
    write_series(py, &dir, args);
    match ferrolabel_dicom::assemble_dir(&dir, &AssembleOptions::default()) {
        Ok(_) => panic!("{name}: assembled, expected a refusal"),
        Err(e) => e,
    }
}

#[test]
fn refuses_bad_series_with_the_cause() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let e = refusal(&py, w, "dup", &["--duplicate"]);
    assert!(matches!(e, DicomError::DuplicateSlice(_)), "{e}");
    let e = refusal(&py, w, "missing", &["--missing"]);
    assert!(matches!(e, DicomError::UnevenSpacing(_)), "{e}");
    let e = refusal(&py, w, "tilt", &["--tilt", "15"]);
    assert!(matches!(e, DicomError::Sheared(_)), "{e}");
    assert!(e.to_string().contains("15.00°"), "{e}");
    let e = refusal(&py, w, "mr", &["--modality", "MR"]);
    assert!(matches!(e, DicomError::NotCt { .. }), "{e}");
    assert!(e.to_string().contains("MR"), "{e}");
    let e = refusal(&py, w, "nopix", &["--no-pixels"]);
    assert!(matches!(e, DicomError::NoPixelData { .. }), "{e}");
    let e = refusal(&py, w, "jpegls", &["--syntax", "fake-jpegls"]);
    assert!(
        matches!(e, DicomError::UnsupportedTransferSyntax { ref uid, .. } if uid == "1.2.840.10008.1.2.4.80"),
        "{e}"
    );

    // a good series, then damaged copies of it
    let good = w.join("good");
    write_series(&py, &good, &["--slices", "4"]);
    let files = read_paths(&files_of(&good), &Default::default()).unwrap();
    assert!(assemble(&files, &AssembleOptions::default()).is_ok());

    let mut with_text = files.clone();
    with_text.push(NamedBytes {
        name: "notes.txt".into(),
        bytes: b"this is not DICOM".to_vec(),
    });
    let e = assemble(&with_text, &AssembleOptions::default()).unwrap_err();
    assert!(
        matches!(e, DicomError::NotDicom { ref name, .. } if name == "notes.txt"),
        "{e}"
    );

    let mut truncated = files.clone();
    let cut = truncated[1].bytes.len() - 1000;
    truncated[1].bytes.truncate(cut);
    let e = assemble(&truncated, &AssembleOptions::default()).unwrap_err();
    assert!(matches!(e, DicomError::Corrupt { .. }), "{e}");

    let mut header_only = files.clone();
    header_only[2].bytes.truncate(300);
    let e = assemble(&header_only, &AssembleOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::Corrupt { .. } | DicomError::NoPixelData { .. }
        ),
        "{e}"
    );

    let e = assemble(&[], &AssembleOptions::default()).unwrap_err();
    assert!(matches!(e, DicomError::Empty), "{e}");

    // two series: refused unless one is chosen
    let other = w.join("other");
    write_series(&py, &other, &["--slices", "3", "--seed", "4"]);
    let mut both = files.clone();
    both.extend(read_paths(&files_of(&other), &Default::default()).unwrap());
    let e = assemble(&both, &AssembleOptions::default()).unwrap_err();
    let DicomError::MultipleSeries { uids } = &e else {
        panic!("{e}")
    };
    assert_eq!(uids.len(), 2);
    let chosen = assemble(
        &both,
        &AssembleOptions {
            series_uid: Some(uids[0].clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(chosen.volume.dims[2] == 3 || chosen.volume.dims[2] == 4);

    let small = AssembleOptions {
        input: ferrolabel_dicom::InputLimits {
            max_files: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let e = assemble(&files, &small).unwrap_err();
    assert!(matches!(e, DicomError::LimitExceeded(_)), "{e}");
}

#[test]
fn enhanced_multiframe_ct_equals_the_same_series_as_single_frames() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let geometry = [
        "--angle",
        "30",
        "--slices",
        "9",
        "--slope",
        "2",
        "--intercept",
        "-2048",
    ];
    let classic = work.path().join("classic");
    write_series(&py, &classic, &geometry);
    let enhanced = work.path().join("enhanced");
    let mut args = geometry.to_vec();
    args.extend(["--multiframe", "--reverse"]);
    write_series(&py, &enhanced, &args);
    // the single-frame series against SimpleITK, the multi-frame one against it
    let reference = check_against_sitk(&py, &classic, work.path());
    let multi = assemble_dir(&enhanced, &AssembleOptions::default()).unwrap();
    assert_eq!(multi.volume.dims, reference.volume.dims);
    assert!(affine_diff(&multi.volume.affine, &reference.volume.affine) <= 1e-9);
    assert!(
        multi.volume.data == reference.volume.data,
        "multi-frame voxels differ"
    );
    // frames were stored in reverse order: slice k is frame (n - k)
    let n = multi.info.slices.len() as u32;
    assert_eq!(multi.info.slices[0].frame_number, Some(n));
    assert_eq!(multi.info.slices[n as usize - 1].frame_number, Some(1));
}

/// dicom-parser allocates and zero-fills a value's declared length before reading it: a file
/// that declares a 3.75 GiB element in a few bytes is refused before it is parsed, from memory
/// and from disk (found by the `dicom_series` fuzz target).
#[test]
fn a_declared_length_past_the_end_of_the_file_is_refused_unread() {
    let mut bytes = std::fs::read(files_of(&shared_series())[0].clone()).unwrap();
    // a private OB element after Pixel Data declaring 0xF000_0000 bytes, then 16 bytes
    bytes.extend([0xE1, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
    bytes.extend(0xF000_0000u32.to_le_bytes());
    bytes.extend([0u8; 16]);
    let file = NamedBytes {
        name: "liar.dcm".into(),
        bytes: bytes.clone(),
    };
    let e = assemble(&[file], &AssembleOptions::default()).unwrap_err();
    assert!(
        matches!(e, DicomError::Corrupt { ref reason, .. } if reason.contains("declares 4026531840 bytes")),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("liar.dcm"), &bytes).unwrap();
    let e = assemble_dir(dir.path(), &AssembleOptions::default()).unwrap_err();
    assert!(
        matches!(e, DicomError::Corrupt { ref name, ref reason } if name == "liar.dcm" && reason.contains("declares")),
        "{e}"
    );
}

/// An upload assembles the same from memory as streamed from disk, on the inputs the fuzzer
/// found disagreeing (`fuzz/seeds/dicom_series/element-past-pixel-data-order`: three slices, one
/// with an element tagged (FFFF,15FF) among its first elements: the header parse stops there,
/// the old in-memory parse went on and read Modality, Rows and the rest).
#[test]
fn memory_and_disk_agree_on_fuzz_finds() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds/dicom_series/element-past-pixel-data-order");
    let data = std::fs::read(&seed).unwrap();
    let sep: &[u8] = b"%%FILE%%";
    let mut files = Vec::new();
    let mut rest = &data[..];
    while let Some(i) = rest.windows(sep.len()).position(|w| w == sep) {
        files.push(rest[..i].to_vec());
        rest = &rest[i + sep.len()..];
    }
    files.push(rest.to_vec());
    assert_eq!(files.len(), 3);
    let dir = tempfile::tempdir().unwrap();
    let named: Vec<NamedBytes> = files
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| NamedBytes {
            name: format!("f{i}.dcm"),
            bytes,
        })
        .collect();
    for f in &named {
        std::fs::write(dir.path().join(&f.name), &f.bytes).unwrap();
    }
    let options = AssembleOptions::default();
    let in_memory = assemble(&named, &options);
    let on_disk = assemble_dir(dir.path(), &options);
    match (&in_memory, &on_disk) {
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!(
            "memory and disk disagree: {:?} vs {:?}",
            a.as_ref().map(|s| s.volume.dims),
            b.as_ref().map(|s| s.volume.dims)
        ),
    }
}
