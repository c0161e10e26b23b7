//! DICOM SEG writing: validated by `dciodvfy` (Debian's dicom3tools) with no errors, read back
//! with highdicom and plain pydicom voxel for voxel equal to the label map, and the SNOMED
//! mapping covers the bundle's 104 structure names.

mod common;

use std::path::Path;
use std::process::Command;

use common::{in_ci, python, run_py, s, shared_series};
use ferrolabel_dicom::seg::{
    codes::codes_for, read_seg, write_binary_seg, write_labelmap_seg, SegOptions, SegmentationType,
    Structure,
};
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
    // and our own reader agrees
    let bytes = std::fs::read(work.path().join("seg.dcm")).unwrap();
    let ours = read_seg(&bytes, &series.info, &structures).unwrap();
    assert_eq!(differing(&ours.labels, &labels), 0);
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
    // the SEG reader maps a segment by its codes when its label is not a bundle name: each
    // name's property type + modifier must be its own
    let mut seen = std::collections::HashMap::new();
    for n in &names {
        let c = codes_for(n).unwrap();
        let key = (
            c.property_type.value.clone(),
            c.type_modifier.as_ref().map(|m| m.value.clone()),
        );
        if let Some(other) = seen.insert(key, *n) {
            panic!("{n} and {other} share their codes");
        }
    }
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

/// Counts voxels that differ.
fn differing(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len(), "maps of different sizes");
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[test]
fn read_seg_round_trips_our_binary_seg_with_unaligned_frames() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("series");
    // 9 x 7 pixels per frame: frames are bit-packed across byte boundaries
    run_py(
        &py,
        &[
            "write-series",
            s(&source),
            "--rows",
            "7",
            "--cols",
            "9",
            "--slices",
            "6",
            "--angle",
            "30",
            "--reverse",
        ],
    );
    let series = assemble_dir(&source, &AssembleOptions::default()).unwrap();
    let dims = series.volume.dims;
    let mut labels = vec![0u8; series.volume.len()];
    paint(&mut labels, dims, [1, 1, 0], [8, 5, 4], 5); // liver
    paint(&mut labels, dims, [3, 2, 2], [5, 7, 6], 2); // kidney_right, overwriting some liver
    paint(&mut labels, dims, [0, 6, 5], [1, 7, 6], 3); // kidney_left: one voxel, last bit
    let structures = [
        structure(5, "liver"),
        structure(2, "kidney_right"),
        structure(3, "kidney_left"),
    ];
    let bytes =
        write_binary_seg(&series.info, &labels, &structures, &SegOptions::default()).unwrap();
    let back = read_seg(&bytes, &series.info, &structures).unwrap();
    assert_eq!(back.segmentation_type, SegmentationType::Binary);
    assert_eq!(
        differing(&back.labels, &labels),
        0,
        "the SEG does not read back equal"
    );
    assert_eq!(back.overlapping_voxels, 0);
    assert_eq!(back.unknown().count(), 0);
    assert_eq!(
        back.segments.iter().map(|s| s.voxels).sum::<usize>(),
        labels.iter().filter(|&&v| v != 0).count()
    );

    // the bundle numbers structures differently: segments follow their names
    let renumbered = [
        structure(40, "kidney_left"),
        structure(41, "liver"),
        structure(42, "kidney_right"),
    ];
    let back = read_seg(&bytes, &series.info, &renumbered).unwrap();
    let expected: Vec<u8> = labels
        .iter()
        .map(|&v| match v {
            5 => 41,
            2 => 42,
            3 => 40,
            _ => 0,
        })
        .collect();
    assert_eq!(differing(&back.labels, &expected), 0);

    // a bundle without kidney_left: that segment is reported unknown and left out
    let back = read_seg(&bytes, &series.info, &structures[..2]).unwrap();
    let unknown: Vec<&str> = back.unknown().map(|s| s.label.as_str()).collect();
    assert_eq!(unknown, vec!["kidney_left"]);
    assert_eq!(back.labels.iter().filter(|&&v| v == 3).count(), 0);
    assert_eq!(back.unknown().next().unwrap().voxels, 1);
}

