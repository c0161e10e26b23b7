//! Crash safety: the real release binary is killed with SIGKILL at random moments and started
//! again, and nothing acknowledged may be lost, torn or left half-written.
//!
//! * `labels_survive_sigkill`: several client threads save labels in a loop (each save's bytes
//!   unique); the server is SIGKILLed after a random delay, SQLite's `PRAGMA integrity_check` is
//!   run on the database file as the kill left it, the server is restarted on the same studies
//!   folder, and every label is fetched back: it must be byte-equal to the last acknowledged
//!   save of that image, or to the save that was in flight when the server died (which may or
//!   may not have committed). No `*.tmp` or `.upload-*` file may remain and every label file on
//!   disk must read as NIfTI.
//! * `checkpoints_survive_sigkill`: `ferrolabel dev write-checkpoints` writes checkpoints through
//!   the writer training uses (`save_state_dict`) and is SIGKILLed at random moments; the
//!   checkpoint must always load strictly (every key and shape), never be older than the last
//!   acknowledged write, and the restarted writer must have removed the killed one's temp file.
//!
//! Sizes (CI defaults in brackets): `FERROLABEL_CRASH_ROUNDS` [6], `FERROLABEL_CRASH_CLIENTS`
//! [4], `FERROLABEL_CRASH_CHECKPOINT_KILLS` [8]; `FERROLABEL_CRASH_SEED` repeats a run. Each test
//! prints its counts and writes them to `bench-out/crash_safety_*.json`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{bundle_without_weights, free_port, repo, BIN};
use ferrolabel_imaging::{encode_label_nifti, encode_nifti_f32, read_nifti_bytes, Header};
use serde_json::json;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: reproducible random delays without a dependency.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = env_or(
            "FERROLABEL_CRASH_SEED",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        );
        eprintln!("crash_safety: FERROLABEL_CRASH_SEED={seed}");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn write_report(name: &str, report: &serde_json::Value) {
    let dir = repo().join("bench-out");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("crash_safety_{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(report).unwrap()).unwrap();
    println!("crash_safety {name}: {report}");
}

/// A server process on a studies folder that outlives it.
struct Proc {
    child: Child,
    base: String,
}

fn start_server(studies: &Path, bundle: &Path, round: u64) -> Proc {
    let port = free_port();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(studies.with_extension(format!("stderr-{round}.txt")))
        .unwrap();
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
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut p = Proc {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::blocking::Client::new();
    let t0 = Instant::now();
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            panic!("server exited with {status} (round {round})");
        }
        let ok = http
            .get(format!("{}/info/", p.base))
            .timeout(Duration::from_secs(2))
            .send()
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            return p;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "server not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the clients know about one image's `final` label.
#[derive(Default, Clone)]
struct Slot {
    /// The bytes of the last save that was answered 200.
    acked: Option<Vec<u8>>,
    /// The bytes of a save sent but not answered (outcome unknown).
    pending: Option<Vec<u8>>,
}

/// A small image; its header is the grid every label is written on.
fn image(seed: usize) -> (Vec<u8>, Header) {
    let dims = [6usize, 5, 4];
    let data: Vec<f32> = (0..120).map(|i| (i * (seed + 1)) as f32).collect();
    let mut affine = ferrolabel_imaging::affine::IDENTITY;
    affine[0][0] = 1.5;
    let bytes = encode_nifti_f32(&data, dims, &affine, true).unwrap();
    let header = read_nifti_bytes(&bytes, &Default::default())
        .unwrap()
        .header
        .unwrap();
    (bytes, header)
}

/// A label whose bytes say which client and save made it.
fn label(header: &Header, client: usize, seq: u64) -> Vec<u8> {
    let mut labels = vec![0u8; 120];
    labels[..8].copy_from_slice(&seq.to_le_bytes());
    labels[8] = client as u8;
    encode_label_nifti(&labels, header, true).unwrap()
}

/// `PRAGMA integrity_check` on the datastore's SQLite file, with Python's sqlite3 module (an
/// independent SQLite build), as the kill left it (WAL included).
fn integrity_check(db: &Path) -> String {
    let python = std::env::var("FERROLABEL_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             print(c.execute('PRAGMA integrity_check').fetchone()[0]); \
             print(c.execute('PRAGMA quick_check').fetchone()[0])",
        ])
        .arg(db)
        .output()
        .expect("python3 for sqlite3");
    assert!(
        out.status.success(),
        "integrity check failed to run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Files that must never be visible after a restart.
fn leftovers(studies: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    walk(studies, &mut files);
    files
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".tmp") || name.starts_with(".upload-")
        })
        .collect()
}

