//! The job scheduler (issue 12) over real HTTP with the release binary.
//!
//! * `sigkilled_jobs_finish_once_after_a_restart`: a batch inference, an epistemic scoring run
//!   and a training run at once under `--job-lease 2`; the server is SIGKILLed while all three
//!   are mid-way and started again on the same studies folder. Each job is taken up again once
//!   its lease has run out and finishes: the batch labels every image exactly once (the label
//!   revisions of its tag are the ledger, each carrying the job's id), the scoring run scores
//!   every image and keeps the scores of the first attempt, the training run continues from its
//!   last epoch (its log says which), writes a checkpoint the next `/infer` loads, and its
//!   killed worker never runs next to the new one. `/tasks/` tells the story: attempts 2, the
//!   first ended "lease expired". A job that finished before the kill (a much faster machine) is
//!   submitted again, larger, and killed in a further round.
//! * `queue_positions_estimates_and_cancel`: `enqueue=true` on a busy lane queues (SUBMITTED,
//!   position and estimate in `/tasks/`), without it 429 with MONAI Label's detail;
//!   `DELETE /tasks/{id}` stops a queued job (it never runs) and a running one (the lane frees);
//!   404 for an unknown id, 409 for an ended job; `check_if_running` never reports a queued
//!   training.

use crate::common;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::jobs_support::*;
use serde_json::{json, Value};

/// The lease of the restart test: a killed server's jobs are taken up 2 s after its last
/// heartbeat.
const LEASE_S: u64 = 2;
/// Images of the batch and the scoring run.
const IMAGES: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Batch,
    Scoring,
    Train,
}

/// A submitted job under watch, with what was seen of it around the kill.
#[derive(Debug)]
struct Watch {
    kind: Kind,
    id: String,
    /// Batch: its label tag.
    tag: String,
    /// Training: its `max_epochs`.
    max_epochs: u64,
    /// Scoring: each image's `epistemic_ts` before the job and just before the kill.
    ts_before: BTreeMap<String, Value>,
    ts_at_kill: BTreeMap<String, Value>,
    /// Training: the epochs its log showed, and its worker processes, just before the kill.
    epochs_at_kill: u64,
    workers_at_kill: Vec<u32>,
    /// Training: the epoch the resumed attempt said it continues after (its log line, caught
    /// while it is in the 20-line window).
    resumed_from: Option<u64>,
    /// Its status and progress just before the kill (for the log).
    seen_at_kill: String,
}

fn epistemic_ts(node: &Node, images: &[String]) -> BTreeMap<String, Value> {
    images
        .iter()
        .map(|id| {
            let (st, info) = node.get(&format!("/datastore/image/info?image={id}"));
            assert_eq!(st, 200, "{info}");
            (id.clone(), info["epistemic_ts"].clone())
        })
        .collect()
}

/// Submits a job of `kind`; `scale` > 1 makes scoring and training longer.
fn submit(node: &Node, kind: Kind, round: usize, scale: u64, images: &[String]) -> Watch {
    let mut w = Watch {
        kind,
        id: String::new(),
        tag: format!("job{round}"),
        max_epochs: 30 * scale,
        ts_before: BTreeMap::new(),
        ts_at_kill: BTreeMap::new(),
        epochs_at_kill: 0,
        workers_at_kill: vec![],
        resumed_from: None,
        seen_at_kill: String::new(),
    };
    // batch and scoring use the high-resolution weights, which training does not touch
    let (path, body) = match kind {
        Kind::Batch => (
            format!("/batch/infer/{MODEL}"),
            json!({"images": images, "highres": true, "label_tag": w.tag, "report": false}),
        ),
        Kind::Scoring => {
            w.ts_before = epistemic_ts(node, images);
            (
                "/scoring/epistemic".to_string(),
                json!({"images": images, "highres": true, "samples": 2 * scale, "spacing": 2,
                       "sw_roi": 32, "seed": 5}),
            )
        }
        Kind::Train => (
            format!("/train/{MODEL}"),
            json!({"highres": false, "max_epochs": w.max_epochs, "val_interval": 1,
                   "train_batch_size": 1, "roi_size": 32, "val_roi_size": 32}),
        ),
    };
    let (st, task) = node.post(&path, &body);
    assert_eq!(st, 200, "{kind:?}: {task}\n{}", node.stderr());
    assert!(
        matches!(status(&task), "SUBMITTED" | "RUNNING"),
        "{kind:?}: {task}"
    );
    w.id = task["id"].as_str().expect("a task id").to_string();
    w
}

