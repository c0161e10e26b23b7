//! `GET|POST /proxy/dicom/{qido,wado,stow}/{path}` and `/proxy/dicom/{path}`: MONAI Label's
//! DICOMweb proxy (docs/protocol.md §3.11), which OHIF's MONAI Label plugin talks to.
//!
//! With a DICOMweb datastore (`--studies http(s)://HOST/dicom-web`) a request is forwarded to
//! the service root plus the QIDO-RS, WADO-RS or STOW-RS prefix (`/proxy/dicom/{path}` goes to
//! the root itself; a `qido` path ending in `metadata` goes to the WADO-RS prefix, since some
//! OHIF versions ask for metadata there), with the query string as sent and the configured PACS
//! credentials — never the caller's own `Authorization` or cookies. The upstream status and its
//! content headers (`Content-Type` with its multipart boundary, `Content-Length` when known,
//! `Content-Encoding`, caching headers, STOW-RS's `Warning`) come back to the caller.
//!
//! Bodies are streamed both ways, chunk by chunk: the request body goes to the PACS through a
//! bounded channel (a few chunks in flight; a stalled caller fails after the read timeout) and
//! the answer is relayed as it arrives, so a series of any size passes through a few network
//! buffers of memory. Limits: the PACS must accept the connection within the connect timeout
//! and never stall longer than the read timeout (`--dicomweb-read-timeout`) between bytes;
//! a request body may not exceed `--max-upload-mb`. An unreachable PACS answers
//! `502 {"detail"}`, a PACS that times out `504 {"detail"}`; once an answer has started, a
//! failure can only cut the relayed body short.
//!
//! The path after the prefix is the raw path as sent, which [`crate::auth::canonical`] has
//! already checked (no `.`/`..` segment, no `%2F`, no escaped unreserved character); it is
//! checked again here, and the final URL must still lie under the prefix, so no request can
//! reach a resource outside it. The role table (`server/src/auth/rbac.rs`) asks for `user`.
//!
//! Without a DICOMweb datastore every proxy path answers `404 {"detail"}` saying so.

use std::cell::RefCell;
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use ferrolabel_dicomweb::{Auth, DicomWebConfig};
use futures_util::{StreamExt, TryStreamExt};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Request headers passed on to the PACS (never `Authorization`, `Cookie` or hop-by-hop ones).
const REQUEST_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "content-type",
    "content-encoding",
    "if-none-match",
    "if-modified-since",
    "range",
    "if-range",
];

/// Answer headers relayed to the caller (`Content-Length` is set from the body's length).
const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-disposition",
    "content-language",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
    "cache-control",
    "expires",
    "location",
    "retry-after",
    "warning",
];

/// Request body chunks buffered between the caller and the PACS.
const BODY_CHANNEL: usize = 4;

