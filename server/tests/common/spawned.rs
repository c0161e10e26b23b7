//! The spawned server: `ferrolabel start_server` as a child process on a free port, for the
//! tests where the process boundary is the point (a SIGKILLed server, a training worker that
//! must not outlive it, the server's own resident size).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::training::{gunzip, wait_until};
use super::{example_ct, free_port, repo, Opts, BIN};

/// A running server; killed on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The studies folder.
    pub studies: tempfile::TempDir,
    log: PathBuf,
    /// Blocking HTTP client.
    pub http: reqwest::blocking::Client,
}

impl Server {
    /// Starts a server and waits until `/info/` answers.
    pub fn start(opts: Opts) -> Server {
        let studies = tempfile::Builder::new()
            .prefix("ferrolabel-studies-")
            .tempdir()
            .unwrap();
        if opts.with_example {
            std::fs::copy(example_ct(), studies.path().join("example_ct.nii.gz")).unwrap();
        }
        for (name, bytes) in &opts.files {
            std::fs::write(studies.path().join(name), bytes).unwrap();
        }
        let port = free_port();
        let log = studies.path().join("server-stderr.txt");
        let mut cmd = Command::new(BIN);
        cmd.arg("start_server")
            .arg("--app")
            .arg(repo().join("apps/wholebody"))
            .arg("--studies")
            .arg(studies.path())
            .arg("--conf")
            .arg("bundle_dir")
            .arg(&opts.bundle)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--threads",
                "1",
            ])
            .args(&opts.args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap();
        // with `--ssl-certfile CERT` the server speaks HTTPS, and the client trusts CERT
        let cert = opts
            .args
            .iter()
            .position(|a| a == "--ssl-certfile")
            .and_then(|i| opts.args.get(i + 1));
        let mut http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(600));
        if let Some(cert) = cert {
            let pem = std::fs::read(cert).unwrap();
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        let http = http.build().unwrap();
        let scheme = if cert.is_some() { "https" } else { "http" };
        let mut server = Server {
            child,
            base: format!("{scheme}://127.0.0.1:{port}"),
            studies,
            log,
            http,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        wait_ready(&mut self.child, &self.http, &self.base, &self.log);
    }

    /// Kills the server process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's stderr so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// An absolute URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET, returning status and JSON.
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// Saves `bytes` as the `final` label of `image` (200 expected).
    pub fn save_final(&self, image: &str, bytes: Vec<u8>) {
        let form = super::form_with_file("label", "label.nii.gz", bytes, "{}");
        let r = self
            .http
            .put(self.url(&format!("/datastore/label?image={image}&tag=final")))
            .multipart(form)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    }

    /// `POST /train/{model}` with the training options `body`.
    pub fn start_training(&self, model: &str, body: &Value) -> reqwest::blocking::Response {
        self.http
            .post(self.url(&format!("/train/{model}")))
            .json(body)
            .send()
            .unwrap()
    }

    /// `POST /infer/{model}?image={image}` at low resolution: the label, gunzipped.
    pub fn infer_lowres(&self, model: &str, image: &str) -> Vec<u8> {
        let form =
            reqwest::blocking::multipart::Form::new().text("params", r#"{"highres": false}"#);
        let r = self
            .http
            .post(self.url(&format!("/infer/{model}?image={image}&output=image")))
            .multipart(form)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        gunzip(&r.bytes().unwrap())
    }

    /// Waits (up to `limit`) until the latest training task has made `steps` optimiser steps.
    pub fn wait_train_steps(&self, steps: u64, limit: Duration) {
        wait_until(&format!("{steps} training step(s)"), limit, || {
            self.get_json("/train/").1["progress"]["done"]
                .as_u64()
                .unwrap_or(0)
                >= steps
        });
    }

    /// Waits (up to `limit`) until the latest training task is no longer `RUNNING`; answers it.
    pub fn wait_train_end(&self, limit: Duration) -> Value {
        let mut last = Value::Null;
        wait_until("the training to end", limit, || {
            last = self.get_json("/train/").1;
            last["status"] != "RUNNING"
        });
        last
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the spawned server `child` answers `GET {base}/info/` (2xx, or 401 when
/// authentication is on); panics with its stderr (the file `log`) when it exits or is not up
/// within 120 s.
pub fn wait_ready(child: &mut Child, http: &reqwest::blocking::Client, base: &str, log: &Path) {
    let stderr = || std::fs::read_to_string(log).unwrap_or_default();
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("server exited with {status}: {}", stderr());
        }
        if let Ok(r) = http
            .get(format!("{base}/info/"))
            .timeout(Duration::from_secs(2))
            .send()
        {
            // 401: authentication is on, the server is up
            if r.status().is_success() || r.status() == 401 {
                return;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "server not ready: {}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