/// Mid-way: running, with work done that a restart must keep, and work left that it must do
/// (two items left, so that it cannot end between this look and the kill).
fn mid_way(w: &Watch, t: &Value) -> bool {
    if status(t) != "RUNNING" {
        return false;
    }
    let total = t["progress"]["total"].as_u64().unwrap_or(0);
    match w.kind {
        Kind::Batch => done(t) >= 1 && done(t) + 2 <= total,
        Kind::Scoring => done(t) >= 2 && done(t) + 2 <= total,
        // epochs checkpoint as they end (flushed every lease/3)
        Kind::Train => (3..=w.max_epochs - 3).contains(&epochs_logged(t)),
    }
}

/// The epoch a resumed training attempt says it continues after: the number after "epoch" in
/// the first log line that speaks of resuming.
fn resumed_epoch(t: &Value) -> Option<u64> {
    details(t).iter().find_map(|l| {
        let lower = l.to_lowercase();
        if !lower.contains("resum") && !lower.contains("continu") {
            return None;
        }
        let after = &lower[lower.find("epoch")? + 5..];
        after
            .split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())?
            .parse()
            .ok()
    })
}

/// The checks common to every job that was killed once mid-way.
fn check_story(w: &Watch, t: &Value) {
    assert_eq!(status(t), "DONE", "{:?}: {t}", w.kind);
    assert_eq!(t["attempts"], 2, "{:?}: {t}", w.kind);
    let h = t["history"].as_array().expect("history");
    assert_eq!(h.len(), 2, "{t}");
    assert_eq!(h[0]["attempt"], 1, "{t}");
    assert_eq!(h[0]["end"], "lease expired", "{t}");
    assert!(
        h[0]["end_ts"].is_string() || h[0]["end_ts"].is_number(),
        "{t}"
    );
    assert_eq!(h[1]["attempt"], 2, "{t}");
    assert_eq!(h[1]["end"], "done", "{t}");
    assert_ne!(h[0]["runner"], h[1]["runner"], "two processes: {t}");
    assert!(t["end_ts"].is_string(), "{t}");
    assert!(t.get("position").is_none_or(Value::is_null), "{t}");
}

fn check_scoring(node: &Node, w: &Watch, t: &Value, images: &[String]) {
    let now = epistemic_ts(node, images);
    for id in images {
        assert!(
            now[id].is_number() && now[id] != w.ts_before[id],
            "{id} not scored by the job: {now:?} (before {:?})",
            w.ts_before
        );
    }
    // scored by the killed attempt: the restart keeps those scores (the ts is in seconds; a
    // second scoring comes at least a lease later)
    let first: Vec<&String> = images
        .iter()
        .filter(|id| w.ts_at_kill[*id] != w.ts_before[*id])
        .collect();
    assert!(!first.is_empty(), "nothing scored before the kill: {t}");
    let kept = first
        .iter()
        .filter(|id| now[**id] == w.ts_at_kill[**id])
        .count();
    assert!(
        kept >= 1,
        "the resumed run scored again every image of the killed one ({first:?}): {t}"
    );
    if let Some(r) = t["result"].as_object() {
        assert_eq!(r.len(), images.len(), "{t}");
    }
}

