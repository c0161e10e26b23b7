//! Object storage through real processes (issue 13): `ferrolabel start_server --storage-url
//! s3://BUCKET/PREFIX` against moto's S3 server on loopback (`testkit::S3Server`), connection
//! settings from the `AWS_*` environment as an operator sets them. Server A stores an image
//! and a label through HTTP and an uploaded checkpoint becomes model version 2; the bytes are
//! in the bucket under their SHA-256 (listed and read back with boto3, which moto installs).
//! Server B, on the same database and bucket with an empty studies folder and a bundle without
//! weights of its own, serves the same label and image and starts with version 2's weights,
//! fetched from the bucket; when A rolls back to version 1, B's weights follow. A session created
//! on A serves `/infer?session_id=` on B, and an image uploaded to A as a DICOM series exports
//! its label as a DICOM SEG from B (the session's files and the DICOM source are blobs named in
//! the database, not files of A's folders), and a resume state written in A's bundle reaches
//! B's. A training stopped on one server continues exactly on another with `resume: true`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferrolabel_testkit::{free_port, S3Server};
use serde_json::json;
use sha2::Digest;

use crate::common::spawned::Server;
use crate::common::training::{exact_resume, mapped_label, wait_until};
use crate::common::{
    self, bundle_copy, bundle_without_weights, repo, small_ct_bytes, weights, Opts, BIN,
};
use crate::jobs_support::ball_label;

/// A server process; killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(s3: &S3Server, url: &str, db: &str, studies: &Path, bundle: &Path) -> (Proc, String) {
    let port = free_port();
    let log = studies.with_extension("log");
    std::fs::create_dir_all(studies).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("start_server")
        .arg("--app")
        .arg(repo().join("apps/wholebody"))
        .arg("--studies")
        .arg(studies)
        .args(["--conf", "bundle_dir"])
        .arg(bundle)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--threads", "1", "--datastore-url", db])
        .args(["--storage-url", url])
        .env_remove("FERROLABEL_DATASTORE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::new();
    common::spawned::wait_ready(&mut child, &http, &base, &log);
    (Proc(child), base)
}

const MODEL: &str = "wholeBody_ct_segmentation";

