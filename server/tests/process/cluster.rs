//! A team deployment on loopback (issue 13): a throwaway PostgreSQL (`testkit::Postgres`), two
//! `ferrolabel start_server` on the same `--datastore-url`, studies folder and session folder
//! behind haproxy (`deploy/team/haproxy.cfg`), and `ferrolabel worker` processes, all with
//! `--job-lease 2`. Server 1 runs jobs, server 2 has `--no-jobs`.
//!
//! * A batch inference held by server 1 (the only job runner then) is SIGKILLed mid-batch; a
//!   worker started after the kill takes it up once the lease has run out and finishes it: every
//!   image has exactly one revision of the batch's tag (none skipped, none done twice).
//! * A training run held by that worker (server 1 is gone, server 2 runs no jobs) is SIGKILLed
//!   mid-way with the worker; its training process dies with it, a second worker takes the job
//!   up after the lease, it ends DONE with two attempts, and server 2, which never ran it,
//!   reports the new checkpoint's stats.
//! * Throughout, two client threads save the same labels through haproxy (each save's bytes
//!   unique; round robin puts overlapping saves of one label on both servers): every save
//!   answered 200 is a revision in the database afterwards, the revisions of a label are
//!   numbered without gaps or repeats, and the label file is its newest revision (the ledger
//!   of `crash_safety.rs`, across servers; the cross-server advisory lock is what keeps it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolabel_imaging::{encode_label_nifti, read_nifti_bytes, Header};
use ferrolabel_testkit::{free_port, Haproxy, Postgres};
use serde_json::{json, Value};
use sha2::Digest;

use crate::common::{self, repo, small_ct_bytes, BIN};
use crate::jobs_support::{
    alive, ball_label, done, ended, epochs_logged, status, workers_of, write_images, MODEL,
};

const LEASE_S: u64 = 2;
/// Images of the batch.
const IMAGES: usize = 6;
/// Clients saving labels (tag `ledger`) through haproxy, all on the same [`LEDGER_IMAGES`]
/// images in the same order, so that saves of one label on two servers overlap.
const CLIENTS: usize = 2;
const LEDGER_IMAGES: usize = 2;

/// One process of the deployment; SIGKILLed on drop.
struct Member {
    child: Child,
    log: PathBuf,
    /// `http://127.0.0.1:<port>` for a server.
    base: Option<String>,
}

impl Member {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Member {
        let child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Member {
            child,
            log,
            base: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    fn stderr(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut from = s.len().saturating_sub(6000);
        while !s.is_char_boundary(from) {
            from += 1;
        }
        s[from..].to_string()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shared settings of every process.
struct Team {
    root: tempfile::TempDir,
    studies: PathBuf,
    bundle: tempfile::TempDir,
    db: String,
    http: reqwest::blocking::Client,
}

impl Team {
    fn common(&self, cmd: &mut Command) {
        cmd.arg("--app")
            .arg(repo().join("apps/wholebody"))
            .arg("--studies")
            .arg(&self.studies)
            .args(["--conf", "bundle_dir"])
            .arg(self.bundle.path())
            .args(["--datastore-url", &self.db])
            .args(["--job-lease", &LEASE_S.to_string(), "--threads", "1"])
            .env(
                "MONAI_LABEL_SESSION_PATH",
                self.root.path().join("sessions"),
            )
            .env_remove("FERROLABEL_DATASTORE_URL");
    }

    fn server(&self, name: &str, extra: &[&str]) -> Member {
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.arg("start_server");
        self.common(&mut cmd);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "2"])
            .args(extra);
        let mut m = Member::spawn(&mut cmd, self.root.path().join(format!("{name}.log")));
        let base = format!("http://127.0.0.1:{port}");
        common::spawned::wait_ready(&mut m.child, &self.http, &base, &m.log);
        m.base = Some(base);
        m
    }

    fn worker(&self, name: &str) -> Member {
        let mut cmd = Command::new(BIN);
        cmd.arg("worker");
        self.common(&mut cmd);
        Member::spawn(&mut cmd, self.root.path().join(format!("{name}.log")))
    }

    /// GET (200 expected). A GET that a kill cut short (no answer, or haproxy's 502/503) is
    /// sent again, as a client of a balanced deployment does.
    fn get(&self, base: &str, path: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let (st, text) = match self.http.get(format!("{base}{path}")).send() {
                Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            };
            if matches!(st, 0 | 502 | 503) && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            assert_eq!(st, 200, "GET {path}: {text}");
            return serde_json::from_str(&text).unwrap();
        }
    }

