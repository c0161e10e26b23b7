//! The OpenAPI 3.1 description of the HTTP API, served at `/openapi.json` with Swagger UI at
//! `/docs` ([`docs`]; docs/api.md).
//!
//! Each handler carries a `#[utoipa::path]` attribute (path, method, parameters, body,
//! answers); [`ApiDoc`] lists them, and [`spec`] adds what the role table
//! ([`crate::auth::rbac`]) says about each operation: the bearer security requirement, the
//! 401/403 answers and the role needed when the server runs with `--auth-enable`, plus the 400
//! answer that the canonical-path check ([`crate::auth::canonical`]) gives a path parameter
//! holding `.`/`..` or `%2F`.
//!
//! **Adding a route:** add it to [`crate::routes::ROUTES`], give its handler a
//! `#[utoipa::path(...)]` (copy one from `routes/info.rs` or `routes/datastore.rs`), and list the
//! handler in [`ApiDoc`]'s `paths(...)`. The tests below fail until the route table and the
//! description agree.

pub mod docs;
pub mod schemas;

use std::sync::OnceLock;

use actix_web::http::Method;
use serde_json::{json, Map, Value};
use utoipa::OpenApi;

use crate::auth::rbac::{access, Access};
use crate::routes;

/// The description: every handler of [`crate::routes::ROUTES`] and
/// [`crate::routes::AUTH_ROUTES`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferrolabel",
        description = "A MONAI Label compatible server for whole-body CT segmentation. \
            The routes are MONAI Label's (the same paths, parameters and answers, so 3D Slicer, OHIF \
            and the `monailabel` client work unchanged) plus a few of ferrolabel's own (`/tasks/`, \
            `/train/curve`, `/datastore/label/report`, `/docs`). Every path is served with and \
            without its trailing slash. Refused requests answer `{\"detail\": \"...\"}` with a 4xx \
            status; 5xx answers carry a terse `detail` (the cause goes to the server log).\n\n\
            **Authentication** is off unless the server runs with `--auth-enable`: then `/auth/*` \
            exists, every other operation needs a bearer token from `POST /auth/token` (except the \
            public ones) and the role each operation names.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        routes::root::index,
        routes::info::info,
        routes::infer::infer,
        routes::datastore::list,
        routes::datastore::upload_image,
        routes::datastore::remove_image,
        routes::datastore::download_image,
        routes::datastore::head_image,
        routes::datastore::image_info,
        routes::datastore::update_image_info,
        routes::datastore::download_label,
        routes::datastore::head_label,
        routes::datastore::save_label,
        routes::datastore::remove_label,
        routes::datastore::label_info,
        routes::datastore::update_label_info,
        routes::datastore::update_label_info_params,
        routes::datastore::dataset,
        routes::report::label_report,
        routes::session::create,
        routes::session::get,
        routes::session::remove,
        routes::activelearning::next_sample,
        routes::scoring::status,
        routes::scoring::run_all,
        routes::scoring::stop,
        routes::scoring::run_one,
        routes::batch::status,
        routes::batch::stop,
        routes::batch::run,
        routes::train::status,
        routes::train::start_all,
        routes::train::stop,
        routes::train::curve,
        routes::train::start_one,
        routes::tasks::list,
        routes::tasks::get,
        routes::tasks::cancel,
        routes::logs::logs,
        routes::ui::page,
        routes::ui::asset,
        routes::history::audit_log,
        routes::history::revisions,
        routes::model::info,
        routes::model::download,
        routes::model::upload,
        routes::model::remove,
        routes::model::versions_list,
        routes::model::versions_activate,
        routes::proxy::proxy_root,
        routes::proxy::proxy,
        docs::openapi_json,
        docs::swagger_ui,
        docs::asset,
        routes::auth::describe,
        routes::auth::token,
        routes::auth::valid,
    ),
    components(schemas(
        schemas::Detail,
        schemas::DatastoreStats,
        schemas::DatastoreAll,
        schemas::TrainPair,
        schemas::Task,
        // the enumerations of query parameters (`params(...)` does not collect them)
        schemas::DatastoreOutput,
        schemas::InferOutput,
        schemas::SegType,
        schemas::LabelFormat,
        schemas::BatchImages,
        schemas::TaskKind,
        schemas::TaskState,
    )),
    tags(
        (name = "info", description = "The app: models, labels, strategies"),
        (name = "infer", description = "Run a model on an image"),
        (name = "datastore", description = "Images, labels and their info"),
        (name = "session", description = "Images kept outside the datastore for interactive work"),
        (name = "activelearning", description = "The next image to annotate"),
        (name = "train", description = "Training (a background task)"),
        (name = "batch", description = "Batch inference (a background task)"),
        (name = "scoring", description = "Scoring methods (a background task)"),
        (name = "tasks", description = "ferrolabel's view of the whole task queue"),
        (name = "model", description = "Model weights files"),
        (name = "logs", description = "The server log"),
        (name = "proxy", description = "MONAI Label's DICOMweb proxy"),
        (name = "auth", description = "Login; only with --auth-enable"),
        (name = "docs", description = "This description and its browser"),
        (name = "ui", description = "The dashboard (ferrolabel's own)"),
        (name = "history", description = "Who did what, when: the audit log (ferrolabel's own)"),
    )
)]
pub struct ApiDoc;

