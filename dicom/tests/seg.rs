//! DICOM SEG writing: validated by `dciodvfy` (Debian's dicom3tools) with no errors, read back
//! with highdicom and plain pydicom voxel for voxel equal to the label map, and the SNOMED
//! mapping covers the bundle's 104 structure names.

mod common;

use std::path::Path;
use std::process::Command;

use common::{in_ci, python, run_py, s, shared_series};
use ferrolabel_dicom::seg::{codes::codes_for, write_binary_seg, SegOptions, Structure};
use ferrolabel_dicom::{assemble_dir, AssembleOptions, DicomError, Series};

/// Runs `dciodvfy` on `file` and returns its error lines; `None` (outside CI only) when the
/// tool is missing.
fn dciodvfy_errors(file: &Path) -> Option<Vec<String>> {
    let out = match Command::new("dciodvfy").arg(file).output() {
        Ok(out) => out,
        Err(e) => {
            assert!(
                !in_ci(),
                "dciodvfy not found ({e}): install Debian's dicom3tools \
                 (apt-get install -y dicom3tools); under CI=true this test must run"
            );
            eprintln!("skipping dciodvfy: {e}");
            return None;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("dciodvfy {}:\n{text}", file.display());
    Some(
        text.lines()
            .filter(|l| l.starts_with("Error"))
            .map(str::to_string)
            .collect(),
    )
}

fn structure(value: u8, name: &str) -> Structure {
    Structure {
        value,
        name: name.into(),
    }
}

/// Fills a box of voxels with `value`.
fn paint(labels: &mut [u8], dims: [usize; 3], lo: [usize; 3], hi: [usize; 3], value: u8) {
    for k in lo[2]..hi[2] {
        for j in lo[1]..hi[1] {
            for i in lo[0]..hi[0] {
                labels[i + dims[0] * (j + dims[1] * k)] = value;
            }
        }
    }
}

/// Writes the SEG, validates it and reads it back; returns the decoded map and the segment
/// labels.
fn round_trip(
    py: &Path,
    series: &Series,
    source: &Path,
    labels: &[u8],
    structures: &[Structure],
    work: &Path,
) -> (Vec<u8>, serde_json::Value) {
    let bytes = write_binary_seg(&series.info, labels, structures, &SegOptions::default()).unwrap();
    let seg = work.join("seg.dcm");
    std::fs::write(&seg, &bytes).unwrap();
    if let Some(errors) = dciodvfy_errors(&seg) {
        assert!(errors.is_empty(), "dciodvfy errors: {errors:#?}");
    }
    let names: serde_json::Map<String, serde_json::Value> = structures
        .iter()
        .map(|st| (st.name.clone(), serde_json::json!(st.value)))
        .collect();
    let names_file = work.join("names.json");
    std::fs::write(&names_file, serde_json::to_vec(&names).unwrap()).unwrap();
    let out = work.join("back");
    run_py(
        py,
        &["seg-read", s(&seg), s(source), s(&names_file), s(&out)],
    );
    let back = std::fs::read(out.with_extension("u8")).unwrap();
    let info = serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
    (back, info)
}

#[test]
fn seg_of_written_oblique_series_validates_and_reads_back() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("series");
    run_py(
        &py,
        &[
            "write-series",
            s(&source),
            "--angle",
            "20",
            "--slices",
            "10",
            "--reverse",
        ],
    );
    let series = assemble_dir(&source, &AssembleOptions::default()).unwrap();
    let dims = series.volume.dims;
    let mut labels = vec![0u8; series.volume.len()];
    paint(&mut labels, dims, [5, 4, 2], [30, 20, 8], 5); // liver
    paint(&mut labels, dims, [32, 22, 0], [46, 38, 3], 1); // spleen
    paint(&mut labels, dims, [20, 30, 9], [21, 31, 10], 12); // adrenal_gland_left, one voxel
    paint(&mut labels, dims, [0, 0, 5], [2, 2, 6], 200); // not named: left out
    let structures = [
        structure(1, "spleen"),
        structure(7, "aorta"), // named, absent: no segment
        structure(5, "liver"),
        structure(12, "adrenal_gland_left"),
    ];
    let (back, info) = round_trip(&py, &series, &source, &labels, &structures, work.path());
    let expected: Vec<u8> = labels
        .iter()
        .map(|&v| if v == 200 { 0 } else { v })
        .collect();
    assert_eq!(back.len(), expected.len());
    let wrong = back.iter().zip(&expected).filter(|(a, b)| a != b).count();
    assert_eq!(wrong, 0, "{wrong} voxels differ after the round trip");
    assert_eq!(
        info["segments"],
        serde_json::json!(["spleen", "liver", "adrenal_gland_left"])
    );
    // only non-empty frames: spleen 3 slices, liver 6, adrenal 1
    assert_eq!(info["frames"], serde_json::json!(10));
}

#[test]
fn seg_of_the_shared_jpeg2000_series_validates_and_reads_back() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let series = assemble_dir(&shared_series(), &AssembleOptions::default()).unwrap();
    // bone-ish voxels as one structure, air inside the body as another
    let labels: Vec<u8> = series
        .volume
        .data
        .iter()
        .map(|&v| match v {
            v if v > 300.0 => 92,
            v if (-990.0..-600.0).contains(&v) => 15,
            _ => 0,
        })
        .collect();
    let structures = [
        structure(92, "sacrum"),
        structure(15, "lung_upper_lobe_right"),
    ];
    let (back, _) = round_trip(
        &py,
        &series,
        &shared_series(),
        &labels,
        &structures,
        work.path(),
    );
    assert!(
        back == labels,
        "the shared series' SEG does not read back equal"
    );
}

