//! The engine's errors over HTTP, each produced for real and without a clock: a full queue is
//! 429 (try again), a crashed job a terse 500 (the cause in the log), a stopped engine 503.
//!
//! The weights file is a FIFO, so the engine thread blocks opening it until the test writes:
//! the first `/infer` holds the engine, the second waits in the queue (`--infer-queue 1`), the
//! third is refused. Bytes that are not a checkpoint then fail both jobs.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{bundle_copy, detail, small_ct_bytes, Opts};
use crate::server::Server;

const INFER: &str = "/infer/wholeBody_ct_segmentation?image=small&output=json";

/// POSTs an inference of the small image: (status, JSON body).
fn infer(s: &Server) -> (u16, Value) {
    let form = reqwest::blocking::multipart::Form::new().text("params", json!({}).to_string());
    let r = s.http.post(s.url(INFER)).multipart(form).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// Waits for a state of the engine (the deadline only guards against a hang).
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "waited too long for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Opens the FIFO for writing (waits for the engine to open it for reading) and writes bytes
/// that are not a checkpoint.
fn feed_garbage(fifo: &Path) {
    let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
    f.write_all(b"these bytes are not a torch.save checkpoint")
        .unwrap();
}

#[test]
fn full_queue_429_crashed_job_terse_500_stopped_engine_503() {
    let bundle = bundle_copy();
    let fifo = bundle.path().join("models/model.pt");
    std::fs::remove_file(&fifo).unwrap();
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo");
    let mut opts = Opts::new();
    opts.bundle = bundle.path().to_path_buf();
    opts.with_example = false;
    opts.files.push(("small.nii.gz".into(), small_ct_bytes()));
    opts.args.extend(
        ["--infer-queue", "1", "--conf", "preload", "false"]
            .iter()
            .map(|a| a.to_string()),
    );
    let s = Server::start(opts);
    let engine = s.state.app.engine().clone();

    std::thread::scope(|scope| {
        // the first job holds the engine (it is opening the FIFO), the second waits
        let first = scope.spawn(|| infer(&s));
        wait_until("the first job to run", || engine.status().running == 1);
        let second = scope.spawn(|| infer(&s));
        wait_until("the second job to wait", || engine.status().queued == 1);

        let (st, body) = infer(&s);
        assert_eq!(st, 429, "{body}");
        assert_eq!(
            detail(&body),
            "server busy: 1 inference jobs are already waiting (limit 1)"
        );

        // both jobs read garbage as weights: a server fault, told tersely (one write per job:
        // the next is written once the previous reader has answered, so has closed the FIFO)
        for job in [first, second] {
            feed_garbage(&fifo);
            let (st, body) = job.join().unwrap();
            assert_eq!(st, 500, "{body}");
            assert_eq!(body, json!({"detail": "Internal Server Error"}));
        }
    });
    let log = s.stderr();
    assert!(
        log.contains("internal server error") && log.contains("inference failed"),
        "the cause is in the log: {log}"
    );

    // a stopped engine: retrying will not help
    engine.shutdown();
    let (st, body) = infer(&s);
    assert_eq!(st, 503, "{body}");
    assert_eq!(
        detail(&body),
        "inference engine unavailable: the engine is shutting down"
    );
}
