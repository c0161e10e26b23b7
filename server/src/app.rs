//! [`create_app`]: the actix application (routes, extractor error handlers, middleware) over one
//! [`AppState`]. `start_server` serves it on each HTTP worker; tests build it in-process.

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, App};

use crate::auth::{Auth, AuthLayer};
use crate::error::ApiError;
use crate::routes;
use crate::state::AppState;

/// The whole HTTP application: every route of [`routes::configure`], `/auth/*` when `auth` is
/// on, 404/422 answers for unmatched paths and bad path/query strings, and the middleware (from
/// the outside in: request log, CORS, authentication and the role table).
pub fn create_app(
    state: web::Data<AppState>,
    auth: Option<Arc<Auth>>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let cors = routes::Cors::new(state.settings.cors_origins.clone());
    let guard = AuthLayer::new(auth.clone(), state.datastore.clone());
    App::new()
        .app_data(state)
        .app_data(web::QueryConfig::default().error_handler(|e, _| {
            ApiError::unprocessable(format!("invalid query string: {e}")).into()
        }))
        .app_data(
            web::PathConfig::default()
                .error_handler(|_, _| ApiError::not_found("Not Found").into()),
        )
        .configure(routes::configure)
        .configure(move |cfg| {
            if let Some(a) = auth {
                routes::auth::configure(cfg, a);
            }
        })
        .default_service(web::to(routes::not_found))
        .wrap(actix_web::middleware::from_fn(move |req, next| {
            guard.clone().handle(req, next)
        }))
        .wrap_fn(move |req, srv| cors.handle(req, srv))
        .wrap_fn(|req, srv| routes::log_request(req, srv))
}
