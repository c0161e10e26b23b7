//! Support of `tests/proxy.rs`: the Orthanc harness and small CT instances of
//! `ferrolabel-testkit` (a real Orthanc on loopback, killed on drop; under `CI=true` a missing
//! Orthanc fails the test), raw HTTP helpers, and the `ferrolabel` binary started with
//! `--studies http://127.0.0.1:PORT/dicom-web`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use ferrolabel_testkit::{
    ct_slice, free_port, new_uid, stow_body, Orthanc, PASSWORD as PACS_PASSWORD, USER as PACS_USER,
};

/// The boundary parameter of a multipart content type.
pub fn boundary_of(content_type: &str) -> String {
    content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no boundary in {content_type:?}"))
}

/// `body` with every occurrence of `from` replaced by `to`.
pub fn replace_bytes(body: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// A raw HTTP/1.1 GET of `path` exactly as written (no client-side normalisation of `..`):
/// (status, body).
pub fn raw_get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A `ferrolabel` server whose studies are a DICOMweb service; killed on drop.
pub struct PacsServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    dir: tempfile::TempDir,
    /// A blocking client.
    pub http: reqwest::blocking::Client,
}

impl PacsServer {
    /// Starts `bin` with `--studies <dicomweb_root>`, the PACS credentials, a private cache
    /// folder and `extra` arguments, and waits until it answers.
    pub fn start(
        bin: &str,
        app: &Path,
        bundle: &Path,
        dicomweb_root: &str,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ferrolabel-proxy-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let log = dir.path().join("server-stderr.txt");
        let child = Command::new(bin)
            .arg("start_server")
            .arg("--app")
            .arg(app)
            .args(["--studies", dicomweb_root])
            .arg("--conf")
            .arg("bundle_dir")
            .arg(bundle)
            .args(["--dicomweb-username", PACS_USER])
            .args(["--dicomweb-password", PACS_PASSWORD])
            .arg("--dicomweb-cache-path")
            .arg(dir.path().join("cache"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--threads", "1"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let mut s = PacsServer {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            http,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let log = self.dir.path().join("server-stderr.txt");
        crate::common::spawned::wait_ready(&mut self.child, &self.http, &self.base, &log);
    }

    /// Resets the server's peak resident size (`VmHWM`; `/proc/PID/clear_refs` 5).
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
    }

    /// (`VmRSS`, `VmHWM`) of the server, in bytes.
    pub fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {key} in /proc/PID/status"))
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The server's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server-stderr.txt")).unwrap_or_default()
    }

    /// An absolute URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for PacsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
