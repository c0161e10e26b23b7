//! `GET /logs/?lines=300&text=false&html=true`: the tail of the server log.

use std::io::{Read, Seek, SeekFrom};

use actix_web::{web, HttpResponse};
use ferrolabel_datastore::{blocking, TaskFailed};

use crate::error::{ApiError, ApiResult};
use crate::routes::{q_bool, q_int, QueryMap};
use crate::state::AppState;

/// At most this much of the end of the file is read.
const MAX_READ: u64 = 16 << 20;

fn tail(path: &std::path::Path, lines: usize) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(MAX_READ);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let from = if lines == 0 {
        0
    } else {
        all.len().saturating_sub(lines)
    };
    let mut out = all[from..].join("\n");
    out.push('\n');
    Ok(out)
}

/// The last `lines` lines (`0` = everything) as text/plain (`text=true` or `html=false`), or in
/// a small HTML page.
#[utoipa::path(
    get,
    path = "/logs/",
    tag = "logs",
    params(
        ("lines" = Option<i64>, Query, description = "How many lines (default 300; 0: all)"),
        ("text" = Option<bool>, Query, description = "Plain text"),
        ("html" = Option<bool>, Query, description = "HTML (default true)"),
        ("refresh" = Option<i64>, Query, description = "HTML: reload every N seconds (at least 3)"),
    ),
    responses(
        (status = 200, description = "The tail of the server log, as text or in a small HTML page", content(
            (String = "text/plain"),
            (String = "text/html"),
        )),
        (status = 404, description = "No log file", body = crate::openapi::schemas::Detail),
        (status = 422, description = "A bad integer or boolean", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn logs(state: web::Data<AppState>, query: QueryMap) -> ApiResult<HttpResponse> {
    let lines = q_int(&query, "lines", 300)?.max(0) as usize;
    let text = q_bool(&query, "text", false)? || !q_bool(&query, "html", true)?;
    let refresh = q_int(&query, "refresh", 0)?;
    let path = state.settings.log_file.clone();
    let body = blocking(move || Ok::<_, TaskFailed>(tail(&path, lines)))
        .await?
        .map_err(|e| ApiError::not_found(format!("log file not found: {e}")))?;
    if text {
        return Ok(HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(body));
    }
    let escaped = body
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let meta = if refresh > 0 {
        format!(
            "<meta http-equiv=\"refresh\" content=\"{}\">",
            refresh.max(3)
        )
    } else {
        String::new()
    };
    Ok(HttpResponse::Ok().content_type("text/html; charset=utf-8").body(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">{meta}<title>ferrolabel logs</title></head>\
         <body><pre>{escaped}</pre></body></html>\n"
    )))
}
