//! Non-canonical request paths (issue 10 §1): for a request to every row of the role table, as
//! every role, and for generated variants of its path (percent-escapes of each character in
//! both cases of hex, doubled, leading and trailing slashes, `.` and `..` segments, `;`
//! parameters), the answer is the canonical path's answer, or a 400 / router 404 that changed
//! nothing; every routed request to an audited endpoint leaves exactly one audit entry.
//!
//! The requests go over a raw socket: an HTTP client library would normalise the paths.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use super::{audit_log, audit_summary};
use crate::common::small_ct_bytes;
use crate::server::Server;

/// What a probe sends as body.
#[derive(Clone, Copy)]
enum Body {
    Empty,
    /// A multipart upload with this file field (and `params` = `{}`).
    Upload(&'static str),
    /// `application/x-www-form-urlencoded`, `{n}` replaced by the request number.
    Form(&'static str),
}

/// A concrete request for one row of the role table.
struct Probe {
    method: &'static str,
    /// Canonical path, no query.
    path: &'static str,
    /// Query, `{n}` replaced by the request number (a fresh id per request).
    query: &'static str,
    body: Body,
    /// The audit action it is logged under, when audited.
    audit: Option<&'static str>,
    /// Needs `victim` and its `final` label before each request.
    needs_victim: bool,
}

const fn p(method: &'static str, path: &'static str, query: &'static str) -> Probe {
    Probe {
        method,
        path,
        query,
        body: Body::Empty,
        audit: None,
        needs_victim: false,
    }
}

const fn w(
    method: &'static str,
    path: &'static str,
    query: &'static str,
    body: Body,
    audit: &'static str,
) -> Probe {
    Probe {
        method,
        path,
        query,
        body,
        audit: Some(audit),
        needs_victim: true,
    }
}

/// One probe per row of `server/src/auth/rbac.rs`'s `RULES` (and a few routes below them).
/// Writes aim at a real image (`victim`) so that a bypass shows as a change, other probes at
/// cheap answers (unknown model or strategy) that still differ from 403 and from the router's
/// 404.
fn probes() -> Vec<Probe> {
    use Body::{Form, Upload};
    vec![
        p("GET", "/", ""),
        p("GET", "/favicon.ico", ""),
        p("GET", "/auth/", ""),
        p("POST", "/auth/token", ""),
        p("GET", "/auth/token/valid", ""),
        p("GET", "/info/", ""),
        p("POST", "/infer/no_such_model", "image=victim"),
        p("POST", "/activelearning/no_such_strategy", ""),
        p("GET", "/session/no-such-session", ""),
        p("PUT", "/session/", ""),
        p("DELETE", "/session/no-such-session", ""),
        p("GET", "/batch/infer", ""),
        p("POST", "/batch/infer/no_such_model", ""),
        p("DELETE", "/batch/infer", ""),
        p("GET", "/train/", ""),
        p("GET", "/train/curve", ""),
        p("POST", "/train/no_such_model", ""),
        p("DELETE", "/train/", ""),
        p("GET", "/scoring/", ""),
        p("POST", "/scoring/no_such_method", ""),
        p("DELETE", "/scoring/", ""),
        p("GET", "/datastore/", "output=all"),
        w(
            "PUT",
            "/datastore/",
            "image=up{n}",
            Upload("file"),
            "image.upload",
        ),
        w(
            "DELETE",
            "/datastore/",
            "id=victim",
            Body::Empty,
            "image.delete",
        ),
        p("GET", "/datastore/image", "image=victim"),
        p("HEAD", "/datastore/image", "image=victim"),
        w(
            "PUT",
            "/datastore/image",
            "image=up{n}",
            Upload("file"),
            "image.upload",
        ),
        w(
            "DELETE",
            "/datastore/image",
            "id=victim",
            Body::Empty,
            "image.delete",
        ),
        p("GET", "/datastore/image/info", "image=victim"),
        w(
            "PUT",
            "/datastore/image/info",
            "image=victim",
            Form("info=%7B%22probe%22%3A{n}%7D"),
            "image.info",
        ),
        p("GET", "/datastore/label", "label=victim&tag=final"),
        p("HEAD", "/datastore/label", "image=victim&tag=final"),
        w(
            "PUT",
            "/datastore/label",
            "image=victim&tag=t{n}",
            Upload("label"),
            "label.save",
        ),
        w(
            "DELETE",
            "/datastore/label",
            "id=victim&tag=final",
            Body::Empty,
            "label.delete",
        ),
        p("GET", "/datastore/label/info", "label=victim&tag=final"),
        w(
            "PUT",
            "/datastore/label/info",
            "label=victim&tag=final",
            Form("info=%7B%22probe%22%3A{n}%7D"),
            "label.info",
        ),
        w(
            "PUT",
            "/datastore/updatelabelinfo",
            "label=victim&tag=final",
            Form("params=%7B%22probe%22%3A{n}%7D"),
            "label.info",
        ),
        p("GET", "/datastore/label/report", ""),
        p("GET", "/datastore/dataset", ""),
        p("GET", "/model/info/wholeBody_ct_segmentation", ""),
        p("GET", "/model/no_such_model", ""),
        p("PUT", "/model/no_such_model", ""),
        p("DELETE", "/model/no_such_model", ""),
        p("GET", "/logs/", "lines=1"),
        p("GET", "/ohif/", ""),
        p("GET", "/proxy/dicom", ""),
    ]
}

/// Variants of a canonical `path` that name the same resource to a lax reader.
pub fn variants(path: &str) -> Vec<String> {
    let mut v = std::collections::BTreeSet::new();
    // one character percent-encoded, upper- and lower-case hex
    for (i, c) in path.bytes().enumerate() {
        for esc in [format!("%{c:02X}"), format!("%{c:02x}")] {
            v.insert(format!("{}{esc}{}", &path[..i], &path[i + 1..]));
        }
    }
    // every character but the slashes encoded
    let all: String = path
        .bytes()
        .map(|c| {
            if c == b'/' {
                "/".to_string()
            } else {
                format!("%{c:02x}")
            }
        })
        .collect();
    v.insert(all);
    let trimmed = path.trim_end_matches('/');
    // trailing slashes: the twin (served), doubled (not canonical)
    v.insert(format!("{trimmed}/"));
    v.insert(format!("{trimmed}//"));
    if !trimmed.is_empty() {
        v.insert(trimmed.to_string());
    }
    v.insert(format!("/{path}"));
    // at each slash: doubled, a `.` segment, a `..` segment, encoded dots
    for (i, _) in path.match_indices('/') {
        let (head, tail) = (&path[..i], &path[i..]);
        for ins in ["/", "/.", "/x/..", "/x/%2e%2e", "/x/%2E.", "/%2e"] {
            v.insert(format!("{head}{ins}{tail}"));
        }
    }
    v.insert(format!("{trimmed}/."));
    v.insert(format!("{trimmed}/x/.."));
    // `;` parameters on each segment
    for (i, _) in path.match_indices('/').skip(1) {
        v.insert(format!("{};p=1{}", &path[..i], &path[i..]));
    }
    v.insert(format!("{trimmed};p=1"));
    v.remove(path);
    v.into_iter().collect()
}

/// The answer to a raw request: status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends `method target` exactly as given, over a fresh connection.
fn raw(s: &Server, method: &str, target: &str, auth: Option<&str>, body: Body, n: u64) -> Answer {
    let addr = s.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let (content_type, payload) = match body {
        Body::Empty => (None, Vec::new()),
        Body::Form(f) => (
            Some("application/x-www-form-urlencoded".to_string()),
            f.replace("{n}", &n.to_string()).into_bytes(),
        ),
        Body::Upload(field) => {
            let boundary = "ferrolabelprobeboundary";
            let mut b = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{{}}\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; \
                 filename=\"x.nii.gz\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .into_bytes();
            b.extend_from_slice(&small_ct_bytes());
            b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            (Some(format!("multipart/form-data; boundary={boundary}")), b)
        }
    };
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
    let mut req = head.into_bytes();
    req.extend_from_slice(&payload);
    // the server may answer and close before reading a refused body: keep what it sent
    let _ = stream.write_all(&req);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {target}: no status line in {text:?}"));
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(out.len());
    Answer {
        status,
        body: out[split..].to_vec(),
    }
}

/// Who calls: a name for messages, the audit user name, the `Authorization` header.
pub struct Caller {
    pub name: String,
    pub audit_user: String,
    pub auth: Option<String>,
}

/// The world a probe may change, as an admin sees it.
fn snapshot(s: &Server, admin: Option<&str>) -> Value {
    let a = raw(s, "GET", "/datastore/?output=all", admin, Body::Empty, 0);
    assert_eq!(a.status, 200);
    let mut v = a.json();
    // read-only facts that move on their own
    strip_key(&mut v, "ts");
    v
}

fn strip_key(v: &mut Value, key: &str) {
    match v {
        Value::Object(m) => {
            m.remove(key);
            m.values_mut().for_each(|x| strip_key(x, key));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| strip_key(x, key)),
        _ => {}
    }
}

/// Makes sure `victim` and its `final` label exist (as `admin`); the audit entries it caused.
fn ensure_victim(
    s: &Server,
    admin: Option<&str>,
    admin_user: &str,
) -> Vec<(String, String, String, u64)> {
    let mut made = Vec::new();
    let info = raw(
        s,
        "GET",
        "/datastore/image/info?image=victim",
        admin,
        Body::Empty,
        0,
    );
    assert_eq!(info.status, 200);
    if info.json() == json!({}) {
        let a = raw(
            s,
            "PUT",
            "/datastore/?image=victim",
            admin,
            Body::Upload("file"),
            0,
        );
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        made.push((
            admin_user.into(),
            "image.upload".into(),
            "victim".into(),
            200,
        ));
    }
    let label = raw(
        s,
        "HEAD",
        "/datastore/label?image=victim&tag=final",
        admin,
        Body::Empty,
        0,
    );
    if label.status != 200 {
        let a = raw(
            s,
            "PUT",
            "/datastore/label?image=victim&tag=final",
            admin,
            Body::Upload("label"),
            0,
        );
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        made.push((admin_user.into(), "label.save".into(), "victim".into(), 200));
    }
    made
}

/// The image id an audited probe's entry names.
fn audited_image(query: &str, n: u64) -> String {
    let q = query.replace("{n}", &n.to_string());
    q.split('&')
        .find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            matches!(k, "image" | "id" | "label").then(|| v.to_string())
        })
        .unwrap_or_default()
}