/// `GET|POST /proxy/dicom`: the service root ([`proxy`] serves it).
#[utoipa::path(
    method(get, post),
    path = "/proxy/dicom",
    tag = "proxy",
    description = "MONAI Label's DICOMweb proxy (OHIF talks to it): forwards to the DICOMweb \
        service root of a `--studies http(s)://HOST/dicom-web` datastore with the configured PACS \
        credentials, and relays the answer. Without a DICOMweb datastore every proxy path is 404.",
    request_body(content = Option<String>, content_type = "*/*", description = "Passed on as sent (POST)."),
    responses(
        (status = 200, description = "The PACS's answer, relayed (its status and content headers too)", content_type = "*/*"),
        (status = 404, description = "No DICOMweb datastore", body = crate::openapi::schemas::Detail),
        (status = 413, description = "Body over `--max-upload-mb`", body = crate::openapi::schemas::Detail),
        (status = 502, description = "PACS unreachable", body = crate::openapi::schemas::Detail),
        (status = 504, description = "PACS timed out", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn proxy_root(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> ApiResult<HttpResponse> {
    proxy(req, payload, state).await
}

/// Which of the service's prefixes a proxy path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `/proxy/dicom/qido/...`
    Qido,
    /// `/proxy/dicom/wado/...`
    Wado,
    /// `/proxy/dicom/stow/...`
    Stow,
    /// `/proxy/dicom/...`: the service root.
    Root,
}

/// Splits the raw request path (after `/proxy/dicom`) into the service and the rest, refusing
/// any segment that could leave the prefix once decoded (`.`, `..`, `/`, `\`, empty).
pub fn split_path(raw: &str) -> Result<(Service, String), String> {
    let rest = raw
        .strip_prefix("/proxy/dicom")
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .ok_or_else(|| "not a /proxy/dicom path".to_string())?;
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let (service, path) = match first {
        "qido" => (Service::Qido, tail),
        "wado" => (Service::Wado, tail),
        "stow" => (Service::Stow, tail),
        _ => (Service::Root, rest),
    };
    let segments: Vec<&str> = path.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() && i + 1 != segments.len() {
            return Err("empty path segment in the proxied path".into());
        }
        let decoded = percent_decode(seg);
        if decoded == "." || decoded == ".." || decoded.contains(['/', '\\']) {
            return Err(format!(
                "path segment {seg:?} would leave the DICOMweb prefix"
            ));
        }
    }
    Ok((service, path.to_string()))
}

/// `%XX` escapes decoded (lossily; malformed escapes kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let digit = |c: u8| (c as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (digit(b[i + 1]), digit(b[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The prefix a request goes to.
fn prefix_of<'a>(config: &'a DicomWebConfig, service: Service, path: &str) -> &'a str {
    match service {
        Service::Qido if path.trim_end_matches('/').ends_with("metadata") => &config.wado_prefix,
        Service::Qido => &config.qido_prefix,
        Service::Wado => &config.wado_prefix,
        Service::Stow => &config.stow_prefix,
        Service::Root => "",
    }
}

/// The upstream URL: service root, prefix, path and query; checked to lie under the prefix.
pub fn upstream_url(
    config: &DicomWebConfig,
    service: Service,
    path: &str,
    query: &str,
) -> Result<reqwest::Url, String> {
    let mut root = config.base_url.trim_end_matches('/').to_string();
    let prefix = prefix_of(config, service, path).trim_matches('/');
    if !prefix.is_empty() {
        root.push('/');
        root.push_str(prefix);
    }
    let mut url = root.clone();
    if !path.is_empty() {
        url.push('/');
        url.push_str(path);
    }
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    let parsed = reqwest::Url::parse(&url).map_err(|e| format!("invalid proxied URL: {e}"))?;
    let root = reqwest::Url::parse(&root).map_err(|e| format!("invalid DICOMweb root: {e}"))?;
    let under = parsed.scheme() == root.scheme()
        && parsed.host() == root.host()
        && parsed.port_or_known_default() == root.port_or_known_default()
        && (parsed.path() == root.path()
            || parsed
                .path()
                .starts_with(&format!("{}/", root.path().trim_end_matches('/'))));
    if !under {
        return Err("the proxied path leaves the DICOMweb prefix".into());
    }
    Ok(parsed)
}

thread_local! {
    /// One HTTP client per actix worker thread (its connections live on that worker's runtime).
    static CLIENT: RefCell<Option<reqwest::Client>> = const { RefCell::new(None) };
}