#[test]
fn seg_refuses_maps_that_do_not_fit() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("series");
    run_py(&py, &["write-series", s(&source), "--slices", "3"]);
    let series = assemble_dir(&source, &AssembleOptions::default()).unwrap();
    let empty = vec![0u8; series.volume.len()];
    let liver = [structure(5, "liver")];
    let e = write_binary_seg(&series.info, &empty, &liver, &SegOptions::default()).unwrap_err();
    assert!(matches!(e, DicomError::InvalidLabels(_)), "{e}");
    let short = vec![5u8; 10];
    let e = write_binary_seg(&series.info, &short, &liver, &SegOptions::default()).unwrap_err();
    assert!(e.to_string().contains("grid"), "{e}");
}

#[test]
fn every_bundle_structure_has_snomed_codes() {
    let metadata = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../apps/wholebody/model/wholeBody_ct_segmentation/configs/metadata.json");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(metadata).unwrap()).unwrap();
    let channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        .as_object()
        .unwrap();
    let names: Vec<&str> = channels
        .iter()
        .filter(|(k, _)| k.as_str() != "0")
        .map(|(_, v)| v.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 104);
    let unmapped: Vec<&&str> = names.iter().filter(|n| codes_for(n).is_none()).collect();
    assert!(unmapped.is_empty(), "no SNOMED codes for {unmapped:?}");
    let left = codes_for("kidney_left").unwrap();
    assert_eq!(left.property_type.meaning, "Kidney");
    assert_eq!(left.type_modifier.as_ref().unwrap().meaning, "Left");
    let rib = codes_for("rib_right_12").unwrap();
    assert_eq!(rib.category.scheme, "SCT");
}

#[test]
fn seg_of_an_enhanced_multiframe_source_references_frames() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("enhanced");
    run_py(
        &py,
        &["write-series", s(&source), "--multiframe", "--slices", "5"],
    );
    let series = assemble_dir(&source, &AssembleOptions::default()).unwrap();
    let mut labels = vec![0u8; series.volume.len()];
    paint(&mut labels, series.volume.dims, [3, 3, 1], [9, 9, 4], 5);
    let bytes = write_binary_seg(
        &series.info,
        &labels,
        &[structure(5, "liver")],
        &SegOptions::default(),
    )
    .unwrap();
    let seg = work.path().join("seg.dcm");
    std::fs::write(&seg, &bytes).unwrap();
    if let Some(errors) = dciodvfy_errors(&seg) {
        assert!(errors.is_empty(), "dciodvfy errors: {errors:#?}");
    }
    let obj = dicom_object::open_file(&seg).unwrap();
    let frames = obj
        .element(dicom_dictionary_std::tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(frames.len(), 3);
    let numbers: Vec<i32> = frames
        .iter()
        .map(|f| {
            let d = &f
                .get(dicom_dictionary_std::tags::DERIVATION_IMAGE_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0];
            let src = &d
                .get(dicom_dictionary_std::tags::SOURCE_IMAGE_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0];
            src.get(dicom_dictionary_std::tags::REFERENCED_FRAME_NUMBER)
                .unwrap()
                .to_int()
                .unwrap()
        })
        .collect();
    assert_eq!(numbers, vec![2, 3, 4]);
}