/// Runs every probe, as every caller, canonical path first then each variant (see the module
/// docs for what is checked). `admin` is a caller allowed everything, used to set up and look.
pub fn check_all(s: &Server, callers: &[Caller], admin: &Caller) {
    let admin_auth = admin.auth.as_deref();
    let mut expected_log = audit_summary(&audit_log(s));
    let mut n: u64 = 0;
    let mut sent = 0usize;
    for probe in probes() {
        let variants = variants(probe.path);
        for caller in callers {
            let auth = caller.auth.as_deref();
            let mut canonical: Option<u16> = None;
            expected_log.extend(ensure_victim(s, admin_auth, &admin.audit_user));
            for path in std::iter::once(probe.path.to_string()).chain(variants.iter().cloned()) {
                n += 1;
                sent += 1;
                if probe.needs_victim {
                    expected_log.extend(ensure_victim(s, admin_auth, &admin.audit_user));
                }
                let mutating = !matches!(probe.method, "GET" | "HEAD");
                let before = mutating.then(|| snapshot(s, admin_auth));
                let query = probe.query.replace("{n}", &n.to_string());
                let target = if query.is_empty() {
                    path.clone()
                } else {
                    format!("{path}?{query}")
                };
                let a = raw(s, probe.method, &target, auth, probe.body, n);
                let what = format!(
                    "{} {} {target}: {} {}",
                    caller.name,
                    probe.method,
                    a.status,
                    String::from_utf8_lossy(&a.body)
                );
                let refused_before_routing = match canonical {
                    None => {
                        canonical = Some(a.status);
                        false
                    }
                    Some(c) if c == a.status => false,
                    Some(c) => {
                        let body = a.json();
                        let ok = match a.status {
                            // a target not starting with '/' is refused by the HTTP parser
                            400 if !path.starts_with('/') => true,
                            // HEAD answers carry no body to look at
                            400 | 404 if probe.method == "HEAD" => a.body.is_empty(),
                            400 => body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                            404 => body == json!({"detail": "Not Found"}),
                            _ => false,
                        };
                        assert!(ok, "{what}\n  the canonical path answered {c}");
                        true
                    }
                };
                if let Some(before) = before {
                    if !(200..300).contains(&a.status) {
                        assert_eq!(
                            before,
                            snapshot(s, admin_auth),
                            "{what}: changed the datastore"
                        );
                    }
                }
                if let Some(action) = probe.audit {
                    if !refused_before_routing {
                        let user = if a.status == 401 {
                            String::new()
                        } else {
                            caller.audit_user.clone()
                        };
                        expected_log.push((
                            user,
                            action.into(),
                            audited_image(probe.query, n),
                            a.status as u64,
                        ));
                    }
                }
            }
        }
        let log = audit_summary(&audit_log(s));
        assert_eq!(
            log, expected_log,
            "{} {}: the audit log (expected: one entry per routed request)",
            probe.method, probe.path
        );
    }
    eprintln!("{sent} probe requests");
}

/// A body-less request sent exactly as written: status and JSON.
pub fn send(s: &Server, method: &str, target: &str, auth: Option<&str>) -> (u16, Value) {
    let a = raw(s, method, target, auth, Body::Empty, 0);
    (a.status, a.json())
}
