//! A PACS answering garbage: a tiny HTTP server on 127.0.0.1 (spawned here, real sockets)
//! answers each path with a scripted reply; the client must turn every one into a typed
//! error, without a panic or a hang.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use ferrolabel_dicom::AssembleOptions;
use ferrolabel_dicomweb::{DicomWebClient, DicomWebConfig, DicomWebError, FetchMode};

/// What the server does for one path.
#[derive(Clone)]
enum Reply {
    /// Status, Content-Type and body, then close.
    Full(u16, &'static str, Vec<u8>),
    /// Headers promising a body that never comes (the connection stays open).
    Stall,
}

fn read_request(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let body_start = head.find("\r\n\r\n").unwrap() + 4;
    let mut have = buf.len() - body_start;
    while have < len {
        let n = s.read(&mut b).ok()?;
        if n == 0 {
            break;
        }
        have += n;
    }
    let path = head.split_whitespace().nth(1)?.to_string();
    Some(path.split('?').next().unwrap_or("").to_string())
}

/// Starts the server; returns its DICOMweb base URL.
fn serve(replies: HashMap<&'static str, Reply>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let replies = Arc::new(replies);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let replies = replies.clone();
            std::thread::spawn(move || {
                let Some(path) = read_request(&mut s) else {
                    return;
                };
                let reply = replies
                    .get(path.trim_start_matches("/dicom-web"))
                    .cloned()
                    .unwrap_or(Reply::Full(404, "text/plain", b"no such path".to_vec()));
                match reply {
                    Reply::Full(status, ct, body) => {
                        let head = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = s.write_all(head.as_bytes());
                        let _ = s.write_all(&body);
                    }
                    Reply::Stall => {
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: 100\r\n\r\n[",
                        );
                        std::thread::sleep(Duration::from_secs(30));
                    }
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}/dicom-web")
}

const MP: &str = "multipart/related; type=\"application/dicom\"; boundary=bnd";

fn multipart(parts: &[&[u8]], close: bool) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(b"--bnd\r\nContent-Type: application/dicom\r\n\r\n");
        b.extend_from_slice(p);
        b.extend_from_slice(b"\r\n");
    }
    if close {
        b.extend_from_slice(b"--bnd--\r\n");
    }
    b
}

fn bad(err: &DicomWebError, what: &str) {
    assert!(
        matches!(err, DicomWebError::BadAnswer { .. }),
        "{what}: {err:?}"
    );
    assert!(err.is_gateway_error());
}

#[test]
fn garbage_answers_are_typed_errors() {
    let mut r: HashMap<&'static str, Reply> = HashMap::new();
    r.insert(
        "/series",
        Reply::Full(200, "application/dicom+json", b"{not json".to_vec()),
    );
    r.insert(
        "/studies/1.2/series/1/metadata",
        Reply::Full(200, "application/json", b"{\"a\":1}".to_vec()),
    );
    r.insert(
        "/studies/1.2/series/2/metadata",
        Reply::Full(500, "text/plain", b"internal trouble".to_vec()),
    );
    r.insert(
        "/studies/1.2/series/3",
        Reply::Full(200, "application/json", b"[]".to_vec()),
    );
    r.insert(
        "/studies/1.2/series/4",
        Reply::Full(200, MP, multipart(&[b"abc"], false)),
    );
    r.insert(
        "/studies/1.2/series/5",
        Reply::Full(200, MP, multipart(&[b"hello, not DICOM"], true)),
    );
    r.insert(
        "/studies/1.2/series/6",
        Reply::Full(200, MP, b"<html>oops</html>".to_vec()),
    );
    r.insert(
        "/studies/1.2/series/7",
        Reply::Full(200, MP, multipart(&[], true)),
    );
    r.insert(
        "/studies/1.2/series/8",
        Reply::Full(
            200,
            MP,
            b"--bnd\r\nContent-Type: text/html\r\n\r\n<p>\r\n--bnd--\r\n".to_vec(),
        ),
    );
    r.insert("/studies/1.2/series/9/metadata", Reply::Stall);
    r.insert(
        "/studies/1.2",
        Reply::Full(
            200,
            "application/dicom+json",
            br#"{"00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.9"]},"00081197":{"vr":"US","Value":[272]}}]}}"#.to_vec(),
        ),
    );
    r.insert(
        "/studies/1.3",
        Reply::Full(200, "application/dicom+json", b"<xml/>".to_vec()),
    );
    let base = serve(r);
    let mut config = DicomWebConfig::new(&base).unwrap();
    config.read_timeout = Duration::from_millis(500);
    config.request_timeout = Duration::from_secs(2);
    let client = DicomWebClient::new(config.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = AssembleOptions::default();
        bad(&client.list_ct_series().await.unwrap_err(), "bad JSON");
        bad(&client.series_metadata("1.2", "1").await.unwrap_err(), "an object, not an array");
        let err = client.series_metadata("1.2", "2").await.unwrap_err();
        assert!(
            matches!(&err, DicomWebError::Status { status: 500, body, .. } if body == "internal trouble"),
            "{err:?}"
        );
        bad(&client.retrieve_series("1.2", "3", &opts).await.unwrap_err(), "JSON for WADO");
        bad(&client.retrieve_series("1.2", "4", &opts).await.unwrap_err(), "truncated multipart");
        bad(&client.retrieve_series("1.2", "5", &opts).await.unwrap_err(), "a part not DICOM");
        bad(&client.retrieve_series("1.2", "6", &opts).await.unwrap_err(), "HTML as multipart");
        bad(&client.retrieve_series("1.2", "7", &opts).await.unwrap_err(), "no instances");
        let err = client.retrieve_series("1.2", "8", &opts).await.unwrap_err();
        bad(&err, "an HTML part");
        assert!(err.to_string().contains("not application/dicom"), "{err}");
        let err = client.series_metadata("1.2", "9").await.unwrap_err();
        assert!(matches!(err, DicomWebError::Timeout { .. }), "stalled body: {err:?}");
        let err = client.store_instances(Some("1.2"), &[b"x".as_slice()]).await.unwrap_err();
        assert!(matches!(err, DicomWebError::Rejected { failed: 1, .. }), "{err:?}");
        bad(&client.store_instances(Some("1.3"), &[b"x".as_slice()]).await.unwrap_err(), "STOW answer not JSON");
        let err = client.retrieve_series("1.2", "../../x", &opts).await.unwrap_err();
        assert!(matches!(err, DicomWebError::Config(_)), "{err:?}");

        // limits: more instances than allowed is garbage too
        let mut small = config.clone();
        small.max_instances = 0;
        let err = DicomWebClient::new(small)
            .unwrap()
            .retrieve_series("1.2", "5", &opts)
            .await
            .unwrap_err();
        bad(&err, "over the instance limit");
    });
}

