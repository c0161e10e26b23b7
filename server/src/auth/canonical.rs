//! The canonical-path rule: which request paths are served at all.
//!
//! actix-web's router matches a *decoded* form of the path: it decodes every percent-escape
//! except those of `%`, `/` and `+` (so `/%64atastore/image` is routed to `/datastore/image`),
//! while [`actix_web::HttpRequest::path`] is the raw one. To keep the role check, the audit
//! classification and the router on one reading of the path, [`super::AuthLayer`]
//! 1. refuses, before routing, any path that is not in canonical form ([`check`]) with
//!    `400 {"detail": "..."}`, and
//! 2. authorises and audits on the path the router matches ([`routed_path`]).
//!
//! A canonical path starts with `/` and has
//! * no percent-escape of an unreserved character (`A-Z a-z 0-9 - . _ ~`), of `/`, or of a
//!   control character, no malformed escape (`%` not followed by two hex digits), and escapes
//!   that decode to UTF-8;
//! * no empty segment (`//`; a single trailing `/` is allowed), no `.` or `..` segment;
//! * no `;` (path parameters).
//!
//! Escapes of other characters stay allowed (a model name or session id with a space, `%`,
//! `+`, `:` or a non-ASCII letter is sent encoded by every client), and so does anything in
//! the query string: only the path is checked.

use actix_web::dev::ServiceRequest;

/// Why `path` (a request path as sent, without the query) is not canonical; `Ok` when it is.
pub fn check(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("the request path must start with '/'".into());
    }
    if path.contains(';') {
        return Err("path parameters (';') are not accepted".into());
    }
    let decoded = decode_escapes(path)?;
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() && i != last {
            return Err("empty path segments ('//') are not accepted".into());
        }
        if *seg == "." || *seg == ".." {
            return Err("dot segments ('.', '..') are not accepted in the path".into());
        }
    }
    // the escapes were checked one by one; the bytes they make must also be text
    if std::str::from_utf8(&decoded).is_err() {
        return Err("percent-escapes in the path must encode UTF-8".into());
    }
    Ok(())
}

/// Whether `b` is an RFC 3986 unreserved character.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The bytes of `path` with every escape decoded, refusing the escapes [`check`] refuses.
fn decode_escapes(path: &str) -> Result<Vec<u8>, String> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(b.get(i + 1)), hex(b.get(i + 2))) else {
            return Err("malformed percent-escape in the path".into());
        };
        let c = (hi * 16 + lo) as u8;
        let escape = &path[i..i + 3];
        if unreserved(c) {
            return Err(format!(
                "percent-escape {escape} of an unreserved character ({:?}) in the path: send it as is",
                c as char
            ));
        }
        if c == b'/' {
            return Err(format!(
                "percent-escape {escape} of '/' in the path is not accepted"
            ));
        }
        if c < 0x20 || c == 0x7f {
            return Err(format!(
                "percent-escape {escape} of a control character in the path"
            ));
        }
        out.push(c);
        i += 3;
    }
    Ok(out)
}

/// The path the router matches `req` against: the raw path with the router's decoding.
///
/// Before routing (where [`super::AuthLayer`] runs) this is the whole path.
pub fn routed_path(req: &ServiceRequest) -> &str {
    req.match_info().as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::dev::Url;
    use actix_web::http::Uri;

    fn routed(raw: &str) -> String {
        Url::new(raw.parse::<Uri>().unwrap()).path().to_string()
    }

    #[test]
    fn canonical_paths_pass() {
        for p in [
            "/",
            "/info/",
            "/info",
            "/datastore/image",
            "/infer/wholeBody_ct_segmentation",
            "/session/3f2a-b~c.d",
            "/infer/a%20b",
            "/infer/a%2Bb",
            "/infer/100%25",
            "/infer/a%3Ab",
            "/infer/%C3%A9t%C3%A9",
            "/infer/a+b",
            "/favicon.ico",
            "/x/.../y",
        ] {
            assert_eq!(check(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn non_canonical_paths_are_refused() {
        for p in [
            "/%64atastore/image",
            "/%6Cogs/",
            "/%6cogs/",
            "/datastore%2Fimage",
            "/datastore%2fimage",
            "/datastore/image%2F",
            "/datastore/%2e%2e/logs",
            "//datastore/image",
            "/datastore//image",
            "/datastore/image//",
            "/./datastore/image",
            "/datastore/./image",
            "/x/../datastore/image",
            "/datastore/image/.",
            "/datastore/image/..",
            "/datastore/image;x=1",
            "/datastore;/image",
            "/infer/a%zz",
            "/infer/a%2",
            "/infer/a%",
            "/infer/%FF",
            "/infer/%C3",
            "/infer/a%00b",
            "/infer/a%0Ab",
            "/infer/a%7F",
            "*",
            "",
        ] {
            let err = check(p).expect_err(p);
            assert!(!err.is_empty());
        }
    }

    #[test]
    fn after_the_check_the_router_reads_the_path_as_sent_up_to_encoded_characters() {
        // actix decodes escapes of unreserved characters: the attack the check stops
        assert_eq!(routed("/%64atastore/image"), "/datastore/image");
        assert_eq!(routed("/%6cogs/"), "/logs/");
        // but keeps '/', '%' and '+' encoded, and does not touch dot segments or '//'
        assert_eq!(routed("/datastore%2Fimage"), "/datastore%2Fimage");
        assert_eq!(routed("/a%25b%2Bc"), "/a%25b%2Bc");
        assert_eq!(routed("/x/../datastore//image"), "/x/../datastore//image");
        // a canonical path routes to the raw path with only its encoded characters decoded
        assert_eq!(routed("/infer/a%20b%3A"), "/infer/a b:");
        assert_eq!(routed("/datastore/image/"), "/datastore/image/");
    }
}
