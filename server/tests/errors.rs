//! Bad input: every case answers a 4xx `{"detail": "..."}`, never a panic or a half-written file.

mod common;

use common::{detail, form_with_file, small_ct_bytes, Opts, Server};
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
    // a JSON body is ignored (as upstream): no image → 422, not a crash
    let r = s
        .http
        .post(s.url(INFER))
        .json(&json!({"params": {}}))
        .send()
        .unwrap();
    check(r, 422, "no input image");
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
