//! Test support: a bundle with small seeded weights, a temp studies folder, and the real
//! `ferrolabel` binary started on a free port.

#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ferrolabel");

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The small example CT (122 x 101 x 30).
pub fn example_ct() -> PathBuf {
    repo().join("data/totalseg/example_ct_sm.nii.gz")
}

/// Copies the bundle configs into `dir` with `init_filters` 8 (fast tests).
fn make_bundle(dir: &Path) {
    let src = repo().join("apps/wholebody/model/wholeBody_ct_segmentation/configs");
    let dst = dir.join("configs");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    let inf = dst.join("inference.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&inf).unwrap()).unwrap();
    v["network_def"]["init_filters"] = 8.into();
    std::fs::write(&inf, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// A bundle with seeded random weights (made once per test binary, by `ferrolabel dev make-weights`).
pub fn bundle_with_weights() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("ferrolabel-bundle-")
            .tempdir()
            .unwrap()
            .keep();
        make_bundle(&dir);
        let out = Command::new(BIN)
            .args(["dev", "make-weights", "--bundle"])
            .arg(&dir)
            .args(["--seed", "7"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make-weights failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(dir.join("models/model.pt").is_file());
        assert!(dir.join("models/model_lowres.pt").is_file());
        dir
    })
}

/// A private copy of [`bundle_with_weights`] (for tests that replace or delete weights).
pub fn bundle_copy() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ferrolabel-bundlecopy-")
        .tempdir()
        .unwrap();
    let src = bundle_with_weights();
    for sub in ["configs", "models"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(src.join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// A fresh bundle folder without `models/`.
pub fn bundle_without_weights() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ferrolabel-noweights-")
        .tempdir()
        .unwrap();
    make_bundle(dir.path());
    dir
}

/// How to start a server.
pub struct Opts {
    /// The bundle folder.
    pub bundle: PathBuf,
    /// Copy the example CT into the studies folder as `example_ct.nii.gz`.
    pub with_example: bool,
    /// Extra CLI arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Files written into the studies folder before start: (name, bytes).
    pub files: Vec<(String, Vec<u8>)>,
}

impl Opts {
    /// The default: weights, the example image.
    pub fn new() -> Self {
        Opts {
            bundle: bundle_with_weights().to_path_buf(),
            with_example: true,
            args: vec![],
            env: vec![],
            files: vec![],
        }
    }
}

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
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
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("server exited with {status}: {}", self.stderr());
            }
            if let Ok(r) = self
                .http
                .get(self.url("/info/"))
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
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A multipart form with a `params` field and one file part.
pub fn form_with_file(
    field: &str,
    filename: &str,
    bytes: Vec<u8>,
    params: &str,
) -> reqwest::blocking::multipart::Form {
    reqwest::blocking::multipart::Form::new()
        .text("params", params.to_string())
        .part(
            field.to_string(),
            reqwest::blocking::multipart::Part::bytes(bytes).file_name(filename.to_string()),
        )
}

/// One part of a multipart body.
#[derive(Debug)]
pub struct Part {
    /// Raw header block.
    pub headers: String,
    /// The body.
    pub body: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Splits a multipart body by `boundary`; checks the closing `--B--\r\n`.
pub fn parse_multipart(body: &[u8], boundary: &str) -> Vec<Part> {
    let delim = format!("--{boundary}");
    assert!(
        body.starts_with(delim.as_bytes()),
        "body must start with the boundary"
    );
    assert!(
        body.ends_with(format!("\r\n--{boundary}--\r\n").as_bytes()),
        "closing delimiter"
    );
    let mut parts = Vec::new();
    let mut pos = delim.len() + 2;
    let sep = format!("\r\n--{boundary}");
    while let Some(end) = find(body, sep.as_bytes(), pos) {
        let part = &body[pos..end];
        let h = find(part, b"\r\n\r\n", 0).expect("part headers");
        parts.push(Part {
            headers: String::from_utf8(part[..h].to_vec()).unwrap(),
            body: part[h + 4..].to_vec(),
        });
        pos = end + sep.len() + 2;
        if body[end + sep.len()..].starts_with(b"--") {
            break;
        }
    }
    parts
}

/// The `detail` string of an error body.
pub fn detail(v: &Value) -> &str {
    v["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail string in {v}"))
}

/// A small synthetic CT (48 x 48 x 24 voxels at 2 mm): one sliding window at both resolutions.
pub fn small_ct_bytes() -> Vec<u8> {
    let dims = [48usize, 48, 24];
    let mut data = Vec::with_capacity(dims.iter().product());
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                let (x, y, z) = (i as f32 - 24.0, j as f32 - 24.0, k as f32 - 12.0);
                let r = (x * x + y * y + 4.0 * z * z).sqrt();
                data.push(if r < 14.0 {
                    40.0 + (i % 7) as f32 * 5.0
                } else if r < 20.0 {
                    400.0
                } else {
                    -1000.0
                });
            }
        }
    }
    let affine = [
        [2.0, 0.0, 0.0, -48.0],
        [0.0, 2.0, 0.0, -48.0],
        [0.0, 0.0, 2.0, -24.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    ferrolabel_imaging::encode_nifti_f32(&data, dims, &affine, true).unwrap()
}

/// Decodes a label file and returns its grid.
pub fn label_dims(bytes: &[u8], name: &str) -> [usize; 3] {
    let v =
        ferrolabel_imaging::read_volume_bytes(bytes, name, &ferrolabel_imaging::Limits::default())
            .unwrap_or_else(|e| panic!("{name} does not decode: {e}"));
    assert!(
        v.data
            .iter()
            .all(|&x| (0.0..=104.0).contains(&x) && x.fract() == 0.0),
        "label values 0..=104"
    );
    v.dims
}

/// The boundary of a `multipart/form-data; boundary=...` content type.
pub fn boundary_of(content_type: &str) -> String {
    content_type
        .split("boundary=")
        .nth(1)
        .expect("boundary")
        .trim_matches('"')
        .to_string()
}
