//! Support of tests/jobs.rs: a `ferrolabel` server on a studies folder that outlives it (killed
//! with SIGKILL and started again on the same folder), the task views of `/tasks/`, and the
//! training worker processes as `/proc` shows them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrolabel_imaging::{encode_label_nifti, DataType, Header};
use serde_json::Value;

use crate::common::{repo, small_ct_bytes, BIN};

/// The model of the wholebody app.
pub const MODEL: &str = "wholeBody_ct_segmentation";

/// The grid of [`small_ct_bytes`]: 48 x 48 x 24 voxels at 2 mm.
pub const DIMS: [usize; 3] = [48, 48, 24];
const AFFINE: [[f64; 4]; 4] = [
    [2.0, 0.0, 0.0, -48.0],
    [0.0, 2.0, 0.0, -48.0],
    [0.0, 0.0, 2.0, -24.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// Writes `n` small CTs `img0..` into `studies`.
pub fn write_images(studies: &Path, n: usize) -> Vec<String> {
    std::fs::create_dir_all(studies).unwrap();
    let bytes = small_ct_bytes();
    (0..n)
        .map(|k| {
            let id = format!("img{k}");
            std::fs::write(studies.join(format!("{id}.nii.gz")), &bytes).unwrap();
            id
        })
        .collect()
}

/// A label on the [`small_ct_bytes`] grid: a ball of label 5 in a shell of label 1.
pub fn ball_label() -> Vec<u8> {
    let mut labels = Vec::with_capacity(DIMS.iter().product());
    for k in 0..DIMS[2] {
        for j in 0..DIMS[1] {
            for i in 0..DIMS[0] {
                let (x, y, z) = (i as f32 - 24.0, j as f32 - 24.0, k as f32 - 12.0);
                let r = (x * x + y * y + 4.0 * z * z).sqrt();
                labels.push(if r < 12.0 {
                    5
                } else if r < 16.0 {
                    1
                } else {
                    0
                });
            }
        }
    }
    let h = Header::new_3d(DIMS, DataType::U8, &AFFINE).unwrap();
    encode_label_nifti(&labels, &h, true).unwrap()
}

/// A server process on a studies folder that outlives it.
pub struct Node {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Blocking HTTP client.
    pub http: reqwest::blocking::Client,
    log: PathBuf,
}

impl Node {
    /// Starts `ferrolabel start_server` on `studies` with `--job-lease lease_s` and waits until
    /// `/info/` answers. Its stderr goes to `<studies>.stderr-<round>.txt`.
    pub fn start(studies: &Path, bundle: &Path, lease_s: u64, round: usize) -> Node {
        let port = ferrolabel_testkit::free_port();
        let log = studies.with_extension(format!("stderr-{round}.txt"));
        let child = Command::new(BIN)
            .arg("start_server")
            .arg("--app")
            .arg(repo().join("apps/wholebody"))
            .arg("--studies")
            .arg(studies)
            .args(["--conf", "bundle_dir"])
            .arg(bundle)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--threads", "1", "--workers", "2"])
            .args(["--job-lease", &lease_s.to_string()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut node = Node {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .unwrap(),
            log,
        };
        let t0 = Instant::now();
        loop {
            if let Some(status) = node.child.try_wait().unwrap() {
                panic!("server exited with {status}: {}", node.stderr());
            }
            let up = node
                .http
                .get(node.url("/info/"))
                .timeout(Duration::from_secs(2))
                .send()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if up {
                return node;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "server not ready: {}",
                node.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The server's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An absolute URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET → (status, JSON or Null).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// POST a JSON body → (status, JSON or Null).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.post(self.url(path)).json(body).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// DELETE → (status, JSON or Null).
    pub fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.http.delete(self.url(path)).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// Saves a `final` label for `image`.
    pub fn save_final(&self, image: &str, bytes: Vec<u8>) {
        let form = reqwest::blocking::multipart::Form::new().part(
            "label",
            reqwest::blocking::multipart::Part::bytes(bytes).file_name("label.nii.gz"),
        );
        let r = self
            .http
            .put(self.url(&format!("/datastore/label?image={image}&tag=final")))
            .multipart(form)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "save final {image}");
    }

    /// `GET /tasks/{id}` (200 expected).
    pub fn task(&self, id: &str) -> Value {
        let (st, t) = self.get(&format!("/tasks/{id}"));
        assert_eq!(st, 200, "GET /tasks/{id}: {t}\n{}", self.stderr());
        t
    }

    /// Polls `GET /tasks/{id}` until the task has ended (DONE, ERROR or STOPPED); calls `each`
    /// on every view on the way.
    pub fn wait_end(&self, id: &str, mut each: impl FnMut(&Value)) -> Value {
        let t0 = Instant::now();
        loop {
            let t = self.task(id);
            each(&t);
            if ended(&t) {
                return t;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "task {id} did not end: {t}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A task's `status`.
pub fn status(t: &Value) -> &str {
    t["status"]
        .as_str()
        .unwrap_or_else(|| panic!("no status in {t}"))
}

/// DONE, ERROR or STOPPED.
pub fn ended(t: &Value) -> bool {
    matches!(status(t), "DONE" | "ERROR" | "STOPPED")
}

/// `progress.done` (0 when absent).
pub fn done(t: &Value) -> u64 {
    t["progress"]["done"].as_u64().unwrap_or(0)
}

/// The task's `details` lines.
pub fn details(t: &Value) -> Vec<String> {
    t["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The highest `k` of the training log lines `epoch k/N: ...` (0 when none).
pub fn epochs_logged(t: &Value) -> u64 {
    details(t)
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("epoch ")?;
            let (k, n) = rest.split_once('/')?;
            n.split(':').next()?.trim().parse::<u64>().ok()?;
            k.trim().parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// One process of `/proc`.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// The state letter (`R`, `S`, `Z`...).
    pub state: char,
}

fn proc_of(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces, so split after the last ')'
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Proc { pid, ppid, state })
}

fn is_train_worker(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|&b| b == 0).any(|a| a == b"train-worker"))
        .unwrap_or(false)
}

/// Whether `pid` is a live (not zombie) training worker.
pub fn alive(pid: u32) -> bool {
    is_train_worker(pid) && proc_of(pid).is_some_and(|p| p.state != 'Z')
}

/// Live `ferrolabel dev train-worker` processes (of any server on this machine).
pub fn train_workers() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| is_train_worker(pid))
        .filter_map(proc_of)
        .filter(|p| p.state != 'Z')
        .collect()
}

/// Live training workers whose parent is `server`.
pub fn workers_of(server: u32) -> Vec<u32> {
    train_workers()
        .into_iter()
        .filter(|p| p.ppid == server)
        .map(|p| p.pid)
        .collect()
}
