//! `/proxy/dicom/{qido,wado,stow}/{path}` and `/proxy/dicom/{path}` against a real Orthanc
//! (Debian's `orthanc` + `orthanc-dicomweb`) behind a `ferrolabel` started with
//! `--studies http://127.0.0.1:PORT/dicom-web`: QIDO and WADO answers equal Orthanc's own
//! (WADO byte for byte, up to the multipart boundary), STOW through the proxy stores, the
//! upstream 4xx comes back with its status, paths that would leave the prefix are refused,
//! a frozen PACS is a 504 and a stopped one a 502, and with auth on the proxy needs a token
//! of the `user` role. Without a DICOMweb datastore the proxy answers 404.

use crate::common;
use std::io::Read;
use std::time::Duration;

use crate::proxy_support::{
    boundary_of, ct_slice, new_uid, raw_get, replace_bytes, stow_body, Orthanc, PacsServer,
};
use serde_json::Value;

const WADO_ACCEPT: &str = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";

fn json_of(r: reqwest::blocking::Response) -> (u16, Value) {
    let st = r.status().as_u16();
    let text = r.text().unwrap();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn detail(v: &Value) -> String {
    v["detail"].as_str().unwrap_or_default().to_string()
}

/// A GET through the proxy and the same GET straight to Orthanc: equal status and JSON.
fn same_json(s: &PacsServer, o: &Orthanc, proxy_path: &str, direct_path: &str) -> Value {
    let (sp, vp) = json_of(s.http.get(s.url(proxy_path)).send().unwrap());
    let (sd, vd) = json_of(o.get(direct_path).send().unwrap());
    assert_eq!(sd, 200, "direct {direct_path}: {vd}");
    assert_eq!(sp, 200, "{proxy_path}: {vp}");
    assert_eq!(vp, vd, "{proxy_path} differs from Orthanc's {direct_path}");
    vp
}

#[test]
fn proxy_relays_qido_wado_stow_and_errors_of_a_real_orthanc() {
    let Some(mut orthanc) = Orthanc::start() else {
        return;
    };
    let (study, series) = (new_uid(), new_uid());
    for k in 0..4 {
        orthanc.upload(ct_slice(&study, &series, k, 32, 32));
    }
    let bundle = common::bundle_without_weights();
    let app = common::repo().join("apps/wholebody");
    let root = orthanc.base_url();
    let s = PacsServer::start(
        common::BIN,
        &app,
        bundle.path(),
        &root,
        &["--dicomweb-read-timeout", "2"],
    );

    // QIDO: studies and series, through the qido prefix and the root form
    let studies = same_json(
        &s,
        &orthanc,
        "/proxy/dicom/qido/studies",
        "/dicom-web/studies",
    );
    assert_eq!(studies.as_array().unwrap().len(), 1, "{studies}");
    same_json(&s, &orthanc, "/proxy/dicom/studies/", "/dicom-web/studies/");
    let q = format!("/studies/{study}/series?Modality=CT&includefield=0008103E");
    let listed = same_json(
        &s,
        &orthanc,
        &format!("/proxy/dicom/qido{q}"),
        &format!("/dicom-web{q}"),
    );
    assert_eq!(
        listed[0]["0020000E"]["Value"][0].as_str(),
        Some(series.as_str())
    );
    // a qido metadata path goes to WADO-RS (OHIF asks there)
    let meta = format!("/studies/{study}/series/{series}/metadata");
    let m = same_json(
        &s,
        &orthanc,
        &format!("/proxy/dicom/qido{meta}"),
        &format!("/dicom-web{meta}"),
    );
    assert_eq!(m.as_array().unwrap().len(), 4);

    // WADO of the series: the same bytes as Orthanc's (each answer has its own boundary)
    let wado = format!("/studies/{study}/series/{series}");
    let rp = s
        .http
        .get(s.url(&format!("/proxy/dicom/wado{wado}")))
        .header("Accept", WADO_ACCEPT)
        .send()
        .unwrap();
    let rd = orthanc
        .get(&format!("/dicom-web{wado}"))
        .header("Accept", WADO_ACCEPT)
        .send()
        .unwrap();
    assert_eq!(rp.status().as_u16(), 200);
    assert_eq!(rd.status().as_u16(), 200);
    let ct =
        |r: &reqwest::blocking::Response| r.headers()["content-type"].to_str().unwrap().to_string();
    let (ctp, ctd) = (ct(&rp), ct(&rd));
    let (bp, bd) = (boundary_of(&ctp), boundary_of(&ctd));
    assert_eq!(ctp.replace(&bp, &bd), ctd, "Content-Type relayed");
    let len_d = rd.headers().get("content-length").cloned();
    let len_p = rp.headers().get("content-length").cloned();
    assert_eq!(
        len_p, len_d,
        "Content-Length relayed when Orthanc sends one"
    );
    let body_p = rp.bytes().unwrap();
    let body_d = rd.bytes().unwrap();
    assert!(body_d.len() > 4 * 32 * 32 * 2, "{}", body_d.len());
    assert!(
        replace_bytes(&body_p, bp.as_bytes(), bd.as_bytes()) == body_d.as_ref(),
        "WADO through the proxy ({} bytes) differs from Orthanc's ({} bytes)",
        body_p.len(),
        body_d.len()
    );

    // streamed, not buffered: a 24 MiB series through the proxy both ways moves the server's
    // peak resident size by far less than its size
    let big = new_uid();
    let slices: Vec<Vec<u8>> = (0..48)
        .map(|k| ct_slice(&study, &big, k, 512, 512))
        .collect();
    let big_bytes: usize = slices.iter().map(Vec::len).sum();
    for sl in &slices[..24] {
        orthanc.upload(sl.clone());
    }
    let (before, _) = s.rss();
    s.reset_peak_rss();
    let mut r = s
        .http
        .get(s.url(&format!("/proxy/dicom/wado/studies/{study}/series/{big}")))
        .header("Accept", WADO_ACCEPT)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let got = std::io::copy(&mut r, &mut std::io::sink()).unwrap() as usize;
    assert!(got > big_bytes / 2, "{got}");
    let (_, wado_peak) = s.rss();
    let (ct, body) = stow_body(&slices[24..]);
    s.reset_peak_rss();
    let (st, v) = json_of(
        s.http
            .post(s.url("/proxy/dicom/stow/studies"))
            .header("Content-Type", ct)
            .body(body)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["00081199"]["Value"].as_array().map(Vec::len), Some(24));
    let (_, stow_peak) = s.rss();
    let half = (big_bytes / 4) as u64; // half of each 12 MiB transfer
    assert!(
        wado_peak.saturating_sub(before) < half,
        "WADO of {got} bytes raised the peak RSS from {before} to {wado_peak}"
    );
    assert!(
        stow_peak.saturating_sub(before) < half,
        "STOW of {} bytes raised the peak RSS from {before} to {stow_peak}",
        big_bytes / 2
    );

    // STOW through the proxy, with a Content-Length and chunked: Orthanc stores both
    for chunked in [false, true] {
        let (ct, body) = stow_body(&[ct_slice(&study, &new_uid(), 0, 16, 16)]);
        let req = s
            .http
            .post(s.url("/proxy/dicom/stow/studies"))
            .header("Content-Type", &ct)
            .header("Accept", "application/dicom+json");
        let req = if chunked {
            // a reader of unknown length: reqwest sends Transfer-Encoding: chunked
            let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(body));
            req.body(reqwest::blocking::Body::new(reader))
        } else {
            req.body(body)
        };
        let (st, v) = json_of(req.send().unwrap());
        assert_eq!(st, 200, "STOW (chunked: {chunked}): {v}");
        let stored = v["00081199"]["Value"][0]["00081155"]["Value"][0]
            .as_str()
            .unwrap_or_else(|| panic!("no ReferencedSOPInstanceUID in {v}"))
            .to_string();
        let (st, found) = json_of(
            orthanc
                .get(&format!("/dicom-web/instances?SOPInstanceUID={stored}"))
                .send()
                .unwrap(),
        );
        assert_eq!(st, 200);
        assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    }

    // an upstream 4xx comes back with its status and body
    let unknown = format!("/studies/{}/series/{}", new_uid(), new_uid());
    let (sp, vp) = json_of(
        s.http
            .get(s.url(&format!("/proxy/dicom/wado{unknown}")))
            .send()
            .unwrap(),
    );
    let (sd, vd) = json_of(orthanc.get(&format!("/dicom-web{unknown}")).send().unwrap());
    assert!((400..500).contains(&sd), "Orthanc answered {sd}");
    assert_eq!((sp, vp), (sd, vd));

    // no path leaves the prefix: Orthanc's /system (outside /dicom-web) is never reached
    for path in [
        "/proxy/dicom/../system",
        "/proxy/dicom/qido/../../system",
        "/proxy/dicom/%2e%2e/system",
        "/proxy/dicom/qido/%2E%2E/%2e%2e/system",
        "/proxy/dicom/..%2Fsystem",
        "/proxy/dicom/wado/studies%2F..%2F..%2Fsystem",
        "/proxy/dicom//system",
        "/proxy/dicom/%5C..%5Csystem",
        "/proxy/dicom/qido/a%5C..%5C..%5Csystem",
    ] {
        let (st, body) = raw_get(s.port, path, &[]);
        assert_eq!(st, 400, "{path}: {body}");
        assert!(body.contains("detail"), "{path}: {body}");
        assert!(!body.contains("DicomAet"), "{path} reached Orthanc: {body}");
    }
    let (st, _) = json_of(s.http.put(s.url("/proxy/dicom/studies")).send().unwrap());
    assert_eq!(st, 405);

    // auth on: the proxy needs a token of the user role; the caller's token is not sent on
    // (Orthanc answers only to the PACS credentials)
    let users_dir = tempfile::tempdir().unwrap();
    let users = users_dir.path().join("users.json");
    common::add_user(&users, "u", "u-pw", &["user"]);
    let sa = PacsServer::start(
        common::BIN,
        &app,
        bundle.path(),
        &root,
        &["--auth-enable", "--auth-users", users.to_str().unwrap()],
    );
    let (st, v) = json_of(
        sa.http
            .get(sa.url("/proxy/dicom/qido/studies"))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 401, "no token: {v}");
    let (st, v) = json_of(
        sa.http
            .post(sa.url("/auth/token"))
            .form(&[("username", "u"), ("password", "u-pw")])
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    let token = format!("Bearer {}", v["access_token"].as_str().unwrap());
    let (st, v) = json_of(
        sa.http
            .get(sa.url("/proxy/dicom/qido/studies"))
            .header("Authorization", &token)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "user token: {v}");
    assert_eq!(
        v,
        json_of(orthanc.get("/dicom-web/studies").send().unwrap()).1
    );
    let (st, _) = json_of(
        sa.http
            .get(sa.url("/proxy/dicom/qido/studies"))
            .header("Authorization", "Bearer not-a-token")
            .send()
            .unwrap(),
    );
    assert_eq!(st, 401);
    drop(sa);

    // a frozen PACS: 504 after the read timeout (2 s); then it answers again
    orthanc.pause();
    let r = s
        .http
        .get(s.url("/proxy/dicom/qido/studies"))
        .timeout(Duration::from_secs(60))
        .send();
    orthanc.resume();
    let (st, v) = json_of(r.unwrap());
    assert_eq!(st, 504, "{v}");
    assert!(detail(&v).contains("in time"), "{v}");
    same_json(
        &s,
        &orthanc,
        "/proxy/dicom/qido/studies",
        "/dicom-web/studies",
    );

    // a stopped PACS: 502 with a detail, for GET and POST
    orthanc.stop();
    let (st, v) = json_of(
        s.http
            .get(s.url("/proxy/dicom/qido/studies"))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 502, "{v}");
    assert!(detail(&v).contains("unreachable"), "{v}");
    let (ct, body) = stow_body(&[ct_slice(&study, &new_uid(), 0, 8, 8)]);
    let (st, v) = json_of(
        s.http
            .post(s.url("/proxy/dicom/stow/studies"))
            .header("Content-Type", ct)
            .body(body)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 502, "{v}");
}

#[test]
fn without_a_dicomweb_datastore_the_proxy_is_404() {
    let bundle = common::bundle_without_weights();
    let s = common::spawned::Server::start(common::Opts {
        bundle: bundle.path().to_path_buf(),
        with_example: false,
        ..common::Opts::new()
    });
    for (method, path) in [
        ("GET", "/proxy/dicom/qido/studies"),
        ("POST", "/proxy/dicom/stow/studies"),
        ("GET", "/proxy/dicom/studies"),
    ] {
        let r = s
            .http
            .request(method.parse().unwrap(), s.url(path))
            .send()
            .unwrap();
        let (st, v) = json_of(r);
        assert_eq!(st, 404, "{method} {path}: {v}");
        assert!(detail(&v).contains("DICOMweb"), "{v}");
    }
}
