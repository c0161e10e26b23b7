//! The jobs table against real databases, each test on SQLite and on PostgreSQL (see
//! `common`): insert and list, claim order (priority, then FIFO), the lane rule, lease expiry and
//! reclaim, heartbeats and finishes by runners that lost the lease, stops, periodic jobs, and
//! four datastore handles (four connection pools) on one database claiming concurrently. Also
//! the auth tokens table. Times are made up (`now_ms` is the caller's), so nothing here waits on
//! a clock.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Db;
use ferrolabel_datastore::{Datastore, DatastoreError, JobOutcome, JobState, JobUpdate, NewJob};
use serde_json::json;
use sha2::Digest;

const T0: i64 = 1_700_000_000_000;
const LEASE: i64 = 30_000;

fn job(id: &str, lane: &str, priority: i64) -> NewJob {
    NewJob {
        id: id.into(),
        kind: format!("kind-{lane}"),
        lane: lane.into(),
        priority,
        params: json!({"task": id}),
        request: json!({"model": "m", "id": id}),
        owner: Some("alice".into()),
        ..NewJob::default()
    }
}

fn none() -> JobUpdate {
    JobUpdate::default()
}

async fn claim(ds: &Datastore, runner: &str, now: i64) -> Option<String> {
    ds.claim_job(runner, LEASE, now, &[])
        .await
        .unwrap()
        .map(|j| j.id)
}

async fn insert_get_list(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    let a = ds.insert_job(&job("a", "x", 0), T0).await.unwrap();
    assert_eq!(a.state, JobState::Queued);
    assert_eq!(a.params, json!({"task": "a"}));
    assert_eq!(a.request, json!({"model": "m", "id": "a"}));
    assert_eq!(a.owner.as_deref(), Some("alice"));
    assert_eq!((a.attempts, a.created_at), (0, T0));
    assert_eq!(a.history, json!([]));
    assert!(a.details.is_empty() && a.progress.is_none() && a.lease_owner.is_none());
    assert_eq!(ds.get_job("a").await.unwrap(), Some(a.clone()));
    assert_eq!(ds.get_job("nope").await.unwrap(), None);

    let dup = ds.insert_job(&job("a", "y", 1), T0).await.unwrap_err();
    assert!(matches!(dup, DatastoreError::Conflict(_)), "{dup}");
    let bad = ds.insert_job(&job("b", "", 0), T0).await.unwrap_err();
    assert!(matches!(bad, DatastoreError::Invalid(_)), "{bad}");

    ds.insert_job(&job("b", "y", 0), T0 + 1).await.unwrap();
    ds.insert_job(&job("c", "x", 0), T0 + 2).await.unwrap();
    let ids =
        |v: Vec<ferrolabel_datastore::JobRow>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids(ds.list_jobs(None, 10).await.unwrap()), ["a", "b", "c"]);
    assert_eq!(
        ids(ds.list_jobs(None, 2).await.unwrap()),
        ["b", "c"],
        "newest 2, oldest first"
    );
    assert_eq!(
        ids(ds.list_jobs(Some("kind-x"), 10).await.unwrap()),
        ["a", "c"]
    );
    assert!(ds.list_jobs(Some("none"), 10).await.unwrap().is_empty());

    // rows survive reopening the database
    ds.close().await;
    let ds = db.open(tmp.path()).await;
    assert_eq!(ds.get_job("a").await.unwrap(), Some(a));
    ds.close().await;
}

