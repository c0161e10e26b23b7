//! Authentication over real sockets: the users file made by `ferrolabel auth add-user`, login
//! with `POST /auth/token`, bearer tokens, the role table (401 / 403 / 200 per role), token
//! expiry, TLS with a self-signed certificate, and the audit log read back with
//! `ferrolabel auth audit-log`.

mod paths;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, add_user, detail, form_with_file, small_ct_bytes, Opts, BIN};
use crate::server::Server;
use serde_json::{json, Value};

/// A users file with one user per role: `u`, `ann`, `rev`, `boss` (password = name + "-pw").
fn users_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("users.json");
    for (name, role) in [
        ("u", "user"),
        ("ann", "annotator"),
        ("rev", "reviewer"),
        ("boss", "admin"),
    ] {
        add_user(&path, name, &format!("{name}-pw"), &[role]);
    }
    path
}

fn auth_opts(users: &Path, extra: &[&str]) -> Opts {
    let mut args = vec![
        "--auth-enable".to_string(),
        "--auth-users".to_string(),
        users.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Opts {
        args,
        ..Opts::new()
    }
}

/// `POST /auth/token` as the clients send it; the response.
fn login_raw(s: &Server, form: &[(&str, &str)]) -> reqwest::blocking::Response {
    s.http.post(s.url("/auth/token")).form(form).send().unwrap()
}

/// Logs in and returns the `Authorization` header value.
fn login(s: &Server, user: &str, password: &str) -> String {
    let r = login_raw(
        s,
        &[
            ("username", user),
            ("password", password),
            ("grant_type", "password"),
        ],
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(
        v.as_object().unwrap().len(),
        2,
        "only access_token and token_type: {v}"
    );
    format!(
        "{} {}",
        v["token_type"].as_str().unwrap(),
        v["access_token"].as_str().unwrap()
    )
}

/// Sends `method path` with an optional `Authorization` header; returns status and JSON.
fn call(s: &Server, method: &str, path: &str, auth: Option<&str>) -> (u16, Value) {
    let mut rb = s.http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        s.url(path),
    );
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    let r = rb.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// Uploads a label for `image` as `auth`; the status.
fn put_label(s: &Server, image: &str, auth: Option<&str>) -> u16 {
    let form = form_with_file(
        "label",
        "/tmp/label.nii.gz",
        small_ct_bytes(),
        r#"{"client_id": "slicer-1"}"#,
    );
    let mut rb = s
        .http
        .put(s.url(&format!("/datastore/label?image={image}&tag=final")))
        .multipart(form);
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    rb.send().unwrap().status().as_u16()
}

/// Uploads an image as `auth`; the status.
fn put_image(s: &Server, id: &str, auth: Option<&str>) -> u16 {
    let form = form_with_file("file", "/tmp/x.nii.gz", small_ct_bytes(), "{}");
    let mut rb = s
        .http
        .put(s.url(&format!("/datastore/?image={id}")))
        .multipart(form);
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    rb.send().unwrap().status().as_u16()
}

/// The audit log, via `ferrolabel auth audit-log`.
fn audit_log(s: &Server) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["auth", "audit-log", "--studies"])
        .arg(s.studies.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit-log failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (user, action, image, status) of each entry.
fn audit_summary(log: &[Value]) -> Vec<(String, String, String, u64)> {
    log.iter()
        .map(|e| {
            (
                e["username"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["image_id"].as_str().unwrap_or("").to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn row(user: &str, action: &str, image: &str, status: u64) -> (String, String, String, u64) {
    (user.into(), action.into(), image.into(), status)
}

#[test]
fn auth_off_by_default_everyone_is_admin_and_writes_are_audited() {
    let s = Server::start(Opts::new());
    for (m, p) in [
        ("GET", "/auth/"),
        ("POST", "/auth/token"),
        ("GET", "/auth/token/valid"),
    ] {
        let (st, body) = call(&s, m, p, None);
        assert_eq!(st, 404, "{m} {p}: auth off must look like an unknown path");
        assert_eq!(body, json!({"detail": "Not Found"}));
    }
    // a bogus token is ignored when auth is off
    assert_eq!(call(&s, "GET", "/info/", Some("Bearer nonsense")).0, 200);
    assert_eq!(put_image(&s, "up1", None), 200);
    assert_eq!(put_label(&s, "up1", None), 200);
    let (_, info) = s.get_json("/datastore/image/info?image=up1");
    assert_eq!(info["user"], "admin");
    assert_eq!(
        call(&s, "DELETE", "/datastore/label?id=up1&tag=final", None).0,
        200
    );
    assert_eq!(call(&s, "DELETE", "/datastore/image?id=up1", None).0, 200);
    // reads are not audited
    assert_eq!(call(&s, "GET", "/datastore/?output=all", None).0, 200);

    let log = audit_log(&s);
    assert_eq!(
        audit_summary(&log),
        vec![
            row("admin", "image.upload", "up1", 200),
            row("admin", "label.save", "up1", 200),
            row("admin", "label.delete", "up1", 200),
            row("admin", "image.delete", "up1", 200),
        ]
    );
    assert_eq!(log[1]["tag"], "final");
    assert_eq!(
        log[1]["request"],
        "PUT /datastore/label?image=up1&tag=final"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ts = log[0]["ts_ms"].as_i64().unwrap();
    assert!(
        ts <= now_ms && now_ms - ts < 600_000,
        "ts_ms {ts} vs now {now_ms}"
    );
}

#[test]
fn roles_tokens_and_audit_with_auth_on() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let s = Server::start(auth_opts(&users, &[]));

    // discovery and the unprotected paths
    let (st, v) = call(&s, "GET", "/auth/", None);
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!({"enabled": true, "client_id": "monailabel-app", "realm": "ferrolabel"})
    );
    assert_eq!(call(&s, "GET", "/", None).0, 200);

    // no token, a malformed header, a wrong token: 401 with WWW-Authenticate
    let r = s.http.get(s.url("/info/")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"detail": "Not authenticated"})
    );
    let (st, v) = call(&s, "GET", "/info/", Some("Basic dTp1LXB3"));
    assert_eq!((st, detail(&v)), (401, "Not authenticated"));
    let (st, v) = call(
        &s,
        "GET",
        "/info/",
        Some(&format!("Bearer {}", "ab".repeat(32))),
    );
    assert_eq!((st, detail(&v)), (401, "Could not validate credentials"));
    let (st, v) = call(&s, "GET", "/auth/token/valid", Some("Bearer x"));
    assert_eq!((st, detail(&v)), (401, "Could not validate credentials"));
    // unknown paths need a token too (closed by default)
    assert_eq!(call(&s, "GET", "/nowhere", None).0, 401);

    // bad logins
    let r = login_raw(&s, &[("username", "ann"), ("password", "wrong")]);
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"detail": "Incorrect username or password"})
    );
    let r = login_raw(&s, &[("username", "nobody"), ("password", "ann-pw")]);
    assert_eq!(r.status(), 401);
    let r = login_raw(&s, &[("username", "ann")]);
    assert_eq!(r.status(), 422);
    assert_eq!(
        detail(&r.json().unwrap()),
        "missing form field \"password\""
    );
    let r = login_raw(
        &s,
        &[
            ("username", "ann"),
            ("password", "ann-pw"),
            ("grant_type", "client_credentials"),
        ],
    );
    assert_eq!(r.status(), 422);
    let r = s
        .http
        .post(s.url("/auth/token"))
        .json(&json!({"username": "ann", "password": "ann-pw"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422, "JSON is not the OAuth2 password form");

    let tok: std::collections::HashMap<&str, String> = ["u", "ann", "rev", "boss"]
        .into_iter()
        .map(|n| (n, login(&s, n, &format!("{n}-pw"))))
        .collect();
    // the grant_type field is optional; two logins give two different tokens
    let r = login_raw(&s, &[("username", "u"), ("password", "u-pw")]);
    assert_eq!(r.status(), 200);
    let other = r.json::<Value>().unwrap()["access_token"].clone();
    assert_ne!(Some(other.as_str().unwrap()), tok["u"].split(' ').nth(1));

    // /auth/token/valid: the user and the roles it holds (each role implies the ones below)
    let (st, v) = call(&s, "GET", "/auth/token/valid", Some(&tok["ann"]));
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!({"username": "ann", "email": "ann@example.org", "name": "",
               "roles": ["monailabel-user", "monailabel-annotator"]})
    );
    let (_, v) = call(&s, "GET", "/auth/token/valid", Some(&tok["boss"]));
    assert_eq!(v["roles"].as_array().unwrap().len(), 4);
    // the scheme is case-insensitive, as for OAuth2PasswordBearer
    let lower = tok["u"].replacen("Bearer", "bearer", 1);
    assert_eq!(call(&s, "GET", "/info/", Some(&lower)).0, 200);

    // the role table, per role: (method, path, lowest role that may call it)
    let table: &[(&str, &str, usize)] = &[
        ("GET", "/info/", 0),
        ("GET", "/datastore/?output=stats", 0),
        ("GET", "/datastore/image/info?image=example_ct", 0),
        ("GET", "/datastore/dataset", 1),
        ("GET", "/model/info/wholeBody_ct_segmentation", 3),
        ("GET", "/logs/?text=true", 3),
    ];
    let order = ["u", "ann", "rev", "boss"];
    for (m, p, min) in table {
        for (i, who) in order.iter().enumerate() {
            let (st, v) = call(&s, m, p, Some(&tok[who]));
            if i < *min {
                assert_eq!(st, 403, "{who} {m} {p}: {v}");
                let need = ["user", "annotator", "reviewer", "admin"][*min];
                assert_eq!(
                    detail(&v),
                    format!("Role \"monailabel-{need}\" is required to perform this action")
                );
            } else {
                assert_ne!(st, 403, "{who} {m} {p}: {v}");
                assert_ne!(st, 401, "{who} {m} {p}: {v}");
            }
        }
        let (st, _) = call(&s, m, p, None);
        assert_eq!(st, 401, "{m} {p} without a token");
    }

    // next sample without a client_id records the logged-in user (docs/protocol.md §11.1)
    let r = s
        .http
        .post(s.url("/activelearning/first"))
        .header("Authorization", &tok["u"])
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, info) = call(
        &s,
        "GET",
        &format!("/datastore/image/info?image={id}"),
        Some(&tok["u"]),
    );
    assert_eq!(info["strategy"]["first"]["client_id"], "u", "{info}");

    // writes: a user may not upload, an annotator may; image info records who did it
    assert_eq!(put_image(&s, "img_u", Some(&tok["u"])), 403);
    assert_eq!(put_image(&s, "img_a", Some(&tok["ann"])), 200);
    let (_, info) = call(
        &s,
        "GET",
        "/datastore/image/info?image=img_a",
        Some(&tok["u"]),
    );
    assert_eq!(info["user"], "ann");
    assert_eq!(put_label(&s, "img_a", None), 401);
    assert_eq!(put_label(&s, "img_a", Some(&tok["u"])), 403);
    assert_eq!(put_label(&s, "img_a", Some(&tok["ann"])), 200);
    // an annotator deleting an image or a label gets 403; the admin may
    let (st, v) = call(&s, "DELETE", "/datastore/image?id=img_a", Some(&tok["ann"]));
    assert_eq!(st, 403, "{v}");
    assert_eq!(
        detail(&v),
        "Role \"monailabel-admin\" is required to perform this action"
    );
    assert_eq!(
        call(&s, "DELETE", "/datastore/?id=img_a", Some(&tok["rev"])).0,
        403
    );
    assert_eq!(
        call(
            &s,
            "DELETE",
            "/datastore/label?id=img_a&tag=final",
            Some(&tok["ann"])
        )
        .0,
        403
    );
    assert_eq!(
        call(
            &s,
            "DELETE",
            "/datastore/label?id=img_a&tag=final",
            Some(&tok["boss"])
        )
        .0,
        200
    );
    assert_eq!(
        call(
            &s,
            "DELETE",
            "/datastore/image?id=img_a",
            Some(&tok["boss"])
        )
        .0,
        200
    );
    let (_, stats) = call(&s, "GET", "/datastore/?output=all", Some(&tok["u"]));
    assert!(stats["objects"].get("img_a").is_none());

    // the audit log: who, what, when, and the answer, refusals included
    let log = audit_log(&s);
    assert_eq!(
        audit_summary(&log),
        vec![
            row("u", "image.upload", "img_u", 403),
            row("ann", "image.upload", "img_a", 200),
            row("", "label.save", "img_a", 401),
            row("u", "label.save", "img_a", 403),
            row("ann", "label.save", "img_a", 200),
            row("ann", "image.delete", "img_a", 403),
            row("rev", "image.delete", "img_a", 403),
            row("ann", "label.delete", "img_a", 403),
            row("boss", "label.delete", "img_a", 200),
            row("boss", "image.delete", "img_a", 200),
        ]
    );
    assert!(log
        .windows(2)
        .all(|w| w[0]["ts_ms"].as_i64() <= w[1]["ts_ms"].as_i64()));
    assert_eq!(log[8]["tag"], "final");
    assert_eq!(log[9]["request"], "DELETE /datastore/image?id=img_a");
}

/// Every role, no token first (name, audit user name, `Authorization` header).
fn callers(s: &Server) -> Vec<paths::Caller> {
    let mut out = vec![paths::Caller {
        name: "no token".into(),
        audit_user: String::new(),
        auth: None,
    }];
    for name in ["u", "ann", "rev", "boss"] {
        out.push(paths::Caller {
            name: name.into(),
            audit_user: name.into(),
            auth: Some(login(s, name, &format!("{name}-pw"))),
        });
    }
    out
}

#[test]
fn non_canonical_paths_never_bypass_the_role_table_or_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let s = Server::start(auth_opts(&users, &[]));
    let callers = callers(&s);
    let (ann, boss) = (callers[2].auth.clone(), callers[4].auth.clone());
    assert_eq!(put_image(&s, "x1", boss.as_deref()), 200);

    // the reported cases: each is refused before routing, and nothing happens
    for (m, p) in [
        ("DELETE", "/%64atastore/image?id=x1"),
        ("DELETE", "/%64atastore/?id=x1"),
        ("DELETE", "/datastore%2Fimage?id=x1"),
        ("DELETE", "/datastore/x/../image?id=x1"),
        ("DELETE", "//datastore/image?id=x1"),
        ("DELETE", "/datastore/image;a=b?id=x1"),
        ("GET", "/%6Cogs/"),
        ("GET", "/%6cogs/?text=true"),
        ("GET", "/%6Dodel/wholeBody_ct_segmentation"),
        ("POST", "/%62atch/infer/wholeBody_ct_segmentation"),
    ] {
        let (st, v) = call_raw(&s, m, p, ann.as_deref());
        assert_eq!(st, 400, "{m} {p}: {v}");
        assert!(!detail(&v).is_empty());
    }
    let (st, v) = call_raw(&s, "DELETE", "/%64atastore/image?id=x1", ann.as_deref());
    assert_eq!(st, 400);
    assert_eq!(
        detail(&v),
        "percent-escape %64 of an unreserved character ('d') in the path: send it as is"
    );
    let (_, stats) = call(&s, "GET", "/datastore/?output=all", boss.as_deref());
    assert!(stats["objects"].get("x1").is_some(), "x1 was deleted");
    assert_eq!(
        call(&s, "GET", "/batch/infer?all=true", boss.as_deref()).0,
        404,
        "no batch task was started"
    );
    // the canonical delete: 403, audited, like the issue says
    assert_eq!(
        call(&s, "DELETE", "/datastore/image?id=x1", ann.as_deref()).0,
        403
    );
    assert_eq!(
        audit_summary(&audit_log(&s)),
        vec![
            row("boss", "image.upload", "x1", 200),
            row("ann", "image.delete", "x1", 403),
        ]
    );
    // escapes of reserved characters in a path segment and anything in the query still work
    let (st, v) = call_raw(
        &s,
        "POST",
        "/infer/no%20such%3Amodel",
        callers[1].auth.as_deref(),
    );
    assert_eq!(st, 404, "{v}");
    assert!(detail(&v).contains("no such:model"), "{v}");
    assert_eq!(put_image(&s, "ct%20one", ann.as_deref()), 200);
    let (_, info) = call(
        &s,
        "GET",
        "/datastore/image/info?image=ct+one",
        boss.as_deref(),
    );
    assert_eq!(info["user"], "ann", "{info}");

    // every row of the role table, every role, every variant
    paths::check_all(&s, &callers, &callers[4]);
}

