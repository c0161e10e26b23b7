//! The HTTP routes (one module per MONAI Label endpoint module) and the middleware around them.
//!
//! Every path is served both with and without its trailing slash, directly (no redirects; the
//! MONAI Label clients do not follow them). A known path with the wrong method answers
//! `405 {"detail":"Method Not Allowed"}` with an `Allow` header; an unknown path
//! `404 {"detail":"Not Found"}` (this includes `/auth/` when authentication is off, which is how
//! clients detect that; with it on, [`auth::configure`] mounts `/auth/*` and
//! [`crate::auth::AuthLayer`] checks every request against the role table).

pub mod activelearning;
pub mod auth;
pub mod batch;
pub mod datastore;
pub mod history;
pub mod infer;
pub mod info;
pub mod logs;
pub mod model;
pub mod proxy;
pub mod report;
pub mod root;
pub mod scoring;
pub mod session;
pub mod tasks;
pub mod train;
pub mod ui;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpResponse, Resource, Route};
use futures_util::future::LocalBoxFuture;
use tracing::Instrument;

use crate::error::ApiError;

/// Query parameters as a map (values percent-decoded, `+` = space).
pub type QueryMap = web::Query<HashMap<String, String>>;

/// A query parameter, `""` when absent.
pub fn q<'a>(query: &'a QueryMap, key: &str) -> &'a str {
    query.get(key).map(String::as_str).unwrap_or("")
}

/// A boolean query parameter (pydantic rules); 422 for anything else.
pub fn q_bool(query: &QueryMap, key: &str, default: bool) -> Result<bool, ApiError> {
    match query.get(key).map(String::as_str) {
        None | Some("") => Ok(default),
        Some(v) => crate::config::parse_bool(v).map_err(|_| {
            ApiError::unprocessable(format!("query parameter {key:?}: {v:?} is not a boolean"))
        }),
    }
}

/// An integer query parameter; 422 for anything else.
pub fn q_int(query: &QueryMap, key: &str, default: i64) -> Result<i64, ApiError> {
    match query.get(key).map(String::as_str) {
        None | Some("") => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| {
            ApiError::unprocessable(format!("query parameter {key:?}: {v:?} is not an integer"))
        }),
    }
}

/// A required, non-empty query parameter; 422 when missing.
pub fn q_required<'a>(query: &'a QueryMap, key: &str) -> Result<&'a str, ApiError> {
    match query.get(key).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ApiError::unprocessable(format!(
            "missing query parameter {key:?}"
        ))),
    }
}

/// `path` and its trailing-slash twin.
fn both_forms(path: &str) -> Vec<String> {
    if path == "/" {
        return vec![path.to_string()];
    }
    let trimmed = path.trim_end_matches('/');
    vec![trimmed.to_string(), format!("{trimmed}/")]
}

/// A resource on both forms of `path` whose other methods answer 405 with `Allow: allow`.
fn resource(path: &str, allow: &'static str) -> Resource {
    web::resource(both_forms(path)).default_service(web::to(move || async move {
        Err::<HttpResponse, _>(ApiError::method_not_allowed(allow))
    }))
}

/// `404 {"detail":"Not Found"}` for unknown paths.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("Not Found"))
}

