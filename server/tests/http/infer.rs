//! End-to-end `/infer` tests against the real binary (seeded random weights, `init_filters` 8).

use crate::common;
use crate::server::Server;
use std::time::{Duration, Instant};

use crate::common::{boundary_of, detail, label_dims, parse_multipart, small_ct_bytes, Opts};
use serde_json::{json, Value};

const INFER: &str = "/infer/wholeBody_ct_segmentation";

fn small_server() -> Server {
    let mut opts = Opts::new();
    opts.files.push(("small.nii.gz".into(), small_ct_bytes()));
    Server::start(opts)
}

fn post_params(s: &Server, query: &str, params: Value) -> reqwest::blocking::Response {
    let form = reqwest::blocking::multipart::Form::new().text("params", params.to_string());
    s.http
        .post(s.url(&format!("{INFER}{query}")))
        .multipart(form)
        .send()
        .unwrap()
}

#[test]
fn infer_json_image_and_multipart() {
    let s = small_server();
    // output=json (urlencoded form, as the upstream tests send it)
    let r = s
        .http
        .post(s.url(&format!("{INFER}?image=small&output=json")))
        .form(&[(
            "params",
            r#"{"client_id": "user-xyz", "device": "cpu", "result_dtype": "uint8"}"#,
        )])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let p: Value = r.json().unwrap();
    assert_eq!(p["label_names"].as_object().unwrap().len(), 104);
    assert_eq!(p["label_names"]["spleen"], 1);
    for k in ["pre", "infer", "invert", "post", "write", "total"] {
        assert!(p["latencies"][k].is_number(), "latencies.{k}");
    }
    assert_eq!(p["latencies"]["transform"], Value::Null);
    assert_eq!(p["centroids"], json!({}));
    assert_eq!(p["highres"], true);
    assert_eq!(p["windows"], 1);

    // output=image
    let r = post_params(&s, "?image=small&output=image", json!({}));
    assert_eq!(r.status(), 200);
    let cd = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cd.starts_with("attachment; filename=\"tmp") && cd.ends_with(".nii.gz\""),
        "{cd}"
    );
    let bytes = r.bytes().unwrap();
    assert_eq!(label_dims(&bytes, "x.nii.gz"), [48, 48, 24]);

    // no output (= all): the multipart layout Slicer parses, with .nrrd as Slicer asks
    let r = post_params(
        &s,
        "?image=small",
        json!({"result_extension": ".nrrd", "result_dtype": "uint8"}),
    );
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert!(h.get("transfer-encoding").is_none(), "never chunked");
    let len: usize = h["content-length"].to_str().unwrap().parse().unwrap();
    let ct = h["content-type"].to_str().unwrap();
    assert!(ct.starts_with("multipart/form-data; boundary="), "{ct}");
    let boundary = boundary_of(ct);
    assert_eq!(boundary.len(), 32);
    assert!(boundary
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    let body = r.bytes().unwrap();
    assert_eq!(body.len(), len);
    let parts = parse_multipart(&body, &boundary);
    assert_eq!(parts.len(), 2);
    assert_eq!(
        parts[0].headers,
        "Content-Disposition: form-data; name=\"params\"\r\nContent-Type: application/json"
    );
    let text = String::from_utf8(parts[0].body.clone()).unwrap();
    assert!(
        text.starts_with(r#"{"label_names": {"spleen": 1, "kidney_right": 2"#),
        "python separators: {text}"
    );
    let params: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(params["label_names"].as_object().unwrap().len(), 104);
    let image_headers = &parts[1].headers;
    assert!(
        image_headers.starts_with("Content-Disposition: form-data; name=\"image\"; filename=\"tmp")
    );
    assert!(
        image_headers.contains(".nrrd\"\r\nContent-Type: application/octet-stream"),
        "{image_headers}"
    );
    assert!(parts[1].body.starts_with(b"NRRD"));
    assert_eq!(label_dims(&parts[1].body, "x.nrrd"), [48, 48, 24]);
}

/// The official client's multipart encoding: fixed boundary with `$`, no Content-Type on text
/// fields, the full local path as file name, and an extra CRLF after the closing delimiter.
fn python_client_body(params: &str, path: &str, file: &[u8]) -> (String, Vec<u8>) {
    let b = "----------lImIt_of_THE_fIle_eW_$";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{b}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{params}\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(
        format!("--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{b}--\r\n\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

#[test]
fn infer_on_upload_session_and_save_label() {
    let s = small_server();
    // an uploaded file part (Windows path), with the Python client's wire format
    let (ct, body) = python_client_body(
        r#"{"highres": false}"#,
        r"C:\Users\me\AppData\tmpab12.nii.gz",
        &small_ct_bytes(),
    );
    let r = s
        .http
        .post(s.url(&format!("{INFER}?output=all")))
        .header("content-type", ct)
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let boundary = boundary_of(r.headers()["content-type"].to_str().unwrap());
    let parts = parse_multipart(&r.bytes().unwrap(), &boundary);
    let params: Value = serde_json::from_slice(&parts[0].body).unwrap();
    assert_eq!(params["highres"], false);
    assert!(
        parts[1].headers.contains(".nii.gz\""),
        "the input's extension by default"
    );
    assert_eq!(label_dims(&parts[1].body, "x.nii.gz"), [48, 48, 24]);
    let tmp = s.studies.path().join(".ferrolabel/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temp uploads removed"
    );

    // a session
    let form = reqwest::blocking::multipart::Form::new().part(
        "files",
        reqwest::blocking::multipart::Part::bytes(small_ct_bytes()).file_name("tmpq.nii.gz"),
    );
    let r = s
        .http
        .put(s.url("/session/"))
        .multipart(form)
        .send()
        .unwrap();
    let sid = r.json::<Value>().unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, before) = s.get_json(&format!("/session/{sid}"));
    std::thread::sleep(Duration::from_millis(1100));
    let r = post_params(
        &s,
        &format!("?image=local_node&session_id={sid}&output=json"),
        json!({"highres": false}),
    );
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let (_, after) = s.get_json(&format!("/session/{sid}"));
    assert!(
        after["last_access_ts"].as_i64() > before["last_access_ts"].as_i64(),
        "infer refreshes the session"
    );

    // save_label stores the result as a label (tag original by default)
    let r = post_params(
        &s,
        "?image=small&output=json",
        json!({"highres": false, "save_label": true}),
    );
    assert_eq!(r.status(), 200);
    let (_, all) = s.get_json("/datastore/?output=all");
    let label = &all["objects"]["small"]["labels"]["original"];
    assert_eq!(label["ext"], ".nii.gz");
    assert_eq!(label["info"]["model"], "wholeBody_ct_segmentation");
    assert_eq!(label["info"]["params"]["label_names"]["spleen"], 1);
    let r = s
        .http
        .get(s.url("/datastore/label?label=small&tag=original"))
        .send()
        .unwrap();
    assert_eq!(label_dims(&r.bytes().unwrap(), "x.nii.gz"), [48, 48, 24]);
}

#[test]
fn lowres_infer_does_not_block_other_requests() {
    let s = small_server();
    let url = s.url(&format!("{INFER}?image=example_ct"));
    let http = s.http.clone();
    let started = Instant::now();
    let job = std::thread::spawn(move || {
        let form =
            reqwest::blocking::multipart::Form::new().text("params", r#"{"highres": false}"#);
        let r = http.post(url).multipart(form).send().unwrap();
        let status = r.status().as_u16();
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        (status, ct, r.bytes().unwrap().to_vec(), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(700));
    let mut timings = Vec::new();
    for round in 0..3 {
        let t = Instant::now();
        let (st, _) = s.get_json("/info/");
        assert_eq!(st, 200);
        timings.push(("info", t.elapsed()));
        let t = Instant::now();
        let form = common::form_with_file(
            "label",
            "l.nii.gz",
            small_ct_bytes(),
            &format!(r#"{{"round": {round}}}"#),
        );
        let r = s
            .http
            .put(s.url("/datastore/label?image=small&tag=final"))
            .multipart(form)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        timings.push(("save label", t.elapsed()));
        let t = Instant::now();
        assert_eq!(s.get_json("/datastore/?output=all").0, 200);
        timings.push(("datastore", t.elapsed()));
    }
    assert!(
        !job.is_finished(),
        "the inference should still be running (measure while it runs)"
    );
    for (what, d) in &timings {
        assert!(
            *d < Duration::from_millis(500),
            "{what} took {d:?} during an inference: {timings:?}"
        );
    }
    let (status, ct, body, took) = job.join().unwrap();
    assert_eq!(status, 200);
    assert!(took > Duration::from_secs(1));
    let parts = parse_multipart(&body, &boundary_of(&ct));
    let params: Value = serde_json::from_slice(&parts[0].body).unwrap();
    assert_eq!(params["highres"], false);
    assert_eq!(
        label_dims(&parts[1].body, "x.nii.gz"),
        [122, 101, 30],
        "result on the input grid"
    );
}

#[test]
fn missing_weights_answer_503() {
    let bundle = common::bundle_without_weights();
    let mut opts = Opts::new();
    opts.bundle = bundle.path().to_path_buf();
    let s = Server::start(opts);
    let (st, info) = s.get_json("/info/");
    assert_eq!(st, 200);
    let m = &info["models"]["wholeBody_ct_segmentation"];
    assert_eq!(m["weights_available"], false);
    assert!(m["description"].as_str().unwrap().contains("model.pt"));
    let r = post_params(&s, "?image=example_ct", json!({}));
    assert_eq!(r.status(), 503);
    let want = format!(
        "no weights for wholeBody_ct_segmentation (highres): put the bundle's model.pt at {} (see README: Installing weights)",
        bundle.path().join("models/model.pt").display()
    );
    assert_eq!(detail(&r.json().unwrap()), want);
    let r = post_params(&s, "?image=example_ct", json!({"highres": "false"}));
    assert_eq!(r.status(), 503);
    assert!(detail(&r.json().unwrap()).contains("(lowres): put the bundle's model_lowres.pt"));
    assert_eq!(s.get_json("/model/info/wholeBody_ct_segmentation").0, 404);
}

#[test]
fn full_queue_answers_429() {
    let mut opts = Opts::new();
    opts.files.push(("small.nii.gz".into(), small_ct_bytes()));
    opts.args
        .extend(["--infer-queue".to_string(), "1".to_string()]);
    let s = Server::start(opts);
    let jobs: Vec<_> = (0..3)
        .map(|_| {
            let http = s.http.clone();
            let url = s.url(&format!("{INFER}?image=small&output=json"));
            std::thread::spawn(move || {
                let form = reqwest::blocking::multipart::Form::new()
                    .text("params", r#"{"highres": false}"#);
                let r = http.post(url).multipart(form).send().unwrap();
                let st = r.status().as_u16();
                (st, r.text().unwrap())
            })
        })
        .collect();
    let results: Vec<(u16, String)> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
    let busy: Vec<_> = results.iter().filter(|(st, _)| *st == 429).collect();
    assert!(
        results.iter().all(|(st, _)| *st == 200 || *st == 429),
        "{results:?}"
    );
    assert!(
        !busy.is_empty(),
        "one of three concurrent jobs is refused with queue 1: {results:?}"
    );
    let v: Value = serde_json::from_str(&busy[0].1).unwrap();
    assert!(detail(&v).starts_with("server busy:"), "{v}");
}
