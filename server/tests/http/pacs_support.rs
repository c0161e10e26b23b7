//! Support of tests/pacs.rs: the Orthanc harness and DICOM series of `ferrolabel-testkit` (a
//! real Orthanc on loopback that can be stopped and started again on the same port and storage;
//! under `CI=true` a missing Orthanc fails the test), QIDO/WADO reads of it, and a `ferrolabel`
//! started with `--studies http://127.0.0.1:PORT/dicom-web`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use ferrolabel_testkit::{
    free_port, shared_series_with_uids, write_small_series, Orthanc, Written, PASSWORD, USER,
};

use crate::common;

/// Reads of a test [`Orthanc`] that decode DICOMweb answers.
pub trait PacsOrthanc {
    /// QIDO-RS series of `study` with `Modality=SEG` (their SeriesInstanceUIDs).
    fn seg_series(&self, study: &str) -> Vec<String>;
    /// The instances of a series, WADO-RS (Part 10 bytes each).
    fn retrieve(&self, study: &str, series: &str) -> Vec<Vec<u8>>;
}

impl PacsOrthanc for Orthanc {
    fn seg_series(&self, study: &str) -> Vec<String> {
        let r = self
            .get(&format!("/dicom-web/studies/{study}/series?Modality=SEG"))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "QIDO: {}", r.status());
        let v: serde_json::Value = r.json().unwrap_or(serde_json::Value::Array(vec![]));
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["0020000E"]["Value"][0].as_str().map(String::from))
            .collect()
    }

    fn retrieve(&self, study: &str, series: &str) -> Vec<Vec<u8>> {
        let r = self
            .get(&format!("/dicom-web/studies/{study}/series/{series}"))
            .header(
                "Accept",
                "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
            )
            .send()
            .unwrap();
        assert!(r.status().is_success(), "WADO: {}", r.status());
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let boundary = common::boundary_of(&ct);
        let body = r.bytes().unwrap();
        common::parse_multipart(&body, &boundary)
            .into_iter()
            .map(|p| p.body)
            .collect()
    }
}

/// A `ferrolabel` serving the PACS `orthanc` (basic auth, cache in a temporary folder, the
/// small test bundle), with `env` added.
pub struct PacsServer {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The DICOMweb cache folder (series/ and datastore/).
    pub cache: tempfile::TempDir,
    log: PathBuf,
    /// Blocking HTTP client.
    pub http: reqwest::blocking::Client,
}

impl PacsServer {
    /// Starts the server and waits until `/info/` answers.
    pub fn start(orthanc: &Orthanc, env: &[(&str, &str)]) -> PacsServer {
        let cache = tempfile::Builder::new()
            .prefix("ferrolabel-pacs-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let log = cache.path().join("server-stderr.txt");
        let mut cmd = Command::new(common::BIN);
        cmd.arg("start_server")
            .arg("--app")
            .arg(common::repo().join("apps/wholebody"))
            .arg("--studies")
            .arg(orthanc.base_url())
            .arg("--conf")
            .arg("bundle_dir")
            .arg(common::bundle_with_weights())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--threads",
                "1",
            ])
            .env("RUST_LOG", "info")
            .env("MONAI_LABEL_DICOMWEB_USERNAME", USER)
            .env("MONAI_LABEL_DICOMWEB_PASSWORD", PASSWORD)
            .env("MONAI_LABEL_DICOMWEB_CACHE_PATH", cache.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        let mut s = PacsServer {
            child,
            base: format!("http://127.0.0.1:{port}"),
            cache,
            log,
            http,
        };
        let t0 = Instant::now();
        loop {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("server exited with {status}: {}", s.stderr());
            }
            if s.http
                .get(s.url("/info/"))
                .timeout(Duration::from_secs(2))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "server not ready: {}",
                s.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An absolute URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET, returning status and JSON (`null` when the body is not JSON).
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.http.get(self.url(path)).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for PacsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
