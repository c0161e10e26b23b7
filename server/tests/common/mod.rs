//! Test support shared by the two test binaries (`http`: servers in-process, `process`:
//! spawned binaries): a bundle with small seeded weights, options of a test server, users made
//! with `ferrolabel auth add-user`, small CT volumes and multipart helpers. The spawned server
//! launcher is [`spawned`]; the in-process one is `tests/http/server.rs`; [`training`] holds
//! what the training tests share.

#![allow(dead_code)]

pub mod spawned;
pub mod training;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub use ferrolabel_testkit::free_port;
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
            // the files only: a server that used the shared bundle keeps `models/versions/` there
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
    dir
}

/// Seeded random weights of the test bundle's network (`ferrolabel dev make-weights`), as the
/// bytes of a `model.pt`.
pub fn weights(seed: u32) -> Vec<u8> {
    let dir = bundle_copy();
    let out = Command::new(BIN)
        .args(["dev", "make-weights", "--bundle"])
        .arg(dir.path())
        .args(["--seed", &seed.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.path().join("models/model.pt")).unwrap()
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
    /// Files written into the studies folder before start: (name, bytes).
    pub files: Vec<(String, Vec<u8>)>,
    /// Extra environment variables of a spawned server (`spawned::Server` only).
    pub env: Vec<(String, String)>,
}

impl Opts {
    /// The default: weights, the example image.
    pub fn new() -> Self {
        Opts {
            bundle: bundle_with_weights().to_path_buf(),
            with_example: true,
            args: vec![],
            files: vec![],
            env: vec![],
        }
    }
}

/// Adds a user with `ferrolabel auth add-user` (password on standard input) to `users`.
pub fn add_user(users: &Path, name: &str, password: &str, roles: &[&str]) {
    let mut cmd = Command::new(BIN);
    cmd.args(["auth", "add-user", "--users"]).arg(users).args([
        "--username",
        name,
        "--email",
        &format!("{name}@example.org"),
    ]);
    for r in roles {
        cmd.args(["--role", r]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "add-user failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(name));
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