    fn post(&self, base: &str, path: &str, body: &Value) -> Value {
        let r = self
            .http
            .post(format!("{base}{path}"))
            .json(body)
            .send()
            .unwrap();
        let st = r.status().as_u16();
        let text = r.text().unwrap();
        assert_eq!(st, 200, "POST {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }
}

/// The process id in a runner id (`<pid>@<random>`) of the task's current attempt.
fn runner_pid(t: &Value) -> Option<u32> {
    let h = t["history"].as_array()?.last()?;
    h["runner"].as_str()?.split('@').next()?.parse().ok()
}

/// The checks of a job killed once with its runner `first` and finished by `second`.
fn check_taken_over(t: &Value, first: u32, second: u32) {
    assert_eq!(status(t), "DONE", "{t}");
    assert_eq!(t["attempts"], 2, "{t}");
    let h = t["history"].as_array().expect("history");
    assert_eq!(h.len(), 2, "{t}");
    assert_eq!(h[0]["end"], "lease expired", "{t}");
    assert_eq!(h[1]["end"], "done", "{t}");
    let pid = |e: &Value| -> u32 {
        e["runner"]
            .as_str()
            .unwrap()
            .split('@')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!((pid(&h[0]), pid(&h[1])), (first, second), "{t}");
}

/// What the ledger clients know of one image's `ledger` label: every save sent, in order, with
/// its SHA-256 and whether it was answered 200.
type Ledger = Arc<Mutex<BTreeMap<String, Vec<(String, bool)>>>>;

/// A label whose bytes say which client and save made it.
fn ledger_label(header: &Header, client: usize, seq: u64) -> Vec<u8> {
    let mut labels = vec![0u8; crate::jobs_support::DIMS.iter().product()];
    labels[..8].copy_from_slice(&seq.to_le_bytes());
    labels[8] = client as u8 + 1;
    encode_label_nifti(&labels, header, true).unwrap()
}

fn save_loop(
    base: String,
    client: usize,
    images: Vec<String>,
    header: Header,
    ledger: Ledger,
    stop: Arc<AtomicBool>,
    seq: Arc<AtomicU64>,
) -> Result<(u64, u64), String> {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let (mut acked, mut lost) = (0, 0);
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let id = &images[i % images.len()];
        i += 1;
        let bytes = ledger_label(&header, client, seq.fetch_add(1, Ordering::SeqCst));
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        let form = reqwest::blocking::multipart::Form::new()
            .text(
                "params",
                json!({"client_id": format!("c{client}")}).to_string(),
            )
            .part(
                "label",
                reqwest::blocking::multipart::Part::bytes(bytes).file_name("l.nii.gz"),
            );
        let res = http
            .put(format!("{base}/datastore/label?image={id}&tag=ledger"))
            .multipart(form)
            .send();
        let ok = match res {
            Ok(r) if r.status() == 200 => true,
            // the server that had the request died: haproxy answers 502 (or the connection
            // drops); the outcome of this save is unknown
            Ok(r) if r.status() == 502 || r.status() == 503 => false,
            Ok(r) => {
                let st = r.status();
                return Err(format!("{id}: label save answered {st}: {:?}", r.text()));
            }
            Err(_) => false,
        };
        if ok {
            acked += 1;
        } else {
            lost += 1;
        }
        ledger
            .lock()
            .unwrap()
            .entry(id.clone())
            .or_default()
            .push((sha, ok));
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((acked, lost))
}

/// Every acknowledged save is a revision of its image; the revisions of each image are
/// numbered 1..n without a gap or a repeat, the newest is one of the saves sent, and the label
/// file reads back as that newest revision.
fn check_ledger(team: &Team, base: &str, ledger: &Ledger) {
    let revs = team.get(base, "/datastore/revisions?limit=10000");
    let mut stored: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for r in revs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tag"] == "ledger")
    {
        stored
            .entry(r["image"].as_str().unwrap().into())
            .or_default()
            .push((
                r["rev"].as_i64().unwrap(),
                r["sha256"].as_str().unwrap().into(),
            ));
    }
    for (id, saves) in ledger.lock().unwrap().iter() {
        let mut have = stored.get(id).cloned().unwrap_or_default();
        have.sort();
        let numbers: Vec<i64> = have.iter().map(|(rev, _)| *rev).collect();
        let expected: Vec<i64> = (1..=have.len() as i64).collect();
        assert_eq!(numbers, expected, "{id}: revision numbers");
        for (k, (sha, ok)) in saves.iter().enumerate() {
            assert!(
                !ok || have.iter().any(|(_, s)| s == sha),
                "{id}: save {k} was answered 200 but is not a revision"
            );
        }
        let (_, newest) = have.last().expect("revisions");
        assert!(
            saves.iter().any(|(sha, _)| sha == newest),
            "{id}: the newest revision is no save sent"
        );
        let r = team
            .http
            .get(format!("{base}/datastore/label?label={id}&tag=ledger"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let got = hex::encode(sha2::Sha256::digest(r.bytes().unwrap()));
        assert_eq!(
            &got, newest,
            "{id}: the label file is not its newest revision"
        );
    }
}

/// Polls task `id` at `base` until `caught` says it is mid-way (true) or it has ended (false).
fn watch(team: &Team, base: &str, id: &str, caught: impl Fn(&Value) -> bool) -> (bool, Value) {
    let t0 = Instant::now();
    loop {
        let t = team.get(base, &format!("/tasks/{id}"));
        if caught(&t) {
            return (true, t);
        }
        if ended(&t) {
            return (false, t);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "never mid-way: {t}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_end(team: &Team, base: &str, id: &str, who: &[&Member]) -> Value {
    let t0 = Instant::now();
    loop {
        let t = team.get(base, &format!("/tasks/{id}"));
        if ended(&t) {
            return t;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "task {id} did not end: {t}\n{}",
            who.iter()
                .map(|m| m.stderr())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_servers_and_workers_survive_sigkills() {
    let t_test = Instant::now();
    let pg = Postgres::shared();
    let root = tempfile::Builder::new()
        .prefix("ferrolabel-cluster-")
        .tempdir()
        .unwrap();
    let studies = root.path().join("studies");
    let images = write_images(&studies, IMAGES);
    std::fs::write(studies.join("train0.nii.gz"), small_ct_bytes()).unwrap();
    let ledger_images: Vec<String> = (0..LEDGER_IMAGES).map(|k| format!("led{k}")).collect();
    for id in &ledger_images {
        std::fs::write(studies.join(format!("{id}.nii.gz")), small_ct_bytes()).unwrap();
    }
    let header = read_nifti_bytes(&small_ct_bytes(), &Default::default())
        .unwrap()
        .header
        .unwrap();
    let team = Team {
        studies,
        bundle: common::bundle_copy(),
        db: pg.fresh_database(),
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap(),
        root,
    };
    // server 1 first: it runs the migrations
    let mut s1 = team.server("s1", &[]);
    let s2 = team.server("s2", &["--no-jobs=true"]);
    let proxy = Haproxy::start(&[
        port_of(s1.base.as_deref().unwrap()),
        port_of(s2.base.as_deref().unwrap()),
    ]);
    let lb = proxy.base();
    let t_up = t_test.elapsed().as_secs_f64();
    let r = team
        .http
        .put(format!("{lb}/datastore/label?image=train0&tag=final"))
        .multipart(reqwest::blocking::multipart::Form::new().part(
            "label",
            reqwest::blocking::multipart::Part::bytes(ball_label()).file_name("l.nii.gz"),
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // label saves through the balancer for the whole test
    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mine = ledger_images.clone();
            let (lb, header, ledger, stop, seq) = (
                lb.clone(),
                header.clone(),
                ledger.clone(),
                stop.clone(),
                seq.clone(),
            );
            std::thread::spawn(move || save_loop(lb, c, mine, header, ledger, stop, seq))
        })
        .collect();

    // (a) a batch held by server 1, which is SIGKILLed mid-batch; a worker finishes it
    let s1_base = s1.base.clone().unwrap();
    let mut round = 0;
    let (batch_id, tag) = loop {
        assert!(round < 3, "no batch was caught mid-way");
        // a new tag each round (a round whose batch ended before it was caught leaves one)
        let tag = format!("batch{round}");
        let t = team.post(
            &lb,
            &format!("/batch/infer/{MODEL}"),
            &json!({"images": images, "highres": true, "label_tag": tag, "report": false}),
        );
        let id = t["id"].as_str().unwrap().to_string();
        // server 1 is the only job runner: its own view is live
        let (caught, t) = watch(&team, &s1_base, &id, |t| {
            let total = t["progress"]["total"].as_u64().unwrap_or(0);
            status(t) == "RUNNING" && done(t) >= 1 && done(t) + 2 <= total
        });
        if caught {
            assert_eq!(runner_pid(&t), Some(s1.pid()), "{t}");
            s1.kill();
            break (id, tag);
        }
        round += 1;
    };
    let t_kill1 = t_test.elapsed().as_secs_f64();
    let w1 = team.worker("w1");
    let batch = wait_end(&team, &lb, &batch_id, &[&w1, &s2]);
    check_taken_over(&batch, s1.pid(), w1.pid());
    let t_batch = t_test.elapsed().as_secs_f64();

    // (b) a training run held by the worker (server 2 runs no jobs), SIGKILLed mid-way
    let mut w1 = w1;
    let max_epochs = 30;
    let train = team.post(
        &lb,
        &format!("/train/{MODEL}"),
        &json!({"highres": false, "max_epochs": max_epochs, "val_interval": 1,
                "train_batch_size": 1, "roi_size": 32, "val_roi_size": 32}),
    );
    let train_id = train["id"].as_str().unwrap().to_string();
    let (caught, t) = watch(&team, &lb, &train_id, |t| {
        status(t) == "RUNNING" && (3..=max_epochs - 3).contains(&epochs_logged(t))
    });
    assert!(caught, "training never caught mid-way: {t}");
    assert_eq!(runner_pid(&t), Some(w1.pid()), "{t}");
    let trainers = workers_of(w1.pid());
    w1.kill();
    let t_kill2 = t_test.elapsed().as_secs_f64();
    let t0 = Instant::now();
    while trainers.iter().any(|&p| alive(p)) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the killed worker's training process lives on: {trainers:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let w2 = team.worker("w2");
    let trained = wait_end(&team, &lb, &train_id, &[&w2, &s2]);
    check_taken_over(&trained, w1.pid(), w2.pid());
    assert_eq!(trained["result"]["epochs"], max_epochs, "{trained}");
    // server 2 never ran it and sees the new checkpoint's stats
    let info = team.get(s2.base.as_deref().unwrap(), "/info/");
    assert_eq!(
        info["train_stats"][MODEL]["epoch"], max_epochs,
        "{}",
        info["train_stats"]
    );
    let t_train = t_test.elapsed().as_secs_f64();

    // (c) the ledger, and the batch's: one revision of its tag per image
    stop.store(true, Ordering::SeqCst);
    let (mut acked, mut lost) = (0, 0);
    for c in clients {
        let (a, l) = c
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n---- s1\n{}\n---- s2\n{}", s1.stderr(), s2.stderr()));
        acked += a;
        lost += l;
    }
    check_ledger(&team, &lb, &ledger);
    let revs = team.get(&lb, "/datastore/revisions?limit=10000");
    for id in &images {
        let n = revs
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["image"] == id.as_str() && r["tag"] == tag.as_str())
            .count();
        assert_eq!(n, 1, "{id}: {n} revisions of {tag}");
    }
    drop(proxy);
    eprintln!(
        "cluster: up {t_up:.1} s, server 1 killed mid-batch at {t_kill1:.1} s (round {round}), \
         batch done {t_batch:.1} s, worker killed mid-training at {t_kill2:.1} s, training done \
         {t_train:.1} s; ledger: {acked} saves acknowledged, {lost} answers lost; total {:.1} s",
        t_test.elapsed().as_secs_f64()
    );
}

fn port_of(base: &str) -> u16 {
    base.rsplit(':').next().unwrap().parse().unwrap()
}