#[test]
fn non_canonical_paths_are_refused_with_auth_off_too() {
    let s = Server::start(Opts::new());
    let (st, v) = call_raw(&s, "GET", "/%6Cogs/", None);
    assert_eq!((st, detail(&v).is_empty()), (400, false));
    let (st, v) = call_raw(&s, "POST", "/infer/no%20such%3Amodel", None);
    assert_eq!(st, 404, "{v}");
    assert!(detail(&v).contains("no such:model"), "{v}");
    let admin = paths::Caller {
        name: "auth off".into(),
        audit_user: "admin".into(),
        auth: None,
    };
    let callers = [paths::Caller {
        name: "auth off".into(),
        audit_user: "admin".into(),
        auth: None,
    }];
    paths::check_all(&s, &callers, &admin);
}

/// `call` over a raw socket: the path goes out exactly as written.
fn call_raw(s: &Server, method: &str, target: &str, auth: Option<&str>) -> (u16, Value) {
    paths::send(s, method, target, auth)
}

#[test]
fn tls_and_token_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.json");
    add_user(&users, "ann", "ann-pw", &["annotator"]);
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let cert_arg = cert_path.display().to_string();
    let key_arg = key_path.display().to_string();
    let s = Server::start(auth_opts(
        &users,
        &[
            "--auth-token-expiry",
            "2",
            "--ssl-certfile",
            &cert_arg,
            "--ssl_keyfile",
            &key_arg,
        ],
    ));
    assert!(s.base.starts_with("https://"));

    // the whole flow over TLS, the certificate verified by the client
    let (st, v) = call(&s, "GET", "/auth/", None);
    assert_eq!((st, v["enabled"].as_bool()), (200, Some(true)));
    let t0 = std::time::Instant::now();
    let tok = login(&s, "ann", "ann-pw");
    assert_eq!(call(&s, "GET", "/info/", Some(&tok)).0, 200);
    assert_eq!(call(&s, "GET", "/auth/token/valid", Some(&tok)).0, 200);
    // a label is stored only on its image's grid: upload the image it belongs to first
    assert_eq!(put_image(&s, "tls_img", Some(&tok)), 200);
    assert_eq!(put_label(&s, "tls_img", Some(&tok)), 200);

    // plain HTTP on the TLS port gets no answer
    let plain = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let http_url = s.base.replacen("https://", "http://", 1) + "/auth/";
    assert!(!matches!(
        plain.get(&http_url).send().map(|r| r.status().is_success()),
        Ok(true)
    ));
    // a client that does not trust the certificate refuses the connection
    let untrusting = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(untrusting.get(s.url("/auth/")).send().is_err());

    // after the expiry the token is refused; a new login works again
    let left = Duration::from_millis(2300).saturating_sub(t0.elapsed());
    std::thread::sleep(left);
    let (st, v) = call(&s, "GET", "/info/", Some(&tok));
    assert_eq!((st, detail(&v)), (401, "Could not validate credentials"));
    assert_eq!(call(&s, "GET", "/auth/token/valid", Some(&tok)).0, 401);
    let tok2 = login(&s, "ann", "ann-pw");
    assert_eq!(call(&s, "GET", "/info/", Some(&tok2)).0, 200);
}

