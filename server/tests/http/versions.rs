//! Model versions over HTTP (docs/models.md), on one server with `--conf model_versions_keep 2`:
//! the weights in place become version 1 (`initial`) at the first look; `/info/` names the
//! active version; an upload becomes version 2 (parent 1, its user) and the next inference runs
//! it; a file that is not a checkpoint is 422 and changes nothing; a rollback to version 1 makes
//! the next inference answer exactly what version 1 answered; every `original` label records the
//! version that produced it; a third version prunes version 1's file (retention: the last 2 and
//! the active), after which activating it is 409; bad activations are 404/422; both writes are
//! in the audit log.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::{self, detail, form_with_file, small_ct_bytes, weights, Opts};
use crate::server::Server;

const MODEL: &str = "wholeBody_ct_segmentation";

fn list(s: &Server) -> Value {
    let (st, v) = s.get_json(&format!("/model/versions/{MODEL}"));
    assert_eq!(st, 200, "{v}");
    v
}

/// (version, parent, source, active, file kept) of every listed version, newest first.
fn summary(v: &Value) -> Vec<(i64, Option<i64>, String, bool, bool)> {
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["parent"].as_i64(),
                v["source"].as_str().unwrap().to_string(),
                v["active"].as_bool().unwrap(),
                v["file_kept"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Segments `small` (saved as its `original` label): the label file's bytes and the label's
/// recorded `model_version`.
fn infer(s: &Server) -> (Vec<u8>, Value) {
    let form = reqwest::blocking::multipart::Form::new().text("params", r#"{"save_label": true}"#);
    let r = s
        .http
        .post(s.url(&format!("/infer/{MODEL}?image=small&output=image")))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().unwrap().to_vec();
    let (_, info) = s.get_json("/datastore/label/info?label=small&tag=original");
    (bytes, info["model_version"].clone())
}

fn upload(s: &Server, bytes: Vec<u8>) -> reqwest::blocking::Response {
    let form = form_with_file("file", "new.pt", bytes, "{}");
    s.http
        .put(s.url(&format!("/model/{MODEL}")))
        .multipart(form)
        .send()
        .unwrap()
}

fn activate(s: &Server, query: &str) -> (u16, Value) {
    let r = s
        .http
        .post(s.url(&format!("/model/versions/{MODEL}/activate{query}")))
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

fn kept_files(bundle: &Path) -> usize {
    std::fs::read_dir(bundle.join("models/versions"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn versions_upload_rollback_retention() {
    let bundle = common::bundle_copy();
    let mut opts = Opts::new();
    opts.bundle = bundle.path().to_path_buf();
    opts.with_example = false;
    opts.files.push(("small.nii.gz".into(), small_ct_bytes()));
    opts.args.extend(
        ["--conf", "model_versions_keep", "2"]
            .iter()
            .map(|s| s.to_string()),
    );
    let s = Server::start(opts);
    let (b, c) = (weights(11), weights(12));

    // the weights in place: version 1, found at the first look
    let v = list(&s);
    assert_eq!(summary(&v), [(1, None, "initial".into(), true, true)]);
    assert_eq!(
        (v["active"].as_i64(), v["keep"].as_i64()),
        (Some(1), Some(2))
    );
    let sha1 = v["versions"][0]["sha256"].as_str().unwrap().to_string();
    assert!(bundle
        .path()
        .join(format!("models/versions/{sha1}.pt"))
        .is_file());
    let (_, info) = s.get_json("/info/");
    assert_eq!(
        info["models"][MODEL]["model_version"]["highres"]["version"],
        1
    );
    let (label1, used) = infer(&s);
    assert_eq!(used, 1, "the original label records the version");

    // an upload: version 2, parent 1, active; the next inference runs it
    let r = upload(&s, b.clone());
    assert_eq!(r.status(), 200);
    let up: Value = r.json().unwrap();
    assert_eq!(up["version"]["version"], 2);
    assert_eq!(up["version"]["user"], "admin");
    assert_eq!(
        up["checksum"],
        format!("SHA256:{}", up["version"]["sha256"].as_str().unwrap())
    );
    assert_eq!(
        std::fs::read(bundle.path().join("models/model.pt")).unwrap(),
        b
    );
    let (label2, used) = infer(&s);
    assert_eq!(used, 2);
    assert_ne!(label1, label2, "other weights, another label");

    // not a checkpoint: 422, not recorded, not active
    let r = upload(&s, b"not a checkpoint".to_vec());
    assert_eq!(r.status(), 422);
    assert!(detail(&r.json().unwrap()).starts_with("weights file rejected"));
    let v = list(&s);
    assert_eq!(
        summary(&v),
        [
            (2, Some(1), "upload".into(), true, true),
            (1, None, "initial".into(), false, true)
        ]
    );
    // highres versions kept, plus the low-res weights' version 1 (recorded by /info/)
    assert_eq!(kept_files(bundle.path()), 3);

    // rollback: the next inference answers exactly what version 1 answered
    let (st, a) = activate(&s, "?version=1");
    assert_eq!(st, 200, "{a}");
    assert_eq!(
        (a["version"].as_i64(), a["active"].as_bool()),
        (Some(1), Some(true))
    );
    let (label, used) = infer(&s);
    assert_eq!(used, 1);
    assert_eq!(label, label1, "version 1's weights again");
    let (_, info) = s.get_json("/info/");
    assert_eq!(
        info["models"][MODEL]["model_version"]["highres"]["version"],
        1
    );

    // bad activations change nothing
    assert_eq!(activate(&s, "?version=99").0, 404);
    assert_eq!(activate(&s, "?version=two").0, 422);
    assert_eq!(activate(&s, "").0, 422);
    assert_eq!(list(&s)["active"], 1);

    // a third version (parent: the active 1); keep 2: version 1's file goes, its row stays
    let r = upload(&s, c);
    assert_eq!(r.status(), 200);
    let v = list(&s);
    assert_eq!(
        summary(&v),
        [
            (3, Some(1), "upload".into(), true, true),
            (2, Some(1), "upload".into(), false, true),
            (1, None, "initial".into(), false, false)
        ]
    );
    assert!(v["versions"][2]["pruned_at"].is_i64());
    assert!(!bundle
        .path()
        .join(format!("models/versions/{sha1}.pt"))
        .exists());
    // highres versions kept, plus the low-res weights' version 1 (recorded by /info/)
    assert_eq!(kept_files(bundle.path()), 3);
    let (st, e) = activate(&s, "?version=1");
    assert_eq!(st, 409);
    assert!(detail(&e).contains("pruned"), "{e}");
    let (st, _) = activate(&s, "?version=2");
    assert_eq!(st, 200);
    let (label, used) = infer(&s);
    assert_eq!((label, used), (label2, json!(2)));

    let (_, audit) = s.get_json("/audit/");
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "model.activate").count(),
        2
    );
    assert_eq!(actions.iter().filter(|a| **a == "model.upload").count(), 2);
}