async fn claim_order_priority_then_fifo(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    // one lane each, so only the order decides
    for (i, (id, p)) in [
        ("low1", 0),
        ("high1", 5),
        ("high2", 5),
        ("low2", 0),
        ("mid", 2),
    ]
    .into_iter()
    .enumerate()
    {
        ds.insert_job(&job(id, id, p), T0 + i as i64).await.unwrap();
    }
    let mut later = job("later", "later", 9);
    later.not_before = Some(T0 + 1_000);
    ds.insert_job(&later, T0).await.unwrap();

    let first = ds
        .claim_job("r1", LEASE, T0 + 10, &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, "high1");
    assert_eq!(first.state, JobState::Running);
    assert_eq!(first.lease_owner.as_deref(), Some("r1"));
    assert_eq!(first.lease_until, Some(T0 + 10 + LEASE));
    assert_eq!(first.heartbeat_at, Some(T0 + 10));
    assert_eq!((first.attempts, first.started_at), (1, Some(T0 + 10)));
    assert_eq!(
        first.history,
        json!([{"attempt": 1, "runner": "r1", "started_at": T0 + 10, "ended_at": null, "end": null}])
    );
    assert!(first.lease_live(T0 + 10 + LEASE) && !first.lease_live(T0 + 11 + LEASE));
    // an excluded lane is passed over
    let excl = ["high2".to_string()];
    let got = ds.claim_job("r1", LEASE, T0 + 10, &excl).await.unwrap();
    assert_eq!(got.unwrap().id, "mid");
    let mut order = vec![];
    while let Some(id) = claim(&ds, "r1", T0 + 10).await {
        order.push(id);
    }
    assert_eq!(
        order,
        ["high2", "low1", "low2"],
        "priority, then FIFO; `later` not due"
    );
    assert_eq!(claim(&ds, "r1", T0 + 1_000).await.as_deref(), Some("later"));
    assert!(ds
        .claim_job("", LEASE, T0, &[])
        .await
        .is_err_and(|e| matches!(e, DatastoreError::Invalid(_))));
    ds.close().await;
}

async fn lane_runs_one_job_at_a_time(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    ds.insert_job(&job("x1", "x", 0), T0).await.unwrap();
    ds.insert_job(&job("x2", "x", 9), T0 + 1).await.unwrap();
    ds.insert_job(&job("y1", "y", 0), T0 + 2).await.unwrap();
    ds.insert_job(&job("x3", "x", 0), T0 + 3).await.unwrap();
    assert_eq!(claim(&ds, "r1", T0 + 5).await.as_deref(), Some("x2"));
    // x is busy: its queued jobs are skipped (even the older x1), another lane's job is taken
    assert_eq!(claim(&ds, "r2", T0 + 6).await.as_deref(), Some("y1"));
    assert_eq!(claim(&ds, "r2", T0 + 7).await, None);

    // a job stopped while running keeps its lane busy until its runner finishes it
    let stopped = ds.request_stop("x2", T0 + 8).await.unwrap().unwrap();
    assert_eq!(stopped.state, JobState::Stopped);
    assert!(stopped.lease_live(T0 + 9));
    assert_eq!(claim(&ds, "r2", T0 + 9).await, None, "stopped but leased");
    ds.finish_job("x2", "r1", JobOutcome::Stopped, &none(), T0 + 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim(&ds, "r2", T0 + 11).await.as_deref(), Some("x1"));
    ds.finish_job("y1", "r2", JobOutcome::Done(json!(1)), &none(), T0 + 11)
        .await
        .unwrap()
        .unwrap();

    // a stopped job whose runner died frees its lane when the lease lapses, and its attempt
    // is closed as "lease expired"
    ds.request_stop("x1", T0 + 12).await.unwrap();
    assert_eq!(
        claim(&ds, "r3", T0 + 11 + LEASE).await,
        None,
        "lease still live"
    );
    assert_eq!(
        claim(&ds, "r3", T0 + 12 + LEASE).await.as_deref(),
        Some("x3")
    );
    let x1 = ds.get_job("x1").await.unwrap().unwrap();
    assert_eq!(x1.state, JobState::Stopped);
    assert_eq!((x1.lease_owner, x1.lease_until), (None, None));
    assert_eq!(x1.history[0]["end"], "lease expired");
    assert_eq!(x1.history[0]["ended_at"], T0 + 11 + LEASE);
    ds.close().await;
}

