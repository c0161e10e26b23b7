//! Who may call what: the role table, keyed by method and path prefix (docs/protocol.md §9.2,
//! docs/auth.md).
//!
//! [`access`] picks, among the rules whose method matches, the one with the **longest** path
//! prefix that matches the request path (a prefix matches the path itself and anything below
//! it, `/datastore/label` matches `/datastore/label/info` but not `/datastore/labelx`). A
//! request that matches no rule needs a valid token (any role): routes added later are closed
//! by default until the table names them. To protect a new endpoint, add a [`Rule`] to
//! [`RULES`].

use actix_web::http::Method;

use super::Role;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing: served to anyone.
    Public,
    /// A valid token, whatever its roles.
    Authenticated,
    /// A valid token whose user holds this role.
    Role(Role),
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// HTTP method, or `*` for any.
    pub method: &'static str,
    /// Path prefix, without a trailing slash (`/` only matches the root itself).
    pub prefix: &'static str,
    /// What it needs.
    pub access: Access,
}

const fn rule(method: &'static str, prefix: &'static str, access: Access) -> Rule {
    Rule {
        method,
        prefix,
        access,
    }
}

use Access::{Authenticated, Public};
const USER: Access = Access::Role(Role::User);
const ANNOTATOR: Access = Access::Role(Role::Annotator);
const ADMIN: Access = Access::Role(Role::Admin);

/// The role table: MONAI Label's `RBAC(...)` dependency of every endpoint (docs/protocol.md §9.2).
pub const RULES: &[Rule] = &[
    // unprotected even with auth on
    rule("GET", "/", Public),
    rule("GET", "/favicon.ico", Public),
    // the API description and its browser (docs/api.md)
    rule("GET", "/openapi.json", Public),
    rule("GET", "/docs", Public),
    rule("*", "/auth", Public),
    rule("GET", "/auth/token/valid", Authenticated),
    // info, inference, active learning, sessions
    rule("GET", "/info", USER),
    rule("POST", "/infer", USER),
    rule("POST", "/activelearning", USER),
    rule("*", "/session", USER),
    // batch inference, training and scoring (background tasks)
    rule("GET", "/batch/infer", USER),
    rule("POST", "/batch/infer", ADMIN),
    rule("DELETE", "/batch/infer", ADMIN),
    rule("GET", "/train", USER),
    rule("POST", "/train", ADMIN),
    rule("DELETE", "/train", ADMIN),
    rule("GET", "/scoring", USER),
    rule("POST", "/scoring", ANNOTATOR),
    rule("DELETE", "/scoring", ANNOTATOR),
    // the job queue: anyone may look; stopping a job takes an admin (it may be anyone's)
    rule("GET", "/tasks", USER),
    rule("DELETE", "/tasks", ADMIN),
    // datastore
    rule("GET", "/datastore", USER),
    rule("PUT", "/datastore", ANNOTATOR),
    rule("DELETE", "/datastore", ADMIN),
    rule("GET", "/datastore/image", USER),
    rule("HEAD", "/datastore/image", USER),
    rule("PUT", "/datastore/image", ANNOTATOR),
    rule("DELETE", "/datastore/image", ADMIN),
    rule("GET", "/datastore/image/info", USER),
    rule("PUT", "/datastore/image/info", ANNOTATOR),
    rule("GET", "/datastore/label", USER),
    rule("HEAD", "/datastore/label", USER),
    rule("PUT", "/datastore/label", ANNOTATOR),
    rule("DELETE", "/datastore/label", ADMIN),
    rule("GET", "/datastore/label/info", USER),
    rule("PUT", "/datastore/label/info", ANNOTATOR),
    rule("PUT", "/datastore/updatelabelinfo", ANNOTATOR),
    rule("GET", "/datastore/dataset", ANNOTATOR),
    // model files (the code checks annotator for PUT/DELETE, whatever the summaries say)
    rule("GET", "/model", ADMIN),
    rule("PUT", "/model", ANNOTATOR),
    rule("DELETE", "/model", ANNOTATOR),
    // model versions (docs/models.md): anyone may see which weights made a label; a rollback
    // changes what everybody's inference runs, so it is for admins
    rule("GET", "/model/versions", USER),
    rule("POST", "/model/versions", ADMIN),
    // the dashboard (docs/dashboard.md): the page is public, its data calls are checked as
    // usual; the audit log names every user, so it is for admins
    rule("GET", "/ui", Public),
    rule("GET", "/audit", ADMIN),
    rule("GET", "/datastore/revisions", USER),
    // logs, OHIF, DICOMweb proxy
    rule("GET", "/logs", ADMIN),
    rule("GET", "/ohif", USER),
    rule("*", "/proxy", USER),
];

