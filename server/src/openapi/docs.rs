//! `GET /openapi.json` (the description, [`super::spec_json`]), `GET /docs` (Swagger UI on it)
//! and `GET /docs/{file}` (the UI's vendored files, `server/static/swagger-ui/`, compiled into
//! the binary: no CDN, the page works offline).

use actix_web::{web, HttpResponse};

use crate::error::ApiResult;
use crate::response::{embedded_file, EmbeddedFile};

/// The Swagger UI files `/docs/{file}` serves: name, content type, bytes.
const ASSETS: &[EmbeddedFile] = &[
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/swagger-ui/swagger-ui-bundle.js"),
    ),
    (
        "swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/swagger-ui/swagger-ui.css"),
    ),
    (
        "swagger-init.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/swagger-ui/swagger-init.js"),
    ),
];

/// The page of `/docs`: the UI's files from `/docs/`, started on `/openapi.json`.
const PAGE: &str = "<!DOCTYPE html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>ferrolabel API</title>
<link rel=\"stylesheet\" href=\"/docs/swagger-ui.css\">
</head>
<body>
<div id=\"swagger-ui\"></div>
<script src=\"/docs/swagger-ui-bundle.js\"></script>
<script src=\"/docs/swagger-init.js\"></script>
</body>
</html>
";

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "docs",
    description = "This description (OpenAPI 3.1), generated from the handlers' annotations.",
    responses((status = 200, description = "The OpenAPI document", body = Object))
)]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(super::spec_json())
}

/// `GET /docs`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "docs",
    description = "Swagger UI on `/openapi.json` (served by the binary; works offline).",
    responses((status = 200, description = "The Swagger UI page", content_type = "text/html", body = String))
)]
pub async fn swagger_ui() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

/// `GET /docs/{file}`.
#[utoipa::path(
    get,
    path = "/docs/{file}",
    tag = "docs",
    description = "The files of the Swagger UI page (Swagger UI 5.35.0, Apache-2.0).",
    params(("file" = String, Path, description = "`swagger-ui-bundle.js`, `swagger-ui.css` or `swagger-init.js`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
        )),
        (status = 404, description = "No such file", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn asset(file: web::Path<String>) -> ApiResult<HttpResponse> {
    embedded_file(ASSETS, &file, "public, max-age=86400")
}