async fn lapsed_lease_is_taken_up_by_another_runner(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    ds.insert_job(&job("j", "x", 0), T0).await.unwrap();
    // a lane-mate, queued behind j: claimable only while no lease in lane x is live
    ds.insert_job(&job("k", "x", 0), T0 + 1).await.unwrap();
    assert_eq!(claim(&ds, "r1", T0).await.as_deref(), Some("j"));
    let saved = JobUpdate {
        checkpoint: Some(json!({"done": ["img1"]})),
        progress: Some(json!({"done": 1, "total": 3})),
        ..JobUpdate::default()
    };
    let hb = ds
        .heartbeat_job("j", "r1", LEASE, T0 + 5, &saved)
        .await
        .unwrap();
    assert!(hb.owned && !hb.cancel_requested);
    // a non-owner can neither finish nor heartbeat a live job
    let before = ds.get_job("j").await.unwrap();
    let refused = ds
        .finish_job("j", "r2", JobOutcome::Done(json!(1)), &none(), T0 + 6)
        .await
        .unwrap();
    assert_eq!(refused, None);
    assert!(
        !ds.heartbeat_job("j", "r2", LEASE, T0 + 6, &saved)
            .await
            .unwrap()
            .owned
    );
    assert_eq!(ds.get_job("j").await.unwrap(), before, "nothing changed");
    // live until lease_until inclusive (its lane stays busy: k waits), then r2 takes j up
    assert_eq!(claim(&ds, "r2", T0 + 5 + LEASE).await, None);
    let again = ds
        .claim_job("r2", LEASE, T0 + 6 + LEASE, &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.id, "j");
    assert_eq!(again.attempts, 2);
    assert_eq!(again.started_at, Some(T0), "first attempt's start kept");
    assert_eq!(again.lease_owner.as_deref(), Some("r2"));
    assert_eq!(again.checkpoint, Some(json!({"done": ["img1"]})));
    assert_eq!(
        again.history,
        json!([
            {"attempt": 1, "runner": "r1", "started_at": T0, "ended_at": T0 + 5 + LEASE,
             "end": "lease expired"},
            {"attempt": 2, "runner": "r2", "started_at": T0 + 6 + LEASE, "ended_at": null,
             "end": null},
        ])
    );
    // r1 wakes up: it lost the job, and its heartbeat and finish change nothing
    let late = JobUpdate {
        details: Some(vec!["stale".into()]),
        ..JobUpdate::default()
    };
    let hb = ds
        .heartbeat_job("j", "r1", LEASE, T0 + 7 + LEASE, &late)
        .await
        .unwrap();
    assert!(!hb.owned);
    let r1_end = ds
        .finish_job(
            "j",
            "r1",
            JobOutcome::Error("late".into()),
            &late,
            T0 + 8 + LEASE,
        )
        .await
        .unwrap();
    assert_eq!(r1_end, None);
    assert_eq!(ds.get_job("j").await.unwrap(), Some(again));
    let done = ds
        .finish_job(
            "j",
            "r2",
            JobOutcome::Done(json!({"ok": 1})),
            &none(),
            T0 + 9 + LEASE,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.state, JobState::Done);
    assert_eq!(done.result, Some(json!({"ok": 1})));
    assert_eq!((done.lease_owner, done.lease_until), (None, None));
    assert_eq!(done.finished_at, Some(T0 + 9 + LEASE));
    assert_eq!(done.history[1]["end"], "done");
    assert_eq!(done.history[1]["ended_at"], T0 + 9 + LEASE);
    ds.close().await;
}

async fn heartbeat_writes_and_reports_stop(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    ds.insert_job(&job("j", "x", 0), T0).await.unwrap();
    claim(&ds, "r1", T0).await.unwrap();
    let lines: Vec<String> = (0..25).map(|i| format!("line {i}")).collect();
    let up = JobUpdate {
        progress: Some(json!({"done": 2})),
        checkpoint: Some(json!({"epoch": 4})),
        details: Some(lines.clone()),
    };
    let hb = ds
        .heartbeat_job("j", "r1", LEASE, T0 + 100, &up)
        .await
        .unwrap();
    assert!(hb.owned && !hb.cancel_requested);
    let j = ds.get_job("j").await.unwrap().unwrap();
    assert_eq!(j.lease_until, Some(T0 + 100 + LEASE), "lease extended");
    assert_eq!(j.heartbeat_at, Some(T0 + 100));
    assert_eq!(j.progress, Some(json!({"done": 2})));
    assert_eq!(j.checkpoint, Some(json!({"epoch": 4})));
    assert_eq!(j.details, lines[5..], "the last 20 lines");
    // an empty update keeps the fields
    ds.heartbeat_job("j", "r1", LEASE, T0 + 200, &none())
        .await
        .unwrap();
    let k = ds.get_job("j").await.unwrap().unwrap();
    assert_eq!(
        (k.progress, k.checkpoint, k.details),
        (j.progress, j.checkpoint, j.details)
    );

    ds.request_stop("j", T0 + 300).await.unwrap();
    let hb = ds
        .heartbeat_job("j", "r1", LEASE, T0 + 400, &none())
        .await
        .unwrap();
    assert!(hb.owned && hb.cancel_requested);
    let unknown = ds
        .heartbeat_job("zz", "r1", LEASE, T0, &none())
        .await
        .unwrap();
    assert!(!unknown.owned && !unknown.cancel_requested);
    ds.close().await;
}

