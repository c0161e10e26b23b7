//! `GET /ui/` (the dashboard page) and `GET /ui/{file}` (its script and style sheet): static
//! files from `server/ui/`, compiled into the binary (no CDN, no build step; docs/dashboard.md).
//!
//! The page is public (it holds no data: with `--auth-enable` it shows a login form and sends
//! the token from `POST /auth/token` with every call it makes); the numbers come from the JSON
//! endpoints, under the role table like any other client's calls.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use crate::error::ApiResult;
use crate::response::{embedded_file, EmbeddedFile};

/// The dashboard page.
const PAGE: &str = include_str!("../../ui/index.html");

/// The files `/ui/{file}` serves: name, content type, bytes.
const ASSETS: &[EmbeddedFile] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/dashboard.js").as_bytes(),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/dashboard.css").as_bytes(),
    ),
];

/// `GET /ui/`.
#[utoipa::path(
    get,
    path = "/ui/",
    tag = "ui",
    description = "The dashboard: images and labels by tag and annotator over time, label revisions, the task queue, training, the model in use, a label's report and (admins) the audit log. Public; its data calls need a token with `--auth-enable` (it shows a login form).",
    responses((status = 200, description = "The dashboard page", content_type = "text/html", body = String))
)]
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(PAGE)
}

/// `GET /ui/{file}`.
#[utoipa::path(
    get,
    path = "/ui/{file}",
    tag = "ui",
    description = "The dashboard's script and style sheet.",
    params(("file" = String, Path, description = "`dashboard.js` or `dashboard.css`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
        )),
        (status = 404, description = "No such file", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn asset(file: web::Path<String>) -> ApiResult<HttpResponse> {
    embedded_file(ASSETS, &file, "no-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        for (name, _, _) in ASSETS {
            assert!(PAGE.contains(&format!("/ui/{name}")), "{name} is not used");
        }
        // no CDN: nothing is fetched from another host (the SVG namespace is a name, not a fetch)
        for text in std::iter::once(PAGE).chain(
            ASSETS
                .iter()
                .map(|(_, _, t)| std::str::from_utf8(t).unwrap()),
        ) {
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn")
            );
        }
    }
}
