//! `GET /`: a small landing page listing the endpoints.

use actix_web::{web, HttpResponse};

use crate::state::AppState;

const ENDPOINTS: &[(&str, &str, &str)] = &[
    (
        "GET",
        "/info/",
        "app, models, strategies and datastore summary",
    ),
    (
        "POST",
        "/infer/{model}?image=&session_id=&output=image|json|all",
        "run a model",
    ),
    (
        "GET",
        "/datastore/?output=stats|all|train",
        "datastore listing",
    ),
    (
        "PUT",
        "/datastore/?image=",
        "upload an image (multipart file, params)",
    ),
    ("GET / HEAD / PUT / DELETE", "/datastore/image", "one image"),
    ("GET / PUT", "/datastore/image/info", "image info"),
    (
        "GET / HEAD / PUT / DELETE",
        "/datastore/label",
        "one label (tag final by default)",
    ),
    ("GET / PUT", "/datastore/label/info", "label info"),
    (
        "PUT",
        "/datastore/updatelabelinfo",
        "label info (form field params)",
    ),
    (
        "GET",
        "/datastore/dataset",
        "zip of the final labels and their images",
    ),
    ("PUT", "/session/", "create a session (multipart files)"),
    ("GET / DELETE", "/session/{id}", "one session"),
    (
        "POST",
        "/activelearning/{strategy}",
        "next sample to annotate",
    ),
    ("GET / PUT / DELETE", "/model/{model}", "model weights file"),
    ("GET", "/model/info/{model}", "weights checksum and time"),
    ("GET", "/logs/?lines=&text=true", "server log"),
    (
        "GET",
        "/docs",
        "every endpoint, browsable (Swagger UI); /openapi.json: the OpenAPI 3.1 description",
    ),
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The landing page.
#[utoipa::path(
    get,
    path = "/",
    tag = "info",
    description = "A small HTML page listing the main endpoints, with a link to `/docs`.",
    responses(
        (status = 200, description = "The landing page", content_type = "text/html", body = String),
    )
)]
pub async fn index(state: web::Data<AppState>) -> HttpResponse {
    let mut rows = String::new();
    for (m, p, d) in ENDPOINTS {
        rows.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>\n",
            escape(m),
            escape(p),
            escape(d)
        ));
    }
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{name}</title></head>\n<body>\n\
         <h1>{name}</h1>\n<p>A MONAI Label compatible server. Connect 3D Slicer's MONAI Label module \
         or the <code>monailabel</code> Python client to this address.</p>\n\
         <table border=\"1\" cellpadding=\"4\">\n<tr><th>Method</th><th>Path</th><th>What</th></tr>\n{rows}</table>\n\
         </body></html>\n",
        name = escape(state.app.name())
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html)
}