/// Runs `ferrolabel start_server` with `args`, expecting it to refuse to start; its stderr.
fn start_fails(args: &[&str]) -> String {
    let studies = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["start_server", "--app"])
        .arg(common::repo().join("apps/wholebody"))
        .arg("--studies")
        .arg(studies.path())
        .args(["--port", "0"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "start_server {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_configuration_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let err = start_fails(&["--auth-enable", "true"]);
    assert!(err.contains("--auth-users"), "{err}");

    let plain = dir.path().join("plain.json");
    std::fs::write(
        &plain,
        r#"{"users": [{"username": "a", "password_hash": "hunter2", "roles": ["user"]}]}"#,
    )
    .unwrap();
    let err = start_fails(&["--auth-enable", "--auth-users", plain.to_str().unwrap()]);
    assert!(
        err.contains("plain-text passwords are not accepted"),
        "{err}"
    );

    let missing = dir.path().join("none.json");
    let err = start_fails(&["--auth-enable", "--auth-users", missing.to_str().unwrap()]);
    assert!(err.contains("none.json"), "{err}");

    let users = dir.path().join("users.json");
    add_user(&users, "a", "pw", &["user"]);
    let bad_role = dir.path().join("role.json");
    let text = std::fs::read_to_string(&users)
        .unwrap()
        .replace("\"user\"", "\"root\"");
    std::fs::write(&bad_role, text).unwrap();
    let err = start_fails(&["--auth-enable", "--auth-users", bad_role.to_str().unwrap()]);
    assert!(
        err.contains("unknown role") && err.contains("root"),
        "{err}"
    );

    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let err = start_fails(&["--ssl-certfile", cert.to_str().unwrap()]);
    assert!(err.contains("--ssl-keyfile"), "{err}");
    let err = start_fails(&[
        "--ssl-certfile",
        cert.to_str().unwrap(),
        "--ssl-keyfile",
        cert.to_str().unwrap(),
    ]);
    assert!(err.contains("cert.pem"), "{err}");
}

#[test]
fn cli_hashes_and_refuses_bad_input() {
    let mut child = Command::new(BIN)
        .args(["auth", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "s3cret").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert!(!hash.contains("s3cret"));

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["auth", "add-user", "--users"])
        .arg(dir.path().join("u.json"))
        .args(["--username", "x", "--role", "root"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));
    // an empty password is refused
    let out = Command::new(BIN)
        .args(["auth", "add-user", "--users"])
        .arg(dir.path().join("u.json"))
        .args(["--username", "x", "--role", "user"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty password"));
    assert!(!dir.path().join("u.json").exists());
}
