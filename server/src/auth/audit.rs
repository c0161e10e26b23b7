//! Which requests go into the audit log, and writing them there.
//!
//! The auth middleware classifies each request with [`classify`]; an audited one is appended
//! to the datastore's append-only `audit_log` table once answered, with the user, the action,
//! the image and tag from the query, the status and the request line — refused attempts (401,
//! 403) and failures included. Handlers that write labels on their own (inference with
//! `save_label`) call [`record`] themselves. Every entry is also logged (target `audit`).

use actix_web::http::Method;
use actix_web::HttpRequest;
use ferrolabel_datastore::{AuditEntry, Datastore};

use super::rbac::normalize;
use super::Identity;

/// An audited kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Audited {
    /// The action name stored in the log.
    pub action: &'static str,
    /// Query parameter holding the image / label id.
    id_param: &'static str,
    /// Query parameter holding the label tag (label actions), with its default.
    tag_param: Option<(&'static str, &'static str)>,
}

const fn audited(
    action: &'static str,
    id_param: &'static str,
    tag_param: Option<(&'static str, &'static str)>,
) -> Audited {
    Audited {
        action,
        id_param,
        tag_param,
    }
}

/// (method, normalised path, what).
const AUDITED: &[(&str, &str, Audited)] = &[
    ("PUT", "/datastore", audited("image.upload", "image", None)),
    (
        "PUT",
        "/datastore/image",
        audited("image.upload", "image", None),
    ),
    ("DELETE", "/datastore", audited("image.delete", "id", None)),
    (
        "DELETE",
        "/datastore/image",
        audited("image.delete", "id", None),
    ),
    (
        "PUT",
        "/datastore/image/info",
        audited("image.info", "image", None),
    ),
    (
        "PUT",
        "/datastore/label",
        audited("label.save", "image", Some(("tag", "final"))),
    ),
    (
        "DELETE",
        "/datastore/label",
        audited("label.delete", "id", Some(("tag", ""))),
    ),
    (
        "PUT",
        "/datastore/label/info",
        audited("label.info", "label", Some(("tag", ""))),
    ),
    (
        "PUT",
        "/datastore/updatelabelinfo",
        audited("label.info", "label", Some(("tag", ""))),
    ),
];

/// The audit class of a request (`None`: not audited); `path` is the routed path
/// ([`super::canonical::routed_path`]).
pub fn classify(method: &Method, path: &str) -> Option<Audited> {
    let path = normalize(path);
    AUDITED
        .iter()
        .find(|(m, p, _)| *m == method.as_str() && *p == path)
        .map(|(_, _, a)| *a)
}

fn query_value(query: &str, key: &str) -> Option<String> {
    url_decode_pairs(query)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// `k=v&...` pairs, percent-decoded, `+` = space (a broken escape is kept as it is).
fn url_decode_pairs(query: &str) -> Vec<(String, String)> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

impl Audited {
    /// The log entry for a request with this `query`, answered `status`, made by `username`.
    pub fn entry(
        &self,
        username: &str,
        method: &Method,
        path: &str,
        query: &str,
        status: u16,
    ) -> AuditEntry {
        let id = query_value(query, self.id_param).filter(|v| !v.is_empty());
        let tag = self.tag_param.map(|(key, default)| {
            query_value(query, key)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        });
        let request = if query.is_empty() {
            format!("{method} {path}")
        } else {
            format!("{method} {path}?{query}")
        };
        AuditEntry::now(username, self.action, id, tag, status, request)
    }
}

/// Appends `entry` to the audit log (a failure is logged, not returned: the request it
/// describes has already been answered).
pub async fn append(datastore: &Datastore, entry: AuditEntry) {
    tracing::info!(
        target: "audit",
        user = %entry.username,
        action = %entry.action,
        image = entry.image_id.as_deref().unwrap_or(""),
        tag = entry.tag.as_deref().unwrap_or(""),
        status = entry.status,
        "audit"
    );
    if let Err(e) = datastore.append_audit(&entry).await {
        tracing::error!(error = %e, action = %entry.action, "audit log write failed");
    }
}

/// Records an action a handler performed itself (e.g. a label saved by inference).
pub async fn record(
    datastore: &Datastore,
    req: &HttpRequest,
    action: &str,
    image_id: &str,
    tag: Option<&str>,
) {
    let who = Identity::of(req);
    let request = match req.query_string() {
        "" => format!("{} {}", req.method(), req.path()),
        q => format!("{} {}?{q}", req.method(), req.path()),
    };
    let entry = AuditEntry::now(
        who.username,
        action,
        Some(image_id.to_string()),
        tag.map(String::from),
        200,
        request,
    );
    append(datastore, entry).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_and_entry() {
        assert_eq!(classify(&Method::GET, "/datastore/label"), None);
        let a = classify(&Method::PUT, "/datastore/label").unwrap();
        let e = a.entry(
            "ann",
            &Method::PUT,
            "/datastore/label",
            "image=ct%201&tag=",
            200,
        );
        assert_eq!(e.action, "label.save");
        assert_eq!(e.image_id.as_deref(), Some("ct 1"));
        assert_eq!(e.tag.as_deref(), Some("final"));
        assert_eq!(e.request, "PUT /datastore/label?image=ct%201&tag=");
        let d = classify(&Method::DELETE, "/datastore/").unwrap();
        let e = d.entry("", &Method::DELETE, "/datastore/", "id=a+b%2", 403);
        assert_eq!(e.action, "image.delete");
        assert_eq!(e.image_id.as_deref(), Some("a b%2"));
        assert_eq!(e.tag, None);
        assert_eq!(e.status, 403);
    }
}