/// `<key> <sha256 of its content>` per object of the bucket, listed and read by boto3.
fn bucket_listing(s3: &S3Server, bucket: &str) -> String {
    // a raw string: a `\` line continuation would strip the loop body's indentation
    const LIST: &str = r#"import boto3, hashlib, sys
c = boto3.client('s3', endpoint_url=sys.argv[1])
for o in c.list_objects_v2(Bucket=sys.argv[2]).get('Contents', []):
    body = c.get_object(Bucket=sys.argv[2], Key=o['Key'])['Body'].read()
    print(o['Key'], hashlib.sha256(body).hexdigest())
"#;
    let mut cmd = Command::new(ferrolabel_testkit::python());
    cmd.args(["-c", LIST, &s3.endpoint(), bucket]);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A new bucket on `s3` and a team's settings in `dir`: (bucket, `--storage-url`, `--datastore-url`
/// of a SQLite file).
fn team_bucket(s3: &S3Server, dir: &Path) -> (String, String, String) {
    let bucket = format!("t-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket(&bucket);
    let url = format!("s3://{bucket}/team");
    let db = format!("sqlite://{}", dir.join("team.db").display());
    (bucket, url, db)
}

#[test]
fn servers_on_one_bucket_save_and_serve_labels_through_http() {
    let Some(s3) = S3Server::shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (bucket, url, db) = team_bucket(s3, tmp.path());
    let bundle_a = bundle_copy();
    let (_a, a) = start(s3, &url, &db, &tmp.path().join("a"), bundle_a.path());
    let http = reqwest::blocking::Client::new();

    let (image, label) = (small_ct_bytes(), ball_label());
    let part = |name: &str, bytes: &Vec<u8>| {
        reqwest::blocking::multipart::Form::new().part(
            name.to_string(),
            reqwest::blocking::multipart::Part::bytes(bytes.clone()).file_name("x.nii.gz"),
        )
    };
    let r = http
        .put(format!("{a}/datastore/?image=ct1"))
        .multipart(part("file", &image))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let r = http
        .put(format!("{a}/datastore/label?image=ct1&tag=final"))
        .multipart(part("label", &label))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let got = http
        .get(format!("{a}/datastore/label?label=ct1&tag=final"))
        .send()
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().unwrap().as_ref(), label.as_slice());

    // the bytes are in the bucket under their hash, as boto3 (installed with moto) sees it
    let listed = bucket_listing(s3, &bucket);
    for bytes in [&image, &label] {
        let key = format!("team/sha256/{}", hex::encode(sha2::Sha256::digest(bytes)));
        // each listed key with the SHA-256 of what it holds
        assert!(
            listed.contains(&format!("{key} {}", &key["team/sha256/".len()..])),
            "blob {key} not in the bucket: {listed}"
        );
    }
    assert!(!tmp.path().join("a/labels/final/ct1.nii.gz").exists());

    // a checkpoint uploaded to A: version 2 (the weights in place are version 1), a blob too
    let (v1, v2) = (
        std::fs::read(bundle_a.path().join("models/model.pt")).unwrap(),
        weights(11),
    );
    let form = common::form_with_file("file", "new.pt", v2.clone(), "{}");
    let r = http
        .put(format!("{a}/model/{MODEL}"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let listed = bucket_listing(s3, &bucket);
    for bytes in [&v1, &v2] {
        let key = format!("team/sha256/{}", hex::encode(sha2::Sha256::digest(bytes)));
        assert!(
            listed.contains(&key),
            "weights blob {key} not in the bucket: {listed}"
        );
    }

    // server B: an empty studies folder, a bundle without weights, the same database and bucket
    let bundle_b = bundle_without_weights();
    let (_b, b) = start(s3, &url, &db, &tmp.path().join("b"), bundle_b.path());
    let get = |url: String| {
        let r = http.get(url).send().unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().unwrap().to_vec()
    };
    assert_eq!(
        get(format!("{b}/datastore/label?label=ct1&tag=final")),
        label
    );
    assert_eq!(get(format!("{b}/datastore/image?image=ct1")), image);
    assert!(!tmp.path().join("b/ct1.nii.gz").exists());
    // B started with the active version's weights, fetched from the bucket
    let b_weights = bundle_b.path().join("models/model.pt");
    assert_eq!(
        std::fs::read(&b_weights).unwrap(),
        v2,
        "B's weights are not version 2"
    );
    assert_eq!(
        std::fs::read(bundle_b.path().join("models/model_lowres.pt")).unwrap(),
        std::fs::read(bundle_a.path().join("models/model_lowres.pt")).unwrap()
    );
    let versions: serde_json::Value = http
        .get(format!("{b}/model/versions/{MODEL}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(versions["active"], 2, "{versions}");
    shared_sessions_and_dicom_sources(&http, &a, &b, tmp.path());

    // A rolls back to version 1: B's weights follow (its pickup poll, every 3 s)
    let r = http
        .post(format!("{a}/model/versions/{MODEL}/activate?version=1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    crate::common::training::wait_until(
        "B's weights follow the rollback",
        Duration::from_secs(60),
        || std::fs::read(&b_weights).is_ok_and(|w| w == v1),
    );

    // a resume state A's training left (written in place, as the trainer does at an epoch
    // end) reaches B's bundle, so `resume: true` on B finds it
    let state = b"resume state of epoch 3".to_vec();
    std::fs::write(
        bundle_a.path().join("models/model_lowres.resume.pt"),
        &state,
    )
    .unwrap();
    let b_state = bundle_b.path().join("models/model_lowres.resume.pt");
    crate::common::training::wait_until(
        "B fetches A's resume state",
        Duration::from_secs(60),
        || std::fs::read(&b_state).is_ok_and(|s| s == state),
    );

    // `ferrolabel storage gc`: the image removed through A is named by no row any more; its
    // blob goes (a dry run first names it and keeps it), the label's and the weights' stay
    let r = http
        .delete(format!("{a}/datastore/?id=ct1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let key = |bytes: &[u8]| format!("team/sha256/{}", hex::encode(sha2::Sha256::digest(bytes)));
    let gc = |dry_run: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["storage", "gc", "--studies"])
            .arg(tmp.path().join("gc"))
            .args(["--datastore-url", &db, "--storage-url", &url])
            .args(["--grace-hours", "0"])
            .env_remove("FERROLABEL_DATASTORE_URL");
        if dry_run {
            cmd.arg("--dry-run");
        }
        for (k, v) in s3.env() {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    for dry_run in [true, false] {
        let report = gc(dry_run);
        assert_eq!(
            report["deleted"],
            serde_json::json!([key(&image)]),
            "{report}"
        );
        let listed = bucket_listing(s3, &bucket);
        assert_eq!(listed.contains(&key(&image)), dry_run, "{listed}");
        for kept in [&label, &v1, &v2] {
            assert!(listed.contains(&key(kept)), "{listed}");
        }
    }
}

/// The shipped DICOM series as one zip.
fn series_zip() -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let dir = repo().join("data/totalseg/example_ct_dicom");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for p in paths {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        w.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(&std::fs::read(&p).unwrap()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A session created on A is used by an inference on B; an image A received as a DICOM series
/// exports its label as a DICOM SEG from B.
fn shared_sessions_and_dicom_sources(
    http: &reqwest::blocking::Client,
    a: &str,
    b: &str,
    tmp: &Path,
) {
    let form = common::form_with_file("files", "ct.nii.gz", small_ct_bytes(), "{}");
    let r = http
        .put(format!("{a}/session/"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let created: serde_json::Value = r.json().unwrap();
    let id = created["session_id"].as_str().unwrap().to_string();
    let r = http
        .post(format!("{b}/infer/{MODEL}?session_id={id}"))
        .form(&[("params", r#"{"highres": false}"#)])
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "infer on B with A's session: {}",
        r.text().unwrap()
    );
    let r = http.get(format!("{b}/session/{id}")).send().unwrap();
    assert_eq!(r.status(), 200);
    // removed on B: gone on A
    let r = http.delete(format!("{b}/session/{id}")).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{a}/session/{id}")).send().unwrap();
    assert_eq!(r.status(), 404);

    // a DICOM series uploaded to A; a label saved on A; its SEG from B
    let form = common::form_with_file("file", "series.zip", series_zip(), "{}");
    let r = http
        .put(format!("{a}/datastore/?image=dcm1"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert!(
        !tmp.join("a/.dcm1.dicom-source.json").exists(),
        "a blob, not a sidecar"
    );
    let image = http
        .get(format!("{a}/datastore/image?image=dcm1"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let limits = ferrolabel_imaging::Limits::default();
    let volume = ferrolabel_imaging::read_nifti_bytes(&image, &limits).unwrap();
    let labels: Vec<u8> = volume
        .data
        .iter()
        .map(|&v| u8::from(v > 300.0) * 92)
        .collect();
    assert!(labels.iter().any(|&v| v != 0));
    let nifti =
        ferrolabel_imaging::encode_label_nifti(&labels, volume.header.as_ref().unwrap(), true)
            .unwrap();
    let form = common::form_with_file("label", "final.nii.gz", nifti, "{}");
    let r = http
        .put(format!("{a}/datastore/label?image=dcm1&tag=final"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let r = http
        .get(format!(
            "{b}/datastore/label?label=dcm1&tag=final&format=dicom_seg"
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "SEG from B: {}", r.text().unwrap());
    assert_eq!(r.headers()["content-type"], "application/dicom");
    let seg = r.bytes().unwrap();
    assert_eq!(&seg[128..132], b"DICM");
}

/// A training stopped on server A continues exactly on server B (`resume: true`): A's resume
/// state reaches B's bundle through the bucket (B starts with no weights or state of its own,
/// and A is gone before B trains), B's datalist names the same training pairs, and B runs only
/// the epochs after A's.
#[test]
fn a_training_stopped_on_one_server_resumes_exactly_on_another() {
    let Some(s3) = S3Server::shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_, url, db) = team_bucket(s3, tmp.path());
    let team = |bundle: &Path| Opts {
        bundle: bundle.to_path_buf(),
        with_example: false,
        args: vec![
            "--datastore-url".into(),
            db.clone(),
            "--storage-url".into(),
            url.clone(),
        ],
        env: s3.env(),
        ..Opts::new()
    };
    let params = |max_epochs: u64, resume: bool| {
        json!({"highres": false, "max_epochs": max_epochs, "val_interval": 1,
               "train_batch_size": 1, "roi_size": 32, "val_roi_size": 64, "resume": resume})
    };
    let history = |s: &Server| s.get_json("/info/").1["train_stats"][MODEL]["history"].clone();

    let bundle_a = bundle_copy();
    let mut a = Server::start(team(bundle_a.path()));
    // through the API: a file dropped into A's folder would be A's alone (docs/team.md)
    let ct = std::fs::read(common::example_ct()).unwrap();
    let form = common::form_with_file("file", "example_ct.nii.gz", ct, "{}");
    let r = a
        .http
        .put(a.url("/datastore/?image=example_ct"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    a.save_final("example_ct", mapped_label(tmp.path()));
    let r = a.start_training(MODEL, &params(100_000, false));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    // an epoch recorded: its resume state was written before its record
    wait_until("A's first epoch", Duration::from_secs(300), || {
        history(&a).as_array().is_some_and(|h| !h.is_empty())
    });
    let r = a.http.delete(a.url("/train/")).send().unwrap();
    assert_eq!(r.status(), 200);
    wait_until("A's worker to end", Duration::from_secs(30), || {
        a.get_json("/train/?check_if_running=true").0 == 404
    });
    let k = history(&a).as_array().unwrap().len() as u64;
    let state = std::fs::read(bundle_a.path().join("models/model_lowres.resume.pt")).unwrap();

    // B: the same database and bucket, an empty studies folder, a bundle without weights
    let bundle_b = bundle_without_weights();
    let b = Server::start(team(bundle_b.path()));
    let b_state = bundle_b.path().join("models/model_lowres.resume.pt");
    wait_until(
        "B fetches A's resume state",
        Duration::from_secs(60),
        || std::fs::read(&b_state).is_ok_and(|s| s == state),
    );
    a.kill();
    let max_epochs = k + 2;
    let r = b.start_training(MODEL, &params(max_epochs, true));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let done = b.wait_train_end(Duration::from_secs(300));
    assert_eq!(done["status"], "DONE", "{done}\n{}", b.stderr());
    assert_eq!(done["result"]["epochs"], max_epochs, "{done}");
    let (lines, from) = exact_resume(&done);
    assert!(
        (k..max_epochs).contains(&from),
        "resumed at {from}, A recorded {k}: {lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("not an exact continuation")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("epoch 1/")),
        "B started over: {lines:?}"
    );
}