fn check_training(node: &Node, w: &Watch, t: &Value) {
    let from = w
        .resumed_from
        .unwrap_or_else(|| panic!("no resume line seen: {t}"));
    assert!(
        from >= 1 && from < w.max_epochs,
        "resumed from epoch {from} (the log showed {} before the kill): {t}",
        w.epochs_at_kill
    );
    assert_eq!(t["result"]["epochs"], w.max_epochs, "{t}");
    let (_, info) = node.get("/info/");
    let stats = &info["train_stats"][MODEL];
    assert_eq!(stats["epoch"], w.max_epochs, "{stats}");
    assert_eq!(stats["total_epochs"], w.max_epochs, "{stats}");
    // the checkpoint loads: the next infer with the low-resolution weights answers
    let form = reqwest::blocking::multipart::Form::new().text("params", r#"{"highres": false}"#);
    let r = node
        .http
        .post(node.url(&format!("/infer/{MODEL}?image=img0&output=json")))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap_or_default());
    // no worker left once the job is done
    let t0 = Instant::now();
    while !workers_of(node.pid()).is_empty() || w.workers_at_kill.iter().any(|&p| alive(p)) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "a training worker outlived its job: {:?}",
            train_workers()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The ledger of a killed batch: every image has exactly one revision of the job's tag, made
/// by the job (read from the datastore once the last server is gone).
fn check_batch_ledger(studies: &std::path::Path, w: &Watch, images: &[String]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ds = ferrolabel_datastore::Datastore::open(studies, Default::default())
            .await
            .unwrap();
        for id in images {
            let revs = ds.label_revisions(id, &w.tag).await.unwrap();
            assert_eq!(
                revs.len(),
                1,
                "{id}/{}: {} revisions: {:?}",
                w.tag,
                revs.len(),
                revs.iter().map(|r| &r.info).collect::<Vec<_>>()
            );
            assert_eq!(
                revs[0].info["job"],
                w.id.as_str(),
                "{id}: {:?}",
                revs[0].info
            );
        }
    });
}

