//! End-to-end tests of the non-inference endpoints against the real binary.

use crate::common;
use crate::common::{detail, form_with_file, Opts};
use crate::server::Server;
use serde_json::{json, Value};
use sha2::Digest;

fn example_bytes() -> Vec<u8> {
    std::fs::read(common::example_ct()).unwrap()
}

#[test]
fn info_schema() {
    let s = Server::start(Opts::new());
    let (status, info) = s.get_json("/info/");
    assert_eq!(status, 200);
    assert!(info["name"]
        .as_str()
        .unwrap()
        .starts_with("MONAILabel - wholeBody_ct_segmentation (ferrolabel "));
    assert!(
        info.get("config").is_none(),
        "no top-level config (Slicer refuses it)"
    );
    assert_eq!(info["labels"].as_array().unwrap().len(), 104);
    let m = &info["models"]["wholeBody_ct_segmentation"];
    assert_eq!(m["type"], "segmentation");
    assert_eq!(m["dimension"], 3);
    assert_eq!(m["weights_available"], true);
    let labels = m["labels"].as_object().unwrap();
    assert_eq!(labels.len(), 104);
    assert_eq!(labels["spleen"], 1);
    assert!(!labels.contains_key("background"));
    let values: Vec<i64> = labels.values().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(
        values,
        (1..=104).collect::<Vec<_>>(),
        "sorted by value, contiguous"
    );
    assert_eq!(m["config"]["highres"], json!([true, false]));
    assert_eq!(m["config"]["sw_overlap"], 0.25);
    assert_eq!(m["config"]["device"], json!(["cpu"]));
    for (k, v) in m["config"].as_object().unwrap() {
        assert!(
            v.as_array().is_none_or(|a| !a.is_empty()),
            "empty list in config.{k}"
        );
    }
    let trainer = &info["trainers"]["wholeBody_ct_segmentation"];
    assert!(trainer["description"].is_string());
    for (k, v) in trainer["config"].as_object().unwrap() {
        assert!(
            v.as_array().is_none_or(|a| !a.is_empty()),
            "empty list in trainer config.{k}"
        );
    }
    assert_eq!(
        info["train_stats"],
        json!({"wholeBody_ct_segmentation": {}})
    );
    for m in ["dice", "sum", "epistemic"] {
        assert!(info["scoring"][m]["description"].is_string(), "scoring.{m}");
    }
    for st in ["random", "first", "epistemic"] {
        assert!(info["strategies"][st].is_object(), "strategies.{st}");
    }
    assert_eq!(info["datastore"]["total"], 1);
    // both slash forms, no redirect
    let r = s.http.get(s.url("/info")).send().unwrap();
    assert_eq!(r.status(), 200);
    // no automatic HEAD
    let r = s.http.head(s.url("/info/")).send().unwrap();
    assert_eq!(r.status(), 405);
    // landing page
    let r = s.http.get(s.url("/")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("/infer/{model}"));
}

#[test]
fn datastore_listing_and_stats() {
    let s = Server::start(Opts::new());
    let (st, stats) = s.get_json("/datastore/?output=stats");
    assert_eq!(st, 200);
    assert_eq!(stats, json!({"total": 1, "completed": 0, "label_tags": {}}));
    assert_eq!(s.get_json("/datastore/").1, stats);
    let (st, all) = s.get_json("/datastore/?output=all");
    assert_eq!(st, 200);
    assert_eq!(all["name"], "new-dataset");
    let obj = &all["objects"]["example_ct"];
    assert_eq!(obj["image"]["ext"], ".nii.gz");
    assert_eq!(obj["image"]["info"]["name"], "example_ct.nii.gz");
    let (st, train) = s.get_json("/datastore/?output=train");
    assert_eq!(st, 200);
    assert_eq!(train, json!([]));
    let (st, info) = s.get_json("/datastore/image/info?image=example_ct");
    assert_eq!(st, 200);
    assert_eq!(info["name"], "example_ct.nii.gz");
    assert!(info["path"]
        .as_str()
        .unwrap()
        .ends_with("example_ct.nii.gz"));
    assert_eq!(
        s.get_json("/datastore/image/info?image=nope"),
        (200, json!({}))
    );
}