#[test]
fn read_seg_decodes_a_highdicom_seg_by_codes_and_reports_unknown_segments() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("series");
    run_py(
        &py,
        &["write-series", s(&source), "--slices", "8", "--angle", "10"],
    );
    let series = assemble_dir(&source, &AssembleOptions::default()).unwrap();
    let dims = series.volume.dims;
    let mut labels = vec![0u8; series.volume.len()];
    paint(&mut labels, dims, [2, 2, 1], [20, 15, 6], 1);
    paint(&mut labels, dims, [25, 20, 3], [40, 35, 8], 2);
    paint(&mut labels, dims, [5, 30, 0], [10, 38, 2], 3);
    std::fs::write(work.path().join("labels.u8"), &labels).unwrap();
    let spec = serde_json::json!([
        // the label is not a bundle name; the codes are liver's
        {"value": 1, "label": "Leber", "type": ["SCT", "10200004", "Liver"]},
        // kidney + left modifier: kidney_left by its codes
        {"value": 2, "label": "Niere links", "type": ["SCT", "64033007", "Kidney"],
         "modifier": ["SCT", "7771000", "Left"]},
        // neither label nor codes known to the bundle
        {"value": 3, "label": "Mystery", "type": ["SCT", "49755003", "Morphologically altered structure"]},
    ]);
    std::fs::write(work.path().join("spec.json"), spec.to_string()).unwrap();
    let seg = work.path().join("hd.dcm");
    run_py(
        &py,
        &[
            "hd-write-seg",
            s(&source),
            s(&work.path().join("labels.u8")),
            s(&work.path().join("spec.json")),
            s(&seg),
        ],
    );
    let bundle = [
        structure(5, "liver"),
        structure(2, "kidney_right"),
        structure(3, "kidney_left"),
        structure(1, "spleen"),
    ];
    let back = read_seg(&std::fs::read(&seg).unwrap(), &series.info, &bundle).unwrap();
    let expected: Vec<u8> = labels
        .iter()
        .map(|&v| match v {
            1 => 5,
            2 => 3,
            _ => 0,
        })
        .collect();
    assert_eq!(differing(&back.labels, &expected), 0);
    let by: Vec<(&str, Option<u8>, &str)> = back
        .segments
        .iter()
        .map(|s| (s.label.as_str(), s.value, s.matched_by))
        .collect();
    assert_eq!(
        by,
        vec![
            ("Leber", Some(5), "codes"),
            ("Niere links", Some(3), "codes"),
            ("Mystery", None, "unknown"),
        ]
    );
    assert_eq!(back.unknown().next().unwrap().voxels, 5 * 8 * 2);
}

#[test]
fn read_seg_refuses_other_grids_and_non_segmentations() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    run_py(&py, &["write-series", s(&a), "--slices", "4"]);
    run_py(&py, &["write-series", s(&b), "--slices", "4"]);
    let sa = assemble_dir(&a, &AssembleOptions::default()).unwrap();
    let sb = assemble_dir(&b, &AssembleOptions::default()).unwrap();
    let liver = [structure(5, "liver")];
    let mut labels = vec![0u8; sa.volume.len()];
    paint(&mut labels, sa.volume.dims, [1, 1, 1], [4, 4, 3], 5);
    let bytes = write_binary_seg(&sa.info, &labels, &liver, &SegOptions::default()).unwrap();
    // another frame of reference
    let e = read_seg(&bytes, &sb.info, &liver).unwrap_err();
    assert!(matches!(e, DicomError::SegMismatch(_)), "{e}");
    assert!(e.to_string().contains("FrameOfReferenceUID"), "{e}");
    // same frame of reference, slices elsewhere: the frames lie on no slice
    let mut shifted = sa.info.clone();
    for sl in &mut shifted.slices {
        sl.position[2] += 1.0;
    }
    let e = read_seg(&bytes, &shifted, &liver).unwrap_err();
    assert!(matches!(e, DicomError::SegMismatch(_)), "{e}");
    assert!(e.to_string().contains("lies on no slice"), "{e}");
    // a CT image is not a segmentation
    let ct = std::fs::read(
        std::fs::read_dir(&a)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    let e = read_seg(&ct, &sa.info, &liver).unwrap_err();
    assert!(matches!(e, DicomError::NotSegmentation(_)), "{e}");
    // nor are bytes that are not DICOM
    let e = read_seg(b"hello", &sa.info, &liver).unwrap_err();
    assert!(matches!(e, DicomError::NotDicom { .. }), "{e}");
    // truncated SEGs, and one declaring a 3.75 GiB Pixel Data, are Corrupt (not a panic, not
    // an allocation of the declared size)
    for cut in [200, bytes.len() / 2, bytes.len() - 3] {
        let e = read_seg(&bytes[..cut], &sa.info, &liver).unwrap_err();
        assert!(matches!(e, DicomError::Corrupt { .. }), "cut at {cut}: {e}");
    }
    let at = bytes
        .windows(8)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0])
        .unwrap();
    let mut huge = bytes.clone();
    huge[at + 8..at + 12].copy_from_slice(&0xF000_0000u32.to_le_bytes());
    let e = read_seg(&huge, &sa.info, &liver).unwrap_err();
    assert!(matches!(e, DicomError::Corrupt { .. }), "{e}");
}

