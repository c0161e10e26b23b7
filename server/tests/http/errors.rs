//! Bad input: every case answers a 4xx `{"detail": "..."}`, never a panic or a half-written file.

use crate::common::{detail, form_with_file, small_ct_bytes, Opts};
use crate::server::Server;
use serde_json::{json, Value};

const INFER: &str = "/infer/wholeBody_ct_segmentation";

fn check(r: reqwest::blocking::Response, status: u16, contains: &str) {
    let got = r.status().as_u16();
    let body = r.text().unwrap();
    assert_eq!(got, status, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    let d = detail(&v);
    assert!(d.contains(contains), "detail {d:?} lacks {contains:?}");
}

fn infer_params(s: &Server, query: &str, params: &str) -> reqwest::blocking::Response {
    let form = reqwest::blocking::multipart::Form::new().text("params", params.to_string());
    s.http
        .post(s.url(&format!("{INFER}{query}")))
        .multipart(form)
        .send()
        .unwrap()
}

fn infer_file(s: &Server, name: &str, bytes: Vec<u8>) -> reqwest::blocking::Response {
    let form = form_with_file("file", name, bytes, "{}");
    s.http.post(s.url(INFER)).multipart(form).send().unwrap()
}

fn nan_ct() -> Vec<u8> {
    let dims = [8usize, 8, 8];
    let mut data = vec![0.0f32; 512];
    data[100] = f32::NAN;
    let affine = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    ferrolabel_imaging::encode_nifti_f32(&data, dims, &affine, true).unwrap()
}

fn studies_files(s: &Server) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(s.studies.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "server-stderr.txt")
        .collect();
    names.sort();
    names
}

