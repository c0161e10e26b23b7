//! A local S3 server for the object-storage tests: moto's server (`moto[server]` from PyPI,
//! pinned in `scripts/requirements-test.txt`) on 127.0.0.1 with a free port, killed on drop.
//!
//! moto runs `moto.server`'s `main` behind a two-line Python guard that exits when its stdin (a
//! pipe whose only writer is the test process) closes: a server kept in a `static`
//! ([`S3Server::shared`]) or left by a test process that was killed goes away with it.
//!
//! The Python is `$FERROLABEL_PYTHON`, else the repository's `.venv/bin/python`, else
//! `python3`. Without moto, [`S3Server::start`] prints why and returns `None` on a developer
//! machine, but panics under `CI=true`: the tests never skip in CI.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{free_port, in_ci, repo_root};

/// The credentials the tests use (moto accepts any).
pub const S3_KEY_ID: &str = "ferrolabel-test";
/// The secret of [`S3_KEY_ID`].
pub const S3_SECRET: &str = "ferrolabel-test-secret";
/// The region the tests use.
pub const S3_REGION: &str = "us-east-1";

/// A running moto S3 server on 127.0.0.1; killed on drop.
pub struct S3Server {
    child: Child,
    /// Closing it (drop, or the test process's exit) makes moto exit.
    guard_pipe: Option<ChildStdin>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its log (`moto.log`).
    pub dir: tempfile::TempDir,
}

/// `python -c GUARD PORT`: moto's server on 127.0.0.1:PORT until stdin closes.
const GUARD: &str = "import os, sys, threading\n\
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()\n\
from moto.server import main\n\
main(['-H', '127.0.0.1', '-p', sys.argv[1]])\n";

/// The Python that runs moto.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FERROLABEL_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

impl S3Server {
    /// Starts moto's server and waits until it answers; `None` (with a message) when moto is
    /// not installed, except under `CI=true`, where that panics.
    pub fn start() -> Option<S3Server> {
        let py = python();
        let has_moto = Command::new(&py)
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_moto {
            let why = format!(
                "moto not importable by {}: pip install -r scripts/requirements-test.txt \
                 (moto[server])",
                py.display()
            );
            if in_ci() {
                panic!("{why}");
            }
            eprintln!("skipping the object-storage test: {why}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ferrolabel-moto-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let mut child = Command::new(&py)
            .args(["-c", GUARD, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting moto.server");
        let stdin = child.stdin.take();
        let mut s = S3Server {
            child,
            guard_pipe: stdin,
            port,
            dir,
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let t0 = Instant::now();
        loop {
            if let Ok(r) = http.get(s.endpoint()).send() {
                if r.status().is_success() {
                    break;
                }
            }
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("moto exited ({status}) at start:\n{}", s.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "moto did not answer within 60 s:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(s)
    }

    /// One server for the whole test binary (started at the first call; gone when the binary
    /// exits); `None` as [`S3Server::start`].
    pub fn shared() -> Option<&'static S3Server> {
        static SERVER: OnceLock<Option<S3Server>> = OnceLock::new();
        SERVER.get_or_init(S3Server::start).as_ref()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (path-style `PUT /<bucket>`, which moto accepts unsigned).
    pub fn create_bucket(&self, bucket: &str) {
        let r = reqwest::blocking::Client::new()
            .put(format!("{}/{bucket}", self.endpoint()))
            .send()
            .expect("PUT bucket");
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }

    /// The `AWS_*` settings that point a client at this server (as environment variables of a
    /// child process, or as `StorageOptions::settings`).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", S3_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET.into()),
            ("AWS_REGION", S3_REGION.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// moto's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Stops the server (what a storage outage looks like to a client).
    pub fn stop(&mut self) {
        self.guard_pipe = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