async fn stop_queued_running_and_ended_jobs(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    for (id, lane) in [("r", "b"), ("d", "c")] {
        ds.insert_job(&job(id, lane, 0), T0).await.unwrap();
    }
    // r runs; d runs and fails; q2 waits
    assert_eq!(claim(&ds, "r1", T0 + 2).await.as_deref(), Some("r"));
    assert_eq!(claim(&ds, "r1", T0 + 2).await.as_deref(), Some("d"));
    ds.insert_job(&job("q2", "a", 0), T0 + 2).await.unwrap();
    let d = ds
        .finish_job("d", "r1", JobOutcome::Error("boom".into()), &none(), T0 + 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.state, d.error.as_deref()),
        (JobState::Error, Some("boom"))
    );

    let q2 = ds.request_stop("q2", T0 + 4).await.unwrap().unwrap();
    assert_eq!(q2.state, JobState::Stopped);
    assert_eq!((q2.finished_at, q2.cancel_requested), (Some(T0 + 4), false));
    assert_eq!(
        claim(&ds, "r1", T0 + 5).await,
        None,
        "a stopped queued job is never run"
    );

    let r = ds.request_stop("r", T0 + 6).await.unwrap().unwrap();
    assert_eq!(r.state, JobState::Stopped);
    assert_eq!((r.finished_at, r.cancel_requested), (Some(T0 + 6), true));
    assert_eq!(
        r.lease_owner.as_deref(),
        Some("r1"),
        "the runner keeps the lease"
    );
    // its runner ends it after all: it stays stopped, finished_at kept, the attempt closed
    let up = JobUpdate {
        details: Some(vec!["wound down".into()]),
        ..JobUpdate::default()
    };
    let r = ds
        .finish_job("r", "r1", JobOutcome::Done(json!(7)), &up, T0 + 7)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.state, r.finished_at), (JobState::Stopped, Some(T0 + 6)));
    assert_eq!(r.lease_owner, None);
    assert_eq!(r.details, ["wound down"]);
    assert_eq!(r.history[0]["end"], "done");

    // ended jobs are left as they are; unknown ids are None
    let d_again = ds.request_stop("d", T0 + 8).await.unwrap();
    assert_eq!(d_again.as_ref(), Some(&d));
    let r_again = ds.request_stop("r", T0 + 8).await.unwrap();
    assert_eq!(r_again.as_ref(), Some(&r));
    assert_eq!(ds.request_stop("nope", T0).await.unwrap(), None);
    ds.close().await;
}

async fn periodic_jobs_come_back(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    let mut sweep = job("sweep", "sweep", 1);
    sweep.every_ms = Some(60_000);
    let row = ds.upsert_periodic(&sweep, T0).await.unwrap();
    assert_eq!((row.state, row.not_before), (JobState::Queued, Some(T0)));
    assert_eq!(claim(&ds, "r1", T0).await.as_deref(), Some("sweep"));
    // registering it again (a restart) only updates its period and params
    sweep.every_ms = Some(10_000);
    sweep.params = json!({"v": 2});
    sweep.priority = 7;
    let row = ds.upsert_periodic(&sweep, T0 + 1).await.unwrap();
    assert_eq!(
        (row.state, row.every_ms, row.priority),
        (JobState::Running, Some(10_000), 1)
    );
    assert_eq!(row.params, json!({"v": 2}));
    assert_eq!(row.created_at, T0);

    let row = ds
        .finish_job(
            "sweep",
            "r1",
            JobOutcome::Done(json!({"n": 3})),
            &none(),
            T0 + 5,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, JobState::Queued);
    assert_eq!(row.not_before, Some(T0 + 10_005));
    assert_eq!(
        (row.finished_at, row.result),
        (Some(T0 + 5), Some(json!({"n": 3})))
    );
    assert_eq!(row.lease_owner, None);
    assert_eq!(claim(&ds, "r1", T0 + 10_004).await, None, "not due yet");
    assert_eq!(
        claim(&ds, "r2", T0 + 10_005).await.as_deref(),
        Some("sweep")
    );
    let row = ds
        .finish_job(
            "sweep",
            "r2",
            JobOutcome::Error("pacs down".into()),
            &none(),
            T0 + 10_006,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.state, row.attempts), (JobState::Queued, 2));
    assert_eq!(
        (row.error.as_deref(), row.result),
        (Some("pacs down"), None)
    );
    assert_eq!(row.history.as_array().unwrap().len(), 2);
    assert_eq!(row.history[1]["end"], "error");
    // a stopped periodic job stays stopped
    assert_eq!(
        claim(&ds, "r2", T0 + 20_006).await.as_deref(),
        Some("sweep")
    );
    let row = ds
        .finish_job("sweep", "r2", JobOutcome::Stopped, &none(), T0 + 20_007)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, JobState::Stopped);
    assert!(
        ds.upsert_periodic(&job("p", "p", 0), T0).await.is_err(),
        "no period"
    );
    ds.close().await;
}