fn save_loop(
    base: String,
    client: usize,
    images: Vec<(String, Header)>,
    ledger: Arc<Mutex<BTreeMap<String, Slot>>>,
    stop: Arc<AtomicBool>,
    seq: Arc<std::sync::atomic::AtomicU64>,
) -> (u64, u64) {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (mut acked, mut failed) = (0, 0);
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let (id, header) = &images[i % images.len()];
        i += 1;
        let n = seq.fetch_add(1, Ordering::SeqCst);
        let bytes = label(header, client, n);
        ledger.lock().unwrap().get_mut(id).unwrap().pending = Some(bytes.clone());
        let form = reqwest::blocking::multipart::Form::new()
            .text(
                "params",
                json!({"client_id": format!("c{client}")}).to_string(),
            )
            .part(
                "label",
                reqwest::blocking::multipart::Part::bytes(bytes.clone()).file_name("l.nii.gz"),
            );
        let res = http
            .put(format!("{base}/datastore/label?image={id}&tag=final"))
            .multipart(form)
            .send();
        match res {
            Ok(r) if r.status().is_success() => {
                let mut l = ledger.lock().unwrap();
                let slot = l.get_mut(id).unwrap();
                slot.acked = Some(bytes);
                slot.pending = None;
                acked += 1;
            }
            Ok(r) => panic!("label save answered {}: {:?}", r.status(), r.text()),
            // the server died mid-request: the outcome of this save is unknown (pending)
            Err(_) => {
                failed += 1;
                break;
            }
        }
    }
    (acked, failed)
}

#[test]
fn labels_survive_sigkill() {
    let rounds = env_or("FERROLABEL_CRASH_ROUNDS", 6);
    let clients = env_or("FERROLABEL_CRASH_CLIENTS", 4) as usize;
    let mut rng = Rng::from_env();
    let bundle = bundle_without_weights();
    let root = tempfile::Builder::new()
        .prefix("ferrolabel-crash-")
        .tempdir()
        .unwrap();
    let studies = root.path().join("studies");
    std::fs::create_dir_all(&studies).unwrap();
    let per_client = 3;
    let mut headers = BTreeMap::new();
    for k in 0..clients * per_client {
        let (bytes, header) = image(k);
        let id = format!("img{k:03}");
        std::fs::write(studies.join(format!("{id}.nii.gz")), bytes).unwrap();
        headers.insert(id, header);
    }
    let ledger: Arc<Mutex<BTreeMap<String, Slot>>> = Arc::new(Mutex::new(
        headers
            .keys()
            .map(|id| (id.clone(), Slot::default()))
            .collect(),
    ));
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let http = reqwest::blocking::Client::new();
    let (mut kills, mut acked_total, mut in_flight_total, mut newer_won) = (0u64, 0u64, 0u64, 0u64);
    let (mut verified, mut temp_files_at_kill, mut kills_mid_write) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    for round in 0..rounds {
        let mut server = start_server(&studies, bundle.path(), round);
        // the previous round's kill must have left nothing visible and everything acknowledged
        let left = leftovers(&studies);
        assert!(left.is_empty(), "round {round}: leftovers {left:?}");
        {
            let mut l = ledger.lock().unwrap();
            for (id, slot) in l.iter_mut() {
                let r = http
                    .get(format!(
                        "{}/datastore/label?label={id}&tag=final",
                        server.base
                    ))
                    .send()
                    .unwrap();
                let status = r.status().as_u16();
                let got = r.bytes().unwrap().to_vec();
                let ok_acked = slot.acked.as_deref() == Some(&got[..]) && status == 200;
                let ok_pending = slot.pending.as_deref() == Some(&got[..]) && status == 200;
                let ok_absent = slot.acked.is_none() && status == 404;
                assert!(
                    ok_acked || ok_pending || ok_absent,
                    "round {round}: label {id}: status {status}, {} bytes, neither the \
                     acknowledged save nor the one in flight",
                    got.len()
                );
                if ok_pending && !ok_acked {
                    newer_won += 1;
                }
                if status == 200 {
                    read_nifti_bytes(&got, &Default::default()).expect("a readable label");
                    slot.acked = Some(got);
                    verified += 1;
                }
                slot.pending = None;
            }
        }
        if round + 1 == rounds {
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let mine: Vec<(String, Header)> = headers
                    .iter()
                    .skip(c * per_client)
                    .take(per_client)
                    .map(|(id, h)| (id.clone(), h.clone()))
                    .collect();
                let (base, ledger, stop, seq) = (
                    server.base.clone(),
                    ledger.clone(),
                    stop.clone(),
                    seq.clone(),
                );
                std::thread::spawn(move || save_loop(base, c, mine, ledger, stop, seq))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.below(600)));
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        kills += 1;
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            let (a, f) = t.join().unwrap();
            acked_total += a;
            in_flight_total += f;
        }
        let left = leftovers(&studies).len() as u64;
        temp_files_at_kill += left;
        kills_mid_write += u64::from(left > 0);
        let db = studies.join(".ferrolabel/datastore.db");
        let check = integrity_check(&db);
        assert_eq!(check, "ok\nok", "round {round}: SQLite integrity");
        // every label file on disk (including ones the database may not know yet) is whole
        let mut files = Vec::new();
        walk(&studies.join("labels"), &mut files);
        for f in files.iter().filter(|f| {
            let n = f.file_name().unwrap().to_string_lossy();
            !n.starts_with('.') && n.ends_with(".nii.gz")
        }) {
            let bytes = std::fs::read(f).unwrap();
            read_nifti_bytes(&bytes, &Default::default())
                .unwrap_or_else(|e| panic!("round {round}: torn label {}: {e}", f.display()));
        }
    }
    assert!(acked_total > 0, "no save was acknowledged");
    write_report(
        "labels",
        &json!({
            "server_runs": rounds, "sigkills": kills, "clients": clients,
            "images": headers.len(), "saves_acknowledged": acked_total,
            "saves_in_flight_at_kill": in_flight_total,
            "in_flight_saves_found_committed": newer_won,
            "labels_verified_after_restart": verified,
            "integrity_checks_ok": kills, "kills_that_left_temp_files": kills_mid_write,
            "temp_files_left_by_kills_then_removed": temp_files_at_kill,
            "seconds": t0.elapsed().as_secs_f64(),
        }),
    );
}