/// One method of an [`Endpoint`]: the HTTP method and the handler's route (without a method
/// guard; [`configure`] adds it from the method).
pub type Handler = (&'static str, fn() -> Route);

/// One path of the route table.
pub struct Endpoint {
    /// The path as the OpenAPI description writes it, `{name}` for a parameter
    /// (`{name:regex}` where the parameter may span segments). Served with and without its
    /// trailing slash.
    pub path: &'static str,
    /// The `Allow` header of a 405 (the methods of `handlers`, a unit test checks).
    pub allow: &'static str,
    /// The methods served.
    pub handlers: &'static [Handler],
}

/// Every route of the server but `/auth/*` ([`AUTH_ROUTES`]): what [`configure`] registers and
/// what the OpenAPI description must list (`crate::openapi`'s tests compare them).
pub const ROUTES: &[Endpoint] = &[
    ep("/", "GET", &[("GET", || web::to(root::index))]),
    ep("/info/", "GET", &[("GET", || web::to(info::info))]),
    ep(
        "/infer/{model}",
        "POST",
        &[("POST", || web::to(infer::infer))],
    ),
    ep(
        "/datastore/",
        "GET, PUT, DELETE",
        &[
            ("GET", || web::to(datastore::list)),
            ("PUT", || web::to(datastore::upload_image)),
            ("DELETE", || web::to(datastore::remove_image)),
        ],
    ),
    ep(
        "/datastore/image",
        "GET, HEAD, PUT, DELETE",
        &[
            ("GET", || web::to(datastore::download_image)),
            ("HEAD", || web::to(datastore::head_image)),
            ("PUT", || web::to(datastore::upload_image)),
            ("DELETE", || web::to(datastore::remove_image)),
        ],
    ),
    ep(
        "/datastore/image/info",
        "GET, PUT",
        &[
            ("GET", || web::to(datastore::image_info)),
            ("PUT", || web::to(datastore::update_image_info)),
        ],
    ),
    ep(
        "/datastore/label",
        "GET, HEAD, PUT, DELETE",
        &[
            ("GET", || web::to(datastore::download_label)),
            ("HEAD", || web::to(datastore::head_label)),
            ("PUT", || web::to(datastore::save_label)),
            ("DELETE", || web::to(datastore::remove_label)),
        ],
    ),
    ep(
        "/datastore/label/info",
        "GET, PUT",
        &[
            ("GET", || web::to(datastore::label_info)),
            ("PUT", || web::to(datastore::update_label_info)),
        ],
    ),
    ep(
        "/datastore/updatelabelinfo",
        "PUT",
        &[("PUT", || web::to(datastore::update_label_info_params))],
    ),
    ep(
        "/datastore/dataset",
        "GET",
        &[("GET", || web::to(datastore::dataset))],
    ),
    ep(
        "/datastore/label/report",
        "GET",
        &[("GET", || web::to(report::label_report))],
    ),
    ep("/session/", "PUT", &[("PUT", || web::to(session::create))]),
    ep(
        "/session/{id}",
        "GET, DELETE",
        &[
            ("GET", || web::to(session::get)),
            ("DELETE", || web::to(session::remove)),
        ],
    ),
    ep(
        "/activelearning/{strategy}",
        "POST",
        &[("POST", || web::to(activelearning::next_sample))],
    ),
    ep(
        "/scoring/",
        "GET, POST, DELETE",
        &[
            ("GET", || web::to(scoring::status)),
            ("POST", || web::to(scoring::run_all)),
            ("DELETE", || web::to(scoring::stop)),
        ],
    ),
    ep(
        "/scoring/{method}",
        "POST",
        &[("POST", || web::to(scoring::run_one))],
    ),
    ep(
        "/batch/infer",
        "GET, DELETE",
        &[
            ("GET", || web::to(batch::status)),
            ("DELETE", || web::to(batch::stop)),
        ],
    ),
    ep(
        "/batch/infer/{model}",
        "POST",
        &[("POST", || web::to(batch::run))],
    ),
    ep(
        "/train/",
        "GET, POST, DELETE",
        &[
            ("GET", || web::to(train::status)),
            ("POST", || web::to(train::start_all)),
            ("DELETE", || web::to(train::stop)),
        ],
    ),
    ep("/train/curve", "GET", &[("GET", || web::to(train::curve))]),
    ep(
        "/train/{model}",
        "POST",
        &[("POST", || web::to(train::start_one))],
    ),
    ep("/tasks/", "GET", &[("GET", || web::to(tasks::list))]),
    ep(
        "/tasks/{id}",
        "GET, DELETE",
        &[
            ("GET", || web::to(tasks::get)),
            ("DELETE", || web::to(tasks::cancel)),
        ],
    ),
    ep("/logs/", "GET", &[("GET", || web::to(logs::logs))]),
    // the dashboard (docs/dashboard.md) and the history it reads
    ep("/ui/", "GET", &[("GET", || web::to(ui::page))]),
    ep("/ui/{file}", "GET", &[("GET", || web::to(ui::asset))]),
    ep("/audit/", "GET", &[("GET", || web::to(history::audit_log))]),
    ep(
        "/datastore/revisions",
        "GET",
        &[("GET", || web::to(history::revisions))],
    ),
    ep(
        "/model/info/{model}",
        "GET",
        &[("GET", || web::to(model::info))],
    ),
    ep(
        "/model/versions/{model}",
        "GET",
        &[("GET", || web::to(model::versions_list))],
    ),
    ep(
        "/model/versions/{model}/activate",
        "POST",
        &[("POST", || web::to(model::versions_activate))],
    ),
    ep(
        "/model/{model}",
        "GET, PUT, DELETE",
        &[
            ("GET", || web::to(model::download)),
            ("PUT", || web::to(model::upload)),
            ("DELETE", || web::to(model::remove)),
        ],
    ),
    ep(
        "/proxy/dicom",
        "GET, POST",
        &[
            ("GET", || web::to(proxy::proxy_root)),
            ("POST", || web::to(proxy::proxy_root)),
        ],
    ),
    ep(
        "/proxy/dicom/{path:.*}",
        "GET, POST",
        &[
            ("GET", || web::to(proxy::proxy)),
            ("POST", || web::to(proxy::proxy)),
        ],
    ),
    ep(
        "/openapi.json",
        "GET",
        &[("GET", || web::to(crate::openapi::docs::openapi_json))],
    ),
    ep(
        "/docs",
        "GET",
        &[("GET", || web::to(crate::openapi::docs::swagger_ui))],
    ),
    ep(
        "/docs/{file}",
        "GET",
        &[("GET", || web::to(crate::openapi::docs::asset))],
    ),
];

/// `/auth/*`, mounted by [`auth::configure`] only when authentication is on.
pub const AUTH_ROUTES: &[Endpoint] = &[
    ep("/auth/", "GET", &[("GET", || web::to(auth::describe))]),
    ep("/auth/token", "POST", &[("POST", || web::to(auth::token))]),
    ep(
        "/auth/token/valid",
        "GET",
        &[("GET", || web::to(auth::valid))],
    ),
];

const fn ep(path: &'static str, allow: &'static str, handlers: &'static [Handler]) -> Endpoint {
    Endpoint {
        path,
        allow,
        handlers,
    }
}

/// The resource of one [`Endpoint`]: both path forms, each handler behind its method guard,
/// 405 for the other methods.
pub fn endpoint_resource(e: &Endpoint) -> Resource {
    let mut r = resource(e.path, e.allow);
    for (method, route) in e.handlers {
        let method = Method::from_bytes(method.as_bytes()).expect("a valid method in ROUTES");
        r = r.route(route().method(method));
    }
    r
}

/// Registers every route of [`ROUTES`].
pub fn configure(cfg: &mut web::ServiceConfig) {
    for e in ROUTES {
        cfg.service(endpoint_resource(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_headers_list_the_methods() {
        for e in ROUTES.iter().chain(AUTH_ROUTES) {
            let methods: Vec<&str> = e.handlers.iter().map(|(m, _)| *m).collect();
            assert_eq!(e.allow, methods.join(", "), "{}", e.path);
        }
    }
}

/// Wraps each request in a `tracing` span and logs method, path, status and duration.
pub fn log_request<S>(
    req: ServiceRequest,
    srv: &S,
) -> LocalBoxFuture<'static, Result<ServiceResponse<BoxBody>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
    S::Future: 'static,
{
    let span = tracing::info_span!("request", method = %req.method(), path = %req.path());
    let start = Instant::now();
    let fut = {
        let _entered = span.enter();
        srv.call(req)
    };
    Box::pin(
        async move {
            let res = fut.await;
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            match &res {
                Ok(r) if r.status().is_server_error() => {
                    tracing::warn!(
                        status = r.status().as_u16(),
                        ms = format!("{ms:.1}"),
                        "request failed"
                    )
                }
                Ok(r) => tracing::info!(
                    status = r.status().as_u16(),
                    ms = format!("{ms:.1}"),
                    "request"
                ),
                Err(e) => tracing::warn!(error = %e, ms = format!("{ms:.1}"), "request error"),
            }
            res
        }
        .instrument(span),
    )
}

/// CORS as MONAI Label configures it: listed origins (or any, when none are listed), credentials
/// allowed, every method and header; preflight requests are answered here.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Rc<Vec<String>>,
}

impl Cors {
    /// CORS for `origins` (empty = any origin).
    pub fn new(origins: Vec<String>) -> Self {
        Self {
            origins: Rc::new(origins),
        }
    }

    fn allowed(&self, origin: &str) -> bool {
        self.origins.is_empty() || self.origins.iter().any(|o| o == origin)
    }

    /// The middleware function for `App::wrap_fn`.
    pub fn handle<S>(
        &self,
        req: ServiceRequest,
        srv: &S,
    ) -> LocalBoxFuture<'static, Result<ServiceResponse<BoxBody>, actix_web::Error>>
    where
        S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
        S::Future: 'static,
    {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .map(String::from)
            .filter(|o| self.allowed(o));
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            let mut res = HttpResponse::build(if origin.is_some() {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            });
            if let Some(o) = &origin {
                let req_headers = req
                    .headers()
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("*")
                    .to_string();
                res.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, o.as_str()))
                    .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
                    .insert_header((
                        header::ACCESS_CONTROL_ALLOW_METHODS,
                        "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT",
                    ))
                    .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, req_headers))
                    .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                    .insert_header((header::VARY, "Origin"));
            }
            let res = if origin.is_some() {
                res.body("OK")
            } else {
                res.body("Disallowed CORS origin")
            };
            return Box::pin(async move { Ok(req.into_response(res)) });
        }
        let fut = srv.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            if let Some(o) = origin {
                if let Ok(v) = header::HeaderValue::from_str(&o) {
                    let h = res.headers_mut();
                    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
                    h.insert(
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        header::HeaderValue::from_static("true"),
                    );
                    h.insert(header::VARY, header::HeaderValue::from_static("Origin"));
                }
            }
            Ok(res)
        })
    }
}
