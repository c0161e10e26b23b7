//! The server's form reader (`ferrolabel-forms`) on arbitrary request bodies: `multipart/form-data` through
//! actix-multipart and the upload loop (temp files, size cap, text fields), and the
//! urlencoded parser.
//!
//! Input layout: byte 0 picks the chunk size the body arrives in (0: one chunk), byte 1 the
//! upload limit, then the `Content-Type` value up to the first `\n`, then the body.
//!
//! Invariants: no panic or hang; an accepted form holds at most the limit in bytes, its file
//! parts are on disk with the sizes reported and valid extensions; whatever the outcome, no
//! temp file is left once the form is dropped.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use actix_web::http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use actix_web::web::Bytes;
use ferrolabel_datastore::ids::{self, upload_name};
use ferrolabel_forms::{parse_multipart, parse_urlencoded, FormError, UploadLimits};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fn tmp_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("ferrolabel-fuzz-multipart-")
            .tempdir()
            .expect("a temp dir")
    })
    .path()
}

fn left_over(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let chunk = data[0] as usize;
    let max_bytes = match data[1] {
        0 => u64::MAX >> 1,
        b => b as u64 * 16,
    };
    let rest = &data[2..];
    let (ct, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(ct) = HeaderValue::from_bytes(ct) else {
        return; // the HTTP layer refuses such headers before any handler runs
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, ct);
    let chunks: Vec<Result<Bytes, actix_web::error::PayloadError>> = if chunk == 0 {
        vec![Ok(Bytes::copy_from_slice(body))]
    } else {
        body.chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    };
    let dir = tmp_dir();
    let limits = UploadLimits {
        tmp_dir: dir,
        max_bytes,
    };
    let result = runtime().block_on(parse_multipart(
        &headers,
        futures_util::stream::iter(chunks),
        limits,
        upload_name,
    ));
    match result {
        Ok(form) => {
            let mut total = 0u64;
            for (_, text) in &form.fields {
                total += text.len() as u64;
            }
            for f in &form.files {
                let on_disk = std::fs::metadata(f.path())
                    .expect("the part's temp file")
                    .len();
                assert_eq!(
                    on_disk, f.size,
                    "temp file size differs from bytes received"
                );
                assert!(ids::validate_ext(&f.ext).is_ok(), "bad ext {:?}", f.ext);
                assert!(!f.filename.contains('/') && !f.filename.contains('\\'));
                total += f.size;
            }
            assert!(
                total <= max_bytes,
                "{total} bytes accepted over a {max_bytes} limit"
            );
            assert_eq!(left_over(dir), form.files.len());
            drop(form);
        }
        Err(FormError::TooLarge { max_bytes: m }) => {
            assert_eq!(m, max_bytes);
            assert!(total_fits(max_bytes, body.len()))
        }
        Err(FormError::Unprocessable(m)) => panic!("a form body is never a 422: {m}"),
        Err(FormError::BadRequest(m)) => assert!(!m.is_empty()),
        Err(FormError::Io(e)) => panic!("temp file I/O failed: {e}"),
    }
    assert_eq!(left_over(dir), 0, "a temp file outlived its form");
    let _ = parse_urlencoded(body);
});

/// A 413 is only right when the body is larger than the limit.
fn total_fits(max_bytes: u64, body_len: usize) -> bool {
    body_len as u64 > max_bytes
}