fn read_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn checkpoints_survive_sigkill() {
    let kills = env_or("FERROLABEL_CRASH_CHECKPOINT_KILLS", 8);
    let mut rng = Rng::from_env();
    // the bundle's real network (18.8 M parameters, a 75 MB checkpoint): writing takes long
    // enough that random kills land inside writes
    let bundle = tempfile::Builder::new()
        .prefix("ferrolabel-ckpt-")
        .tempdir()
        .unwrap();
    let configs = repo().join("apps/wholebody/model/wholeBody_ct_segmentation/configs");
    std::fs::create_dir_all(bundle.path().join("configs")).unwrap();
    for e in std::fs::read_dir(&configs).unwrap().flatten() {
        std::fs::copy(e.path(), bundle.path().join("configs").join(e.file_name())).unwrap();
    }
    let models = bundle.path().join("models");
    let out = models.join("model.pt");
    let config = ferrolabel_models::Bundle::open(bundle.path())
        .unwrap()
        .network;
    let mut acked: Vec<String> = Vec::new();
    let (mut restarts_checked, mut newer_won, mut kills_mid_write) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    for run in 0..kills {
        let mut child = Command::new(BIN)
            .args(["dev", "write-checkpoints", "--bundle"])
            .arg(bundle.path())
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let pid = child.id();
        let lines = read_lines(&mut child);
        // restarted: once it has saved, no temp file of an earlier (killed) writer remains
        let first = lines
            .recv_timeout(Duration::from_secs(120))
            .expect("a first checkpoint");
        let stale: Vec<String> = std::fs::read_dir(&models)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp") && !n.ends_with(&format!(".{pid}.tmp")))
            .collect();
        assert!(stale.is_empty(), "run {run}: stale temp files {stale:?}");
        if run > 0 {
            restarts_checked += 1;
        }
        let mut saved = vec![first];
        std::thread::sleep(Duration::from_millis(rng.below(2500)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        saved.extend(lines.iter());
        let temps = std::fs::read_dir(&models)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        kills_mid_write += u64::from(temps > 0);
        let this_run: Vec<String> = saved
            .iter()
            .map(|l| {
                l.split_whitespace()
                    .nth(2)
                    .expect("saved <n> <sha>")
                    .to_string()
            })
            .collect();
        let last = this_run.last().unwrap().clone();
        ferrolabel_models::network::weights::validate_file(&config, &out)
            .unwrap_or_else(|e| panic!("run {run}: the checkpoint does not load: {e}"));
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(std::fs::read(&out).unwrap()))
        };
        if sha != last {
            // a write completed after the last acknowledgement was printed: allowed, but the
            // file must not be an older acknowledged checkpoint
            assert!(
                !this_run.contains(&sha),
                "run {run}: the checkpoint went back to an older write"
            );
            newer_won += 1;
        }
        acked.extend(this_run);
    }
    // a last restart that writes nothing still clears the last kill's temp file
    let status = Command::new(BIN)
        .args(["dev", "write-checkpoints", "--count", "0", "--bundle"])
        .arg(bundle.path())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let names: Vec<String> = std::fs::read_dir(&models)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["model.pt"], "only the checkpoint remains");
    write_report(
        "checkpoints",
        &json!({
            "writer_runs": kills, "sigkills": kills, "checkpoints_acknowledged": acked.len(),
            "kills_after_an_unacknowledged_write_completed": newer_won,
            "kills_that_left_a_temp_file": kills_mid_write,
            "restarts_checked_for_temp_files": restarts_checked,
            "seconds": t0.elapsed().as_secs_f64(),
        }),
    );
}