/// This worker's client for `config`'s timeouts (no total timeout: a series may be large; no
/// redirects followed; no proxy from the environment).
fn client(config: &DicomWebConfig) -> ApiResult<reqwest::Client> {
    CLIENT.with(|c| {
        if let Some(client) = c.borrow().as_ref() {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("ferrolabel-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::internal(format!("DICOMweb proxy client: {e}")))?;
        *c.borrow_mut() = Some(client.clone());
        Ok(client)
    })
}

/// A 502 or 504 for a failed exchange with the PACS.
fn gateway_error(e: &reqwest::Error, url: &reqwest::Url, config: &DicomWebConfig) -> ApiError {
    let mut shown = url.clone();
    shown.set_query(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    if e.is_timeout() {
        tracing::warn!(url = %shown, error = %e, "DICOMweb proxy: PACS timed out");
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the PACS did not answer in time ({} s to connect, {} s between bytes): {shown}",
                config.connect_timeout.as_secs(),
                config.read_timeout.as_secs()
            ),
        )
    } else {
        let mut cause = String::new();
        let mut src: Option<&dyn std::error::Error> = Some(e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        tracing::warn!(url = %shown, error = %e, cause = %cause, "DICOMweb proxy: PACS unreachable");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the PACS is unreachable ({shown}): {cause}"),
        )
    }
}

/// Feeds the caller's body into a bounded channel on this worker (the body stream cannot leave
/// it), failing a body over `limit` bytes or one that stalls longer than `idle`.
fn pump_body(mut payload: web::Payload, limit: u64, idle: Duration) -> reqwest::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<web::Bytes, std::io::Error>>(BODY_CHANNEL);
    actix_web::rt::spawn(async move {
        let mut total = 0u64;
        loop {
            let item = match tokio::time::timeout(idle, payload.next()).await {
                Ok(Some(Ok(chunk))) => {
                    total += chunk.len() as u64;
                    if total > limit {
                        Err(std::io::Error::other(format!(
                            "request body over the {limit}-byte upload limit"
                        )))
                    } else {
                        Ok(chunk)
                    }
                }
                Ok(Some(Err(e))) => Err(std::io::Error::other(e.to_string())),
                Ok(None) => return,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body stalled",
                )),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    reqwest::Body::wrap_stream(stream)
}

/// The handler of every proxy path.
#[utoipa::path(
    method(get, post),
    path = "/proxy/dicom/{path}",
    tag = "proxy",
    description = "Forwards `qido/...` to the QIDO-RS prefix, `wado/...` to WADO-RS, `stow/...` to \
        STOW-RS and anything else to the service root, with the query string as sent. `path` may \
        span several segments (`qido/studies/1.2.3/series`); dot segments and `%2F` are refused.",
    params(("path" = String, Path, description = "The path under the service (several segments allowed)")),
    request_body(content = Option<String>, content_type = "*/*", description = "Passed on as sent (POST)."),
    responses(
        (status = 200, description = "The PACS's answer, relayed (its status and content headers too)", content_type = "*/*"),
        (status = 404, description = "No DICOMweb datastore", body = crate::openapi::schemas::Detail),
        (status = 413, description = "Body over `--max-upload-mb`", body = crate::openapi::schemas::Detail),
        (status = 502, description = "PACS unreachable", body = crate::openapi::schemas::Detail),
        (status = 504, description = "PACS timed out", body = crate::openapi::schemas::Detail),
    )
)]
pub async fn proxy(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> ApiResult<HttpResponse> {
    let Some(config) = state.settings.dicomweb.as_ref() else {
        return Err(ApiError::not_found(
            "the DICOMweb proxy is served only with a DICOMweb datastore \
             (--studies http(s)://HOST/dicom-web); this server's studies are a local folder",
        ));
    };
    let (service, path) = split_path(req.path()).map_err(ApiError::bad_request)?;
    let url =
        upstream_url(config, service, &path, req.query_string()).map_err(ApiError::bad_request)?;
    let post = req.method() == actix_web::http::Method::POST;

    let mut headers = reqwest::header::HeaderMap::new();
    for name in REQUEST_HEADERS {
        for v in req.headers().get_all(*name) {
            if let (Ok(n), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_bytes(v.as_bytes()),
            ) {
                headers.append(n, v);
            }
        }
    }
    let client = client(config)?;
    let mut upstream = client.request(
        if post {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        },
        url.clone(),
    );
    upstream = match &config.auth {
        Auth::None => upstream,
        Auth::Basic { username, password } => upstream.basic_auth(username, Some(password)),
        Auth::Bearer(token) => upstream.bearer_auth(token),
    };
    if post {
        let limit = state.settings.max_upload_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(n) = declared {
            if n > limit {
                return Err(ApiError::too_large(format!(
                    "request body of {n} bytes is over the {limit}-byte upload limit (--max-upload-mb)"
                )));
            }
            // keep the caller's framing: a PACS may not take chunked uploads
            headers.insert(reqwest::header::CONTENT_LENGTH, n.into());
        }
        upstream = upstream.body(pump_body(payload, limit, config.read_timeout));
    }
    let answer = upstream
        .headers(headers)
        .send()
        .await
        .map_err(|e| gateway_error(&e, &url, config))?;

    let status = StatusCode::from_u16(answer.status().as_u16())
        .map_err(|_| ApiError::new(StatusCode::BAD_GATEWAY, "the PACS answered a bad status"))?;
    let mut out = HttpResponse::build(status);
    for name in RESPONSE_HEADERS {
        for v in answer.headers().get_all(*name) {
            if let Ok(v) = header::HeaderValue::from_bytes(v.as_bytes()) {
                out.append_header((*name, v));
            }
        }
    }
    let length = answer
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = answer.bytes_stream().map_err(|e| {
        tracing::warn!(error = %e, "DICOMweb proxy: the PACS's answer broke off");
        e
    });
    Ok(match length {
        Some(n) => out.body(SizedStream::new(n, body)),
        None => out.streaming(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DicomWebConfig {
        let mut c = DicomWebConfig::new("http://pacs:8042/dicom-web").unwrap();
        c.qido_prefix = "qido-rs".into();
        c.wado_prefix = "/wado-rs/".into();
        c
    }

    #[test]
    fn paths_map_to_prefixes() {
        let c = cfg();
        let u = |p: &str, q: &str| {
            let (s, rest) = split_path(p).unwrap();
            upstream_url(&c, s, &rest, q).unwrap().to_string()
        };
        assert_eq!(
            u("/proxy/dicom/qido/studies", "limit=2&includefield=0020000D"),
            "http://pacs:8042/dicom-web/qido-rs/studies?limit=2&includefield=0020000D"
        );
        assert_eq!(
            u("/proxy/dicom/qido/studies/1.2/series/3.4/metadata", ""),
            "http://pacs:8042/dicom-web/wado-rs/studies/1.2/series/3.4/metadata"
        );
        assert_eq!(
            u("/proxy/dicom/wado/studies/1.2", ""),
            "http://pacs:8042/dicom-web/wado-rs/studies/1.2"
        );
        assert_eq!(
            u("/proxy/dicom/stow/studies", ""),
            "http://pacs:8042/dicom-web/studies"
        );
        assert_eq!(
            u("/proxy/dicom/studies/1.2/series", "Modality=CT"),
            "http://pacs:8042/dicom-web/studies/1.2/series?Modality=CT"
        );
        assert_eq!(
            u("/proxy/dicom/qido", ""),
            "http://pacs:8042/dicom-web/qido-rs"
        );
        assert_eq!(u("/proxy/dicom", ""), "http://pacs:8042/dicom-web");
        assert_eq!(
            u("/proxy/dicom/studies/a%20b", ""),
            "http://pacs:8042/dicom-web/studies/a%20b"
        );
    }

    #[test]
    fn paths_cannot_leave_the_prefix() {
        for p in [
            "/proxy/dicom/qido/../system",
            "/proxy/dicom/qido/%2e%2E/system",
            "/proxy/dicom/wado/studies/%2F..%2Fsystem",
            "/proxy/dicom/../../system",
            "/proxy/dicom/qido/a/./b",
            "/proxy/dicom/qido/a%5C..%5Cb",
            "/proxy/dicom/qido//system",
            "/proxy/dicom/%2e%2e",
        ] {
            assert!(split_path(p).is_err(), "{p}");
        }
        // a path that does not start under the proxy at all
        assert!(split_path("/proxyx/dicom").is_err());
        assert!(split_path("/proxy/dicomx/studies").is_err());
    }
}