#[test]
fn images_labels_and_revisions() {
    let s = Server::start(Opts::new());
    let bytes = example_bytes();
    // upload with ?image= and a full client path as the file name
    let form = form_with_file(
        "file",
        "/tmp/slicer/tmpab12.nii.gz",
        bytes.clone(),
        r#"{"client_id": "user-xyz"}"#,
    );
    let r = s
        .http
        .put(s.url("/datastore/?image=case_1"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert_eq!(r.json::<Value>().unwrap(), json!({"image": "case_1"}));
    // upload without ?image=: id from the file name
    let form = form_with_file("file", "C:\\scans\\case.002.nii.gz", bytes.clone(), "{}");
    let r = s
        .http
        .put(s.url("/datastore/image"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap(), json!({"image": "case"}));
    let (_, info) = s.get_json("/datastore/image/info?image=case_1");
    assert_eq!(info["user"], "admin");
    assert_eq!(info["client_id"], "user-xyz");
    assert_eq!(info["name"], "case_1.nii.gz");

    // download equals the upload
    let r = s
        .http
        .get(s.url("/datastore/image?image=case_1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"case_1.nii.gz\""
    );
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().unwrap().to_vec(), bytes);
    assert_eq!(
        s.http
            .head(s.url("/datastore/image?image=case_1"))
            .send()
            .unwrap()
            .status(),
        200
    );
    // with a checksum: the file's SHA-256, with or without the prefix, any case
    let sum: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut wrong = sum.clone().into_bytes();
    wrong[10] = if wrong[10] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    for (check_sum, status) in [
        (format!("SHA256:{sum}"), 200),
        (format!("sha256:{}", sum.to_uppercase()), 200),
        (sum.clone(), 200),
        (format!("SHA256:{wrong}"), 404),
        ("SHA256:".to_string(), 404),
    ] {
        let r = s
            .http
            .head(s.url(&format!(
                "/datastore/image?image=case_1&check_sum={check_sum}"
            )))
            .send()
            .unwrap();
        assert_eq!(r.status(), status, "check_sum={check_sum}");
    }
    assert_eq!(
        s.http
            .head(s.url("/datastore/image?image=nope"))
            .send()
            .unwrap()
            .status(),
        404
    );

    // save a label (tag defaults to final), twice: the first version is kept as a revision
    let label1 = bytes.clone();
    let params = r#"{"label_info": [{"name": "spleen", "idx": 1}], "model": "wholeBody_ct_segmentation", "client_id": "user-xyz"}"#;
    let form = form_with_file("label", "/tmp/label.nii.gz", label1.clone(), params);
    let r = s
        .http
        .put(s.url("/datastore/label?image=case_1"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"image": "case_1", "label": "case_1"})
    );
    let (_, all) = s.get_json("/datastore/?output=all");
    let final_label = &all["objects"]["case_1"]["labels"]["final"];
    assert_eq!(final_label["ext"], ".nii.gz");
    assert_eq!(final_label["info"]["model"], "wholeBody_ct_segmentation");
    assert_eq!(final_label["info"]["label_info"][0]["name"], "spleen");
    assert_eq!(final_label["info"]["name"], "case_1.nii.gz");
    assert!(final_label["info"]["ts"].is_i64());
    let (_, stats) = s.get_json("/datastore/?output=stats");
    assert_eq!(stats["completed"], 1);
    assert_eq!(stats["label_tags"]["final"], 1);
    let (_, train) = s.get_json("/datastore/?output=train");
    assert_eq!(train.as_array().unwrap().len(), 1);

    let r = s
        .http
        .get(s.url("/datastore/label?label=case_1&tag=final"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"case_1.nii.gz\""
    );
    assert_eq!(r.bytes().unwrap().to_vec(), label1);
    assert_eq!(
        s.http
            .head(s.url("/datastore/label?image=case_1&tag=final"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.http
            .head(s.url("/datastore/label?image=case_1&tag=other"))
            .send()
            .unwrap()
            .status(),
        404
    );

    // second save: a different file on the same grid (a label may only be stored on its
    // image's grid)
    let header = ferrolabel_imaging::read_nifti_bytes(&bytes, &Default::default())
        .unwrap()
        .header
        .unwrap();
    let dims = header.volume_dims().unwrap();
    let label2 =
        ferrolabel_imaging::encode_label_nifti(&vec![3u8; dims.iter().product()], &header, true)
            .unwrap();
    let form = form_with_file("label", "second.nii.gz", label2.clone(), "{}");
    let r = s
        .http
        .put(s.url("/datastore/label?image=case_1&tag="))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let revisions = s.studies.path().join(".ferrolabel/revisions/final/case_1");
    let n = std::fs::read_dir(&revisions)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(n, 2, "both versions kept under {}", revisions.display());

    // label info
    let (st, li) = s.get_json("/datastore/label/info?label=case_1&tag=final");
    assert_eq!(st, 200);
    assert_eq!(li["name"], "case_1.nii.gz");
    let r = s
        .http
        .put(s.url("/datastore/label/info?label=case_1&tag=final"))
        .multipart(reqwest::blocking::multipart::Form::new().text("info", r#"{"reviewed": true}"#))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "null");
    let r = s
        .http
        .put(s.url("/datastore/updatelabelinfo?label=case_1&tag=final"))
        .form(&[("params", r#"{"approved": "yes"}"#)])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, li) = s.get_json("/datastore/label/info?label=case_1&tag=final");
    assert_eq!(li["reviewed"], true);
    assert_eq!(li["approved"], "yes");
    // image info update
    let r = s
        .http
        .put(s.url("/datastore/image/info?image=case_1"))
        .multipart(reqwest::blocking::multipart::Form::new().text("info", r#"{"note": "x"}"#))
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "null");
    assert_eq!(
        s.get_json("/datastore/image/info?image=case_1").1["note"],
        "x"
    );

    // dataset export
    let r = s.http.get(s.url("/datastore/dataset")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/zip");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"dataset.zip\""
    );
    let zip = r.bytes().unwrap();
    assert!(zip.starts_with(b"PK"));
    let names = String::from_utf8_lossy(&zip);
    assert!(names.contains("image/case_1.nii.gz") && names.contains("label/case_1.nii.gz"));
    assert!(names.contains("metadata.json"));

    // delete label, then images
    let r = s
        .http
        .delete(s.url("/datastore/label?id=case_1&tag=final"))
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap(), json!({}));
    let (_, stats) = s.get_json("/datastore/?output=stats");
    assert_eq!(stats["label_tags"], json!({}));
    let r = s.http.delete(s.url("/datastore/?id=case")).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .http
        .delete(s.url("/datastore/image?id=case_1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.get_json("/datastore/?output=stats").1["total"], 1);
    let r = s
        .http
        .delete(s.url("/datastore/image?id=case_1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn sessions_lifecycle() {
    let s = Server::start(Opts::new());
    let form = reqwest::blocking::multipart::Form::new()
        .text("client_id", "user-xyz")
        .part(
            "files",
            reqwest::blocking::multipart::Part::bytes(example_bytes()).file_name("tmpx1.nii.gz"),
        );
    let r = s
        .http
        .put(s.url("/session/?expiry=600"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    let id = v["session_id"].as_str().unwrap().to_string();
    assert_eq!(v["session_info"]["expiry"], 600);
    assert!(v["session_info"]["image"]
        .as_str()
        .unwrap()
        .ends_with("tmpx1.nii.gz"));
    let (st, info) = s.get_json(&format!("/session/{id}"));
    assert_eq!(st, 200);
    assert_eq!(info["name"], id.as_str());
    let r = s
        .http
        .get(s.url(&format!("/session/{id}?image=true")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().unwrap().to_vec(), example_bytes());
    // several files make one session
    let form = reqwest::blocking::multipart::Form::new()
        .part(
            "files",
            reqwest::blocking::multipart::Part::bytes(b"a".to_vec()).file_name("1.dcm"),
        )
        .part(
            "files",
            reqwest::blocking::multipart::Part::bytes(b"b".to_vec()).file_name("2.dcm"),
        );
    let r = s
        .http
        .put(s.url("/session"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let id2 = r.json::<Value>().unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    // delete
    let r = s
        .http
        .delete(s.url(&format!("/session/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["name"], id.as_str());
    let (st, v) = s.get_json(&format!("/session/{id}"));
    assert_eq!(st, 404);
    assert_eq!(detail(&v), format!("Session ({id}) Not Found"));
    let (st, _) = s.get_json("/session/xyz");
    assert_eq!(st, 404);
    assert_eq!(
        s.http
            .delete(s.url(&format!("/session/{id}")))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        s.http
            .delete(s.url(&format!("/session/{id2}")))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn sessions_disabled_answer_406() {
    let s = Server::start(Opts {
        args: vec!["--sessions".into(), "false".into()],
        ..Opts::new()
    });
    let (st, v) = s.get_json("/session/3f1e2d3c-1111-4222-8333-444455556666");
    assert_eq!(st, 406);
    assert_eq!(detail(&v), "Session Feature is Not Enabled");
    let r = s.http.delete(s.url("/session/abc")).send().unwrap();
    assert_eq!(r.status(), 406);
    let form = form_with_file("files", "a.nii.gz", example_bytes(), "{}");
    assert_eq!(
        s.http
            .put(s.url("/session/"))
            .multipart(form)
            .send()
            .unwrap()
            .status(),
        406
    );
}

#[test]
fn activelearning_first_and_random() {
    let s = Server::start(Opts::new());
    for id in ["b_case", "a_case"] {
        let form = form_with_file("file", "x.nii.gz", example_bytes(), "{}");
        let r = s
            .http
            .put(s.url(&format!("/datastore/?image={id}")))
            .multipart(form)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = s.http.post(s.url("/activelearning/first")).send().unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["id"], "a_case");
    assert_eq!(v["name"], "a_case.nii.gz");
    assert!(v["path"].as_str().unwrap().ends_with("a_case.nii.gz"));
    assert!(
        v.get("strategy").is_none(),
        "first time: no strategy map yet"
    );
    // served once: strategy recorded in the image info
    let (_, info) = s.get_json("/datastore/image/info?image=a_case");
    assert_eq!(info["strategy"]["first"]["client_id"], "admin");
    let r = s
        .http
        .post(s.url("/activelearning/first"))
        .json(&json!({"client_id": "user-xyz"}))
        .send()
        .unwrap();
    let v: Value = r.json().unwrap();
    assert_eq!(v["id"], "a_case");
    assert!(
        v["strategy"]["first"].is_object(),
        "second time: the previous strategy map"
    );
    let (_, info) = s.get_json("/datastore/image/info?image=a_case");
    assert_eq!(info["strategy"]["first"]["client_id"], "user-xyz");

    let r = s
        .http
        .post(s.url("/activelearning/random"))
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert!(["a_case", "b_case", "example_ct"].contains(&v["id"].as_str().unwrap()));
    assert!(v["weight"].is_i64());
    // params.strategy overrides the path
    let r = s
        .http
        .post(s.url("/activelearning/random"))
        .json(&json!({"strategy": "first"}))
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["id"], "a_case");
    let r = s.http.post(s.url("/activelearning/last")).send().unwrap();
    assert_eq!(r.status(), 404);

    // with every image labeled: {}
    let empty = Server::start(Opts {
        with_example: false,
        ..Opts::new()
    });
    let r = empty
        .http
        .post(empty.url("/activelearning/random"))
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap(), json!({}));
}

#[test]
fn model_files_and_logs() {
    let s = Server::start(Opts::new());
    let (st, v) = s.get_json("/model/info/wholeBody_ct_segmentation");
    assert_eq!(st, 200);
    assert!(v["checksum"].as_str().unwrap().starts_with("SHA256:"));
    assert!(v["modified_time"].is_u64());
    let r = s
        .http
        .get(s.url("/model/wholeBody_ct_segmentation"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"wholeBody_ct_segmentation.pt\""
    );
    let weights = r.bytes().unwrap().to_vec();
    assert_eq!(
        weights,
        std::fs::read(common::bundle_with_weights().join("models/model.pt")).unwrap()
    );
    assert_eq!(s.get_json("/model/info/nope").0, 404);
    // a file that is not weights is refused, and nothing is replaced
    let form = form_with_file("file", "model.pt", b"not a checkpoint".to_vec(), "{}");
    let r = s
        .http
        .put(s.url("/model/wholeBody_ct_segmentation"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(detail(&r.json().unwrap()).starts_with("weights file rejected"));
    assert_eq!(s.get_json("/model/info/wholeBody_ct_segmentation").1, v);

    let r = s
        .http
        .get(s.url("/logs/?text=true&lines=5"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().unwrap();
    assert!(text.lines().count() <= 5);
    let r = s.http.get(s.url("/logs/?lines=0")).send().unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.text().unwrap().contains("listening on"));
}

#[test]
fn cors_and_routing() {
    let s = Server::start(Opts::new());
    let r = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/info/"))
        .header("Origin", "http://viewer.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://viewer.example"
    );
    let r = s
        .http
        .get(s.url("/info/"))
        .header("Origin", "http://viewer.example")
        .send()
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://viewer.example"
    );
    let (st, v) = s.get_json("/auth/");
    assert_eq!((st, v), (404, json!({"detail": "Not Found"})));
    let (st, v) = s.get_json("/no/such/path");
    assert_eq!((st, v), (404, json!({"detail": "Not Found"})));
    let r = s.http.delete(s.url("/info/")).send().unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"detail": "Method Not Allowed"})
    );
    let r = s
        .http
        .get(s.url("/infer/wholeBody_ct_segmentation"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[test]
fn model_upload_and_delete() {
    let bundle = common::bundle_copy();
    let mut opts = Opts::new();
    opts.bundle = bundle.path().to_path_buf();
    let s = Server::start(opts);
    // replace the low-resolution weights with the high-resolution file (same network shape)
    let weights = std::fs::read(bundle.path().join("models/model.pt")).unwrap();
    let form = form_with_file("file", "/home/me/new_model.pt", weights.clone(), "{}");
    let r = s
        .http
        .put(s.url("/model/wholeBody_ct_segmentation?highres=false"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let v: Value = r.json().unwrap();
    let (_, high) = s.get_json("/model/info/wholeBody_ct_segmentation");
    assert_eq!(v["checksum"], high["checksum"]);
    assert_eq!(
        std::fs::read(bundle.path().join("models/model_lowres.pt")).unwrap(),
        weights
    );
    // delete: the file is renamed aside, and the model reports missing weights
    let r = s
        .http
        .delete(s.url("/model/wholeBody_ct_segmentation"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap(), json!({}));
    assert!(!bundle.path().join("models/model.pt").exists());
    let aside = std::fs::read_dir(bundle.path().join("models"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".deleted")
        })
        .count();
    assert_eq!(aside, 1);
    assert_eq!(s.get_json("/model/info/wholeBody_ct_segmentation").0, 404);
    assert_eq!(
        s.http
            .delete(s.url("/model/wholeBody_ct_segmentation"))
            .send()
            .unwrap()
            .status(),
        404
    );
    let (_, info) = s.get_json("/info/");
    assert_eq!(
        info["models"]["wholeBody_ct_segmentation"]["weights_available"],
        false
    );
    let r = s
        .http
        .post(s.url("/infer/wholeBody_ct_segmentation?image=example_ct"))
        .multipart(reqwest::blocking::multipart::Form::new().text("params", "{}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
}
