//! DICOM SEG out: an image uploaded as a DICOM series (the shipped zip) keeps its source, so
//! `POST /infer/{model}?output=dicom_seg` answers the result as a SEG and
//! `GET /datastore/label?...&format=dicom_seg` a stored label (BINARY, or LABELMAP with
//! `seg_type=labelmap`); every SEG passes `dciodvfy` (BINARY with no error) and reads back
//! with pydicom (and highdicom for BINARY) voxel for voxel equal to the label. Images without
//! a DICOM source keep MONAI Label's refusal text (as a 422).

use crate::common;
use crate::server::Server;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{detail, form_with_file, Opts};
use ferrolabel_imaging::Limits;

const MODEL: &str = "wholeBody_ct_segmentation";

fn shared_series() -> PathBuf {
    common::repo().join("data/totalseg/example_ct_dicom")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("FERROLABEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo().join(".venv/bin/python"));
    if p.exists() {
        return Some(p);
    }
    assert!(
        !in_ci(),
        "no Python at {}: under CI=true this test must run",
        p.display()
    );
    eprintln!("skipping: no Python at {}", p.display());
    None
}

fn series_zip() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(shared_series())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for p in paths {
        w.start_file(p.file_name().unwrap().to_string_lossy(), opts)
            .unwrap();
        w.write_all(&std::fs::read(&p).unwrap()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// `dciodvfy`'s error lines (it must be installed: Debian dicom3tools).
fn dciodvfy_errors(file: &Path) -> Vec<String> {
    let out = Command::new("dciodvfy")
        .arg(file)
        .output()
        .expect("dciodvfy (apt-get install dicom3tools)");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.starts_with("Error"))
        .map(str::to_string)
        .collect()
}

/// Decodes `seg` with the DICOM tests' reference reader (highdicom and pydicom for BINARY,
/// pydicom for LABELMAP) onto the shared series; the label map, x fastest.
fn python_read(py: &Path, seg: &Path, names: &serde_json::Value, work: &Path) -> Vec<u8> {
    let names_file = work.join("names.json");
    std::fs::write(&names_file, names.to_string()).unwrap();
    let out = work.join("back");
    let script = common::repo().join("dicom/tests/dicom_reference.py");
    let r = Command::new(py)
        .arg(script)
        .arg("seg-read")
        .arg(seg)
        .arg(shared_series())
        .arg(&names_file)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "seg-read failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    std::fs::read(out.with_extension("u8")).unwrap()
}

fn label_voxels(bytes: &[u8], name: &str) -> Vec<u8> {
    let v = ferrolabel_imaging::read_volume_bytes(bytes, name, &Limits::default()).unwrap();
    v.data.iter().map(|x| x.round() as u8).collect()
}

/// Checks a SEG answer: `application/dicom`, `dciodvfy` (BINARY: no error), and the decoded
/// map equal to `want`.
fn check_seg(
    r: reqwest::blocking::Response,
    labelmap: bool,
    py: &Path,
    names: &serde_json::Value,
    want: &[u8],
) {
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(ct, "application/dicom");
    let bytes = r.bytes().unwrap().to_vec();
    let work = tempfile::tempdir().unwrap();
    let seg = work.path().join("seg.dcm");
    std::fs::write(&seg, &bytes).unwrap();
    let errors = dciodvfy_errors(&seg);
    if labelmap {
        // dicom3tools 2022 predates Supplement 243 (see dicom/tests/seg.rs for the rest)
        let known = [
            "Error - Information Object Not found",
            "Error - SegmentNumber not monotonically increasing from one by one",
        ];
        let other: Vec<_> = errors
            .iter()
            .filter(|e| !known.iter().any(|k| e.starts_with(k)))
            .collect();
        assert!(other.is_empty(), "dciodvfy: {other:#?}");
    } else {
        assert!(errors.is_empty(), "dciodvfy: {errors:#?}");
    }
    let back = python_read(py, &seg, names, work.path());
    assert_eq!(back.len(), want.len());
    let wrong = back.iter().zip(want).filter(|(a, b)| a != b).count();
    assert_eq!(wrong, 0, "{wrong} voxels of the SEG differ from the label");
}

#[test]
fn dicom_seg_out_of_infer_and_of_stored_labels() {
    let Some(py) = python() else { return };
    let s = Server::start(Opts::new());
    let (_, info) = s.get_json("/info/");
    let names = info["models"][MODEL]["labels"].clone();
    assert_eq!(names.as_object().unwrap().len(), 104);

    // the shipped series as one zip: its source is kept
    let r = s
        .http
        .put(s.url("/datastore/?image=ct_dicom"))
        .multipart(form_with_file("file", "series.zip", series_zip(), "{}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap());
    let sidecar = s.studies.path().join(".ct_dicom.dicom-source.json");
    assert!(sidecar.is_file());

    // infer → SEG; the result is also saved (tag "original") to compare with
    let infer = |output: &str, extra: &str| {
        s.http
            .post(s.url(&format!(
                "/infer/{MODEL}?image=ct_dicom&output={output}{extra}"
            )))
            .form(&[("params", r#"{"save_label": true, "highres": false}"#)])
            .send()
            .unwrap()
    };
    let r = infer("dicom_seg", "");
    let cd = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cd.contains(".dcm"), "{cd}");
    let original = s
        .http
        .get(s.url("/datastore/label?label=ct_dicom&tag=original"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let inferred = label_voxels(&original, "original.nii.gz");
    assert!(inferred.iter().any(|&v| v != 0), "the model found nothing");
    check_seg(r, false, &py, &names, &inferred);

    // a stored label as SEG, BINARY and LABELMAP
    let image = s
        .http
        .get(s.url("/datastore/image?image=ct_dicom"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let volume = ferrolabel_imaging::read_nifti_bytes(&image, &Limits::default()).unwrap();
    let labels: Vec<u8> = volume
        .data
        .iter()
        .map(|&v| match v {
            v if v > 300.0 => 92,                     // sacrum
            v if (-990.0..-600.0).contains(&v) => 13, // lung_upper_lobe_left
            v if (30.0..60.0).contains(&v) => 5,      // liver
            _ => 0,
        })
        .collect();
    let header = volume.header.clone().unwrap();
    let nifti = ferrolabel_imaging::encode_label_nifti(&labels, &header, true).unwrap();
    let r = s
        .http
        .put(s.url("/datastore/label?image=ct_dicom&tag=final"))
        .multipart(form_with_file("label", "final.nii.gz", nifti, "{}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap());
    let get = |query: &str| {
        s.http
            .get(s.url(&format!("/datastore/label?label=ct_dicom&tag=final{query}")))
            .send()
            .unwrap()
    };
    check_seg(get("&format=dicom_seg"), false, &py, &names, &labels);
    check_seg(
        get("&format=dicom_seg&seg_type=labelmap"),
        true,
        &py,
        &names,
        &labels,
    );
    let r = get("&format=dicom_seg&seg_type=fractional");
    assert_eq!(r.status().as_u16(), 422);
    // the plain download is unchanged
    let plain = get("").bytes().unwrap();
    assert_eq!(label_voxels(&plain, "final.nii.gz"), labels);

    // infer → LABELMAP
    let r = infer("dicom_seg", "&seg_type=labelmap");
    check_seg(r, true, &py, &names, &inferred);

    // no DICOM source: MONAI Label's text, as a 422 (docs/differences.md)
    let r = s
        .http
        .post(s.url(&format!("/infer/{MODEL}?image=example_ct&output=dicom_seg")))
        .form(&[("params", "{}")])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(
        detail(&body),
        "DICOM SEG format is not supported in a non-DICOM datastore"
    );

    // replaced by a NIfTI upload: the stale source is dropped
    let r = s
        .http
        .put(s.url("/datastore/?image=ct_dicom"))
        .multipart(form_with_file("file", "ct.nii.gz", image.to_vec(), "{}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = get("&format=dicom_seg");
    assert_eq!(r.status().as_u16(), 422);
    let body: serde_json::Value = r.json().unwrap();
    assert!(detail(&body).contains("no DICOM source"), "{body}");
    assert!(!sidecar.exists());

    // removed with its image
    let r = s
        .http
        .put(s.url("/datastore/?image=ct_dicom"))
        .multipart(form_with_file("file", "series.zip", series_zip(), "{}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(sidecar.is_file());
    let r = s
        .http
        .delete(s.url("/datastore/?id=ct_dicom"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(!sidecar.exists());
}