async fn last_finished_is_newest_done_first(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    for (i, (id, outcome)) in [
        ("a", JobOutcome::Done(json!(1))),
        ("b", JobOutcome::Error("x".into())),
        ("c", JobOutcome::Done(json!(3))),
    ]
    .into_iter()
    .enumerate()
    {
        let t = T0 + 100 * i as i64;
        ds.insert_job(&job(id, "x", 0), t).await.unwrap();
        claim(&ds, "r1", t).await.unwrap();
        ds.finish_job(id, "r1", outcome, &none(), t + 50)
            .await
            .unwrap();
    }
    let last = ds.last_finished("kind-x", 5).await.unwrap();
    let got: Vec<_> = last
        .iter()
        .map(|j| (j.id.as_str(), j.started_at, j.finished_at))
        .collect();
    assert_eq!(
        got,
        [
            ("c", Some(T0 + 200), Some(T0 + 250)),
            ("a", Some(T0), Some(T0 + 50))
        ]
    );
    assert_eq!(ds.last_finished("kind-x", 1).await.unwrap().len(), 1);
    ds.close().await;
}

/// Datastore handles (each its own connection pool, as several servers and workers have).
const HANDLES: usize = 4;

/// What the claiming tasks saw.
#[derive(Default)]
struct Ledger {
    /// Lanes with a job claimed and not yet finished (by the tasks' own account).
    held: HashSet<String>,
    /// (job, runner) for every claim.
    claims: Vec<(String, String)>,
    /// Lanes claimed while already held, and jobs seen with another live lease in their lane.
    overlaps: Vec<String>,
    /// Claims made through each handle.
    per_handle: [usize; HANDLES],
}

