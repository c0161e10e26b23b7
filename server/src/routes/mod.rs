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
pub mod infer;
pub mod info;
pub mod logs;
pub mod model;
pub mod proxy;
pub mod report;
pub mod root;
pub mod scoring;
pub mod scribbles;
pub mod session;
pub mod tasks;
pub mod train;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpResponse, Resource};
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

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/", "GET").route(web::get().to(root::index)))
        .service(resource("/info/", "GET").route(web::get().to(info::info)))
        .service(resource("/infer/{model}", "POST").route(web::post().to(infer::infer)))
        .service(
            resource("/datastore/", "GET, PUT, DELETE")
                .route(web::get().to(datastore::list))
                .route(web::put().to(datastore::upload_image))
                .route(web::delete().to(datastore::remove_image)),
        )
        .service(
            resource("/datastore/image", "GET, HEAD, PUT, DELETE")
                .route(web::get().to(datastore::download_image))
                .route(web::head().to(datastore::head_image))
                .route(web::put().to(datastore::upload_image))
                .route(web::delete().to(datastore::remove_image)),
        )
        .service(
            resource("/datastore/image/info", "GET, PUT")
                .route(web::get().to(datastore::image_info))
                .route(web::put().to(datastore::update_image_info)),
        )
        .service(
            resource("/datastore/label", "GET, HEAD, PUT, DELETE")
                .route(web::get().to(datastore::download_label))
                .route(web::head().to(datastore::head_label))
                .route(web::put().to(datastore::save_label))
                .route(web::delete().to(datastore::remove_label)),
        )
        .service(
            resource("/datastore/label/info", "GET, PUT")
                .route(web::get().to(datastore::label_info))
                .route(web::put().to(datastore::update_label_info)),
        )
        .service(
            resource("/datastore/updatelabelinfo", "PUT")
                .route(web::put().to(datastore::update_label_info_params)),
        )
        .service(resource("/datastore/dataset", "GET").route(web::get().to(datastore::dataset)))
        .service(resource("/session/", "PUT").route(web::put().to(session::create)))
        .service(
            resource("/session/{id}", "GET, DELETE")
                .route(web::get().to(session::get))
                .route(web::delete().to(session::remove)),
        )
        .service(
            resource("/activelearning/{strategy}", "POST")
                .route(web::post().to(activelearning::next_sample)),
        )
        .service(
            resource("/scoring/", "GET, POST, DELETE")
                .route(web::get().to(scoring::status))
                .route(web::post().to(scoring::run_all))
                .route(web::delete().to(scoring::stop)),
        )
        .service(resource("/scoring/{method}", "POST").route(web::post().to(scoring::run_one)))
        .service(
            resource("/batch/infer", "GET, DELETE")
                .route(web::get().to(batch::status))
                .route(web::delete().to(batch::stop)),
        )
        .service(resource("/batch/infer/{model}", "POST").route(web::post().to(batch::run)))
        .service(
            resource("/datastore/label/report", "GET").route(web::get().to(report::label_report)),
        )
        .service(
            resource("/train/", "GET, POST, DELETE")
                .route(web::get().to(train::status))
                .route(web::post().to(train::start_all))
                .route(web::delete().to(train::stop)),
        )
        .service(resource("/train/curve", "GET").route(web::get().to(train::curve)))
        .service(resource("/train/{model}", "POST").route(web::post().to(train::start_one)))
        .service(resource("/tasks/", "GET").route(web::get().to(tasks::list)))
        .service(
            resource("/tasks/{id}", "GET, DELETE")
                .route(web::get().to(tasks::get))
                .route(web::delete().to(tasks::cancel)),
        )
        .service(resource("/logs/", "GET").route(web::get().to(logs::logs)))
        .service(resource("/model/info/{model}", "GET").route(web::get().to(model::info)))
        .service(
            resource("/model/{model}", "GET, PUT, DELETE")
                .route(web::get().to(model::download))
                .route(web::put().to(model::upload))
                .route(web::delete().to(model::remove)),
        )
        .service(proxy::resource());
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