#[test]
fn sigkilled_jobs_finish_once_after_a_restart() {
    let t_test = Instant::now();
    let bundle = common::bundle_copy();
    let root = tempfile::Builder::new()
        .prefix("ferrolabel-jobs-")
        .tempdir()
        .unwrap();
    let studies = root.path().join("studies");
    let images = write_images(&studies, IMAGES);
    std::fs::write(studies.join("train0.nii.gz"), common::small_ct_bytes()).unwrap();

    let mut round = 0;
    let mut node = Node::start(&studies, bundle.path(), LEASE_S, round);
    node.save_final("train0", ball_label());
    let mut pending = vec![(Kind::Batch, 1u64), (Kind::Scoring, 1), (Kind::Train, 1)];
    let mut ledgers: Vec<Watch> = Vec::new();
    let mut kills = 0;
    while !pending.is_empty() {
        assert!(round < 4, "no round caught the jobs mid-way: {pending:?}");
        let mut watches: Vec<Watch> = pending
            .iter()
            .map(|&(k, scale)| submit(&node, k, round, scale, &images))
            .collect();
        // wait until every job is mid-way or done, one at least mid-way
        let t0 = Instant::now();
        let killed = loop {
            let views: Vec<Value> = watches.iter().map(|w| node.task(&w.id)).collect();
            for (w, v) in watches.iter().zip(&views) {
                assert!(
                    matches!(status(v), "SUBMITTED" | "RUNNING" | "DONE"),
                    "{:?}: {v}\n{}",
                    w.kind,
                    node.stderr()
                );
            }
            let mid: Vec<bool> = watches
                .iter()
                .zip(&views)
                .map(|(w, v)| mid_way(w, v))
                .collect();
            let all_settled = mid
                .iter()
                .zip(&views)
                .all(|(&m, v)| m || status(v) == "DONE");
            if all_settled && mid.iter().any(|&m| m) {
                for (w, v) in watches.iter_mut().zip(&views) {
                    w.seen_at_kill = format!("{} {}", status(v), v["progress"]);
                    match w.kind {
                        Kind::Scoring => w.ts_at_kill = epistemic_ts(&node, &images),
                        Kind::Train => {
                            w.epochs_at_kill = epochs_logged(v);
                            w.workers_at_kill = workers_of(node.pid());
                            assert!(w.workers_at_kill.len() <= 1, "{:?}", w.workers_at_kill);
                        }
                        Kind::Batch => {}
                    }
                }
                node.kill();
                kills += 1;
                break mid;
            }
            if views.iter().all(|v| status(v) == "DONE") {
                break vec![false; views.len()];
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "jobs never mid-way: {views:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        eprintln!(
            "round {round}: {:?} at {:.1} s",
            watches
                .iter()
                .zip(&killed)
                .map(|(w, k)| format!("{:?} killed mid-way {k}: {}", w.kind, w.seen_at_kill))
                .collect::<Vec<_>>(),
            t_test.elapsed().as_secs_f64()
        );
        round += 1;
        if killed.iter().any(|&k| k) {
            node = Node::start(&studies, bundle.path(), LEASE_S, round);
        }
        // the killed jobs are taken up again and finish; never two training workers at once
        let old_workers: Vec<u32> = watches
            .iter()
            .flat_map(|w| w.workers_at_kill.clone())
            .collect();
        let t0 = Instant::now();
        let finals: Vec<Value> = loop {
            let views: Vec<Value> = watches.iter().map(|w| node.task(&w.id)).collect();
            for (w, v) in watches.iter_mut().zip(&views) {
                if w.kind == Kind::Train && w.resumed_from.is_none() {
                    w.resumed_from = resumed_epoch(v);
                }
            }
            let new = workers_of(node.pid());
            let old: Vec<u32> = old_workers.iter().copied().filter(|&p| alive(p)).collect();
            assert!(
                new.len() <= 1 && (old.is_empty() || new.is_empty()),
                "two training workers at once: the killed server's {old:?}, the new one's {new:?}"
            );
            if views.iter().all(ended) {
                break views;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "jobs did not finish after the restart: {views:?}\n{}",
                node.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut next = Vec::new();
        for ((w, t), was_mid) in watches.into_iter().zip(&finals).zip(&killed) {
            assert_eq!(status(t), "DONE", "{:?}: {t}\n{}", w.kind, node.stderr());
            if !was_mid || t["attempts"] == 1 {
                // it finished before the kill: again, larger
                let scale = pending.iter().find(|p| p.0 == w.kind).unwrap().1;
                next.push((w.kind, scale * 2));
                continue;
            }
            check_story(&w, t);
            match w.kind {
                Kind::Batch => ledgers.push(w),
                Kind::Scoring => check_scoring(&node, &w, t, &images),
                Kind::Train => check_training(&node, &w, t),
            }
        }
        pending = next;
    }
    // the task list shows every job of the test, oldest first
    let (st, all) = node.get("/tasks/");
    assert_eq!(st, 200, "{all}");
    let all = all.as_array().expect("an array");
    assert!(all.len() >= 3, "{all:?}");
    let created: Vec<&Value> = all.iter().map(|t| &t["created_ts"]).collect();
    assert!(created.iter().all(|c| !c.is_null()), "{created:?}");
    node.kill();
    assert!(!ledgers.is_empty());
    for w in &ledgers {
        check_batch_ledger(&studies, w, &images);
    }
    eprintln!(
        "jobs restart test: {round} rounds, {kills} kills, {:.1} s",
        t_test.elapsed().as_secs_f64()
    );
}

/// The task of `id` in a `/tasks/` list.
fn listed<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .expect("an array")
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list}"))
}

/// The lease of the queue test: long enough for a killed server's lease to hold its lane while
/// the test looks, short enough to wait out.
const QUEUE_LEASE_S: u64 = 5;

#[test]
fn queue_positions_estimates_and_cancel() {
    let t_test = Instant::now();
    let bundle = common::bundle_copy();
    let root = tempfile::Builder::new()
        .prefix("ferrolabel-queue-")
        .tempdir()
        .unwrap();
    let studies = root.path().join("studies");
    write_images(&studies, 1);
    let mut node = Node::start(&studies, bundle.path(), QUEUE_LEASE_S, 0);
    node.save_final("img0", ball_label());
    let train = format!("/train/{MODEL}");
    let tiny = json!({"highres": false, "max_epochs": 1, "val_interval": 1, "train_batch_size": 1,
                      "roi_size": 32, "val_roi_size": 32});
    let long = json!({"highres": false, "max_epochs": 100000, "val_interval": 1000,
                      "train_batch_size": 1, "roi_size": 32});
    let wait_running = |node: &Node, id: &str| {
        let t0 = Instant::now();
        loop {
            let (st, r) = node.get("/train/?check_if_running=true");
            if st == 200 && r["id"] == id {
                assert_eq!(status(&r), "RUNNING", "{r}");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{id} never ran: {r}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let t0 = Instant::now();
        while done(&node.task(id)) < 2 {
            assert!(t0.elapsed() < Duration::from_secs(120), "{}", node.task(id));
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // a first run measures the pace of an epoch (estimates come from measured rates only)
    let (st, first) = node.post(&train, &tiny);
    assert_eq!(st, 200, "{first}");
    // a free lane: the answer comes once the runner took the job (RUNNING, as MONAI Label's)
    assert_eq!(status(&first), "RUNNING", "{first}");
    let t = node.wait_end(first["id"].as_str().unwrap(), |_| {});
    assert_eq!(status(&t), "DONE", "{t}");

    // A runs
    let (st, a) = node.post(&train, &long);
    assert_eq!(st, 200, "{a}");
    assert_eq!(status(&a), "RUNNING", "{a}");
    let a = a["id"].as_str().unwrap().to_string();
    wait_running(&node, &a);

    // without enqueue: MONAI Label's 429
    let (st, busy) = node.post(&train, &tiny);
    assert_eq!(st, 429, "{busy}");
    assert!(
        common::detail(&busy).contains("Train Task is Already Running"),
        "{busy}"
    );
    // with enqueue: queued behind A
    let (st, b) = node.post(&format!("{train}?enqueue=true"), &tiny);
    assert_eq!(st, 200, "{b}");
    assert_eq!(status(&b), "SUBMITTED", "{b}");
    let b = b["id"].as_str().unwrap().to_string();
    let (st, c) = node.post(&format!("{train}?enqueue=true"), &tiny);
    assert_eq!(st, 200, "{c}");
    let c = c["id"].as_str().unwrap().to_string();

    // a queued training is not running: check_if_running names A
    let (st, r) = node.get("/train/?check_if_running=true");
    assert_eq!((st, &r["id"]), (200, &json!(a)), "{r}");

    let (st, list) = node.get("/tasks/");
    assert_eq!(st, 200, "{list}");
    let (ta, tb, tc) = (listed(&list, &a), listed(&list, &b), listed(&list, &c));
    assert_eq!(
        (status(ta), &ta["position"]),
        ("RUNNING", &json!(0)),
        "{ta}"
    );
    assert_eq!(
        (status(tb), &tb["position"]),
        ("SUBMITTED", &json!(1)),
        "{tb}"
    );
    assert_eq!(
        (status(tc), &tc["position"]),
        ("SUBMITTED", &json!(2)),
        "{tc}"
    );
    for t in [ta, tb, tc] {
        assert_eq!(t["kind"], "train", "{t}");
    }
    for t in [tb, tc] {
        assert_eq!(t["attempts"], 0, "{t}");
        let e = &t["estimate"];
        assert!(
            e["start_ts"].is_string() && e["end_ts"].is_string(),
            "queued work has an estimated start and end: {t}"
        );
        assert!(e["seconds_left"].as_f64().is_some_and(|s| s > 0.0), "{t}");
    }
    let ids: Vec<&Value> = list.as_array().unwrap().iter().map(|t| &t["id"]).collect();
    let pos = |id: &str| ids.iter().position(|x| *x == id).unwrap();
    assert!(
        pos(&a) < pos(&b) && pos(&b) < pos(&c),
        "oldest first: {ids:?}"
    );
    let (st, only) = node.get("/tasks/?kind=train");
    assert_eq!(st, 200);
    assert_eq!(only.as_array().unwrap().len(), 4, "{only}");
    assert!(only
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["kind"] == "train"));
    assert_eq!(node.task(&b)["id"], b.as_str());

    // stop the queued B: STOPPED, C moves up, B never runs
    let (st, sb) = node.delete(&format!("/tasks/{b}"));
    assert_eq!(st, 200, "{sb}");
    assert_eq!(status(&sb), "STOPPED", "{sb}");
    assert_eq!(node.task(&c)["position"], 1);
    let (st, e) = node.delete(&format!("/tasks/{b}"));
    assert_eq!(st, 409, "an ended job: {e}");
    common::detail(&e);
    let (st, e) = node.delete("/tasks/00000000-0000-4000-8000-000000000000");
    assert_eq!(st, 404, "{e}");
    common::detail(&e);
    let (st, _) = node.get("/tasks/00000000-0000-4000-8000-000000000000");
    assert_eq!(st, 404);

    // stop the running A: STOPPED, the lane frees and C runs to its end
    let (st, sa) = node.delete(&format!("/tasks/{a}"));
    assert_eq!(st, 200, "{sa}");
    assert_eq!(status(&sa), "STOPPED", "{sa}");
    let tc = node.wait_end(&c, |_| {});
    assert_eq!(status(&tc), "DONE", "{tc}");
    assert_eq!(tc["attempts"], 1, "{tc}");
    let ta = node.task(&a);
    assert_eq!(status(&ta), "STOPPED", "{ta}");
    assert_eq!(ta["history"][0]["end"], "stopped", "{ta}");
    let tb = node.task(&b);
    assert_eq!(status(&tb), "STOPPED", "{tb}");
    assert_eq!(tb["attempts"], 0, "a stopped queued job never runs: {tb}");
    assert_eq!(tb["history"], json!([]), "{tb}");
    let (st, _) = node.delete(&format!("/tasks/{a}"));
    assert_eq!(st, 409);
    let (st, r) = node.get("/train/?check_if_running=true");
    assert_eq!(st, 404, "{r}");

    // a queued training is not running, however long it waits: a server killed while E
    // trained holds the lane with E's lease; E stopped meanwhile, F queued behind it stays
    // SUBMITTED (check_if_running 404) until the lease runs out, then runs
    let (st, e) = node.post(&train, &long);
    assert_eq!(st, 200, "{e}");
    let e = e["id"].as_str().unwrap().to_string();
    wait_running(&node, &e);
    node.kill();
    node = Node::start(&studies, bundle.path(), QUEUE_LEASE_S, 1);
    let (st, se) = node.delete(&format!("/tasks/{e}"));
    assert_eq!(st, 200, "{se}");
    assert_eq!(status(&se), "STOPPED", "{se}");
    let (st, f) = node.post(&format!("{train}?enqueue=true"), &tiny);
    assert_eq!(st, 200, "{f}");
    assert_eq!(status(&f), "SUBMITTED", "{f}");
    let f = f["id"].as_str().unwrap().to_string();
    let mut queued_looks = 0;
    let tf = node.wait_end(&f, |t| {
        if status(t) == "SUBMITTED" {
            let (st, r) = node.get("/train/?check_if_running=true");
            // it may have been claimed between the two looks
            if st == 200 {
                assert_eq!(r["id"], f.as_str(), "{r}");
            } else {
                assert_eq!(st, 404, "{r}");
                queued_looks += 1;
            }
        }
    });
    assert_eq!(status(&tf), "DONE", "{tf}");
    assert_eq!(tf["attempts"], 1, "{tf}");
    assert!(queued_looks >= 1, "F was never seen queued");
    assert_eq!(status(&node.task(&e)), "STOPPED");
    eprintln!(
        "queue test: {:.1} s ({queued_looks} looks at F queued)",
        t_test.elapsed().as_secs_f64()
    );
}