/// One CT instance's metadata: `frames` frames of 2 × 2 16-bit pixels.
fn frame_metadata(sop: &str, frames: u32) -> Vec<u8> {
    format!(
        r#"[{{"00080016":{{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.2"]}},
            "00080018":{{"vr":"UI","Value":["{sop}"]}},
            "00080060":{{"vr":"CS","Value":["CT"]}},
            "00280002":{{"vr":"US","Value":[1]}},
            "00280008":{{"vr":"IS","Value":[{frames}]}},
            "00280010":{{"vr":"US","Value":[2]}},
            "00280011":{{"vr":"US","Value":[2]}},
            "00280100":{{"vr":"US","Value":[16]}}}}]"#
    )
    .into_bytes()
}

const MP_FRAMES: &str = "multipart/related; type=\"application/octet-stream\"; boundary=bnd";

fn frame_parts(parts: &[&[u8]], content_type: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(format!("--bnd\r\nContent-Type: {content_type}\r\n\r\n").as_bytes());
        b.extend_from_slice(p);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"--bnd--\r\n");
    b
}

#[test]
fn fetch_by_frame_refuses_answers_that_disagree_with_the_metadata() {
    let mut r: HashMap<&'static str, Reply> = HashMap::new();
    let json = "application/dicom+json";
    // two frames announced, one sent
    r.insert(
        "/studies/1.2/series/11/metadata",
        Reply::Full(200, json, frame_metadata("1.2.11", 2)),
    );
    r.insert(
        "/studies/1.2/series/11/instances/1.2.11/frames/1,2",
        Reply::Full(
            200,
            MP_FRAMES,
            frame_parts(&[&[0u8; 8]], "application/octet-stream"),
        ),
    );
    // an instance without a SOPInstanceUID
    r.insert(
        "/studies/1.2/series/12/metadata",
        Reply::Full(200, json, b"[{}]".to_vec()),
    );
    // a native frame of 3 bytes where 2 x 2 x 16 bits are 8
    r.insert(
        "/studies/1.2/series/13/metadata",
        Reply::Full(200, json, frame_metadata("1.2.13", 1)),
    );
    r.insert(
        "/studies/1.2/series/13/instances/1.2.13/frames/1",
        Reply::Full(
            200,
            MP_FRAMES,
            frame_parts(&[b"abc"], "application/octet-stream"),
        ),
    );
    // a part whose media type names no transfer syntax
    r.insert(
        "/studies/1.2/series/14/metadata",
        Reply::Full(200, json, frame_metadata("1.2.14", 1)),
    );
    r.insert(
        "/studies/1.2/series/14/instances/1.2.14/frames/1",
        Reply::Full(200, MP_FRAMES, frame_parts(&[&[0u8; 8]], "text/html")),
    );
    // NumberOfFrames 0
    r.insert(
        "/studies/1.2/series/15/metadata",
        Reply::Full(200, json, frame_metadata("1.2.15", 0)),
    );
    let base = serve(r);
    let mut config = DicomWebConfig::new(&base).unwrap();
    config.fetch_mode = FetchMode::Frame;
    config.request_timeout = Duration::from_secs(2);
    let client = DicomWebClient::new(config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = AssembleOptions::default();
        for (series, what, says) in [
            ("11", "a missing frame", "1 frames sent, 2 asked for"),
            ("12", "no SOPInstanceUID", "has no SOPInstanceUID"),
            (
                "13",
                "a short native frame",
                "has 3 bytes, its metadata says 8",
            ),
            ("14", "a text/html frame", "names no transfer syntax"),
            ("15", "no frames", "NumberOfFrames 0"),
        ] {
            let err = client
                .retrieve_series("1.2", series, &opts)
                .await
                .unwrap_err();
            bad(&err, what);
            assert!(err.to_string().contains(says), "{what}: {err}");
        }
    });
}

#[test]
fn a_silent_server_times_out() {
    // accepts connections and never answers
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    let mut config = DicomWebConfig::new(&format!("http://127.0.0.1:{port}/dicom-web")).unwrap();
    config.request_timeout = Duration::from_millis(800);
    config.retrieve_timeout = Duration::from_millis(800);
    config.read_timeout = Duration::from_millis(800);
    let client = DicomWebClient::new(config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let err = client.list_ct_series().await.unwrap_err();
        assert!(matches!(err, DicomWebError::Timeout { .. }), "{err:?}");
        let err = client
            .retrieve_series("1.2", "3", &AssembleOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, DicomWebError::Timeout { .. }), "{err:?}");
    });
}