/// Eight runners on four handles claim and finish 50 jobs in 5 lanes at once: every job is
/// claimed exactly once and no lane ever holds two live leases (on PostgreSQL, concurrent
/// `FOR UPDATE SKIP LOCKED` claims with lane locks; on SQLite, `BEGIN IMMEDIATE`).
async fn handles_claim_every_job_exactly_once(db: Db) {
    const JOBS: usize = 50;
    const LANES: usize = 5;
    const TASKS: usize = 8;
    let tmp = tempfile::tempdir().unwrap();
    let mut handles = Vec::new();
    for _ in 0..HANDLES {
        handles.push(db.open(tmp.path()).await);
    }
    for i in 0..JOBS {
        let j = job(
            &format!("j{i:02}"),
            &format!("lane{}", i % LANES),
            (i % 3) as i64,
        );
        handles[i % HANDLES]
            .insert_job(&j, T0 + i as i64)
            .await
            .unwrap();
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let ds = handles[t % HANDLES].clone();
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let runner = format!("runner{t}");
            let now = T0 + 1_000;
            while ledger.lock().unwrap().claims.len() < JOBS {
                let Some(j) = ds.claim_job(&runner, LEASE, now, &[]).await.unwrap() else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                // the database's own view: one live lease in the lane
                let same_lane = ds.list_jobs(Some(&j.kind), JOBS).await.unwrap();
                let live = same_lane.iter().filter(|o| o.lease_live(now)).count();
                {
                    let mut l = ledger.lock().unwrap();
                    if !l.held.insert(j.lane.clone()) || live != 1 {
                        l.overlaps.push(format!("{} ({live} live leases)", j.lane));
                    }
                    l.claims.push((j.id.clone(), runner.clone()));
                    l.per_handle[t % HANDLES] += 1;
                }
                // let the others try this lane while the job "runs"
                tokio::task::yield_now().await;
                ledger.lock().unwrap().held.remove(&j.lane);
                let done = JobOutcome::Done(json!(runner));
                let end = ds.finish_job(&j.id, &runner, done, &none(), now).await;
                assert!(end.unwrap().is_some(), "{} finished by its runner", j.id);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(
        ledger.overlaps.is_empty(),
        "two live leases in a lane: {:?}",
        ledger.overlaps
    );
    let by_job: HashMap<&str, &str> = ledger
        .claims
        .iter()
        .map(|(j, r)| (j.as_str(), r.as_str()))
        .collect();
    assert_eq!(ledger.claims.len(), JOBS, "claims: {:?}", ledger.claims);
    assert_eq!(by_job.len(), JOBS, "every job claimed exactly once");
    for j in handles[1].list_jobs(None, 2 * JOBS).await.unwrap() {
        assert_eq!((j.state, j.attempts), (JobState::Done, 1), "{}", j.id);
        assert_eq!(j.result, Some(json!(by_job[j.id.as_str()])));
    }
    println!("claims per handle: {:?}", ledger.per_handle);
    for ds in &handles {
        ds.close().await;
    }
}

/// Tokens are stored by their SHA-256 only, live until expiry or revocation, and purged after.
async fn auth_tokens_hashed_expire_revoke_purge(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let ds = db.open(tmp.path()).await;
    let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    ds.insert_token(&a, "alice", T0, T0 + 1_000).await.unwrap();
    ds.insert_token(&b, "alice", T0, T0 + 5_000).await.unwrap();
    ds.insert_token(&c, "bob", T0, T0 + 5_000).await.unwrap();
    let dup = ds.insert_token(&a, "bob", T0, T0 + 1_000).await;
    assert!(matches!(dup, Err(DatastoreError::Conflict(_))), "{dup:?}");
    let bad = ds.insert_token(&"d".repeat(64), "bob", T0, T0).await;
    assert!(matches!(bad, Err(DatastoreError::Invalid(_))), "{bad:?}");
    // a second handle (another server) sees the first one's tokens
    let other = db.open(tmp.path()).await;
    let t = other.token(&a, T0 + 999).await.unwrap().expect("live");
    assert_eq!(
        (t.username.as_str(), t.issued_at, t.expires_at),
        ("alice", T0, T0 + 1_000)
    );
    assert_eq!(other.token(&a, T0 + 1_000).await.unwrap(), None, "expired");
    assert_eq!(
        other.token(&"e".repeat(64), T0).await.unwrap(),
        None,
        "unknown"
    );
    assert!(other.revoke_token(&b, T0 + 10).await.unwrap());
    assert!(
        !other.revoke_token(&b, T0 + 11).await.unwrap(),
        "already revoked"
    );
    assert_eq!(ds.token(&b, T0 + 20).await.unwrap(), None, "revoked");
    assert_eq!(ds.revoke_user_tokens("bob", T0 + 20).await.unwrap(), 1);
    assert_eq!(ds.token(&c, T0 + 21).await.unwrap(), None);
    // the table never holds a token, only its digest
    let dump: Vec<u8> = match &db.url {
        None => ["datastore.db", "datastore.db-wal"]
            .iter()
            .flat_map(|f| std::fs::read(tmp.path().join(".ferrolabel").join(f)).unwrap_or_default())
            .collect(),
        Some(url) => {
            let name = url.rsplit('/').next().unwrap();
            let sql = "SELECT token_sha256 || ' ' || username FROM auth_tokens";
            ferrolabel_testkit::Postgres::shared()
                .psql(name, sql)
                .into_bytes()
        }
    };
    let digest = hex::encode(sha2::Sha256::digest(a.as_bytes()));
    assert!(
        dump.windows(64).any(|w| w == digest.as_bytes()),
        "the digest is stored"
    );
    assert!(
        !dump.windows(64).any(|w| w == a.as_bytes()),
        "a token is stored"
    );
    assert_eq!(ds.purge_tokens(T0 + 2_000).await.unwrap(), 3);
    assert_eq!(ds.purge_tokens(T0 + 2_000).await.unwrap(), 0);
    ds.close().await;
    other.close().await;
}

on_both!(
    auth_tokens_hashed_expire_revoke_purge,
    insert_get_list,
    claim_order_priority_then_fifo,
    lane_runs_one_job_at_a_time,
    lapsed_lease_is_taken_up_by_another_runner,
    heartbeat_writes_and_reports_stop,
    stop_queued_running_and_ended_jobs,
    periodic_jobs_come_back,
    last_finished_is_newest_done_first,
    handles_claim_every_job_exactly_once,
);
