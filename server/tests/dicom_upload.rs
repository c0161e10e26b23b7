//! `PUT /datastore/?image=` with a zip of a DICOM series: stored as the NIfTI image the series
//! assembles to (same voxels and affine as `ferrolabel-dicom`); a zip that is not one clean CT
//! series is a 422 that names the cause, and nothing is stored or left in the temp folder.

mod common;

use std::io::Write;
use std::path::PathBuf;

use common::{detail, form_with_file, Opts, Server};
use ferrolabel_dicom::{assemble_dir, AssembleOptions};

fn shared_series() -> PathBuf {
    common::repo().join("data/totalseg/example_ct_dicom")
}

fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn series_entries() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(shared_series())
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                format!("CT/{}", p.file_name().unwrap().to_string_lossy()),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v.reverse();
    v
}

fn put(s: &Server, id: &str, name: &str, bytes: Vec<u8>) -> (u16, serde_json::Value) {
    let form = form_with_file("file", name, bytes, "{}");
    let r = s
        .http
        .put(s.url(&format!("/datastore/?image={id}")))
        .multipart(form)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn tmp_is_empty(s: &Server) -> bool {
    std::fs::read_dir(s.studies.path().join(".ferrolabel/tmp"))
        .unwrap()
        .count()
        == 0
}

#[test]
fn a_zipped_dicom_series_is_stored_as_its_nifti() {
    let s = Server::start(Opts::new());
    let (status, body) = put(&s, "ct_dicom", "series.zip", zip_of(&series_entries()));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["image"], "ct_dicom");
    let r = s
        .http
        .get(s.url("/datastore/image?image=ct_dicom"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let bytes = r.bytes().unwrap();
    let stored = ferrolabel_imaging::read_nifti_bytes(&bytes, &Default::default()).unwrap();
    let want = assemble_dir(&shared_series(), &AssembleOptions::default()).unwrap();
    assert_eq!(stored.dims, [512, 512, 20]);
    assert!(stored.data == want.volume.data, "stored voxels differ");
    let diff = stored
        .affine
        .iter()
        .flatten()
        .zip(want.volume.affine.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-4, "stored affine differs by {diff}");
    assert!(tmp_is_empty(&s));
}

#[test]
fn a_bad_series_zip_is_refused_with_its_cause() {
    let s = Server::start(Opts::new());
    let before = std::fs::read_dir(s.studies.path()).unwrap().count();
    let mut with_text = series_entries();
    with_text.push(("CT/readme.txt".into(), b"not an image".to_vec()));
    let mut traversal = series_entries();
    traversal.truncate(3);
    traversal.push(("../../evil.dcm".into(), b"x".to_vec()));
    let mut missing = series_entries();
    missing.remove(7);
    for (entries, cause) in [
        (with_text, "readme.txt is not a DICOM file"),
        (traversal, "unsafe zip entry"),
        (missing, "uneven slice spacing"),
    ] {
        let (status, body) = put(&s, "bad", "series.zip", zip_of(&entries));
        assert_eq!(status, 422, "{body}");
        let d = detail(&body);
        assert!(d.contains(cause) && d.contains("series.zip"), "{d}");
    }
    assert_eq!(std::fs::read_dir(s.studies.path()).unwrap().count(), before);
    assert!(tmp_is_empty(&s));
}