/// The methods an OpenAPI path item may hold.
const METHODS: &[&str] = &["get", "put", "post", "delete", "head", "patch", "options"];

/// Operations served by the same handler under a second path (MONAI Label's two upload and
/// delete paths): `(path, method, the path whose operation it repeats)`. utoipa describes one
/// path per handler, so the second is copied here.
const ALIASES: &[(&str, &str, &str)] = &[
    ("/datastore/image", "put", "/datastore/"),
    ("/datastore/image", "delete", "/datastore/"),
];

/// Adds each of [`ALIASES`] to `paths`, its description naming the path it repeats.
fn add_aliases(paths: &mut Map<String, Value>) {
    for (path, method, from) in ALIASES {
        let Some(mut op) = paths.get(*from).and_then(|item| item.get(*method)).cloned() else {
            continue;
        };
        if let Some(op) = op.as_object_mut() {
            let same = format!("Same as `{} {from}`.", method.to_uppercase());
            let text = match op.get("description").and_then(Value::as_str) {
                Some(d) => format!("{d} {same}"),
                None => same,
            };
            op.insert("description".into(), Value::String(text));
        }
        let item = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        if let Some(item) = item.as_object_mut() {
            item.insert(method.to_string(), op);
        }
    }
}

/// The description as JSON, with the access rules of [`crate::auth::rbac`] added.
pub fn spec() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        add_aliases(paths);
        for (path, item) in paths.iter_mut() {
            for method in METHODS {
                if let Some(op) = item.get_mut(*method).and_then(Value::as_object_mut) {
                    annotate(path, method, op);
                    optional_body(op);
                }
            }
        }
    }
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        components.insert(
            "securitySchemes".into(),
            json!({"bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token from `POST /auth/token`; only with `--auth-enable`."
            }}),
        );
    }
    doc
}

/// [`spec`] serialized once.
pub fn spec_json() -> &'static str {
    static SPEC: OnceLock<String> = OnceLock::new();
    SPEC.get_or_init(|| serde_json::to_string(&spec()).unwrap_or_default())
}

/// A `{"detail": ...}` answer.
fn detail_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Detail"}}}
    })
}

/// An optional body (`Option<T>` in the attribute, written `oneOf: [null, T]`): `T`, not
/// required.
fn optional_body(op: &mut Map<String, Value>) {
    let Some(body) = op.get_mut("requestBody").and_then(Value::as_object_mut) else {
        return;
    };
    let mut optional = false;
    if let Some(content) = body.get_mut("content").and_then(Value::as_object_mut) {
        for media in content.values_mut() {
            let Some(one_of) = media["schema"]["oneOf"].as_array() else {
                continue;
            };
            if let [a, b] = one_of.as_slice() {
                let inner = if a["type"] == "null" {
                    b
                } else if b["type"] == "null" {
                    a
                } else {
                    continue;
                };
                media["schema"] = inner.clone();
                optional = true;
            }
        }
    }
    if optional {
        body.insert("required".into(), Value::Bool(false));
    }
}

/// A unique id from the method and path: `get_datastore_image`, `post_infer_model`, `get_root`.
fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<&str> = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        format!("{method}_root")
    } else {
        format!("{method}_{}", words.join("_"))
    }
}