#[test]
fn infer_bad_requests() {
    let s = Server::start(Opts::new());
    check(
        infer_params(&s, "?image=example_ct", "{not json"),
        422,
        "not valid JSON",
    );
    check(
        infer_params(&s, "?image=example_ct", "[1, 2]"),
        422,
        "must be a JSON object",
    );
    check(
        infer_params(&s, "?image=example_ct&output=bogus", "{}"),
        422,
        "\"bogus\" is not one of image, json, all",
    );
    check(
        infer_params(&s, "?image=example_ct&output=dicom_seg", "{}"),
        422,
        "DICOM SEG",
    );
    let r = s
        .http
        .post(s.url("/infer/nope?image=example_ct"))
        .send()
        .unwrap();
    check(r, 404, "model \"nope\" not found");
    check(
        infer_params(&s, "?image=nope", "{}"),
        404,
        "Image NOT Found: nope",
    );
    check(infer_params(&s, "", "{}"), 422, "no input image");
    check(infer_params(&s, "?image=..%2Fetc", "{}"), 422, "invalid id");
    let sid = "3f1e2d3c-1111-4222-8333-444455556666";
    check(
        infer_params(&s, &format!("?session_id={sid}"), "{}"),
        404,
        "Session (3f1e2d3c",
    );
    for (params, key) in [
        (r#"{"highres": "maybe"}"#, "highres"),
        (r#"{"sw_overlap": 1.5}"#, "sw_overlap"),
        (r#"{"sw_overlap": "lots"}"#, "sw_overlap"),
        (r#"{"sw_batch_size": 0}"#, "sw_batch_size"),
        (r#"{"sw_batch_size": 1000}"#, "sw_batch_size"),
        (r#"{"result_dtype": "float32"}"#, "result_dtype"),
        (r#"{"result_extension": ".png"}"#, "result_extension"),
        (r#"{"device": "NVIDIA A100"}"#, "device"),
    ] {
        check(infer_params(&s, "?image=example_ct", params), 422, key);
    }
    // unreadable uploads
    check(
        infer_file(&s, "/tmp/x.nii.gz", b"this is not an image".to_vec()),
        422,
        "cannot read image",
    );
    let small = small_ct_bytes();
    check(
        infer_file(&s, "trunc.nii.gz", small[..small.len() / 2].to_vec()),
        422,
        "cannot read image",
    );
    check(
        infer_file(&s, "notes.txt", b"hello".to_vec()),
        422,
        "cannot read image: unsupported image format",
    );
    check(infer_file(&s, "nan.nii.gz", nan_ct()), 422, "NaN");
    // malformed multipart
    let r = s
        .http
        .post(s.url(INFER))
        .header("content-type", "multipart/form-data; boundary=abc")
        .body("--abc\r\nno headers here")
        .send()
        .unwrap();
    check(r, 400, "malformed multipart");
    // a JSON body is refused (upstream reads and ignores it), even with a valid image
    let r = s
        .http
        .post(s.url(&format!("{INFER}?image=example_ct")))
        .json(&json!({"params": {}}))
        .send()
        .unwrap();
    check(r, 415, "Content-Type \"application/json\"");
    assert_eq!(
        std::fs::read_dir(s.studies.path().join(".ferrolabel/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn datastore_bad_requests() {
    let s = Server::start(Opts::new());
    let before = studies_files(&s);
    let r = s
        .http
        .get(s.url("/datastore/?output=bogus"))
        .send()
        .unwrap();
    check(r, 422, "output");
    // uploads
    let r = s
        .http
        .put(s.url("/datastore/?image=x"))
        .multipart(reqwest::blocking::multipart::Form::new().text("params", "{}"))
        .send()
        .unwrap();
    check(r, 422, "missing file part \"file\"");
    let form = form_with_file("file", "bad.nii.gz", b"garbage".to_vec(), "{}");
    check(
        s.http
            .put(s.url("/datastore/?image=bad"))
            .multipart(form)
            .send()
            .unwrap(),
        422,
        "cannot read image",
    );
    let form = form_with_file("file", "ok.nii.gz", small_ct_bytes(), "{oops");
    check(
        s.http
            .put(s.url("/datastore/?image=ok"))
            .multipart(form)
            .send()
            .unwrap(),
        422,
        "not valid JSON",
    );
    for id in ["..%2Fevil", "a%2Fb", ".hidden", "x..y"] {
        let form = form_with_file("file", "ok.nii.gz", small_ct_bytes(), "{}");
        check(
            s.http
                .put(s.url(&format!("/datastore/?image={id}")))
                .multipart(form)
                .send()
                .unwrap(),
            422,
            "invalid id",
        );
    }
    check(
        s.http
            .get(s.url("/datastore/image?image=..%2F..%2Fetc%2Fpasswd"))
            .send()
            .unwrap(),
        422,
        "invalid id",
    );
    check(
        s.http
            .get(s.url("/datastore/image?image=nope"))
            .send()
            .unwrap(),
        404,
        "Image NOT Found or is a directory",
    );
    check(
        s.http.get(s.url("/datastore/image")).send().unwrap(),
        422,
        "missing query parameter \"image\"",
    );
    check(
        s.http
            .delete(s.url("/datastore/image?id=nope"))
            .send()
            .unwrap(),
        404,
        "Image NOT Found",
    );
    // labels
    let form = form_with_file("label", "l.nii.gz", small_ct_bytes(), "{}");
    check(
        s.http
            .put(s.url("/datastore/label?image=nope"))
            .multipart(form)
            .send()
            .unwrap(),
        404,
        "Image NOT Found: nope",
    );
    let form = form_with_file("label", "l.nii.gz", small_ct_bytes(), "{}");
    check(
        s.http
            .put(s.url("/datastore/label?image=example_ct&tag=..%2Fx"))
            .multipart(form)
            .send()
            .unwrap(),
        422,
        "invalid id",
    );
    let r = s
        .http
        .put(s.url("/datastore/label?image=example_ct"))
        .multipart(reqwest::blocking::multipart::Form::new().text("params", "{}"))
        .send()
        .unwrap();
    check(r, 422, "missing file part \"label\"");
    let form = form_with_file("label", "l.nii.gz", b"\x1f\x8bbroken gzip".to_vec(), "{}");
    check(
        s.http
            .put(s.url("/datastore/label?image=example_ct"))
            .multipart(form)
            .send()
            .unwrap(),
        422,
        "cannot read label",
    );
    check(
        s.http
            .get(s.url("/datastore/label?label=example_ct"))
            .send()
            .unwrap(),
        422,
        "tag",
    );
    check(
        s.http
            .get(s.url("/datastore/label?label=example_ct&tag=final"))
            .send()
            .unwrap(),
        404,
        "Label NOT Found or is a directory",
    );
    let r = s
        .http
        .put(s.url("/datastore/label/info?label=example_ct&tag=final"))
        .multipart(reqwest::blocking::multipart::Form::new().text("info", "{}"))
        .send()
        .unwrap();
    check(r, 404, "Label NOT Found");
    check(
        s.http.get(s.url("/datastore/dataset")).send().unwrap(),
        404,
        "nothing to export",
    );
    // active learning, logs, sessions
    let r = s
        .http
        .post(s.url("/activelearning/random"))
        .body("{broken")
        .send()
        .unwrap();
    check(r, 422, "not valid JSON");
    check(
        s.http.get(s.url("/logs/?text=maybe")).send().unwrap(),
        422,
        "not a boolean",
    );
    let r = s
        .http
        .put(s.url("/session/"))
        .multipart(reqwest::blocking::multipart::Form::new().text("client_id", "x"))
        .send()
        .unwrap();
    check(r, 422, "missing file part \"files\"");
    // nothing was stored by the failed requests
    assert_eq!(studies_files(&s), before);
    assert_eq!(
        s.get_json("/datastore/?output=stats").1,
        json!({"total": 1, "completed": 0, "label_tags": {}})
    );
    assert_eq!(
        std::fs::read_dir(s.studies.path().join(".ferrolabel/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn oversized_upload_answers_413() {
    let mut opts = Opts::new();
    opts.args
        .extend(["--max-upload-mb".to_string(), "1".to_string()]);
    let s = Server::start(opts);
    let before = studies_files(&s);
    let big = vec![7u8; 3 << 20];
    let form = form_with_file("file", "big.nii.gz", big.clone(), "{}");
    check(
        s.http
            .put(s.url("/datastore/?image=big"))
            .multipart(form)
            .send()
            .unwrap(),
        413,
        "upload limit of 1 MiB",
    );
    let form = form_with_file("file", "big.nii.gz", big, "{}");
    check(
        s.http.post(s.url(INFER)).multipart(form).send().unwrap(),
        413,
        "upload limit",
    );
    assert_eq!(studies_files(&s), before);
    assert_eq!(
        std::fs::read_dir(s.studies.path().join(".ferrolabel/tmp"))
            .unwrap()
            .count(),
        0
    );
    // a small upload still works
    let form = form_with_file("file", "small.nii.gz", small_ct_bytes(), "{}");
    assert_eq!(
        s.http
            .put(s.url("/datastore/?image=small"))
            .multipart(form)
            .send()
            .unwrap()
            .status(),
        200
    );
}

const IDENTITY: [[f64; 4]; 4] = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// Like [`check`], with several strings the detail must contain.
fn check_all(r: reqwest::blocking::Response, status: u16, contains: &[&str]) {
    let got = r.status().as_u16();
    let body = r.text().unwrap();
    assert_eq!(got, status, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    for c in contains {
        assert!(
            detail(&v).contains(c),
            "detail {:?} lacks {c:?}",
            detail(&v)
        );
    }
}

fn put_file(s: &Server, path: &str, part: &str, name: &str, bytes: Vec<u8>) -> u16 {
    let form = form_with_file(part, name, bytes, "{}");
    let r = s.http.put(s.url(path)).multipart(form).send().unwrap();
    r.status().as_u16()
}

fn put_req(
    s: &Server,
    path: &str,
    part: &str,
    name: &str,
    bytes: Vec<u8>,
) -> reqwest::blocking::Response {
    let form = form_with_file(part, name, bytes, "{}");
    s.http.put(s.url(path)).multipart(form).send().unwrap()
}

/// An 8 x 8 x 8 float image from a header whose geometry fields the caller sets.
fn image_with_header(edit: impl Fn(&mut ferrolabel_imaging::Header)) -> Vec<u8> {
    use ferrolabel_imaging::{DataType, Header};
    let mut h = Header::new_3d([8, 8, 8], DataType::F32, &IDENTITY).unwrap();
    edit(&mut h);
    let data: Vec<u8> = (0..512).flat_map(|n| (n as f32).to_le_bytes()).collect();
    ferrolabel_imaging::nifti::encode_nifti(&h, &data, true).unwrap()
}

fn tmp_is_empty(s: &Server) -> bool {
    std::fs::read_dir(s.studies.path().join(".ferrolabel/tmp"))
        .unwrap()
        .count()
        == 0
}

#[test]
fn non_finite_and_singular_images_are_refused_wherever_they_enter() {
    let s = Server::start(Opts::new());
    let before = studies_files(&s);
    let f32_image = |data: Vec<f32>| {
        ferrolabel_imaging::encode_nifti_f32(&data, [8, 8, 8], &IDENTITY, true).unwrap()
    };
    let mut one_neg_inf = vec![0.0f32; 512];
    one_neg_inf[7] = f32::NEG_INFINITY;
    let cases = [
        (
            "all_inf",
            f32_image(vec![f32::INFINITY; 512]),
            "0 NaN and 512 infinite of 512 voxels",
        ),
        ("one_inf", f32_image(one_neg_inf), "0 NaN and 1 infinite"),
        ("all_nan", f32_image(vec![f32::NAN; 512]), "512 NaN"),
        ("one_nan", nan_ct(), "1 NaN and 0 infinite"),
        (
            "zero_voxel",
            image_with_header(|h| {
                h.qform_code = 0;
                h.sform_code = 0;
                h.pixdim[3] = 0.0;
            }),
            "singular geometry: voxel size pixdim[3] is 0 and neither qform nor sform is set",
        ),
        (
            "dependent_axes",
            image_with_header(|h| {
                h.srow_x = [1.0, 0.0, 1.0, 0.0];
                h.srow_y = [0.0, 1.0, 0.0, 0.0];
                h.srow_z = [0.0, 0.0, 0.0, 0.0];
            }),
            "singular geometry: sform affine",
        ),
    ];
    for (name, bytes, why) in cases {
        let file = format!("{name}.nii.gz");
        let upload = put_req(
            &s,
            &format!("/datastore/?image={name}"),
            "file",
            &file,
            bytes.clone(),
        );
        check(upload, 422, why);
        check(
            put_req(&s, "/session/", "files", &file, bytes.clone()),
            422,
            why,
        );
        check(infer_file(&s, &file, bytes), 422, why);
    }
    // nothing stored: no image, no session, no temp file
    assert_eq!(studies_files(&s), before);
    assert_eq!(s.get_json("/datastore/?output=stats").1["total"], 1);
    let sessions = s.studies.path().join(".ferrolabel/sessions");
    assert_eq!(std::fs::read_dir(sessions).unwrap().count(), 0);
    assert!(tmp_is_empty(&s));
    // a finite image with a proper geometry still enters everywhere
    assert_eq!(
        put_file(
            &s,
            "/datastore/?image=fine",
            "file",
            "f.nii.gz",
            small_ct_bytes()
        ),
        200
    );
    assert_eq!(
        put_file(&s, "/session/", "files", "f.nii.gz", small_ct_bytes()),
        200
    );
}

#[test]
fn labels_must_lie_on_their_image_grid() {
    use ferrolabel_imaging::{encode_label_nifti, encode_label_nrrd, DataType, Header};
    let s = Server::start(Opts::new());
    assert_eq!(
        put_file(
            &s,
            "/datastore/?image=small",
            "file",
            "s.nii.gz",
            small_ct_bytes()
        ),
        200
    );
    let affine = [
        [2.0, 0.0, 0.0, -48.0],
        [0.0, 2.0, 0.0, -48.0],
        [0.0, 0.0, 2.0, -24.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let label = |dims: [usize; 3], affine: &[[f64; 4]; 4]| {
        let h = Header::new_3d(dims, DataType::U8, affine).unwrap();
        encode_label_nifti(&vec![1u8; dims.iter().product()], &h, true).unwrap()
    };
    let image_grid =
        "image dims 48 x 48 x 24, affine [[2, 0, 0, -48], [0, 2, 0, -48], [0, 0, 2, -24]]";
    let put = |id: &str, tag: &str, name: &str, bytes: Vec<u8>| {
        put_req(
            &s,
            &format!("/datastore/label?image={id}&tag={tag}"),
            "label",
            name,
            bytes,
        )
    };
    // other dimensions
    check_all(
        put("small", "final", "l.nii.gz", label([48, 48, 23], &affine)),
        422,
        &[
            "not on its image's grid",
            "label dims 48 x 48 x 23",
            image_grid,
        ],
    );
    // same dimensions, moved 5 mm along x
    let mut shifted = affine;
    shifted[0][3] += 5.0;
    check_all(
        put("small", "final", "l.nii.gz", label([48, 48, 24], &shifted)),
        422,
        &[
            "label dims 48 x 48 x 24, affine [[2, 0, 0, -43]",
            image_grid,
        ],
    );
    // same dimensions, 1 mm voxels instead of 2 mm
    let mut scaled = affine;
    scaled[2][2] = 1.0;
    check_all(
        put("small", "other", "l.nii.gz", label([48, 48, 24], &scaled)),
        422,
        &["[0, 0, 1, -24]]", image_grid],
    );
    // the label of one image saved on another
    check(
        put(
            "example_ct",
            "final",
            "l.nii.gz",
            label([48, 48, 24], &affine),
        ),
        422,
        "label dims 48 x 48 x 24",
    );
    assert_eq!(
        s.get_json("/datastore/?output=stats").1["label_tags"],
        json!({})
    );
    assert!(tmp_is_empty(&s));
    // on the grid: stored, as NIfTI and as NRRD (LPS on disk, the same grid in RAS)
    assert_eq!(
        put("small", "final", "l.nii.gz", label([48, 48, 24], &affine)).status(),
        200
    );
    let nrrd = encode_label_nrrd(&vec![1u8; 48 * 48 * 24], [48, 48, 24], &affine, true).unwrap();
    assert_eq!(put("small", "nrrd", "l.nrrd", nrrd).status(), 200);
    assert_eq!(
        s.get_json("/datastore/?output=stats").1["label_tags"],
        json!({"final": 1, "nrrd": 1})
    );
}

/// 4 KiB of deterministic noise.
fn noise() -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn uploads_are_recognised_by_content_not_name() {
    use std::io::Write;
    let s = Server::start(Opts::new());
    let before = studies_files(&s);
    let mut gz_text = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz_text.write_all(&[b'x'; 400]).unwrap();
    let gz_text = gz_text.finish().unwrap();
    let mut zip = b"PK\x03\x04".to_vec();
    zip.extend(noise());
    for (name, bytes) in [
        ("x.zip", zip.clone()),
        ("x.txt", b"just some notes\n".repeat(40)),
        ("x", noise()),
        ("x.nii.gz", noise()),
        ("x.nrrd", noise()),
        ("x.nii.gz", gz_text.clone()),
    ] {
        let r = put_req(&s, "/datastore/?image=x", "file", name, bytes.clone());
        check_all(r, 422, &["cannot read image", name]);
        let r = put_req(
            &s,
            "/datastore/label?image=example_ct",
            "label",
            name,
            bytes,
        );
        check(r, 422, "cannot read label");
    }
    assert_eq!(studies_files(&s), before);
    assert!(tmp_is_empty(&s));
    // an image named like a zip is an image; stored under the extension of what it holds
    assert_eq!(
        put_file(
            &s,
            "/datastore/?image=scan",
            "file",
            "scan.zip",
            small_ct_bytes()
        ),
        200
    );
    let raw =
        ferrolabel_imaging::encode_nifti_f32(&vec![1.0; 512], [8, 8, 8], &IDENTITY, false).unwrap();
    assert_eq!(
        put_file(&s, "/datastore/?image=raw", "file", "raw.nii.gz", raw),
        200
    );
    let files = studies_files(&s);
    assert!(files.contains(&"scan.nii.gz".to_string()), "{files:?}");
    assert!(files.contains(&"raw.nii".to_string()), "{files:?}");
}

/// Sends the head of a request whose declared body never comes; the status line and the
/// detail of the answer, which must come without the body being read.
fn answer_without_body(s: &Server, head: &str, first_bytes: &[u8]) -> (String, String) {
    use std::io::{Read, Write};
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(tcp, "{head}Host: {addr}\r\n\r\n").unwrap();
    tcp.write_all(first_bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                let status = text.lines().next().unwrap().to_string();
                return (status, text[end + 4..end + 4 + length].to_string());
            }
        }
        match tcp.read(&mut buf) {
            Ok(0) => panic!("connection closed: {text:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => {
                panic!("no answer within 60 s ({e}): the server waits for the body; got {text:?}")
            }
        }
    }
}

#[test]
fn infer_refuses_an_unsupported_body_before_reading_it() {
    let s = Server::start(Opts::new());
    // 100 MB declared as JSON, a few bytes sent: refused at once, no inference
    let (status, body) = answer_without_body(
        &s,
        &format!(
            "POST {INFER}?image=example_ct HTTP/1.1\r\nContent-Type: application/json\r\n\
             Content-Length: 104857600\r\n"
        ),
        b"{\"params\": ",
    );
    assert!(status.contains(" 415 "), "{status} {body}");
    assert!(
        body.contains("Content-Type \\\"application/json\\\""),
        "{body}"
    );
    // a body without a content type, and other types
    let (status, body) = answer_without_body(
        &s,
        &format!("POST {INFER}?image=example_ct HTTP/1.1\r\nContent-Length: 1000000\r\n"),
        b"abc",
    );
    assert!(status.contains(" 415 "), "{status} {body}");
    assert!(body.contains("a body without a Content-Type"), "{body}");
    for ct in ["text/plain", "application/octet-stream", "application/zip"] {
        let r = s
            .http
            .post(s.url(&format!("{INFER}?image=example_ct")))
            .header("content-type", ct)
            .body(vec![0u8; 1000])
            .send()
            .unwrap();
        check(r, 415, ct);
    }
    // no body and no content type passes the check (the client sends that): the next check
    // answers
    let r = s
        .http
        .post(s.url(&format!("{INFER}?image=nope")))
        .send()
        .unwrap();
    check(r, 404, "Image NOT Found: nope");
    // forms pass it too
    check(
        infer_params(&s, "?image=nope", "{}"),
        404,
        "Image NOT Found: nope",
    );
    let r = s
        .http
        .post(s.url(&format!("{INFER}?image=nope")))
        .form(&[("params", "{}")])
        .send()
        .unwrap();
    check(r, 404, "Image NOT Found: nope");
    // no inference ran
    assert!(!s.stderr().contains("inference done"), "{}", s.stderr());
}
