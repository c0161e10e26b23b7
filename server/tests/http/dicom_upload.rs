//! `PUT /datastore/?image=` and `PUT /session/` with a DICOM series, as one zip or as many
//! DICOM file parts: stored as the NIfTI image the series assembles to (same voxels and affine
//! as `ferrolabel-dicom`); `?series=` chooses one of several series; a zip that is not one clean
//! CT series is a 422 that names the cause, and nothing is stored or left in the temp folder.
//! More refusals: tests/dicom_bad.rs.

use crate::common;
use crate::server::Server;
use std::io::Write;
use std::path::PathBuf;

use crate::common::{detail, form_with_file, Opts};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use ferrolabel_dicom::{assemble_dir, AssembleOptions, Series};
use reqwest::blocking::multipart::{Form, Part};

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

fn files_form(entries: &[(String, Vec<u8>)], field: &str) -> Form {
    entries
        .iter()
        .fold(Form::new().text("params", "{}"), |f, (name, bytes)| {
            f.part(
                field.to_string(),
                Part::bytes(bytes.clone()).file_name(name.clone()),
            )
        })
}

fn put_form(s: &Server, path: &str, form: Form) -> (u16, serde_json::Value) {
    let r = s.http.put(s.url(path)).multipart(form).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

/// The same slices as another series: new SeriesInstanceUID and SOPInstanceUIDs.
fn as_other_series(entries: &[(String, Vec<u8>)], uid: &str) -> Vec<(String, Vec<u8>)> {
    entries
        .iter()
        .enumerate()
        .map(|(i, (name, bytes))| {
            let mut obj = dicom_object::OpenFileOptions::new()
                .read_preamble(dicom_object::file::ReadPreamble::Auto)
                .from_reader(&bytes[..])
                .unwrap();
            let put = |obj: &mut dicom_object::DefaultDicomObject, tag, v: String| {
                obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(v)));
            };
            put(&mut obj, tags::SERIES_INSTANCE_UID, uid.to_string());
            put(&mut obj, tags::SOP_INSTANCE_UID, format!("{uid}.{}", i + 1));
            let mut out = Vec::new();
            obj.write_all(&mut out).unwrap();
            (format!("other-{name}"), out)
        })
        .collect()
}

fn check_nifti(bytes: &[u8], want: &Series) {
    let stored = ferrolabel_imaging::read_nifti_bytes(bytes, &Default::default()).unwrap();
    assert_eq!(stored.dims, want.volume.dims);
    assert!(stored.data == want.volume.data, "stored voxels differ");
    let diff = stored
        .affine
        .iter()
        .flatten()
        .zip(want.volume.affine.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-4, "stored affine differs by {diff}");
}

fn stored_image(s: &Server, id: &str) -> Vec<u8> {
    let r = s
        .http
        .get(s.url(&format!("/datastore/image?image={id}")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.bytes().unwrap().to_vec()
}

fn session_image(s: &Server, body: &serde_json::Value) -> Vec<u8> {
    let id = body["session_id"].as_str().unwrap();
    assert!(
        body["session_info"]["image"]
            .as_str()
            .unwrap()
            .ends_with("series.nii.gz"),
        "{body}"
    );
    let r = s
        .http
        .get(s.url(&format!("/session/{id}?image=true")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.bytes().unwrap().to_vec()
}

#[test]
fn a_dicom_series_is_stored_as_its_nifti_from_a_zip_or_many_files() {
    let s = Server::start(Opts::new());
    let want = assemble_dir(&shared_series(), &AssembleOptions::default()).unwrap();
    assert_eq!(want.volume.dims, [512, 512, 20]);
    let entries = series_entries();

    // datastore: one zip
    let (status, body) = put(&s, "ct_dicom", "series.zip", zip_of(&entries));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["image"], "ct_dicom");
    check_nifti(&stored_image(&s, "ct_dicom"), &want);

    // datastore: 20 `file` parts (reverse order), the id from the first file's name without one
    let (status, body) = put_form(
        &s,
        "/datastore/?image=ct_files",
        files_form(&entries, "file"),
    );
    assert_eq!(status, 200, "{body}");
    check_nifti(&stored_image(&s, "ct_files"), &want);

    // sessions: many `files` parts, and one zip
    let (status, body) = put_form(&s, "/session/", files_form(&entries, "files"));
    assert_eq!(status, 200, "{body}");
    check_nifti(&session_image(&s, &body), &want);
    let zipped = vec![("series.zip".to_string(), zip_of(&entries))];
    let (status, body) = put_form(&s, "/session/?expiry=600", files_form(&zipped, "files"));
    assert_eq!(status, 200, "{body}");
    check_nifti(&session_image(&s, &body), &want);

    // two series in one upload: refused unless one is chosen (query or params / form field)
    let uid = "1.2.826.0.1.3680043.8.498.4242";
    let mut both = entries.clone();
    both.extend(as_other_series(&entries[..5], uid));
    let (status, body) = put_form(&s, "/datastore/?image=two", files_form(&both, "file"));
    assert_eq!(status, 422, "{body}");
    let d = detail(&body);
    assert!(d.contains("holds 2 series") && d.contains(uid), "{d}");
    let (status, body) = put_form(
        &s,
        &format!("/datastore/?image=chosen&series={uid}"),
        files_form(&both, "file"),
    );
    assert_eq!(status, 200, "{body}");
    let chosen =
        ferrolabel_imaging::read_nifti_bytes(&stored_image(&s, "chosen"), &Default::default())
            .unwrap();
    assert_eq!(chosen.dims, [512, 512, 5]);
    let form = files_form(&both, "files").text("series", uid);
    let (status, body) = put_form(&s, "/session/", form);
    assert_eq!(status, 200, "{body}");
    let img = session_image(&s, &body);
    let img = ferrolabel_imaging::read_nifti_bytes(&img, &Default::default()).unwrap();
    assert_eq!(img.dims, [512, 512, 5]);
    // the series named in `params`
    let form = both.iter().fold(
        Form::new().text("params", format!("{{\"series\": \"{uid}\"}}")),
        |f, (name, bytes)| f.part("file", Part::bytes(bytes.clone()).file_name(name.clone())),
    );
    let (status, body) = put_form(&s, "/datastore/?image=by_param", form);
    assert_eq!(status, 200, "{body}");
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
