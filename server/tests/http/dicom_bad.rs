//! Bad DICOM uploads at the server (`PUT /datastore/?image=`, `PUT /session/`): truncated and
//! corrupt files, non-DICOM files in a series, missing and duplicated slices, gantry tilt, a
//! non-CT series, no pixel data, zips with path-traversal names or declared sizes far over the
//! limits (zip bombs), 10,000 tiny files as multipart parts and as zip entries. Each is a 4xx
//! with a `{"detail"}` naming the cause; afterwards nothing is stored, no session exists and
//! the private temp folder is empty. One server for all of it.

use crate::common;
use crate::server::Server;
use std::io::Write;
use std::path::Path;

use crate::common::{detail, Opts};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use reqwest::blocking::multipart::{Form, Part};

type Entries = Vec<(String, Vec<u8>)>;

/// The shared series' files, sorted along the slice normal (name, bytes).
fn series() -> Entries {
    let dir = common::repo().join("data/totalseg/example_ct_dicom");
    let mut v: Vec<(f64, String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            let z = parse(&bytes)
                .element(tags::IMAGE_POSITION_PATIENT)
                .unwrap()
                .to_multi_float64()
                .unwrap()[2];
            (
                z,
                p.file_name().unwrap().to_string_lossy().into_owned(),
                bytes,
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v.into_iter().map(|(_, n, b)| (n, b)).collect()
}

fn parse(bytes: &[u8]) -> DefaultDicomObject {
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .from_reader(bytes)
        .unwrap()
}

/// Every file rewritten by `edit(slice index, object)`.
fn edited(entries: &Entries, edit: impl Fn(usize, &mut DefaultDicomObject)) -> Entries {
    entries
        .iter()
        .enumerate()
        .map(|(k, (name, bytes))| {
            let mut obj = parse(bytes);
            edit(k, &mut obj);
            let mut out = Vec::new();
            obj.write_all(&mut out).unwrap();
            (name.clone(), out)
        })
        .collect()
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

/// A zip of one small entry whose headers declare `declared` bytes (a zip bomb's lie).
fn lying_zip(declared: u32) -> Vec<u8> {
    let mut z = zip_of(&[("bomb.dcm".into(), vec![7u8; 5000])]);
    z[22..26].copy_from_slice(&declared.to_le_bytes());
    let central = z.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    z[central + 24..central + 28].copy_from_slice(&declared.to_le_bytes());
    z
}

fn form_of(field: &str, entries: &[(String, Vec<u8>)]) -> Form {
    entries.iter().fold(Form::new(), |f, (name, bytes)| {
        f.part(
            field.to_string(),
            Part::bytes(bytes.clone()).file_name(name.clone()),
        )
    })
}

/// PUTs `entries` as parts of `field` to `path`; the status and detail.
fn put(s: &Server, path: &str, field: &str, entries: &[(String, Vec<u8>)]) -> (u16, String) {
    let r = s
        .http
        .put(s.url(path))
        .multipart(form_of(field, entries))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().unwrap();
    (status, detail(&body).to_string())
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn bad_dicom_uploads_are_4xx_and_leave_nothing() {
    let s = Server::start(Opts::new());
    let studies = s.studies.path().to_path_buf();
    let private = studies.join(".ferrolabel");
    let before = count(&studies);
    let sessions_before = count(&private.join("sessions"));
    let good = series();
    let n = good.len();
    assert_eq!(n, 20);

    let mut with_text = good.clone();
    with_text.push(("notes.txt".into(), b"not an image".to_vec()));
    let mut truncated = good.clone();
    let cut = truncated[4].1.len() / 2;
    truncated[4].1.truncate(cut);
    let truncated_name = truncated[4].0.clone();
    let mut header_only = good.clone();
    header_only[9].1.truncate(200);
    let mut missing = good.clone();
    missing.remove(7);
    let mut duplicate = good.clone();
    duplicate.push(("copy-of-slice-3.dcm".into(), good[3].1.clone()));
    // gantry tilt: every slice moved sideways by tan(15°) x its distance from the first
    let z0 = parse(&good[0].1)
        .element(tags::IMAGE_POSITION_PATIENT)
        .unwrap()
        .to_multi_float64()
        .unwrap()[2];
    let tilted = edited(&good, |_, obj| {
        let mut p = obj
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        p[1] += (p[2] - z0) * 15f64.to_radians().tan();
        let v: Vec<String> = p.iter().map(|x| format!("{x:.6}")).collect();
        obj.put(DataElement::new(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            PrimitiveValue::from(v.join("\\")),
        ));
    });
    let mr = edited(&good, |_, obj| {
        obj.put(DataElement::new(
            tags::MODALITY,
            VR::CS,
            PrimitiveValue::from("MR"),
        ));
    });
    let no_pixels = edited(&good, |_, obj| {
        obj.remove_element(tags::PIXEL_DATA);
    });
    let mut traversal = good[..3].to_vec();
    traversal.push(("../../evil.dcm".into(), b"x".to_vec()));
    let tiny: Entries = (0..10_000)
        .map(|i| (format!("t{i:05}.dcm"), vec![b'x'; 8]))
        .collect();
    let one = |name: &str, bytes: Vec<u8>| vec![(name.to_string(), bytes)];

    let cases: Vec<(&str, &str, Entries, u16, String)> = vec![
        (
            "datastore",
            "file",
            with_text,
            422,
            "notes.txt is not a DICOM file".into(),
        ),
        (
            "datastore",
            "file",
            truncated,
            422,
            format!("{truncated_name} is truncated or corrupt"),
        ),
        (
            "datastore",
            "file",
            header_only,
            422,
            "is truncated or corrupt".into(),
        ),
        (
            "datastore",
            "file",
            missing,
            422,
            "uneven slice spacing".into(),
        ),
        (
            "datastore",
            "file",
            duplicate,
            422,
            "duplicated slice".into(),
        ),
        ("datastore", "file", tilted, 422, "gantry tilt".into()),
        (
            "datastore",
            "file",
            mr,
            422,
            "modality MR is not supported".into(),
        ),
        (
            "datastore",
            "file",
            no_pixels,
            422,
            "has no pixel data".into(),
        ),
        (
            "datastore",
            "file",
            one("series.zip", zip_of(&traversal)),
            422,
            "unsafe zip entry".into(),
        ),
        // declared sizes over the per-file limit and over the zip ratio limit
        (
            "datastore",
            "file",
            one("bomb.zip", lying_zip(0xFFFF_FF00)),
            422,
            "more than the limit".into(),
        ),
        (
            "datastore",
            "file",
            one("bomb.zip", lying_zip(100 << 20)),
            422,
            "ratio over the limit".into(),
        ),
        (
            "datastore",
            "file",
            one("bad.zip", b"PK\x03\x04 not really a zip".to_vec()),
            422,
            "bad zip archive".into(),
        ),
        (
            "datastore",
            "file",
            one("tiny.zip", zip_of(&tiny)),
            422,
            "10000 entries, more than the limit".into(),
        ),
        (
            "datastore",
            "file",
            tiny.clone(),
            400,
            "more than 4096 file parts".into(),
        ),
        (
            "datastore",
            "file",
            [good.clone(), one("series.zip", zip_of(&good))].concat(),
            422,
            "is a zip archive".into(),
        ),
        (
            "session",
            "files",
            one("series.zip", zip_of(&traversal)),
            422,
            "unsafe zip entry".into(),
        ),
        (
            "session",
            "files",
            [good[..3].to_vec(), one("readme.md", b"# notes".to_vec())].concat(),
            422,
            "readme.md is not a DICOM file".into(),
        ),
        (
            "session",
            "files",
            one("slice.dcm", good[0].1[..400].to_vec()),
            422,
            "slice.dcm is truncated or corrupt".into(),
        ),
        (
            "session",
            "files",
            tiny,
            400,
            "more than 4096 file parts".into(),
        ),
    ];
    for (route, field, entries, want_status, want) in cases {
        let path = match route {
            "datastore" => "/datastore/?image=bad_dicom",
            _ => "/session/",
        };
        let t0 = std::time::Instant::now();
        let (status, d) = put(&s, path, field, &entries);
        eprintln!(
            "{route} {want:?}: {status} in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        assert_eq!(status, want_status, "{want}: {d}");
        assert!(d.contains(&want), "expected {want:?} in {d:?}");
        assert_eq!(count(&private.join("tmp")), 0, "{want}: temp files left");
    }
    assert_eq!(count(&studies), before, "something was stored");
    assert_eq!(count(&private.join("sessions")), sessions_before);
    let (status, all) = s.get_json("/datastore/?output=all");
    assert_eq!(status, 200);
    assert!(all["objects"].get("bad_dicom").is_none(), "{all}");
}