/// Adds the operation id, the security requirement, 401/403/400 answers and the access note to one operation.
fn annotate(path: &str, method: &str, op: &mut Map<String, Value>) {
    // the role table matches prefixes: a parameter's name stands in for its value
    let concrete: String = path.chars().filter(|c| *c != '{' && *c != '}').collect();
    let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap_or(Method::GET);
    let rule = access(&m, &concrete);
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(responses) = responses else { return };
    if path.contains('{') {
        responses.entry("400").or_insert_with(|| {
            detail_response(
                "The path is not in canonical form (a `.` or `..` segment, `%2F`, an escaped \
                 unreserved character, ...)",
            )
        });
    }
    let note = match rule {
        Access::Public => "Public, also with `--auth-enable`.".to_string(),
        Access::Authenticated => "With `--auth-enable`: needs a valid token.".to_string(),
        Access::Role(role) => format!("With `--auth-enable`: needs role `{}`.", role.name()),
    };
    if rule != Access::Public {
        let mut unauthorized = detail_response("With `--auth-enable`: no token or a bad one");
        unauthorized["headers"] = json!({"WWW-Authenticate": {"schema": {"type": "string"}}});
        responses.entry("401").or_insert(unauthorized);
        if matches!(rule, Access::Role(_)) {
            responses
                .entry("403")
                .or_insert_with(|| detail_response("With `--auth-enable`: the role is missing"));
        }
        op.insert("security".into(), json!([{"bearer": []}]));
    }
    op.insert(
        "operationId".into(),
        Value::String(operation_id(method, path)),
    );
    op.insert("x-access".into(), Value::String(note.clone()));
    let description = match op.get("description").and_then(Value::as_str) {
        Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
        _ => note,
    };
    op.insert("description".into(), Value::String(description));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::routes::{AUTH_ROUTES, ROUTES};

    /// A route table path as the description writes it: `{name:regex}` → `{name}`.
    fn spec_path(path: &str) -> String {
        let (mut out, mut in_param, mut skipping) = (String::new(), false, false);
        for c in path.chars() {
            match c {
                '{' if !in_param => {
                    in_param = true;
                    out.push(c);
                }
                ':' if in_param => skipping = true,
                '}' if in_param => {
                    (in_param, skipping) = (false, false);
                    out.push(c);
                }
                _ if skipping => {}
                _ => out.push(c),
            }
        }
        out
    }

    fn table() -> BTreeSet<(String, String)> {
        ROUTES
            .iter()
            .chain(AUTH_ROUTES)
            .flat_map(|e| {
                e.handlers
                    .iter()
                    .map(|(m, _)| (spec_path(e.path), m.to_ascii_lowercase()))
            })
            .collect()
    }

    fn described() -> BTreeSet<(String, String)> {
        let doc = spec();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for m in METHODS {
                if item.get(*m).is_some() {
                    out.insert((path.clone(), m.to_string()));
                }
            }
        }
        out
    }

    /// Every `$ref` string in `v`.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = spec();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 50, "{}", all.len());
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").expect(&r);
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} is not among the components"
            );
        }
        // optional bodies are plain schemas, not `oneOf: [null, T]`
        let body = &doc["paths"]["/infer/{model}"]["post"]["requestBody"];
        assert_eq!(body["required"], false);
        assert!(body["content"]["multipart/form-data"]["schema"]["$ref"].is_string());
    }

    #[test]
    fn regex_parameters_are_written_plain() {
        assert_eq!(spec_path("/proxy/dicom/{path:.*}"), "/proxy/dicom/{path}");
        assert_eq!(spec_path("/a/{b}/c"), "/a/{b}/c");
    }

    #[test]
    fn every_route_is_described_and_nothing_else() {
        let table = table();
        let described = described();
        let missing: Vec<_> = table.difference(&described).collect();
        let extra: Vec<_> = described.difference(&table).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "routes without a description: {missing:?}; described but not routed: {extra:?}"
        );
        assert!(table.len() > 40, "{}", table.len());
    }

    #[test]
    fn operations_carry_their_parameters_and_access() {
        let doc = spec();
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let names: BTreeSet<String> = path
                .split('{')
                .skip(1)
                .filter_map(|s| s.split_once('}').map(|(n, _)| n.to_string()))
                .collect();
            for m in METHODS {
                let Some(op) = item.get(*m) else { continue };
                let declared: BTreeSet<String> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(declared, names, "{m} {path}: path parameters");
                assert!(op["x-access"].is_string(), "{m} {path}");
                assert!(op["responses"]["200"].is_object(), "{m} {path}: no 200");
                assert!(op["tags"].is_array(), "{m} {path}: no tag");
            }
        }
        let mut ids = BTreeSet::new();
        for item in doc["paths"].as_object().expect("paths").values() {
            for m in METHODS {
                if let Some(id) = item.get(*m).and_then(|op| op["operationId"].as_str()) {
                    assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
                }
            }
        }
        assert!(
            ids.contains("post_infer_model") && ids.contains("get_root"),
            "{ids:?}"
        );
        // the role table shows through
        let logs = &doc["paths"]["/logs/"]["get"];
        assert_eq!(logs["security"], json!([{"bearer": []}]));
        assert!(logs["responses"]["403"].is_object());
        assert!(doc["paths"]["/"]["get"]["security"].is_null());
        for p in ["/auth/", "/auth/token", "/auth/token/valid"] {
            let item = doc["paths"][p].as_object().expect(p);
            for op in item.values() {
                let d = op["description"].as_str().unwrap_or("");
                assert!(d.contains("--auth-enable"), "{p}: {d}");
            }
        }
    }
}