/// `path` without trailing slashes (`/` for the root).
pub fn normalize(path: &str) -> &str {
    let p = path.trim_end_matches('/');
    if p.is_empty() {
        "/"
    } else {
        p
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path == "/";
    }
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// What a `method` request to `path` needs (see the module docs for the matching rules).
///
/// `path` must be the path the router matches ([`super::canonical::routed_path`]), never the
/// raw one: `/%64atastore/image` is routed to `/datastore/image`.
pub fn access(method: &Method, path: &str) -> Access {
    let path = normalize(path);
    RULES
        .iter()
        .filter(|r| r.method == "*" || r.method == method.as_str())
        .filter(|r| prefix_matches(r.prefix, path))
        .max_by_key(|r| r.prefix.len())
        .map(|r| r.access)
        .unwrap_or(Authenticated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(m: &str, p: &str) -> Access {
        access(&Method::from_bytes(m.as_bytes()).unwrap(), p)
    }

    #[test]
    fn table_follows_the_spec() {
        assert_eq!(a("GET", "/"), Public);
        assert_eq!(a("GET", "/auth/"), Public);
        assert_eq!(a("POST", "/auth/token"), Public);
        assert_eq!(a("GET", "/auth/token/valid"), Authenticated);
        assert_eq!(a("GET", "/info/"), USER);
        assert_eq!(a("POST", "/infer/wholeBody_ct_segmentation"), USER);
        assert_eq!(a("GET", "/datastore/"), USER);
        assert_eq!(a("PUT", "/datastore/"), ANNOTATOR);
        assert_eq!(a("DELETE", "/datastore/"), ADMIN);
        assert_eq!(a("DELETE", "/datastore/image"), ADMIN);
        assert_eq!(a("GET", "/docs"), Public);
        assert_eq!(a("GET", "/docs/swagger-ui.css"), Public);
        assert_eq!(a("GET", "/openapi.json"), Public);
        assert_eq!(a("HEAD", "/datastore/image"), USER);
        assert_eq!(a("PUT", "/datastore/label"), ANNOTATOR);
        assert_eq!(a("DELETE", "/datastore/label"), ADMIN);
        assert_eq!(a("GET", "/datastore/label/info"), USER);
        assert_eq!(a("PUT", "/datastore/label/info"), ANNOTATOR);
        assert_eq!(a("GET", "/datastore/dataset"), ANNOTATOR);
        assert_eq!(a("PUT", "/session/"), USER);
        assert_eq!(a("DELETE", "/session/abc"), USER);
        assert_eq!(a("GET", "/model/info/x"), ADMIN);
        assert_eq!(a("PUT", "/model/x"), ANNOTATOR);
        assert_eq!(a("GET", "/model/versions/x"), USER);
        assert_eq!(a("POST", "/model/versions/x/activate"), ADMIN);
        assert_eq!(a("GET", "/model/x"), ADMIN);
        assert_eq!(a("GET", "/logs/"), ADMIN);
        assert_eq!(a("POST", "/train/wholeBody_ct_segmentation"), ADMIN);
        assert_eq!(a("GET", "/train/"), USER);
        assert_eq!(a("DELETE", "/train/"), ADMIN);
        assert_eq!(a("POST", "/batch/infer/m"), ADMIN);
        assert_eq!(a("GET", "/batch/infer"), USER);
        assert_eq!(a("POST", "/scoring/dice"), ANNOTATOR);
        assert_eq!(a("GET", "/scoring/"), USER);
        assert_eq!(a("GET", "/proxy/dicom/qido/studies"), USER);
        assert_eq!(a("POST", "/proxy/dicom/stow/studies"), USER);
        assert_eq!(a("GET", "/proxy/dicom/studies/1.2/series"), USER);
        assert_eq!(a("GET", "/ui/"), Public);
        assert_eq!(a("GET", "/ui/dashboard.js"), Public);
        assert_eq!(a("GET", "/audit/"), ADMIN);
        assert_eq!(a("POST", "/audit/"), Authenticated);
        assert_eq!(a("GET", "/datastore/revisions"), USER);
    }

    #[test]
    fn prefixes_match_whole_segments_and_default_is_closed() {
        assert_eq!(a("GET", "/datastorex"), Authenticated);
        assert_eq!(a("GET", "/nowhere"), Authenticated);
        assert_eq!(a("POST", "/info/"), Authenticated);
        assert_eq!(a("GET", "/favicon.ico"), Public);
        assert_eq!(a("GET", "//"), Public);
    }
}