#[test]
fn labelmap_seg_reads_back_with_pydicom_and_our_reader() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("series");
    run_py(
        &py,
        &[
            "write-series",
            s(&source),
            "--angle",
            "25",
            "--slices",
            "9",
            "--reverse",
            "--rows",
            "21",
            "--cols",
            "17",
        ],
    );
    let series = assemble_dir(&source, &AssembleOptions::default()).unwrap();
    let dims = series.volume.dims;
    let mut labels = vec![0u8; series.volume.len()];
    paint(&mut labels, dims, [1, 1, 1], [12, 10, 7], 5); // liver
    paint(&mut labels, dims, [8, 8, 0], [16, 20, 3], 104); // last bundle value
    paint(&mut labels, dims, [0, 15, 8], [3, 21, 9], 17); // not named: background
    let structures = [
        structure(104, "urinary_bladder"),
        structure(5, "liver"),
        structure(9, "aorta"), // named, absent
    ];
    let bytes =
        write_labelmap_seg(&series.info, &labels, &structures, &SegOptions::default()).unwrap();
    let seg = work.path().join("labelmap.dcm");
    std::fs::write(&seg, &bytes).unwrap();
    // dicom3tools 2022 predates Supplement 243: it does not know the SOP class (and applies
    // BINARY's segment numbering rule); under the BINARY SOP class it validates every module
    // and objects only to what Supplement 243 changed
    if let Some(errors) = dciodvfy_errors(&seg) {
        let known = [
            "Error - Information Object Not found",
            "Error - SegmentNumber not monotonically increasing from one by one",
        ];
        let other: Vec<&String> = errors
            .iter()
            .filter(|e| !known.iter().any(|k| e.starts_with(k)))
            .collect();
        assert!(other.is_empty(), "dciodvfy errors: {other:#?}");
        let relabelled = work.path().join("as-binary.dcm");
        run_py(&py, &["as-binary-class", s(&seg), s(&relabelled)]);
        let sup243 = [
            "Error - SegmentNumber not monotonically increasing from one by one",
            "Error - Unrecognized enumerated value <LABELMAP> for value 1 of attribute \
             <Segmentation Type>",
            "Error - Value is zero for value 1 of attribute <Segment Number>",
            "Error - Missing attribute Type 1 Required Element=<SegmentIdentificationSequence> \
             Module=<SegmentationMacro>",
        ];
        let errors = dciodvfy_errors(&relabelled).unwrap();
        let other: Vec<&String> = errors
            .iter()
            .filter(|e| !sup243.iter().any(|k| e.starts_with(k)))
            .collect();
        assert!(
            other.is_empty(),
            "dciodvfy errors beyond Supplement 243's changes: {other:#?}"
        );
    }
    let expected: Vec<u8> = labels
        .iter()
        .map(|&v| if v == 17 { 0 } else { v })
        .collect();

    // plain pydicom: frames of segment numbers placed by position, every value described
    let names: serde_json::Map<String, serde_json::Value> = structures
        .iter()
        .map(|st| (st.name.clone(), serde_json::json!(st.value)))
        .collect();
    let names_file = work.path().join("names.json");
    std::fs::write(&names_file, serde_json::to_vec(&names).unwrap()).unwrap();
    let out = work.path().join("back");
    run_py(
        &py,
        &["seg-read", s(&seg), s(&source), s(&names_file), s(&out)],
    );
    let back = std::fs::read(out.with_extension("u8")).unwrap();
    assert_eq!(
        differing(&back, &expected),
        0,
        "pydicom reads the LABELMAP differently"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
    assert_eq!(
        info["segments"],
        serde_json::json!(["Background", "liver", "urinary_bladder"])
    );
    assert_eq!(info["frames"], serde_json::json!(9), "one frame per slice");
    assert_eq!(info["bits"], serde_json::json!(8));

    // our reader
    let ours = read_seg(&bytes, &series.info, &structures).unwrap();
    assert_eq!(ours.segmentation_type, SegmentationType::Labelmap);
    assert_eq!(differing(&ours.labels, &expected), 0);
    assert_eq!(
        ours.segments.len(),
        2,
        "the background is not a segment of the map"
    );
}

#[test]
fn series_info_survives_its_json_sidecar() {
    let Some(py) = python() else { return };
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("enhanced");
    run_py(
        &py,
        &["write-series", s(&source), "--multiframe", "--slices", "4"],
    );
    let series = assemble_dir(&source, &AssembleOptions::default()).unwrap();
    let json = series.info.to_json();
    let text = serde_json::to_string(&json).unwrap();
    let back =
        ferrolabel_dicom::SeriesInfo::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(back.to_json(), json);
    assert_eq!(back.slices, series.info.slices);
    assert_eq!(
        json["identity"].as_array().unwrap().len(),
        series.info.identity.iter().count()
    );
    // a SEG written from the restored info is one of the series
    let mut labels = vec![0u8; series.volume.len()];
    paint(&mut labels, series.volume.dims, [2, 2, 1], [9, 9, 3], 5);
    let liver = [structure(5, "liver")];
    let bytes = write_binary_seg(&back, &labels, &liver, &SegOptions::default()).unwrap();
    let read = read_seg(&bytes, &series.info, &liver).unwrap();
    assert_eq!(differing(&read.labels, &labels), 0);
    let obj = dicom_object::from_reader(&bytes[128..]).unwrap();
    let name = obj
        .element(dicom_dictionary_std::tags::PATIENT_NAME)
        .unwrap();
    assert_eq!(name.to_str().unwrap(), "Test^Ferro");
    // not a sidecar
    let e =
        ferrolabel_dicom::SeriesInfo::from_json(&serde_json::json!({"version": 1})).unwrap_err();
    assert!(matches!(e, DicomError::Corrupt { .. }), "{e}");
}
