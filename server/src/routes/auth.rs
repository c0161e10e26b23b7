//! `/auth/*` (docs/protocol.md §9), mounted only when authentication is on (otherwise `/auth/` is an
//! unknown path, 404, which is how the clients tell that auth is off).
//!
//! * `GET /auth/` → `{"enabled": true, "client_id": ..., "realm": "ferrolabel"}`;
//! * `POST /auth/token` (form `username`, `password`, optional `grant_type=password`) →
//!   `{"access_token": ..., "token_type": "Bearer"}`; wrong credentials → 401;
//! * `GET /auth/token/valid` (bearer token) → `{"username", "email", "name", "roles"}`.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::auth::{unauthorized, Auth, Identity, LoginError};
use crate::error::{ApiError, ApiResult};
use crate::response;

/// Largest accepted login form.
const FORM_LIMIT: usize = 16 * 1024;

/// Registers the `/auth/*` routes of [`super::AUTH_ROUTES`] with `auth` as their data.
pub fn configure(cfg: &mut web::ServiceConfig, auth: Arc<Auth>) {
    let data = web::Data::from(auth);
    for e in super::AUTH_ROUTES {
        cfg.service(
            super::endpoint_resource(e).app_data(data.clone()).app_data(
                web::FormConfig::default()
                    .limit(FORM_LIMIT)
                    .error_handler(|e, _| {
                        ApiError::unprocessable(format!("invalid login form: {e}")).into()
                    }),
            ),
        );
    }
}

/// `GET /auth/`.
#[utoipa::path(
    get,
    path = "/auth/",
    tag = "auth",
    description = "Whether authentication is on. Exists only with `--auth-enable`: without it the \
        path is unknown (404), which is how the clients tell that auth is off.",
    responses(
        (status = 200, description = "Auth is on", body = crate::openapi::schemas::AuthInfo),
        (status = 404, description = "The server runs without `--auth-enable`", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn describe(auth: web::Data<Auth>) -> HttpResponse {
    response::json(auth.describe())
}

/// `POST /auth/token`.
#[utoipa::path(
    post,
    path = "/auth/token",
    tag = "auth",
    description = "Log in: a bearer token for the other operations. Only with `--auth-enable`.",
    request_body(content = crate::openapi::schemas::LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Logged in", body = crate::openapi::schemas::Token),
        (status = 401, description = "Incorrect user name or password", body = crate::openapi::schemas::Detail),
        (status = 404, description = "The server runs without `--auth-enable`", body = crate::openapi::schemas::Detail),
        (status = 422, description = "Not a urlencoded form (or over 16 KiB), a missing field, or `grant_type` other than `password`", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn token(
    auth: web::Data<Auth>,
    form: web::Form<HashMap<String, String>>,
) -> ApiResult<HttpResponse> {
    let field = |k: &str| -> ApiResult<&str> {
        form.get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::unprocessable(format!("missing form field {k:?}")))
    };
    let username = field("username")?;
    let password = field("password")?;
    if let Some(g) = form.get("grant_type").filter(|g| !g.is_empty()) {
        if g != "password" {
            return Err(ApiError::unprocessable(format!(
                "form field \"grant_type\": {g:?} is not \"password\""
            )));
        }
    }
    match auth.login(username, password).await {
        Ok(token) => {
            tracing::info!(user = %username, "login");
            Ok(response::json(
                json!({"access_token": token, "token_type": "Bearer"}),
            ))
        }
        Err(LoginError::BadCredentials) => {
            tracing::warn!(user = %username, "login refused: wrong user name or password");
            Ok(unauthorized("Incorrect username or password"))
        }
        Err(LoginError::Internal(e)) => Err(ApiError::internal(format!("login failed: {e}"))),
    }
}

/// `GET /auth/token/valid` (the layer has checked the token).
#[utoipa::path(
    get,
    path = "/auth/token/valid",
    tag = "auth",
    description = "Who the bearer token belongs to. Only with `--auth-enable`.",
    responses(
        (status = 200, description = "The token is valid", body = crate::openapi::schemas::WhoAmI),
        (status = 404, description = "The server runs without `--auth-enable`", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn valid(req: HttpRequest) -> HttpResponse {
    response::json(Identity::of(&req).to_json())
}
